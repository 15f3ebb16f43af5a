//! The estimator: model + workload + overheads → per-GPU memory, by simulating the step.
//!
//! Pure: no I/O. `estimate()` validates its inputs, computes exact parameter counts
//! (`params`), static bytes (`weights`, `optimizer`), the activation ledger
//! (`activations`), then runs the timeline (`timeline`) and reports the peak event with
//! its breakdown.

pub mod candle;
pub mod optimizer;
pub mod timeline;
pub mod weights;

use crate::arch::params;
use crate::arch::ModelSpec;
use crate::error::Result;
use crate::runtime::torch::{self, Activations, LedgerParams, LedgerTensor, Trainable};
use crate::units::bytes::Bytes;
use crate::units::dtype::DType;
use crate::workload::overhead::Overheads;
use crate::workload::{Device, Task, VisionTrain, Workload};
use timeline::{
    Components, Event, EventOverheads, InferPlan, LayerCost, LayerRun, LayerRuns, Phase, Recorder,
    TrainPlan,
};

/// Parameter counts of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub family: String,
    pub layers: u64,
    pub hidden: u64,
    pub params_total: u64,
    pub params_trainable: u64,
    /// Parameters a token runs through: the total less the routed experts it is not
    /// sent to (`arch::params::active`); the total for a dense model.
    pub params_active: u64,
    /// Whether the model routes tokens over experts (the human report then shows the
    /// active count).
    pub moe: bool,
    /// A vision-language model's vision side as the run uses it (`None` for a text
    /// model).
    pub vision: Option<VisionSummary>,
}

/// The vision side of a VLM run.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSummary {
    /// Tower and projector parameters.
    pub params: u64,
    /// Images per sequence and the image tokens each adds.
    pub images: u64,
    pub tokens_per_image: u64,
    /// What trains on the vision side (`--vision`, resolved).
    pub train: VisionTrain,
}

/// The moment of the peak.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// Framework-allocated bytes at the peak (`torch.cuda.max_memory_allocated`).
    pub allocated: Bytes,
    /// With allocator caching slack (`max_memory_reserved`).
    pub reserved: Bytes,
    /// Device memory in use: reserved + CUDA context + NCCL (what `nvidia-smi` shows);
    /// equal to the sum of `components_at_peak`.
    pub device: Bytes,
    pub phase: Phase,
    pub event: String,
}

/// Activation summary (the ledger's headline numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationSummary {
    /// Bytes one decoder layer keeps alive from its forward until its backward.
    pub per_layer_bytes: u64,
    /// The rest kept until backward: embedding side, final norm, head input, loss
    /// tensors (and a frozen first layer's difference).
    pub non_layer_bytes: u64,
    /// All activations kept at the end of forward.
    pub total_bytes: u64,
    /// The tensors of one decoder layer's forward.
    pub layer_tensors: Vec<LedgerTensor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub model: ModelSummary,
    pub peak: Peak,
    pub components_at_peak: Components,
    pub activations: ActivationSummary,
    pub timeline: Vec<Event>,
    /// Things the user should know (e.g. a sequence beyond the model's context).
    pub warnings: Vec<String>,
}

fn ledger_params(
    w: &Workload,
    trainable: Trainable,
    seq: u64,
    kv_len: u64,
    batch: u64,
) -> LedgerParams {
    LedgerParams {
        quant_keeps_input: match &w.method {
            crate::workload::Method::Qlora(l) => l.bnb_keeps_input,
            _ => false,
        },
        legacy_causal_lm_loss: w.legacy_causal_lm_loss,
        lora_fp32: w.method.lora().is_none_or(|l| l.adapter_fp32),
        osf_reconstruct: w.method.lora().is_some_and(|l| l.osf_reconstruct),
        lora_dropout: w.method.lora().map_or(0.0, |l| l.dropout),
        litgpt: w.implementation == crate::workload::Implementation::Litgpt,
        images: if trainable.any() { w.images } else { 0 },
        image_crops: 1,
        ep: 1,
        moe_imbalance: w.moe_imbalance,
        // what trains on the vision side needs the model: set by rank_ledger_params
        // (serving runs no vision ledger)
        vision: crate::workload::VisionTrain::Frozen,
        sp_div: 1,
        compile: w.compile,
        param_grad_size: if w.master_weights {
            4
        } else {
            w.precision.param_dtype().size()
        },
        batch,
        seq,
        kv_len,
        precision: w.precision,
        attn: w.attn,
        grad_ckpt: w.grad_ckpt,
        device: w.device,
        trainable,
        loss: w.loss,
    }
}

/// An empirical correction fitted by `probe calibrate`: activation-class bytes
/// (saved activations, in-flight temporaries, logits) are multiplied by
/// `activation_scale` (α) and `extra_overhead` (β) is added to the allocator's share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    pub activation_scale: f64,
    /// α scales only the decoder layers' activations (a trace calibration).
    pub layers_only: bool,
    pub extra_overhead: Bytes,
}

impl Correction {
    pub const IDENTITY: Correction = Correction {
        activation_scale: 1.0,
        layers_only: false,
        extra_overhead: Bytes(0),
    };
}

/// Estimate the per-GPU memory of `w` on `spec` (single device, no parallelism).
pub fn estimate(spec: &ModelSpec, w: &Workload, ov: &Overheads) -> Result<Estimate> {
    estimate_corrected(spec, w, ov, &Correction::IDENTITY)
}

