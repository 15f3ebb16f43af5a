//! Probe tests with the counting allocator installed as this harness's global allocator.
//!
//! Its own binary, not a module of `tests/it`: `CountingMeter` reads the counters of
//! `CountingAlloc`, which move only when it is the process's global allocator, and its
//! readings are exact only while no other test allocates in the same process (the
//! tests here run one at a time under `SERIAL`, single-threaded candle).

use llm_mem::probe::candle_model::{measure, ProbeModel, StepConfig};
use llm_mem::probe::meter::{CountingAlloc, CountingMeter, MemoryMeter};
use llm_mem::runtime::candle::program::ProbeMethod;
use llm_mem::runtime::candle::tape::candle_step;

#[path = "it/util.rs"]
#[allow(dead_code)]
mod util;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// Tests share the allocator's counters: run the metered ones one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Single-threaded candle, as `llm-mem probe` runs it (see probe_cmd.rs).
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("RAYON_NUM_THREADS", "1"));
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(name: &str) -> llm_mem::ModelSpec {
    let mut s = util::preset(name);
    s.hidden = 64;
    s.heads = 4;
    s.kv_heads = if s.kv_heads < s.heads { 2 } else { 4 };
    s.head_dim = 16;
    s.intermediate = 128;
    s.vocab = 512;
    s.set_layers(2);
    s.max_positions = 64;
    if let llm_mem::arch::Positions::Rope { rotary_dim } = s.positions {
        // keep partial rotary (GPT-NeoX) partial
        let full = rotary_dim >= 64;
        s.positions = llm_mem::arch::Positions::Rope {
            rotary_dim: if full { 16 } else { 8 },
        };
    }
    s
}

const FAMILIES: [&str; 8] = [
    "llama-3.2-1b",
    "mistral-7b-v0.1",
    "qwen2.5-0.5b",
    "qwen3-0.6b",
    "gemma-2b",
    "phi-3-mini-4k-instruct",
    "gpt2",
    "pythia-70m",
];

fn cfg(method: ProbeMethod) -> StepConfig {
    StepConfig {
        batch: 2,
        seq: 16,
        method,
        dtype: llm_mem::DType::F32,
        warmup_steps: 1,
        measured_steps: 1,
        lr: 1e-3,
    }
}

#[test]
fn artificial_limit_reports_out_of_memory() {
    let _g = lock();
    let mut m = CountingMeter::new(Some(1000));
    m.baseline().unwrap();
    m.start().unwrap();
    let a: Vec<u8> = Vec::with_capacity(4096);
    let e = m.stop().unwrap_err();
    drop(a);
    assert!(e.to_string().contains("out of memory"), "{e}");
}

#[test]
fn gradient_reaches_every_parameter() {
    let _g = lock();
    for name in FAMILIES {
        for method in [
            ProbeMethod::Full,
            ProbeMethod::Lora {
                rank: 4,
                alpha: 8.0,
            },
        ] {
            let spec = tiny(name);
            let mut pm = ProbeModel::build(&spec, &cfg(method), &candle_core::Device::Cpu).unwrap();
            let missing = pm.params_without_gradient().unwrap();
            assert!(
                missing.is_empty(),
                "{name} {method:?}: no gradient for {missing:?}"
            );
            assert!(!pm.ops.vars.is_empty());
        }
    }
}

#[test]
fn candle_profile_predicts_the_measured_step() {
    let _g = lock();
    for name in FAMILIES {
        for method in [
            ProbeMethod::Full,
            ProbeMethod::Lora {
                rank: 4,
                alpha: 8.0,
            },
        ] {
            let spec = tiny(name);
            let c = cfg(method);
            let mut meter = CountingMeter::new(None);
            let m = measure(&spec, &c, &candle_core::Device::Cpu, &mut meter).unwrap();
            let st = candle_step(&spec, c.batch, c.seq, method, 4, true).unwrap();
            assert_eq!(m.static_bytes, st.weights + st.optimizer_state, "{name}");
            let measured = (m.static_bytes + m.step) as f64;
            let predicted = st.peak() as f64;
            let err = (predicted - measured).abs() / measured;
            assert!(
                err < 0.02,
                "{name} {method:?}: predicted {predicted} measured {measured}"
            );
        }
    }
}
