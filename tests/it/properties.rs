//! Properties of `estimate()` over random presets and workloads:
//! (a) the peak is monotone non-decreasing in batch and in sequence length;
//! (b) full checkpointing never raises the kept activations;
//! (c) the components at the peak sum exactly to the device peak (every event too), and
//!     the kept activations split exactly into non-layer + layers × per-layer;
//! (d) trainable ≤ total parameters;
//! (e) allocated ≤ reserved ≤ device;
//! (f) `estimate()` never panics: every input gives `Ok` or `Err`.
//!
//! Case counts are small (64) so the suite stays fast; failures shrink and are stored
//! in `tests/it/properties.proptest-regressions`.

use llm_mem::estimate::{estimate, Estimate};
use llm_mem::hf::presets;
use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::RunConfig;
use llm_mem::ModelSpec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const TASKS: &[&str] = &["train", "infer"];
const METHODS: &[&str] = &["full", "lora", "qlora"];
const DTYPES: &[&str] = &["fp32", "bf16", "fp16", "amp-bf16", "amp-fp16", "fp8"];
const OPTIMIZERS: &[&str] = &[
    "adamw",
    "adamw-8bit",
    "paged-adamw",
    "paged-adamw-8bit",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
];
const ATTNS: &[&str] = &["eager", "sdpa", "flash"];
const CKPTS: &[&str] = &["none", "full", "selective"];
const LOSSES: &[&str] = &["standard", "chunked", "fused-linear-ce"];
const RUNTIMES: &[&str] = &["torch", "candle"];
const DEVICES: &[&str] = &["cuda", "cpu"];

/// One random run: indices into the tables above plus shapes.
#[derive(Debug, Clone)]
struct Case {
    preset: &'static str,
    task: &'static str,
    method: &'static str,
    dtype: &'static str,
    optimizer: &'static str,
    attn: &'static str,
    ckpt: &'static str,
    loss: &'static str,
    runtime: &'static str,
    device: &'static str,
    master_weights: bool,
    batch: u64,
    seq: u64,
}

fn pick(xs: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(xs)
}

fn case() -> impl Strategy<Value = Case> {
    let names: Vec<&'static str> = presets::names();
    (
        proptest::sample::select(names),
        pick(TASKS),
        pick(METHODS),
        pick(DTYPES),
        pick(OPTIMIZERS),
        pick(ATTNS),
        pick(CKPTS),
        pick(LOSSES),
        (pick(RUNTIMES), pick(DEVICES)),
        any::<bool>(),
        1u64..=8,
        64u64..=4096,
    )
        .prop_map(
            |(
                preset,
                task,
                method,
                dtype,
                optimizer,
                attn,
                ckpt,
                loss,
                (runtime, device),
                mw,
                batch,
                seq,
            )| {
                Case {
                    preset,
                    task,
                    method,
                    dtype,
                    optimizer,
                    attn,
                    ckpt,
                    loss,
                    runtime,
                    device,
                    master_weights: mw && matches!(dtype, "bf16" | "fp16"),
                    batch,
                    seq,
                }
            },
        )
}

fn spec_of(c: &Case) -> ModelSpec {
    presets::get(c.preset).expect("a preset").expect("parses")
}

/// Quantized checkpoints (GPTQ/AWQ) cannot be fully fine-tuned: skip those cases.
fn skipped(spec: &ModelSpec, c: &Case) -> bool {
    spec.quantization.is_some() && c.method == "full" && c.task == "train"
}

/// The run config of `c` with `batch` and `seq` (for inference: concurrency and prompt
/// length, which are what batch and sequence mean there).
fn config(c: &Case, batch: u64, seq: u64, ckpt: &str) -> RunConfig {
    let infer = c.task == "infer";
    RunConfig {
        task: Some(c.task.into()),
        method: Some(c.method.into()),
        dtype: Some(c.dtype.into()),
        master_weights: Some(c.master_weights),
        optimizer: Some(c.optimizer.into()),
        attn: Some(c.attn.into()),
        grad_ckpt: Some(ckpt.into()),
        loss: Some(c.loss.into()),
        runtime: Some(c.runtime.into()),
        device: Some(c.device.into()),
        batch: Some(batch),
        seq_len: Some(seq),
        concurrency: infer.then_some(batch),
        prompt_len: infer.then_some(seq),
        ..Default::default()
    }
}

/// `None` when the combination is rejected (by the config layer or the estimator).
fn run(spec: &ModelSpec, cfg: &RunConfig) -> Option<Estimate> {
    let (w, ov) = cfg.build(spec).ok()?;
    estimate(spec, &w, &ov).ok()
}

fn run_case(c: &Case, batch: u64, seq: u64, ckpt: &str) -> Option<Estimate> {
    run(&spec_of(c), &config(c, batch, seq, ckpt))
}

