//! The fused-kernel executor (`keel_compiler::kernel`, f32) against the f64
//! reference interpreter: for every stdlib recipe and randomized batches —
//! including all-equal groups, one-token sequences, fully masked rows and
//! extreme log-ratios — the loss, metrics, advantages and gradients agree
//! within 1e-5 relative (gradients: relative to their largest entry).

use keel_compiler::batch::Batch;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{Backend, LossResult, run_loss_with};
use keel_tests::{check_file, preset_path};

/// The batch variants every recipe runs on.
fn variants(recipe: &keel_compiler::CheckedRecipe, seed: u64) -> Vec<(String, Batch)> {
    let d = Dims {
        b: 16,
        t: 24,
        v: 8,
        group: 4,
    };
    synth::variants(recipe, d, seed)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Equal within `rel` of the reference vector's largest entry (1e-6 floor).
fn same_vec(what: &str, got: &[f64], want: &[f64], rel: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values vs {}", got.len(), want.len()));
    }
    let scale = max_abs(want).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rel * scale || (g.is_nan() && w.is_nan());
        if !ok {
            return Err(format!(
                "{what}[{i}]: kernel {g} vs interpreter {w} (scale {scale})"
            ));
        }
    }
    Ok(())
}

fn compare(k: &LossResult, i: &LossResult) -> Result<(), String> {
    same_vec("loss", &[k.loss], &[i.loss], 1e-5)?;
    // With logits in the batch, the kernel path's d_logp is the partial
    // derivative the logits kernel consumes; the gradient is d_logits.
    if i.d_logits.is_none() {
        same_vec("d_logp", &k.d_logp, &i.d_logp, 1e-5)?;
    }
    if let (Some(a), Some(b)) = (&k.advantages, &i.advantages) {
        same_vec("advantages", a, b, 1e-5)?;
    }
    if let (Some(a), Some(b)) = (&k.d_logits, &i.d_logits) {
        same_vec("d_logits", &a.to_f64(), &b.to_f64(), 1e-5)?;
    }
    for ((n, a), (_, b)) in k.metrics.iter().zip(&i.metrics) {
        same_vec(&format!("metric {n}"), &[*a], &[*b], 1e-5)?;
    }
    Ok(())
}

