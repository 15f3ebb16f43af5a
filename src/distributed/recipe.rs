//! The precision recipe each layout runs, as its framework runs it. Full fine-tuning in
//! half precision means fp32 master parameters in every framework that shards or
//! splits the model, whatever `--master-weights` says:
//!
//! | layout | `--dtype bf16`/`fp16` | `--dtype amp-bf16`/`amp-fp16` |
//! |---|---|---|
//! | DeepSpeed ZeRO 1–3 | half parameters + fp32 master partition (always) | the same: DeepSpeed's `bf16`/`fp16` mode, no autocast |
//! | PyTorch FSDP | pure half (as asked; `--master-weights` for fp32 shards) | `MixedPrecision(param_dtype=half)`: fp32 sharded parameters are the master, gathered in half, no autocast cache |
//! | Megatron (tp, pp, cp > 1 or `--distributed-optimizer`) | half parameters + fp32 `main_grad` + fp32 main params and Adam (always) | autocast, as asked |
//! | torch DDP | pure half, as asked | autocast, as asked |
//!
//! Sources: Megatron-LM core_r0.12 `megatron/core/optimizer/optimizer.py`
//! (`Float16OptimizerWithFloat16Params`: fp32 main params, `main_grad` fp32 buffers in
//! `distributed/param_and_grad_buffer.py`) and `distrib_optimizer.py`
//! (`DistributedOptimizer`: fp32 main params and Adam sharded over dp); DeepSpeed
//! 0.19 `runtime/engine.py` (`bf16.enabled`/`fp16.enabled` cast the module to half;
//! `zero/stage_1_and_2.py`, `zero/stage3.py` keep `single_partition_of_fp32_groups`);
//! accelerate 1.x `accelerator.py` (`native_amp` — torch autocast — is never enabled
//! for `DistributedType.DEEPSPEED`) and `utils/dataclasses.py`
//! (`FullyShardedDataParallelPlugin.set_mixed_precision("bf16")` installs
//! `MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
//! buffer_dtype=torch.bfloat16)`); torch 2.x `torch/distributed/fsdp/api.py`
//! (`MixedPrecision`: parameters cast to `param_dtype` before the all-gather, the fp32
//! shard kept as the optimizer's parameter).
//!
//! LoRA runs are left as asked (peft adapters are fp32 already and autocast caches
//! only weights that require grad), except under ZeRO (DeepSpeed casts the module) and
//! under FSDP with autocast (accelerate's `MixedPrecision` casts every flat parameter
//! to half for compute; the frozen base's shards stay fp32 as loaded).

use std::borrow::Cow;

use crate::workload::layout::Layout;
use crate::workload::{Precision, Task, Workload};

/// Which framework's recipe adds fp32 master weights the user did not ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImpliedMaster {
    Zero,
    Megatron,
    FsdpMixedPrecision,
}

impl ImpliedMaster {
    pub fn as_str(self) -> &'static str {
        match self {
            ImpliedMaster::Zero => "ZeRO",
            ImpliedMaster::Megatron => "Megatron",
            ImpliedMaster::FsdpMixedPrecision => "FSDP MixedPrecision",
        }
    }
}

/// The workload as the layout's framework runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionRecipe<'a> {
    pub workload: Cow<'a, Workload>,
    /// Set when fp32 master weights come from the layout, not from `--master-weights`.
    pub implied: Option<ImpliedMaster>,
    /// What was mapped, for the warnings.
    pub note: Option<String>,
}

/// The half precision of an autocast recipe (`amp-bf16` → `bf16`).
fn half_of(p: Precision) -> Precision {
    match p {
        Precision::AmpBf16 => Precision::Bf16,
        Precision::AmpFp16 => Precision::Fp16,
        other => other,
    }
}

fn is_half(p: Precision) -> bool {
    matches!(p, Precision::Bf16 | Precision::Fp16)
}

/// Whether `layout` runs Megatron-LM's model parallelism or optimizer sharding.
pub fn is_megatron(layout: &Layout) -> bool {
    layout.zero == 0
        && layout.fsdp.is_none()
        && (layout.tp > 1 || layout.pp > 1 || layout.cp > 1 || layout.distributed_optimizer)
}

/// `w` run in `precision` (with master weights if `master`), as `implied` does it.
fn mapped(
    w: &Workload,
    precision: Precision,
    master: bool,
    implied: ImpliedMaster,
    note: String,
) -> PrecisionRecipe<'_> {
    let mut m = w.clone();
    m.precision = precision;
    m.master_weights |= master;
    PrecisionRecipe {
        workload: Cow::Owned(m),
        implied: Some(implied),
        note: Some(note),
    }
}