fn scale(b: u64, f: f64) -> u64 {
    if f == 1.0 {
        b
    } else {
        (b as f64 * f).round().max(0.0) as u64
    }
}

/// Resident bytes of one rank that do not depend on the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statics {
    pub weights: u64,
    pub master_weights: u64,
    pub optimizer_state: u64,
    /// The part of `optimizer_state` in CUDA managed memory (paged optimizers), which
    /// the allocator's counters do not see ([`optimizer::managed_state_bytes`]).
    pub optimizer_state_managed: u64,
    pub optimizer_step_temp: u64,
    /// Resident gradients per decoder layer / head / embedding / the rest.
    pub grad_layer: u64,
    pub grad_head: u64,
    pub grad_embedding: u64,
    pub grad_other: u64,
}

/// How one rank sees a training step: its share of the model and of the batch. A
/// single GPU is the one-rank case ([`RankView::single`]); `parallel.rs` builds one per
/// pipeline stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RankView {
    /// The model as this rank computes it: heads, kv heads, intermediate size and
    /// vocabulary divided by the tensor-parallel degree, `layers` = its stage's layers.
    pub local: ModelSpec,
    pub has_embedding: bool,
    pub has_head: bool,
    /// Sequence-parallel split of the residual stream (1 = off).
    pub sp_div: u64,
    /// Tokens per sequence this rank holds (seq_len / context-parallel degree).
    pub seq_local: u64,
    pub statics: Statics,
    /// Micro-batches whose activations this stage holds at once (pipeline schedules;
    /// 1 without pipelining). Fractional for interleaved schedules.
    pub inflight_microbatches: f64,
    pub gathered_fwd: u64,
    pub gathered_bwd: u64,
    /// Unsharded gradients held while micro-batches accumulate under FSDP's `no_sync`.
    pub unsynced: timeline::Unsynced,
    /// FSDP's root unit: (unsharded gradients held from the head's backward until the
    /// embedding's, the extra at the embedding's backward while they are assembled).
    pub fsdp_root_grads: (u64, u64),
    /// FSDP: a layer unit's gradient as assembled for its reduce-scatter.
    pub fsdp_unit_grad_assembly: u64,
    /// FSDP with the embedding and head as units of their own: (the embedding's
    /// gathered parameters, the head's, the head's gradient as assembled).
    pub fsdp_edge_units: (u64, u64, u64),
    pub optimizer_extra: u64,
    /// Persistent buffers in the allocator (gradient buckets) / outside it (NCCL).
    pub in_allocator_extra: u64,
    pub outside_extra: u64,
    /// Trainable parameters held by this rank before data-parallel sharding.
    pub params_trainable: u64,
    /// Expert-parallel degree (1: off; `local` then holds experts / ep).
    pub ep: u64,
}

impl RankView {
    /// The whole model on one GPU.
    pub fn single(spec: &ModelSpec, w: &Workload) -> Result<RankView> {
        let counts = params::count(spec);
        let lora_trainable = lora_trainable(spec, w);
        let wb = weights::weight_bytes(spec, w, lora_stored(spec, w))?;
        let full = w.method.is_full();
        let params_trainable = if full {
            full_trainable(spec, w)
        } else {
            lora_trainable
        };
        // the vision parameters trained in full (gradients with the embedding's)
        let vision_grads = if full { vision_trainable(spec, w) } else { 0 };
        let (grad_size, state_size, shapes) = optimizer_shapes(spec, w);
        Ok(RankView {
            local: spec.clone(),
            has_embedding: true,
            has_head: true,
            sp_div: 1,
            seq_local: w.seq_len,
            statics: Statics {
                weights: wb.total(),
                master_weights: if w.master_weights {
                    params_trainable * 4
                } else {
                    0
                },
                optimizer_state: optimizer::state_bytes(w.optimizer, &shapes, state_size),
                optimizer_state_managed: optimizer::managed_state_bytes(w.optimizer, &shapes),
                optimizer_step_temp: optimizer::step_temporaries(w.optimizer, &shapes, state_size),
                grad_layer: if full {
                    counts.per_layer * grad_size
                } else {
                    lora_trainable / spec.layers() * grad_size
                },
                // a tied head's gradient is the embedding's, allocated at head backward
                grad_head: match (full, spec.tie_embeddings) {
                    (false, _) => 0,
                    (true, true) => counts.embedding * grad_size,
                    (true, false) => counts.lm_head * grad_size,
                },
                grad_embedding: if full {
                    counts.embedding * grad_size
                } else {
                    0
                },
                grad_other: if full {
                    (counts.other + vision_grads) * grad_size
                } else {
                    0
                },
            },
            inflight_microbatches: 1.0,
            gathered_fwd: 0,
            gathered_bwd: 0,
            unsynced: timeline::Unsynced::default(),
            fsdp_root_grads: (0, 0),
            fsdp_unit_grad_assembly: 0,
            fsdp_edge_units: (0, 0, 0),
            optimizer_extra: 0,
            in_allocator_extra: 0,
            outside_extra: 0,
            params_trainable,
            ep: 1,
        })
    }
}

