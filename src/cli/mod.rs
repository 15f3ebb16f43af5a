//! The command-line glue of the binary (not part of the library): clap structs →
//! `Settings` → validated domain types → the library → a report, and an exit code.
//!
//! Exit codes: 0 = done (and fits, when a GPU was given), 1 = does not fit, 2 = error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod args;
pub mod estimate;
pub mod fetch;
#[cfg(test)]
mod fuzz;
pub mod list;
pub mod plan;
pub mod probe;
pub mod validate;

#[derive(Parser)]
#[command(
    name = "llm-mem",
    version = llm_mem::probe::cuda::VERSION,
    about = "How much GPU memory each device needs to train, fine-tune or serve an LLM",
    long_about = "How much GPU memory each device needs to train, fine-tune or serve an LLM.\n\n\
        The estimate simulates one step as a timeline of allocations and frees, with a \
        per-tensor activation ledger that reproduces PyTorch + transformers.\n\n\
        Exit codes: 0 done (fits, if --gpu/--gpu-memory given), 1 does not fit, 2 error."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Estimate the per-GPU memory of a training step or of inference.
    Estimate(Box<estimate::EstimateArgs>),
    /// Fetch a model's config files and safetensors headers (never the weights) from the
    /// Hugging Face Hub into the local HF cache.
    Fetch(fetch::FetchArgs),
    /// List the built-in model presets.
    Models {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the GPUs known to --gpu.
    Gpus {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Search the layouts (tp, pp, dp, cp, ZeRO/FSDP, checkpointing, offload) that fit
    /// N GPUs, the largest micro-batch and the longest sequence.
    Plan(Box<plan::PlanArgs>),
    /// Measure real candle training steps, fit corrections, report.
    #[command(subcommand)]
    Probe(probe::ProbeCommand),
    /// Run the estimator on every row of a measurement table and report how far off it
    /// is, per row, source group, framework and metric.
    Validate(Box<validate::ValidateArgs>),
}

impl Cli {
    pub fn run(&self) -> Result<ExitCode> {
        match &self.command {
            Command::Estimate(a) => estimate::run(a),
            Command::Fetch(a) => fetch::run(a),
            Command::Models { json } => list::models(*json),
            Command::Gpus { json } => list::gpus(*json),
            Command::Plan(a) => plan::run(a),
            Command::Probe(p) => probe::run(p),
            Command::Validate(a) => validate::run(a),
        }
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
pub fn print_out(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
