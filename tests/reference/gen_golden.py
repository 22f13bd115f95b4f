"""Generate tests/golden/*.safetensors: randomized batches (B=16, T=24,
groups of 4, variable lengths, binary and real rewards) with the loss,
advantages and d_logp that verl 0.9.1 computes.

The expected values come from verl's own functions (`verl_torch.py`,
`--reference verl`, the default; d_logp by torch autograd) for every preset
but `clip_cov`, whose un-clipped tokens verl draws with `torch.randperm`;
that one, and every preset with `--reference numpy`, comes from the numpy
re-implementation `verl_reference.py` (d_logp by central differences).
`--compare` writes nothing: it prints, per preset, how far the numpy
reference is from verl's functions.

Each file holds the batch tensors (f32/i64, as docs/batch-format.md says)
plus `expect.loss` [1], `expect.d_logp` [B, T] and `expect.advantages` [B, T]
in f64. The preset is the file name's part before `__`.

Usage: python3 tests/reference/gen_golden.py [--reference verl|numpy] [--compare]
(needs numpy and safetensors; verl==0.9.1 and torch for the verl reference)
"""

import argparse
import os
import numpy as np
from safetensors.numpy import save_file
import verl_reference as V

B, T = 16, 24
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden")


def make_batch(rng, binary):
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T  # one full-length response
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    group = np.repeat(np.arange(B // 4), 4)
    rng.shuffle(group)
    logp = -np.abs(rng.normal(1.0, 0.7, size=(B, T)))
    old = logp + rng.normal(0.0, 0.25, size=(B, T))
    ref = logp + rng.normal(0.0, 0.3, size=(B, T))
    if binary:
        reward = (rng.random(B) < 0.5).astype(float)
    else:
        reward = rng.normal(0.0, 1.0, size=B)
    values = rng.normal(0.0, 0.5, size=(B, T))
    entropy = np.abs(rng.normal(1.5, 0.5, size=(B, T)))
    f = lambda x: np.asarray(x, dtype=np.float32)
    return {
        "logp": f(logp),
        "old_logp": f(old),
        "ref_logp": f(ref),
        "mask": f(mask),
        "reward": f(reward),
        "group": group.astype(np.int64),
        "values": f(values),
        "entropy": f(entropy),
    }


def as64(b):
    return {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in b.items()}


def preset_fn(name):
    """(loss(lp, lps, b), advantages(b)) following verl for each preset."""

    def grpo_like(b, std=True):
        return V.grpo_adv(b["reward"], b["mask"], b["group"], norm_by_std=std)

    if name == "ppo":
        adv = lambda b: V.gae_adv(b["reward"], b["values"], b["mask"])
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean")
    elif name in ("grpo", "grpo_entropy"):
        adv = grpo_like
        coef = 0.01 if name == "grpo_entropy" else 0.0

        def loss(lp, lps, b, a):
            pg = V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean")
            kl = V.agg_loss(V.k3(lp, b["ref_logp"]), b["mask"], "token-mean")
            ent = V.agg_loss(b["entropy"], b["mask"], "token-mean")
            return pg + 0.001 * kl - coef * ent
    elif name == "dapo":
        adv = grpo_like
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean", 0.2, 0.28)
    elif name == "dr_grpo":
        adv = lambda b: grpo_like(b, std=False)
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "seq-mean-token-sum-norm")
    elif name == "gspo":
        adv = grpo_like
        loss = lambda lp, lps, b, a: V.gspo_loss(b["old_logp"], lp, lps, a, b["mask"])
    elif name == "rloo":
        adv = lambda b: V.rloo_adv(b["reward"], b["mask"], b["group"])
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean")
    elif name == "reinforce_pp":
        adv = lambda b: V.rfpp_adv(b["reward"], b["mask"])
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean")
    elif name == "reinforce_pp_baseline":
        adv = lambda b: V.rfpp_baseline_adv(b["reward"], b["mask"], b["group"])
        loss = lambda lp, lps, b, a: V.vanilla_loss(b["old_logp"], lp, a, b["mask"], "token-mean")
    elif name == "kl_cov":
        adv = grpo_like
        loss = lambda lp, lps, b, a: V.kl_cov_loss(b["old_logp"], lp, lps, a, b["mask"])
    elif name == "clip_cov":
        adv = grpo_like
        loss = lambda lp, lps, b, a: V.clip_cov_loss(b["old_logp"], lp, lps, a, b["mask"])
    else:
        raise ValueError(name)
    return loss, adv


def fd_grad(loss, b, a, h=1e-6):
    lp0 = b["logp"]
    g = np.zeros_like(lp0)
    for i in range(lp0.shape[0]):
        for t in range(lp0.shape[1]):
            if b["mask"][i, t] == 0:
                continue
            up = lp0.copy()
            up[i, t] += h
            dn = lp0.copy()
            dn[i, t] -= h
            g[i, t] = (loss(up, lp0, b, a) - loss(dn, lp0, b, a)) / (2 * h)
    return g


PRESETS = [
    "ppo", "grpo", "grpo_entropy", "dapo", "dr_grpo", "gspo", "rloo",
    "reinforce_pp", "reinforce_pp_baseline", "kl_cov", "clip_cov",
]


def batches():
    """(preset, variant, f32 batch) in a fixed order and seed sequence."""
    seed = 1000
    for name in PRESETS:
        for variant in ("binary", "real"):
            seed += 1
            rng = np.random.default_rng(seed)
            yield name, variant, make_batch(rng, variant == "binary")


def numpy_expect(name, b):
    loss, advf = preset_fn(name)
    a = advf(b)
    value = loss(b["logp"], b["logp"], b, a)
    return value, fd_grad(loss, b, a), a * b["mask"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", choices=["verl", "numpy"], default="verl")
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if args.reference == "verl" or args.compare:
        import verl_torch
    if args.compare:
        for name, variant, b32 in batches():
            if name not in verl_torch.VERL_PRESETS:
                print(f"{name}/{variant}: not compared (verl draws with torch.randperm)")
                continue
            b = as64(b32)
            nl, nd, na = numpy_expect(name, b)
            vl, vd, va = verl_torch.expect(name, b)
            print(
                f"{name}/{variant}: loss numpy {nl:.9g} verl {vl:.9g} "
                f"(|diff| {abs(nl - vl):.2e}), max |d_logp diff| {np.max(np.abs(nd - vd)):.2e}, "
                f"max |adv diff| {np.max(np.abs(na - va)):.2e}"
            )
        return
    os.makedirs(OUT, exist_ok=True)
    for name, variant, b32 in batches():
        b = as64(b32)
        if args.reference == "verl" and name in verl_torch.VERL_PRESETS:
            value, grad, adv = verl_torch.expect(name, b)
            source = "verl 0.9.1"
        else:
            value, grad, adv = numpy_expect(name, b)
            source = "numpy reference"
        out = dict(b32)
        out["expect.loss"] = np.array([value], dtype=np.float64)
        out["expect.d_logp"] = np.asarray(grad, dtype=np.float64)
        out["expect.advantages"] = np.asarray(adv, dtype=np.float64)
        path = os.path.join(OUT, f"{name}__{variant}.safetensors")
        save_file(out, path, metadata={"reference": source})
        print(f"{path}: loss {value:.9f} ({source})")


if __name__ == "__main__":
    main()
