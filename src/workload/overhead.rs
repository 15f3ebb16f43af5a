//! Overheads outside the model's tensors: explicit, named and overridable.
//!
//! - `cuda_context`: the CUDA context, loaded modules and the runtime's own buffers.
//!   Outside the framework allocator: `nvidia-smi` sees it, `torch.cuda.max_memory_*`
//!   does not. Default 512 MiB (torch 2.x on Hopper with lazy module loading measures
//!   about 0.5 GiB).
//! - `cublas_workspace`: one cuBLAS/cuBLASLt workspace. Allocated through the caching
//!   allocator, so it is part of `allocated`. Default 32 MiB (PyTorch's default
//!   `CUBLAS_WORKSPACE_CONFIG` on sm90). A PyTorch training step holds two (its
//!   forward's thread and the autograd engine's device thread each have a handle and
//!   a workspace: `estimate::cublas_workspaces`).
//! - `allocator_fragmentation`: the caching allocator's reserved-but-unallocated bytes
//!   at the peak, as a fraction of the dynamic (non-static) memory at that moment.
//!   Default 0.05; the probe's calibration fits the real value per device.
//! - `nccl`: communication buffers (0 on one GPU; the distributed layouts set it).
//!
//! On the CPU (the candle probe runtime) all of these are zero.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::units::bytes::{Bytes, MIB};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Overheads {
    pub cuda_context: Bytes,
    pub cublas_workspace: Bytes,
    pub allocator_fragmentation: f64,
    pub nccl: Bytes,
}

impl Default for Overheads {
    fn default() -> Self {
        Overheads {
            cuda_context: Bytes(512 * MIB),
            cublas_workspace: Bytes(32 * MIB),
            allocator_fragmentation: 0.05,
            nccl: Bytes(0),
        }
    }
}

impl Overheads {
    /// No device overheads (CPU runs, or to compare with pure tensor counts).
    pub fn none() -> Self {
        Overheads {
            cuda_context: Bytes(0),
            cublas_workspace: Bytes(0),
            allocator_fragmentation: 0.0,
            nccl: Bytes(0),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let f = self.allocator_fragmentation;
        if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
            return Err(Error::invalid(
                "allocator_fragmentation",
                f,
                "a fraction between 0 and 1 (e.g. 0.05)",
            ));
        }
        Ok(())
    }
}
