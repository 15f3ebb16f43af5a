//! `--json`: versioned documents. Integers are bytes unless named otherwise.
//!
//! Every document is built from the wire types of `report/wire.rs`, filled here from the
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
//! model{name,family,layers,hidden,params_total,params_trainable,params_active,vision}
//!                                        # vision: null for a text model, else
//!                                        # {params,images,tokens_per_image,train},
//!                                        # train "frozen" "projector" "lora" "full"
//! workload{
//!   task,method,
//!   lora{rank,alpha,targets,double_quant,dropout,peft}  # null for method "full"; targets:
//!                                          # "attn", "all-linear" or {"names": [...]}
//!   precision,master_weights,
//!   master_weights_implied_by,           # null on one GPU (see the distributed estimate)
//!   optimizer,batch,seq_len,grad_accum,attn,grad_ckpt,loss,
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
//! host_memory{basis,bytes_per_node,gpus_per_node}
//!                                       # CPU memory per node of an offload layout
//!                                       # (DeepSpeed's cpu_mem, FSDP CPUOffload); null
//!                                       # without offload
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
//! model{family,hidden,layers,name,params_active,params_total,params_trainable,vision}
//! model_states_bytes
//! overheads{allocator_fragmentation,cublas_workspace,cuda_context,nccl}
//! peak{allocated_bytes,device_bytes,event,phase,reserved_bytes}
//! per_rank[{
//!   activations{non_layer_bytes,per_layer_bytes,total_bytes}
//!   components_at_peak{activations,gradients,kv_cache,logits_and_loss,master_weights,
//!     optimizer_state,overhead,temporaries,weights}
//!   layers,
//!   model{family,hidden,layers,name,params_active,params_total,params_trainable,vision}
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
//!   lora{alpha,double_quant,dropout,peft,rank,targets}  # null for method "full"
//!   loss,master_weights,
//!   master_weights_implied_by,          # "ZeRO", "Megatron", "FSDP MixedPrecision":
//!                                       # fp32 master weights the layout's framework
//!                                       # keeps though master_weights is false; or null
//!   method,optimizer,precision,runtime,seq_len,task
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
//! "optimizer" or "optimizer-and-params"; `max_micro_batch_at_search_limit` is true
//! when `max_micro_batch` is `--max-batch` itself (a larger one may fit);
//! `sequence_parallel` is on whenever tp > 1; `host_bytes_per_node` is the CPU memory
//! per node of an offload row (null without offload).
//!
//! ```text
//! capacity_bytes
//! gpu                                   # the --gpu name or the --gpu-memory amount
//! model
//! result{
//!   cost,evaluations,
//!   fits[{cp,dp,ep,grad_ckpt,host_bytes_per_node,max_micro_batch,
//!     max_micro_batch_at_search_limit,offload,peak_bytes,pp,sequence_parallel,
//!     sharding,tp,world}]
//!   largest_micro_batch{cp,dp,ep,grad_ckpt,host_bytes_per_node,max_micro_batch,
//!     max_micro_batch_at_search_limit,offload,peak_bytes,pp,sequence_parallel,
//!     sharding,tp,world}                # null when nothing fits
//!   layouts_considered,
//!   longest_sequence[]                  # [seq_len, candidate], null with --max-seq 0
//!   precision,                          # the precision recipe of every layout, in words
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
//!   fits[{cp,dp,ep,grad_ckpt,host_bytes_per_node,max_micro_batch,
//!     max_micro_batch_at_search_limit,offload,peak_bytes,pp,sequence_parallel,
//!     sharding,tp,world}]
//!   largest_micro_batch{cp,dp,ep,grad_ckpt,host_bytes_per_node,max_micro_batch,
//!     max_micro_batch_at_search_limit,offload,peak_bytes,pp,sequence_parallel,
//!     sharding,tp,world}
//!   layouts_considered,
//!   longest_sequence[]                  # null
//!   precision,                          # the --dtype
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
//! [{family,hf_id,kind,name,params_active,params_total,quantization}]  # kind "dense", or its parts among "vlm" (a vision tower in front), "moe", "mla" (latent attention), "hybrid" (sliding-window and full layers mixed) joined by "+", e.g. "moe+mla"; params_active: top-k routed experts per layer (embedding and head counted); quantization e.g. "gptq 4-bit", or null
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
        workload: workload(w, None),
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
        host_memory: d.host.as_ref().map(|h| wire::HostMemory {
            basis: h.basis,
            bytes_per_node: h.bytes_per_node.get(),
            gpus_per_node: h.gpus_per_node,
        }),
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
        workload: workload(w, d.implied_master.map(|m| m.as_str())),
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
            precision: &r.precision,
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
            params_active: i.params_active,
            kind: i.kind,
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
        params_active: m.params_active,
        vision: m.vision.as_ref().map(|v| wire::Vision {
            params: v.params,
            images: v.images,
            tokens_per_image: v.tokens_per_image,
            train: v.train.as_str(),
        }),
    }
}

