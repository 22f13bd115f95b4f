//! The cubecl executor of the kernel plan (generated loop kernels,
//! segmented-reduction kernels, special steps on the host) against the f64
//! reference interpreter, for every stdlib recipe on randomized batches with
//! edge cases (all-equal groups, one-token sequences, a fully masked row,
//! extreme log-ratios). Runs on cubecl's wgpu runtime: Mesa's lavapipe in CI
//! (KEEL_REQUIRE_VULKAN), any Vulkan GPU elsewhere.

mod common;

use keel_compiler::synth::{self, Dims};
use keel_compiler::{Backend, Disk, check_source, run_loss_with};
use std::path::Path;

#[test]
fn device_plan_equals_the_interpreter_on_every_stdlib_recipe() {
    let Some(client) = common::client_or_skip() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    let mut runs = 0;
    let mut riskpo_runs = 0;
    for (file, _) in keel_compiler::stdlib::FILES {
        let path = root.join("stdlib").join(format!("{file}.recipe"));
        let text = std::fs::read_to_string(&path).expect("stdlib file");
        let c = check_source(&Disk, &path.to_string_lossy(), &text);
        assert!(!c.has_errors(), "{file}");
        for (idx, r) in c.recipes.iter().enumerate() {
            // Logits only for recipes that read the vocabulary themselves.
            let v = if keel_compiler::LogitsPath::fusable(r) {
                0
            } else {
                8
            };
            let d = Dims {
                b: 16,
                t: 24,
                v,
                group: 4,
            };
            for (what, batch) in synth::variants(r, d, 3) {
                let Ok(want) = run_loss_with(&c, idx, &batch, "b", Backend::Interp) else {
                    continue;
                };
                let have = |n: &str| batch.has(n);
                let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
                let prepared =
                    keel_compiler::batch::prepare(&batch, "b", &compiled.graph, r).expect("ok");
                let got = match keel_device::run_graph(&client, &compiled.graph, &prepared) {
                    Ok(g) => g,
                    Err(e) => {
                        failures.push(format!("{} ({what}): {e}", r.name));
                        continue;
                    }
                };
                runs += 1;
                if r.name == "riskpo" {
                    riskpo_runs += 1;
                }
                for (name, e) in keel_compiler::parity::errors(&got, &want) {
                    let label = format!("{} ({what}) {name}", r.name);
                    if e > worst.0 {
                        worst = (e, label.clone());
                    }
                    if e > keel_compiler::parity::F32_TOLERANCE {
                        failures.push(format!("{label}: error {e:.2e} of its scale"));
                    }
                }
            }
        }
    }
    eprintln!("{runs} runs; largest error {:.2e} ({})", worst.0, worst.1);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(runs >= 80, "only {runs} runs");
    assert!(
        riskpo_runs >= 4,
        "riskpo (keyed statistics) ran {riskpo_runs} times"
    );
}

/// Ranks, quantiles and sorted running sums lower to device kernels (a
/// bitonic sort), not to the host.
#[test]
fn selections_run_on_the_device() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (file, want) in [
        ("grpo_lambda", "Rank"),
        ("siren", "Quantile"),
        ("pld", "SortedCumsum"),
        ("riskpo", "keyed Quantile"),
        ("riskpo", "keyed Min"),
    ] {
        let path = root.join("stdlib").join(format!("{file}.recipe"));
        let text = std::fs::read_to_string(&path).expect("stdlib file");
        let c = check_source(&Disk, &path.to_string_lossy(), &text);
        let idx = c.main_recipe(None).expect("recipe");
        let r = &c.recipes[idx];
        let v = if keel_compiler::LogitsPath::fusable(r) {
            0
        } else {
            8
        };
        let batch = synth::batch(
            r,
            Dims {
                b: 8,
                t: 8,
                v,
                group: 4,
            },
            1,
        );
        let have = |n: &str| batch.has(n);
        let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
        let dp = keel_device::plan::DevicePlan::of_graph(&compiled.graph).expect("lowers");
        let listing = dp.describe();
        assert!(
            listing.contains(&format!("bitonic sort + {want}")),
            "{file}:\n{listing}"
        );
    }
}

