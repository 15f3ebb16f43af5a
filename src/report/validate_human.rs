//! `llm-mem validate` as a terminal table: one line per row, then the unsupported rows
//! with their reasons, the summaries by group and the overall summary.

use crate::validate::{Outcome, Summary, Validation, GROUP_BY};

fn line(label: &str, s: &Summary) -> String {
    format!(
        "{label:28} {:>4} {:>4} {:>5.0}% {:>5.0}% {:>5.0}% {:>8} {:>8} {:>9}\n",
        s.rows,
        s.supported,
        s.within_5_pct * 100.0,
        s.within_10_pct * 100.0,
        s.within_20_pct * 100.0,
        s.median_abs_rel_err
            .map_or("–".into(), |e| format!("{:.1}%", e * 100.0)),
        s.max_abs_rel_err
            .map_or("–".into(), |e| format!("{:.1}%", e * 100.0)),
        s.max_under_rel_err
            .map_or("–".into(), |e| format!("{:+.1}%", e * 100.0)),
    )
}

pub fn render(v: &Validation, verbose: bool) -> String {
    let mut s = format!(
        "{:24} {:30} {:12} {:10} {:>9} {:>9} {:>8}\n",
        "id", "model", "framework", "metric", "measured", "estimated", "error"
    );
    for r in &v.rows {
        if let Outcome::Estimated {
            estimated_gib,
            rel_err,
            mapped,
        } = &r.outcome
        {
            let m = &r.row;
            s.push_str(&format!(
                "{:24} {:30} {:12} {:10} {:>9.2} {:>9.2} {:>+7.1}%\n",
                m.id,
                m.model,
                m.framework,
                m.metric,
                m.measured_gib,
                estimated_gib,
                rel_err * 100.0
            ));
            if verbose {
                s.push_str(&format!("    {}\n", mapped.command()));
                for n in &mapped.notes {
                    s.push_str(&format!("    note: {n}\n"));
                }
            }
        }
    }
    let unsupported: Vec<_> = v
        .rows
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Unsupported { reason } => Some((&r.row.id, reason)),
            _ => None,
        })
        .collect();
    if !unsupported.is_empty() {
        s.push_str(&format!(
            "\nnot estimated ({}, counted as misses):\n",
            unsupported.len()
        ));
        for (id, why) in unsupported {
            s.push_str(&format!("  {id:24} {why}\n"));
        }
    }
    let head = format!(
        "\n{:28} {:>4} {:>4} {:>6} {:>6} {:>6} {:>8} {:>8} {:>9}\n",
        "", "rows", "est", "±5%", "±10%", "±20%", "median", "max abs", "worst"
    );
    for by in GROUP_BY {
        s.push_str(&head.replacen(&" ".repeat(28), &format!("{:28}", format!("by {by}")), 1));
        for g in v.groups.iter().filter(|g| g.by == by) {
            s.push_str(&line(&g.value, &g.summary));
        }
    }
    s.push_str(&head);
    s.push_str(&line("all rows", &v.summary));
    if let (Some(id), Some(e)) = (&v.summary.worst_under_id, v.summary.max_under_rel_err) {
        s.push_str(&format!(
            "worst under-prediction: {id} ({:+.1}%)\n",
            e * 100.0
        ));
    }
    s
}
