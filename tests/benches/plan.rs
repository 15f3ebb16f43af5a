//! `plan` throughput: exact (layout, micro-batch) evaluations per second, and a whole
//! search (Llama-3.1-70B LoRA, 8 × 80 GiB), on one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_mem::distributed::search::{layouts, plan, Evaluator, PlanQuery};
use llm_mem::units::bytes::{Bytes, GIB};
use llm_mem::workload::settings::Settings;

fn bench(c: &mut Criterion) {
    let spec = llm_mem::hf::presets::get("llama-3.1-70b").unwrap().unwrap();
    let cfg = Settings::from_flags(&[("method", "lora"), ("seq_len", "4096")]).unwrap();
    let (w, ov) = cfg.build(&spec).unwrap();

    // one exact evaluation: every rank class of a layout at one micro-batch
    let all = layouts(&spec, &w, 8);
    let mut ev = Evaluator::new(&spec, &ov);
    let prepared: Vec<_> = all
        .iter()
        .map(|(l, _, _)| (l.clone(), ev.views(&w, l).unwrap()))
        .collect();
    for (l, v) in &prepared {
        ev.peak(&w, l, v); // warm the ledger cache
    }
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(prepared.len() as u64));
    g.bench_function("evaluate every 8-GPU layout once", |b| {
        b.iter(|| {
            for (l, v) in &prepared {
                std::hint::black_box(ev.peak(&w, l, v));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    let q = PlanQuery {
        gpus: 8,
        capacity: Bytes(80 * GIB),
        max_batch: 64,
        top: 10,
        max_seq: 0,
    };
    g.sample_size(10);
    g.bench_function("llama-3.1-70b lora 8x80GiB search", |b| {
        b.iter(|| plan(&spec, &w, &ov, &q).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
