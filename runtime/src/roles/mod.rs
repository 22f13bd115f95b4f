//! Model roles: models other than the policy that read a step's rollouts
//! and fill columns of its rows: the frozen reference ([`reference`]:
//! `ref_logp`, and the rehearsal samples of the initial policy) and the
//! critic ([`critic`]: `values` at rollout time, `vpred` and its own step
//! during the update) and the frozen teacher ([`teacher`]: `teacher_logp`,
//! and `teacher_logits` per minibatch).
//!
//! May import: `crate::batch`, `crate::env`, `crate::rollout`, and
//! `keel-model`; not `crate::run` (the training loop drives the roles).

pub mod critic;
pub mod reference;
pub mod teacher;

use burn::tensor::Tensor;
use keel_model::sample::left_pad;
use keel_model::transformer::Transformer;

use crate::batch::Rollouts;

/// Prompt + response rows laid out for a forward pass: tokens and validity
/// [B·(P+T)], and the prompt length P (prompts left-padded).
fn rows_of(r: &Rollouts) -> (Vec<u32>, Vec<bool>, usize) {
    let prompts: Vec<&[u32]> = r.rows.iter().map(|x| x.prompt.as_slice()).collect();
    let (ptoks, pvalid, p) = left_pad(&prompts);
    let t = r.t();
    let b = r.len();
    let resp = r.tokens();
    let resp_valid = r.valid();
    let mut toks = Vec::with_capacity(b * (p + t));
    let mut valid = Vec::with_capacity(b * (p + t));
    for row in 0..b {
        toks.extend_from_slice(&ptoks[row * p..(row + 1) * p]);
        valid.extend_from_slice(&pvalid[row * p..(row + 1) * p]);
        toks.extend_from_slice(&resp[row * t..(row + 1) * t]);
        valid.extend_from_slice(&resp_valid[row * t..(row + 1) * t]);
    }
    (toks, valid, p)
}

/// A model's final hidden states at the positions that predict each
/// response token, [B, T, d_model] (what a value head reads).
pub fn response_hidden(model: &Transformer, r: &Rollouts) -> Tensor<3> {
    let (toks, valid, p) = rows_of(r);
    let t = r.t();
    model
        .hidden(&toks, &valid, r.len(), p + t)
        .narrow(1, p - 1, t)
}

/// A model's forward pass over prompt + response rows: the logits that
/// predict each response token, [B, T, V], divided by `temperature`.
/// Attention reads every response token (masked from the loss or not).
pub fn response_logits(model: &Transformer, r: &Rollouts, temperature: f64) -> Tensor<3> {
    let (toks, valid, p) = rows_of(r);
    let t = r.t();
    let logits = model.forward(&toks, &valid, r.len(), p + t);
    logits.narrow(1, p - 1, t).div_scalar(temperature)
}
