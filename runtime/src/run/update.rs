//! The update: for each epoch and minibatch, the policy's tempered logits,
//! the recipe's loss and its gradient w.r.t. the logits through the
//! [`LossStep`] seam, injected into burn's autodiff, one clipped AdamW
//! step. [`CpuLoss`] is the one implementation today: the compiled loss
//! program on the CPU kernel plan (and the fused logits kernel where the
//! recipe allows it), through the one loss driver, `LossProgram`.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{Tensor, TensorData};
use keel_compiler::batch::{self, Values};
use keel_compiler::{Checked, Diagnostic, Executor, LogitsPath, LossProgram, logits};
use keel_model::optim::{self, AdamW};
use keel_model::transformer::{Transformer, to_vec};
use serde_json::json;

use super::dir::{json_num, metric};
use super::host::set_params;
use crate::batch::inputs::provided;
use crate::batch::{Rollouts, StepInputs};
use crate::error::{Error, Result, codes};
use crate::roles::critic::Critic;
use crate::roles::response_logits;
use crate::roles::teacher::Teacher;

/// What the loss of one minibatch gives the update.
pub struct LossOut {
    pub loss: f64,
    /// d loss / d logits, [B·T·V] (empty where the program gave none).
    pub d_logits: Vec<f32>,
    /// The current policy's log-prob of each response token [B·T].
    pub logp: Vec<f32>,
    pub metrics: Vec<(String, f64)>,
    /// The critic's loss and d(value loss)/d(vpred) [B·T], where the
    /// recipe has a critic and the rows carry `vpred`.
    pub value_loss: Option<f64>,
    pub d_vpred: Vec<f32>,
}

/// The seam between the training loop and an executor of the recipe's
/// loss: given a minibatch's rows and the current policy's tempered
/// logits, the loss, its gradient w.r.t. the logits and the monitors.
pub trait LossStep {
    /// New hyperparameter values (a guard or the recipe's state changed one).
    fn set_params(&mut self, params: &HashMap<String, f64>) -> Result<()>;
    /// The hyperparameters as the recipe writes them (`--set` included).
    fn params(&self) -> HashMap<String, f64>;
    /// The loss on `part` with the logits [B·T·V] (f32, on the host).
    fn loss(&mut self, part: &Rollouts, logits: Vec<f32>, s: StepInputs) -> Result<LossOut>;
    /// A dry run on a one-token batch: an input the runtime does not
    /// produce is reported now, not after the warm start.
    fn accepts(&mut self, dry: &Rollouts, s: StepInputs) -> Result<()>;
}

/// The loss program, compiled once through the one loss driver
/// ([`LossProgram`]), and the CPU kernel plan that runs it; hyperparameter
/// values are set per step.
pub struct CpuLoss {
    program: LossProgram,
    exec: keel_compiler::kernel::Cpu,
}

impl CpuLoss {
    /// The loss of recipe `index` for the runtime's batch; `roles` says
    /// which roles' columns the run fills (`RunConfig::produces`).
    pub fn compile(
        checked: &Checked,
        index: usize,
        roles: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<CpuLoss> {
        let recipe = checked.recipes.get(index).ok_or_else(|| {
            Error::new(
                codes::LOSS_PROGRAM,
                "no recipe",
                "name a recipe with --recipe",
            )
        })?;
        // The runtime's batch: the tempered logits and what the input
        // table provides. A recipe that reads the distribution only
        // through `logp` and `entropy` takes the fused logits kernel.
        let has = |n: &str| provided(n, roles);
        let path = LogitsPath::of(recipe, &has);
        let mut program = LossProgram::compile(checked, index, path, &has).map_err(|d| {
            diag_error(
                d,
                "the recipe's loss cannot be compiled for the runtime's batch",
            )
        })?;
        // A training step reads the loss, gradients and metrics only.
        program.graph.keep_training_outputs();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut exec = keel_compiler::kernel::Cpu::new(threads, None).refusing_with(
            "the values of one step's loss",
            "lower `rollout.prompts`, `rollout.group` or `rollout.max_tokens`; KEEL_MEMORY_LIMIT=BYTES sets the limit",
        );
        exec.prepare(&program.graph)?;
        Ok(CpuLoss { program, exec })
    }

    /// (loss, gradients, metrics) on a loss batch.
    fn run(&mut self, batch: &batch::Batch) -> Result<keel_compiler::LossOutput> {
        self.exec.memory = keel_compiler::available_memory();
        let mut out = self
            .program
            .run(&mut self.exec, batch, "rollout batch")
            .map_err(|d| match d.first() {
                Some(e) if e.code == keel_compiler::codes::TOO_LARGE => Error::new(
                    codes::TOO_LARGE,
                    e.message.clone(),
                    e.help.clone().unwrap_or_default(),
                ),
                _ => diag_error(d, "the runtime's batch does not fit the recipe's loss"),
            })?;
        self.exec.recycle(std::mem::take(&mut out.rest));
        Ok(out)
    }
}

impl LossStep for CpuLoss {
    fn set_params(&mut self, params: &HashMap<String, f64>) -> Result<()> {
        set_params(&mut self.program.graph, params);
        self.exec.prepare(&self.program.graph)
    }