#[test]
fn kernel_executor_equals_the_interpreter_on_every_stdlib_recipe() {
    let mut checked_runs = 0;
    let mut with_logits = 0;
    let mut failures = Vec::new();
    for (file, _) in keel_compiler::stdlib::FILES {
        let c = check_file(&preset_path(file), &[]);
        assert!(!c.has_errors(), "{file}");
        for (idx, r) in c.recipes.iter().enumerate() {
            for seed in [1u64, 2] {
                for (what, batch) in variants(r, seed) {
                    let want = run_loss_with(&c, idx, &batch, "b", Backend::Interp);
                    for threads in [1, 3] {
                        let got = run_loss_with(&c, idx, &batch, "b", Backend::Kernel { threads });
                        match (&got, &want) {
                            (Ok(k), Ok(i)) => {
                                if let Err(e) = compare(k, i) {
                                    failures.push(format!(
                                        "{} ({what}, {threads} threads): {e}",
                                        r.name
                                    ));
                                }
                                checked_runs += 1;
                                with_logits += usize::from(k.d_logits.is_some());
                            }
                            (Err(_), Err(_)) => {}
                            (Ok(_), Err(e)) => failures.push(format!(
                                "{} ({what}): the interpreter refused ({}) but the kernel ran",
                                r.name, e[0].message
                            )),
                            (Err(e), Ok(_)) => failures.push(format!(
                                "{} ({what}): the kernel failed: {}",
                                r.name, e[0].message
                            )),
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked_runs >= 300, "only {checked_runs} runs compared");
    // Recipes that read entropy get logits: the fused logits kernel's path.
    assert!(with_logits >= 50, "only {with_logits} runs through logits");
    eprintln!("{checked_runs} runs compared, {with_logits} through logits");
}

/// The fusion GRPO gets: two token passes (the token count, then the
/// gradient with every other sum), reductions folded into them, and no
/// token-level buffer but the inputs and the two outputs (the ratio's exp
/// is recomputed in the second pass on both targets: the CPU's exp is
/// vectorised).
#[test]
fn grpo_fuses_into_two_token_passes() {
    use keel_compiler::builtins::Level;
    use keel_compiler::kernel::{Ins, Plan, Src, Step, Target};
    let c = check_file(&preset_path("grpo"), &[]);
    let idx = c.main_recipe(None).expect("grpo");
    let have = |n: &str| !matches!(n, "logits" | "tokens" | "advantages" | "teacher_logits");
    let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    for target in [Target::Cpu, Target::Device] {
        let plan = Plan::for_target(&compiled.graph, target).expect("plan");
        let token_loops = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Loop(l) if l.level == Level::Token))
            .count();
        assert_eq!(token_loops, 2, "{target:?}:\n{}", plan.print());
        // The first pass exists for the token count the gradient is scaled
        // by, so it reads the mask alone; every other token-level sum (the
        // loss, the metrics) folds into the second pass.
        let first = plan
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Loop(l) if l.level == Level::Token => Some(l),
                _ => None,
            })
            .expect("a token loop");
        for ins in &first.body {
            let srcs: Vec<&Src> = match ins {
                Ins::Compute { args, .. } => args.iter().collect(),
                Ins::Accum { src, .. } => vec![src],
            };
            for src in srcs {
                if let Src::Buf(b) = src {
                    let buf = &plan.buffers[*b];
                    assert!(
                        buf.level < Level::Token || buf.input.as_deref() == Some("mask"),
                        "{target:?}: the first token pass reads b{b}:\n{}",
                        plan.print()
                    );
                }
            }
        }
        assert!(!plan.steps.iter().any(|s| matches!(s, Step::Special(_))));
        let computed: Vec<_> = plan
            .buffers
            .iter()
            .filter(|b| b.level == Level::Token && b.input.is_none())
            .collect();
        let outputs = 2; // d_logp, advantages
        assert_eq!(computed.len(), outputs, "{target:?}:\n{}", plan.print());
        // What a training step reads: the per-token advantages are neither
        // computed nor stored; d_logp is the one token-level write.
        let mut training = compiled.graph.clone();
        training.keep_training_outputs();
        let plan = Plan::for_target(&training, target).expect("plan");
        let written: Vec<String> = plan
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.level == Level::Token && b.input.is_none())
            .map(|(k, _)| format!("b{k}"))
            .collect();
        assert_eq!(
            written.len(),
            1,
            "{target:?}: {written:?}\n{}",
            plan.print()
        );
        let mut names: Vec<&str> = plan.outputs.iter().map(|o| o.0.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "d_logp",
                "loss",
                "metric.approx_kl",
                "metric.clip_frac",
                "metric.entropy"
            ]
        );
    }
}

/// Big loops split into a fixed number of parts merged in order: the same
/// batch gives bit-identical results on 1, 2, 3 or 8 threads (so a run
/// reproduces across machines with different core counts).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let c = check_file(&preset_path("dapo"), &[]);
    let idx = c.main_recipe(None).expect("dapo");
    let r = &c.recipes[idx];
    let batch = synth::batch(
        r,
        Dims {
            b: 256,
            t: 256,
            v: 0,
            group: 8,
        },
        5,
    );
    let have = |n: &str| batch.has(n);
    let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    let prepared = keel_compiler::batch::prepare(&batch, "b", &compiled.graph, r).expect("fits");
    let plan = keel_compiler::kernel::Plan::new(&compiled.graph).expect("plan");
    let inputs = prepared.inputs_f32();
    let one = plan.run(&prepared.shape, &inputs, 1).expect("runs");
    for threads in [2, 3, 8] {
        let many = plan.run(&prepared.shape, &inputs, threads).expect("runs");
        for (name, v) in &one {
            let w = &many[name];
            assert!(
                v.len() == w.len()
                    && v.iter()
                        .zip(w.iter())
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} differs on {threads} threads"
            );
        }
    }
}

