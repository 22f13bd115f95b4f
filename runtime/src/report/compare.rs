//! `keel compare RUN_DIR... [--out DIR] [--baseline ARM]`: several runs on
//! one page.
//!
//! Runs of the same recipe with the same settings but for the seeds
//! (`model.seed`, `task.seed`) form one arm: drawn as the mean over seeds
//! with a min–max band. `compare.html` holds a plot per metric (the style of
//! `keel report`) and a table per arm; `summary.json` holds the same table.
//! With `--baseline`, each other arm's seeds are paired with the
//! baseline's same seeds and every summary metric gets the mean paired
//! difference with a bootstrap interval ([`super::paired`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::html::{PLOTS, read_metrics, series};
use super::paired::{self, Paired};
use super::plot::{self, Series, esc};
use crate::error::{Coded, Error, codes};
use crate::run::dir::{METRICS, RUN_FILE, metric};

/// The settings that only choose a seed: runs differing in these are
/// seeds of one arm.
const SEED_KEYS: &[&str] = &["model.seed", "task.seed"];

/// One run directory, read.
struct Run {
    dir: PathBuf,
    arm: String,
    /// The recipe text's fingerprint (run.json).
    fingerprint: String,
    /// The seed settings (`model.seed=3, task.seed=3`), or `recipe` when
    /// the run set none: runs of two arms with equal seeds are a pair.
    seed: String,
    rows: Vec<Value>,
}

/// The arm of a run (its recipe and its `--set` overrides but the seeds),
/// its recipe text's fingerprint and its seeds.
fn arm_of(dir: &Path) -> Result<(String, String, String), Error> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::new(
            codes::CHECKPOINT,
            format!("cannot read `{}`: {e}", path.display()),
            "`keel compare` takes directories written by `keel run`",
        )
        .at(path.display().to_string())
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            codes::CHECKPOINT,
            format!("damaged run file: {e}"),
            "the file is written by `keel run`",
        )
        .at(path.display().to_string())
    })?;
    let recipe = v["recipe"]
        .as_str()
        .map(String::from)
        .or_else(|| {
            v["recipe_path"].as_str().map(|p| {
                Path::new(p)
                    .file_stem()
                    .map_or(p.to_string(), |s| s.to_string_lossy().into_owned())
            })
        })
        .unwrap_or_else(|| dir.display().to_string());
    // The `--set` values, split into the seeds and the rest (the arm).
    let (mut seeds, mut set) = (Vec::new(), Vec::new());
    for kv in v["set"].as_array().into_iter().flatten() {
        let (Some(k), Some(val)) = (
            kv.get(0).and_then(Value::as_str),
            kv.get(1).and_then(Value::as_str),
        ) else {
            continue;
        };
        let pair = format!("{k}={val}");
        if SEED_KEYS.contains(&k) {
            seeds.push(pair);
        } else {
            set.push(pair);
        }
    }
    set.sort();
    seeds.sort();
    let seed = if seeds.is_empty() {
        "recipe".to_string()
    } else {
        seeds.join(", ")
    };
    let arm = if set.is_empty() {
        recipe
    } else {
        format!("{recipe} ({})", set.join(", "))
    };
    let fingerprint = v["fingerprint"].as_str().unwrap_or("").to_string();
    Ok((arm, fingerprint, seed))
}

/// The pass@k keys a run logs (`pass_at_8`), other than pass@1.
fn pass_keys(rows: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|o| o.keys().cloned().collect::<Vec<_>>())
        .filter(|k| k.starts_with(metric::PASS_AT) && k != metric::PASS_AT_1)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Runs that cannot share one page: two runs of one arm from different
