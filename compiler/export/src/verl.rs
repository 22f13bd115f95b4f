//! `--target verl`: the recipe's loss and credit where verl 0.9.1 calls its
//! own.
//!
//! Each term of the loss (`LossTerm`) goes to the place in verl that
//! computes the same thing, decided from what the term computes, never
//! from the method's name:
//! - the objective, when it reads only what verl hands a registered policy
//!   loss (`log_prob`, `old_log_prob`, `advantages`, `response_mask`),
//!   becomes a function registered with `register_policy_loss`;
//! - a divergence that equals one of verl's `kl_penalty` types (value and
//!   gradient, probed with the reference interpreter), on every token, with
//!   a constant coefficient, becomes `use_kl_loss`, `kl_loss_type`,
//!   `kl_loss_coef`; an entropy term `s · entropy` becomes `entropy_coeff`;
//! - anything else that reads only what verl's `ppo_loss` sees (also
//!   `ref_log_prob` and `entropy`) makes the package replace `ppo_loss` as a
//!   whole, every term aggregated by verl's `agg_loss`.
//!
//! The credit becomes a registered advantage estimator (`verl_estimator`).
//! What verl cannot run is refused with a located E08xx diagnostic; with
//! `allow_partial` the sections outside the loss are dropped and listed.

use crate::engine::{
    Engine, credit_and_outside, inputs_of, loss_input_refusals, readme_lists, term_roots,
};
use crate::torch::{Keep, forward_source};
use crate::{Package, RUNTIME, package_name, pyproject, python_terms, with_terms};
use keel_check::builtins::Level;
use keel_check::{Checked, Diagnostic, Label, codes};
use keel_ir::LogitsPath;
use keel_ir::interp::{self, Env, Shape};
use keel_ir::ir::{Graph, NodeId};
use keel_ir::lower::LossTerm;
use std::collections::HashMap;

/// The verl release the package is written for (and checks at import).
pub const VERL_VERSION: &str = "0.9.1";

/// What verl's registered policy loss is given, by Keel's names (and what
/// Keel derives from the mask).
const POLICY_INPUTS: &[&str] = &[
    "logp",
    "old_logp",
    "advantages",
    "mask",
    "position",
    "length",
    "index",
];

/// What verl's `ppo_loss` sees besides: the reference policy's log-probs
/// and the entropy.
const PPO_LOSS_INPUTS: &[&str] = &["ref_logp", "entropy"];

/// A verl package and what was left out of it.
#[derive(Clone, Debug)]
pub struct VerlExport {
    pub package: Package,
    /// What `--allow-partial` dropped, one line each (also in the README).
    pub dropped: Vec<String>,
    /// Where verl computes something differently, one line each (README).
    pub caveats: Vec<String>,
    /// The recipe's settings verl has no place for (README, command line).
    pub unmapped: Vec<String>,
    /// How the loss reaches verl: `policy_loss` (a registered policy loss,
    /// with verl's own KL and entropy terms) or `ppo_loss` (the whole loss).
    pub mode: &'static str,
}

/// verl's name of a Keel reduction.
fn verl_mode(mode: &str) -> String {
    mode.replace('_', "-")
}

/// `g` computing only `ids` (the interpreter evaluates every output).
fn only(g: &Graph, ids: &[NodeId]) -> Graph {
    let mut sub = g.clone();
    sub.outputs = ids.iter().map(|&i| (format!("v{i}"), i)).collect();
    sub
}

/// Evaluate `g` on a one-token-per-row probe batch where `inputs`
/// gives each input's value per row; with `frozen`, the values of the
/// nodes that pass no gradient are taken from it (see `interp::run_with`).
fn probe(
    g: &Graph,
    inputs: &HashMap<String, Vec<f64>>,
    rows: usize,
    frozen: Option<&[Vec<f64>]>,
) -> Option<Vec<Vec<f64>>> {
    let mask = vec![1.0; rows];
    let mut inputs = inputs.clone();
    inputs.insert("mask".into(), mask.clone());
    let inputs = &inputs;
    let env = Env {
        shape: Shape {
            b: rows,
            t: 1,
            v: 0,
            group_of: vec![0; rows],
            n_groups: 1,
        },
        mask: &mask,
        inputs,
    };
    interp::run_with(g, &env, frozen).ok()
}

