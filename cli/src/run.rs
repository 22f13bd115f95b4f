//! `keel run RECIPE [--out DIR] [--set K=V]... [--seeds N]` and
//! `keel run --resume DIR`.

use crate::diagnostics::{self, Color};
use keel_compiler::{Disk, Error, check_source_with, codes};
use keel_runtime::env::judge::{JudgeConfig, OnFailure};
use keel_runtime::run::{self, RunFile, RunOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The recipe file (omit with --resume).
    recipe: Option<String>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "recipe")]
    resume: Option<String>,
    /// Run directory (default: runs/RECIPE, runs/RECIPE-2, ...).
    #[arg(long)]
    out: Option<String>,
    /// Override a setting: `--set optimizer.steps=50` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Which recipe of the file.
    #[arg(long = "recipe")]
    name: Option<String>,
    /// Run N seeds one after another into RUN_DIR/seed-1 … seed-N
    /// (`model.seed` and `task.seed` = the seed).
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    seeds: Option<u32>,
    /// Refuse to start on any warning of the checker (W0001…).
    #[arg(long, conflicts_with = "allow_warnings")]
    deny_warnings: bool,
    /// Train through a key that looks like a typo (W0002), which otherwise
    /// stops the run before it starts.
    #[arg(long)]
    allow_warnings: bool,
    /// Write N trajectories a step to RUN_DIR/samples.jsonl (the prompt,
    /// the response, its reward and correctness).
    #[arg(long, value_name = "N", default_value_t = 0)]
    log_samples: usize,
    /// An external judge for recipes that read `judge`: a program that
    /// reads one JSON request a line and writes one score a line
    /// (docs/runtime.md), run with `sh -c`.
    #[arg(long, value_name = "COMMAND", conflicts_with = "resume")]
    judge: Option<String>,
    /// Judge processes run at once; a step's requests are spread over them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    judge_workers: usize,
    /// Seconds to wait for one answer of the judge.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    judge_timeout: f64,
    /// What a judge's failure does: `error` (stop the run, E0711) or
    /// `skip` (score the sample 0 and flag it, as verl does).
    #[arg(long, value_name = "MODE", default_value = "error", value_parser = ["error", "skip"])]
    judge_failures: String,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    #[arg(long, value_enum, default_value = "auto")]
    color: Color,
}

/// `keel run`: one run, or with `--seeds N`, N of them.
pub fn run(a: Args) -> ExitCode {
    match a.seeds {
        Some(n) => run_seeds(a, n),
        None => run_one(a),
    }
}

