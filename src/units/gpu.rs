//! A small table of common GPUs and their memory (`--gpu NAME`).
//!
//! Capacities are the total memory the driver reports (`nvidia-smi --query-gpu=
//! memory.total`, MiB), which is what a process can at most use; the CUDA context
//! comes out of it and is counted by the estimator as an overhead.

use crate::error::{Error, Result};
use crate::units::bytes::{Bytes, MIB};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub name: &'static str,
    pub memory: Bytes,
    pub description: &'static str,
}

const fn mib(n: u64) -> Bytes {
    Bytes(n * MIB)
}

pub const GPUS: &[Gpu] = &[
    Gpu {
        name: "a10g",
        memory: mib(23028),
        description: "NVIDIA A10G 24 GB",
    },
    Gpu {
        name: "l4",
        memory: mib(23034),
        description: "NVIDIA L4 24 GB",
    },
    Gpu {
        name: "rtx3090",
        memory: mib(24576),
        description: "GeForce RTX 3090 24 GB",
    },
    Gpu {
        name: "rtx4090",
        memory: mib(24564),
        description: "GeForce RTX 4090 24 GB",
    },
    Gpu {
        name: "v100-16gb",
        memory: mib(16384),
        description: "Tesla V100 16 GB",
    },
    Gpu {
        name: "v100-32gb",
        memory: mib(32768),
        description: "Tesla V100 32 GB",
    },
    Gpu {
        name: "a100-40gb",
        memory: mib(40960),
        description: "A100 40 GB",
    },
    Gpu {
        name: "a100-80gb",
        memory: mib(81920),
        description: "A100 80 GB",
    },
    Gpu {
        name: "l40s",
        memory: mib(46068),
        description: "L40S 48 GB",
    },
    Gpu {
        name: "rtxa6000",
        memory: mib(49140),
        description: "RTX A6000 48 GB",
    },
    Gpu {
        name: "h100-80gb",
        memory: mib(81559),
        description: "H100 SXM/PCIe 80 GB",
    },
    Gpu {
        name: "h100-94gb",
        memory: mib(95830),
        description: "H100 NVL 94 GB",
    },
    Gpu {
        name: "h20-96gb",
        memory: mib(97871),
        description: "H20 96 GB",
    },
    Gpu {
        name: "h200",
        memory: mib(143771),
        description: "H200 141 GB",
    },
    Gpu {
        name: "b200",
        memory: mib(183359),
        description: "B200 180 GB",
    },
    Gpu {
        name: "mi300x",
        memory: mib(196592),
        description: "AMD Instinct MI300X 192 GB",
    },
];

pub fn find(name: &str) -> Result<Gpu> {
    let n = name.trim().to_ascii_lowercase();
    GPUS.iter().copied().find(|g| g.name == n).ok_or_else(|| {
        Error::invalid(
            "gpu",
            name,
            GPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", "),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_case_insensitively_and_rejects_unknown() {
        assert_eq!(super::find("H100-80GB").unwrap().name, "h100-80gb");
        let e = super::find("tpu-v5").unwrap_err().to_string();
        assert!(e.contains("tpu-v5") && e.contains("h100-80gb"), "{e}");
    }
}
