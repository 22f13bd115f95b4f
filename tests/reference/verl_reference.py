"""An independent numpy re-implementation of verl 0.9.1's loss functions
(`verl/trainer/ppo/core_algos.py`, `verl/utils/torch_functional.py`), used
only to produce the golden vectors in `tests/golden/`.

Written from the verl source semantics (see ../shared/spec and the closing
notes), not copied. Gradients are central finite differences in float64 of
`loss(lp, lps)`, where `lp` is the differentiable log-prob and `lps` its
detached copy (verl's `.detach()`), so stop-gradient semantics are exact.

Run `python3 tests/reference/gen_golden.py` to regenerate the fixtures.
"""

import numpy as np

# ----- torch_functional -------------------------------------------------------


def masked_sum(v, m):
    return np.sum(np.where(m > 0, v, 0.0) * m)


def masked_mean(v, m):
    return masked_sum(v, m) / (m.sum() + 1e-8)


def masked_var(v, m):
    mean = masked_mean(v, m)
    var = masked_mean((v - mean) ** 2, m)
    n = m.sum()
    return var * n / (n - 1)


def masked_whiten(v, m):
    mean, var = masked_mean(v, m), masked_var(v, m)
    return (v - mean) / np.sqrt(var + 1e-8)


# ----- advantage estimators ------------------------------------------------------


def token_rewards(reward, mask):
    r = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        idx = np.nonzero(mask[i])[0]
        if len(idx):
            r[i, idx[-1]] = reward[i]
    return r


def groups(index):
    out = {}
    for i, g in enumerate(index):
        out.setdefault(int(g), []).append(i)
    return out


def grpo_adv(reward, mask, index, norm_by_std=True, eps=1e-6):
    s = token_rewards(reward, mask).sum(-1)
    out = s.copy()
    for _, members in groups(index).items():
        xs = s[members]
        if len(members) == 1:
            mu, sd = 0.0, 1.0
        else:
            mu, sd = xs.mean(), xs.std(ddof=1)
        for i in members:
            out[i] = (s[i] - mu) / (sd + eps) if norm_by_std else s[i] - mu
    return out[:, None] * mask


def rloo_adv(reward, mask, index):
    s = token_rewards(reward, mask).sum(-1)
    out = s.copy()
    for _, members in groups(index).items():
        n = len(members)
        if n > 1:
            mu = s[members].mean()
            for i in members:
                out[i] = s[i] * n / (n - 1) - mu * n / (n - 1)
    return out[:, None] * mask


def rfpp_adv(reward, mask, gamma=1.0):
    r = token_rewards(reward, mask)
    ret = np.zeros_like(r)
    running = np.zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        ret[:, t] = running
        running = running * mask[:, t]
    return masked_whiten(ret, mask) * mask


def rfpp_baseline_adv(reward, mask, index):
    s = token_rewards(reward, mask).sum(-1)
    out = s.copy()
    for _, members in groups(index).items():
        mu = 0.0 if len(members) == 1 else s[members].mean()
        for i in members:
            out[i] = s[i] - mu
    scores = np.tile(out[:, None], (1, mask.shape[1])) * mask
    return masked_whiten(scores, mask) * mask


def gae_adv(reward, values, mask, gamma=1.0, lam=1.0):
    r = token_rewards(reward, mask)
    T = r.shape[1]
    nextvalues = np.zeros(r.shape[0])
    lastgaelam = np.zeros(r.shape[0])
    rev = []
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * nextvalues - values[:, t]
        lg = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lg * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        rev.append(lastgaelam)
    adv = np.stack(rev[::-1], axis=1)
    return masked_whiten(adv, mask)


# ----- aggregation and losses ------------------------------------------------------