/// Parameters a full fine-tune trains: all of them but a VLM's frozen vision side
/// (`--vision projector|frozen`).
pub fn full_trainable(spec: &ModelSpec, w: &Workload) -> u64 {
    let c = params::count(spec);
    c.total - c.vision + vision_trainable(spec, w)
}

/// A VLM's vision parameters trained in full (`--vision full`: tower and projector;
/// `projector`; none when frozen or adapted).
pub fn vision_trainable(spec: &ModelSpec, w: &Workload) -> u64 {
    match w.vision_train(spec) {
        Some(VisionTrain::Full) => params::vision_trainable(spec, true, true),
        Some(VisionTrain::Projector) => params::vision_trainable(spec, false, true),
        _ => 0,
    }
}

/// Trainable adapter parameters of the run (0 for full fine-tuning).
pub fn lora_trainable(spec: &ModelSpec, w: &Workload) -> u64 {
    w.method.lora().map_or(0, |l| {
        params::adapters(spec, l.rank, &l.targets, l.adapter).trainable
    })
}

/// Adapter elements held in memory (trained or frozen: LoRA-FA's lora_A, VeRA's shared
/// projections; 0 for full fine-tuning).
pub fn lora_stored(spec: &ModelSpec, w: &Workload) -> u64 {
    w.method.lora().map_or(0, |l| {
        params::adapters(spec, l.rank, &l.targets, l.adapter).stored
    })
}

/// Gradient element size, optimizer-state element size and the trainable tensors.
pub fn optimizer_shapes(spec: &ModelSpec, w: &Workload) -> (u64, u64, Vec<optimizer::Shape>) {
    match w.method.lora() {
        // peft adapters are fp32 (autocast_adapter_dtype), so are their grads and state;
        // adapters in the model dtype have grads and torch.optim state in that dtype,
        // or fp32 ones with an fp32 master copy
        Some(l) => {
            let s = if w.master_weights {
                4
            } else {
                l.adapter_size(w.precision)
            };
            (
                s,
                s,
                optimizer::lora_shapes(spec, l.rank, &l.targets, l.adapter),
            )
        }
        None => {
            let s = full_grad_size(w);
            let mut shapes = optimizer::full_shapes(spec);
            // a VLM's vision parameters trained in full, as one vector (their step
            // temporaries are bounded by the text model's largest tensors)
            let vision = vision_trainable(spec, w);
            if vision > 0 {
                shapes.push(optimizer::Shape {
                    rows: vision,
                    cols: 1,
                    count: 1,
                });
            }
            (s, s, shapes)
        }
    }
}

/// Bytes per gradient (and state) element of a full fine-tune: fp32 with a master
/// copy, else the parameters' dtype.
fn full_grad_size(w: &Workload) -> u64 {
    if w.master_weights {
        4
    } else {
        w.precision.param_dtype().size()
    }
}

fn trainable_kind(w: &Workload) -> Trainable {
    match w.method.lora() {
        Some(l) => Trainable::Lora {
            rank: l.rank,
            adapter: l.adapter,
            targets: l.targets.clone(),
        },
        None => Trainable::All,
    }
}

/// [`estimate`] with an empirical correction applied to the simulation's inputs (so
/// the peak may move to another event).
pub fn estimate_corrected(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    corr: &Correction,
) -> Result<Estimate> {
    spec.validate()?;
    w.validate(spec)?;
    let spec = &*instantiated(spec, w);
    let view = match w.task {
        Task::Train => Some(RankView::single(spec, w)?),
        Task::Infer => None,
    };
    let mut e = simulate(spec, w, ov, corr, view.as_ref())?;
    if w.moe_imbalance != 1.0 {
        e.warnings.push(format!(
            "--moe-imbalance {} has no effect on one GPU: transformers 5.24 runs the experts with grouped_mm over all (token, expert) rows, whose bytes do not depend on the routing; it applies to the busiest rank under --ep > 1",
            w.moe_imbalance
        ));
    }
    Ok(e)
}

/// The model as `w`'s implementation instantiates it: litgpt never ties the output
/// head to the embedding (scripts/convert_hf_checkpoint.py copies
/// `transformer.wte.weight` into `lm_head.weight` when a checkpoint has none; its `GPT`
/// has no tying), so a tied checkpoint gets a head of its own there.
///
/// A VLM whose vision side stays frozen under LoRA has its targets kept to the language
/// model ([`crate::arch::VisionSpec::adapters_reach`]).
pub fn instantiated<'a>(spec: &'a ModelSpec, w: &Workload) -> std::borrow::Cow<'a, ModelSpec> {
    let untie = w.implementation == crate::workload::Implementation::Litgpt && spec.tie_embeddings;
    let keep_to_lm = w.method.lora().is_some()
        && w.vision_train(spec) == Some(crate::workload::VisionTrain::Frozen)
        && spec.vision.as_ref().is_some_and(|v| v.adapters_reach);
    // a native-resolution tower at the run's image size (`--image-size`)
    let resize = spec
        .vision
        .as_ref()
        .filter(|v| v.native.is_some())
        .and_then(|v| w.image_size.map(|(iw, ih)| v.sized(ih, iw)));
    if !untie && !keep_to_lm && resize.is_none() {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut s = spec.clone();
    if let Some(v) = resize {
        s.vision = Some(Box::new(v));
    }
    if untie {
        s.tie_embeddings = false;
    }
    if let (true, Some(v)) = (keep_to_lm, s.vision.as_mut()) {
        v.adapters_reach = false;
    }
    std::borrow::Cow::Owned(s)
}

