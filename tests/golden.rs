//! The loss semantics: parity with verl 0.9 on randomized batches, finite
//! differences of every preset, the spec's worked examples, `--set`, and the
//! IR and `explain` outputs.

use keel_compiler::batch::Batch;
use keel_compiler::{Backend, run_loss_with};
use keel_tests::{batch, check_file, close, golden_batch, loss_of, loss_str, preset_path};

const PRESETS: &[&str] = &[
    "ppo",
    "grpo",
    "grpo_entropy",
    "dapo",
    "dr_grpo",
    "gspo",
    "rloo",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "kl_cov",
    "clip_cov",
];

fn tensor(b: &Batch, name: &str) -> Vec<f64> {
    b.tensors
        .get(name)
        .map(|t| t.data.to_f64())
        .unwrap_or_default()
}

/// Loss, d_logp and advantages agree with verl 0.9.1 (1e-5 relative) on
/// randomized batches: B=16, T=24, groups of 4 (shuffled ids), variable
/// lengths, binary and real rewards; on the f64 interpreter and on the f32
/// kernel plan (whose entries are compared within 1e-5 of the largest).
#[test]
fn verl_parity_on_randomized_batches() {
    let mut checked_files = 0;
    let mut failures = Vec::new();
    for p in PRESETS {
        let c = check_file(&preset_path(p), &[]);
        assert!(!c.has_errors(), "{p}");
        let idx = c.main_recipe(None).expect("a recipe");
        for variant in ["binary", "real"] {
            let b = golden_batch(&format!("{p}__{variant}"));
            assert!(b.has("expect.loss"), "missing fixture {p}__{variant}");
            let want = tensor(&b, "expect.loss")[0];
            let wd = tensor(&b, "expect.d_logp");
            let wa = tensor(&b, "expect.advantages");
            for backend in [Backend::Interp, Backend::Kernel { threads: 2 }] {
                let r = match run_loss_with(&c, idx, &b, "batch", backend) {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("{p}/{variant} {backend:?}: {}", e[0].message));
                        continue;
                    }
                };
                // The interpreter is f64: entry by entry. The kernel plan is
                // f32: within 1e-5 of the largest entry.
                let floor = |v: &[f64]| match backend {
                    Backend::Interp => 1e-8,
                    _ => 1e-5 * v.iter().fold(0.0f64, |m, x| m.max(x.abs())),
                };
                if !close(r.loss, want, 1e-5, 1e-9) {
                    failures.push(format!(
                        "{p}/{variant} {backend:?}: loss {} vs verl {want}",
                        r.loss
                    ));
                }
                assert_eq!(r.d_logp.len(), wd.len());
                let fd = floor(&wd);
                for (i, (x, y)) in r.d_logp.iter().zip(&wd).enumerate() {
                    if !close(*x, *y, 1e-5, fd) {
                        failures.push(format!(
                            "{p}/{variant} {backend:?}: d_logp[{i}] = {x} vs verl {y}"
                        ));
                    }
                }
                let adv = r.advantages.clone().expect("advantages");
                let fa = floor(&wa);
                for (i, (x, y)) in adv.iter().zip(&wa).enumerate() {
                    if !close(*x, *y, 1e-5, fa) {
                        failures.push(format!(
                            "{p}/{variant} {backend:?}: advantages[{i}] = {x} vs verl {y}"
                        ));
                    }
                }
                checked_files += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked_files, 2 * 2 * PRESETS.len());
}

