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

/// Byte columns of a row are at most this (256 PiB, `workload::MAX_TENSOR_BYTES`):
/// beyond any device, far from u64 overflow in sums and differences.
pub const MAX_ROW_BYTES: u64 = crate::workload::MAX_TENSOR_BYTES;

/// The statuses a row may have (`skipped`: `probes/torch_probe.py --dry-run`).
pub const STATUSES: [&str; 4] = ["ok", "oom", "error", "skipped"];

/// What a cell of `column` must hold, for messages.
fn accepted_for(column: &str) -> String {
    match column {
        "schema_version" => format!("an integer in 1..={SCHEMA_VERSION}"),
        "seconds" => "a number".into(),
        c if c.ends_with("_bytes") && OPTIONAL_BYTES.contains(&c) => {
            "empty or a non-negative integer of bytes".into()
        }
        c if c.ends_with("_bytes") => "a non-negative integer of bytes".into(),
        _ => "a non-negative integer".into(),
    }
}

/// The byte columns that may be empty (the meter has no such source).
const OPTIONAL_BYTES: [&str; 6] = [
    "allocator_peak_bytes",
    "reserved_peak_bytes",
    "device_used_baseline_bytes",
    "device_used_peak_bytes",
    "process_used_baseline_bytes",
    "process_used_peak_bytes",
];

impl Row {
    /// What identifies the measured point: the plan, the point id and every setting
    /// that changes its memory (resume and calibrate match points on all of them).
    pub fn shape_key(&self) -> Vec<(&'static str, String)> {
        let n = |v: u64| v.to_string();
        vec![
            ("plan", self.plan.clone()),
            ("point", self.point.clone()),
            ("device", self.device.clone()),
            ("runtime", self.runtime.clone()),
            ("dtype", self.dtype.clone()),
            ("family", self.family.clone()),
            ("model", self.model.clone()),
            ("layers", n(self.layers)),
            ("hidden", n(self.hidden)),
            ("heads", n(self.heads)),
            ("kv_heads", n(self.kv_heads)),
            ("head_dim", n(self.head_dim)),
            ("intermediate", n(self.intermediate)),
            ("vocab", n(self.vocab)),
            ("method", self.method.clone()),
            ("lora_rank", n(self.lora_rank)),
            ("batch", n(self.batch)),
            ("seq", n(self.seq)),
            ("warmup_steps", n(self.warmup_steps)),
            ("measured_steps", n(self.measured_steps)),
        ]
    }

    /// A row's own consistency: a known status, byte columns in bounds, and for an ok
    /// row a measured peak at least the static bytes it includes.
    fn check(&self) -> std::result::Result<(), String> {
        if !STATUSES.contains(&self.status.as_str()) {
            return Err(format!(
                "status {:?}; accepted: {}",
                self.status,
                STATUSES.join(", ")
            ));
        }
        let bytes = [
            ("static_bytes", self.static_bytes),
            ("grad_bytes", self.grad_bytes),
            ("measured_peak_bytes", self.measured_peak_bytes),
            ("measured_forward_bytes", self.measured_forward_bytes),
            ("measured_loss_bytes", self.measured_loss_bytes),
            ("measured_backward_bytes", self.measured_backward_bytes),
            ("measured_optimizer_bytes", self.measured_optimizer_bytes),
            ("predicted_peak_bytes", self.predicted_peak_bytes),
        ];
        if let Some((c, v)) = bytes.iter().find(|(_, v)| *v > MAX_ROW_BYTES) {
            return Err(format!(
                "{c} {v:?}; accepted: at most {MAX_ROW_BYTES} bytes (256 PiB)"
            ));
        }
        if self.ok() && self.measured_peak_bytes < self.static_bytes {
            return Err(format!(
                "measured_peak_bytes {} is below static_bytes {} (the peak includes the static bytes); accepted for an ok row: a peak ≥ static",
                self.measured_peak_bytes, self.static_bytes
            ));
        }
        Ok(())
    }
}

/// The schema a header implies for rows without a `schema_version` column.
fn implied_schema(cols: &csv::StringRecord) -> Option<u32> {
    if cols.iter().any(|c| c == "schema_version") {
        None
    } else if cols.iter().any(|c| c == "side_sources") {
        Some(2)
    } else {
        Some(1)
    }
}