/// recipe text (not seeds of one setting), or runs evaluated with
/// different k (their pass@k columns would not mean the same).
fn comparable(runs: &[Run]) -> Result<(), Error> {
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[..i] {
            if a.arm == b.arm && a.fingerprint != b.fingerprint {
                let at = a.dir.join(RUN_FILE);
                return Err(Error::new(
                    codes::CHECKPOINT,
                    format!(
                        "`{}` and `{}` both run `{}`, but from different recipe text: they are not seeds of one arm",
                        b.dir.display(),
                        a.dir.display(),
                        a.arm
                    ),
                    "compare runs of one recipe file per arm, or give the recipes different names",
                )
                .at(at.display().to_string()));
            }
        }
    }
    let first = runs.iter().find(|r| !pass_keys(&r.rows).is_empty());
    if let Some(first) = first {
        let want = pass_keys(&first.rows);
        for r in runs {
            let got = pass_keys(&r.rows);
            if !got.is_empty() && got != want {
                return Err(Error::new(
                    codes::CHECKPOINT,
                    format!(
                        "`{}` logs {} but `{}` logs {}: the runs were evaluated with different k",
                        r.dir.display(),
                        got.join(", "),
                        first.dir.display(),
                        want.join(", ")
                    ),
                    "compare runs with the same `eval.k` (pass@k of different k cannot share a column)",
                )
                .at(r.dir.join(METRICS).display().to_string()));
            }
        }
    }
    Ok(())
}

/// The mean over seeds at each step every seed logged, with min and max.
fn mean_band(seeds: &[Vec<(f64, f64)>]) -> (Vec<(f64, f64)>, Vec<plot::Band>) {
    let mut steps: Vec<f64> = seeds
        .first()
        .map_or(Vec::new(), |s| s.iter().map(|p| p.0).collect());
    steps.retain(|x| seeds.iter().all(|s| s.iter().any(|p| p.0 == *x)));
    let mut mean = Vec::new();
    let mut band = Vec::new();
    for x in steps {
        let ys: Vec<f64> = seeds
            .iter()
            .filter_map(|s| s.iter().rev().find(|p| p.0 == x).map(|p| p.1))
            .collect();
        let m = ys.iter().sum::<f64>() / ys.len() as f64;
        let lo = ys.iter().copied().fold(f64::MAX, f64::min);
        let hi = ys.iter().copied().fold(f64::MIN, f64::max);
        mean.push((x, m));
        band.push((x, lo, hi));
    }
    (mean, band)
}

/// The last and the largest value of `key` in a run (`None`: never logged).
fn last_and_best(rows: &[Value], key: &str) -> (Option<f64>, Option<f64>) {
    let vals: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get(key)?.as_f64())
        .filter(|v| v.is_finite())
        .collect();
    (vals.last().copied(), vals.iter().copied().reduce(f64::max))
}

/// Mean, min and max of the values the seeds have.
fn stat(vals: &[Option<f64>]) -> Value {
    let v: Vec<f64> = vals.iter().flatten().copied().collect();
    if v.is_empty() {
        return Value::Null;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    json!({
        "mean": mean,
        "sd": sd,
        "min": v.iter().copied().fold(f64::MAX, f64::min),
        "max": v.iter().copied().fold(f64::MIN, f64::max),
        "n": v.len(),
    })
}

/// A file name for a plot title: lowercase letters, digits and `-`.
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

/// The pass@k key the runs log (`pass_at_8`), other than pass@1.
fn pass_k_key(runs: &[Run]) -> Option<String> {
    runs.iter().flat_map(|r| pass_keys(&r.rows)).next()
}

/// The runs of `dirs`, each with its arm and metrics; refused unless they
/// can be compared.
fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>, Error> {
    if dirs.is_empty() {
        return Err(Error::new(
            codes::CHECKPOINT,
            "no run directories to compare".to_string(),
            "name one or more directories written by `keel run`: `keel compare runs/a runs/b`",
        ));
    }
    let mut runs = Vec::new();
    for d in dirs.iter().flat_map(|d| expand_seeds(d)) {
        let d = &d;
        let (arm, fingerprint, seed) = arm_of(d)?;
        runs.push(Run {
            dir: d.clone(),
            arm,
            fingerprint,
            seed,
            rows: read_metrics(d)?,
        });
    }
    comparable(&runs)?;
    Ok(runs)
}

/// A directory `keel run --seeds N` wrote (no run.json of its own, runs in
/// `seed-K/`) stands for its seeds, in order; any other directory for
/// itself.
fn expand_seeds(dir: &Path) -> Vec<PathBuf> {
    if dir.join(RUN_FILE).exists() {
        return vec![dir.to_path_buf()];
    }
    let mut seeds: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let k = e
                .file_name()
                .to_str()?
                .strip_prefix("seed-")?
                .parse()
                .ok()?;
            e.path().join(RUN_FILE).exists().then(|| (k, e.path()))
        })
        .collect();
    seeds.sort();
    if seeds.is_empty() {
        return vec![dir.to_path_buf()];
    }
    seeds.into_iter().map(|(_, p)| p).collect()
}

