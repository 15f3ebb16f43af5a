//! `llm-mem validate`: the estimator on every row of a measurement table, against what
//! was measured, and how far off it is — per row, per source group, per framework,
//! per metric, and overall.
//!
//! - [`table`] reads and checks the table (the format of
//!   `tests/data/measured/public.csv`);
//! - [`mapping`] turns a row into the settings a user would pass (or the reason it
//!   cannot be estimated);
//! - [`validate`] runs the estimate of each mapped row (single GPU or per rank of the
//!   layout, the worst rank) and compares the figure its metric names;
//! - [`Summary`] / [`Group`]: shares within ±5/±10/±20% **of all rows** (an unsupported
//!   row is a miss), median and largest absolute error, the worst under-prediction.
//!
//! Pure: the caller resolves each model name to a spec (`resolve`), so the file and
//! Hub lookups stay in the CLI.

pub mod mapping;
pub mod table;

use std::collections::BTreeMap;

use crate::arch::ModelSpec;
use crate::distributed::estimate_layout;
use crate::error::Result;
use crate::estimate::{estimate_corrected, Correction, Peak};
use crate::units::bytes::GIB;
use crate::workload::settings::Settings;

pub use mapping::{Mapped, Metric};
pub use table::MeasuredRow;

/// What became of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Estimated {
        mapped: Mapped,
        /// The compared figure, GiB.
        estimated_gib: f64,
        /// estimated / measured − 1.
        rel_err: f64,
    },
    Unsupported {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    pub row: MeasuredRow,
    pub outcome: Outcome,
}

impl RowResult {
    pub fn rel_err(&self) -> Option<f64> {
        match &self.outcome {
            Outcome::Estimated { rel_err, .. } => Some(*rel_err),
            Outcome::Unsupported { .. } => None,
        }
    }
}

/// Accuracy over a set of rows; shares are fractions of *all* of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub rows: usize,
    pub supported: usize,
    pub within_5_pct: f64,
    pub within_10_pct: f64,
    pub within_20_pct: f64,
    /// Over the supported rows (`None` when there are none).
    pub median_abs_rel_err: Option<f64>,
    pub max_abs_rel_err: Option<f64>,
    /// The most negative relative error (an under-prediction: an OOM for the user), or
    /// `None` when no row is under-predicted.
    pub max_under_rel_err: Option<f64>,
    /// The row of `max_under_rel_err`.
    pub worst_under_id: Option<String>,
}

/// A summary of the rows sharing one value of a column.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// `source_group`, `framework` or `metric`.
    pub by: &'static str,
    pub value: String,
    pub summary: Summary,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub rows: Vec<RowResult>,
    pub summary: Summary,
    pub groups: Vec<Group>,
}

/// The columns rows are grouped by.
pub const GROUP_BY: [&str; 3] = ["source_group", "framework", "metric"];

/// Validates `rows`: `resolve` gives the spec of a row's `model` (an error makes the
/// row unsupported, with the message).
pub fn validate(rows: &[MeasuredRow], resolve: &dyn Fn(&str) -> Result<ModelSpec>) -> Validation {
    let results: Vec<RowResult> = rows
        .iter()
        .map(|r| RowResult {
            row: r.clone(),
            outcome: evaluate(r, resolve),
        })
        .collect();
    let summary = summarize(&results.iter().collect::<Vec<_>>());
    let mut groups = Vec::new();
    for by in GROUP_BY {
        let mut m: BTreeMap<String, Vec<&RowResult>> = BTreeMap::new();
        for r in &results {
            let v = match by {
                "source_group" => &r.row.source_group,
                "framework" => &r.row.framework,
                _ => &r.row.metric,
            };
            m.entry(v.clone()).or_default().push(r);
        }
        for (value, rs) in m {
            groups.push(Group {
                by,
                value,
                summary: summarize(&rs),
            });
        }
    }
    Validation {
        rows: results,
        summary,
        groups,
    }
}

fn evaluate(r: &MeasuredRow, resolve: &dyn Fn(&str) -> Result<ModelSpec>) -> Outcome {
    let unsupported = |reason: String| Outcome::Unsupported { reason };
    let spec = match resolve(&r.model) {
        Ok(s) => s,
        Err(e) => return unsupported(e.to_string()),
    };
    let mapped = match mapping::map(r, &spec) {
        Ok(m) => m,
        Err(reason) => return unsupported(reason),
    };
    let peak = match peak_of(&spec, &mapped) {
        Ok(p) => p,
        Err(e) => return unsupported(e.to_string()),
    };
    let bytes = match mapped.metric {
        Metric::Allocated => peak.allocated,
        Metric::Reserved => peak.reserved,
        Metric::Device => peak.device,
    };
    let estimated_gib = bytes.get() as f64 / GIB as f64;
    Outcome::Estimated {
        rel_err: estimated_gib / r.measured_gib - 1.0,
        estimated_gib,
        mapped,
    }
}

