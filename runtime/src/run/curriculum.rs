//! The order problems are drawn in (`curriculum.order`): the training
//! stream as it comes (`random`), or a window of it sorted by the online
//! pass rate of each difficulty bucket (`difficulty`: easiest first;
//! `reverse_difficulty`), within `curriculum.max_difficulty`.

use super::checkpoint::TrainState;
use super::config::RunConfig;
use crate::batch::Rollouts;
use crate::env::{Problem, TRAIN_STREAM};

/// A difficulty's bucket of the online pass rates (four of them).
fn bucket(d: f64) -> usize {
    ((d * 3.999) as usize).min(3)
}

/// The next `n` prompts of the training stream, in curriculum order.
pub fn next_problems(
    setup: &RunConfig,
    st: &mut TrainState,
    n: usize,
    max_difficulty: Option<f64>,
) -> Vec<Problem> {
    let window = if setup.order == "random" { n } else { 4 * n };
    let mut cands: Vec<(u64, Problem)> = Vec::new();
    let mut i = st.cursor;
    let mut tries = 0;
    while cands.len() < window && tries < 50 * window.max(1) {
        let p = setup.env.problem(TRAIN_STREAM, i);
        i += 1;
        tries += 1;
        if max_difficulty.is_some_and(|m| m.is_finite() && p.difficulty > m + 1e-12) {
            continue;
        }
        cands.push((i - 1, p));
    }
    let rate = |d: f64| {
        let (c, a) = st.pass_counts.get(bucket(d)).copied().unwrap_or((0, 0));
        (c as f64 + 1.0) / (a as f64 + 2.0)
    };
    match setup.order.as_str() {
        // Easiest first: the highest online pass rate.
        "difficulty" => cands.sort_by(|a, b| {
            rate(b.1.difficulty)
                .total_cmp(&rate(a.1.difficulty))
                .then(a.0.cmp(&b.0))
        }),
        "reverse_difficulty" => cands.sort_by(|a, b| {
            rate(a.1.difficulty)
                .total_cmp(&rate(b.1.difficulty))
                .then(a.0.cmp(&b.0))
        }),
        _ => {}
    }
    cands.truncate(n);
    st.cursor = i;
    cands.into_iter().map(|c| c.1).collect()
}

/// Count each group's correct responses into its difficulty's bucket.
pub fn count_passes(st: &mut TrainState, batch: &Rollouts) {
    for (g, d) in batch.difficulty.iter().enumerate() {
        let rows = batch.rows_of(g);
        let c = rows
            .iter()
            .filter(|&&i| batch.rows[i].verdict.correct)
            .count() as u64;
        if let Some(pc) = st.pass_counts.get_mut(bucket(*d)) {
            pc.0 += c;
            pc.1 += rows.len() as u64;
        }
    }
}
