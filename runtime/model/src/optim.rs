//! AdamW (decoupled weight decay), Adam (L2 decay added to the gradient)
//! and plain SGD, as torch's `AdamW`, `Adam` and `SGD` (no momentum)
//! define them, and global gradient-norm clipping over a model's flat
//! weight list (any list of rank-2 tensors that trains). Its state is plain
//! tensors, saved in checkpoints.

use burn::tensor::{Device, Gradients, Tensor};

use crate::transformer::{Weights, to_vec};

/// The update rule (`optimizer.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rule {
    /// `torch.optim.AdamW`: the weights decay by `lr · weight_decay` apart
    /// from the gradient.
    #[default]
    AdamW,
    /// `torch.optim.Adam`: `weight_decay · w` is added to the gradient.
    Adam,
    /// `torch.optim.SGD` without momentum: `w -= lr · (g + weight_decay · w)`.
    Sgd,
}

impl Rule {
    /// The rule of `optimizer.name` (`adamw`, `adam`, `sgd`).
    pub fn named(name: &str) -> Option<Rule> {
        match name {
            "adamw" => Some(Rule::AdamW),
            "adam" => Some(Rule::Adam),
            "sgd" => Some(Rule::Sgd),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub rule: Rule,
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
            let w = p.clone().detach();
            // Adam and SGD add the L2 term to the gradient.
            let g = match c.rule {
                Rule::AdamW => g.clone(),
                Rule::Adam | Rule::Sgd if c.weight_decay != 0.0 => {
                    g.clone() + w.clone().mul_scalar(c.weight_decay)
                }
                Rule::Adam | Rule::Sgd => g.clone(),
            };
            if c.rule == Rule::Sgd {
                *p = w - g.mul_scalar(lr);
                continue;
            }
            let m = self.m[k].clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            let v = self.v[k].clone().mul_scalar(c.beta2)
                + g.powf_scalar(2.0).mul_scalar(1.0 - c.beta2);
            let update = m.clone().div_scalar(bc1) / (v.clone().div_scalar(bc2).sqrt() + c.eps);
            let decayed = match c.rule {
                Rule::AdamW => w.mul_scalar(1.0 - lr * c.weight_decay),
                _ => w,
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Two steps of each rule on one weight matrix, against the formulas of
    /// torch's `AdamW`, `Adam` and `SGD` written out in f64.
    #[test]
    fn each_rule_takes_torchs_step() {
        let dev = Device::flex();
        let w0 = [0.5f64, -1.0, 2.0, 0.25];
        let grads = [[0.1f64, -0.3, 0.2, 0.0], [-0.2, 0.1, 0.4, 0.3]];
        let t = |v: &[f64]| {
            let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            Tensor::<2>::from_data(TensorData::new(f, [2, 2]), &dev)
        };
        let (lr, wd, b1, b2, eps) = (0.1, 0.05, 0.9, 0.999, 1e-8);
        for rule in [Rule::AdamW, Rule::Adam, Rule::Sgd] {
            let cfg = AdamWConfig {
                rule,
                beta1: b1,
                beta2: b2,
                eps,
                weight_decay: wd,
            };
            let mut params = vec![t(&w0)];
            let mut opt = AdamW::new(cfg, &params, &dev);
            let (mut w, mut m, mut v) = (w0, [0.0; 4], [0.0; 4]);
            for (k, g) in grads.iter().enumerate() {
                opt.step(&mut params, &[t(g)], lr);
                let n = (k + 1) as i32;
                for i in 0..4 {
                    let gi = match rule {
                        Rule::AdamW => g[i],
                        _ => g[i] + wd * w[i],
                    };
                    if rule == Rule::Sgd {
                        w[i] -= lr * gi;
                        continue;
                    }
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let upd =
                        (m[i] / (1.0 - b1.powi(n))) / ((v[i] / (1.0 - b2.powi(n))).sqrt() + eps);
                    if rule == Rule::AdamW {
                        w[i] *= 1.0 - lr * wd;
                    }
                    w[i] -= lr * upd;
                }
            }
            let got = to_vec(&params[0]);
            for i in 0..4 {
                assert!(
                    (got[i] as f64 - w[i]).abs() < 1e-5,
                    "{rule:?} weight {i}: {} against {}",
                    got[i],
                    w[i]
                );
            }
        }
        assert_eq!(Rule::named("sgd"), Some(Rule::Sgd));
        assert_eq!(Rule::named("lion"), None);
    }
}
