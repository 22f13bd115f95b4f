//! The CPU executor of a kernel plan: every loop in chunks of [`CHUNK`]
//! elements through its instruction list, big loops in [`PARTS`] fixed parts
//! across threads; special steps natively or through the interpreter.

use super::rows::{Rows, vocab_orders, vocab_rows};
use super::{CHUNK, Ins, KOp, Loop, Outputs, PARTS, Plan, Special, Src, Step};
use crate::fastmath;
use crate::logits::Elem;
use keel_check::builtins::Level;
use keel_ir::batch::{Inputs, Values, View};
use keel_ir::interp::{self, InterpError, Shape};
use keel_ir::ir::{Bin, Op, Red, Un};
use keel_ir::ops;
use std::collections::HashMap;

/// Big buffers kept between runs of a plan: a run reuses the memory of the
/// last one instead of faulting fresh pages in (which cost more than the
/// loops that fill them).
pub(super) struct Pool<T = f64>(std::sync::Mutex<Vec<Vec<T>>>);

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool::default()
    }
}

impl<T> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl<T: Clone + Default> Pool<T> {
    /// Vectors below this many entries are left to the allocator.
    const MIN: usize = 1 << 14;

    /// A vector of `len` zeros.
    pub(super) fn take(&self, len: usize) -> Vec<T> {
        let mut v = if len < Self::MIN {
            Vec::new()
        } else {
            self.0
                .lock()
                .ok()
                .and_then(|mut p| {
                    let k = (0..p.len())
                        .filter(|&k| p[k].capacity() >= len)
                        .min_by_key(|&k| p[k].capacity())?;
                    Some(p.swap_remove(k))
                })
                .unwrap_or_default()
        };
        v.clear();
        v.resize(len, T::default());
        v
    }

    /// Keep `v` for a later run.
    pub(super) fn give(&self, v: Vec<T>) {
        if v.capacity() >= Self::MIN
            && let Ok(mut p) = self.0.lock()
            && p.len() < 64
        {
            p.push(v);
        }
    }
}

/// Index of the parent at a coarser level: `i / div`, then through the
/// group map when the target is the group level; 0 for batch and step.
#[derive(Clone, Copy)]
struct ParentMap<'a> {
    div: usize,
    groups: Option<&'a [usize]>,
    zero: bool,
}

impl<'a> ParentMap<'a> {
    fn new(sh: &'a Shape, from: Level, to: Level) -> ParentMap<'a> {
        if to >= from {
            return ParentMap {
                div: 1,
                groups: None,
                zero: false,
            };
        }
        if to <= Level::Batch {
            return ParentMap {
                div: 1,
                groups: None,
                zero: true,
            };
        }
        let extent = |l: Level| match l {
            Level::Vocab => sh.v.max(1),
            Level::Token => sh.t.max(1),
            _ => 1,
        };
        // Divide down to `to`, or to seq when the target is the group.
        let stop = to.max(Level::Seq);
        let mut div = 1;
        let mut l = from;
        while l > stop {
            div *= extent(l);
            l = match l {
                Level::Vocab => Level::Token,
                _ => Level::Seq,
            };
        }
        ParentMap {
            div,
            groups: (to == Level::Group && from > Level::Group).then_some(sh.group_of.as_slice()),
            zero: false,
        }
    }

    /// Split `i0..i0 + c` into runs of elements with the same parent:
    /// `(j0, j1, parent)` for offsets `j0..j1` (no division per element).
    /// An iterator, not a callback, so that the caller's loop body stays in
    /// the caller (a closure is compiled on its own, without the caller's
    /// AVX2/AVX-512 features).
    #[inline(always)]
    fn runs(&self, i0: usize, c: usize) -> Runs<'a> {
        Runs {
            map: *self,
            i0,
            c,
            j: 0,
        }
    }

    #[inline]
    fn at(&self, i: usize) -> usize {
        if self.zero {
            return 0;
        }
        let q = i / self.div;
        match self.groups {
            Some(g) => g.get(q).copied().unwrap_or(0),
            None => q,
        }
    }
}

/// The runs of [`ParentMap::runs`].
struct Runs<'a> {
    map: ParentMap<'a>,
    i0: usize,
    c: usize,
    j: usize,
}

impl Iterator for Runs<'_> {
    type Item = (usize, usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize, usize)> {
        if self.j >= self.c {
            return None;
        }
        let j = self.j;
        if self.map.zero {
            self.j = self.c;
            return Some((0, self.c, 0));
        }
        let q = (self.i0 + j) / self.map.div;
        let end = ((q + 1) * self.map.div - self.i0).min(self.c);
        let p = match self.map.groups {
            Some(g) => g.get(q).copied().unwrap_or(usize::MAX),
            None => q,
        };
        self.j = end;
        Some((j, end, p))
    }
}

/// A buffer's contents during a run: an input borrowed from the caller (f32,
/// f64 or bf16) or a value computed by an earlier step.
enum Data<'a> {
    Missing,
    In(View<'a>),
    Owned(Vec<f64>),
    /// A vocabulary-level value, held as f32.
    Owned32(Vec<f32>),
}

impl Data<'_> {
    fn len(&self) -> usize {
        self.view().map(|v| v.len()).unwrap_or(0)
    }
    /// The values where they are.
    fn view(&self) -> Option<View<'_>> {
        match self {
            Data::Missing => None,
            Data::In(v) => Some(*v),
            Data::Owned32(v) => Some(View::F32(v)),
            Data::Owned(v) => Some(View::F64(v)),
        }
    }
    /// Whether reading it as f64 converts (not f64 where it is).
    fn narrow(&self) -> bool {
        !matches!(self.view(), Some(View::F64(_)))
    }
    #[inline]
    fn at(&self, i: usize) -> f64 {
        self.view().and_then(|v| v.get(i)).unwrap_or(f64::NAN)
    }
    /// Elements `i0..i0 + c` as f64: a slice of f64 values, or narrower
    /// ones converted into `scratch`.
    #[inline(always)]
    fn range<'s>(&'s self, i0: usize, c: usize, scratch: &'s mut [f64]) -> &'s [f64] {
        match self.view() {
            Some(View::F64(v)) if i0 + c <= v.len() => &v[i0..i0 + c],
            Some(v) => {
                v.widen(i0, &mut scratch[..c]);
                &scratch[..c]
            }
            None => {
                scratch[..c].fill(f64::NAN);
                &scratch[..c]
            }
        }
    }
    fn to_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.at(i)).collect()
    }
}

/// A value a step wrote: f64, or f32 for a vocabulary-level buffer.
impl From<Values> for Data<'_> {
    fn from(v: Values) -> Self {
        match v {
            Values::F64(v) => Data::Owned(v),
            Values::F32(v) => Data::Owned32(v),
            Values::Bf16(v) => Data::Owned32(v.iter().map(|x| x.f32()).collect()),
        }
    }
}

