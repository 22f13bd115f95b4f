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

4. The logits step with bf16 logits (upcast to f32 for the softmax, as
   verl does; the gradient lands in bf16), beside `keel bench logits --bf16`.

Usage: python3 bench/torch_eager.py [--tokens 16777216] [--seq-len 1024]
       [--logit-tokens 32768] [--bf16-tokens 8192] [--vocab 151936]
       [--iters 10] [--device cuda]
`--check KEEL` first runs the eager GRPO loss (in f64) and `KEEL loss`
(interpreter and kernel backends) on one small batch with logits, extreme
log-ratios and a group of equal rewards: loss, metrics, d_logp and d_logits
must agree within 1e-5 of their scale, or the script exits 1 after the
benchmarks. `--device cpu` with small sizes checks the script on a machine
without a GPU (wall-clock timings).
"""
import argparse
import json
import os
import time

import torch

DEV = "cuda"
# torch.OutOfMemoryError is recent; torch.cuda's name is older.
OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters):
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(iters):
        if DEV != "cuda":
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            continue
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(iters, size=4 << 30):
    n = size // 4
    x = torch.empty(n, device=DEV, dtype=torch.float32).uniform_()
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x), iters)
    return 2 * n * 4 / s / 1e9


def grpo_batch(tokens, seq_len, group=8):
    b = max(group, tokens // seq_len // group * group)
    t = seq_len
    g = torch.Generator(device=DEV).manual_seed(1)
    lens = torch.randint(t // 2, t + 1, (b,), device=DEV, generator=g)
    pos = torch.arange(t, device=DEV)[None, :]
    mask = (pos < lens[:, None]).float()
    logp = -(0.2 + torch.rand(b, t, device=DEV, generator=g))
    old = logp + 0.1 * torch.randn(b, t, device=DEV, generator=g)
    ref = logp + 0.1 * torch.randn(b, t, device=DEV, generator=g)
    ent = 2 * torch.rand(b, t, device=DEV, generator=g)
    reward = torch.rand(b, device=DEV, generator=g)
    gid = torch.arange(b, device=DEV) // group
    return dict(b=b, t=t, group=group, mask=mask, logp=logp, old=old, ref=ref,
                ent=ent, reward=reward, gid=gid)


def grpo_loss(d, logp):
    """GRPO's token-level loss of `logp` and its metrics (approx_kl,
    clip_frac, entropy), as verl's core_algos computes them."""
    mask, old, ref, ent, reward, gid = (d[k] for k in ("mask", "old", "ref", "ent", "reward", "gid"))
    ng = int(d["b"] // d["group"])
    ones = torch.ones_like(reward)
    n = reward.new_zeros(ng).index_add_(0, gid, ones)
    s = torch.zeros_like(n).index_add_(0, gid, reward)
    mean = s / n.clamp(min=1)
    sq = torch.zeros_like(n).index_add_(0, gid, (reward - mean[gid]) ** 2)
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
    return loss, {"approx_kl": approx_kl, "clip_frac": clip_frac, "entropy": ent_mean}


def grpo_step(d):
    logp = d["logp"].detach().requires_grad_(True)
    loss, metrics = grpo_loss(d, logp)
    loss.backward()
    return loss.detach(), logp.grad, metrics


def logits_step(z, tokens, gl, ge):
    z = z.detach().requires_grad_(True)
    lsm = torch.log_softmax(z.float(), dim=-1)
    logp = lsm.gather(1, tokens[:, None])[:, 0]
    ent = -(lsm.exp() * lsm).sum(-1)
    ((logp * gl).sum() + (ent * ge).sum()).backward()
    return z.grad


def logits_bench(sizes, v, dtype, iters):
    """The logits step at the first of `sizes` (tokens) that fits in memory:
    time, GB/s (logits read twice, gradient written once, at the logits'
    width) and peak memory beyond the logits."""
    width = torch.tensor([], dtype=dtype).element_size()
    oom = []
    for n in sizes:
        z = None
        try:
            empty_cache()
            z = torch.empty(n, v, device=DEV, dtype=dtype).normal_(0, 2)
            tokens = torch.randint(0, v, (n,), device=DEV)
            gl = torch.randn(n, device=DEV) * 0.1
            ge = torch.randn(n, device=DEV) * 0.1
            sync()
            base = memory_allocated()
            reset_peak()
            with RssPeak() as rss:
                s = timed(lambda: logits_step(z, tokens, gl, ge), iters)
            peak = max_memory_allocated() - base if DEV == "cuda" else rss.extra
            return {"tokens": n, "vocab": v, "dtype": str(dtype).replace("torch.", ""),
                    "seconds": s, "tokens_per_s": n / s, "gb_s": n * v * width * 3 / s / 1e9,
                    "peak_extra_bytes": peak, "peak_extra_over_logits": peak / (n * v * width),
                    "oom_at_tokens": oom}
        except OOM:
            oom.append(n)
        finally:
            del z
            empty_cache()
    return {"oom_at_tokens": oom}


ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
             torch.bfloat16: "BF16", torch.uint8: "U8"}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous().clone()
        try:
            data = bytes(t.untyped_storage())
        except AttributeError:  # torch < 2.0
            data = t.numpy().tobytes()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        dtype = {v: k for k, v in ST_DTYPES.items()}[h["dtype"]]
        a, b = h["data_offsets"]
        data = bytearray(raw[8 + n + a:8 + n + b])
        out[name] = torch.frombuffer(data, dtype=dtype).reshape(h["shape"]).double()
    return out


