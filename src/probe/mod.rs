//! Probes: real candle training steps, measured, next to the estimator's prediction.
//!
//! - `Plan` (`probes/*.toml`, `schema_version = 1`): architectures (a preset or a
//!   config.json, scaled down), a batch × sequence grid, dtype, methods, optimizer,
//!   attention, warm-up and measured steps, device.
//! - `run_sweep`: every point through an [`Executor`] and a meter, one CSV row per point
//!   (`measurement`), flushed per row; failures are rows too; finished points of an
//!   existing file are skipped (resume).
//! - `model`: the candle probe models and the measured step.

pub mod candle_model;
use candle_model as model;
// The only place the `cuda` feature is named in Rust: the real module or its stand-in,
// with the same public items (see ARCHITECTURE.md, "CUDA").
#[cfg_attr(feature = "cuda", path = "cuda.rs")]
#[cfg_attr(not(feature = "cuda"), path = "cuda_stub.rs")]
pub mod cuda;
pub mod measurement;
pub mod meter;

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::arch::{ModelSpec, Positions};
use crate::error::{Error, Result};
use crate::probe::meter::MemoryMeter;
use crate::runtime::candle::program::{self, ProbeMethod};
use crate::runtime::candle::tape;
use measurement::Row;

pub const PLAN_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub schema_version: u32,
    pub name: String,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default = "default_rank")]
    pub lora_rank: usize,
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    #[serde(default = "default_attn")]
    pub attn: String,
    #[serde(default = "one")]
    pub warmup_steps: usize,
    #[serde(default = "one")]
    pub measured_steps: usize,
    pub shapes: Shapes,
    pub architectures: Vec<Arch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shapes {
    pub batch: Vec<usize>,
    pub seq: Vec<usize>,
}

/// One architecture, scaled down: every size is optional (default: the source's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    /// A preset name or a path to a config.json (relative to the plan file).
    pub model: String,
    pub layers: Option<u64>,
    pub hidden: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub intermediate: Option<u64>,
    pub vocab: Option<u64>,
    /// Restrict this architecture to some methods (default: the plan's).
    pub methods: Option<Vec<String>>,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_methods() -> Vec<String> {
    vec!["full".into()]
}
fn default_rank() -> usize {
    8
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_attn() -> String {
    "eager".into()
}
fn one() -> usize {
    1
}

/// One point of a plan, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Stable id: `model/method/bB/sS` (the resume key).
    pub id: String,
    pub spec: ModelSpec,
    pub method: ProbeMethod,
    pub batch: usize,
    pub seq: usize,
}

