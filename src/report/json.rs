//! `--json`: versioned documents. Integers are bytes unless named otherwise.
//!
//! Every document is built from the wire types of [`super::wire`], filled here from the
//! domain types; no domain type is serialized, so renaming a field in the estimator
//! cannot change the output.
//!
//! Schema version 1: fields may be added, never renamed or removed within a version.
//! The blocks below list every field of every document, in output order: `a{…}` is an
//! object, `a[{…}]` an array of objects, `a[]` an array of values (or null where said),
//! `#` starts a comment. The tests at the end of this file check each list against the
//! output, so the lists and the documents cannot drift apart.
//!
//! # Estimate: `estimate --json`
//!
//! ```text
//! schema_version                        # 1
//! tool{name,version}                    # "llm-mem" and the crate version
//! model{name,family,layers,hidden,params_total,params_trainable}
//! workload{
//!   task,method,
//!   lora{rank,alpha,targets,double_quant}  # null for method "full"; targets:
//!                                          # "attn", "all-linear" or {"names": [...]}
//!   precision,master_weights,optimizer,batch,seq_len,grad_accum,attn,grad_ckpt,loss,
//!   runtime,device,
//!   infer{prompt_len,gen_len,concurrency,kv_dtype,prefill_chunk}
//!                                        # kv_dtype "f32" "bf16" "f16" "f8";
//!                                        # prefill_chunk null: one pass
//! }
//! overheads{cuda_context,cublas_workspace,allocator_fragmentation,nccl}
//! peak{allocated_bytes,reserved_bytes,device_bytes,phase,event}
//! components_at_peak{weights,gradients,optimizer_state,master_weights,activations,
//!   logits_and_loss,kv_cache,temporaries,overhead}   # sum: peak.device_bytes
//! activations{per_layer_bytes,non_layer_bytes,total_bytes}
//! timeline[{phase,event,allocated_bytes,reserved_bytes,device_bytes}]
//! fit{gpu,capacity_bytes,fits,headroom_bytes}  # null without --gpu / --gpu-memory;
//!                                              # headroom negative when it does not fit
//! warnings[]                            # strings
//! ```
//!
//! # Distributed estimate: `estimate --json` with a layout (`--tp`, `--dp`, `--zero`, …)
//!
//! The worst rank's estimate at the top level (so tools that read single-GPU output
//! keep working), plus `layout`, `world`, `worst_rank` (index into `per_rank`), the
//! worst rank's `model_states_bytes` and `per_rank`, one entry per rank class (pipeline
//! stage). The keys of every object are in alphabetical order.
//!
//! ```text
//! activations{non_layer_bytes,per_layer_bytes,total_bytes}
//! components_at_peak{activations,gradients,kv_cache,logits_and_loss,master_weights,
//!   optimizer_state,overhead,temporaries,weights}
//! fit{capacity_bytes,fits,gpu,headroom_bytes}   # null without --gpu / --gpu-memory
//! layout{
//!   buffers{ddp_bucket_view,fsdp_shard_group,nccl_per_group,zero3_max_live_params,
//!     zero3_prefetch_bucket,zero_allgather_bucket,zero_reduce_bucket}
//!                                       # nccl_per_group in bytes, buckets in elements
//!   cp,distributed_optimizer,dp,ep,
//!   fsdp,                               # "full", "grad-op", "hybrid" or null
//!   fsdp_version,micro_batches,offload_optimizer,offload_params,pp,
//!   pp_layers[],                        # layers per stage, or null (even split)
//!   sequence_parallel,tp,vpp,zero
//! }
//! model{family,hidden,layers,name,params_total,params_trainable}
//! model_states_bytes
//! overheads{allocator_fragmentation,cublas_workspace,cuda_context,nccl}
//! peak{allocated_bytes,device_bytes,event,phase,reserved_bytes}
//! per_rank[{
//!   activations{non_layer_bytes,per_layer_bytes,total_bytes}
//!   components_at_peak{activations,gradients,kv_cache,logits_and_loss,master_weights,
//!     optimizer_state,overhead,temporaries,weights}
//!   layers,
//!   model{family,hidden,layers,name,params_total,params_trainable}
//!   model_states_bytes,
//!   name,                               # e.g. "stage 0 (first)", "every rank"
//!   peak{allocated_bytes,device_bytes,event,phase,reserved_bytes}
//!   ranks,stage,
//!   timeline[{allocated_bytes,device_bytes,event,phase,reserved_bytes}]
//!   warnings[]
//! }]
//! schema_version
//! timeline[{allocated_bytes,device_bytes,event,phase,reserved_bytes}]
//! tool{name,version}
//! warnings[]
//! workload{
//!   attn,batch,device,grad_accum,grad_ckpt,
//!   infer{concurrency,gen_len,kv_dtype,prefill_chunk,prompt_len}
//!   lora{alpha,double_quant,rank,targets}  # null for method "full"
//!   loss,master_weights,method,optimizer,precision,runtime,seq_len,task
//! }
//! world
//! worst_rank
//! ```
//!
//! # Plan: `plan --json`
//!
//! Keys in alphabetical order. A candidate (`fits[]`, `largest_micro_batch`, the second
//! element of `longest_sequence`) has `sharding` "ddp", "distributed-optimizer",
//! "zero1", "zero2", "zero3", "fsdp-full" or "fsdp-grad-op" and `offload` "none",
//! "optimizer" or "optimizer-and-params".
//!
//! ```text
//! capacity_bytes
//! gpu                                   # the --gpu name or the --gpu-memory amount
//! model
//! result{
//!   cost,evaluations,
//!   fits[{cp,dp,grad_ckpt,max_micro_batch,offload,peak_bytes,pp,sharding,tp,world}]
//!   largest_micro_batch{cp,dp,grad_ckpt,max_micro_batch,offload,peak_bytes,pp,
//!     sharding,tp,world}                # null when nothing fits
//!   layouts_considered,
//!   longest_sequence[]                  # [seq_len, candidate], null with --max-seq 0
//!   space
//! }
//! schema_version
//! tool{name,version}
//! ```
//!
//! # Serving plan: `plan --task infer --json`
//!
//! The plan document; each candidate is one tensor-parallel replica: `world` = `tp` =
//! GPUs per replica, `dp` = replicas, `max_micro_batch` = concurrent sequences per
//! replica, and `pp`, `cp`, `sharding`, `offload`, `grad_ckpt` are 1, 1, "ddp", "none",
//! "none". `longest_sequence` is null.
//!
//! ```text
//! capacity_bytes
//! gpu
//! model
//! result{
//!   cost,evaluations,
//!   fits[{cp,dp,grad_ckpt,max_micro_batch,offload,peak_bytes,pp,sharding,tp,world}]
//!   largest_micro_batch{cp,dp,grad_ckpt,max_micro_batch,offload,peak_bytes,pp,
//!     sharding,tp,world}
//!   layouts_considered,
//!   longest_sequence[]                  # null
//!   space
//! }
//! schema_version
//! tool{name,version}
//! ```
//!
//! # Models: `models --json`
//!
//! A bare array (no `schema_version`), one entry per preset, sorted by name.
//!
//! ```text
//! [{family,hf_id,name,params_total,quantization}]  # quantization e.g. "gptq 4-bit", or null
//! ```

