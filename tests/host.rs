//! Host code: the cranelift JIT against the f64 reference interpreter, bit
//! for bit, on random expression trees and on column (reward) programs.

use keel_compiler::builtins::Level;
use keel_compiler::host::{Jit, UNARY};
use keel_compiler::interp::{self, Env, Shape};
use keel_compiler::ir::{Bin, Builder, DType, Graph, NodeId, Op, Un};
use proptest::prelude::*;
use std::collections::HashMap;

const BINARY: &[Bin] = &[
    Bin::Add,
    Bin::Sub,
    Bin::Mul,
    Bin::Div,
    Bin::Pow,
    Bin::Min,
    Bin::Max,
    Bin::Lt,
    Bin::Le,
    Bin::Gt,
    Bin::Ge,
    Bin::Eq,
    Bin::Ne,
    Bin::And,
    Bin::Or,
];

/// A random expression: leaves index into the parameter values.
#[derive(Clone, Debug)]
enum E {
    Leaf(usize),
    Un(usize, Box<E>),
    Bin(usize, Box<E>, Box<E>),
    Where(Box<E>, Box<E>, Box<E>),
    Clamp(Box<E>, Box<E>, Box<E>),
}

fn expr() -> impl Strategy<Value = E> {
    let leaf = (0usize..6).prop_map(E::Leaf);
    leaf.prop_recursive(6, 40, 3, |inner| {
        prop_oneof![
            (0..UNARY.len(), inner.clone()).prop_map(|(u, e)| E::Un(u, Box::new(e))),
            (0..BINARY.len(), inner.clone(), inner.clone()).prop_map(|(b, x, y)| E::Bin(
                b,
                Box::new(x),
                Box::new(y)
            )),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| E::Where(
                Box::new(c),
                Box::new(a),
                Box::new(b)
            )),
            (inner.clone(), inner.clone(), inner).prop_map(|(x, l, h)| E::Clamp(
                Box::new(x),
                Box::new(l),
                Box::new(h)
            )),
        ]
    })
}

fn special() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(-1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.5),
        -1e3..1e3f64,
        -3.0..3.0f64,
    ]
}

fn build(b: &mut Builder, e: &E, params: &[NodeId]) -> NodeId {
    match e {
        E::Leaf(i) => params[*i],
        E::Un(u, x) => {
            let x = build(b, x, params);
            b.add(Op::Unary(UNARY[*u]), vec![x], Level::Step, DType::F64)
        }
        E::Bin(o, x, y) => {
            let (x, y) = (build(b, x, params), build(b, y, params));
            b.add(Op::Binary(BINARY[*o]), vec![x, y], Level::Step, DType::F64)
        }
        E::Where(c, x, y) => {
            let (c, x, y) = (
                build(b, c, params),
                build(b, x, params),
                build(b, y, params),
            );
            b.add(Op::Where, vec![c, x, y], Level::Step, DType::F64)
        }
        E::Clamp(x, l, h) => {
            let (x, l, h) = (
                build(b, x, params),
                build(b, l, params),
                build(b, h, params),
            );
            b.add(Op::Clamp, vec![x, l, h], Level::Step, DType::F64)
        }
    }
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

fn shape() -> Shape {
    Shape {
        b: 1,
        t: 1,
        v: 1,
        group_of: vec![0],
        n_groups: 1,
    }
}

/// The graph of one random tree over step-level parameters, its output node,
/// and the interpreter's value for it.
fn scalar_case(e: &E, values: &[f64]) -> Result<(Graph, NodeId, f64), TestCaseError> {
    let mut b = Builder::new();
    let params: Vec<NodeId> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            b.add(
                Op::Param {
                    name: format!("p{i}"),
                    value: *v,
                },
                Vec::new(),
                Level::Step,
                DType::F64,
            )
        })
        .collect();
    let out = build(&mut b, e, &params);
    let mut g = b.graph;
    g.outputs = vec![("out".into(), out)];
    let mask = vec![1.0];
    let inputs = HashMap::new();
    let env = Env {
        shape: shape(),
        mask: &mask,
        inputs: &inputs,
    };
    let want = interp::run(&g, &env).map_err(|e| TestCaseError::fail(e.0))?[out][0];
    Ok((g, out, want))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// 10,000 random expression trees over parameters with special values
    /// (NaN, ±inf, ±0): the JIT equals the interpreter bit for bit.
    #[test]
    fn jit_equals_interpreter_bit_for_bit(e in expr(), values in prop::collection::vec(special(), 6)) {
        let (g, out, want) = scalar_case(&e, &values)?;
        let mut jit = Jit::new().map_err(TestCaseError::fail)?;
        let f = jit.scalar(&g, &[out]).map_err(TestCaseError::fail)?;
        let got = f.call(&[])[0];
        prop_assert!(same(got, want), "jit {got} ({:#x}) vs interpreter {want} ({:#x}) for {e:?} at {values:?}", got.to_bits(), want.to_bits());
    }
}

