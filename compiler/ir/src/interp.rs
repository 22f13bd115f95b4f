//! The f64 reference interpreter: the definition of every IR node.
//!
//! Simple and obviously correct, never the production path: kernels and host
//! code are tested against it. Values are flat `Vec<f64>` whose length the
//! level decides (step and batch: 1; group: G; seq: B; token: B·T;
//! vocabulary: B·T·V). Bools are 1/0, integers are exact in f64.
//!
//! Masking: token (and vocabulary) elements whose `mask` is 0 are not members
//! of any reduction, rank, quantile or scan, except that a reduction over the
//! vocabulary (to token level) takes all V entries. Reductions of an empty
//! unit give 0. Scans run over each sequence's valid tokens; masked
//! positions get 0.

use crate::builtins::Level;
use crate::ir::{Graph, Op, Red, ScanOp, Un};
use crate::ops::{binary, clamp, unary, uniform};

/// The shapes and index maps of one batch.
#[derive(Clone, Debug)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub v: usize,
    /// For each sequence, the index of its group (0..n_groups).
    pub group_of: Vec<usize>,
    pub n_groups: usize,
}

impl Shape {
    pub fn len(&self, level: Level) -> usize {
        match level {
            Level::Step | Level::Batch => 1,
            Level::Group => self.n_groups,
            Level::Seq => self.b,
            Level::Token => self.b * self.t,
            Level::Vocab => self.b * self.t * self.v,
        }
    }

    /// The index at coarser level `to` of element `i` at level `from`.
    pub fn parent(&self, from: Level, i: usize, to: Level) -> usize {
        if to >= from {
            return i;
        }
        // Walk down one level at a time.
        let (next, j) = match from {
            Level::Vocab => (Level::Token, i / self.v.max(1)),
            Level::Token => (Level::Seq, i / self.t.max(1)),
            Level::Seq => (Level::Group, self.group_of.get(i).copied().unwrap_or(0)),
            Level::Group => (Level::Batch, 0),
            Level::Batch | Level::Step => return 0,
        };
        if next <= to {
            if next == to { j } else { 0 }
        } else {
            self.parent(next, j, to)
        }
    }
}

/// Inputs of one evaluation.
pub struct Env<'a> {
    pub shape: Shape,
    /// [B·T], 1 or 0.
    pub mask: &'a [f64],
    /// Named input tensors, flat, in level order.
    pub inputs: &'a std::collections::HashMap<String, Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InterpError(pub String);

/// What [`run`] holds at its end, in bytes: one f64 value per element of
/// every live node (the interpreter keeps them all, constants broadcast to
/// their level), and its own f64 copy of each input. An estimate from
/// below (special steps' temporaries are left out), so a batch that
/// cannot fit is refused before any of it is allocated.
pub fn memory_bytes(g: &Graph, sh: &Shape) -> usize {
    let live = g.live();
    g.nodes
        .iter()
        .enumerate()
        .filter(|(id, _)| live[*id])
        .map(|(_, n)| {
            let copies = if matches!(n.op, Op::Input(_)) { 2 } else { 1 };
            sh.len(n.level).max(1).saturating_mul(8 * copies)
        })
        .fold(0usize, usize::saturating_add)
}

/// The reference interpreter as an [`Executor`](crate::Executor): refuses
/// a batch whose values ([`memory_bytes`]) would not fit in `memory` bytes
/// (what the process may still allocate; `None`: no limit).
#[derive(Clone, Copy, Debug, Default)]
pub struct Interp {
    pub memory: Option<usize>,
}

impl crate::Executor for Interp {
    fn run(
        &mut self,
        g: &Graph,
        p: &crate::batch::Prepared,
    ) -> Result<crate::Outputs, crate::Error> {
        crate::check_memory(
            "the reference interpreter's values for this batch",
            memory_bytes(g, &p.shape),
            self.memory,
            "the interpreter keeps every value of the program as f64 (it is the reference, for small batches): use `--backend kernel` (the fused kernels read the batch in place), or split the batch; KEEL_MEMORY_LIMIT=BYTES sets the limit",
        )?;
        let inputs = p.inputs_f64();
        let env = Env {
            shape: p.shape.clone(),
            mask: &p.mask,
            inputs: &inputs,
        };
        let vals = run(g, &env).map_err(|e| crate::batch_error(e.0))?;
        Ok(g.outputs
            .iter()
            .map(|(n, id)| (n.clone(), crate::batch::Values::F64(vals[*id].clone())))
            .collect())
    }
}

