//! `--framework litgpt` (litgpt's own model code, `runtime/torch/litgpt.rs`) against the
//! litgpt probe (`probes/litgpt_probe.py`: litgpt 0.4.12's fine-tuning step on fake CUDA
//! tensors, committed as `tests/data/litgpt/layers.csv` and `steps.csv`).
//!
//! - per decoder layer (depth 2 minus depth 1 of what a step keeps after its loss), for
//!   LoRA on q,v / the attention / every linear, QLoRA (bitsandbytes 0.42.0 emulated)
//!   and full fine-tuning, on nine litgpt families: within 1%;
//! - the whole step at full depth (s512, b2; the previous step's logits and graph held
//!   by the loop): within 2% of the probe's peak.

use std::collections::BTreeMap;

use llm_mem::estimate::estimate;
use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::Settings;

use crate::util::{data_path, Table};

fn spec_of(config: &str) -> llm_mem::arch::ModelSpec {
    let text = std::fs::read_to_string(data_path(&format!("configs/{config}/config.json")))
        .unwrap_or_else(|e| panic!("{config}: {e}"));
    llm_mem::hf::config::parse_config(&text, config).unwrap()
}

/// The row's run as `llm-mem estimate --framework litgpt` flags; `None` when its
/// targets name part of a fused qkv the transformers module list cannot name.
fn settings(t: &Table, r: &csv::StringRecord, spec: &llm_mem::arch::ModelSpec) -> Option<Settings> {
    let method = t.col(r, "method");
    let mut pairs = vec![
        ("framework", "litgpt"),
        ("batch", t.col(r, "batch")),
        ("seq_len", t.col(r, "seq")),
        ("dtype", "bf16"),
        ("method", method),
        (
            "optimizer",
            if t.col(r, "optimizer") == "adamw" {
                "adamw-foreach"
            } else {
                "sgd"
            },
        ),
    ];
    if method != "full" {
        let fused = spec
            .each_linear()
            .any(|l| l.role == llm_mem::arch::LinearRole::Qkv);
        let targets = match t.col(r, "targets") {
            "qv" if fused => return None,
            "qv" => "q_proj,v_proj",
            "attn" => "attn",
            _ => "all-linear",
        };
        pairs.push(("lora_targets", targets));
        pairs.push(("lora_rank", t.col(r, "lora_rank")));
        pairs.push(("lora_dropout", t.col(r, "lora_dropout")));
        if method == "qlora" {
            // the probe's NF4 emulation has no double quantization
            pairs.push(("double_quant", "false"));
        }
    }
    // the profile's defaults under the row's own settings, as `resolve` applies them
    let s = Settings::from_flags(&pairs).unwrap();
    Some(s.with_profile().unwrap().expect("the litgpt profile"))
}

#[test]
fn litgpt_layers_match_the_probe() {
    let t = Table::data("litgpt/layers.csv");
    let mut by: BTreeMap<(String, String, String), [Option<f64>; 2]> = BTreeMap::new();
    let mut rows = 0;
    for r in &t.rows {
        assert_eq!(t.col(r, "status"), "ok", "{r:?}");
        rows += 1;
        let key = (
            t.col(r, "config").to_string(),
            t.col(r, "method").to_string(),
            t.col(r, "targets").to_string(),
        );
        let live: f64 = t.col(r, "live_after_loss_bytes").parse().unwrap();
        let e = by.entry(key).or_default();
        match t.col(r, "layers") {
            "1" => e[0] = Some(live),
            "2" => e[1] = Some(live),
            l => panic!("depth {l}"),
        }
    }
    let (mut checked, mut skipped, mut worst) = (0, 0, 0.0f64);
    let mut failures = Vec::new();
    for ((config, method, targets), [l1, l2]) in &by {
        let spec = spec_of(config).with_layers(2).unwrap();
        let r = t
            .rows
            .iter()
            .find(|r| {
                t.col(r, "config") == config
                    && t.col(r, "method") == method
                    && t.col(r, "targets") == targets
            })
            .unwrap();
        let Some(cfg) = settings(&t, r, &spec) else {
            skipped += 1;
            continue;
        };
        let (w, _) = crate::util::build(&spec, &cfg);
        let e = estimate(&spec, &w, &Overheads::none()).unwrap();
        let probe = l2.unwrap() - l1.unwrap();
        let got = e.activations.per_layer_bytes as f64;
        let err = got / probe - 1.0;
        if err.abs() > worst.abs() {
            worst = err;
        }
        if err.abs() > 0.01 {
            failures.push(format!(
                "{config} {method} {targets}: per layer {got} vs probe {probe} ({:+.2}%)",
                err * 100.0
            ));
        }
        checked += 1;
    }
    println!(
        "litgpt probe rows {rows}; per-layer pairs checked {checked} (worst {:+.3}%), skipped {skipped} (q,v of a fused qkv)",
        worst * 100.0
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(rows, 140);
    assert!(checked >= 62, "{checked} pairs checked");
}

#[test]
fn litgpt_steps_match_the_probe() {
    let t = Table::data("litgpt/steps.csv");
    let (mut checked, mut worst) = (0, 0.0f64);
    let mut failures = Vec::new();
    for r in &t.rows {
        assert_eq!(t.col(r, "status"), "ok", "{r:?}");
        assert_eq!(t.col(r, "layers"), "0", "full-depth rows");
        let config = t.col(r, "config");
        let spec = spec_of(config);
        let cfg = settings(&t, r, &spec).expect("attention targets");
        let (w, _) = crate::util::build(&spec, &cfg);
        let e = estimate(&spec, &w, &Overheads::none()).unwrap();
        let probe: f64 = t.col(r, "peak_bytes").parse().unwrap();
        let got = e.peak.allocated.get() as f64;
        let err = got / probe - 1.0;
        println!(
            "{config} {}: estimate {:.3} GiB vs probe {:.3} GiB ({:+.2}%) at {}",
            t.col(r, "method"),
            got / 1073741824.0,
            probe / 1073741824.0,
            err * 100.0,
            e.peak.event
        );
        if err.abs() > worst.abs() {
            worst = err;
        }
        if err.abs() > 0.02 {
            failures.push(format!(
                "{config} {}: {:+.2}%",
                t.col(r, "method"),
                err * 100.0
            ));
        }
        checked += 1;
    }
    println!(
        "litgpt whole steps checked {checked}, worst {:+.2}%",
        worst * 100.0
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 12);
}