/// PPO's critic agrees with verl 0.9.1 on randomized batches (B=16, T=24,
/// `vpred` partly outside the clip range; `multiturn`: environment tokens of
/// mask 0 inside responses, across which verl carries the next value and
/// the running GAE; `tests/reference/verl_critic.py`):
/// the value loss (`compute_value_loss` over the returns of
/// `compute_gae_advantage_return`) to 1e-6 relative, d(value loss)/d(vpred)
/// against torch autograd to 1e-5, the whitened advantages, the policy
/// loss, `vf_clipfrac` and `vf_explained_var`; on the f64 interpreter and
/// the f32 kernel plan. d_vpred also matches finite differences.
#[test]
fn ppo_critic_matches_verl_value_loss_and_gae_returns() {
    let c = check_file(&preset_path("ppo"), &[]);
    let idx = c.main_recipe(None).expect("a recipe");
    for variant in ["binary", "real", "multiturn"] {
        let b = golden_batch(&format!("ppo_critic__{variant}"));
        assert!(b.has("expect.value_loss"), "missing fixture {variant}");
        let one = |n: &str| tensor(&b, n)[0];
        let wd = tensor(&b, "expect.d_vpred");
        let wa = tensor(&b, "expect.advantages");
        for backend in [Backend::Interp, Backend::Kernel { threads: 2 }] {
            let r = run_loss_with(&c, idx, &b, "batch", backend).expect("runs");
            let (rel, floor) = match backend {
                Backend::Interp => (1e-6, 1e-9),
                _ => (1e-5, 1e-5 * wd.iter().fold(0.0f64, |m, x| m.max(x.abs()))),
            };
            let vl = r.value_loss.expect("value_loss");
            let want = one("expect.value_loss");
            assert!(
                close(vl, want, rel, 1e-9),
                "{variant} {backend:?}: value loss {vl} vs verl {want}"
            );
            assert!(
                close(r.loss, one("expect.loss"), 1e-5, 1e-9),
                "{variant}: loss"
            );
            assert_eq!(r.d_vpred.len(), wd.len());
            for (i, (x, y)) in r.d_vpred.iter().zip(&wd).enumerate() {
                assert!(
                    close(*x, *y, 1e-5, floor),
                    "{variant} {backend:?}: d_vpred[{i}] = {x} vs autograd {y}"
                );
            }
            let adv = r.advantages.clone().expect("advantages");
            let fa = 1e-5 * wa.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (i, (x, y)) in adv.iter().zip(&wa).enumerate() {
                assert!(
                    close(*x, *y, 1e-5, fa),
                    "{variant} {backend:?}: advantages[{i}] = {x} vs verl {y}"
                );
            }
            let m = |n: &str| {
                r.metrics
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| *v)
                    .expect(n)
            };
            assert!(
                close(
                    m("value_clipfrac"),
                    one("expect.value_clipfrac"),
                    1e-6,
                    1e-9
                ),
                "{variant}: clipfrac"
            );
            assert!(
                close(
                    m("explained_variance"),
                    one("expect.explained_variance"),
                    1e-5,
                    1e-7
                ),
                "{variant}: explained variance"
            );
        }
        let n = keel_tests::fd_check(&c, None, &b, "vpred", 120);
        assert!(n >= 40, "{variant}: only {n} points checked");
    }
}

/// `std/gkd` is TRL 1.16's `generalized_jsd_loss` (`tests/reference/
/// trl_gkd.py`): value and d(loss)/d(logits) against torch autograd for
/// beta 0 (forward KL), 0.5 (the mixture) and 1 (reverse KL), at
/// temperature 0.9; on the f64 interpreter and the f32 kernel plan.
#[test]
fn gkd_matches_trl_generalized_jsd_for_each_beta() {
    for tag in ["0", "05", "1"] {
        let b = golden_batch(&format!("gkd__beta{tag}"));
        assert!(b.has("expect.loss"), "missing fixture beta{tag}");
        let beta = tensor(&b, "expect.beta")[0].to_string();
        let temperature = tensor(&b, "expect.temperature")[0].to_string();
        let c = check_file(
            &preset_path("gkd"),
            &[
                ("objective.beta", &beta),
                ("objective.temperature", &temperature),
            ],
        );
        assert!(!c.has_errors(), "{}", keel_tests::render(&c));
        let idx = c.main_recipe(None).expect("a recipe");
        let want = tensor(&b, "expect.loss")[0];
        let wd = tensor(&b, "expect.d_logits");
        for backend in [Backend::Interp, Backend::Kernel { threads: 2 }] {
            let r = run_loss_with(&c, idx, &b, "batch", backend).expect("runs");
            let (rel, floor) = match backend {
                Backend::Interp => (1e-9, 1e-12),
                _ => (1e-5, 1e-5 * wd.iter().fold(0.0f64, |m, x| m.max(x.abs()))),
            };
            assert!(
                close(r.loss, want, rel, 1e-12),
                "beta {beta} {backend:?}: {} vs TRL {want}",
                r.loss
            );
            let d = r.d_logits.clone().expect("d_logits").to_f64();
            assert_eq!(d.len(), wd.len());
            for (i, (x, y)) in d.iter().zip(&wd).enumerate() {
                assert!(
                    close(*x, *y, 1e-5, floor.max(1e-12)),
                    "beta {beta} {backend:?}: d_logits[{i}] = {x} vs autograd {y}"
                );
            }
        }
    }
}

