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

use crate::estimate::Estimate;
use crate::overhead::Overheads;
use crate::report::Fit;
use crate::timeline::Components;
use crate::workload::Workload;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Doc<'a> {
    schema_version: u32,
    tool: Tool,
    model: &'a crate::estimate::ModelSummary,
    workload: &'a Workload,
    overheads: &'a Overheads,
    peak: PeakOut<'a>,
    components_at_peak: &'a Components,
    activations: &'a crate::estimate::ActivationSummary,
    timeline: Vec<EventOut<'a>>,
    fit: Option<&'a Fit>,
    warnings: &'a [String],
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
        workload: w,
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
