//! `keel bench loss RECIPE --tokens N [--vocab V] [--backend ...]`: the
//! recipe's compiled loss and gradient on a synthetic batch of N response
//! tokens: time per evaluation, tokens/s and effective GB/s per backend.

use crate::report;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{Disk, check_source, run_loss};
use std::process::ExitCode;
use std::time::Instant;

pub struct Args {
    pub recipe: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub vocab: usize,
    pub backend: String,
    pub iters: usize,
    pub name: Option<String>,
    pub json: bool,
}

pub fn run(a: Args) -> ExitCode {
    let Some(text) = report::read(&a.recipe) else {
        return ExitCode::from(1);
    };
    let checked = check_source(&Disk, &a.recipe, &text);
    if checked.has_errors() {
        report::print(
            &a.recipe,
            &checked.diagnostics,
            checked.sources(),
            crate::ErrorFormat::Human,
            report::use_color(crate::Color::Auto),
        );
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(a.name.as_deref()) else {
        eprintln!("error: `{}` has no recipe to benchmark", a.recipe);
        return ExitCode::from(1);
    };
    let recipe = &checked.recipes[index];
    let group = keel_runtime::settings::Settings {
        checked: &checked,
        index,
    }
    .int("rollout", "group", 8)
    .max(1);
    let t = a.seq_len.max(1);
    let b = (a.tokens.max(1)).div_ceil(t).div_ceil(group) * group;
    let reads_vocab = ["logits", "entropy", "mean_logp"]
        .iter()
        .any(|n| recipe.inputs.contains_key(*n));
    if reads_vocab && b * t * a.vocab.max(1) > 32 << 20 {
        eprintln!(
            "error: {b} × {t} × {} logits is more than the reference interpreter can hold (it keeps several f64 copies)",
            a.vocab
        );
        eprintln!(
            "help: this recipe reads the vocabulary; lower --tokens or --vocab (B·T·V ≤ 33.5 M)"
        );
        return ExitCode::from(2);
    }
    let batch = synth::batch(
        recipe,
        Dims {
            b,
            t,
            v: a.vocab,
            group,
        },
        1,
    );
    let bytes = synth::traffic_bytes(&batch);
    let valid: usize = batch
        .tensors
        .get("mask")
        .map(|m| m.data.iter().filter(|&&x| x > 0.0).count())
        .unwrap_or(0);
    let backends: Vec<&str> = match a.backend.as_str() {
        "all" => vec!["interp", "kernel"],
        one => vec![one],
    };
    let mut rows = Vec::new();
    for be in backends {
        match be {
            "interp" => {
                let mut times = Vec::new();
                for _ in 0..a.iters.max(1) {
                    let start = Instant::now();
                    if let Err(d) = run_loss(&checked, index, &batch, "synthetic batch") {
                        report::print(
                            &a.recipe,
                            &d,
                            checked.sources(),
                            crate::ErrorFormat::Human,
                            false,
                        );
                        return ExitCode::from(1);
                    }
                    times.push(start.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let med = times[times.len() / 2];
                rows.push((be.to_string(), Some(med)));
            }
            "kernel" => rows.push((be.to_string(), None)),
            other => {
                eprintln!("error: unknown backend `{other}`");
                eprintln!("help: use `--backend interp`, `kernel` or `all`");
                return ExitCode::from(2);
            }
        }
    }
    if a.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(be, s)| {
                serde_json::json!({
                    "backend": be,
                    "available": s.is_some(),
                    "seconds": s,
                    "tokens_per_s": s.map(|s| valid as f64 / s),
                    "gb_per_s": s.map(|s| bytes as f64 / s / 1e9),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"recipe": recipe.name, "b": b, "t": t, "v": a.vocab, "tokens": valid, "bytes": bytes, "backends": out})
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{}: {} sequences × {} positions ({} valid tokens){}; {:.1} MB moved per evaluation (f32)",
        recipe.name,
        b,
        t,
        valid,
        if batch.has("logits") {
            format!(", vocabulary {}", a.vocab)
        } else {
            String::new()
        },
        bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>12} {:>14} {:>10}",
        "backend", "time", "tokens/s", "GB/s"
    );
    for (be, s) in &rows {
        match s {
            Some(s) => println!(
                "{be:<8} {:>10.3} ms {:>14.0} {:>10.3}",
                s * 1e3,
                valid as f64 / s,
                bytes as f64 / s / 1e9
            ),
            None => {
                println!("{be:<8} not built yet: the generated-kernel backend is work in progress")
            }
        }
    }
    ExitCode::SUCCESS
}
