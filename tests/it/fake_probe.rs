//! The whole training-step timeline (weights, AdamW state, activations, gradients, the
//! optimizer step) against the PyTorch probe's fake-tensor meter
//! (`probes/torch_probe.py --device fake-cuda` on `probes/gpu-default.toml`, committed as
//! `tests/data/probe/gpu-default-fake-cuda-torch.csv`): for every measured point the
//! estimate is made anew, as the probe asks for it (`estimate --runtime torch --device
//! cuda --cublas-workspace 0` on the point's scaled HF config), and its peak held to
//! 0.5% of the measured one.

use serde_json::Value;

use crate::util::{run, Table, TempDir};

#[test]
fn the_estimate_matches_the_fake_tensor_probe_on_every_point() {
    let points = run(["probe", "points", "--plan", "probes/gpu-default.toml"]);
    assert_eq!(points.code, 0, "{points:?}");
    let doc: Value = serde_json::from_str(&points.stdout).unwrap();
    let by_id: std::collections::BTreeMap<String, &Value> = doc["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p))
        .collect();
    let t = Table::data("probe/gpu-default-fake-cuda-torch.csv");
    let dir = TempDir::new("fake-probe");
    let (mut checked, mut worst) = (0, 0.0f64);
    for r in &t.rows {
        assert_eq!(t.col(r, "status"), "ok", "{r:?}");
        assert_eq!(t.col(r, "meter"), "fake-tensor");
        assert_eq!(t.col(r, "device"), "fake-cuda");
        let id = t.col(r, "point");
        let p = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id}: not a point of the plan"));
        let cfg = dir.write(
            &format!("{}/config.json", id.replace('/', "_")),
            &p["hf_config"].to_string(),
        );
        let (batch, seq) = (p["batch"].to_string(), p["seq"].to_string());
        let method = p["method"].as_str().unwrap();
        let mut args = vec![
            "estimate",
            "--model",
            &cfg,
            "--task",
            "train",
            "--method",
            method,
            "--dtype",
            "bf16",
            "--optimizer",
            "adamw",
            "--batch",
            &batch,
            "--seq-len",
            &seq,
            "--attn",
            "eager",
            "--runtime",
            "torch",
            "--device",
            "cuda",
            "--cublas-workspace",
            "0",
            "--json",
        ];
        let (rank, alpha) = (p["lora_rank"].to_string(), p["lora_alpha"].to_string());
        if method == "lora" {
            args.extend(["--lora-rank", &rank, "--lora-alpha", &alpha]);
            args.extend(["--lora-targets", "all-linear"]);
        }
        let e = run(&args);
        assert_eq!(e.code, 0, "{id}: {e:?}");
        let v: Value = serde_json::from_str(&e.stdout).unwrap();
        let est = v["peak"]["allocated_bytes"].as_u64().unwrap() as f64;
        let measured: f64 = t.col(r, "measured_peak_bytes").parse().unwrap();
        let err = est / measured - 1.0;
        assert!(
            err.abs() <= 0.005,
            "{id}: estimated {est}, measured {measured} ({:+.3}%)",
            err * 100.0
        );
        worst = if err.abs() > worst.abs() { err } else { worst };
        checked += 1;
    }
    println!(
        "fake-tensor probe: {checked} points, worst peak error {:+.3}%",
        worst * 100.0
    );
    assert_eq!(checked, 48, "every point of gpu-default");
}
