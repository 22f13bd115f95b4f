//! `--target trl`: the recipe's loss (and credit) inside TRL's
//! `GRPOTrainer`.
//!
//! The package's `KeelGRPOTrainer` subclasses `GRPOTrainer`: its
//! `_compute_loss` gets the log-probs and entropies from TRL's own
//! `_get_per_token_logps_and_entropies` and returns the recipe's loss on
//! the micro-batch, divided by `current_gradient_accumulation_steps`; when
//! the credit reads only the reward, the mask and the groups, it replaces
//! TRL's advantages after `_generate_and_score_completions` with the
//! recipe's credit over the rewards TRL computed (`_calculate_rewards`).

use crate::engine::{
    Engine, credit_and_outside, inputs_of, loss_input_refusals, readme_lists, term_roots,
};
use crate::torch::{Keep, forward_source};
use crate::{Package, RUNTIME, package_name, pyproject};
use keel_check::{Checked, Diagnostic};
use keel_ir::LogitsPath;

/// The TRL release the package is written for (and checks at import).
pub const TRL_VERSION: &str = "1.16.0";

/// What TRL's `_compute_loss` has, by Keel's names.
const TRL_INPUTS: &[&str] = &[
    "logp",
    "old_logp",
    "ref_logp",
    "entropy",
    "advantages",
    "mask",
    "position",
    "length",
    "index",
];

/// A TRL package and what was left out of it.
#[derive(Clone, Debug)]
pub struct TrlExport {
    pub package: Package,
    pub dropped: Vec<String>,
    pub caveats: Vec<String>,
    /// The recipe's settings TRL has no place for (README, command line).
    pub unmapped: Vec<String>,
    /// Whether the recipe's credit replaces TRL's advantages.
    pub credit: bool,
}

