//! The formula sheets' worked examples, one test per method (golden values
//! within 1e-6 relative unless the sheet gives fewer digits), and a
//! finite-difference gradient check of every loss-level preset.

use keel_compiler::batch::Batch;
use keel_tests::{batch, check_file, close, loss_of, loss_str, preset_path};

/// `[B]`-shaped helper: one token per sequence unless lengths say otherwise.
struct B {
    b: Batch,
    n: usize,
    t: usize,
}

impl B {
    fn new(lengths: &[usize]) -> B {
        let n = lengths.len();
        let t = *lengths.iter().max().unwrap_or(&1);
        let mut b = batch();
        let mask: Vec<f64> = (0..n * t)
            .map(|i| f64::from(u8::from(i % t < lengths[i / t])))
            .collect();
        b.insert("mask", "f32", vec![n, t], mask);
        for name in ["logp", "old_logp", "ref_logp"] {
            b.insert(name, "f32", vec![n, t], vec![-1.0; n * t]);
        }
        b.insert("entropy", "f32", vec![n, t], vec![1.0; n * t]);
        b.insert("group", "i64", vec![n], vec![0.0; n]);
        b.insert("reward", "f32", vec![n], vec![0.0; n]);
        B { b, n, t }
    }
    fn seq(mut self, name: &str, dtype: &str, v: &[f64]) -> B {
        self.b.insert(name, dtype, vec![self.n], v.to_vec());
        self
    }
    fn tok(mut self, name: &str, v: &[f64]) -> B {
        self.b.insert(name, "f32", vec![self.n, self.t], v.to_vec());
        self
    }
}

fn per_seq(adv: &[f64], t: usize) -> Vec<f64> {
    adv.chunks(t).map(|c| c[0]).collect()
}

fn assert_all(got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(close(*g, *w, rel, 1e-9), "{got:?} vs {want:?}");
    }
}

fn run(preset: &str, b: &B) -> keel_compiler::LossResult {
    loss_of(&check_file(&preset_path(preset), &[]), &b.b)
}

/// The reward a preset's `reward` section computes, read back through a
/// recipe whose credit is the reward.
fn rewards(preset: &str, b: &B) -> Vec<f64> {
    let src = format!(
        "import std/{preset}\nrecipe r extends {preset} {{ credit = none\n credit {{ value = reward }} }}\n"
    );
    let r = loss_str(&src, &b.b);
    per_seq(&r.advantages.expect("advantages"), b.t)
}

#[test]
fn npo_worked_example() {
    // beta 0.1: (theta -10, ref -8) -> 11.962777; equal -> 13.862944;
    // (-20, -8) -> 5.265649; batch mean of the first two 12.91286.
    for (lp, rf, want) in [
        (-10.0, -8.0, 11.962777),
        (-8.0, -8.0, 13.862944),
        (-20.0, -8.0, 5.265649),
    ] {
        let b = B::new(&[1]).tok("logp", &[lp]).tok("ref_logp", &[rf]);
        let r = run("npo", &b);
        assert!(close(r.loss, want, 1e-6, 0.0), "{lp}: {}", r.loss);
        // The gradient weight: dL/dlogp = 2·sigmoid(beta·(lp - ref)).
        let w = 2.0 / (1.0 + (-(0.1 * (lp - rf))).exp());
        assert!(close(r.d_logp[0], w, 1e-9, 0.0), "{} vs {w}", r.d_logp[0]);
    }
    let b = B::new(&[1, 1])
        .tok("logp", &[-10.0, -8.0])
        .tok("ref_logp", &[-8.0, -8.0]);
    assert!(close(run("npo", &b).loss, 12.91286, 1e-6, 0.0));
    // NPO+RT with a retain NLL of 1.3 (two retain tokens at log-prob -1.3).
    let b = B::new(&[1, 1, 2])
        .tok("logp", &[-10.0, 0.0, -8.0, 0.0, -1.3, -1.3])
        .tok("ref_logp", &[-8.0, 0.0, -8.0, 0.0, 0.0, 0.0])
        .seq("source", "i64", &[0.0, 0.0, 1.0]);
    assert!(close(run("npo_retain", &b).loss, 14.21286, 1e-6, 0.0));
}

#[test]
fn stable_reinforce_worked_examples() {
    // Advantage filter: A = [1]*9 + [-5]: mean 0.4, std 1.8 -> z = [1/3]*9 + [-3];
    // the code zeroes -3 (< 0.4 - 3), the paper keeps it.
    let mut r = vec![1.0; 9];
    r.push(-5.0);
    let b = B::new(&[1; 10]).seq("reward", "f32", &r);
    // The batch's `reward` stands in for the computed one.
    let code = loss_str(
        "import std/stable_reinforce\nrecipe r extends stable_reinforce { reward = reward }",
        &b.b,
    );
    let mut want = vec![1.0 / 3.0; 9];
    want.push(0.0);
    assert_all(&code.advantages.expect("adv"), &want, 1e-6);
    let paper = loss_str(
        "import std/stable_reinforce\nrecipe r extends stable_reinforce_paper { reward = reward }",
        &b.b,
    );
    want[9] = -3.0;
    assert_all(&paper.advantages.expect("adv"), &want, 1e-6);
    // Pre-clip: log ratio 8 -> ratio 1000 (with A = -1 the loss is the ratio);
    // -9 -> 0.001 (with A = 1 the loss is -ratio); 0.3 unchanged.
    for (lr, a, want) in [
        (8.0, -1.0, 1000.0),
        (-9.0, 1.0, -0.001),
        (0.3, -1.0, (0.3f64).exp()),
    ] {
        let b = B::new(&[1])
            .tok("logp", &[lr])
            .tok("old_logp", &[0.0])
            .tok("advantages", &[a])
            .seq("format_ok", "u8", &[1.0])
            .seq("correct", "u8", &[1.0])
            .seq("judge", "f32", &[0.0]);
        let l = run("stable_reinforce", &b).loss;
        assert!(close(l, want, 1e-7, 0.0), "log ratio {lr}: {l}");
    }
    // Reward: (format, acc, consistency) -> 0.5·f + acc·(1 + 0.5·c).
    let b = B::new(&[1; 5])
        .seq("format_ok", "u8", &[1.0, 1.0, 1.0, 0.0, 0.0])
        .seq("correct", "u8", &[1.0, 1.0, 0.0, 1.0, 0.0])
        .seq("judge", "f32", &[1.0, -1.0, 1.0, 0.0, -1.0]);
    assert_all(
        &rewards("stable_reinforce", &b),
        &[2.0, 1.0, 0.5, 1.0, 0.0],
        1e-12,
    );
}