/// Run the timeline for one rank (`view`; `None` = inference on one GPU). `spec` is the
/// whole model (for the summary and warnings).
pub fn simulate(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    corr: &Correction,
    view: Option<&RankView>,
) -> Result<Estimate> {
    let a = corr.activation_scale;
    if !(a.is_finite() && a > 0.0) {
        return Err(crate::error::Error::invalid(
            "calibration alpha",
            a,
            "a finite number > 0",
        ));
    }
    ov.validate()?;
    // the candle program describes one block, run by every layer (the torch ledger
    // runs each layer group's own)
    if w.runtime == crate::workload::Runtime::Candle {
        spec.uniform_block()?;
    }
    let counts = params::count(spec);
    let warnings = context_warnings(spec, w);
    if w.task == Task::Train && w.runtime == crate::workload::Runtime::Candle {
        // candle keeps the whole graph and replays its own backward: simulated op by op
        return candle::estimate_train(spec, w, ov, corr, warnings);
    }
    let mut ev_ov = event_overheads(w, ov, corr, view);
    if w.device == Device::Cuda {
        ev_ov.managed = view.map_or(0, |v| v.statics.optimizer_state_managed);
    }
    let mut rec = Recorder::new(ev_ov);

    let acts: Activations;
    let mut params_trainable = 0;
    match (w.task, view) {
        (Task::Train, Some(v)) => {
            let local = &v.local;
            params_trainable = if w.method.is_full() {
                full_trainable(spec, w)
            } else {
                lora_trainable(spec, w)
            };
            acts = scaled(
                torch::activations(local, &rank_ledger_params(w, v)),
                a,
                corr.layers_only,
            );
            let plan = train_plan(w, v, &acts);
            timeline::simulate_train(&plan, &mut rec);
        }
        (Task::Train, None) => {
            return Err(crate::error::Error::invalid(
                "training estimate",
                "without a rank view",
                "a RankView",
            ));
        }
        (Task::Infer, _) => {
            // one GPU, or one tensor-parallel rank of a served model
            let spec = view.map_or(spec, |v| &v.local);
            acts = simulate_serving(spec, w, a, corr.layers_only, &mut rec)?;
        }
    }

    let total_saved = match w.task {
        Task::Train => acts.non_layer.shared + acts.stack_saved() + acts.non_layer.head_saved,
        Task::Infer => 0,
    };
    let mut summary = ModelSummary::of(spec, counts.total, params_trainable);
    summary.vision = spec.vision.as_ref().map(|_| VisionSummary {
        params: counts.vision,
        images: w.images,
        tokens_per_image: w.image_layout(spec).1,
        // nothing trains when serving
        train: match w.task {
            Task::Train => w.vision_train(spec).unwrap_or(VisionTrain::Frozen),
            Task::Infer => VisionTrain::Frozen,
        },
    });
    Ok(recorded(
        summary,
        rec,
        ActivationSummary {
            per_layer_bytes: acts.per_layer_bytes,
            non_layer_bytes: acts.non_layer_bytes,
            total_bytes: total_saved,
            layer_tensors: acts.layer.tensors.clone(),
        },
        warnings,
    ))
}

