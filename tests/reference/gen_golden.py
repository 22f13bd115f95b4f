"""Generate tests/golden/*.safetensors: randomized batches (B=16, T=24,
groups of 4, variable lengths, binary and real rewards) with the loss,
advantages and d_logp that verl 0.9 computes (via verl_reference.py).

Each file holds the batch tensors (f32/i64, as docs/batch-format.md says)
plus `expect.loss` [1], `expect.d_logp` [B, T] and `expect.advantages` [B, T]
in f64. The preset is the file name's part before `__`.

Usage: python3 tests/reference/gen_golden.py   (needs numpy, safetensors)
"""

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


def main():
    os.makedirs(OUT, exist_ok=True)
    seed = 1000
    for name in PRESETS:
        for variant in ("binary", "real"):
            seed += 1
            rng = np.random.default_rng(seed)
            b32 = make_batch(rng, variant == "binary")
            b = as64(b32)
            loss, advf = preset_fn(name)
            a = advf(b)
            value = loss(b["logp"], b["logp"], b, a)
            grad = fd_grad(loss, b, a)
            out = dict(b32)
            out["expect.loss"] = np.array([value], dtype=np.float64)
            out["expect.d_logp"] = grad.astype(np.float64)
            out["expect.advantages"] = (a * b["mask"]).astype(np.float64)
            path = os.path.join(OUT, f"{name}__{variant}.safetensors")
            save_file(out, path)
            print(f"{path}: loss {value:.9f}")


if __name__ == "__main__":
    main()