#[test]
fn dler_worked_example() {
    // prompt1 R' = [1,1,0,0], L = [3,2,4,4]; prompt2 R' = [1,0,0,0], L = [2,3,1,2].
    let b = B::new(&[3, 2, 4, 4, 2, 3, 1, 2])
        .seq("reward", "f32", &[1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
        .seq("group", "i64", &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
        .seq("truncated", "u8", &[0.0; 8]);
    let adv = per_seq(&run("dler", &b).advantages.expect("adv"), b.t);
    assert_all(
        &adv,
        &[
            1.185999, 1.185999, -0.889499, -0.889499, 1.704873, -0.370625, -0.370625, -0.370625,
        ],
        1e-5,
    );
    // Truncated with score 1: 0.1 (code) or 0 (paper).
    let b = B::new(&[1, 1])
        .seq("reward", "f32", &[1.0, 1.0])
        .seq("truncated", "u8", &[1.0, 0.0]);
    assert_all(&rewards("dler", &b), &[0.1, 1.0], 1e-12);
    let src = "import std/dler\nrecipe r extends dler_paper { credit = none\n credit { value = reward } }\n";
    assert_all(
        &per_seq(&loss_str(src, &b.b).advantages.expect("adv"), b.t),
        &[0.0, 1.0],
        1e-12,
    );
}

#[test]
fn grpo_lambda_worked_example() {
    // 5 groups with acc [1, .75, .5, .25, 0]; lambda 0.2 -> only group 1 is
    // efficiency-prioritised; alpha 0.2, lengths [100, 200, 300, 400].
    let correct = [
        1., 1., 1., 1., 1., 1., 1., 0., 1., 1., 0., 0., 1., 0., 0., 0., 0., 0., 0., 0.,
    ];
    let groups: Vec<f64> = (0..20).map(|i| (i / 4) as f64).collect();
    let lengths: Vec<f64> = (0..20).map(|i| 100.0 * ((i % 4) + 1) as f64).collect();
    let b = B::new(&[1; 20])
        .seq("correct", "u8", &correct)
        .seq("group", "i64", &groups)
        .seq("length", "i64", &lengths);
    let r = rewards("grpo_lambda", &b);
    assert_all(&r[..4], &[0.958552, 0.921995, 0.878005, 0.841448], 1e-6);
    assert_all(&r[4..8], &[1.0, 1.0, 1.0, 0.0], 1e-12);
    let adv = per_seq(&run("grpo_lambda", &b).advantages.expect("adv"), b.t);
    assert_all(&adv[..4], &[1.146495, 0.430686, -0.430686, -1.146495], 1e-5);
    // A top group with c = [1,1,0,0], L = [100,300,250,500] -> [0.946212, 0.853788, 0, 0].
    let mut c2 = correct;
    c2[..4].copy_from_slice(&[1., 1., 0., 0.]);
    let mut l2 = lengths.clone();
    l2[..4].copy_from_slice(&[100., 300., 250., 500.]);
    let c3: Vec<f64> = c2.to_vec();
    let b = B::new(&[1; 20])
        .seq("correct", "u8", &c3)
        .seq("group", "i64", &groups)
        .seq("length", "i64", &l2);
    // acc is now 0.5 for group 1 and 0.75 for group 2: group 2 is on top.
    let r = rewards("grpo_lambda", &b);
    assert_all(&r[..4], &[1.0, 1.0, 0.0, 0.0], 1e-12);
    let mut c4 = c3.clone();
    c4[4..8].copy_from_slice(&[0., 0., 0., 0.]);
    c4[8..12].copy_from_slice(&[0., 0., 0., 0.]);
    let b = B::new(&[1; 20])
        .seq("correct", "u8", &c4)
        .seq("group", "i64", &groups)
        .seq("length", "i64", &l2);
    let r = rewards("grpo_lambda", &b);
    assert_all(&r[..4], &[0.946212, 0.853788, 0.0, 0.0], 1e-6);
    // The top group's correct responses all of one length (std 0): the
    // std is 1e-4, as for a single correct response, so each gets
    // 1 - alpha/2 = 0.9, not 0/0 (which made the loss NaN).
    let mut l5 = l2.clone();
    l5[..4].copy_from_slice(&[200., 200., 250., 500.]);
    let b = B::new(&[1; 20])
        .seq("correct", "u8", &c4)
        .seq("group", "i64", &groups)
        .seq("length", "i64", &l5);
    let r = rewards("grpo_lambda", &b);
    assert_all(&r[..4], &[0.9, 0.9, 0.0, 0.0], 1e-12);
    assert!(run("grpo_lambda", &b).loss.is_finite());
}

#[test]
fn hbpo_worked_example() {
    // Budgets 512, 512, 1024, 1024; (correct, n) = (1, 400), (1, 900), (1, 600), (0, 1500).
    let b = B::new(&[1; 4])
        .seq("budget", "f32", &[512.0, 512.0, 1024.0, 1024.0])
        .seq("correct", "u8", &[1.0, 1.0, 1.0, 0.0])
        .seq("length", "i64", &[400.0, 900.0, 600.0, 1500.0])
        .seq("format_ok", "u8", &[1.0; 4]);
    assert_all(
        &rewards("hbpo", &b),
        &[3.923141, 3.669377, 3.695517, 0.0],
        1e-6,
    );
    let code = per_seq(&run("hbpo", &b).advantages.expect("adv"), b.t);
    assert_all(&code, &[0.330457, 0.195819, -3.232065, -5.192771], 1e-5);
    let src = "import std/hbpo\nrecipe r extends hbpo_paper {}\n";
    let paper = per_seq(&loss_str(src, &b.b).advantages.expect("adv"), b.t);
    assert_all(&paper, &[0.457339, 0.322701, -1.384307, -3.345013], 1e-5);
    // A format error scores -1.
    let b = B::new(&[1])
        .seq("budget", "f32", &[512.0])
        .seq("correct", "u8", &[1.0])
        .seq("length", "i64", &[10.0])
        .seq("format_ok", "u8", &[0.0]);
    assert_all(&rewards("hbpo", &b), &[-1.0], 1e-12);
}

#[test]
fn evol_rl_worked_example() {
    // Answers A, A, A, B, C: majority A; raw novelty [0.175, 0.15, 0.325, 0.65, 0.75].
    let b = B::new(&[1; 5])
        .seq("correct", "u8", &[1.0, 1.0, 1.0, 0.0, 0.0])
        .seq("format_ok", "u8", &[1.0; 5])
        .seq("novelty", "f32", &[0.175, 0.15, 0.325, 0.65, 0.75]);
    assert_all(
        &rewards("evol_rl", &b),
        &[0.571429, 0.5, 1.0, -1.0, -0.5],
        1e-5,
    );
    let adv = per_seq(&run("evol_rl", &b).advantages.expect("adv"), b.t);
    assert_all(
        &adv,
        &[0.550213, 0.464242, 1.066037, -1.341143, -0.739348],
        1e-5,
    );
    // Equal novelty in a class: 0.75 / -0.75; a class of one: 1.0 / -0.5; invalid: -1.
    let b = B::new(&[1; 5])
        .seq("correct", "u8", &[1.0, 1.0, 0.0, 0.0, 1.0])
        .seq("format_ok", "u8", &[1.0, 1.0, 1.0, 1.0, 0.0])
        .seq("novelty", "f32", &[0.3, 0.3, 0.2, 0.2, 0.9]);
    assert_all(
        &rewards("evol_rl", &b),
        &[0.75, 0.75, -0.75, -0.75, -1.0],
        1e-9,
    );
    let b = B::new(&[1; 2])
        .seq("correct", "u8", &[1.0, 0.0])
        .seq("format_ok", "u8", &[1.0, 1.0])
        .seq("novelty", "f32", &[0.3, 0.2]);
    assert_all(&rewards("evol_rl", &b), &[1.0, -0.5], 1e-12);
}

#[test]
fn degrpo_rewards_and_decoupled_aggregation() {
    // Control token 0 = <short>, 1 = <think>.
    let b = B::new(&[3, 2, 4])
        .tok(
            "tokens",
            &[0.0, 5.0, 6.0, 0.0, 1.0, 7.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0],
        )
        .seq("correct", "u8", &[1.0, 0.0, 1.0]);
    let mut b = b;
    if let Some(t) = b.b.tensors.get_mut("tokens") {
        t.dtype = "i64".into();
    }
    assert_all(&rewards("degrpo", &b), &[1.0, -1.0, 0.5], 1e-12);
    // Loss with ratio 1 everywhere: l = -A; control tokens of 3 sequences,
    // response tokens 2 + 1 + 3 = 6. Dr.GRPO credit: r - mean = [5/6, -7/6, 2/6].
    let a = [5.0 / 6.0, -7.0 / 6.0, 2.0 / 6.0];
    let control = -(a[0] + a[1] + a[2]) / 3.0;
    let response = -(2.0 * a[0] + a[1] + 3.0 * a[2]) / 6.0;
    let want = 0.001 * control + response;
    let r = run("degrpo", &b);
    // The k3 KL is 0 here (logp = ref_logp).
    assert!(close(r.loss, want, 1e-9, 1e-12), "{} vs {want}", r.loss);
    // The control token's gradient is 1/1000 of a response token's scale.
    assert!(close(r.d_logp[0], 0.001 * -a[0] / 3.0, 1e-9, 1e-12));
    assert!(close(r.d_logp[1], -a[0] / 6.0, 1e-9, 1e-12));
}

#[test]
fn simpletir_masks_void_trajectories_but_keeps_them_in_group_statistics() {
    let b = B::new(&[2, 3, 1, 2])
        .seq("reward", "f32", &[1.0, 0.0, 1.0, 0.0])
        .seq("void", "u8", &[0.0, 1.0, 0.0, 0.0])
        .tok(
            "logp",
            &[
                -1.0, -1.2, 0.0, -0.8, -0.9, -1.1, -0.5, 0.0, 0.0, -0.7, -1.3, 0.0,
            ],
        );
    let tir = run("simpletir", &b);
    let adv = tir.advantages.expect("adv");
    // GRPO over all four responses, void included: mean 0.5, std 0.57735.
    let z = 0.5 / (0.5773502691896258 + 1e-6);
    assert_all(&per_seq(&adv, b.t), &[z, -z, z, -z], 1e-9);
    // The void trajectory's 3 tokens leave the token mean (5 tokens remain)
    // and get no gradient.
    assert!(
        tir.d_logp[3..6].iter().all(|g| *g == 0.0),
        "{:?}",
        tir.d_logp
    );
    assert!(
        close(tir.d_logp[0], -z / 5.0, 1e-9, 1e-12),
        "{:?}",
        tir.d_logp
    );
}

#[test]
fn rover_worked_example() {
    // logp [-1, -0.5, -2], old [-1.2, -0.5, -1.5]; u_theta [-10, -9, -11],
    // u_old [-10.5, -9, -10]; r~ = 0.5 -> loss 0.446667,
    // d/dlogp = [-0.2, 0.333333, -0.666667].
    let b = B::new(&[3])
        .tok("logp", &[-1.0, -0.5, -2.0])
        .tok("old_logp", &[-1.2, -0.5, -1.5])
        .tok("mean_logp", &[-10.0, -9.0, -11.0])
        .tok("old_mean_logp", &[-10.5, -9.0, -10.0])
        .tok("advantages", &[0.5, 0.5, 0.5]);
    let r = run("rover", &b);
    assert!(close(r.loss, 0.446667, 1e-5, 0.0), "{}", r.loss);
    assert_all(&r.d_logp, &[-0.2, 1.0 / 3.0, -2.0 / 3.0], 1e-6);
}

#[test]
fn aepo_worked_example() {
    // H = [0.2, 1.0, 3.0, 0.5], A = 1: A~ = [0.845314, 0.972236, 1.28954, 0.89291].
    // With ratio 1 the token loss is -A~ and d/dlogp = -A~/4 (token mean).
    let b = B::new(&[4])
        .tok("entropy", &[0.2, 1.0, 3.0, 0.5])
        .tok("advantages", &[1.0; 4]);
    let r = run("aepo", &b);
    let want: Vec<f64> = [0.845314, 0.972236, 1.28954, 0.89291]
        .iter()
        .map(|a| -a / 4.0)
        .collect();
    assert_all(&r.d_logp, &want, 1e-5);
    // Gradient coefficient on -A~·grad log pi (one token, H irrelevant):
    // (A = 1, ratio 1.5) -> 1.28; (A = -1, ratio 0.5) -> 0; (A = 1, ratio 1.1) -> 1.1.
    for (a, ratio, coef) in [(1.0f64, 1.5f64, 1.28), (-1.0, 0.5, 0.0), (1.0, 1.1, 1.1)] {
        // ref_logp = logp: the KL term adds no gradient.
        let b = B::new(&[1])
            .tok("logp", &[ratio.ln()])
            .tok("ref_logp", &[ratio.ln()])
            .tok("old_logp", &[0.0])
            .tok("entropy", &[1.0])
            .tok("advantages", &[a]);
        let r = run("aepo", &b);
        assert!(
            close(r.d_logp[0], -a * coef, 1e-9, 1e-12),
            "A={a} ratio={ratio}: {}",
            r.d_logp[0]
        );
    }
}

/// A golden batch plus every other input a stdlib method may read, random
/// but reproducible.
fn rich_batch() -> Batch {
    let mut b = keel_tests::golden_batch("grpo__real");
    let (n, t) = (16usize, 24usize);
    let mut s: u64 = 42;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let bits: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rnd() < 0.5))).collect();
    b.insert("correct", "u8", vec![n], bits);
    b.insert(
        "format_ok",
        "u8",
        vec![n],
        (0..n).map(|i| f64::from(u8::from(i % 5 != 0))).collect(),
    );
    b.insert(
        "truncated",
        "u8",
        vec![n],
        (0..n).map(|i| f64::from(u8::from(i % 7 == 0))).collect(),
    );
    b.insert(
        "void",
        "u8",
        vec![n],
        (0..n).map(|i| f64::from(u8::from(i % 6 == 1))).collect(),
    );
    b.insert(
        "judge",
        "f32",
        vec![n],
        (0..n).map(|_| rnd() * 2.0 - 1.0).collect(),
    );
    b.insert("novelty", "f32", vec![n], (0..n).map(|_| rnd()).collect());
    b.insert(
        "budget",
        "f32",
        vec![n],
        (0..n)
            .map(|i| [512.0, 1024.0, 2048.0, 2560.0][i % 4])
            .collect(),
    );
    b.insert(
        "source",
        "i64",
        vec![n],
        (0..n).map(|i| (i % 3 == 0) as u8 as f64).collect(),
    );
    b.insert(
        "tokens",
        "i64",
        vec![n, t],
        (0..n * t).map(|i| (i % 5) as f64).collect(),
    );
    b.insert(
        "mean_logp",
        "f32",
        vec![n, t],
        (0..n * t).map(|_| -4.0 - rnd()).collect(),
    );
    b.insert(
        "old_mean_logp",
        "f32",
        vec![n, t],
        (0..n * t).map(|_| -4.0 - rnd()).collect(),
    );
    let ends: Vec<f64> = (0..n * t)
        .map(|i| f64::from(u8::from(i % 5 == 4)))
        .collect();
    let step_reward: Vec<f64> = ends
        .iter()
        .map(|e| if *e > 0.0 { rnd() * 2.0 - 1.0 } else { 0.0 })
        .collect();
    b.insert("step_reward", "f32", vec![n, t], step_reward);
    b.insert("step_end", "u8", vec![n, t], ends);
    let bundles: Vec<f64> = b
        .tensors
        .get("group")
        .map(|g| g.data.iter().map(|x| (x / 2.0).floor()).collect())
        .unwrap_or_default();
    b.insert("bundle", "i64", vec![n], bundles);
    b
}

