//! `llm-mem plan`: the layout search over N GPUs for one workload.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use llm_mem::distributed::search::{plan, PlanQuery};
use llm_mem::report;

use super::estimate::{load_model, EstimateArgs};
use super::print_out;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    workload: EstimateArgs,
    /// GPUs available (the search may use fewer).
    #[arg(long)]
    gpus: u64,
    /// Largest micro-batch to try.
    #[arg(long, default_value_t = 64)]
    max_batch: u64,
    /// How many fitting layouts to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Longest sequence to try for the "longest sequence that fits" answer (0 = skip).
    #[arg(long, default_value_t = 131072)]
    max_seq: u64,
}

pub fn run(args: &PlanArgs) -> Result<ExitCode> {
    if args.workload.csv {
        anyhow::bail!(
            "invalid --csv for plan: plan has no CSV output; accepted: --json, or `llm-mem estimate --csv` for one layout"
        );
    }
    let (settings, _) = args.workload.settings()?;
    let spec = load_model(&settings)?;
    let (workload, overheads) = settings.build(&spec)?;
    let (gpu, capacity) = settings
        .capacity()?
        .context("plan needs the memory per GPU: pass --gpu NAME or --gpu-memory 80GiB")?;
    let q = PlanQuery {
        gpus: args.gpus,
        capacity,
        max_batch: args.max_batch,
        top: args.top,
        max_seq: args.max_seq,
    };
    let t = std::time::Instant::now();
    let r = plan(&spec, &workload, &overheads, &q)?;
    let elapsed = t.elapsed();
    let out = if args.workload.json {
        report::json::render_plan(&r, &spec.name, &gpu, capacity)
    } else {
        report::human::render_plan(&r, &spec.name, &gpu, capacity, elapsed)
    };
    print_out(&out)?;
    Ok(if r.fits.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