/// The runs grouped by arm, arms in order of first appearance.
struct Arms<'a> {
    names: Vec<String>,
    runs: &'a [Run],
}

impl<'a> Arms<'a> {
    fn of(runs: &'a [Run]) -> Arms<'a> {
        let mut names: Vec<String> = Vec::new();
        for r in runs {
            if !names.contains(&r.arm) {
                names.push(r.arm.clone());
            }
        }
        Arms { names, runs }
    }

    fn members(&self, arm: &str) -> Vec<&'a Run> {
        self.runs.iter().filter(|r| r.arm == arm).collect()
    }
}

/// The summary metrics: (column, metric, best rather than final).
fn columns(pk: Option<&String>) -> Vec<(String, String, bool)> {
    let mut c: Vec<(String, String, bool)> = vec![
        ("final_pass_at_1".into(), metric::PASS_AT_1.into(), false),
        ("best_pass_at_1".into(), metric::PASS_AT_1.into(), true),
    ];
    if let Some(k) = pk {
        c.push((format!("final_{k}"), k.clone(), false));
        c.push((format!("best_{k}"), k.clone(), true));
    }
    for (col, m) in [
        ("final_entropy", metric::ENTROPY),
        ("final_response_len", metric::RESPONSE_LEN),
        ("final_reward", metric::REWARD),
        ("final_correct", metric::CORRECT),
    ] {
        c.push((col.into(), m.into(), false));
    }
    c
}

/// The value of column (`metric`, `best`) in one run.
fn value_of(r: &Run, metric: &str, best: bool) -> Option<f64> {
    let (last, top) = last_and_best(&r.rows, metric);
    if best { top } else { last }
}