/// The rich batch with logits (V = 8) and teacher logits instead of given
/// log-probs, for recipes that read the full distribution.
fn rich_logits_batch() -> Batch {
    let mut b = rich_batch();
    let (n, t, v) = (16usize, 24usize, 8usize);
    let mut s: u64 = 7;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64) / ((1u64 << 53) as f64)
    };
    b.insert(
        "logits",
        "f32",
        vec![n, t, v],
        (0..n * t * v).map(|_| rnd() * 3.0 - 1.5).collect(),
    );
    for name in ["teacher_logits", "old_logits"] {
        b.insert(
            name,
            "f32",
            vec![n, t, v],
            (0..n * t * v).map(|_| rnd() * 3.0 - 1.5).collect(),
        );
    }
    b
}

/// Every recipe in every stdlib file: `keel loss` runs on a batch from
/// `tests/`, and the derived gradient (d_logp, or d_logits for recipes that
/// read logits) matches central finite differences.
#[test]
fn every_stdlib_recipe_runs_and_its_gradient_matches_finite_differences() {
    let plain = rich_batch();
    let with_logits = rich_logits_batch();
    let mut n = 0;
    for (name, _) in keel_compiler::stdlib::FILES {
        let c = check_file(&preset_path(name), &[]);
        assert!(!c.has_errors(), "{name}");
        for r in &c.recipes {
            let reads_logits = ["logits", "teacher_logits", "old_logits"]
                .iter()
                .any(|k| r.inputs.contains_key(*k));
            let (b, wrt) = if reads_logits {
                (&with_logits, "logits")
            } else {
                (&plain, "logp")
            };
            let res = keel_tests::loss_of_recipe(&c, Some(&r.name), b);
            assert!(res.loss.is_finite(), "{}: {}", r.name, res.loss);
            let checked = keel_tests::fd_check(&c, Some(&r.name), b, wrt, 100);
            assert!(checked >= 30, "{}: only {checked} points", r.name);
            n += 1;
        }
    }
    assert!(n >= 24, "{n} recipes");
}

