//! The typed IR: an SSA dataflow graph with one node per operation.
//!
//! Every node has a level (where it lives: host step scalar, batch scalar,
//! group, sequence, token or vocabulary entry), a dtype, and a flag saying
//! whether a gradient can flow through it. Nodes are appended in topological
//! order (arguments always come first), so a forward pass is a loop over the
//! vector and reverse-mode differentiation a loop backwards.
//!
//! The [`Builder`] hash-conses nodes (common-subexpression elimination) and
//! folds operations whose arguments are all constants. The f64 reference
//! interpreter (`interp.rs`) defines what every node means.

use crate::builtins::Level;
use std::collections::HashMap;
use std::fmt::Write;

pub type NodeId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    Bool,
    I64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Un {
    Neg,
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Abs,
    Sign,
    Sigmoid,
    Softplus,
    Tanh,
    Relu,
    Cos,
    Sin,
    Floor,
    Ceil,
    Round,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Min,
    Max,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl Bin {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge | Bin::Eq | Bin::Ne | Bin::And | Bin::Or
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Red {
    Sum,
    Max,
    Min,
}

/// Scans run along each sequence over its valid (masked-in) tokens; masked
/// positions get 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanOp {
    /// `y_t = x_t + g * y_next` (args: x, g)
    RScan,
    /// `y_t = x_t + g * y_prev` (args: x, g)
    FScan,
    /// `y_t = min(x_t, y_next)` (args: x)
    RScanMin,
    /// the next valid token's value, `fill` after the last (args: x, fill)
    Next,
    /// the previous valid token's value, `fill` before the first (args: x, fill)
    Prev,
    /// x at the most recent valid token where cond held, `fill` before the
    /// first (args: x, cond, fill)
    Latest,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Const(f64),
    /// A named hyperparameter (`clip.eps_low`) with its value; `--set`
    /// changes the value without changing the graph.
    Param {
        name: String,
        value: f64,
    },
    /// A built-in input, read from the batch or the runtime.
    Input(String),
    /// The padded response length T of the batch.
    PaddedLength,
    Unary(Un),
    Binary(Bin),
    /// (cond, then, else)
    Where,
    /// (x, lo, hi)
    Clamp,
    StopGrad,
    /// (x): to this node's (finer) level.
    Broadcast,
    /// (x): masked reduction of a finer value to this node's level.
    Reduce(Red),
    /// (x): 0-based descending rank within each unit of `over`; invalid
    /// members rank last; ties go to the lower flat index.
    Rank {
        over: Level,
    },
    /// (x, q): the q-quantile (linear interpolation) within each unit of `over`.
    Quantile {
        over: Level,
    },
    /// (x, key): inclusive running sum of x within each unit of `over`, in
    /// descending order of key (ties: lower index first); invalid members 0.
    /// `reverse`: the sum over the members ranked at or after each one (a
    /// suffix sum in that order).
    SortedCumsum {
        over: Level,
        reverse: bool,
    },
    /// (x, key, member): per element, the reduction of x over the members
    /// that share its key (at this node's level); 0 for a key with no member.
    Keyed(Red),
    /// (x, q, key, member): per element, the q-quantile of its key's members.
    KeyedQuantile,
    /// (x, …)
    Scan(ScanOp),
    /// (x vocab): the entry of the sampled token.
    Pick,
    /// (g token): a vocabulary-level value with `g` at the sampled token, 0 elsewhere.
    OneHot,
    /// (seed): a uniform [0, 1) number per element of this node's level,
    /// a pure function of the seed and the element's index.
    Rand,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<NodeId>,
    pub level: Level,
    pub dtype: DType,
    /// Whether a gradient with respect to a differentiable input can flow
    /// through this node.
    pub grad: bool,
}

/// Which side of the machine a node runs on.
pub fn side(level: Level) -> &'static str {
    if level == Level::Step {
        "host"
    } else {
        "device"
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Named results, in order: `loss`, `advantages`, `d_logp`, metrics, …
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }
    /// The names of the inputs the graph reads.
    pub fn inputs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Input(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
    /// Whether any node reduces, broadcasts or ranks over groups.
    pub fn uses_groups(&self) -> bool {
        self.uses_groups_in(&vec![true; self.nodes.len()])
    }

    /// Whether a node marked in `live` reads the group structure.
    pub fn uses_groups_in(&self, live: &[bool]) -> bool {
        self.nodes.iter().zip(live).any(|(n, &l)| {
            l && n.level == Level::Group
                || matches!(
                    n.op,
                    Op::Rank { over: Level::Group }
                        | Op::Quantile { over: Level::Group }
                        | Op::SortedCumsum {
                            over: Level::Group,
                            ..
                        }
                )
        })
    }

    /// Keep only what a training step reads — the loss, its gradients and
    /// the metrics — dropping the diagnostic outputs (`advantages`, the
    /// per-token credit `keel loss --grad-out` writes). An executor then
    /// neither computes nor stores them: on a device, GRPO's token pass
    /// writes 4 bytes a token instead of 8.
    pub fn keep_training_outputs(&mut self) {
        self.outputs.retain(|(n, _)| {
            n == "loss" || n == "value_loss" || n.starts_with("d_") || n.starts_with("metric.")
        });
    }

    /// Nodes reachable from the outputs (a dead-code sweep for printing).
    pub fn live(&self) -> Vec<bool> {
        self.live_from(self.outputs.iter().map(|(_, id)| *id))
    }

    /// Nodes reachable from `roots` (some of the outputs, say).
    pub fn live_from(&self, roots: impl IntoIterator<Item = NodeId>) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = roots.into_iter().collect();
        while let Some(id) = stack.pop() {
            if live[id] {
                continue;
            }
            live[id] = true;
            stack.extend(self.nodes[id].args.iter().copied());
        }
        live
    }

    /// The readable listing printed by `keel compile --emit ir`.
    pub fn print(&self) -> String {
        let live = self.live();
        let mut out = String::new();
        for (id, n) in self.nodes.iter().enumerate() {
            if !live[id] {
                continue;
            }
            let args: Vec<String> = n.args.iter().map(|a| format!("%{a}")).collect();
            let op = match &n.op {
                Op::Const(c) => format!("const {}", fmt_f64(*c)),
                Op::Param { name, value } => format!("param {name} = {}", fmt_f64(*value)),
                Op::Input(s) => format!("input {s}"),
                Op::PaddedLength => "padded_length".to_string(),
                Op::Unary(u) => format!("{} {}", format!("{u:?}").to_lowercase(), args.join(", ")),
                Op::Binary(b) => format!("{} {}", format!("{b:?}").to_lowercase(), args.join(", ")),
                Op::Where => format!("where {}", args.join(", ")),
                Op::Clamp => format!("clamp {}", args.join(", ")),
                Op::StopGrad => format!("stopgrad {}", args.join(", ")),
                Op::Broadcast => format!("broadcast {}", args.join(", ")),
                Op::Reduce(r) => format!("{} {}", format!("{r:?}").to_lowercase(), args.join(", ")),
                Op::Rank { over } => format!("rank over {} {}", over.name(), args.join(", ")),
                Op::Quantile { over } => {
                    format!("quantile over {} {}", over.name(), args.join(", "))
                }
                Op::SortedCumsum { over, reverse } => {
                    format!(
                        "{}cumsum_by over {} {}",
                        if *reverse { "r" } else { "" },
                        over.name(),
                        args.join(", ")
                    )
                }
                Op::Keyed(r) => {
                    format!("{}_by {}", format!("{r:?}").to_lowercase(), args.join(", "))
                }
                Op::KeyedQuantile => format!("quantile_by {}", args.join(", ")),
                Op::Scan(s) => format!("{} {}", format!("{s:?}").to_lowercase(), args.join(", ")),
                Op::Pick => format!("pick {}", args.join(", ")),
                Op::OneHot => format!("onehot {}", args.join(", ")),
                Op::Rand => format!("rand {}", args.join(", ")),
            };
            let dtype = match n.dtype {
                DType::F64 => "f64",
                DType::Bool => "bool",
                DType::I64 => "i64",
            };
            let grad = if n.grad { " grad" } else { "" };
            let _ = writeln!(
                out,
                "%{id:<4} = {op:<44} : {:<5} {dtype:<4} {:<6}{grad}",
                n.level.name(),
                side(n.level)
            );
        }
        for (name, id) in &self.outputs {
            let _ = writeln!(out, "out {name} = %{id}");
        }
        out
    }
}

