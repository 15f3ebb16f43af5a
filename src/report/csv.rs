//! `--csv`: one header line and one row per estimate (integers are bytes), so sweeps
//! can be concatenated.

use crate::estimate::Estimate;
use crate::report::Fit;
use crate::workload::Workload;

pub const HEADER: &[&str] = &[
    "model",
    "task",
    "method",
    "dtype",
    "optimizer",
    "batch",
    "seq_len",
    "grad_accum",
    "attn",
    "grad_ckpt",
    "loss",
    "runtime",
    "params_total",
    "params_trainable",
    "peak_phase",
    "peak_event",
    "allocated_bytes",
    "reserved_bytes",
    "device_bytes",
    "weights",
    "gradients",
    "optimizer_state",
    "master_weights",
    "activations",
    "logits_and_loss",
    "kv_cache",
    "temporaries",
    "overhead",
    "per_layer_bytes",
    "non_layer_bytes",
    "fits",
];

pub fn render(e: &Estimate, w: &Workload, fit: Option<&Fit>) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(HEADER).expect("in-memory write");
    let c = &e.components_at_peak;
    let mut row: Vec<String> = vec![
        e.model.name.clone(),
        w.task.to_string(),
        w.method.to_string(),
        w.precision.to_string(),
        w.optimizer.to_string(),
        w.batch.to_string(),
        w.seq_len.to_string(),
        w.grad_accum.to_string(),
        w.attn.to_string(),
        w.grad_ckpt.to_string(),
        w.loss.to_string(),
        w.runtime.to_string(),
        e.model.params_total.to_string(),
        e.model.params_trainable.to_string(),
        e.peak.phase.as_str().to_string(),
        e.peak.event.clone(),
        e.peak.allocated.get().to_string(),
        e.peak.reserved.get().to_string(),
        e.peak.device.get().to_string(),
    ];
    row.extend(c.entries().iter().map(|(_, b)| b.get().to_string()));
    row.push(e.activations.per_layer_bytes.to_string());
    row.push(e.activations.non_layer_bytes.to_string());
    row.push(fit.map_or(String::new(), |f| f.fits.to_string()));
    out.write_record(&row).expect("in-memory write");
    String::from_utf8(out.into_inner().expect("flush")).expect("utf-8")
}

/// One row per rank class, with `rank_class`, `ranks` and `model_states_bytes` first.
pub fn render_distributed(
    d: &crate::distributed::DistributedEstimate,
    w: &Workload,
    fit: Option<&Fit>,
) -> String {
    let mut out = String::new();
    for (i, r) in d.per_rank.iter().enumerate() {
        let one = render(&r.estimate, w, fit.filter(|_| i == d.worst_rank));
        let mut lines = one.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        if i == 0 {
            out += &format!("rank_class,ranks,model_states_bytes,worst,{header}\n");
        }
        out += &format!(
            "\"{}\",{},{},{},{row}\n",
            r.name,
            r.ranks,
            r.model_states_bytes.get(),
            i == d.worst_rank
        );
    }
    out
}