/// One stored buffer's slice of a loop's range.
enum OutSlice<'a> {
    F64(&'a mut [f64]),
    F32(&'a mut [f32]),
}

/// What every loop reads: the shape, the mask and the buffers.
struct Ctx<'a, 'b> {
    sh: &'a Shape,
    mask: &'a [f32],
    bufs: &'b [Data<'a>],
    levels: Vec<Level>,
}

impl Ctx<'_, '_> {
    /// The value of `src` at element `i` of level `at`.
    fn scalar(&self, src: Src, at: Level, i: usize) -> f64 {
        match src {
            Src::Const(c) => c,
            Src::PaddedLength => self.sh.t as f64,
            Src::VocabIndex if at == Level::Vocab => (i % self.sh.v.max(1)) as f64,
            Src::Reg(_) | Src::VocabIndex => f64::NAN,
            Src::Buf(b) => {
                let l = self.levels[b];
                let j = ParentMap::new(self.sh, at, l).at(i);
                self.bufs[b].at(j)
            }
        }
    }
}

/// A masked reduction's partial result over one thread's range.
struct Partial {
    buf: usize,
    vals: Vec<f64>,
    seen: Vec<bool>,
}

impl Plan {
    /// Run the plan on a batch: `inputs` holds every input the graph reads
    /// (flat, in level order, f32, bf16 or f64, read in place) and `mask` [B·T]
    /// (a [`keel_ir::batch::Prepared`] or a map of vectors). `threads` caps the
    /// threads a loop is split across (1: this thread only).
    pub fn run(
        &self,
        sh: &Shape,
        inputs: &impl Inputs,
        threads: usize,
    ) -> Result<Outputs, InterpError> {
        // The mask as f32 (borrowed when it is f32).
        let mask: std::borrow::Cow<[f32]> = match inputs.view("mask") {
            Some(View::F32(m)) => m.into(),
            Some(m) => m.iter().map(|x| x as f32).collect::<Vec<f32>>().into(),
            None => return Err(InterpError("input `mask` was not provided".into())),
        };
        let mask: &[f32] = &mask;
        if mask.len() != sh.b * sh.t {
            return Err(InterpError(format!(
                "input `mask` has {} values, expected {}",
                mask.len(),
                sh.b * sh.t
            )));
        }
        // Inputs are read in place, whatever their width.
        let mut bufs: Vec<Data> = Vec::with_capacity(self.buffers.len());
        for b in &self.buffers {
            match &b.input {
                Some(name) => {
                    let x = inputs
                        .view(name)
                        .ok_or_else(|| InterpError(format!("input `{name}` was not provided")))?;
                    if x.len() != sh.len(b.level) {
                        return Err(InterpError(format!(
                            "input `{name}` has {} values, expected {}",
                            x.len(),
                            sh.len(b.level)
                        )));
                    }
                    bufs.push(Data::In(x));
                }
                None => bufs.push(Data::Missing),
            }
        }
        let levels: Vec<Level> = self.buffers.iter().map(|b| b.level).collect();
        let narrow: Vec<bool> = self.buffers.iter().map(|b| b.narrow()).collect();
        let profile = std::env::var_os("KEEL_PROFILE_KERNELS").is_some();
        // The f64 mask and tokens only special steps read.
        let specials = self.steps.iter().any(|s| matches!(s, Step::Special(_)));
        let mut mask64 = Vec::new();
        if specials {
            mask64 = self.pool.take(mask.len());
            for (o, &m) in mask64.iter_mut().zip(mask) {
                *o = m as f64;
            }
        }
        let tokens: Option<Vec<f64>> = inputs
            .view("tokens")
            .filter(|_| specials)
            .map(|t| t.iter().collect());
        let mut orders = Orders {
            shared: self.shared_row_keys(),
            ..Orders::default()
        };
        let release = self.release_after();
        for (k, st) in self.steps.iter().enumerate() {
            let started = std::time::Instant::now();
            match st {
                Step::Loop(lp) => {
                    let pools = (&self.pool, &self.pool32);
                    let written =
                        run_loop(lp, sh, mask, &bufs, &levels, &narrow, threads.max(1), pools)?;
                    for (b, v) in written {
                        bufs[b] = v.into();
                    }
                }
                Step::Special(sp) => {
                    let out = self.special(
                        sp,
                        sh,
                        mask,
                        &mask64,
                        tokens.as_deref(),
                        &bufs,
                        &levels,
                        threads,
                        &mut orders,
                        narrow[sp.buf],
                    )?;
                    bufs[sp.buf] = out.into();
                }
            }
            // Values no later step or output reads go back to the pool, for
            // the next steps' buffers.
            for &b in &release[k] {
                self.give(std::mem::replace(&mut bufs[b], Data::Missing));
            }
            if profile {
                eprintln!(
                    "step {k:>3}: {:>9.3} ms  {}",
                    started.elapsed().as_secs_f64() * 1e3,
                    match st {
                        Step::Loop(lp) => format!("loop over {}", lp.level.name()),
                        Step::Special(sp) =>
                            format!("special {}", keel_ir::describe_node(&self.graph, sp.node)),
                    }
                );
            }
        }
        let mut out = Outputs::new();
        for (k, (name, src, level)) in self.outputs.iter().enumerate() {
            let v = match src {
                // The last output read from an owned buffer takes it.
                Src::Buf(b)
                    if matches!(bufs[*b], Data::Owned(_) | Data::Owned32(_))
                        && !self.outputs[k + 1..].iter().any(|o| o.1 == *src) =>
                {
                    match std::mem::replace(&mut bufs[*b], Data::Missing) {
                        Data::Owned32(v) => Values::F32(v),
                        Data::Owned(v) => Values::F64(v),
                        _ => Values::F64(Vec::new()),
                    }
                }
                Src::Buf(b) => Values::F64(bufs[*b].to_vec()),
                other => {
                    let ctx = Ctx {
                        sh,
                        mask,
                        bufs: &bufs,
                        levels: levels.clone(),
                    };
                    Values::F64(
                        (0..sh.len(*level))
                            .map(|i| ctx.scalar(*other, *level, i))
                            .collect(),
                    )
                }
            };
            out.insert(name.clone(), v);
        }
        for b in bufs {
            self.give(b);
        }
        for (_, o) in orders.cache {
            self.order_pool.give(o);
        }
        self.pool.give(mask64);
        Ok(out)
    }

