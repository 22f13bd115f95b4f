//! `keel-export`: a backend of the IR that writes Python. A recipe's loss
//! graph becomes one PyTorch expression per IR node (`torch.rs`), over a
//! fixed runtime of the IR's semantics in torch (`keel_rt.py`, the same file
//! for every recipe). No method name appears here: what a recipe computes
//! comes from its graph.
//!
//! The exported function takes the batch as a dict of tensors by Keel's
//! input names (`docs/batch-format.md`) and returns `loss`, `advantages`
//! and the `metric.*` values; its gradient is torch autograd's, which the
//! tests compare with the gradient Keel derives (`tests/export.rs`).

#![forbid(unsafe_code)]

mod critic;
mod engine;
mod settings;
mod torch;
mod trl;
mod verl;

use keel_check::{Checked, Diagnostic};
use keel_ir::LogitsPath;

pub use torch::{Keep, forward_source};
pub use trl::{TRL_VERSION, TrlExport, trl_package};
pub use verl::{VERL_VERSION, VerlExport, verl_package};

/// The IR's semantics in torch, shipped as `_keel.py` in every package.
pub const RUNTIME: &str = include_str!("keel_rt.py");

/// A package written by the exporter: relative paths and their contents.
#[derive(Clone, Debug)]
pub struct Package {
    /// The Python package name (`keel_grpo`).
    pub name: String,
    pub files: Vec<(String, String)>,
}

/// The Python package name for a recipe: `keel_` and the recipe's name with
/// every character that is not a letter, digit or `_` as `_`.
pub fn package_name(recipe: &str) -> String {
    let body: String = recipe
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("keel_{}", body.to_ascii_lowercase())
}

/// The inputs a plain torch module takes: everything the recipe reads by
/// name, `logp` given (not derived from `logits`) unless the recipe reads
/// the vocabulary itself, and the credit computed (no `advantages` input).
/// The recipe's `reward` section is computed from what it reads (the
/// module runs it), not given.
pub fn torch_inputs(recipe: &keel_check::CheckedRecipe) -> impl Fn(&str) -> bool + Sync + use<> {
    let fusable = LogitsPath::fusable(recipe);
    move |n: &str| n != "advantages" && (n != "logits" || !fusable)
}

/// Export recipe `index` of `checked` as a torch package whose `forward`
/// reads the batch tensors `has` says; `source` names the recipe file in
/// the generated text.
pub fn torch_package(
    checked: &Checked,
    index: usize,
    has: &(dyn Fn(&str) -> bool + Sync),
    source: &str,
) -> Result<Package, Vec<Diagnostic>> {
    let recipe = checked.recipes.get(index).ok_or_else(Vec::new)?;
    let compiled =
        keel_ir::compile_loss_for(checked, index, &|n: &str| has(n), LogitsPath::Program)?;
    let name = package_name(&recipe.name);
    let (graph, terms) = with_terms(&compiled);
    let mut module = forward_source(&graph, &recipe.name, source, Keep::All);
    module.push_str(&python_terms(&terms));
    let init = format!(
        "\"\"\"The loss of Keel recipe `{r}`, exported by `keel export` (see README.md).\"\"\"\n\nfrom .loss import INPUTS, OUTPUTS, PARAMS, RECIPE, TERMS, forward\n\n__all__ = [\"forward\", \"INPUTS\", \"OUTPUTS\", \"PARAMS\", \"RECIPE\", \"TERMS\"]\n",
        r = recipe.name
    );
    let pyproject = pyproject(
        &name,
        &format!("The loss of Keel recipe `{}`", recipe.name),
        "3.9",
        "",
    );
    let readme = torch::readme(&compiled.graph, &recipe.name, &name, source);
    Ok(Package {
        files: vec![
            (format!("{name}/__init__.py"), init),
            (format!("{name}/_keel.py"), RUNTIME.to_string()),
            (format!("{name}/loss.py"), module),
            ("pyproject.toml".into(), pyproject),
            ("README.md".into(), readme),
        ],
        name,
    })
}

/// `pyproject.toml` of package `name` for Python `python` and later: torch
/// and `deps` (`"verl==0.9.1"`, or empty) as its dependencies.
pub(crate) fn pyproject(name: &str, description: &str, python: &str, deps: &str) -> String {
    let deps = if deps.is_empty() {
        String::new()
    } else {
        format!(", {deps}")
    };
    format!(
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"{dist}\"\nversion = \"0.1.0\"\ndescription = \"{description}, exported by keel export\"\nrequires-python = \">={python}\"\ndependencies = [\"torch>=2.1\"{deps}]\n\n[tool.setuptools]\npackages = [\"{name}\"]\n",
        dist = name.replace('_', "-"),
    )
}