use serde::Serialize;

use crate::arch::LoraTargets;
use crate::distributed::search::{Candidate, Offload, PlanResult, Sharding};
use crate::distributed::{DistributedEstimate, RankClass};
use crate::estimate::timeline::{Components, Event};
use crate::estimate::{ActivationSummary, Estimate, ModelSummary, Peak};
use crate::hf::presets::PresetInfo;
use crate::report::wire;
use crate::report::Fit;
use crate::units::bytes::Bytes;
use crate::units::dtype::DType;
use crate::workload::layout::{FsdpMode, Layout};
use crate::workload::overhead::Overheads;
use crate::workload::{Device, Workload};

pub const SCHEMA_VERSION: u32 = 1;

/// A single-GPU estimate.
pub fn render(e: &Estimate, w: &Workload, ov: &Overheads, fit: Option<&Fit>) -> String {
    pretty(&wire::EstimateDoc {
        schema_version: SCHEMA_VERSION,
        tool: tool(),
        model: model(&e.model),
        workload: workload(w),
        overheads: overheads(ov),
        peak: peak(&e.peak),
        components_at_peak: components(&e.components_at_peak),
        activations: activations(&e.activations),
        timeline: timeline(&e.timeline),
        fit: fit.map(fit_out),
        warnings: &e.warnings,
    })
}