#[test]
fn dph_rl_worked_example() {
    // One rehearsal response (source 1): log pi_0 = [-0.5, -1, -2],
    // logp = [-0.7, -0.9, -2.5]; the RL term has no tokens.
    let b = B::new(&[3])
        .tok("old_logp", &[-0.5, -1.0, -2.0])
        .tok("logp", &[-0.7, -0.9, -2.5])
        .seq("source", "i64", &[1.0]);
    let run_named = |recipe: &str| {
        keel_tests::loss_of_recipe(&check_file(&preset_path("dph_rl"), &[]), Some(recipe), &b.b)
    };
    let f = run_named("dph_rl");
    assert!(close(f.loss, 0.01 * 0.043477, 1e-4, 0.0), "{}", f.loss);
    assert_all(&f.d_logp, &[-0.000604, 0.000351, -0.001312], 2e-3);
    let js = run_named("dph_rl_js");
    assert!(close(js.loss, 0.1 * 0.020118, 1e-4, 0.0), "{}", js.loss);
    let al = run_named("dph_rl_alpha");
    assert!(close(al.loss, 0.01 * 0.038740, 1e-4, 0.0), "{}", al.loss);
    let jr = run_named("dph_rl_js_ref");
    assert!(close(jr.loss, 0.1 * 0.009348, 1e-4, 0.0), "{}", jr.loss);
    // Gradients: d(js)/dl = u·log(2u/(u+1)), d(alpha)/dl = u·(u^-a - 1)/(-a), / 3 tokens.
    let u: Vec<f64> = [-0.2f64, 0.1, -0.5].iter().map(|d| d.exp()).collect();
    let want: Vec<f64> = u
        .iter()
        .map(|u| 0.1 * u * (2.0 * u / (u + 1.0)).ln() / 3.0)
        .collect();
    assert_all(&js.d_logp, &want, 1e-9);
    let want: Vec<f64> = u
        .iter()
        .map(|u| 0.01 * u * (u.powf(-0.2) - 1.0) / -0.2 / 3.0)
        .collect();
    assert_all(&al.d_logp, &want, 1e-9);
    // RL samples ignore the divergence; rehearsal samples ignore the policy
    // gradient: adding an RL response (credit 1/(1 + 1e-6), its own group)
    // adds exactly its clipped loss, token-mean over its 3 tokens.
    let b2 = B::new(&[3, 3])
        .tok("old_logp", &[-0.5, -1.0, -2.0, -0.5, -1.0, -2.0])
        .tok("logp", &[-0.7, -0.9, -2.5, -0.7, -0.9, -2.5])
        .seq("source", "i64", &[1.0, 0.0])
        .seq("reward", "f32", &[0.0, 1.0])
        .seq("group", "i64", &[0.0, 1.0]);
    let mixed = keel_tests::loss_of(&check_file(&preset_path("dph_rl"), &[]), &b2.b);
    let a = 1.0 / (1.0 + 1e-6);
    let pg: f64 = u
        .iter()
        .map(|r| (-a * r).max(-a * r.clamp(0.8, 1.28)))
        .sum::<f64>()
        / 3.0;
    assert!(
        close(mixed.loss, f.loss + pg, 1e-9, 1e-12),
        "{} vs {}",
        mixed.loss,
        f.loss + pg
    );
    assert_all(&mixed.d_logp[..3], &f.d_logp, 1e-12);
}