/// Evaluate every live node; returns all values (indexed by node id; dead
/// nodes get an empty vector).
pub fn run(g: &Graph, env: &Env) -> Result<Vec<Vec<f64>>, InterpError> {
    run_with(g, env, None)
}

/// Evaluate with the values of every node that passes no gradient —
/// `stopgrad`, ranks, quantiles, comparisons, rounding — taken from `frozen`
/// (a previous run): finite differences of this function are the gradient
/// the autodiff defines, with detached values and selections held fixed.
pub fn run_with(
    g: &Graph,
    env: &Env,
    frozen: Option<&[Vec<f64>]>,
) -> Result<Vec<Vec<f64>>, InterpError> {
    let sh = &env.shape;
    let live = g.live();
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(g.nodes.len());
    for (id, n) in g.nodes.iter().enumerate() {
        if !live[id] {
            vals.push(Vec::new());
            continue;
        }
        if let Some(fz) = frozen
            && frozen_op(&n.op)
            && let Some(v) = fz.get(id)
        {
            vals.push(v.clone());
            continue;
        }
        let len = sh.len(n.level);
        let arg = |k: usize| -> &Vec<f64> { &vals[n.args[k]] };
        let v: Vec<f64> = match &n.op {
            Op::Const(c) => vec![*c; len],
            Op::Param { value, .. } => vec![*value; len],
            Op::PaddedLength => vec![sh.t as f64; len],
            Op::Input(name) => match env.inputs.get(name) {
                Some(x) if x.len() == len => x.clone(),
                Some(x) => {
                    return Err(InterpError(format!(
                        "input `{name}` has {} values, expected {len}",
                        x.len()
                    )));
                }
                // The vocabulary id of each entry: computed, never laid out.
                None if name == "vocab_index" && n.level == Level::Vocab => {
                    (0..len).map(|i| (i % sh.v.max(1)) as f64).collect()
                }
                None => return Err(InterpError(format!("input `{name}` was not provided"))),
            },
            Op::Unary(u) => arg(0).iter().map(|&x| unary(*u, x)).collect(),
            Op::Binary(b) => arg(0)
                .iter()
                .zip(arg(1))
                .map(|(&x, &y)| binary(*b, x, y))
                .collect(),
            Op::Where => (0..len)
                .map(|i| {
                    if arg(0)[i] != 0.0 {
                        arg(1)[i]
                    } else {
                        arg(2)[i]
                    }
                })
                .collect(),
            Op::Clamp => (0..len)
                .map(|i| clamp(arg(0)[i], arg(1)[i], arg(2)[i]))
                .collect(),
            Op::StopGrad => arg(0).clone(),
            Op::Broadcast => {
                let from = g.nodes[n.args[0]].level;
                (0..len)
                    .map(|i| arg(0)[sh.parent(n.level, i, from)])
                    .collect()
            }
            Op::Reduce(r) => {
                let from = g.nodes[n.args[0]].level;
                let init = match r {
                    Red::Sum => 0.0,
                    Red::Max => f64::NEG_INFINITY,
                    Red::Min => f64::INFINITY,
                };
                let mut out = vec![init; len];
                let mut seen = vec![false; len];
                for (i, &x) in arg(0).iter().enumerate() {
                    if !member(sh, env.mask, from, i, n.level) {
                        continue;
                    }
                    let p = sh.parent(from, i, n.level);
                    seen[p] = true;
                    out[p] = match r {
                        Red::Sum => out[p] + x,
                        Red::Max => out[p].max(x),
                        Red::Min => out[p].min(x),
                    };
                }
                for (o, s) in out.iter_mut().zip(seen) {
                    if !s {
                        *o = 0.0;
                    }
                }
                out
            }
            Op::Rank { .. }
            | Op::Quantile { .. }
            | Op::SortedCumsum { .. }
            | Op::Keyed(_)
            | Op::KeyedQuantile
            | Op::Scan(_)
            | Op::Pick
            | Op::OneHot => {
                let args: Vec<&[f64]> = n.args.iter().map(|a| vals[*a].as_slice()).collect();
                let tokens = env.inputs.get("tokens").map(|t| t.as_slice());
                special(g, n, &args, sh, env.mask, tokens)?
            }
            Op::Rand => {
                let seed = arg(0)[0];
                (0..len).map(|i| uniform(seed, i)).collect()
            }
        };
        vals.push(v);
    }
    Ok(vals)
}