/// The estimate's peak for the mapped settings (the worst rank of a layout), exactly as
/// `llm-mem estimate` computes it.
fn peak_of(spec: &ModelSpec, m: &Mapped) -> Result<Peak> {
    let pairs: Vec<(&str, &str)> = m
        .settings
        .iter()
        .filter(|(k, _)| k != "model")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let settings = Settings::from_flags(&pairs)?;
    let run = settings.resolve(spec)?;
    let (w, ov, layout) = (&run.workload, &run.overheads, &run.layout);
    if layout.is_distributed() {
        let d = estimate_layout(spec, w, ov, layout, &Correction::IDENTITY)
            .map_err(|e| settings.attribute(e))?;
        Ok(d.worst().estimate.peak.clone())
    } else {
        Ok(estimate_corrected(spec, w, ov, &Correction::IDENTITY)
            .map_err(|e| settings.attribute(e))?
            .peak)
    }
}

/// The summary of `rs`.
pub fn summarize(rs: &[&RowResult]) -> Summary {
    let n = rs.len();
    let errs: Vec<f64> = rs.iter().filter_map(|r| r.rel_err()).collect();
    let share = |tol: f64| {
        if n == 0 {
            0.0
        } else {
            errs.iter().filter(|e| e.abs() <= tol).count() as f64 / n as f64
        }
    };
    let mut abs: Vec<f64> = errs.iter().map(|e| e.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let median = match abs.len() {
        0 => None,
        k if k % 2 == 1 => Some(abs[k / 2]),
        k => Some((abs[k / 2 - 1] + abs[k / 2]) / 2.0),
    };
    let under = rs
        .iter()
        .filter_map(|r| r.rel_err().map(|e| (e, &r.row.id)))
        .filter(|(e, _)| *e < 0.0)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    Summary {
        rows: n,
        supported: errs.len(),
        within_5_pct: share(0.05),
        within_10_pct: share(0.10),
        within_20_pct: share(0.20),
        median_abs_rel_err: median,
        max_abs_rel_err: abs.last().copied(),
        max_under_rel_err: under.map(|u| u.0),
        worst_under_id: under.map(|u| u.1.clone()),
    }
}

/// Bars a validation must clear (`llm-mem validate --min-within-10 ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bars {
    pub min_within_10_pct: Option<f64>,
    pub max_median_abs_rel_err: Option<f64>,
    /// The largest under-prediction allowed, as a positive fraction (0.15 = −15%).
    pub max_under: Option<f64>,
}

impl Bars {
    /// The bars `s` fails, in words (empty when it clears them all).
    pub fn failures(&self, s: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(min) = self.min_within_10_pct {
            if s.within_10_pct < min {
                out.push(format!(
                    "{:.1}% of rows within ±10%, below the bar of {:.1}%",
                    s.within_10_pct * 100.0,
                    min * 100.0
                ));
            }
        }
        if let Some(max) = self.max_median_abs_rel_err {
            match s.median_abs_rel_err {
                Some(m) if m <= max => {}
                m => out.push(format!(
                    "median absolute error {}, above the bar of {:.1}%",
                    m.map_or("n/a (no supported row)".into(), |m| format!(
                        "{:.1}%",
                        m * 100.0
                    )),
                    max * 100.0
                )),
            }
        }
        if let (Some(max), Some(u)) = (self.max_under, s.max_under_rel_err) {
            if -u > max {
                out.push(format!(
                    "row {} under-predicted by {:.1}%, beyond the bar of {:.1}%",
                    s.worst_under_id.as_deref().unwrap_or("?"),
                    -u * 100.0,
                    max * 100.0
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(id: &str, err: Option<f64>) -> RowResult {
        let row = MeasuredRow {
            id: id.into(),
            source_group: "g".into(),
            framework: "f".into(),
            ..table::sample_row()
        };
        let outcome = match err {
            Some(e) => Outcome::Estimated {
                mapped: Mapped {
                    settings: vec![],
                    metric: Metric::Allocated,
                    notes: vec![],
                },
                estimated_gib: 10.0 * (1.0 + e),
                rel_err: e,
            },
            None => Outcome::Unsupported { reason: "x".into() },
        };
        RowResult { row, outcome }
    }

    #[test]
    fn shares_count_unsupported_rows_as_misses_and_the_median_is_over_supported_ones() {
        let rs = [
            res("a", Some(0.01)),
            res("b", Some(-0.08)),
            res("c", Some(0.15)),
            res("d", Some(-0.30)),
            res("e", None),
        ];
        let s = summarize(&rs.iter().collect::<Vec<_>>());
        assert_eq!((s.rows, s.supported), (5, 4));
        assert_eq!(s.within_5_pct, 0.2);
        assert_eq!(s.within_10_pct, 0.4);
        assert_eq!(s.within_20_pct, 0.6);
        assert!((s.median_abs_rel_err.unwrap() - 0.115).abs() < 1e-12);
        assert_eq!(s.max_abs_rel_err, Some(0.30));
        assert_eq!(s.max_under_rel_err, Some(-0.30));
        assert_eq!(s.worst_under_id.as_deref(), Some("d"));
        let bars = Bars {
            min_within_10_pct: Some(0.8),
            max_median_abs_rel_err: Some(0.05),
            max_under: Some(0.15),
        };
        let f = bars.failures(&s);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[2].contains("row d under-predicted by 30.0%"), "{f:?}");
        let none = summarize(&[]);
        assert_eq!(
            (none.rows, none.within_10_pct, none.median_abs_rel_err),
            (0, 0.0, None)
        );
    }
}
