//! The human table: the run in one line, the peak and where it happens, the breakdown
//! at the peak in GiB (2 decimals), activation headline numbers, the fit verdict.

use std::fmt::Write;

use crate::distributed::search::{Candidate, PlanResult, SERVING_COST};
use crate::estimate::{Estimate, ModelSummary};
use crate::report::Fit;
use crate::units::bytes::Bytes;
use crate::workload::{Task, Workload};

/// A searched micro-batch (or concurrency): the number, or "≥ n" when it is the
/// search limit.
fn searched(c: &Candidate) -> String {
    if c.at_search_limit {
        format!("≥ {}", c.max_micro_batch)
    } else {
        c.max_micro_batch.to_string()
    }
}

/// [`searched`] for a headline answer, saying how to raise the limit.
fn searched_words(c: &Candidate) -> String {
    if c.at_search_limit {
        format!("≥ {} (search limit; raise --max-batch)", c.max_micro_batch)
    } else {
        c.max_micro_batch.to_string()
    }
}

/// A parameter count in the unit of its size: `8.03 B`, `124.44 M`, `202.05 K`, `0`.
fn param_count(n: u64) -> String {
    let x = n as f64;
    match n {
        1_000_000_000.. => format!("{:.2} B", x / 1e9),
        1_000_000.. => format!("{:.2} M", x / 1e6),
        1_000.. => format!("{:.2} K", x / 1e3),
        _ => n.to_string(),
    }
}

/// One estimate: the run, the peak and its breakdown, the activations kept for
/// backward (training), the fit verdict, the warnings.
pub fn render(e: &Estimate, w: &Workload, fit: Option<&Fit>) -> String {
    render_run(e, w, fit, None)
}

/// [`render`], naming the framework whose recipe keeps fp32 master weights the user
/// did not ask for.
fn render_run(e: &Estimate, w: &Workload, fit: Option<&Fit>, implied: Option<&str>) -> String {
    let mut s = String::new();
    write_model(&mut s, &e.model);
    write_task(&mut s, w, implied);
    let _ = writeln!(s);
    write_peak(&mut s, e);
    if w.task == Task::Train {
        write_activations(&mut s, e);
    }
    if let Some(f) = fit {
        write_fit(&mut s, f);
    }
    for warn in &e.warnings {
        let _ = writeln!(s, "warning: {warn}");
    }
    s
}

/// The model line: name, family, layers, hidden size, total and trainable parameters.
fn write_model(s: &mut String, m: &ModelSummary) {
    let active = if m.moe {
        format!(", {} active per token", param_count(m.params_active))
    } else {
        String::new()
    };
    let vision = m.vision.as_ref().map_or(String::new(), |v| {
        format!(
            ", vision {} params, {} x {} image tokens, vision {}",
            param_count(v.params),
            v.images,
            v.tokens_per_image,
            v.train
        )
    });
    let _ = writeln!(
        s,
        "llm-mem estimate: {} ({}, {} layers, hidden {}, {} params{active}, {} trainable{vision})",
        m.name,
        m.family,
        m.layers,
        m.hidden,
        param_count(m.params_total),
        param_count(m.params_trainable)
    );
}