    fn params(&self) -> HashMap<String, f64> {
        super::host::params_of(&self.program.graph)
    }

    fn loss(&mut self, part: &Rollouts, zf: Vec<f32>, s: StepInputs) -> Result<LossOut> {
        let v = self.vocab_of(part, &zf);
        let lb = part.loss_batch(Some(zf), v, s);
        let mut out = self.run(&lb)?;
        let d_logits: Vec<f32> = match out.d_logits.take() {
            Some(Values::F32(d)) => d,
            Some(d) => d.iter().map(|x| x as f32).collect(),
            None => Vec::new(),
        };
        // The current log-probs: the fused kernel's, or the same kernel's
        // forward pass on the batch's logits.
        let logp = match (out.logp.take(), lb.tensors.get("logits")) {
            (Some(lp), _) => lp,
            (
                None,
                Some(batch::Tensor {
                    data: Values::F32(z),
                    ..
                }),
            ) => logits::forward(z, &part.tokens(), v).logp,
            _ => Vec::new(),
        };
        Ok(LossOut {
            loss: out.loss,
            d_logits,
            logp,
            metrics: out.metrics.into_iter().collect(),
            value_loss: out.value_loss,
            d_vpred: out.d_vpred.iter().map(|&x| x as f32).collect(),
        })
    }

    fn accepts(&mut self, dry: &Rollouts, s: StepInputs) -> Result<()> {
        let v = dry.vocab;
        match self.run(&dry.loss_batch(Some(vec![0.0f32; v]), v, s)) {
            Err(e) if !e.diagnostics.is_empty() => Err(e),
            _ => Ok(()),
        }
    }
}

impl CpuLoss {
    /// The vocabulary of logits [B·T·V] over `part`'s rows.
    fn vocab_of(&self, part: &Rollouts, zf: &[f32]) -> usize {
        zf.len() / (part.len() * part.t()).max(1)
    }
}

pub fn diag_error(d: Vec<Diagnostic>, what: &str) -> Error {
    let first = d.first().map(|x| x.message.clone()).unwrap_or_default();
    let mut e = Error::new(
        codes::LOSS_PROGRAM,
        format!("{what}: {first}"),
        "see the located errors above; `docs/runtime.md` lists the inputs the runtime provides",
    );
    e.diagnostics = d;
    e
}

/// Rows `0..n` in `k` contiguous chunks of near-equal size (at most `n`).
pub fn micro_chunks(n: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k)
        .map(|j| (j * n / k..(j + 1) * n / k).collect())
        .filter(|c: &Vec<usize>| !c.is_empty())
        .collect()
}

/// What the update reads: the step's knobs and the recipe's sizes.
pub struct UpdatePlan {
    pub temperature: f64,
    pub lr: f64,
    pub grad_clip: f64,
    pub epochs: usize,
    pub minibatches: usize,
    pub micro_batches: usize,
    pub z_loss: f64,
    /// The clip bounds (`clip.eps_low`, `clip.eps_high`) the clip
    /// fraction counts against.
    pub eps: (f64, f64),
    /// Whether the policy takes its step (false during `critic.warmup`:
    /// only the critic trains).
    pub actor: bool,
    /// The critic's learning rate at this step (`critic.lr`).
    pub critic_lr: f64,
}