def check_same_math(keel, recipe, tol=1e-5):
    """Eager and `keel loss` (interpreter and kernel backends) on one small
    batch with logits: the loss, its metrics, d_logp and d_logits must agree
    (relative to each output's largest entry) — the eager baselines compute
    what the recipe computes."""
    import subprocess
    import tempfile

    # The batch is written in f32 and the eager math runs on it in f64, as
    # the interpreter does (in f32, a group of equal rewards gets a rounding
    # residue for a deviation, and an advantage of ~0.01 instead of 0).
    d = grpo_batch(48 * 16, 16)
    b, t, v = d["b"], d["t"], 96
    g = torch.Generator(device=DEV).manual_seed(2)
    z32 = torch.randn(b, t, v, device=DEV, generator=g) * 2
    tokens = torch.randint(0, v, (b, t), device=DEV, generator=g)
    logp32 = torch.log_softmax(z32, dim=-1).gather(2, tokens[..., None])[..., 0]
    # Extreme log-ratios and one group of equal rewards, as the parity tests have.
    d["old"] = logp32 + 0.1 * torch.randn(b, t, device=DEV, generator=g)
    d["old"][0, 0] -= 15
    d["old"][1, 1] += 15
    d["reward"][:8] = d["reward"][0]
    inputs = {"logp": logp32, "mask": d["mask"], "old_logp": d["old"], "ref_logp": d["ref"],
              "reward": d["reward"], "group": d["gid"].long(), "logits": z32,
              "tokens": tokens.long()}
    for k in ("mask", "old", "ref", "reward"):
        d[k] = d[k].double()
    z = z32.double().requires_grad_(True)
    lsm = torch.log_softmax(z, dim=-1)
    logp = lsm.gather(2, tokens[..., None])[..., 0]
    logp.retain_grad()
    d["ent"] = -(lsm.exp() * lsm).sum(-1).detach()
    loss, metrics = grpo_loss(d, logp)
    loss.backward()
    want = {"loss": loss.item(), **{k: m.item() for k, m in metrics.items()},
            "d_logp": logp.grad.double().cpu() * d["mask"].double().cpu(),
            "d_logits": z.grad.double().cpu()}
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        batch = os.path.join(tmp, "batch.safetensors")
        write_safetensors(batch, inputs)
        for backend in ("interp", "kernel"):
            grads = os.path.join(tmp, f"grad-{backend}.safetensors")
            run = subprocess.run([keel, "loss", recipe, "--batch", batch, "--json",
                                  "--grad-out", grads, "--backend", backend],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                report[backend] = {"error": run.stderr.strip()[-2000:]}
                continue
            got = json.loads(run.stdout)
            grad = read_safetensors(grads)
            errs = {"loss": abs(got["loss"] - want["loss"]) / max(abs(want["loss"]), 0.1)}
            for k in metrics:
                errs[k] = abs(got["metrics"][k] - want[k]) / max(abs(want[k]), 0.1)
            for k in ("d_logp", "d_logits"):
                diff = (grad[k].reshape(want[k].shape) - want[k]).abs().max().item()
                errs[k] = diff / max(want[k].abs().max().item(), 1e-30)
            report[backend] = {"max_rel_error": max(errs.values()), "errors": errs,
                               "ok": max(errs.values()) <= tol}
    return report


class RssPeak:
    """Peak resident memory above the level at entry, sampled every
    millisecond (the CPU counterpart of torch.cuda.max_memory_allocated)."""

    def __enter__(self):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.rss()
        self.peak = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def poll(self):
        while not self.done.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.extra = self.peak - self.base


def empty_cache():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def memory_allocated():
    return torch.cuda.memory_allocated() if DEV == "cuda" else 0


def reset_peak():
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def max_memory_allocated():
    return torch.cuda.max_memory_allocated() if DEV == "cuda" else 0


def main():
    global DEV
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16 << 20)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--logit-tokens", type=int, default=32768)
    ap.add_argument("--bf16-tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--check", metavar="KEEL",
                    help="first check the eager math against `KEEL loss` on a small batch")
    ap.add_argument("--recipe", default="stdlib/grpo.recipe")
    a = ap.parse_args()
    DEV = a.device
    same = check_same_math(a.check, a.recipe) if a.check else {}
    if same:
        print(json.dumps({"same_math": same}), flush=True)
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    out = {"card": card, "torch": torch.__version__}
    out["copy_gb_s"] = copy_bandwidth(a.iters, 4 << 30 if DEV == "cuda" else 64 << 20)

    d = grpo_batch(a.tokens, a.seq_len)
    b, t = d["b"], d["t"]
    s = timed(lambda: grpo_step(d), a.iters)
    moved = 5 * b * t * 4 + 2 * b * 4 + b * t * 4  # 5 token inputs, reward+group, d_logp
    out["grpo"] = {"b": b, "t": t, "positions": b * t, "valid_tokens": int(d["mask"].sum()),
                   "seconds": s, "gb_s": moved / s / 1e9, "bytes": moved}
    del d
    empty_cache()

    n = a.logit_tokens
    few = max(3, a.iters // 3)
    out["logits"] = logits_bench((n, n // 2, n // 4), a.vocab, torch.float32, few)
    n = a.bf16_tokens
    out["logits_bf16"] = logits_bench((n, n // 2), a.vocab, torch.bfloat16, few)
    out["same_math"] = same
    print(json.dumps(out))
    if not all(r.get("ok") for r in same.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