/// A distributed estimate: the worst rank's estimate at the top level plus the layout
/// and every rank class (see the module documentation).
pub fn render_distributed(
    d: &DistributedEstimate,
    w: &Workload,
    ov: &Overheads,
    layout: &Layout,
    fit: Option<&Fit>,
) -> String {
    let worst = d.worst();
    let e = &worst.estimate;
    pretty_sorted(&wire::DistributedDoc {
        activations: activations(&e.activations),
        components_at_peak: components(&e.components_at_peak),
        fit: fit.map(fit_out),
        layout: layout_out(layout),
        model: model(&e.model),
        model_states_bytes: worst.model_states_bytes.get(),
        overheads: overheads(ov),
        peak: peak(&e.peak),
        per_rank: d.per_rank.iter().map(rank_class).collect(),
        schema_version: SCHEMA_VERSION,
        timeline: timeline(&e.timeline),
        tool: tool(),
        warnings: &e.warnings,
        workload: workload(w),
        world: d.world,
        worst_rank: d.worst_rank as u64,
    })
}

/// `plan --json` (training and serving).
pub fn render_plan(r: &PlanResult, model: &str, gpu: &str, capacity: Bytes) -> String {
    pretty_sorted(&wire::PlanDoc {
        capacity_bytes: capacity.get(),
        gpu,
        model,
        result: wire::PlanResult {
            cost: r.cost,
            evaluations: r.evaluations,
            fits: r.fits.iter().map(candidate).collect(),
            largest_micro_batch: r.largest_micro_batch.as_ref().map(candidate),
            layouts_considered: r.layouts_considered,
            longest_sequence: r.longest_sequence.as_ref().map(|(s, c)| (*s, candidate(c))),
            space: &r.space,
        },
        schema_version: SCHEMA_VERSION,
        tool: tool(),
    })
}

/// `models --json`: the presets, in the order given.
pub fn render_models(infos: &[PresetInfo]) -> String {
    let entries: Vec<wire::ModelEntry> = infos
        .iter()
        .map(|i| wire::ModelEntry {
            family: i.family.model_type(),
            hf_id: &i.hf_id,
            name: i.name,
            params_total: i.params_total,
            quantization: i.quantization.as_deref(),
        })
        .collect();
    pretty_sorted(&entries)
}

fn pretty<T: Serialize>(doc: &T) -> String {
    serde_json::to_string_pretty(doc).expect("the wire types serialize") + "\n"
}

/// [`pretty`] with the keys of every object in alphabetical order, whatever the field
/// order of the wire types (and whether or not serde_json preserves insertion order).
fn pretty_sorted<T: Serialize>(doc: &T) -> String {
    let mut v = serde_json::to_value(doc).expect("the wire types serialize");
    v.sort_all_objects();
    pretty(&v)
}

fn tool() -> wire::Tool {
    wire::Tool {
        name: "llm-mem",
        version: env!("CARGO_PKG_VERSION"),
    }
}

fn model(m: &ModelSummary) -> wire::Model<'_> {
    wire::Model {
        name: &m.name,
        family: &m.family,
        layers: m.layers,
        hidden: m.hidden,
        params_total: m.params_total,
        params_trainable: m.params_trainable,
    }
}

fn workload(w: &Workload) -> wire::Workload<'_> {
    wire::Workload {
        task: w.task.as_str(),
        method: w.method.kind().as_str(),
        lora: w.method.lora().map(|l| wire::Lora {
            rank: l.rank,
            alpha: l.alpha,
            targets: match &l.targets {
                LoraTargets::Attn => wire::LoraTargets::Attn,
                LoraTargets::AllLinear => wire::LoraTargets::AllLinear,
                LoraTargets::Names(n) => wire::LoraTargets::Names(n),
            },
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
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        },
        infer: wire::Infer {
            prompt_len: w.infer.prompt_len,
            gen_len: w.infer.gen_len,
            concurrency: w.infer.concurrency,
            kv_dtype: dtype_name(w.infer.kv_dtype),
            prefill_chunk: w.infer.prefill_chunk,
        },
    }
}

/// v1 names of dtypes: the storage names (`f32`, not the `fp32` of `--dtype`).
fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "f64",
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F8 => "f8",
        DType::I8 => "i8",
        DType::U8 => "u8",
        DType::I16 => "i16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "bool",
    }
}

fn overheads(ov: &Overheads) -> wire::Overheads {
    wire::Overheads {
        cuda_context: ov.cuda_context.get(),
        cublas_workspace: ov.cublas_workspace.get(),
        allocator_fragmentation: ov.allocator_fragmentation,
        nccl: ov.nccl.get(),
    }
}

fn peak(p: &Peak) -> wire::Peak<'_> {
    wire::Peak {
        allocated_bytes: p.allocated.get(),
        reserved_bytes: p.reserved.get(),
        device_bytes: p.device.get(),
        phase: p.phase.as_str(),
        event: &p.event,
    }
}

