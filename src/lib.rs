//! llm-mem: how much GPU memory each device needs to train, fine-tune or serve an LLM.
//!
//! The estimator core (`model`, `params`, `workload`, `activations`, `timeline`,
//! `estimate`, and the candle runtime profile `program` + `tape`) is pure: no I/O, no
//! candle, no CUDA. The probe side (`probe`, `meter`, `measurement`, `calibration`)
//! runs real candle steps, measures them and fits corrections; `cuda` (or its stand-in
//! without the `cuda` feature) holds everything that touches a GPU. Model sources that touch the disk
//! (`hub`, `safetensors`) and output formats (`report`) sit around it. See
//! ARCHITECTURE.md for the code map.

pub mod activations;
pub mod bytes;
pub mod calibration;
pub mod config;
// The only place the `cuda` feature is named in Rust: the real module or its stand-in,
// with the same public items (see ARCHITECTURE.md, "CUDA").
#[cfg_attr(feature = "cuda", path = "cuda.rs")]
#[cfg_attr(not(feature = "cuda"), path = "cuda_stub.rs")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod estimate;
pub mod gpu;
pub mod hub;
pub mod import;
pub mod measurement;
pub mod meter;
pub mod model;
pub mod optimizer;
pub mod overhead;
pub mod parallel;
pub mod params;
pub mod plan;
pub mod presets;
pub mod probe;
pub mod program;
pub mod report;
pub mod runconfig;
pub mod safetensors;
pub mod tape;
pub mod timeline;
pub mod weights;
pub mod workload;

pub use bytes::Bytes;
pub use dtype::DType;
pub use error::{Error, Result};
pub use model::{Family, ModelSpec};