/// The value of a node that reads no input (a hyperparameter, a constant).
fn constant(g: &Graph, id: NodeId) -> Option<f64> {
    if inputs_of(g, &[id]).iter().any(|n| n != "mask") {
        return None;
    }
    let vals = probe(&only(g, &[id]), &HashMap::new(), 1, None)?;
    vals.get(id)?.first().copied()
}

/// verl's `kl_penalty` of type `kind` (`k1`, `abs`, `k2`, `low_var_kl`) and
/// its derivative in `logprob`, with `d = logprob - ref_logprob`.
fn verl_kl(kind: &str, lp: f64, rf: f64) -> (f64, f64) {
    let d = lp - rf;
    match kind {
        "k1" => (d, 1.0),
        "abs" => (d.abs(), d.signum()),
        "k2" => (0.5 * d * d, d),
        _ => {
            let kl = (rf - lp).clamp(-20.0, 20.0);
            let inner = (rf - lp).abs() < 20.0;
            let kld = kl.exp() - kl - 1.0;
            let g = if inner && kld.abs() < 10.0 {
                1.0 - kl.exp()
            } else {
                0.0
            };
            (kld.clamp(-10.0, 10.0), g)
        }
    }
}

/// The verl `kl_loss_type` whose value and gradient the divergence term's
/// token matrix equals on probes spanning verl's clamps, if one does.
fn match_kl(g: &Graph, t: &LossTerm) -> Option<&'static str> {
    let (v, w) = t.matrix?;
    let reads = inputs_of(g, &[v, w]);
    if reads
        .iter()
        .any(|n| !["logp", "ref_logp", "mask"].contains(&n.as_str()))
    {
        return None;
    }
    // Log-ratios from -26 to 26, away from the clamps' corners.
    let mut lp = Vec::new();
    let mut rf = Vec::new();
    for k in 0..96 {
        let d = -26.0 + 52.0 * (k as f64 + 0.37) / 96.0;
        let base = -0.5 - 3.0 * ((k * 7919) % 97) as f64 / 97.0;
        lp.push(base);
        rf.push(base - d);
    }
    let rows = lp.len();
    let g = &only(g, &[v, w]);
    let mut inp = HashMap::new();
    inp.insert("logp".to_string(), lp.clone());
    inp.insert("ref_logp".to_string(), rf.clone());
    let at = probe(g, &inp, rows, None)?;
    if at[w].iter().any(|&x| x != 1.0) {
        return None;
    }
    let h = 1e-6;
    let shifted = |s: f64| {
        let mut i = inp.clone();
        i.insert("logp".into(), lp.iter().map(|x| x + s).collect());
        probe(g, &i, rows, Some(&at)).map(|r| r[v].clone())
    };
    let (up, down) = (shifted(h)?, shifted(-h)?);
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0);
    for base in ["k1", "abs", "k2", "low_var_kl"] {
        let value_ok = (0..rows).all(|i| close(at[v][i], verl_kl(base, lp[i], rf[i]).0, 1e-12));
        if !value_ok {
            continue;
        }
        let fd: Vec<f64> = (0..rows).map(|i| (up[i] - down[i]) / (2.0 * h)).collect();
        if (0..rows).all(|i| close(fd[i], verl_kl(base, lp[i], rf[i]).1, 1e-5)) {
            return Some(base);
        }
        // verl's `+` types: the value of `base`, the gradient of k2.
        if base != "k2" && (0..rows).all(|i| close(fd[i], lp[i] - rf[i], 1e-5)) {
            return Some(match base {
                "k1" => "k1+",
                "abs" => "abs+",
                _ => "low_var_kl+",
            });
        }
    }
    None
}

/// `s` when the entropy term's token matrix is `s · entropy` on every
/// token (verl's `entropy_coeff` is then `-s · coef`).
fn match_entropy(g: &Graph, t: &LossTerm) -> Option<f64> {
    let (v, w) = t.matrix?;
    let reads = inputs_of(g, &[v, w]);
    if reads
        .iter()
        .any(|n| !["entropy", "mask"].contains(&n.as_str()))
    {
        return None;
    }
    let e: Vec<f64> = (0..40).map(|k| -2.0 + 0.173 * k as f64).collect();
    let g = &only(g, &[v, w]);
    let mut inp = HashMap::new();
    inp.insert("entropy".to_string(), e.clone());
    let at = probe(g, &inp, e.len(), None)?;
    if at[w].iter().any(|&x| x != 1.0) {
        return None;
    }
    let one = e.iter().position(|&x| x != 0.0)?;
    let s = at[v][one] / e[one];
    let linear = e
        .iter()
        .zip(&at[v])
        .all(|(x, y)| (s * x - y).abs() <= 1e-12 * y.abs().max(1.0));
    linear.then_some(s)
}