/// A batch whose arena is larger than the device's largest allocation is
/// refused as too large (E0606 in `keel loss`) from its shape alone, before
/// any input is read or uploaded.
#[test]
fn a_batch_beyond_the_device_limit_is_too_large() {
    let Some(client) = common::client_or_skip() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("stdlib/grpo.recipe");
    let text = std::fs::read_to_string(&path).expect("stdlib file");
    let c = check_source(&Disk, &path.to_string_lossy(), &text);
    let idx = c.main_recipe(None).expect("grpo");
    let have = |n: &str| !matches!(n, "logits" | "tokens" | "advantages" | "teacher_logits");
    let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    let limit = client.properties().memory.max_page_size as usize;
    // Enough positions for one token-level slot alone to exceed the limit.
    let (b, t) = (limit / 4 / 1024 + 8, 1024);
    let prepared = keel_compiler::batch::Prepared {
        shape: keel_compiler::interp::Shape {
            b,
            t,
            v: 0,
            group_of: (0..b).map(|i| i / 8).collect(),
            n_groups: b.div_ceil(8),
        },
        mask: Vec::new(),
        inputs: Default::default(),
    };
    match keel_device::run_graph(&client, &compiled.graph, &prepared) {
        Err(keel_compiler::Error {
            code: keel_compiler::codes::TOO_LARGE,
            message,
            help,
            ..
        }) => {
            assert!(
                message.contains("this device allocates at most")
                    && help.contains("--backend kernel"),
                "{message} / {help}"
            );
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|o| o.len())),
    }
}

/// `rand` with a seed the host computes from hyperparameters and step inputs
/// (`seed + step`) runs on the device and equals the interpreter — a fresh
/// draw each step; a seed computed from the batch is refused with advice.
#[test]
fn rand_with_a_step_level_seed_runs_on_the_device() {
    let Some(client) = common::client_or_skip() else {
        return;
    };
    let src = |seed: &str| {
        format!(
            "import std/grpo\n\nrecipe seeded extends grpo {{\n    objective {{\n        seed = 3\n        loss = -credit * exp(logp - old_logp) * rand(logp, {seed})\n    }}\n}}\n"
        )
    };
    let c = check_source(&Disk, "seeded.recipe", &src("seed + 2 * step"));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let idx = c.main_recipe(None).expect("recipe");
    let r = &c.recipes[idx];
    let d = Dims {
        b: 8,
        t: 12,
        v: 0,
        group: 4,
    };
    let mut losses = Vec::new();
    for step in [10.0, 11.0] {
        let mut batch = synth::batch(r, d, 2);
        batch.insert("step", "i64", vec![], vec![step]);
        let want = run_loss_with(&c, idx, &batch, "b", Backend::Interp).expect("interp");
        let have = |n: &str| batch.has(n);
        let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
        let prepared =
            keel_compiler::batch::prepare(&batch, "b", &compiled.graph, r).expect("batch fits");
        let got = keel_device::run_graph(&client, &compiled.graph, &prepared).expect("runs");
        let loss = got["loss"].get(0).expect("a loss");
        assert!(
            (loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1e-3),
            "step {step}: device {loss} vs interpreter {}",
            want.loss
        );
        let scale = want.d_logp.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in got["d_logp"].to_f64().iter().zip(&want.d_logp).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "step {step} d_logp[{i}]: {a} vs {b}"
            );
        }
        losses.push(want.loss);
    }
    assert_ne!(losses[0], losses[1], "a different draw each step");
    // A seed from a batch reduction cannot be computed before the upload.
    let c = check_source(&Disk, "seeded.recipe", &src("sum(reward) over batch"));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let idx = c.main_recipe(None).expect("recipe");
    let batch = synth::batch(&c.recipes[idx], d, 2);
    let have = |n: &str| batch.has(n);
    let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    let err = keel_device::plan::DevicePlan::of_graph(&compiled.graph)
        .err()
        .expect("refused");
    assert!(err.contains("seed computed from the batch"), "{err}");
}