/// A context beyond the model's `max_position_embeddings`. Rotary models may extend
/// it (RoPE scaling); learned absolute positions cannot: transformers
/// `modeling_gpt2.py` indexes `self.wpe(position_ids)`, which fails past
/// `n_positions`, so the warning says the run cannot execute as configured.
fn context_warnings(spec: &ModelSpec, w: &Workload) -> Vec<String> {
    let mut warnings = Vec::new();
    let ctx_len = match w.task {
        Task::Train => w.seq_len,
        Task::Infer => w.infer.prompt_len + w.infer.gen_len,
    };
    if ctx_len > spec.max_positions {
        warnings.push(if matches!(spec.positions, crate::arch::Positions::Learned) {
            format!(
                "{ctx_len} tokens exceed the {} learned absolute positions of {}: transformers indexes the position table out of range, so this run fails as configured; the figures below are what it would hold if it ran (use at most {} tokens)",
                spec.max_positions, spec.name, spec.max_positions
            )
        } else {
            format!(
                "{ctx_len} tokens exceed the model's max_position_embeddings ({}); the estimate assumes the context is extended (e.g. RoPE scaling)",
                spec.max_positions
            )
        });
    }
    if let (Some(v), Some(train)) = (&spec.vision, w.vision_train(spec)) {
        let (key, len) = match w.task {
            Task::Train => ("--seq-len", w.seq_len),
            Task::Infer => ("--prompt-len", w.infer.prompt_len),
        };
        let side = match train {
            VisionTrain::Full => "the vision tower and the projector train",
            VisionTrain::Projector => "the projector trains, the vision tower is frozen",
            VisionTrain::Lora => "LoRA adapters on the vision side's linears (the tower's, and the projector's where it has nn.Linear modules)",
            VisionTrain::Frozen => "the vision tower and the projector are frozen",
        };
        let (crops, tokens) = w.image_layout(spec);
        let tiles = if let Some(n) = &v.native {
            let (iw, ih) = w.image_size.unwrap_or((v.image_size, v.image_size));
            let sized = v.sized(ih, iw);
            let g = sized.native.map_or(n.grid, |s| s.grid);
            format!(
                "; {iw}x{ih} px images resized to {}x{} px at native resolution ({} x {} patches of {} px, {}x{} merged per token)",
                g.1 * v.patch_size,
                g.0 * v.patch_size,
                g.0,
                g.1,
                v.patch_size,
                n.merge,
                n.merge
            )
        } else if v.anyres.is_some() {
            let (iw, ih) = w.image_size.unwrap_or((v.image_size, v.image_size));
            format!("; {iw}x{ih} px images, {crops} crop(s) of {0}x{0} px each through the tower (anyres)", v.image_size)
        } else {
            String::new()
        };
        let crop = if v.native.is_some() {
            String::new()
        } else {
            format!(" ({0}x{0} px, {1} patches)", v.image_size, v.patches())
        };
        warnings.push(format!(
            "vision-language model: {} image(s) per sequence of {} tokens{crop} counted inside {key} {len}{tiles}{}",
            w.images,
            tokens,
            match w.task {
                Task::Train => format!("; {side} (--vision {train})"),
                Task::Infer => String::new(),
            }
        ));
    }
    if spec.moe.is_some()
        && (w.method.is_qlora() || w.precision == crate::workload::Precision::Int8)
    {
        let experts: u64 = spec.sum_over_layers(|l| {
            if l.role.is_moe_parameter() {
                l.params()
            } else {
                0
            }
        });
        warnings.push(format!(
            "bitsandbytes quantizes nn.Linear modules only (transformers 5.24 replace_with_bnb_linear): the router and the fused expert parameters of {} ({:.2} B parameters) stay in the load dtype; transformers 4.x quantized its per-expert nn.Linear modules (not modelled)",
            spec.name,
            experts as f64 / 1e9
        ));
    }
    warnings
}

/// Inference on `spec` (the model, or one tensor-parallel rank of it): the prefill
/// ledger (α-scaled) and the decode step through the serving timeline. Returns the
/// prefill activations.
fn simulate_serving(
    spec: &ModelSpec,
    w: &Workload,
    a: f64,
    layers_only: bool,
    rec: &mut Recorder,
) -> Result<Activations> {
    let wb = weights::weight_bytes(spec, w, 0)?;
    let inf = &w.infer;
    let c = inf.concurrency;
    let chunk = inf
        .prefill_chunk
        .unwrap_or(inf.prompt_len)
        .min(inf.prompt_len);
    let pre = ledger_params(w, Trainable::Nothing, chunk, inf.prompt_len, c);
    let acts = scaled(torch::activations(spec, &pre), a, layers_only);
    let total_len = inf.prompt_len + inf.gen_len;
    let dec = ledger_params(w, Trainable::Nothing, 1, total_len, c);
    // the largest decode step over the stack's layer groups
    let dec_peak = spec
        .groups
        .iter()
        .map(|g| torch::layer_of(spec, g, &dec, false).fwd_peak)
        .max()
        .unwrap_or(0);
    let kv_per_token = kv_bytes_per_token(spec, inf.kv_dtype);
    let v = spec.vocab;
    let cd = w.precision.compute_dtype().size();
    let plan = InferPlan {
        weights: wb.total(),
        // after the prefill every layer's cache holds the prompt: a sliding layer keeps
        // a view of its last window - 1 tokens into the prompt-long `torch.cat`
        // result, which keeps that whole storage (cache_utils.py
        // `DynamicSlidingWindowLayer.update`, transformers 5.24)
        kv_prefill: c * inf.prompt_len * kv_per_token,
        kv_final: c * kv_cache_bytes(spec, inf.kv_dtype, total_len),
        prefill_layer_peak: acts.max_layer(|l| l.fwd_peak),
        // generate() keeps only the last position's logits and copies them to fp32
        prefill_logits: c * v * (cd + 4),
        decode_layer_peak: scale(dec_peak, a),
        // logits, fp32 copy, probabilities, sorted values and int64 indices
        decode_logits: c * v * (cd + 4 + 4 + 4 + 8),
        embed_out_prefill: acts.non_layer.embed_out,
        vision_prefill: vision_prefill(spec, w),
    };
    timeline::simulate_infer(&plan, rec);
    Ok(acts)
}

/// A VLM's vision tower over the prompts' images (no grad), at its last layer: the
/// hidden states of the layers before it, which LLaVA's `get_image_features` keeps for
/// the feature layer (transformers 5.24 modeling_llava.py `@select_hidden_states`, the
/// tower's `capture_outputs` recording every `CLIPEncoderLayer` output; Gemma-3 reads
/// only `last_hidden_state`), and that layer's forward peak (its input included).
fn vision_prefill(spec: &ModelSpec, w: &Workload) -> u64 {
    let Some(v) = spec.vision.as_ref().filter(|_| w.images > 0) else {
        return 0;
    };
    let b = w
        .infer
        .concurrency
        .saturating_mul(w.images)
        .saturating_mul(w.image_layout(spec).0.max(1));
    let t = v.tower_tokens();
    let d = w.precision.compute_dtype().size();
    let tp = ledger_params(w, Trainable::Nothing, t, t, b);
    let last = torch::layer(&v.tower, &tp, false).fwd_peak;
    let kept = match v.projector {
        crate::arch::Projector::Mlp { .. } => v.tower.layers().saturating_sub(1),
        // Gemma-3 and Qwen2-VL read only the last hidden state (Qwen2-VL's merger
        // output: `Qwen2VisionTransformerPretrainedModel.forward`'s pooler_output)
        crate::arch::Projector::Pooled { .. } | crate::arch::Projector::Merger { .. } => 0,
    };
    kept * b * t * v.tower.hidden * d + last
}

