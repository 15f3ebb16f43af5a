//! `llm-mem validate --svg`: estimated vs measured GiB per row, the y = x line and the
//! ±10% band, one colour per framework (unsupported rows are not drawn; the caption
//! counts them).

use super::probe_svg::{esc, nice_step, PALETTE};
use crate::validate::{Outcome, Validation};

pub fn render(title: &str, v: &Validation) -> String {
    let pts: Vec<(f64, f64, &str, &str)> = v
        .rows
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Estimated { estimated_gib, .. } => Some((
                r.row.measured_gib,
                *estimated_gib,
                r.row.framework.as_str(),
                r.row.id.as_str(),
            )),
            Outcome::Unsupported { .. } => None,
        })
        .collect();
    let mut frameworks: Vec<&str> = Vec::new();
    for p in &pts {
        if !frameworks.contains(&p.2) {
            frameworks.push(p.2);
        }
    }
    let max = pts.iter().map(|p| p.0.max(p.1)).fold(1.0f64, f64::max) * 1.05;
    let step = nice_step(max);
    let top = (max / step).ceil() * step;
    let (x0, y0, pw, ph) = (70.0, 40.0, 520.0, 520.0);
    let x = |g: f64| x0 + g / top * pw;
    let y = |g: f64| y0 + ph - g / top * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"640\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"800\" height=\"640\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"22\" font-size=\"15\">{}</text>\n",
        x0,
        esc(title)
    );
    // ±10% band and y = x
    s.push_str(&format!(
        "<polygon points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"#e8e8e8\"/>\n",
        x(0.0),
        y(0.0),
        x(top / 1.1),
        y(top),
        x(top),
        y(top),
        x(top),
        y(top * 0.9)
    ));
    s.push_str(&format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n",
        x(0.0),
        y(0.0),
        x(top),
        y(top)
    ));
    // axes and ticks
    s.push_str(&format!(
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n"
    ));
    let mut t = 0.0;
    while t <= top + 1e-9 {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>\n",
            x(t),
            y0 + ph + 16.0,
            x0 - 6.0,
            y(t) + 4.0
        ));
        t += step;
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">measured GiB per GPU</text>\n\
         <text x=\"18\" y=\"{:.1}\" transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\">estimated GiB per GPU</text>\n",
        x0 + pw / 2.0,
        y0 + ph + 36.0,
        y0 + ph / 2.0,
        y0 + ph / 2.0
    ));
    for p in &pts {
        let c = PALETTE[frameworks.iter().position(|f| *f == p.2).unwrap_or(0) % PALETTE.len()];
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\" fill-opacity=\"0.8\"><title>{} ({}): measured {:.2}, estimated {:.2} GiB</title></circle>\n",
            x(p.0),
            y(p.1),
            esc(p.3),
            esc(p.2),
            p.0,
            p.1
        ));
    }
    // legend
    for (i, f) in frameworks.iter().enumerate() {
        let ly = y0 + 10.0 + i as f64 * 18.0;
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{ly:.1}\" r=\"5\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            x0 + pw + 30.0,
            PALETTE[i % PALETTE.len()],
            x0 + pw + 42.0,
            ly + 4.0,
            esc(f)
        ));
    }
    let sm = &v.summary;
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\">{} rows, {} estimated; {:.0}% of all rows within ±10% (grey band)</text>\n</svg>\n",
        x0,
        y0 + ph + 56.0,
        sm.rows,
        sm.supported,
        sm.within_10_pct * 100.0
    ));
    s
}