/// What the update logs.
#[derive(Default)]
pub struct UpdateLog {
    losses: Vec<f64>,
    norms: Vec<f64>,
    clip_fracs: Vec<f64>,
    z_losses: Vec<f64>,
    value_losses: Vec<f64>,
    critic_norms: Vec<f64>,
    monitors: BTreeMap<String, Vec<f64>>,
    /// Why the step was skipped (a non-finite loss, gradient or norm).
    pub skipped: Option<String>,
}

impl UpdateLog {
    /// Its fields of the metrics line.
    pub fn write(self, line: &mut serde_json::Map<String, serde_json::Value>) {
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        if !self.losses.is_empty() {
            line.insert(metric::LOSS.into(), json!(mean(&self.losses)));
            line.insert(metric::GRAD_NORM.into(), json!(mean(&self.norms)));
            line.insert(metric::CLIP_FRAC.into(), json!(mean(&self.clip_fracs)));
            if !self.z_losses.is_empty() {
                line.insert(metric::Z_LOSS.into(), json_num(mean(&self.z_losses)));
            }
        }
        if !self.value_losses.is_empty() {
            line.insert(
                metric::VALUE_LOSS.into(),
                json_num(mean(&self.value_losses)),
            );
            line.insert(
                metric::CRITIC_GRAD_NORM.into(),
                json_num(mean(&self.critic_norms)),
            );
        }
        for (k, v) in self.monitors {
            line.insert(format!("{}{k}", metric::MONITOR), json_num(mean(&v)));
        }
    }
}

/// The update of `policy` (and the critic, where the run has one) on
/// `batch`: every epoch's minibatches, each one clipped AdamW step of each
/// model. Stops at the first non-finite loss, gradient or norm
/// (`UpdateLog::skipped`).
pub fn update(
    mut models: Models,
    loss: &mut dyn LossStep,
    batch: &Rollouts,
    plan: &UpdatePlan,
    step_in: StepInputs,
) -> Result<UpdateLog> {
    let mut log = UpdateLog::default();
    let n_groups = batch.n_groups();
    let mb = plan.minibatches.min(n_groups).max(1);
    'epochs: for epoch in 0..plan.epochs {
        for part_k in 0..mb {
            let groups: Vec<usize> = (0..n_groups).filter(|g| g % mb == part_k).collect();
            let part = if mb == 1 {
                batch.clone()
            } else {
                batch.select_groups(&groups)
            };
            let si = StepInputs {
                epoch: epoch as f64,
                ..step_in
            };
            if let Some(why) = minibatch(&mut models, loss, &part, plan, si, &mut log)? {
                log.skipped = Some(why);
                break 'epochs;
            }
        }
    }
    let policy = &mut models.policy;
    policy.params = policy.params.iter().map(|p| p.clone().detach()).collect();
    Ok(log)
}

/// The models an update trains (the policy and its optimizer, the critic)
/// and reads (the frozen teacher).
pub struct Models<'a> {
    pub policy: &'a mut Transformer,
    pub opt: &'a mut AdamW,
    pub critic: Option<&'a mut Critic>,
    pub teacher: Option<&'a Teacher>,
}