    /// What [`Plan::run`] allocates at its peak for a batch of shape `sh`,
    /// in bytes, beyond its inputs: the run is walked step by step — a
    /// value buffer (f64; f32 at vocabulary level) is held from the step
    /// that writes it to its last reader,
    /// a special step also holds, while it runs, the f64 copies of the
    /// arguments it cannot read in place, and the row orders shared by
    /// sorted steps (u32) and the f64 mask and tokens of special steps are
    /// held throughout. An estimate from below (per-thread scratch rows and
    /// small vectors are left out), so a batch that cannot fit is refused
    /// before any of it is allocated.
    pub fn memory_bytes(&self, sh: &Shape) -> usize {
        let len = |l: Level| sh.len(l).max(1);
        let value = |b: usize| {
            let width = if self.buffers[b].narrow() { 4 } else { 8 };
            len(self.buffers[b].level) * width
        };
        let mut held: usize = self
            .shared_row_keys()
            .iter()
            .map(|&b| len(self.buffers[b].level) * 4)
            .sum();
        if self.steps.iter().any(|s| matches!(s, Step::Special(_))) {
            let reads_tokens = self
                .buffers
                .iter()
                .any(|b| b.input.as_deref() == Some("tokens"));
            held += (1 + usize::from(reads_tokens)) * len(Level::Token) * 8;
        }
        let release = self.release_after();
        let mut written = vec![false; self.buffers.len()];
        let mut peak = held;
        for (k, st) in self.steps.iter().enumerate() {
            let mut write = |b: usize, held: &mut usize| {
                if !std::mem::replace(&mut written[b], true) {
                    *held += value(b);
                }
            };
            match st {
                Step::Loop(lp) => {
                    for ins in &lp.body {
                        match ins {
                            Ins::Compute { store: Some(b), .. } | Ins::Accum { buf: b, .. } => {
                                write(*b, &mut held)
                            }
                            Ins::Compute { store: None, .. } => {}
                        }
                    }
                    peak = peak.max(held);
                }
                Step::Special(sp) => {
                    // As `special` converts them: at the argument's own
                    // level, unless it is a value buffer of that level that
                    // the step reads in place (an f64 one; an f32 one only
                    // in a vocabulary row step). A step whose f64 result is
                    // narrowed holds both while it converts.
                    let n = &self.graph.nodes[sp.node];
                    let rows = n.level == Level::Vocab && row_key(&n.op).is_some();
                    // The sampled token's entry is read in place.
                    let pick = matches!(n.op, Op::Pick)
                        && matches!(sp.args.first(), Some(Src::Buf(b)) if self.buffers[*b].level == Level::Vocab);
                    let copies: usize = if pick {
                        0
                    } else {
                        sp.args
                            .iter()
                            .zip(&n.args)
                            .map(|(src, a)| {
                                let l = self.graph.nodes[*a].level;
                                match src {
                                    Src::Buf(b)
                                        if self.buffers[*b].input.is_none()
                                            && self.buffers[*b].level == l
                                            && (rows || !self.buffers[*b].narrow()) =>
                                    {
                                        0
                                    }
                                    _ => len(l) * 8,
                                }
                            })
                            .sum()
                    };
                    let widened = if self.buffers[sp.buf].narrow() && !rows {
                        len(Level::Vocab) * 8
                    } else {
                        0
                    };
                    write(sp.buf, &mut held);
                    peak = peak.max(held + copies + widened);
                }
            }
            for &b in &release[k] {
                if written[b] {
                    held -= value(b);
                }
            }
        }
        peak
    }

    /// For each step, the value buffers no later step and no output reads
    /// once it has run (a buffer nothing reads goes after the step that
    /// writes it). Inputs are never released.
    fn release_after(&self) -> Vec<Vec<usize>> {
        let mut last: Vec<Option<usize>> = vec![None; self.buffers.len()];
        fn at(src: &Src, k: usize, last: &mut [Option<usize>]) {
            if let Src::Buf(b) = src {
                last[*b] = Some(k);
            }
        }
        for (k, st) in self.steps.iter().enumerate() {
            match st {
                Step::Loop(lp) => {
                    for ins in &lp.body {
                        match ins {
                            Ins::Compute { args, store, .. } => {
                                for a in args {
                                    at(a, k, &mut last);
                                }
                                if let Some(b) = store {
                                    last[*b] = last[*b].max(Some(k));
                                }
                            }
                            Ins::Accum { src, buf, .. } => {
                                at(src, k, &mut last);
                                last[*buf] = last[*buf].max(Some(k));
                            }
                        }
                    }
                }
                Step::Special(sp) => {
                    for a in &sp.args {
                        at(a, k, &mut last);
                    }
                    last[sp.buf] = last[sp.buf].max(Some(k));
                }
            }
        }
        let mut release = vec![Vec::new(); self.steps.len()];
        for (b, l) in last.iter().enumerate() {
            let output = self.outputs.iter().any(|o| o.1 == Src::Buf(b));
            if let (Some(k), None, false) = (l, &self.buffers[b].input, output) {
                release[*k].push(b);
            }
        }
        release
    }

    /// Hand output buffers back once read, for the next run to reuse
    /// (outputs are handed over, not copied; a fresh buffer costs its page
    /// faults — at a million tokens, a third of a loss evaluation).
    pub fn recycle(&self, outputs: impl IntoIterator<Item = Values>) {
        for v in outputs {
            self.give(v.into());
        }
    }

    /// A value's memory back to its pool.
    fn give(&self, d: Data) {
        match d {
            Data::Owned(v) => self.pool.give(v),
            Data::Owned32(v) => self.pool32.give(v),
            _ => {}
        }
    }
}

impl Plan {
    /// Evaluate special step `sp` on the host from the current values of
    /// the buffers (`bufs[k]` at buffer k's level; inputs included): for
    /// executors that run the loops elsewhere (the cubecl backend).
    pub fn eval_special(
        &self,
        sp: &Special,
        sh: &Shape,
        mask: &[f32],
        tokens: Option<&[f64]>,
        bufs: &[Vec<f64>],
    ) -> Result<Vec<f64>, InterpError> {
        let data: Vec<Data> = bufs.iter().map(|b| Data::In(View::F64(b))).collect();
        let levels: Vec<Level> = self.buffers.iter().map(|b| b.level).collect();
        let mask64: Vec<f64> = mask.iter().map(|&m| m as f64).collect();
        let mut orders = Orders::default();
        self.special(
            sp,
            sh,
            mask,
            &mask64,
            tokens,
            &data,
            &levels,
            1,
            &mut orders,
            false,
        )
        .map(Values::into_f64)
    }

