//! The critic (PPO's value model): a copy of the policy's trunk after the
//! warm start with a fresh scalar head (`Weights::critic`), its own AdamW
//! and clip. At rollout time it fills each row's `values` (no graph); during
//! the update it predicts `vpred` with a graph, the recipe's `critic.loss`
//! gives d(value loss)/d(vpred) (derived by the compiler), and that enters
//! burn's autodiff as the linear term ⟨vpred, D⟩, as `d_logits` does for
//! the policy.
//!
//! The value of response token t is read at the position whose hidden
//! state predicts token t (verl's critic: `values[:, -response_length - 1:
//! -1]`).

use burn::tensor::{Device, Tensor, TensorData};
use keel_model::optim::{self, AdamW, AdamWConfig};
use keel_model::transformer::{ModelConfig, Transformer, Weights, to_vec};

use super::response_hidden;
use crate::batch::Rollouts;

/// The critic's own optimizer settings (`critic.lr`, `critic.grad_clip`,
/// `critic.weight_decay`) and `critic.warmup`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CriticConfig {
    pub lr: f64,
    pub grad_clip: f64,
    pub weight_decay: f64,
    /// RL steps at the start during which only the critic trains.
    pub warmup: u64,
}

/// The value model and its optimizer.
pub struct Critic {
    pub model: Transformer,
    pub opt: AdamW,
    pub cfg: CriticConfig,
}

impl Critic {
    /// A critic on `trunk` (the policy's weights after the warm start):
    /// the same blocks, a fresh value head drawn from `seed`, and AdamW
    /// with the policy's betas and eps and the critic's weight decay.
    pub fn new(
        model_cfg: &ModelConfig,
        trunk: &Weights,
        cfg: CriticConfig,
        adam: AdamWConfig,
        seed: u64,
        device: &Device,
    ) -> Critic {
        let w = trunk.critic(model_cfg.d_model, seed);
        Critic::from_weights(model_cfg, &w, cfg, adam, device)
    }

    /// A critic with the given weights (a checkpoint's) and fresh moments.
    pub fn from_weights(
        model_cfg: &ModelConfig,
        w: &Weights,
        cfg: CriticConfig,
        adam: AdamWConfig,
        device: &Device,
    ) -> Critic {
        let model = Transformer::new(model_cfg.clone(), w, device);
        let opt = AdamW::new(
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                ..adam
            },
            &model.params,
            device,
        );
        Critic { model, opt, cfg }
    }

    /// The critic's weights' names and shapes (its checkpoint's layout).
    pub fn layout(&self) -> Weights {
        Weights {
            names: self.model.names.clone(),
            shapes: self.model.shapes.clone(),
            data: Vec::new(),
        }
    }

    /// Fill each row's `values`: the critic's value of each response token
    /// now (before the update).
    pub fn fill(&self, r: &mut Rollouts) {
        if r.is_empty() {
            return;
        }
        let v = to_vec(&values(&self.model.detached(), r));
        r.put_token_column("values", &v);
    }

    /// `vpred` for `part` with a graph (the critic's weights become fresh
    /// leaves), and its values laid out [B·T].
    pub fn predict(&mut self, part: &Rollouts) -> (Tensor<2>, Vec<f32>) {
        self.model.require_grad();
        let v = values(&self.model, part);
        let flat = to_vec(&v);
        (v, flat)
    }

    /// One clipped AdamW step of the critic from `vpred` (with its graph)
    /// and d(value loss)/d(vpred) [B·T] at `lr`. Returns the gradient's
    /// norm before clipping, `None` when it is not finite (the critic is
    /// left as it was).
    pub fn step(&mut self, vpred: Tensor<2>, d_vpred: &[f32], lr: f64) -> Option<f64> {
        let dims = vpred.dims();
        let d = Tensor::<2>::from_data(TensorData::new(d_vpred.to_vec(), dims), &vpred.device());
        let grads = (vpred * d).sum().backward();
        let norm = optim::clipped_step(
            &mut self.model.params,
            &mut self.opt,
            &grads,
            self.cfg.grad_clip,
            lr,
        );
        self.detach();
        norm
    }

    /// Drop the graph (after a step, or a skipped one).
    pub fn detach(&mut self) {
        self.model.params = self
            .model
            .params
            .iter()
            .map(|p| p.clone().detach())
            .collect();
    }
}

/// `model`'s values [B, T] of each response token, with the graph where its
/// tensors record one.
fn values(model: &Transformer, r: &Rollouts) -> Tensor<2> {
    let hidden = response_hidden(model, r);
    let [b, t, _] = hidden.dims();
    model
        .value_head(hidden)
        .unwrap_or_else(|| Tensor::zeros([b, t], &model.device))
}
