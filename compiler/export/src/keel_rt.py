"""Keel's IR semantics in PyTorch: the runtime of every module `keel export`
writes. The same file for every recipe; it holds no method. Each function
is one IR operation, with the meaning the f64 reference interpreter
(`compiler/ir/src/interp.rs`) defines, and every exported module is tested
against that interpreter (`tests/export.rs`).

Levels, coarse to fine: STEP and BATCH (0-d tensors), GROUP [G], SEQ [B],
TOKEN [B, T], VOCAB [B, T, V]. Token (and vocabulary) elements whose mask is
0 take part in no reduction, rank, quantile or scan, except that a
reduction over the vocabulary takes all V entries; a reduction of an empty
unit is 0. Groups are numbered in order of first appearance of their ids.
"""

import torch

STEP, BATCH, GROUP, SEQ, TOKEN, VOCAB = range(6)

_INF = float("inf")


class Shape:
    """B, T, V, the mask and the group of each sequence, for one batch."""

    def __init__(self, inp, dtype):
        mask = inp["mask"]
        if mask.dim() != 2:
            raise ValueError(f"`mask` has shape {tuple(mask.shape)}, expected [B, T]")
        self.dtype = dtype
        self.device = mask.device
        self.valid = mask != 0
        self.b, self.t = mask.shape
        self.v = 1
        for name in ("logits", "teacher_logits", "old_logits"):
            x = inp.get(name)
            if x is not None and x.dim() == 3:
                self.v = x.shape[2]
                break
        group = inp.get("group")
        if group is None:
            self.gid = torch.zeros(self.b, dtype=torch.long, device=self.device)
            self.g = 1
        else:
            _, inv = torch.unique(group.reshape(-1), return_inverse=True)
            n = int(inv.max().item()) + 1 if self.b else 0
            first = torch.full((n,), self.b, dtype=torch.long, device=self.device)
            first = first.scatter_reduce(0, inv, torch.arange(self.b, device=self.device), "amin")
            order = torch.argsort(first)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(n, device=self.device)
            self.gid = rank[inv]
            self.g = max(n, 1)

    def dims(self, level):
        return {STEP: (), BATCH: (), GROUP: (self.g,), SEQ: (self.b,),
                TOKEN: (self.b, self.t), VOCAB: (self.b, self.t, self.v)}[level]

    def n(self, level):
        k = 1
        for d in self.dims(level):
            k *= d
        return k


def full(S, value, level):
    return torch.tensor(float(value), dtype=S.dtype, device=S.device).expand(S.dims(level))


def read(S, inp, name, level):
    """A batch input at its level, as floats; the derived ones computed."""
    x = inp.get(name)
    if x is None:
        if name == "position":
            return torch.arange(S.t, dtype=S.dtype, device=S.device).expand(S.b, S.t)
        if name == "index":
            return torch.arange(S.b, dtype=S.dtype, device=S.device)
        if name == "length":
            return S.valid.to(S.dtype).sum(1)
        if name == "vocab_index":
            return torch.arange(S.v, dtype=S.dtype, device=S.device).expand(S.b, S.t, S.v)
        if name in ("step", "total_steps"):
            return full(S, 1.0, level)
        if name in ("epoch", "progress"):
            return full(S, 0.0, level)
        raise KeyError(f"the loss reads `{name}`, which the batch does not hold")
    x = torch.as_tensor(x, device=S.device)
    if not x.is_floating_point():
        x = x.to(S.dtype)
    elif x.dtype != S.dtype:
        x = x.to(S.dtype)
    want = S.dims(level)
    if tuple(x.shape) != want:
        if x.numel() == 1 and want == ():
            return x.reshape(())
        raise ValueError(f"`{name}` has shape {tuple(x.shape)}, expected {want}")
    return x


# ---- pointwise (compiler/ir/src/ops.rs) ----------------------------------

def sign(x):
    return torch.sign(x).nan_to_num(nan=0.0)


def sigmoid(x):
    return torch.sigmoid(x)


def softplus(x):
    return torch.nn.functional.softplus(x)