pub fn fmt_f64(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// Builds a graph with hash-consing and constant folding.
#[derive(Default)]
pub struct Builder {
    pub graph: Graph,
    memo: HashMap<String, NodeId>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Add (or find) a node.
    pub fn add(&mut self, op: Op, args: Vec<NodeId>, level: Level, dtype: DType) -> NodeId {
        // Constant folding of step-level pointwise operations.
        if level == Level::Step
            && matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Clamp)
            && let Some(vals) = args
                .iter()
                .map(|a| match self.graph.nodes[*a].op {
                    Op::Const(c) => Some(c),
                    _ => None,
                })
                .collect::<Option<Vec<f64>>>()
            && let Some(v) = crate::ops::fold(&op, &vals)
        {
            return self.add(Op::Const(v), Vec::new(), level, dtype);
        }
        let grad = match &op {
            Op::Input(name) => matches!(name.as_str(), "logp" | "logits" | "vpred"),
            Op::Const(_)
            | Op::Param { .. }
            | Op::PaddedLength
            | Op::StopGrad
            | Op::Rank { .. }
            | Op::Rand => false,
            Op::Binary(b) if b.is_comparison() => false,
            Op::Unary(Un::Not | Un::Sign | Un::Floor | Un::Ceil | Un::Round) => false,
            Op::Where => args.iter().skip(1).any(|a| self.graph.nodes[*a].grad),
            _ => args.iter().any(|a| self.graph.nodes[*a].grad),
        };
        let key = format!("{op:?}|{args:?}|{level:?}|{dtype:?}");
        if let Some(&id) = self.memo.get(&key) {
            return id;
        }
        self.graph.nodes.push(Node {
            op,
            args,
            level,
            dtype,
            grad,
        });
        let id = self.graph.nodes.len() - 1;
        self.memo.insert(key, id);
        id
    }

    pub fn level(&self, id: NodeId) -> Level {
        self.graph.nodes[id].level
    }
    pub fn dtype(&self, id: NodeId) -> DType {
        self.graph.nodes[id].dtype
    }
    pub fn grad(&self, id: NodeId) -> bool {
        self.graph.nodes[id].grad
    }

    pub fn constant(&self, id: NodeId) -> Option<f64> {
        match self.graph.nodes[id].op {
            Op::Const(c) => Some(c),
            _ => None,
        }
    }

    pub fn c(&mut self, v: f64) -> NodeId {
        self.add(Op::Const(v), Vec::new(), Level::Step, DType::F64)
    }

    /// Broadcast `x` to `level` (a no-op when it is already there).
    pub fn broadcast(&mut self, x: NodeId, level: Level) -> NodeId {
        let l = self.level(x);
        if l >= level {
            return x;
        }
        let dt = self.dtype(x);
        self.add(Op::Broadcast, vec![x], level, dt)
    }

    pub fn unary(&mut self, u: Un, x: NodeId) -> NodeId {
        let l = self.level(x);
        let dt = match u {
            Un::Not => DType::Bool,
            Un::Abs | Un::Neg if self.dtype(x) == DType::I64 => DType::I64,
            _ => DType::F64,
        };
        self.add(Op::Unary(u), vec![x], l, dt)
    }

    pub fn binary(&mut self, b: Bin, x: NodeId, y: NodeId) -> NodeId {
        let l = self.level(x).join(self.level(y));
        let x = self.broadcast(x, l);
        let y = self.broadcast(y, l);
        // Algebraic identities that keep derivative graphs small.
        let (cx, cy) = (self.constant(x), self.constant(y));
        match b {
            Bin::Add if cx == Some(0.0) => return y,
            Bin::Add | Bin::Sub if cy == Some(0.0) => return x,
            Bin::Mul if cx == Some(1.0) => return y,
            Bin::Mul | Bin::Div if cy == Some(1.0) => return x,
            _ => {}
        }
        let dt = if b.is_comparison() {
            DType::Bool
        } else if self.dtype(x) == DType::I64
            && self.dtype(y) == DType::I64
            && matches!(b, Bin::Add | Bin::Sub | Bin::Mul | Bin::Min | Bin::Max)
        {
            DType::I64
        } else {
            DType::F64
        };
        self.add(Op::Binary(b), vec![x, y], l, dt)
    }

    pub fn where_(&mut self, c: NodeId, a: NodeId, b: NodeId) -> NodeId {
        if let Some(k) = self.constant(c) {
            return if k != 0.0 { a } else { b };
        }
        let l = self.level(c).join(self.level(a)).join(self.level(b));
        let (c, a, b) = (
            self.broadcast(c, l),
            self.broadcast(a, l),
            self.broadcast(b, l),
        );
        let dt = if self.dtype(a) == self.dtype(b) {
            self.dtype(a)
        } else {
            DType::F64
        };
        self.add(Op::Where, vec![c, a, b], l, dt)
    }

    pub fn clamp(&mut self, x: NodeId, lo: NodeId, hi: NodeId) -> NodeId {
        let l = self.level(x).join(self.level(lo)).join(self.level(hi));
        let (x, lo, hi) = (
            self.broadcast(x, l),
            self.broadcast(lo, l),
            self.broadcast(hi, l),
        );
        self.add(Op::Clamp, vec![x, lo, hi], l, DType::F64)
    }

    pub fn reduce(&mut self, r: Red, x: NodeId, over: Level) -> NodeId {
        let dt = if r == Red::Sum {
            DType::F64
        } else {
            self.dtype(x)
        };
        self.add(Op::Reduce(r), vec![x], over, dt)
    }

    pub fn stopgrad(&mut self, x: NodeId) -> NodeId {
        if !self.grad(x) {
            return x;
        }
        let (l, dt) = (self.level(x), self.dtype(x));
        self.add(Op::StopGrad, vec![x], l, dt)
    }

    pub fn float(&mut self, x: NodeId) -> NodeId {
        if self.dtype(x) != DType::Bool {
            return x;
        }
        let one = self.c(1.0);
        let zero = self.c(0.0);
        self.where_(x, one, zero)
    }
}