/// Export recipe `index` of `checked` for verl. `Err` holds every refusal
/// (E0800: an input verl does not give; E0801: a guard; E0802: a section
/// outside the loss); with `allow_partial`, E0801, E0802 and a credit that
/// cannot be exported are dropped and listed instead.
pub fn verl_package(
    checked: &Checked,
    index: usize,
    source: &str,
    allow_partial: bool,
) -> Result<VerlExport, Vec<Diagnostic>> {
    let recipe = checked.recipes.get(index).ok_or_else(Vec::new)?;
    let merged = checked.merged.get(index).ok_or_else(Vec::new)?;
    let available = |n: &str| POLICY_INPUTS.contains(&n) || PPO_LOSS_INPUTS.contains(&n);
    let reads_vocab = LogitsPath::fusable(recipe);
    // The engine's reward functions give `reward`.
    let has = keel_ir::lower::EngineReward(|n: &str| {
        n == "advantages" || (n != "logits" || !reads_vocab)
    });
    let compiled = keel_ir::compile_loss_for(checked, index, &has, LogitsPath::Program)?;
    let g = &compiled.graph;
    let mut refused = Vec::new();
    let mut dropped = Vec::new();
    let mut caveats = Vec::new();

    // The loss: every term must read only what ppo_loss sees.
    let mut full = false;
    let mut kl = None;
    let mut entropy_coeff = None;
    let engine = Engine {
        name: "verl",
        loss_sees: "verl's loss sees log_prob, old_log_prob, advantages, response_mask, ref_log_prob and entropy",
        credit_help: "verl's estimators get token_level_rewards, response_mask and the group uids: write the credit over reward, mask and group, or pass --allow-partial to export the loss alone and set algorithm.adv_estimator to one of verl's",
        credit_dropped: "set `algorithm.adv_estimator` to one of verl's",
        reward_fn: "verl's reward manager: `custom_reward_function.path` and `.name`, or the default `compute_score` of each `data_source`",
    };
    refused.extend(loss_input_refusals(recipe, &compiled, &available, &engine));
    for t in &compiled.terms {
        let reads = inputs_of(g, &term_roots(t));
        let coef = t.coef.map(|c| constant(g, c));
        match t.section.as_str() {
            "objective" => {
                full |= reads.iter().any(|n| !POLICY_INPUTS.contains(&n.as_str()));
            }
            "divergence" => match (match_kl(g, t), coef) {
                (Some(kind), Some(Some(c))) => kl = Some((kind, c)),
                (Some(kind), None) => kl = Some((kind, 1.0)),
                _ => full = true,
            },
            "entropy" => match (match_entropy(g, t), coef) {
                (Some(s), Some(Some(c))) => entropy_coeff = Some(-s * c),
                (Some(s), None) => entropy_coeff = Some(-s),
                _ => full = true,
            },
            _ => full = true,
        }
    }
    let objective = compiled.terms.first();
    let mode = objective.map_or("token_mean".to_string(), |t| t.mode.clone());
    let scale = objective
        .and_then(|t| t.norm)
        .and_then(|n| constant(g, n))
        .filter(|_| mode == "seq_mean_token_sum_norm");
    let norm_varies = mode == "seq_mean_token_sum_norm" && scale.is_none();
    if norm_varies {
        caveats.push("`objective.norm` is not a constant: `loss_scale_factor` is left unset, and verl divides by the micro-batch's longest response where Keel divides by the batch's padded length; set `actor_rollout_ref.actor.loss_scale_factor` (e.g. to `data.max_response_length`) for a constant".to_string());
    }

    // A critic: verl's own GAE and value loss, recognised, or refused.
    let critic = critic_or_refusal(checked, index, allow_partial, &mut refused, &mut dropped);
    // The credit: a registered estimator (or verl's GAE, with a critic), or
    // refused; then what runs outside the loss.
    let (estimator, has_credit) = credit_and_outside(
        checked,
        index,
        source,
        &engine,
        allow_partial,
        // A critic's credit is verl's GAE or refused with the critic (E0803).
        recipe.inputs.contains_key("values") || recipe.inputs.contains_key("vpred"),
        (&mut refused, &mut dropped),
    );
    if !refused.is_empty() {
        return Err(refused);
    }

    let name = package_name(&recipe.name);
    let (graph, terms) = with_terms(&compiled);
    // Only the terms: the metrics may read what verl does not give.
    let loss_py = forward_source(&graph, &recipe.name, source, Keep::Prefix("term."));
    let terms_py = python_terms(&terms);
    let mut files = vec![
        (format!("{name}/_keel.py"), RUNTIME.to_string()),
        (format!("{name}/loss.py"), format!("{loss_py}{terms_py}")),
    ];
    if !full {
        let objective = forward_source(
            &graph,
            &recipe.name,
            source,
            Keep::Prefix("term.objective."),
        );
        files.push((format!("{name}/objective.py"), objective));
    }
    let mut imports = Vec::new();
    let estimator = match &critic {
        Some(_) => Err("verl's own `gae`".to_string()),
        None => estimator,
    };
    if let Ok(est) = &estimator {
        files.extend(est.iter().cloned());
        imports.push("verl_adv");
    }
    let reads: Vec<String> = inputs_of(
        g,
        &compiled
            .terms
            .iter()
            .flat_map(term_roots)
            .collect::<Vec<_>>(),
    );
    let reads_ref = reads.iter().any(|n| n == "ref_logp");
    let reads_entropy = reads.iter().any(|n| n == "entropy");
    let scale_py = scale.map_or("None".to_string(), torch_float);
    let verl_mode_s = verl_mode(&mode);
    let loss_module = if full {
        ppo_loss_module(
            &recipe.name,
            &name,
            &verl_mode_s,
            &scale_py,
            reads_ref,
            reads_entropy,
        )
    } else {
        policy_loss_module(&recipe.name, &name, &verl_mode_s, &scale_py)
    };
    files.push((format!("{name}/verl_loss.py"), loss_module));
    imports.push("verl_loss");
    let init = format!(
        r#""""Keel recipe `{r}` for verl {VERL_VERSION}, written by `keel export --target verl`.

Importing it registers the recipe's loss (and credit) with verl; see README.md.
"""

import verl as _verl

if _verl.__version__ != "{VERL_VERSION}":
    raise ImportError(
        "{name} was exported for verl {VERL_VERSION}, found verl " + _verl.__version__
        + ": re-export the recipe with a keel built for this verl, or install verl=={VERL_VERSION}"
    )

from . import {imports}  # noqa: E402,F401  (registers with verl)
from .loss import INPUTS, OUTPUTS, PARAMS, RECIPE, TERMS, forward  # noqa: E402,F401

NAME = "{name}"
"#,
        r = recipe.name,
        imports = imports.join(", "),
    );
    files.push((format!("{name}/__init__.py"), init));

    // The Hydra overrides.
    let mut ov: Vec<String> = Vec::new();
    let a = "actor_rollout_ref.actor";
    if estimator.is_ok() {
        ov.push(format!("algorithm.adv_estimator={name}"));
    }
    if let Some(c) = &critic {
        ov.extend(critic_overrides(checked, index, c));
    }
    ov.push(format!(
        "{a}.policy_loss.loss_mode={}",
        if full { "vanilla" } else { name.as_str() }
    ));
    ov.push(format!("{a}.loss_agg_mode={verl_mode_s}"));
    if let Some(s) = scale {
        // An int in verl's ActorConfig.
        let f = if s.fract() == 0.0 && s.abs() < 1e15 {
            format!("{}", s as i64)
        } else {
            torch_float(s)
        };
        ov.push(format!("{a}.loss_scale_factor={f}"));
    }
    match (full, kl) {
        (false, Some((kind, c))) => {
            ov.push(format!("{a}.use_kl_loss=True"));
            ov.push(format!("{a}.kl_loss_type={kind}"));
            ov.push(format!("{a}.kl_loss_coef={}", torch_float(c)));
        }
        // The replacement computes the divergence itself; verl computes the
        // reference log-probs only when `use_kl_loss` is on.
        (true, _) if reads_ref => {
            ov.push(format!("{a}.use_kl_loss=True"));
            ov.push(format!("{a}.kl_loss_coef=0.0"));
        }
        _ => ov.push(format!("{a}.use_kl_loss=False")),
    }
    match (full, entropy_coeff) {
        (false, Some(c)) => ov.push(format!("{a}.entropy_coeff={}", torch_float(c))),
        _ => ov.push(format!("{a}.entropy_coeff=0.0")),
    }
    if full && reads_entropy {
        ov.push(format!("{a}.calculate_entropy=True"));
    }
    let settings = crate::settings::verl(checked, index);
    for (k, v) in &settings.set {
        ov.push(format!("{k}={v}"));
    }
    caveats.extend(settings.caveats.iter().cloned());
    ov.push(format!(
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES={name}"
    ));
    let overrides = ov.join("\n") + "\n";

    let run_sh = format!(
        r#"#!/usr/bin/env bash
# Train Keel recipe `{r}` with verl {VERL_VERSION}: written by `keel export --target verl`.
# Usage: ./run.sh data.train_files=... actor_rollout_ref.model.path=... [more overrides]
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
export PYTHONPATH="$here${{PYTHONPATH:+:$PYTHONPATH}}"
# Every verl process imports the package (verl/__init__.py reads this).
export VERL_USE_EXTERNAL_MODULES={name}
# Fail fast, in the driver, before Ray starts: the import checks verl's version
# and registers the loss.
python -c "import {name}"
mapfile -t overrides < <(grep -v '^#' "$here/overrides.txt" | sed '/^$/d')
exec python -m verl.trainer.main_ppo "${{overrides[@]}}" \
    "+ray_kwargs.ray_init.runtime_env.py_modules=[$here/{name}]" "$@"
"#,
        r = recipe.name,
    );
    files.push(("overrides.txt".into(), overrides.clone()));
    files.push(("run.sh".into(), run_sh));
    files.push((
        "pyproject.toml".into(),
        pyproject(
            &name,
            &format!("Keel recipe `{}` for verl {VERL_VERSION}", recipe.name),
            "3.10",
            &format!("\"verl=={VERL_VERSION}\""),
        ),
    ));

    // The README: every section and where it went.
    let batch_stats = compiled
        .terms
        .iter()
        .filter_map(|t| t.matrix)
        .any(|(v, _)| batch_statistic(g, v));
    let mut md = format!(
        "# `{r}` for verl {VERL_VERSION}\n\nWritten by `keel export --target verl` from `{source}`; do not edit: change the recipe and export again.\n\n```sh\n./run.sh data.train_files=TRAIN.parquet data.val_files=VAL.parquet actor_rollout_ref.model.path=MODEL\n```\n\n`run.sh` imports `{name}` in the driver first (it checks verl's version and registers the loss), then starts `python -m verl.trainer.main_ppo` with `overrides.txt` and ships the package to every Ray worker (`VERL_USE_EXTERNAL_MODULES`, `py_modules`).\n\n| recipe | in verl |\n| --- | --- |\n",
        r = recipe.name,
    );
    if let Some(c) = &critic {
        md.push_str(&format!("| `credit` | verl's own GAE: `algorithm.adv_estimator=gae`, `algorithm.gamma={}`, `algorithm.lam={}` (recognised by value: `compute_gae_advantage_return`, then masked whitening) |\n| `critic` | verl's critic (the model with a fresh value head): `critic.cliprange_value={}`, `critic.loss_agg_mode={}` (recognised by value: `compute_value_loss`), `critic.optim.lr`, `critic.optim.weight_decay`, `critic.grad_clip`, `trainer.critic_warmup`; give `critic.model.path` (the actor's, as Keel starts the critic from the policy) |\n", torch_float(c.gamma), torch_float(c.lam), torch_float(c.cliprange_value), c.loss_agg_mode));
    }
    match &estimator {
        Err(_) if critic.is_some() => {}
        Ok(_) => md.push_str(&format!("| `credit` | `algorithm.adv_estimator={name}`, registered by `{name}.verl_adv` (`register_adv_est`); group statistics over the uids (`index`), taken over the whole step's batch |\n")),
        Err(_) if !has_credit => md.push_str("| (no `credit`) | the loss reads no advantages; verl's `algorithm.adv_estimator` is left as configured |\n"),
        Err(why) => md.push_str(&format!("| `credit` | dropped ({why}): choose `algorithm.adv_estimator` yourself |\n")),
    }
    if full {
        md.push_str(&format!("| `objective`, `divergence`, `entropy` | the whole loss replaces verl's `ppo_loss` (`{name}.verl_loss` replaces `verl.workers.utils.losses.ppo_loss`, which `verl.workers.engine_workers` binds at import and the actor uses at `init_model`); each term is aggregated by verl's `agg_loss` with `global_batch_info` |\n"));
    } else {
        md.push_str(&format!("| `objective` | `policy_loss.loss_mode={name}` (`register_policy_loss`), aggregated by `agg_loss(..., **config.global_batch_info)` |\n"));
        if let Some((kind, c)) = kl {
            md.push_str(&format!("| `divergence` | verl's own KL loss: `use_kl_loss=True`, `kl_loss_type={kind}`, `kl_loss_coef={}` (equal in value and gradient) |\n", torch_float(c)));
        }
        if let Some(c) = entropy_coeff {
            md.push_str(&format!(
                "| `entropy` | verl's own entropy term: `entropy_coeff={}` |\n",
                torch_float(c)
            ));
        }
    }
    md.push_str(&format!(
        "| `objective.reduce = {mode}` | `loss_agg_mode={verl_mode_s}`{} |\n",
        scale.map_or(String::new(), |s| format!(
            ", `loss_scale_factor={}`",
            torch_float(s)
        ))
    ));
    md.push_str("| `rollout`, `optimizer` | `data.train_batch_size` (prompts), `rollout.n` (group), `ppo_mini_batch_size` (prompts ÷ minibatches), `ppo_micro_batch_size_per_gpu` (samples ÷ minibatches ÷ micro_batches), `ppo_epochs`, `temperature`, `top_p`, `data.max_response_length`, `trainer.total_training_steps`, `optim.lr` and its schedule, `optim.optimizer`, `weight_decay`, `betas`, `clip_grad`: the recipe's values, Keel's defaults where it writes none (see `overrides.txt`) |\n");
    if merged.section("monitor").is_some() {
        md.push_str("| `monitor` | not exported: verl logs its own actor metrics (`actor/pg_loss`, `actor/keel_*`, KL, entropy) |\n");
    }
    md.push_str(&format!(
        "\nThe overrides (`overrides.txt`):\n\n```\n{overrides}```\n"
    ));
    for t in compiled.terms.iter().filter(|t| t.matrix.is_none()) {
        caveats.push(format!("the `{}` term is one number for the batch: verl computes it on each micro-batch and weights it by the micro-batch's share of the mini-batch's tokens, which equals Keel's value only when the loss is computed on the whole mini-batch at once", t.section));
    }
    if batch_stats {
        caveats.push(
            "the loss's statistics over `batch` are taken over verl's micro-batch on one rank"
                .to_string(),
        );
        md.push_str("\n**Batch statistics in the loss.** verl calls the loss on one micro-batch of one rank: the loss's statistics over `batch` are that micro-batch's, as verl's own `kl_cov` is (Keel's runtime takes them over the whole mini-batch).\n");
    }
    md.push_str("\n**Aggregation.** Each micro-batch's terms are divided by the mini-batch's token or sequence count (`global_batch_info`), so the micro-batches and ranks add up to the mini-batch's loss. Where a term counts tokens with weights other than the response mask (`S.mask`), verl's counts are of the response mask's tokens: the sum over micro-batches then differs from Keel's loss on the mini-batch.\n");
    md.push_str(&readme_lists(&caveats, &dropped));
    md.push_str(&crate::engine::readme_unmapped(&settings.unmapped, "verl"));
    files.push(("README.md".into(), md));
    Ok(VerlExport {
        package: Package { name, files },
        dropped,
        caveats,
        unmapped: settings.unmapped,
        mode: if full { "ppo_loss" } else { "policy_loss" },
    })
}

fn torch_float(x: f64) -> String {
    format!("{x:?}")
}

/// The shared part of both loss modules: one term through `agg_loss`.
fn term_helpers(mode: &str, scale: &str) -> String {
    format!(
        r#"MODE = "{mode}"
# `loss_scale_factor` for seq-mean-token-sum-norm: the recipe's objective.norm.
SCALE = {scale}


def _info(config):
    info = dict(getattr(config, "global_batch_info", None) or {{}})
    if SCALE is not None:
        info["loss_scale_factor"] = SCALE
    return info


def _term(out, section, mask, info):
    """Term `section` of the loss (before its coef), aggregated by verl's agg_loss."""
    p = "term." + section
    if p + ".value" in out:
        return agg_loss(
            loss_mat=out[p + ".value"],
            loss_mask=out[p + ".weight"] * mask,
            loss_agg_mode=MODE,
            **info,
        )
    # Already one number for the micro-batch: weighted by its share of the
    # mini-batch's tokens, so that the micro-batches add up.
    total = info.get("batch_num_tokens")
    share = mask.sum() / total * info.get("dp_size", 1) if total else 1.0
    return out[p + ".scalar"] * share


def _check_mode(loss_agg_mode):
    if loss_agg_mode != MODE:
        raise ValueError(
            f"{{NAME}} aggregates with {{MODE}} (the recipe's objective.reduce), but "
            f"actor.loss_agg_mode={{loss_agg_mode}}: use the exported overrides.txt"
        )
"#
    )
}

