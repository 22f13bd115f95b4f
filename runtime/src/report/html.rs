//! `keel report RUN_DIR`: one self-contained HTML page (inline SVG, no
//! scripts, no network) with a plot per metric and the guard events.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plot::{self, Series, esc, label};
use crate::error::{Coded, Error, codes};
use crate::run::dir::{METRICS, RUN_FILE, SAMPLES, metric};

/// The metrics plotted, in order: (key or key prefix, title).
pub(super) const PLOTS: &[(&str, &str)] = &[
    (metric::REWARD, "reward (mean)"),
    (metric::PASS_AT, "held-out pass@k"),
    (metric::ENTROPY, "entropy (mean per token)"),
    (metric::KL_REF, "KL to the reference (k3)"),
    (metric::CLIP_FRAC, "clip fraction"),
    (metric::GRAD_NORM, "gradient norm (before clipping)"),
    (metric::LOSS, "loss"),
    (metric::LR, "learning rate"),
    (metric::Z_LOSS, "z-loss (mean logsumexp²)"),
    (metric::RESPONSE_LEN, "response length"),
    (metric::TOKENS_PER_S, "tokens / s"),
];

pub fn write(run_dir: &Path) -> Result<PathBuf, Error> {
    let rows = read_metrics(run_dir)?;
    let html = render(run_dir, &rows);
    let out = run_dir.join("report.html");
    keel_model::io::write_atomic(&out, html.as_bytes()).coded()?;
    Ok(out)
}

/// The lines of `RUN_DIR/metrics.jsonl`.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<Value>, Error> {
    let path = run_dir.join(METRICS);
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
    Ok(rows)
}

/// Series of `key` (or every key starting with a prefix ending in `_`).
pub(super) fn series(rows: &[Value], key: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if let Some(o) = r.as_object() {
            for k in o.keys() {
                let hit = if key.ends_with('_') || key.ends_with('.') {
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
                .filter_map(|r| Some((r.get(metric::STEP)?.as_f64()?, r.get(&n)?.as_f64()?)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            (n, pts)
        })
        .collect()
}

fn render(run_dir: &Path, rows: &[Value]) -> String {
    let events: Vec<(f64, String)> = rows
        .iter()
        .filter_map(|r| {
            let s = r.get(metric::STEP)?.as_f64()?;
            let e = r.get(metric::EVENTS)?.as_array()?;
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
<h1>keel report</h1><p>run: <code>{0}</code> — {1} metric lines</p>",
        esc(&run_dir.display().to_string()),
        rows.len()
    );
    header(&mut h, run_dir, rows);
    h.push_str("<div class=\"grid\">");
    // The report's plots, and one per `monitor` value of the recipe.
    let monitors = series(rows, metric::MONITOR)
        .into_iter()
        .map(|(n, _)| n)
        .collect::<Vec<_>>();
    let keys = PLOTS
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_string()))
        .chain(monitors.into_iter().map(|n| {
            let t = format!("monitor: {}", n.trim_start_matches(metric::MONITOR));
            (n, t)
        }));
    for (key, title) in keys {
        let (key, title) = (key.as_str(), title.as_str());
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
    samples(&mut h, run_dir);
    h.push_str("</body></html>\n");
    h
}

/// Which recipe and settings made the run (run.json), and held-out pass@1
/// and pass@k after the warm start and at the end.
fn header(h: &mut String, run_dir: &Path, rows: &[Value]) {
    let run: Value = std::fs::read(run_dir.join(RUN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let set: Vec<String> = run["set"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some(format!("{}={}", kv[0].as_str()?, kv[1].as_str()?)))
        .collect();
    let _ = write!(
        h,
        "<p>recipe: <code>{}</code> of <code>{}</code>{}</p>",
        esc(run["recipe"].as_str().unwrap_or("-")),
        esc(run["recipe_path"].as_str().unwrap_or("-")),
        if set.is_empty() {
            String::new()
        } else {
            format!(" with <code>--set {}</code>", esc(&set.join(" --set ")))
        }
    );
    let evals: Vec<&Value> = rows
        .iter()
        .filter(|r| r.get(metric::PASS_AT_1).is_some())
        .collect();
    let pass_k = evals
        .first()
        .and_then(|r| r.as_object())
        .and_then(|o| {
            o.keys()
                .find(|k| k.starts_with(metric::PASS_AT) && *k != metric::PASS_AT_1)
        })
        .cloned();
    let (Some(first), Some(last)) = (evals.first(), evals.last()) else {
        return;
    };
    let num = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64).map_or("-".into(), label);
    h.push_str("<table><tr><th></th><th>step</th><th>pass@1</th>");
    if let Some(k) = &pass_k {
        let _ = write!(h, "<th>{}</th>", esc(&k.replace(metric::PASS_AT, "pass@")));
    }
    h.push_str("</tr>");
    for (what, r) in [("after the warm start", first), ("final", last)] {
        let _ = write!(
            h,
            "<tr><td>{what}</td><td>{}</td><td>{}</td>",
            num(r, metric::STEP),
            num(r, metric::PASS_AT_1)
        );
        if let Some(k) = &pass_k {
            let _ = write!(h, "<td>{}</td>", num(r, k));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// The last logged step's trajectories (`keel run --log-samples`), a few:
/// the prompt, the policy's text, the reward and whether it is correct.
fn samples(h: &mut String, run_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(run_dir.join(SAMPLES)) else {
        return;
    };
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let Some(last) = lines
        .last()
        .and_then(|l| l.get("step"))
        .and_then(Value::as_u64)
    else {
        return;
    };
    let _ = write!(
        h,
        "<h2>Samples of step {last}</h2><table><tr><th>group</th><th>prompt</th><th>response</th><th>reward</th><th>correct</th></tr>"
    );
    let shown = lines
        .iter()
        .filter(|l| l.get("step").and_then(Value::as_u64) == Some(last))
        .take(4);
    for l in shown {
        let policy: Vec<&str> = l["turns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["text"].as_str())
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{}</td><td>{}</td></tr>",
            l["group"],
            esc(l["prompt"].as_str().unwrap_or("")),
            esc(&policy.join("\n")),
            l["reward"],
            l["correct"]
        );
    }
    h.push_str("</table>");
}

fn plot(title: &str, s: &[(String, Vec<(f64, f64)>)], events: &[(f64, String)]) -> String {
    let series: Vec<Series> = s
        .iter()
        .map(|(name, points)| Series {
            name: name.clone(),
            points: points.clone(),
            band: Vec::new(),
        })
        .collect();
    let steps: Vec<f64> = events.iter().map(|e| e.0).collect();
    plot::figure(title, &series, &steps)
}
