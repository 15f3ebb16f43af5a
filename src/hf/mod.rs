//! Model sources: HF `config.json` → `ModelSpec`, the embedded presets, the local HF
//! cache, the Hub over HTTP and safetensors headers. `hub`, `cache`, `remote` and
//! `safetensors` are the only files here that touch the disk; `remote` is the only one
//! in the crate that touches the network.

pub mod cache;
pub mod config;
pub mod hub;
pub mod presets;
pub mod remote;
pub mod safetensors;
