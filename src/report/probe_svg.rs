//! Probe report as SVG, two panels: estimated vs measured peak (MiB) with the y = x
//! line, and the relative error vs the measured peak (where errors of a fraction of a
//! percent are visible). Ticks fall on round values; each family has its colour.

use crate::calibration::Comparison;

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Colours for families, in order of first appearance (Tableau 10).
pub(crate) const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A round tick step (1, 2 or 5 × 10^k) giving about five ticks up to `max`.
pub fn nice_step(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// One panel's frame: the plot area `[x0, x0 + pw] × [y0, y0 + ph]` and its ranges.
struct Panel {
    x0: f64,
    y0: f64,
    pw: f64,
    ph: f64,
    xmax: f64,
    ymin: f64,
    ymax: f64,
}

impl Panel {
    fn x(&self, v: f64) -> f64 {
        self.x0 + v / self.xmax * self.pw
    }
    fn y(&self, v: f64) -> f64 {
        self.y0 + self.ph - (v - self.ymin) / (self.ymax - self.ymin) * self.ph
    }
    /// Axes, round ticks on both, and the axis labels.
    fn frame(&self, xlabel: &str, ylabel: &str, ystep: f64) -> String {
        let y1 = self.y0 + self.ph;
        let mut s = format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
            self.x0, self.y0, self.pw, self.ph
        );
        let xstep = nice_step(self.xmax);
        let mut v = 0.0;
        while v <= self.xmax + 1e-9 {
            s += &format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                self.x(v),
                y1 + 16.0,
                trim(v)
            );
            v += xstep;
        }
        let mut v = (self.ymin / ystep).ceil() * ystep;
        while v <= self.ymax + 1e-9 {
            s += &format!(
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                self.x0 - 6.0,
                self.y(v) + 4.0,
                trim(v)
            );
            v += ystep;
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            self.x0 + self.pw / 2.0,
            y1 + 34.0,
            esc(xlabel)
        );
        let (lx, ly) = (self.x0 - 48.0, self.y0 + self.ph / 2.0);
        s += &format!("<text x=\"{lx}\" y=\"{ly}\" text-anchor=\"middle\" transform=\"rotate(-90 {lx} {ly})\">{}</text>\n", esc(ylabel));
        s
    }
}

/// A tick label without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

pub fn render(title: &str, cmp: &[Comparison]) -> String {
    let (w, h) = (1080.0, 560.0);
    let ok: Vec<&Comparison> = cmp.iter().filter(|c| c.status == "ok").collect();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut families: Vec<&str> = Vec::new();
    for c in &ok {
        if !families.contains(&c.family.as_str()) {
            families.push(&c.family);
        }
    }
    let colour =
        |f: &str| PALETTE[families.iter().position(|x| *x == f).unwrap_or(0) % PALETTE.len()];
    let peak = ok
        .iter()
        .flat_map(|c| {
            [
                mib(c.measured),
                mib(c.estimated),
                c.calibrated.map(mib).unwrap_or(0.0),
            ]
        })
        .fold(0.0, f64::max);
    let step = nice_step(peak * 1.05);
    let max = ((peak * 1.05) / step).ceil().max(1.0) * step;
    let parity = Panel {
        x0: 80.0,
        y0: 60.0,
        pw: 400.0,
        ph: 400.0,
        xmax: max,
        ymin: 0.0,
        ymax: max,
    };
    let errs: Vec<f64> = ok
        .iter()
        .flat_map(|c| [c.err_before(), c.err_after()])
        .flatten()
        .map(|e| e * 100.0)
        .collect();
    let emax = errs.iter().fold(0.1f64, |a, e| a.max(e.abs())) * 1.1;
    let estep = nice_step(emax);
    let elim = (emax / estep).ceil() * estep;
    let error = Panel {
        x0: 620.0,
        y0: 60.0,
        pw: 400.0,
        ph: 400.0,
        xmax: max,
        ymin: -elim,
        ymax: elim,
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    s += &parity.frame("measured peak (MiB)", "estimated peak (MiB)", step);
    s += &error.frame("measured peak (MiB)", "error vs measured (%)", estep);
    s += &format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>\n",
        parity.x(0.0), parity.y(0.0), parity.x(max), parity.y(max)
    );
    s += &format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>\n",
        error.x(0.0), error.y(0.0), error.x(max), error.y(0.0)
    );
    s += &points(&parity, &error, &ok, &colour);
    s += &legend(&families, &colour);
    s += "</svg>\n";
    s
}

