//! The integration tests, one binary (`it`) in ripgrep's shape: each file is a module,
//! and what they share (the binary, temp folders, test data, presets, workloads, CSV
//! tables, counted proptest runs) lives once in `util`.
//!
//! Two binaries stay apart because they install the counting allocator as the global
//! allocator and measure live bytes, which other tests running in the same process
//! would disturb: `tests/counting_alloc.rs` and `tests/probe.rs`.

mod util;

mod cli;
mod csv;
mod cuda;
mod fake_probe;
mod fuzz;
mod hub;
mod litgpt;
mod mechanisms;
mod mock_hub;
mod oracle;
mod parallel;
mod params;
mod plan;
mod probe_pipeline;
mod properties;
mod published;
mod recipes;
mod settings;
mod sources;
mod stack;
mod tidy;
mod trace;
mod validate;
