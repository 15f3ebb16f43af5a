//! llm-mem: how much GPU memory each device needs to train, fine-tune or serve an LLM.
//!
//! The modules are listed in layer order; each imports only the ones above it (checked
//! by `tests/it/tidy.rs`, rules in ARCHITECTURE.md):
//!
//! - `units`: bytes, dtypes, the GPU table.
//! - `arch`: what the model is (`ModelSpec`) and its exact parameter counts. Pure.
//! - `hf`: model sources — `config.json` parsing, presets, the HF cache, safetensors
//!   headers (the only part of the core side that reads files).
//! - `workload`: what is run (`Workload`), the settings that build it (flags, `--config`,
//!   DeepSpeed / TrainingArguments imports), the distributed `Layout`, the overheads.
//! - `runtime`: what each op keeps, per runtime profile (`torch` ledger, `candle` tape).
//! - `estimate`: one rank over the step (weights, optimizer, timeline → `Estimate`). Pure.
//! - `distributed`: per-rank views of a layout and the layout search. Pure.
//! - `probe`: real candle steps, meters, the measurement CSV (the only tree that imports
//!   candle; `probe::cuda` or its stand-in is the only place CUDA is named).
//! - `calibration`: fits and versioned calibration files.
//! - `report`: output formats, no computation.

pub mod arch;
pub mod calibration;
pub mod distributed;
pub mod error;
pub mod estimate;
pub mod hf;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod units;
pub mod validate;
pub mod workload;

pub use arch::{Family, ModelSpec};
pub use error::{Error, Result};
pub use units::bytes::Bytes;
pub use units::dtype::DType;
