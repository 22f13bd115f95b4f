//! `keel report RUN_DIR`: one self-contained HTML page (inline SVG, no
//! scripts, no network) with a plot per metric and the guard events.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, codes};

/// The metrics plotted, in order: (key or key prefix, title).
const PLOTS: &[(&str, &str)] = &[
    ("reward_mean", "reward (mean)"),
    ("pass_at_", "held-out pass@k"),
    ("entropy_mean", "entropy (mean per token)"),
    ("kl_ref", "KL to the reference (k3)"),
    ("clip_frac", "clip fraction"),
    ("grad_norm", "gradient norm (before clipping)"),
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("z_loss", "z-loss (mean logsumexp²)"),
    ("response_len", "response length"),
    ("tokens_per_s", "tokens / s"),
];

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

pub fn write(run_dir: &Path) -> Result<PathBuf, Error> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::new(
            codes::CHECKPOINT,
            format!("cannot read `{}`: {e}", path.display()),
            "`keel report` takes a directory written by `keel run`",
        )
        .at(path.display().to_string())
    })?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::new(codes::CHECKPOINT, format!("damaged metrics line: {e}"), "the file is written by `keel run`; a run killed mid-write can be resumed with `keel run --resume`")
                .at(format!("{}:{}", path.display(), n + 1))
        })?;
        rows.push(v);
    }
    let html = render(run_dir, &rows);
    let out = run_dir.join("report.html");
    crate::checkpoint::write_atomic(&out, html.as_bytes())?;
    Ok(out)
}

/// Series of `key` (or every key starting with a prefix ending in `_`).
fn series(rows: &[Value], key: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if let Some(o) = r.as_object() {
            for k in o.keys() {
                let hit = if key.ends_with('_') {
                    k.starts_with(key)
                } else {
                    k == key
                };
                if hit && !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let pts = rows
                .iter()
                .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(&n)?.as_f64()?)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            (n, pts)
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn render(run_dir: &Path, rows: &[Value]) -> String {
    let events: Vec<(f64, String)> = rows
        .iter()
        .filter_map(|r| {
            let s = r.get("step")?.as_f64()?;
            let e = r.get("events")?.as_array()?;
            Some(
                e.iter()
                    .filter_map(|x| x.as_str())
                    .map(move |x| (s, x.to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>keel report: {0}</title>\
<style>body{{font-family:sans-serif;margin:24px;color:#222}}.grid{{display:flex;flex-wrap:wrap;gap:16px}}\
figure{{margin:0;border:1px solid #ddd;padding:8px}}figcaption{{font-size:14px;margin-bottom:4px}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px}}</style></head><body>\
<h1>keel report</h1><p>run: <code>{0}</code> — {1} metric lines</p><div class=\"grid\">",
        esc(&run_dir.display().to_string()),
        rows.len()
    );
    for (key, title) in PLOTS {
        let s = series(rows, key);
        if s.iter().all(|(_, p)| p.is_empty()) {
            continue;
        }
        h.push_str(&plot(title, &s, &events));
    }
    h.push_str("</div><h2>Guard and runtime events</h2>");
    if events.is_empty() {
        h.push_str("<p>none</p>");
    } else {
        h.push_str("<table><tr><th>step</th><th>event</th></tr>");
        for (s, e) in &events {
            let _ = write!(h, "<tr><td>{s}</td><td>{}</td></tr>", esc(e));
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

fn plot(title: &str, s: &[(String, Vec<(f64, f64)>)], events: &[(f64, String)]) -> String {
    let (w, hgt, l, b, t, r) = (420.0, 220.0, 56.0, 28.0, 8.0, 8.0);
    let pts: Vec<(f64, f64)> = s.iter().flat_map(|x| x.1.iter().copied()).collect();
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        // A constant series: centre it.
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y1 = y0 + pad;
        y0 -= pad;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (hgt - t - b);
    let mut o = String::new();
    let _ = write!(
        o,
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    let _ = write!(
        o,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        w - l - r,
        hgt - t - b
    );
    for (ev_step, _) in events {
        if *ev_step >= x0 && *ev_step <= x1 {
            let x = sx(*ev_step);
            let _ = write!(
                o,
                "<line class=\"event\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{t}\" y2=\"{}\" stroke=\"#e377c2\" stroke-dasharray=\"3,3\"/>",
                hgt - b
            );
        }
    }
    for (k, (name, p)) in s.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let d: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if d.len() == 1 {
            let _ = write!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                sx(p[0].0),
                sy(p[0].1)
            );
        } else {
            let _ = write!(
                o,
                "<polyline class=\"series\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>",
                d.join(" ")
            );
        }
        if s.len() > 1 {
            let _ = write!(
                o,
                "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{c}\">{}</text>",
                l + 6.0,
                t + 12.0 + 12.0 * k as f64,
                esc(name)
            );
        }
    }
    let fmt = |v: f64| {
        if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-3) {
            format!("{v:.2e}")
        } else {
            format!("{v:.3}")
        }
    };
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        l - 4.0,
        t + 10.0,
        fmt(y1)
    );
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        l - 4.0,
        hgt - b,
        fmt(y0)
    );
    let _ = write!(
        o,
        "<text x=\"{l}\" y=\"{}\" font-size=\"11\">step {}</text>",
        hgt - 8.0,
        x0
    );
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        w - r,
        hgt - 8.0,
        x1
    );
    o.push_str("</svg></figure>");
    o
}