#[cfg(feature = "llvm")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The LLVM backend on the same 10,000 random trees: equal to the
    /// interpreter (and so to cranelift) bit for bit.
    #[test]
    fn llvm_equals_interpreter_bit_for_bit(e in expr(), values in prop::collection::vec(special(), 6)) {
        let (g, out, want) = scalar_case(&e, &values)?;
        let f = keel_compiler::host_llvm::scalar(&g, &[out]).map_err(TestCaseError::fail)?;
        let got = f.call(&[])[0];
        // LLVM folds constant arithmetic at compile time, and its folded NaNs
        // carry a different sign/payload than the CPU's default NaN: equal
        // bits, or NaN on both sides.
        prop_assert!(same(got, want) || (got.is_nan() && want.is_nan()), "llvm {got} vs interpreter {want} for {e:?} at {values:?}");
    }
}

/// The LLVM backend on every recipe's host program, with random inputs.
#[cfg(feature = "llvm")]
#[test]
fn llvm_host_programs_match_cranelift() {
    let mut files = keel_tests::recipes_in("stdlib");
    files.extend(keel_tests::recipes_in("examples"));
    let mut n = 0;
    for (name, text) in files {
        let c = keel_compiler::check_source(
            &keel_compiler::Disk,
            &keel_tests::root().join(&name).to_string_lossy(),
            &text,
        );
        for i in 0..c.recipes.len() {
            let h = keel_compiler::compile_host(&c, i).unwrap_or_else(|_| panic!("{name}"));
            let ids: Vec<NodeId> = h
                .scalars
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| h.graph.nodes[*id].level <= Level::Batch)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let mut jit = Jit::new().expect("jit");
            let cl = jit.scalar(&h.graph, &ids).expect("cranelift");
            let ll = keel_compiler::host_llvm::scalar(&h.graph, &ids).expect("llvm");
            assert_eq!(cl.inputs, ll.inputs);
            let vals: Vec<f64> = (0..cl.inputs.len()).map(|k| k as f64 * 3.7 - 2.0).collect();
            let (a, b) = (cl.call(&vals), ll.call(&vals));
            assert!(
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| same(*x, *y) || (x.is_nan() && y.is_nan())),
                "{name}: {a:?} vs {b:?}"
            );
            assert!(ll.llvm_ir.contains("define void @keel_scalar"));
            n += 1;
        }
    }
    assert!(n >= 40);
}

