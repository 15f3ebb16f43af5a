//! The estimator: model + workload + overheads → per-GPU memory, by simulating the step.
//!
//! Pure: no I/O. `estimate()` validates its inputs, computes exact parameter counts
//! (`params`), static bytes (`weights`, `optimizer`), the activation ledger
//! (`activations`), then runs the timeline (`timeline`) and reports the peak event with
//! its breakdown.

use serde::Serialize;

use crate::activations::{self, Activations, LedgerParams, LedgerTensor, Trainable};
use crate::bytes::Bytes;
use crate::dtype::DType;
use crate::error::Result;
use crate::model::ModelSpec;
use crate::optimizer;
use crate::overhead::Overheads;
use crate::params;
use crate::timeline::{
    self, Components, Event, EventOverheads, InferPlan, Phase, Recorder, TrainPlan,
};
use crate::weights;
use crate::workload::{Device, Method, Task, Workload};

/// Parameter counts of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub family: String,
    pub layers: u64,
    pub hidden: u64,
    pub params_total: u64,
    pub params_trainable: u64,
}

/// The moment of the peak.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivationSummary {
    /// Bytes one decoder layer keeps alive from its forward until its backward.
    pub per_layer_bytes: u64,
    /// The rest kept until backward: embedding side, final norm, head input, loss
    /// tensors (and a frozen first layer's difference).
    pub non_layer_bytes: u64,
    /// All activations kept at the end of forward.
    pub total_bytes: u64,
    /// The tensors of one decoder layer's forward.
    #[serde(skip)]
    pub layer_tensors: Vec<LedgerTensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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
        runtime: w.runtime,
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
    pub extra_overhead: Bytes,
}