/// The recipe of `w` under `layout` (the module doc's table).
pub fn precision_recipe<'a>(w: &'a Workload, layout: &Layout) -> PrecisionRecipe<'a> {
    let asked = PrecisionRecipe {
        workload: Cow::Borrowed(w),
        implied: None,
        note: None,
    };
    if w.task != Task::Train {
        return asked;
    }
    if let (Some(l), true) = (w.method.lora(), layout.zero > 0) {
        // DeepSpeed's bf16/fp16 engine casts the whole module, adapters included
        // (runtime/engine.py `_configure_distributed_model`: `self.module.bfloat16()`
        // / `.half()`, 0.19.1), and ZeRO keeps fp32 partitions of the trainable
        // adapters; the frozen base is held in the half dtype
        let (p, half) = (w.precision, half_of(w.precision));
        if (p.is_amp() || is_half(p)) && (l.adapter_fp32 || p.is_amp()) {
            let mut m = w.clone();
            m.precision = half;
            m.master_weights = true;
            m.method = m.method.with_adapter_dtype(false);
            return PrecisionRecipe {
                workload: Cow::Owned(m),
                implied: Some(ImpliedMaster::Zero),
                note: Some(format!(
                    "LoRA with --dtype {p} under ZeRO is modelled as DeepSpeed's {half} engine: the whole module, adapters included, is cast to {half}; the adapters' fp32 master partition and optimizer state are ZeRO's"
                )),
            };
        }
        return asked;
    }
    if let (Some(_), Some(_), true) = (w.method.lora(), layout.fsdp, w.precision.is_amp()) {
        // accelerate installs FSDP MixedPrecision(param_dtype=half) for `--bf16` /
        // `--fp16` (utils/dataclasses.py `FullyShardedDataParallelPlugin`, 0.27-1.x):
        // every flat parameter, the frozen base's and the adapters', is cast to half
        // before its all-gather (torch 2.x fsdp/_flat_param.py
        // `_use_low_precision_shard`), so the layers compute in half from the
        // embedding on (its output is half) and autocast has nothing left to cast.
        // The sharded flat parameters keep the dtype the model was loaded in (fp32
        // for an AMP run) and the adapters stay the optimizer's fp32 parameters.
        let half = half_of(w.precision);
        let mut m = w.clone();
        m.precision = half;
        m.master_weights = true;
        m.method = m.method.with_adapter_dtype(false);
        m.frozen_storage = Some(Precision::Fp32);
        return PrecisionRecipe {
            workload: Cow::Owned(m),
            implied: Some(ImpliedMaster::FsdpMixedPrecision),
            note: Some(format!(
                "LoRA with --dtype {p} under FSDP is modelled as accelerate's FSDP MixedPrecision(param_dtype={half}): base and adapters are gathered and computed in {half} (activations in {half}), the sharded base stays fp32 as loaded, the adapters' fp32 shards are the optimizer's",
                p = w.precision
            )),
        };
    }
    if !w.method.is_full() {
        return asked;
    }
    let (p, half) = (w.precision, half_of(w.precision));
    if layout.zero > 0 {
        if p.is_amp() {
            return mapped(w, half, false, ImpliedMaster::Zero, format!(
                "--dtype {p} under ZeRO is modelled as DeepSpeed's {half} mode: accelerate does not autocast under DeepSpeed; the engine casts the model to {half} and keeps an fp32 master partition"
            ));
        }
        if is_half(p) && !w.master_weights {
            return PrecisionRecipe {
                implied: Some(ImpliedMaster::Zero),
                ..asked
            };
        }
        return asked;
    }
    if layout.fsdp.is_some() {
        if p.is_amp() {
            return mapped(w, half, true, ImpliedMaster::FsdpMixedPrecision, format!(
                "--dtype {p} under FSDP is modelled as torch FSDP MixedPrecision(param_dtype={half}, reduce_dtype={half}) as accelerate installs it: fp32 sharded parameters are the master copy, layers are gathered in {half}, no autocast weight cache"
            ));
        }
        if is_half(p) && layout.fsdp_upcast {
            // accelerate accelerator.py prepare_model (v0.30.0, #2674, `upcasted_log`):
            // under mixed precision every trainable flat parameter that is not fp32 is
            // cast to fp32 (`param.data = param.data.to(torch.float32)`); FSDP's
            // MixedPrecision(param_dtype=half) gathers the layers in the half dtype
            return mapped(w, p, true, ImpliedMaster::FsdpMixedPrecision, format!(
                "{p} parameters under FSDP with mixed precision are upcast to fp32 as accelerate does (accelerate >= 0.30, --fsdp-upcast): fp32 sharded parameters, gradients and optimizer state, layers gathered in {p}"
            ));
        }
        if is_half(p) && !w.master_weights {
            return PrecisionRecipe {
                note: Some(format!(
                    "pure {p} FSDP: parameters, gradients and optimizer state in {p}, no fp32 master copy; add --master-weights for MixedPrecision with fp32 sharded parameters"
                )),
                ..asked
            };
        }
        return asked;
    }
    if is_megatron(layout) && is_half(p) && !w.master_weights {
        let mut m = w.clone();
        m.master_weights = true;
        return PrecisionRecipe {
            workload: Cow::Owned(m),
            implied: Some(ImpliedMaster::Megatron),
            note: None,
        };
    }
    asked
}