#[test]
fn steer_worked_example() {
    // A = [1, 1, -1, -1], pi_old = [0.9, 0.2, 0.5, 0.05], pi_theta = [0.92, 0.25, 0.45, 0.04],
    // H = [0.4, 2, 1, 3] -> Omega = [0.025892, 0.575349, 0.099739, 0.168097];
    // linear w = [1.2, 0.8, 1.146240, 1.096476]; exp w = [0.990008, 0.8, 0.962056, 0.936885].
    let pt = [0.92f64, 0.25, 0.45, 0.04];
    let po = [0.9f64, 0.2, 0.5, 0.05];
    let a = [1.0, 1.0, -1.0, -1.0];
    let b = B::new(&[1; 4])
        .tok("logp", &pt.map(f64::ln))
        .tok("old_logp", &po.map(f64::ln))
        .tok("entropy", &[0.4, 2.0, 1.0, 3.0])
        .tok("advantages", &a);
    // The dual-clip PPO token losses (clip 0.2 / 0.28, c = 10): all ratios inside.
    let ppo: Vec<f64> = (0..4).map(|i| -a[i] * pt[i] / po[i]).collect();
    for (recipe, w) in [
        ("steer", [1.2, 0.8, 1.146240, 1.096476]),
        ("steer_exp", [0.990008, 0.8, 0.962056, 0.936885]),
    ] {
        let r =
            keel_tests::loss_of_recipe(&check_file(&preset_path("steer"), &[]), Some(recipe), &b.b);
        let want: f64 = (0..4).map(|i| ppo[i] * w[i]).sum::<f64>() / 4.0;
        assert!(
            close(r.loss, want, 1e-5, 1e-9),
            "{recipe}: {} vs {want}",
            r.loss
        );
        // The weights are detached multipliers of each token's gradient.
        for i in 0..4 {
            assert!(
                close(r.d_logp[i], -a[i] * pt[i] / po[i] * w[i] / 4.0, 1e-5, 1e-9),
                "{recipe} token {i}"
            );
        }
    }
}

#[test]
fn z_loss_worked_example() {
    // y = [2, 1, 0]: log Z = 2.407606, L_z = 0.000580, gradient [0.000320, 0.000118, 0.000043].
    let mut b = B::new(&[1]).tok("advantages", &[0.0]);
    b.b.insert("logits", "f32", vec![1, 1, 3], vec![2.0, 1.0, 0.0]);
    b.b.insert("tokens", "i64", vec![1, 1], vec![0.0]);
    b.b.insert(
        "ref_logp",
        "f32",
        vec![1, 1],
        vec![2.0 - 2.4076059644443806],
    );
    let r = run("z_loss", &b);
    assert!(close(r.loss, 0.000580, 2e-3, 0.0), "{}", r.loss);
    assert!(close(
        r.loss,
        1e-4 * 2.4076059644443806f64.powi(2),
        1e-6,
        0.0
    ));
    assert_all(
        &r.d_logits.expect("d_logits").to_f64(),
        &[0.000320, 0.000118, 0.000043],
        1e-2,
    );
}

/// One position over a 4-token vocabulary: student logits
/// [1.5, 1.2, 0.3, -0.5], teacher logits [2, 1, 0.5, -1], sampled `token`.
fn distill_batch(token: u8) -> B {
    let mut b = B::new(&[1]);
    b.b.insert("logits", "f32", vec![1, 1, 4], vec![1.5, 1.2, 0.3, -0.5]);
    b.b.insert(
        "teacher_logits",
        "f32",
        vec![1, 1, 4],
        vec![2.0, 1.0, 0.5, -1.0],
    );
    b.b.insert("tokens", "i64", vec![1, 1], vec![f64::from(token)]);
    b
}