/// `runs/NAME`, or `runs/NAME-2`, … — the first that does not exist.
fn default_out(name: &str) -> PathBuf {
    let base = Path::new("runs");
    let first = base.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|k| base.join(format!("{name}-{k}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// `keel run RECIPE --seeds N`: the run N times, one after another, as
/// `OUT/seed-1` … `OUT/seed-N` with `model.seed` and `task.seed` set to the
/// seed (the model's initialisation, the sampler's stream and the task's
/// problems); `keel compare OUT` draws them as one arm. The warm starts
/// are cached per user ([`warm_start_cache`]), so every arm and experiment
/// shares them.
fn run_seeds(a: Args, seeds: u32) -> ExitCode {
    if a.resume.is_some() {
        eprintln!(
            "error: `--seeds` starts new runs; resume each with `keel run --resume OUT/seed-N`"
        );
        return ExitCode::from(2);
    }
    let Some(recipe) = a.recipe.clone() else {
        eprintln!("error: `--seeds` needs a recipe file");
        return ExitCode::from(2);
    };
    let base = match &a.out {
        Some(o) => PathBuf::from(o),
        None => default_out(
            &Path::new(&recipe)
                .file_stem()
                .map_or("run".to_string(), |s| s.to_string_lossy().into_owned()),
        ),
    };
    for k in 1..=seeds {
        let mut set = a.set.clone();
        set.push(format!("model.seed={k}"));
        set.push(format!("task.seed={k}"));
        let out = base.join(format!("seed-{k}"));
        if !a.quiet {
            eprintln!("keel run: seed {k} of {seeds} → {}", out.display());
        }
        let code = run_one(Args {
            recipe: Some(recipe.clone()),
            resume: None,
            out: Some(out.to_string_lossy().into_owned()),
            set,
            name: a.name.clone(),
            seeds: None,
            deny_warnings: a.deny_warnings,
            allow_warnings: a.allow_warnings,
            log_samples: a.log_samples,
            judge: a.judge.clone(),
            judge_workers: a.judge_workers,
            judge_timeout: a.judge_timeout,
            judge_failures: a.judge_failures.clone(),
            quiet: a.quiet,
            color: a.color,
        });
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    ExitCode::SUCCESS
}

/// What a run runs: a recipe file with `--set`, or the run a directory
/// describes (`--resume`).
struct Source {
    recipe_path: String,
    /// Which recipe of the file.
    name: Option<String>,
    set: Vec<(String, String)>,
    /// The run directory to continue.
    resume: Option<PathBuf>,
    /// The external judge (`--judge`, or the resumed run's).
    judge: Option<JudgeConfig>,
}

/// One run: a new one from a recipe, or `--resume`.
fn run_one(a: Args) -> ExitCode {
    let color = diagnostics::use_color(a.color);
    let src = match source(&a) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let recipe_path = &src.recipe_path;
    let text = match (&src.resume, std::fs::read_to_string(recipe_path)) {
        (_, Ok(t)) => t,
        (Some(dir), Err(e)) => {
            diagnostics::fail(
                &Error::new(
                    codes::RUN_DIR,
                    format!(
                        "cannot read the recipe `{recipe_path}` that the run started from: {e}"
                    ),
                    format!(
                        "the path comes from `{}`; put the recipe back there, or start a new run",
                        dir.join("run.json").display()
                    ),
                )
                .at(dir.join("run.json").display().to_string()),
            );
            return ExitCode::from(1);
        }
        (None, Err(_)) => match diagnostics::read(recipe_path) {
            Some(t) => t,
            None => return ExitCode::from(1),
        },
    };
    let checked = check_source_with(&Disk, recipe_path, &text, &src.set);
    if !diagnostics_allow_the_run(&checked, recipe_path, &a, color) {
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(src.name.as_deref()) else {
        eprintln!(
            "error: `{recipe_path}` has no recipe{}",
            src.name
                .map(|n| format!(" named `{n}`"))
                .unwrap_or_default()
        );
        return ExitCode::from(1);
    };
    let fingerprint = format!("{:016x}", keel_model::rng::fnv(text.as_bytes()));
    let recipe = &checked.recipes[index].name;
    let Some(out) = run_dir(&src, a.out.as_deref(), &fingerprint, recipe) else {
        return ExitCode::from(1);
    };
    let cache = warm_start_cache(&out);
    let device = match keel_runtime::default_device() {
        Ok(d) => d,
        Err(e) => {
            diagnostics::fail(&e);
            return ExitCode::from(1);
        }
    };
    let opts = RunOptions {
        out: out.clone(),
        resume: src.resume.is_some(),
        progress: std::io::stderr().is_terminal(),
        cache,
        device,
        quiet: a.quiet,
        log_samples: a.log_samples,
        interrupt: interrupt_on_ctrl_c(),
        judge: src.judge.clone(),
    };
    if !a.quiet {
        eprintln!("keel run: {} → {}", recipe_path, out.display());
    }
    let rf = RunFile {
        // Absolute, so that `--resume` works from any directory.
        recipe_path: std::path::absolute(recipe_path)
            .map_or_else(|_| recipe_path.clone(), |p| p.display().to_string()),
        recipe: Some(recipe.clone()),
        set: src.set,
        fingerprint,
        judge: src.judge,
    };
    match run::run(&checked, index, rf, &opts) {
        Ok(s) if s.interrupted => {
            eprintln!(
                "stopped after step {} with a checkpoint; continue with `keel run --resume {}`",
                s.steps,
                out.display()
            );
            ExitCode::from(130)
        }
        Ok(s) => {
            if !a.quiet {
                print_summary(&s, &out);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            diagnostics::fail_with(
                &e,
                recipe_path,
                checked.sources(),
                diagnostics::ErrorFormat::Human,
                color,
            );
            ExitCode::from(1)
        }
    }
}

/// What to run: the recipe and `--set`, or what the directory's run.json
/// says; a failure printed, with its exit code.
fn source(a: &Args) -> Result<Source, ExitCode> {
    match (&a.resume, &a.recipe) {
        (Some(dir), None) if !a.set.is_empty() => {
            diagnostics::fail(
                &Error::new(
                    codes::RESUME_MISMATCH,
                    format!(
                        "`--set {}` with `--resume`: a resumed run continues with the settings it started with",
                        a.set.join(" --set ")
                    ),
                    "drop `--set` to resume; to train on with other settings, start a new run from this one's weights (`--set model.init=\"RUN_DIR/final.safetensors\"`)",
                )
                .at(dir.clone()),
            );
            Err(ExitCode::from(1))
        }
        (Some(dir), None) => {
            let path = Path::new(dir).join("run.json");
            let rf: RunFile = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    diagnostics::fail(
                        &Error::new(
                            codes::RUN_DIR,
                            format!("cannot read the run description: {e}"),
                            "`--resume` takes a directory written by `keel run` (it holds run.json and checkpoints/)",
                        )
                        .at(path.display().to_string()),
                    );
                    return Err(ExitCode::from(1));
                }
            };
            Ok(Source {
                recipe_path: rf.recipe_path,
                name: rf.recipe,
                set: rf.set,
                resume: Some(PathBuf::from(dir)),
                judge: rf.judge,
            })
        }
        (None, Some(recipe)) => match diagnostics::parse_set(&a.set) {
            Ok(_)
                if !(a.judge_timeout.is_finite()
                    && a.judge_timeout > 0.0
                    && a.judge_timeout < 1e9) =>
            {
                eprintln!(
                    "error: --judge-timeout {} is not a number of seconds above 0",
                    a.judge_timeout
                );
                Err(ExitCode::from(1))
            }
            Ok(set) => Ok(Source {
                recipe_path: recipe.clone(),
                name: a.name.clone(),
                set,
                resume: None,
                judge: a.judge.as_ref().map(|command| JudgeConfig {
                    command: command.clone(),
                    workers: a.judge_workers.max(1),
                    timeout_s: a.judge_timeout,
                    on_failure: if a.judge_failures == "skip" {
                        OnFailure::Skip
                    } else {
                        OnFailure::Error
                    },
                }),
            }),
            Err(e) => {
                eprintln!("error: {e}");
                Err(ExitCode::from(1))
            }
        },
        _ => {
            eprintln!("error: give either a recipe file or `--resume RUN_DIR`");
            Err(ExitCode::from(2))
        }
    }
}

/// The run directory: the resumed one, if the recipe is still the one
/// the run started with (its `fingerprint`); `--out`, if it holds no run;
/// else `runs/RECIPE`. `None`: refused, the error printed.
fn run_dir(src: &Source, out: Option<&str>, fingerprint: &str, recipe: &str) -> Option<PathBuf> {
    let recipe_path = &src.recipe_path;
    if let Some(dir) = &src.resume {
        let rf: Option<RunFile> = std::fs::read(dir.join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(rf) = rf
            && rf.fingerprint != fingerprint
        {
            diagnostics::fail(
                &Error::new(
                    codes::RESUME_MISMATCH,
                    "the recipe changed since this run started",
                    format!(
                        "resume with the recipe as it was, or start a new run with `keel run {recipe_path}`"
                    ),
                )
                .at(recipe_path.clone()),
            );
            return None;
        }
        if !has_checkpoint(dir) {
            diagnostics::fail(
                &Error::new(
                    codes::RUN_DIR,
                    format!(
                        "`{}` has no checkpoint to resume from: the run stopped before its first one (during the warm start)",
                        dir.display()
                    ),
                    format!(
                        "start it again with `keel run {recipe_path} --out {}` (the directory is reused)",
                        dir.display()
                    ),
                )
                .at(dir.display().to_string()),
            );
            return None;
        }
        return Some(dir.clone());
    }
    match out {
        Some(o) => {
            let p = PathBuf::from(o);
            // A directory whose run never reached a checkpoint holds
            // nothing to lose: it is started again.
            if p.join("run.json").exists() && has_checkpoint(&p) {
                diagnostics::fail(
                    &Error::new(
                        codes::RUN_DIR,
                        "the directory already holds a run",
                        format!(
                            "continue it with `keel run --resume {o}`, or choose another --out"
                        ),
                    )
                    .at(o),
                );
                return None;
            }
            Some(p)
        }
        None => Some(default_out(recipe)),
    }
}

/// The first Ctrl-C (SIGINT) asks the run to stop after the step
/// in progress, with a checkpoint, as Lightning's and TRL's trainers do; a
/// second one stops at once (exit 130).
fn interrupt_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    let flag = FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let installed = ctrlc::set_handler(move || {
            if seen.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)"
            );
        });
        if let Err(e) = installed {
            eprintln!("warning: Ctrl-C will stop the run at once ({e})");
        }
        flag
    });
    // Each run (of `--seeds`) starts uninterrupted.
    flag.store(false, Ordering::SeqCst);
    flag.clone()
}