/// The compiled loss's graph with each term's nodes as outputs of their
/// own (`term.S.value`, `.weight`, `.scalar`, `.coef`, `.norm`), and the
/// terms described for `TERMS`: what an engine's own aggregation needs.
pub(crate) fn with_terms(
    compiled: &keel_ir::CompiledLoss,
) -> (keel_ir::ir::Graph, Vec<serde_json::Value>) {
    let mut graph = compiled.graph.clone();
    let mut terms = Vec::new();
    for t in &compiled.terms {
        let p = format!("term.{}", t.section);
        let mut push = |what: &str, id: keel_ir::ir::NodeId| {
            graph.outputs.push((format!("{p}.{what}"), id));
        };
        if let Some((m, w)) = t.matrix {
            push("value", m);
            push("weight", w);
        }
        push("scalar", t.scalar);
        if let Some(c) = t.coef {
            push("coef", c);
        }
        if let Some(n) = t.norm {
            push("norm", n);
        }
        terms.push(serde_json::json!({
            "section": t.section,
            "mode": t.mode,
            "matrix": t.matrix.is_some(),
            "coef": t.coef.is_some(),
            "norm": t.norm.is_some(),
        }));
    }
    (graph, terms)
}

/// `TERMS = [...]` for a loss module.
pub(crate) fn python_terms(terms: &[serde_json::Value]) -> String {
    format!(
        "\n\n# The loss is the sum over TERMS of coef · reduce(value) with the\n# term's mode (value and weight are token-level; masked-out tokens count\n# for neither); `term.S.*` outputs hold them.\nTERMS = {}\n",
        serde_json::to_string(terms)
            .unwrap_or_else(|_| "[]".into())
            .replace("true", "True")
            .replace("false", "False")
    )
}

/// The inputs verl hands an advantage estimator, by Keel's names:
/// `token_level_rewards` summed over the response (`reward`), the response
/// mask, the group uids (`index`), and what Keel derives from the mask.
const VERL_ESTIMATOR_INPUTS: &[&str] = &[
    "reward",
    "mask",
    "group",
    "length",
    "position",
    "index",
    "step",
    "total_steps",
    "epoch",
    "progress",
];

/// The recipe's credit as a verl advantage estimator (`credit.py` and
/// `verl_adv.py` of the package), registered as `keel_NAME` through
/// `verl.trainer.ppo.core_algos.register_adv_est`; `Err` names the inputs
/// the credit reads that verl's estimators are not given.
pub fn verl_estimator(
    checked: &Checked,
    index: usize,
    source: &str,
) -> Result<Vec<(String, String)>, String> {
    let recipe = checked.recipes.get(index).ok_or("no such recipe")?;
    // verl's reward functions give the reward: the recipe's `reward`
    // section is not the estimator's.
    let has = keel_ir::lower::EngineReward(torch_inputs(recipe));
    let compiled = keel_ir::compile_loss_for(checked, index, &has, LogitsPath::Program)
        .map_err(|d| d.first().map(|d| d.message.clone()).unwrap_or_default())?;
    let g = &compiled.graph;
    if g.output("advantages").is_none() {
        return Err("the recipe has no credit".into());
    }
    let keep = Keep::Only("advantages");
    let missing: Vec<String> = torch::inputs(g, keep)
        .into_iter()
        .filter(|n| !VERL_ESTIMATOR_INPUTS.contains(&n.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the credit reads {}, which an engine does not give its advantage estimator (it has the reward, the response mask and the groups)",
            missing.join(", ")
        ));
    }
    let name = package_name(&recipe.name);
    let credit = forward_source(g, &recipe.name, source, keep);
    let adv = format!(
        r#""""The credit of Keel recipe `{r}` as a verl advantage estimator.

Written by `keel export`; do not edit. Importing this module registers
`{name}` with `verl.trainer.ppo.core_algos.register_adv_est`; set
`algorithm.adv_estimator={name}`. verl's `token_level_rewards` summed over
the response are Keel's `reward`; its group uids (`index`) are Keel's
`group`. Group and batch statistics are taken over the whole step's batch,
which verl hands the estimator, as Keel's credit does.
"""

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from .credit import forward as _credit

NAME = "{name}"


def _group_ids(index, device):
    ids = {{}}
    uids = np.asarray(index).tolist()
    return torch.tensor([ids.setdefault(u, len(ids)) for u in uids], dtype=torch.long, device=device)


@register_adv_est(NAME)
def compute_advantages(token_level_rewards, response_mask, config=None, index=None, **kwargs):
    """(advantages, returns), both Keel's credit broadcast to the tokens and masked."""
    mask = response_mask.to(token_level_rewards.dtype)
    inp = {{"mask": mask, "reward": (token_level_rewards * mask).sum(-1)}}
    if index is not None:
        inp["group"] = _group_ids(index, mask.device)
    with torch.no_grad():
        adv = _credit(inp, dtype=token_level_rewards.dtype)["advantages"]
    return adv, adv
"#,
        r = recipe.name,
    );
    Ok(vec![
        (format!("{name}/credit.py"), credit),
        (format!("{name}/verl_adv.py"), adv),
    ])
}
