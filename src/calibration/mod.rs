//! Calibration: fit per-family correction factors from measurements, write and read
//! the calibration file, and turn an entry into an estimator [`Correction`].
//!
//! Model, per architecture family and runtime, over the points that ran:
//! `measured − static = α · (predicted − static) + β`, where `static` is the exact
//! static memory (weights, optimizer state, parameter gradients). α and β come from
//! ordinary least squares, with 95 % Student-t confidence intervals (n − 2 degrees of
//! freedom, statrs); R² and the leave-one-out maximum relative error of the corrected
//! total are reported with the number of points. A fit needs at least
//! [`MIN_POINTS`] points and a spread of predicted activations (one shape only gives
//! no slope): otherwise it is refused with a clear error.
//!
//! File (`calibration/<device>-<runtime>.json`, `schema_version` 1): provenance,
//! `families.<family>.{alpha, alpha_ci, beta_bytes, beta_ci, n_points, r2,
//! loo_max_rel_err}` and a `fallback` entry fitted over all families. Written
//! atomically (temporary file + rename).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

pub mod trace;

use crate::error::{Error, Result};
use crate::estimate::Correction;
use crate::probe::measurement::Row;
use crate::units::bytes::Bytes;

pub const SCHEMA_VERSION: u32 = 1;
/// The schema of files whose α scales only the decoder layers (`alpha_scope`), written
/// by the trace calibration; readers accept both.
pub const SCHEMA_VERSION_SCOPED: u32 = 2;

/// What α multiplies in the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlphaScope {
    /// Every activation-class byte (the probe's fit of whole-step peaks; schema 1).
    #[default]
    Activations,
    /// The decoder layers' activation bytes only, the non-layer part as the ledger has
    /// it (the trace probe's fit of depth 1 and 2 against the ledger; schema 2).
    DecoderLayers,
}

impl AlphaScope {
    fn is_default(&self) -> bool {
        *self == AlphaScope::Activations
    }
}
pub const MIN_POINTS: usize = 4;

/// Accepted α (the activation scale), fitted or loaded: an estimator off by more than
/// a factor 2 on activations has the wrong model for the family, which a correction
/// would hide (the CPU fits are within 0.02 % of 1).
pub const ALPHA_RANGE: [f64; 2] = [0.5, 2.0];
/// Accepted |β| (the allocator offset): 1 TiB, above the memory of any one device, and
/// far from overflow when added to a peak.
pub const MAX_BETA_BYTES: f64 = (1u64 << 40) as f64;
/// A fit must explain at least this share of the variance of the measured
/// activations (R²): below it the estimate's dependence on the shapes is wrong and a
/// line through it is no calibration. (The shipped CPU fits are above 0.99999.)
pub const MIN_R2: f64 = 0.95;

impl Entry {
    /// The rules every entry obeys, fitted or loaded: finite numbers, α in
    /// [`ALPHA_RANGE`], |β| ≤ [`MAX_BETA_BYTES`], each interval ordered around its
    /// value, at least [`MIN_POINTS`] points, R² in [[`MIN_R2`], 1], a LOO error ≥ 0.
    pub fn check(&self) -> std::result::Result<(), String> {
        let nums = [
            ("alpha", self.alpha),
            ("alpha_ci[0]", self.alpha_ci[0]),
            ("alpha_ci[1]", self.alpha_ci[1]),
            ("beta_bytes", self.beta_bytes),
            ("beta_ci[0]", self.beta_ci[0]),
            ("beta_ci[1]", self.beta_ci[1]),
            ("r2", self.r2),
            ("loo_max_rel_err", self.loo_max_rel_err),
        ];
        if let Some((k, v)) = nums.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("{k} {v}; accepted: a finite number"));
        }
        let [lo, hi] = ALPHA_RANGE;
        if !(lo..=hi).contains(&self.alpha) {
            return Err(format!(
                "alpha {}; accepted: {lo} ≤ α ≤ {hi} (a larger correction means the estimator is wrong for this family)",
                self.alpha
            ));
        }
        if self.beta_bytes.abs() > MAX_BETA_BYTES {
            return Err(format!(
                "beta_bytes {}; accepted: |β| ≤ {MAX_BETA_BYTES} bytes (1 TiB)",
                self.beta_bytes
            ));
        }
        for (k, ci, v) in [
            ("alpha_ci", self.alpha_ci, self.alpha),
            ("beta_ci", self.beta_ci, self.beta_bytes),
        ] {
            if !(ci[0] <= v && v <= ci[1]) {
                return Err(format!(
                    "{k} {ci:?} does not contain its value {v}; accepted: [low, high] with low ≤ value ≤ high"
                ));
            }
        }
        if self.n_points < MIN_POINTS {
            return Err(format!(
                "n_points {}; accepted: at least {MIN_POINTS}",
                self.n_points
            ));
        }
        if !(MIN_R2..=1.0 + 1e-12).contains(&self.r2) {
            return Err(format!(
                "r2 {:.5}; accepted: {MIN_R2} ≤ R² ≤ 1 (a poorer fit is no calibration: the estimate's shape dependence is off)",
                self.r2
            ));
        }
        if self.loo_max_rel_err < 0.0 {
            return Err(format!(
                "loo_max_rel_err {}; accepted: ≥ 0",
                self.loo_max_rel_err
            ));
        }
        Ok(())
    }
}

