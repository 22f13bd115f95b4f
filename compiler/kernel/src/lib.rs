//! The kernel plan: the device partition of a loss program (forward and the
//! derived backward, one IR graph) cut into fused kernels, and the CPU
//! executor of that plan.
//!
//! [`Plan::new`] walks the graph once in topological order and places every
//! live node:
//! - elementwise nodes (unary, binary, `where`, `clamp`, `stopgrad`,
//!   broadcasts, `rand`) go into a [`Loop`]: one pass over the elements of
//!   one level, whose body is a straight-line list of [`Ins`] over registers;
//! - a reduction to a coarser level is a sink ([`Ins::Accum`]) of the loop over
//!   its argument's level, so the value it reduces never reaches memory;
//! - ranks, quantiles, sorted and keyed statistics, scans, picks and
//!   scatters are [`Special`] steps between loops, with the interpreter's
//!   semantics ([`interp::special`]).
//!
//! A node joins the earliest loop of its level that comes after everything
//! it reads from other steps (a reduction that only reaches coarse levels,
//! the last one); only values read by another step (or named as outputs)
//! get a buffer. GRPO's forward and backward become two token passes — the
//! token count, then the ratios, clipping, loss and monitor sums and the
//! gradient — around one-element group and batch loops.
//!
//! The plan is what `keel compile --emit kernels` prints. Submodules: the
//! gather rewrite (`gathers`), the CPU executor (`exec`) and its per-row
//! orders (`rows`). The CPU executor ([`Plan::run`]) runs every loop in
//! chunks of [`CHUNK`] elements through the instruction list (tight loops
//! the compiler vectorises), f32 inputs and f64 registers, across threads;
//! the cubecl executor (crate `keel-device`) unrolls the same instruction
//! list into one GPU kernel per loop.

use keel_check::builtins::Level;
use keel_ir::ir::{Bin, Graph, NodeId, Op, Red, Un};
use keel_ir::{interp, ops};
use std::collections::HashMap;
use std::fmt::Write;

mod exec;
pub mod fastmath;
mod gathers;
pub mod logits;
mod rows;

use exec::Pool;
use gathers::VOCAB_INDEX;
pub use gathers::fuse_gathers;

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

impl Buffer {
    /// A vocabulary-level value: the CPU executor holds it as f32 (4 bytes
    /// an entry of [B, T, V]; registers and running sums stay f64).
    pub fn narrow(&self) -> bool {
        self.level == Level::Vocab && self.input.is_none()
    }
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
    /// The same for vocabulary-level values (held as f32).
    pool32: Pool<f32>,
    /// The same for the row orders of sorted steps.
    order_pool: Pool<u32>,
}

/// Outputs of one evaluation, by name (`loss`, `d_logp`, `metric.…`):
/// f64, except vocabulary-level ones (`d_logits`), which the CPU plan
/// holds as f32.
pub use keel_ir::Outputs;

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
pub enum Target {
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
        Plan::for_target(graph, Target::Cpu)
    }

    /// [`Plan::new`] for a target: on a GPU, arithmetic is cheap next to
    /// memory traffic, so every elementwise value a later loop needs is
    /// recomputed there ([`Target::Device`]); on the CPU, values behind an
    /// exp, log or pow are stored once and read back ([`Target::Cpu`]).
    pub fn for_target(graph: &Graph, target: Target) -> Result<Plan, String> {
        let g = fuse_gathers(graph);
        let none = vec![false; g.nodes.len()];
        let plan = Plan::build(&g, target, &none)?;
        if target != Target::Cpu {
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
        Plan::build(&g, target, &store)
    }

    /// Cut `g` into loops and special steps; `store[id]` gives elementwise
    /// node `id` a buffer (written once, read by later loops).
    fn build(g: &Graph, target: Target, store: &[bool]) -> Result<Plan, String> {
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
                    .and_then(|v| ops::fold(&n.op, &v)),
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
                                && target == Target::Cpu
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
            for level in Level::ALL {
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
            pool32: Pool::default(),
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
                None if b.narrow() => format!("%{} (f32)", b.node),
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
                        keel_ir::describe_node(&self.graph, sp.node)
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

/// The kernel plan on the CPU as an [`Executor`](keel_ir::Executor): plans
/// a graph when it is [prepared](keel_ir::Executor::prepare) (or first
/// run), refuses a batch whose values would not fit in `memory` bytes, and
/// runs on up to `threads` threads.
pub struct Cpu {
    pub threads: usize,
    /// What the process may still allocate (`None`: no limit).
    pub memory: Option<usize>,
    /// What a refused batch's values are called, and what to do about it
    /// (E0606).
    pub what: &'static str,
    pub help: &'static str,
    plan: Option<Plan>,
}

impl Cpu {
    /// An executor on `threads` threads within `memory` bytes.
    pub fn new(threads: usize, memory: Option<usize>) -> Cpu {
        Cpu {
            threads,
            memory,
            what: "the kernel plan's values for this batch",
            help: "evaluate fewer sequences at once (split the batch), or run on a GPU with `--backend device`; KEEL_MEMORY_LIMIT=BYTES sets the limit",
            plan: None,
        }
    }

    /// The same executor, refusing a batch that does not fit with these
    /// words.
    pub fn refusing_with(mut self, what: &'static str, help: &'static str) -> Cpu {
        self.what = what;
        self.help = help;
        self
    }

    /// The plan of the graph last prepared.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }
}

impl keel_ir::Executor for Cpu {
    fn prepare(&mut self, g: &Graph) -> Result<(), keel_ir::Error> {
        self.plan = Some(
            Plan::new(g)
                .map_err(|e| keel_ir::plan_error(format!("cannot plan the loss kernels: {e}")))?,
        );
        Ok(())
    }

    fn run(&mut self, g: &Graph, p: &keel_ir::batch::Prepared) -> Result<Outputs, keel_ir::Error> {
        if self.plan.is_none() {
            self.prepare(g)?;
        }
        let Some(plan) = &self.plan else {
            return Err(keel_ir::plan_error("no kernel plan"));
        };
        keel_ir::check_memory(
            self.what,
            plan.memory_bytes(&p.shape),
            self.memory,
            self.help,
        )?;
        plan.run(&p.shape, p, self.threads)
            .map_err(|e| keel_ir::batch_error(e.0))
    }

    fn recycle(&mut self, outputs: Outputs) {
        if let Some(plan) = &self.plan {
            plan.recycle(outputs.into_values());
        }
    }
}
