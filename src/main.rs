//! The `llm-mem` binary: clap structs → `RunConfig` → validated domain types → library.
//!
//! Exit codes: 0 = done (and fits, when a GPU was given), 1 = does not fit, 2 = error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use llm_mem::estimate::estimate_corrected;
use llm_mem::report::{self, Fit};
use llm_mem::runconfig::{Amount, Format, RunConfig};
use llm_mem::{gpu, hub, presets};

mod probe_cmd;

/// Exact live-byte counting for `probe` on the CPU (a thin wrapper over the system
/// allocator).
#[global_allocator]
static ALLOC: llm_mem::meter::CountingAlloc = llm_mem::meter::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "llm-mem",
    version,
    about = "How much GPU memory each device needs to train, fine-tune or serve an LLM",
    long_about = "How much GPU memory each device needs to train, fine-tune or serve an LLM.\n\n\
        The estimate simulates one step as a timeline of allocations and frees, with a \
        per-tensor activation ledger that reproduces PyTorch + transformers.\n\n\
        Exit codes: 0 done (fits, if --gpu/--gpu-memory given), 1 does not fit, 2 error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Estimate the per-GPU memory of a training step or of inference.
    Estimate(Box<EstimateArgs>),
    /// List the built-in model presets.
    Models {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the GPUs known to --gpu.
    Gpus,
    /// Measure real candle training steps, fit corrections, report.
    #[command(subcommand)]
    Probe(probe_cmd::ProbeCommand),
}

#[derive(Args, Default)]
struct EstimateArgs {
    /// Preset name, path to a config.json (or its folder), or a HF id in the local cache.
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// Override the number of decoder layers.
    #[arg(long)]
    layers: Option<u64>,
    /// train | infer
    #[arg(long)]
    task: Option<String>,
    /// full | lora | qlora
    #[arg(long)]
    method: Option<String>,
    /// LoRA rank (default 16 with --method lora/qlora).
    #[arg(long)]
    lora_rank: Option<u64>,
    /// LoRA alpha (default 2 × rank; does not change memory).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// attn | all-linear | comma-separated module names (q_proj,v_proj,...).
    #[arg(long)]
    lora_targets: Option<String>,
    /// QLoRA without double quantization of the NF4 scales.
    #[arg(long)]
    no_double_quant: bool,
    /// fp32 | bf16 | fp16 | amp-bf16 | amp-fp16 | fp8 (inference weights).
    #[arg(long)]
    dtype: Option<String>,
    /// Half-precision parameters with an fp32 master copy in the optimizer.
    #[arg(long)]
    master_weights: bool,
    /// adamw (fused) | adamw-foreach | adamw-8bit | paged-adamw | paged-adamw-8bit | sgd | sgd-momentum | adafactor | lion
    #[arg(long)]
    optimizer: Option<String>,
    /// Micro-batch size per GPU.
    #[arg(long)]
    batch: Option<u64>,
    /// Sequence length (tokens per sample).
    #[arg(long)]
    seq_len: Option<u64>,
    /// Gradient accumulation steps.
    #[arg(long)]
    grad_accum: Option<u64>,
    /// eager | sdpa | flash
    #[arg(long)]
    attn: Option<String>,
    /// none | full | selective
    #[arg(long)]
    grad_ckpt: Option<String>,
    /// standard | chunked | fused-linear-ce
    #[arg(long)]
    loss: Option<String>,
    /// torch | candle
    #[arg(long)]
    runtime: Option<String>,
    /// cuda | cpu: device semantics of the tensors (LayerNorm stats, dropout masks).
    #[arg(long)]
    device: Option<String>,
    /// Inference: prompt tokens per sequence.
    #[arg(long)]
    prompt_len: Option<u64>,
    /// Inference: generated tokens per sequence.
    #[arg(long)]
    gen_len: Option<u64>,
    /// Inference: sequences served at once.
    #[arg(long)]
    concurrency: Option<u64>,
    /// Inference: KV-cache dtype (fp32 | bf16 | fp16 | fp8).
    #[arg(long)]
    kv_dtype: Option<String>,
    /// Inference: prefill in chunks of this many tokens.
    #[arg(long)]
    prefill_chunk: Option<u64>,
    /// Settings file (TOML, YAML or JSON) with the same names as these flags.
    #[arg(long)]
    config: Option<String>,
    /// GPU memory to check against, e.g. 80GiB (exit 1 if the peak does not fit).
    #[arg(long)]
    gpu_memory: Option<String>,
    /// A GPU from `llm-mem gpus`, e.g. h100-80gb.
    #[arg(long)]
    gpu: Option<String>,
    /// CUDA context size (default 512MiB).
    #[arg(long)]
    cuda_context: Option<String>,
    /// cuBLAS workspace (default 32MiB).
    #[arg(long)]
    cublas_workspace: Option<String>,
    /// Allocator fragmentation as a fraction of dynamic memory (default 0.05).
    #[arg(long)]
    allocator_fragmentation: Option<f64>,
    /// JSON output (schema_version 1).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV output (one header, one row).
    #[arg(long)]
    csv: bool,
    /// Calibration file from `llm-mem probe calibrate` (applies α, β for the family).
    #[arg(long)]
    calibration: Option<std::path::PathBuf>,
}

