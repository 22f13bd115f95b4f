//! `keel run`, `keel run --resume` and `keel report` end to end, on a model
//! and batch small enough for the test suite.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn keel(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(cwd)
        .env("KEEL_CACHE", cwd.join("cache"))
        .output()
        .expect("keel runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A recipe `name` extending GRPO with the smallest model and rollout (two
/// prompts, two samples, four tokens; no evaluation but the last), `steps`
/// steps, and `extra` lines.
fn tiny(name: &str, steps: u32, extra: &str) -> String {
    format!(
        "import std/grpo\n\nrecipe {name} extends grpo {{\n    model {{ d_model = 16, layers = 1, heads = 2, context = 48 }}\n    rollout {{ prompts = 2, group = 2, max_tokens = 4 }}\n    optimizer {{ steps = {steps} }}\n    eval {{ every = 0, problems = 2, k = 1 }}\n{extra}}}\n"
    )
}

/// `--set`s for the smallest model and rollout of a stdlib recipe: one
/// block of width 16, 2 prompts, 8 tokens, 2 held-out problems × 1.
const SMALLEST: &[&str] = &[
    "--set",
    "model.d_model=16",
    "--set",
    "model.heads=2",
    "--set",
    "model.layers=1",
    "--set",
    "rollout.max_tokens=8",
    "--set",
    "rollout.prompts=2",
    "--set",
    "eval.problems=2",
    "--set",
    "eval.k=1",
];

const SMALL: &str = r#"import std/grpo

recipe small extends grpo {
    model { d_model = 32, layers = 1, heads = 2, context = 64 }
    task { name = arithmetic, seed = 3, difficulty = 0.5, warmup_steps = 30, warmup_lr = 3e-3 }
    rollout { prompts = 3, group = 4, max_tokens = 16 }
    optimizer { lr = 1e-3, steps = 12 }
    checkpoint { every = 3, keep = 3 }
    eval { every = 4, problems = 8, k = 2 }
}
"#;

/// metrics.jsonl without the wall-clock fields.
fn metrics(run: &Path) -> Vec<Value> {
    let t = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    t.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                for k in ["rollout_s", "train_s", "tokens_per_s", "warm_s"] {
                    o.remove(k);
                }
            }
            v
        })
        .collect()
}

/// Run 12 steps; run again, SIGKILL it after step 6, resume to 12: the
/// metrics (all but wall-clock times) and the final weights are bitwise equal.
#[test]
fn resume_after_sigkill_is_bitwise_identical() {
    resume_is_bitwise("resume", SMALL);
}

/// PPO's small form: the critic (two steps of critic warm-up, two
/// minibatches) and the policy.
const SMALL_PPO: &str = r#"import std/ppo

recipe small extends ppo {
    model { d_model = 32, layers = 1, heads = 2, context = 64 }
    task { name = arithmetic, seed = 3, difficulty = 0.5, warmup_steps = 30, warmup_lr = 3e-3 }
    rollout { prompts = 8, group = 1, max_tokens = 16, minibatches = 2 }
    optimizer { lr = 1e-3, steps = 12 }
    critic { lr = 1e-3, warmup = 2 }
    checkpoint { every = 3, keep = 3 }
    eval { every = 4, problems = 8, k = 2 }
}
"#;

/// The same for a PPO run: the critic's weights and moments are saved and
/// restored, so the metrics (value loss included), the final policy and the
/// critic's last checkpoint are bitwise equal; during `critic.warmup` only
/// the critic trains.
#[test]
fn ppo_resume_after_sigkill_is_bitwise_identical_critic_included() {
    let d = resume_is_bitwise("resume-ppo", SMALL_PPO);
    let m = metrics(&d.join("full"));
    for (k, l) in m.iter().enumerate().skip(1) {
        assert!(l["value_loss"].as_f64().is_some_and(f64::is_finite), "{l}");
        assert!(
            l["critic_grad_norm"].as_f64().is_some_and(f64::is_finite),
            "{l}"
        );
        assert!(l["monitor.explained_variance"].as_f64().is_some(), "{l}");
        assert_eq!(l.get("loss").is_some(), k > 2, "critic warm-up: {l}");
    }
    let critic = |run: &str| {
        std::fs::read(
            d.join(run)
                .join("checkpoints/step-0000012/critic.safetensors"),
        )
        .expect("critic checkpoint")
    };
    assert!(
        critic("full") == critic("killed"),
        "the critic differs after resume"
    );
}

/// GKD's small form: a built-in teacher (its own short warm start).
const SMALL_KD: &str = r#"import std/gkd

recipe small extends gkd {
    model { d_model = 32, layers = 1, heads = 2, context = 64 }
    task { name = arithmetic, seed = 3, difficulty = 0.5, warmup_steps = 30, warmup_lr = 3e-3 }
    teacher { d_model = 32, layers = 2, warmup_steps = 60 }
    rollout { prompts = 3, group = 2, max_tokens = 16 }
    optimizer { lr = 1e-3, steps = 12 }
    checkpoint { every = 3, keep = 3 }
    eval { every = 4, problems = 8, k = 2 }
}
"#;

/// A distillation run resumes bitwise too: the frozen teacher is rebuilt
/// the same (its warm start cached), and line 0 reports its pass@1.
#[test]
fn distillation_resume_after_sigkill_is_bitwise_identical() {
    let d = resume_is_bitwise("resume-kd", SMALL_KD);
    let m = metrics(&d.join("full"));
    assert!(m[0]["teacher_pass_at_1"].as_f64().is_some(), "{}", m[0]);
    assert!(
        m[12]["monitor.forward_kl"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{}",
        m[12]
    );
}

/// A teacher checkpoint whose tokenizer is not the student's is refused at
/// `teacher.init` (E0703), naming both tokenizers; nothing is trained.
#[test]
fn a_teacher_with_another_tokenizer_is_refused() {
    let d = dir("teacher-tok");
    let ck = d.join("teacher");
    std::fs::create_dir_all(&ck).expect("dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/qwen2");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), ck.join(f)).expect("copy");
    }
    std::fs::copy(
        src.join("../wordlevel_tokenizer.json"),
        ck.join("tokenizer.json"),
    )
    .expect("copy");
    let recipe = tiny("kd", 2, "    teacher { init = \"teacher\" }\n")
        .replace("import std/grpo", "import std/gkd")
        .replace("extends grpo", "extends gkd");
    std::fs::write(d.join("kd.recipe"), recipe).expect("write");
    let out = keel(&d, &["run", "-q", "kd.recipe", "--out", "kd"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("error[E0703]"), "{err}");
    assert!(
        err.contains("the teacher's tokenizer is") && err.contains("the student's is"),
        "{err}"
    );
    assert!(
        err.contains("teacher.init") || err.contains("init = \"teacher\""),
        "{err}"
    );
    assert!(!d.join("kd/metrics.jsonl").exists());
}