/// The recipes that order each token's vocabulary (PLD's Plackett–Luce
/// suffix sums, SIREN's nucleus by rank and running sum), on vocabularies
/// long enough for the executor's sorted path (above 128 entries) and short
/// enough for its counting path, with logits rounded to a coarse grid so
/// that many keys tie: the kernel equals the interpreter, whose order (key
/// descending, ties to the lower index) defines the result.
#[test]
fn vocabulary_orders_equal_the_interpreter_with_ties_and_long_rows() {
    let mut compared = 0;
    for file in ["pld", "siren", "lp_reg"] {
        let c = check_file(&preset_path(file), &[]);
        let idx = c.main_recipe(None).expect(file);
        let r = &c.recipes[idx];
        for (v, grid) in [(200usize, 0.0), (200, 0.5), (40, 0.25)] {
            let d = Dims {
                b: 8,
                t: 12,
                v,
                group: 4,
            };
            let mut batch = synth::batch(r, d, 7);
            if grid > 0.0 {
                for name in ["logits", "teacher_logits", "old_logits"] {
                    if let Some(t) = batch.tensors.get_mut(name) {
                        for i in 0..t.data.len() {
                            let x = t.data.get(i).unwrap_or(0.0);
                            t.data.set(i, (x / grid).round() * grid);
                        }
                    }
                }
            }
            let want = run_loss_with(&c, idx, &batch, "b", Backend::Interp)
                .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
            for threads in [1, 2] {
                let got = run_loss_with(&c, idx, &batch, "b", Backend::Kernel { threads })
                    .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
                if let Err(e) = compare(&got, &want) {
                    panic!("{file} (V = {v}, grid {grid}, {threads} threads): {e}");
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 18);
}

/// The gathers between vocabulary and token level fuse: the gradient's
/// one-hot scatter is no special step (a select in the vocabulary loop),
/// and the only `pick` left gathers from an input, not from a stored
/// log-softmax; no vocabulary-level value but the output gradient (and the
/// inputs) gets a buffer in z-loss's plan.
#[test]
fn gathers_fuse_into_the_loops() {
    use keel_compiler::builtins::Level;
    use keel_compiler::ir::Op;
    use keel_compiler::kernel::{Plan, Src, Step};
    let c = check_file(&preset_path("z_loss"), &[]);
    let idx = c.main_recipe(None).expect("z_loss");
    let have = |n: &str| !matches!(n, "advantages" | "teacher_logits");
    let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
    assert!(
        compiled
            .graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::OneHot)),
        "the gradient scatters d_logp into the vocabulary"
    );
    let plan = Plan::new(&compiled.graph).expect("plan");
    let mut picks = 0;
    for st in &plan.steps {
        if let Step::Special(sp) = st {
            let op = &plan.graph.nodes[sp.node].op;
            assert!(!matches!(op, Op::OneHot), "{}", plan.print());
            if matches!(op, Op::Pick) {
                picks += 1;
                let Some(Src::Buf(b)) = sp.args.first() else {
                    panic!("pick of {:?}", sp.args)
                };
                assert!(plan.buffers[*b].input.is_some(), "{}", plan.print());
            }
        }
    }
    assert_eq!(picks, 1, "{}", plan.print());
    let vocab_computed = plan
        .buffers
        .iter()
        .filter(|b| b.level == Level::Vocab && b.input.is_none())
        .count();
    assert_eq!(vocab_computed, 1, "{}", plan.print());
    assert!(plan.print().contains("vocab_index"));
}

/// A plan keeps its buffers between runs (`keel run` evaluates one plan per
/// step): running it on a bigger batch, a smaller one and the first again
/// gives the first run's outputs bit for bit — no reused buffer (its own,
/// or an output handed back with `recycle`) leaks a value from an earlier
/// run, whatever its size.
#[test]
fn a_plan_reused_across_batches_gives_the_same_results() {
    use keel_compiler::kernel::Plan;
    for file in ["siren", "pld", "grpo"] {
        let c = check_file(&preset_path(file), &[]);
        let idx = c.main_recipe(None).expect(file);
        let r = &c.recipes[idx];
        let dims = |b, t, v| Dims { b, t, v, group: 4 };
        let batches = [
            // Vocabulary buffers above the pool's 16,384-entry floor: the
            // later runs take vectors the earlier ones left, larger ones too.
            synth::batch(r, dims(16, 32, 40), 3),
            synth::batch(r, dims(32, 40, 72), 4),
            synth::batch(r, dims(12, 24, 64), 5),
        ];
        let have = |n: &str| batches[0].has(n);
        let compiled = keel_compiler::compile_loss(&c, idx, &have).expect("compiles");
        let plan = Plan::new(&compiled.graph).expect("plan");
        let run = |b: &Batch| {
            let p = keel_compiler::batch::prepare(b, "b", &compiled.graph, r)
                .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
            let got = plan
                .run(&p.shape, &p.inputs_f32(), 2)
                .unwrap_or_else(|e| panic!("{file}: {}", e.0));
            let mut out: Vec<(String, Vec<u64>)> = got
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
                .collect();
            out.sort();
            // Outputs handed back, as a training loop does: later runs
            // write into them.
            plan.recycle(got.into_values());
            out
        };
        let first = run(&batches[0]);
        run(&batches[1]);
        run(&batches[2]);
        assert_eq!(run(&batches[0]), first, "{file}");
    }
}

/// bf16 logits (a batch file's usual dtype) are read as they are held, two
/// bytes an entry, by the logits kernel (GRPO with an entropy bonus) and in
/// place by a vocabulary-level plan (z-loss, PLD with bf16 teacher logits):
/// the results are bit-identical to the same values held as f32, and equal
/// the interpreter within 1e-5.
#[test]
fn bf16_logits_are_read_in_place() {
    use keel_compiler::batch::Values;
    use keel_compiler::logits::Bf16;
    for file in ["grpo", "z_loss", "pld"] {
        let c = check_file(&preset_path(file), &[("entropy.coef", "0.01")]);
        let idx = c.main_recipe(None).expect("recipe");
        let d = Dims {
            b: 8,
            t: 12,
            v: 96,
            group: 4,
        };
        let base = synth::batch(&c.recipes[idx], d, 11);
        let (mut as_bf16, mut as_f32) = (base.clone(), base);
        let mut converted = 0;
        for name in ["logits", "teacher_logits"] {
            let Some(t) = as_bf16.tensors.get_mut(name) else {
                continue;
            };
            let h: Vec<Bf16> = t.data.iter().map(|x| Bf16::from_f32(x as f32)).collect();
            as_f32.tensors.get_mut(name).expect("same batch").data = Values::F32(
                h.iter()
                    .map(|x| f32::from_bits((x.0 as u32) << 16))
                    .collect(),
            );
            t.dtype = "bf16".into();
            t.data = Values::Bf16(h);
            converted += 1;
        }
        assert!(converted > 0, "{file}: the batch has logits");
        let kernel = Backend::Kernel { threads: 2 };
        let got = run_loss_with(&c, idx, &as_bf16, "b", kernel)
            .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
        let wide = run_loss_with(&c, idx, &as_f32, "b", kernel)
            .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
        assert_eq!(got.loss.to_bits(), wide.loss.to_bits(), "{file}: loss");
        assert_eq!(got.d_logits, wide.d_logits, "{file}: d_logits");
        assert_eq!(got.d_logp, wide.d_logp, "{file}: d_logp");
        let want = run_loss_with(&c, idx, &as_bf16, "b", Backend::Interp)
            .unwrap_or_else(|e| panic!("{file}: {}", e[0].message));
        if let Err(e) = compare(&got, &want) {
            panic!("{file}: {e}");
        }
    }
}