def round_(x):
    # Half away from zero, as Rust's f64::round (torch.round is half-even).
    r = torch.trunc(x)
    frac = x - r
    return r + torch.where(frac.abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def not_(x):
    return (x == 0).to(x.dtype)


def minimum(x, y):
    # NaN-propagating; the first argument on a tie (its gradient too).
    nan = torch.isnan(x) | torch.isnan(y)
    return torch.where(nan, x + y, torch.where(y < x, y, x))


def maximum(x, y):
    nan = torch.isnan(x) | torch.isnan(y)
    return torch.where(nan, x + y, torch.where(y > x, y, x))


def clamp(x, lo, hi):
    y = torch.where(x < lo, lo, x)
    return torch.where(y > hi, hi, y)


def where(c, a, b):
    return torch.where(c != 0, a, b)


def cmp(r, like):
    return r.to(like.dtype)


# ---- levels --------------------------------------------------------------

def bc(S, x, frm, to):
    """Broadcast x from a coarser level to a finer one."""
    if frm == to:
        return x
    if frm <= BATCH:
        return x.reshape(()).expand(S.dims(to))
    if frm == GROUP:
        x, frm = x[S.gid], SEQ
    if to == SEQ:
        return x
    if frm == SEQ:
        x, frm = x[:, None].expand(S.b, S.t), TOKEN
    if to == TOKEN:
        return x
    return x[..., None].expand(S.b, S.t, S.v)


def _member(S, frm, to):
    if frm == VOCAB:
        return None if to == TOKEN else S.valid[..., None].expand(S.b, S.t, S.v)
    if frm == TOKEN:
        return S.valid
    return None


def _down(S, x, op, frm, to):
    while frm > to:
        if frm in (VOCAB, TOKEN):
            x = {"sum": lambda: x.sum(-1), "max": lambda: x.amax(-1), "min": lambda: x.amin(-1)}[op]()
            frm -= 1
        elif frm == SEQ and to == GROUP:
            if op == "sum":
                x = torch.zeros(S.g, dtype=x.dtype, device=x.device).index_add(0, S.gid, x)
            else:
                init = -_INF if op == "max" else _INF
                base = torch.full((S.g,), init, dtype=x.dtype, device=x.device)
                x = base.scatter_reduce(0, S.gid, x, "amax" if op == "max" else "amin")
            frm = GROUP
        else:
            x = {"sum": lambda: x.sum(), "max": lambda: x.amax(), "min": lambda: x.amin()}[op]()
            frm = to
    return x


def reduce(S, x, op, frm, to):
    """The masked reduction (sum, max or min) of x from level frm to to."""
    m = _member(S, frm, to)
    fill = {"sum": 0.0, "max": -_INF, "min": _INF}[op]
    if m is not None:
        x = torch.where(m, x, torch.full_like(x, fill))
        cnt = m.to(x.dtype)
    else:
        cnt = torch.ones_like(x).detach()
    if x.numel() == 0:
        return torch.zeros(S.dims(to), dtype=x.dtype, device=x.device)
    y = _down(S, x, op, frm, to)
    c = _down(S, cnt, "sum", frm, to)
    return torch.where(c > 0, y, torch.zeros_like(y))


def _parent(S, frm, to):
    """For each element of level frm (flat), the index of its unit at level to."""
    i = torch.arange(S.n(frm), device=S.device)
    if frm == VOCAB:
        if to == VOCAB:
            return i
        i, frm = i // max(S.v, 1), TOKEN
    if frm == TOKEN:
        if to == TOKEN:
            return i
        i, frm = i // max(S.t, 1), SEQ
    if frm == SEQ:
        if to == SEQ:
            return i
        i, frm = S.gid[i], GROUP
    if frm == GROUP and to == GROUP:
        return i
    return torch.zeros_like(i)


def _valid_flat(S, level, over):
    m = _member(S, level, over)
    if m is None:
        return torch.ones(S.n(level), dtype=torch.bool, device=S.device)
    return m.reshape(-1)


def _grouped(S, level, over, key, descending):
    """Valid members of each unit of `over` (flat indices at `level`), sorted
    by unit, then by key (descending or not, stable: lower index first)."""
    valid = _valid_flat(S, level, over)
    unit = _parent(S, level, over)
    idx = torch.nonzero(valid).reshape(-1)
    k = key.reshape(-1)[idx]
    o = torch.sort(k, descending=descending, stable=True).indices
    idx = idx[o]
    o = torch.sort(unit[idx], stable=True).indices
    idx = idx[o]
    u = unit[idx]
    n_units = S.n(over)
    counts = torch.zeros(n_units, dtype=torch.long, device=S.device).index_add(
        0, u, torch.ones_like(u))
    starts = torch.cumsum(counts, 0) - counts
    return idx, u, counts, starts


def rank(S, x, level, over):
    """0-based descending rank within each unit of `over`; invalid members
    rank last (infinity); ties go to the lower flat index."""
    with torch.no_grad():
        idx, u, _, starts = _grouped(S, level, over, x.detach(), True)
        out = torch.full((S.n(level),), _INF, dtype=S.dtype, device=S.device)
        pos = torch.arange(idx.numel(), device=S.device) - starts[u]
        out[idx] = pos.to(S.dtype)
    return out.reshape(S.dims(level))


def _interp(sx, starts, counts, q):
    n = counts.to(sx.dtype)
    pos = q.clamp(0.0, 1.0) * (n - 1).clamp_min(0)
    lo = torch.floor(pos).long()
    hi = torch.ceil(pos).long()
    safe = counts > 0
    at_lo = torch.where(safe, starts + lo, torch.zeros_like(lo))
    at_hi = torch.where(safe, starts + hi, torch.zeros_like(hi))
    if sx.numel() == 0:
        return torch.zeros_like(pos)
    xl, xh = sx[at_lo], sx[at_hi]
    v = xl + (xh - xl) * (pos - lo.to(sx.dtype))
    return torch.where(safe, v, torch.zeros_like(v))


def quantile(S, x, q, frm, qlevel, over):
    """The q-quantile (linear interpolation) of x's valid members within each
    unit of `over` (no gradient, like a rank)."""
    with torch.no_grad():
        idx, _, counts, starts = _grouped(S, frm, over, x.detach(), False)
        sx = x.detach().reshape(-1)[idx]
        qu = bc(S, q.detach(), qlevel, over).reshape(-1)
        out = _interp(sx, starts, counts, qu)
    return out.reshape(S.dims(over))


def sorted_cumsum(S, x, key, level, over, reverse):
    """Running sum of x within each unit of `over`, in descending order of key
    (ties: lower index first); `reverse`: the suffix sum in that order.
    Invalid members get 0."""
    idx, u, counts, starts = _grouped(S, level, over, key.detach(), True)
    if idx.numel() == 0:
        return torch.zeros(S.dims(level), dtype=x.dtype, device=x.device)
    xs = x.reshape(-1)[idx]
    cs = torch.cumsum(xs, 0)
    zero = torch.zeros(starts.shape, dtype=x.dtype, device=x.device)
    before = torch.where(starts > 0, cs[(starts - 1).clamp_min(0)], zero)
    seg = cs - before[u]
    if reverse:
        total = torch.zeros(counts.shape, dtype=x.dtype, device=x.device).index_add(0, u, xs)
        seg = total[u] - seg + xs
    out = torch.zeros(S.n(level), dtype=x.dtype, device=x.device).index_put((idx,), seg)
    return out.reshape(S.dims(level))


def _keys(S, key, member, level):
    flat = key.detach().reshape(-1)
    if level == VOCAB:
        raise ValueError("keyed statistics at the vocabulary level are not exported")
    valid = _valid_flat(S, level, BATCH) & (member.detach().reshape(-1) != 0)
    _, inv = torch.unique(flat, return_inverse=True)
    return inv, valid


def keyed(S, x, key, member, op, level):
    """Per element, the reduction of x over the members sharing its key; 0
    for a key with no member."""
    inv, valid = _keys(S, key, member, level)
    k = int(inv.max().item()) + 1 if inv.numel() else 0
    xf = x.reshape(-1)
    iv, xv = inv[valid], xf[valid]
    cnt = torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, iv, torch.ones_like(xv).detach())
    if op == "sum":
        stat = torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, iv, xv)
    else:
        init = -_INF if op == "max" else _INF
        stat = torch.full((k,), init, dtype=x.dtype, device=x.device).scatter_reduce(
            0, iv, xv, "amax" if op == "max" else "amin")
    out = torch.where(cnt[inv] > 0, stat[inv], torch.zeros_like(xf))
    return out.reshape(S.dims(level))