impl ModelSummary {
    /// The summary of `spec` with these parameter counts.
    pub fn of(spec: &ModelSpec, params_total: u64, params_trainable: u64) -> ModelSummary {
        ModelSummary {
            name: spec.name.clone(),
            family: spec.family.to_string(),
            layers: spec.layers(),
            hidden: spec.hidden,
            params_total,
            params_trainable,
            params_active: params_total.saturating_sub(params::idle_experts(spec)),
            moe: spec.moe.is_some(),
            vision: None,
        }
    }
}

/// The estimate of a recorded timeline: its peak event (the first of the largest)
/// with the components at that moment, and every event.
fn recorded(
    model: ModelSummary,
    rec: Recorder,
    activations: ActivationSummary,
    warnings: Vec<String>,
) -> Estimate {
    let peak_event = rec.peak().expect("the timeline always has events").clone();
    let device = peak_event.components.total();
    Estimate {
        model,
        peak: Peak {
            allocated: peak_event.allocated,
            reserved: peak_event.reserved,
            device,
            phase: peak_event.phase,
            event: peak_event.event.clone(),
        },
        components_at_peak: peak_event.components,
        activations,
        timeline: rec.events,
        warnings,
    }
}

/// Overheads of a rank's events: cuBLAS workspace and buckets in the allocator, CUDA
/// context and NCCL outside it, allocator fragmentation (all zero on the CPU).
pub fn event_overheads(
    w: &Workload,
    ov: &Overheads,
    corr: &Correction,
    view: Option<&RankView>,
) -> EventOverheads {
    let cuda = w.device == Device::Cuda;
    EventOverheads {
        managed: 0,
        in_allocator: corr.extra_overhead.get()
            + view.map_or(0, |v| v.in_allocator_extra)
            + if cuda {
                ov.cublas_workspace.get() * cublas_workspaces(w)
            } else {
                0
            },
        outside: view.map_or(0, |v| v.outside_extra)
            + if cuda {
                ov.cuda_context.get() + ov.nccl.get()
            } else {
                0
            },
        fragmentation: if cuda {
            ov.allocator_fragmentation
        } else {
            0.0
        },
    }
}

/// cuBLAS workspaces a step keeps in the caching allocator. PyTorch gives each
/// (cuBLAS handle, stream) pair its own workspace (aten/src/ATen/cuda/
/// CublasHandlePool.cpp `getCurrentCUDABlasHandle`: `cublas_handle_stream_to_workspace`,
/// cuBLASLt sharing it by default, `TORCH_CUBLASLT_UNIFIED_WORKSPACE`) and each thread
/// its own handle (`DeviceThreadHandlePool`); a training step runs its backward on the
/// autograd engine's worker thread for the device (torch/csrc/autograd/engine.cpp
/// `Engine::thread_init`), so forward and backward hold one workspace each — measured
/// on an H200 (torch 2.11, `results/gpu-default-h200-cuda0-torch-2026-12-04.csv`): the
/// step's start held 68.2 MB beyond parameters and optimizer state on all 48 points,
/// two 32 MiB workspaces and the inputs. Inference (and candle) runs on one thread.
pub fn cublas_workspaces(w: &Workload) -> u64 {
    if w.task == Task::Train && w.runtime == crate::workload::Runtime::Torch {
        2
    } else {
        1
    }
}

/// Ledger parameters of a rank's training step.
pub fn rank_ledger_params(w: &Workload, v: &RankView) -> LedgerParams {
    let mut lp = ledger_params(w, trainable_kind(w), v.seq_local, w.seq_len, w.batch);
    // prefix tuning: every layer attends to its virtual tokens too
    lp.kv_len += lp.prefix_tokens();
    lp.sp_div = v.sp_div;
    lp.vision = w
        .vision_train(&v.local)
        .unwrap_or(crate::workload::VisionTrain::Frozen);
    lp.ep = v.ep;
    lp.image_crops = w.image_layout(&v.local).0.max(1);
    lp
}

