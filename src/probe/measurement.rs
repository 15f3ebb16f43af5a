//! Measurement files: one CSV row per probe point, with provenance.
//!
//! A row holds raw data only: what was measured (absolute bytes: static + the step's
//! peak above the baseline, per phase) and the estimator's prediction for the same
//! point. Errors, corrections and fits are derived elsewhere (`calibration`,
//! `report::probe_*`). Rows are appended and flushed one at a time, so an interrupted
//! sweep keeps every finished point.
//!
//! **Versioned, append-only.** Each row carries `schema_version` ([`SCHEMA_VERSION`]);
//! every earlier schema stays readable ([`read`]): 1 = the first columns, 2 = + the CUDA
//! meter's side columns, 3 = + `schema_version`. Raw rows are never rewritten: appending
//! to a file of another schema (older, or newer and so with columns this version does
//! not know) is refused with the schema found, and the file is left as it is.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::probe::{Outcome, Plan, Point, Provenance};
use crate::runtime::candle::program::ProbeMethod;
use crate::runtime::candle::tape::CandleStep;

/// The measurement schema this version writes.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Row {
    /// The schema the row was written with (1 or 2 for files from before the column).
    #[serde(default)]
    pub schema_version: u32,
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
    let _ = w.serialize(Row {
        schema_version: SCHEMA_VERSION,
        ..Row::default()
    });
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
            schema_version: SCHEMA_VERSION,
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
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let io = |e| Error::io(path, e);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let header = file.metadata().map_err(io)?.len() == 0;
        if !header {
            let first = first_line(path)?;
            if first != self::header() {
                return Err(Error::Measurement {
                    path: path.display().to_string(),
                    message: format!(
                        "written with {}; this llm-mem writes schema {SCHEMA_VERSION}. Raw rows are never rewritten: write to a new file (it stays readable by `probe calibrate` and `probe report`)",
                        describe_schema(&first)
                    ),
                });
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
        let path = self.path.clone();
        let io = |e| Error::io(&path, e);
        self.file.write_all(&bytes).map_err(io)?;
        self.file.flush().map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.header = false;
        Ok(())
    }
}

/// The header line of a file, read without reading the rest.
fn first_line(path: &Path) -> Result<String> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut line = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut line)
        .map_err(|e| Error::io(path, e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The schema a header was written with, for messages.
fn describe_schema(header: &str) -> String {
    let cols: Vec<&str> = header.split(',').collect();
    let known = self::header();
    let ours: Vec<&str> = known.split(',').collect();
    let version = if cols.first() == Some(&"schema_version") {
        None
    } else if cols.contains(&"side_sources") {
        Some(2)
    } else {
        Some(1)
    };
    match version {
        Some(v) => format!("measurement schema {v} ({} columns)", cols.len()),
        None => {
            let unknown: Vec<&&str> = cols.iter().filter(|c| !ours.contains(c)).collect();
            format!(
                "another measurement schema ({} columns{})",
                cols.len(),
                if unknown.is_empty() {
                    String::new()
                } else {
                    format!(", unknown to this version: {unknown:?}")
                }
            )
        }
    }
}

/// Read a measurement file of any schema (rows of schemas 1 and 2 get their version).
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let bad = |m: String| Error::Measurement {
        path: path.display().to_string(),
        message: m,
    };
    let mut r = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let cols = r.headers().map_err(|e| bad(e.to_string()))?.clone();
    let implied = if cols.iter().any(|c| c == "schema_version") {
        None
    } else if cols.iter().any(|c| c == "side_sources") {
        Some(2)
    } else {
        Some(1)
    };
    let mut rows = Vec::new();
    for (i, rec) in r.deserialize().enumerate() {
        let mut row: Row = rec.map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
        if let Some(v) = implied {
            row.schema_version = v;
        }
        if row.schema_version == 0 || row.schema_version > SCHEMA_VERSION {
            return Err(bad(format!(
                "row {}: schema_version {}; this version reads 1..={SCHEMA_VERSION}",
                i + 1,
                row.schema_version
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}