#[test]
fn bd_kd_worked_example() {
    // teacher [2, 1, 0.5, -1], student [1.5, 1.2, 0.3, -0.5], tau 1, (w_lo, w_hi) = (1, 2):
    // the student is less confident, so KL(t||s) + 2·KL(s||t) = 0.172634.
    let b = distill_batch(0);
    let r = run("bd_kd", &b);
    let zs = [1.5f64, 1.2, 0.3, -0.5];
    let lse = zs.iter().map(|z| z.exp()).sum::<f64>().ln();
    let ce = lse - zs[0];
    assert!(close(r.loss - ce, 0.172634, 1e-5, 0.0), "{}", r.loss - ce);
}

#[test]
fn siren_worked_examples() {
    // One position with p = [0.5, 0.25, 0.15, 0.10], p_top 0.8: keep 2 tokens,
    // q = [2/3, 1/3] -> H_topp = 0.636514.
    let mut b = B::new(&[1]).tok("advantages", &[0.0]);
    b.b.insert(
        "logits",
        "f32",
        vec![1, 1, 4],
        [0.5f64, 0.25, 0.15, 0.10].map(f64::ln).to_vec(),
    );
    b.b.insert("tokens", "i64", vec![1, 1], vec![0.0]);
    let src = "import std/siren\nrecipe r extends siren { monitor { h = mean(entropy.h_topp) over batch } }";
    let r = loss_str(src, &b.b);
    let h = r
        .metrics
        .iter()
        .find(|(k, _)| k == "h")
        .map(|(_, v)| *v)
        .expect("metric h");
    assert!(close(h, 0.636514, 1e-6, 0.0), "{h}");
    // H_topp over 5 tokens [0.1, 0.5, 0.9, 1.3, 2.0]: the 0.8-quantile is 1.44,
    // only 2.0 is selected: H_sel = 2; anchor 1.5; beta 0.005 -> 0.00125.
    let b = B::new(&[5])
        .tok("entropy", &[0.1, 0.5, 0.9, 1.3, 2.0])
        .tok("advantages", &[0.0; 5]);
    let src = "import std/siren\nrecipe r extends siren { entropy.h_topp = entropy\n state { anchor = 1.5 } }";
    let r = loss_str(src, &b.b);
    assert!(close(r.loss, 0.00125, 1e-6, 0.0), "{}", r.loss);
}

#[test]
fn pld_worked_example() {
    // teacher [2, 1, 0.5, -1], label 1, student [1.5, 1.2, 0.3, -0.5]:
    // pi* = [1, 0, 2, 3], L = 0.512950 (CE alone 1.078107).
    let b = distill_batch(1);
    let r = run("pld", &b);
    assert!(close(r.loss, 0.512950, 1e-5, 0.0), "{}", r.loss);
}

#[test]
fn cumsum_by_gradient_matches_finite_differences() {
    // A differentiable sorted running sum, checked on its own.
    let src = "recipe r { objective.loss = sum(cumsum_by(exp(logits), old_logp * 0 + logits) over vocab * vocab_index) over vocab }";
    let mut b = B::new(&[2, 1]);
    b.b.insert(
        "logits",
        "f32",
        vec![2, 2, 5],
        (0..20).map(|i| ((i * 7 % 11) as f64) / 5.0 - 1.0).collect(),
    );
    b.b.insert("tokens", "i64", vec![2, 2], vec![0.0, 1.0, 2.0, 3.0]);
    let c = keel_tests::check_str(src);
    assert!(keel_tests::fd_check(&c, None, &b.b, "logits", 20) >= 10);
    // The reverse running sum, and a gradient through it.
    let src = "recipe r { objective.loss = sum(rcumsum_by(exp(logits), old_logp * 0 + logits) over vocab * vocab_index) over vocab }";
    let c = keel_tests::check_str(src);
    assert!(keel_tests::fd_check(&c, None, &b.b, "logits", 20) >= 10);
}

/// `rcumsum_by` is the suffix sum in `cumsum_by`'s order, ties included:
/// keys [0.5, 0.9, 0.5, 0.1] order the members 1, 0, 2, 3.
#[test]
fn rcumsum_by_worked_example() {
    let b = B::new(&[4])
        .tok("logp", &[1.0, 2.0, 3.0, 4.0])
        .tok("old_logp", &[0.5, 0.9, 0.5, 0.1]);
    let fwd = keel_tests::loss_str(
        "recipe r { monitor { c0 = sum(where(position == 0, cumsum_by(logp, old_logp) over seq, 0)) over batch }\n objective.loss = rcumsum_by(logp, old_logp) over seq * (position + 1) }",
        &b.b,
    );
    // rcumsum = [8, 10, 7, 4]; token_mean of rcumsum·(position+1) = (8 + 20 + 21 + 16) / 4.
    assert!(close(fwd.loss, 65.0 / 4.0, 1e-12, 0.0), "{}", fwd.loss);
    assert!(close(metric(&fwd, "c0"), 3.0, 1e-12, 0.0));
    // d/dx_u = (1/4) · sum of (position+1) over members ranked at or before u:
    // order 1, 0, 2, 3 with weights 2, 1, 3, 4 → [3, 2, 6, 10] / 4.
    assert_all(&fwd.d_logp, &[0.75, 0.5, 1.5, 2.5], 1e-12);
}

fn metric(r: &keel_compiler::LossResult, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN)
}

