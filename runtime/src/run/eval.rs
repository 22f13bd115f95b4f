//! Held-out evaluation: pass@1 (mean correctness over `eval.k` samples a
//! problem) and pass@k, on the environment's evaluation stream.

use keel_model::rng::Rng;
use keel_model::transformer::Transformer;

use super::config::RunConfig;
use crate::env::{EVAL_STREAM, Problem};

/// (pass@1, pass@k) of `policy` at `temperature`, `max_tokens`; the draws
/// are a function of the seed and `step`.
pub fn evaluate(
    setup: &RunConfig,
    policy: &Transformer,
    temperature: f64,
    max_tokens: usize,
    step: u64,
) -> (f64, f64) {
    let problems: Vec<Problem> = (0..setup.eval_problems as u64)
        .map(|i| setup.env.problem(EVAL_STREAM, i))
        .collect();
    let mut rng = Rng::derive(setup.seed, 7, step);
    let model = policy.detached();
    let sampler = setup.sampler(&model, temperature, max_tokens, false);
    let r = sampler.groups(&problems, setup.eval_k, &mut rng);
    let mut per = vec![(0usize, 0usize); problems.len()];
    for row in &r.rows {
        per[row.group].0 += usize::from(row.verdict.correct);
        per[row.group].1 += 1;
    }
    let n = per.len().max(1) as f64;
    let p1 = per
        .iter()
        .map(|(c, k)| *c as f64 / (*k).max(1) as f64)
        .sum::<f64>()
        / n;
    let pk = per.iter().filter(|(c, _)| *c > 0).count() as f64 / n;
    (p1, pk)
}
