//! Measurement files: one CSV row per probe point, with provenance.
//!
//! A row holds raw data only: what was measured (absolute bytes: static + the step's
//! peak above the baseline, per phase) and the estimator's prediction for the same
//! point. Errors, corrections and fits are derived elsewhere (`calibration`,
//! `report::probe_*`). Rows are appended and flushed one at a time, so an interrupted
//! sweep keeps every finished point.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::probe::{Outcome, Plan, Point, Provenance};
use crate::runtime::candle::program::ProbeMethod;
use crate::runtime::candle::tape::CandleStep;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Row {
    pub plan: String,
    pub point: String,
    /// `ok`, `oom` or `error`.
    pub status: String,
    pub message: String,
    pub tool_version: String,
    pub git_commit: String,
    pub device: String,
    pub device_name: String,
    pub driver: String,
    pub runtime: String,
    pub dtype: String,
    pub family: String,
    pub model: String,
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub method: String,
    pub lora_rank: u64,
    pub batch: u64,
    pub seq: u64,
    pub warmup_steps: u64,
    pub measured_steps: u64,
    pub meter: String,
    pub peak_source: String,
    /// Weights + optimizer state, counted from the probe's tensors.
    pub static_bytes: u64,
    /// Bytes of the trainable parameters (= their gradients).
    pub grad_bytes: u64,
    /// static + the step's peak above the baseline (0 when not ok).
    pub measured_peak_bytes: u64,
    pub measured_forward_bytes: u64,
    pub measured_loss_bytes: u64,
    pub measured_backward_bytes: u64,
    pub measured_optimizer_bytes: u64,
    /// The estimator's (`candle` profile) peak and phases, same convention.
    pub predicted_peak_bytes: u64,
    pub predicted_forward_bytes: u64,
    pub predicted_loss_bytes: u64,
    pub predicted_backward_bytes: u64,
    pub predicted_optimizer_bytes: u64,
    pub seconds: f64,
    pub date: String,
    // Columns added with the CUDA meter; files written before them read as empty.
    /// Allocator high-water mark, absolute (CUDA pool `USED_MEM_HIGH`; torch
    /// `max_memory_allocated`); empty for the CPU meter.
    #[serde(default)]
    pub allocator_peak_bytes: Option<u64>,
    /// Allocator reserved high-water mark (CUDA pool `RESERVED_MEM_HIGH`; torch
    /// `max_memory_reserved`).
    #[serde(default)]
    pub reserved_peak_bytes: Option<u64>,
    /// NVML device used memory before the point's model loaded / sampled max.
    #[serde(default)]
    pub device_used_baseline_bytes: Option<u64>,
    #[serde(default)]
    pub device_used_peak_bytes: Option<u64>,
    /// NVML process used memory (when NVML lists the process) before / sampled max.
    #[serde(default)]
    pub process_used_baseline_bytes: Option<u64>,
    #[serde(default)]
    pub process_used_peak_bytes: Option<u64>,
    /// Which source gave each side number: `key=source;...`.
    #[serde(default)]
    pub side_sources: String,
}

/// The header this version writes.
pub fn header() -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.serialize(Row::default());
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Row {
    pub fn new(
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
            layers: p.spec.layers,
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

    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// Static memory the calibration subtracts: weights, optimizer state, gradients.
    pub fn static_total(&self) -> u64 {
        self.static_bytes + self.grad_bytes
    }
}

/// Appends rows to a CSV file (header written when the file is new or empty).
pub struct Writer {
    file: std::fs::File,
    header: bool,
    path: std::path::PathBuf,
}

impl Writer {
    pub fn append(path: &Path) -> Result<Writer> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::Io {
                path: d.into(),
                source: e,
            })?;
        }
        let io = |e| Error::Io {
            path: path.into(),
            source: e,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let header = file.metadata().map_err(io)?.len() == 0;
        if !header {
            let first = std::fs::read_to_string(path)
                .map_err(io)?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            if first != self::header() {
                // written by an older version (fewer columns): rewrite it with today's
                // header, the missing columns empty, so appended rows line up
                drop(file);
                upgrade(path)?;
                return Writer::append(path);
            }
        }
        Ok(Writer {
            file,
            header,
            path: path.into(),
        })
    }

    /// Write one row and flush it to the file.
    pub fn write(&mut self, row: &Row) -> Result<()> {
        let mut w = csv::WriterBuilder::new()
            .has_headers(self.header)
            .from_writer(Vec::new());
        w.serialize(row).map_err(|e| Error::Measurement {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let bytes = w.into_inner().map_err(|e| Error::Measurement {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let io = |e| Error::Io {
            path: self.path.clone(),
            source: e,
        };
        self.file.write_all(&bytes).map_err(io)?;
        self.file.flush().map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.header = false;
        Ok(())
    }
}

/// Rewrite a measurement file with the current header (atomically).
fn upgrade(path: &Path) -> Result<()> {
    let rows = read(path)?;
    let tmp = path.with_extension("csv.upgrade");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut w = Writer::append(&tmp)?;
        for r in &rows {
            w.write(r)?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::Io {
        path: path.into(),
        source: e,
    })
}

/// Read a measurement file (also one written before the side columns existed).
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let bad = |m: String| Error::Measurement {
        path: path.display().to_string(),
        message: m,
    };
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for (i, rec) in r.deserialize().enumerate() {
        let row: Row = rec.map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
        rows.push(row);
    }
    Ok(rows)
}
