//! `keel export --target torch`: every stdlib recipe's exported package,
//! run by PyTorch (CPU, float64) on randomized batches, equals Keel's
//! reference interpreter: the loss, the advantages, the metrics, and torch
//! autograd's gradient equals the one Keel derives (d_logp, or d_logits for
//! recipes that read the vocabulary), each within 1e-9 of its scale (both
//! sides are float64; the largest error measured is about 4e-12).
//!
//! Needs a Python with torch and safetensors: `KEEL_PYTHON`, else the
//! project's venv `.venv/bin/python` (`.ci/run` creates it). Without one the
//! test says so and passes, unless `KEEL_REQUIRE_TORCH=1` (CI).

use keel_compiler::batch::Batch;
use keel_compiler::interp::Interp;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{LogitsPath, LossProgram};
use keel_tests::root;
use std::path::PathBuf;
use std::process::Command;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("KEEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    assert!(
        std::env::var_os("KEEL_REQUIRE_TORCH").is_none(),
        "KEEL_REQUIRE_TORCH is set but {} cannot import torch and safetensors",
        p.display()
    );
    eprintln!(
        "skipped: no Python with torch at {} (set KEEL_PYTHON, or run .ci/run once)",
        p.display()
    );
    None
}

/// Whether `py` runs `check` (imports and a version assertion); when it
/// does not, the test is skipped with a message, or fails under
/// `KEEL_REQUIRE_TORCH` (CI).
fn python_has(py: &std::path::Path, check: &str, what: &str) -> bool {
    let ok = Command::new(py)
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KEEL_REQUIRE_TORCH").is_none(),
            "KEEL_REQUIRE_TORCH is set but {what} is not installed in {}",
            py.display()
        );
        eprintln!("skipped: {what} is not installed in {}", py.display());
    }
    ok
}

/// The `overrides.txt` of a verl export.
fn overrides_txt(v: &keel_export::VerlExport) -> String {
    v.package
        .files
        .iter()
        .find(|(p, _)| p == "overrides.txt")
        .map(|(_, b)| b.clone())
        .expect("overrides.txt")
}