def keyed_quantile(S, x, q, key, member, level):
    """Per element, the q-quantile (its own q) of its key's members."""
    with torch.no_grad():
        inv, valid = _keys(S, key, member, level)
        k = int(inv.max().item()) + 1 if inv.numel() else 0
        xf = x.detach().reshape(-1)
        idx = torch.nonzero(valid).reshape(-1)
        o = torch.sort(xf[idx], stable=True).indices
        idx = idx[o]
        o = torch.sort(inv[idx], stable=True).indices
        idx = idx[o]
        counts = torch.zeros(k, dtype=torch.long, device=S.device).index_add(
            0, inv[idx], torch.ones_like(idx))
        starts = torch.cumsum(counts, 0) - counts
        out = _interp(xf[idx], starts[inv], counts[inv], q.detach().reshape(-1))
    return out.reshape(S.dims(level))


# ---- scans along each sequence's valid tokens -----------------------------

def _scan(S, step, reverse, x):
    out = [None] * S.t
    acc = None
    order = range(S.t - 1, -1, -1) if reverse else range(S.t)
    zero = torch.zeros(S.b, dtype=x.dtype, device=x.device)
    for t in order:
        v = S.valid[:, t]
        acc = step(acc, t, v)
        out[t] = torch.where(v, acc, zero)
    if not out:
        return torch.zeros(S.b, 0, dtype=x.dtype, device=x.device)
    return torch.stack(out, 1)