def agg_loss(L, m, mode):
    if mode == "token-mean":
        return masked_sum(L, m) / m.sum()
    if mode == "seq-mean-token-sum":
        seq = np.sum(L * m, -1)
        sm = (m.sum(-1) > 0).astype(float)
        return np.sum(np.where(sm > 0, seq, 0) * sm) / sm.sum()
    if mode == "seq-mean-token-mean":
        cnt = m.sum(-1)
        seq = np.sum(L * m, -1) / (cnt + 1e-8)
        sm = (cnt > 0).astype(float)
        return np.sum(np.where(sm > 0, seq, 0) * sm) / sm.sum()
    if mode == "seq-mean-token-sum-norm":
        # verl 0.9.1: the seq-mean of token sums, then / the padded length
        # (verl <= 0.4 had no seq-mean, B' times larger).
        seq = np.sum(L * m, -1)
        sm = (m.sum(-1) > 0).astype(float)
        return np.sum(seq * sm) / sm.sum() / m.shape[-1]
    raise ValueError(mode)


def vanilla_loss(old, lp, adv, m, mode, lo=0.2, hi=0.2, c=3.0):
    nakl = np.clip(lp - old, -20.0, 20.0)
    ratio = np.exp(nakl)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - lo, 1 + hi)
    cl1 = np.maximum(l1, l2)
    l3 = -adv * c
    cl2 = np.minimum(l3, cl1)
    return agg_loss(np.where(adv < 0, cl2, cl1), m, mode)


def gspo_loss(old, lp, lps, adv, m, lo=3e-4, hi=4e-4):
    nakl = lp - old
    nakl_s = lps - old
    seq_len = np.clip(m.sum(-1), 1, None)
    seq = np.sum(nakl_s * m, -1) / seq_len
    log_r = lp - lps + seq[:, None]
    log_r = np.minimum(log_r, 10.0)
    r = np.exp(log_r)
    l1 = -adv * r
    l2 = -adv * np.clip(r, 1 - lo, 1 + hi)
    return agg_loss(np.maximum(l1, l2), m, "seq-mean-token-mean")


def kl_cov_loss(old, lp, lps, adv, m, ratio=0.0002, coef=1.0):
    nakl = lp - old
    r = np.exp(nakl)
    l1 = -adv * r
    lkl = -adv * r + coef * np.abs(nakl)
    loss = l1.copy()
    valid = m > 0
    va = adv[valid]
    vl = lps[valid]
    cov = (va - va.mean()) * (vl - vl.mean())
    k = max(1, int(len(cov) * ratio))
    order = sorted(range(len(cov)), key=lambda i: (-cov[i], i))[:k]
    flat = np.flatnonzero(valid.reshape(-1))
    for i in order:
        b, t = divmod(flat[i], m.shape[1])
        loss[b, t] = lkl[b, t]
    return agg_loss(loss, m, "token-mean")


def splitmix_uniform(seed, i):
    M = (1 << 64) - 1
    z = (seed ^ ((i * 0x9E3779B97F4A7C15) & M)) & M
    z = (z + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def clip_cov_loss(old, lp, lps, adv, m, lo=0.2, hi=0.2, ratio=0.0002, lb=1.0, ub=5.0, seed=0):
    r = np.exp(lp - old)
    rs = np.exp(lps - old)
    l1 = -adv * r
    l2 = -adv * np.clip(r, 1 - lo, 1 + hi)
    clipped = (-adv * np.clip(rs, 1 - lo, 1 + hi)) > (-adv * rs)
    valid = m > 0
    cov = (adv - masked_mean(adv, m)) * (lps - masked_mean(lps, m))
    cand = (cov > lb) & (cov < ub) & valid & ~clipped
    clip_num = max(int(ratio * m.sum()), 1)
    # Keel's selection: the clip_num largest rand(seed) among candidates
    # (the valid tokens ranked; non-candidates score -1).
    B, T = m.shape
    score = {}
    for b in range(B):
        for t in range(T):
            if valid[b, t]:
                score[(b, t)] = splitmix_uniform(seed, b * T + t) if cand[b, t] else -1.0
    ranked = sorted(score, key=lambda bt: (-score[bt], bt[0] * T + bt[1]))[:clip_num]
    corr = np.ones_like(adv)
    for bt in ranked:
        if cand[bt]:
            corr[bt] = 0.0
    return agg_loss(np.maximum(l1, l2) * corr, m, "token-mean")


def k3(lp, ref):
    kl = np.clip(ref - lp, -20, 20)
    return np.clip(np.exp(kl) - kl - 1, -10, 10)