/// Whether `op` is evaluated by [`special`]: the operations that are not
/// elementwise and not plain reductions (ranks, quantiles, sorted and keyed
/// statistics, scans, picks and scatters). Executors that fuse elementwise
/// work run these between their fused loops, with these semantics.
pub fn is_special(op: &Op) -> bool {
    matches!(
        op,
        Op::Rank { .. }
            | Op::Quantile { .. }
            | Op::SortedCumsum { .. }
            | Op::Keyed(_)
            | Op::KeyedQuantile
            | Op::Scan(_)
            | Op::Pick
            | Op::OneHot
    )
}

/// Evaluate one special node (see [`is_special`]) from its arguments'
/// values (each at its own level) and the batch's mask and tokens.
pub fn special(
    g: &Graph,
    n: &crate::ir::Node,
    args: &[&[f64]],
    sh: &Shape,
    mask: &[f64],
    tokens: Option<&[f64]>,
) -> Result<Vec<f64>, InterpError> {
    let len = sh.len(n.level);
    let arg = |k: usize| -> &[f64] { args[k] };
    Ok(match &n.op {
        Op::Rank { over } => {
            let from = n.level;
            let mut out = vec![f64::INFINITY; len];
            for members in units(sh, mask, from, *over) {
                let mut idx = members;
                idx.sort_by(|&a, &b| arg(0)[b].total_cmp(&arg(0)[a]).then(a.cmp(&b)));
                for (r, i) in idx.into_iter().enumerate() {
                    out[i] = r as f64;
                }
            }
            out
        }
        Op::Quantile { over } => {
            let from = g.nodes[n.args[0]].level;
            let qlevel = g.nodes[n.args[1]].level;
            let mut out = vec![0.0; len];
            for (u, members) in units(sh, mask, from, *over).into_iter().enumerate() {
                let mut xs: Vec<f64> = members.iter().map(|&i| arg(0)[i]).collect();
                if xs.is_empty() {
                    continue;
                }
                xs.sort_by(f64::total_cmp);
                let q = arg(1)[sh.parent(*over, u, qlevel)];
                let pos = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = pos.ceil() as usize;
                out[u] = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64);
            }
            out
        }
        Op::SortedCumsum { over, reverse } => {
            let from = n.level;
            let mut out = vec![0.0; len];
            for members in units(sh, mask, from, *over) {
                let mut idx = members;
                idx.sort_by(|&a, &b| arg(1)[b].total_cmp(&arg(1)[a]).then(a.cmp(&b)));
                if *reverse {
                    idx.reverse();
                }
                let mut acc = 0.0;
                for i in idx {
                    acc += arg(0)[i];
                    out[i] = acc;
                }
            }
            out
        }
        Op::Keyed(_) | Op::KeyedQuantile => {
            let quantile = matches!(n.op, Op::KeyedQuantile);
            let (xi, ki, mi) = if quantile { (0, 2, 3) } else { (0, 1, 2) };
            // Members of each key, in index order.
            let mut keys: Vec<(u64, Vec<usize>)> = Vec::new();
            for i in 0..len {
                let valid = n.level < Level::Token
                    || mask
                        .get(i % (sh.b * sh.t).max(1))
                        .is_some_and(|m| *m != 0.0);
                if !valid || arg(mi)[i] == 0.0 {
                    continue;
                }
                let k = arg(ki)[i].to_bits();
                match keys.iter_mut().find(|(kk, _)| *kk == k) {
                    Some((_, v)) => v.push(i),
                    None => keys.push((k, vec![i])),
                }
            }
            let stat = |members: &[usize], at: usize| -> f64 {
                let xs = members.iter().map(|&j| arg(xi)[j]);
                match &n.op {
                    Op::Keyed(Red::Sum) => xs.sum(),
                    Op::Keyed(Red::Max) => xs.fold(f64::NEG_INFINITY, f64::max),
                    Op::Keyed(Red::Min) => xs.fold(f64::INFINITY, f64::min),
                    _ => {
                        let mut v: Vec<f64> = xs.collect();
                        v.sort_by(f64::total_cmp);
                        let pos = arg(1)[at].clamp(0.0, 1.0) * (v.len() - 1) as f64;
                        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
                    }
                }
            };
            (0..len)
                .map(|i| {
                    let k = arg(ki)[i].to_bits();
                    keys.iter()
                        .find(|(kk, _)| *kk == k)
                        .map(|(_, m)| stat(m, i))
                        .unwrap_or(0.0)
                })
                .collect()
        }
        Op::Scan(ScanOp::Latest) => {
            let level_of = |k: usize| g.nodes[n.args[k]].level;
            let mut out = vec![0.0; len];
            for (b, row) in out.chunks_mut(sh.t.max(1)).enumerate().take(sh.b) {
                let start = b * sh.t;
                let mut cur = arg(2)[sh.parent(Level::Token, start, level_of(2))];
                for (k, o) in row.iter_mut().enumerate() {
                    let i = start + k;
                    if mask.get(i).is_some_and(|m| *m != 0.0) {
                        if arg(1)[i] != 0.0 {
                            cur = arg(0)[i];
                        }
                        *o = cur;
                    }
                }
            }
            out
        }
        Op::Scan(s) => scan(
            sh,
            mask,
            *s,
            arg(0),
            n.args.get(1).map(|a| (args[1], g.nodes[*a].level)),
        ),
        Op::Pick => {
            let tokens = tokens.ok_or_else(|| {
                InterpError("`tokens` is needed to read the sampled token's entry".into())
            })?;
            let mut out = vec![0.0; len];
            for (i, o) in out.iter_mut().enumerate() {
                let tok = token_index(tokens[i], sh.v, i)?;
                *o = arg(0)[i * sh.v + tok];
            }
            out
        }
        Op::OneHot => {
            let tokens = tokens.ok_or_else(|| {
                InterpError("`tokens` is needed to scatter into the vocabulary".into())
            })?;
            let mut out = vec![0.0; len];
            for (i, &gi) in arg(0).iter().enumerate() {
                let tok = token_index(tokens[i], sh.v, i)?;
                out[i * sh.v + tok] = gi;
            }
            out
        }
        _ => {
            return Err(InterpError(format!(
                "internal: {:?} is not a special operation",
                n.op
            )));
        }
    })
}

