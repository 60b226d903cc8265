//! A latency distribution plot as a self-contained SVG: one empirical CDF
//! per series on a logarithmic time axis, so a 50 ms sandbox and a 900 ms
//! Pod fit on one chart.

use crate::series::Series;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Renders the CDFs of `series` with `title`.
pub fn cdf_svg(title: &str, series: &[Series]) -> String {
    let all = series
        .iter()
        .flat_map(|s| s.samples_ms.iter().copied())
        .filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (1.0, 1000.0)
    };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |ms: f64| LEFT + (ms.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * pw;
    let y = |q: f64| TOP + (1.0 - q) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        let px = x(decade);
        s.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} ms</text>\n",
            TOP + ph,
            TOP + ph + 16.0,
            decade
        ));
        decade *= 10.0;
    }
    for q in [0.0, 0.5, 0.95, 1.0] {
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{q}</text>\n",
            y(q),
            LEFT + pw,
            LEFT - 6.0,
            y(q) + 4.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">create → running (log scale); y: fraction of runs</text>\n",
        LEFT + pw / 2.0,
        H - 10.0
    ));
    for (i, ser) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let n = ser.samples_ms.len().max(1) as f64;
        let points: Vec<String> = ser
            .samples_ms
            .iter()
            .enumerate()
            .map(|(k, v)| format!("{:.1},{:.1}", x(*v), y((k + 1) as f64 / n)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        let ly = TOP + 14.0 + 18.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{ly:.1}\" x2=\"{1:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{2:.1}\" y=\"{3:.1}\">{4} c={5} p50 {6:.0} ms</text>\n",
            LEFT + pw + 10.0,
            LEFT + pw + 30.0,
            LEFT + pw + 36.0,
            ly + 4.0,
            escape(&ser.name),
            ser.concurrency,
            ser.p50_ms
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_one_polyline_per_series() {
        let a = Series::new(
            "sandbox",
            1,
            &[Duration::from_millis(40), Duration::from_millis(60)],
        );
        let b = Series::new("pod <plain>", 1, &[Duration::from_millis(900)]);
        let svg = cdf_svg("t", &[a, b]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("pod &lt;plain&gt;"));
        assert!(svg.contains("10 ms") && svg.contains("1000 ms"), "{svg}");
    }
}