/// The arm `--baseline` names: an arm's full name, else the one arm of
/// that recipe.
fn baseline_arm(arms: &Arms, name: &str) -> Result<String, Error> {
    if arms.names.iter().any(|a| a == name) {
        return Ok(name.to_string());
    }
    let of_recipe: Vec<&String> = arms
        .names
        .iter()
        .filter(|a| a.split(" (").next() == Some(name))
        .collect();
    match of_recipe.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(Error::new(
            codes::CHECKPOINT,
            format!(
                "--baseline `{name}` {} of the arms compared",
                if of_recipe.is_empty() {
                    "is none"
                } else {
                    "names several"
                }
            ),
            format!(
                "name one arm exactly: {}",
                arms.names
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The paired comparisons against `baseline`: for each other arm, the
/// seeds both ran and, per summary column, the paired difference. Refused
/// when an arm's seeds are not the baseline's (or one seed runs twice in
/// an arm): the pairs would not be the same warm starts and problems.
fn pair(arms: &Arms, baseline: &str, pk: Option<&String>) -> Result<Value, Error> {
    let base = arms.members(baseline);
    let seeds_of = |arm: &str, runs: &[&Run]| -> Result<Vec<String>, Error> {
        let mut seeds: Vec<String> = Vec::new();
        for r in runs {
            if seeds.contains(&r.seed) {
                return Err(Error::new(
                    codes::CHECKPOINT,
                    format!("arm `{arm}` has two runs with seeds `{}`", r.seed),
                    "each seed of an arm runs once: leave one of the directories out",
                )
                .at(r.dir.join(RUN_FILE).display().to_string()));
            }
            seeds.push(r.seed.clone());
        }
        seeds.sort();
        Ok(seeds)
    };
    let base_seeds = seeds_of(baseline, &base)?;
    let mut out = Vec::new();
    for arm in arms.names.iter().filter(|a| *a != baseline) {
        let m = arms.members(arm);
        let seeds = seeds_of(arm, &m)?;
        if seeds != base_seeds {
            let at = m.first().map(|r| r.dir.join(RUN_FILE)).unwrap_or_default();
            return Err(Error::new(
                codes::CHECKPOINT,
                format!(
                    "arm `{arm}` ran seeds [{}] and the baseline `{baseline}` [{}]: paired differences need the same seeds",
                    seeds.join("; "),
                    base_seeds.join("; ")
                ),
                "run every arm with the same `--seeds N` (or the same `--set model.seed=… --set task.seed=…`), or compare without --baseline",
            )
            .at(at.display().to_string()));
        }
        let mut metrics = serde_json::Map::new();
        for (col, metric, best) in columns(pk) {
            let d: Vec<f64> = seeds
                .iter()
                .filter_map(|s| {
                    let a = m.iter().find(|r| r.seed == *s)?;
                    let b = base.iter().find(|r| r.seed == *s)?;
                    Some(value_of(a, &metric, best)? - value_of(b, &metric, best)?)
                })
                .collect();
            let seed = keel_model::rng::fnv(format!("{arm}/{col}").as_bytes());
            if let Some(p) = paired::bootstrap(&d, paired::RESAMPLES, seed) {
                metrics.insert(col, paired_json(&p));
            }
        }
        out.push(json!({ "arm": arm, "seeds": seeds, "metrics": metrics }));
    }
    Ok(json!({
        "baseline": baseline,
        "statistic": "mean of arm − baseline over paired seeds",
        "confidence": paired::CONFIDENCE,
        "resamples": paired::RESAMPLES,
        "arms": out,
    }))
}

fn paired_json(p: &Paired) -> Value {
    json!({
        "mean": p.mean,
        "lo": p.interval.map(|i| i.0),
        "hi": p.interval.map(|i| i.1),
        "n": p.n,
        "agree": p.agree,
        "excludes_zero": p.excludes_zero(),
    })
}

/// A paired cell: `+0.023 [−0.012, 0.051] 2/3`, bold and starred when the
/// interval excludes 0.
fn paired_cell(v: &Value) -> String {
    let Some(mean) = v["mean"].as_f64() else {
        return "–".into();
    };
    let signed = |x: f64| {
        if x > 0.0 {
            format!("+{}", plot::label(x))
        } else {
            plot::label(x)
        }
    };
    let mut s = signed(mean);
    if let (Some(lo), Some(hi)) = (v["lo"].as_f64(), v["hi"].as_f64()) {
        s.push_str(&format!(" [{}, {}]", signed(lo), signed(hi)));
    }
    s.push_str(&format!(
        " {}/{}",
        v["agree"].as_u64().unwrap_or(0),
        v["n"].as_u64().unwrap_or(0)
    ));
    if v["excludes_zero"].as_bool() == Some(true) {
        format!("<b>{s} *</b>")
    } else {
        s
    }
}

/// The page's table of paired differences.
fn paired_table(h: &mut String, paired: &Value, pk: Option<&String>) {
    let _ = write!(
        h,
        "<h2>Paired differences against <code>{}</code></h2><p>For each arm, the mean over its seeds of (arm − baseline) on the same seed, its {}&nbsp;% bootstrap interval over seeds ({} resamples), and how many seeds agree in sign. <b>*</b>: the interval excludes 0.</p>",
        esc(paired["baseline"].as_str().unwrap_or("")),
        (paired::CONFIDENCE * 100.0).round(),
        paired::RESAMPLES
    );
    let cols = columns(pk);
    h.push_str("<table><tr><th>arm</th><th>seeds</th>");
    for (col, _, _) in &cols {
        let _ = write!(
            h,
            "<th>{}</th>",
            esc(&col.replace('_', " ").replace("pass at ", "pass@"))
        );
    }
    h.push_str("</tr>");
    for a in paired["arms"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td style=\"text-align:left\">{}</td><td>{}</td>",
            esc(a["arm"].as_str().unwrap_or("")),
            a["seeds"].as_array().map_or(0, Vec::len)
        );
        for (col, _, _) in &cols {
            let _ = write!(h, "<td>{}</td>", paired_cell(&a["metrics"][col]));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// The table of `summary.json`: per arm, the final (and best) value of each
/// summary metric over its seeds.
fn summarize(arms: &Arms, pk: Option<&String>) -> Vec<Value> {
    let mut summary = Vec::new();
    for arm in &arms.names {
        let m = arms.members(arm);
        let mut row = json!({
            "arm": arm,
            "runs": m.iter().map(|r| r.dir.display().to_string()).collect::<Vec<_>>(),
        });
        for (col, key, best) in columns(pk) {
            row[col] = stat(
                &m.iter()
                    .map(|r| value_of(r, &key, best))
                    .collect::<Vec<_>>(),
            );
        }
        summary.push(row);
    }
    summary
}

/// A table cell: the mean with the min–max band over seeds.
fn cell(v: &Value) -> String {
    match (v["mean"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(m), Some(lo), Some(hi)) if v["n"].as_u64() > Some(1) => {
            format!(
                "{} [{}, {}]",
                plot::label(m),
                plot::label(lo),
                plot::label(hi)
            )
        }
        (Some(m), ..) => plot::label(m),
        _ => "–".into(),
    }
}

/// The page's head, its summary table, and the opening of the plot grid.
fn page_head(h: &mut String, runs: usize, arms: usize, summary: &[Value], pk: Option<&String>) {
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>keel compare</title>\
<style>body{{font-family:sans-serif;margin:24px;color:#222}}.grid{{display:flex;flex-wrap:wrap;gap:16px}}\
figure{{margin:0;border:1px solid #ddd;padding:8px}}figcaption{{font-size:14px;margin-bottom:4px}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:right}}</style></head><body>\
<h1>keel compare</h1><p>{} runs in {} arms; lines are the mean over an arm's seeds with a min–max band, smoothed (EMA {}) over the faint raw values.</p>",
        runs,
        arms,
        plot::SMOOTHING
    );
    h.push_str("<table><tr><th>arm</th><th>seeds</th><th>final pass@1</th><th>best pass@1</th>");
    if let Some(k) = pk {
        let _ = write!(
            h,
            "<th>final {}</th>",
            esc(&k.replace(metric::PASS_AT, "pass@"))
        );
    }
    h.push_str("<th>entropy (end)</th><th>response length (end)</th><th>reward (end)</th><th>correct (end)</th></tr>");
    for row in summary {
        let _ = write!(
            h,
            "<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(row["arm"].as_str().unwrap_or("")),
            row["runs"].as_array().map_or(0, Vec::len),
            cell(&row["final_pass_at_1"]),
            cell(&row["best_pass_at_1"])
        );
        if let Some(k) = pk {
            let _ = write!(h, "<td>{}</td>", cell(&row[format!("final_{k}")]));
        }
        let _ = write!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell(&row["final_entropy"]),
            cell(&row["final_response_len"]),
            cell(&row["final_reward"]),
            cell(&row["final_correct"])
        );
    }
    h.push_str("</table><div class=\"grid\">");
}

/// One line per arm of metric `name`: the mean over its seeds with a
/// min–max band (none for a single seed).
fn arm_lines(arms: &Arms, name: &str) -> Vec<Series> {
    let mut lines = Vec::new();
    for arm in &arms.names {
        let seeds: Vec<Vec<(f64, f64)>> = arms
            .members(arm)
            .iter()
            .map(|r| {
                series(&r.rows, name)
                    .into_iter()
                    .next()
                    .map(|(_, p)| p)
                    .unwrap_or_default()
            })
            .filter(|p| !p.is_empty())
            .collect();
        if seeds.is_empty() {
            continue;
        }
        let (points, band) = mean_band(&seeds);
        let n = seeds.len();
        lines.push(Series {
            name: if n > 1 {
                format!("{arm} (mean of {n} seeds)")
            } else {
                arm.clone()
            },
            points,
            band: if n > 1 { band } else { Vec::new() },
        });
    }
    lines
}

/// The report's plots, and one per `monitor` value of the recipes, into
/// the page; each also as a standalone SVG (its slug and text).
fn plots(h: &mut String, arms: &Arms) -> Vec<(String, String)> {
    let mut svgs: Vec<(String, String)> = Vec::new();
    let keys = PLOTS.iter().copied().chain([(metric::MONITOR, "monitor")]);
    for (key, title) in keys {
        // Every metric name the key covers (pass@1 and pass@k, monitors).
        let mut names: Vec<String> = arms
            .runs
            .iter()
            .flat_map(|r| series(&r.rows, key).into_iter().map(|(n, _)| n))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let lines = arm_lines(arms, &name);
            if lines.is_empty() {
                continue;
            }
            let t = if key.ends_with('_') {
                format!("{title}: {}", name.replace(metric::PASS_AT, "pass@"))
            } else if key.ends_with('.') {
                format!("{title}: {}", name.trim_start_matches(key))
            } else {
                title.to_string()
            };
            let fig = plot::figure(&t, &lines, &[]);
            // Each plot also as a standalone SVG file (for a README).
            if let (Some(a), Some(b)) = (fig.find("<svg"), fig.rfind("</svg>")) {
                svgs.push((slug(&t), fig[a..b + "</svg>".len()].to_string()));
            }
            h.push_str(&fig);
        }
    }
    svgs
}

/// Write `compare.html` and `summary.json` into `out`, with the paired
/// differences against arm `baseline` when one is given; returns their
/// paths.
pub fn write(
    dirs: &[PathBuf],
    out: &Path,
    baseline: Option<&str>,
) -> Result<(PathBuf, PathBuf), Error> {
    let runs = load_runs(dirs)?;
    let arms = Arms::of(&runs);
    let pk = pass_k_key(&runs);
    let summary = summarize(&arms, pk.as_ref());
    let paired = match baseline {
        Some(b) => Some(pair(&arms, &baseline_arm(&arms, b)?, pk.as_ref())?),
        None => None,
    };
    // OUT and OUT/plots (each plot also as a standalone SVG file).
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| {
        Error::new(
            codes::CHECKPOINT,
            format!("cannot create `{}`: {e}", plots_dir.display()),
            "choose an --out directory you can write to",
        )
        .at(plots_dir.display().to_string())
    })?;
    let summary_path = out.join("summary.json");
    let mut doc = json!({ "arms": summary });
    if let Some(p) = &paired {
        doc["paired"] = p.clone();
    }
    let json = serde_json::to_vec_pretty(&doc)
        .map_err(|e| Error::new(codes::CHECKPOINT, e.to_string(), "this is a runtime bug"))?;
    keel_model::io::write_atomic(&summary_path, &json).coded()?;
    let mut h = String::new();
    page_head(&mut h, runs.len(), arms.names.len(), &summary, pk.as_ref());
    if let Some(p) = &paired {
        // Before the plot grid `page_head` opened.
        if h.ends_with("<div class=\"grid\">") {
            h.truncate(h.len() - "<div class=\"grid\">".len());
            paired_table(&mut h, p, pk.as_ref());
            h.push_str("<div class=\"grid\">");
        }
    }
    let svgs = plots(&mut h, &arms);
    h.push_str("</div></body></html>\n");
    for (name, svg) in &svgs {
        keel_model::io::write_atomic(&plots_dir.join(format!("{name}.svg")), svg.as_bytes())
            .coded()?;
    }
    let html_path = out.join("compare.html");
    keel_model::io::write_atomic(&html_path, h.as_bytes()).coded()?;
    Ok((html_path, summary_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_band_over_seeds_at_shared_steps() {
        let a = vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)];
        let b = vec![(0.0, 3.0), (1.0, 4.0)];
        let (m, band) = mean_band(&[a, b]);
        assert_eq!(m, vec![(0.0, 2.0), (1.0, 3.0)]);
        assert_eq!(band, vec![(0.0, 1.0, 3.0), (1.0, 2.0, 4.0)]);
    }

    #[test]
    fn stat_gives_mean_spread_and_count() {
        let s = stat(&[Some(0.2), None, Some(0.4)]);
        assert!((s["mean"].as_f64().unwrap_or(0.0) - 0.3).abs() < 1e-12);
        assert!((s["sd"].as_f64().unwrap_or(0.0) - 0.1).abs() < 1e-12);
        assert_eq!(s["n"], 2);
        assert_eq!(stat(&[None]), Value::Null);
    }
}
