//! What the fuzz targets of `tests/it/fuzz.rs` and of the binary (`src/cli/fuzz.rs`,
//! which includes this file with `#[path]`) share: the case budget, the value pools,
//! text mutations of real files, the estimate path of `llm-mem estimate --json` and
//! the checks on its JSON document. Only `llm_mem::`, `proptest` and `serde_json`.

use std::time::Instant;

use llm_mem::distributed::estimate_layout;
use llm_mem::estimate::{estimate_corrected, Correction};
use llm_mem::report::{self, Fit};
use llm_mem::workload::settings::Settings;
use llm_mem::ModelSpec;
use proptest::prelude::*;
use serde_json::Value;

/// Cases for a target whose local default is `default`: `LLM_MEM_FUZZ_CASES` scales
/// every target (it is the number of cases of a target whose default is 1000).
pub fn cases(default: u32) -> u32 {
    match std::env::var("LLM_MEM_FUZZ_CASES") {
        Ok(v) => {
            let n: u64 = v.trim().parse().expect("LLM_MEM_FUZZ_CASES: an integer");
            (n * default as u64 / 1000).max(1) as u32
        }
        Err(_) => default,
    }
}

/// Print one target's case count and wall time (`cargo test -- --nocapture` shows it;
/// `.ci/run` greps the `fuzz:` lines).
pub fn report(target: &str, cases: usize, skipped: usize, started: Instant) {
    let s = started.elapsed().as_secs_f64();
    println!("fuzz: {target}: {cases} cases ({skipped} skipped: too large for the time budget) in {s:.2} s");
}

/// Values that break parsers and arithmetic: bounds, overflow, other types.
pub const NASTY: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "3",
    "7",
    "8",
    "16",
    "64",
    "4096",
    "65536",
    "1048576",
    "67108864",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "1e30",
    "-1e30",
    "1e-30",
    "0.5",
    "1.5",
    "NaN",
    "inf",
    "-0",
    "2.5e9",
    "100000000000",
    "\"x\"",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "\"\"",
    "80GiB",
    "1000PiB",
    "0.0001",
];

/// Words the settings accept (and near misses), for string slots.
pub const WORDS: &[&str] = &[
    "train",
    "infer",
    "full",
    "lora",
    "qlora",
    "bf16",
    "fp16",
    "fp32",
    "amp-bf16",
    "amp-fp16",
    "fp8",
    "adamw",
    "adamw-foreach",
    "adamw-8bit",
    "paged-adamw",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
    "eager",
    "sdpa",
    "flash",
    "none",
    "selective",
    "standard",
    "chunked",
    "fused-linear-ce",
    "torch",
    "candle",
    "cuda",
    "cpu",
    "attn",
    "all-linear",
    "q_proj,v_proj",
    "gate_proj",
    "bogus_proj",
    "hybrid",
    "grad-op",
    "h100-80gb",
    "rtx4090",
    "a100-40gb",
    "gpt2",
    "llama-3.2-1b",
    "qwen2.5-0.5b",
    "llama-3.1-8b",
    "qwen3-0.6b",
    "mistral-7b-v0.1-gptq",
    "gemma-2-2b",
    "phi-2",
    "pythia-70m",
    "llama-3.1-70b",
    "full_shard auto_wrap",
    "auto",
    "",
    "é",
    "10,12,10",
];

/// A setting's likely values, by key; other keys draw from [`NASTY`].
pub fn values_for(key: &str) -> &'static [&'static str] {
    match key {
        "model" => &[
            "gpt2",
            "llama-3.2-1b",
            "qwen2.5-0.5b",
            "qwen3-0.6b",
            "llama-3.1-8b",
            "mistral-7b-v0.1-gptq",
            "gemma-2-2b",
            "phi-2",
            "pythia-70m",
            "llama-3.1-70b",
            "nope",
        ],
        "task" => &["train", "infer", "serve", "x"],
        "method" => &["full", "lora", "qlora", "dora"],
        "dtype" => &[
            "bf16", "fp16", "fp32", "amp-bf16", "amp-fp16", "fp8", "int4",
        ],
        "optimizer" => &[
            "adamw",
            "adamw-foreach",
            "adamw-8bit",
            "paged-adamw",
            "paged-adamw-8bit",
            "sgd",
            "sgd-momentum",
            "adafactor",
            "lion",
            "rmsprop",
        ],
        "attn" => &["eager", "sdpa", "flash", "xformers"],
        "grad_ckpt" => &["none", "full", "selective", "on"],
        "loss" => &["standard", "chunked", "fused-linear-ce"],
        "runtime" => &["torch", "candle"],
        "device" => &["cuda", "cpu", "tpu"],
        "kv_dtype" => &["bf16", "fp16", "fp8", "fp32", "int8"],
        "lora_targets" => &["attn", "all-linear", "q_proj,v_proj", "gate_proj", "bogus"],
        "fsdp" => &["full", "grad-op", "hybrid", "no"],
        "fsdp_version" => &["1", "2", "3"],
        "zero" => &["0", "1", "2", "3", "4"],
        "gpu" => &["h100-80gb", "rtx4090", "a100-40gb", "h200", "tpu"],
        "pp_layers" => &["10,12,10", "1,1", "0", "4,4,4,4"],
        "dp" | "tp" | "pp" | "cp" | "ep" | "vpp" | "micro_batches" | "fsdp_shard_group" => {
            &["1", "2", "4", "8", "3", "0", "16", "1024"]
        }
        "batch" | "concurrency" | "grad_accum" | "lora_rank" => {
            &["1", "2", "4", "8", "16", "64", "0", "1048576", "1048577"]
        }
        "seq_len" | "prompt_len" | "gen_len" | "prefill_chunk" | "layers" => &[
            "1",
            "128",
            "512",
            "2048",
            "4096",
            "8192",
            "0",
            "67108864",
            "100000000",
        ],
        "gpu_memory" | "cuda_context" | "cublas_workspace" | "nccl_buffers" => &[
            "80GiB", "24g", "512MiB", "0", "1024", "1000PiB", "-1", "1TiB",
        ],
        "allocator_fragmentation" => &["0", "0.05", "0.5", "1", "-0.1", "2", "NaN"],
        "lora_alpha" => &["16", "32", "0", "-1", "0.5", "inf"],
        _ if key.starts_with("zero") => &["0", "1000", "50000000", "500000000", "1000000000"],
        _ => &["true", "false", "1", "0", "yes"],
    }
}