/// The timeline inputs of one rank: its view plus its activation ledger.
pub fn train_plan(w: &Workload, v: &RankView, acts: &Activations) -> TrainPlan {
    let local = &v.local;
    let litgpt = w.implementation == crate::workload::Implementation::Litgpt;
    let layer_extra_temp = if w.method.is_qlora() {
        // bitsandbytes dequantizes one linear weight at a time for the matmul; under
        // Lightning's BitsandbytesPrecision the quantization state is fp16
        // (plugins/precision/bitsandbytes.py `quantize`: `weight.to(dtype=torch.half)`),
        // so `dequantize_4bit(...).to(A.dtype)` holds an fp16 and a bf16 copy
        let copies = if litgpt { 2 } else { 1 };
        // the largest 4-bit nn.Linear of any layer group (an MoE block's experts and
        // router stay unquantized)
        copies
            * local
                .each_linear()
                .filter(|l| !l.role.is_moe_parameter())
                .map(|l| l.in_features * l.out_features)
                .max()
                .unwrap_or(0)
            * w.precision.compute_dtype().size()
    } else {
        0
    };
    // litgpt QLoRA quantizes the head too: each chunk's matmul dequantizes all of it
    // (fp16, then the bf16 copy)
    let head_dequant = if litgpt && w.method.is_qlora() && v.has_head {
        2 * local.vocab * local.hidden * w.precision.compute_dtype().size()
    } else {
        0
    };
    let tokens = w.batch * v.seq_local;
    let cd = w.precision.compute_dtype().size();
    let st = &v.statics;
    let layers = layer_runs(v, acts, layer_extra_temp);
    let layer_saved_max = layers.iter().map(|r| r.cost.saved).max().unwrap_or(0);
    let stage_saved: u64 = layers.iter().map(|r| r.count * r.cost.saved).sum::<u64>()
        + acts.non_layer.shared
        + if v.has_head {
            acts.non_layer.head_saved
        } else {
            0
        };
    let inflight_saved =
        ((v.inflight_microbatches - 1.0).max(0.0) * stage_saved as f64).round() as u64;
    TrainPlan {
        layers,
        weights: st.weights,
        master_weights: st.master_weights,
        optimizer_state: st.optimizer_state,
        optimizer_step_temp: if w.optimizer_in_bwd {
            // one optimizer per parameter: the step temporaries of the largest tensor
            // (an upper bound for a sharded one)
            let (_, state_size, shapes) = optimizer_shapes(local, w);
            shapes
                .iter()
                .max_by_key(|sh| sh.rows * sh.cols)
                .map_or(0, |sh| {
                    let one = optimizer::Shape { count: 1, ..*sh };
                    optimizer::step_temporaries(w.optimizer, &[one], state_size)
                })
                .min(st.optimizer_step_temp)
        } else {
            st.optimizer_step_temp
        },
        embed_out: acts.non_layer.embed_out,
        shared: acts.non_layer.shared,
        head_saved: acts.non_layer.head_saved,
        loss_saved: acts.non_layer.loss_saved,
        // the head's dequantized weight exists while one chunk's matmul runs: in
        // forward before the fp32 copies are made (the 2 bytes per logit of the bf16
        // chunks the transient counts beyond the fp32 logits and log-probs at the loss
        // are not there yet), in backward next to one bf16 chunk gradient (¼ of the
        // two fp32 chunk gradients the transient counts)
        head_fwd_transient: acts
            .non_layer
            .head_fwd_transient
            .max(head_dequant.saturating_sub(acts.non_layer.head_fwd_transient)),
        head_bwd_transient: acts
            .non_layer
            .head_bwd_transient
            .max(head_dequant + acts.non_layer.head_bwd_transient / 4),
        head_grad_logits: match w.loss {
            // litgpt: the bf16 gradient of one 128-token head chunk (finetune/lora.py)
            // or of all the logits (finetune/full.py)
            _ if litgpt && !w.method.is_full() => {
                w.batch * torch::LM_HEAD_CHUNK.min(v.seq_local) * local.vocab * cd
            }
            _ if litgpt => tokens * local.vocab * cd,
            crate::workload::Loss::Standard => tokens * local.vocab * cd,
            // every chunk's logit gradient exists before the first chunk's head
            // backward runs: the cross-entropies were created after all the head's
            // matmuls, and autograd's ready queue runs the node with the larger
            // sequence number first (torch/csrc/autograd/engine.cpp
            // `CompareNodeTaskTime`; checked with tensor hooks on torch 2.15: logit
            // gradients 7..0, then the head's weight gradient, summed)
            crate::workload::Loss::Chunked => tokens * local.vocab * cd,
            crate::workload::Loss::FusedLinearCe => 0,
        },
        // a trained chunked head: each chunk's matmul backward makes a full weight
        // gradient that autograd adds into the sum its input buffer holds
        head_bwd_weight_grad: if w.loss == crate::workload::Loss::Chunked
            && !litgpt
            && w.method.is_full()
            && v.has_head
        {
            local.vocab * local.hidden * full_grad_size(w)
        } else {
            0
        },
        grad_head: st.grad_head,
        grad_embedding: st.grad_embedding,
        grad_other: st.grad_other,
        tied: local.tie_embeddings && v.has_embedding && v.has_head,
        grad_accum: w.grad_accum,
        has_embedding: v.has_embedding,
        has_head: v.has_head,
        inflight_saved,
        unsynced: v.unsynced,
        root_grads_pending: v.fsdp_root_grads.0,
        root_grads_assembly: v.fsdp_root_grads.1,
        unit_grad_assembly: v.fsdp_unit_grad_assembly,
        embed_unit: v.fsdp_edge_units.0,
        head_unit: v.fsdp_edge_units.1,
        head_grad_assembly: v.fsdp_edge_units.2,
        gathered_fwd: v.gathered_fwd,
        gathered_bwd: v.gathered_bwd,
        optimizer_extra: v.optimizer_extra,
        held_by_loop: if v.has_head {
            acts.non_layer.held_by_loop
        } else {
            0
        },
        optimizer_in_bwd: w.optimizer_in_bwd,
        // five stashed tensors; under checkpointing one per layer (its input)
        offload_stash: w.activation_offload.then_some(5 * layer_saved_max),
        // litgpt's fit() keeps `loss` (the graph's root) bound until the next
        // iteration assigns a new one, after its forward and loss
        prev_step_held: if litgpt {
            let stack: u64 = stage_ledgers(v, acts)
                .iter()
                .map(|(n, l, _)| n * l.ctx_held)
                .sum();
            stack
                + if v.has_head {
                    acts.non_layer.ctx_held
                } else {
                    0
                }
        } else {
            0
        },
    }
}

