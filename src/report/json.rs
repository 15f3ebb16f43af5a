//! `--json`: a versioned document. Integers are bytes.
//!
//! Schema version 1 (fields may be added, never renamed or removed within a version):
//! `schema_version`, `tool{name,version}`, `model{name,family,layers,hidden,
//! params_total,params_trainable}`, `workload{…}`, `overheads{…}`,
//! `peak{allocated_bytes,reserved_bytes,device_bytes,phase,event}`,
//! `components_at_peak{weights,gradients,optimizer_state,master_weights,activations,
//! logits_and_loss,kv_cache,temporaries,overhead}`, `activations{per_layer_bytes,
//! non_layer_bytes,total_bytes}`, `timeline[{phase,event,allocated_bytes,
//! reserved_bytes,device_bytes}]`, `fit` (null without `--gpu`/`--gpu-memory`),
//! `warnings[]`.

use serde::Serialize;

use crate::estimate::timeline::Components;
use crate::estimate::Estimate;
use crate::report::Fit;
use crate::workload::overhead::Overheads;
use crate::workload::Workload;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Doc<'a> {
    schema_version: u32,
    tool: Tool,
    model: &'a crate::estimate::ModelSummary,
    workload: WorkloadOut<'a>,
    overheads: &'a Overheads,
    peak: PeakOut<'a>,
    components_at_peak: &'a Components,
    activations: &'a crate::estimate::ActivationSummary,
    timeline: Vec<EventOut<'a>>,
    fit: Option<&'a Fit>,
    warnings: &'a [String],
}

/// The `workload` block: the settings of the run under their v1 names (`precision` is
/// `--dtype`'s value; `lora` is null for full fine-tuning).
#[derive(Serialize)]
struct WorkloadOut<'a> {
    task: &'static str,
    method: &'static str,
    lora: Option<LoraOut<'a>>,
    precision: &'static str,
    master_weights: bool,
    optimizer: &'static str,
    batch: u64,
    seq_len: u64,
    grad_accum: u64,
    attn: &'static str,
    grad_ckpt: &'static str,
    loss: &'static str,
    runtime: &'static str,
    device: &'static str,
    infer: InferOut,
}

#[derive(Serialize)]
struct LoraOut<'a> {
    rank: u64,
    alpha: f64,
    /// `"attn"`, `"all-linear"` or `{"names": [...]}`.
    targets: &'a crate::arch::LoraTargets,
    double_quant: bool,
}

#[derive(Serialize)]
struct InferOut {
    prompt_len: u64,
    gen_len: u64,
    concurrency: u64,
    kv_dtype: crate::units::dtype::DType,
    prefill_chunk: Option<u64>,
}

impl<'a> WorkloadOut<'a> {
    fn new(w: &'a Workload) -> WorkloadOut<'a> {
        WorkloadOut {
            task: w.task.as_str(),
            method: w.method.kind().as_str(),
            lora: w.method.lora().map(|l| LoraOut {
                rank: l.rank,
                alpha: l.alpha,
                targets: &l.targets,
                double_quant: l.double_quant,
            }),
            precision: w.precision.as_str(),
            master_weights: w.master_weights,
            optimizer: w.optimizer.as_str(),
            batch: w.batch,
            seq_len: w.seq_len,
            grad_accum: w.grad_accum,
            attn: w.attn.as_str(),
            grad_ckpt: w.grad_ckpt.as_str(),
            loss: w.loss.as_str(),
            runtime: w.runtime.as_str(),
            device: match w.device {
                crate::workload::Device::Cuda => "cuda",
                crate::workload::Device::Cpu => "cpu",
            },
            infer: InferOut {
                prompt_len: w.infer.prompt_len,
                gen_len: w.infer.gen_len,
                concurrency: w.infer.concurrency,
                kv_dtype: w.infer.kv_dtype,
                prefill_chunk: w.infer.prefill_chunk,
            },
        }
    }
}

#[derive(Serialize)]
struct Tool {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct PeakOut<'a> {
    allocated_bytes: u64,
    reserved_bytes: u64,
    device_bytes: u64,
    phase: &'static str,
    event: &'a str,
}

#[derive(Serialize)]
struct EventOut<'a> {
    phase: &'static str,
    event: &'a str,
    allocated_bytes: u64,
    reserved_bytes: u64,
    device_bytes: u64,
}