fn workload<'a>(w: &'a Workload, implied: Option<&'static str>) -> wire::Workload<'a> {
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
            dropout: l.dropout,
            peft: l.adapter.as_str(),
        }),
        precision: w.precision.as_str(),
        master_weights: w.master_weights,
        master_weights_implied_by: implied,
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
        ep: c.ep,
        grad_ckpt: c.grad_ckpt.as_str(),
        host_bytes_per_node: c.host_bytes_per_node.map(|b| b.get()),
        max_micro_batch: c.max_micro_batch,
        max_micro_batch_at_search_limit: c.at_search_limit,
        offload: match c.offload {
            Offload::None => "none",
            Offload::Optimizer => "optimizer",
            Offload::OptimizerAndParams => "optimizer-and-params",
        },
        peak_bytes: c.peak_bytes.get(),
        pp: c.pp,
        sequence_parallel: c.sequence_parallel,
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

#[cfg(test)]
mod tests {
    //! Snapshots of one document of each kind (src/report/snapshots/, exact bytes with
    //! `tool.version` redacted) and the check of the module documentation's field lists
    //! against the output.

    use super::*;
    use crate::distributed::estimate_layout;
    use crate::distributed::search::{plan, PlanQuery};
    use crate::estimate::{estimate, Correction};
    use crate::hf::presets;
    use crate::workload::settings::Settings;

    fn settings(model: &str, pairs: &[(&str, &str)]) -> Settings {
        let mut all = vec![("model", model)];
        all.extend_from_slice(pairs);
        Settings::from_flags(&all).expect("valid settings")
    }

    fn spec_of(cfg: &Settings) -> crate::ModelSpec {
        let name = cfg.model.as_deref().expect("a model");
        presets::get(name).expect("a preset").expect("parses")
    }

    /// What `estimate --json` prints for `cfg`, single GPU or distributed.
    fn estimate_json(cfg: &Settings) -> String {
        let spec = spec_of(cfg);
        let (w, ov) = cfg.build(&spec).expect("valid settings");
        let layout = cfg.layout();
        layout.validate(&spec, &w).expect("valid layout");
        let capacity = cfg.capacity().expect("valid capacity");
        if layout.is_distributed() {
            let d =
                estimate_layout(&spec, &w, &ov, &layout, &Correction::IDENTITY).expect("estimates");
            let fit = capacity.map(|(g, c)| Fit::new(g, c, d.worst().estimate.peak.device));
            render_distributed(&d, &w, &ov, &layout, fit.as_ref())
        } else {
            let e = estimate(&spec, &w, &ov).expect("estimates");
            let fit = capacity.map(|(g, c)| Fit::new(g, c, e.peak.device));
            render(&e, &w, &ov, fit.as_ref())
        }
    }

    /// What `plan --json` prints for `cfg` (the CLI's defaults for --max-seq).
    fn plan_json(cfg: &Settings, gpus: u64, max_batch: u64, top: usize) -> String {
        let spec = spec_of(cfg);
        let (w, ov) = cfg.build(&spec).expect("valid settings");
        let (gpu, capacity) = cfg.capacity().expect("valid").expect("a GPU");
        let q = PlanQuery {
            gpus,
            capacity,
            max_batch,
            top,
            max_seq: 131072,
        };
        let r = plan(&spec, &w, &ov, &q).expect("plans");
        render_plan(&r, &spec.name, &gpu, capacity)
    }

    /// QLoRA on two projections with a GPU: every estimate field is non-null.
    fn estimate_doc() -> String {
        estimate_json(&settings(
            "llama-3.1-8b",
            &[
                ("method", "qlora"),
                ("lora_targets", "q_proj,v_proj"),
                ("seq_len", "4096"),
                ("gpu", "h100-80gb"),
            ],
        ))
    }

    /// Two pipeline stages (two rank classes) of LoRA with tp, dp and ZeRO-1, the
    /// optimizer offloaded (so `host_memory` is an object).
    fn distributed_doc() -> String {
        estimate_json(&settings(
            "llama-3.1-8b",
            &[
                ("method", "lora"),
                ("tp", "2"),
                ("pp", "2"),
                ("dp", "2"),
                ("zero", "1"),
                ("offload_optimizer", "true"),
                ("micro_batches", "4"),
                ("gpu", "h100-80gb"),
            ],
        ))
    }

