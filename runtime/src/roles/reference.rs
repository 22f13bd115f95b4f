//! The frozen reference: the policy as it was after the warm start, kept
//! where the recipe reads `ref_logp` or `source`. It shares the policy's
//! tensors (burn's tensors are values; an update makes the policy new ones
//! and leaves these as they were), so until the first update, and for
//! every tensor an update leaves alone, the two hold one copy.

use burn::tensor::activation::log_softmax;
use keel_model::rng::Rng;
use keel_model::transformer::{Transformer, to_vec};

use super::{response_hidden, response_logits};
use crate::batch::Rollouts;
use crate::env::{Problem, REHEARSAL_STREAM};
use crate::rollout::Sampler;

/// The reference model.
pub struct Reference {
    pub model: Transformer,
}

impl Reference {
    /// The policy as it is now, frozen.
    pub fn of(policy: &Transformer) -> Reference {
        Reference {
            model: policy.detached(),
        }
    }

    /// Fill each row's `ref_logp`: the log-probs of its response tokens
    /// under the reference, at the sampling temperature.
    pub fn fill(&self, r: &mut Rollouts, temperature: f64) {
        let lp = token_logp(&self.model, r, temperature);
        for (row, lp) in r.rows.iter_mut().zip(lp) {
            row.extra.insert("ref_logp", lp);
        }
    }

    /// Fill each row's `novelty` (EVOL-RL): [`group_novelty`] within each
    /// group over embeddings that are the reference's final hidden states
    /// mean-pooled over the response's tokens; valid = `format_ok`, the
    /// class = `correct` as the task verifies it (EVOL-RL's class is
    /// agreement with the group's majority answer, which the built-in
    /// tasks do not vote on: there it is the verifier's verdict).
    pub fn fill_novelty(&self, r: &mut Rollouts) {
        if r.is_empty() {
            return;
        }
        let h = response_hidden(&self.model, r);
        let [b, t, d] = h.dims();
        let h = to_vec(&h);
        let emb: Vec<Vec<f64>> = (0..b)
            .map(|i| {
                let n = r.rows[i].response.len().clamp(1, t);
                let mut e = vec![0.0; d];
                for j in 0..n {
                    for (k, x) in e.iter_mut().enumerate() {
                        *x += h[(i * t + j) * d + k] as f64 / n as f64;
                    }
                }
                e
            })
            .collect();
        for g in 0..r.n_groups() {
            let rows = r.rows_of(g);
            let e: Vec<Vec<f64>> = rows.iter().map(|&i| emb[i].clone()).collect();
            let valid: Vec<bool> = rows.iter().map(|&i| r.rows[i].verdict.format_ok).collect();
            let major: Vec<bool> = rows.iter().map(|&i| r.rows[i].verdict.correct).collect();
            for (k, nov) in group_novelty(&e, &valid, &major).into_iter().enumerate() {
                r.rows[rows[k]].novelty = nov;
            }
        }
    }

    /// Rehearsal samples (DPH-RL, retain sets): correct responses of the
    /// initial policy to `4 × prompts` problems of their own stream, `group`
    /// each, sampled once by `sampler` (over this reference's `model`).
    pub fn rehearsal_pool(
        &self,
        sampler: Sampler,
        prompts: usize,
        group: usize,
        seed: u64,
    ) -> Rollouts {
        let problems: Vec<Problem> = (0..(4 * prompts) as u64)
            .map(|i| sampler.env.problem(REHEARSAL_STREAM, i))
            .collect();
        let mut rng = Rng::derive(seed, REHEARSAL_STREAM, 0);
        let pool = sampler.groups(&problems, group, &mut rng);
        let rows: Vec<usize> = (0..pool.len())
            .filter(|&i| pool.rows[i].verdict.correct)
            .collect();
        pool.select_rows(&rows)
    }
}

/// log-probs of the response tokens under a (frozen) model.
pub fn token_logp(model: &Transformer, r: &Rollouts, temperature: f64) -> Vec<Vec<f64>> {
    let z = response_logits(model, r, temperature);
    let [b, t, v] = z.dims();
    let lp = to_vec(&log_softmax(z, 2));
    (0..b)
        .map(|row| {
            r.rows[row]
                .response
                .iter()
                .enumerate()
                .map(|(j, &tkn)| lp[(row * t + j) * v + tkn as usize] as f64)
                .collect()
        })
        .collect()
}

/// EVOL-RL's novelty of each response of one group (its released code,
/// `semantic_novelty.py`): with S = clip(cos(e_i, e_j), 0, 1) over the valid
/// responses, novelty_i = 1 − (½ · mean of S_ij over the other members of
/// i's class + ½ · max of S_ij over every other valid response); a class
/// with no other member takes the mean over all others; a group with one
/// valid response gives it 0.5; invalid responses get 0.
pub fn group_novelty(emb: &[Vec<f64>], valid: &[bool], class: &[bool]) -> Vec<f64> {
    let n = emb.len();
    let cos = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            (dot / (na * nb)).clamp(0.0, 1.0)
        }
    };
    let ok: Vec<usize> = (0..n).filter(|&i| valid[i]).collect();
    let mut out = vec![0.0; n];
    if ok.len() == 1 {
        out[ok[0]] = 0.5;
        return out;
    }
    for &i in &ok {
        let others: Vec<usize> = ok.iter().copied().filter(|&j| j != i).collect();
        let same: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&j| class[j] == class[i])
            .collect();
        let pool = if same.is_empty() { &others } else { &same };
        let mean = pool.iter().map(|&j| cos(&emb[i], &emb[j])).sum::<f64>() / pool.len() as f64;
        let max = others
            .iter()
            .map(|&j| cos(&emb[i], &emb[j]))
            .fold(0.0f64, f64::max);
        out[i] = 1.0 - (0.5 * mean + 0.5 * max);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three responses with known embeddings (e1 = (1, 0), e2 = (0, 1),
    /// e3 = (1, 1)/√2: cos 0 between 1 and 2, 1/√2 to 3), 1 and 3 in the
    /// majority: novelty_1 = 1 − (½·S13 + ½·S13), novelty_2 (alone in its
    /// class: the mean over all others) = 1 − (½·(0 + S23)/2 + ½·S23),
    /// novelty_3 = 1 − (½·S13 + ½·S13); an invalid fourth gets 0 and is
    /// no one's neighbour; a lone valid response gets 0.5.
    #[test]
    fn novelty_worked_example() {
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let e = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![r, r], vec![1.0, 0.0]];
        let nov = group_novelty(&e, &[true, true, true, false], &[true, false, true, true]);
        let s = r; // cos(e1, e3) = cos(e2, e3) = 1/√2
        let want = [1.0 - s, 1.0 - (0.5 * s / 2.0 + 0.5 * s), 1.0 - s, 0.0];
        for (g, w) in nov.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{nov:?} vs {want:?}");
        }
        assert_eq!(
            group_novelty(&e[..2], &[true, false], &[true, true]),
            vec![0.5, 0.0]
        );
    }
}