/// One minibatch's step. Gradient accumulation (`rollout.micro_batches`):
/// the logits of every micro-batch without a graph, the loss and its
/// gradient on the whole minibatch (exactly as unsplit), then each
/// micro-batch's forward again with a graph and its share of the
/// gradient, summed into one step. A critic predicts `vpred` for the whole
/// minibatch with a graph and takes its own step from `d_vpred` (the two
/// models share no weights, so their steps commute). Returns why the step
/// was skipped, if it was.
fn minibatch(
    models: &mut Models,
    loss: &mut dyn LossStep,
    part: &Rollouts,
    plan: &UpdatePlan,
    si: StepInputs,
    log: &mut UpdateLog,
) -> Result<Option<String>> {
    let (policy, opt, teacher) = (&mut *models.policy, &mut *models.opt, models.teacher);
    let mut critic = models.critic.as_deref_mut();
    let chunks = micro_chunks(part.len(), plan.micro_batches);
    let (b, t, v) = (part.len(), part.t(), policy.cfg.vocab);
    let (zf, kept) = logits_of(policy, part, &chunks, plan.temperature);
    // The roles' columns of this minibatch: the critic's `vpred` (with its
    // graph kept for the critic's step) and the teacher's logits.
    let mut filled;
    let mut vpred = None;
    let part = if critic.is_some() || teacher.is_some() {
        filled = part.clone();
        if let Some(c) = critic.as_deref_mut() {
            let (vp, flat) = c.predict(part);
            filled.put_token_column("vpred", &flat);
            vpred = Some(vp);
        }
        if let Some(teacher) = teacher {
            teacher.fill_logits(&mut filled, plan.temperature);
        }
        &filled
    } else {
        part
    };
    let out = loss.loss(part, zf, si)?;
    let l = out.loss;
    log.clip_fracs
        .push(clip_fraction(part, &out.logp, t, plan.eps));
    for (name, x) in out.metrics {
        log.monitors.entry(name).or_default().push(x);
    }
    let d_logits = out.d_logits;
    let critic_bad = vpred.is_some()
        && (out.value_loss.is_none_or(|x| !x.is_finite())
            || out.d_vpred.len() != b * t
            || out.d_vpred.iter().any(|x| !x.is_finite()));
    if !l.is_finite()
        || d_logits.len() != b * t * v
        || d_logits.iter().any(|x| !x.is_finite())
        || critic_bad
    {
        if let Some(c) = critic {
            c.detach();
        }
        return Ok(Some(format!(
            "non-finite loss or gradient (loss = {l}, value loss = {:?}); step skipped",
            out.value_loss
        )));
    }
    // Both models' gradients first: a step is taken by both or neither.
    let policy_grads = if plan.actor {
        let (grads, zl_sum) = accumulate(policy, part, &chunks, kept, &d_logits, plan);
        if !optim::global_norm(&grads).is_finite() {
            if let Some(c) = critic {
                c.detach();
            }
            return Ok(Some("non-finite gradient norm; step skipped".into()));
        }
        Some((grads, zl_sum))
    } else {
        None
    };
    if let (Some(c), Some(vp)) = (critic, vpred) {
        let Some(norm) = c.step(vp, &out.d_vpred, plan.critic_lr) else {
            return Ok(Some("non-finite critic gradient norm; step skipped".into()));
        };
        log.value_losses.push(out.value_loss.unwrap_or(f64::NAN));
        log.critic_norms.push(norm);
    }
    let Some((grads, zl_sum)) = policy_grads else {
        return Ok(None);
    };
    if plan.z_loss > 0.0 {
        log.z_losses.push(zl_sum);
    }
    let Some(norm) = optim::step_with(&mut policy.params, opt, grads, plan.grad_clip, plan.lr)
    else {
        return Ok(Some("non-finite gradient norm; step skipped".into()));
    };
    log.losses.push(l);
    log.norms.push(norm);
    Ok(None)
}

/// The minibatch's tempered logits on the host [B·T·V]; unsplit, the
/// tensor itself too (with its graph), for the backward pass.
fn logits_of(
    policy: &mut Transformer,
    part: &Rollouts,
    chunks: &[Vec<usize>],
    temperature: f64,
) -> (Vec<f32>, Option<Tensor<3>>) {
    if chunks.len() == 1 {
        policy.require_grad();
        let z = response_logits(policy, part, temperature);
        let zf = to_vec(&z);
        return (zf, Some(z));
    }
    let (b, t, v) = (part.len(), part.t(), policy.cfg.vocab);
    let mut zf = vec![0f32; b * t * v];
    for rows in chunks {
        let z = response_logits(policy, &part.select_rows(rows), temperature);
        let ts = z.dims()[1];
        let zs = to_vec(&z);
        for (i, &r) in rows.iter().enumerate() {
            for j in 0..ts {
                zf[(r * t + j) * v..(r * t + j + 1) * v]
                    .copy_from_slice(&zs[(i * ts + j) * v..(i * ts + j + 1) * v]);
            }
        }
    }
    (zf, None)
}

