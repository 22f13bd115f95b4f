//! The kernel plan: the device partition of a loss program (forward and the
//! derived backward, one IR graph) cut into fused kernels, and the CPU
//! executor of that plan.
//!
//! [`Plan::new`] walks the graph once in topological order and places every
//! live node:
//! - elementwise nodes (unary, binary, `where`, `clamp`, `stopgrad`,
//!   broadcasts, `rand`) go into a [`Loop`]: one pass over the elements of
//!   one level, whose body is a straight-line list of [`Ins`] over registers;
//! - a reduction to a coarser level is a sink ([`Accum`]) of the loop over
//!   its argument's level, so the value it reduces never reaches memory;
//! - ranks, quantiles, sorted and keyed statistics, scans, picks and
//!   scatters are [`Special`] steps between loops, with the interpreter's
//!   semantics ([`interp::special`]).
//!
//! A node joins the earliest loop of its level that comes after everything
//! it reads from other steps; only values read by another step (or named as
//! outputs) get a buffer. GRPO's forward and backward become three loops:
//! token-level ratios and clipping with the sums per sequence, the group
//! statistics, and the token-level gradient.
//!
//! The plan is what `keel compile --emit kernels` prints; the CPU executor
//! ([`Plan::run`]) runs every loop in chunks of [`CHUNK`] elements through
//! the instruction list (tight loops the compiler vectorises), in f32 with
//! f64 accumulators, across threads; the cubecl executor (crate
//! `keel-device`) unrolls the same instruction list into one GPU kernel per
//! loop.

use crate::builtins::Level;
use crate::fastmath;
use crate::interp::{self, InterpError, Shape};
use crate::ir::{Bin, DType, Graph, Node, NodeId, Op, Red, Un};
use std::collections::HashMap;
use std::fmt::Write;

/// Elements per chunk of the CPU executor.
pub const CHUNK: usize = 256;

/// Parts a loop of 32,768 elements or more is split into (run on as many
/// threads as there are, in waves); fixed, so results do not depend on the
/// machine's core count.
pub const PARTS: usize = 8;

/// Where an operand comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    /// A register of this loop (a value computed earlier in the body).
    Reg(usize),
    /// A constant (a literal or a hyperparameter's value).
    Const(f64),
    /// A buffer, at its level: read at the element's own index when the
    /// level is the loop's, else at its parent's index (a broadcast).
    Buf(usize),
    /// The batch's padded response length T.
    PaddedLength,
    /// The element's vocabulary id (`vocab_index`, in vocabulary loops):
    /// computed from the index, never read from memory.
    VocabIndex,
}

/// What an instruction computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KOp {
    Un(Un),
    Bin(Bin),
    /// (cond, then, else)
    Where,
    /// (x, lo, hi)
    Clamp,
    /// (x): `stopgrad` and broadcasts.
    Copy,
    /// (seed): a uniform number from the seed and the element's index.
    Rand,
}

/// One instruction of a loop body.
#[derive(Clone, Debug, PartialEq)]
pub enum Ins {
    /// `dst = op(args)`, then written to buffer `store` if there is one.
    Compute {
        dst: usize,
        op: KOp,
        args: Vec<Src>,
        store: Option<usize>,
        /// The IR node it computes.
        node: NodeId,
    },
    /// A masked reduction of `src` into the coarser buffer `buf` (element
    /// `parent(i)` at level `to`); empty units end as 0.
    Accum {
        src: Src,
        red: Red,
        to: Level,
        buf: usize,
        node: NodeId,
    },
}

/// One fused pass over the elements of a level.
#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    pub level: Level,
    pub body: Vec<Ins>,
    pub regs: usize,
}

/// A node evaluated on its own between loops.
#[derive(Clone, Debug, PartialEq)]
pub struct Special {
    pub node: NodeId,
    pub args: Vec<Src>,
    pub buf: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Loop(Loop),
    Special(Special),
}

/// A buffer: an input of the batch or a value that crosses steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub level: Level,
    /// The input it holds, if it is one.
    pub input: Option<String>,
    /// The node whose value it holds.
    pub node: NodeId,
}

/// The fused kernels of one loss program.
#[derive(Clone, Debug)]
pub struct Plan {
    pub graph: Graph,
    pub steps: Vec<Step>,
    pub buffers: Vec<Buffer>,
    /// Output name and where its value is.
    pub outputs: Vec<(String, Src, Level)>,
    /// Memory of the last run's buffers, reused by the next.
    pool: Pool,
    /// The same for the row orders of sorted steps.
    order_pool: Pool<u32>,
}

/// Big buffers kept between runs of a plan: a run reuses the memory of the
/// last one instead of faulting fresh pages in (which cost more than the
/// loops that fill them).
struct Pool<T = f64>(std::sync::Mutex<Vec<Vec<T>>>);

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
    fn take(&self, len: usize) -> Vec<T> {
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
    fn give(&self, v: Vec<T>) {
        if v.capacity() >= Self::MIN
            && let Ok(mut p) = self.0.lock()
            && p.len() < 64
        {
            p.push(v);
        }
    }
}

/// Outputs of one evaluation, by name (`loss`, `d_logp`, `metric.…`).
pub type Outputs = HashMap<String, Vec<f64>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Constants, hyperparameters, inputs, the padded length: read in place.
    Free,
    Elem,
    Reduce,
    Special,
}

/// Where a plan will run: what it stores and what it recomputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Store values behind expensive operations once; recompute the rest.
    Cpu,
    /// Recompute every elementwise value; store only what crosses levels,
    /// special steps and outputs.
    Device,
}

/// On the CPU, a value that several later loops recompute is stored once
/// instead when that recomputation would cost more than this many
/// instructions in all; a value one later loop recomputes stays recomputed
/// (measured: GRPO's token-level gradient terms, up to ~25 instructions
/// recomputed by one later loop, are faster recomputed; SIREN's nucleus
/// entropy terms, ~19 recomputed by three, faster stored).
const RECOMPUTE_MAX: usize = 24;