    fn plan_doc() -> String {
        let cfg = settings("llama-3.1-8b", &[("gpu", "a100-40gb")]);
        plan_json(&cfg, 4, 8, 3)
    }

    fn serving_plan_doc() -> String {
        let cfg = settings("qwen2.5-7b", &[("task", "infer"), ("gpu_memory", "24GiB")]);
        plan_json(&cfg, 2, 16, 10)
    }

    /// Three presets, one of them quantized (the full list belongs to `hf::presets`).
    fn models_doc() -> String {
        let infos: Vec<PresetInfo> = ["gpt2", "llama-3.1-8b", "mistral-7b-v0.1-gptq"]
            .iter()
            .map(|n| presets::describe(n).expect("a preset").expect("parses"))
            .collect();
        render_models(&infos)
    }

    /// `tool.version` → `[version]`, so that a version bump does not touch snapshots.
    fn redacted(doc: &str) -> String {
        let v = format!("\"version\": \"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(doc.matches(&v).count(), 1, "one tool.version in\n{doc}");
        doc.replace(&v, "\"version\": \"[version]\"")
    }

    #[test]
    fn snapshot_estimate() {
        insta::assert_snapshot!("estimate", redacted(&estimate_doc()));
    }

    #[test]
    fn snapshot_distributed_estimate() {
        insta::assert_snapshot!("distributed_estimate", redacted(&distributed_doc()));
    }

    #[test]
    fn snapshot_plan() {
        insta::assert_snapshot!("plan", redacted(&plan_doc()));
    }

    #[test]
    fn snapshot_serving_plan() {
        insta::assert_snapshot!("serving_plan", redacted(&serving_plan_doc()));
    }

    #[test]
    fn snapshot_models() {
        insta::assert_snapshot!("models", models_doc());
    }

    /// A documented field: a value, an object or an array of objects.
    #[derive(Debug)]
    enum Field {
        Leaf(String),
        Object(String, Vec<Field>),
        Array(String, Vec<Field>),
    }

    impl Field {
        fn name(&self) -> &str {
            match self {
                Field::Leaf(n) | Field::Object(n, _) | Field::Array(n, _) => n,
            }
        }
    }

    /// A parsed document that keeps the order of keys (`serde_json::Value` sorts them).
    #[derive(Debug)]
    enum Json {
        Object(Vec<(String, Json)>),
        Array(Vec<Json>),
        /// null, a boolean, a number or a string.
        Scalar(String),
    }

    impl<'de> serde::Deserialize<'de> for Json {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Json;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Json, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        entries.push(e);
                    }
                    Ok(Json::Object(entries))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut s: A,
                ) -> Result<Json, A::Error> {
                    let mut items = Vec::new();
                    while let Some(e) = s.next_element()? {
                        items.push(e);
                    }
                    Ok(Json::Array(items))
                }
                fn visit_unit<E>(self) -> Result<Json, E> {
                    Ok(Json::Scalar("null".into()))
                }
                fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                    Ok(Json::Scalar(b.to_string()))
                }
                fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                    Ok(Json::Scalar(n.to_string()))
                }
                fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                    Ok(Json::Scalar(n.to_string()))
                }
                fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                    Ok(Json::Scalar(n.to_string()))
                }
                fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                    Ok(Json::Scalar(format!("{s:?}")))
                }
            }
            d.deserialize_any(V)
        }
    }

    impl Json {
        fn parse(doc: &str) -> Json {
            serde_json::from_str(doc).expect("the document parses")
        }
        fn brief(&self) -> String {
            match self {
                Json::Object(_) => "an object".into(),
                Json::Array(a) if a.is_empty() => "an empty array".into(),
                Json::Array(_) => "an array".into(),
                Json::Scalar(s) => s.clone(),
            }
        }
    }

    /// The ```text block after the `# {title}` heading of this module's documentation,
    /// without comments.
    fn documented_block(title: &str) -> String {
        let docs: Vec<&str> = include_str!("json.rs")
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        let heading = format!("# {title}");
        let at = docs
            .iter()
            .position(|l| l.starts_with(&heading))
            .unwrap_or_else(|| panic!("no heading {heading:?} in the module documentation"));
        docs[at..]
            .iter()
            .skip_while(|l| **l != "```text")
            .skip(1)
            .take_while(|l| **l != "```")
            .map(|l| l.split('#').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `a, b{c, d[{e}]}, f[]` (commas or white space between fields).
    fn parse_fields(s: &[u8], i: &mut usize, close: Option<u8>) -> Vec<Field> {
        let mut out = Vec::new();
        loop {
            while *i < s.len() && (s[*i] == b',' || s[*i].is_ascii_whitespace()) {
                *i += 1;
            }
            if *i == s.len() {
                assert_eq!(close, None, "unclosed field list");
                return out;
            }
            if Some(s[*i]) == close {
                *i += 1;
                return out;
            }
            let start = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            let name = String::from_utf8(s[start..*i].to_vec()).expect("ascii");
            let rest = &s[*i..];
            let field = if rest.starts_with(b"{") {
                *i += 1;
                Field::Object(name, parse_fields(s, i, Some(b'}')))
            } else if rest.starts_with(b"[{") {
                *i += 2;
                let children = parse_fields(s, i, Some(b'}'));
                assert_eq!(s.get(*i), Some(&b']'), "`[{{` closes with `}}]`");
                *i += 1;
                Field::Array(name, children)
            } else if rest.starts_with(b"[]") {
                *i += 2;
                Field::Leaf(name)
            } else {
                assert!(!name.is_empty(), "unexpected {:?}", rest[0] as char);
                Field::Leaf(name)
            };
            out.push(field);
        }
    }

    fn documented(title: &str) -> Vec<Field> {
        let block = documented_block(title);
        parse_fields(block.as_bytes(), &mut 0, None)
    }

    /// Differences between the documented `fields` and the object `v` at `path`, in
    /// names and order; objects and arrays that are null or empty are reported too, so
    /// that the documents checked show every documented level.
    fn compare(fields: &[Field], v: &Json, path: &str, errors: &mut Vec<String>) {
        let Json::Object(obj) = v else {
            errors.push(format!(
                "{path}: documented as an object, output has {}",
                v.brief()
            ));
            return;
        };
        let documented: Vec<&str> = fields.iter().map(Field::name).collect();
        let output: Vec<&str> = obj.iter().map(|(k, _)| k.as_str()).collect();
        if documented != output {
            errors.push(format!(
                "{path}: documented {documented:?}\n  but the output has {output:?}"
            ));
        }
        for f in fields {
            let Some((_, child)) = obj.iter().find(|(k, _)| k == f.name()) else {
                continue;
            };
            let at = format!("{path}.{}", f.name());
            match f {
                Field::Leaf(_) => {}
                Field::Object(_, sub) => compare(sub, child, &at, errors),
                Field::Array(_, sub) => compare_array(sub, child, &at, errors),
            }
        }
    }

    fn compare_array(fields: &[Field], v: &Json, path: &str, errors: &mut Vec<String>) {
        match v {
            Json::Array(items) if !items.is_empty() => {
                for (k, item) in items.iter().enumerate() {
                    compare(fields, item, &format!("{path}[{k}]"), errors);
                }
            }
            _ => errors.push(format!(
                "{path}: documented as a non-empty array of objects, output has {}",
                v.brief()
            )),
        }
    }

    fn check_documented(title: &str, doc: &str) {
        let fields = documented(title);
        let v = Json::parse(doc);
        let mut errors = Vec::new();
        match fields.as_slice() {
            [Field::Array(root, sub)] if root.is_empty() => compare_array(sub, &v, "", &mut errors),
            _ => compare(&fields, &v, "", &mut errors),
        }
        assert!(
            errors.is_empty(),
            "the `{title}` field list in src/report/json.rs and the output differ:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn documented_fields_estimate() {
        check_documented("Estimate:", &estimate_doc());
    }

    #[test]
    fn documented_fields_distributed_estimate() {
        check_documented("Distributed estimate:", &distributed_doc());
    }

    #[test]
    fn documented_fields_plan() {
        check_documented("Plan:", &plan_doc());
    }

    #[test]
    fn documented_fields_serving_plan() {
        check_documented("Serving plan:", &serving_plan_doc());
    }

    #[test]
    fn documented_fields_models() {
        check_documented("Models:", &models_doc());
    }

    /// The checker itself: a renamed or reordered field is caught.
    #[test]
    fn documented_fields_check_catches_drift() {
        let fields = parse_fields(b"a, b{c,d[{e}]} f[]", &mut 0, None);
        let check = |doc: &str| {
            let mut errors = Vec::new();
            compare(
                &fields,
                &serde_json::from_str(doc).unwrap(),
                "",
                &mut errors,
            );
            errors
        };
        assert_eq!(
            check(r#"{"a":1,"b":{"c":2,"d":[{"e":3}]},"f":[]}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            check(r#"{"a":1,"b":{"c":2,"d":[{"x":3}]},"f":[]}"#).len(),
            1
        );
        assert_eq!(
            check(r#"{"b":{"c":2,"d":[{"e":3}]},"a":1,"f":[]}"#).len(),
            1
        );
        assert_eq!(check(r#"{"a":1,"b":null,"f":[]}"#).len(), 1);
    }
}
