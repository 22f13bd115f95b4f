//! A recipe's critic as verl runs one: verl's critic path is fixed code
//! (`compute_gae_advantage_return`, then `compute_value_loss`), so a recipe
//! with a critic exports only where its credit *is* verl's GAE and its
//! `critic.loss` *is* verl's clipped value loss. Both are recognised by
//! value on probe batches (variable lengths, predictions inside and outside
//! the clip range), as the divergence and entropy terms are; anything else
//! is refused with the reason (E0803).

use std::collections::HashMap;

use keel_check::{Checked, Setting};
use keel_ir::LogitsPath;
use keel_ir::interp::{self, Env, Shape};

/// What verl's critic path needs (`algorithm.gamma`, `algorithm.lam`,
/// `critic.cliprange_value`, `critic.loss_agg_mode`).
#[derive(Clone, Debug, PartialEq)]
pub struct VerlCritic {
    pub gamma: f64,
    pub lam: f64,
    pub cliprange_value: f64,
    /// verl's name of `critic.reduce`.
    pub loss_agg_mode: String,
}

/// `Ok(None)`: the recipe has no critic (reads neither `values` nor
/// `vpred`); `Ok(Some)`: its credit and value loss are verl's; `Err`: why
/// verl cannot run them.
pub fn verl_critic(checked: &Checked, index: usize) -> Result<Option<VerlCritic>, String> {
    let Some(recipe) = checked.recipes.get(index) else {
        return Ok(None);
    };
    if !recipe.inputs.contains_key("values") && !recipe.inputs.contains_key("vpred") {
        return Ok(None);
    }
    let has = keel_ir::lower::EngineReward(|n: &str| {
        !matches!(n, "logits" | "advantages" | "teacher_logits" | "old_logits")
    });
    let compiled = keel_ir::compile_loss_for(checked, index, &has, LogitsPath::Program)
        .map_err(|d| d.first().map(|d| d.message.clone()).unwrap_or_default())?;
    let g = &compiled.graph;
    let (Some(adv), Some(vl)) = (g.output("advantages"), g.output("value_loss")) else {
        return Err("verl's critic needs both a credit and a `critic.loss`".into());
    };
    let num = |sec: &str, key: &str| match recipe.setting(sec, key) {
        Some(Setting::Num(x)) => Some(x),
        _ => None,
    };
    let (gamma, lam) = (num("credit", "gamma"), num("credit", "lam"));
    let (Some(gamma), Some(lam)) = (gamma, lam) else {
        return Err("verl's GAE takes `credit.gamma` and `credit.lam` as numbers; the credit has no constant `gamma` and `lam`".into());
    };
    let mode = match recipe.setting("critic", "reduce") {
        Some(Setting::Sym(s)) => s,
        _ => "token_mean".into(),
    };
    if mode == "seq_mean_token_sum_norm" {
        return Err("verl's critic has no `loss_scale_factor` of its own: `critic.reduce = seq_mean_token_sum_norm` is not exported".into());
    }
    let probe = Probe::new();
    let vals = probe
        .run(g, &[adv, vl])
        .ok_or("the credit or `critic.loss` reads an input verl's critic path does not give (it has the rewards, `values`, `vpred` and the mask)")?;
    let want_adv = probe.gae(gamma, lam);
    if !probe.close_tokens(&vals[adv], &want_adv, 1e-9) {
        return Err(format!(
            "the credit is not verl's GAE (`compute_gae_advantage_return` with gamma {gamma}, lam {lam}, then masked whitening)"
        ));
    }
    // The clip range: one of the critic's own constants.
    let returns = probe.returns(gamma, lam);
    let got = vals[vl].first().copied().unwrap_or(f64::NAN);
    let candidates: Vec<f64> = recipe
        .values
        .iter()
        .filter(|v| v.section == "critic")
        .filter_map(|v| num("critic", &v.name))
        .filter(|c| *c > 0.0)
        .collect();
    let c = candidates
        .into_iter()
        .find(|&c| {
            let want = probe.value_loss(&returns, c, &mode);
            (got - want).abs() <= 1e-9 * want.abs().max(1.0)
        })
        .ok_or("`critic.loss` is not verl's clipped value loss (`compute_value_loss`: half the larger of the squared errors of `vpred` and of `vpred` clipped to a constant of the critic's section around `values`)")?;
    Ok(Some(VerlCritic {
        gamma,
        lam,
        cliprange_value: c,
        loss_agg_mode: mode.replace('_', "-"),
    }))
}

/// A probe batch: 5 responses of lengths 1 to 7 (padded to 7), rewards,
/// rollout-time values and update-time predictions, some far from the
/// values (clipped), some near.
struct Probe {
    b: usize,
    t: usize,
    mask: Vec<f64>,
    inputs: HashMap<String, Vec<f64>>,
}

