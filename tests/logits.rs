//! The fused logits kernel against the interpreter: a recipe's loss computed
//! from logits by the interpreter, and the same loss computed from the
//! kernel's `logp`/`entropy` with `d_logp`/`d_entropy` carried back to the
//! logits by the kernel, agree (f32 kernel vs f64 interpreter).

use keel_compiler::logits;
use keel_compiler::synth::{self, Dims};
use keel_tests::check_str;

const RECIPES: &[&str] = &[
    // GRPO with an entropy bonus (the quickstart's loss).
    "import std/grpo\nrecipe a extends grpo {\n    entropy { coef = 0.01, value = -entropy }\n}\n",
    // An entropy-weighted advantage (gradient through entropy into the objective).
    "import std/grpo\nrecipe b extends grpo {\n    objective.loss = -exp(logp - old_logp) * credit * (1 + 0.5 * entropy)\n}\n",
    "import std/dapo\nrecipe c extends dapo {}\n",
];

#[test]
fn kernel_path_equals_the_interpreter_on_logits() {
    for (k, src) in RECIPES.iter().enumerate() {
        let checked = check_str(src);
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let idx = checked.recipes.len() - 1;
        let recipe = &checked.recipes[idx];
        let (b, t, v) = (16, 24, 50);
        let mut batch = synth::batch(recipe, Dims { b, t, v, group: 8 }, 7 + k as u64);
        assert!(batch.has("logits"), "recipe {k} should read entropy");
        // Path A: the interpreter differentiates through the logits.
        let a = keel_compiler::run_loss(&checked, idx, &batch, "a").expect("interpreter");
        let d_a = a.d_logits.clone().expect("d_logits").to_f64();
        // Path B: the kernel computes logp and entropy; the program sees them as
        // given inputs and returns d_logp and d_entropy; the kernel carries them back.
        let z: Vec<f32> = batch.tensors["logits"]
            .data
            .iter()
            .map(|x| x as f32)
            .collect();
        let tokens: Vec<u32> = batch.tensors["tokens"]
            .data
            .iter()
            .map(|x| x as u32)
            .collect();
        let f = logits::forward(&z, &tokens, v);
        batch.tensors.remove("logits");
        batch.tensors.remove("tokens");
        batch.insert(
            "logp",
            "f32",
            vec![b, t],
            f.logp.iter().map(|&x| x as f64).collect(),
        );
        batch.insert(
            "entropy",
            "f32",
            vec![b, t],
            f.entropy.iter().map(|&x| x as f64).collect(),
        );
        let have = |n: &str| batch.has(n);
        let compiled = keel_compiler::compile_loss_kernel(&checked, idx, &have).expect("compiles");
        assert!(compiled.graph.output("d_entropy").is_some());
        let prepared =
            keel_compiler::batch::prepare(&batch, "b", &compiled.graph, recipe).expect("prepare");
        let inputs = prepared.inputs_f64();
        let env = keel_compiler::interp::Env {
            shape: prepared.shape.clone(),
            mask: &prepared.mask,
            inputs: &inputs,
        };
        let vals = keel_compiler::interp::run(&compiled.graph, &env).expect("runs");
        let out = |n: &str| vals[compiled.graph.output(n).expect("output")].clone();
        let d_ent = out("d_entropy");
        let bres_loss = out("loss")[0];
        let bres_d_logp = out("d_logp");
        let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-3);
        assert!(
            rel(bres_loss, a.loss) < 1e-5,
            "recipe {k}: loss {} vs {}",
            bres_loss,
            a.loss
        );
        let dl: Vec<f32> = bres_d_logp.iter().map(|&x| x as f32).collect();
        let de: Vec<f32> = d_ent.iter().map(|&x| x as f32).collect();
        let mut d_b = vec![0.0f32; b * t * v];
        logits::backward(&z, &tokens, v, &f, &dl, &de, &mut d_b);
        let scale = d_a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        for (i, (&x, &y)) in d_b.iter().zip(&d_a).enumerate() {
            assert!(
                (x as f64 - y).abs() <= 1e-5 * scale,
                "recipe {k}, d_logits[{i}]: {x} vs {y} (scale {scale})"
            );
        }
    }
}