/// What recomputing each elementwise value costs, in instructions: exp,
/// log and sigmoid weigh 4, a division 2, copies nothing, the rest 1; the
/// arguments of the same level are added (shared parts once per use),
/// capped.
fn recompute_cost(g: &Graph) -> Vec<usize> {
    let mut cost = vec![0usize; g.nodes.len()];
    for (id, n) in g.nodes.iter().enumerate() {
        let elementwise = matches!(
            n.op,
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp | Op::StopGrad | Op::Broadcast
        );
        if !elementwise {
            continue;
        }
        let own = match n.op {
            Op::Unary(Un::Exp | Un::Log | Un::Sigmoid) => 4,
            Op::Binary(Bin::Div) => 2,
            Op::StopGrad | Op::Broadcast => 0,
            _ => 1,
        };
        let args: usize = n
            .args
            .iter()
            .filter(|&&a| g.nodes[a].level == n.level)
            .map(|&a| cost[a])
            .sum();
        cost[id] = (own + args).min(RECOMPUTE_MAX * 4);
    }
    cost
}

/// Operations worth a buffer rather than recomputation in a later loop (on
/// the CPU).
fn expensive(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(
            Un::Log1p | Un::Expm1 | Un::Sigmoid | Un::Softplus | Un::Tanh | Un::Cos | Un::Sin
        ) | Op::Binary(Bin::Pow)
    )
}

impl Plan {
    /// Cut `graph` into fused loops and special steps.
    ///
    /// Every node gets a stage: free nodes 0, elementwise nodes the latest
    /// stage of their arguments, reductions and special nodes one more than
    /// their arguments'. A stage runs its special steps, then one loop per
    /// level from coarse to fine (so a fine loop may read the coarse values
    /// of its own stage). A loop computes the values its stage must produce
    /// (reductions, outputs, arguments of special steps and of finer loops,
    /// expensive values later loops read) and recomputes the cheap
    /// elementwise values it needs from earlier stages instead of reading
    /// them back from memory.
    pub fn new(graph: &Graph) -> Result<Plan, String> {
        Plan::with_policy(graph, Policy::Cpu)
    }

    /// [`Plan::new`] for a target: on a GPU, arithmetic is cheap next to
    /// memory traffic, so every elementwise value a later loop needs is
    /// recomputed there ([`Policy::Device`]); on the CPU, values behind an
    /// exp, log or pow are stored once and read back ([`Policy::Cpu`]).
    pub fn with_policy(graph: &Graph, policy: Policy) -> Result<Plan, String> {
        let g = fuse_gathers(graph);
        let none = vec![false; g.nodes.len()];
        let plan = Plan::build(&g, policy, &none)?;
        if policy != Policy::Cpu {
            return Ok(plan);
        }
        // On the CPU, a value that several later loops recompute is stored
        // once instead when that recomputation costs more than
        // [`RECOMPUTE_MAX`] instructions in all.
        let mut loops_of = vec![0usize; g.nodes.len()];
        for st in &plan.steps {
            if let Step::Loop(lp) = st {
                for ins in &lp.body {
                    if let Ins::Compute { node, .. } = ins {
                        loops_of[*node] += 1;
                    }
                }
            }
        }
        let cost = recompute_cost(&g);
        let store: Vec<bool> = (0..g.nodes.len())
            .map(|id| {
                let again = loops_of[id].saturating_sub(1);
                again > 1 && cost[id] * again > RECOMPUTE_MAX
            })
            .collect();
        if !store.contains(&true) {
            return Ok(plan);
        }
        Plan::build(&g, policy, &store)
    }