    /// Evaluate a special step: scans natively (row by row, over the valid
    /// tokens), everything else through [`interp::special`]. A `narrow`
    /// result (a vocabulary-level buffer) is held as f32.
    #[allow(clippy::too_many_arguments)]
    fn special(
        &self,
        sp: &Special,
        sh: &Shape,
        mask: &[f32],
        mask64: &[f64],
        tokens: Option<&[f64]>,
        bufs: &[Data],
        levels: &[Level],
        threads: usize,
        orders: &mut Orders,
        narrow: bool,
    ) -> Result<Values, InterpError> {
        let n = &self.graph.nodes[sp.node];
        let wrap = |v: Vec<f64>| {
            if narrow {
                Values::F32(v.iter().map(|&x| x as f32).collect())
            } else {
                Values::F64(v)
            }
        };
        // The sampled token's entry of a buffer, read in place.
        if let (Op::Pick, Some(Src::Buf(b)), Some(tok)) = (&n.op, sp.args.first(), tokens)
            && levels[*b] == Level::Vocab
            && tok.len() == sh.b * sh.t
        {
            let v = sh.v;
            return tok
                .iter()
                .enumerate()
                .map(|(i, &t)| Ok(bufs[*b].at(i * v + interp::token_index(t, v, i)?)))
                .collect::<Result<Vec<f64>, InterpError>>()
                .map(wrap);
        }
        let ctx = Ctx {
            sh,
            mask,
            bufs,
            levels: levels.to_vec(),
        };
        // Arguments at their own level: buffers of that level where they
        // are (f32 or f64), anything else converted or broadcast.
        let converted: Vec<Option<Vec<f64>>> = sp
            .args
            .iter()
            .zip(&n.args)
            .map(|(src, a)| {
                let l = self.graph.nodes[*a].level;
                match src {
                    Src::Buf(b) if levels[*b] == l && bufs[*b].view().is_some() => None,
                    _ => Some((0..sh.len(l)).map(|i| ctx.scalar(*src, l, i)).collect()),
                }
            })
            .collect();
        let views: Vec<View> = sp
            .args
            .iter()
            .zip(&converted)
            .map(|(src, c)| match (c, src) {
                (Some(v), _) => View::F64(v),
                (None, Src::Buf(b)) => bufs[*b].view().unwrap_or(View::F64(&[])),
                (None, _) => View::F64(&[]),
            })
            .collect();
        // Ranks and running sums over each token's vocabulary: contiguous
        // rows, every entry a member; sorted row by row across threads (once
        // for every step that sorts by the same key), reading f32 values in
        // place.
        if n.level == Level::Vocab
            && sh.v > 0
            && let Some(k) = row_key(&n.op)
            && views.iter().all(|x| x.len() == sh.len(Level::Vocab))
            && let (Some(&x), Some(&key)) = (views.first(), views.get(k))
        {
            let sum = match n.op {
                Op::SortedCumsum { reverse, .. } => Some(reverse),
                _ => None,
            };
            let order = match sp.args.get(k) {
                Some(Src::Buf(b)) if orders.shared.contains(b) => Some(
                    orders
                        .cache
                        .entry(*b)
                        .or_insert_with(|| vocab_orders(sh.v, key, threads, &self.order_pool))
                        .as_slice(),
                ),
                _ => None,
            };
            let r = Rows {
                v: sh.v,
                key,
                x,
                sum,
                order,
                threads,
            };
            return Ok(if narrow {
                let mut out = self.pool32.take(key.len());
                vocab_rows(&r, &mut out);
                Values::F32(out)
            } else {
                let mut out = self.pool.take(key.len());
                vocab_rows(&r, &mut out);
                Values::F64(out)
            });
        }
        // The rest reads f64: f32 arguments are converted.
        let wide: Vec<std::borrow::Cow<[f64]>> = views
            .iter()
            .map(|v| match v {
                View::F64(s) => std::borrow::Cow::Borrowed(*s),
                other => std::borrow::Cow::Owned(other.iter().collect()),
            })
            .collect();
        let refs: Vec<&[f64]> = wide.iter().map(|c| c.as_ref()).collect();
        if let Op::Scan(op) = n.op
            && n.level == Level::Token
            && refs.first().is_some_and(|x| x.len() == sh.b * sh.t)
        {
            let param = n.args.get(1).map(|a| (self.graph.nodes[*a].level, refs[1]));
            let cond = refs.get(1).copied();
            let fill = n.args.get(2).map(|a| (self.graph.nodes[*a].level, refs[2]));
            let out = self.pool.take(refs[0].len());
            return Ok(wrap(scan(
                sh, mask, op, refs[0], param, cond, fill, out, threads,
            )));
        }
        interp::special(&self.graph, n, &refs, sh, mask64, tokens).map(wrap)
    }
}

/// Which argument of a special step is the key it sorts each token's
/// vocabulary by (ranks and sorted running sums within each token).
fn row_key(op: &Op) -> Option<usize> {
    match op {
        Op::Rank { over: Level::Token } => Some(0),
        Op::SortedCumsum {
            over: Level::Token, ..
        } => Some(1),
        _ => None,
    }
}

/// Row orders kept during one run: for keys that more than one step sorts
/// by (a rank and a running sum by the same key, a running sum and its
/// gradient).
#[derive(Default)]
struct Orders {
    shared: Vec<usize>,
    cache: HashMap<usize, Vec<u32>>,
}

impl Plan {
    /// Buffers that more than one special step sorts each token's
    /// vocabulary by.
    fn shared_row_keys(&self) -> Vec<usize> {
        let mut count: HashMap<usize, usize> = HashMap::new();
        for st in &self.steps {
            if let Step::Special(sp) = st
                && let Some(k) = row_key(&self.graph.nodes[sp.node].op)
                && let Some(Src::Buf(b)) = sp.args.get(k)
            {
                *count.entry(*b).or_default() += 1;
            }
        }
        let mut shared: Vec<usize> = count
            .into_iter()
            .filter(|(_, c)| *c > 1)
            .map(|(b, _)| b)
            .collect();
        shared.sort_unstable();
        shared
    }
}

