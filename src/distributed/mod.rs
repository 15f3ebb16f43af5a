//! Distributed layouts: the memory of every rank under data parallelism (DDP, DeepSpeed
//! ZeRO 1/2/3, PyTorch FSDP), Megatron tensor / sequence / pipeline / context
//! parallelism and the distributed optimizer.
//!
//! Each pipeline stage is one rank class: its [`RankView`] (the TP-sharded model, its
//! layers, its share of model states, in-flight micro-batches, gathered buffers) runs
//! through the same timeline as a single GPU. Pure: no I/O.
//!
//! Model states per rank, P = parameters this rank holds before data-parallel sharding
//! (its stage, divided by tp), N = sharding degree (dp, or the FSDP hybrid group):
//!
//! | recipe | weights | gradients | master | optimizer |
//! |---|---|---|---|---|
//! | torch DDP, pure half | 2P | 2P | – | states(P) |
//! | Megatron (tp/pp/cp > 1 or `--distributed-optimizer`; any half run) and mixed DDP (`--master-weights`) | 2P | 4P (fp32 main_grad) | 4P | 8P; ÷N with `--distributed-optimizer` (18 B/param, or 6 + 12/N) |
//! | DeepSpeed ZeRO-z, half + fp32 master | 2P (÷N at z3) | 2P half (÷N at z2, none at z3) + 4P/N fp32 | 4P/N | 8P/N (ZeRO-2: 2P + 18P/N) |
//! | FSDP, fp32 sharded params (amp or master) | 4P/N | 4P/N | – | 8P/N |
//! | FSDP, pure half | 2P/N | 2P/N | – | states/N |
//!
//! The precision recipe of each layout (which fp32 master weights its framework keeps
//! whatever `--master-weights` says, and what `amp-*` becomes under ZeRO and FSDP) is
//! `recipe.rs`, applied before any of the rows above.
//!
//! plus gathered buffers: ZeRO-3 keeps the largest module's half parameters and
//! gradients (4 B × largest, DeepSpeed's `largest_layer_memory`) + its prefetch bucket;
//! FSDP keeps the root unit (embedding, head, final norm) and two decoder-layer units
//! unsharded in the compute dtype (current + prefetched), plus one unit's unsharded
//! gradients during backward (`SHARD_GRAD_OP` keeps every unit unsharded between
//! forward and backward). Offloading moves the optimizer side (and with
//! `--offload-params` the parameters) to host memory.
//!
//! Activations: the ledger runs on the sharded model (heads, kv heads, intermediate and
//! vocabulary ÷ tp; residual-stream tensors ÷ tp with sequence parallelism; tokens ÷ cp
//! with context parallelism, plus ring-attention K/V buffers). Stage i of a 1F1B
//! pipeline holds min(pp − i, m) micro-batches of activations; interleaved schedules
//! (`--vpp v`) multiply by 1 + (pp − 1)/(pp·v) (Narayanan et al. 2021).

pub mod host;
pub mod recipe;
pub mod search;

use crate::arch::params;
use crate::arch::{LayerGroup, LinearRole, ModelSpec, Positions};
use crate::error::Result;
use crate::estimate::optimizer;
use crate::estimate::timeline::Unsynced;
use crate::estimate::weights;
use crate::estimate::{self, Correction, Estimate, RankView, Statics};
use crate::units::bytes::Bytes;
use crate::workload::layout::{FsdpMode, Layout};
use crate::workload::overhead::Overheads;
use crate::workload::{Task, Workload};
use host::HostMemory;
use recipe::{precision_recipe, ImpliedMaster};

/// One rank class (a pipeline stage) of a distributed estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct RankClass {
    /// e.g. "stage 0 (first)", or "every rank" without pipelining.
    pub name: String,
    pub stage: u64,
    pub layers: u64,
    /// Ranks in this class (dp × tp × cp).
    pub ranks: u64,
    /// Weights + gradients + optimizer state + master weights in steady state, plus
    /// ZeRO-3 / FSDP gathered parameter buffers.
    pub model_states_bytes: Bytes,
    pub estimate: Estimate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DistributedEstimate {
    pub world: u64,
    pub per_rank: Vec<RankClass>,
    /// Index into `per_rank` of the rank with the highest device memory.
    pub worst_rank: usize,
    pub warnings: Vec<String>,
    /// Set when the layout's framework keeps fp32 master weights the user did not ask
    /// for (see [`recipe`]).
    pub implied_master: Option<ImpliedMaster>,
    /// Host memory per node of an offload layout (see [`host`]).
    pub host: Option<HostMemory>,
}

impl DistributedEstimate {
    pub fn worst(&self) -> &RankClass {
        &self.per_rank[self.worst_rank]
    }
}

/// The model as one tensor-parallel rank of the pipeline stage holding layers
/// `start..start + layers` computes it.
pub fn tp_local(spec: &ModelSpec, tp: u64, start: u64, layers: u64) -> ModelSpec {
    let mut m = spec.clone();
    m.checkpoint = None;
    m.heads = spec.heads / tp;
    m.kv_heads = (spec.kv_heads / tp).max(1);
    m.intermediate = spec.intermediate / tp;
    if let Some(moe) = m.moe.as_mut() {
        // tensor parallelism inside every expert (Megatron-Core's ETP = TP default,
        // vLLM FusedMoE: `intermediate_size_per_partition`); the router is replicated
        moe.expert_intermediate /= tp;
        moe.shared_expert = moe.shared_expert.map(|s| s / tp);
    }
    m.vocab = spec.vocab.div_ceil(tp);
    m.groups = spec.stage_groups(start, layers);
    m
}