    /// Cut `g` into loops and special steps; `store[id]` gives elementwise
    /// node `id` a buffer (written once, read by later loops).
    fn build(g: &Graph, policy: Policy, store: &[bool]) -> Result<Plan, String> {
        let n_nodes = g.nodes.len();
        let live = g.live();
        // Values known when the plan is built: constants, hyperparameters
        // and elementwise work on them.
        let mut konst: Vec<Option<f64>> = vec![None; n_nodes];
        for (id, n) in g.nodes.iter().enumerate() {
            konst[id] = match &n.op {
                Op::Const(c) => Some(*c),
                Op::Param { value, .. } => Some(*value),
                Op::StopGrad | Op::Broadcast => konst[n.args[0]],
                Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp => n
                    .args
                    .iter()
                    .map(|a| konst[*a])
                    .collect::<Option<Vec<f64>>>()
                    .and_then(|v| interp::fold(&n.op, &v)),
                _ => None,
            };
        }
        let kind = |id: NodeId| -> Kind {
            let n = &g.nodes[id];
            if konst[id].is_some() || matches!(n.op, Op::Input(_) | Op::PaddedLength) {
                Kind::Free
            } else if interp::is_special(&n.op) {
                Kind::Special
            } else if matches!(n.op, Op::Reduce(_)) {
                Kind::Reduce
            } else {
                Kind::Elem
            }
        };
        let mut stage = vec![0usize; n_nodes];
        for (id, n) in g.nodes.iter().enumerate() {
            if !live[id] {
                continue;
            }
            let args = n.args.iter().map(|a| stage[*a]).max().unwrap_or(0);
            stage[id] = match kind(id) {
                Kind::Free => 0,
                Kind::Elem => args,
                Kind::Reduce | Kind::Special => args + 1,
            };
        }
        // A reduction whose value flows only to sequence level or coarser
        // (a metric's sum, a loss's numerator) is deferred to the last loop
        // over its argument's level: it folds into the pass that runs
        // anyway, and an earlier pass that ran only for such sums reads
        // less — GRPO's first token pass reads the mask alone (the token
        // count the gradient is scaled by), not every input.
        let mut last: HashMap<Level, usize> = HashMap::new();
        for (id, n) in g.nodes.iter().enumerate() {
            if live[id] && kind(id) == Kind::Elem {
                let e = last.entry(n.level).or_insert(0);
                *e = (*e).max(stage[id]);
            }
        }
        // The finest level each value reaches: its own, or its readers'.
        let mut reach: Vec<Level> = g.nodes.iter().map(|n| n.level).collect();
        for id in (0..n_nodes).rev() {
            if live[id] {
                for &a in &g.nodes[id].args {
                    reach[a] = reach[a].max(reach[id]);
                }
            }
        }
        let mut deferred = false;
        for (id, n) in g.nodes.iter().enumerate() {
            if live[id]
                && kind(id) == Kind::Reduce
                && reach[id] <= Level::Seq
                && let Some(&t) = last.get(&g.nodes[n.args[0]].level)
                && stage[id] < t + 1
            {
                stage[id] = t + 1;
                deferred = true;
            }
        }
        if deferred {
            // Whatever reads a deferred value runs after it.
            for (id, n) in g.nodes.iter().enumerate() {
                if live[id] {
                    let args = n.args.iter().map(|a| stage[*a]).max().unwrap_or(0);
                    stage[id] = stage[id].max(match kind(id) {
                        Kind::Free => 0,
                        Kind::Elem => args,
                        Kind::Reduce | Kind::Special => args + 1,
                    });
                }
            }
        }
        // Which elementwise values get a buffer.
        let mut buffered = vec![false; n_nodes];
        for (id, n) in g.nodes.iter().enumerate() {
            if !live[id] {
                continue;
            }
            for &a in &n.args {
                if kind(a) != Kind::Elem {
                    continue;
                }
                let reads = match kind(id) {
                    Kind::Special => true,
                    Kind::Elem => {
                        n.level != g.nodes[a].level
                            || (stage[id] > stage[a]
                                && policy == Policy::Cpu
                                && (expensive(&g.nodes[a].op) || store[a]))
                    }
                    _ => false,
                };
                if reads {
                    buffered[a] = true;
                }
            }
        }
        for (_, id) in &g.outputs {
            if kind(*id) == Kind::Elem {
                buffered[*id] = true;
            }
        }
        // Buffers: inputs, buffered values, reductions, special results.
        let mut buffers = Vec::new();
        let mut buf_of: HashMap<NodeId, usize> = HashMap::new();
        for (id, n) in g.nodes.iter().enumerate() {
            if !live[id] {
                continue;
            }
            let input = match &n.op {
                Op::Input(name) if name == VOCAB_INDEX => continue,
                Op::Input(name) => Some(name.clone()),
                _ => None,
            };
            let k = kind(id);
            if input.is_some() || buffered[id] || matches!(k, Kind::Reduce | Kind::Special) {
                buf_of.insert(id, buffers.len());
                buffers.push(Buffer {
                    level: n.level,
                    input,
                    node: id,
                });
            }
        }
        let src_outside = |a: NodeId| -> Result<Src, String> {
            if let Some(c) = konst[a] {
                return Ok(Src::Const(c));
            }
            match &g.nodes[a].op {
                Op::PaddedLength => return Ok(Src::PaddedLength),
                Op::Input(name) if name == VOCAB_INDEX => return Ok(Src::VocabIndex),
                _ => {}
            }
            buf_of
                .get(&a)
                .map(|b| Src::Buf(*b))
                .ok_or_else(|| format!("internal: %{a} is read from memory but has no buffer"))
        };
        let max_stage = stage.iter().copied().max().unwrap_or(0);
        let levels = [
            Level::Step,
            Level::Batch,
            Level::Group,
            Level::Seq,
            Level::Token,
            Level::Vocab,
        ];
        let mut steps = Vec::new();
        for s in 0..=max_stage {
            for (id, n) in g.nodes.iter().enumerate() {
                if live[id] && kind(id) == Kind::Special && stage[id] == s {
                    let args = n
                        .args
                        .iter()
                        .map(|&a| src_outside(a))
                        .collect::<Result<Vec<Src>, String>>()?;
                    steps.push(Step::Special(Special {
                        node: id,
                        args,
                        buf: buf_of[&id],
                    }));
                }
            }
            for level in levels {
                // Roots: buffered values of this stage and level, and the
                // reductions of values of this level computed here.
                let mut roots: Vec<NodeId> = Vec::new();
                for (id, n) in g.nodes.iter().enumerate() {
                    if !live[id] {
                        continue;
                    }
                    let is_root = match kind(id) {
                        Kind::Elem => buffered[id] && stage[id] == s && n.level == level,
                        // A reduction folds into the loop of the stage
                        // before its own (its argument's, unless deferred).
                        Kind::Reduce => g.nodes[n.args[0]].level == level && stage[id] == s + 1,
                        _ => false,
                    };
                    if is_root {
                        roots.push(id);
                    }
                }
                if roots.is_empty() {
                    continue;
                }
                // The nodes this loop computes.
                let mut inside = vec![false; n_nodes];
                let mut stack: Vec<NodeId> = Vec::new();
                for &r in &roots {
                    if kind(r) == Kind::Reduce {
                        inside[r] = true;
                        stack.push(g.nodes[r].args[0]);
                    } else {
                        stack.push(r);
                    }
                }
                while let Some(id) = stack.pop() {
                    if inside[id]
                        || kind(id) != Kind::Elem
                        || g.nodes[id].level != level
                        || (buffered[id] && stage[id] < s)
                    {
                        continue;
                    }
                    inside[id] = true;
                    stack.extend(g.nodes[id].args.iter().copied());
                }
                // Last use of each register, for reuse.
                let mut last_use: HashMap<NodeId, NodeId> = HashMap::new();
                for (id, n) in g.nodes.iter().enumerate() {
                    if inside[id] {
                        for &a in &n.args {
                            last_use.insert(a, id);
                        }
                    }
                }
                let mut lp = Loop {
                    level,
                    body: Vec::new(),
                    regs: 0,
                };
                let mut reg_of: HashMap<NodeId, usize> = HashMap::new();
                // Nodes that read another value unchanged: that value.
                let mut alias: HashMap<NodeId, Src> = HashMap::new();
                let mut free_regs: Vec<usize> = Vec::new();
                for (id, n) in g.nodes.iter().enumerate() {
                    if !inside[id] {
                        continue;
                    }
                    let args = n
                        .args
                        .iter()
                        .map(|&a| match (alias.get(&a), reg_of.get(&a)) {
                            (Some(s), _) => Ok(*s),
                            (None, Some(r)) if inside[a] => Ok(Src::Reg(*r)),
                            _ => src_outside(a),
                        })
                        .collect::<Result<Vec<Src>, String>>()?;
                    // Copies (and x·1, x/1, exact) of a value that is not
                    // in a register read their source directly.
                    let copy = match n.op {
                        Op::StopGrad | Op::Broadcast => true,
                        Op::Binary(Bin::Mul | Bin::Div) => args.get(1) == Some(&Src::Const(1.0)),
                        _ => false,
                    };
                    if copy
                        && !(buffered[id] && stage[id] == s)
                        && let Some(&a) = args.first()
                        && !matches!(a, Src::Reg(_))
                    {
                        alias.insert(id, a);
                        continue;
                    }
                    if let Op::Reduce(r) = n.op {
                        lp.body.push(Ins::Accum {
                            src: args[0],
                            red: r,
                            to: n.level,
                            buf: buf_of[&id],
                            node: id,
                        });
                    } else {
                        let op = match &n.op {
                            Op::Unary(u) => KOp::Un(*u),
                            Op::Binary(b) => KOp::Bin(*b),
                            Op::Where => KOp::Where,
                            Op::Clamp => KOp::Clamp,
                            Op::StopGrad | Op::Broadcast => KOp::Copy,
                            Op::Rand => KOp::Rand,
                            other => return Err(format!("internal: {other:?} in a loop")),
                        };
                        let dst = free_regs.pop().unwrap_or_else(|| {
                            lp.regs += 1;
                            lp.regs - 1
                        });
                        lp.body.push(Ins::Compute {
                            dst,
                            op,
                            args: args.clone(),
                            store: (buffered[id] && stage[id] == s).then(|| buf_of[&id]),
                            node: id,
                        });
                        reg_of.insert(id, dst);
                    }
                    // Registers read for the last time here are free for
                    // later instructions (this one's destination is already
                    // taken, so it never overwrites its own arguments).
                    for (&a, src) in n.args.iter().zip(&args) {
                        if let Src::Reg(r) = src
                            && last_use.get(&a) == Some(&id)
                            && !free_regs.contains(r)
                        {
                            free_regs.push(*r);
                        }
                    }
                }
                steps.push(Step::Loop(lp));
            }
        }
        let mut outputs = Vec::new();
        for (name, id) in &g.outputs {
            outputs.push((name.clone(), src_outside(*id)?, g.nodes[*id].level));
        }
        Ok(Plan {
            graph: g.clone(),
            steps,
            buffers,
            outputs,
            pool: Pool::default(),
            order_pool: Pool::default(),
        })
    }