/// Properties (c), (d), (e) of one estimate.
fn check_invariants(e: &Estimate) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.components_at_peak.total(), e.peak.device);
    for ev in &e.timeline {
        prop_assert!(ev.components.total() <= e.peak.device, "{}", ev.event);
        prop_assert!(ev.allocated <= ev.reserved && ev.reserved <= ev.components.total());
    }
    prop_assert!(e.model.params_trainable <= e.model.params_total);
    if e.activations.total_bytes > 0 {
        // training: everything kept = the non-layer part + one per-layer share per layer
        prop_assert_eq!(
            e.activations.total_bytes,
            e.activations.non_layer_bytes + e.model.layers * e.activations.per_layer_bytes
        );
    }
    prop_assert!(e.peak.allocated <= e.peak.reserved);
    prop_assert!(e.peak.reserved <= e.peak.device);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// (f) + (c), (d), (e): never panics; every estimate is self-consistent.
    #[test]
    fn never_panics_and_is_consistent(c in case(), ov_frag in 0.0f64..=1.0, ctx_mib in 0u64..4096) {
        let spec = spec_of(&c);
        let cfg = config(&c, c.batch, c.seq, c.ckpt);
        // a panic here fails the test; Err is fine
        if let Ok((w, _)) = cfg.build(&spec) {
            let ov = Overheads {
                cuda_context: llm_mem::Bytes(ctx_mib << 20),
                allocator_fragmentation: ov_frag,
                ..Overheads::default()
            };
            if let Ok(e) = estimate(&spec, &w, &ov) {
                check_invariants(&e)?;
            }
        }
        if let Some(e) = run(&spec, &cfg) {
            check_invariants(&e)?;
        }
    }

    /// (a) monotone in batch.
    #[test]
    fn peak_monotone_in_batch(c in case(), extra in 1u64..=8) {
        let spec = spec_of(&c);
        prop_assume!(!skipped(&spec, &c));
        let small = run_case(&c, c.batch, c.seq, c.ckpt);
        let big = run_case(&c, c.batch + extra, c.seq, c.ckpt);
        prop_assert_eq!(small.is_some(), big.is_some(), "accepted for one batch only");
        if let (Some(s), Some(b)) = (small, big) {
            prop_assert!(
                s.peak.device <= b.peak.device,
                "batch {} → {}: {} > {} ({} → {})",
                c.batch, c.batch + extra, s.peak.device.get(), b.peak.device.get(),
                s.peak.event, b.peak.event
            );
        }
    }

    /// (a) monotone in sequence length.
    #[test]
    fn peak_monotone_in_seq_len(c in case(), extra in 1u64..=2048) {
        let spec = spec_of(&c);
        prop_assume!(!skipped(&spec, &c));
        let small = run_case(&c, c.batch, c.seq, c.ckpt);
        let big = run_case(&c, c.batch, c.seq + extra, c.ckpt);
        prop_assert_eq!(small.is_some(), big.is_some(), "accepted for one length only");
        if let (Some(s), Some(b)) = (small, big) {
            prop_assert!(
                s.peak.device <= b.peak.device,
                "seq {} → {}: {} > {} ({} → {})",
                c.seq, c.seq + extra, s.peak.device.get(), b.peak.device.get(),
                s.peak.event, b.peak.event
            );
        }
    }

    /// (b) full checkpointing never keeps more activations than none.
    #[test]
    fn full_checkpointing_never_keeps_more(c in case()) {
        let spec = spec_of(&c);
        prop_assume!(!skipped(&spec, &c));
        let none = run_case(&c, c.batch, c.seq, "none");
        let full = run_case(&c, c.batch, c.seq, "full");
        if let (Some(n), Some(f)) = (none, full) {
            prop_assert!(
                f.activations.total_bytes <= n.activations.total_bytes,
                "total: full {} > none {}", f.activations.total_bytes, n.activations.total_bytes
            );
            prop_assert!(
                f.activations.per_layer_bytes <= n.activations.per_layer_bytes,
                "per layer: full {} > none {}",
                f.activations.per_layer_bytes, n.activations.per_layer_bytes
            );
        }
    }
}

/// Shapes far beyond any real run must be rejected with an error naming the flag, not
/// overflow `u64` (bounds: `workload::MAX_BATCH`, `MAX_TOKENS`, `MAX_LORA_RANK`,
/// `MAX_TENSOR_BYTES`, `arch::MAX_LAYERS`).
#[test]
fn huge_shapes_are_errors_not_overflows() {
    let spec = presets::get("llama-3.1-8b").unwrap().unwrap();
    let huge = u64::MAX;
    let cases: Vec<(&str, RunConfig)> = vec![
        (
            "batch 2^32 x seq 2^32",
            RunConfig {
                batch: Some(1 << 32),
                seq_len: Some(1 << 32),
                ..Default::default()
            },
        ),
        (
            "seq u64::MAX",
            RunConfig {
                seq_len: Some(huge),
                ..Default::default()
            },
        ),
        (
            "lora rank u64::MAX",
            RunConfig {
                method: Some("lora".into()),
                lora_rank: Some(huge),
                ..Default::default()
            },
        ),
        (
            "infer gen u64::MAX",
            RunConfig {
                task: Some("infer".into()),
                gen_len: Some(huge),
                ..Default::default()
            },
        ),
    ];
    for (what, cfg) in cases {
        let r = std::panic::catch_unwind(|| {
            cfg.build(&spec)
                .and_then(|(w, ov)| estimate(&spec, &w, &ov))
                .map(|e| e.peak.device)
        });
        match r {
            Err(_) => panic!("{what}: estimate panicked"),
            Ok(Ok(peak)) => panic!("{what}: accepted, peak {} bytes", peak.get()),
            Ok(Err(_)) => {}
        }
    }
    // --layers above arch::MAX_LAYERS is accepted
    assert!(
        spec.with_layers(1 << 20).is_err(),
        "--layers 1048576 accepted (config.json allows at most 2^14)"
    );
}