/// Export recipe `index` of `checked` for TRL (see the module's text);
/// `Err` holds every refusal, as for verl.
pub fn trl_package(
    checked: &Checked,
    index: usize,
    source: &str,
    allow_partial: bool,
) -> Result<TrlExport, Vec<Diagnostic>> {
    let recipe = checked.recipes.get(index).ok_or_else(Vec::new)?;
    let merged = checked.merged.get(index).ok_or_else(Vec::new)?;
    let reads_vocab = LogitsPath::fusable(recipe);
    // The engine's reward functions give `reward`.
    let has = keel_ir::lower::EngineReward(|n: &str| {
        n == "advantages" || (n != "logits" || !reads_vocab)
    });
    let compiled = keel_ir::compile_loss_for(checked, index, &has, LogitsPath::Program)?;
    let g = &compiled.graph;
    let engine = Engine {
        name: "TRL",
        loss_sees: "TRL's GRPOTrainer gives the loss the completion's log-probs, the old and reference log-probs, the entropies, the advantages and the completion mask",
        credit_help: "the exported trainer computes the credit from TRL's rewards, the completion mask and the groups: write the credit over reward, mask and group, or pass --allow-partial to keep TRL's own advantages (scale_rewards)",
        credit_dropped: "TRL's own advantages are kept (`scale_rewards`)",
        reward_fn: "TRL's `reward_funcs`; `train.py`'s is 1 when the final answer equals the row's `answer`",
    };
    let available = |n: &str| TRL_INPUTS.contains(&n);
    let mut refused = loss_input_refusals(recipe, &compiled, &available, &engine);
    let mut dropped = Vec::new();
    let (estimator, _) = credit_and_outside(
        checked,
        index,
        source,
        &engine,
        allow_partial,
        false,
        (&mut refused, &mut dropped),
    );
    if !refused.is_empty() {
        return Err(refused);
    }
    let roots: Vec<_> = compiled.terms.iter().flat_map(term_roots).collect();
    let reads = inputs_of(g, &roots);
    let reads_ref = reads.iter().any(|n| n == "ref_logp");
    let reads_entropy = reads.iter().any(|n| n == "entropy");
    let mut caveats = vec![
        "the loss is computed on each micro-batch (`per_device_train_batch_size`) and divided by the gradient accumulation steps, as TRL's own `grpo` loss type: a mean over the micro-batch's tokens or sequences, not over the whole generation batch".to_string(),
    ];
    if reads_ref {
        caveats.push("the loss reads `ref_logp`: TRL computes the reference log-probs only when `beta != 0`, so `train.py` sets `beta` (TRL's own KL is not added: the recipe's divergence is the loss's)".to_string());
    }
    let name = package_name(&recipe.name);
    let settings = crate::settings::trl(checked, index);
    caveats.extend(settings.mapped.caveats.iter().cloned());
    let loss_py = forward_source(g, &recipe.name, source, Keep::Only("loss"));
    let mut files = vec![
        (format!("{name}/_keel.py"), RUNTIME.to_string()),
        (format!("{name}/loss.py"), loss_py),
    ];
    let credit = estimator.is_ok();
    if let Ok(est) = &estimator {
        // The credit alone (credit.py); verl_adv.py imports verl and is not
        // shipped.
        files.extend(
            est.iter()
                .filter(|(p, _)| p.ends_with("credit.py"))
                .cloned(),
        );
    }
    let py = |b: bool| if b { "True" } else { "False" };
    let trainer = format!(
        r#""""Keel recipe `{r}` in TRL {TRL_VERSION}'s GRPOTrainer, written by `keel export --target trl`.

Do not edit: change the recipe and export again. `KeelGRPOTrainer` is a
`trl.GRPOTrainer` whose loss is the recipe's (`_compute_loss`){credit_doc}.
"""

import torch
from trl import GRPOTrainer

from .loss import forward as _loss

NAME = "{name}"
CREDIT = {credit}
READS_REF = {reads_ref}
READS_ENTROPY = {reads_entropy}
# The recipe's learning rate at each Keel step (from 1) as a factor of
# `learning_rate`, or None when TRL's own scheduler gives it exactly; a
# Keel step takes UPDATES_PER_STEP optimizer steps (epochs × minibatches).
LR_SCHEDULE = {lr_schedule}
UPDATES_PER_STEP = {updates}
if CREDIT:
    from .credit import forward as _credit


class KeelGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the loss (and credit) of Keel recipe `{r}`."""

    def create_scheduler(self, num_training_steps, optimizer=None):
        """The recipe's learning rate at every step (TRL's schedulers count steps from 0, Keel's from 1)."""
        if LR_SCHEDULE is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        last = len(LR_SCHEDULE) - 1
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            lambda s: LR_SCHEDULE[min(s // UPDATES_PER_STEP, last)],
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def get_decay_parameter_names(self, model):
        """Every weight decays, as in Keel (the Trainer leaves out biases and norms)."""
        return [n for n, _ in model.named_parameters()]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._keel_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not CREDIT:
            return out
        if self.accelerator.num_processes > 1:
            raise NotImplementedError(
                f"{{NAME}}: the recipe's credit runs on one process; with several, export with --allow-partial to keep TRL's advantages"
            )
        per_func = self._keel_rewards
        reward = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        mask = out["completion_mask"].to(reward.dtype)
        group = torch.arange(reward.shape[0], device=reward.device) // self.num_generations
        with torch.no_grad():
            adv = _credit({{"reward": reward, "mask": mask, "group": group}}, dtype=reward.dtype)["advantages"]
        out["advantages"] = adv
        return out

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=READS_ENTROPY
        )
        mask = completion_mask.to(logp.dtype)
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"].to(logp.dtype)
        adv = inputs["advantages"].to(logp.dtype)
        if adv.dim() == 1:
            adv = adv.unsqueeze(1).expand_as(logp)
        old = inputs.get("old_per_token_logps")
        inp = {{
            "logp": logp,
            "old_logp": logp.detach() if old is None else old,
            "advantages": adv * mask,
            "mask": mask,
        }}
        if READS_REF:
            if inputs.get("ref_per_token_logps") is None:
                raise ValueError(f"{{NAME}} reads ref_logp: set GRPOConfig(beta=...) to a value other than 0 so TRL computes it")
            inp["ref_logp"] = inputs["ref_per_token_logps"]
        if READS_ENTROPY:
            inp["entropy"] = entropy
        loss = _loss(inp, dtype=logp.dtype)["loss"]
        self.keel_last = (inp, loss.detach())
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["keel_loss"].append(loss.detach().item())
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss / normalizer
"#,
        r = recipe.name,
        lr_schedule = match &settings.lr_schedule {
            Some(v) => format!(
                "[{}]",
                v.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "None".to_string(),
        },
        updates = settings.updates_per_step,
        credit = py(credit),
        reads_ref = py(reads_ref),
        reads_entropy = py(reads_entropy),
        credit_doc = if credit {
            ", and its advantages the recipe's credit over TRL's rewards (`_generate_and_score_completions`)"
        } else {
            ""
        },
    );
    files.push((format!("{name}/trainer.py"), trainer));
    let init = format!(
        r#""""Keel recipe `{r}` for TRL {TRL_VERSION} (`keel export --target trl`); see README.md."""

import trl as _trl

if _trl.__version__ != "{TRL_VERSION}":
    raise ImportError(
        "{name} was exported for TRL {TRL_VERSION}, found TRL " + _trl.__version__
        + ": re-export the recipe with a keel built for this TRL, or install trl=={TRL_VERSION}"
    )

from .trainer import KeelGRPOTrainer  # noqa: E402

__all__ = ["KeelGRPOTrainer"]
"#,
        r = recipe.name,
    );
    files.push((format!("{name}/__init__.py"), init));
    let mut config: Vec<(String, String)> = settings.mapped.set.clone();
    config.push(("beta".into(), if reads_ref { "1e-3" } else { "0.0" }.into()));
    let train = train_py(&recipe.name, &name, &config);
    files.push(("train.py".into(), train));
    files.push((
        "pyproject.toml".into(),
        pyproject(
            &name,
            &format!("Keel recipe `{}` for TRL {TRL_VERSION}", recipe.name),
            "3.10",
            &format!("\"trl=={TRL_VERSION}\""),
        ),
    ));
    let mut md = format!(
        "# `{r}` for TRL {TRL_VERSION}\n\nWritten by `keel export --target trl` from `{source}`; do not edit: change the recipe and export again.\n\n```python\nfrom {name} import KeelGRPOTrainer   # a trl.GRPOTrainer\ntrainer = KeelGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...)\n```\n\n`python train.py MODEL DATA.jsonl` runs it on a GPU or, without one, on the CPU (`--help` lists its flags) with the recipe's settings as `GRPOConfig` arguments:\n\n```\n{}\n```\n\n| recipe | in TRL |\n| --- | --- |\n| `rollout`, `optimizer` | `num_generations` (group), `per_device_train_batch_size` (samples ÷ minibatches ÷ micro_batches), `gradient_accumulation_steps` (micro_batches), `steps_per_generation` (minibatches × micro_batches: one generation batch is one Keel step), `num_iterations` (epochs), `max_steps` (steps × epochs × minibatches: TRL counts optimizer steps), `temperature`, `top_p`, `max_completion_length`, `learning_rate` and its schedule, `optim`, `weight_decay` (every weight decays, as in Keel), `adam_beta1`, `adam_beta2`, `adam_epsilon`, `max_grad_norm`: the recipe's values, Keel's defaults where it writes none |\n| `objective`, `divergence`, `entropy` | `KeelGRPOTrainer._compute_loss`: the recipe's loss over TRL's log-probs, entropies, old and reference log-probs and advantages; TRL's `loss_type`, `beta` and `epsilon` are not used |\n",
        config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        r = recipe.name,
    );
    md.push_str(if credit {
        "| `credit` | replaces TRL's advantages: the recipe's credit over TRL's weighted rewards, groups of `num_generations` |\n"
    } else {
        "| `credit` | none exported: TRL's own advantages (`scale_rewards`) |\n"
    });
    if merged.section("monitor").is_some() {
        md.push_str("| `monitor` | not exported: TRL logs its own metrics, and `keel_loss` |\n");
    }
    md.push_str(&readme_lists(&caveats, &dropped));
    md.push_str(&crate::engine::readme_unmapped(
        &settings.mapped.unmapped,
        "TRL",
    ));
    files.push(("README.md".into(), md));
    Ok(TrlExport {
        package: Package { name, files },
        dropped,
        caveats,
        unmapped: settings.mapped.unmapped,
        credit,
    })
}

/// `train.py`: the recipe's `GRPOConfig` arguments as flags with the
/// recipe's values as defaults, the CPU when there is no GPU, and a reward
/// of 1 for a completion whose final answer equals the row's `answer`.
fn train_py(recipe: &str, name: &str, config: &[(String, String)]) -> String {
    let flags: String = config
        .iter()
        .map(|(k, v)| {
            let ty = if v.starts_with('"') {
                "str"
            } else if v.contains('.') || v.contains('e') {
                "float"
            } else {
                "int"
            };
            format!(
                "    p.add_argument(\"--{}\", dest=\"{k}\", type={ty}, default={v})\n",
                k.replace('_', "-")
            )
        })
        .collect();
    format!(
        r#""""Train with Keel recipe `{recipe}` in TRL's GRPOTrainer (written by `keel export --target trl`).

    python train.py MODEL DATASET.jsonl [--output-dir DIR] [--max-steps N] [--learning-rate LR] ...

DATASET.jsonl has one {{"prompt": ..., "answer": ...}} per line. The reward is
1 when the completion's final answer (the last \boxed{{...}}, else what follows
the last "answer is", "answer:" or "|", else its last number) equals the
row's answer exactly, 0 otherwise; replace `reward` with your own reward
functions (TRL's `reward_funcs`). Each flag's default is the recipe's value
(`--help` lists them); without a GPU it runs on the CPU in float32.
"""

import argparse
import re

import torch
from datasets import load_dataset
from trl import GRPOConfig

from {name} import KeelGRPOTrainer

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(text):
    """The completion's final answer, as the module's text says."""
    low = text.lower()
    k = low.rfind("\\boxed{{")
    if k >= 0:
        return text[k + 7 :].split("}}", 1)[0].strip()
    for marker in ("answer is", "answer:"):
        k = low.rfind(marker)
        if k >= 0:
            m = NUMBER.search(text[k + len(marker) :])
            return m.group(0) if m else text[k + len(marker) :].strip()
    k = text.rfind("|")
    if k >= 0:
        return text[k + 1 :].strip()
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def reward(completions, answer, **kwargs):
    def text(c):
        return c if isinstance(c, str) else c[-1]["content"]

    return [1.0 if final_answer(text(c)) == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model name or directory transformers loads")
    p.add_argument("data", help="a JSONL file of prompt/answer rows")
    p.add_argument("--output-dir", default="{name}-out")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
{flags}    return p


def config(args):
    """The GRPOConfig of the parsed flags: the recipe's settings, and the device's precision."""
    kw = {{k: v for k, v in vars(args).items() if k not in ("model", "data", "output_dir", "cpu")}}
    cpu = args.cpu or not torch.cuda.is_available()
    bf16 = not cpu and torch.cuda.is_bf16_supported()
    return GRPOConfig(output_dir=args.output_dir, use_cpu=cpu, bf16=bf16, fp16=False, report_to=[], **kw)


def main(argv=None):
    args = parser().parse_args(argv)
    dataset = load_dataset("json", data_files=args.data, split="train")
    KeelGRPOTrainer(model=args.model, reward_funcs=reward, args=config(args), train_dataset=dataset).train()


if __name__ == "__main__":
    main()
"#
    )
}