/// A recipe that reads the critic's `values` without a `critic.loss` is
/// refused before training (E0706, at the read): its critic would never
/// learn.
#[test]
fn values_without_a_critic_loss_are_refused() {
    let d = dir("no-critic-loss");
    let recipe = tiny("v", 2, "    objective.loss = -(credit - values) * logp\n");
    std::fs::write(d.join("v.recipe"), recipe).expect("write");
    let out = keel(&d, &["run", "-q", "v.recipe", "--out", "v"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("error[E0706]") && err.contains("no `critic.loss`"),
        "{err}"
    );
    assert!(!d.join("v/metrics.jsonl").exists());
}

/// Run `recipe` 12 steps into `full`; run it again into `killed`, SIGKILL
/// it after step 6 and resume to 12: metrics and final weights are equal.
fn resume_is_bitwise(name: &str, recipe: &str) -> PathBuf {
    let d = dir(name);
    std::fs::write(d.join("small.recipe"), recipe).expect("write");
    let full = keel(&d, &["run", "-q", "small.recipe", "--out", "full"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    let m_full = metrics(&d.join("full"));
    assert_eq!(m_full.len(), 13, "warm-start line + 12 steps");
    for (k, m) in m_full.iter().enumerate() {
        assert_eq!(m["step"].as_u64(), Some(k as u64));
    }
    assert!(m_full[12]["loss"].as_f64().is_some_and(f64::is_finite));
    assert!(
        m_full[12].get("pass_at_1").is_some(),
        "evaluated at the end"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "-q", "small.recipe", "--out", "killed"])
        .current_dir(&d)
        .env("KEEL_CACHE", d.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = d.join("killed/metrics.jsonl");
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(&lines)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 7 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "run made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let partial = metrics(&d.join("killed"));
    assert!(partial.len() < 13, "the run was killed before it finished");

    let resumed = keel(&d, &["run", "-q", "--resume", "killed"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert_eq!(metrics(&d.join("killed")), m_full);
    let a = std::fs::read(d.join("full/final.safetensors")).expect("weights");
    let b = std::fs::read(d.join("killed/final.safetensors")).expect("weights");
    assert!(a == b, "final weights differ after resume");
    // Only the newest `keep` checkpoints remain.
    let cks = std::fs::read_dir(d.join("killed/checkpoints"))
        .expect("dir")
        .count();
    assert_eq!(cks, 3);
    d
}

/// An absurd learning rate drives the policy away from the reference (KL
/// above 1 nat per token); the guard rolls back, cuts the learning rate, and
/// training goes on with finite losses.
#[test]
fn guard_rolls_back_an_unstable_run() {
    let d = dir("guard");
    let recipe = r#"import std/grpo

recipe unstable extends grpo {
    model { d_model = 32, layers = 1, heads = 2, context = 64 }
    task { name = arithmetic, seed = 3, difficulty = 0.5, warmup_steps = 60, warmup_lr = 3e-3 }
    rollout { prompts = 4, group = 4, max_tokens = 16 }
    optimizer { lr = 0.3, steps = 14, grad_clip = 1e9 }
    checkpoint { every = 2 }
    eval { every = 0, problems = 8, k = 1 }

    guard drift: mean(old_logp - ref_logp) over batch > 1.0 for 2 steps => {
        rollback 4
        optimizer.lr *= 0.01
        warn "the policy drifted from the reference"
    }
}
"#;
    std::fs::write(d.join("unstable.recipe"), recipe).expect("write");
    let out = keel(&d, &["run", "-q", "unstable.recipe", "--out", "run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("run"));
    let fired: Vec<&Value> = m.iter().filter(|l| l.get("events").is_some()).collect();
    assert!(!fired.is_empty(), "the guard never fired: {m:?}");
    let ev = fired[0]["events"].to_string();
    assert!(
        ev.contains("guard `drift`")
            && ev.contains("rollback 4")
            && ev.contains("optimizer.lr *= 0.01"),
        "{ev}"
    );
    assert!(ev.contains("rolled back to the checkpoint of step"), "{ev}");
    let at = fired[0]["step"].as_u64().expect("step");
    let back = fired[0]["rolled_back_to"].as_u64().expect("rolled_back_to");
    assert!(
        back + 4 <= at || back == 0,
        "rolled back from {at} to {back}"
    );
    // After the rollback: the learning rate is at most 1% of the original
    // (less if the guard fires again) and the losses are finite.
    let after: Vec<&Value> = m.iter().filter(|l| l["step"].as_u64() > Some(at)).collect();
    assert!(!after.is_empty());
    assert!(
        (after[0]["lr"].as_f64().expect("lr") - 0.003).abs() < 1e-12,
        "{}",
        after[0]
    );
    for l in after {
        assert!(l["lr"].as_f64().expect("lr") <= 0.003 + 1e-12, "{l}");
        if l.get("rolled_back_to").is_none() && l.get("skipped").is_none() {
            assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
        }
    }
}

/// The learning rate of each RL step of a 4-step run of SMALL with `guard`.
fn lr_under_guard(name: &str, guard: &str) -> Vec<f64> {
    let d = dir(name);
    let recipe = SMALL
        .replace("steps = 12 }", "steps = 4 }")
        .replace("warmup_steps = 30", "warmup_steps = 2")
        .replace(
            "eval { every = 4, problems = 8, k = 2 }",
            &format!("eval {{ every = 0, problems = 4, k = 1 }}\n    {guard}"),
        );
    std::fs::write(d.join("small.recipe"), recipe).expect("write");
    let out = keel(&d, &["run", "-q", "small.recipe", "--out", "run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("run"));
    let rl: Vec<&Value> = m.iter().filter(|l| l.get("loss").is_some()).collect();
    for l in &rl {
        assert!(
            l.get("state.lr").is_none(),
            "`lr` is not a state variable: {l}"
        );
    }
    rl.iter().map(|l| l["lr"].as_f64().expect("lr")).collect()
}

/// `lr *= 0.5` in a guard halves `optimizer.lr` (the checker resolves the
/// name; the runtime logged `state.lr = 0` and kept the rate).
#[test]
fn guard_with_a_bare_key_halves_the_learning_rate() {
    let lr = lr_under_guard("halve", "guard halve: step >= 2 => { lr *= 0.5 }");
    // The guard fires after steps 2 and 3: steps 3 and 4 train at half.
    assert_eq!(lr, vec![1e-3, 1e-3, 5e-4, 2.5e-4]);
}

/// A constant expression in a guard action is folded (it was read as NaN).
#[test]
fn guard_with_a_constant_expression_sets_its_value() {
    let lr = lr_under_guard(
        "fold",
        "guard halve: step >= 2 => { optimizer.lr = 1e-4 * 0.5 }",
    );
    assert_eq!(lr, vec![1e-3, 1e-3, 5e-5, 5e-5]);
}

#[test]
fn report_renders_plots_of_a_run() {
    let d = dir("report");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 5"),
    )
    .expect("write");
    let out = keel(&d, &["run", "-q", "small.recipe", "--out", "r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep = keel(&d, &["report", "r"]);
    assert!(rep.status.success(), "{}", text(&rep.stderr));
    let html = std::fs::read_to_string(d.join("r/report.html")).expect("report.html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    for title in [
        "reward (mean)",
        "held-out pass@k",
        "entropy (mean per token)",
        "KL to the reference",
        "clip fraction",
        "gradient norm",
    ] {
        assert!(html.contains(title), "no plot titled {title}");
    }
    // One polyline per multi-point series, with numeric coordinates inside the plot.
    let n = html.matches("<polyline class=\"series\"").count();
    assert!(n >= 6, "{n} series");
    assert!(
        !html.contains("NaN") && !html.contains("inf"),
        "non-finite coordinates"
    );
    assert!(!html.contains("<script"), "the report needs no scripts");
    // A directory without a run is a located error.
    let bad = keel(&d, &["report", "nowhere"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("error[E0704]"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn bad_task_data_is_located() {
    let d = dir("data");
    let recipe = |path: &str| {
        format!(
            "import std/grpo\n\nrecipe data extends grpo {{\n    model {{ d_model = 16, layers = 1, heads = 2, context = 48 }}\n    task {{ name = jsonl, path = \"{path}\", verifier = exact }}\n    rollout {{ prompts = 2, group = 2, max_tokens = 8 }}\n    optimizer {{ steps = 2 }}\n    eval {{ every = 0, problems = 2, k = 1 }}\n}}\n"
        )
    };
    std::fs::write(d.join("missing.recipe"), recipe("nope.jsonl")).expect("write");
    let out = keel(&d, &["run", "-q", "missing.recipe", "--out", "a"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("nope.jsonl: error[E0700]") && e.contains("help:"),
        "{e}"
    );

    std::fs::write(
        d.join("d.jsonl"),
        "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n{\"prompt\":\"2+2=\"}\n",
    )
    .expect("write");
    std::fs::write(d.join("bad.recipe"), recipe("d.jsonl")).expect("write");
    let out = keel(&d, &["run", "-q", "bad.recipe", "--out", "b"]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("d.jsonl:2: error[E0701]: record has no `answer` field"),
        "{e}"
    );

    // A good file trains.
    std::fs::write(
        d.join("d.jsonl"),
        "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n{\"prompt\":\"2+2=\",\"answer\":\"4\"}\n",
    )
    .expect("write");
    let out = keel(&d, &["run", "-q", "bad.recipe", "--out", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(&d.join("c")).len(), 3);

    // Resuming a directory that is not a run, and reusing a run directory.
    let out = keel(&d, &["run", "--resume", "nowhere"]);
    assert!(
        text(&out.stderr).contains("error[E0704]"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&d, &["run", "-q", "bad.recipe", "--out", "c"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already holds a run"),
        "{}",
        text(&out.stderr)
    );
}

/// Settings, recipes and weights the runtime cannot use are located errors.
#[test]
fn runtime_setting_errors_are_located() {
    let d = dir("settings");
    let run = |name: &str, body: &str| -> String {
        std::fs::write(d.join(name), body).expect("write");
        let out = keel(&d, &["run", "-q", name, "--out", &format!("out-{name}")]);
        assert!(!out.status.success(), "{name} should fail");
        text(&out.stderr)
    };
    // E0703 at the model section's `heads`.
    let e = run(
        "heads.recipe",
        "import std/grpo\n\nrecipe heads extends grpo {\n    model { d_model = 30, heads = 4 }\n}\n",
    );
    assert!(e.contains("heads.recipe:4:27: error[E0703]"), "{e}");
    assert!(e.contains("help:") || e.contains("Help:"), "{e}");
    // E0702: jsonl without a path, at `task.name`.
    let e = run(
        "nopath.recipe",
        "import std/grpo\n\nrecipe nopath extends grpo {\n    task { name = jsonl }\n}\n",
    );
    assert!(e.contains("nopath.recipe:4:12: error[E0702]"), "{e}");
    // E0703: prompts that fill the context, at `model.context`.
    let e = run(
        "ctx.recipe",
        "import std/grpo

recipe ctx extends grpo {
    model { d_model = 16, heads = 2, context = 6 }
}
",
    );
    assert!(
        e.contains("ctx.recipe:4:38: error[E0703]") && e.contains("no room for a response"),
        "{e}"
    );
    // E0702: a character the tokenizer lacks, at its line.
    std::fs::write(
        d.join("u.jsonl"),
        "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n{\"prompt\":\"1+1 ≈\",\"answer\":\"2\"}\n",
    )
    .expect("write");
    let e = run(
        "utf.recipe",
        "import std/grpo\n\nrecipe utf extends grpo {\n    task { name = jsonl, path = \"u.jsonl\" }\n}\n",
    );
    assert!(e.contains("u.jsonl:2: error[E0702]"), "{e}");
    // E0706: the loss reads an input the runtime does not produce.
    let e = run(
        "judge.recipe",
        "import std/grpo\n\nrecipe judged extends grpo {\n    model { d_model = 16, heads = 2 }\n    optimizer { steps = 1 }\n    divergence { value = float(void) * (logsumexp(logits) over vocab) }\n}\n",
    );
    assert!(e.contains("void") && e.contains("E0600"), "{e}");
    // E0707: initial weights that do not exist, or do not fit.
    let e = run(
        "init.recipe",
        "import std/grpo\n\nrecipe init extends grpo {\n    model { d_model = 16, heads = 2, init = \"none.safetensors\" }\n}\n",
    );
    assert!(e.contains("none.safetensors: error[E0707]"), "{e}");
    std::fs::write(d.join("w.safetensors"), b"not a safetensors file").expect("write");
    let e = run(
        "init2.recipe",
        "import std/grpo\n\nrecipe init2 extends grpo {\n    model { d_model = 16, heads = 2, init = \"w.safetensors\" }\n}\n",
    );
    assert!(
        e.contains("w.safetensors: error[E0707]: not a safetensors file"),
        "{e}"
    );
}

/// Weights a run writes start another run (`model.init`); a changed recipe
/// cannot be resumed.
#[test]
fn init_from_a_previous_run_and_resume_guard() {
    let d = dir("init");
    let small = SMALL
        .replace("steps = 12", "steps = 2")
        .replace("warmup_steps = 30", "warmup_steps = 0");
    std::fs::write(d.join("a.recipe"), &small).expect("write");
    let out = keel(&d, &["run", "-q", "a.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = small.replace("recipe small", "recipe b").replace(
        "context = 64 }",
        "context = 64, init = \"a/final.safetensors\" }",
    );
    std::fs::write(d.join("b.recipe"), &b).expect("write");
    let out = keel(&d, &["run", "-q", "b.recipe", "--out", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A model of another width does not load those weights.
    let c = b.replace("d_model = 32", "d_model = 16");
    std::fs::write(d.join("c.recipe"), &c).expect("write");
    let out = keel(&d, &["run", "-q", "c.recipe", "--out", "c"]);
    assert!(
        text(&out.stderr)
            .contains("error[E0707]: tensor `embed` is F32 [88, 32], expected F32 [88, 16]"),
        "{}",
        text(&out.stderr)
    );
    // Editing the recipe, then resuming, is refused.
    std::fs::write(d.join("a.recipe"), small.replace("lr = 1e-3", "lr = 2e-3")).expect("write");
    let out = keel(&d, &["run", "-q", "--resume", "a"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("error[E0705]"),
        "{}",
        text(&out.stderr)
    );
}

/// Every stdlib recipe trains two steps of a tiny model with finite losses,
/// or is refused before training (E0706) because it reads an input the
/// runtime does not produce yet.
#[test]
fn every_stdlib_recipe_runs_or_names_the_missing_input() {
    let d = dir("stdlib");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
    use keel_runtime::batch::inputs::NOT_PRODUCED;
    let mut ran = Vec::new();
    let mut refused = Vec::new();
    for e in std::fs::read_dir(&root).expect("stdlib").flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("recipe") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        for line in src.lines() {
            let Some(name) = line
                .strip_prefix("recipe ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let out = keel(
                &d,
                &[
                    "run",
                    "-q",
                    path.to_str().expect("utf-8"),
                    "--recipe",
                    name,
                    "--out",
                    name,
                    "--set",
                    "optimizer.steps=2",
                    "--set",
                    "task.warmup_steps=0",
                ]
                .into_iter()
                .chain(SMALLEST.iter().copied())
                .collect::<Vec<_>>(),
            );
            let err = text(&out.stderr);
            if out.status.success() {
                let m = metrics(&d.join(name));
                assert_eq!(m.len(), 3, "{name}");
                for l in &m[1..] {
                    let skipped = l.get("skipped").is_some();
                    assert!(
                        skipped || l["loss"].as_f64().is_some_and(f64::is_finite),
                        "{name}: {l}"
                    );
                }
                ran.push(name.to_string());
            } else {
                assert!(err.contains("error[E0706]"), "{name}: {err}");
                assert!(
                    NOT_PRODUCED
                        .iter()
                        .any(|i| err.contains(&format!("has no tensor `{i}`"))),
                    "{name} was refused for another reason: {err}"
                );
                assert!(
                    !d.join(name).join("metrics.jsonl").exists(),
                    "{name} was refused after training began"
                );
                refused.push(name.to_string());
            }
        }
    }
    assert!(
        ran.len() >= 30,
        "only {} ran: {ran:?}; refused {refused:?}",
        ran.len()
    );
    for must in [
        "grpo",
        "dapo",
        "dr_grpo",
        "gspo",
        "rloo",
        "pure",
        "siren",
        "rover",
        "lp_reg",
        "cure",
        "bapo",
        "dph_rl",
        "ppo",
        "epo",
        "epo_smooth",
        "bd_kd",
        "pld",
        "gkd",
        "stable_reinforce",
        "craft_gui",
        "riskpo",
        "hbpo",
        "evol_rl",
    ] {
        assert!(ran.iter().any(|r| r == must), "{must} did not run");
    }
}

/// Headless Chromium renders the report; the screenshot has the window's
/// size and far more ink than a blank page. Skipped when Chromium is absent,
/// unless KEEL_REQUIRE_CHROMIUM is set (CI installs it).
#[test]
fn report_renders_in_headless_chromium() {
    let have = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("KEEL_REQUIRE_CHROMIUM").is_none(),
            "chromium is required but missing"
        );
        eprintln!("skipped: no chromium");
        return;
    }
    let d = dir("chromium");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 4"),
    )
    .expect("write");
    let out = keel(&d, &["run", "-q", "small.recipe", "--out", "r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(keel(&d, &["report", "r"]).status.success());
    let page = format!("file://{}", d.join("r/report.html").display());
    let shot = |name: &str, url: &str| -> Vec<u8> {
        let png = d.join(name);
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", d.join("profile").display()),
                &format!("--screenshot={}", png.display()),
                "--window-size=1200,900",
                url,
            ])
            .output()
            .expect("chromium runs");
        assert!(png.exists(), "no screenshot: {}", text(&out.stderr));
        std::fs::read(png).expect("png")
    };
    let png = shot("report.png", &page);
    assert_eq!(&png[1..4], b"PNG");
    let w = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let h = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert_eq!((w, h), (1200, 900));
    std::fs::write(
        d.join("blank.html"),
        "<!DOCTYPE html><html><body></body></html>",
    )
    .expect("write");
    let blank = shot(
        "blank.png",
        &format!("file://{}", d.join("blank.html").display()),
    );
    assert!(
        png.len() > 5 * blank.len(),
        "the report looks empty: {} vs blank {} bytes",
        png.len(),
        blank.len()
    );
}

/// `model.z_loss` adds coef · mean(logsumexp(logits)²); at initialisation the
/// logits are near zero, so the term is close to ln(V)² with V = 88.
#[test]
fn z_loss_knob_is_measured() {
    let d = dir("zloss");
    let r = SMALL
        .replace("steps = 12", "steps = 1")
        .replace("warmup_steps = 30", "warmup_steps = 0")
        .replace("context = 64 }", "context = 64, z_loss = 1e-3 }");
    std::fs::write(d.join("z.recipe"), r).expect("write");
    let out = keel(&d, &["run", "-q", "z.recipe", "--out", "z"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("z"));
    let z = m[1]["z_loss"].as_f64().expect("z_loss logged");
    let want = 88f64.ln().powi(2);
    assert!((z - want).abs() < 0.1, "{z} vs {want}");
}

/// Gradient accumulation is the same step in less memory: with the
/// minibatch's 12 samples in 3 micro-batches, each step's loss and
/// gradient norm are the unsplit ones (up to float rounding), and so are the
/// weights the next step starts from.
#[test]
fn micro_batches_accumulate_the_unsplit_gradient() {
    let d = dir("micro");
    let base = SMALL
        .replace("steps = 12", "steps = 2")
        .replace("warmup_steps = 30", "warmup_steps = 0")
        .replace(
            "eval { every = 4, problems = 8, k = 2 }",
            "eval { every = 0, problems = 2, k = 1 }",
        );
    std::fs::write(d.join("one.recipe"), &base).expect("write");
    std::fs::write(
        d.join("three.recipe"),
        base.replace("max_tokens = 16 }", "max_tokens = 16, micro_batches = 3 }"),
    )
    .expect("write");
    let a = keel(&d, &["run", "-q", "one.recipe", "--out", "one"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = keel(&d, &["run", "-q", "three.recipe", "--out", "three"]);
    assert!(b.status.success(), "{}", text(&b.stderr));
    let (ma, mb) = (metrics(&d.join("one")), metrics(&d.join("three")));
    assert_eq!(ma.len(), 3);
    for step in 1..3 {
        for key in ["loss", "grad_norm"] {
            let (x, y) = (
                ma[step][key].as_f64().expect("logged"),
                mb[step][key].as_f64().expect("logged"),
            );
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
                "step {step} {key}: {x} unsplit vs {y} in 3 micro-batches"
            );
        }
    }
}

/// Two JSONL problems in words, for the word-level tokenizers below.
const WORD_DATA: &str = "{\"prompt\":\"two plus two is\",\"answer\":\"four\"}\n{\"prompt\":\"one plus two is\",\"answer\":\"three\"}\n";

/// JSONL data with a Hugging Face tokenizer.json trains; a missing tokenizer
/// file is a located error.
#[test]
fn jsonl_with_a_tokenizer_json_trains() {
    let d = dir("hf");
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"<unk>":0,"</s>":1,"two":2,"plus":3,"is":4,"four":5,"one":6,"three":7},"unk_token":"<unk>"}}"#;
    std::fs::write(d.join("tokenizer.json"), tok).expect("write");
    std::fs::write(d.join("d.jsonl"), WORD_DATA).expect("write");
    let recipe = |t: &str| {
        format!(
            "import std/grpo\n\nrecipe hf extends grpo {{\n    model {{ d_model = 16, layers = 1, heads = 2, context = 32 }}\n    task {{ name = jsonl, path = \"d.jsonl\", tokenizer = \"{t}\", warmup_steps = 20 }}\n    rollout {{ prompts = 2, group = 2, max_tokens = 4 }}\n    optimizer {{ steps = 2 }}\n    eval {{ every = 0, problems = 2, k = 2 }}\n}}\n"
        )
    };
    std::fs::write(d.join("hf.recipe"), recipe("tokenizer.json")).expect("write");
    let out = keel(&d, &["run", "-q", "hf.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("a"));
    assert_eq!(m.len(), 3);
    assert!(m[2]["loss"].as_f64().is_some_and(f64::is_finite));
    std::fs::write(d.join("hf2.recipe"), recipe("missing.json")).expect("write");
    let out = keel(&d, &["run", "-q", "hf2.recipe", "--out", "b"]);
    assert!(
        text(&out.stderr).contains("missing.json: error[E0702]: cannot load the tokenizer"),
        "{}",
        text(&out.stderr)
    );
}

/// `keel run` of the small recipe in a fresh directory with one more
/// environment variable.
fn run_small_with(name: &str, var: (&str, &str)) -> Output {
    let d = dir(name);
    std::fs::write(d.join("small.recipe"), SMALL).expect("write");
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "-q", "small.recipe", "--out", "x"])
        .current_dir(&d)
        .env("KEEL_CACHE", d.join("cache"))
        .env(var.0, var.1)
        .output()
        .expect("keel runs")
}

#[test]
fn unknown_device_is_an_error() {
    let out = run_small_with("device", ("KEEL_DEVICE", "tpu"));
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("error[E0708]: KEEL_DEVICE=tpu names no device") && e.contains("help:"),
        "{e}"
    );
}

/// A run whose model and step cannot fit in the memory available is refused
/// with E0606 at `rollout.prompts` (the limit set by hand) before it starts,
/// instead of being killed mid-step.
#[test]
fn run_beyond_memory_is_refused() {
    let out = run_small_with("memory", ("KEEL_MEMORY_LIMIT", "1000"));
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("error[E0606]: the model and one training step need ")
            && e.contains("; 1.0 kB of memory is available")
            && e.contains("`rollout.prompts`")
            && e.contains("lower `rollout.prompts` or `rollout.group`"),
        "{e}"
    );
}

/// CURE's stage 1 branches: 4 first responses per prompt, each cut at a
/// high-entropy token with 3 continuations — up to 16 samples per prompt;
/// stage 2 (plain DAPO) samples `rollout.group` per prompt.
#[test]
fn cure_branches_in_stage_one_only() {
    let d = dir("cure");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib/cure.recipe");
    let out = keel(
        &d,
        &[
            "run",
            "-q",
            root.to_str().expect("utf-8"),
            "--out",
            "c",
            "--set",
            "optimizer.steps=4",
            "--set",
            "curriculum.stage_steps=2",
        ]
        .into_iter()
        .chain(SMALLEST.iter().copied())
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("c"));
    let samples: Vec<u64> = m[1..]
        .iter()
        .map(|l| l["samples"].as_u64().expect("samples"))
        .collect();
    // Stage 1: 2 prompts × (4 + 4·3) when every first response has ≥ 2 tokens
    // (the branching itself is checked in keel-runtime's unit tests).
    assert!(
        samples[0] > 8 && samples[0] <= 32 && samples[1] > 8 && samples[1] <= 32,
        "{samples:?}"
    );
    // Stage 2: 2 prompts × group 16, no branching.
    assert_eq!(&samples[2..], &[32, 32]);
}

/// `keel bench loss` times the interpreter and the fused kernels on a
/// synthetic batch (the loss they agree on); oversized vocabulary batches
/// are refused.
#[test]
fn bench_loss_reports_tokens_per_second() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bench = |args: &str| {
        let mut argv = vec!["bench", "loss"];
        argv.extend(args.split_whitespace());
        keel(&root, &argv)
    };
    let out = bench("stdlib/dapo.recipe --tokens 4096 --seq-len 64 --iters 1 --json");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).expect("json");
    assert_eq!(v["t"], 64);
    assert_eq!(v["b"].as_u64().map(|b| b % 8), Some(0), "whole groups");
    let be = &v["backends"][0];
    assert_eq!(be["backend"], "interp");
    assert!(be["tokens_per_s"].as_f64().is_some_and(|x| x > 0.0));
    assert!(be["gb_per_s"].as_f64().is_some_and(|x| x > 0.0));
    let k = &v["backends"][1];
    assert_eq!(k["backend"], "kernel");
    assert_eq!(k["available"], true);
    assert!(k["tokens_per_s"].as_f64().is_some_and(|x| x > 0.0));
    // A list of backends, in the order given; an unknown one is an error
    // naming the ones that exist.
    let two = bench(
        "stdlib/grpo.recipe --tokens 2048 --seq-len 64 --vocab 0 --iters 1 --backend kernel,interp --json",
    );
    assert!(two.status.success(), "{}", text(&two.stderr));
    let v: Value = serde_json::from_str(text(&two.stdout).trim()).expect("json");
    let names: Vec<&str> = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["backend"].as_str())
        .collect();
    assert_eq!(names, ["kernel", "interp"]);
    let bad = bench("stdlib/grpo.recipe --tokens 2048 --backend interp,gpu");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("unknown backend `gpu`")
            && text(&bad.stderr).contains("a comma-separated list"),
        "{}",
        text(&bad.stderr)
    );
    // Beyond what the interpreter holds: refused while it is asked for,
    // timed without it.
    let big = bench("stdlib/grpo.recipe --tokens 1000000 --vocab 4096");
    assert_eq!(big.status.code(), Some(2));
    assert!(
        text(&big.stderr).contains("lower --tokens or --vocab")
            && text(&big.stderr).contains("`--backend kernel,device`"),
        "{}",
        text(&big.stderr)
    );
    let kernel = bench(
        "stdlib/grpo.recipe --tokens 512 --seq-len 64 --vocab 66000 --backend kernel --iters 1 --json",
    );
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    let v: Value = serde_json::from_str(text(&kernel.stdout).trim()).expect("json");
    assert!(
        v["b"]
            .as_u64()
            .zip(v["t"].as_u64())
            .map(|(b, t)| b * t * 66000)
            > Some(32 << 20),
        "{v}"
    );
    assert_eq!(v["backends"][0]["available"], true);
    // More than the machine has: an error before anything is allocated,
    // with or without a vocabulary, however large the numbers.
    for args in [
        "stdlib/grpo.recipe --tokens 100000000 --vocab 151936 --backend kernel",
        "stdlib/grpo.recipe --tokens 100000000000 --vocab 0 --backend kernel",
        "stdlib/grpo.recipe --tokens 18446744073709551615 --vocab 18446744073709551615 --backend kernel",
    ] {
        let huge = bench(args);
        assert_eq!(huge.status.code(), Some(2), "{args}");
        assert!(
            text(&huge.stderr).contains("of memory is available"),
            "{args}: {}",
            text(&huge.stderr)
        );
    }
}

/// `keel compare`: two seeds of one setting form one arm (mean with a
/// min–max band), a third run with another setting is an arm of its own;
/// summary.json's numbers are the runs' own metrics.
#[test]
fn compare_groups_seeds_into_arms_with_bands_and_a_summary() {
    let d = dir("compare");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 4"),
    )
    .expect("write");
    // `--seeds 2`: seeds/seed-1 and seeds/seed-2, model and task seeds set.
    let r = keel(
        &d,
        &[
            "run",
            "-q",
            "small.recipe",
            "--seeds",
            "2",
            "--out",
            "seeds",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let r = keel(
        &d,
        &[
            "run",
            "-q",
            "small.recipe",
            "--out",
            "hot",
            "--set",
            "rollout.temperature=1.5",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let (s1, s2) = ("seeds/seed-1", "seeds/seed-2");
    assert_ne!(
        metrics(&d.join(s1)),
        metrics(&d.join(s2)),
        "the seeds differ"
    );
    let r = keel(&d, &["compare", s1, s2, "hot", "--out", "cmp"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("cmp/summary.json")).expect("summary.json"),
    )
    .expect("json");
    let arms = summary["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2, "{summary}");
    assert_eq!(arms[0]["arm"], "small");
    assert_eq!(arms[0]["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(arms[1]["arm"], "small (rollout.temperature=1.5)");
    // The arm's final pass@1 is the mean of its seeds' last pass@1.
    let last = |run: &str, key: &str| {
        metrics(&d.join(run))
            .iter()
            .filter_map(|l| l.get(key)?.as_f64())
            .next_back()
            .expect("logged")
    };
    let want = (last(s1, "pass_at_1") + last(s2, "pass_at_1")) / 2.0;
    let got = arms[0]["final_pass_at_1"]["mean"].as_f64().expect("mean");
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert_eq!(arms[0]["final_pass_at_1"]["n"], 2);
    assert!(arms[0].get("final_pass_at_2").is_some(), "{summary}");
    let html = std::fs::read_to_string(d.join("cmp/compare.html")).expect("compare.html");
    assert!(html.contains("small (mean of 2 seeds)"), "legend per arm");
    assert!(html.contains("class=\"band\""), "a band for the seeds");
    // The directory `--seeds` wrote stands for its seeds.
    let r = keel(&d, &["compare", "seeds", "hot", "--out", "cmp2"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let again = std::fs::read_to_string(d.join("cmp2/summary.json")).expect("summary.json");
    assert_eq!(
        serde_json::from_str::<Value>(&again).expect("json"),
        summary,
        "the same comparison"
    );
    assert!(html.contains("class=\"grid\""), "grid lines");
    assert!(!html.contains("NaN") && !html.contains("<script"));
    let bad = keel(&d, &["compare", s1, "nowhere"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("error[E0704]"),
        "{}",
        text(&bad.stderr)
    );
    // `--baseline`: the hot arm's seeds paired with the baseline's same
    // seeds; the paired mean is the mean of the per-seed differences.
    let r = keel(
        &d,
        &[
            "run",
            "-q",
            "small.recipe",
            "--seeds",
            "2",
            "--out",
            "hotseeds",
            "--set",
            "rollout.temperature=1.5",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let r = keel(
        &d,
        &[
            "compare",
            "hotseeds",
            "seeds",
            "--baseline",
            "small",
            "--out",
            "cmp3",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("cmp3/summary.json")).expect("summary.json"),
    )
    .expect("json");
    let paired = &summary["paired"];
    assert_eq!(paired["baseline"], "small", "{summary}");
    let arm = &paired["arms"][0];
    assert_eq!(arm["arm"], "small (rollout.temperature=1.5)");
    assert_eq!(
        arm["seeds"],
        serde_json::json!(["model.seed=1, task.seed=1", "model.seed=2, task.seed=2"])
    );
    let diff = |k: usize| {
        last(&format!("hotseeds/seed-{k}"), "pass_at_1")
            - last(&format!("seeds/seed-{k}"), "pass_at_1")
    };
    let want = (diff(1) + diff(2)) / 2.0;
    let p1 = &arm["metrics"]["final_pass_at_1"];
    assert!(
        (p1["mean"].as_f64().expect("mean") - want).abs() < 1e-12,
        "{p1}"
    );
    assert_eq!(p1["n"], 2);
    // Two seeds: the interval runs from the smaller difference to the larger.
    let (lo, hi) = (diff(1).min(diff(2)), diff(1).max(diff(2)));
    assert!((p1["lo"].as_f64().expect("lo") - lo).abs() < 1e-12, "{p1}");
    assert!((p1["hi"].as_f64().expect("hi") - hi).abs() < 1e-12, "{p1}");
    let html = std::fs::read_to_string(d.join("cmp3/compare.html")).expect("compare.html");
    assert!(
        html.contains("Paired differences against <code>small</code>"),
        "{html}"
    );
    // An arm whose seeds are not the baseline's is refused, at its run.
    let bad = keel(&d, &["compare", "seeds", "hot", "--baseline", "small"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains(
            "hot/run.json: error[E0704]: arm `small (rollout.temperature=1.5)` ran seeds [recipe]"
        ) && err.contains("paired differences need the same seeds"),
        "{err}"
    );
    let bad = keel(
        &d,
        &["compare", "seeds", "hotseeds", "--baseline", "nothing"],
    );
    assert!(
        text(&bad.stderr).contains("--baseline `nothing` is none of the arms"),
        "{}",
        text(&bad.stderr)
    );
}

/// SmolLM2-135M-Instruct's GGUF file in the checkout's venv.
fn smollm2() -> Option<PathBuf> {
    keel_model::gguf::smollm2(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// RL on a real model: SmolLM2-135M from its GGUF file, 2 prompts × 4
/// samples, 16 new tokens, 2 steps. The losses are finite, the final
/// weights come back as a Hugging Face directory, which Keel reloads to the
/// same next-token distribution and (with the venv) transformers loads.
#[test]
fn rl_on_smollm2_from_gguf_writes_an_hf_checkpoint() {
    let Some(gguf) = smollm2() else { return };
    let d = dir("smollm2");
    let recipe = format!(
        r#"import std/grpo

recipe smol extends grpo {{
    model {{ init = "{}", context = 112 }}
    task {{ name = arithmetic, seed = 1, difficulty = 0.3 }}
    rollout {{ prompts = 2, group = 4, max_tokens = 16, temperature = 1.0 }}
    eval {{ every = 100, problems = 2, k = 1 }}
    optimizer {{ lr = 1e-5, steps = 2 }}
}}
"#,
        gguf.display()
    );
    std::fs::write(d.join("smol.recipe"), recipe).expect("write");
    let r = keel(&d, &["run", "-q", "smol.recipe", "--out", "run"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let m = metrics(&d.join("run"));
    let losses: Vec<f64> = m.iter().filter_map(|l| l["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 2, "{m:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let hf = d.join("run/final-hf");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert!(hf.join(f).exists(), "final-hf/{f}");
    }
    // Keel reads its own HF directory back: same shape, a next token.
    let a = keel(
        &d,
        &["inspect", "run/final-hf", "--json", "--prompt", "12+7="],
    );
    assert!(a.status.success(), "{}", text(&a.stderr));
    let v: Value = serde_json::from_slice(&a.stdout).expect("json");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["kv_heads"], 3);
    let top = v["next_token"].as_array().expect("top-10");
    assert_eq!(top.len(), 10);
    // transformers loads it and agrees on the most likely next token.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if py.exists() {
        let ids: Vec<u64> = v["prompt_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let script = format!(
            "import torch, transformers as t\n\
             m = t.AutoModelForCausalLM.from_pretrained({:?}, dtype=torch.float32)\n\
             z = m(input_ids=torch.tensor([{ids:?}])).logits[0, -1]\n\
             print(int(z.argmax()), float(torch.log_softmax(z, -1).max()))\n",
            hf.display().to_string()
        );
        let out = Command::new(&py)
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let s = text(&out.stdout);
        let mut it = s.split_whitespace();
        let id: u64 = it.next().and_then(|x| x.parse().ok()).expect("id");
        let lp: f64 = it.next().and_then(|x| x.parse().ok()).expect("logp");
        assert_eq!(Some(id), top[0]["id"].as_u64(), "argmax");
        let keel_lp = top[0]["logp"].as_f64().expect("logp");
        assert!((lp - keel_lp).abs() < 1e-3, "{lp} vs {keel_lp}");
        // The instruct model keeps its chat template and special tokens:
        // transformers' apply_chat_template and `keel inspect --chat` give
        // the same ids, and the tokenizer has an EOS and a pad token.
        let c = keel(
            &d,
            &[
                "inspect",
                "run/final-hf",
                "--json",
                "--chat",
                "--prompt",
                "What is 12 + 7?",
            ],
        );
        assert!(c.status.success(), "{}", text(&c.stderr));
        let v: Value = serde_json::from_slice(&c.stdout).expect("json");
        let script = format!(
            "import transformers as t\n\
             k = t.AutoTokenizer.from_pretrained({:?})\n\
             ids = k.apply_chat_template([{{'role': 'user', 'content': 'What is 12 + 7?'}}], add_generation_prompt=True, tokenize=True)\n\
             ids = ids['input_ids'] if hasattr(ids, 'keys') else ids\n\
             print(list(ids), k.eos_token, k.pad_token is not None)\n",
            hf.display().to_string()
        );
        let out = Command::new(&py)
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let want = format!(
            "{} <|im_end|> True",
            serde_json::to_string(&v["prompt_ids"])
                .expect("ids")
                .replace(',', ", ")
        );
        assert_eq!(text(&out.stdout).trim(), want);
    }
}

/// `keel compare`'s page renders in headless Chromium with one plot (SVG)
/// per series the runs logged, each also written as plots/NAME.svg; runs
/// that cannot share a page give located errors, not a panic: the same
/// recipe name from different recipe text, different `eval.k`, a missing
/// run directory, a truncated metrics.jsonl.
#[test]
fn compare_renders_in_chromium_and_refuses_what_cannot_be_compared() {
    let d = dir("compare-page");
    let four = SMALL.replace("steps = 12", "steps = 4");
    std::fs::write(d.join("small.recipe"), &four).expect("write");
    for (out, temp) in [("a", "1.0"), ("b", "1.5")] {
        let set = format!("rollout.temperature={temp}");
        let r = keel(
            &d,
            &["run", "-q", "small.recipe", "--out", out, "--set", &set],
        );
        assert!(r.status.success(), "{}", text(&r.stderr));
    }
    let r = keel(&d, &["compare", "a", "b", "--out", "cmp"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let html = std::fs::read_to_string(d.join("cmp/compare.html")).expect("page");
    let figures = html.matches("<svg").count();
    // The small recipe logs reward, correct, entropy, length, KL, loss,
    // gradient norm, clip fraction, lr, pass@1 and pass@2 (PLOTS).
    let svgs = std::fs::read_dir(d.join("cmp/plots"))
        .expect("plots/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count();
    assert_eq!(svgs, figures, "one file per plot");
    assert!(figures >= 8, "{figures} plots");
    let have = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", d.join("profile").display()),
                "--dump-dom",
                &format!("file://{}", d.join("cmp/compare.html").display()),
            ])
            .output()
            .expect("chromium runs");
        let dom = text(&out.stdout);
        assert_eq!(
            dom.matches("<svg").count(),
            figures,
            "Chromium's DOM has every plot: {}",
            text(&out.stderr)
        );
        assert!(dom.contains("<table>"), "the summary table renders");
    } else {
        assert!(
            std::env::var_os("KEEL_REQUIRE_CHROMIUM").is_none(),
            "chromium is required but missing"
        );
        eprintln!("skipped the Chromium part: no chromium");
    }
    let fails = |args: &[&str], want: &str| {
        let r = keel(&d, args);
        assert!(!r.status.success(), "{args:?} succeeded");
        let e = text(&r.stderr);
        assert!(
            e.contains("error[E0704]") && e.contains(want),
            "{args:?}: {e}"
        );
        assert!(e.contains("help:"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    // The same recipe name from other text: not seeds of one arm.
    std::fs::create_dir_all(d.join("other")).expect("dir");
    std::fs::write(
        d.join("other/small.recipe"),
        four.replace("lr = 1e-3", "lr = 2e-3"),
    )
    .expect("write");
    let r = keel(
        &d,
        &[
            "run",
            "-q",
            "other/small.recipe",
            "--out",
            "c",
            "--set",
            "rollout.temperature=1.0",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    fails(&["compare", "a", "c"], "different recipe text");
    // Another eval.k.
    let r = keel(
        &d,
        &[
            "run",
            "-q",
            "small.recipe",
            "--out",
            "k3",
            "--set",
            "eval.k=3",
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    fails(&["compare", "a", "k3"], "different k");
    // A missing directory and a truncated metrics file, located.
    fails(&["compare", "a", "nowhere"], "nowhere/run.json");
    let m = std::fs::read_to_string(d.join("b/metrics.jsonl")).expect("metrics");
    let cut = &m[..m.len() - 20];
    std::fs::write(d.join("b/metrics.jsonl"), cut).expect("write");
    let lines = cut.lines().count();
    fails(&["compare", "a", "b"], &format!("b/metrics.jsonl:{lines}"));
}

/// The three experiments of `examples/findings/` in their smallest form:
/// every arm, one seed, 3 RL steps after a 20-step warm start, then
/// `keel compare` over the arms of each (the READMEs' command, shrunk).
#[test]
fn findings_run_in_their_smallest_form() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/findings");
    let d = dir("findings");
    for finding in ["entropy", "divergence", "min_form"] {
        let mut arms: Vec<PathBuf> = std::fs::read_dir(root.join(finding))
            .expect("finding dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "recipe"))
            .collect();
        arms.sort();
        assert!(arms.len() >= 3, "{finding}: {arms:?}");
        let mut outs = Vec::new();
        for arm in &arms {
            let stem = arm.file_stem().and_then(|s| s.to_str()).expect("name");
            let out = format!("{finding}/{stem}");
            let r = keel(
                &d,
                &[
                    "run",
                    "-q",
                    &arm.display().to_string(),
                    "--out",
                    &out,
                    "--set",
                    "optimizer.steps=3",
                    "--set",
                    "task.warmup_steps=20",
                    "--set",
                    "eval.problems=4",
                    "--set",
                    "eval.every=3",
                ],
            );
            assert!(r.status.success(), "{finding}/{stem}: {}", text(&r.stderr));
            let m = metrics(&d.join(&out));
            assert_eq!(m.len(), 4, "{finding}/{stem}: warm start + 3 steps");
            assert!(
                m[1..]
                    .iter()
                    .all(|l| l["loss"].as_f64().is_some_and(f64::is_finite)),
                "{finding}/{stem}: {m:?}"
            );
            outs.push(out);
        }
        let mut args = vec!["compare".to_string()];
        args.extend(outs.iter().cloned());
        args.extend(["--out".to_string(), format!("{finding}-cmp")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = keel(&d, &args);
        assert!(r.status.success(), "{finding}: {}", text(&r.stderr));
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(d.join(format!("{finding}-cmp/summary.json")))
                .expect("summary"),
        )
        .expect("json");
        assert_eq!(
            s["arms"].as_array().map(Vec::len),
            Some(arms.len()),
            "{finding}"
        );
    }
}

/// `model.init = "DIR"`: a Hugging Face directory (the tiny random Qwen2 of
/// tests/fixtures/hf, q/k/v biases and GQA, with a word-level tokenizer.json
/// put beside it) trains, is written back as `final-hf/`, which `keel
/// inspect` reads; a config Keel cannot run is refused with E0709 at the
/// file and key, and at `model.init` in the recipe.
#[test]
fn hf_directory_trains_and_unsupported_configs_are_located() {
    let d = dir("hf-dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/qwen2");
    let ck = d.join("ck");
    std::fs::create_dir_all(&ck).expect("dir");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), ck.join(f)).expect("copy");
    }
    // Ids 0..8 of the fixture's 96; its eos_token_id is 2.
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[
        {"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
        {"id":2,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"<unk>":0,"<s>":1,"</s>":2,"two":3,"plus":4,"is":5,"four":6,"one":7,"three":8},"unk_token":"<unk>"}}"#;
    std::fs::write(ck.join("tokenizer.json"), tok).expect("write");
    std::fs::write(d.join("d.jsonl"), WORD_DATA).expect("write");
    let recipe = |init: &str| {
        format!(
            "import std/grpo\n\nrecipe hf extends grpo {{\n    model {{ init = \"{init}\", context = 24 }}\n    task {{ name = jsonl, path = \"d.jsonl\" }}\n    rollout {{ prompts = 2, group = 2, max_tokens = 4 }}\n    optimizer {{ steps = 2 }}\n    eval {{ every = 0, problems = 2, k = 2 }}\n}}\n"
        )
    };
    std::fs::write(d.join("ok.recipe"), recipe("ck")).expect("write");
    let out = keel(&d, &["run", "-q", "ok.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("a"));
    assert_eq!(m.len(), 3);
    assert!(m[2]["loss"].as_f64().is_some_and(f64::is_finite), "{m:?}");
    let i = keel(&d, &["inspect", "a/final-hf", "--json"]);
    assert!(i.status.success(), "{}", text(&i.stderr));
    let v: Value = serde_json::from_slice(&i.stdout).expect("json");
    assert_eq!(
        (
            v["family"].as_str(),
            v["kv_heads"].as_u64(),
            v["qkv_bias"].as_bool()
        ),
        (Some("qwen2"), Some(2), Some(true))
    );
    // A chat template: `keel inspect --chat` renders the prompt through
    // it; a conversation in the data trains through it, and without a
    // template (`task.chat = off`) it is refused at its line.
    std::fs::write(
        ck.join("chat_template.jinja"),
        "{% for m in messages %}<s> {{ m.content }} </s> {% endfor %}{% if add_generation_prompt %}<s>{% endif %}",
    )
    .expect("write");
    let i = keel(
        &d,
        &["inspect", "ck", "--json", "--chat", "--prompt", "two plus"],
    );
    assert!(i.status.success(), "{}", text(&i.stderr));
    let v: Value = serde_json::from_slice(&i.stdout).expect("json");
    assert_eq!(v["prompt_text"], "<s> two plus </s> <s>");
    assert_eq!(v["prompt_ids"], serde_json::json!([1, 3, 4, 2, 1]));
    assert_eq!(v["chat_template_compiles"], true);
    std::fs::write(
        d.join("c.jsonl"),
        "{\"prompt\":[{\"role\":\"system\",\"content\":\"one\"},{\"role\":\"user\",\"content\":\"two plus two is\"}],\"answer\":\"four\"}\n{\"prompt\":\"one plus two is\",\"answer\":\"three\"}\n",
    )
    .expect("write");
    let chat = recipe("ck").replace("d.jsonl", "c.jsonl");
    std::fs::write(d.join("chat.recipe"), &chat).expect("write");
    let out = keel(&d, &["run", "-q", "chat.recipe", "--out", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(
        d.join("off.recipe"),
        chat.replace("path = \"c.jsonl\"", "path = \"c.jsonl\", chat = off"),
    )
    .expect("write");
    // With `task.chat = off` a conversation's last message is the prompt
    // as it is (how verl's conversations reach a model without a template).
    let out = keel(&d, &["run", "-q", "off.recipe", "--out", "o"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(
        d.join("bad.recipe"),
        chat.replace("path = \"c.jsonl\"", "path = \"d.jsonl\", chat = on"),
    )
    .expect("write");
    std::fs::remove_file(ck.join("chat_template.jinja")).expect("rm");
    let out = keel(&d, &["run", "-q", "bad.recipe", "--out", "o2"]);
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("no chat template") && e.contains("bad.recipe:5"),
        "{e}"
    );
    // A family Keel cannot run.
    let cfg = std::fs::read_to_string(ck.join("config.json")).expect("config");
    std::fs::write(
        ck.join("config.json"),
        cfg.replace("\"model_type\": \"qwen2\"", "\"model_type\": \"gpt2\""),
    )
    .expect("write");
    let out = keel(&d, &["run", "-q", "ok.recipe", "--out", "b"]);
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("[E0709]") && e.contains("ck/config.json: `model_type`: model_type `gpt2`"),
        "{e}"
    );
    assert!(e.contains("ok.recipe:4"), "located in the recipe too: {e}");
    let i = keel(&d, &["inspect", "d.jsonl"]);
    assert!(
        text(&i.stderr).contains("error[E0709]"),
        "{}",
        text(&i.stderr)
    );
}

/// `keel run` prints the checker's warnings before it trains. A key that
/// looks like a typo of an inherited one (W0002) stops the run before
/// anything is written (E0710), unless `--allow-warnings`; with
/// `--deny-warnings` any warning does.
#[test]
fn warnings_are_printed_and_a_typo_key_stops_the_run() {
    let d = dir("warnings");
    let recipe = |extra: &str| tiny("w", 1, &format!("    {extra}\n"));
    std::fs::write(d.join("typo.recipe"), recipe("clip.eps_hihg = 0.28")).expect("write");
    let out = keel(&d, &["run", "-q", "typo.recipe", "--out", "a"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("W0002") && e.contains("eps_high"), "{e}");
    assert!(
        e.contains("typo.recipe: error[E0710]") && e.contains("--allow-warnings"),
        "{e}"
    );
    assert!(!d.join("a").exists(), "a refused run writes nothing");
    let out = keel(
        &d,
        &["run", "-q", "typo.recipe", "--out", "b", "--allow-warnings"],
    );
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("W0002"), "the warning is still printed: {e}");
    assert_eq!(metrics(&d.join("b")).len(), 2);
    // Any warning, with --deny-warnings: an unusual learning rate (W0003).
    std::fs::write(d.join("lr.recipe"), recipe("optimizer.lr = 0.5")).expect("write");
    let out = keel(
        &d,
        &["run", "-q", "lr.recipe", "--out", "c", "--deny-warnings"],
    );
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("W0003") && e.contains("error[E0710]") && e.contains("--deny-warnings"),
        "{e}"
    );
    assert!(!d.join("c").exists());
}

/// `keel run --resume DIR --set K=V` is refused (E0705): a resumed run
/// continues with the settings it started with, and a `--set` it would
/// ignore says so instead.
#[test]
fn resume_refuses_set_instead_of_ignoring_it() {
    let d = dir("resume-set");
    std::fs::write(d.join("r.recipe"), tiny("r", 1, "")).expect("write");
    let out = keel(&d, &["run", "-q", "r.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keel(
        &d,
        &["run", "-q", "--resume", "a", "--set", "optimizer.steps=60"],
    );
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("a: error[E0705]")
            && e.contains("--set optimizer.steps=60")
            && e.contains("final.safetensors"),
        "{e}"
    );
    assert_eq!(metrics(&d.join("a")).len(), 2, "the run is left as it was");
}

/// Half-made run directories do not trap: a run refused before training
/// leaves no directory; a directory whose run stopped before its first
/// checkpoint (Ctrl-C in the warm start) is refused by `--resume` at once,
/// with the command that starts it again, and that command reuses it.
#[test]
fn half_made_run_directories_are_started_again() {
    let d = dir("half-made");
    let recipe = &tiny("h", 1, "");
    std::fs::write(d.join("h.recipe"), recipe).expect("write");
    // Refused before training (E0706): nothing written.
    std::fs::write(
        d.join("t.recipe"),
        recipe.replace(
            "    optimizer { steps = 1 }",
            "    optimizer { steps = 1 }\n    divergence { value = float(void) * (logsumexp(logits) over vocab) }",
        ),
    )
    .expect("write");
    let out = keel(&d, &["run", "-q", "t.recipe", "--out", "t"]);
    assert!(!out.status.success());
    assert!(!d.join("t").exists(), "a refused run leaves a directory");
    // Stopped in the warm start: run.json, no checkpoint.
    let out = keel(&d, &["run", "-q", "h.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_json = std::fs::read(d.join("a/run.json")).expect("run.json");
    std::fs::create_dir_all(d.join("b")).expect("dir");
    std::fs::write(d.join("b/run.json"), run_json).expect("write");
    let out = keel(&d, &["run", "-q", "--resume", "b"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("b: error[E0704]")
            && e.contains("no checkpoint")
            && e.contains("h.recipe --out b"),
        "{e}"
    );
    let out = keel(&d, &["run", "-q", "h.recipe", "--out", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(&d.join("b")), metrics(&d.join("a")));
}

/// `keel run --log-samples N` writes N trajectories a step to
/// RUN_DIR/samples.jsonl (step, group, prompt, reward, correctness, and the
/// policy's turn); a resumed run continues the file where its checkpoint
/// was taken; `keel report` shows the last step's.
#[test]
fn log_samples_writes_trajectories_that_the_report_shows() {
    let d = dir("samples");
    std::fs::write(
        d.join("s.recipe"),
        "import std/grpo\n\nrecipe s extends grpo {\n    model { d_model = 16, layers = 1, heads = 2, context = 48 }\n    rollout { prompts = 2, group = 2, max_tokens = 4 }\n    optimizer { steps = 3 }\n    checkpoint { every = 2 }\n    eval { every = 0, problems = 2, k = 1 }\n}\n",
    )
    .expect("write");
    let out = keel(
        &d,
        &["run", "-q", "s.recipe", "--out", "a", "--log-samples", "3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |run: &str| -> Vec<Value> {
        std::fs::read_to_string(d.join(run).join("samples.jsonl"))
            .expect("samples.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let s = read("a");
    assert_eq!(s.len(), 3 * 3, "3 a step for 3 steps");
    let m = metrics(&d.join("a"));
    for (k, l) in s.iter().enumerate() {
        let step = k / 3 + 1;
        assert_eq!(l["step"], step as u64, "{l}");
        assert!(l["group"].as_u64().is_some_and(|g| g < 2), "{l}");
        assert!(
            l["prompt"].as_str().is_some_and(|p| p.ends_with('=')),
            "{l}"
        );
        let turns = l["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 1);
        assert_eq!(
            (&turns[0]["role"], &turns[0]["trained"]),
            (&serde_json::json!("policy"), &serde_json::json!(true))
        );
        assert!(turns[0]["text"].is_string(), "{l}");
        assert!(l["reward"].is_number() && l["correct"].is_boolean(), "{l}");
        // Without a `reward` section the reward is correctness.
        assert_eq!(
            l["reward"].as_f64() == Some(1.0),
            l["correct"] == true,
            "{l}"
        );
        assert!(m[step]["reward_mean"].is_number());
    }
    // Resumed from the step-2 checkpoint: the file is cut back to it and
    // continued, equal to the uninterrupted one.
    let state = d.join("a/checkpoints/step-0000003");
    std::fs::remove_dir_all(&state).expect("drop the last checkpoint");
    let out = keel(&d, &["run", "-q", "--resume", "a", "--log-samples", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read("a"), s);
    let rep = keel(&d, &["report", "a"]);
    assert!(rep.status.success(), "{}", text(&rep.stderr));
    let html = std::fs::read_to_string(d.join("a/report.html")).expect("report");
    assert!(
        html.contains("Samples of step 3"),
        "no samples in the report"
    );
}

/// `keel report` says which recipe and settings made the run and pass@1
/// and pass@k after the warm start and at the end, and plots the recipe's
/// `monitor` values as `keel compare` does.
#[test]
fn report_shows_the_recipe_pass_at_k_and_monitors() {
    let d = dir("report-header");
    std::fs::write(
        d.join("m.recipe"),
        "import std/grpo\n\nrecipe watched extends grpo {\n    model { d_model = 16, layers = 1, heads = 2, context = 48 }\n    rollout { prompts = 2, group = 2, max_tokens = 4 }\n    optimizer { steps = 3 }\n    eval { every = 1, problems = 2, k = 2 }\n    monitor { ratio_max = max(exp(logp - old_logp)) over batch }\n}\n",
    )
    .expect("write");
    let out = keel(
        &d,
        &[
            "run",
            "-q",
            "m.recipe",
            "--out",
            "r",
            "--set",
            "clip.eps_high=0.28",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rep = keel(&d, &["report", "r"]);
    assert!(rep.status.success(), "{}", text(&rep.stderr));
    let html = std::fs::read_to_string(d.join("r/report.html")).expect("report.html");
    assert!(
        html.contains("recipe: <code>watched</code> of <code>")
            && html.contains("m.recipe</code> with <code>--set clip.eps_high=0.28</code>"),
        "no header"
    );
    assert!(
        html.contains("<th>pass@1</th><th>pass@2</th>")
            && html.contains("<td>after the warm start</td><td>0</td>")
            && html.contains("<td>final</td><td>3</td>"),
        "no pass@k before and after"
    );
    assert!(html.contains("monitor: ratio_max"), "no monitor plot");
}

/// Paths in a recipe resolve against the recipe's file, as `import` does
/// (`--set` ones against the working directory); a "cannot read" error
/// shows the resolved path; `run.json` records the recipe's absolute path,
/// so a run resumes from any directory.
#[test]
fn recipe_paths_resolve_against_the_file_and_runs_resume_from_anywhere() {
    let d = dir("paths");
    let exp = d.join("exp");
    std::fs::create_dir_all(&exp).expect("dir");
    std::fs::write(exp.join("d.jsonl"), WORD_DATA).expect("write");
    let recipe = |data: &str| {
        format!(
            "import std/grpo\n\nrecipe p extends grpo {{\n    model {{ d_model = 16, layers = 1, heads = 2, context = 64 }}\n    task {{ name = jsonl, path = \"{data}\" }}\n    rollout {{ prompts = 2, group = 2, max_tokens = 4 }}\n    optimizer {{ steps = 2 }}\n    checkpoint {{ every = 1 }}\n    eval {{ every = 0, problems = 2, k = 1 }}\n}}\n"
        )
    };
    std::fs::write(exp.join("p.recipe"), recipe("d.jsonl")).expect("write");
    std::fs::write(exp.join("missing.recipe"), recipe("nope.jsonl")).expect("write");
    let out = keel(&d, &["run", "-q", "exp/missing.recipe", "--out", "m"]);
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("exp/nope.jsonl: error[E0700]"), "{e}");
    let out = keel(&d, &["run", "-q", "exp/p.recipe", "--out", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let full = metrics(&d.join("a"));
    assert_eq!(full.len(), 3);
    // Resumed from another directory, after losing the last step.
    std::fs::remove_dir_all(d.join("a/checkpoints/step-0000002")).expect("drop a checkpoint");
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let run_dir = d.join("a").display().to_string();
    let out = keel(&elsewhere, &["run", "-q", "--resume", &run_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(&d.join("a")), full);
    // A recipe gone from where run.json says: named, with where it came from.
    std::fs::rename(exp.join("p.recipe"), exp.join("q.recipe")).expect("move");
    let out = keel(&elsewhere, &["run", "-q", "--resume", &run_dir]);
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("error[E0704]") && e.contains("p.recipe") && e.contains("run.json"),
        "{e}"
    );
}

/// A run without warm-start steps (a pretrained model's usual case) says
/// "before RL (no warm start)", not "after warm start (0.0s)".
#[test]
fn a_run_without_a_warm_start_does_not_claim_one() {
    let d = dir("no-warm");
    std::fs::write(d.join("n.recipe"), tiny("n", 1, "")).expect("write");
    let out = keel(&d, &["run", "n.recipe", "--out", "a"]);
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("before RL (no warm start): pass@1") && !e.contains("after warm start"),
        "{e}"
    );
    assert!(
        e.contains("held-out pass@1") && e.contains(" before RL → "),
        "{e}"
    );
}

/// Warm starts are cached per user (`$XDG_CACHE_HOME/keel/warmstart`), not
/// beside each experiment folder: a run in a new folder reuses the warm
/// start of another's.
#[test]
fn warm_starts_are_cached_per_user() {
    let d = dir("user-cache");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 1"),
    )
    .expect("write");
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "small.recipe", "--out", out])
            .current_dir(&d)
            .env_remove("KEEL_CACHE")
            .env("XDG_CACHE_HOME", d.join("xdg"))
            .output()
            .expect("keel runs")
    };
    let a = run("exp1/a");
    assert!(a.status.success(), "{}", text(&a.stderr));
    let cached: Vec<_> = std::fs::read_dir(d.join("xdg/keel/warmstart"))
        .expect("the user's cache")
        .flatten()
        .collect();
    assert_eq!(cached.len(), 1);
    let b = run("exp2/b");
    let e = text(&b.stderr);
    assert!(b.status.success(), "{e}");
    assert!(e.contains("warm start: reusing"), "{e}");
    assert_eq!(metrics(&d.join("exp1/a")), metrics(&d.join("exp2/b")));
}

/// A string setting given with `--set` takes its text as it is on the
/// command line (`--set task.path=d.jsonl`); a quoted value still works.
#[test]
fn set_takes_strings_without_inner_quotes() {
    let d = dir("set-strings");
    std::fs::write(d.join("d.jsonl"), WORD_DATA).expect("write");
    std::fs::write(d.join("s.recipe"), tiny("s", 1, "")).expect("write");
    for (out, path) in [("a", "task.path=d.jsonl"), ("b", "task.path=\"d.jsonl\"")] {
        let r = keel(
            &d,
            &[
                "run",
                "-q",
                "s.recipe",
                "--out",
                out,
                "--set",
                "task.name=jsonl",
                "--set",
                path,
            ],
        );
        assert!(r.status.success(), "{path}: {}", text(&r.stderr));
    }
    assert_eq!(metrics(&d.join("a")), metrics(&d.join("b")));
}

/// The first Ctrl-C (SIGINT) finishes the step in progress and writes its
/// checkpoint (exit 130, the resume command printed): the last step in
/// metrics.jsonl has its checkpoint, so no finished step is lost
/// (resuming is bitwise exact, `resume_after_sigkill_is_bitwise_identical`).
#[test]
fn ctrl_c_finishes_the_step_and_writes_a_checkpoint() {
    let d = dir("ctrl-c");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 400"),
    )
    .expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "-q", "small.recipe", "--out", "a"])
        .current_dir(&d)
        .env("KEEL_CACHE", d.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = d.join("a/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&lines).map_or(0, |t| t.lines().count()) < 4 {
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let out = child.wait_with_output().expect("wait");
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{e}");
    assert!(e.contains("keel run --resume a"), "{e}");
    let m = metrics(&d.join("a"));
    let last = m.last().and_then(|l| l["step"].as_u64()).expect("a step");
    assert!((3..400).contains(&last), "{last}");
    let ck = d.join(format!("a/checkpoints/step-{last:07}"));
    assert!(ck.exists(), "no checkpoint of the last step {last}");
}

/// Without a terminal, a run logs lines: the warm start's beginning and
/// end (and one every ten seconds), and the steps every ten or every ten
/// seconds, whichever comes first.
#[test]
fn a_log_without_a_terminal_is_not_silent_in_the_warm_start() {
    let d = dir("log-lines");
    std::fs::write(
        d.join("small.recipe"),
        SMALL.replace("steps = 12", "steps = 2"),
    )
    .expect("write");
    let out = keel(&d, &["run", "small.recipe", "--out", "a"]);
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("warm start: 30 steps") && e.contains("warm start: step 30/30"),
        "{e}"
    );
    assert!(e.contains("step 2/2: reward"), "{e}");
}

/// A judge script: `body` is Python run for each request line `r` (a dict)
/// with the request's index `i`; it prints the answer.
fn judge_script(d: &Path, name: &str, body: &str) -> String {
    let text = format!(
        "import json, random, sys, time\nfor i, line in enumerate(sys.stdin):\n    r = json.loads(line)\n{}\n    sys.stdout.flush()\n",
        body.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::write(d.join(name), text).expect("write");
    format!("python3 {name}")
}

/// A recipe whose reward is the judge's score.
fn judged(name: &str, steps: u32) -> String {
    tiny(name, steps, "    reward = judge\n")
}

/// `--judge`: every response goes to the judge as one JSON line (with
/// the prompt, the response and the answer), its score is `judge`, spread
/// over two workers, and recorded in `judge.jsonl`. A judge that crashes,
/// hangs past `--judge-timeout`, answers `banana` or `nan` stops the run
/// with E0711 naming the step and row (within the timeout); with
/// `--judge-failures skip` the run finishes with `judge_skipped` > 0.
#[test]
fn judges_score_responses_and_their_failures_are_coded() {
    let d = dir("judge");
    std::fs::write(d.join("j.recipe"), judged("j", 2)).expect("write");
    let good = judge_script(
        &d,
        "good.py",
        "assert set(r) == {'id', 'prompt', 'response', 'answer', 'data_source', 'extra_info'}\nprint(json.dumps({'score': 0.75}))",
    );
    let out = keel(
        &d,
        &[
            "run",
            "-q",
            "j.recipe",
            "--out",
            "good",
            "--judge",
            &good,
            "--judge-workers",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("good"));
    for l in &m[1..] {
        assert_eq!(l["reward_mean"].as_f64(), Some(0.75), "{l}");
        assert_eq!(l["judge_skipped"].as_u64(), Some(0), "{l}");
    }
    let record = std::fs::read_to_string(d.join("good/judge.jsonl")).expect("record");
    assert_eq!(record.lines().count(), 2 * 4, "two steps of 2 prompts × 2");
    // The stdlib's judge recipes with the script, two steps each.
    let stdlib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
    // Scores that differ within a group, so dynamic sampling keeps it.
    let varied = judge_script(&d, "varied.py", "print((i % 3) / 2)");
    // CRAFT-GUI's first stage wants problems of difficulty 0.3 or less,
    // which the arithmetic task has none of: every stage takes them all.
    for (name, extra) in [
        ("stable_reinforce", "rollout.prompts=2"),
        ("craft_gui", "curriculum.thresholds=[1.0, 1.0, 1.0]"),
    ] {
        let path = stdlib.join(format!("{name}.recipe"));
        let out = keel(
            &d,
            &[
                "run",
                "-q",
                path.to_str().expect("utf-8"),
                "--out",
                name,
                "--set",
                "optimizer.steps=2",
                "--set",
                "task.warmup_steps=0",
                "--set",
                extra,
                "--judge",
                &varied,
            ]
            .into_iter()
            .chain(SMALLEST.iter().copied())
            .collect::<Vec<_>>(),
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        for l in &metrics(&d.join(name))[1..] {
            assert!(
                l["loss"].as_f64().is_some_and(f64::is_finite),
                "{name}: {l}"
            );
        }
        assert!(
            d.join(name).join("judge.jsonl").exists(),
            "{name} asked the judge"
        );
    }
    assert!(record.contains("\"id\":\"2/3\""), "{record}");
    let failing = [
        (
            "crash.py",
            "if i == 2:\n    sys.stderr.write('judge: out of memory\\n'); sys.exit(3)\nprint(0.5)",
            "exited",
            "out of memory",
        ),
        (
            "hang.py",
            "if i == 2:\n    time.sleep(600)\nprint(0.5)",
            "did not answer",
            "",
        ),
        (
            "banana.py",
            "print('banana' if i == 2 else 0.5)",
            "`banana`",
            "",
        ),
        ("nan.py", "print('nan' if i == 2 else 0.5)", "`nan`", ""),
    ];
    for (name, body, what, stderr) in failing {
        let cmd = judge_script(&d, name, body);
        let t0 = Instant::now();
        let stop = format!("out-{name}");
        let out = keel(
            &d,
            &[
                "run",
                "-q",
                "j.recipe",
                "--out",
                &stop,
                "--judge",
                &cmd,
                "--judge-timeout",
                "2",
            ],
        );
        let e = text(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(
            e.contains("error[E0711]") && e.contains(what) && e.contains(stderr),
            "{name}: {e}"
        );
        assert!(e.contains("at step 1, row 2"), "{name}: {e}");
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name} took {:?}",
            t0.elapsed()
        );
        let skip = format!("out-{name}-skip");
        let out = keel(
            &d,
            &[
                "run",
                "-q",
                "j.recipe",
                "--out",
                &skip,
                "--judge",
                &cmd,
                "--judge-timeout",
                "2",
                "--judge-failures",
                "skip",
            ],
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let m = metrics(&d.join(&skip));
        let skipped: u64 = m[1..]
            .iter()
            .filter_map(|l| l["judge_skipped"].as_u64())
            .sum();
        assert!(skipped > 0, "{name}: {m:?}");
        for l in &m[1..] {
            assert!(
                l["loss"].as_f64().is_some_and(f64::is_finite),
                "{name}: {l}"
            );
        }
    }
}

/// A resumed run replays the judge's recorded answers instead of asking
/// again: with a judge that answers at random, a run resumed from its
/// step-2 checkpoint ends with the uninterrupted run's metrics and weights.
/// The resumed run uses the judge it started with (run.json).
#[test]
fn a_resumed_run_replays_the_judges_answers() {
    let d = dir("judge-resume");
    let recipe = judged("j", 4).replace(
        "    eval {",
        "    checkpoint { every = 2, keep = 8 }\n    eval {",
    );
    std::fs::write(d.join("j.recipe"), recipe).expect("write");
    let cmd = judge_script(&d, "random.py", "print(random.random())");
    let out = keel(
        &d,
        &["run", "-q", "j.recipe", "--out", "full", "--judge", &cmd],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // As if killed after step 3: the step-4 checkpoint is gone.
    let copy = d.join("cut");
    std::fs::create_dir_all(copy.join("checkpoints")).expect("dir");
    for f in ["run.json", "metrics.jsonl", "judge.jsonl"] {
        std::fs::copy(d.join("full").join(f), copy.join(f)).expect("copy");
    }
    for ck in ["step-0000000", "step-0000002"] {
        let (from, to) = (
            d.join("full/checkpoints").join(ck),
            copy.join("checkpoints").join(ck),
        );
        std::fs::create_dir_all(&to).expect("dir");
        for e in std::fs::read_dir(&from).expect("ck").flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
    let out = keel(&d, &["run", "-q", "--resume", "cut"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(&d.join("cut")), metrics(&d.join("full")));
    let a = std::fs::read(d.join("full/final.safetensors")).expect("weights");
    let b = std::fs::read(d.join("cut/final.safetensors")).expect("weights");
    assert!(a == b, "final weights differ after a replayed resume");
}

/// Without `--judge`: the built-in tasks' rule judge (arithmetic: the share
/// of right steps) scores `judge`; a JSONL task has none and is refused
/// before training (E0706) with a help line naming the flag.
#[test]
fn rule_judges_and_a_jsonl_task_without_a_judge() {
    let d = dir("rule-judge");
    std::fs::write(d.join("j.recipe"), judged("j", 2)).expect("write");
    let out = keel(&d, &["run", "-q", "j.recipe", "--out", "rule"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for l in &metrics(&d.join("rule"))[1..] {
        let r = l["reward_mean"].as_f64().expect("reward");
        assert!((0.0..=1.0).contains(&r), "{l}");
        assert!(l.get("judge_skipped").is_some(), "{l}");
    }
    std::fs::write(
        d.join("d.jsonl"),
        "{\"prompt\":\"1+1=\",\"answer\":\"2\"}\n",
    )
    .expect("write");
    let recipe = judged("k", 2).replace(
        "    rollout {",
        "    task { name = jsonl, path = \"d.jsonl\" }\n    rollout {",
    );
    std::fs::write(d.join("k.recipe"), recipe).expect("write");
    let out = keel(&d, &["run", "-q", "k.recipe", "--out", "k"]);
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("error[E0706]") && e.contains("--judge"), "{e}");
    assert!(!d.join("k").exists(), "refused before the run directory");
}

/// verl's data and reward functions: a parquet file written by `datasets`
/// as verl's GSM8K preprocessing writes it (tests/reference/verl_parquet.py)
/// trains two steps, scored through `python/keel_verl_judge.py` by a
/// `compute_score` written as verl's GSM8K one is (it asserts the
/// `data_source` and `extra_info` it is given). The adapter scores known
/// responses as the function does. A row without `reward_model` and a file
/// that is not parquet are located errors.
#[test]
fn verl_parquet_data_and_compute_score_through_the_adapter() {
    let d = dir("verl-data");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = root.join("tests/fixtures/verl");
    let adapter = format!(
        "python3 {} {}",
        root.join("python/keel_verl_judge.py").display(),
        fixtures.join("gsm8k_reward.py").display()
    );
    // The adapter alone, on two known responses.
    let mut child = Command::new("sh")
        .args(["-c", &adapter])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("adapter");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for response in ["so 3+11 makes #### 14", "#### 15"] {
            let line = serde_json::json!({"id": "1/0", "prompt": "3+11=", "response": response,
                "answer": "14", "data_source": "openai/gsm8k", "extra_info": {"split": "train"}});
            writeln!(stdin, "{line}").expect("write");
        }
    }
    let out = child.wait_with_output().expect("adapter output");
    assert_eq!(text(&out.stdout), "{\"score\": 1.0}\n{\"score\": 0.1}\n");
    let recipe = |file: &str| {
        tiny("v", 2, "    reward = judge\n").replace(
            "    rollout {",
            &format!(
                "    task {{ name = jsonl, path = \"{}\", chat = off }}\n    rollout {{",
                fixtures.join(file).display()
            ),
        )
    };
    std::fs::write(d.join("v.recipe"), recipe("arith_train.parquet")).expect("write");
    let out = keel(
        &d,
        &["run", "-q", "v.recipe", "--out", "v", "--judge", &adapter],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = metrics(&d.join("v"));
    assert_eq!(m.len(), 3);
    for l in &m[1..] {
        assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
        assert_eq!(l["judge_skipped"].as_u64(), Some(0), "{l}");
    }
    let record = std::fs::read_to_string(d.join("v/judge.jsonl")).expect("record");
    assert_eq!(record.lines().count(), 8);
    std::fs::write(d.join("m.recipe"), recipe("missing_column.parquet")).expect("write");
    let out = keel(&d, &["run", "-q", "m.recipe", "--out", "m"]);
    let e = text(&out.stderr);
    assert!(
        e.contains("missing_column.parquet: row 1: error[E0701]") && e.contains("`reward_model`"),
        "{e}"
    );
    std::fs::write(d.join("garbage.parquet"), "not parquet").expect("write");
    let bad = recipe("x").replace(&fixtures.join("x").display().to_string(), "garbage.parquet");
    std::fs::write(d.join("b.recipe"), bad).expect("write");
    let out = keel(&d, &["run", "-q", "b.recipe", "--out", "b"]);
    let e = text(&out.stderr);
    assert!(
        e.contains("garbage.parquet: error[E0700]") && e.contains("parquet"),
        "{e}"
    );
}
