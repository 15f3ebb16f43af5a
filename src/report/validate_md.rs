//! `llm-mem validate --markdown`: the summary, the summaries by source group, framework
//! and metric, then every row (estimated ones with their error, unsupported ones with
//! the reason).

use crate::validate::{Outcome, Summary, Validation, GROUP_BY};

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |e| format!("{:+.1}%", e * 100.0))
}

fn abs_pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |e| format!("{:.1}%", e * 100.0))
}

fn summary_cells(s: &Summary) -> String {
    format!(
        "{} | {} | {:.0}% | {:.0}% | {:.0}% | {} | {} | {} |",
        s.rows,
        s.supported,
        s.within_5_pct * 100.0,
        s.within_10_pct * 100.0,
        s.within_20_pct * 100.0,
        abs_pct(s.median_abs_rel_err),
        abs_pct(s.max_abs_rel_err),
        pct(s.max_under_rel_err),
    )
}

const HEAD: &str = "rows | estimated | ±5% | ±10% | ±20% | median abs | max abs | worst under |";
const RULE: &str = "---|---|---|---|---|---|---|---|";

pub fn render(title: &str, source: &str, v: &Validation) -> String {
    let mut s = format!(
        "# {title}\n\nMeasurements: `{source}`. Shares are of **all** rows (an unsupported row is a miss); \
         errors are estimated / measured − 1 over the estimated rows.\n\n\
         | {HEAD}\n|{RULE}\n| {}\n",
        summary_cells(&v.summary)
    );
    for by in GROUP_BY {
        s.push_str(&format!("\n## By {by}\n\n| {by} | {HEAD}\n|---|{RULE}\n"));
        for g in v.groups.iter().filter(|g| g.by == by) {
            s.push_str(&format!("| {} | {}\n", g.value, summary_cells(&g.summary)));
        }
    }
    s.push_str(
        "\n## Rows\n\n| id | model | task / method | framework | metric | measured GiB | estimated GiB | error | abs error | note |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &v.rows {
        let m = &r.row;
        let what = format!("{} / {}", m.task, m.method);
        match &r.outcome {
            Outcome::Estimated {
                estimated_gib,
                rel_err,
                mapped,
            } => s.push_str(&format!(
                "| {} | {} | {what} | {} | {} → {} | {:.2} | {:.2} | {:+.1}% | {:.1}% | {} |\n",
                m.id,
                m.model,
                m.framework,
                m.metric,
                mapped.metric.as_str(),
                m.measured_gib,
                estimated_gib,
                rel_err * 100.0,
                rel_err.abs() * 100.0,
                mapped.notes.join("; ").replace('|', "/")
            )),
            Outcome::Unsupported { reason } => s.push_str(&format!(
                "| {} | {} | {what} | {} | {} | {:.2} | – | unsupported | – | {} |\n",
                m.id,
                m.model,
                m.framework,
                m.metric,
                m.measured_gib,
                reason.replace('|', "/").replace('\n', " ")
            )),
        }
    }
    s
}
