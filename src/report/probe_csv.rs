//! Probe report as CSV: one row per point with measured, estimated and errors.

use crate::calibration::Comparison;

pub fn render(cmp: &[Comparison]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "point",
        "family",
        "status",
        "measured_bytes",
        "estimated_bytes",
        "error_before",
        "calibrated_bytes",
        "error_after",
    ])
    .expect("in-memory CSV");
    let f = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
    for c in cmp {
        w.write_record([
            c.point.clone(),
            c.family.clone(),
            c.status.clone(),
            c.measured.to_string(),
            c.estimated.to_string(),
            f(c.err_before()),
            c.calibrated.map(|b| b.to_string()).unwrap_or_default(),
            f(c.err_after()),
        ])
        .expect("in-memory CSV");
    }
    String::from_utf8(w.into_inner().expect("in-memory CSV")).expect("UTF-8")
}
