//! Probes: real candle training steps, measured, next to the estimator's prediction.
//! The only tree of the crate that imports candle.
//!
//! - `plan`: probe plans (`probes/*.toml`) and their points; `scale`: the scaled-down
//!   model of each architecture and its HF config.
//! - `sweep`: every point through an [`Executor`] and a meter, one CSV row per point
//!   (`measurement`, a leaf: the versioned row type and its file), flushed per row.
//! - `candle_model`: the candle probe models and the measured step; `meter`: the
//!   `MemoryMeter` trait, the counting allocator, the fake meter; `cuda`: the CUDA
//!   device and meter (or its stand-in without the `cuda` feature).
//! - `provenance`: tool version, git commit, device, date of a measurement.

pub mod candle_model;
// The only place the `cuda` feature is named in Rust: the real module or its stand-in,
// with the same public items (see ARCHITECTURE.md, "CUDA").
#[cfg_attr(feature = "cuda", path = "cuda.rs")]
#[cfg_attr(not(feature = "cuda"), path = "cuda_stub.rs")]
pub mod cuda;
pub mod measurement;
pub mod meter;
pub mod plan;
pub mod provenance;
pub mod scale;
pub mod sweep;

pub use plan::{Arch, Plan, Point, Shapes, PLAN_SCHEMA_VERSION};
pub use provenance::{cpu_name, date_of, git_commit, today, Provenance};
pub use scale::{hf_config, scaled_spec};
pub use sweep::{meter_for, predict, run_sweep, CandleExecutor, Executor, Outcome, SweepSummary};
