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
