//! Host (CPU) memory of offload layouts, per node (`gpus_per_node` = min(world, 8),
//! one node of eight GPUs, the FSDP hybrid default).
//!
//! - DeepSpeed ZeRO with `offload_optimizer` / `offload_param`: DeepSpeed's own
//!   estimators (DeepSpeed 0.19 `deepspeed/runtime/zero/stage_1_and_2.py`
//!   `estimate_zero2_model_states_mem_needs`, also stage 1; `zero/stage3.py`
//!   `estimate_zero3_model_states_mem_needs`, `zero_init=True`), `cpu_mem` with
//!   `additional_buffer_factor` 1.5, on the trainable parameters P (the model's total
//!   for full fine-tuning, as DeepSpeed's estimator is given them; LoRA: the adapters):
//!   - ZeRO-1/2 + optimizer offload: P · max(4 · gpus, 16) · 1.5;
//!   - ZeRO-3 + optimizer offload: P · 16 / nodes · 1.5; + parameter offload:
//!     P · 18 / nodes · 1.5 (for LoRA: 16 · P + 2 · every parameter, the frozen half
//!     parameters being offloaded too).
//! - PyTorch FSDP `CPUOffload(offload_params=True)` (torch 2.x
//!   `torch/distributed/fsdp/api.py`: parameters and gradients on the CPU, the
//!   optimizer step there too; FSDP1 pins the offloaded flat shard,
//!   `_flat_param.py`): each rank's sharded parameters, gradients and optimizer state
//!   as they would be on the device, × ranks per node.
//!
//! Pure: no I/O.

use crate::arch::{params, ModelSpec};
use crate::error::Result;
use crate::estimate;
use crate::units::bytes::Bytes;
use crate::workload::layout::Layout;
use crate::workload::Workload;

/// Host memory an offload layout keeps per node.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMemory {
    pub bytes_per_node: Bytes,
    pub gpus_per_node: u64,
    /// What is counted and after whose formula, in words.
    pub basis: &'static str,
}

/// GPUs per node: one node of up to eight.
pub fn gpus_per_node(layout: &Layout) -> u64 {
    layout.world().clamp(1, 8)
}

/// DeepSpeed's `cpu_mem` for a ZeRO offload layout, per node.
pub fn deepspeed_cpu_mem(trainable: u64, total: u64, layout: &Layout) -> Option<HostMemory> {
    if layout.zero == 0 || !layout.offload_optimizer {
        return None;
    }
    let gpus = layout.world().max(1);
    let per_node = gpus_per_node(layout);
    let nodes = gpus.div_ceil(per_node);
    // 1.5 × integer, truncated as DeepSpeed's int(); u128 so no size can wrap
    let (p, all) = (trainable as u128, total as u128);
    let (bytes, basis) = match (layout.zero, layout.offload_params) {
        // 18 = 16 for the optimizer partition + 2 for the half parameters, which are
        // every parameter (frozen ones too)
        (3, true) => (
            (p * 16 + all * 2) * 3 / (2 * nodes as u128),
            "pinned fp32 optimizer partition and offloaded parameters (DeepSpeed estimate_zero3_model_states_mem_needs cpu_mem)",
        ),
        (3, false) => (
            p * 16 * 3 / (2 * nodes as u128),
            "pinned fp32 optimizer partition (DeepSpeed estimate_zero3_model_states_mem_needs cpu_mem)",
        ),
        _ => (
            p * (4 * gpus as u128).max(16) * 3 / 2,
            "pinned fp32 optimizer partition (DeepSpeed estimate_zero2_model_states_mem_needs cpu_mem)",
        ),
    };
    Some(HostMemory {
        bytes_per_node: Bytes(u64::try_from(bytes).unwrap_or(u64::MAX)),
        gpus_per_node: per_node,
        basis,
    })
}

/// Host memory of `layout` (None unless it offloads). `w` is the workload as the
/// layout's recipe runs it; `fsdp_rank_states` gives one FSDP rank's sharded
/// parameters + gradients + optimizer state without offload.
pub fn host_memory(
    spec: &ModelSpec,
    layout: &Layout,
    w: &Workload,
    fsdp_rank_states: impl FnOnce(&Workload, &Layout) -> Result<u64>,
) -> Result<Option<HostMemory>> {
    if layout.zero > 0 {
        // the optimizer partition is of the trainable parameters (all of them for
        // full fine-tuning, as DeepSpeed's estimator assumes; LoRA: the adapters)
        let total = params::count(spec).total;
        let trainable = if w.method.is_full() {
            total
        } else {
            estimate::lora_trainable(spec, w)
        };
        return Ok(deepspeed_cpu_mem(trainable, total, layout));
    }
    if layout.fsdp.is_some() && layout.offload_params {
        let on_device = Layout {
            offload_params: false,
            ..layout.clone()
        };
        let per_rank = fsdp_rank_states(w, &on_device)?;
        let n = gpus_per_node(layout);
        return Ok(Some(HostMemory {
            bytes_per_node: Bytes(per_rank.saturating_mul(n)),
            gpus_per_node: n,
            basis: "sharded parameters, gradients and optimizer state of each rank (torch FSDP CPUOffload)",
        }));
    }
    Ok(None)
}