    /// The number of fused loops.
    pub fn loops(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Loop(_)))
            .count()
    }

    /// The listing `keel compile --emit kernels` prints.
    pub fn print(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "// {} steps: {} fused loops, {} special; {} buffers",
            self.steps.len(),
            self.loops(),
            self.steps.len() - self.loops(),
            self.buffers.len()
        );
        for (i, b) in self.buffers.iter().enumerate() {
            let what = match &b.input {
                Some(name) => format!("input {name} (f32)"),
                None => format!("%{}", b.node),
            };
            let _ = writeln!(out, "buffer b{i}: {} = {what}", b.level.name());
        }
        let src = |s: &Src| match s {
            Src::Reg(r) => format!("r{r}"),
            Src::Const(c) => format!("{c:?}"),
            Src::PaddedLength => "T".to_string(),
            Src::VocabIndex => "vocab_index".to_string(),
            Src::Buf(b) => format!("b{b}[{}]", self.buffers[*b].level.name()),
        };
        for (k, st) in self.steps.iter().enumerate() {
            match st {
                Step::Loop(lp) => {
                    let _ = writeln!(
                        out,
                        "\nkernel k{k}: for each {} element i  // {} instructions, {} registers",
                        lp.level.name(),
                        lp.body.len(),
                        lp.regs
                    );
                    for ins in &lp.body {
                        match ins {
                            Ins::Compute {
                                dst,
                                op,
                                args,
                                store,
                                node,
                            } => {
                                let op = match op {
                                    KOp::Un(u) => format!("{u:?}").to_lowercase(),
                                    KOp::Bin(b) => format!("{b:?}").to_lowercase(),
                                    KOp::Where => "where".into(),
                                    KOp::Clamp => "clamp".into(),
                                    KOp::Copy => "copy".into(),
                                    KOp::Rand => "rand".into(),
                                };
                                let args: Vec<String> = args.iter().map(src).collect();
                                let _ = writeln!(
                                    out,
                                    "  r{dst:<3} = {op} {:<40} // %{node}",
                                    args.join(", ")
                                );
                                if let Some(b) = store {
                                    let _ = writeln!(out, "  b{b}[i] = r{dst}");
                                }
                            }
                            Ins::Accum {
                                src: s,
                                red,
                                to,
                                buf,
                                node,
                            } => {
                                let _ = writeln!(
                                    out,
                                    "  b{buf}[{} of i] {} {}   // masked, %{node}",
                                    to.name(),
                                    match red {
                                        Red::Sum => "+=",
                                        Red::Max => "max=",
                                        Red::Min => "min=",
                                    },
                                    src(s)
                                );
                            }
                        }
                    }
                }
                Step::Special(sp) => {
                    let n = &self.graph.nodes[sp.node];
                    let args: Vec<String> = sp.args.iter().map(src).collect();
                    let _ = writeln!(
                        out,
                        "\nspecial s{k}: b{} = {} {}  // {}, %{}",
                        sp.buf,
                        crate::describe_node(&self.graph, sp.node)
                            .split(['(', ')'])
                            .nth(1)
                            .unwrap_or(""),
                        args.join(", "),
                        n.level.name(),
                        sp.node
                    );
                }
            }
        }
        out.push('\n');
        for (name, s, _) in &self.outputs {
            let _ = writeln!(out, "out {name} = {}", src(s));
        }
        out
    }
}

/// The input that numbers each vocabulary entry.
const VOCAB_INDEX: &str = "vocab_index";