def rscan(S, x, g):
    """y_t = x_t + g_t · y_next over the valid tokens."""
    def step(acc, t, v):
        acc = torch.zeros_like(x[:, t]) if acc is None else acc
        return torch.where(v, x[:, t] + g[:, t] * acc, acc)
    return _scan(S, step, True, x)


def fscan(S, x, g):
    """y_t = x_t + g_t · y_prev over the valid tokens."""
    def step(acc, t, v):
        acc = torch.zeros_like(x[:, t]) if acc is None else acc
        return torch.where(v, x[:, t] + g[:, t] * acc, acc)
    return _scan(S, step, False, x)


def rscan_min(S, x):
    """y_t = min(x_t, y_next) over the valid tokens."""
    def step(acc, t, v):
        acc = torch.full_like(x[:, t], _INF) if acc is None else acc
        return torch.where(v, torch.fmin(x[:, t], acc), acc)
    return _scan(S, step, True, x)


def _neighbour(S, x, fill, reverse):
    out = [None] * S.t
    have = torch.zeros(S.b, dtype=torch.bool, device=S.device)
    cur = torch.zeros(S.b, dtype=x.dtype, device=x.device)
    zero = torch.zeros(S.b, dtype=x.dtype, device=x.device)
    order = range(S.t - 1, -1, -1) if reverse else range(S.t)
    for t in order:
        v = S.valid[:, t]
        o = torch.where(have, cur, fill[:, t])
        out[t] = torch.where(v, o, zero)
        cur = torch.where(v, x[:, t], cur)
        have = have | v
    if not out:
        return torch.zeros(S.b, 0, dtype=x.dtype, device=x.device)
    return torch.stack(out, 1)


def next_(S, x, fill):
    """The next valid token's value; `fill` after the last."""
    return _neighbour(S, x, fill, True)


def prev(S, x, fill):
    """The previous valid token's value; `fill` before the first."""
    return _neighbour(S, x, fill, False)


def latest(S, x, cond, fill):
    """x at the most recent valid token where cond held; `fill` (its value
    at the sequence's first position) before the first."""
    out = [None] * S.t
    if S.t == 0:
        return torch.zeros(S.b, 0, dtype=x.dtype, device=x.device)
    cur = fill[:, 0]
    zero = torch.zeros(S.b, dtype=x.dtype, device=x.device)
    for t in range(S.t):
        v = S.valid[:, t]
        cur = torch.where(v & (cond[:, t] != 0), x[:, t], cur)
        out[t] = torch.where(v, cur, zero)
    return torch.stack(out, 1)


# ---- the vocabulary -------------------------------------------------------

def _tokens(S, inp):
    tok = inp.get("tokens")
    if tok is None:
        raise KeyError("the loss reads the sampled token's entry: the batch needs `tokens`")
    tok = torch.as_tensor(tok, device=S.device).long()
    if tok.numel() and (tok.min() < 0 or tok.max() >= S.v):
        raise ValueError(f"`tokens` holds an id outside the vocabulary [0, {S.v})")
    return tok


def pick(S, inp, x):
    """The entry of the sampled token."""
    return x.gather(-1, _tokens(S, inp).unsqueeze(-1)).squeeze(-1)


def one_hot(S, inp, g):
    """g at the sampled token, 0 elsewhere."""
    z = torch.zeros(S.b, S.t, S.v, dtype=g.dtype, device=g.device)
    return z.scatter(-1, _tokens(S, inp).unsqueeze(-1), g.unsqueeze(-1))


# ---- rand: SplitMix64, as compiler/ir/src/ops.rs::uniform -----------------

def _u64(c):
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _u64(0x9E3779B97F4A7C15)
_M1 = _u64(0xBF58476D1CE4E5B9)
_M2 = _u64(0x94D049BB133111EB)


def _shr(z, k):
    return (z >> k) & ((1 << (64 - k)) - 1)


def rand(S, seed, level):
    """A uniform [0, 1) number per element of `level`: a pure function of the
    seed and the element's flat index (Keel's own stream)."""
    s = float(seed.reshape(-1)[0].item()) if torch.is_tensor(seed) else float(seed)
    if s != s:
        s = 0
    s = int(max(min(s, 9.223372036854775807e18), -9.223372036854775808e18))
    s = max(min(s, (1 << 63) - 1), -(1 << 63))
    i = torch.arange(S.n(level), dtype=torch.int64, device=S.device)
    z = torch.bitwise_xor(torch.full_like(i, s), i * _GOLDEN)
    z = z + _GOLDEN
    z = torch.bitwise_xor(z, _shr(z, 30)) * _M1
    z = torch.bitwise_xor(z, _shr(z, 27)) * _M2
    z = torch.bitwise_xor(z, _shr(z, 31))
    u = _shr(z, 11).to(torch.float64) / float(1 << 53)
    return u.to(S.dtype).reshape(S.dims(level))