impl Plan {
    pub fn parse(text: &str, path: &str) -> Result<Plan> {
        let plan: Plan = toml::from_str(text).map_err(|e| Error::Plan {
            path: path.into(),
            message: e.to_string(),
        })?;
        plan.validate(path)?;
        Ok(plan)
    }

    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Plan::parse(&text, &path.display().to_string())
    }

    fn validate(&self, path: &str) -> Result<()> {
        let bad = |m: String| Error::Plan {
            path: path.into(),
            message: m,
        };
        if self.schema_version != PLAN_SCHEMA_VERSION {
            return Err(bad(format!(
                "schema_version {} is not supported; accepted: {PLAN_SCHEMA_VERSION}",
                self.schema_version
            )));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "name {:?}: accepted: letters, digits, '-' and '_'",
                self.name
            )));
        }
        model::DeviceSpec::parse(&self.device)?;
        self.dtype()?;
        for m in &self.methods {
            self.method(m)?;
        }
        if !matches!(self.optimizer.as_str(), "adamw") {
            return Err(Error::invalid(
                "plan optimizer",
                &self.optimizer,
                "adamw (candle-nn AdamW)",
            ));
        }
        if !matches!(self.attn.as_str(), "eager" | "sdpa") {
            return Err(Error::invalid(
                "plan attn",
                &self.attn,
                "eager or sdpa (both run explicit matmul + softmax in candle)",
            ));
        }
        if self.measured_steps == 0 {
            return Err(Error::invalid("measured_steps", 0, "an integer > 0"));
        }
        if self.lora_rank == 0 {
            return Err(Error::invalid("lora_rank", 0, "an integer > 0"));
        }
        for (what, v) in [
            ("shapes.batch", &self.shapes.batch),
            ("shapes.seq", &self.shapes.seq),
        ] {
            if v.is_empty() {
                return Err(bad(format!("{what} is empty; give at least one size")));
            }
            if let Some(z) = v.iter().find(|&&x| x == 0) {
                return Err(Error::invalid(what, z, "integers > 0"));
            }
        }
        if self.architectures.is_empty() {
            return Err(bad("no [[architectures]]".into()));
        }
        for a in &self.architectures {
            for (what, v) in [
                ("layers", a.layers),
                ("hidden", a.hidden),
                ("heads", a.heads),
                ("kv_heads", a.kv_heads),
                ("head_dim", a.head_dim),
                ("intermediate", a.intermediate),
                ("vocab", a.vocab),
            ] {
                if v == Some(0) {
                    return Err(Error::invalid(what, 0, "an integer > 0"));
                }
            }
            for m in a.methods.iter().flatten() {
                self.method(m)?;
            }
        }
        Ok(())
    }

    pub fn dtype(&self) -> Result<crate::units::dtype::DType> {
        match self.dtype.as_str() {
            "f32" | "fp32" => Ok(crate::units::dtype::DType::F32),
            "bf16" => Ok(crate::units::dtype::DType::BF16),
            "f16" | "fp16" => Ok(crate::units::dtype::DType::F16),
            other => Err(Error::invalid("plan dtype", other, "f32, bf16, f16")),
        }
    }

    fn method(&self, m: &str) -> Result<ProbeMethod> {
        match m {
            "full" => Ok(ProbeMethod::Full),
            "lora" => Ok(ProbeMethod::Lora {
                rank: self.lora_rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * self.lora_rank as f64),
            }),
            other => Err(Error::invalid("plan method", other, "full, lora")),
        }
    }

    pub fn device(&self) -> Result<model::DeviceSpec> {
        model::DeviceSpec::parse(&self.device)
    }

    /// Every point: architectures × methods × batch × seq.
    pub fn points(&self, plan_dir: &Path) -> Result<Vec<Point>> {
        let max_seq = *self.shapes.seq.iter().max().expect("validated non-empty");
        let mut out = Vec::new();
        for a in &self.architectures {
            let spec = scaled_spec(a, plan_dir, max_seq as u64)?;
            let methods = a.methods.as_ref().unwrap_or(&self.methods);
            for m in methods {
                let method = self.method(m)?;
                for &b in &self.shapes.batch {
                    for &s in &self.shapes.seq {
                        out.push(Point {
                            id: format!("{}/{}/b{b}/s{s}", a.model, m),
                            spec: spec.clone(),
                            method,
                            batch: b,
                            seq: s,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The architecture of a plan entry: the source spec with the overrides applied.
pub fn scaled_spec(a: &Arch, plan_dir: &Path, max_seq: u64) -> Result<ModelSpec> {
    let mut spec = match crate::hf::presets::get(&a.model) {
        Some(s) => s?,
        None => {
            let p = plan_dir.join(&a.model);
            if p.exists() {
                crate::hf::hub::load_config_file(&p)?
            } else {
                crate::hf::hub::resolve(&a.model)?
            }
        }
    };
    let orig_heads = spec.heads;
    let orig_head_dim = spec.head_dim;
    let orig_hidden = spec.hidden;
    if let Some(h) = a.hidden {
        spec.hidden = h;
    }
    if let Some(h) = a.heads {
        spec.heads = h;
    }
    spec.kv_heads = match a.kv_heads {
        Some(k) => k,
        None => {
            let group = (orig_heads / spec.kv_heads.max(1)).max(1);
            (spec.heads / group).max(1)
        }
    };
    spec.head_dim = a
        .head_dim
        .unwrap_or(if a.hidden.is_some() || a.heads.is_some() {
            spec.hidden / spec.heads
        } else {
            spec.head_dim
        });
    if let Some(i) = a.intermediate {
        spec.intermediate = i;
    } else if a.hidden.is_some() {
        spec.intermediate = (spec.intermediate * spec.hidden / orig_hidden).max(1);
    }
    if let Some(v) = a.vocab {
        spec.vocab = v;
    }
    if let Some(l) = a.layers {
        spec = spec.with_layers(l)?;
    }
    if let Positions::Rope { rotary_dim } = spec.positions {
        let rd = (rotary_dim * spec.head_dim / orig_head_dim.max(1)) / 2 * 2;
        spec.positions = Positions::Rope {
            rotary_dim: rd.clamp(2, spec.head_dim / 2 * 2),
        };
    }
    if spec.positions == Positions::Learned {
        spec.max_positions = max_seq;
    }
    spec.checkpoint = None;
    spec.quantization = None;
    program::check_supported(&spec)?;
    Ok(spec)
}

/// The Hugging Face `config.json` of a plan entry, scaled down exactly as
/// [`scaled_spec`] scales it (for `probes/torch_probe.py`, which builds the same model
/// with transformers): the source config with the sizes of `spec` written over it.
pub fn hf_config(a: &Arch, spec: &ModelSpec, plan_dir: &Path) -> Result<serde_json::Value> {
    let text = match crate::hf::presets::raw(&a.model) {
        Some(t) => t.to_string(),
        None => {
            let mut p = plan_dir.join(&a.model);
            if p.is_dir() {
                p = p.join("config.json");
            }
            std::fs::read_to_string(&p).map_err(|e| Error::io(p, e))?
        }
    };
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: a.model.clone(),
        message: e.to_string(),
    })?;
    let o = v.as_object_mut().ok_or_else(|| Error::Config {
        path: a.model.clone(),
        message: "config.json is not an object".into(),
    })?;
    let mt = spec.family.model_type();
    o.insert("model_type".into(), mt.into());
    o.remove("quantization_config");
    o.insert("use_cache".into(), false.into());
    let rotary = match spec.positions {
        Positions::Rope { rotary_dim } => Some(rotary_dim as f64 / spec.head_dim.max(1) as f64),
        _ => None,
    };
    let mut set = |k: &str, x: serde_json::Value| {
        o.insert(k.into(), x);
    };
    match mt {
        "gpt2" => {
            set("n_embd", spec.hidden.into());
            set("n_layer", spec.layers.into());
            set("n_head", spec.heads.into());
            set("n_inner", spec.intermediate.into());
            set("n_positions", spec.max_positions.into());
            set("n_ctx", spec.max_positions.into());
            set("vocab_size", spec.vocab.into());
        }
        _ => {
            set("hidden_size", spec.hidden.into());
            set("num_hidden_layers", spec.layers.into());
            set("num_attention_heads", spec.heads.into());
            set("num_key_value_heads", spec.kv_heads.into());
            set("head_dim", spec.head_dim.into());
            set("intermediate_size", spec.intermediate.into());
            set("vocab_size", spec.vocab.into());
            if let Some(r) = rotary {
                match mt {
                    "gpt_neox" => set("rotary_pct", r.into()),
                    "phi3" if r < 1.0 => set("partial_rotary_factor", r.into()),
                    _ => {}
                }
            }
        }
    }
    Ok(v)
}

/// What a sweep point produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(model::StepMeasurement),
    OutOfMemory(String),
    Failed(String),
}

/// Runs one point; the candle executor measures a real step, a fake one scripts it.
pub trait Executor {
    /// Device name for the provenance (`cpu: AMD EPYC ...`, `NVIDIA H100 ...`).
    fn device_name(&self) -> String;
    /// Driver version, if any.
    fn driver(&self) -> String {
        String::new()
    }
    fn run(
        &mut self,
        plan: &Plan,
        point: &Point,
        meter: &mut dyn MemoryMeter,
    ) -> Result<model::StepMeasurement>;
}

/// The real thing: candle on the plan's device.
pub struct CandleExecutor {
    pub spec: model::DeviceSpec,
    pub device: candle_core::Device,
}

impl CandleExecutor {
    /// Opens the device (`cuda:N` through `crate::probe::cuda`: without the `cuda` feature,
    /// "built without CUDA support; see README").
    pub fn new(d: model::DeviceSpec) -> Result<CandleExecutor> {
        Ok(CandleExecutor {
            spec: d,
            device: d.open()?,
        })
    }
}

/// The meter for a device: the counting allocator on the CPU, the CUDA pool + NVML
/// meter on a GPU (`crate::probe::cuda`). `limit`: artificial limit above the baseline.
pub fn meter_for(
    spec: model::DeviceSpec,
    device: &candle_core::Device,
    limit: Option<u64>,
) -> Box<dyn MemoryMeter> {
    match spec {
        model::DeviceSpec::Cpu => Box::new(crate::probe::meter::CountingMeter::new(limit)),
        model::DeviceSpec::Cuda(_) => Box::new(crate::probe::cuda::CudaMeter::new(device, limit)),
    }
}

impl Executor for CandleExecutor {
    fn device_name(&self) -> String {
        match self.spec {
            model::DeviceSpec::Cpu => cpu_name(),
            model::DeviceSpec::Cuda(_) => crate::probe::cuda::describe(&self.device)
                .map(|i| i.name)
                .unwrap_or_else(|e| format!("cuda ({e})")),
        }
    }
    fn driver(&self) -> String {
        match self.spec {
            model::DeviceSpec::Cpu => String::new(),
            model::DeviceSpec::Cuda(_) => crate::probe::cuda::describe(&self.device)
                .map(|i| i.driver)
                .unwrap_or_default(),
        }
    }
    fn run(
        &mut self,
        plan: &Plan,
        p: &Point,
        meter: &mut dyn MemoryMeter,
    ) -> Result<model::StepMeasurement> {
        let cfg = model::StepConfig {
            batch: p.batch,
            seq: p.seq,
            method: p.method,
            dtype: plan.dtype()?,
            warmup_steps: plan.warmup_steps,
            measured_steps: plan.measured_steps,
            lr: 1e-4,
        };
        model::measure(&p.spec, &cfg, &self.device, meter)
    }
}

/// `model name` from /proc/cpuinfo, else `cpu`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}

/// The estimator's prediction for a point (the `candle` runtime profile).
pub fn predict(plan: &Plan, p: &Point) -> Result<tape::CandleStep> {
    let esize = plan.dtype()?.size();
    let host = plan.device()? == model::DeviceSpec::Cpu;
    tape::candle_step(&p.spec, p.batch, p.seq, p.method, esize, host)
}

/// Provenance shared by the rows of one sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub tool_version: String,
    pub git_commit: String,
    pub device: String,
    pub device_name: String,
    pub driver: String,
    pub meter: String,
}

/// `git rev-parse --short HEAD` of the current folder, else `unknown`.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Result of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SweepSummary {
    pub ran: usize,
    pub skipped: usize,
    pub failed: usize,
}

/// Run every point not yet in `csv_path`, appending one flushed row per point.
/// `meter` builds a fresh meter per point. `progress` shows a bar with ETA.
pub fn run_sweep(
    plan: &Plan,
    points: &[Point],
    exec: &mut dyn Executor,
    meter: &mut dyn FnMut() -> Box<dyn MemoryMeter>,
    csv_path: &Path,
    progress: bool,
) -> Result<SweepSummary> {
    let done: BTreeSet<String> = if csv_path.exists() {
        measurement::read(csv_path)?
            .into_iter()
            .filter(|r| r.plan == plan.name)
            .map(|r| r.point)
            .collect()
    } else {
        BTreeSet::new()
    };
    let todo: Vec<&Point> = points.iter().filter(|p| !done.contains(&p.id)).collect();
    let mut w = measurement::Writer::append(csv_path)?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(todo.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} points, {elapsed} elapsed, ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let prov = Provenance {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: git_commit(),
        device: plan.device.clone(),
        device_name: exec.device_name(),
        driver: exec.driver(),
        meter: meter().kind().into(),
    };
    let mut summary = SweepSummary {
        skipped: points.len() - todo.len(),
        ..SweepSummary::default()
    };
    for p in todo {
        bar.set_message(p.id.clone());
        let t0 = std::time::Instant::now();
        let mut m = meter();
        let outcome = match exec.run(plan, p, m.as_mut()) {
            Ok(s) => Outcome::Ok(s),
            Err(e @ (Error::OutOfMemory { .. } | Error::DeviceOutOfMemory(_))) => {
                Outcome::OutOfMemory(e.to_string())
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let pred = predict(plan, p);
        let row = Row::new(
            plan,
            p,
            &prov,
            &outcome,
            pred.as_ref().ok(),
            t0.elapsed().as_secs_f64(),
        )?;
        if !matches!(outcome, Outcome::Ok(_)) {
            summary.failed += 1;
        }
        w.write(&row)?;
        summary.ran += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// `YYYY-MM-DD` (UTC) of now.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    date_of(secs)
}

/// `YYYY-MM-DD` of a Unix time (civil-from-days).
pub fn date_of(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400), "2000-02-29");
        assert_eq!(date_of(1_735_689_600), "2025-01-01");
    }

    fn plan(extra: &str) -> Result<Plan> {
        Plan::parse(
            &format!(
                "schema_version = 1\nname = \"t\"\n{extra}\n[shapes]\nbatch = [1]\nseq = [8]\n[[architectures]]\nmodel = \"gpt2\"\nlayers = 1\nhidden = 32\nheads = 2\nvocab = 64\n"
            ),
            "t.toml",
        )
    }

    #[test]
    fn plan_errors_name_the_value() {
        assert!(plan("").is_ok());
        let e = plan("dtype = \"f64\"").unwrap_err().to_string();
        assert!(e.contains("f64") && e.contains("f32, bf16, f16"), "{e}");
        let e = plan("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = plan("methods = [\"qlora\"]").unwrap_err().to_string();
        assert!(e.contains("qlora") && e.contains("full, lora"), "{e}");
        let e = Plan::parse("schema_version = 2\nname=\"x\"\n[shapes]\nbatch=[1]\nseq=[1]\n[[architectures]]\nmodel=\"gpt2\"\n", "p").unwrap_err().to_string();
        assert!(e.contains("schema_version 2"), "{e}");
        let e = plan("device = \"tpu\"").unwrap_err().to_string();
        assert!(e.contains("cpu, cuda or cuda:N"), "{e}");
        let e = Plan::parse("schema_version = 1\nname=\"x\"\n[shapes]\nbatch=[0]\nseq=[1]\n[[architectures]]\nmodel=\"gpt2\"\n", "p").unwrap_err().to_string();
        assert!(e.contains("shapes.batch") && e.contains("> 0"), "{e}");
        assert!(Plan::parse("not toml [", "p").is_err());
    }

    #[test]
    fn scaling_keeps_the_family() {
        let p = plan("methods = [\"full\", \"lora\"]").unwrap();
        let pts = p.points(Path::new(".")).unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].spec.hidden, 32);
        assert_eq!(pts[0].spec.head_dim, 16);
        assert_eq!(pts[0].id, "gpt2/full/b1/s8");
    }
}