/// Rewrite the gathers between the vocabulary and the token level into work
/// the loops fuse:
/// - `onehot(g)` becomes `where(vocab_index == tokens, g, 0)`, elementwise
///   in the vocabulary loop that reads it (no [N, V] scatter in memory);
/// - `pick(f(x, …))` of an elementwise vocabulary value becomes
///   `f(pick(x), …)` at token level, down to the inputs (`pick(vocab_index)`
///   is `tokens`), so only an input or a special step's result is gathered
///   and the vocabulary value is not stored to be picked from.
///
/// Values are unchanged; node ids are renumbered in topological order.
pub fn fuse_gathers(g: &Graph) -> Graph {
    if !g
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Pick | Op::OneHot))
    {
        return g.clone();
    }
    let mut out = Graph {
        nodes: Vec::with_capacity(g.nodes.len()),
        outputs: Vec::new(),
    };
    let mut new_of: Vec<NodeId> = Vec::with_capacity(g.nodes.len());
    let mut picked: HashMap<NodeId, NodeId> = HashMap::new();
    let mut input_of: HashMap<String, NodeId> = HashMap::new();
    let push = |out: &mut Graph, op: Op, args: Vec<NodeId>, level: Level, dtype: DType, grad| {
        out.nodes.push(Node {
            op,
            args,
            level,
            dtype,
            grad,
        });
        out.nodes.len() - 1
    };
    // An input node, shared.
    let input = |out: &mut Graph, input_of: &mut HashMap<String, NodeId>, name: &str, level| {
        if let Some(&id) = input_of.get(name) {
            return id;
        }
        let id = push(
            out,
            Op::Input(name.to_string()),
            Vec::new(),
            level,
            DType::I64,
            false,
        );
        input_of.insert(name.to_string(), id);
        id
    };
    // The token-level value `pick(old)`, in the new graph.
    fn pick(
        g: &Graph,
        old: NodeId,
        out: &mut Graph,
        new_of: &[NodeId],
        picked: &mut HashMap<NodeId, NodeId>,
        tokens: &mut dyn FnMut(&mut Graph) -> NodeId,
    ) -> NodeId {
        if let Some(&id) = picked.get(&old) {
            return id;
        }
        let n = &g.nodes[old];
        let elementwise = matches!(
            n.op,
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp | Op::StopGrad | Op::Broadcast
        );
        let id = if n.level < Level::Vocab {
            new_of[old]
        } else if matches!(&n.op, Op::Input(name) if name == VOCAB_INDEX) {
            tokens(out)
        } else if let Op::Const(c) = n.op {
            out.nodes.push(Node {
                op: Op::Const(c),
                args: Vec::new(),
                level: Level::Token,
                dtype: n.dtype,
                grad: false,
            });
            out.nodes.len() - 1
        } else if elementwise && !matches!(n.op, Op::Broadcast) {
            let args = n
                .args
                .iter()
                .map(|&a| pick(g, a, out, new_of, picked, tokens))
                .collect();
            out.nodes.push(Node {
                op: n.op.clone(),
                args,
                level: Level::Token,
                dtype: n.dtype,
                grad: n.grad,
            });
            out.nodes.len() - 1
        } else if matches!(n.op, Op::Broadcast) {
            pick(g, n.args[0], out, new_of, picked, tokens)
        } else {
            out.nodes.push(Node {
                op: Op::Pick,
                args: vec![new_of[old]],
                level: Level::Token,
                dtype: n.dtype,
                grad: n.grad,
            });
            out.nodes.len() - 1
        };
        picked.insert(old, id);
        id
    }
    for n in &g.nodes {
        let id = match n.op {
            Op::Pick if n.args.len() == 1 => {
                let mut tokens =
                    |out: &mut Graph| input(out, &mut input_of, "tokens", Level::Token);
                let id = pick(g, n.args[0], &mut out, &new_of, &mut picked, &mut tokens);
                // A value of a coarser level (a picked broadcast): back to
                // the token level.
                if out.nodes[id].level < Level::Token {
                    push(
                        &mut out,
                        Op::Broadcast,
                        vec![id],
                        Level::Token,
                        n.dtype,
                        n.grad,
                    )
                } else {
                    id
                }
            }
            Op::OneHot if n.args.len() == 1 => {
                let vi = input(&mut out, &mut input_of, VOCAB_INDEX, Level::Vocab);
                let tok = input(&mut out, &mut input_of, "tokens", Level::Token);
                let hit = push(
                    &mut out,
                    Op::Binary(Bin::Eq),
                    vec![vi, tok],
                    Level::Vocab,
                    DType::Bool,
                    false,
                );
                let zero = push(
                    &mut out,
                    Op::Const(0.0),
                    Vec::new(),
                    Level::Step,
                    DType::F64,
                    false,
                );
                push(
                    &mut out,
                    Op::Where,
                    vec![hit, new_of[n.args[0]], zero],
                    Level::Vocab,
                    n.dtype,
                    n.grad,
                )
            }
            _ => {
                let args = n.args.iter().map(|&a| new_of[a]).collect();
                if let Op::Input(name) = &n.op
                    && let Some(&id) = input_of.get(name)
                {
                    id
                } else {
                    let id = push(&mut out, n.op.clone(), args, n.level, n.dtype, n.grad);
                    if let Op::Input(name) = &n.op {
                        input_of.insert(name.clone(), id);
                    }
                    id
                }
            }
        };
        new_of.push(id);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|(name, id)| (name.clone(), new_of[*id]))
        .collect();
    out
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
    /// `f(j0, j1, parent)` for offsets `j0..j1` (no division per element).
    #[inline(always)]
    fn runs(&self, i0: usize, c: usize, mut f: impl FnMut(usize, usize, usize)) {
        if self.zero {
            f(0, c, 0);
            return;
        }
        let mut j = 0;
        while j < c {
            let q = (i0 + j) / self.div;
            let end = ((q + 1) * self.div - i0).min(c);
            let p = match self.groups {
                Some(g) => g.get(q).copied().unwrap_or(usize::MAX),
                None => q,
            };
            f(j, end, p);
            j = end;
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

/// A buffer's contents during a run: an input borrowed from the caller or a
/// value computed by an earlier step.
enum Data<'a> {
    Missing,
    Input(&'a [f32]),
    Owned(Vec<f64>),
    Ref(&'a [f64]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Missing => 0,
            Data::Input(s) => s.len(),
            Data::Owned(v) => v.len(),
            Data::Ref(v) => v.len(),
        }
    }
    #[inline]
    fn at(&self, i: usize) -> f64 {
        match self {
            Data::Missing => f64::NAN,
            Data::Input(s) => s.get(i).map(|&x| x as f64).unwrap_or(f64::NAN),
            Data::Owned(v) => v.get(i).copied().unwrap_or(f64::NAN),
            Data::Ref(v) => v.get(i).copied().unwrap_or(f64::NAN),
        }
    }
    /// Elements `i0..i0 + c` as f64: a slice of an owned buffer, or the
    /// input's values converted into `scratch`.
    #[inline(always)]
    fn range<'s>(&'s self, i0: usize, c: usize, scratch: &'s mut [f64]) -> &'s [f64] {
        match self {
            Data::Owned(v) if i0 + c <= v.len() => &v[i0..i0 + c],
            Data::Ref(v) if i0 + c <= v.len() => &v[i0..i0 + c],
            Data::Input(s) if i0 + c <= s.len() => {
                for (o, x) in scratch[..c].iter_mut().zip(&s[i0..i0 + c]) {
                    *o = *x as f64;
                }
                &scratch[..c]
            }
            _ => {
                scratch[..c].fill(f64::NAN);
                &scratch[..c]
            }
        }
    }
    fn to_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.at(i)).collect()
    }
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
    /// (flat, in level order, f32) and `mask` [B·T]. `threads` caps the
    /// threads a loop is split across (1: this thread only).
    pub fn run(
        &self,
        sh: &Shape,
        inputs: &HashMap<String, Vec<f32>>,
        threads: usize,
    ) -> Result<Outputs, InterpError> {
        let mask: &[f32] = inputs
            .get("mask")
            .map(|m| m.as_slice())
            .ok_or_else(|| InterpError("input `mask` was not provided".into()))?;
        if mask.len() != sh.b * sh.t {
            return Err(InterpError(format!(
                "input `mask` has {} values, expected {}",
                mask.len(),
                sh.b * sh.t
            )));
        }
        let mut bufs: Vec<Data> = Vec::with_capacity(self.buffers.len());
        for b in &self.buffers {
            match &b.input {
                Some(name) => {
                    let x = inputs
                        .get(name)
                        .ok_or_else(|| InterpError(format!("input `{name}` was not provided")))?;
                    if x.len() != sh.len(b.level) {
                        return Err(InterpError(format!(
                            "input `{name}` has {} values, expected {}",
                            x.len(),
                            sh.len(b.level)
                        )));
                    }
                    bufs.push(Data::Input(x));
                }
                None => bufs.push(Data::Missing),
            }
        }
        let levels: Vec<Level> = self.buffers.iter().map(|b| b.level).collect();
        let profile = std::env::var_os("KEEL_PROFILE_KERNELS").is_some();
        let mask64: Vec<f64> = mask.iter().map(|&m| m as f64).collect();
        let tokens: Option<Vec<f64>> = inputs
            .get("tokens")
            .map(|t| t.iter().map(|&x| x as f64).collect());
        let mut orders = Orders {
            shared: self.shared_row_keys(),
            ..Orders::default()
        };
        for (k, st) in self.steps.iter().enumerate() {
            let started = std::time::Instant::now();
            match st {
                Step::Loop(lp) => {
                    let written =
                        run_loop(lp, sh, mask, &bufs, &levels, threads.max(1), &self.pool)?;
                    for (b, v) in written {
                        bufs[b] = Data::Owned(v);
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
                    )?;
                    bufs[sp.buf] = Data::Owned(out);
                }
            }
            if profile {
                eprintln!(
                    "step {k:>3}: {:>9.3} ms  {}",
                    started.elapsed().as_secs_f64() * 1e3,
                    match st {
                        Step::Loop(lp) => format!("loop over {}", lp.level.name()),
                        Step::Special(sp) =>
                            format!("special {}", crate::describe_node(&self.graph, sp.node)),
                    }
                );
            }
        }
        let mut out = Outputs::new();
        for (k, (name, src, level)) in self.outputs.iter().enumerate() {
            let v = match src {
                // The last output read from an owned buffer takes it.
                Src::Buf(b)
                    if matches!(bufs[*b], Data::Owned(_))
                        && !self.outputs[k + 1..].iter().any(|o| o.1 == *src) =>
                {
                    match std::mem::replace(&mut bufs[*b], Data::Missing) {
                        Data::Owned(v) => v,
                        _ => Vec::new(),
                    }
                }
                Src::Buf(b) => bufs[*b].to_vec(),
                other => {
                    let ctx = Ctx {
                        sh,
                        mask,
                        bufs: &bufs,
                        levels: levels.clone(),
                    };
                    (0..sh.len(*level))
                        .map(|i| ctx.scalar(*other, *level, i))
                        .collect()
                }
            };
            out.insert(name.clone(), v);
        }
        for b in bufs {
            if let Data::Owned(v) = b {
                self.pool.give(v);
            }
        }
        for (_, o) in orders.cache {
            self.order_pool.give(o);
        }
        Ok(out)
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
        let data: Vec<Data> = bufs.iter().map(|b| Data::Ref(b.as_slice())).collect();
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
        )
    }

    /// Evaluate a special step: scans natively (row by row, over the valid
    /// tokens), everything else through [`interp::special`].
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
    ) -> Result<Vec<f64>, InterpError> {
        let n = &self.graph.nodes[sp.node];
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
                .collect();
        }
        let ctx = Ctx {
            sh,
            mask,
            bufs,
            levels: levels.to_vec(),
        };
        // Arguments as f64 at their own level: owned buffers as they are,
        // anything else converted or broadcast.
        let converted: Vec<Option<Vec<f64>>> = sp
            .args
            .iter()
            .zip(&n.args)
            .map(|(src, a)| {
                let l = self.graph.nodes[*a].level;
                match src {
                    Src::Buf(b)
                        if levels[*b] == l && matches!(bufs[*b], Data::Owned(_) | Data::Ref(_)) =>
                    {
                        None
                    }
                    Src::Buf(b) if levels[*b] == l => Some(bufs[*b].to_vec()),
                    _ => Some((0..sh.len(l)).map(|i| ctx.scalar(*src, l, i)).collect()),
                }
            })
            .collect();
        let refs: Vec<&[f64]> = sp
            .args
            .iter()
            .zip(&converted)
            .map(|(src, c)| match (c, src) {
                (Some(v), _) => v.as_slice(),
                (None, Src::Buf(b)) => match &bufs[*b] {
                    Data::Owned(v) => v.as_slice(),
                    Data::Ref(v) => v,
                    _ => &[],
                },
                (None, _) => &[],
            })
            .collect();
        // Ranks and running sums over each token's vocabulary: contiguous
        // rows, every entry a member; sorted row by row across threads (once
        // for every step that sorts by the same key).
        if n.level == Level::Vocab
            && sh.v > 0
            && let Some(k) = row_key(&n.op)
            && refs.iter().all(|x| x.len() == sh.len(Level::Vocab))
            && let (Some(x), Some(key)) = (refs.first(), refs.get(k))
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
            return Ok(vocab_rows(sh.v, key, x, sum, order, threads, &self.pool));
        }
        if let Op::Scan(op) = n.op
            && n.level == Level::Token
            && refs.first().is_some_and(|x| x.len() == sh.b * sh.t)
        {
            let param = n.args.get(1).map(|a| (self.graph.nodes[*a].level, refs[1]));
            let cond = refs.get(1).copied();
            let fill = n.args.get(2).map(|a| (self.graph.nodes[*a].level, refs[2]));
            return Ok(scan(sh, mask, op, refs[0], param, cond, fill));
        }
        interp::special(&self.graph, n, &refs, sh, mask64, tokens)
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