/// Where warm starts are cached: `KEEL_CACHE`, else the user's cache
/// (`$XDG_CACHE_HOME/keel/warmstart`, `~/.cache/keel/warmstart`), as
/// transformers and torch cache theirs, so a new experiment folder reuses
/// them; without a home, next to the run directory.
fn warm_start_cache(out: &Path) -> PathBuf {
    if let Some(c) = std::env::var_os("KEEL_CACHE") {
        return PathBuf::from(c);
    }
    let user = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match user {
        Some(c) => c.join("keel").join("warmstart"),
        None => out
            .parent()
            .map_or_else(|| PathBuf::from(".warmstart"), |p| p.join(".warmstart")),
    }
}

/// Whether a run directory holds a checkpoint (a run that can be resumed).
fn has_checkpoint(dir: &Path) -> bool {
    !run::checkpoint::list(&run::dir::RunDir::new(dir).checkpoints()).is_empty()
}

/// The closing lines: steps, time, pass@1 before and after RL, where the
/// metrics are.
fn print_summary(s: &run::Summary, out: &Path) {
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let (warm, before) = if s.warm_start {
        (
            format!(" (warm start {:.1}s)", s.warm_s),
            "after warm start",
        )
    } else {
        (String::new(), "before RL")
    };
    eprintln!(
        "done: {} steps in {:.1}s{warm}; held-out pass@1 {} {before} → {} after RL; pass@k {}",
        s.steps,
        s.rl_s,
        f(s.pass_at_1_warm),
        f(s.pass_at_1_final),
        f(s.pass_at_k_final)
    );
    eprintln!(
        "metrics: {}/metrics.jsonl; report: keel report {}",
        out.display(),
        out.display()
    );
}

