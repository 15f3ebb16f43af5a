//! Stand-in for `cuda.rs` in builds without the `cuda` feature: the same public items
//! and signatures; every entry that would touch a GPU returns [`Error::NoCuda`]
//! ("built without CUDA support; see README"). See `cuda.rs` for the real thing.

use std::time::Duration;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::probe::meter::{MemoryMeter, Reading, SideReadings};

/// Whether this build has CUDA support.
pub const CUDA_ENABLED: bool = false;

/// `llm-mem --version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cuda: no)");

/// How often the NVML thread samples (unused here).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// One CUDA device, as `probe devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    /// `major.minor`.
    pub compute_capability: String,
    /// NVML's driver version, else the CUDA driver API version.
    pub driver: String,
}

/// Always [`Error::NoCuda`].
pub fn open(_ordinal: usize) -> Result<Device> {
    Err(Error::NoCuda)
}

/// Always [`Error::NoCuda`].
pub fn devices() -> Result<Vec<CudaInfo>> {
    Err(Error::NoCuda)
}

/// Always [`Error::NoCuda`].
pub fn describe(_device: &Device) -> Result<CudaInfo> {
    Err(Error::NoCuda)
}

/// The CUDA meter's stand-in: every reading is [`Error::NoCuda`].
pub struct CudaMeter {
    /// Artificial limit (bytes above the baseline), as for the CPU meter.
    pub limit: Option<u64>,
}

impl CudaMeter {
    /// A meter that cannot measure (it says so from [`MemoryMeter::baseline`]).
    pub fn new(_device: &Device, limit: Option<u64>) -> CudaMeter {
        CudaMeter { limit }
    }
}

impl MemoryMeter for CudaMeter {
    fn kind(&self) -> &'static str {
        "cuda-pool+nvml"
    }
    fn limit(&self) -> Option<u64> {
        self.limit
    }
    fn baseline(&mut self) -> Result<u64> {
        Err(Error::NoCuda)
    }
    fn start(&mut self) -> Result<()> {
        Err(Error::NoCuda)
    }
    fn stop(&mut self) -> Result<Reading> {
        Err(Error::NoCuda)
    }
    fn side(&self) -> SideReadings {
        SideReadings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_says_built_without_cuda() {
        const { assert!(!CUDA_ENABLED) };
        assert!(VERSION.ends_with("(cuda: no)"));
        for e in [
            open(0).unwrap_err(),
            devices().unwrap_err(),
            describe(&Device::Cpu).unwrap_err(),
            CudaMeter::new(&Device::Cpu, None).baseline().unwrap_err(),
        ] {
            assert!(
                e.to_string()
                    .contains("built without CUDA support; see README"),
                "{e}"
            );
        }
    }
}
