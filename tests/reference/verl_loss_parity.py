"""Runs the packages `keel export --target verl` wrote inside verl 0.9.1's
own actor loss: called by `tests/export.rs` with a manifest of cases, each a
package directory and a batch (Keel's inputs and `expect.loss`,
`expect.d_logp` from Keel's reference interpreter).

For each case: import the package (it checks verl's version and registers
its policy loss, or binds its replacement of `ppo_loss` in
`verl.workers.engine_workers`); build an `ActorConfig` from the package's
`overrides.txt`; lay the batch out as verl's actor hands it to the loss (a
`TensorDict` with prompts, responses, attention mask, the response mask,
old and reference log-probs, advantages, and the model's log-probs without
padding, shifted by one token); call the loss the worker would call:
`verl.workers.utils.losses.ppo_loss` for a registered policy loss (it fetches
it with `get_policy_loss_fn` and adds verl's own KL and entropy terms), the
package's replacement otherwise. Prints, per case, the error of the loss and
of autograd's d_logp relative to Keel's scale, and with `split`, of the sum
of the losses of four micro-batches with `global_batch_info` filled.

Needs torch and verl 0.9.1 (the project's venv, `.ci/run`).
"""

import importlib
import json
import sys

import torch
from export_parity import rel_err  # the same measure as the torch target's test
from safetensors.torch import load_file


VERL_PPO_LOSS = None


def actor_config(case_dir):
    """An ActorConfig with the package's `actor_rollout_ref.actor.*` overrides."""
    from verl.workers.config import ActorConfig, PolicyLossConfig

    kw = {}
    loss_mode = "vanilla"
    with open(f"{case_dir}/overrides.txt") as f:
        for line in f:
            line = line.strip()
            prefix = "actor_rollout_ref.actor."
            if not line.startswith(prefix):
                continue
            key, value = line[len(prefix):].split("=", 1)
            if key == "policy_loss.loss_mode":
                loss_mode = value
                continue
            # The optimizer and the batch sizes are the trainer's settings,
            # not the loss's (verl_schedule.py checks those).
            if key.startswith("optim.") or key in (
                "ppo_mini_batch_size",
                "ppo_micro_batch_size_per_gpu",
                "grad_clip",
            ):
                continue
            if value in ("True", "False"):
                value = value == "True"
            elif key in ("kl_loss_type", "loss_agg_mode"):
                pass
            elif key in ("ppo_epochs", "loss_scale_factor"):
                value = int(value)
            else:
                value = float(value)
            kw[key] = value
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        use_torch_compile=False,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
        **kw,
    )


def verl_batch(inp, rows, logp, num_tokens, global_batch_size):
    """(model_output, data) for rows `rows` as verl's actor lays them out."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    mask = inp["mask"][rows] > 0
    b, t = mask.shape
    lens = mask.sum(-1)
    # One prompt token; the model's log-prob of response token j sits at the
    # position before it (the prompt's for j = 0), so each sequence's values
    # are its response log-probs and one more for its last token.
    flat = []
    ent = []
    for i in range(b):
        n = int(lens[i])
        flat.append(torch.cat([logp[rows][i, :n], logp.new_zeros(1)]))
        if "entropy" in inp:
            ent.append(torch.cat([inp["entropy"][rows][i, :n], logp.new_zeros(1)]))
    fields = {
        "prompts": torch.ones(b, 1, dtype=torch.long),
        "responses": torch.ones(b, t, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(b, 1, dtype=torch.long), mask.long()], 1),
        "response_mask": mask.long(),
        # A recipe that reads no old log-probs gets the current ones.
        "old_log_probs": inp.get("old_logp", logp.detach())[rows],
        "advantages": inp["advantages"][rows],
    }
    if "ref_logp" in inp:
        fields["ref_log_prob"] = inp["ref_logp"][rows]
    data = TensorDict(fields, batch_size=[b])
    tu.assign_non_tensor(
        data, dp_size=1, batch_num_tokens=num_tokens, global_batch_size=global_batch_size
    )
    out = {"log_probs": torch.cat(flat)}
    if ent:
        out["entropy"] = torch.cat(ent)
    return out, data


def run_case(case):
    for m in [m for m in sys.modules if m.startswith("keel_")]:
        del sys.modules[m]
    from verl.trainer.ppo import core_algos

    name = case["package"]
    core_algos.ADV_ESTIMATOR_REGISTRY.pop(name, None)
    sys.path.insert(0, case["dir"])
    try:
        pkg = importlib.import_module(name)
    finally:
        sys.path.remove(case["dir"])
    import verl.workers.utils.losses as losses

    if case["mode"] == "policy_loss":
        assert core_algos.get_policy_loss_fn(name) is pkg.verl_loss.policy_loss
        assert losses.ppo_loss is VERL_PPO_LOSS
    else:
        # What verl.workers.engine_workers imports when the worker starts.
        assert losses.ppo_loss is pkg.verl_loss.ppo_loss
    loss_fn = losses.ppo_loss
    t = load_file(case["batch"])
    inp = {k: v for k, v in t.items() if not k.startswith("expect.")}
    want = {k[len("expect."):]: v for k, v in t.items() if k.startswith("expect.")}
    mask = inp["mask"] > 0
    b = mask.shape[0]
    tokens = int(mask.sum())
    logp = inp["logp"].to(torch.float64).clone().requires_grad_(True)
    errs = {}
    config = actor_config(case["dir"])
    out, data = verl_batch(inp, slice(0, b), logp, tokens, b)
    loss, _ = loss_fn(config, out, data)
    (g,) = torch.autograd.grad(loss, logp, allow_unused=True)
    if g is None:
        g = torch.zeros_like(logp)
    errs["loss"] = rel_err(loss, want["loss"])
    errs["d_logp"] = rel_err(g * mask, want["d_logp"])
    if case["split"]:
        total = torch.zeros((), dtype=torch.float64)
        for part in torch.arange(b).chunk(4):
            config = actor_config(case["dir"])
            rows = slice(int(part[0]), int(part[-1]) + 1)
            out, data = verl_batch(inp, rows, logp, tokens, b)
            part_loss, _ = loss_fn(config, out, data)
            total = total + part_loss.detach()
        errs["split4.loss"] = rel_err(total, want["loss"])
    return errs


def main(manifest):
    global VERL_PPO_LOSS
    import verl.workers.utils.losses as losses

    VERL_PPO_LOSS = losses.ppo_loss
    with open(manifest) as f:
        cases = json.load(f)
    result = []
    for case in cases:
        try:
            result.append({"case": case["name"], "errors": run_case(case)})
        except Exception as e:  # reported per case, with what failed
            result.append({"case": case["name"], "exception": f"{type(e).__name__}: {e}"})
        finally:
            # A replacement of ppo_loss lasts for its case only.
            losses.ppo_loss = VERL_PPO_LOSS
    print(json.dumps(result, allow_nan=True))


if __name__ == "__main__":
    main(sys.argv[1])