impl Probe {
    fn new() -> Probe {
        let (b, t) = (5, 7);
        let lengths = [7usize, 3, 1, 5, 6];
        let mut mask = vec![0.0; b * t];
        let mut values = vec![0.0; b * t];
        let mut vpred = vec![0.0; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            for j in 0..t {
                let k = r * t + j;
                if j < len {
                    mask[k] = 1.0;
                }
                let h = ((k * 7919 + 13) % 101) as f64 / 101.0;
                values[k] = h - 0.4;
                // Every third token moves beyond any clip range below 1.
                let step = if k % 3 == 0 { 1.7 } else { 0.13 };
                vpred[k] = values[k] + if k % 2 == 0 { step } else { -step };
            }
        }
        let mut inputs = HashMap::new();
        inputs.insert("reward".into(), vec![1.0, 0.0, 0.5, -0.3, 2.0]);
        inputs.insert("values".into(), values);
        inputs.insert("vpred".into(), vpred);
        inputs.insert("mask".into(), mask.clone());
        inputs.insert("length".into(), lengths.iter().map(|&l| l as f64).collect());
        inputs.insert(
            "position".into(),
            (0..b * t).map(|k| (k % t) as f64).collect(),
        );
        Probe { b, t, mask, inputs }
    }

    /// The values of `ids` (only what they read is evaluated).
    fn run(&self, g: &keel_ir::ir::Graph, ids: &[usize]) -> Option<Vec<Vec<f64>>> {
        let mut g = g.clone();
        g.outputs = ids.iter().map(|&i| (format!("v{i}"), i)).collect();
        let env = Env {
            shape: Shape {
                b: self.b,
                t: self.t,
                v: 0,
                group_of: (0..self.b).collect(),
                n_groups: self.b,
            },
            mask: &self.mask,
            inputs: &self.inputs,
        };
        interp::run_with(&g, &env, None).ok()
    }

    fn col(&self, name: &str) -> &[f64] {
        self.inputs.get(name).map_or(&[][..], Vec::as_slice)
    }

    /// verl's GAE before whitening (the outcome reward on the last valid
    /// token; mask-0 tokens carry the next value and the running GAE).
    fn raw_gae(&self, gamma: f64, lam: f64) -> Vec<f64> {
        let (values, mask, reward) = (self.col("values"), &self.mask, self.col("reward"));
        let len = self.col("length");
        let mut out = vec![0.0; self.b * self.t];
        for r in 0..self.b {
            let (mut next_v, mut last) = (0.0, 0.0);
            for j in (0..self.t).rev() {
                let k = r * self.t + j;
                let rew = if j + 1 == len[r] as usize {
                    reward[r]
                } else {
                    0.0
                };
                let delta = rew + gamma * next_v - values[k];
                let gae = delta + gamma * lam * last;
                next_v = values[k] * mask[k] + (1.0 - mask[k]) * next_v;
                last = gae * mask[k] + (1.0 - mask[k]) * last;
                out[k] = last;
            }
        }
        out
    }

    /// The returns: GAE + values, before whitening.
    fn returns(&self, gamma: f64, lam: f64) -> Vec<f64> {
        let v = self.col("values");
        self.raw_gae(gamma, lam)
            .iter()
            .zip(v)
            .map(|(a, b)| a + b)
            .collect()
    }

    /// verl's `masked_whiten` of the GAE (unbiased variance, eps 1e-8),
    /// masked.
    fn gae(&self, gamma: f64, lam: f64) -> Vec<f64> {
        let a = self.raw_gae(gamma, lam);
        let m = &self.mask;
        let n: f64 = m.iter().sum();
        let mean = a.iter().zip(m).map(|(x, w)| x * w).sum::<f64>() / n;
        let var = a
            .iter()
            .zip(m)
            .map(|(x, w)| w * (x - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        a.iter()
            .zip(m)
            .map(|(x, w)| w * (x - mean) / (var + 1e-8).sqrt())
            .collect()
    }

    /// verl's `compute_value_loss` with clip range `c` and aggregation `mode`.
    fn value_loss(&self, returns: &[f64], c: f64, mode: &str) -> f64 {
        let (v, vp) = (self.col("values"), self.col("vpred"));
        let per: Vec<f64> = (0..self.b * self.t)
            .map(|k| {
                let clipped = vp[k].clamp(v[k] - c, v[k] + c);
                let a = (vp[k] - returns[k]).powi(2);
                let b = (clipped - returns[k]).powi(2);
                a.max(b)
            })
            .collect();
        let m = &self.mask;
        let agg = match mode {
            "token_mean" => {
                per.iter().zip(m).map(|(x, w)| x * w).sum::<f64>() / m.iter().sum::<f64>()
            }
            _ => {
                let mut total = 0.0;
                for r in 0..self.b {
                    let row = r * self.t..(r + 1) * self.t;
                    let s: f64 = row.clone().map(|k| per[k] * m[k]).sum();
                    let n: f64 = row.map(|k| m[k]).sum();
                    total += if mode == "seq_mean_token_mean" {
                        s / (n + 1e-8)
                    } else {
                        s
                    };
                }
                total / self.b as f64
            }
        };
        0.5 * agg
    }

    fn close_tokens(&self, got: &[f64], want: &[f64], tol: f64) -> bool {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .zip(&self.mask)
                .all(|((a, b), w)| *w == 0.0 || (a - b).abs() <= tol * b.abs().max(1.0))
    }
}
