"""Runs the packages `keel export --target torch` wrote against Keel's own
results: called by `tests/export.rs` with a manifest of cases, each a
package directory and a batch holding the inputs and Keel's reference
interpreter's outputs (`expect.*`). Computes each package's `forward` in
float64, its gradient with torch autograd, and prints one JSON object:
for each case and output, the error relative to the reference's scale (as
`keel_compiler::parity::rel_err`: its largest entry, at least 0.1 for a
single value and 1e-6 otherwise).

Needs torch and safetensors (the project's venv, `.ci/run`).
"""

import importlib
import json
import sys

import torch
from safetensors.torch import load_file


def rel_err(got, want):
    got = got.detach().to(torch.float64).reshape(-1)
    want = want.to(torch.float64).reshape(-1)
    if got.numel() != want.numel():
        return float("inf")
    floor = 0.1 if want.numel() == 1 else 1e-6
    finite = want[~torch.isnan(want)].abs()
    scale = max(floor, float(finite.max())) if finite.numel() else floor
    both = torch.isnan(got) & torch.isnan(want)
    one = torch.isnan(got) ^ torch.isnan(want)
    if bool(one.any()):
        return float("inf")
    d = torch.where(both, torch.zeros_like(got), (got - want).abs())
    return float(d.max()) / scale if d.numel() else 0.0


def verl_advantages(case, inp, want):
    """The credit through verl's own registry: `get_adv_estimator_fn` on
    verl's inputs (the reward at each response's last valid token, group
    uids as strings), against Keel's advantages."""
    import numpy as np
    from verl.trainer.ppo import core_algos

    name = case["package"]
    # Each case imports its package afresh; verl refuses a second function
    # under one name, so the previous case's registration goes first.
    core_algos.ADV_ESTIMATOR_REGISTRY.pop(name, None)
    importlib.import_module(case["package"] + ".verl_adv")
    fn = core_algos.get_adv_estimator_fn(name)
    mask = inp["mask"].to(torch.float64)
    reward = inp["reward"].to(torch.float64)
    tlr = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        idx = torch.nonzero(mask[i]).reshape(-1)
        if idx.numel():
            tlr[i, idx[-1]] = reward[i]
    group = inp.get("group")
    index = np.array([f"uid-{int(g)}" for g in group.tolist()]) if group is not None else None
    adv, ret = fn(token_level_rewards=tlr, response_mask=mask.bool(), config=None, index=index)
    # A recipe with a `reward` section: verl's estimator reads verl's reward
    # (the batch's), and Keel's credit on that reward is `verl_advantages`.
    target = want.get("verl_advantages", want["advantages"])
    return max(rel_err(adv, target), rel_err(ret, target))


VERL_MODES = {
    "token_mean": "token-mean",
    "seq_mean_token_mean": "seq-mean-token-mean",
    "seq_mean_token_sum": "seq-mean-token-sum",
    "seq_mean_token_sum_norm": "seq-mean-token-sum-norm",
}


def verl_terms(mod, out, inp, want):
    """The loss again from the package's TERMS, each token-level term
    reduced by verl 0.9.1's own `agg_loss` (its mode; the term's weights
    times the response mask as the loss mask; Dr. GRPO's norm as
    `loss_scale_factor`), against Keel's loss."""
    from verl.trainer.ppo.core_algos import agg_loss

    mask = inp["mask"].to(torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for t in mod.TERMS:
        p = "term." + t["section"]
        if t["matrix"]:
            kw = {}
            if t["mode"] == "seq_mean_token_sum_norm" and t["norm"]:
                kw["loss_scale_factor"] = float(out[p + ".norm"])
            value = agg_loss(
                loss_mat=out[p + ".value"].detach(),
                loss_mask=(out[p + ".weight"] * mask).detach(),
                loss_agg_mode=VERL_MODES[t["mode"]],
                **kw,
            )
        else:
            value = out[p + ".scalar"].detach()
        coef = out[p + ".coef"].detach() if t["coef"] else 1.0
        total = total + coef * value
    return rel_err(total, want["loss"])


def run_case(case):
    for m in [m for m in sys.modules if m.startswith("keel_")]:
        del sys.modules[m]
    sys.path.insert(0, case["dir"])
    mod = importlib.import_module(case["package"])
    t = load_file(case["batch"])
    inp = {k: v for k, v in t.items() if not k.startswith("expect.")}
    want = {k[len("expect."):]: v for k, v in t.items() if k.startswith("expect.")}
    wrt = "logits" if "logits" in mod.INPUTS else "logp"
    x = None
    if wrt in inp:
        x = inp[wrt].to(torch.float64).requires_grad_(True)
        inp[wrt] = x
    out = mod.forward(inp, dtype=torch.float64)
    errs = {}
    for name, value in out.items():
        if name.startswith("term."):
            continue
        if name in want:
            errs[name] = rel_err(value, want[name])
        else:
            errs[name] = float("inf")
    gname = "d_" + wrt
    if gname in want:
        mask = inp["mask"].to(torch.float64)
        if x is not None and out["loss"].requires_grad:
            (g,) = torch.autograd.grad(out["loss"], x, allow_unused=True)
        else:
            g = None
        if g is None:
            g = torch.zeros_like(want[gname], dtype=torch.float64)
        m = mask if g.dim() == 2 else mask[..., None]
        errs[gname] = rel_err(g * m, want[gname])
    if case.get("verl"):
        errs["verl.advantages"] = verl_advantages(case, inp, want)
        if "verl_advantages" in want:
            errs["verl_advantages"] = errs["verl.advantages"]
    if case.get("verl_terms"):
        errs["verl.agg_loss"] = verl_terms(mod, out, inp, want)
    missing = [k for k in want if k not in errs]
    for k in missing:
        errs[k] = float("inf")
    return errs


def main(manifest):
    with open(manifest) as f:
        cases = json.load(f)
    result = []
    for case in cases:
        try:
            try:
                errs = run_case(case)
            finally:
                sys.path.remove(case["dir"])
            result.append({"case": case["name"], "errors": errs})
        except Exception as e:  # reported per case, with what failed
            result.append({"case": case["name"], "exception": f"{type(e).__name__}: {e}"})
    print(json.dumps(result, allow_nan=True))


if __name__ == "__main__":
    main(sys.argv[1])