impl Correction {
    pub const IDENTITY: Correction = Correction {
        activation_scale: 1.0,
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

/// [`estimate`] with an empirical correction applied to the simulation's inputs (so
/// the peak may move to another event).
pub fn estimate_corrected(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    corr: &Correction,
) -> Result<Estimate> {
    let a = corr.activation_scale;
    if !(a.is_finite() && a > 0.0) {
        return Err(crate::error::Error::invalid(
            "calibration alpha",
            a,
            "a finite number > 0",
        ));
    }
    spec.validate()?;
    w.validate(spec)?;
    ov.validate()?;
    let counts = params::count(spec);
    let mut warnings = Vec::new();
    let ctx_len = match w.task {
        Task::Train => w.seq_len,
        Task::Infer => w.infer.prompt_len + w.infer.gen_len,
    };
    if ctx_len > spec.max_positions {
        warnings.push(format!(
            "{ctx_len} tokens exceed the model's max_position_embeddings ({}); the estimate assumes the context is extended (e.g. RoPE scaling)",
            spec.max_positions
        ));
    }
    if w.task == Task::Train && w.runtime == crate::workload::Runtime::Candle {
        // candle keeps the whole graph and replays its own backward: simulated op by op
        return crate::tape::estimate_train(spec, w, ov, corr, warnings);
    }
    let (trainable_kind, lora_trainable) = match (&w.lora, w.method) {
        (Some(l), Method::Lora | Method::Qlora) => {
            let c = params::lora(spec, l.rank, &l.targets);
            (
                Trainable::Lora {
                    rank: l.rank,
                    targets: l.targets.clone(),
                },
                c.trainable,
            )
        }
        _ => (Trainable::All, 0),
    };
    let wb = weights::weight_bytes(spec, w, lora_trainable)?;
    let params_trainable = match (w.task, w.method) {
        (Task::Infer, _) => 0,
        (_, Method::Full) => counts.total,
        _ => lora_trainable,
    };
    let ev_ov = EventOverheads {
        in_allocator: corr.extra_overhead.get()
            + if w.device == Device::Cuda {
                ov.cublas_workspace.get()
            } else {
                0
            },
        outside: if w.device == Device::Cuda {
            ov.cuda_context.get() + ov.nccl.get()
        } else {
            0
        },
        fragmentation: if w.device == Device::Cuda {
            ov.allocator_fragmentation
        } else {
            0.0
        },
    };
    let mut rec = Recorder::new(ev_ov);

    let acts: Activations;
    match w.task {
        Task::Train => {
            let lp = ledger_params(w, trainable_kind.clone(), w.seq_len, w.seq_len, w.batch);
            acts = scaled(activations::activations(spec, &lp), a);
            let param_dt = w.precision.param_dtype();
            // dtype the optimizer updates / gradients are kept in
            let (grad_size, state_size, shapes) = match w.method {
                Method::Full => {
                    let s = if w.master_weights { 4 } else { param_dt.size() };
                    (s, s, optimizer::full_shapes(spec))
                }
                _ => {
                    let l = w.lora.as_ref().expect("validated: lora config present");
                    (4, 4, optimizer::lora_shapes(spec, l.rank, &l.targets))
                }
            };
            let full = w.method == Method::Full;
            let grad_layer = if full {
                counts.per_layer * grad_size
            } else {
                lora_trainable / spec.layers * grad_size
            };
            let layer_extra_temp = if w.method == Method::Qlora {
                // bitsandbytes dequantizes one linear weight at a time for the matmul
                spec.layer_linears()
                    .iter()
                    .map(|l| l.in_features * l.out_features)
                    .max()
                    .unwrap_or(0)
                    * w.precision.compute_dtype().size()
            } else {
                0
            };
            let plan = TrainPlan {
                layers: spec.layers,
                weights: wb.total(),
                master_weights: if w.master_weights {
                    params_trainable * 4
                } else {
                    0
                },
                optimizer_state: optimizer::state_bytes(w.optimizer, &shapes, state_size),
                optimizer_step_temp: optimizer::step_temporaries(w.optimizer, &shapes, state_size),
                first_saved: acts.first.saved,
                layer_saved: acts.layer.saved,
                first_fwd_cache: acts.first.fwd_cache,
                layer_fwd_cache: acts.layer.fwd_cache,
                first_fwd_peak: acts.first.fwd_peak,
                layer_fwd_peak: acts.layer.fwd_peak,
                first_bwd_peak: acts.first.bwd_peak,
                bwd_peak_param_grads: acts.layer.bwd_peak_param_grads,
                layer_bwd_peak: acts.layer.bwd_peak,
                layer_extra_temp,
                embed_out: acts.non_layer.embed_out,
                shared: acts.non_layer.shared,
                head_saved: acts.non_layer.head_saved,
                loss_saved: acts.non_layer.loss_saved,
                head_fwd_transient: acts.non_layer.head_fwd_transient,
                head_bwd_transient: acts.non_layer.head_bwd_transient,
                head_grad_logits: match w.loss {
                    crate::workload::Loss::Standard => {
                        w.batch * w.seq_len * spec.vocab * w.precision.compute_dtype().size()
                    }
                    crate::workload::Loss::Chunked => {
                        w.batch * w.seq_len * spec.vocab * w.precision.compute_dtype().size()
                            / activations::CHUNKED_LOSS_CHUNKS
                    }
                    crate::workload::Loss::FusedLinearCe => 0,
                },
                grad_layer,
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
                grad_other: if full { counts.other * grad_size } else { 0 },
                tied: spec.tie_embeddings,
                grad_accum: w.grad_accum,
            };
            timeline::simulate_train(&plan, &mut rec);
        }
        Task::Infer => {
            let inf = &w.infer;
            let c = inf.concurrency;
            let chunk = inf
                .prefill_chunk
                .unwrap_or(inf.prompt_len)
                .min(inf.prompt_len);
            let pre = ledger_params(w, Trainable::Nothing, chunk, inf.prompt_len, c);
            acts = scaled(activations::activations(spec, &pre), a);
            let total_len = inf.prompt_len + inf.gen_len;
            let dec = ledger_params(w, Trainable::Nothing, 1, total_len, c);
            let dec_layer = activations::layer(spec, &dec, false);
            let kv_per_token = 2 * spec.layers * spec.kv_dim() * inf.kv_dtype.size();
            let v = spec.vocab;
            let cd = w.precision.compute_dtype().size();
            let plan = InferPlan {
                weights: wb.total(),
                kv_prefill: c * inf.prompt_len * kv_per_token,
                kv_final: c * total_len * kv_per_token,
                prefill_layer_peak: acts.layer.fwd_peak,
                // generate() keeps only the last position's logits and copies them to fp32
                prefill_logits: c * v * (cd + 4),
                decode_layer_peak: scale(dec_layer.fwd_peak, a),
                // logits, fp32 copy, probabilities, sorted values and int64 indices
                decode_logits: c * v * (cd + 4 + 4 + 4 + 8),
                embed_out_prefill: acts.non_layer.embed_out,
            };
            timeline::simulate_infer(&plan, &mut rec);
        }
    }

    let peak_event = rec.peak().expect("the timeline always has events").clone();
    let total_saved = match w.task {
        Task::Train => {
            acts.non_layer.shared
                + acts.first.saved
                + (spec.layers - 1) * acts.layer.saved
                + acts.non_layer.head_saved
        }
        Task::Infer => 0,
    };
    let device = peak_event.components.total();
    Ok(Estimate {
        model: ModelSummary {
            name: spec.name.clone(),
            family: spec.family.to_string(),
            layers: spec.layers,
            hidden: spec.hidden,
            params_total: counts.total,
            params_trainable,
        },
        peak: Peak {
            allocated: peak_event.allocated,
            reserved: peak_event.reserved,
            device,
            phase: peak_event.phase,
            event: peak_event.event.clone(),
        },
        components_at_peak: peak_event.components,
        activations: ActivationSummary {
            per_layer_bytes: acts.per_layer_bytes,
            non_layer_bytes: acts.non_layer_bytes,
            total_bytes: total_saved,
            layer_tensors: acts.layer.tensors.clone(),
        },
        timeline: rec.events,
        warnings,
    })
}

/// KV-cache bytes per token of context (all layers, K and V).
pub fn kv_bytes_per_token(spec: &ModelSpec, kv_dtype: DType) -> u64 {
    2 * spec.layers * spec.kv_dim() * kv_dtype.size()
}

/// Activation-class bytes of a ledger multiplied by α.
fn scaled(mut x: Activations, a: f64) -> Activations {
    if a == 1.0 {
        return x;
    }
    for l in [&mut x.layer, &mut x.first] {
        l.saved = scale(l.saved, a);
        l.fwd_cache = scale(l.fwd_cache, a);
        l.fwd_peak = scale(l.fwd_peak, a);
        l.bwd_peak = scale(l.bwd_peak, a).max(l.bwd_peak_param_grads);
        l.output_bytes = scale(l.output_bytes, a);
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
