//! `llm-mem validate FILE.csv [--configs DIR]`: the estimator against a measurement
//! table (see `llm_mem::validate`), as a table, JSON or Markdown, with an optional SVG
//! scatter; exit 1 when a bar given with `--min-within-10`, `--max-median-err` or
//! `--max-under` is not cleared.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use llm_mem::hf::hub;
use llm_mem::report::{validate_human, validate_json, validate_md, validate_svg};
use llm_mem::validate::{self, table, Bars};

use super::print_out;

#[derive(Args)]
#[command(after_help = "\
A row's `model` is read from DIR/<model>/config.json when --configs is given and that \
file exists, else it is a preset name (offline). The table's columns and tokens are those \
of tests/data/measured/public.csv (documented in its README). Shares are fractions of all \
rows: a row that cannot be estimated counts as a miss.")]
pub struct ValidateArgs {
    /// The measurement table (CSV).
    pub file: PathBuf,
    /// A folder with <model>/config.json for the rows' models.
    #[arg(long)]
    pub configs: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// A Markdown report.
    #[arg(long)]
    pub markdown: bool,
    /// Also write an SVG scatter (estimated vs measured) to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print each row's equivalent `llm-mem estimate` command and the mapping's notes.
    #[arg(long)]
    pub verbose: bool,
    /// Exit 1 unless at least this fraction of all rows is within ±10% (e.g. 0.8).
    #[arg(long, value_parser = fraction)]
    pub min_within_10: Option<f64>,
    /// Exit 1 unless the median absolute relative error is at most this (e.g. 0.05).
    #[arg(long, value_parser = fraction)]
    pub max_median_err: Option<f64>,
    /// Exit 1 if a row is under-predicted by more than this fraction (e.g. 0.15).
    #[arg(long, value_parser = fraction)]
    pub max_under: Option<f64>,
}

fn fraction(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: accepted: a fraction in 0..=1, e.g. 0.8")),
    }
}

pub fn run(a: &ValidateArgs) -> Result<ExitCode> {
    let origin = a.file.display().to_string();
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {origin}"))?;
    let rows = table::parse(&text, &origin)?;
    if let Some(dir) = &a.configs {
        anyhow::ensure!(
            dir.is_dir(),
            "--configs {}: not a folder (expected <model>/config.json inside)",
            dir.display()
        );
    }
    let configs = a.configs.clone();
    let resolve = move |model: &str| -> llm_mem::Result<llm_mem::ModelSpec> {
        if let Some(dir) = &configs {
            let p = dir.join(model).join("config.json");
            if p.is_file() {
                return hub::resolve_with(&p.display().to_string(), None);
            }
        }
        // a preset, a path or the local HF cache (offline: a table never fetches)
        hub::resolve_with(model, None)
    };
    let v = validate::validate(&rows, &resolve);
    if let Some(svg) = &a.svg {
        let title = format!(
            "{}: estimated vs measured",
            a.file
                .file_name()
                .map_or(origin.clone(), |n| n.to_string_lossy().to_string())
        );
        std::fs::write(svg, validate_svg::render(&title, &v))
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    let out = if a.json {
        validate_json::render(&v)
    } else if a.markdown {
        validate_md::render("Validation against measured peaks", &origin, &v)
    } else {
        validate_human::render(&v, a.verbose)
    };
    print_out(&out)?;
    let bars = Bars {
        min_within_10_pct: a.min_within_10,
        max_median_abs_rel_err: a.max_median_err,
        max_under: a.max_under,
    };
    let failed = bars.failures(&v.summary);
    for f in &failed {
        eprintln!("llm-mem: validate: {f}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