/// The share of response tokens whose current ratio lies outside
/// [1 − eps_low, 1 + eps_high].
fn clip_fraction(part: &Rollouts, logp: &[f32], t: usize, eps: (f64, f64)) -> f64 {
    let (mut cf, mut cn) = (0.0, 0.0);
    for (row, r) in part.rows.iter().enumerate() {
        for j in 0..r.response.len() {
            let ratio =
                (logp.get(row * t + j).map_or(f64::NAN, |&x| x as f64) - r.old_logp[j]).exp();
            cf += f64::from(u8::from(ratio < 1.0 - eps.0 || ratio > 1.0 + eps.1));
            cn += 1.0;
        }
    }
    cf / f64::max(cn, 1.0)
}

/// Each micro-batch's backward pass with its share of `d_logits` (and the
/// z-loss, `model.z_loss`: coef · mean over the minibatch's response
/// tokens of logsumexp(z)²); the gradients summed, and the z-loss's sum.
fn accumulate(
    policy: &mut Transformer,
    part: &Rollouts,
    chunks: &[Vec<usize>],
    mut kept: Option<Tensor<3>>,
    d_logits: &[f32],
    plan: &UpdatePlan,
) -> (Vec<Tensor<2>>, f64) {
    let dev = policy.device.clone();
    let (t, v) = (part.t(), policy.cfg.vocab);
    let mask = part.mask();
    // z_loss's mean runs over the minibatch's response tokens.
    let n_mask = mask.iter().sum::<f64>().max(1.0) as f32;
    let mut acc: Option<Vec<Tensor<2>>> = None;
    let mut zl_sum = 0.0;
    for rows in chunks {
        let (z, ts) = match kept.take() {
            Some(z) => (z, t),
            None => {
                policy.require_grad();
                let z = response_logits(policy, &part.select_rows(rows), plan.temperature);
                let ts = z.dims()[1];
                (z, ts)
            }
        };
        let bs = rows.len();
        let mut ds = vec![0f32; bs * ts * v];
        let mut ms = vec![0f32; bs * ts];
        for (i, &r) in rows.iter().enumerate() {
            for j in 0..ts {
                ds[(i * ts + j) * v..(i * ts + j + 1) * v]
                    .copy_from_slice(&d_logits[(r * t + j) * v..(r * t + j + 1) * v]);
                ms[i * ts + j] = mask[r * t + j] as f32;
            }
        }
        let d = Tensor::<3>::from_data(TensorData::new(ds, [bs, ts, v]), &dev);
        // The recipe's gradient w.r.t. the logits enters burn's autodiff
        // as the linear term <z, D>, whose derivative is D.
        let mut surrogate = (z.clone() * d).sum();
        if plan.z_loss > 0.0 {
            let m = z.clone().max_dim(2).detach();
            let lse = (z - m.clone()).exp().sum_dim(2).log() + m;
            let mt = Tensor::<3>::from_data(TensorData::new(ms, [bs, ts, 1]), &dev);
            let zl = (lse.powf_scalar(2.0) * mt).sum().div_scalar(n_mask);
            zl_sum += to_vec(&zl).first().copied().unwrap_or(f32::NAN) as f64;
            surrogate = surrogate + zl.mul_scalar(plan.z_loss);
        }
        let grads = surrogate.backward();
        let g = optim::param_grads(&policy.params, &grads);
        acc = Some(match acc {
            None => g,
            Some(a) => a.into_iter().zip(g).map(|(a, g)| a + g).collect(),
        });
    }
    (acc.unwrap_or_default(), zl_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_are_contiguous_and_near_equal() {
        assert_eq!(
            micro_chunks(12, 3),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]
        );
        assert_eq!(micro_chunks(2, 4), vec![vec![0], vec![1]]);
        assert_eq!(micro_chunks(5, 2), vec![vec![0, 1], vec![2, 3, 4]]);
    }
}
