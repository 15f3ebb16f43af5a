//! `plan`: the search is exhaustive over its stated space and exact in the micro-batch.

use llm_mem::distributed::estimate_layout;
use llm_mem::distributed::search::{layouts, plan, Evaluator, PlanQuery};
use llm_mem::estimate::Correction;
use llm_mem::units::bytes::{Bytes, GIB};
use llm_mem::workload::settings::Settings;

use crate::util::{build, preset, run};

#[test]
fn llama70b_lora_on_8x80() {
    let spec = preset("llama-3.1-70b");
    let cfg = Settings::from_flags(&[("method", "lora"), ("seq_len", "4096")]).unwrap();
    let (w, ov) = build(&spec, &cfg);
    let q = PlanQuery {
        gpus: 8,
        capacity: Bytes(80 * GIB),
        max_batch: 64,
        top: 10,
        max_seq: 131072,
    };
    let t = std::time::Instant::now();
    let r = plan(&spec, &w, &ov, &q).unwrap();
    eprintln!(
        "{} layouts, {} evaluations in {:?}",
        r.layouts_considered,
        r.evaluations,
        t.elapsed()
    );
    assert!(!r.fits.is_empty());
    let best = &r.fits[0];
    eprintln!("{:?}", best);
    eprintln!("{:?}", r.largest_micro_batch);
    eprintln!("{:?}", r.longest_sequence);
    // 70B in bf16 is 131 GiB of weights: no single GPU holds it
    assert!(best.world > 1);
    // ranked: the first fits with the fewest GPUs
    assert!(r.fits.windows(2).all(|p| p[0].world <= p[1].world));
}

#[test]
fn fast_evaluator_equals_the_full_simulation() {
    let spec = preset("llama-3.1-8b");
    for attn in ["eager", "sdpa"] {
        let cfg = Settings::from_flags(&[
            ("seq_len", "2048"),
            ("attn", attn),
            ("grad_ckpt", "selective"),
        ])
        .unwrap();
        let (w, ov) = build(&spec, &cfg);
        let mut ev = Evaluator::new(&spec, &ov);
        for (layout, _, _) in layouts(&spec, &w, 8).into_iter().step_by(3) {
            for b in [1u64, 3, 7] {
                let mut wb = w.clone();
                wb.batch = b;
                let views = ev.views(&wb, &layout).unwrap();
                let fast = ev.peak(&wb, &layout, &views);
                let full =
                    estimate_layout(&spec, &wb, &ov, &layout, &Correction::IDENTITY).unwrap();
                assert_eq!(
                    fast,
                    full.worst().estimate.peak.device.get(),
                    "{layout:?} b={b}"
                );
            }
        }
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let r = run(args);
    (r.code, r.stdout, r.stderr)
}

#[test]
fn plan_cli_exit_codes_and_json() {
    let (code, out, _) = cli(&[
        "plan",
        "--model",
        "qwen2.5-0.5b",
        "--gpus",
        "4",
        "--gpu",
        "a10g",
        "--seq-len",
        "1024",
        "--max-seq",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schema_version"], 1);
    let fits = v["result"]["fits"].as_array().unwrap();
    assert!(!fits.is_empty());
    assert_eq!(
        fits[0]["world"], 1,
        "a 0.5B model trains on one 24 GB GPU with fp32 master weights: {}",
        fits[0]
    );
    assert!(v["result"]["space"]
        .as_str()
        .unwrap()
        .contains("micro-batch"));
    // nothing fits: exit 1 and says so
    let (code, out, _) = cli(&[
        "plan",
        "--model",
        "llama-3.1-405b",
        "--gpus",
        "2",
        "--gpu",
        "rtx4090",
        "--max-seq",
        "0",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing fits"), "{out}");
    // serving: the most concurrent sequences per tensor-parallel degree
    let (code, out, err) = cli(&[
        "plan",
        "--model",
        "llama-3.1-70b",
        "--task",
        "infer",
        "--prompt-len",
        "4096",
        "--gen-len",
        "512",
        "--gpus",
        "8",
        "--gpu",
        "h100-80gb",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fits = v["result"]["fits"].as_array().unwrap();
    // 70B in bf16 (131 GiB of weights) needs at least two 80 GB GPUs per replica
    assert!(
        !fits.is_empty() && fits.iter().all(|c| c["tp"].as_u64().unwrap() >= 2),
        "{fits:?}"
    );
    let conc: Vec<u64> = fits
        .iter()
        .map(|c| c["max_micro_batch"].as_u64().unwrap())
        .collect();
    assert!(
        conc.windows(2).all(|w| w[0] <= w[1]),
        "more tp leaves room for more sequences: {conc:?}"
    );
}

#[test]
fn candle_runtime_is_single_device_training_only() {
    for args in [
        vec![
            "plan",
            "--model",
            "gpt2",
            "--runtime",
            "candle",
            "--gpus",
            "2",
            "--gpu",
            "a10g",
        ],
        vec![
            "estimate",
            "--model",
            "gpt2",
            "--runtime",
            "candle",
            "--tp",
            "2",
        ],
        vec![
            "estimate",
            "--model",
            "gpt2",
            "--runtime",
            "candle",
            "--task",
            "infer",
        ],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("candle") || err.contains("--runtime"),
            "{args:?}: {err}"
        );
    }
}
