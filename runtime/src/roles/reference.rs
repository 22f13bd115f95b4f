//! The frozen reference: the policy as it was after the warm start, kept
//! where the recipe reads `ref_logp` or `source`. It shares the policy's
//! tensors (burn's tensors are values; an update makes the policy new ones
//! and leaves these as they were), so until the first update, and for
//! every tensor an update leaves alone, the two hold one copy.

use burn::tensor::activation::log_softmax;
use keel_model::rng::Rng;
use keel_model::transformer::{Transformer, to_vec};

use super::response_logits;
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
