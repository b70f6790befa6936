//! `--plot FILE.svg`: corrected latency percentiles and throughput per second, as a standalone SVG
//! written by hand (no dependency; every text is XML-escaped).

use std::fmt::Write;

use super::stats::Point;

const W: f64 = 960.0;
const PANEL_H: f64 = 240.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 50.0;
const GAP: f64 = 70.0;

/// A named, coloured line of (second, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

pub fn svg(title: &str, timeline: &[Point]) -> String {
    let mut out = String::new();
    let height = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let _ = writeln!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let secs = timeline.iter().map(|p| p.second + 1).max().unwrap_or(1).max(1) as f64;
    let latency: Vec<Series> = vec![
        ("p50", "#1f77b4", timeline.iter().map(|p| (p.second as f64, p.p50)).collect()),
        ("p90", "#2ca02c", timeline.iter().map(|p| (p.second as f64, p.p90)).collect()),
        ("p99", "#d62728", timeline.iter().map(|p| (p.second as f64, p.p99)).collect()),
        ("max", "#7f7f7f", timeline.iter().map(|p| (p.second as f64, p.max)).collect()),
    ];
    panel(&mut out, TOP, "corrected latency (ms) per second", secs, &latency);
    let throughput: Vec<Series> = vec![
        ("ok/s", "#1f77b4", timeline.iter().map(|p| (p.second as f64, p.ok as f64)).collect()),
        ("errors/s", "#d62728", timeline.iter().map(|p| (p.second as f64, p.errors as f64)).collect()),
    ];
    panel(&mut out, TOP + PANEL_H + GAP, "throughput (answers per second)", secs, &throughput);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        height - 12.0
    );
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, top: f64, label: &str, secs: f64, series: &[Series]) {
    let plot_w = W - LEFT - RIGHT;
    let max_y = series.iter().flat_map(|(_, _, pts)| pts.iter().map(|p| p.1)).fold(0.0, f64::max);
    let top_y = nice(max_y);
    let x = |s: f64| LEFT + s / secs * plot_w;
    let y = |v: f64| top + PANEL_H - (v / top_y).min(1.0) * PANEL_H;
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, top - 8.0, escape(label));
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    for i in 0..=4 {
        let v = top_y * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            short(v)
        );
    }
    let step = nice(secs / 8.0).max(1.0);
    let mut s = 0.0;
    while s <= secs {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(s),
            top + PANEL_H + 16.0,
            short(s)
        );
        s += step;
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        if !pts.is_empty() {
            let mut d = String::new();
            for (j, (sx, v)) in pts.iter().enumerate() {
                let _ = write!(d, "{}{:.1},{:.1}", if j == 0 { "M" } else { " L" }, x(*sx + 0.5), y(*v));
            }
            let _ = writeln!(out, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#);
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(name)
        );
    }
}

/// The next "nice" number (1, 2, 5 times a power of ten) at or above `v`.
fn nice(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.2}") }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers_and_escaping() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        let s = svg("x < y", &[Point { second: 0, ok: 5, errors: 1, p50: 1.0, p90: 2.0, p99: 3.0, max: 4.0 }]);
        assert!(s.contains("x &lt; y") && s.ends_with("</svg>\n"));
    }
}
