//! Probe report as SVG: estimated vs measured peak (MiB) with the y = x line.

use crate::calibration::Comparison;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(title: &str, cmp: &[Comparison]) -> String {
    let (w, h, m) = (640.0, 640.0, 70.0);
    let ok: Vec<&Comparison> = cmp.iter().filter(|c| c.status == "ok").collect();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let max = ok
        .iter()
        .flat_map(|c| {
            [
                mib(c.measured),
                mib(c.estimated),
                c.calibrated.map(mib).unwrap_or(0.0),
            ]
        })
        .fold(1.0, f64::max)
        * 1.05;
    let sx = |v: f64| m + v / max * (w - 2.0 * m);
    let sy = |v: f64| h - m - v / max * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    // axes and ticks
    s += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m,
        h - m
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v:.1}</text>\n",
            sx(v),
            h - m + 18.0
        );
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            m - 6.0,
            sy(v) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">measured peak (MiB)</text>\n",
        w / 2.0,
        h - 20.0
    );
    s += &format!("<text x=\"20\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {})\">estimated peak (MiB)</text>\n", h / 2.0, h / 2.0);
    // y = x
    s += &format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>\n",
        sx(0.0), sy(0.0), sx(max), sy(max)
    );
    for c in &ok {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#1f77b4\"><title>{}: estimated</title></circle>\n",
            sx(mib(c.measured)), sy(mib(c.estimated)), esc(&c.point)
        );
        if let Some(cb) = c.calibrated {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"none\" stroke=\"#d62728\"><title>{}: calibrated</title></circle>\n",
                sx(mib(c.measured)), sy(mib(cb)), esc(&c.point)
            );
        }
    }
    s += &format!("<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"#1f77b4\"/><text x=\"{}\" y=\"{}\">estimated</text>\n", m + 10.0, m + 10.0, m + 20.0, m + 14.0);
    s += &format!("<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"none\" stroke=\"#d62728\"/><text x=\"{}\" y=\"{}\">calibrated</text>\n", m + 10.0, m + 28.0, m + 20.0, m + 32.0);
    s += "</svg>\n";
    s
}