/// Run `work(first_row, rows)` over `out` split into [`PARTS`] fixed parts of
/// whole rows of `row` entries, on up to `threads` threads at a time (the
/// split does not depend on the thread count).
fn par_rows<T: Send>(
    out: &mut [T],
    row: usize,
    threads: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len() / row.max(1);
    let per_rows = rows.div_ceil(PARTS).max(1);
    let mut pending: Vec<(usize, &mut [T])> = out
        .chunks_mut(per_rows * row.max(1))
        .enumerate()
        .map(|(c, ch)| (c * per_rows, ch))
        .collect();
    let work = &work;
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(threads.max(1)));
        let wave = std::mem::replace(&mut pending, rest);
        std::thread::scope(|scope| {
            for (first, ch) in wave {
                scope.spawn(move || work(first, ch));
            }
        });
    }
}

/// Rows up to this long are ordered by counting (every pair compared,
/// branch-free and vectorised), longer ones by sorting.
const COUNT_ROW: usize = 128;

/// The order of one row's entries: key descending, ties to the lower index
/// (the interpreter's order), as indices into the row.
fn row_order(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { row_order_avx2(k, keys, idx) };
    }
    row_order_body(k, keys, idx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_order_avx2(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    row_order_body(k, keys, idx)
}

#[inline(always)]
fn row_order_body(k: &[f64], keys: &mut Vec<i64>, idx: &mut [u32]) {
    // f64::total_cmp's order as bits, inverted so that ascending integers
    // are descending keys.
    keys.clear();
    keys.extend(k.iter().map(|x| {
        let b = x.to_bits();
        let t = if b >> 63 == 1 { !b } else { b | (1 << 63) };
        (!t ^ (1 << 63)) as i64
    }));
    if k.len() <= COUNT_ROW {
        // Entry i's place: the entries before it in the order (smaller
        // integers, or equal ones at a lower index).
        for (i, &ki) in keys.iter().enumerate() {
            let mut place = 0u64;
            for &kj in keys.iter() {
                place += u64::from(kj < ki);
            }
            for &kj in &keys[..i] {
                place += u64::from(kj == ki);
            }
            if let Some(o) = idx.get_mut(place as usize) {
                *o = i as u32;
            }
        }
        return;
    }
    // A stable sort keeps ties in index order.
    let mut pairs: Vec<(i64, u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, i as u32))
        .collect();
    pairs.sort_by_key(|e| e.0);
    for (o, key) in idx.iter_mut().zip(&pairs) {
        *o = key.1;
    }
}