/// Scans along each sequence over its valid tokens (the interpreter's
/// definition; masked positions get 0), sequences across threads in fixed
/// parts (each row on its own: the result does not depend on the thread
/// count). `param` is g (RScan, FScan) or the fill (Next, Prev); for
/// Latest, `cond` and `fill` are its arguments 1, 2. `out` is a zeroed
/// buffer of `x`'s length.
#[allow(clippy::too_many_arguments)]
fn scan(
    sh: &Shape,
    mask: &[f32],
    op: keel_ir::ir::ScanOp,
    x: &[f64],
    param: Option<(Level, &[f64])>,
    cond: Option<&[f64]>,
    fill: Option<(Level, &[f64])>,
    mut out: Vec<f64>,
    threads: usize,
) -> Vec<f64> {
    use keel_ir::ir::ScanOp as S;
    let t = sh.t;
    if t == 0 {
        return out;
    }
    let param = param.map(|(l, v)| (ParentMap::new(sh, Level::Token, l), v));
    let fill = fill.map(|(l, v)| (ParentMap::new(sh, Level::Token, l), v));
    let at = |p: Option<(ParentMap, &[f64])>, i: usize| -> f64 {
        match p {
            Some((pm, v)) => v.get(pm.at(i)).copied().unwrap_or(f64::NAN),
            None => 0.0,
        }
    };
    let valid = |i: usize| mask.get(i).is_some_and(|m| *m != 0.0);
    super::rows::par_rows(&mut out, t, threads, |first, rows| {
        for (r, row) in rows.chunks_mut(t).enumerate() {
            let lo = (first + r) * t;
            // Position i of the batch is row[i - lo].
            let mut put = |i: usize, v: f64| row[i - lo] = v;
            let hi = lo + t;
            match op {
                S::RScan => {
                    let mut acc = 0.0;
                    for i in (lo..hi).rev().filter(|&i| valid(i)) {
                        acc = x[i] + at(param, i) * acc;
                        put(i, acc);
                    }
                }
                S::FScan => {
                    let mut acc = 0.0;
                    for i in (lo..hi).filter(|&i| valid(i)) {
                        acc = x[i] + at(param, i) * acc;
                        put(i, acc);
                    }
                }
                S::RScanMin => {
                    let mut acc = f64::INFINITY;
                    for i in (lo..hi).rev().filter(|&i| valid(i)) {
                        acc = x[i].min(acc);
                        put(i, acc);
                    }
                }
                S::Next => {
                    let mut next: Option<f64> = None;
                    for i in (lo..hi).rev().filter(|&i| valid(i)) {
                        put(i, next.unwrap_or_else(|| at(param, i)));
                        next = Some(x[i]);
                    }
                }
                S::Prev => {
                    let mut prev: Option<f64> = None;
                    for i in (lo..hi).filter(|&i| valid(i)) {
                        put(i, prev.unwrap_or_else(|| at(param, i)));
                        prev = Some(x[i]);
                    }
                }
                S::Latest => {
                    let mut cur = at(fill, lo);
                    for i in (lo..hi).filter(|&i| valid(i)) {
                        if cond.and_then(|c| c.get(i)).is_some_and(|c| *c != 0.0) {
                            cur = x[i];
                        }
                        put(i, cur);
                    }
                }
            }
        }
    });
    out
}

/// Run one loop; returns the buffers it wrote (`narrow` ones as f32).
#[allow(clippy::too_many_arguments)]
fn run_loop(
    lp: &Loop,
    sh: &Shape,
    mask: &[f32],
    bufs: &[Data],
    levels: &[Level],
    narrow: &[bool],
    threads: usize,
    (pool, pool32): (&Pool, &Pool<f32>),
) -> Result<Vec<(usize, Values)>, InterpError> {
    let len = sh.len(lp.level);
    let ctx = Ctx {
        sh,
        mask,
        bufs,
        levels: levels.to_vec(),
    };
    // Buffers stored elementwise, in body order.
    let stores: Vec<usize> = lp
        .body
        .iter()
        .filter_map(|i| match i {
            Ins::Compute { store: Some(b), .. } => Some(*b),
            _ => None,
        })
        .collect();
    let mut store_data: Vec<Values> = stores
        .iter()
        .map(|&b| {
            if narrow.get(b).copied().unwrap_or(false) {
                Values::F32(pool32.take(len))
            } else {
                Values::F64(pool.take(len))
            }
        })
        .collect();
    // Split big loops into a fixed number of parts, whatever the thread
    // count: the parts' partial reductions are merged in part order, so a
    // result does not depend on how many cores ran it.
    let n_parts = if len >= 1 << 15 { PARTS } else { 1 };
    let per = len.div_ceil(n_parts).div_ceil(CHUNK).max(1) * CHUNK;
    let mut parts: Vec<Vec<Partial>> = Vec::new();
    let mut err = None;
    // Each part's slice of every stored buffer.
    let mut slices: Vec<Vec<OutSlice>> =
        (0..len.div_ceil(per).max(1)).map(|_| Vec::new()).collect();
    for data in store_data.iter_mut() {
        match data {
            Values::F64(d) => {
                for (k, ch) in d.chunks_mut(per).enumerate() {
                    slices[k].push(OutSlice::F64(ch));
                }
            }
            Values::F32(d) => {
                for (k, ch) in d.chunks_mut(per).enumerate() {
                    slices[k].push(OutSlice::F32(ch));
                }
            }
            // Stores are made f64 or f32 just above.
            Values::Bf16(_) => {}
        }
    }
    let ctx = &ctx;
    let mut work: Vec<(usize, Vec<OutSlice>)> = slices.into_iter().enumerate().collect();
    // Waves of `threads` parts: all but one on spawned threads.
    while !work.is_empty() {
        let rest = work.split_off(work.len().min(threads.max(1)));
        let wave = std::mem::replace(&mut work, rest);
        let results: Vec<Result<Vec<Partial>, InterpError>> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut own = None;
            let last = wave.len() - 1;
            for (j, (k, mine)) in wave.into_iter().enumerate() {
                let lo = k * per;
                let hi = (lo + per).min(len);
                if j == last {
                    own = Some(run_range(lp, ctx, mine, lo, hi));
                } else {
                    handles.push(scope.spawn(move || run_range(lp, ctx, mine, lo, hi)));
                }
            }
            let mut out: Vec<Result<Vec<Partial>, InterpError>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(InterpError("a kernel thread panicked".into())))
                })
                .collect();
            out.extend(own);
            out
        });
        for r in results {
            match r {
                Ok(p) => parts.push(p),
                Err(e) => err = Some(e),
            }
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let mut out: Vec<(usize, Values)> = stores.into_iter().zip(store_data).collect();
    // Merge the partial reductions in range order (deterministic).
    let mut merged: Vec<Partial> = Vec::new();
    for p in parts {
        if merged.is_empty() {
            merged = p;
            continue;
        }
        for (m, q) in merged.iter_mut().zip(p) {
            let red = lp.body.iter().find_map(|i| match i {
                Ins::Accum { buf, red, .. } if *buf == m.buf => Some(*red),
                _ => None,
            });
            for ((mv, ms), (qv, qs)) in m
                .vals
                .iter_mut()
                .zip(m.seen.iter_mut())
                .zip(q.vals.into_iter().zip(q.seen))
            {
                if !qs {
                    continue;
                }
                *mv = if *ms {
                    combine(red.unwrap_or(Red::Sum), *mv, qv)
                } else {
                    qv
                };
                *ms = true;
            }
        }
    }
    for m in merged {
        let v = m
            .vals
            .iter()
            .zip(&m.seen)
            .map(|(&x, &s)| if s { x } else { 0.0 })
            .collect();
        out.push((m.buf, Values::F64(v)));
    }
    Ok(out)
}

