//! AdamW (decoupled weight decay) and global gradient-norm clipping over a
//! model's flat weight list (any list of rank-2 tensors that trains). Its state is plain tensors, saved in checkpoints.

use burn::tensor::{Device, Gradients, Tensor};

use crate::transformer::{Weights, to_vec};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Update count (bias correction).
    pub t: u64,
    pub m: Vec<Tensor<2>>,
    pub v: Vec<Tensor<2>>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &[Tensor<2>], device: &Device) -> AdamW {
        let zeros = |p: &Tensor<2>| Tensor::<2>::zeros(p.dims(), device);
        AdamW {
            cfg,
            t: 0,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
        }
    }

    /// One update of `params` (detached leaves) with `grads` at rate `lr`.
    pub fn step(&mut self, params: &mut [Tensor<2>], grads: &[Tensor<2>], lr: f64) {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (k, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let m = self.m[k].clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            let v = self.v[k].clone().mul_scalar(c.beta2)
                + g.clone().powf_scalar(2.0).mul_scalar(1.0 - c.beta2);
            let update = m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt() + c.eps);
            let decayed = p.clone().detach().mul_scalar(1.0 - lr * c.weight_decay);
            *p = decayed - update.mul_scalar(lr);
            self.m[k] = m;
            self.v[k] = v;
        }
    }

    pub fn state(&self, names: &[String], shapes: &[[usize; 2]]) -> (Weights, Weights) {
        (
            Weights::from_tensors(names, shapes, &self.m),
            Weights::from_tensors(names, shapes, &self.v),
        )
    }

    pub fn load(&mut self, m: &Weights, v: &Weights, t: u64, device: &Device) {
        self.m = m.to_tensors(device);
        self.v = v.to_tensors(device);
        self.t = t;
    }
}

/// The global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor<2>]) -> f64 {
    grads
        .iter()
        .map(|g| {
            to_vec(&g.clone().powf_scalar(2.0).sum())
                .first()
                .copied()
                .unwrap_or(f32::NAN) as f64
        })
        .sum::<f64>()
        .sqrt()
}

/// Scale `grads` so their global norm is at most `max_norm` (no-op when ≤ 0).
pub fn clip(grads: Vec<Tensor<2>>, norm: f64, max_norm: f64) -> Vec<Tensor<2>> {
    if max_norm <= 0.0 || norm <= max_norm || !norm.is_finite() {
        return grads;
    }
    let s = max_norm / (norm + 1e-6);
    grads.into_iter().map(|g| g.mul_scalar(s)).collect()
}

/// One AdamW step on `params` (a model's weight list) from a backward
/// pass: the gradients' global L2 norm, clipped to `max_norm`, then the
/// update at `lr`. Anything that trains (the warm start, the RL update)
/// takes this step. Returns the norm before clipping; when it is not finite
/// the weights and the optimizer are left as they are and `None` comes back
/// (the caller skips the step).
pub fn clipped_step(
    params: &mut Vec<Tensor<2>>,
    opt: &mut AdamW,
    grads: &Gradients,
    max_norm: f64,
    lr: f64,
) -> Option<f64> {
    let gs = param_grads(params, grads);
    step_with(params, opt, gs, max_norm, lr)
}

/// Each parameter's gradient from a backward pass (zeros where it has none).
pub fn param_grads(params: &[Tensor<2>], grads: &Gradients) -> Vec<Tensor<2>> {
    params
        .iter()
        .map(|p| {
            p.grad(grads)
                .unwrap_or_else(|| Tensor::zeros(p.dims(), &p.device()))
        })
        .collect()
}

/// [`clipped_step`] from gradients already summed (gradient accumulation).
pub fn step_with(
    params: &mut Vec<Tensor<2>>,
    opt: &mut AdamW,
    gs: Vec<Tensor<2>>,
    max_norm: f64,
    lr: f64,
) -> Option<f64> {
    let norm = global_norm(&gs);
    if !norm.is_finite() {
        return None;
    }
    let gs = clip(gs, norm, max_norm);
    let mut next: Vec<Tensor<2>> = params.iter().map(|p| p.clone().detach()).collect();
    opt.step(&mut next, &gs, lr);
    *params = next;
    Some(norm)
}