#[test]
fn epo_worked_examples() {
    // Phase weight over epochs (E = 150): 0 -> 1, 30 -> 0.889866, 75 -> 0.827067,
    // 100 -> 0.294304, 150 -> 0.039830.
    let src = "import std/epo\nrecipe r extends epo { monitor { w = entropy.phase } }";
    for (e, want) in [
        (0.0, 1.0),
        (30.0, 0.889866),
        (75.0, 0.827067),
        (100.0, 0.294304),
        (150.0, 0.039830),
    ] {
        let mut b = B::new(&[1]).tok("advantages", &[0.0]);
        b.b.insert("epoch", "i64", vec![], vec![e]);
        let r = loss_str(src, &b.b);
        assert!(
            close(metric(&r, "w"), want, 1e-5, 0.0),
            "epoch {e}: {}",
            metric(&r, "w")
        );
    }
    // Hbar = 1, range (0, 2), penalty 0.05, H = [0.3, 1.0, 2.5] -> P = [0, 0, 0.05].
    let src = "import std/epo\nrecipe r extends epo {\n state { entropy_sum = 1.0, iterations = 1 }\n entropy { min_ratio = 0, max_ratio = 2.0, out_range_penalty = 0.05 }\n monitor { p = sum(entropy.penalty) over batch\n at = sum(entropy.penalty * position) over batch } }";
    let mut b = B::new(&[3])
        .tok("entropy", &[0.3, 1.0, 2.5])
        .tok("advantages", &[0.0; 3]);
    b.b.insert("epoch", "i64", vec![], vec![0.0]);
    let r = loss_str(src, &b.b);
    assert!(
        close(metric(&r, "p"), 0.05, 1e-12, 0.0) && close(metric(&r, "at"), 0.1, 1e-12, 0.0),
        "{:?}",
        r.metrics
    );
}

#[test]
fn curriculum_presets_schedule_as_the_sheet_says() {
    // ScalingInter-RL, K = 100, [10, 20, 30]: steps 1, 100 -> 10; 101, 200 -> 20; 201, 500 -> 30.
    let src = "import std/scaling_inter_rl\nrecipe r extends scaling_inter_rl { monitor { turns = rollout.max_turns } }";
    for (step, want) in [
        (1.0, 10.0),
        (100.0, 10.0),
        (101.0, 20.0),
        (200.0, 20.0),
        (201.0, 30.0),
        (500.0, 30.0),
    ] {
        let mut b = B::new(&[1]);
        b.b.insert("step", "i64", vec![], vec![step]);
        let r = loss_str(src, &b.b);
        assert_eq!(metric(&r, "turns"), want, "step {step}");
    }
    // CURE: branching (4 responses, 3 continuations each) in the first 300 steps only.
    let src = "import std/cure\nrecipe r extends cure { monitor { first = rollout.branch_first } }";
    for (step, want) in [(1.0, 4.0), (300.0, 4.0), (301.0, 0.0)] {
        let mut b = B::new(&[1]);
        b.b.insert("step", "i64", vec![], vec![step]);
        b.b.insert("length", "i64", vec![1], vec![1.0]);
        let r = loss_str(src, &b.b);
        assert_eq!(metric(&r, "first"), want, "step {step}");
    }
    // CRAFT-GUI: difficulty thresholds by stage.
    let src = "import std/craft_gui\nrecipe r extends craft_gui { monitor { d = curriculum.max_difficulty } }";
    for (step, want) in [(1.0, 0.3), (150.0, 0.6), (1000.0, 1.0)] {
        let mut b = B::new(&[1]).seq("judge", "f32", &[0.5]);
        b.b.insert("step", "i64", vec![], vec![step]);
        let r = loss_str(src, &b.b);
        assert!(close(metric(&r, "d"), want, 1e-12, 0.0), "step {step}");
    }
    // All of them show their schedules in `keel explain`.
    for p in ["cure", "scaling_inter_rl", "craft_gui", "epo", "dapo"] {
        let text = std::fs::read_to_string(preset_path(p)).unwrap_or_default();
        let c = keel_compiler::check_source(
            &keel_compiler::NoFiles,
            &format!("stdlib/{p}.recipe"),
            &text,
        );
        let shown = keel_compiler::explain::explain_recipe(&c, c.main_recipe(Some(p)).expect(p));
        assert!(
            shown.contains("schedules") || shown.contains("rollout.dynamic_sampling"),
            "{p}:\n{shown}"
        );
    }
}

#[test]
fn lp_reg_worked_example() {
    // Old policy [0.6, 0.25, 0.1, 0.04, 0.01], kappa 0.02: the last token is
    // filtered, proxy [0.606061, 0.252525, 0.101010, 0.040404, 0]. Sampled
    // token 3: pi_old 0.04, pi_theta 0.03, A = -1 -> ratio 0.75; the token is
    // protected: KL3 = 0.049069, token loss -A r + KL3 = 0.799069,
    // d(beta·KL3)/dlogp = 1 - 0.040404/0.03 = -0.346801.
    // Two such negative tokens with rho = 1 make k = 2 > 1, so both qualify.
    let old = [0.6f64, 0.25, 0.1, 0.04, 0.01].map(f64::ln);
    let mut b = B::new(&[2])
        .tok("logp", &[0.03f64.ln(); 2])
        .tok("old_logp", &[0.04f64.ln(); 2])
        .tok("advantages", &[-1.0; 2]);
    b.b.insert("old_logits", "f32", vec![1, 2, 5], [old, old].concat());
    b.b.insert("tokens", "i64", vec![1, 2], vec![3.0, 3.0]);
    let c = check_file(&preset_path("lp_reg"), &[("objective.neg_rho", "1")]);
    let r = loss_of(&c, &b.b);
    assert!(close(r.loss, 0.799069, 1e-5, 0.0), "{}", r.loss);
    // d/dlogp of (-A r + KL3), token mean over 2: (0.75 - 0.346801) / 2.
    assert!(
        close(r.d_logp[0], (0.75 - 0.346801) / 2.0, 1e-5, 0.0),
        "{:?}",
        r.d_logp
    );
    // With the default rho (1%), k = 1 and nothing is protected: the clipped loss.
    let r = run("lp_reg", &b);
    assert!(close(r.loss, 0.75, 1e-6, 0.0), "{}", r.loss);
}