// ---------------------------------------------------------------- mutations

/// One edit of a text: structure-aware (numbers, quoted words, lines) or raw bytes.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Replace the `n`-th number (mod their count) with a nasty value.
    Number(usize, &'static str),
    /// Replace the `n`-th quoted string's content with a word.
    Word(usize, &'static str),
    DropLine(usize),
    DupLine(usize),
    SwapLines(usize, usize),
    /// Insert a byte at a position (mod the length).
    Byte(usize, u8),
    /// Keep the first `n` bytes (mod the length): a truncated file.
    Cut(usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>();
    prop_oneof![
        4 => (idx, prop::sample::select(NASTY)).prop_map(|(n, v)| Mutation::Number(n, v)),
        3 => (idx, prop::sample::select(WORDS)).prop_map(|(n, v)| Mutation::Word(n, v)),
        2 => idx.prop_map(Mutation::DropLine),
        1 => idx.prop_map(Mutation::DupLine),
        1 => (idx, idx).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (idx, any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
        1 => idx.prop_map(Mutation::Cut),
    ]
}

/// Byte ranges of the numbers (`-?[0-9][0-9.eE+-]*`) in `t`.
fn numbers(t: &str) -> Vec<(usize, usize)> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let s = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b".eE+-".contains(&b[j])) {
                j += 1;
            }
            out.push((s, j));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the contents of `"…"` strings (no escapes) in `t`.
fn quoted(t: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open = None;
    for (i, c) in t.char_indices() {
        match (c, open) {
            ('"', None) => open = Some(i + 1),
            ('"', Some(s)) => {
                out.push((s, i));
                open = None;
            }
            ('\n', Some(_)) => open = None,
            _ => {}
        }
    }
    out
}

fn replace_nth(t: &str, ranges: &[(usize, usize)], n: usize, v: &str) -> String {
    match ranges.get(n % ranges.len().max(1)) {
        Some(&(s, e)) => format!("{}{v}{}", &t[..s], &t[e..]),
        None => t.to_string(),
    }
}

/// `ms` applied to `text` in order.
pub fn mutate(text: &str, ms: &[Mutation]) -> String {
    let mut t = text.to_string();
    for m in ms {
        let lines: Vec<&str> = t.lines().collect();
        let n = lines.len().max(1);
        t = match *m {
            Mutation::Number(k, v) => replace_nth(&t, &numbers(&t), k, v),
            Mutation::Word(k, v) => replace_nth(&t, &quoted(&t), k, v),
            Mutation::DropLine(k) => join(lines.iter().enumerate().filter(|(i, _)| *i != k % n)),
            Mutation::DupLine(k) => {
                let mut l = lines.clone();
                if let Some(x) = lines.get(k % n) {
                    l.insert(k % n, x);
                }
                l.join("\n")
            }
            Mutation::SwapLines(a, b) => {
                let mut l = lines.clone();
                if !l.is_empty() {
                    l.swap(a % n, b % n);
                }
                l.join("\n")
            }
            Mutation::Byte(k, byte) => {
                let mut b = t.into_bytes();
                let at = k % (b.len() + 1);
                b.insert(at, byte);
                String::from_utf8_lossy(&b).into_owned()
            }
            Mutation::Cut(k) => {
                let mut at = k % (t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                t[..at].to_string()
            }
        };
    }
    t
}

fn join<'a>(lines: impl Iterator<Item = (usize, &'a &'a str)>) -> String {
    lines.map(|(_, l)| *l).collect::<Vec<_>>().join("\n")
}

/// A corpus entry index and up to `max` mutations of it.
pub fn mutated(corpus: usize, max: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..corpus, prop::collection::vec(mutation(), 0..=max))
}

// ---------------------------------------------------------------- the estimate path

/// What `llm-mem estimate --json` does with `s` on `spec`, then [`check_doc`] on the
/// document: `Ok(true)` accepted and consistent, `Ok(false)` rejected with an `Err`,
/// `Err` a broken invariant.
pub fn estimate_checked(spec: &ModelSpec, s: &Settings) -> Result<bool, String> {
    let run = match s.resolve(spec) {
        Ok(r) => r,
        Err(_) => return Ok(false),
    };
    let (w, ov, layout) = (&run.workload, &run.overheads, &run.layout);
    let corr = Correction::IDENTITY;
    let doc = if layout.is_distributed() {
        let Ok(d) = estimate_layout(spec, w, ov, layout, &corr) else {
            return Ok(false);
        };
        let fit = run
            .capacity
            .as_ref()
            .map(|(g, c)| Fit::new(g, *c, d.worst().estimate.peak.device));
        report::json::render_distributed(&d, w, ov, layout, fit.as_ref())
    } else {
        let Ok(e) = estimate_corrected(spec, w, ov, &corr) else {
            return Ok(false);
        };
        let fit = run
            .capacity
            .as_ref()
            .map(|(g, c)| Fit::new(g, *c, e.peak.device));
        report::json::render(&e, w, ov, fit.as_ref())
    };
    check_doc(&doc).map_err(|m| format!("{m}\nsettings: {s:?}"))?;
    Ok(true)
}

/// The model `s` names (presets, paths), with `layers` applied; `None` if rejected.
pub fn model_of(s: &Settings) -> Option<ModelSpec> {
    let spec = llm_mem::hf::hub::resolve_with(s.model.as_deref()?, None).ok()?;
    match s.layers {
        Some(l) => spec.with_layers(l).ok(),
        None => Some(spec),
    }
}

fn u(v: &Value, what: &str) -> Result<u128, String> {
    v.as_u64()
        .map(u128::from)
        .ok_or_else(|| format!("{what} is not a u64: {v}"))
}

/// An `estimate --json` document is valid and self-consistent: schema 1; in the top
/// level and in every rank class the components sum to the peak, allocated ≤ reserved
/// ≤ device at the peak and at every event, the peak is the largest event; the fit
/// agrees with the peak; the top level is the worst rank class.
pub fn check_doc(doc: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(doc).map_err(|e| format!("not JSON: {e}"))?;
    if v["schema_version"] != 1 {
        return Err(format!("schema_version {}", v["schema_version"]));
    }
    check_estimate(&v, "top level")?;
    if let Some(ranks) = v.get("per_rank").and_then(Value::as_array) {
        let worst = v["worst_rank"].as_u64().ok_or("no worst_rank")? as usize;
        let w = ranks.get(worst).ok_or("worst_rank out of range")?;
        if w["peak"] != v["peak"] {
            return Err("the top-level peak is not the worst rank's".into());
        }
        for (i, r) in ranks.iter().enumerate() {
            check_estimate(r, &format!("per_rank[{i}]"))?;
            if u(&r["peak"]["device_bytes"], "device")? > u(&w["peak"]["device_bytes"], "")? {
                return Err(format!("per_rank[{i}] exceeds the worst rank"));
            }
        }
    }
    check_fit(&v)
}

fn check_estimate(v: &Value, at: &str) -> Result<(), String> {
    let peak = &v["peak"];
    let (a, r, d) = (
        u(&peak["allocated_bytes"], "allocated")?,
        u(&peak["reserved_bytes"], "reserved")?,
        u(&peak["device_bytes"], "device")?,
    );
    let parts = v["components_at_peak"].as_object().ok_or("no components")?;
    let sum = parts
        .values()
        .map(|x| u(x, "component"))
        .sum::<Result<u128, _>>()?;
    if sum != d {
        return Err(format!("{at}: components sum to {sum}, peak device {d}"));
    }
    if !(a <= r && r <= d) {
        return Err(format!("{at}: peak allocated {a} reserved {r} device {d}"));
    }
    let events = v["timeline"].as_array().ok_or("no timeline")?;
    let mut max = 0;
    for (i, e) in events.iter().enumerate() {
        let (ea, er, ed) = (
            u(&e["allocated_bytes"], "allocated")?,
            u(&e["reserved_bytes"], "reserved")?,
            u(&e["device_bytes"], "device")?,
        );
        if !(ea <= er && er <= ed) {
            return Err(format!(
                "{at}: event {i} {}: {ea} > {er} or > {ed}",
                e["event"]
            ));
        }
        max = max.max(ed);
    }
    if max != d {
        return Err(format!("{at}: largest event {max}, peak {d}"));
    }
    Ok(())
}

fn check_fit(v: &Value) -> Result<(), String> {
    let fit = &v["fit"];
    if fit.is_null() {
        return Ok(());
    }
    let cap = u(&fit["capacity_bytes"], "capacity")? as i128;
    let need = u(&v["peak"]["device_bytes"], "device")? as i128;
    let head = fit["headroom_bytes"]
        .as_i64()
        .ok_or("headroom not an i64")? as i128;
    if fit["fits"] != (need <= cap) || head != cap - need {
        return Err(format!("fit {fit} for a peak of {need}"));
    }
    Ok(())
}