/// The decoder layers of a rank's stage as runs of equal cost: on the first stage
/// layer 0 has its own cost (under LoRA its input needs no grad, see
/// `runtime::torch`), then the rest of its group; then each further layer group;
/// later stages run only the general layers.
fn layer_runs(v: &RankView, acts: &Activations, extra_temp: u64) -> LayerRuns {
    stage_ledgers(v, acts)
        .into_iter()
        .map(|(count, l, general)| LayerRun {
            count,
            cost: LayerCost {
                saved: l.saved,
                fwd_cache: l.fwd_cache,
                fwd_peak: l.fwd_peak,
                bwd_peak: l.bwd_peak,
                // the general layer's: gradients the layer's backward has allocated by
                // its peak
                bwd_peak_param_grads: general.bwd_peak_param_grads,
                extra_temp,
                grad: v.statics.grad_layer,
            },
        })
        .collect()
}

/// The stage's layers as (count, ledger, the general ledger of its group), bottom to
/// top: the first layer's own ledger only on the stage that holds the embedding.
fn stage_ledgers<'a>(
    v: &RankView,
    acts: &'a Activations,
) -> Vec<(u64, &'a torch::LayerLedger, &'a torch::LayerLedger)> {
    let n = v.local.layers();
    let general: Vec<(u64, &torch::LayerLedger)> = if acts.groups.is_empty() {
        vec![(n, &acts.layer)]
    } else {
        acts.groups.iter().map(|(c, l)| (*c, l)).collect()
    };
    let mut out = Vec::with_capacity(general.len() + 1);
    for (i, (c, l)) in general.into_iter().enumerate() {
        if i == 0 && v.has_embedding {
            out.push((1, &acts.first, l));
            out.push((c - 1, l, l));
        } else {
            out.push((c, l, l));
        }
    }
    out.retain(|(c, _, _)| *c > 0);
    out
}

/// KV-cache bytes per token of context (all layers, K and V; latent attention's
/// latent and rope key, see [`ModelSpec::kv_elems_per_token_layer`]).
pub fn kv_bytes_per_token(spec: &ModelSpec, kv_dtype: DType) -> u64 {
    spec.layers() * spec.kv_elems_per_token_layer() * kv_dtype.size()
}

/// KV-cache bytes of one sequence of `tokens` during decode: a full-attention layer
/// holds every token (`DynamicLayer`), a sliding layer the window
/// (`DynamicSlidingWindowLayer.update` keeps `window - 1` tokens as a view into the
/// step's `torch.cat` of `window`, transformers 5.24 cache_utils.py), K and V.
pub fn kv_cache_bytes(spec: &ModelSpec, kv_dtype: DType, tokens: u64) -> u64 {
    let per_layer_token = spec.kv_elems_per_token_layer() * kv_dtype.size();
    let sliding = spec.sliding_layer_count();
    let full = spec.layers() - sliding;
    let window = spec.sliding_window.map_or(tokens, |w| w.min(tokens));
    per_layer_token * (full * tokens + sliding * window)
}

/// Activation-class bytes of a ledger multiplied by α.
fn scaled(mut x: Activations, a: f64, layers_only: bool) -> Activations {
    if a == 1.0 {
        return x;
    }
    for l in [&mut x.layer, &mut x.first]
        .into_iter()
        .chain(x.groups.iter_mut().map(|(_, l)| l))
    {
        l.saved = scale(l.saved, a);
        l.fwd_cache = scale(l.fwd_cache, a);
        l.fwd_peak = scale(l.fwd_peak, a);
        l.bwd_peak = scale(l.bwd_peak, a).max(l.bwd_peak_param_grads);
        l.output_bytes = scale(l.output_bytes, a);
    }
    if layers_only {
        // the non-layer part stays as the ledger has it; per_layer_bytes follows the
        // layer ledger, non_layer_bytes keeps the first layer's difference
        let first_diff = x.non_layer_bytes;
        x.per_layer_bytes = scale(x.per_layer_bytes, a);
        x.non_layer_bytes = first_diff;
        return x;
    }
    let n = &mut x.non_layer;
    n.shared = scale(n.shared, a);
    n.head_saved = scale(n.head_saved, a);
    n.loss_saved = scale(n.loss_saved, a).min(n.head_saved);
    n.head_fwd_transient = scale(n.head_fwd_transient, a);
    n.head_bwd_transient = scale(n.head_bwd_transient, a);
    n.embed_out = scale(n.embed_out, a);
    x.per_layer_bytes = scale(x.per_layer_bytes, a);
    x.non_layer_bytes = scale(x.non_layer_bytes, a);
    x
}