#[test]
fn pure_worked_example() {
    // T = 0.1, n = 2, no KL, coefficient 1, token baseline.
    // A: 10 tokens, step ends 3, 6, 9, PR [0.8, -0.2, 0.6], solved;
    // B: 7 tokens, step ends 2, 6, PR [0.5, 0.9], not solved.
    let mut sr = vec![0.0; 20];
    let mut ends = vec![0.0; 20];
    for (t, pr) in [(3, 0.8), (6, -0.2), (9, 0.6)] {
        sr[t] = pr;
        ends[t] = 1.0;
    }
    for (t, pr) in [(2, 0.5), (6, 0.9)] {
        sr[10 + t] = pr;
        ends[10 + t] = 1.0;
    }
    let mut b = B::new(&[10, 7])
        .tok("step_reward", &sr)
        .seq("correct", "u8", &[1.0, 0.0]);
    b.b.insert("step_end", "u8", vec![2, 10], ends);
    // Pre-whitening advantages: the returns, zeroed at step ends.
    let src = "import std/pure\nrecipe r extends pure { credit.value = returns }";
    let adv = loss_str(src, &b.b).advantages.expect("adv");
    let a = [
        0.293119, 0.293119, 0.293119, 0.0, 0.510452, 0.510452, 0.0, 0.855288, 0.855288, 0.0,
    ];
    let bb = [
        -0.392962, -0.392962, 0.0, -0.923907, -0.923907, -0.923907, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_all(&adv[..10], &a, 1e-5);
    assert_all(&adv[10..], &bb, 1e-5);
    // The whitened credit is 0 at step ends and has mean 0 over the rest.
    let r = run("pure", &b);
    let adv = r.advantages.expect("adv");
    // Valid tokens are 0..10 (A) and 10..17 (B); step ends 3, 6, 9, 12, 16.
    let inside: Vec<f64> = (0..17)
        .filter(|i| ![3, 6, 9, 12, 16].contains(i))
        .map(|i| adv[i])
        .collect();
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    assert!(mean.abs() < 1e-9, "{mean}");
    assert!([3, 6, 9, 12, 16].iter().all(|i| adv[*i] == 0.0));
}

#[test]
fn bapo_worked_examples() {
    let r = [1.5f64, 0.5, 1.1, 0.7, 0.95, 1.3];
    let src = "import std/bapo\nrecipe r extends bapo { monitor { lo = objective.c_low\n hi = objective.c_high } }";
    let batch = |a: &[f64]| {
        B::new(&[1; 6])
            .tok("logp", &r.map(f64::ln))
            .tok("old_logp", &[0.0; 6])
            .tok("advantages", a)
    };
    // Ex. 1: pos/neg = 1.044444 >= 1, no search: bounds (0.6, 1.2), token mean -0.016667.
    let res = loss_str(src, &batch(&[1.0, -1.0, 0.5, -1.0, -1.0, 0.5]).b);
    assert!(
        close(metric(&res, "lo"), 0.6, 1e-12, 0.0) && close(metric(&res, "hi"), 1.2, 1e-12, 0.0),
        "{:?}",
        res.metrics
    );
    assert!(close(res.loss, -0.016667, 1e-4, 0.0), "{}", res.loss);
    // Ex. 2: the lower bound saturates at 0.8, the upper at 2.0;
    // token losses [-1.5, 0.8, -0.55, 0.8, 0.95, -0.39], mean 0.018333.
    let res = loss_str(src, &batch(&[1.0, -1.0, 0.5, -1.0, -1.0, 0.3]).b);
    assert!(
        close(metric(&res, "lo"), 0.8, 1e-12, 0.0) && close(metric(&res, "hi"), 2.0, 1e-12, 0.0),
        "{:?}",
        res.metrics
    );
    assert!(close(res.loss, 0.018333, 1e-4, 0.0), "{}", res.loss);
    // The search is deterministic: the same batch, the same bounds.
    let again = loss_str(src, &batch(&[1.0, -1.0, 0.5, -1.0, -1.0, 0.3]).b);
    assert_eq!(again.loss, res.loss);
}

#[test]
fn riskpo_worked_example() {
    // One bundle, 2 questions, 3 responses each: Q1 [1, 0, 1], Q2 [0, 0, 1]
    // -> papers X = [1, 0, 2], qd 0.4, qu 1.8, mean 1, sd 1;
    // advantages: paper 0 -> -0.791791, paper 1 -> -3.46408, paper 2 -> 0.
    let b = B::new(&[1; 6])
        .seq("reward", "f32", &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
        .seq("group", "i64", &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
        .seq("bundle", "i64", &[0.0; 6]);
    let adv = per_seq(&run("riskpo", &b).advantages.expect("adv"), b.t);
    assert_all(
        &adv,
        &[-0.791791, -3.46408, 0.0, -0.791791, -3.46408, 0.0],
        1e-5,
    );
    // Bundles are independent: a second bundle with other scores does not
    // change the first one's advantages.
    let b2 = B::new(&[1; 12])
        .seq(
            "reward",
            "f32",
            &[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
        )
        .seq(
            "group",
            "i64",
            &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0],
        )
        .seq(
            "bundle",
            "i64",
            &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        );
    let adv2 = per_seq(&run("riskpo", &b2).advantages.expect("adv"), b2.t);
    assert_all(&adv2[..6], &adv, 1e-12);
}

#[test]
fn keyed_reductions() {
    // sum_by / min_by / max_by / quantile_by group by any key, with members.
    let b = B::new(&[1; 5])
        .seq("reward", "f32", &[1.0, 2.0, 3.0, 4.0, 5.0])
        .seq("budget", "f32", &[1.0, 2.0, 1.0, 2.0, 1.0]);
    let src = "recipe r { credit = sum_by(reward, budget) + 10 * max_by(reward, budget, reward < 5) + 100 * quantile_by(reward, 0.5, budget)\n objective.loss = logp * credit }";
    let adv = per_seq(&loss_str(src, &b.b).advantages.expect("adv"), b.t);
    // key 1: members 1, 3, 5 (sum 9, max below 5: 3, median 3); key 2: 2, 4 (sum 6, max 4, median 3).
    assert_all(
        &adv,
        &[9.0 + 30.0 + 300.0, 6.0 + 40.0 + 300.0, 339.0, 346.0, 339.0],
        1e-12,
    );
}

/// Writes `tests/golden/all_inputs*.safetensors` (the batches `keel loss`
/// runs every stdlib recipe on in cli/tests/cli.rs). Run with
/// `cargo test -p keel-tests --test methods -- --ignored write_batches`.
#[test]
#[ignore]
fn write_batches() {
    let dir = keel_tests::root().join("tests/golden");
    for (name, b) in [
        ("all_inputs", rich_batch()),
        ("all_inputs_logits", rich_logits_batch()),
    ] {
        let mut b = b;
        b.tensors.retain(|k, _| !k.starts_with("expect."));
        let bytes = b.to_bytes().expect("serialise");
        std::fs::write(dir.join(format!("{name}.safetensors")), bytes).expect("write");
    }
}
