//! `llm-mem estimate`: settings from `--profile`, `--config`, `--deepspeed`,
//! `--train-args` and the flags (in that order, later layers win) → one validated run → the estimate → a report.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use llm_mem::distributed::estimate_layout;
use llm_mem::estimate::{estimate_corrected, Correction};
use llm_mem::hf::hub;
use llm_mem::report::{self, Fit};
use llm_mem::workload::import;
use llm_mem::workload::profile::Profile;
use llm_mem::workload::settings::{Format, Settings};

use super::args::SettingFlags;
use super::print_out;

#[derive(Args, Clone)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub flags: SettingFlags,
    /// Settings file (TOML, YAML or JSON) with the same names as these flags.
    #[arg(long)]
    pub config: Option<String>,
    /// A framework profile of your own (TOML: schema_version, name, description,
    /// [settings]): defaults under every other layer, like a shipped --framework one.
    #[arg(long)]
    pub profile: Option<String>,
    /// DeepSpeed JSON config (zero stage, offload, buckets, micro-batch, bf16/fp16).
    #[arg(long)]
    pub deepspeed: Option<String>,
    /// HF TrainingArguments JSON/YAML or LLaMA-Factory YAML.
    #[arg(long)]
    pub train_args: Option<String>,
    /// JSON output (schema_version 1).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV output (one header, one row per rank class).
    #[arg(long)]
    pub csv: bool,
    /// Calibration file from `llm-mem probe calibrate` (applies α, β for the family).
    #[arg(long)]
    pub calibration: Option<std::path::PathBuf>,
}

fn read(flag: &str, path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {flag} {path}"))
}

impl EstimateArgs {
    /// Profile file < config file < DeepSpeed config < training arguments < flags (a
    /// shipped `--framework` profile sits under all of them); with the imports'
    /// warnings.
    pub fn settings(&self) -> Result<(Settings, Vec<String>)> {
        let mut s = Settings::default();
        let mut warnings = Vec::new();
        if let Some(path) = &self.profile {
            let p = Profile::parse(&read("--profile", path)?, path)?;
            eprintln!(
                "llm-mem: note: profile {} ({path}): {}",
                p.name, p.description
            );
            s = p.settings;
        }
        if let Some(path) = &self.config {
            let format = Format::from_path(path, "--config")?;
            s = s.merged(Settings::parse(&read("--config", path)?, format, path)?);
        }
        if let Some(path) = &self.deepspeed {
            let (c, w) = import::from_deepspeed(&read("--deepspeed", path)?, path)?;
            s = s.merged(c);
            warnings.extend(w);
        }
        if let Some(path) = &self.train_args {
            let format = Format::from_path(path, "--train-args")?;
            let (c, w) = import::from_train_args(&read("--train-args", path)?, format, path)?;
            s = s.merged(c);
            warnings.extend(w);
        }
        for w in &warnings {
            eprintln!("llm-mem: warning: {w}");
        }
        Ok((s.merged(self.flags.0.clone()), warnings))
    }
}

/// The model the settings name, with `layers` applied.
pub fn load_model(s: &Settings) -> Result<llm_mem::ModelSpec> {
    let name = s.model.clone().context(
        "no model given: pass --model NAME (a preset from `llm-mem models`, a config.json path, or a Hugging Face id org/name[@revision])",
    )?;
    let (mut spec, notes) = hub::resolve_from(&name, &hub::Sources::from_env()?)?;
    if let (Some(mt), Some(true)) = (&spec.generic_of, s.strict) {
        anyhow::bail!(
            "{name}: model_type {mt:?} is not a modelled architecture and --strict refuses the generic estimate; supported model_type values: {}",
            llm_mem::arch::Family::supported_list()
        );
    }
    for n in notes {
        eprintln!("llm-mem: note: {n}");
    }
    if let Some(l) = s.layers {
        spec = spec.with_layers(l).map_err(|e| s.attribute(e))?;
    }
    Ok(spec)
}

pub fn run(args: &EstimateArgs) -> Result<ExitCode> {
    let (settings, _) = args.settings()?;
    let spec = load_model(&settings)?;
    let run = settings.resolve(&spec)?;
    for w in &run.warnings {
        eprintln!("llm-mem: warning: {w}");
    }
    let (w, ov, layout) = (&run.workload, &run.overheads, &run.layout);
    let corr = match &args.calibration {
        // a generic estimate is calibrated under the config's own model_type
        Some(p) => super::probe::correction(
            p,
            spec.generic_of
                .as_deref()
                .unwrap_or(spec.family.model_type()),
            w.runtime.as_str(),
        )?,
        None => Correction::IDENTITY,
    };
    if layout.is_distributed() {
        let d = estimate_layout(&spec, w, ov, layout, &corr).map_err(|e| settings.attribute(e))?;
        let fit = run
            .capacity
            .map(|(gpu, cap)| Fit::new(gpu, cap, d.worst().estimate.peak.device));
        let out = if args.json {
            report::json::render_distributed(&d, w, ov, layout, fit.as_ref())
        } else if args.csv {
            report::csv::render_distributed(&d, w, ov, layout, fit.as_ref())
        } else {
            report::human::render_distributed(&d, w, layout, fit.as_ref())
        };
        print_out(&out)?;
        return Ok(exit_for(fit.as_ref()));
    }
    let est = estimate_corrected(&spec, w, ov, &corr).map_err(|e| settings.attribute(e))?;
    let fit = run
        .capacity
        .map(|(gpu, cap)| Fit::new(gpu, cap, est.peak.device));
    let out = if args.json {
        report::json::render(&est, w, ov, fit.as_ref())
    } else if args.csv {
        report::csv::render(&est, w, ov, layout, fit.as_ref())
    } else {
        report::human::render(&est, w, fit.as_ref())
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
