//! The cubecl executor of the kernel plan (generated loop kernels,
//! segmented-reduction kernels, special steps on the host) against the f64
//! reference interpreter, for every stdlib recipe on randomized batches with
//! edge cases (all-equal groups, one-token sequences, a fully masked row,
//! extreme log-ratios). Runs on cubecl's wgpu runtime: Mesa's lavapipe in CI
//! (KEEL_REQUIRE_VULKAN), any Vulkan GPU elsewhere.

use keel_compiler::batch::Batch;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{Backend, Disk, check_source, run_loss_with};
use keel_device::plan::DevicePlan;
use std::path::Path;

fn variants(recipe: &keel_compiler::CheckedRecipe, seed: u64) -> Vec<(String, Batch)> {
    let (b, t, v, group) = (16, 24, 8, 4);
    // v = 0: logp and entropy per token unless the recipe reads the vocabulary.
    let v = if keel_compiler::reads_logits_only_through_kernel(recipe) {
        0
    } else {
        v
    };
    let base = synth::batch(recipe, Dims { b, t, v, group }, seed);
    let mut out = vec![(format!("random {seed}"), base.clone())];
    let mut edge = base.clone();
    for (name, tensor) in edge.tensors.iter_mut() {
        if tensor.shape == [b] && name != "group" {
            for i in 1..group {
                tensor.data[i] = tensor.data[0];
            }
        }
    }
    if let Some(m) = edge.tensors.get_mut("mask") {
        for r in 5..8 {
            for j in 0..t {
                m.data[r * t + j] = if j == 0 { 1.0 } else { 0.0 };
            }
        }
        for j in 0..t {
            m.data[9 * t + j] = 0.0;
        }
    }
    let logp: Option<Vec<f64>> = edge.tensors.get("logp").map(|x| x.data.clone());
    if let Some(lp) = logp
        && let Some(x) = edge.tensors.get_mut("old_logp")
    {
        x.data[0] = lp[0] + 15.0;
        x.data[1] = lp[1] - 15.0;
    }
    out.push(("edge cases".into(), edge));
    out
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Largest error relative to the reference's scale: its largest entry, and
/// at least 0.1 for a single value (a loss is a mean of O(1) terms that can
/// cancel to nearly 0, where f32's error is relative to the terms).
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let floor = if want.len() == 1 { 0.1 } else { 1e-6 };
    let scale = max_abs(want).max(floor);
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_nan() && w.is_nan() {
                0.0
            } else {
                (g - w).abs() / scale
            }
        })
        .fold(0.0, f64::max)
}

#[test]
fn device_plan_equals_the_interpreter_on_every_stdlib_recipe() {
    let client = match keel_device::client() {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("KEEL_REQUIRE_VULKAN").is_none(),
                "no Vulkan device: {e}"
            );
            eprintln!("skipped: no Vulkan device ({e})");
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    let mut runs = 0;
    for (file, _) in keel_compiler::stdlib::FILES {
        let path = root.join("stdlib").join(format!("{file}.recipe"));
        let text = std::fs::read_to_string(&path).expect("stdlib file");
        let c = check_source(&Disk, &path.to_string_lossy(), &text);
        assert!(!c.has_errors(), "{file}");
        for (idx, r) in c.recipes.iter().enumerate() {
            for (what, batch) in variants(r, 3) {
                let Ok(want) = run_loss_with(&c, idx, &batch, "b", Backend::Interp) else {
                    continue;
                };
                let have = |n: &str| batch.has(n);
                let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
                let prepared =
                    keel_compiler::batch::prepare(&batch, "b", &compiled.graph, r).expect("ok");
                let mut inputs = keel_compiler::inputs_f32(&prepared.inputs);
                inputs
                    .entry("mask".into())
                    .or_insert_with(|| prepared.mask.iter().map(|&x| x as f32).collect());
                let plan = keel_compiler::kernel::Plan::new(&compiled.graph).expect("plan");
                let dp = match DevicePlan::new(&plan) {
                    Ok(d) => d,
                    Err(e) => {
                        failures.push(format!("{} ({what}): not lowered: {e}", r.name));
                        continue;
                    }
                };
                let got = match dp.run(&client, &prepared.shape, &inputs) {
                    Ok(g) => g,
                    Err(e) => {
                        failures.push(format!("{} ({what}): {e}", r.name));
                        continue;
                    }
                };
                runs += 1;
                let mut check = |name: &str, w: Option<&Vec<f64>>| {
                    let (Some(w), Some(g)) = (w, got.get(name)) else {
                        return;
                    };
                    let e = rel_err(g, w);
                    let label = format!("{} ({what}) {name}", r.name);
                    if e > worst.0 {
                        worst = (e, label.clone());
                    }
                    // PLD's suffix sums are `sum − cumsum_by + e`: a
                    // cancellation f32 cannot carry to 1e-5 (the f64 CPU
                    // executor does; tests/kernel.rs).
                    let tol = if r.name == "pld" { 5e-5 } else { 1e-5 };
                    if e > tol {
                        failures.push(format!(
                            "{label}: error {e:.2e} of its scale ({:?} vs {:?})",
                            &g[..g.len().min(3)],
                            &w[..w.len().min(3)]
                        ));
                    }
                };
                check("loss", Some(&vec![want.loss]));
                check("d_logp", Some(&want.d_logp));
                check("advantages", want.advantages.as_ref());
                check("d_logits", want.d_logits.as_ref());
                for (m, x) in &want.metrics {
                    check(&format!("metric.{m}"), Some(&vec![*x]));
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
}