/// Without `vpred` in the batch there is no critic output: the recipe's
/// policy loss is what it was, and the critic's monitors are skipped.
#[test]
fn a_batch_without_vpred_has_no_value_loss() {
    let c = check_file(&preset_path("ppo"), &[]);
    let b = golden_batch("ppo__binary");
    let r = loss_of(&c, &b);
    assert!(r.value_loss.is_none() && r.d_vpred.is_empty());
    assert!(
        r.skipped_metrics.contains(&"vpred_mean".to_string()),
        "{:?}",
        r.skipped_metrics
    );
}

#[test]
fn derived_d_logp_matches_finite_differences_for_every_preset() {
    for p in PRESETS {
        let c = check_file(&preset_path(p), &[]);
        for variant in ["binary", "real"] {
            let b = golden_batch(&format!("{p}__{variant}"));
            let n = keel_tests::fd_check(&c, None, &b, "logp", 120);
            assert!(n >= 40, "{p}: only {n} points checked");
        }
    }
}

/// A batch with logits and tokens (V = 64): GRPO + entropy bonus, where both
/// `logp` and `entropy` are derived from the logits.
fn logits_batch(seed: u64) -> Batch {
    let (bs, t, v) = (4usize, 6usize, 64usize);
    let mut s = seed;
    let mut rnd = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let logits: Vec<f64> = (0..bs * t * v).map(|_| rnd() * 4.0 - 2.0).collect();
    let tokens: Vec<f64> = (0..bs * t).map(|_| (rnd() * v as f64).floor()).collect();
    let lengths = [6, 4, 5, 2];
    let mask: Vec<f64> = (0..bs * t)
        .map(|i| f64::from(u8::from(i % t < lengths[i / t])))
        .collect();
    let old: Vec<f64> = (0..bs * t).map(|_| -1.5 - rnd()).collect();
    let refl: Vec<f64> = (0..bs * t).map(|_| -1.5 - rnd()).collect();
    let mut b = batch();
    b.insert("logits", "f32", vec![bs, t, v], logits);
    b.insert("tokens", "i64", vec![bs, t], tokens);
    b.insert("mask", "f32", vec![bs, t], mask);
    b.insert("old_logp", "f32", vec![bs, t], old);
    b.insert("ref_logp", "f32", vec![bs, t], refl);
    b.insert("reward", "f32", vec![bs], vec![1.0, 0.0, 1.0, 0.0]);
    b.insert("group", "i64", vec![bs], vec![0.0, 0.0, 1.0, 1.0]);
    b
}

#[test]
fn d_logits_matches_finite_differences_with_entropy_bonus() {
    let c = check_file(&preset_path("grpo_entropy"), &[]);
    for seed in [1, 2, 3] {
        let b = logits_batch(seed);
        let n = keel_tests::fd_check(&c, None, &b, "logits", 400);
        assert!(n >= 250, "only {n} logits checked");
        let r = loss_of(&c, &b);
        let d = r.d_logits.expect("d_logits").to_f64();
        assert_eq!(d.len(), 4 * 6 * 64);
        // Masked-out positions get no gradient.
        assert!(
            d[(3 * 6 + 4) * 64..(3 * 6 + 5) * 64]
                .iter()
                .all(|x| *x == 0.0)
        );
        assert!(d.iter().any(|x| *x != 0.0));
    }
}

