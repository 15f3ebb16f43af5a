//! `llm-mem validate --json` (schema_version 1): `summary` (`rows`, `supported`,
//! `within_5_pct` / `within_10_pct` / `within_20_pct` as fractions of all rows,
//! `median_abs_rel_err`, `max_abs_rel_err`, `max_under_rel_err`, `worst_under_id`),
//! `groups[]` (`by`, `value`, the same summary) and `rows[]` (the row's columns that
//! identify it, `measured_gib`, `status` `estimated` | `unsupported`, then
//! `estimated_gib`, `rel_err`, `abs_rel_err`, `compared` (allocated | reserved |
//! device), `settings`, `command`, `notes`, or `reason`).

use serde_json::{json, Value};

use crate::validate::{Outcome, Summary, Validation};

fn summary(s: &Summary) -> Value {
    json!({
        "rows": s.rows,
        "supported": s.supported,
        "within_5_pct": s.within_5_pct,
        "within_10_pct": s.within_10_pct,
        "within_20_pct": s.within_20_pct,
        "median_abs_rel_err": s.median_abs_rel_err,
        "max_abs_rel_err": s.max_abs_rel_err,
        "max_under_rel_err": s.max_under_rel_err,
        "worst_under_id": s.worst_under_id,
    })
}

pub fn render(v: &Validation) -> String {
    let rows: Vec<Value> = v
        .rows
        .iter()
        .map(|r| {
            let m = &r.row;
            let mut o = json!({
                "id": m.id,
                "source_group": m.source_group,
                "model": m.model,
                "task": m.task,
                "method": m.method,
                "framework": m.framework,
                "metric": m.metric,
                "measured_gib": m.measured_gib,
            });
            let extra = match &r.outcome {
                Outcome::Estimated {
                    mapped,
                    estimated_gib,
                    rel_err,
                } => json!({
                    "status": "estimated",
                    "estimated_gib": estimated_gib,
                    "rel_err": rel_err,
                    "abs_rel_err": rel_err.abs(),
                    "compared": mapped.metric.as_str(),
                    "settings": mapped.settings.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                    "command": mapped.command(),
                    "notes": mapped.notes,
                }),
                Outcome::Unsupported { reason } => json!({
                    "status": "unsupported",
                    "reason": reason,
                }),
            };
            if let (Value::Object(a), Value::Object(b)) = (&mut o, extra) {
                a.extend(b);
            }
            o
        })
        .collect();
    let groups: Vec<Value> = v
        .groups
        .iter()
        .map(|g| json!({"by": g.by, "value": g.value, "summary": summary(&g.summary)}))
        .collect();
    let doc = json!({
        "schema_version": 1,
        "summary": summary(&v.summary),
        "groups": groups,
        "rows": rows,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
