//! Benchmarks: (a) one `estimate()` call (target ≤ 20 µs), (b) the whole
//! `llm-mem estimate` process, spawned (target ≤ 10 ms).
//!
//! `cargo bench --bench estimate`. The process benchmark runs the release binary found
//! next to this bench executable (`target/release/llm-mem`); it is skipped with a
//! message when that binary is absent.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, Criterion};

use llm_mem::estimate::estimate;
use llm_mem::hf::presets;
use llm_mem::workload::settings::Settings;

const MAIN_ARGS: &[&str] = &[
    "estimate",
    "--model",
    "llama-3.1-8b",
    "--seq-len",
    "4096",
    "--gpu",
    "h100-80gb",
];

fn bench_estimate(c: &mut Criterion) {
    let cases = [
        (
            "estimate/llama-3.1-8b full bf16 seq 4096",
            "llama-3.1-8b",
            Settings::from_flags(&[("seq_len", "4096")]).unwrap(),
        ),
        (
            "estimate/llama-3.1-70b lora all-linear seq 4096",
            "llama-3.1-70b",
            Settings::from_flags(&[("method", "lora"), ("seq_len", "4096")]).unwrap(),
        ),
        // the next two only attribute the 70B LoRA figure (size vs LoRA)
        (
            "estimate/llama-3.1-70b full bf16 seq 4096",
            "llama-3.1-70b",
            Settings::from_flags(&[("seq_len", "4096")]).unwrap(),
        ),
        (
            "estimate/llama-3.1-8b lora all-linear seq 4096",
            "llama-3.1-8b",
            Settings::from_flags(&[("method", "lora"), ("seq_len", "4096")]).unwrap(),
        ),
    ];
    for (label, model, cfg) in cases {
        let spec = presets::get(model).unwrap().unwrap();
        let (w, ov) = cfg.build(&spec).unwrap();
        c.bench_function(label, |b| {
            b.iter(|| estimate(black_box(&spec), black_box(&w), black_box(&ov)).unwrap())
        });
    }
}

/// `target/<profile>/llm-mem`, next to `target/<profile>/deps/<this bench>`.
fn release_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join(format!("llm-mem{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
}

fn bench_process(c: &mut Criterion) {
    let Some(bin) = release_binary() else {
        eprintln!(
            "skipping process/llm-mem estimate: no llm-mem binary next to {:?} \
             (build it with `cargo build --release`)",
            std::env::current_exe().ok()
        );
        return;
    };
    let mut g = c.benchmark_group("process");
    g.sample_size(30);
    g.bench_function(
        "llm-mem estimate --model llama-3.1-8b --seq-len 4096",
        |b| {
            b.iter(|| {
                let st = Command::new(&bin)
                    .args(MAIN_ARGS)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("spawn llm-mem");
                assert!(st.code() == Some(0) || st.code() == Some(1), "{st}");
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench_estimate, bench_process);
criterion_main!(benches);