/// One fitted line `y = α x + β`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub alpha: f64,
    pub alpha_ci: [f64; 2],
    pub beta_bytes: f64,
    pub beta_ci: [f64; 2],
    pub n_points: usize,
    pub r2: f64,
    pub loo_max_rel_err: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    pub schema_version: u32,
    pub device: String,
    pub device_name: String,
    pub runtime: String,
    pub created: String,
    pub tool_version: String,
    pub git_commit: String,
    pub sources: Vec<String>,
    pub families: BTreeMap<String, Entry>,
    pub fallback: Option<Entry>,
    /// What α scales (absent in schema 1 files: every activation byte).
    #[serde(default, skip_serializing_if = "AlphaScope::is_default")]
    pub alpha_scope: AlphaScope,
}

/// `NVIDIA H100 80GB HBM3` → `h100`: the first word of a GPU's name after the vendor
/// and brand words, lower case.
pub fn gpu_slug(device_name: &str) -> Option<String> {
    device_name
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .find(|w| {
            !matches!(
                w.as_str(),
                "nvidia" | "tesla" | "geforce" | "quadro" | "rtx"
            )
        })
        .map(|w| {
            w.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
}

/// Least squares of `y = α x + β` with 95 % CIs; `totals[i]` and `offsets[i]` turn a
/// prediction of y back into the total the relative error is taken on.
pub fn fit_line(x: &[f64], y: &[f64], offsets: &[f64], what: &str) -> Result<Entry> {
    let n = x.len();
    let refuse = |reason: String| Error::Fit {
        what: what.into(),
        reason,
    };
    if n < MIN_POINTS {
        return Err(refuse(format!(
            "{n} points; at least {MIN_POINTS} are needed (α, β and their confidence intervals)"
        )));
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(refuse("non-finite values in the data".into()));
    }
    let (a, b, sxx) = ols(x, y);
    let mean_x = x.iter().sum::<f64>() / n as f64;
    let scale = x.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1.0);
    if sxx.sqrt() / (n as f64).sqrt() < 1e-3 * scale {
        return Err(refuse(
            "the design is ill-conditioned: the predicted activations barely vary across points (one shape only?); add shapes with different batch × sequence".into(),
        ));
    }
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let sse: f64 = x
        .iter()
        .zip(y)
        .map(|(xi, yi)| (yi - a * xi - b).powi(2))
        .sum();
    let sst: f64 = y.iter().map(|yi| (yi - mean_y).powi(2)).sum();
    let dof = (n - 2) as f64;
    let s2 = sse / dof;
    let se_a = (s2 / sxx).sqrt();
    let se_b = (s2 * (1.0 / n as f64 + mean_x * mean_x / sxx)).sqrt();
    let t = StudentsT::new(0.0, 1.0, dof)
        .map_err(|e| refuse(e.to_string()))?
        .inverse_cdf(0.975);
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { 1.0 };
    let mut loo = 0.0f64;
    for i in 0..n {
        let xs: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| x[j]).collect();
        let ys: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| y[j]).collect();
        let (ai, bi, _) = ols(&xs, &ys);
        let total = y[i] + offsets[i];
        let pred = ai * x[i] + bi + offsets[i];
        if total != 0.0 {
            loo = loo.max((pred - total).abs() / total.abs());
        }
    }
    let e = Entry {
        alpha: a,
        alpha_ci: [a - t * se_a, a + t * se_a],
        beta_bytes: b,
        beta_ci: [b - t * se_b, b + t * se_b],
        n_points: n,
        r2,
        loo_max_rel_err: loo,
    };
    e.check().map_err(refuse)?;
    Ok(e)
}