impl EstimateArgs {
    fn to_run_config(&self) -> RunConfig {
        let amount = |s: &Option<String>| s.clone().map(Amount::Text);
        RunConfig {
            model: self.model.clone(),
            layers: self.layers,
            task: self.task.clone(),
            method: self.method.clone(),
            lora_rank: self.lora_rank,
            lora_alpha: self.lora_alpha,
            lora_targets: self.lora_targets.clone(),
            double_quant: self.no_double_quant.then_some(false),
            dtype: self.dtype.clone(),
            master_weights: self.master_weights.then_some(true),
            optimizer: self.optimizer.clone(),
            batch: self.batch,
            seq_len: self.seq_len,
            grad_accum: self.grad_accum,
            attn: self.attn.clone(),
            grad_ckpt: self.grad_ckpt.clone(),
            loss: self.loss.clone(),
            runtime: self.runtime.clone(),
            device: self.device.clone(),
            prompt_len: self.prompt_len,
            gen_len: self.gen_len,
            concurrency: self.concurrency,
            kv_dtype: self.kv_dtype.clone(),
            prefill_chunk: self.prefill_chunk,
            gpu: self.gpu.clone(),
            gpu_memory: amount(&self.gpu_memory),
            cuda_context: amount(&self.cuda_context),
            cublas_workspace: amount(&self.cublas_workspace),
            allocator_fragmentation: self.allocator_fragmentation,
        }
    }
}

fn run_estimate(args: &EstimateArgs) -> Result<ExitCode> {
    let mut cfg = RunConfig::default();
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading --config {path}"))?;
        cfg = RunConfig::parse(&text, Format::from_path(path)?, path)?;
    }
    let cfg = cfg.merged(args.to_run_config());
    let name = cfg
        .model
        .clone()
        .context("no model given: pass --model NAME (a preset from `llm-mem models`, a config.json path or a cached HF id)")?;
    let mut spec = hub::resolve(&name)?;
    if let Some(l) = cfg.layers {
        spec = spec.with_layers(l)?;
    }
    let (workload, overheads) = cfg.build(&spec)?;
    let corr = match &args.calibration {
        Some(p) => probe_cmd::correction(p, spec.family.model_type(), workload.runtime.as_str())?,
        None => llm_mem::estimate::Correction::IDENTITY,
    };
    let est = estimate_corrected(&spec, &workload, &overheads, &corr)?;
    let fit = cfg
        .capacity()?
        .map(|(gpu, cap)| Fit::new(gpu, cap, est.peak.device));
    let out = if args.json {
        report::json::render(&est, &workload, &overheads, fit.as_ref())
    } else if args.csv {
        report::csv::render(&est, &workload, fit.as_ref())
    } else {
        report::human::render(&est, &workload, fit.as_ref())
    };
    print_out(&out)?;
    Ok(match fit {
        Some(f) if !f.fits => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

fn run_models(json: bool) -> Result<ExitCode> {
    let infos: Vec<_> = presets::describe_all()
        .into_iter()
        .collect::<Result<_, _>>()?;
    let out = if json {
        let v: Vec<_> = infos
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name, "family": i.family, "params_total": i.params_total,
                    "hf_id": i.hf_id, "quantization": i.quantization,
                })
            })
            .collect();
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        let mut s = format!(
            "{:<44} {:<12} {:>10}  {}\n",
            "preset", "family", "params", "hf id"
        );
        for i in &infos {
            s += &format!(
                "{:<44} {:<12} {:>9.2}B  {}{}\n",
                i.name,
                i.family,
                i.params_total as f64 / 1e9,
                i.hf_id,
                i.quantization
                    .as_deref()
                    .map(|q| format!(" ({q})"))
                    .unwrap_or_default()
            );
        }
        s
    };
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn run_gpus() -> Result<ExitCode> {
    let mut s = format!("{:<12} {:>10}  {}\n", "gpu", "GiB", "description");
    for g in gpu::GPUS {
        s += &format!(
            "{:<12} {:>10.2}  {}\n",
            g.name,
            g.memory.gib(),
            g.description
        );
    }
    print_out(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn print_out(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let r = match &cli.command {
        Command::Estimate(a) => run_estimate(a),
        Command::Models { json } => run_models(*json),
        Command::Gpus => run_gpus(),
        Command::Probe(p) => probe_cmd::run(p),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llm-mem: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
