//! Host code: HBPO's reward (cosine length reward with a budget penalty,
//! format and correctness gates) over 1M samples, cranelift vs the
//! interpreter, and the compile time of the largest stdlib host program.

use criterion::{Criterion, criterion_group, criterion_main};
use keel_compiler::host::Jit;
use keel_compiler::interp::{self, Env, Shape};
use std::collections::HashMap;
use std::hint::black_box;

fn checked(name: &str) -> keel_compiler::Checked {
    let text = keel_compiler::stdlib::get(name).unwrap_or_default();
    keel_compiler::check_source(&keel_compiler::NoFiles, &format!("std/{name}.recipe"), text)
}

/// Columns and compiled function for a recipe's reward over n samples.
/// A compiled reward: its graph, function, inputs by name and columns.
type RewardCase = (
    keel_compiler::ir::Graph,
    keel_compiler::host::ColumnFn,
    HashMap<String, Vec<f64>>,
    Vec<Vec<f64>>,
);

fn reward_case(name: &str, n: usize) -> RewardCase {
    let c = checked(name);
    let i = c.main_recipe(Some(name)).unwrap_or(0);
    let host = keel_compiler::compile_host(&c, i).unwrap_or_else(|_| panic!("{name} host program"));
    let reward = host.reward.unwrap_or_else(|| panic!("{name} has a reward"));
    let mut graph = host.graph.clone();
    graph.outputs = vec![("reward".into(), reward)];
    let mut jit = Jit::new().unwrap_or_else(|e| panic!("{e}"));
    let f = jit.column(&graph, reward).unwrap_or_else(|e| panic!("{e}"));
    let mut inputs = HashMap::new();
    let mut cols = Vec::new();
    for (k, id) in f.columns.iter().enumerate() {
        let col_name = match &graph.nodes[*id].op {
            keel_compiler::ir::Op::Input(s) => s.clone(),
            _ => format!("col{k}"),
        };
        let col: Vec<f64> = (0..n)
            .map(|i| match col_name.as_str() {
                "correct" | "format_ok" => ((i * 7 + k) % 5 != 0) as u8 as f64,
                "length" => (i * 37 % 20480) as f64,
                "reward" => (i % 2) as f64,
                _ => [512.0, 1024.0, 2048.0, 2560.0][i % 4],
            })
            .collect();
        inputs.insert(col_name, col.clone());
        cols.push(col);
    }
    (graph, f, inputs, cols)
}

fn bench(c: &mut Criterion) {
    let n = 1_000_000;
    let mask = vec![1.0; n];
    // DAPO: outcome score plus the overlong penalty (arithmetic only);
    // HBPO: cosine length reward with a budget penalty (two `cos` calls).
    for name in ["dapo", "hbpo"] {
        let (graph, f, inputs, cols) = reward_case(name, n);
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
        let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        let mut group = c.benchmark_group(format!("reward_1M_{name}"));
        group.sample_size(10);
        group.bench_function("interpreter", |b| {
            b.iter(|| black_box(interp::run(&graph, &env).map(|v| v.len())))
        });
        group.bench_function("cranelift", |b| {
            b.iter(|| black_box(f.call(&refs, &[]).map(|v| v.len())))
        });
        group.finish();
    }

    // The largest host program of the stdlib (by node count), compiled.
    let mut largest = None;
    let mut size = 0;
    for (name, _) in keel_compiler::stdlib::FILES {
        let c = checked(name);
        for i in 0..c.recipes.len() {
            if let Ok(h) = keel_compiler::compile_host(&c, i)
                && h.graph.nodes.len() > size
            {
                size = h.graph.nodes.len();
                largest = Some(h);
            }
        }
    }
    let Some(h) = largest else { return };
    let ids: Vec<usize> = h
        .scalars
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| h.graph.nodes[*id].level <= keel_compiler::builtins::Level::Batch)
        .collect();
    c.bench_function("compile_largest_host_program", |b| {
        b.iter(|| {
            let mut jit = Jit::new().unwrap_or_else(|e| panic!("{e}"));
            let f = jit.scalar(&h.graph, &ids).map(|f| f.outputs.len());
            let r = h.reward.map(|r| jit.column(&h.graph, r).is_ok());
            black_box((f.ok(), r))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
