//! The activation ledger against the trace probe (`tests/data/trace/activations.csv`,
//! written by `probes/trace_probe.py` on fake tensors at full width, depth 1 and 2): the
//! bytes alive after the forward, as the estimate adds them up (non-layer + depth ×
//! per-layer, for the model at that depth), against `live_after_fwd_bytes`, over every
//! architecture in it. Each architecture the tool models is held to 1% on every row; the
//! others are counted as refused. Parameter counts (total, LoRA all-linear) must be exact on every
//! modelled one. Set TRACE_VERBOSE=1 for the per-row table.

use std::collections::BTreeMap;

use llm_mem::arch::{params, LoraTargets};
use llm_mem::error::Error;
use llm_mem::runtime::torch::{activations, LedgerParams, Trainable};
use llm_mem::workload::{Attn, Device, GradCkpt, Loss, Precision};

use crate::util::{data_path, Table};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    model: String,
    batch: u64,
    seq: u64,
    dtype: String,
    attn: String,
    ckpt: String,
    mode: String,
    engine: String,
}

struct Pair {
    live: [f64; 2],
    params_l2: u64,
    trainable_l2: u64,
}

fn pairs() -> (BTreeMap<Cell, Pair>, usize) {
    let t = Table::data("trace/activations.csv");
    let mut l1: BTreeMap<Cell, f64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut rows = 0;
    let mut sorted: Vec<&csv::StringRecord> = t.rows.iter().collect();
    sorted.sort_by_key(|r| t.col(r, "layers").parse::<u64>().unwrap());
    for r in sorted {
        rows += 1;
        if t.col(r, "status") != "ok" {
            continue;
        }
        let num = |c: &str| t.col(r, c).parse::<u64>().unwrap_or_else(|_| panic!("{c}"));
        let cell = Cell {
            model: t.col(r, "model").to_string(),
            batch: num("batch"),
            seq: num("seq"),
            dtype: t.col(r, "dtype").to_string(),
            attn: t.col(r, "attn_impl").to_string(),
            ckpt: t.col(r, "grad_ckpt").to_string(),
            mode: t.col(r, "mode").to_string(),
            engine: t.col(r, "engine").to_string(),
        };
        let live = num("live_after_fwd_bytes") as f64;
        match num("layers") {
            1 => {
                l1.insert(cell, live);
            }
            2 => {
                if let Some(&a) = l1.get(&cell) {
                    out.insert(
                        cell,
                        Pair {
                            live: [a, live],
                            params_l2: num("params_total"),
                            trainable_l2: num("trainable_params"),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    (out, rows)
}

fn ledger_params(c: &Cell) -> LedgerParams {
    LedgerParams {
        batch: c.batch,
        seq: c.seq,
        kv_len: c.seq,
        precision: if c.dtype == "amp_bf16" {
            Precision::AmpBf16
        } else {
            Precision::Bf16
        },
        attn: c.attn.parse::<Attn>().unwrap(),
        grad_ckpt: if c.ckpt == "none" {
            GradCkpt::None
        } else {
            GradCkpt::Full
        },
        device: if c.engine.ends_with("cuda") {
            Device::Cuda
        } else {
            Device::Cpu
        },
        trainable: match c.mode.as_str() {
            "full" => Trainable::All,
            "lora_all" => Trainable::Lora {
                rank: 16,
                targets: LoraTargets::AllLinear,
            },
            _ => Trainable::Lora {
                rank: 16,
                targets: LoraTargets::Attn,
            },
        },
        loss: Loss::Standard,
        param_grad_size: 2,
        sp_div: 1,
    }
}

#[test]
fn the_ledger_against_the_trace_probe_on_every_architecture() {
    let (pairs, rows) = pairs();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    // model → (cells, worst per-layer error, worst non-layer error)
    let mut per_model: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    let mut exact_checked = 0;
    let mut params_checked = 0;
    let mut failures = Vec::new();
    for (c, p) in &pairs {
        let path = data_path(&format!("configs/{}/config.json", c.model));
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = match llm_mem::hf::config::parse_config(&text, &c.model) {
            Ok(s) => s,
            Err(Error::Unsupported { model_type, .. }) => {
                *refused.entry(model_type).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{}: {e}", c.model),
        };
        // parameters, exactly
        let two = spec.with_layers(2).unwrap();
        if c.mode == "full" {
            assert_eq!(
                params::count(&two).total,
                p.params_l2,
                "{}: parameters at depth 2",
                c.model
            );
            params_checked += 1;
        } else if c.mode == "lora_all" {
            let lora = params::lora(&two, 16, &LoraTargets::AllLinear).trainable;
            assert_eq!(
                lora, p.trainable_l2,
                "{}: LoRA all-linear r=16 at depth 2",
                c.model
            );
            params_checked += 1;
        }
        // what is alive after the forward at depth 1 and at depth 2, as the estimate
        // adds it up (non-layer + depth × per-layer)
        let total = |depth: u64| {
            let a = activations(&spec.with_layers(depth).unwrap(), &ledger_params(c));
            (a.non_layer_bytes + depth * a.per_layer_bytes) as f64
        };
        let (got1, got2) = (total(1), total(2));
        let e_per = got1 / p.live[0] - 1.0;
        let e_non = got2 / p.live[1] - 1.0;
        let m = per_model.entry(c.model.clone()).or_insert((0, 0.0, 0.0));
        m.0 += 1;
        if e_per.abs() > m.1.abs() {
            m.1 = e_per;
        }
        if e_non.abs() > m.2.abs() {
            m.2 = e_non;
        }
        if std::env::var("TRACE_VERBOSE").is_ok() {
            println!(
                "{} b{} s{} {} {} {} {} {}: depth 1 {} vs {} ({:+.2}%), depth 2 {} vs {} ({:+.2}%)",
                c.model,
                c.batch,
                c.seq,
                c.dtype,
                c.attn,
                c.ckpt,
                c.mode,
                c.engine,
                got1,
                p.live[0],
                e_per * 100.0,
                got2,
                p.live[1],
                e_non * 100.0
            );
        }
        // every modelled architecture is held to 1% on every row
        {
            if e_per.abs() > 0.01 || e_non.abs() > 0.01 {
                failures.push(format!(
                    "{c:?}: depth 1 {:+.2}%, depth 2 {:+.2}%",
                    e_per * 100.0,
                    e_non * 100.0
                ));
            }
            exact_checked += 1;
        }
    }
    println!(
        "trace rows: {rows}; depth pairs: {}; rows held to 1%: {exact_checked}; parameter counts {params_checked}; refused architectures: {refused:?}",
        pairs.len()
    );
    for (m, (n, per, non)) in &per_model {
        println!(
            "{m:32} {n:3} cells  worst at depth 1 {:+7.2}%  at depth 2 {:+7.2}%",
            per * 100.0,
            non * 100.0
        );
    }
    assert!(
        failures.is_empty(),
        "{} rows beyond 1%:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rows >= 900, "{rows} trace rows read");
    assert!(
        per_model.len() >= 17,
        "{} modelled architectures compared",
        per_model.len()
    );
    assert!(
        exact_checked >= 270,
        "{exact_checked} rows checked against 1%"
    );
    assert!(
        params_checked >= 250,
        "{params_checked} parameter counts checked"
    );
}