/// (slope, intercept, Sxx).
fn ols(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let a = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (a, my - a * mx, sxx)
}

/// The (x, y, offset) of a row: predicted and measured bytes above static.
pub fn design(r: &Row) -> (f64, f64, f64) {
    let s = r.static_total() as f64;
    (
        r.predicted_peak_bytes as f64 - s,
        r.measured_peak_bytes as f64 - s,
        s,
    )
}

/// Fit every family (and the fallback across families) from measurement rows.
pub fn fit(rows: &[Row], sources: Vec<String>) -> Result<CalibrationFile> {
    refuse_duplicates(rows)?;
    let ok: Vec<&Row> = rows.iter().filter(|r| r.ok()).collect();
    let first = ok.first().ok_or_else(|| Error::Fit {
        what: "calibration".into(),
        reason: "no successful measurement rows".into(),
    })?;
    for r in &ok {
        if r.device != first.device || r.runtime != first.runtime {
            return Err(Error::Fit {
                what: "calibration".into(),
                reason: format!(
                    "rows mix devices/runtimes ({}/{} and {}/{}); calibrate one device and runtime at a time",
                    first.device, first.runtime, r.device, r.runtime
                ),
            });
        }
    }
    let mut by_family: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &ok {
        by_family.entry(r.family.clone()).or_default().push(r);
    }
    let line = |rs: &[&Row], what: &str| -> Result<Entry> {
        let (mut x, mut y, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for r in rs {
            let (a, b, c) = design(r);
            x.push(a);
            y.push(b);
            o.push(c);
        }
        fit_line(&x, &y, &o, what)
    };
    let mut families = BTreeMap::new();
    for (f, rs) in &by_family {
        families.insert(f.clone(), line(rs, &format!("family {f}"))?);
    }
    let fallback = if by_family.len() > 1 {
        Some(line(&ok, "the fallback (all families)")?)
    } else {
        None
    };
    Ok(CalibrationFile {
        schema_version: SCHEMA_VERSION,
        device: first.device.clone(),
        device_name: first.device_name.clone(),
        runtime: first.runtime.clone(),
        created: crate::probe::today(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: first.git_commit.clone(),
        sources,
        families,
        fallback,
        alpha_scope: AlphaScope::Activations,
    })
}

/// Each point is one measurement: two rows with the same [`Row::shape_key`] (the
/// same file given twice, or a copied row) would count it twice and narrow the
/// intervals.
fn refuse_duplicates(rows: &[Row]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for r in rows {
        if !seen.insert(r.shape_key()) {
            return Err(Error::Fit {
                what: "calibration".into(),
                reason: format!(
                    "point {} of plan {} appears twice with the same shapes (the same file given twice, or a copied row?); each point counts once: give each measurement file once",
                    r.point, r.plan
                ),
            });
        }
    }
    Ok(())
}

impl CalibrationFile {
    /// `<device>-<runtime>.json`: `cpu-candle.json`; on a GPU the GPU's model from
    /// its name (`NVIDIA H100 80GB HBM3` → `h100-candle.json`), else `cuda0-...`.
    pub fn file_name(&self) -> String {
        let gpu = if self.device.starts_with("cuda") {
            gpu_slug(&self.device_name)
        } else {
            None
        };
        let dev = gpu.unwrap_or_else(|| self.device.replace(':', ""));
        format!("{dev}-{}.json", self.runtime)
    }

    /// Write atomically (a temporary file in the same folder, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let io = |p: &Path, e| Error::io(p, e);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        let text = serde_json::to_string_pretty(self).expect("serialisable") + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    pub fn parse(text: &str, path: &str) -> Result<CalibrationFile> {
        let bad = |m: String| Error::Calibration {
            path: path.into(),
            message: m,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let accepted = format!("{SCHEMA_VERSION} or {SCHEMA_VERSION_SCOPED}");
        let version = match v.get("schema_version") {
            Some(s) if s.as_u64() == Some(SCHEMA_VERSION as u64) => SCHEMA_VERSION,
            Some(s) if s.as_u64() == Some(SCHEMA_VERSION_SCOPED as u64) => SCHEMA_VERSION_SCOPED,
            Some(s) if s.as_u64().is_some() => {
                return Err(bad(format!(
                    "schema_version {s} is not supported; accepted: {accepted}"
                )))
            }
            Some(s) => {
                return Err(bad(format!(
                    "schema_version {s}; accepted: the integer {accepted} (not a string or another number)"
                )))
            }
            None => return Err(bad(format!("no schema_version; accepted: {accepted}"))),
        };
        let f: CalibrationFile = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        let want = if f.alpha_scope == AlphaScope::Activations {
            SCHEMA_VERSION
        } else {
            SCHEMA_VERSION_SCOPED
        };
        if version != want {
            return Err(bad(format!(
                "schema_version {version} with alpha_scope {:?}; accepted: schema_version {want} for it",
                f.alpha_scope
            )));
        }
        let fallback_name = "fallback".to_string();
        let entries = f
            .families
            .iter()
            .chain(f.fallback.iter().map(|e| (&fallback_name, e)));
        for (name, e) in entries {
            e.check().map_err(|m| bad(format!("{name}: {m}")))?;
        }
        if f.runtime.parse::<crate::workload::Runtime>().is_err() {
            return Err(bad(format!(
                "runtime {:?}; accepted: {}",
                f.runtime,
                crate::workload::Runtime::accepted()
            )));
        }
        if f.families.is_empty() {
            return Err(bad("no families".into()));
        }
        Ok(f)
    }

    pub fn load(path: &Path) -> Result<CalibrationFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        CalibrationFile::parse(&text, &path.display().to_string())
    }

    /// The entry for `family` (else the fallback) and a note saying which was used.
    pub fn entry(&self, family: &str) -> Result<(&Entry, String)> {
        if let Some(e) = self.families.get(family) {
            return Ok((e, format!("family {family}")));
        }
        match &self.fallback {
            Some(e) => Ok((
                e,
                format!(
                    "no entry for family {family}: using the fallback fitted over {}",
                    self.families.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            None => Err(Error::invalid(
                "calibration family",
                family,
                format!(
                    "{} (the file has no fallback entry)",
                    self.families.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The estimator correction for `family` on `runtime`, with a note for the user.
    pub fn to_correction(&self, family: &str, runtime: &str) -> Result<(Correction, String)> {
        if runtime != self.runtime {
            return Err(Error::invalid(
                "--runtime",
                runtime,
                format!(
                    "{} with this calibration file (it was fitted on the {} runtime; use a calibration fitted on {runtime})",
                    self.runtime, self.runtime
                ),
            ));
        }
        let (e, which) = self.entry(family)?;
        let beta = e.beta_bytes.round();
        let mut note = format!(
            "calibrated: {} ({}), {} points, {} — {which}: α = {:.4}, β = {}",
            self.device,
            self.device_name,
            e.n_points,
            self.created,
            e.alpha,
            signed_bytes(beta)
        );
        if beta < 0.0 {
            note += " (negative β not applied: the estimator adds overhead only)";
        }
        if self.alpha_scope == AlphaScope::DecoderLayers {
            note += " (α on the decoder layers' activations)";
        }
        Ok((
            Correction {
                activation_scale: e.alpha,
                layers_only: self.alpha_scope == AlphaScope::DecoderLayers,
                extra_overhead: Bytes(beta.max(0.0) as u64),
            },
            note,
        ))
    }
}

fn signed_bytes(b: f64) -> String {
    if b < 0.0 {
        format!("-{}", Bytes((-b) as u64))
    } else {
        Bytes(b as u64).to_string()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn gpu_file_names_use_the_gpu_model() {
        assert_eq!(gpu_slug("NVIDIA H100 80GB HBM3").as_deref(), Some("h100"));
        assert_eq!(gpu_slug("NVIDIA H200").as_deref(), Some("h200"));
        assert_eq!(gpu_slug("NVIDIA GeForce RTX 4090").as_deref(), Some("4090"));
        assert_eq!(gpu_slug("").as_deref(), None);
    }

    use super::*;

    /// Textbook case (hand-computed): x = 1..5, y = 2.2, 4.1, 6.1, 7.9, 10.2.
    /// x̄ = 3, ȳ = 6.1, Sxx = 10, Sxy = 19.8 → α = 1.98, β = 0.16.
    /// Residuals 0.06, -0.02, 0.0, -0.18, 0.14 → SSE = 0.056, s² = 0.056/3,
    /// se(α) = √(s²/10) = 0.0432049, t(0.975, 3) = 3.182446 → α ± 0.137496.
    /// se(β) = √(s²(1/5 + 9/10)) = 0.1432946 → β ± 0.456026. SST = 39.26 →
    /// R² = 1 − 0.056/39.26 = 0.998574.
    #[test]
    fn textbook_fit() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.2, 4.1, 6.1, 7.9, 10.2];
        let e = fit_line(&x, &y, &[0.0; 5], "t").unwrap();
        assert!((e.alpha - 1.98).abs() < 1e-12);
        assert!((e.beta_bytes - 0.16).abs() < 1e-12);
        assert!(
            (e.alpha_ci[1] - e.alpha - 0.137496).abs() < 1e-5,
            "{:?}",
            e.alpha_ci
        );
        assert!(
            (e.beta_ci[1] - e.beta_bytes - 0.456026).abs() < 1e-5,
            "{:?}",
            e.beta_ci
        );
        assert!((e.r2 - 0.998574).abs() < 1e-6);
        assert_eq!(e.n_points, 5);
        // leave out x = 1: the other four (x̄ = 3.5, ȳ = 7.075, Sxx = 5, Sxy = 10.05)
        // give y = 2.01x + 0.04 → 2.05 vs 2.2: 6.818 %. (x = 2: 0.70 %, x = 3: 0 %,
        // x = 4: 3.26 %, x = 5: 3.43 %.)
        assert!(
            (e.loo_max_rel_err - 0.068182).abs() < 1e-5,
            "{}",
            e.loo_max_rel_err
        );
    }

    #[test]
    fn exact_line_has_zero_width_intervals() {
        let x = [10.0, 20.0, 30.0, 40.0];
        let y: Vec<f64> = x.iter().map(|v| 1.5 * v - 3.0).collect();
        let e = fit_line(&x, &y, &[0.0; 4], "t").unwrap();
        assert!((e.alpha - 1.5).abs() < 1e-12 && (e.beta_bytes + 3.0).abs() < 1e-9);
        assert!((e.alpha_ci[1] - e.alpha_ci[0]).abs() < 1e-9);
        assert!((e.r2 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn refuses_too_few_points_and_one_shape() {
        let e = fit_line(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], &[0.0; 3], "f").unwrap_err();
        assert!(e.to_string().contains("at least 4"), "{e}");
        let e = fit_line(&[5.0; 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[0.0; 6], "f").unwrap_err();
        assert!(e.to_string().contains("ill-conditioned"), "{e}");
    }

    fn file() -> CalibrationFile {
        let mut families = BTreeMap::new();
        families.insert(
            "llama".to_string(),
            Entry {
                alpha: 1.01,
                alpha_ci: [1.0, 1.02],
                beta_bytes: 1000.0,
                beta_ci: [500.0, 1500.0],
                n_points: 8,
                r2: 0.999,
                loo_max_rel_err: 0.01,
            },
        );
        CalibrationFile {
            schema_version: 1,
            device: "cpu".into(),
            device_name: "x".into(),
            runtime: "candle".into(),
            created: "2025-01-01".into(),
            tool_version: "0".into(),
            git_commit: "abc".into(),
            sources: vec![],
            fallback: Some(families["llama"].clone()),
            alpha_scope: AlphaScope::Activations,
            families,
        }
    }

    #[test]
    fn m9_fits_with_a_negative_slope_or_a_poor_r2_are_refused() {
        let x = [1.0e6, 2.0e6, 3.0e6, 4.0e6, 5.0e6];
        let cases: [(&str, [f64; 5], &str); 3] = [
            (
                "negative α",
                [5.0e6, 4.0e6, 3.0e6, 2.0e6, 1.0e6],
                "alpha -1",
            ),
            ("α = 0 (every peak the same)", [7.0e6; 5], "alpha 0"),
            ("noise", [1.0e6, 9.0e6, 2.0e6, 8.0e6, 6.0e6], "r2"),
        ];
        for (what, y, named) in cases {
            let e = fit_line(&x, &y, &[0.0; 5], "family t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(named) && e.contains("accepted"), "{what}: {e}");
        }
        assert_eq!(cases.len(), 3);
    }

    #[test]
    fn m4_out_of_range_alpha_and_beta_are_refused_on_load() {
        let text = serde_json::to_string(&file()).unwrap();
        let cases = [
            ("\"alpha\":1.01", "\"alpha\":1e12", "alpha 1000000000000"),
            ("\"alpha\":1.01", "\"alpha\":0.0", "alpha 0"),
            (
                "\"beta_bytes\":1000.0",
                "\"beta_bytes\":1e20",
                "beta_bytes 100000000000000000000",
            ),
        ];
        for (from, to, named) in cases {
            let bad = text.replace(from, to);
            assert_ne!(bad, text);
            let e = CalibrationFile::parse(&bad, "c.json")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("c.json") && e.contains(named) && e.contains("accepted"),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn l18_calibration_file_messages_say_what_is_wrong() {
        let text = serde_json::to_string(&file()).unwrap();
        let cases = [
            (
                "\"schema_version\":1",
                "\"schema_version\":\"1\"",
                "schema_version \"1\"; accepted: the integer 1",
            ),
            (
                "\"runtime\":\"candle\"",
                "\"runtime\":\"jax\"",
                "runtime \"jax\"; accepted",
            ),
            (
                "\"alpha_ci\":[1.0,1.02]",
                "\"alpha_ci\":[2.0,1.0]",
                "alpha_ci [2.0, 1.0] does not contain",
            ),
            (
                "\"n_points\":8",
                "\"n_points\":0",
                "n_points 0; accepted: at least 4",
            ),
        ];
        let mut checked = 0;
        for (from, to, named) in cases {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            let e = CalibrationFile::parse(&bad, "c.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{to}: {e}");
            checked += 1;
        }
        assert_eq!(checked, 4);
        let e = file()
            .to_correction("llama", "torch")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--runtime \"torch\"") && e.contains("fitted on the candle runtime"),
            "{e}"
        );
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let f = file();
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(CalibrationFile::parse(&text, "c.json").unwrap(), f);
        let e = CalibrationFile::parse("{not json", "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("not JSON"), "{e}");
        let wrong = text.replace("\"schema_version\":1", "\"schema_version\":7");
        let e = CalibrationFile::parse(&wrong, "c.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("schema_version 7") && e.contains("accepted: 1"),
            "{e}"
        );
        let nan = text.replace("\"alpha\":1.01", "\"alpha\":-1.0");
        assert!(CalibrationFile::parse(&nan, "c.json").is_err());
        let (c, note) = f.to_correction("gpt2", "candle").unwrap();
        assert!(note.contains("fallback"), "{note}");
        assert_eq!(c.extra_overhead, Bytes(1000));
        let e = f.to_correction("llama", "torch").unwrap_err().to_string();
        assert!(e.contains("candle"), "{e}");
    }
}

/// One point as the reports show it (derived from a measurement row).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub point: String,
    /// The measured model's scaled shape: `L2 h128 a4/2 i256 v512` (layers, hidden,
    /// heads / kv heads, intermediate, vocab).
    pub shape: String,
    pub family: String,
    pub status: String,
    pub measured: u64,
    pub estimated: u64,
    /// Estimate with the calibration applied (static + α·(estimated − static) + β).
    pub calibrated: Option<u64>,
}

impl Comparison {
    /// Relative error of the uncalibrated estimate ((est − measured) / measured).
    pub fn err_before(&self) -> Option<f64> {
        (self.status == "ok" && self.measured > 0)
            .then(|| (self.estimated as f64 - self.measured as f64) / self.measured as f64)
    }
    pub fn err_after(&self) -> Option<f64> {
        match (self.calibrated, self.status == "ok" && self.measured > 0) {
            (Some(c), true) => Some((c as f64 - self.measured as f64) / self.measured as f64),
            _ => None,
        }
    }
}

/// Compare every row's estimate with its measurement, optionally calibrated.
pub fn compare(rows: &[Row], cal: Option<&CalibrationFile>) -> Vec<Comparison> {
    rows.iter()
        .map(|r| {
            let calibrated = cal.and_then(|c| c.entry(&r.family).ok()).map(|(e, _)| {
                let (x, _, s) = design(r);
                (s + e.alpha * x + e.beta_bytes).round().max(0.0) as u64
            });
            Comparison {
                point: r.point.clone(),
                shape: format!(
                    "L{} h{} a{}/{} i{} v{}",
                    r.layers, r.hidden, r.heads, r.kv_heads, r.intermediate, r.vocab
                ),
                family: r.family.clone(),
                status: r.status.clone(),
                measured: r.measured_peak_bytes,
                estimated: r.predicted_peak_bytes,
                calibrated,
            }
        })
        .collect()
}

/// Median and maximum of |x|.
pub fn median_max_abs(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().map(|x| x.abs()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[n - 1]))
}