#[test]
fn column_program_loops_over_samples() {
    // reward = where(correct, 1 - 0.5 * sigmoid((length - 100) / 10), -1) + bonus
    let mut b = Builder::new();
    let correct = b.add(
        Op::Input("correct".into()),
        Vec::new(),
        Level::Seq,
        DType::Bool,
    );
    let length = b.add(
        Op::Input("length".into()),
        Vec::new(),
        Level::Seq,
        DType::I64,
    );
    let bonus = b.add(
        Op::Param {
            name: "reward.bonus".into(),
            value: 0.25,
        },
        Vec::new(),
        Level::Step,
        DType::F64,
    );
    let hundred = b.c(100.0);
    let ten = b.c(10.0);
    let d = b.binary(Bin::Sub, length, hundred);
    let z = b.binary(Bin::Div, d, ten);
    let s = b.unary(Un::Sigmoid, z);
    let half = b.c(0.5);
    let hs = b.binary(Bin::Mul, half, s);
    let one = b.c(1.0);
    let good = b.binary(Bin::Sub, one, hs);
    let bad = b.c(-1.0);
    let r = b.where_(correct, good, bad);
    let out = b.binary(Bin::Add, r, bonus);
    let mut g = b.graph;
    g.outputs = vec![("reward".into(), out)];
    let n = 1000;
    let c: Vec<f64> = (0..n).map(|i| (i % 3 != 0) as u8 as f64).collect();
    let l: Vec<f64> = (0..n).map(|i| (i * 7 % 250) as f64).collect();
    let mut jit = Jit::new().expect("jit");
    let f = jit.column(&g, out).expect("compiles");
    assert_eq!(f.columns.len(), 2);
    let cols: Vec<&[f64]> = f
        .columns
        .iter()
        .map(|id| {
            if *id == correct {
                c.as_slice()
            } else {
                l.as_slice()
            }
        })
        .collect();
    let got = f.call(&cols, &[]).expect("runs");
    let inputs: HashMap<String, Vec<f64>> = [
        ("correct".to_string(), c.clone()),
        ("length".to_string(), l.clone()),
    ]
    .into();
    let mask = vec![1.0; n];
    let env = Env {
        shape: Shape {
            b: n,
            t: 1,
            v: 1,
            group_of: vec![0; n],
            n_groups: 1,
        },
        mask: &mask,
        inputs: &inputs,
    };
    let want = &interp::run(&g, &env).expect("interp")[out];
    assert!(got.iter().zip(want).all(|(a, b)| same(*a, *b)));
    assert!(f.clif.contains("call"), "{}", f.clif);
}

/// Every recipe of the stdlib and the examples: its host program (schedules,
/// state updates, guard conditions) and, where elementwise, its reward
/// column program equal the interpreter bit for bit on random inputs.
#[test]
fn every_recipe_host_program_matches_the_interpreter() {
    let mut files = keel_tests::recipes_in("stdlib");
    files.extend(keel_tests::recipes_in("examples"));
    let mut programs = 0;
    let mut rewards = 0;
    let mut seed: u64 = 99;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64) / ((1u64 << 53) as f64) * 4.0 - 1.0
    };
    for (name, text) in files {
        let c = keel_compiler::check_source(
            &keel_compiler::Disk,
            &keel_tests::root().join(&name).to_string_lossy(),
            &text,
        );
        for i in 0..c.recipes.len() {
            let h = keel_compiler::compile_host(&c, i)
                .unwrap_or_else(|_| panic!("{name}: host program"));
            let mut jit = Jit::new().expect("jit");
            let ids: Vec<NodeId> = h
                .scalars
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| h.graph.nodes[*id].level <= Level::Batch)
                .collect();
            if !ids.is_empty() {
                let f = jit.scalar(&h.graph, &ids).expect("compiles");
                let vals: Vec<f64> = f.inputs.iter().map(|_| rnd() * 50.0).collect();
                let got = f.call(&vals);
                // The interpreter on the same graph with the inputs pinned.
                let mut g = h.graph.clone();
                for (k, id) in f.inputs.iter().enumerate() {
                    g.nodes[*id].op = Op::Param {
                        name: format!("in{k}"),
                        value: vals[k],
                    };
                    g.nodes[*id].args.clear();
                    g.nodes[*id].level = Level::Step;
                }
                g.outputs = ids.iter().map(|id| ("o".to_string(), *id)).collect();
                let mask = vec![1.0];
                let inputs = HashMap::new();
                let env = Env {
                    shape: shape(),
                    mask: &mask,
                    inputs: &inputs,
                };
                let all = interp::run(&g, &env).expect("interp");
                for (k, id) in ids.iter().enumerate() {
                    assert!(
                        same(got[k], all[*id][0]),
                        "{name}: {} = {} vs {}",
                        h.scalars[k].0,
                        got[k],
                        all[*id][0]
                    );
                }
                programs += 1;
            }
            if let Some(r) = h.reward
                && let Ok(f) = jit.column(&h.graph, r)
            {
                let n = 64;
                let cols: Vec<Vec<f64>> = f
                    .columns
                    .iter()
                    .map(|_| (0..n).map(|_| (rnd() * 3.0).round()).collect())
                    .collect();
                let scal: Vec<f64> = f.scalars.iter().map(|_| rnd()).collect();
                let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
                let got = f.call(&refs, &scal).expect("runs");
                let mut g = h.graph.clone();
                for (k, id) in f.scalars.iter().enumerate() {
                    g.nodes[*id].op = Op::Param {
                        name: format!("s{k}"),
                        value: scal[k],
                    };
                    g.nodes[*id].args.clear();
                    g.nodes[*id].level = Level::Step;
                }
                let mut inputs = HashMap::new();
                for (k, id) in f.columns.iter().enumerate() {
                    inputs.insert(format!("col{k}"), cols[k].clone());
                    g.nodes[*id].op = Op::Input(format!("col{k}"));
                    g.nodes[*id].args.clear();
                }
                g.outputs = vec![("reward".into(), r)];
                let mask = vec![1.0; n];
                let env = Env {
                    shape: Shape {
                        b: n,
                        t: 1,
                        v: 1,
                        group_of: vec![0; n],
                        n_groups: 1,
                    },
                    mask: &mask,
                    inputs: &inputs,
                };
                let want = &interp::run(&g, &env).expect("interp")[r];
                assert!(
                    got.iter().zip(want).all(|(a, b)| same(*a, *b)),
                    "{name}: reward"
                );
                rewards += 1;
            }
        }
    }
    assert!(
        programs >= 40 && rewards >= 5,
        "{programs} host programs, {rewards} reward programs"
    );
}