/// The markers: estimated (filled) and calibrated (ring) in both panels.
fn points(
    parity: &Panel,
    error: &Panel,
    ok: &[&Comparison],
    colour: &dyn Fn(&str) -> &'static str,
) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut s = String::new();
    for c in ok {
        let (col, x) = (colour(&c.family), mib(c.measured));
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{col}\"><title>{}: estimated</title></circle>\n",
            parity.x(x), parity.y(mib(c.estimated)), esc(&c.point)
        );
        if let Some(e) = c.err_before() {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{col}\"><title>{}: {:+.3} %</title></circle>\n",
                error.x(x), error.y(e * 100.0), esc(&c.point), e * 100.0
            );
        }
        if let (Some(cb), Some(e)) = (c.calibrated, c.err_after()) {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"none\" stroke=\"{col}\"><title>{}: calibrated</title></circle>\n",
                parity.x(x), parity.y(mib(cb)), esc(&c.point)
            );
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"none\" stroke=\"{col}\"><title>{}: calibrated {:+.3} %</title></circle>\n",
                error.x(x), error.y(e * 100.0), esc(&c.point), e * 100.0
            );
        }
    }
    s
}

/// One legend line per family, and the marker meanings.
fn legend(families: &[&str], colour: &dyn Fn(&str) -> &'static str) -> String {
    let mut s = String::new();
    let y0 = 500.0;
    for (i, f) in families.iter().enumerate() {
        let x = 80.0 + 110.0 * i as f64;
        s += &format!(
            "<circle cx=\"{x}\" cy=\"{y0}\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            colour(f),
            x + 8.0,
            y0 + 4.0,
            esc(f)
        );
    }
    s += &format!(
        "<text x=\"80\" y=\"{}\">filled: estimated · ring: calibrated</text>\n",
        y0 + 30.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(family: &str, measured: u64, estimated: u64) -> Comparison {
        Comparison {
            point: format!("{family}/full/b1/s16"),
            shape: "L2 h64 a4/2 i128 v512".into(),
            family: family.into(),
            status: "ok".into(),
            measured,
            estimated,
            calibrated: Some(measured + 100),
        }
    }

    /// L14: round ticks, an error-vs-size panel, one colour per family.
    #[test]
    fn l14_svg_has_round_ticks_an_error_panel_and_family_colours() {
        assert_eq!(nice_step(46.4), 10.0);
        assert_eq!(nice_step(0.9), 0.2);
        assert_eq!(nice_step(1300.0), 500.0);
        let mib = 1u64 << 20;
        let cmp = [
            point("llama", 30 * mib, 30 * mib + 4096),
            point("gpt2", 12 * mib, 12 * mib - 2048),
        ];
        let s = render("t", &cmp);
        assert!(s.contains("error vs measured (%)"), "no error panel");
        for tick in [">0<", ">10<", ">20<", ">30<"] {
            assert!(s.contains(tick), "tick {tick} missing");
        }
        assert!(
            !s.contains(">15.5<") && !s.contains(">30.9<"),
            "unround ticks"
        );
        assert!(
            s.contains(PALETTE[0]) && s.contains(PALETTE[1]),
            "one colour per family"
        );
        assert!(s.contains(">llama<") && s.contains(">gpt2<"), "legend");
    }
}