/// The checker's diagnostics, printed before anything runs. An error stops
/// the run; so does a key that looks like a typo of an inherited one
/// (W0002): the recipe would train with the old value, silently
/// (`--allow-warnings` trains anyway); with `--deny-warnings` every warning
/// does. Returns whether to go on.
fn diagnostics_allow_the_run(
    checked: &keel_compiler::Checked,
    recipe_path: &str,
    a: &Args,
    color: bool,
) -> bool {
    if checked.diagnostics.is_empty() {
        return true;
    }
    diagnostics::print(
        recipe_path,
        &checked.diagnostics,
        checked.sources(),
        diagnostics::ErrorFormat::Human,
        color,
    );
    if checked.has_errors() {
        return false;
    }
    let stopping: Vec<&str> = checked
        .diagnostics
        .iter()
        .filter(|d| a.deny_warnings || (d.code == codes::PROBABLE_TYPO_KEY && !a.allow_warnings))
        .map(|d| d.code.0)
        .collect();
    if stopping.is_empty() {
        return true;
    }
    let (message, help) = if a.deny_warnings {
        (
            format!(
                "{} warning(s) and --deny-warnings: the run does not start",
                stopping.len()
            ),
            "fix the warnings above, or run without --deny-warnings",
        )
    } else {
        (
            format!(
                "{} like a typo of an inherited key (W0002): the recipe would train without {}",
                plural(stopping.len(), "key looks", "keys look"),
                if stopping.len() == 1 { "it" } else { "them" }
            ),
            "fix the key as the warning suggests, or pass --allow-warnings to train as written",
        )
    };
    diagnostics::fail(&Error::new(codes::RUN_WARNINGS, message, help).at(recipe_path.to_string()));
    false
}

/// `1 warning`, `2 warnings`.
fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
