//! `llm-mem probe run | calibrate | report`: glue between the CLI and `llm_mem::probe`,
//! `llm_mem::calibration` and the probe report formats.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use llm_mem::calibration::{self, CalibrationFile};
use llm_mem::probe::measurement;
use llm_mem::probe::meter::MemoryMeter;
use llm_mem::probe::{self, CandleExecutor, Plan};
use llm_mem::report::{probe_csv, probe_md, probe_svg};

#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Run a probe plan: one CSV row per point under OUT/results/.
    Run(RunArgs),
    /// Run a plan (or read measurement files) and fit OUT/calibration/<device>-<runtime>.json.
    Calibrate(CalibrateArgs),
    /// Turn measurement files (+ a calibration) into OUT/results/report-*.{md,csv,svg}.
    Report(ReportArgs),
    /// List the devices a probe can run on: cpu and, in a CUDA build, each GPU.
    Devices,
    /// Print a plan's points as JSON: resolved sizes, the scaled-down HF config.json
    /// and the estimator's prediction (probes/torch_probe.py builds the same models).
    Points(PointsArgs),
}

#[derive(Args)]
pub struct PointsArgs {
    /// Probe plan (probes/*.toml).
    #[arg(long)]
    plan: PathBuf,
    /// Device to resolve the plan for (default: the plan's).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Probe plan (probes/*.toml).
    #[arg(long)]
    plan: PathBuf,
    /// Output folder (results/ is written under it).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Append to / resume this measurement file instead of results/<plan>-<device>-<date>.csv.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Artificial memory limit for the step (e.g. 64MiB): points above it are recorded as oom.
    #[arg(long)]
    memory_limit: Option<String>,
    /// Run on this device instead of the plan's: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// Probe plan to run first.
    #[arg(long, conflicts_with = "from")]
    plan: Option<PathBuf>,
    /// Measurement files to fit instead of running a plan, or trace probe CSVs
    /// (probes/trace_probe.py), fitted per architecture against the torch ledger.
    #[arg(long, num_args = 1..)]
    from: Vec<PathBuf>,
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Run the plan on this device instead of the plan's: cpu, cuda or cuda:N.
    #[arg(long, requires = "plan")]
    device: Option<String>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Measurement files.
    #[arg(long, num_args = 1.., required = true)]
    from: Vec<PathBuf>,
    /// Calibration file for the "after" columns.
    #[arg(long)]
    calibration: Option<PathBuf>,
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// CPU probes run candle single-threaded unless RAYON_NUM_THREADS says otherwise: a
/// rayon worker that runs its first matmul inside a measured step allocates its
/// thread-local gemm buffers there, which makes the measured peak depend on scheduling.
fn single_threaded_cpu() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // called before any candle op, from the main thread
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

pub fn run(cmd: &ProbeCommand) -> Result<ExitCode> {
    single_threaded_cpu();
    match cmd {
        ProbeCommand::Run(a) => {
            let (csv, s) = run_plan(
                &a.plan,
                &a.out,
                a.resume.as_deref(),
                a.memory_limit.as_deref(),
                a.device.as_deref(),
                a.quiet,
            )?;
            println!(
                "{}: {} points run ({} failed), {} already done",
                csv.display(),
                s.ran,
                s.failed,
                s.skipped
            );
            Ok(ExitCode::SUCCESS)
        }
        ProbeCommand::Calibrate(a) => calibrate(a),
        ProbeCommand::Report(a) => report(a),
        ProbeCommand::Devices => devices(),
        ProbeCommand::Points(a) => points(a),
    }
}

/// A plan with `--device` applied (validated like the plan's own `device`).
fn load_plan(path: &Path, device: Option<&str>) -> Result<Plan> {
    let mut plan = Plan::load(path)?;
    if let Some(d) = device {
        probe::candle_model::DeviceSpec::parse(d)?;
        plan.device = d.trim().to_string();
    }
    Ok(plan)
}

fn devices() -> Result<ExitCode> {
    println!("cpu      {}", probe::cpu_name());
    match llm_mem::probe::cuda::devices() {
        Ok(ds) if ds.is_empty() => println!("cuda     no CUDA devices"),
        Ok(ds) => {
            for d in ds {
                println!(
                    "cuda:{:<3} {}, {:.1} GiB, compute {}, driver {}",
                    d.ordinal,
                    d.name,
                    d.total_bytes as f64 / (1u64 << 30) as f64,
                    d.compute_capability,
                    d.driver
                );
            }
        }
        Err(e @ llm_mem::Error::NoCuda) => println!("cuda     unavailable: {e}"),
        // a CUDA build that cannot reach a GPU (no driver, the link stub): an error
        Err(e) => bail!("{e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn points(a: &PointsArgs) -> Result<ExitCode> {
    let plan = load_plan(&a.plan, a.device.as_deref())?;
    let dir = a.plan.parent().unwrap_or(Path::new("."));
    let max_seq = *plan.shapes.seq.iter().max().expect("validated non-empty") as u64;
    let pts = plan.points(dir)?;
    let mut out = Vec::new();
    for arch in &plan.architectures {
        let spec = probe::scaled_spec(arch, dir, max_seq)?;
        let hf = probe::hf_config(arch, &spec, dir)?;
        let prefix = format!("{}/", arch.model);
        for p in pts.iter().filter(|p| p.id.starts_with(&prefix)) {
            let (method, rank, alpha) = match p.method {
                llm_mem::runtime::candle::program::ProbeMethod::Full => ("full", 0, 0.0),
                llm_mem::runtime::candle::program::ProbeMethod::Lora { rank, alpha } => {
                    ("lora", rank, alpha)
                }
            };
            let pred = probe::predict(&plan, p)?;
            out.push(serde_json::json!({
                "id": p.id,
                "model": arch.model,
                "family": p.spec.family.to_string(),
                "model_type": p.spec.family.model_type(),
                "layers": p.spec.layers(),
                "hidden": p.spec.hidden,
                "heads": p.spec.heads,
                "kv_heads": p.spec.kv_heads,
                "head_dim": p.spec.head_dim,
                "intermediate": p.spec.intermediate,
                "vocab": p.spec.vocab,
                "method": method,
                "lora_rank": rank,
                "lora_alpha": alpha,
                "batch": p.batch,
                "seq": p.seq,
                "hf_config": hf,
                "candle_predicted_peak_bytes": pred.peak(),
            }));
        }
    }
    let doc = serde_json::json!({
        "plan": plan.name,
        "device": plan.device,
        "dtype": plan.dtype()?.to_string(),
        "optimizer": plan.optimizer,
        "attn": plan.attn,
        "warmup_steps": plan.warmup_steps,
        "measured_steps": plan.measured_steps,
        "lora_rank": plan.lora_rank,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "csv_header": measurement::header(),
        "csv_schema_version": measurement::SCHEMA_VERSION,
        "points": out,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

fn run_plan(
    plan_path: &Path,
    out: &Path,
    resume: Option<&Path>,
    limit: Option<&str>,
    device: Option<&str>,
    quiet: bool,
) -> Result<(PathBuf, probe::SweepSummary)> {
    let plan = load_plan(plan_path, device)?;
    let device = plan.device()?;
    let dir = plan_path.parent().unwrap_or(Path::new("."));
    let points = plan.points(dir)?;
    let limit = limit
        .map(|l| llm_mem::Bytes::parse(l).map(|b| b.get()))
        .transpose()
        .map_err(|_| {
            anyhow::anyhow!(
                "--memory-limit {:?}: accepted: an amount such as 64MiB",
                limit.unwrap_or_default()
            )
        })?;
    let csv = match resume {
        Some(p) => p.to_path_buf(),
        None => out.join("results").join(format!(
            "{}-{}-{}.csv",
            plan.name,
            device.name(),
            probe::today()
        )),
    };
    let mut exec =
        CandleExecutor::new(device).with_context(|| format!("device {}", plan.device))?;
    let (spec, dev) = (exec.spec, exec.device.clone());
    let mut meter = move || -> Box<dyn MemoryMeter> { probe::meter_for(spec, &dev, limit) };
    let s = probe::run_sweep(&plan, &points, &mut exec, &mut meter, &csv, !quiet)
        .with_context(|| format!("running {}", plan_path.display()))?;
    if let Some(t) = &s.torn {
        eprintln!("warning: {t}");
    }
    Ok((csv, s))
}

fn calibrate(a: &CalibrateArgs) -> Result<ExitCode> {
    if a.plan.is_none() && !a.from.is_empty() && a.from.iter().all(|f| is_trace_file(f)) {
        return calibrate_trace(a);
    }
    let files: Vec<PathBuf> = match &a.plan {
        Some(p) => vec![run_plan(p, &a.out, None, None, a.device.as_deref(), a.quiet)?.0],
        None if a.from.is_empty() => bail!("give --plan FILE or --from FILE..."),
        None => a.from.clone(),
    };
    let mut rows = Vec::new();
    for f in &files {
        rows.extend(measurement::read(f)?);
    }
    let sources: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let cal = calibration::fit(&rows, sources)?;
    let path = a.out.join("calibration").join(cal.file_name());
    cal.write(&path)?;
    println!("{}: {} / {}", path.display(), cal.device, cal.runtime);
    let fallback = "fallback".to_string();
    for (f, e) in cal
        .families
        .iter()
        .chain(cal.fallback.iter().map(|e| (&fallback, e)))
    {
        println!(
            "  {f:<10} α = {:.4} [{:.4}, {:.4}]  β = {:.0} B [{:.0}, {:.0}]  n = {}  R² = {:.5}  LOO max {:.2} %",
            e.alpha, e.alpha_ci[0], e.alpha_ci[1], e.beta_bytes, e.beta_ci[0], e.beta_ci[1], e.n_points, e.r2, e.loo_max_rel_err * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `f` starts with a trace probe header.
fn is_trace_file(f: &std::path::Path) -> bool {
    use std::io::BufRead;
    std::fs::File::open(f)
        .ok()
        .and_then(|h| std::io::BufReader::new(h).lines().next()?.ok())
        .is_some_and(|l| calibration::trace::is_trace_header(&l))
}

/// `probe calibrate --from trace.csv`: the ledger's prediction for every trace cell,
/// fitted per architecture; one calibration file per engine.
fn calibrate_trace(a: &CalibrateArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for f in &a.from {
        rows.extend(calibration::trace::read(f)?);
    }
    let dirs: Vec<PathBuf> = a
        .from
        .iter()
        .filter_map(|f| f.parent().map(std::path::Path::to_path_buf))
        .collect();
    let specs = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let predict = |r: &calibration::trace::TraceRow| -> llm_mem::error::Result<calibration::trace::Predicted> {
        // the config as the probe was given it: from here, else beside the trace file
        let path = std::iter::once(PathBuf::from(&r.config))
            .chain(dirs.iter().map(|d| d.join(&r.config)))
            .find(|p| p.is_file())
            .ok_or_else(|| llm_mem::error::Error::Config {
                path: r.config.clone(),
                message: format!(
                    "the config.json of trace row {} (L{}) is not here or beside the trace file",
                    r.model, r.layers
                ),
            })?;
        let spec = {
            let mut cache = specs.borrow_mut();
            if !cache.contains_key(&path) {
                cache.insert(path.clone(), llm_mem::hf::hub::load_config_file(&path)?);
            }
            cache[&path].clone()
        };
        r.predict(&spec)
    };
    let sources: Vec<String> = a.from.iter().map(|f| f.display().to_string()).collect();
    let fitted = calibration::trace::fit(&rows, &predict, sources)?;
    for s in &fitted.skipped {
        eprintln!("llm-mem: note: not fitted: {s}");
    }
    for cal in &fitted.files {
        let path = a.out.join("calibration").join(cal.file_name());
        cal.write(&path)?;
        println!(
            "{}: {} / {} ({} trace rows)",
            path.display(),
            cal.device,
            cal.runtime,
            rows.len()
        );
        for (f, e) in &cal.families {
            println!(
                "  {f:<14} α = {:.4} [{:.4}, {:.4}]  β = {:.0} B [{:.0}, {:.0}]  n = {}  R² = {:.5}  LOO max {:.2} %",
                e.alpha, e.alpha_ci[0], e.alpha_ci[1], e.beta_bytes, e.beta_ci[0], e.beta_ci[1], e.n_points, e.r2, e.loo_max_rel_err * 100.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(a: &ReportArgs) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for f in &a.from {
        rows.extend(measurement::read(f)?);
    }
    let cal = a.calibration.as_deref().map(load_calibration).transpose()?;
    let cmp = calibration::compare(&rows, cal.as_ref());
    let stem = a.from[0]
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "probe".into());
    let sources: Vec<String> = a.from.iter().map(|f| f.display().to_string()).collect();
    let dir = a.out.join("results");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(format!("report-{stem}"));
    let write = |ext: &str, text: String| -> Result<PathBuf> {
        let p = base.with_extension(ext);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let md = write("md", probe_md::render(&stem, &sources, &cmp, cal.as_ref()))?;
    write("csv", probe_csv::render(&cmp))?;
    write(
        "svg",
        probe_svg::render(&format!("{stem}: estimated vs measured"), &cmp),
    )?;
    println!("{} (+ .csv, .svg)", md.display());
    Ok(ExitCode::SUCCESS)
}

/// A calibration file; a file that cannot be read says so in one message.
fn load_calibration(path: &Path) -> Result<CalibrationFile> {
    match CalibrationFile::load(path) {
        Err(llm_mem::Error::Io { path, err }) => {
            bail!("calibration file {}: {err}", path.display())
        }
        r => Ok(r?),
    }
}

/// `estimate --calibration FILE`: the correction for the spec's family and runtime.
pub fn correction(
    path: &Path,
    family: &str,
    runtime: &str,
) -> Result<llm_mem::estimate::Correction> {
    let cal = load_calibration(path)?;
    let (c, note) = cal.to_correction(family, runtime)?;
    eprintln!("{note}");
    Ok(c)
}