#[inline]
fn combine(r: Red, a: f64, b: f64) -> f64 {
    match r {
        Red::Sum => a + b,
        Red::Max => ops::binary(Bin::Max, a, b),
        Red::Min => ops::binary(Bin::Min, a, b),
    }
}

/// A loop's registers and constants during a run, one chunk each.
struct Bank {
    /// Boxed, so that an instruction computes into a spare chunk which then
    /// trades places with its destination register (no copy).
    #[allow(clippy::vec_box)]
    regs: Vec<Box<[f64; CHUNK]>>,
    /// Every constant operand of the loop, filled once: (bits, chunk).
    consts: Vec<(u64, Box<[f64; CHUNK]>)>,
}

/// Run the loop body over elements `lo..hi`, writing the stored registers
/// into `out` (one slice per stored buffer, starting at `lo`).
///
/// On x86-64 machines with AVX2 the same code runs compiled for it (twice
/// the vector width). Without fused multiply-adds, every operation rounds
/// as in the baseline build, so the results are bit-identical either way.
fn run_range(
    lp: &Loop,
    ctx: &Ctx,
    out: Vec<OutSlice>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { run_range_avx512(lp, ctx, out, lo, hi) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { run_range_avx2(lp, ctx, out, lo, hi) };
    }
    run_range_body(lp, ctx, out, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
fn run_range_avx512(
    lp: &Loop,
    ctx: &Ctx,
    out: Vec<OutSlice>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    run_range_body(lp, ctx, out, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_range_avx2(
    lp: &Loop,
    ctx: &Ctx,
    out: Vec<OutSlice>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    run_range_body(lp, ctx, out, lo, hi)
}

#[inline(always)]
fn run_range_body(
    lp: &Loop,
    ctx: &Ctx,
    mut out: Vec<OutSlice>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    let sh = ctx.sh;
    let level = lp.level;
    let mut partials: Vec<Partial> = lp
        .body
        .iter()
        .filter_map(|i| match i {
            Ins::Accum { to, buf, .. } => Some(Partial {
                buf: *buf,
                vals: vec![0.0; sh.len(*to)],
                seen: vec![false; sh.len(*to)],
            }),
            _ => None,
        })
        .collect();
    let accum_maps: Vec<ParentMap> = lp
        .body
        .iter()
        .filter_map(|i| match i {
            Ins::Accum { to, .. } => Some(ParentMap::new(sh, level, *to)),
            _ => None,
        })
        .collect();
    let mut gathered = [[0.0f64; CHUNK]; 3];
    let mut res: Box<[f64; CHUNK]> = Box::new([0.0; CHUNK]);
    let mut bank = Bank {
        regs: (0..lp.regs.max(1))
            .map(|_| Box::new([0.0; CHUNK]))
            .collect(),
        consts: Vec::new(),
    };
    for ins in &lp.body {
        let args: &[Src] = match ins {
            Ins::Compute { args, .. } => args,
            Ins::Accum { src, .. } => std::slice::from_ref(src),
        };
        for a in args {
            if let Src::Const(x) = a
                && !bank.consts.iter().any(|(b, _)| *b == x.to_bits())
            {
                bank.consts.push((x.to_bits(), Box::new([*x; CHUNK])));
            }
        }
    }
    // Memory operands read more than once that must be converted (f32
    // inputs) or broadcast (a coarser level's values) are loaded once per
    // chunk.
    let mut reads: Vec<(usize, usize)> = Vec::new();
    for ins in &lp.body {
        let args: &[Src] = match ins {
            Ins::Compute { args, .. } => args,
            Ins::Accum { src, .. } => std::slice::from_ref(src),
        };
        for a in args {
            if let Src::Buf(b) = *a
                && (ctx.levels[b] != level || ctx.bufs[b].narrow())
            {
                match reads.iter_mut().find(|(x, _)| *x == b) {
                    Some((_, n)) => *n += 1,
                    None => reads.push((b, 1)),
                }
            }
        }
    }
    let loaded: Vec<usize> = reads.iter().filter(|r| r.1 > 1).map(|r| r.0).collect();
    let mut loads: Vec<Box<[f64; CHUNK]>> = loaded.iter().map(|_| Box::new([0.0; CHUNK])).collect();
    let find = |loaded: &[usize], a: &Src| match a {
        Src::Buf(b) => loaded.iter().position(|x| x == b),
        _ => None,
    };
    // Membership flags of the current chunk (1: a member), computed once
    // per chunk (at `member_at`) for the masked reductions.
    let mut member = [0.0f64; CHUNK];
    let mut member_at = usize::MAX;
    let mut i0 = lo;
    while i0 < hi {
        let c = CHUNK.min(hi - i0);
        let mut store_k = 0;
        let mut accum_k = 0;
        for (&b, dst) in loaded.iter().zip(loads.iter_mut()) {
            let got = operand(ctx, &bank, Src::Buf(b), level, i0, c, dst);
            debug_assert!(std::ptr::eq(got.as_ptr(), dst.as_ptr()));
        }
        for ins in &lp.body {
            match ins {
                Ins::Compute {
                    dst,
                    op,
                    args,
                    store,
                    ..
                } => {
                    // Operands that are not registers or owned buffers at
                    // this level land in `gathered`.
                    let [g0, g1, g2] = &mut gathered;
                    let mut scratch = [g0, g1, g2].into_iter();
                    let mut ops: [&[f64]; 3] = [&[], &[], &[]];
                    for (k, a) in args.iter().enumerate().take(3) {
                        if let Some(l) = find(&loaded, a) {
                            ops[k] = &loads[l][..c];
                            continue;
                        }
                        let Some(g) = scratch.next() else { break };
                        ops[k] = operand(ctx, &bank, *a, level, i0, c, g);
                    }
                    compute(
                        *op,
                        &ops,
                        &mut res[..c],
                        i0,
                        ctx,
                        args.first().copied(),
                        level,
                    );
                    if store.is_some() {
                        let off = i0 - lo;
                        match out.get_mut(store_k) {
                            Some(OutSlice::F64(o)) => o[off..off + c].copy_from_slice(&res[..c]),
                            Some(OutSlice::F32(o)) => {
                                for (d, &x) in o[off..off + c].iter_mut().zip(&res[..c]) {
                                    *d = x as f32;
                                }
                            }
                            None => {}
                        }
                        store_k += 1;
                    }
                    if let Some(r) = bank.regs.get_mut(*dst) {
                        std::mem::swap(r, &mut res);
                    }
                }
                Ins::Accum { src, red, to, .. } => {
                    let vals = match find(&loaded, src) {
                        Some(l) => &loads[l][..c],
                        None => operand(ctx, &bank, *src, level, i0, c, &mut gathered[0]),
                    };
                    let pm = accum_maps[accum_k];
                    let p = &mut partials[accum_k];
                    // Membership: the token mask (for vocabulary entries,
                    // their token's), except vocabulary → token.
                    let masked = match level {
                        Level::Vocab => *to != Level::Token,
                        Level::Token => true,
                        _ => false,
                    };
                    if masked && member_at != i0 {
                        member_flags(ctx, level, i0, &mut member[..c]);
                        member_at = i0;
                    }
                    let red = *red;
                    for (j0, j1, u) in pm.runs(i0, c) {
                        let xs = &vals[j0..j1];
                        let folded = if masked {
                            fold_masked(red, xs, &member[j0..j1])
                        } else {
                            fold(red, xs)
                        };
                        let Some(acc) = folded else { continue };
                        if let (Some(v), Some(s)) = (p.vals.get_mut(u), p.seen.get_mut(u)) {
                            *v = if *s { combine(red, *v, acc) } else { acc };
                            *s = true;
                        }
                    }
                    accum_k += 1;
                }
            }
        }
        i0 += c;
    }
    Ok(partials)
}

/// Membership flags (1.0 or 0.0) of elements `i0..` at `level`: the token
/// mask, for vocabulary entries their token's.
fn member_flags(ctx: &Ctx, level: Level, i0: usize, out: &mut [f64]) {
    let flag = |i: usize| f64::from(u8::from(ctx.mask.get(i).is_some_and(|m| *m != 0.0)));
    if level == Level::Vocab {
        for (j0, j1, t) in ParentMap::new(ctx.sh, Level::Vocab, Level::Token).runs(i0, out.len()) {
            out[j0..j1].fill(flag(t));
        }
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o = flag(i0 + j);
        }
    }
}

/// Lanes of a folded sum: independent accumulators the compiler keeps in
/// vector registers (the order of additions is fixed, so the result is
/// too).
const LANES: usize = 4;

/// The reduction of all of `xs` (`None` when empty).
#[inline(always)]
fn fold(red: Red, xs: &[f64]) -> Option<f64> {
    let (&first, rest) = xs.split_first()?;
    Some(match red {
        Red::Sum => {
            let mut lanes = [0.0f64; LANES];
            let chunks = xs.chunks_exact(LANES);
            let tail = chunks.remainder();
            for ch in chunks {
                for (l, x) in lanes.iter_mut().zip(ch) {
                    *l += x;
                }
            }
            let mut acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            for x in tail {
                acc += x;
            }
            acc
        }
        _ => {
            let lanes = min_max_lanes(red, xs, None);
            // A zero result may depend on the order (which of +0 and -0 came
            // first): the sequential fold decides it.
            if lanes == 0.0 {
                rest.iter().fold(first, |a, &x| combine(red, a, x))
            } else {
                lanes
            }
        }
    })
}

/// A min or max of `xs` (members only, when `flags` are given) in LANES
/// independent select chains combined in lane order — the interpreter's
/// result (NaN-propagating; equal values other than ±0 are the same bits),
/// except possibly the sign of a zero result. The sequential fold was a
/// chain of dependent compares, a third of a vocabulary loop's time.
#[inline(always)]
fn min_max_lanes(red: Red, xs: &[f64], flags: Option<&[f64]>) -> f64 {
    let max = red == Red::Max;
    let step = |a: f64, x: f64| {
        let better = if max { x > a } else { x < a };
        select(a.is_nan() | x.is_nan(), f64::NAN, select(better, x, a))
    };
    let start = if max {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    let mut lanes = [start; LANES];
    let n = xs.len() - xs.len() % LANES;
    match flags {
        None => {
            for ch in xs[..n].chunks_exact(LANES) {
                for (l, &x) in lanes.iter_mut().zip(ch) {
                    *l = step(*l, x);
                }
            }
        }
        Some(f) => {
            for (ch, fl) in xs[..n].chunks_exact(LANES).zip(f.chunks_exact(LANES)) {
                for ((l, &x), &m) in lanes.iter_mut().zip(ch).zip(fl) {
                    *l = select(m != 0.0, step(*l, x), *l);
                }
            }
        }
    }
    let mut acc = lanes.into_iter().fold(start, step);
    for (j, &x) in xs.iter().enumerate().skip(n) {
        if flags.is_none_or(|f| f[j] != 0.0) {
            acc = step(acc, x);
        }
    }
    acc
}

/// The reduction of the members of `xs` (`flags[j]` 1.0; `None` when none).
#[inline(always)]
fn fold_masked(red: Red, xs: &[f64], flags: &[f64]) -> Option<f64> {
    if !flags.iter().any(|&f| f != 0.0) {
        return None;
    }
    Some(match red {
        Red::Sum => {
            let mut lanes = [0.0f64; LANES];
            let chunks = xs.chunks_exact(LANES).zip(flags.chunks_exact(LANES));
            let n = xs.len() - xs.len() % LANES;
            for (ch, fl) in chunks {
                for ((l, &x), &f) in lanes.iter_mut().zip(ch).zip(fl) {
                    *l += if f != 0.0 { x } else { 0.0 };
                }
            }
            let mut acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            for (&x, &f) in xs[n..].iter().zip(&flags[n..]) {
                acc += if f != 0.0 { x } else { 0.0 };
            }
            acc
        }
        _ => {
            let lanes = min_max_lanes(red, xs, Some(flags));
            if lanes != 0.0 {
                return Some(lanes);
            }
            let mut acc: Option<f64> = None;
            for (&x, &f) in xs.iter().zip(flags) {
                if f != 0.0 {
                    acc = Some(acc.map_or(x, |a| combine(red, a, x)));
                }
            }
            acc?
        }
    })
}

/// The operand's values over elements `i0..i0 + c`: a register, a slice
/// of an owned buffer at the loop's level, or values gathered into
/// `scratch` (inputs converted to f64, broadcasts, constants).
#[inline(always)]
fn operand<'s>(
    ctx: &'s Ctx,
    bank: &'s Bank,
    src: Src,
    level: Level,
    i0: usize,
    c: usize,
    scratch: &'s mut [f64; CHUNK],
) -> &'s [f64] {
    match src {
        Src::Reg(r) => &bank.regs[r][..c],
        Src::Const(x) => match bank.consts.iter().find(|(b, _)| *b == x.to_bits()) {
            Some((_, full)) => &full[..c],
            None => {
                scratch[..c].fill(x);
                &scratch[..c]
            }
        },
        Src::PaddedLength => {
            scratch[..c].fill(ctx.sh.t as f64);
            &scratch[..c]
        }
        Src::VocabIndex => {
            let v = ctx.sh.v.max(1);
            let mut k = i0 % v;
            for o in scratch[..c].iter_mut() {
                *o = k as f64;
                k += 1;
                if k == v {
                    k = 0;
                }
            }
            &scratch[..c]
        }
        Src::Buf(b) => {
            let l = ctx.levels[b];
            let d = &ctx.bufs[b];
            if l == level {
                return d.range(i0, c, scratch);
            }
            for (j0, j1, u) in ParentMap::new(ctx.sh, level, l).runs(i0, c) {
                scratch[j0..j1].fill(d.at(u));
            }
            &scratch[..c]
        }
    }
}

/// `out[j] = op(args[0][j], …)` over one chunk, with the interpreter's
/// semantics for every operation (the common ones written out so the
/// compiler vectorises them).
#[inline(always)]
fn compute(
    op: KOp,
    args: &[&[f64]; 3],
    out: &mut [f64],
    i0: usize,
    ctx: &Ctx,
    first: Option<Src>,
    level: Level,
) {
    let a = args[0];
    match op {
        KOp::Copy => out.copy_from_slice(a),
        KOp::Rand => {
            let seed = first.map(|s| ctx.scalar(s, level, 0)).unwrap_or(0.0);
            for (j, o) in out.iter_mut().enumerate() {
                *o = ops::uniform(seed, i0 + j);
            }
        }
        KOp::Un(u) => match u {
            Un::Neg => out.iter_mut().zip(a).for_each(|(o, x)| *o = -x),
            Un::Abs => out.iter_mut().zip(a).for_each(|(o, x)| *o = x.abs()),
            Un::Sqrt => out.iter_mut().zip(a).for_each(|(o, x)| *o = x.sqrt()),
            Un::Exp => out
                .iter_mut()
                .zip(a)
                .for_each(|(o, x)| *o = fastmath::exp(*x)),
            Un::Log => out
                .iter_mut()
                .zip(a)
                .for_each(|(o, x)| *o = fastmath::ln(*x)),
            Un::Sigmoid => out.iter_mut().zip(a).for_each(|(o, &x)| {
                // The interpreter's two stable forms, as a select.
                let e = fastmath::exp(-x.abs());
                *o = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
            }),
            _ => out
                .iter_mut()
                .zip(a)
                .for_each(|(o, x)| *o = ops::unary(u, *x)),
        },
        KOp::Bin(b) => {
            let z = out.iter_mut().zip(a.iter().zip(args[1]));
            match b {
                Bin::Add => z.for_each(|(o, (x, y))| *o = x + y),
                Bin::Sub => z.for_each(|(o, (x, y))| *o = x - y),
                Bin::Mul => z.for_each(|(o, (x, y))| *o = x * y),
                Bin::Div => z.for_each(|(o, (x, y))| *o = x / y),
                Bin::Lt => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x < y))),
                Bin::Le => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x <= y))),
                Bin::Gt => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x > y))),
                Bin::Ge => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x >= y))),
                Bin::Eq => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x == y))),
                Bin::Ne => z.for_each(|(o, (x, y))| *o = f64::from(u8::from(x != y))),
                Bin::And => z.for_each(|(o, (x, y))| {
                    *o = f64::from(u8::from(*x != 0.0) & u8::from(*y != 0.0))
                }),
                Bin::Or => z.for_each(|(o, (x, y))| {
                    *o = f64::from(u8::from(*x != 0.0) | u8::from(*y != 0.0))
                }),
                // The interpreter's min/max (NaN-propagating, the first
                // argument on a tie) as selects.
                Bin::Min => z.for_each(|(o, (&x, &y))| {
                    *o = select(x.is_nan() | y.is_nan(), f64::NAN, select(y < x, y, x))
                }),
                Bin::Max => z.for_each(|(o, (&x, &y))| {
                    *o = select(x.is_nan() | y.is_nan(), f64::NAN, select(y > x, y, x))
                }),
                // x^2 is x·x exactly (both correctly rounded).
                Bin::Pow if args[1].iter().all(|&y| y == 2.0) => {
                    out.iter_mut().zip(a).for_each(|(o, x)| *o = x * x)
                }
                _ => z.for_each(|(o, (x, y))| *o = ops::binary(b, *x, *y)),
            }
        }
        KOp::Where => {
            for (((o, &c), &t), &e) in out.iter_mut().zip(a).zip(args[1]).zip(args[2]) {
                *o = select(c != 0.0, t, e);
            }
        }
        KOp::Clamp => {
            // `ops::clamp` as selects: a NaN `x` fails both comparisons
            // and comes through.
            for (((o, &x), &lo), &hi) in out.iter_mut().zip(a).zip(args[1]).zip(args[2]) {
                let y = select(x < lo, lo, x);
                *o = select(y > hi, hi, y);
            }
        }
    }
}