// ----- the spec's worked examples ----------------------------------------------------------

fn bt(b: &mut Batch, name: &str, rows: &[&[f64]]) {
    let t = rows[0].len();
    b.insert(name, "f32", vec![rows.len(), t], rows.concat());
}

#[test]
fn loss_aggregations_unit_test() {
    // loss = [[1, 2, pad], [3, pad, pad]]
    let mut b = batch();
    bt(&mut b, "logp", &[&[1.0, 2.0, 9.0], &[3.0, 9.0, 9.0]]);
    bt(&mut b, "mask", &[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
    for (mode, want) in [
        ("token_mean", 2.0),
        ("seq_mean_token_sum", 3.0),
        ("seq_mean_token_mean", 2.25),
        // verl 0.9.1: the mean over sequences of (3, 3), over T = 3.
        ("seq_mean_token_sum_norm", 1.0),
    ] {
        let r = loss_str(
            &format!("recipe r {{ objective {{ loss = logp, reduce = {mode} }} }}"),
            &b,
        );
        assert!(close(r.loss, want, 1e-7, 1e-12), "{mode}: {}", r.loss);
        // d loss / d logp is the aggregation weight of each token.
        assert_eq!(r.d_logp[2], 0.0);
    }
    let r = loss_str(
        "recipe r { objective { loss = logp, reduce = seq_mean_token_sum_norm, norm = 4 } }",
        &b,
    );
    assert!(close(r.loss, 0.75, 1e-12, 0.0));
    // The verl <= 0.4 form, written as a batch-level loss.
    let r = loss_str(
        "recipe r { objective { loss = sum(mask * logp) over batch / 3 } }",
        &b,
    );
    assert!(close(r.loss, 2.0, 1e-12, 0.0), "old form: {}", r.loss);
}

#[test]
fn ppo_dual_clip_unit_tests() {
    // eps_low 0.2, eps_high 0.28, c = 3 (DAPO's clip with PPO's dual clip).
    let cases: [(f64, f64, f64); 5] = [
        (1.0, 1.5, -1.28),
        (1.0, 0.5, -0.5),
        (-1.0, 0.5, 0.8),
        (-1.0, 5.0, 3.0),
        (-1.0, 1.1, 1.1),
    ];
    let src = "import std/dapo\nrecipe r extends dapo {}\n";
    for (a, ratio, want) in cases {
        let mut b = batch();
        bt(&mut b, "logp", &[&[ratio.ln()]]);
        bt(&mut b, "old_logp", &[&[0.0]]);
        bt(&mut b, "mask", &[&[1.0]]);
        bt(&mut b, "advantages", &[&[a]]);
        b.insert("reward", "f32", vec![1], vec![0.0]);
        let r = loss_str(src, &b);
        assert!(
            close(r.loss, want, 1e-6, 1e-9),
            "A={a} ratio={ratio}: {} vs {want}",
            r.loss
        );
    }
}

#[test]
fn kl_estimators_unit_test() {
    let mut b = batch();
    bt(&mut b, "logp", &[&[-1.0]]);
    bt(&mut b, "ref_logp", &[&[-1.5]]);
    bt(&mut b, "mask", &[&[1.0]]);
    for (f, want, grad) in [
        ("kl_k1", 0.5, 1.0),
        ("kl_k2", 0.125, 0.5),
        ("kl_k3", 0.106531, 1.0 - (-0.5f64).exp()),
        ("kl_k3_plus", 0.106531, 0.5),
        ("kl_abs", 0.5, 1.0),
    ] {
        let src = format!("import std/kl\nrecipe r {{ objective.loss = {f}(logp, ref_logp) }}");
        let r = loss_str(&src, &b);
        assert!(close(r.loss, want, 1e-5, 1e-9), "{f}: {}", r.loss);
        assert!(
            close(r.d_logp[0], grad, 1e-9, 1e-12),
            "{f} gradient: {}",
            r.d_logp[0]
        );
    }
}

fn group_batch(rewards: &[f64], lengths: &[usize]) -> Batch {
    let t = *lengths.iter().max().unwrap_or(&1);
    let n = rewards.len();
    let mut b = batch();
    let mask: Vec<f64> = (0..n * t)
        .map(|i| f64::from(u8::from(i % t < lengths[i / t])))
        .collect();
    b.insert("mask", "f32", vec![n, t], mask);
    b.insert("logp", "f32", vec![n, t], vec![-1.0; n * t]);
    b.insert("old_logp", "f32", vec![n, t], vec![-1.0; n * t]);
    b.insert("ref_logp", "f32", vec![n, t], vec![-1.0; n * t]);
    b.insert("reward", "f32", vec![n], rewards.to_vec());
    b.insert("group", "i64", vec![n], vec![7.0; n]);
    b
}

fn seq_advantages(preset: &str, b: &Batch, sets: &[(&str, &str)]) -> Vec<f64> {
    let c = check_file(&preset_path(preset), sets);
    let r = loss_of(&c, b);
    let adv = r.advantages.expect("advantages");
    (0..r.b).map(|i| adv[i * r.t]).collect()
}

#[test]
fn group_credit_worked_examples() {
    let b = group_batch(&[1.0, 0.0, 0.0, 0.0], &[1, 1, 1, 1]);
    let expect = |got: Vec<f64>, want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, *w, 1e-6, 1e-9), "{got:?} vs {want:?}");
        }
    };
    expect(
        seq_advantages("grpo", &b, &[]),
        &[1.499997, -0.499999, -0.499999, -0.499999],
    );
    expect(
        seq_advantages("dr_grpo", &b, &[]),
        &[0.75, -0.25, -0.25, -0.25],
    );
    expect(
        seq_advantages("rloo", &b, &[]),
        &[1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
    );
    let same = group_batch(&[1.0, 1.0, 1.0, 1.0], &[1, 1, 1, 1]);
    for p in ["grpo", "dr_grpo", "rloo"] {
        assert!(
            seq_advantages(p, &same, &[]).iter().all(|x| *x == 0.0),
            "{p}"
        );
    }
    // A one-member group: mean 0, std 1, so GRPO's credit is the reward.
    let mut single = group_batch(&[0.7], &[2]);
    single.insert("group", "i64", vec![1], vec![3.0]);
    expect(seq_advantages("grpo", &single, &[]), &[0.7 / (1.0 + 1e-6)]);
    expect(seq_advantages("rloo", &single, &[]), &[0.7]);
}

