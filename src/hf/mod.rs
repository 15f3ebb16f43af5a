//! Model sources: HF `config.json` → `ModelSpec`, the embedded presets, the local HF
//! cache and safetensors headers. `hub` and `safetensors` are the only files here that
//! touch the disk.

pub mod config;
pub mod hub;
pub mod presets;
pub mod safetensors;
