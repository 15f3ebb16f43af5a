//! The human table: the run in one line, the peak and where it happens, the breakdown
//! at the peak in GiB (2 decimals), activation headline numbers, the fit verdict.

use std::fmt::Write;

use crate::bytes::Bytes;
use crate::estimate::Estimate;
use crate::report::Fit;
use crate::workload::{Method, Task, Workload};

fn billions(n: u64) -> String {
    format!("{:.2} B", n as f64 / 1e9)
}

pub fn render(e: &Estimate, w: &Workload, fit: Option<&Fit>) -> String {
    let mut s = String::new();
    let m = &e.model;
    let _ = writeln!(
        s,
        "llm-mem estimate: {} ({}, {} layers, hidden {}, {} params, {} trainable)",
        m.name,
        m.family,
        m.layers,
        m.hidden,
        billions(m.params_total),
        billions(m.params_trainable)
    );
    let method = match (&w.lora, w.method) {
        (Some(l), Method::Lora | Method::Qlora) => format!(
            "{} r={} alpha={} targets={}",
            w.method, l.rank, l.alpha, l.targets
        ),
        _ => w.method.to_string(),
    };
    match w.task {
        Task::Train => {
            let _ = writeln!(
                s,
                "task: train {method}, {}{}, {}, batch {} x seq {} (grad-accum {}), attn {}, grad-ckpt {}, loss {}, runtime {}",
                w.precision,
                if w.master_weights { " + fp32 master weights" } else { "" },
                w.optimizer,
                w.batch,
                w.seq_len,
                w.grad_accum,
                w.attn,
                w.grad_ckpt,
                w.loss,
                w.runtime
            );
        }
        Task::Infer => {
            let i = &w.infer;
            let _ = writeln!(
                s,
                "task: infer, {}, prompt {} + {} generated tokens, {} concurrent, kv-cache {}, attn {}",
                w.precision, i.prompt_len, i.gen_len, i.concurrency, i.kv_dtype, w.attn
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "peak: {} on the device ({} allocated, {} reserved) at {}: {}",
        e.peak.device,
        e.peak.allocated,
        e.peak.reserved,
        e.peak.phase.as_str(),
        e.peak.event
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "  {:<18} {:>10}", "at the peak", "GiB");
    for (name, b) in e.components_at_peak.entries() {
        let _ = writeln!(s, "  {:<18} {:>10.2}", name, b.gib());
    }
    let _ = writeln!(s, "  {:<18} {:>10.2}", "total", e.peak.device.gib());
    if w.task == Task::Train {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "activations kept for backward: {} per layer, {} outside the layers, {} in all",
            Bytes(e.activations.per_layer_bytes),
            Bytes(e.activations.non_layer_bytes),
            Bytes(e.activations.total_bytes)
        );
    }
    if let Some(f) = fit {
        let _ = writeln!(s);
        let verdict = if f.fits { "fits" } else { "does NOT fit" };
        let _ = writeln!(
            s,
            "{verdict} in {} ({}): {} {}",
            f.gpu,
            f.capacity_bytes,
            Bytes(f.headroom_bytes.unsigned_abs()),
            if f.fits { "free" } else { "short" }
        );
    }
    for warn in &e.warnings {
        let _ = writeln!(s, "warning: {warn}");
    }
    s
}