#[test]
fn reinforce_pp_worked_examples() {
    // Lengths [2, 3, 1, 2], rewards [1, 0, 0, 0], one group.
    let b = group_batch(&[1.0, 0.0, 0.0, 0.0], &[2, 3, 1, 2]);
    for p in ["reinforce_pp_baseline", "reinforce_pp"] {
        let adv = seq_advantages(p, &b, &[]);
        assert!(close(adv[0], 1.620185, 1e-6, 0.0), "{p}: {adv:?}");
        for a in &adv[1..] {
            assert!(close(*a, -0.540062, 1e-5, 0.0), "{p}: {adv:?}");
        }
    }
}

#[test]
fn rscan_discounted_returns() {
    // Token rewards [-0.01, -0.02, 0.97], gamma 0.99 -> [0.920897, 0.9403, 0.97].
    let mut b = batch();
    bt(&mut b, "step_reward", &[&[-0.01, -0.02, 0.97]]);
    bt(&mut b, "mask", &[&[1.0, 1.0, 1.0]]);
    bt(&mut b, "logp", &[&[0.0, 0.0, 0.0]]);
    let r = loss_str(
        "recipe r { credit = rscan(step_reward, 0.99), objective.loss = logp * credit }",
        &b,
    );
    let adv = r.advantages.expect("advantages");
    for (g, w) in adv.iter().zip([0.920897, 0.9403, 0.97]) {
        assert!(close(*g, w, 1e-6, 0.0), "{adv:?}");
    }
}