/// Every row's order ([`row_order`]), rows of `v` entries.
fn vocab_orders(v: usize, key: &[f64], threads: usize, pool: &Pool<u32>) -> Vec<u32> {
    let mut order = pool.take(key.len());
    par_rows(&mut order, v, threads, |first, chunk| {
        let mut keys = Vec::with_capacity(v);
        for (r, idx) in chunk.chunks_mut(v).enumerate() {
            let base = (first + r) * v;
            row_order(&key[base..base + v], &mut keys, idx);
        }
    });
    order
}

/// Per row of `v` entries, in the row's key order (from `order` if given,
/// else sorted here): the rank of each entry (`sum` is `None`) or the
/// running sum of `x` in that order (`Some(reverse)`: from the other end).
fn vocab_rows(
    v: usize,
    key: &[f64],
    x: &[f64],
    sum: Option<bool>,
    order: Option<&[u32]>,
    threads: usize,
    pool: &Pool,
) -> Vec<f64> {
    let mut out = pool.take(key.len());
    par_rows(&mut out, v, threads, |first, chunk| {
        let mut keys = Vec::with_capacity(v);
        let mut own = vec![0u32; v];
        for (r, orow) in chunk.chunks_mut(v).enumerate() {
            let base = (first + r) * v;
            let idx: &[u32] = match order {
                Some(o) => &o[base..base + v],
                None => {
                    row_order(&key[base..base + v], &mut keys, &mut own);
                    &own
                }
            };
            match sum {
                None => {
                    for (p, &i) in idx.iter().enumerate() {
                        orow[i as usize] = p as f64;
                    }
                }
                Some(reverse) => {
                    let mut acc = 0.0;
                    let mut add = |i: u32| {
                        acc += x[base + i as usize];
                        orow[i as usize] = acc;
                    };
                    if reverse {
                        idx.iter().rev().for_each(|&i| add(i));
                    } else {
                        idx.iter().for_each(|&i| add(i));
                    }
                }
            }
        }
    });
    out
}

/// Scans along each sequence over its valid tokens (the interpreter's
/// definition; masked positions get 0). `param` is g (RScan, FScan) or the
/// fill (Next, Prev); for Latest, `cond` and `fill` are its arguments 1, 2.
fn scan(
    sh: &Shape,
    mask: &[f32],
    op: crate::ir::ScanOp,
    x: &[f64],
    param: Option<(Level, &[f64])>,
    cond: Option<&[f64]>,
    fill: Option<(Level, &[f64])>,
) -> Vec<f64> {
    use crate::ir::ScanOp as S;
    let t = sh.t;
    let mut out = vec![0.0; x.len()];
    let at = |p: Option<(Level, &[f64])>, i: usize| -> f64 {
        match p {
            Some((l, v)) => v
                .get(ParentMap::new(sh, Level::Token, l).at(i))
                .copied()
                .unwrap_or(f64::NAN),
            None => 0.0,
        }
    };
    let valid = |i: usize| mask.get(i).is_some_and(|m| *m != 0.0);
    for b in 0..sh.b {
        let (lo, hi) = (b * t, (b + 1) * t);
        match op {
            S::RScan => {
                let mut acc = 0.0;
                for i in (lo..hi).rev().filter(|&i| valid(i)) {
                    acc = x[i] + at(param, i) * acc;
                    out[i] = acc;
                }
            }
            S::FScan => {
                let mut acc = 0.0;
                for i in (lo..hi).filter(|&i| valid(i)) {
                    acc = x[i] + at(param, i) * acc;
                    out[i] = acc;
                }
            }
            S::RScanMin => {
                let mut acc = f64::INFINITY;
                for i in (lo..hi).rev().filter(|&i| valid(i)) {
                    acc = x[i].min(acc);
                    out[i] = acc;
                }
            }
            S::Next => {
                let mut next: Option<f64> = None;
                for i in (lo..hi).rev().filter(|&i| valid(i)) {
                    out[i] = next.unwrap_or_else(|| at(param, i));
                    next = Some(x[i]);
                }
            }
            S::Prev => {
                let mut prev: Option<f64> = None;
                for i in (lo..hi).filter(|&i| valid(i)) {
                    out[i] = prev.unwrap_or_else(|| at(param, i));
                    prev = Some(x[i]);
                }
            }
            S::Latest => {
                let mut cur = at(fill, lo);
                for i in (lo..hi).filter(|&i| valid(i)) {
                    if cond.and_then(|c| c.get(i)).is_some_and(|c| *c != 0.0) {
                        cur = x[i];
                    }
                    out[i] = cur;
                }
            }
        }
    }
    out
}

