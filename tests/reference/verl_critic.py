"""Generate tests/golden/ppo_critic__{binary,real,multiturn}.safetensors:
randomized PPO batches (B=16, T=24, variable lengths; `multiturn` with
environment tokens of mask 0 inside responses) with the critic's
prediction during the update (`vpred`), and what verl 0.9.1 computes from
them with its own functions, in float64 on CPU torch:

- `C.compute_gae_advantage_return` (gamma = lam = 1): the whitened
  advantages and the returns (advantages + values, before whitening);
- `C.compute_value_loss` (cliprange_value 0.5, token-mean): the value loss,
  its gradient w.r.t. `vpred` by torch autograd, and `vf_clipfrac`;
- `critic/vf_explained_var` as `metric_utils.compute_data_metrics` writes it
  (1 - var(returns - values) / (var(returns) + 1e-5) over the masked tokens);
- the policy loss of `stdlib/ppo.recipe` through `verl_torch.expect("ppo")`.

The file holds the batch tensors (f32/i64) plus `expect.*` in f64. Usage:
`python3 tests/reference/verl_critic.py` (needs verl==0.9.1 and torch).
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file

from verl.trainer.ppo import core_algos as C

import gen_golden
import verl_torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden")
CLIP = 0.5


def expect(b):
    mask = torch.as_tensor(b["mask"], dtype=torch.float64)
    values = torch.as_tensor(b["values"], dtype=torch.float64)
    tlr = torch.as_tensor(verl_torch._token_rewards(b), dtype=torch.float64)
    adv, returns = C.compute_gae_advantage_return(tlr, values, mask, gamma=1.0, lam=1.0)
    vpred = torch.tensor(b["vpred"], dtype=torch.float64, requires_grad=True)
    vf_loss, vf_clipfrac = C.compute_value_loss(
        vpred, returns, values, mask, cliprange_value=CLIP, loss_agg_mode="token-mean"
    )
    vf_loss.backward()
    keep = mask.bool()
    vr = torch.masked_select(returns, keep)
    vv = torch.masked_select(values, keep)
    explained = 1.0 - torch.var(vr - vv) / (torch.var(vr) + 1e-5)
    loss, d_logp, _ = verl_torch.expect("ppo", b)
    return {
        "expect.loss": np.array([loss], dtype=np.float64),
        "expect.d_logp": np.asarray(d_logp, dtype=np.float64),
        "expect.advantages": (adv * mask).numpy(),
        "expect.returns": (returns * mask).numpy(),
        "expect.value_loss": np.array([vf_loss.item()], dtype=np.float64),
        "expect.d_vpred": vpred.grad.numpy().astype(np.float64),
        "expect.value_clipfrac": np.array([float(vf_clipfrac)], dtype=np.float64),
        "expect.explained_variance": np.array([explained.item()], dtype=np.float64),
    }


def multiturn(b32, rng):
    """Environment tokens inside responses: every row of length >= 6 gets
    one or two spans of mask 0 (a tool's output) strictly inside it; the
    last token stays the policy's, where the reward goes."""
    mask = b32["mask"].copy()
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        for _ in range(int(rng.integers(1, 3)) if n >= 6 else 0):
            start = int(rng.integers(1, n - 3))
            width = int(rng.integers(1, 3))
            mask[i, start:start + width] = 0.0
    b32["mask"] = mask.astype(np.float32)
    return b32


def main():
    for k, variant in enumerate(("binary", "real", "multiturn")):
        rng = np.random.default_rng(7100 + k)
        b32 = gen_golden.make_batch(rng, variant == "binary")
        if variant == "multiturn":
            b32 = multiturn(b32, rng)
        # The critic moved during the update: some predictions leave the
        # clip range around the rollout-time values, some stay inside.
        b32["vpred"] = (b32["values"] + rng.normal(0.0, 0.5, size=b32["values"].shape)).astype(np.float32)
        b = gen_golden.as64(b32)
        out = dict(b32)
        out.update(expect(b))
        path = os.path.join(OUT, f"ppo_critic__{variant}.safetensors")
        save_file(out, path, metadata={"reference": "verl 0.9.1"})
        print(f"{path}: value loss {out['expect.value_loss'][0]:.9f}, "
              f"clipfrac {out['expect.value_clipfrac'][0]:.4f}, "
              f"explained variance {out['expect.explained_variance'][0]:.6f}")


if __name__ == "__main__":
    main()