pub fn render(e: &Estimate, w: &Workload, ov: &Overheads, fit: Option<&Fit>) -> String {
    let doc = Doc {
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "llm-mem",
            version: env!("CARGO_PKG_VERSION"),
        },
        model: &e.model,
        workload: WorkloadOut::new(w),
        overheads: ov,
        peak: PeakOut {
            allocated_bytes: e.peak.allocated.get(),
            reserved_bytes: e.peak.reserved.get(),
            device_bytes: e.peak.device.get(),
            phase: e.peak.phase.as_str(),
            event: &e.peak.event,
        },
        components_at_peak: &e.components_at_peak,
        activations: &e.activations,
        timeline: e
            .timeline
            .iter()
            .map(|ev| EventOut {
                phase: ev.phase.as_str(),
                event: &ev.event,
                allocated_bytes: ev.allocated.get(),
                reserved_bytes: ev.reserved.get(),
                device_bytes: ev.components.total().get(),
            })
            .collect(),
        fit,
        warnings: &e.warnings,
    };
    serde_json::to_string_pretty(&doc).expect("the estimate serializes") + "\n"
}

/// A distributed estimate: the worst rank's document at the top level (so tools that
/// read single-GPU output keep working) plus `world`, `layout`, `worst_rank` (index
/// into `per_rank`), `model_states_bytes` of the worst rank and `per_rank[]`, one entry
/// per rank class with the same fields as a single-GPU document plus `name`, `stage`,
/// `layers`, `ranks` and `model_states_bytes`.
pub fn render_distributed(
    d: &crate::distributed::DistributedEstimate,
    w: &Workload,
    ov: &Overheads,
    layout: &crate::workload::layout::Layout,
    fit: Option<&Fit>,
) -> String {
    let doc_of = |e: &Estimate, f: Option<&Fit>| -> serde_json::Value {
        serde_json::from_str(&render(e, w, ov, f)).expect("our own JSON parses")
    };
    let worst = d.worst();
    let mut top = doc_of(&worst.estimate, fit);
    let per_rank: Vec<serde_json::Value> = d
        .per_rank
        .iter()
        .map(|r| {
            let mut v = doc_of(&r.estimate, None);
            let o = v.as_object_mut().expect("object");
            for k in ["schema_version", "tool", "workload", "overheads", "fit"] {
                o.remove(k);
            }
            o.insert("name".into(), r.name.clone().into());
            o.insert("stage".into(), r.stage.into());
            o.insert("layers".into(), r.layers.into());
            o.insert("ranks".into(), r.ranks.into());
            o.insert(
                "model_states_bytes".into(),
                r.model_states_bytes.get().into(),
            );
            v
        })
        .collect();
    let o = top.as_object_mut().expect("object");
    o.insert("world".into(), d.world.into());
    o.insert(
        "layout".into(),
        serde_json::to_value(layout).expect("layout serializes"),
    );
    o.insert("worst_rank".into(), d.worst_rank.into());
    o.insert(
        "model_states_bytes".into(),
        worst.model_states_bytes.get().into(),
    );
    o.insert("per_rank".into(), per_rank.into());
    serde_json::to_string_pretty(&top).expect("serializes") + "\n"
}

/// `plan --json`.
pub fn render_plan(
    r: &crate::distributed::search::PlanResult,
    model: &str,
    gpu: &str,
    capacity: crate::units::bytes::Bytes,
) -> String {
    let v = serde_json::json!({
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "llm-mem", "version": env!("CARGO_PKG_VERSION")},
        "model": model,
        "gpu": gpu,
        "capacity_bytes": capacity.get(),
        "result": r,
    });
    serde_json::to_string_pretty(&v).expect("serializes") + "\n"
}