fn frozen_op(op: &Op) -> bool {
    match op {
        Op::StopGrad | Op::Rank { .. } | Op::Quantile { .. } => true,
        Op::Binary(b) => b.is_comparison(),
        Op::Unary(u) => matches!(u, Un::Floor | Un::Ceil | Un::Round | Un::Sign | Un::Not),
        _ => false,
    }
}

/// The vocabulary index of token `t` at flat position `i`, checked against
/// the vocabulary size `v`.
pub fn token_index(t: f64, v: usize, i: usize) -> Result<usize, InterpError> {
    if t >= 0.0 && (t as usize) < v && t.fract() == 0.0 {
        Ok(t as usize)
    } else {
        Err(InterpError(format!(
            "`tokens` at flat position {i} is {t}, outside the vocabulary [0, {v})"
        )))
    }
}

/// Whether element `i` at level `from` takes part in an aggregation to `to`.
fn member(sh: &Shape, mask: &[f64], from: Level, i: usize, to: Level) -> bool {
    match from {
        Level::Vocab if to == Level::Token => true,
        Level::Vocab => mask.get(i / sh.v.max(1)).is_some_and(|m| *m != 0.0),
        Level::Token => mask.get(i).is_some_and(|m| *m != 0.0),
        _ => true,
    }
}

/// The valid members of each unit of level `over`, as indices at level `from`.
fn units(sh: &Shape, mask: &[f64], from: Level, over: Level) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); sh.len(over)];
    for i in 0..sh.len(from) {
        if member(sh, mask, from, i, over) {
            out[sh.parent(from, i, over)].push(i);
        }
    }
    out
}

fn scan(sh: &Shape, mask: &[f64], op: ScanOp, x: &[f64], p: Option<(&[f64], Level)>) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for b in 0..sh.b {
        let valid: Vec<usize> = (b * sh.t..(b + 1) * sh.t)
            .filter(|&i| mask.get(i).is_some_and(|m| *m != 0.0))
            .collect();
        let param = |i: usize| {
            p.map(|(v, l)| v[sh.parent(Level::Token, i, l)])
                .unwrap_or(0.0)
        };
        match op {
            ScanOp::RScan => {
                let mut acc = 0.0;
                for &i in valid.iter().rev() {
                    acc = x[i] + param(i) * acc;
                    out[i] = acc;
                }
            }
            ScanOp::FScan => {
                let mut acc = 0.0;
                for &i in &valid {
                    acc = x[i] + param(i) * acc;
                    out[i] = acc;
                }
            }
            ScanOp::RScanMin => {
                let mut acc = f64::INFINITY;
                for &i in valid.iter().rev() {
                    acc = x[i].min(acc);
                    out[i] = acc;
                }
            }
            ScanOp::Next => {
                for (k, &i) in valid.iter().enumerate() {
                    out[i] = valid.get(k + 1).map(|&j| x[j]).unwrap_or_else(|| param(i));
                }
            }
            ScanOp::Prev => {
                for (k, &i) in valid.iter().enumerate() {
                    out[i] = if k == 0 { param(i) } else { x[valid[k - 1]] };
                }
            }
            ScanOp::Latest => {}
        }
    }
    out
}