/// A CSV error on one line, in words: the column and the value when a cell is bad.
fn cell_error(e: &csv::Error, rec: &csv::StringRecord, cols: &csv::StringRecord) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(i) => {
                let col = cols.get(i as usize).unwrap_or("?");
                let value = rec.get(i as usize).unwrap_or("");
                format!("{col} {value:?}: expected {}", accepted_for(col))
            }
            None => err.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Read a measurement file of any schema (rows of schemas 1 and 2 get their version).
/// Every row is checked ([`Row::check`]); errors name the file, the line (1-based,
/// the header is line 1), the column and the value. A last line without its newline
/// was cut mid-write: it is an error here, and `probe run --resume` sets it aside.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    Ok(read_numbered(path)?.into_iter().map(|(_, r)| r).collect())
}

/// [`read`], with each row's line number.
pub fn read_numbered(path: &Path) -> Result<Vec<(u64, Row)>> {
    let bad = |m: String| Error::Measurement {
        path: path.display().to_string(),
        message: m,
    };
    let at = |line: u64, m: String| Error::Measurement {
        path: format!("{} line {line}", path.display()),
        message: m,
    };
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Some(t) = torn_tail(&text) {
        return Err(at(
            t.line,
            format!("incomplete ({} bytes without a newline: cut mid-write?); `llm-mem probe run --plan PLAN --resume {}` sets it aside and re-runs its point", t.bytes.len(), path.display()),
        ));
    }
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_slice());
    let cols = r.headers().map_err(|e| bad(e.to_string()))?.clone();
    let implied = implied_schema(&cols);
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| line_at(&text, p.byte()));
            at(line, e.to_string())
        })?;
        let line = rec.position().map_or(0, |p| line_at(&text, p.byte()));
        let mut row: Row = rec
            .deserialize(Some(&cols))
            .map_err(|e| at(line, cell_error(&e, &rec, &cols)))?;
        if let Some(v) = implied {
            row.schema_version = v;
        }
        if row.schema_version == 0 || row.schema_version > SCHEMA_VERSION {
            return Err(at(
                line,
                format!(
                    "schema_version {}; accepted: 1..={SCHEMA_VERSION}",
                    row.schema_version
                ),
            ));
        }
        row.check().map_err(|m| at(line, m))?;
        rows.push((line, row));
    }
    Ok(rows)
}

/// The 1-based line of the record starting at `byte` (the csv crate's own line count
/// is one short after CRLF line ends, where a record's position is the `\n` before it).
fn line_at(text: &[u8], byte: u64) -> u64 {
    let mut b = (byte as usize).min(text.len());
    while b < text.len() && matches!(text[b], b'\r' | b'\n') {
        b += 1;
    }
    text[..b].iter().filter(|&&c| c == b'\n').count() as u64 + 1
}

/// A last line without its newline: where it starts and its bytes.
pub struct TornTail {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line in the file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The torn last line of a file's bytes, if it has one (every row this crate writes
/// ends with a newline and is flushed and synced whole).
fn torn_tail(text: &[u8]) -> Option<TornTail> {
    if text.is_empty() || text.ends_with(b"\n") {
        return None;
    }
    let start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Some(TornTail {
        line: text[..start].iter().filter(|&&b| b == b'\n').count() as u64 + 1,
        offset: start as u64,
        bytes: text[start..].to_vec(),
    })
}

/// Before appending after an interrupted write: a torn last line is appended to
/// `<file>.torn` (synced), then cut from the file, so the file ends with its last
/// complete row again. The complete rows are not touched (the file is only shortened
/// past its last newline) and the fragment is kept; appending after a torn line
/// without this would glue the next row onto it and damage both.
pub fn set_aside_torn_tail(path: &Path) -> Result<Option<TornTail>> {
    let io = |p: &Path, e| Error::io(p, e);
    let text = std::fs::read(path).map_err(|e| io(path, e))?;
    let Some(t) = torn_tail(&text) else {
        return Ok(None);
    };
    let mut aside_path = path.as_os_str().to_owned();
    aside_path.push(".torn");
    let aside_path = std::path::PathBuf::from(aside_path);
    let mut aside = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&aside_path)
        .map_err(|e| io(&aside_path, e))?;
    aside
        .write_all(&[t.bytes.as_slice(), b"\n"].concat())
        .and_then(|_| aside.sync_data())
        .map_err(|e| io(&aside_path, e))?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.set_len(t.offset)
        .and_then(|_| f.sync_data())
        .map_err(|e| io(path, e))?;
    Ok(Some(t))
}
