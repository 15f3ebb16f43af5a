//! The `llm-mem` binary: clap structs → `RunConfig` → validated domain types → library.
//!
//! Exit codes: 0 = done (and fits, when a GPU was given), 1 = does not fit, 2 = error.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use llm_mem::distributed::estimate_layout;
use llm_mem::distributed::search::{plan, PlanQuery};
use llm_mem::estimate::{estimate_corrected, Correction};
use llm_mem::hf::{hub, presets};
use llm_mem::report::{self, Fit};
use llm_mem::units::gpu;
use llm_mem::workload::settings::{Amount, Format, RunConfig};

mod cli;

/// Exact live-byte counting for `probe` on the CPU (a thin wrapper over the system
/// allocator).
#[global_allocator]
static ALLOC: llm_mem::probe::meter::CountingAlloc = llm_mem::probe::meter::CountingAlloc;

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
    /// Search the layouts (tp, pp, dp, cp, ZeRO/FSDP, checkpointing, offload) that fit
    /// N GPUs, the largest micro-batch and the longest sequence.
    Plan(Box<PlanArgs>),
    /// Measure real candle training steps, fit corrections, report.
    #[command(subcommand)]
    Probe(cli::probe::ProbeCommand),
}

#[derive(Args)]
struct PlanArgs {
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

#[derive(Args, Default, Clone)]
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
    #[command(flatten)]
    layout: LayoutArgs,
    /// DeepSpeed JSON config (zero stage, offload, buckets, micro-batch, bf16/fp16).
    #[arg(long)]
    deepspeed: Option<String>,
    /// HF TrainingArguments JSON/YAML or LLaMA-Factory YAML.
    #[arg(long)]
    train_args: Option<String>,
    /// JSON output (schema_version 1).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV output (one header, one row per rank class).
    #[arg(long)]
    csv: bool,
    /// Calibration file from `llm-mem probe calibrate` (applies α, β for the family).
    #[arg(long)]
    calibration: Option<std::path::PathBuf>,
}

#[derive(Args, Default, Clone)]
struct LayoutArgs {
    /// Data-parallel degree.
    #[arg(long)]
    dp: Option<u64>,
    /// Tensor-parallel degree (Megatron column/row parallel linears, vocab-parallel head).
    #[arg(long)]
    tp: Option<u64>,
    /// Pipeline-parallel stages (1F1B).
    #[arg(long)]
    pp: Option<u64>,
    /// Context-parallel degree (sequence split across ranks, ring attention).
    #[arg(long)]
    cp: Option<u64>,
    /// Expert-parallel degree (MoE only; dense models need 1).
    #[arg(long)]
    ep: Option<u64>,
    /// Virtual pipeline stages per rank (interleaved 1F1B).
    #[arg(long)]
    vpp: Option<u64>,
    /// Megatron sequence parallelism (with --tp > 1).
    #[arg(long)]
    sequence_parallel: bool,
    /// DeepSpeed ZeRO stage: 0 | 1 | 2 | 3.
    #[arg(long)]
    zero: Option<u8>,
    /// PyTorch FSDP: full | grad-op | hybrid.
    #[arg(long)]
    fsdp: Option<String>,
    /// FSDP version: 1 (flat parameters) | 2 (per-parameter sharding, default).
    #[arg(long)]
    fsdp_version: Option<u8>,
    /// FSDP hybrid-shard group size (default min(dp, 8)).
    #[arg(long)]
    fsdp_shard_group: Option<u64>,
    /// Optimizer state (and ZeRO's fp32 copies) in host memory.
    #[arg(long)]
    offload_optimizer: bool,
    /// Parameters in host memory (ZeRO-3 or FSDP).
    #[arg(long)]
    offload_params: bool,
    /// Megatron's distributed optimizer (optimizer state sharded over dp).
    #[arg(long)]
    distributed_optimizer: bool,
    /// Micro-batches per pipeline flush (default: --grad-accum).
    #[arg(long)]
    micro_batches: Option<u64>,
    /// Layers per pipeline stage, e.g. 10,12,10 (default: even split).
    #[arg(long)]
    pp_layers: Option<String>,
    /// NCCL buffers per process group (default 128MiB).
    #[arg(long)]
    nccl_buffers: Option<String>,
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
            dp: self.layout.dp,
            tp: self.layout.tp,
            pp: self.layout.pp,
            cp: self.layout.cp,
            ep: self.layout.ep,
            vpp: self.layout.vpp,
            sequence_parallel: self.layout.sequence_parallel.then_some(true),
            zero: self.layout.zero,
            fsdp: self.layout.fsdp.clone(),
            fsdp_version: self.layout.fsdp_version,
            fsdp_shard_group: self.layout.fsdp_shard_group,
            offload_optimizer: self.layout.offload_optimizer.then_some(true),
            offload_params: self.layout.offload_params.then_some(true),
            distributed_optimizer: self.layout.distributed_optimizer.then_some(true),
            micro_batches: self.layout.micro_batches,
            pp_layers: self.layout.pp_layers.clone(),
            nccl_buffers: amount(&self.layout.nccl_buffers),
            ..RunConfig::default()
        }
    }

    /// Config file < DeepSpeed config < training arguments < flags; with the imports'
    /// warnings.
    fn resolve(&self) -> Result<(RunConfig, Vec<String>)> {
        let mut cfg = RunConfig::default();
        let mut warnings = Vec::new();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {path}"))?;
            cfg = RunConfig::parse(&text, Format::from_path(path)?, path)?;
        }
        if let Some(path) = &self.deepspeed {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --deepspeed {path}"))?;
            let (c, w) = llm_mem::workload::import::from_deepspeed(&text, path)?;
            cfg = cfg.merged(c);
            warnings.extend(w);
        }
        if let Some(path) = &self.train_args {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --train-args {path}"))?;
            let (c, w) =
                llm_mem::workload::import::from_train_args(&text, Format::from_path(path)?, path)?;
            cfg = cfg.merged(c);
            warnings.extend(w);
        }
        Ok((cfg.merged(self.to_run_config()), warnings))
    }
}