/// Run one loop; returns the buffers it wrote.
fn run_loop(
    lp: &Loop,
    sh: &Shape,
    mask: &[f32],
    bufs: &[Data],
    levels: &[Level],
    threads: usize,
    pool: &Pool,
) -> Result<Vec<(usize, Vec<f64>)>, InterpError> {
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
    let mut store_data: Vec<Vec<f64>> = stores.iter().map(|_| pool.take(len)).collect();
    // Split big loops into a fixed number of parts, whatever the thread
    // count: the parts' partial reductions are merged in part order, so a
    // result does not depend on how many cores ran it.
    let n_parts = if len >= 1 << 15 { PARTS } else { 1 };
    let per = len.div_ceil(n_parts).div_ceil(CHUNK).max(1) * CHUNK;
    let mut parts: Vec<Vec<Partial>> = Vec::new();
    let mut err = None;
    // Each part's slice of every stored buffer.
    let mut slices: Vec<Vec<&mut [f64]>> =
        (0..len.div_ceil(per).max(1)).map(|_| Vec::new()).collect();
    for data in store_data.iter_mut() {
        for (k, ch) in data.chunks_mut(per).enumerate() {
            slices[k].push(ch);
        }
    }
    let ctx = &ctx;
    let mut work: Vec<(usize, Vec<&mut [f64]>)> = slices.into_iter().enumerate().collect();
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
    let mut out: Vec<(usize, Vec<f64>)> = stores.into_iter().zip(store_data).collect();
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
        out.push((m.buf, v));
    }
    Ok(out)
}

#[inline]
fn combine(r: Red, a: f64, b: f64) -> f64 {
    match r {
        Red::Sum => a + b,
        Red::Max => interp::binary(Bin::Max, a, b),
        Red::Min => interp::binary(Bin::Min, a, b),
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
    out: Vec<&mut [f64]>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { run_range_avx2(lp, ctx, out, lo, hi) };
    }
    run_range_body(lp, ctx, out, lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_range_avx2(
    lp: &Loop,
    ctx: &Ctx,
    out: Vec<&mut [f64]>,
    lo: usize,
    hi: usize,
) -> Result<Vec<Partial>, InterpError> {
    run_range_body(lp, ctx, out, lo, hi)
}

#[inline(always)]
fn run_range_body(
    lp: &Loop,
    ctx: &Ctx,
    mut out: Vec<&mut [f64]>,
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
    // Membership flags of the current chunk (1: a member), computed once
    // per chunk (at `member_at`) for the masked reductions.
    let mut member = [0.0f64; CHUNK];
    let mut member_at = usize::MAX;
    let mut i0 = lo;
    while i0 < hi {
        let c = CHUNK.min(hi - i0);
        let mut store_k = 0;
        let mut accum_k = 0;
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
                        if let Some(o) = out.get_mut(store_k) {
                            let off = i0 - lo;
                            o[off..off + c].copy_from_slice(&res[..c]);
                        }
                        store_k += 1;
                    }
                    if let Some(r) = bank.regs.get_mut(*dst) {
                        std::mem::swap(r, &mut res);
                    }
                }
                Ins::Accum { src, red, to, .. } => {
                    let vals = operand(ctx, &bank, *src, level, i0, c, &mut gathered[0]);
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
                    pm.runs(i0, c, |j0, j1, u| {
                        let xs = &vals[j0..j1];
                        let folded = if masked {
                            fold_masked(red, xs, &member[j0..j1])
                        } else {
                            fold(red, xs)
                        };
                        let Some(acc) = folded else { return };
                        if let (Some(v), Some(s)) = (p.vals.get_mut(u), p.seen.get_mut(u)) {
                            *v = if *s { combine(red, *v, acc) } else { acc };
                            *s = true;
                        }
                    });
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
        ParentMap::new(ctx.sh, Level::Vocab, Level::Token).runs(i0, out.len(), |j0, j1, t| {
            out[j0..j1].fill(flag(t));
        });
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
        _ => rest.iter().fold(first, |a, &x| combine(red, a, x)),
    })
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
            ParentMap::new(ctx.sh, level, l).runs(i0, c, |j0, j1, u| {
                scratch[j0..j1].fill(d.at(u));
            });
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
                *o = interp::uniform(seed, i0 + j);
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
                .for_each(|(o, x)| *o = interp::unary(u, *x)),
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
                // x^2 is x·x exactly (both correctly rounded).
                Bin::Pow if args[1].iter().all(|&y| y == 2.0) => {
                    out.iter_mut().zip(a).for_each(|(o, x)| *o = x * x)
                }
                _ => z.for_each(|(o, (x, y))| *o = interp::binary(b, *x, *y)),
            }
        }
        KOp::Where => {
            // Both sides loaded, no bounds checks: a select, not a branch.
            for (((o, &c), &t), &e) in out.iter_mut().zip(a).zip(args[1]).zip(args[2]) {
                *o = if c != 0.0 { t } else { e };
            }
        }
        KOp::Clamp => {
            for (((o, &x), &lo), &hi) in out.iter_mut().zip(a).zip(args[1]).zip(args[2]) {
                *o = interp::clamp(x, lo, hi);
            }
        }
    }
}
