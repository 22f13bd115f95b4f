//! The teacher (distillation): a frozen model that scores the student's own
//! samples. No gradient reaches it and it has no optimizer state. It
//! fills `teacher_logp` (the teacher's log-prob of each sampled token) at
//! rollout time, where the recipe reads it, and `teacher_logits` per
//! minibatch during the update, where the recipe reads them: a minibatch's
//! [B, T, V] teacher logits are made when its loss runs and dropped after,
//! never held for the whole step. Both at the sampling temperature, as the
//! student's `logits` are.

use keel_model::transformer::{Transformer, to_vec};

use super::{response_hidden, response_logits};

/// Vocabulary columns per slice of the teacher's log-prob pass.
const LOGP_CHUNK: usize = 4096;
use crate::batch::Rollouts;

/// The frozen teacher and which of its inputs the recipe reads.
pub struct Teacher {
    pub model: Transformer,
    pub reads_logits: bool,
    pub reads_logp: bool,
}

impl Teacher {
    /// Fill each row's `teacher_logp` (where the recipe reads it), with
    /// the vocabulary in slices: no [B, T, V] teacher buffer is made.
    pub fn fill(&self, r: &mut Rollouts, temperature: f64) {
        if !self.reads_logp || r.is_empty() {
            return;
        }
        let hidden = response_hidden(&self.model, r);
        let lp = self
            .model
            .token_logp(hidden, &r.tokens(), temperature, LOGP_CHUNK);
        r.put_token_column("teacher_logp", &lp);
    }

    /// Give each row of a minibatch its teacher logits [len·V] (where the
    /// recipe reads them).
    pub fn fill_logits(&self, part: &mut Rollouts, temperature: f64) {
        if !self.reads_logits || part.is_empty() {
            return;
        }
        let z = response_logits(&self.model, part, temperature);
        let [_, t, v] = z.dims();
        let z = to_vec(&z);
        for (i, row) in part.rows.iter_mut().enumerate() {
            let n = row.response.len().min(t);
            row.teacher_logits = z[i * t * v..(i * t + n) * v].to_vec();
        }
    }
}