fn load_model(cfg: &RunConfig) -> Result<llm_mem::ModelSpec> {
    let name = cfg.model.clone().context(
        "no model given: pass --model NAME (a preset from `llm-mem models`, a config.json path or a cached HF id)",
    )?;
    let mut spec = hub::resolve(&name)?;
    if let Some(l) = cfg.layers {
        spec = spec.with_layers(l)?;
    }
    Ok(spec)
}

fn run_estimate(args: &EstimateArgs) -> Result<ExitCode> {
    let (cfg, import_warnings) = args.resolve()?;
    for w in &import_warnings {
        eprintln!("llm-mem: warning: {w}");
    }
    let spec = load_model(&cfg)?;
    let (workload, overheads) = cfg.build(&spec)?;
    let corr = match &args.calibration {
        Some(p) => cli::probe::correction(p, spec.family.model_type(), workload.runtime.as_str())?,
        None => Correction::IDENTITY,
    };
    let layout = cfg.layout()?;
    let capacity = cfg.capacity()?;
    if layout.is_distributed() {
        let d = estimate_layout(&spec, &workload, &overheads, &layout, &corr)?;
        let fit = capacity.map(|(gpu, cap)| Fit::new(gpu, cap, d.worst().estimate.peak.device));
        let out = if args.json {
            report::json::render_distributed(&d, &workload, &overheads, &layout, fit.as_ref())
        } else if args.csv {
            report::csv::render_distributed(&d, &workload, fit.as_ref())
        } else {
            report::human::render_distributed(&d, &workload, &layout, fit.as_ref())
        };
        print_out(&out)?;
        return Ok(exit_for(fit.as_ref()));
    }
    let est = estimate_corrected(&spec, &workload, &overheads, &corr)?;
    let fit = capacity.map(|(gpu, cap)| Fit::new(gpu, cap, est.peak.device));
    let out = if args.json {
        report::json::render(&est, &workload, &overheads, fit.as_ref())
    } else if args.csv {
        report::csv::render(&est, &workload, fit.as_ref())
    } else {
        report::human::render(&est, &workload, fit.as_ref())
    };
    print_out(&out)?;
    Ok(exit_for(fit.as_ref()))
}

fn exit_for(fit: Option<&Fit>) -> ExitCode {
    match fit {
        Some(f) if !f.fits => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

fn run_plan(args: &PlanArgs) -> Result<ExitCode> {
    let (cfg, import_warnings) = args.workload.resolve()?;
    for w in &import_warnings {
        eprintln!("llm-mem: warning: {w}");
    }
    let spec = load_model(&cfg)?;
    let (workload, overheads) = cfg.build(&spec)?;
    let (gpu, capacity) = cfg
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

fn run_models(json: bool) -> Result<ExitCode> {
    let infos: Vec<_> = presets::describe_all()
        .into_iter()
        .collect::<Result<_, _>>()?;
    let out = if json {
        report::json::render_models(&infos)
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
        Command::Plan(a) => run_plan(a),
        Command::Probe(p) => cli::probe::run(p),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llm-mem: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
