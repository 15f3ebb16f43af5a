//! The sweep: every point of a plan through an [`Executor`] and a meter, one
//! measurement row per point, flushed per row; failures are rows too; finished points
//! of an existing file are skipped (resume).

use std::collections::BTreeSet;
use std::path::Path;

use super::candle_model as model;
use super::measurement::{self, Row};
use super::meter::MemoryMeter;
use super::plan::{Plan, Point};
use super::provenance::{cpu_name, git_commit, Provenance};

use crate::error::{Error, Result};
use crate::runtime::candle::program::ProbeMethod;
use crate::runtime::candle::tape::{self, CandleStep};

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
    /// Bytes the device holds in all (host RAM for the CPU, the GPU's memory), if known:
    /// a point predicted above it is recorded as `oom` without running.
    fn capacity(&self) -> Option<u64> {
        None
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
    fn capacity(&self) -> Option<u64> {
        match self.spec {
            model::DeviceSpec::Cpu => host_memory(),
            model::DeviceSpec::Cuda(_) => crate::probe::cuda::describe(&self.device)
                .ok()
                .map(|i| i.total_bytes),
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

/// The host's physical memory (`MemTotal` of `/proc/meminfo`, Linux), if readable.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Why a point is recorded as `oom` without running, if it is. A failed host
/// allocation aborts the process (Rust's `handle_alloc_error`: candle allocates every
/// tensor through a `Vec`, on the host also before copying it to a GPU), so no point
/// whose predicted peak exceeds the device's memory is run, and none predicted more
/// than twice above the artificial limit (below that the measurement decides, so the
/// boundary stays measured: the candle profile is within 2 % on the CPU).
pub fn not_run_reason(
    pred: &CandleStep,
    limit: Option<u64>,
    capacity: Option<u64>,
) -> Option<String> {
    let dynamic = pred
        .peak()
        .saturating_sub(pred.weights + pred.optimizer_state);
    if let Some(l) = limit.filter(|&l| dynamic / 2 > l) {
        return Some(format!(
            "out of memory (not run): the candle profile predicts {dynamic} bytes above the baseline, more than twice the limit of {l} bytes"
        ));
    }
    if let Some(c) = capacity.filter(|&c| pred.peak() > c) {
        return Some(format!(
            "out of memory (not run): the candle profile predicts a peak of {} bytes; the device holds {c} bytes",
            pred.peak()
        ));
    }
    None
}

/// What a point produced: not run (see [`not_run_reason`]), or run and measured.
fn outcome_of(
    exec: &mut dyn Executor,
    plan: &Plan,
    p: &Point,
    m: &mut dyn MemoryMeter,
    pred: Option<&CandleStep>,
) -> Outcome {
    if let Some(why) = pred.and_then(|s| not_run_reason(s, m.limit(), exec.capacity())) {
        return Outcome::OutOfMemory(why);
    }
    match exec.run(plan, p, m) {
        Ok(s) => Outcome::Ok(s),
        Err(e @ (Error::OutOfMemory { .. } | Error::DeviceOutOfMemory(_))) => {
            Outcome::OutOfMemory(e.to_string())
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The estimator's prediction for a point (the `candle` runtime profile).
pub fn predict(plan: &Plan, p: &Point) -> Result<tape::CandleStep> {
    let esize = plan.dtype()?.size();
    let host = plan.device()? == model::DeviceSpec::Cpu;
    tape::candle_step(&p.spec, p.batch, p.seq, p.method, esize, host)
}

/// Result of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SweepSummary {
    pub ran: usize,
    pub skipped: usize,
    pub failed: usize,
    /// A torn last line found in the file, set aside and its point re-run (what and where).
    pub torn: Option<String>,
}

/// The points of `csv_path` already measured, after setting aside a torn last line
/// (`measurement::set_aside_torn_tail`, reported). The file must hold this plan only,
/// and each row of a planned point must match it in every shape field
/// (`Row::shape_key`): a file of another plan, or of a plan edited since, is refused
/// and left as it is, so rows of different models never mix under one point id.
fn done_points(
    plan: &Plan,
    points: &[Point],
    csv_path: &Path,
) -> Result<(BTreeSet<String>, Option<String>)> {
    if !csv_path.exists() {
        return Ok((BTreeSet::new(), None));
    }
    let torn = measurement::set_aside_torn_tail(csv_path)?.map(|t| {
        let text = String::from_utf8_lossy(&t.bytes);
        let point = points
            .iter()
            .find(|p| text.contains(&format!(",{},", p.id)))
            .map_or_else(|| "a point".to_string(), |p| format!("point {}", p.id));
        format!(
            "{} line {} was cut mid-write ({} bytes): set aside in {}.torn; {point} is run again",
            csv_path.display(),
            t.line,
            t.bytes.len(),
            csv_path.display()
        )
    });
    let refuse = |line: u64, message: String| Error::Measurement {
        path: format!("{} line {line}", csv_path.display()),
        message,
    };
    let mut done = BTreeSet::new();
    for (line, row) in measurement::read_numbered(csv_path)? {
        if row.plan != plan.name {
            return Err(refuse(line, format!(
                "this file holds plan {}, not {}; resume a file of plan {} or write a new file (no --resume, or another --out)",
                row.plan, plan.name, plan.name
            )));
        }
        if let Some(p) = points.iter().find(|p| p.id == row.point) {
            let want = row_of(
                plan,
                p,
                &Provenance::planned(plan),
                &Outcome::Failed(String::new()),
                None,
                0.0,
            )?;
            let diff = row
                .shape_key()
                .into_iter()
                .zip(want.shape_key())
                .find(|(a, b)| a.1 != b.1);
            if let Some(((k, had), (_, now))) = diff {
                return Err(refuse(line, format!(
                    "point {} was measured with {k} {had}; the plan now gives {k} {now}. Raw rows are never rewritten: write to a new file (another --out or --resume NEW.csv), or restore the plan",
                    p.id
                )));
            }
        }
        done.insert(row.point);
    }
    Ok((done, torn))
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
    let (done, torn) = done_points(plan, points, csv_path)?;
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
        torn,
        ..SweepSummary::default()
    };
    for p in todo {
        bar.set_message(p.id.clone());
        let t0 = std::time::Instant::now();
        let mut m = meter();
        let pred = predict(plan, p);
        let outcome = outcome_of(exec, plan, p, m.as_mut(), pred.as_ref().ok());
        let row = row_of(
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

/// The measurement row of one point: what was measured and what the candle profile
/// predicted, with the sweep's provenance.
fn row_of(
    plan: &Plan,
    p: &Point,
    prov: &Provenance,
    outcome: &Outcome,
    pred: Option<&CandleStep>,
    seconds: f64,
) -> Result<Row> {
    let (method, rank) = match p.method {
        ProbeMethod::Full => ("full", 0),
        ProbeMethod::Lora { rank, .. } => ("lora", rank as u64),
    };
    let (status, message, m) = match outcome {
        Outcome::Ok(m) => ("ok", String::new(), Some(m)),
        Outcome::OutOfMemory(e) => ("oom", e.clone(), None),
        Outcome::Failed(e) => ("error", e.clone(), None),
    };
    let st = m
        .map(|m| m.static_bytes)
        .unwrap_or_else(|| pred.map(|s| s.weights + s.optimizer_state).unwrap_or(0));
    let abs = |x: u64| if m.is_some() { st + x } else { 0 };
    let ps = pred.map(|s| s.weights + s.optimizer_state).unwrap_or(0);
    let pa = |x: Option<u64>| x.map(|v| ps + v).unwrap_or(0);
    Ok(Row {
        schema_version: measurement::SCHEMA_VERSION,
        plan: plan.name.clone(),
        point: p.id.clone(),
        status: status.into(),
        message: message.replace(['\n', '\r'], " "),
        tool_version: prov.tool_version.clone(),
        git_commit: prov.git_commit.clone(),
        device: prov.device.clone(),
        device_name: prov.device_name.clone(),
        driver: prov.driver.clone(),
        runtime: "candle".into(),
        dtype: plan.dtype()?.to_string(),
        family: p.spec.family.to_string(),
        model: p.spec.name.clone(),
        layers: p.spec.layers(),
        hidden: p.spec.hidden,
        heads: p.spec.heads,
        kv_heads: p.spec.kv_heads,
        head_dim: p.spec.head_dim,
        intermediate: p.spec.intermediate,
        vocab: p.spec.vocab,
        method: method.into(),
        lora_rank: rank,
        batch: p.batch as u64,
        seq: p.seq as u64,
        warmup_steps: plan.warmup_steps as u64,
        measured_steps: plan.measured_steps as u64,
        meter: prov.meter.clone(),
        peak_source: m
            .and_then(|m| m.source)
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        static_bytes: st,
        grad_bytes: pred.map(|s| s.param_grads).unwrap_or(0),
        measured_peak_bytes: abs(m.map(|m| m.step).unwrap_or(0)),
        measured_forward_bytes: abs(m.map(|m| m.forward).unwrap_or(0)),
        measured_loss_bytes: abs(m.map(|m| m.loss).unwrap_or(0)),
        measured_backward_bytes: abs(m.map(|m| m.backward).unwrap_or(0)),
        measured_optimizer_bytes: abs(m.map(|m| m.optimizer).unwrap_or(0)),
        predicted_peak_bytes: pred.map(|s| s.peak()).unwrap_or(0),
        predicted_forward_bytes: pa(pred.map(|s| s.forward_peak.total())),
        predicted_loss_bytes: pa(pred.map(|s| s.loss_peak.total())),
        predicted_backward_bytes: pa(pred.map(|s| s.backward_peak.total())),
        predicted_optimizer_bytes: pa(pred.map(|s| s.optimizer_peak.total())),
        seconds: (seconds * 1000.0).round() / 1000.0,
        date: crate::probe::today(),
        allocator_peak_bytes: m.and_then(|m| m.side.allocator_peak),
        reserved_peak_bytes: m.and_then(|m| m.side.reserved_peak),
        device_used_baseline_bytes: m.and_then(|m| m.side.device_used_baseline),
        device_used_peak_bytes: m.and_then(|m| m.side.device_used_peak),
        process_used_baseline_bytes: m.and_then(|m| m.side.process_used_baseline),
        process_used_peak_bytes: m.and_then(|m| m.side.process_used_peak),
        side_sources: m.map(|m| m.side.sources.clone()).unwrap_or_default(),
    })
}