/// The task line: the training settings, or the serving shape for inference.
fn write_task(s: &mut String, w: &Workload, implied: Option<&str>) {
    let master = match (w.master_weights, implied) {
        (_, Some(by)) => format!(" + fp32 master weights (implied by {by})"),
        (true, None) => " + fp32 master weights".to_string(),
        (false, None) => String::new(),
    };
    use crate::arch::Adapter;
    let method = match w.method.lora() {
        Some(l) if l.adapter == Adapter::PrefixTuning => format!(
            "{} (peft prefix-tuning, {} virtual keys and values per layer)",
            w.method, l.rank
        ),
        Some(l) if l.adapter == Adapter::PromptTuning => format!(
            "{} (peft prompt-tuning, {} virtual tokens prepended)",
            w.method, l.rank
        ),
        Some(l) if l.adapter == Adapter::LnTuning => {
            format!("{} (peft ln-tuning: the model type's norms)", w.method)
        }
        Some(l) if l.adapter == Adapter::Ia3 => {
            format!("{} (peft ia3) targets={}", w.method, l.targets)
        }
        Some(l) => {
            let tuner = if l.adapter == Adapter::Lora {
                String::new()
            } else {
                format!(" (peft {})", l.adapter)
            };
            format!(
                "{}{tuner} r={} alpha={} targets={}",
                w.method, l.rank, l.alpha, l.targets
            )
        }
        None => w.method.to_string(),
    };
    match w.task {
        Task::Train => {
            let _ = writeln!(
                s,
                "task: train {method}, {}{}, {}, batch {} x seq {} (grad-accum {}), attn {}, grad-ckpt {}, loss {}, runtime {}",
                w.precision,
                master,
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
}

/// The peak (device, allocated, reserved; phase and event), then the components
/// alive at it in GiB and their total.
fn write_peak(s: &mut String, e: &Estimate) {
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
}

/// Training only: the activations kept for backward, per layer, outside, in all.
fn write_activations(s: &mut String, e: &Estimate) {
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "activations kept for backward: {} per layer, {} outside the layers, {} in all",
        Bytes(e.activations.per_layer_bytes),
        Bytes(e.activations.non_layer_bytes),
        Bytes(e.activations.total_bytes)
    );
}

/// The verdict against a GPU: fits with the memory left free, or the shortfall.
fn write_fit(s: &mut String, f: &Fit) {
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

/// A distributed estimate: the worst rank in full, then one line per rank class.
pub fn render_distributed(
    d: &crate::distributed::DistributedEstimate,
    w: &Workload,
    layout: &crate::workload::layout::Layout,
    fit: Option<&Fit>,
) -> String {
    let mut s = String::new();
    let sharding = match (layout.zero, layout.fsdp) {
        (z, _) if z > 0 => format!("ZeRO-{z}"),
        (_, Some(m)) => format!("FSDP {m:?} (v{})", layout.fsdp_version),
        _ if layout.distributed_optimizer => "distributed optimizer".into(),
        _ => "replicated".into(),
    };
    let _ = writeln!(
        s,
        "layout: {} GPUs = dp {} x tp {} x pp {} x cp {}{}, {}{}{}",
        d.world,
        layout.dp,
        layout.tp,
        layout.pp,
        layout.cp,
        if layout.sequence_parallel {
            " (sequence parallel)"
        } else {
            ""
        },
        sharding,
        if layout.offload_optimizer {
            ", optimizer offloaded"
        } else {
            ""
        },
        if layout.offload_params {
            ", parameters offloaded"
        } else {
            ""
        },
    );
    let worst = d.worst();
    let _ = writeln!(
        s,
        "worst rank: {} ({} ranks, {} layers)\n",
        worst.name, worst.ranks, worst.layers
    );
    s += &render_run(
        &worst.estimate,
        w,
        fit,
        d.implied_master.map(|m| m.as_str()),
    );
    write_rank_classes(&mut s, d);
    s
}

/// One line per rank class, then the host memory of an offload layout.
fn write_rank_classes(s: &mut String, d: &crate::distributed::DistributedEstimate) {
    let _ = writeln!(s, "\nper rank class:");
    let _ = writeln!(
        s,
        "  {:<18} {:>6} {:>7} {:>12} {:>14}  peak at",
        "class", "ranks", "layers", "device GiB", "model states"
    );
    for r in &d.per_rank {
        let _ = writeln!(
            s,
            "  {:<18} {:>6} {:>7} {:>12.2} {:>14.2}  {}: {}",
            r.name,
            r.ranks,
            r.layers,
            r.estimate.peak.device.gib(),
            r.model_states_bytes.gib(),
            r.estimate.peak.phase.as_str(),
            r.estimate.peak.event
        );
    }
    if let Some(h) = &d.host {
        let _ = writeln!(
            s,
            "\nhost memory: {} per node of {} GPUs: {}",
            h.bytes_per_node, h.gpus_per_node, h.basis
        );
    }
}

/// `plan`: the fitting layouts, best first, and the two headline answers.
pub fn render_plan(
    r: &PlanResult,
    model: &str,
    gpu: &str,
    capacity: Bytes,
    elapsed: std::time::Duration,
) -> String {
    let mut s = String::new();
    write_search(&mut s, r, model, gpu, capacity, elapsed);
    if r.fits.is_empty() {
        let _ = writeln!(
            s,
            "nothing fits: no layout of the space runs micro-batch 1 within {}",
            capacity
        );
    } else if r.cost == SERVING_COST {
        write_serving(&mut s, r);
    } else {
        write_training(&mut s, r);
    }
    s
}

/// What was searched: the model and GPU, the count and time of the search, the space
/// and the ranking.
fn write_search(
    s: &mut String,
    r: &PlanResult,
    model: &str,
    gpu: &str,
    capacity: Bytes,
    elapsed: std::time::Duration,
) {
    let _ = writeln!(s, "llm-mem plan: {model} on GPUs of {} ({gpu})", capacity);
    let _ = writeln!(
        s,
        "searched {} layouts exhaustively ({} evaluations) in {:.1} ms",
        r.layouts_considered,
        r.evaluations,
        elapsed.as_secs_f64() * 1e3
    );
    let _ = writeln!(s, "space: {}", r.space);
    let _ = writeln!(s, "precision: {}", r.precision);
    let _ = writeln!(s, "ranked by: {}\n", r.cost);
}

/// Serving: one row per tensor-parallel degree, then the most concurrent sequences.
fn write_serving(s: &mut String, r: &PlanResult) {
    let _ = writeln!(
        s,
        "  {:>4} {:>9} {:>12} {:>10}",
        "tp", "replicas", "concurrency", "peak GiB"
    );
    for c in &r.fits {
        let _ = writeln!(
            s,
            "  {:>4} {:>9} {:>12} {:>10.2}",
            c.tp,
            c.dp,
            searched(c),
            c.peak_bytes.gib()
        );
    }
    if let Some(c) = &r.largest_micro_batch {
        let _ = writeln!(
            s,
            "\nmost concurrent sequences per replica: {} (tp {}, {} replicas, {:.2} GiB)",
            searched_words(c),
            c.tp,
            c.dp,
            c.peak_bytes.gib()
        );
    }
}

/// Training: one row per fitting layout, then the largest micro-batch and the longest
/// sequence that fit.
fn write_training(s: &mut String, r: &PlanResult) {
    let _ = writeln!(
        s,
        "  {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>3}  {:<13} {:<20} {:<10} {:>6} {:>10} {:>14}",
        "gpus",
        "dp",
        "tp",
        "pp",
        "cp",
        "ep",
        "sp",
        "sharding",
        "offload",
        "grad-ckpt",
        "mbs",
        "peak GiB",
        "host GiB/node"
    );
    for c in &r.fits {
        let _ = writeln!(
            s,
            "  {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>3}  {:<13} {:<20} {:<10} {:>6} {:>10.2} {:>14}",
            c.world,
            c.dp,
            c.tp,
            c.pp,
            c.cp,
            c.ep,
            if c.sequence_parallel { "on" } else { "-" },
            c.sharding.as_str(),
            c.offload.as_str(),
            c.grad_ckpt.as_str(),
            searched(c),
            c.peak_bytes.gib(),
            c.host_bytes_per_node
                .map_or("-".to_string(), |b| format!("{:.2}", b.gib()))
        );
    }
    if let Some(h) = r.fits.first().and_then(|c| c.host_bytes_per_node) {
        let _ = writeln!(
            s,
            "\ncaution: the first row offloads to host memory: it needs {h} of CPU memory per node (pinned; DeepSpeed's estimator / FSDP CPUOffload); check your hosts have it"
        );
    }
    if let Some(c) = &r.largest_micro_batch {
        let _ = writeln!(
            s,
            "\nlargest micro-batch that fits: {} ({})",
            searched_words(c),
            layout_words(c)
        );
    }
    if let Some((seq, c)) = &r.longest_sequence {
        let _ = writeln!(
            s,
            "longest sequence that fits (micro-batch 1): {seq} tokens ({})",
            layout_words(c)
        );
    }
}

/// One candidate's layout in words, shared by the two training headline answers.
fn layout_words(c: &Candidate) -> String {
    format!(
        "dp {} tp {}{} pp {} cp {}{}, {}, grad-ckpt {}, {:.2} GiB",
        c.dp,
        c.tp,
        if c.sequence_parallel {
            " (sequence parallel)"
        } else {
            ""
        },
        c.pp,
        c.cp,
        if c.ep > 1 {
            format!(" ep {}", c.ep)
        } else {
            String::new()
        },
        c.sharding.as_str(),
        c.grad_ckpt.as_str(),
        c.peak_bytes.gib()
    )
}