/// `optimizer.warmup` and `optimizer.schedule` shape `optimizer.lr` in the
/// host program: at step k of T, lr · min(1, k / w) · decay(p) with
/// p = clamp((k − w) / (T − w), 0, 1), worked out here by hand; a recipe
/// that sets neither keeps its written lr (a schedule of `step` included).
#[test]
fn warmup_and_schedule_shape_the_learning_rate() {
    let values = |optimizer: &str| {
        let src = format!(
            "recipe r {{ optimizer {{ {optimizer} }} objective.loss = -advantages * logp }}"
        );
        let c = keel_tests::check_str(&src);
        let (m, r) = (&c.merged[0], &c.recipes[0]);
        let h = keel_compiler::lower::host_graph(&c.program, m, r).expect("host graph");
        keel_compiler::lower::schedule_values(&h, "optimizer.lr", 20).expect("a schedule")
    };
    let (lr, w, t) = (2e-3, 5.0, 20.0);
    let ramp = |k: f64| f64::min(1.0, k / w);
    let p = |k: f64| ((k - w) / (t - w)).clamp(0.0, 1.0);
    type Decay = fn(f64) -> f64;
    let cases: [(&str, Decay); 3] = [
        ("constant", |_| 1.0),
        ("linear", |p| 1.0 - p),
        ("cosine", |p| 0.5 * (1.0 + (std::f64::consts::PI * p).cos())),
    ];
    for (schedule, decay) in cases {
        let got = values(&format!(
            "lr = 2e-3, warmup = 5, schedule = {schedule}, steps = 20"
        ));
        assert_eq!(got.len(), 20);
        for (i, g) in got.iter().enumerate() {
            let k = (i + 1) as f64;
            let want = lr * ramp(k) * decay(p(k));
            assert!(
                (g - want).abs() < 1e-15,
                "{schedule} step {k}: {g} against {want}"
            );
        }
    }
    // Step 1 of a 5-step warm-up is a fifth of the rate; a cosine ends at 0.
    let cos = values("lr = 2e-3, warmup = 5, schedule = cosine, steps = 20");
    assert!((cos[0] - 4e-4).abs() < 1e-15 && cos[19].abs() < 1e-15);
    // A schedule of `step` alone is left as written.
    let written = values("lr = 3e-4 * min(1, step / 4), steps = 20");
    assert_eq!(written[0], 3e-4 / 4.0);
    assert_eq!(written[10], 3e-4);
    // A schedule without an lr applies to the default (1e-3).
    let default = values("schedule = linear, steps = 20");
    assert!((default[9] - 1e-3 * (1.0 - 10.0 / 20.0)).abs() < 1e-15);
}