/// One tensor-parallel rank's weight bytes, split by where they live.
struct WeightSplit {
    /// All the stage's decoder layers.
    layers: u64,
    /// The largest single decoder layer as stored.
    layer_max: u64,
    embedding: u64,
    head: u64,
    /// Learned positions and BLOOM's embedding norm (first stage).
    first_extra: u64,
    /// Final norm (last stage).
    final_norm: u64,
}

/// The non-layer parameters besides the embedding table and the head, split by stage.
struct OtherParams {
    /// Learned position table (first stage).
    positions: u64,
    /// BLOOM's embedding norm (first stage).
    embed_norm: u64,
    /// Final norm (last stage).
    final_norm: u64,
}

/// [`OtherParams`] of `local` from its parameter counts `c` (whose `other` holds all
/// three).
fn other_params(local: &ModelSpec, c: &params::ParamCounts) -> OtherParams {
    let positions = if matches!(local.positions, Positions::Learned) {
        local.max_positions * local.hidden
    } else {
        0
    };
    let embed_norm = if local.embed_norm {
        c.other.saturating_sub(positions) / 2
    } else {
        0
    };
    OtherParams {
        positions,
        embed_norm,
        final_norm: c.other - positions - embed_norm,
    }
}

fn weight_split(local: &ModelSpec, w: &Workload) -> Result<WeightSplit> {
    // each layer group's layer: the bytes of two such layers minus one
    let mut layers = 0u64;
    let mut layer_max = 0u64;
    for g in &local.groups {
        let (mut one, mut two) = (local.clone(), local.clone());
        one.groups = vec![LayerGroup { count: 1, ..*g }];
        two.groups = vec![LayerGroup { count: 2, ..*g }];
        let per_layer =
            weights::weight_bytes(&two, w, 0)?.base - weights::weight_bytes(&one, w, 0)?.base;
        layers = layers.saturating_add(g.count.saturating_mul(per_layer));
        layer_max = layer_max.max(per_layer);
    }
    let mut one = local.clone();
    one.set_layers(1);
    let c = params::count(&one);
    // non-layer tensors stay in the parameter dtype (bf16 for fp8 / quantized runs)
    let rest = match w.precision.param_dtype().size() {
        1 => 2,
        s => s,
    };
    let o = other_params(local, &c);
    Ok(WeightSplit {
        layers,
        layer_max,
        embedding: c.embedding * rest,
        // a tied head's copy (pipelined) is embedding-sized
        head: c
            .lm_head
            .max(if local.tie_embeddings { c.embedding } else { 0 })
            * rest,
        first_extra: (o.positions + o.embed_norm) * rest,
        final_norm: o.final_norm * rest,
    })
}

/// A vision-language model under a parallel layout (`what`): the tower's parameters,
/// gradients, optimizer state and activations are placed on one GPU only
/// (`estimate::RankView::single`), so every layout and plan is refused by name.
pub fn vlm_layout_refused(spec: &ModelSpec, what: &str) -> crate::error::Error {
    crate::error::Error::invalid(
        "parallel layout",
        format!("{what} for the vision-language model {}", spec.name),
        "data parallelism for a vision-language model (--dp with DDP, --zero 1-3 or --fsdp; no --tp/--pp/--cp/--ep above 1, no plan): where the vision tower sits under tensor, pipeline, context or expert parallelism is not modelled yet",
    )
}