/// The JSON lines `tests/reference/SCRIPT FILES...` prints (it must
/// succeed).
fn json_lines(py: &std::path::Path, script: &str, files: &[PathBuf]) -> Vec<serde_json::Value> {
    let run = Command::new(py)
        .arg(root().join("tests/reference").join(script))
        .args(files)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

/// A reference script's result judged against a bound.
struct Judged {
    /// Every (case, output, error relative to its scale).
    errors: Vec<(String, String, f64)>,
    /// Errors above the bound, and exceptions.
    failures: Vec<String>,
    /// The largest error, and where it is.
    worst: (f64, String),
}

/// Judge a reference script's result (per case, the error of each output
/// relative to its scale, or the exception it raised) against `bound`.
fn judged(result: &serde_json::Value, bound: f64) -> Judged {
    let mut errors = Vec::new();
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    for case in result.as_array().expect("array") {
        let name = case["case"].as_str().unwrap_or("?");
        if let Some(e) = case.get("exception") {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        for (out, e) in case["errors"].as_object().expect("errors") {
            let e = e.as_f64().unwrap_or(f64::INFINITY);
            if e > worst.0 {
                worst = (e, format!("{name} {out}"));
            }
            if e > bound {
                failures.push(format!("{name} {out}: error {e:.2e} of its scale"));
            }
            errors.push((name.to_string(), out.clone(), e));
        }
    }
    Judged {
        errors,
        failures,
        worst,
    }
}

#[test]
fn exported_torch_packages_equal_the_interpreter_on_every_stdlib_recipe() {
    let Some(py) = python() else {
        return;
    };
    let verl = Command::new(&py)
        .args(["-c", "import verl; assert verl.__version__ == '0.9.1'"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        verl || std::env::var_os("KEEL_REQUIRE_TORCH").is_none(),
        "KEEL_REQUIRE_TORCH is set but verl 0.9.1 is not installed in {}",
        py.display()
    );
    if !verl {
        eprintln!("verl 0.9.1 is not installed: the credit is not checked through verl's registry");
    }
    let mut verl_cases = 0;
    let mut verl_recipes = std::collections::BTreeSet::new();
    let dir = std::env::temp_dir().join(format!("keel-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cases = Vec::new();
    let mut recipes = std::collections::BTreeSet::new();
    for (file, text) in keel_tests::recipes_in("stdlib") {
        let path = root().join(&file);
        let c = keel_compiler::check_source(&keel_compiler::Disk, &path.to_string_lossy(), &text);
        assert!(!c.has_errors(), "{file}");
        for (idx, r) in c.recipes.iter().enumerate() {
            let v = if LogitsPath::fusable(r) { 0 } else { 8 };
            let d = Dims {
                b: 12,
                t: 10,
                v,
                group: 4,
            };
            for (k, (what, mut batch)) in synth::variants(r, d, 5).into_iter().enumerate() {
                batch.tensors.remove("advantages");
                // As written to the file (f32 tensors rounded), so that both
                // sides read the same numbers.
                let batch =
                    Batch::from_bytes(&batch.to_bytes().expect("serialises")).expect("reads back");
                let has = |n: &str| batch.has(n) && n != "advantages";
                let Ok(program) = LossProgram::compile(&c, idx, LogitsPath::Program, &has) else {
                    continue;
                };
                let Ok(want) = program.run(&mut Interp { memory: None }, &batch, "b") else {
                    continue;
                };
                let mut pkg = keel_export::torch_package(&c, idx, &has, &file).expect("exports");
                // verl puts a response's reward on its last valid token: a
                // row with none cannot carry one, so such batches are not
                // checked through verl.
                let empty_row = batch.tensors.get("mask").is_some_and(|m| {
                    (0..want.b)
                        .any(|i| (0..want.t).all(|j| m.data.get(i * want.t + j) == Some(0.0)))
                });
                let estimator =
                    if verl && !empty_row && want.advantages.is_some() && batch.has("reward") {
                        keel_export::verl_estimator(&c, idx, &file).ok()
                    } else {
                        None
                    };
                if let Some(files) = &estimator {
                    pkg.files.extend(files.iter().cloned());
                    verl_cases += 1;
                    verl_recipes.insert(r.name.clone());
                }
                let case = dir.join(format!("{}-{k}", r.name));
                for (rel, body) in &pkg.files {
                    let p = case.join(rel);
                    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&p, body).expect("write");
                }
                let mut out: Batch = batch.clone();
                let (b, t) = (want.b, want.t);
                out.insert("expect.loss", "f64", vec![], vec![want.loss]);
                if let Some(a) = &want.advantages {
                    out.insert("expect.advantages", "f64", vec![b, t], a.clone());
                }
                // verl's estimator reads verl's reward (the batch's
                // `reward`), not the recipe's `reward` section.
                let reward_section = c.merged[idx].section("reward").is_some();
                if estimator.is_some() && reward_section {
                    let given =
                        LossProgram::compile_engine_reward(&c, idx, LogitsPath::Program, &has)
                            .expect("compiles with the engine's reward");
                    let w = given
                        .run(&mut Interp { memory: None }, &batch, "b")
                        .expect("runs");
                    if let Some(a) = &w.advantages {
                        out.insert("expect.verl_advantages", "f64", vec![b, t], a.clone());
                    }
                }
                for (m, x) in &want.metrics {
                    out.insert(&format!("expect.metric.{m}"), "f64", vec![], vec![*x]);
                }
                match (&want.d_logits, want.v) {
                    (Some(dl), Some(v)) => {
                        out.insert("expect.d_logits", "f64", vec![b, t, v], dl.to_f64())
                    }
                    _ => out.insert("expect.d_logp", "f64", vec![b, t], want.d_logp.clone()),
                }
                let file = case.join("batch.safetensors");
                std::fs::write(&file, out.to_bytes().expect("serialises")).expect("write");
                recipes.insert(r.name.clone());
                cases.push(serde_json::json!({
                    "name": format!("{} ({what})", r.name),
                    "dir": case.to_string_lossy(),
                    "package": pkg.name,
                    "batch": file.to_string_lossy(),
                    "verl": estimator.is_some(),
                    // Keel's loss from its terms through verl's `agg_loss`:
                    // not on a batch with an empty row (verl's token mean of
                    // an empty term divides by 0 where Keel's gives 0).
                    "verl_terms": verl && !empty_row,
                }));
            }
        }
    }
    let manifest = dir.join("cases.json");
    std::fs::write(&manifest, serde_json::to_vec(&cases).expect("json")).expect("write");
    let script = root().join("tests/reference/export_parity.py");
    let run = Command::new(&py)
        .arg(&script)
        .arg(&manifest)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = String::from_utf8_lossy(&run.stdout);
    let result: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let Judged {
        errors,
        failures,
        worst,
    } = judged(&result, 1e-9);
    let checked = errors.len();
    let above = errors.iter().filter(|e| e.2 > 1e-9).count();
    eprintln!(
        "{verl_cases} cases of {} recipes checked the credit through verl's get_adv_estimator_fn: {verl_recipes:?}",
        verl_recipes.len()
    );
    eprintln!(
        "{} cases of {} recipes, {checked} outputs ({above} above 1e-9); largest error {:.2e} ({})",
        cases.len(),
        recipes.len(),
        worst.0,
        worst.1
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the failing cases are kept in {}", dir.display());
    }
    assert!(recipes.len() >= 40, "only {} recipes ran", recipes.len());
    assert!(!verl || verl_cases >= 70, "only {verl_cases} verl cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether every row of `mask` [b, t] is a non-empty prefix: what verl's
/// responses are (left-aligned, at least one token).
fn prefix_rows(batch: &Batch, b: usize, t: usize) -> bool {
    let Some(m) = batch.tensors.get("mask") else {
        return false;
    };
    (0..b).all(|i| {
        let row: Vec<f64> = (0..t)
            .map(|j| m.data.get(i * t + j).unwrap_or(0.0))
            .collect();
        let n = row.iter().take_while(|&&x| x != 0.0).count();
        n > 0 && row[n..].iter().all(|&x| x == 0.0)
    })
}

/// `keel export --target verl`: every stdlib recipe that exports runs
/// through verl 0.9.1's own `ppo_loss` (`verl.workers.utils.losses`, which
/// fetches the registered policy loss with `get_policy_loss_fn` and adds
/// verl's own KL and entropy terms), or through the package's replacement
/// of it, on a real `ActorConfig` built from the package's `overrides.txt`
/// and a `TensorDict` laid out as verl's actor hands it (no padding, log-probs
/// shifted by one token). The loss and autograd's d_logp equal `keel loss`
/// on the same batch (advantages given) within 1e-6 of their scale; for the
/// recipes without batch statistics in the loss, so does the sum of the
/// losses of four micro-batches with `global_batch_info` filled.
#[test]
fn verl_packages_compute_keel_loss_inside_verl_ppo_loss() {
    let Some(py) = python() else {
        return;
    };
    if !python_has(
        &py,
        "import verl, tensordict; assert verl.__version__ == '0.9.1'",
        "verl 0.9.1",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keel-export-verl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cases = Vec::new();
    let mut exported = std::collections::BTreeMap::new();
    for (file, text) in keel_tests::recipes_in("stdlib") {
        let path = root().join(&file);
        let c = keel_compiler::check_source(&keel_compiler::Disk, &path.to_string_lossy(), &text);
        for (idx, r) in c.recipes.iter().enumerate() {
            let Ok(pkg) = keel_export::verl_package(&c, idx, &file, false) else {
                continue;
            };
            exported.insert(r.name.clone(), pkg.mode);
            let d = Dims {
                b: 12,
                t: 10,
                v: 0,
                group: 4,
            };
            for (k, (what, mut batch)) in synth::variants(r, d, 11).into_iter().enumerate() {
                // What verl's estimator computed: a value per response,
                // varying a little along it.
                let adv: Vec<f64> = (0..d.b * d.t)
                    .map(|i| {
                        ((i / d.t) as f64 * 1.7 + k as f64).sin() + 0.1 * (i as f64 * 0.37).cos()
                    })
                    .collect();
                batch.insert("advantages", "f32", vec![d.b, d.t], adv);
                let batch =
                    Batch::from_bytes(&batch.to_bytes().expect("serialises")).expect("reads back");
                if !prefix_rows(&batch, d.b, d.t) {
                    continue;
                }
                // What verl's actor has: the advantages given (the credit
                // ran in the estimator), no rewards or groups.
                let verl_has = |n: &str| {
                    batch.has(n)
                        && [
                            "logp",
                            "old_logp",
                            "ref_logp",
                            "entropy",
                            "advantages",
                            "mask",
                        ]
                        .contains(&n)
                };
                let program = LossProgram::compile(&c, idx, LogitsPath::Program, &verl_has)
                    .expect("compiles on verl's inputs");
                let want = program
                    .run(&mut Interp { memory: None }, &batch, "b")
                    .expect("runs");
                let case = dir.join(format!("{}-{k}", r.name));
                for (rel, body) in &pkg.package.files {
                    let p = case.join(rel);
                    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&p, body).expect("write");
                }
                let mut out = Batch::default();
                for n in [
                    "logp",
                    "old_logp",
                    "ref_logp",
                    "entropy",
                    "advantages",
                    "mask",
                ] {
                    if let Some(t) = batch.tensors.get(n) {
                        out.insert(n, "f64", t.shape.clone(), t.data.to_f64());
                    }
                }
                out.insert("expect.loss", "f64", vec![], vec![want.loss]);
                out.insert(
                    "expect.d_logp",
                    "f64",
                    vec![want.b, want.t],
                    want.d_logp.clone(),
                );
                let bf = case.join("batch.safetensors");
                std::fs::write(&bf, out.to_bytes().expect("serialises")).expect("write");
                cases.push(serde_json::json!({
                    "name": format!("{} ({what})", r.name),
                    "dir": case.to_string_lossy(),
                    "package": pkg.package.name,
                    "mode": pkg.mode,
                    "batch": bf.to_string_lossy(),
                    "split": pkg.caveats.is_empty(),
                }));
            }
        }
    }
    std::fs::create_dir_all(&dir).expect("mkdir");
    let manifest = dir.join("cases.json");
    std::fs::write(&manifest, serde_json::to_vec(&cases).expect("json")).expect("write");
    let run = Command::new(&py)
        .arg(root().join("tests/reference/verl_loss_parity.py"))
        .arg(&manifest)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).expect("one JSON object");
    let Judged {
        errors,
        failures,
        worst,
    } = judged(&result, 1e-6);
    let split = errors.iter().filter(|e| e.1 == "split4.loss").count();
    eprintln!(
        "verl: {} recipes export ({exported:?}); {} cases through verl's ppo_loss, {split} also as four micro-batches; largest error {:.2e} ({})",
        exported.len(),
        cases.len(),
        worst.0,
        worst.1
    );
    for r in ["grpo", "dr_grpo", "gspo", "clip_cov", "kl_cov", "rloo"] {
        assert!(exported.contains_key(r), "{r} does not export to verl");
    }
    // verl composes the exported config: Hydra's `--cfg job` with the
    // overrides and run.sh's py_modules, for a registered loss and a
    // replacement of ppo_loss.
    for (recipe, package) in [("grpo", "keel_grpo"), ("aepo", "keel_aepo")] {
        let case = dir.join(format!("{recipe}-0"));
        if !case.is_dir() {
            continue;
        }
        let overrides = std::fs::read_to_string(case.join("overrides.txt")).expect("overrides");
        let mut args = vec!["-m".to_string(), "verl.trainer.main_ppo".to_string()];
        args.extend(
            overrides
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
        args.push(format!(
            "+ray_kwargs.ray_init.runtime_env.py_modules=[{}]",
            case.join(package).display()
        ));
        args.extend(["--cfg".to_string(), "job".to_string()]);
        let job = Command::new(&py)
            .args(&args)
            .env("PYTHONPATH", &case)
            .output()
            .expect("python runs");
        let printed = String::from_utf8_lossy(&job.stdout);
        assert!(
            job.status.success(),
            "{recipe}: verl.trainer.main_ppo --cfg job failed:\n{}",
            String::from_utf8_lossy(&job.stderr)
        );
        assert!(
            printed.contains(&format!(
                "loss_mode: {}",
                if exported.get(recipe) == Some(&"policy_loss") {
                    package
                } else {
                    "vanilla"
                }
            )),
            "{recipe}: {printed}"
        );
        assert!(
            printed.contains(&format!("VERL_USE_EXTERNAL_MODULES: {package}")),
            "{printed}"
        );
    }
    assert_eq!(
        exported.get("grpo"),
        Some(&"policy_loss"),
        "grpo's KL is verl's own"
    );
    assert!(cases.len() >= 30, "only {} verl cases", cases.len());
    assert!(split >= 10, "only {split} four-micro-batch cases");
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the failing cases are kept in {}", dir.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `keel export --target trl`: a real run in TRL 1.16's `GRPOTrainer`. The
/// exported `KeelGRPOTrainer` trains a tiny random Llama (built and saved
/// by `tests/reference/trl_run.py`, nothing downloaded) on the CPU for 2
/// steps. On the first micro-batch, the advantages TRL used equal Keel's
/// credit on TRL's rewards and groups, and the loss TRL optimised equals
/// `keel loss` on the same inputs (TRL computes in float32: within 1e-5 of
/// the scale).
#[test]
fn trl_trains_a_tiny_llama_with_the_exported_loss_equal_to_keel_loss() {
    let Some(py) = python() else {
        return;
    };
    if !python_has(
        &py,
        "import trl, transformers, datasets; assert trl.__version__ == '1.16.0'",
        "TRL 1.16.0",
    ) {
        return;
    }
    let file = "stdlib/grpo.recipe";
    let text = std::fs::read_to_string(root().join(file)).expect("grpo");
    let c = keel_compiler::check_source(
        &keel_compiler::Disk,
        &root().join(file).to_string_lossy(),
        &text,
    );
    let pkg = keel_export::trl_package(&c, 0, file, false).expect("grpo exports to TRL");
    assert!(pkg.credit, "grpo's credit runs in the trainer");
    let dir = std::env::temp_dir().join(format!("keel-export-trl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (rel, body) in &pkg.package.files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, body).expect("write");
    }
    let rec = dir.join("first-step.safetensors");
    let run = Command::new(&py)
        .arg(root().join("tests/reference/trl_run.py"))
        .arg(&dir)
        .arg(&pkg.package.name)
        .arg(&rec)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let summary: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    assert_eq!(summary["global_step"], 2, "{summary}");
    let batch = Batch::from_bytes(&std::fs::read(&rec).expect("record")).expect("reads");
    let scale = |want: &[f64], floor: f64| want.iter().fold(floor, |m, x| m.max(x.abs()));
    // The loss TRL optimised, on the inputs it gave it.
    let given = |n: &str| {
        [
            "logp",
            "old_logp",
            "ref_logp",
            "entropy",
            "advantages",
            "mask",
        ]
        .contains(&n)
            && batch.has(n)
    };
    let program = LossProgram::compile(&c, 0, LogitsPath::Program, &given).expect("compiles");
    let want = program
        .run(&mut Interp { memory: None }, &batch, "b")
        .expect("runs");
    let got = batch.tensors["expect.loss"].data.to_f64()[0];
    let err = (got - want.loss).abs() / scale(&[want.loss], 0.1);
    let g = batch.tensors["expect.d_logp"].data.to_f64();
    let grad_err = g
        .iter()
        .zip(&want.d_logp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale(&want.d_logp, 1e-6);
    let grad_scale = scale(&want.d_logp, 0.0);
    // The advantages it used: Keel's credit on its rewards and groups.
    let credit_in = |n: &str| {
        [
            "logp", "old_logp", "ref_logp", "entropy", "mask", "reward", "group",
        ]
        .contains(&n)
            && batch.has(n)
    };
    let program = LossProgram::compile(&c, 0, LogitsPath::Program, &credit_in).expect("compiles");
    let with_credit = program
        .run(&mut Interp { memory: None }, &batch, "b")
        .expect("runs");
    let adv = with_credit.advantages.expect("advantages");
    let used = batch.tensors["expect.advantages"].data.to_f64();
    let adv_err = adv
        .iter()
        .zip(&used)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale(&adv, 1e-6);
    eprintln!(
        "TRL: {} steps, losses {}; first micro-batch: loss {got:.6e} vs keel loss {:.6e} (error {err:.1e} of scale); d_logp up to {grad_scale:.3e}, error {grad_err:.1e}; advantages error {adv_err:.1e}",
        summary["steps"], summary["losses"], want.loss
    );
    assert!(
        grad_scale > 1e-3,
        "a gradient that cannot fail: {grad_scale}"
    );
    assert!(grad_err <= 1e-5, "d_logp {g:?} vs keel's {:?}", want.d_logp);
    assert!(err <= 1e-5, "loss {got} vs keel loss {}", want.loss);
    assert!(
        adv_err <= 1e-5,
        "advantages {used:?} vs Keel's credit {adv:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `keel export --target trl` of a recipe with a warm-up schedule: the
/// package's own `train.py` runs two steps on the CPU (tiny random Llama of
/// `tests/reference/trl_run.py`, driven by `trl_train_py.py` through
/// `train.main`), and the `GRPOConfig` it builds carries every mapped
/// setting; the learning rate of each step is the recipe's (3e-4 · k/20 at
/// step k, where TRL's own warm-up would give 3e-4 · (k−1)/20); the reward
/// is an exact match on the final answer ("114" does not earn "14").
#[test]
fn trl_train_py_runs_on_the_cpu_with_the_recipes_settings() {
    let Some(py) = python() else {
        return;
    };
    if !python_has(
        &py,
        "import trl, transformers, datasets; assert trl.__version__ == '1.16.0'",
        "TRL 1.16.0",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keel-export-trl-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let recipe = dir.join("warm.recipe");
    let text = "import std/grpo\n\nrecipe warm extends grpo {\n    rollout { prompts = 2, group = 4, max_tokens = 6, temperature = 0.9 }\n    optimizer { lr = 3e-4 * min(1, step / 20), steps = 40, grad_clip = 0.5, weight_decay = 0.02 }\n}\n";
    std::fs::write(&recipe, text).expect("write recipe");
    let c = keel_compiler::check_source(&keel_compiler::Disk, &recipe.to_string_lossy(), text);
    assert!(!c.has_errors(), "{}", keel_tests::render(&c));
    let pkg = keel_export::trl_package(&c, 0, "warm.recipe", false).expect("exports to TRL");
    assert!(pkg.unmapped.is_empty(), "{:?}", pkg.unmapped);
    for (rel, body) in &pkg.package.files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, body).expect("write");
    }
    let run = Command::new(&py)
        .arg(root().join("tests/reference/trl_train_py.py"))
        .arg(&dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let got: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    let args = &got["args"];
    let want = serde_json::json!({
        "learning_rate": 3e-4,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 20,
        "max_grad_norm": 0.5,
        // `--max-steps 2` on the command line (the recipe's is 40).
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "num_generations": 4,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "temperature": 0.9,
        "top_p": 1.0,
        "max_completion_length": 6,
        "weight_decay": 0.02,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "optim": "adamw_torch",
        "use_cpu": true,
        "bf16": false,
    });
    for (k, v) in want.as_object().expect("object") {
        let g = &args[k];
        let equal = match (g.as_f64(), v.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * b.abs().max(1.0),
            _ => g == v,
        };
        assert!(equal, "GRPOConfig.{k} = {g}, the recipe's is {v}");
    }
    let lr: Vec<f64> = got["lr"]
        .as_array()
        .expect("lrs")
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    assert_eq!(lr.len(), 2, "{got}");
    for (k, l) in lr.iter().enumerate() {
        let want = 3e-4 * (k + 1) as f64 / 20.0;
        assert!(
            (l - want).abs() < 1e-15,
            "step {}: lr {l}, the recipe's {want}",
            k + 1
        );
    }
    assert_eq!(got["rewards"], serde_json::json!([1.0, 1.0, 0.0, 1.0, 1.0]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `keel export --target verl` maps the optimizer and batch settings into
/// verl's own config: `tests/reference/verl_schedule.py` composes verl
/// 0.9.1's `ppo_trainer` config with each exported `overrides.txt` (Hydra,
/// as `main_ppo` does), builds the scheduler with verl's FSDP engine and
/// steps it; the learning rate of every step equals the one Keel's host
/// program computes (`lower::schedule_values`, what `keel run` uses), for
/// a warm-up written as an expression of `step`, for `warmup` with a cosine
/// decay, and for a constant. A linear decay, which verl has not, is listed
/// as not mapped.
#[test]
fn verl_overrides_carry_the_learning_rate_schedule_and_the_batch() {
    let Some(py) = python() else {
        return;
    };
    if !python_has(
        &py,
        "import verl, hydra; assert verl.__version__ == '0.9.1'",
        "verl 0.9.1",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("keel-export-verl-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cases = [
        (
            "expr",
            "lr = 3e-4 * min(1, step / 20), steps = 60, grad_clip = 0.5",
        ),
        (
            "cosine",
            "lr = 1e-5, warmup = 7, schedule = cosine, steps = 50, name = adam, beta2 = 0.98",
        ),
        ("constant", "lr = 2e-6, steps = 10, weight_decay = 0.0"),
        (
            "linear",
            "lr = 1e-4, warmup = 3, schedule = linear, steps = 10",
        ),
    ];
    let mut files = Vec::new();
    let mut expect = Vec::new();
    for (name, optimizer) in cases {
        let path = dir.join(format!("{name}.recipe"));
        let text = format!(
            "import std/grpo\n\nrecipe {name} extends grpo {{\n    rollout {{ prompts = 8, group = 4, minibatches = 2, micro_batches = 4 }}\n    optimizer {{ {optimizer} }}\n}}\n"
        );
        std::fs::write(&path, &text).expect("write");
        let c = keel_compiler::check_source(&keel_compiler::Disk, &path.to_string_lossy(), &text);
        assert!(!c.has_errors(), "{}", keel_tests::render(&c));
        let v = keel_export::verl_package(&c, 0, "r.recipe", false).expect("exports to verl");
        assert_eq!(
            v.unmapped.iter().any(|u| u.contains("linear decay")),
            name == "linear",
            "{name}: {:?}",
            v.unmapped
        );
        let ov = overrides_txt(&v);
        let file = dir.join(format!("{name}.txt"));
        std::fs::write(&file, ov).expect("write");
        files.push(file);
        let h = keel_compiler::compile_host(&c, 0).expect("host");
        let steps = c.recipes[0]
            .value("optimizer", "steps")
            .and_then(|v| v.info.constant)
            .expect("steps") as u64;
        expect.push((
            name,
            keel_compiler::lower::schedule_values(&h, "optimizer.lr", steps).expect("a schedule"),
        ));
    }
    let lines = json_lines(&py, "verl_schedule.py", &files);
    assert_eq!(lines.len(), expect.len(), "{lines:?}");
    for ((name, keel), verl) in expect.iter().zip(&lines) {
        // The batch: 8 prompts of 4 in 2 mini-batches of 4 micro-batches.
        assert_eq!(verl["train_batch_size"], 8, "{name}");
        assert_eq!(verl["n"], 4, "{name}");
        assert_eq!(
            verl["ppo_mini_batch_size"], 4,
            "{name}: prompts per mini-batch"
        );
        assert_eq!(
            verl["ppo_micro_batch_size_per_gpu"], 4,
            "{name}: samples per micro-batch"
        );
        let lr: Vec<f64> = verl["lr"]
            .as_array()
            .expect("lr")
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        assert_eq!(lr.len(), keel.len(), "{name}");
        if *name == "linear" {
            continue;
        }
        let peak = keel.iter().copied().fold(0.0, f64::max);
        for (k, (a, b)) in lr.iter().zip(keel).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * peak,
                "{name} step {}: verl {a}, keel {b}",
                k + 1
            );
        }
    }
    assert_eq!(lines[0]["clip_grad"], 0.5);
    assert_eq!(lines[1]["optimizer"], "Adam");
    assert_eq!(lines[1]["betas"], serde_json::json!([0.9, 0.98]));
    assert_eq!(lines[2]["weight_decay"], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recipe whose credit is verl's GAE and whose `critic.loss` is verl's
/// clipped value loss (std/ppo, here with lam 0.95, a clip of 0.2 and its
/// own critic optimizer) exports to verl's own critic path: composed by
/// verl's Hydra config (`tests/reference/verl_critic_config.py`), the
/// overrides give `adv_estimator=gae`, gamma and lam, a critic
/// (`need_critic`), its clip range, aggregation, learning rate, decay, clip
/// and warm-up. A critic verl cannot run (an unclipped value loss) is
/// refused with E0803, which says why.
#[test]
fn ppo_exports_verls_gae_and_critic_and_other_critics_are_refused() {
    let dir = std::env::temp_dir().join(format!("keel-export-critic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let check = |name: &str, body: &str| {
        let text = format!("import std/ppo\n\nrecipe {name} extends ppo {{\n{body}}}\n");
        let c =
            keel_compiler::check_source(&keel_compiler::NoFiles, &format!("{name}.recipe"), &text);
        assert!(!c.has_errors(), "{}", keel_tests::render(&c));
        c
    };
    let ppo = check(
        "ppo_lam",
        "    credit.lam = 0.95\n    critic { value_clip = 0.2, lr = 2e-5, weight_decay = 0.0, grad_clip = 0.5, warmup = 3 }\n",
    );
    let v = keel_export::verl_package(&ppo, 0, "ppo_lam.recipe", false).expect("exports to verl");
    let ov = overrides_txt(&v);
    assert!(ov.contains("algorithm.adv_estimator=gae\n"), "{ov}");
    assert!(
        !v.package
            .files
            .iter()
            .any(|(p, _)| p.ends_with("verl_adv.py")),
        "verl's own GAE: no registered estimator"
    );
    // An unclipped value loss is not verl's.
    let mse = check(
        "mse",
        "    critic.loss = 0.5 * (vpred - credit.returns) ^ 2\n",
    );
    let e = keel_export::verl_package(&mse, 0, "mse.recipe", false).expect_err("refused");
    let text = e
        .iter()
        .map(|d| format!("[{}] {}", d.code.0, d.message))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("[E0803]") && text.contains("clipped value loss"),
        "{text}"
    );
    assert!(
        !text.contains("[E0800]"),
        "the credit is verl's GAE: {text}"
    );
    let Some(py) = python() else {
        return;
    };
    if !python_has(
        &py,
        "import verl, hydra; assert verl.__version__ == '0.9.1'",
        "verl 0.9.1",
    ) {
        return;
    }
    let file = dir.join("ppo_lam.txt");
    std::fs::write(&file, &ov).expect("write");
    let got = json_lines(&py, "verl_critic_config.py", &[file])
        .pop()
        .expect("a JSON line");
    assert_eq!(got["adv_estimator"], "gae");
    assert_eq!(got["need_critic"], true);
    assert_eq!(got["gamma"], 1.0);
    assert_eq!(got["lam"], 0.95);
    assert_eq!(got["cliprange_value"], 0.2);
    assert_eq!(got["loss_agg_mode"], "token-mean");
    assert_eq!(got["lr"], 2e-5);
    assert_eq!(got["weight_decay"], 0.0);
    assert_eq!(got["grad_clip"], 0.5);
    assert_eq!(got["critic_warmup"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}