fn components(c: &Components) -> wire::Components {
    wire::Components {
        weights: c.weights.get(),
        gradients: c.gradients.get(),
        optimizer_state: c.optimizer_state.get(),
        master_weights: c.master_weights.get(),
        activations: c.activations.get(),
        logits_and_loss: c.logits_and_loss.get(),
        kv_cache: c.kv_cache.get(),
        temporaries: c.temporaries.get(),
        overhead: c.overhead.get(),
    }
}

fn activations(a: &ActivationSummary) -> wire::Activations {
    wire::Activations {
        per_layer_bytes: a.per_layer_bytes,
        non_layer_bytes: a.non_layer_bytes,
        total_bytes: a.total_bytes,
    }
}

fn timeline(events: &[Event]) -> Vec<wire::Event<'_>> {
    events
        .iter()
        .map(|ev| wire::Event {
            phase: ev.phase.as_str(),
            event: &ev.event,
            allocated_bytes: ev.allocated.get(),
            reserved_bytes: ev.reserved.get(),
            device_bytes: ev.components.total().get(),
        })
        .collect()
}

fn fit_out(f: &Fit) -> wire::Fit<'_> {
    wire::Fit {
        gpu: &f.gpu,
        capacity_bytes: f.capacity_bytes.get(),
        fits: f.fits,
        headroom_bytes: f.headroom_bytes,
    }
}

fn rank_class(r: &RankClass) -> wire::RankClass<'_> {
    let e = &r.estimate;
    wire::RankClass {
        activations: activations(&e.activations),
        components_at_peak: components(&e.components_at_peak),
        layers: r.layers,
        model: model(&e.model),
        model_states_bytes: r.model_states_bytes.get(),
        name: &r.name,
        peak: peak(&e.peak),
        ranks: r.ranks,
        stage: r.stage,
        timeline: timeline(&e.timeline),
        warnings: &e.warnings,
    }
}

fn layout_out(l: &Layout) -> wire::Layout<'_> {
    let b = &l.buffers;
    wire::Layout {
        buffers: wire::Buffers {
            ddp_bucket_view: b.ddp_bucket_view,
            fsdp_shard_group: b.fsdp_shard_group,
            nccl_per_group: b.nccl_per_group.get(),
            zero3_max_live_params: b.zero3_max_live_params,
            zero3_prefetch_bucket: b.zero3_prefetch_bucket,
            zero_allgather_bucket: b.zero_allgather_bucket,
            zero_reduce_bucket: b.zero_reduce_bucket,
        },
        cp: l.cp,
        distributed_optimizer: l.distributed_optimizer,
        dp: l.dp,
        ep: l.ep,
        fsdp: l.fsdp.map(|m| match m {
            FsdpMode::Full => "full",
            FsdpMode::GradOp => "grad-op",
            FsdpMode::Hybrid => "hybrid",
        }),
        fsdp_version: l.fsdp_version,
        micro_batches: l.micro_batches,
        offload_optimizer: l.offload_optimizer,
        offload_params: l.offload_params,
        pp: l.pp,
        pp_layers: l.pp_layers.as_deref(),
        sequence_parallel: l.sequence_parallel,
        tp: l.tp,
        vpp: l.vpp,
        zero: l.zero,
    }
}

/// v1 names of a plan candidate's sharding and offload (not the short labels of the
/// human table: `distributed-optimizer`, not `dist-opt`).
fn candidate(c: &Candidate) -> wire::Candidate {
    wire::Candidate {
        cp: c.cp,
        dp: c.dp,
        grad_ckpt: c.grad_ckpt.as_str(),
        max_micro_batch: c.max_micro_batch,
        offload: match c.offload {
            Offload::None => "none",
            Offload::Optimizer => "optimizer",
            Offload::OptimizerAndParams => "optimizer-and-params",
        },
        peak_bytes: c.peak_bytes.get(),
        pp: c.pp,
        sharding: match c.sharding {
            Sharding::Ddp => "ddp",
            Sharding::DistributedOptimizer => "distributed-optimizer",
            Sharding::Zero1 => "zero1",
            Sharding::Zero2 => "zero2",
            Sharding::Zero3 => "zero3",
            Sharding::FsdpFull => "fsdp-full",
            Sharding::FsdpGradOp => "fsdp-grad-op",
        },
        tp: c.tp,
        world: c.world,
    }
}