#[test]
fn gae_worked_example() {
    // r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma 1, lambda 0.95; whitened over
    // this one sequence: [0.991344, 0.017092, -1.008436].
    let mut b = batch();
    bt(&mut b, "values", &[&[0.5, 0.6, 0.7]]);
    bt(&mut b, "mask", &[&[1.0, 1.0, 1.0]]);
    bt(&mut b, "logp", &[&[-1.0, -1.0, -1.0]]);
    bt(&mut b, "old_logp", &[&[-1.0, -1.0, -1.0]]);
    b.insert("reward", "f32", vec![1], vec![1.0]);
    let adv = seq_tokens(
        &check_file(&preset_path("ppo"), &[("credit.lam", "0.95")]),
        &b,
    );
    for (g, w) in adv.iter().zip([0.991344, 0.017092, -1.008436]) {
        assert!(close(*g, w, 1e-5, 0.0), "{adv:?}");
    }
}

fn seq_tokens(c: &keel_compiler::Checked, b: &Batch) -> Vec<f64> {
    loss_of(c, b).advantages.expect("advantages")
}

#[test]
fn dapo_overlong_shaping_worked_example() {
    // L_max 20480, buffer 4096, penalty 1: 16000 -> 0, 16384 -> 0,
    // 18000 -> -0.39453125, 20480 -> -1. One-member groups, so the credit is
    // the shaped reward / (1 + 1e-6).
    for (len, want) in [
        (16000.0, 0.0),
        (16384.0, 0.0),
        (18000.0, -0.39453125),
        (20480.0, -1.0),
    ] {
        let mut b = group_batch(&[0.0], &[1]);
        b.insert("length", "i64", vec![1], vec![len]);
        let adv = seq_advantages("dapo", &b, &[]);
        assert!(
            close(adv[0], want / (1.0 + 1e-6), 1e-9, 1e-12),
            "L={len}: {adv:?}"
        );
    }
}

#[test]
fn set_overrides_change_the_result_as_expected() {
    let b = golden_batch("grpo__real");
    let grpo = loss_of(&check_file(&preset_path("grpo"), &[]), &b).loss;
    let dapo = loss_of(&check_file(&preset_path("dapo"), &[]), &b).loss;
    // GRPO with DAPO's clip and no KL is DAPO (the overlong shaping is 0 here).
    let as_dapo = loss_of(
        &check_file(
            &preset_path("grpo"),
            &[("clip.eps_high", "0.28"), ("divergence.coef", "0")],
        ),
        &b,
    )
    .loss;
    assert!(close(as_dapo, dapo, 1e-12, 1e-15), "{as_dapo} vs {dapo}");
    assert!((grpo - dapo).abs() > 1e-6);
    // The KL term is linear in its coefficient.
    let k2 = loss_of(
        &check_file(&preset_path("grpo"), &[("divergence.coef", "0.002")]),
        &b,
    )
    .loss;
    let k0 = loss_of(
        &check_file(&preset_path("grpo"), &[("divergence.coef", "0")]),
        &b,
    )
    .loss;
    assert!(close(k2 - grpo, grpo - k0, 1e-9, 1e-12));
    // Options can be set too.
    let seq = loss_of(
        &check_file(
            &preset_path("grpo"),
            &[("objective.reduce", "seq_mean_token_mean")],
        ),
        &b,
    )
    .loss;
    assert!((seq - grpo).abs() > 1e-6);
}

