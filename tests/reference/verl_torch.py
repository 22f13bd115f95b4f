"""The golden presets computed by verl 0.9.1's own functions
(`verl.trainer.ppo.core_algos`: the advantage estimators, the registered
policy losses, `agg_loss`, `kl_penalty`) on CPU torch, in float64, with
d_logp from torch autograd.

Needs `pip install verl==0.9.1` (and CPU-capable torch) in the Python that
runs `gen_golden.py --reference verl`. Nothing here re-implements verl: each
preset only says which verl functions it calls, with which configuration.

`clip_cov` is not here: verl picks the tokens it un-clips with
`torch.randperm`, which no other executor can reproduce; its golden values
come from `verl_reference.py`, which makes the same choice with Keel's
documented `rand(seed)`.
"""

import numpy as np
import torch

from verl.trainer.ppo import core_algos as C
from verl.workers.config import ActorConfig, PolicyLossConfig

VERL_PRESETS = [
    "ppo", "grpo", "grpo_entropy", "dapo", "dr_grpo", "gspo", "rloo",
    "reinforce_pp", "reinforce_pp_baseline", "kl_cov",
]


class _AlgoConfig(dict):
    """The fields of `AlgoConfig` the estimators read (attribute or .get)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def _actor(lo=0.2, hi=0.2, **policy_loss):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_mini_batch_size=16,
        ppo_micro_batch_size_per_gpu=16,
        clip_ratio=lo,
        clip_ratio_low=lo,
        clip_ratio_high=hi,
        clip_ratio_c=3.0,
        policy_loss=PolicyLossConfig(**policy_loss),
    )


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _token_rewards(b):
    """The sequence reward at each response's last valid token, as verl's
    reward managers write `token_level_rewards`."""
    m = b["mask"]
    r = np.zeros_like(m, dtype=np.float64)
    for i in range(m.shape[0]):
        idx = np.nonzero(m[i])[0]
        if len(idx):
            r[i, idx[-1]] = b["reward"][i]
    return _t(r)


def _advantages(name, b):
    mask = _t(b["mask"])
    tlr = _token_rewards(b)
    index = np.asarray(b["group"])
    if name == "ppo":
        adv, _ = C.compute_gae_advantage_return(tlr, _t(b["values"]), mask, gamma=1.0, lam=1.0)
    elif name in ("grpo", "grpo_entropy", "dapo", "gspo", "kl_cov"):
        adv, _ = C.compute_grpo_outcome_advantage(tlr, mask, index)
    elif name == "dr_grpo":
        adv, _ = C.compute_grpo_outcome_advantage(tlr, mask, index, norm_adv_by_std_in_grpo=False)
    elif name == "rloo":
        adv, _ = C.compute_rloo_outcome_advantage(tlr, mask, index)
    elif name == "reinforce_pp":
        adv, _ = C.compute_reinforce_plus_plus_outcome_advantage(tlr, mask, config=_AlgoConfig(gamma=1.0))
    elif name == "reinforce_pp_baseline":
        adv, _ = C.compute_reinforce_plus_plus_baseline_outcome_advantage(tlr, mask, index)
    else:
        raise ValueError(name)
    return adv


def _loss(name, b, lp, adv):
    """The mini-batch loss verl's `ppo_loss` computes for one micro-batch
    holding the whole batch (dp_size 1)."""
    mask = _t(b["mask"]) > 0
    old = _t(b["old_logp"])

    def pg(loss_mode, mode, actor):
        fn = C.get_policy_loss_fn(loss_mode)
        loss, _ = fn(
            old_log_prob=old,
            log_prob=lp,
            advantages=adv,
            response_mask=mask,
            loss_agg_mode=mode,
            config=actor,
            rollout_is_weights=None,
        )
        return loss

    if name in ("ppo", "rloo", "reinforce_pp", "reinforce_pp_baseline"):
        return pg("vanilla", "token-mean", _actor())
    if name in ("grpo", "grpo_entropy"):
        loss = pg("vanilla", "token-mean", _actor())
        kl = C.kl_penalty(lp, _t(b["ref_logp"]), "low_var_kl")
        loss = loss + 0.001 * C.agg_loss(kl, mask, "token-mean")
        if name == "grpo_entropy":
            loss = loss - 0.01 * C.agg_loss(_t(b["entropy"]), mask, "token-mean")
        return loss
    if name == "dapo":
        return pg("vanilla", "token-mean", _actor(0.2, 0.28))
    if name == "dr_grpo":
        # loss_scale_factor unset: the padded response length.
        return pg("vanilla", "seq-mean-token-sum-norm", _actor())
    if name == "gspo":
        return pg("gspo", "seq-mean-token-mean", _actor(3e-4, 4e-4))
    if name == "kl_cov":
        return pg("kl_cov", "token-mean", _actor(loss_mode="kl_cov", kl_cov_ratio=0.0002, ppo_kl_coef=1.0))
    raise ValueError(name)


def expect(name, b):
    """(loss, d_logp [B, T], advantages [B, T]) of preset `name` on the f64
    batch `b`, from verl's own functions."""
    adv = _advantages(name, b).detach()
    lp = _t(b["logp"]).clone().requires_grad_(True)
    loss = _loss(name, b, lp, adv)
    loss.backward()
    mask = np.asarray(b["mask"], dtype=np.float64)
    return float(loss.detach()), lp.grad.numpy() * mask, adv.numpy() * mask
