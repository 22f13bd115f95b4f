//! Comparing an executor's outputs with the reference interpreter's: the
//! one measure the kernel tests and `keel bench parity` share.

use crate::{LossResult, Outputs};

/// An output's error relative to the reference's scale: its largest entry,
/// and at least 0.1 for a single value (a loss is a mean of O(1) terms that
/// can cancel to nearly 0, where an f32 result's error is relative to the
/// terms, not to their sum). NaN where the reference has NaN counts as equal.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let floor: f64 = if want.len() == 1 { 0.1 } else { 1e-6 };
    let scale = want.iter().fold(floor, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_nan() && w.is_nan() {
                0.0
            } else if g.is_nan() || w.is_nan() {
                f64::INFINITY
            } else {
                (g - w).abs() / scale
            }
        })
        .fold(0.0, f64::max)
}

/// The error of every output `got` shares with the interpreter's result:
/// loss, d_logp, advantages, d_logits, metrics.
pub fn errors(got: &Outputs, want: &LossResult) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut check = |name: &str, w: &[f64]| {
        if let Some(g) = got.get(name) {
            out.push((name.to_string(), rel_err(&g.to_f64(), w)));
        }
    };
    check("loss", &[want.loss]);
    if want.d_logits.is_none() {
        check("d_logp", &want.d_logp);
    }
    if let Some(a) = &want.advantages {
        check("advantages", a);
    }
    if let Some(d) = &want.d_logits {
        check("d_logits", &d.to_f64());
    }
    for (m, x) in &want.metrics {
        check(&format!("metric.{m}"), &[*x]);
    }
    out
}

/// The tolerance of an f32 executor: 1e-5 of each output's scale.
pub const F32_TOLERANCE: f64 = 1e-5;
