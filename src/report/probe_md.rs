//! Probe report as Markdown: one table row per point, then the error summary.

use crate::calibration::{median_max_abs, CalibrationFile, Comparison};
use crate::units::bytes::Bytes;

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:+.2} %", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// The report: title and sources, the calibration's fits (when given), one row per
/// point, then the error summary.
pub fn render(
    title: &str,
    sources: &[String],
    cmp: &[Comparison],
    cal: Option<&CalibrationFile>,
) -> String {
    let mut s = format!("# Probe report: {title}\n\n");
    s += &format!("Measurements: {}\n\n", sources.join(", "));
    if let Some(c) = cal {
        s += &calibration_table(c);
    }
    s += &points_table(cmp);
    s += &summary(cmp);
    s
}

/// The calibration in one line, then one row per family fit (and the fallback).
fn calibration_table(c: &CalibrationFile) -> String {
    let mut s = format!(
        "Calibration: {} / {} ({}), {} — {} families{}\n\n",
        c.device,
        c.runtime,
        c.device_name,
        c.created,
        c.families.len(),
        if c.fallback.is_some() {
            " + fallback"
        } else {
            ""
        }
    );
    s += "| family | α | α 95 % CI | β | β 95 % CI | points | R² | LOO max rel. err |\n|---|---|---|---|---|---|---|---|\n";
    let fb = c
        .fallback
        .iter()
        .map(|e| ("fallback".to_string(), e.clone()));
    for (f, e) in c
        .families
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(fb)
    {
        s += &format!(
            "| {f} | {:.4} | [{:.4}, {:.4}] | {:.0} B | [{:.0}, {:.0}] B | {} | {:.5} | {:.2} % |\n",
            e.alpha, e.alpha_ci[0], e.alpha_ci[1], e.beta_bytes, e.beta_ci[0], e.beta_ci[1], e.n_points, e.r2, e.loo_max_rel_err * 100.0
        );
    }
    s += "\n";
    s
}

/// One row per point: status, its scaled shape, measured and estimated bytes (in the
/// unit that fits them), the errors before and after calibration ("–" where there is
/// no value).
fn points_table(cmp: &[Comparison]) -> String {
    let mut s = String::from("| point | status | scaled shape | measured | estimated | error before | calibrated | error after |\n|---|---|---|---|---|---|---|---|\n");
    for c in cmp {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.point,
            c.status,
            c.shape,
            if c.status == "ok" {
                Bytes(c.measured).human()
            } else {
                "–".into()
            },
            Bytes(c.estimated).human(),
            pct(c.err_before()),
            c.calibrated
                .map(|b| Bytes(b).human())
                .unwrap_or_else(|| "–".into()),
            pct(c.err_after()),
        );
    }
    s
}

/// The counts of points, then the median and max |error| before and after calibration.
fn summary(cmp: &[Comparison]) -> String {
    let before: Vec<f64> = cmp.iter().filter_map(|c| c.err_before()).collect();
    let after: Vec<f64> = cmp.iter().filter_map(|c| c.err_after()).collect();
    let mut s = String::from("\n## Summary\n\n");
    s += &format!(
        "{} points, {} measured, {} failed.\n\n",
        cmp.len(),
        before.len(),
        cmp.iter().filter(|c| c.status != "ok").count()
    );
    s += &error_line("before", &before);
    s += &error_line("after", &after);
    s
}

/// `- {when} calibration: median |error| …, max |error| …`, or nothing without errors.
fn error_line(when: &str, errors: &[f64]) -> String {
    match median_max_abs(errors) {
        Some((m, x)) => format!(
            "- {when} calibration: median |error| {:.3} %, max |error| {:.3} %\n",
            m * 100.0,
            x * 100.0
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L14: bytes in the unit that fits them and the scaled shape in the table.
    #[test]
    fn l14_table_shows_adapted_units_and_the_scaled_shape() {
        let c = Comparison {
            point: "mistral-7b-v0.1/full/b1/s32".into(),
            shape: "L2 h128 a4/2 i256 v512".into(),
            family: "mistral".into(),
            status: "ok".into(),
            measured: 3 << 20,
            estimated: (3 << 20) + 5000,
            calibrated: Some(900),
        };
        let s = points_table(&[c]);
        assert!(s.contains("| L2 h128 a4/2 i256 v512 |"), "{s}");
        assert!(s.contains("3.00 MiB") && s.contains("900 B"), "{s}");
        assert!(!s.contains("0.00 GiB"), "{s}");
    }
}