/// A registered policy loss: the objective alone.
fn policy_loss_module(recipe: &str, name: &str, mode: &str, scale: &str) -> String {
    format!(
        r#""""The objective of Keel recipe `{recipe}` as a verl policy loss.

Written by `keel export --target verl`; do not edit. Importing it registers
`{name}` with `register_policy_loss`; set
`actor_rollout_ref.actor.policy_loss.loss_mode={name}`. verl adds the KL and
entropy terms itself (overrides.txt).
"""

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss

from .objective import forward as _forward

NAME = "{name}"
{helpers}

@register_policy_loss(NAME)
def policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="{mode}",
    config=None,
    rollout_is_weights=None,
):
    """(loss, metrics): the recipe's objective on verl's micro-batch."""
    _check_mode(loss_agg_mode)
    if rollout_is_weights is not None:
        raise ValueError(
            f"{{NAME}}: the recipe's loss has no rollout importance weights; "
            "turn off algorithm.rollout_correction, or write the weights in the recipe"
        )
    mask = response_mask.to(log_prob.dtype)
    inp = {{"logp": log_prob, "old_logp": old_log_prob, "advantages": advantages, "mask": mask}}
    out = _forward(inp, dtype=log_prob.dtype)
    loss = _term(out, "objective", mask, _info(config))
    return loss, {{"actor/keel_objective": loss.detach().item()}}
"#,
        helpers = term_helpers(mode, scale),
    )
}

/// A replacement of verl's `ppo_loss`: every term of the loss.
fn ppo_loss_module(
    recipe: &str,
    name: &str,
    mode: &str,
    scale: &str,
    reads_ref: bool,
    reads_entropy: bool,
) -> String {
    let py = |b: bool| if b { "True" } else { "False" };
    format!(
        r#""""The loss of Keel recipe `{recipe}` in place of verl's `ppo_loss`.

Written by `keel export --target verl`; do not edit. The recipe's loss needs
more than a registered policy loss is given (the reference log-probs, the
entropy, or a divergence or entropy term verl does not compute), so importing
this module replaces `ppo_loss` in `verl.workers.utils.losses`, where
`verl.workers.engine_workers` imports it from (and there too, if it is
already imported): the actor worker builds its loss from it at `init_model`.
Every term is aggregated by verl's `agg_loss` with `global_batch_info`.
"""

import sys

import torch
import verl.workers.utils.losses as _losses
from verl.trainer.ppo.core_algos import agg_loss
from verl.workers.utils.padding import no_padding_2_padding

from .loss import TERMS
from .loss import forward as _forward

NAME = "{name}"
READS_REF = {reads_ref}
READS_ENTROPY = {reads_entropy}
{helpers}

def ppo_loss(config, model_output, data, dp_group=None):
    """(loss, metrics) of the recipe on verl's micro-batch, as verl's ppo_loss is called."""
    _check_mode(config.loss_agg_mode)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    fields = ["response_mask", "old_log_probs", "advantages"]
    if READS_REF:
        if "ref_log_prob" not in data:
            raise ValueError(f"{{NAME}} reads ref_logp: set actor_rollout_ref.actor.use_kl_loss=True (overrides.txt)")
        fields.append("ref_log_prob")
    if "rollout_is_weights" in data:
        raise ValueError(
            f"{{NAME}}: the recipe's loss has no rollout importance weights; "
            "turn off algorithm.rollout_correction, or write the weights in the recipe"
        )
    padded = data.select(*fields).to_padded_tensor()
    mask = padded["response_mask"].to(bool).to(log_prob.dtype)
    inp = {{
        "logp": log_prob,
        "old_logp": padded["old_log_probs"],
        "advantages": padded["advantages"],
        "mask": mask,
    }}
    if READS_REF:
        inp["ref_logp"] = padded["ref_log_prob"]
    if READS_ENTROPY:
        if entropy is None:
            raise ValueError(f"{{NAME}} reads entropy: set actor_rollout_ref.actor.calculate_entropy=True (overrides.txt)")
        inp["entropy"] = no_padding_2_padding(entropy, data)
    out = _forward(inp, dtype=log_prob.dtype)
    info = _info(config)
    loss = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    metrics = {{}}
    for t in TERMS:
        value = _term(out, t["section"], mask, info)
        coef = out["term." + t["section"] + ".coef"] if t["coef"] else 1.0
        loss = loss + coef * value
        metrics["actor/keel_" + t["section"]] = value.detach().item()
    return loss, metrics


_losses.ppo_loss = ppo_loss
if "verl.workers.engine_workers" in sys.modules:
    sys.modules["verl.workers.engine_workers"].ppo_loss = ppo_loss
"#,
        reads_ref = py(reads_ref),
        reads_entropy = py(reads_entropy),
        helpers = term_helpers(mode, scale),
    )
}

/// Whether token matrix `v` depends on a statistic over the whole batch
/// (a value at batch level computed from the batch's inputs).
fn batch_statistic(g: &Graph, v: NodeId) -> bool {
    let live = g.live_from([v]);
    let mut data = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        data[i] = matches!(n.op, keel_ir::ir::Op::Input(_))
            || n.args
                .iter()
                .any(|&a| data.get(a).copied().unwrap_or(false));
    }
    g.nodes
        .iter()
        .enumerate()
        .any(|(i, n)| live[i] && data[i] && n.level <= Level::Batch)
}

/// verl's critic path for a recognised critic: its estimator, its value
/// loss, and the critic's optimizer, from the recipe's `critic` settings.
fn critic_overrides(checked: &Checked, index: usize, c: &crate::critic::VerlCritic) -> Vec<String> {
    let mut ov = vec![
        "algorithm.adv_estimator=gae".to_string(),
        format!("algorithm.gamma={}", torch_float(c.gamma)),
        format!("algorithm.lam={}", torch_float(c.lam)),
        format!("critic.cliprange_value={}", torch_float(c.cliprange_value)),
        format!("critic.loss_agg_mode={}", c.loss_agg_mode),
    ];
    let Some(recipe) = checked.recipes.get(index) else {
        return ov;
    };
    let num = |key: &str| match recipe.setting("critic", key) {
        Some(keel_check::Setting::Num(x)) => Some(x),
        _ => None,
    };
    for (key, verl) in [
        ("lr", "critic.optim.lr"),
        ("weight_decay", "critic.optim.weight_decay"),
        ("grad_clip", "critic.grad_clip"),
    ] {
        if let Some(x) = num(key) {
            ov.push(format!("{verl}={}", torch_float(x)));
        }
    }
    if let Some(w) = num("warmup") {
        ov.push(format!("trainer.critic_warmup={}", w as i64));
    }
    ov
}

/// The recipe's critic as verl's (`None`: no critic, or refused: E0803
/// into `refused`, or with `allow_partial` a line into `dropped`).
fn critic_or_refusal(
    checked: &Checked,
    index: usize,
    allow_partial: bool,
    refused: &mut Vec<Diagnostic>,
    dropped: &mut Vec<String>,
) -> Option<crate::critic::VerlCritic> {
    let recipe = checked.recipes.get(index)?;
    match crate::critic::verl_critic(checked, index) {
        Ok(c) => c,
        Err(why) => {
            let at = match recipe.value("critic", "loss") {
                Some(v) => Label::new(v.file, v.name_span, "this critic"),
                None => Label::new(
                    recipe.file,
                    recipe.name_span,
                    "this recipe reads the critic",
                ),
            };
            if allow_partial {
                dropped.push(format!(
                    "the critic ({why}): set `algorithm.adv_estimator` and `critic.*` yourself"
                ));
            } else {
                refused.push(
                    Diagnostic::error(codes::EXPORT_CRITIC, format!("verl's critic cannot run this recipe's: {why}"), at)
                        .with_help("verl trains a critic only with its own GAE (`algorithm.adv_estimator=gae`) and clipped value loss: extend std/ppo's credit and critic, or pass --allow-partial to export the policy's loss alone"),
                );
            }
            None
        }
    }
}