/// `if c { t } else { e }` as bit operations: compilers turn an `if` over
/// slices into branches on the data (mispredicted for masks and clip
/// decisions, 30 % of GRPO's time); this is vector code.
#[inline(always)]
fn select(c: bool, t: f64, e: f64) -> f64 {
    let m = u64::from(c).wrapping_neg();
    f64::from_bits((t.to_bits() & m) | (e.to_bits() & !m))
}

#[cfg(test)]
mod tests {
    use super::{Red, combine, fold, fold_masked};

    /// The sequential fold over the members: the interpreter's definition.
    fn sequential(red: Red, xs: &[f64], flags: &[f64]) -> Option<f64> {
        let mut acc: Option<f64> = None;
        for (&x, &f) in xs.iter().zip(flags) {
            if f != 0.0 {
                acc = Some(acc.map_or(x, |a| combine(red, a, x)));
            }
        }
        acc
    }

    /// The lane-parallel min/max folds give the sequential result bit for
    /// bit: NaN anywhere, infinities, ties of +0 and -0 in either order, any
    /// length (with and without a tail) and any membership.
    #[test]
    fn min_max_folds_equal_the_sequential_fold() {
        let pool = [
            0.0,
            -0.0,
            1.5,
            -2.25,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            3.0,
            -0.0,
            0.0,
        ];
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for case in 0..4000 {
            let n = 1 + case % 19;
            let nan_ok = case % 3 == 0;
            let xs: Vec<f64> = (0..n)
                .map(|_| {
                    let x = pool[next() % pool.len()];
                    if x.is_nan() && !nan_ok { 0.0 } else { x }
                })
                .collect();
            let flags: Vec<f64> = (0..n).map(|_| (next() % 3 != 0) as u8 as f64).collect();
            let all = vec![1.0; n];
            for red in [Red::Max, Red::Min] {
                let bits = |v: Option<f64>| v.map(f64::to_bits);
                assert_eq!(
                    bits(fold(red, &xs)),
                    bits(sequential(red, &xs, &all)),
                    "{red:?} {xs:?}"
                );
                assert_eq!(
                    bits(fold_masked(red, &xs, &flags)),
                    bits(sequential(red, &xs, &flags)),
                    "{red:?} {xs:?} {flags:?}"
                );
            }
        }
    }
}
