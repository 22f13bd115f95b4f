#!/usr/bin/env python3
"""PyTorch eager baselines for Keel's device kernels (same math, same GPU).

1. GRPO's token-level loss and its gradient (stdlib/grpo.recipe: group-
   normalised rewards, ratio clipped to [0.8, 1.2] with dual clip 3, k3 KL to
   the reference with coefficient 0.001, token mean; metrics approx_kl,
   clip_frac, entropy), written as verl's core_algos would run it: eager ops,
   autograd for d_logp.
2. The logits step: logp and entropy from logits [N, V] by log_softmax, and
   d_logits by autograd from upstream gradients of logp and entropy.
3. The card's copy bandwidth (device-to-device copy of 4 GiB).

Timings are CUDA-event medians after warm-up; "GB/s" counts the bytes the
computation must move (inputs read once, gradient written once), as
`keel bench` does. Prints one JSON object.

Usage: python3 bench/torch_eager.py [--tokens 16777216] [--seq-len 1024]
       [--logit-tokens 32768] [--vocab 151936] [--iters 10]
"""
import argparse
import json

import torch


def timed(fn, iters):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(iters):
    n = (4 << 30) // 4
    x = torch.empty(n, device="cuda", dtype=torch.float32).uniform_()
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x), iters)
    return 2 * n * 4 / s / 1e9


def grpo_batch(tokens, seq_len, group=8):
    b = max(group, tokens // seq_len // group * group)
    t = seq_len
    g = torch.Generator(device="cuda").manual_seed(1)
    lens = torch.randint(t // 2, t + 1, (b,), device="cuda", generator=g)
    pos = torch.arange(t, device="cuda")[None, :]
    mask = (pos < lens[:, None]).float()
    logp = -(0.2 + torch.rand(b, t, device="cuda", generator=g))
    old = logp + 0.1 * torch.randn(b, t, device="cuda", generator=g)
    ref = logp + 0.1 * torch.randn(b, t, device="cuda", generator=g)
    ent = 2 * torch.rand(b, t, device="cuda", generator=g)
    reward = torch.rand(b, device="cuda", generator=g)
    gid = torch.arange(b, device="cuda") // group
    return dict(b=b, t=t, group=group, mask=mask, logp=logp, old=old, ref=ref,
                ent=ent, reward=reward, gid=gid)


def grpo_step(d):
    logp = d["logp"].detach().requires_grad_(True)
    mask, old, ref, ent, reward, gid = (d[k] for k in ("mask", "old", "ref", "ent", "reward", "gid"))
    ng = int(d["b"] // d["group"])
    ones = torch.ones_like(reward)
    n = torch.zeros(ng, device="cuda").index_add_(0, gid, ones)
    s = torch.zeros(ng, device="cuda").index_add_(0, gid, reward)
    mean = s / n.clamp(min=1)
    sq = torch.zeros(ng, device="cuda").index_add_(0, gid, (reward - mean[gid]) ** 2)
    std = (sq / (n - 1).clamp(min=1)).sqrt()
    mu = torch.where(n > 1, mean, torch.zeros_like(mean))
    sd = torch.where(n > 1, std, torch.ones_like(std))
    adv = ((reward - mu[gid]) / (sd[gid] + 1e-6))[:, None]
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * 3.0), pg)
    dlt = torch.clamp(ref - logp, -20, 20)
    kl = torch.clamp(torch.exp(dlt) - dlt - 1, -10, 10)
    ntok = mask.sum().clamp(min=1)
    loss = (pg * mask).sum() / ntok + 0.001 * (kl * mask).sum() / ntok
    with torch.no_grad():
        approx_kl = ((old - logp) * mask).sum() / ntok
        clipped = (-adv * torch.clamp(ratio, 0.8, 1.2) > -adv * ratio).float()
        clip_frac = (clipped * mask).sum() / ntok
        ent_mean = (ent * mask).sum() / ntok
    loss.backward()
    return loss.detach(), logp.grad, approx_kl, clip_frac, ent_mean


def logits_step(z, tokens, gl, ge):
    z = z.detach().requires_grad_(True)
    lsm = torch.log_softmax(z, dim=-1)
    logp = lsm.gather(1, tokens[:, None])[:, 0]
    ent = -(lsm.exp() * lsm).sum(-1)
    ((logp * gl).sum() + (ent * ge).sum()).backward()
    return z.grad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16 << 20)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--logit-tokens", type=int, default=32768)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    out = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    out["copy_gb_s"] = copy_bandwidth(a.iters)

    d = grpo_batch(a.tokens, a.seq_len)
    b, t = d["b"], d["t"]
    s = timed(lambda: grpo_step(d), a.iters)
    moved = 5 * b * t * 4 + 2 * b * 4 + b * t * 4  # 5 token inputs, reward+group, d_logp
    out["grpo"] = {"b": b, "t": t, "positions": b * t, "valid_tokens": int(d["mask"].sum()),
                   "seconds": s, "gb_s": moved / s / 1e9, "bytes": moved}
    del d
    torch.cuda.empty_cache()

    v = a.vocab
    res = {}
    for n in (a.logit_tokens, a.logit_tokens // 2, a.logit_tokens // 4):
        try:
            torch.cuda.empty_cache()
            z = torch.randn(n, v, device="cuda") * 2
            tokens = torch.randint(0, v, (n,), device="cuda")
            gl = torch.randn(n, device="cuda") * 0.1
            ge = torch.randn(n, device="cuda") * 0.1
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            s = timed(lambda: logits_step(z, tokens, gl, ge), max(3, a.iters // 3))
            peak = torch.cuda.max_memory_allocated() - base
            res = {"tokens": n, "vocab": v, "seconds": s, "gb_s": n * v * 4 * 3 / s / 1e9,
                   "peak_extra_bytes": peak, "peak_extra_over_logits": peak / (n * v * 4)}
            del z
            break
        except torch.cuda.OutOfMemoryError:
            res.setdefault("oom_at_tokens", []).append(n)
            torch.cuda.empty_cache()
    out["logits"] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