#[test]
fn bad_set_overrides_are_located_errors() {
    let c = check_file(&preset_path("grpo"), &[("clip.eps_hihg", "0.3")]);
    let lines: Vec<String> = c
        .diagnostics
        .iter()
        .map(|d| d.plain_line(c.sources()))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("error[E0605]")),
        "{lines:?}"
    );
    let help = c.diagnostics[0].help.clone().unwrap_or_default();
    assert!(help.contains("did you mean `clip.eps_high`?"), "{help}");
    let c = check_file(&preset_path("grpo"), &[("clip.eps_low", "1.5")]);
    assert!(c.diagnostics.iter().any(|d| d.code.0 == "E0300"));
    let c = check_file(&preset_path("grpo"), &[("clip.eps_high", "0.2 +")]);
    assert!(c.diagnostics.iter().any(|d| d.code.0 == "E0002"));
}

// ----- the IR and `explain` --------------------------------------------------------------

fn grpo_ir() -> String {
    let c = check_file(&preset_path("grpo"), &[]);
    let have = |n: &str| !matches!(n, "logits" | "tokens" | "teacher_logits" | "advantages");
    let compiled = keel_compiler::compile_loss(&c, c.main_recipe(None).expect("grpo"), &have)
        .expect("compiles");
    compiled.graph.print()
}

#[test]
fn grpo_ir_is_readable() {
    let ir = grpo_ir();
    insta::assert_snapshot!("grpo_ir", ir);
    // Hyperparameters stay named; outputs are listed.
    assert!(ir.contains("param clip.eps_high = 0.2"));
    assert!(ir.contains("param divergence.coef = 0.001"));
    for out in [
        "out loss",
        "out advantages",
        "out d_logp",
        "out metric.approx_kl",
    ] {
        assert!(ir.contains(out), "{out}");
    }
}

#[test]
fn ir_folds_constants_and_shares_subexpressions() {
    let src = "recipe r { objective.loss = exp(1 + 2) * (logp * old_logp) + logp * old_logp }";
    let c = keel_tests::check_str(src);
    let have = |_: &str| true;
    let g = keel_compiler::compile_loss(&c, 0, &have)
        .expect("compiles")
        .graph;
    let ir = g.print();
    assert!(ir.contains(&format!("const {}", 3f64.exp())), "{ir}");
    let muls = g
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                keel_compiler::ir::Op::Binary(keel_compiler::ir::Bin::Mul)
            )
        })
        .filter(|n| {
            n.args
                .iter()
                .all(|a| matches!(g.nodes[*a].op, keel_compiler::ir::Op::Input(_)))
        })
        .count();
    assert_eq!(muls, 1, "logp * old_logp is computed once:\n{ir}");
}

#[test]
fn explain_prints_the_formula() {
    let src = std::fs::read_to_string(preset_path("grpo")).unwrap_or_default();
    let c = keel_compiler::check_source(&keel_compiler::NoFiles, "stdlib/grpo.recipe", &src);
    let text = keel_compiler::explain::explain_recipe(&c, c.main_recipe(None).expect("grpo"));
    assert!(
        text.contains("loss = token_mean(objective.loss) + 0.001 · token_mean(divergence.value)"),
        "{text}"
    );
    assert!(text.contains("DeepSeekMath"), "{text}");
    insta::assert_snapshot!(
        "grpo_explain",
        text.replace(&keel_tests::root().to_string_lossy().to_string(), "<root>")
    );
}

/// `keel explain` prints Dr. GRPO's reduction as verl 0.9.1 computes it: the
/// mean over sequences, then the constant.
#[test]
fn explain_prints_the_seq_mean_of_dr_grpo() {
    let c = check_file(&preset_path("dr_grpo"), &[]);
    let text = keel_compiler::explain::explain_recipe(&c, c.main_recipe(None).expect("dr_grpo"));
    assert!(
        text.contains("(1/B') Σ_i Σ_t m_it·ℓ_it / N"),
        "the reduction's formula:\n{text}"
    );
}