/// Estimate every rank class of `layout`.
pub fn estimate_layout(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    layout: &Layout,
    corr: &Correction,
) -> Result<DistributedEstimate> {
    spec.validate()?;
    w.validate(spec)?;
    layout.validate(spec, w)?;
    if spec.vision.is_some() && (layout.tp > 1 || layout.pp > 1 || layout.cp > 1 || layout.ep > 1) {
        return Err(vlm_layout_refused(
            spec,
            &format!(
                "dp {} x tp {} x pp {} x cp {} (zero {}, fsdp {})",
                layout.dp,
                layout.tp,
                layout.pp,
                layout.cp,
                layout.zero,
                layout
                    .fsdp
                    .map_or("off".to_string(), |f| format!("{f:?}").to_lowercase())
            ),
        ));
    }
    let spec = &*estimate::instantiated(spec, w);
    // the precision recipe of the layout's framework (recipe.rs)
    let recipe = precision_recipe(w, layout);
    let w = &*recipe.workload;
    let stages = layout.stage_layers(spec.layers());
    let pp = layout.pp;
    let m = layout.micro_batches.unwrap_or(w.grad_accum).max(1);
    let mut warnings: Vec<String> = recipe.note.iter().cloned().collect();
    if pp > 1 && m < pp {
        warnings.push(format!(
            "{m} micro-batches per flush with {pp} pipeline stages leaves the pipeline mostly idle; use --micro-batches >= {pp}"
        ));
    }
    if layout.ep > 1 {
        if let Some(m) = spec.moe {
            warnings.push(format!(
                "expert parallelism over {} ranks: each holds {} of the {} routed experts of every MoE layer and sends and receives its (token, expert) rows by all-to-all (Megatron-Core's alltoall dispatcher); the busiest rank receives {}x the balanced share (--moe-imbalance; 1 assumes perfectly balanced routing)",
                layout.ep,
                m.experts / layout.ep,
                m.experts,
                w.moe_imbalance
            ));
        }
    }
    if w.task != Task::Train {
        return serving_estimate(spec, w, ov, layout, corr, warnings);
    }
    let ranks_per_stage = layout.dp * layout.tp * layout.cp;
    let mut per_rank = Vec::with_capacity(stages.len());
    for (i, &layers) in stages.iter().enumerate() {
        let i = i as u64;
        let view = rank_view(spec, w, layout, i, layers, m)?;
        let ms = model_states(&view);
        let mut e = estimate::simulate(spec, w, ov, corr, Some(&view))?;
        e.warnings.extend(warnings.iter().cloned());
        per_rank.push(RankClass {
            name: stage_name(pp, i),
            stage: i,
            layers,
            ranks: ranks_per_stage,
            model_states_bytes: Bytes(ms),
            estimate: e,
        });
    }
    let worst_rank = per_rank
        .iter()
        .enumerate()
        .max_by_key(|(i, r)| (r.estimate.peak.device, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    Ok(DistributedEstimate {
        world: layout.world(),
        per_rank,
        worst_rank,
        warnings,
        implied_master: recipe.implied,
        host: layout_host_memory(spec, w, layout)?,
    })
}

/// Host memory per node of `layout` (`w` as its recipe runs it): see [`host`].
pub fn layout_host_memory(
    spec: &ModelSpec,
    w: &Workload,
    layout: &Layout,
) -> Result<Option<HostMemory>> {
    host::host_memory(spec, layout, w, |w, on_device| {
        let m = on_device.micro_batches.unwrap_or(w.grad_accum).max(1);
        let mut worst = 0;
        for (i, &layers) in on_device.stage_layers(spec.layers()).iter().enumerate() {
            let v = rank_view(spec, w, on_device, i as u64, layers, m)?;
            worst = worst.max(model_states(&v) - v.gathered_fwd.min(v.gathered_bwd));
        }
        Ok(worst)
    })
}

/// The name of rank class `stage` of a `pp`-stage pipeline.
fn stage_name(pp: u64, stage: u64) -> String {
    match (pp, stage) {
        (1, _) => "every rank".to_string(),
        (_, 0) => "stage 0 (first)".to_string(),
        (_, s) if s + 1 == pp => format!("stage {s} (last)"),
        (_, s) => format!("stage {s}"),
    }
}

/// Serving: one rank class, every rank holding 1/tp of each layer, its KV heads and
/// vocabulary.
fn serving_estimate(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    layout: &Layout,
    corr: &Correction,
    warnings: Vec<String>,
) -> Result<DistributedEstimate> {
    let view = RankView {
        local: tp_local(spec, layout.tp, 0, spec.layers()),
        has_embedding: true,
        has_head: true,
        sp_div: 1,
        seq_local: w.seq_len,
        statics: Statics::default(),
        inflight_microbatches: 1.0,
        gathered_fwd: 0,
        gathered_bwd: 0,
        unsynced: Unsynced::default(),
        fsdp_root_grads: (0, 0),
        fsdp_unit_grad_assembly: 0,
        fsdp_edge_units: (0, 0, 0),
        optimizer_extra: 0,
        in_allocator_extra: 0,
        // replicas do not talk to each other: only the tensor-parallel group
        outside_extra: if layout.tp > 1 {
            layout.buffers.nccl_per_group.get()
        } else {
            0
        },
        params_trainable: 0,
        ep: 1,
    };
    let e = estimate::simulate(spec, w, ov, corr, Some(&view))?;
    let ms = e.components_at_peak.weights.get();
    Ok(DistributedEstimate {
        world: layout.world(),
        per_rank: vec![RankClass {
            name: "every rank".into(),
            stage: 0,
            layers: spec.layers(),
            ranks: layout.dp * layout.tp,
            model_states_bytes: Bytes(ms),
            estimate: e,
        }],
        worst_rank: 0,
        warnings,
        implied_master: None,
        host: None,
    })
}

/// Steady-state model states of a rank: weights + resident gradients + optimizer
/// state + master weights + gathered parameter buffers (ZeRO-3 / FSDP).
fn model_states(v: &RankView) -> u64 {
    let s = &v.statics;
    // a tied matrix's gradient is counted once, as the head's (`TrainPlan::tied`)
    let tied = v.local.tie_embeddings && v.has_embedding && v.has_head;
    let emb = if tied { 0 } else { s.grad_embedding };
    let grads = v.local.layers() * s.grad_layer + s.grad_head + emb + s.grad_other;
    s.weights + grads + s.optimizer_state + s.master_weights + v.gathered_fwd.min(v.gathered_bwd)
}

/// The view of pipeline stage `stage` (with `layers` decoder layers).
pub fn rank_view(
    spec: &ModelSpec,
    w: &Workload,
    layout: &Layout,
    stage: u64,
    layers: u64,
    micro_batches: u64,
) -> Result<RankView> {
    let s = Stage::new(spec, w, layout, stage, layers)?;
    let r = Recipe::new(w, layout, &s);
    // one sharding recipe (the rows of the module doc's table)
    let mut sh = if layout.zero > 0 {
        zero_states(&r)
    } else if let Some(mode) = layout.fsdp {
        fsdp_states(&r, mode)
    } else {
        replicated_states(&r)
    };
    let mut st = sh.statics;
    st.grad_layer = sh.grad_layer;
    split_rest_grads(&mut st, &s, r.rest_params, sh.grad_rest);
    let (embedding, head, other) = split_rest(&s, r.rest_params, sh.unsynced_rest);
    let unsynced = Unsynced {
        layer: sh.unsynced_layer,
        head,
        embedding,
        other,
    };

    // context parallelism: ring attention holds two K/V chunks in flight
    let seq_local = w.seq_len / layout.cp;
    if layout.cp > 1 {
        let kv = 2 * 2 * w.batch * seq_local * s.local.kv_dim() * r.compute;
        sh.gathered_fwd += kv;
        sh.gathered_bwd += 2 * kv;
    }
    let groups = [layout.dp, layout.tp, layout.pp, layout.cp]
        .iter()
        .filter(|&&d| d > 1)
        .count() as u64;
    Ok(RankView {
        has_embedding: s.first,
        has_head: s.last,
        sp_div: if layout.sequence_parallel {
            layout.tp
        } else {
            1
        },
        seq_local,
        statics: st,
        inflight_microbatches: inflight_microbatches(layout, stage, micro_batches),
        gathered_fwd: sh.gathered_fwd,
        gathered_bwd: sh.gathered_bwd,
        unsynced,
        fsdp_root_grads: sh.root_grads,
        fsdp_unit_grad_assembly: sh.unit_grad_assembly,
        fsdp_edge_units: (sh.embed_unit, sh.head_unit, sh.head_grad_assembly),
        optimizer_extra: sh.optimizer_extra,
        in_allocator_extra: sh.in_alloc,
        outside_extra: groups * layout.buffers.nccl_per_group.get(),
        params_trainable: s.trainable,
        local: s.local,
        ep: layout.ep,
    })
}

/// Micro-batches whose activations stage `stage` holds at once: min(pp − stage, m)
/// under 1F1B, × 1 + (pp − 1)/(pp·v) interleaved (Narayanan et al. 2021).
fn inflight_microbatches(layout: &Layout, stage: u64, micro_batches: u64) -> f64 {
    let pp = layout.pp;
    if pp > 1 {
        let k = micro_batches.min(pp - stage) as f64;
        if layout.vpp > 1 {
            k * (1.0 + (pp as f64 - 1.0) / (pp as f64 * layout.vpp as f64))
        } else {
            k
        }
    } else {
        1.0
    }
}

/// What one pipeline stage holds on a tensor-parallel rank before data-parallel
/// sharding: parameters (P of the module doc), weight bytes, trainable parameters.
struct Stage {
    /// The TP-sharded model with this stage's layers.
    local: ModelSpec,
    layers: u64,
    first: bool,
    last: bool,
    full: bool,
    /// Embedding-table parameters.
    embedding: u64,
    /// Parameters of one decoder layer / the embedding side (first stage) / the head
    /// (last) / the final norm (last) / all of the stage.
    p_layer: u64,
    p_emb: u64,
    p_head: u64,
    p_other: u64,
    p_stage: u64,
    /// Weight bytes of the stage.
    weights: u64,
    /// Bytes of its largest decoder layer as stored (4-bit data for QLoRA).
    layer_stored: u64,
    /// A VLM's vision side on the first stage: its largest tower block and the rest
    /// outside the blocks (patch embedding, positions, norms, projector), in
    /// parameters; the vision parameters a full fine-tune trains, and the weight bytes
    /// of those it does not (`--vision projector|frozen`).
    vision_block: u64,
    vision_root: u64,
    vision_total: u64,
    vision_trained: u64,
    vision_frozen_bytes: u64,
    /// Trainable parameters per layer / of the stage.
    t_layer: u64,
    trainable: u64,
}

impl Stage {
    /// Pipeline stage `stage` of `layout` with `layers` decoder layers.
    fn new(
        spec: &ModelSpec,
        w: &Workload,
        layout: &Layout,
        stage: u64,
        layers: u64,
    ) -> Result<Stage> {
        let pp = layout.pp;
        let first = stage == 0;
        let last = stage + 1 == pp;
        let start: u64 = layout.stage_layers(spec.layers())[..stage as usize]
            .iter()
            .sum();
        let mut local = tp_local(spec, layout.tp, start, layers);
        if layout.ep > 1 {
            // expert parallelism: this rank's share of every MoE layer's routed experts
            if let Some(m) = local.moe.as_mut() {
                m.local_experts = Some(m.experts / layout.ep);
            }
        }
        let mut one = local.clone();
        one.set_layers(1);
        let counts = params::count(&one);
        // the stage's layers: every group's own (DeepSeek's dense first layers and its
        // MoE layers differ); `p_layer` is the largest, the unit FSDP / ZeRO-3 gather
        let group_params: Vec<(u64, u64)> = local
            .groups
            .iter()
            .map(|g| {
                (
                    g.count,
                    params::per_layer_of(&local, &local.block_linears(&g.modules)),
                )
            })
            .collect();
        let p_layers: u64 = group_params.iter().map(|(n, p)| n * p).sum();
        let full = w.method.is_full();

        // a VLM's vision side sits on the first stage (tensor and pipeline parallelism
        // are refused for VLMs): its weights as the single-GPU estimate holds them
        let (mut vision_block, mut vision_root, mut vision_trained) = (0, 0, 0);
        let mut vision_total = 0;
        let (mut vision_bytes, mut vision_frozen_bytes) = (0, 0);
        if let (Some(v), true) = (local.vision.as_ref(), first) {
            let total = params::vision_params(&local);
            vision_total = total;
            let (blocks, largest) = params::vision_blocks(v);
            (vision_block, vision_root) = (largest, total.saturating_sub(blocks));
            let mut text = local.clone();
            text.vision = None;
            vision_bytes = weights::weight_bytes(&local, w, 0)?
                .base
                .saturating_sub(weights::weight_bytes(&text, w, 0)?.base);
            if full {
                vision_trained = estimate::vision_trainable(&local, w).min(total);
                let frozen = total - vision_trained;
                vision_frozen_bytes =
                    (vision_bytes as f64 * frozen as f64 / total.max(1) as f64).round() as u64;
            }
        }
        // parameters this rank holds before data-parallel sharding
        let o = other_params(&local, &counts);
        // tied weights: one copy without pipelining; the last stage keeps its own copy
        // of the embedding as the head with pipelining (Megatron's shared embedding)
        let head_params = match (spec.tie_embeddings, pp) {
            (true, 1) => 0,
            (true, _) => counts.embedding,
            (false, _) => counts.lm_head,
        };
        let p_layer = group_params.iter().map(|&(_, p)| p).max().unwrap_or(0);
        let p_emb = if first {
            counts.embedding + o.positions + o.embed_norm
        } else {
            0
        };
        let p_head = if last { head_params } else { 0 };
        let p_other = if last { o.final_norm } else { 0 };
        let p_stage = p_layers + p_emb + p_head + p_other + vision_trained;

        // a frozen base stored in another dtype than it computes in (FSDP
        // MixedPrecision over an fp32 load): its shards are the stored dtype's
        let ws = match (full, w.frozen_storage) {
            (false, Some(p)) => weight_split(
                &local,
                &Workload {
                    precision: p,
                    ..w.clone()
                },
            )?,
            _ => weight_split(&local, w)?,
        };
        let weights = ws.layers
            + vision_bytes
            + if first {
                ws.embedding + ws.first_extra
            } else {
                0
            }
            + if last {
                ws.final_norm + if head_params > 0 { ws.head } else { 0 }
            } else {
                0
            };

        // trainable parameters on this rank
        let lora_local = estimate::lora_trainable(&local, w);
        // trainable parameters per layer: the stage's mean (a mixed stack's layers
        // differ; the sums over the stage stay exact up to the division's remainder,
        // which the non-layer rest absorbs)
        let t_layer = if full {
            p_layers / layers.max(1)
        } else {
            lora_local / layers.max(1)
        };
        let trainable = if full { p_stage } else { lora_local };
        Ok(Stage {
            local,
            layers,
            first,
            last,
            full,
            embedding: counts.embedding,
            p_layer,
            p_emb,
            p_head,
            p_other,
            p_stage,
            weights,
            layer_stored: ws.layer_max,
            vision_block,
            vision_root,
            vision_total,
            vision_trained,
            vision_frozen_bytes,
            t_layer,
            trainable,
        })
    }

    /// The optimizer's element size and tensors on this stage: for full training its
    /// layers' tensors, the embedding side on the first stage, the head side on the
    /// last.
    fn optimizer_shapes(&self, w: &Workload) -> (u64, Vec<optimizer::Shape>) {
        let (local, layers) = (&self.local, self.layers);
        let (_, state_size, mut shapes) = estimate::optimizer_shapes(local, w);
        if self.full {
            // the layers' tensors: `layers` of each, or layers × experts of a routed
            // expert's slice
            shapes.retain(|s| s.count > 0 && s.count >= layers && s.count.is_multiple_of(layers));
            if layers == 1 || local.groups.len() > 1 {
                // count == 1 (or a stack of groups) cannot tell a layer tensor from the
                // rest by its count: rebuild the layer set
                shapes = optimizer::layer_shapes(local);
            }
            let mut vectors = Vec::new();
            // the embedding table (first stage) and the head (last): a vocab × hidden
            // matrix plus whatever else rides along (positions, embedding norm, head bias)
            for p in [self.p_emb, self.p_head] {
                if p > 0 {
                    vectors.push(optimizer::Shape {
                        rows: local.vocab,
                        cols: local.hidden,
                        count: 1,
                    });
                    if p > self.embedding {
                        vectors.push(optimizer::Shape {
                            rows: p - self.embedding,
                            cols: 1,
                            count: 1,
                        });
                    }
                }
            }
            if self.p_other > 0 {
                vectors.push(optimizer::Shape {
                    rows: self.p_other,
                    cols: 1,
                    count: 1,
                });
            }
            // a VLM's vision parameters trained in full, one vector as on one GPU
            if self.vision_trained > 0 {
                vectors.push(optimizer::Shape {
                    rows: self.vision_trained,
                    cols: 1,
                    count: 1,
                });
            }
            shapes.extend(vectors);
        }
        (state_size, shapes)
    }
}

/// What every sharding recipe reads: the stage, its optimizer tensors and the element
/// sizes of the run.
struct Recipe<'a> {
    w: &'a Workload,
    layout: &'a Layout,
    s: &'a Stage,
    shapes: Vec<optimizer::Shape>,
    /// Optimizer-state element size.
    state_size: u64,
    /// Parameter element size.
    pd: u64,
    /// Gradient element size (peft adapters are fp32).
    grad_el: u64,
    /// Mixed precision: `--master-weights` or autocast.
    mixed: bool,
    compute: u64,
    /// The sharding degree N.
    n: f64,
    /// Weight bytes of frozen / trainable parameters (LoRA: base / adapters).
    frozen_weights: u64,
    train_bytes_pd: u64,
    /// Trainable parameters outside the decoder layers.
    rest_params: u64,
}

impl<'a> Recipe<'a> {
    fn new(w: &'a Workload, layout: &'a Layout, s: &'a Stage) -> Recipe<'a> {
        let full = s.full;
        let (state_size, shapes) = s.optimizer_shapes(w);
        let pd = w.precision.param_dtype().size();
        let lora_grad = 4; // peft adapters are fp32
        Recipe {
            w,
            layout,
            s,
            shapes,
            state_size,
            pd,
            grad_el: if full { pd } else { lora_grad },
            mixed: w.master_weights || w.precision.is_amp(),
            compute: w.precision.compute_dtype().size(),
            n: layout.shard_degree() as f64,
            frozen_weights: if full {
                s.vision_frozen_bytes
            } else {
                s.weights
            },
            train_bytes_pd: if full {
                s.weights - s.vision_frozen_bytes
            } else {
                s.trainable * 4
            },
            rest_params: s.trainable.saturating_sub(s.layers * s.t_layer),
        }
    }

    /// Optimizer state bytes of the stage's tensors at `size` bytes per element.
    fn states(&self, size: u64) -> u64 {
        optimizer::state_bytes(self.w.optimizer, &self.shapes, size)
    }

    /// Optimizer-step temporaries of the stage's tensors at `size` bytes per element.
    fn step_temp(&self, size: u64) -> u64 {
        optimizer::step_temporaries(self.w.optimizer, &self.shapes, size)
    }
}

/// `b` bytes shared `by` ways, rounded to the nearest byte.
fn div(b: u64, by: f64) -> u64 {
    (b as f64 / by).round() as u64
}

/// One rank's model states and buffers under a sharding recipe.
#[derive(Default)]
struct Sharded {
    /// Weights, master weights, optimizer state and step temporaries (gradients are
    /// split afterwards).
    statics: Statics,
    /// Resident gradient bytes per layer / of the rest.
    grad_layer: u64,
    grad_rest: u64,
    gathered_fwd: u64,
    gathered_bwd: u64,
    /// Unsharded gradient bytes beyond `grad_layer` / `grad_rest` while micro-batches
    /// accumulate under FSDP's `no_sync`.
    unsynced_layer: u64,
    unsynced_rest: u64,
    /// FSDP's root unit gradients (unsharded): (held from the head's backward until
    /// the embedding's, the extra at the embedding's backward). See `fsdp_states`.
    root_grads: (u64, u64),
    /// FSDP: a layer unit's gradient assembled for its reduce-scatter (unsharded, 2×).
    unit_grad_assembly: u64,
    /// FSDP with separate embedding / head units: their gathered parameters around
    /// their own passes, and the head's gradient assembled at its backward.
    embed_unit: u64,
    head_unit: u64,
    head_grad_assembly: u64,
    optimizer_extra: u64,
    /// Persistent buffers in the allocator (DDP reducer buckets).
    in_alloc: u64,
}

/// DeepSpeed ZeRO-z: half parameters (÷N at z3), half gradients (÷N at z2, none at
/// z3), and an fp32 optimizer partition (master + states + fp32 gradients, ÷N) when
/// training in half precision; ZeRO-3 gathers the largest module.
fn zero_states(r: &Recipe) -> Sharded {
    let (s, layout, n) = (r.s, r.layout, r.n);
    let zero = layout.zero;
    let offload_opt = layout.offload_optimizer;
    // optimizer state in the optimizer's element size (fp32 with master weights)
    let ds_state = if s.full && r.pd == 2 { 4 } else { r.state_size };
    let (states, step_temp) = (r.states(ds_state), r.step_temp(ds_state));
    let ds_mixed = s.full && r.pd == 2;
    let mut sh = Sharded::default();
    sh.statics.weights = if zero == 3 {
        if layout.offload_params {
            0
        } else {
            div(r.train_bytes_pd, n) + r.frozen_weights.min(div(r.frozen_weights, n))
        }
    } else {
        r.train_bytes_pd + r.frozen_weights
    };
    let half_grad = |t: u64| -> u64 {
        if offload_opt {
            return 0;
        }
        match zero {
            1 => t * r.grad_el,
            2 => div(t * r.grad_el, n),
            _ => 0,
        }
    };
    let fp32_grad = |t: u64| {
        if ds_mixed && !offload_opt {
            div(t * 4, n)
        } else {
            0
        }
    };
    sh.grad_layer = half_grad(s.t_layer) + fp32_grad(s.t_layer);
    sh.grad_rest = half_grad(r.rest_params) + fp32_grad(r.rest_params);
    sh.statics.master_weights = if ds_mixed && !offload_opt {
        div(s.trainable * 4, n)
    } else {
        0
    };
    sh.statics.optimizer_state = if offload_opt { 0 } else { div(states, n) };
    sh.statics.optimizer_step_temp = if offload_opt { 0 } else { div(step_temp, n) };
    // gathered parameters and the gradient bucket are in the engine's parameter dtype:
    // half precision with DeepSpeed's bf16/fp16 (which casts the module), fp32 without
    // (DeepSpeed 0.19 zero/partition_parameters.py `_all_gather` allocates
    // `param.ds_numel` elements of `param.dtype`; stage3.py `__ipg_bucket_flat_buffer`
    // of `self.dtype`, the trainable parameters' dtype)
    let half = r.pd;
    // no gathered buffer holds more parameters than exist: live parameters, the
    // prefetch bucket and the all-gather bucket at most the stage's parameters. The
    // gradient bucket is allocated at its configured size whatever the model
    // (DeepSpeed 0.19 zero/stage_1_and_2.py `ipg_buffer` and zero/stage3.py
    // `__ipg_bucket_flat_buffer`: `torch.empty(reduce_bucket_size)`).
    let b = &layout.buffers;
    let reduce = b.zero_reduce_bucket;
    if zero == 3 {
        // largest module gathered: half parameters + half gradients, plus prefetch
        let largest = largest_module(&s.local, s.first, s.last);
        let prefetch = b.zero3_prefetch_bucket.min(s.p_stage);
        let live = (largest + prefetch)
            .min(b.zero3_max_live_params.max(largest))
            .min(s.p_stage.max(largest));
        sh.gathered_fwd = live * half + largest * half;
        sh.gathered_bwd = sh.gathered_fwd + reduce * half;
    } else {
        sh.gathered_bwd = reduce * half;
        sh.optimizer_extra = b.zero_allgather_bucket.min(s.p_stage) * half;
    }
    sh
}

/// PyTorch FSDP: parameters, gradients and optimizer state sharded over the shard
/// group (fp32 sharded parameters with mixed precision: they are the master); the
/// root unit and two layer units unsharded in the compute dtype (`SHARD_GRAD_OP`:
/// every unit).
fn fsdp_states(r: &Recipe, mode: FsdpMode) -> Sharded {
    let (s, layout, n) = (r.s, r.layout, r.n);
    let offload_params = layout.offload_params;
    let (states, step_temp) = (r.states(r.state_size), r.step_temp(r.state_size));
    let full = s.full;
    let shard_el = if full && r.mixed { 4 } else { r.grad_el };
    let train_shard = if full {
        div(s.p_stage * shard_el, n)
    } else {
        div(s.trainable * 4, n)
    };
    let mut sh = Sharded::default();
    sh.statics.weights = if offload_params {
        0
    } else {
        train_shard + div(r.frozen_weights, n)
    };
    let g = |t: u64| {
        if offload_params {
            0
        } else {
            div(t * shard_el, n)
        }
    };
    sh.grad_layer = g(s.t_layer);
    sh.grad_rest = g(r.rest_params);
    // Gradient accumulation under no_sync (FSDP1 `FullyShardedDataParallel.no_sync`,
    // FSDP2 `set_requires_gradient_sync(False)`; entered by Lightning Fabric
    // `_FSDPBackwardSyncControl.no_backward_sync`, accelerate `Accelerator.no_sync` /
    // `accumulate`, transformers Trainer's inner loop): every unit's gradient stays
    // unsharded on the GPU, in the dtype autograd produced it in (the compute dtype
    // under MixedPrecision), until the last micro-batch reduce-scatters it.
    if layout.fsdp_no_sync && r.w.grad_accum > 1 && n > 1.0 {
        let el = if r.mixed { r.compute } else { r.grad_el };
        sh.unsynced_layer = (s.t_layer * el).saturating_sub(sh.grad_layer);
        sh.unsynced_rest = (r.rest_params * el).saturating_sub(sh.grad_rest);
    }
    sh.statics.optimizer_state = if offload_params { 0 } else { div(states, n) };
    sh.statics.optimizer_step_temp = if offload_params { 0 } else { div(step_temp, n) };
    // unsharded units in the compute dtype; a 4-bit base is gathered as stored: torchao
    // NF4Tensor's `fsdp_pre_all_gather` all-gathers its quantized data and scalers
    // (torchao 0.5+ dtypes/nf4tensor.py, torchtune's FSDP2 QLoRA), and bitsandbytes'
    // packed 4-bit storage in `bnb_4bit_quant_storage` is a flat parameter FSDP1 gathers
    // uncast (bitsandbytes 0.43 FSDP-QLoRA; MixedPrecision's param_dtype is that dtype)
    let compute = r.compute;
    // a VLM's tower blocks are units of their own (transformer auto-wrap over
    // `_no_split_modules`), the rest of its vision side rides in the root
    let unit = if r.w.method.is_qlora() {
        s.layer_stored
    } else {
        s.p_layer * compute
    }
    .max(s.vision_block * compute);
    // with the embedding and the head as units of their own, the root keeps the rest
    // (final norm); they are gathered only around their own forward and backward
    let separate = layout.fsdp_separate_embeddings && full;
    let root = if separate {
        s.p_other * compute
    } else {
        (s.p_emb + s.p_head + s.p_other) * compute
    } + s.vision_root * compute;
    if separate {
        sh.embed_unit = s.p_emb * compute;
        sh.head_unit = s.p_head * compute;
    }
    let pad = if layout.fsdp_version == 1 {
        (n as u64) * compute * 2
    } else {
        0
    };
    // A unit's gradient is assembled unsharded before its reduce-scatter: FSDP1's flat
    // parameter gets it from `SplitWithSizesBackward` (the views' gradients wait in its
    // input buffer until the last one arrives, then `cat` makes the flat gradient
    // beside them), FSDP2's `foreach_reduce` copies the parameters' gradients into its
    // reduce-scatter input while they still exist (torch 2.x
    // `_fsdp_collectives.py`): twice the unit's gradients at its end, in the dtype
    // autograd made them in (the compute dtype under MixedPrecision).
    // (checked on the CPU with torch 2.15: a flat parameter's views make the backward
    // peak one gradient copy higher than separate leaves). Its own gradients during a
    // layer's backward are the ledger's (`LayerCost::bwd_peak_param_grads`); the
    // assembly is its own moment after it (`TrainPlan::unit_grad_assembly`).
    let grad_el = if r.mixed { compute } else { r.grad_el };
    sh.unit_grad_assembly = if full { 2 * s.p_layer * grad_el } else { 0 };
    match mode {
        FsdpMode::GradOp => {
            // every unit stays gathered: the stage's parameters, the vision side's
            // frozen ones too
            let all = s.p_stage - s.vision_trained + s.vision_total;
            sh.gathered_fwd = all * compute;
            sh.gathered_bwd = all * compute;
        }
        FsdpMode::Full | FsdpMode::Hybrid => {
            sh.gathered_fwd = root + 2 * (unit + pad);
            sh.gathered_bwd = root + 2 * (unit + pad);
        }
    }
    // The root unit (embedding, final norm, head) on a stage holding all three: the
    // head's and the norm's gradients (a tied head's is the embedding matrix's) wait
    // unsharded from the head's backward until the embedding's, which completes the
    // unit; then views and assembled gradient coexist.
    if separate {
        // each unit's gradient assembled at its own backward: the head's right after
        // it, the embedding's at the end; the root keeps only the norm's waiting
        sh.head_grad_assembly = 2 * s.p_head * grad_el;
        let norm = s.p_other * grad_el;
        sh.root_grads = (norm, 2 * s.p_emb * grad_el + norm);
    } else if full && s.first && s.last {
        let tied = s.local.tie_embeddings;
        let pending = (if tied { s.p_emb } else { s.p_head } + s.p_other) * grad_el;
        let total = (s.p_emb + s.p_head + s.p_other) * grad_el;
        sh.root_grads = (pending, 2 * total - pending);
    }
    sh
}

/// DDP / Megatron: everything replicated over data-parallel ranks (fp32 `main_grad`,
/// master weights and states with `--master-weights`, ÷dp with the distributed
/// optimizer); torch DDP adds its reducer buckets.
fn replicated_states(r: &Recipe) -> Sharded {
    let (s, layout, w) = (r.s, r.layout, r.w);
    let full = s.full;
    let mut sh = Sharded::default();
    sh.statics.weights = r.train_bytes_pd + r.frozen_weights;
    let main_grad = if full && w.master_weights {
        4
    } else {
        r.grad_el
    };
    sh.grad_layer = s.t_layer * main_grad;
    sh.grad_rest = r.rest_params * main_grad;
    let d = if layout.distributed_optimizer {
        layout.dp as f64
    } else {
        1.0
    };
    sh.statics.master_weights = if full && w.master_weights {
        div(s.trainable * 4, d)
    } else {
        0
    };
    let st_size = if full && w.master_weights {
        4
    } else {
        r.state_size
    };
    sh.statics.optimizer_state = div(r.states(st_size), d);
    sh.statics.optimizer_step_temp = div(r.step_temp(st_size), d);
    let megatron = layout.tp > 1 || layout.pp > 1 || layout.distributed_optimizer;
    if layout.dp > 1 && !megatron && !layout.buffers.ddp_bucket_view {
        // torch DDP reducer buckets: a second copy of the gradients
        sh.in_alloc += s.layers * sh.grad_layer + sh.grad_rest;
    }
    sh
}

/// Split the resident gradients of the rest of the trainable parameters
/// (`grad_rest`: embedding, head, final norm, positions) in proportion to their
/// parameters.
fn split_rest_grads(st: &mut Statics, s: &Stage, rest_params: u64, grad_rest: u64) {
    (st.grad_embedding, st.grad_head, st.grad_other) = split_rest(s, rest_params, grad_rest);
}

/// `bytes` of the rest of the trainable parameters as (embedding, head, other), in
/// proportion to their parameters (all `other` when only adapters train).
fn split_rest(s: &Stage, rest_params: u64, bytes: u64) -> (u64, u64, u64) {
    let rest_share = |p: u64| {
        if rest_params == 0 {
            0
        } else {
            (bytes as f64 * p as f64 / rest_params as f64).round() as u64
        }
    };
    if s.full {
        let (emb, head) = (rest_share(s.p_emb), rest_share(s.p_head));
        let other = bytes - emb - head;
        if s.local.tie_embeddings && s.first && s.last {
            // one tied matrix (p_head = 0): the timeline's convention is that the head
            // holds the shared gradient and the embedding's is the transient summed
            // into it (`TrainPlan::tied`)
            (emb, emb, other)
        } else {
            (emb, head, other)
        }
    } else {
        (0, 0, bytes)
    }
}

/// Parameters of the largest single module a rank gathers (ZeRO-3).
fn largest_module(local: &ModelSpec, first: bool, last: bool) -> u64 {
    let lin = local
        .each_linear()
        .filter(|l| l.role != LinearRole::Head)
        .map(|l| l.params())
        .max()
        .unwrap_or(0);
    let emb = if first || last {
        local.vocab * local.hidden
    } else {
        0
    };
    lin.max(emb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_puts_the_remainder_in_the_middle() {
        let l = Layout {
            pp: 4,
            ..Layout::default()
        };
        assert_eq!(l.stage_layers(30), vec![7, 8, 8, 7]);
        let l = Layout {
            pp: 2,
            ..Layout::default()
        };
        assert_eq!(l.stage_layers(5), vec![3, 2]);
    }
}
