//! Lowering a checked recipe to the IR, and assembling the loss program.
//!
//! Lowering follows the checker's [`Resolutions`](crate::check::Resolutions)
//! for every name, so it never re-implements lookup. Built-in functions
//! become compositions of a few primitive nodes (a mean is a masked sum over
//! a masked count, a standard deviation is built from sums, a softmax from a
//! stop-gradient max, a sum and an exp), which keeps the interpreter, the
//! autodiff rules and the kernel backend small.
//!
//! The loss program's outputs:
//! - `loss`: `reduce(objective.loss) + divergence.coef · reduce(divergence.value)
//!   + entropy.coef · reduce(entropy.value)`, each reduced as
//!   `objective.reduce` says;
//! - `advantages`: the credit broadcast to tokens and masked;
//! - `d_logp` (and `d_logits` when the batch has logits): the gradient of
//!   `loss`, derived by [`crate::autodiff`];
//! - one output per `monitor` key: `metric.NAME`.

use crate::autodiff;
use crate::builtins::{self, Level};
use crate::check::{CheckedRecipe, Res, Setting};
use crate::codes;
use crate::diagnostic::{Diagnostic, Label};
use crate::ir::{Bin, Builder, DType, Graph, NodeId, Op, Red, ScanOp, Un};
use crate::resolve::{Merged, Program};
use crate::source::FileId;
use keel_grammar::{Arg, Expr, ExprKind, Span, UnOp};
use std::collections::HashMap;

/// What the batch provides, which decides how inputs are derived.
pub trait Available: Sync {
    fn has(&self, name: &str) -> bool;
    /// Whether the engine computes the reward itself (an export to verl
    /// or TRL, whose reward functions fill `reward`): the recipe's
    /// `reward` section is then the `reward` input, as given advantages
    /// replace its credit. Only [`EngineReward`] says so.
    fn engine_reward(&self) -> bool {
        false
    }
}

/// The inputs `0` says, with the reward given by the engine.
pub struct EngineReward<F>(pub F);

impl<F: Fn(&str) -> bool + Sync> Available for EngineReward<F> {
    fn has(&self, name: &str) -> bool {
        (self.0)(name)
    }
    fn engine_reward(&self) -> bool {
        true
    }
}

impl<F: Fn(&str) -> bool + Sync> Available for F {
    fn has(&self, name: &str) -> bool {
        self(name)
    }
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    file: FileId,
    section: &'a str,
    env: Option<&'a HashMap<String, NodeId>>,
}

pub struct Lowering<'a> {
    prog: &'a Program,
    merged: &'a Merged,
    checked: &'a CheckedRecipe,
    have: &'a dyn Available,
    pub b: Builder,
    entries: HashMap<(String, String), NodeId>,
    inputs: HashMap<String, NodeId>,
    pub errors: Vec<Diagnostic>,
    /// A given `entropy` is differentiated (`d_entropy`), for callers that
    /// compute it with the fused logits kernel.
    pub entropy_grad: bool,
    /// The token-level matrix the last `aggregate` reduced and its token
    /// weights (`None` for a value already at batch level).
    matrix: Option<(NodeId, NodeId)>,
}

type L<T> = Result<T, ()>;

impl<'a> Lowering<'a> {
    pub fn new(
        prog: &'a Program,
        merged: &'a Merged,
        checked: &'a CheckedRecipe,
        have: &'a dyn Available,
    ) -> Self {
        Lowering {
            prog,
            merged,
            checked,
            have,
            b: Builder::new(),
            entries: HashMap::new(),
            inputs: HashMap::new(),
            errors: Vec::new(),
            entropy_grad: false,
            matrix: None,
        }
    }

    fn error(&mut self, file: FileId, span: Span, msg: impl Into<String>, help: impl Into<String>) {
        self.errors.push(
            Diagnostic::error(codes::NOT_LOWERABLE, msg, Label::new(file, span, "here"))
                .with_help(help),
        );
    }

    fn module_of(&self, file: FileId) -> usize {
        self.prog
            .modules
            .iter()
            .position(|m| m.file == file)
            .unwrap_or(0)
    }

    /// A built-in input, derived from others where the batch lacks it.
    pub fn input(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.inputs.get(name) {
            return id;
        }
        let from_logits = self.have.has("logits") && self.have.has("tokens");
        let id = match name {
            "logp" if from_logits || !self.have.has("logp") && self.have.has("logits") => {
                let logits = self.raw_input("logits");
                let ls = self.log_softmax(logits, Level::Token);
                self.b.add(Op::Pick, vec![ls], Level::Token, DType::F64)
            }
            "mean_logp" if self.have.has("logits") => {
                let z = self.raw_input("logits");
                let ls = self.log_softmax(z, Level::Token);
                let s = self.b.reduce(Red::Sum, ls, Level::Token);
                let one = self.b.c(1.0);
                let ones = self.b.broadcast(one, Level::Vocab);
                let v = self.b.reduce(Red::Sum, ones, Level::Token);
                self.b.binary(Bin::Div, s, v)
            }
            "entropy" if self.have.has("logits") => {
                // H = logsumexp(z) - sum(softmax(z) * z), over the vocabulary.
                let z = self.raw_input("logits");
                let lse = self.logsumexp(z, Level::Token);
                let p = self.softmax(z, Level::Token);
                let pz = self.b.binary(Bin::Mul, p, z);
                let s = self.b.reduce(Red::Sum, pz, Level::Token);
                self.b.binary(Bin::Sub, lse, s)
            }
            // A given entropy the caller differentiates (it asks for
            // `d_entropy`: the fused logits kernel carries it to the logits).
            "entropy" if self.entropy_grad && !self.have.has("logits") => {
                let id = self.raw_input("entropy");
                self.b.graph.nodes[id].grad = true;
                id
            }
            "length" if !self.have.has("length") => {
                let one = self.b.c(1.0);
                let ones = self.b.broadcast(one, Level::Token);
                self.b.reduce(Red::Sum, ones, Level::Seq)
            }
            _ => self.raw_input(name),
        };
        self.inputs.insert(name.to_string(), id);
        id
    }

    fn raw_input(&mut self, name: &str) -> NodeId {
        let (level, dtype) = match builtins::input(name) {
            Some(i) => (
                i.level,
                match i.ty {
                    builtins::Ty0::Num => DType::F64,
                    builtins::Ty0::Int => DType::I64,
                    builtins::Ty0::Bool => DType::Bool,
                },
            ),
            None => (Level::Token, DType::F64),
        };
        self.b
            .add(Op::Input(name.to_string()), Vec::new(), level, dtype)
    }

    /// The node of a section entry (memoized).
    fn entry(&mut self, section: &str, name: &str) -> L<NodeId> {
        let key = (section.to_string(), name.to_string());
        if let Some(&id) = self.entries.get(&key) {
            return Ok(id);
        }
        // Given advantages replace the recipe's credit.
        if section == "credit" && name == "value" && self.have.has("advantages") {
            let id = self.raw_input("advantages");
            self.entries.insert(key, id);
            return Ok(id);
        }
        if section == "reward" && name == "value" && self.have.engine_reward() {
            let id = self.raw_input("reward");
            self.entries.insert(key, id);
            return Ok(id);
        }
        let Some(entry) = self.merged.section(section).and_then(|s| s.entry(name)) else {
            return Err(());
        };
        let id = if !entry.is_let && is_literal(&entry.value) {
            let value = self
                .checked
                .value(section, name)
                .and_then(|v| v.info.constant)
                .unwrap_or(f64::NAN);
            let prefix = if section == "state" { "state" } else { section };
            self.b.add(
                Op::Param {
                    name: format!("{prefix}.{name}"),
                    value,
                },
                Vec::new(),
                Level::Step,
                DType::F64,
            )
        } else {
            let ctx = Ctx {
                file: entry.file,
                section,
                env: None,
            };
            let value = entry.value.clone();
            self.expr(&ctx, &value)?
        };
        self.entries.insert(key, id);
        Ok(id)
    }

    fn expr(&mut self, ctx: &Ctx, e: &Expr) -> L<NodeId> {
        Ok(match &e.kind {
            ExprKind::Number { value, .. } => self.b.c(*value),
            ExprKind::Bool(v) => self.b.add(
                Op::Const(f64::from(u8::from(*v))),
                Vec::new(),
                Level::Step,
                DType::Bool,
            ),
            ExprKind::Paren(x) => self.expr(ctx, x)?,
            ExprKind::Var(_) | ExprKind::Field(..) => self.name(ctx, e)?,
            ExprKind::Unary(UnOp::Neg, x) => {
                let x = self.expr(ctx, x)?;
                self.b.unary(Un::Neg, x)
            }
            ExprKind::Unary(UnOp::Not, x) => {
                let x = self.expr(ctx, x)?;
                self.b.unary(Un::Not, x)
            }
            ExprKind::Binary(op, x, y) => {
                let x = self.expr(ctx, x)?;
                let y = self.expr(ctx, y)?;
                use keel_grammar::BinOp as B;
                let op = match op {
                    B::Add => Bin::Add,
                    B::Sub => Bin::Sub,
                    B::Mul => Bin::Mul,
                    B::Div => Bin::Div,
                    B::Pow => Bin::Pow,
                    B::Eq => Bin::Eq,
                    B::Ne => Bin::Ne,
                    B::Lt => Bin::Lt,
                    B::Le => Bin::Le,
                    B::Gt => Bin::Gt,
                    B::Ge => Bin::Ge,
                    B::And => Bin::And,
                    B::Or => Bin::Or,
                };
                self.b.binary(op, x, y)
            }
            ExprKind::If(c, a, b) => {
                let c = self.expr(ctx, c)?;
                let a = self.expr(ctx, a)?;
                let b = self.expr(ctx, b)?;
                self.b.where_(c, a, b)
            }
            ExprKind::Index(list, i) => {
                let items = self.list(ctx, list)?;
                let i = self.expr(ctx, i)?;
                let i = self.b.unary(Un::Floor, i);
                let mut acc = self.b.c(f64::NAN);
                for (k, item) in items.into_iter().enumerate().rev() {
                    let kk = self.b.c(k as f64);
                    let hit = self.b.binary(Bin::Eq, i, kk);
                    acc = self.b.where_(hit, item, acc);
                }
                acc
            }
            ExprKind::Call { func, args, over } => {
                self.call(ctx, e.span, func, args, over.as_ref())?
            }
            ExprKind::List(_) => {
                self.error(
                    ctx.file,
                    e.span,
                    "a list is not a value of the loss",
                    "index it: `list[i]`",
                );
                return Err(());
            }
            ExprKind::Str(_) | ExprKind::None | ExprKind::Error => {
                self.error(
                    ctx.file,
                    e.span,
                    "this cannot be computed",
                    "use a number here",
                );
                return Err(());
            }
        })
    }

    fn list(&mut self, ctx: &Ctx, e: &Expr) -> L<Vec<NodeId>> {
        match &e.kind {
            ExprKind::Paren(x) => self.list(ctx, x),
            ExprKind::List(items) => items.iter().map(|x| self.expr(ctx, x)).collect(),
            ExprKind::Var(_) | ExprKind::Field(..) => {
                let res = self
                    .checked
                    .resolutions
                    .get(&(ctx.file, e.span.start, e.span.end))
                    .cloned();
                if let Some(Res::Entry(s, n)) = res
                    && let Some(entry) = self.merged.section(&s).and_then(|x| x.entry(&n))
                {
                    let c = Ctx {
                        file: entry.file,
                        section: &s,
                        env: None,
                    };
                    let v = entry.value.clone();
                    return self.list(&c, &v);
                }
                self.error(
                    ctx.file,
                    e.span,
                    "only a list can be indexed",
                    "index a list literal or a key holding one",
                );
                Err(())
            }
            _ => {
                self.error(
                    ctx.file,
                    e.span,
                    "only a list can be indexed",
                    "index a list literal or a key holding one",
                );
                Err(())
            }
        }
    }

    fn name(&mut self, ctx: &Ctx, e: &Expr) -> L<NodeId> {
        let res = self
            .checked
            .resolutions
            .get(&(ctx.file, e.span.start, e.span.end))
            .cloned();
        match res {
            Some(Res::FnParam(n)) => ctx.env.and_then(|env| env.get(&n).copied()).ok_or(()),
            Some(Res::Input(n)) => Ok(self.input(&n)),
            Some(Res::Entry(s, n)) => self.entry(&s, &n),
            Some(Res::State(n)) => self.entry("state", &n),
            Some(Res::Default {
                section,
                key,
                value,
            }) => Ok(self.b.add(
                Op::Param {
                    name: format!("{section}.{key}"),
                    value,
                },
                Vec::new(),
                Level::Step,
                DType::F64,
            )),
            Some(Res::UserFn { .. }) | None => {
                self.error(
                    ctx.file,
                    e.span,
                    "this name could not be resolved",
                    "run `keel check` first",
                );
                Err(())
            }
        }
    }

    fn call(
        &mut self,
        ctx: &Ctx,
        span: Span,
        func: &keel_grammar::Ident,
        args: &[Arg],
        over: Option<&keel_grammar::Ident>,
    ) -> L<NodeId> {
        if let Some(Res::UserFn { module, index }) = self
            .checked
            .resolutions
            .get(&(ctx.file, span.start, span.end))
            .cloned()
        {
            return self.user_call(ctx, module, index, args);
        }
        if func.name == "search" {
            return self.search(ctx, args);
        }
        let Some(bi) = builtins::builtin(&func.name) else {
            self.error(
                ctx.file,
                func.span,
                "unknown function",
                "run `keel check` first",
            );
            return Err(());
        };
        // Bind arguments by parameter name.
        let names: Vec<&str> = bi.params.iter().map(|p| p.trim_end_matches('?')).collect();
        let mut bound: Vec<Option<NodeId>> = vec![None; names.len()];
        let mut pos = 0;
        for a in args {
            let v = self.expr(ctx, &a.value)?;
            let slot = match &a.name {
                Some(n) => names.iter().position(|p| *p == n.name),
                None => {
                    pos += 1;
                    Some(pos - 1)
                }
            };
            if let Some(i) = slot.filter(|i| *i < bound.len()) {
                bound[i] = Some(v);
            }
        }
        let level = over.and_then(|o| Level::from_over(&o.name));
        let x = bound.first().copied().flatten();
        let arg = |k: usize| bound.get(k).copied().flatten();
        let need = |v: Option<NodeId>| v.ok_or(());
        let b = &mut self.b;
        Ok(match (bi.name, level) {
            ("exp", _) => b.unary(Un::Exp, need(x)?),
            ("log", _) => b.unary(Un::Log, need(x)?),
            ("log1p", _) => b.unary(Un::Log1p, need(x)?),
            ("expm1", _) => b.unary(Un::Expm1, need(x)?),
            ("sqrt", _) => b.unary(Un::Sqrt, need(x)?),
            ("abs", _) => b.unary(Un::Abs, need(x)?),
            ("sign", _) => b.unary(Un::Sign, need(x)?),
            ("sigmoid", _) => b.unary(Un::Sigmoid, need(x)?),
            ("softplus", _) => b.unary(Un::Softplus, need(x)?),
            ("tanh", _) => b.unary(Un::Tanh, need(x)?),
            ("relu", _) => b.unary(Un::Relu, need(x)?),
            ("cos", _) => b.unary(Un::Cos, need(x)?),
            ("sin", _) => b.unary(Un::Sin, need(x)?),
            ("floor", _) => b.unary(Un::Floor, need(x)?),
            ("ceil", _) => b.unary(Un::Ceil, need(x)?),
            ("round", _) => b.unary(Un::Round, need(x)?),
            ("pow", _) => b.binary(Bin::Pow, need(x)?, need(arg(1))?),
            ("clamp", _) => b.clamp(need(x)?, need(arg(1))?, need(arg(2))?),
            ("where", _) => b.where_(need(x)?, need(arg(1))?, need(arg(2))?),
            ("float", _) => b.float(need(x)?),
            ("stopgrad", _) => b.stopgrad(need(x)?),
            ("broadcast", _) => need(x)?,
            ("min", None) => b.binary(Bin::Min, need(x)?, need(arg(1))?),
            ("max", None) => b.binary(Bin::Max, need(x)?, need(arg(1))?),
            ("min", Some(l)) => b.reduce(Red::Min, need(x)?, l),
            ("max", Some(l)) => b.reduce(Red::Max, need(x)?, l),
            ("sum", Some(l)) => {
                let x = b.float(need(x)?);
                b.reduce(Red::Sum, x, l)
            }
            ("count", Some(l)) => self.count(x, l),
            ("mean", Some(l)) => self.mean(need(x)?, l),
            ("var", Some(l)) => self.var(need(x)?, l, false),
            ("std", Some(l)) => self.var(need(x)?, l, true),
            ("logsumexp", Some(l)) => self.logsumexp(need(x)?, l),
            ("any", Some(l)) => {
                let f = b.float(need(x)?);
                let m = b.reduce(Red::Max, f, l);
                let half = b.c(0.5);
                b.binary(Bin::Gt, m, half)
            }
            ("all", Some(l)) => {
                let f = b.float(need(x)?);
                let m = b.reduce(Red::Min, f, l);
                let half = b.c(0.5);
                b.binary(Bin::Gt, m, half)
            }
            ("quantile", Some(l)) => {
                let q = need(arg(1))?;
                b.add(Op::Quantile { over: l }, vec![need(x)?, q], l, DType::F64)
            }
            ("whiten", Some(l)) => {
                let eps = match arg(1) {
                    Some(e) => e,
                    None => b.c(1e-8),
                };
                self.whiten(need(x)?, eps, l)
            }
            ("softmax", Some(l)) => self.softmax(need(x)?, l),
            ("log_softmax", Some(l)) => self.log_softmax(need(x)?, l),
            ("rank", Some(l)) => self.rank(need(x)?, l),
            ("sum_by" | "min_by" | "max_by", _) => {
                let red = match bi.name {
                    "sum_by" => Red::Sum,
                    "min_by" => Red::Min,
                    _ => Red::Max,
                };
                let x = self.b.float(need(x)?);
                let key = need(arg(1))?;
                let member = match arg(2) {
                    Some(m) => self.b.float(m),
                    None => self.b.c(1.0),
                };
                let l = self
                    .b
                    .level(x)
                    .join(self.b.level(key))
                    .join(self.b.level(member));
                let (x, key, member) = (
                    self.b.broadcast(x, l),
                    self.b.broadcast(key, l),
                    self.b.broadcast(member, l),
                );
                let key = self.b.stopgrad(key);
                self.b
                    .add(Op::Keyed(red), vec![x, key, member], l, DType::F64)
            }
            ("quantile_by", _) => {
                let x = self.b.float(need(x)?);
                let q = need(arg(1))?;
                let key = need(arg(2))?;
                let member = match arg(3) {
                    Some(m) => self.b.float(m),
                    None => self.b.c(1.0),
                };
                let l = self
                    .b
                    .level(x)
                    .join(self.b.level(key))
                    .join(self.b.level(member))
                    .join(self.b.level(q));
                let (x, q) = (self.b.broadcast(x, l), self.b.broadcast(q, l));
                let (key, member) = (self.b.broadcast(key, l), self.b.broadcast(member, l));
                self.b
                    .add(Op::KeyedQuantile, vec![x, q, key, member], l, DType::F64)
            }
            ("cumsum_by" | "rcumsum_by", Some(l)) => {
                let x = self.b.float(need(x)?);
                let xl = self.b.level(x);
                let key = need(arg(1))?;
                let key = self.b.float(key);
                let key = self.b.stopgrad(key);
                let key = self.b.broadcast(key, xl);
                self.b.add(
                    Op::SortedCumsum {
                        over: l,
                        reverse: bi.name == "rcumsum_by",
                    },
                    vec![x, key],
                    xl,
                    DType::F64,
                )
            }
            ("topk", Some(l)) => {
                let x = need(x)?;
                let r = self.rank(x, l);
                let k = need(arg(1))?;
                self.b.binary(Bin::Lt, r, k)
            }
            ("top_frac", Some(l)) => {
                let x = need(x)?;
                let r = self.rank(x, l);
                let n = self.count(Some(x), l);
                let f = need(arg(1))?;
                let fk = self.b.binary(Bin::Mul, f, n);
                let k = self.b.unary(Un::Ceil, fk);
                self.b.binary(Bin::Lt, r, k)
            }
            ("rscan", _) => self.scan(ScanOp::RScan, need(x)?, need(arg(1))?),
            ("cumsum", _) => {
                let one = self.b.c(1.0);
                self.scan(ScanOp::FScan, need(x)?, one)
            }
            ("rscan_min", _) => {
                let x = self.b.broadcast(need(x)?, Level::Token);
                self.b.add(
                    Op::Scan(ScanOp::RScanMin),
                    vec![x],
                    Level::Token,
                    DType::F64,
                )
            }
            ("latest", _) => {
                let fill = match arg(2) {
                    Some(f) => f,
                    None => self.b.c(0.0),
                };
                let x = self.b.broadcast(need(x)?, Level::Token);
                let cond = self.b.float(need(arg(1))?);
                let cond = self.b.broadcast(cond, Level::Token);
                self.b.add(
                    Op::Scan(ScanOp::Latest),
                    vec![x, cond, fill],
                    Level::Token,
                    DType::F64,
                )
            }
            ("next" | "prev", _) => {
                let fill = match arg(1) {
                    Some(f) => f,
                    None => self.b.c(0.0),
                };
                let op = if bi.name == "next" {
                    ScanOp::Next
                } else {
                    ScanOp::Prev
                };
                self.scan(op, need(x)?, fill)
            }
            ("pick", _) => self
                .b
                .add(Op::Pick, vec![need(x)?], Level::Token, DType::F64),
            ("rand", _) => {
                let like = need(x)?;
                let l = self.b.level(like);
                self.b.add(Op::Rand, vec![need(arg(1))?], l, DType::F64)
            }
            _ => {
                self.error(
                    ctx.file,
                    span,
                    format!("`{}` cannot be lowered here", bi.name),
                    "run `keel check` first",
                );
                return Err(());
            }
        })
    }

    /// `search(f, lo, hi, step, args...)` unrolled over its grid: one
    /// condition per candidate, the first that holds chosen by a `where` chain.
    fn search(&mut self, ctx: &Ctx, args: &[Arg]) -> L<NodeId> {
        let (Some(f), Some(rest)) = (args.first(), args.get(1..)) else {
            return Err(());
        };
        let Some(Res::UserFn { module, index }) = self
            .checked
            .resolutions
            .get(&(ctx.file, f.value.span.start, f.value.span.end))
            .cloned()
        else {
            return Err(());
        };
        let Some((file, def)) = self.prog.fn_def(module, index) else {
            return Err(());
        };
        let def = def.clone();
        let mut grid = Vec::new();
        for a in rest.iter().take(3) {
            let n = self.expr(ctx, &a.value)?;
            grid.push(match &self.b.graph.nodes[n].op {
                Op::Const(c) => *c,
                Op::Param { value, .. } => *value,
                _ => return Err(()),
            });
        }
        let (lo, hi, step) = (grid[0], grid[1], grid[2]);
        let extra: Vec<NodeId> = rest
            .iter()
            .skip(3)
            .map(|a| self.expr(ctx, &a.value))
            .collect::<Result<_, _>>()?;
        let count = (((hi - lo) / step).ceil().max(0.0) as usize).min(1000);
        let mut candidates: Vec<f64> = (0..=count)
            .map(|k| (lo + k as f64 * step).min(hi))
            .collect();
        candidates.dedup();
        let mut result = self.b.c(hi);
        for &c in candidates.iter().rev() {
            let mut env = HashMap::new();
            let cn = self.b.c(c);
            if let Some(p) = def.params.first() {
                env.insert(p.name.name.clone(), cn);
            }
            for (p, v) in def.params.iter().skip(1).zip(&extra) {
                env.insert(p.name.name.clone(), *v);
            }
            let body_ctx = Ctx {
                file,
                section: ctx.section,
                env: Some(&env),
            };
            let ok = self.expr(&body_ctx, &def.body)?;
            result = self.b.where_(ok, cn, result);
        }
        Ok(result)
    }

    fn user_call(&mut self, ctx: &Ctx, module: usize, index: usize, args: &[Arg]) -> L<NodeId> {
        let Some((file, def)) = self.prog.fn_def(module, index) else {
            return Err(());
        };
        let def = def.clone();
        let mut env = HashMap::new();
        let mut pos = 0;
        let mut given: HashMap<String, NodeId> = HashMap::new();
        for a in args {
            let v = self.expr(ctx, &a.value)?;
            match &a.name {
                Some(n) => {
                    given.insert(n.name.clone(), v);
                }
                None => {
                    if let Some(p) = def.params.get(pos) {
                        given.insert(p.name.name.clone(), v);
                    }
                    pos += 1;
                }
            }
        }
        for p in &def.params {
            let v = match (given.get(&p.name.name), &p.default) {
                (Some(v), _) => *v,
                (None, Some(d)) => {
                    let empty = HashMap::new();
                    let dctx = Ctx {
                        file,
                        section: ctx.section,
                        env: Some(&empty),
                    };
                    self.expr(&dctx, d)?
                }
                (None, None) => return Err(()),
            };
            env.insert(p.name.name.clone(), v);
        }
        let body_ctx = Ctx {
            file,
            section: ctx.section,
            env: Some(&env),
        };
        let _ = self.module_of(file);
        self.expr(&body_ctx, &def.body)
    }

    // ----- compositions ------------------------------------------------------

    fn scan(&mut self, op: ScanOp, x: NodeId, p: NodeId) -> NodeId {
        let x = self.b.broadcast(x, Level::Token);
        self.b
            .add(Op::Scan(op), vec![x, p], Level::Token, DType::F64)
    }

    /// Valid members of each unit (`count(x) over l`; true entries for bools).
    fn count(&mut self, x: Option<NodeId>, l: Level) -> NodeId {
        let ones = match x {
            Some(x) if self.b.dtype(x) == DType::Bool => self.b.float(x),
            Some(x) => {
                let one = self.b.c(1.0);
                let xl = self.b.level(x);
                self.b.broadcast(one, xl)
            }
            None => {
                let one = self.b.c(1.0);
                self.b.broadcast(one, Level::Token)
            }
        };
        self.b.reduce(Red::Sum, ones, l)
    }

    /// Masked mean; an empty unit gives 0.
    fn mean(&mut self, x: NodeId, l: Level) -> NodeId {
        let x = self.b.float(x);
        let s = self.b.reduce(Red::Sum, x, l);
        let n = self.count(Some(x), l);
        let one = self.b.c(1.0);
        let n1 = self.b.binary(Bin::Max, n, one);
        self.b.binary(Bin::Div, s, n1)
    }

    /// Unbiased variance (or std); a one-member unit gives 1.
    fn var(&mut self, x: NodeId, l: Level, std: bool) -> NodeId {
        let x = self.b.float(x);
        let xl = self.b.level(x);
        let n = self.count(Some(x), l);
        let mu = self.mean(x, l);
        let mu = self.b.broadcast(mu, xl);
        let d = self.b.binary(Bin::Sub, x, mu);
        let d2 = self.b.binary(Bin::Mul, d, d);
        let ss = self.b.reduce(Red::Sum, d2, l);
        let one = self.b.c(1.0);
        let nm1 = self.b.binary(Bin::Sub, n, one);
        let nm1 = self.b.binary(Bin::Max, nm1, one);
        let v = self.b.binary(Bin::Div, ss, nm1);
        let v = if std { self.b.unary(Un::Sqrt, v) } else { v };
        let many = self.b.binary(Bin::Gt, n, one);
        self.b.where_(many, v, one)
    }

    /// verl's `masked_whiten`: mean and unbiased variance with 1e-8 guards.
    fn whiten(&mut self, x: NodeId, eps: NodeId, l: Level) -> NodeId {
        let x = self.b.float(x);
        let xl = self.b.level(x);
        let n = self.count(Some(x), l);
        let tiny = self.b.c(1e-8);
        let n_eps = self.b.binary(Bin::Add, n, tiny);
        let s = self.b.reduce(Red::Sum, x, l);
        let mu = self.b.binary(Bin::Div, s, n_eps);
        let mub = self.b.broadcast(mu, xl);
        let d = self.b.binary(Bin::Sub, x, mub);
        let d2 = self.b.binary(Bin::Mul, d, d);
        let ss = self.b.reduce(Red::Sum, d2, l);
        let var = self.b.binary(Bin::Div, ss, n_eps);
        let one = self.b.c(1.0);
        let nm1 = self.b.binary(Bin::Sub, n, one);
        let bessel = self.b.binary(Bin::Div, n, nm1);
        let var = self.b.binary(Bin::Mul, var, bessel);
        let ve = self.b.binary(Bin::Add, var, eps);
        let sd = self.b.unary(Un::Sqrt, ve);
        let sd = self.b.broadcast(sd, xl);
        self.b.binary(Bin::Div, d, sd)
    }

    /// exp(x - m) with m the (detached) maximum of each unit, and m.
    fn shifted_exp(&mut self, x: NodeId, l: Level) -> (NodeId, NodeId) {
        let xl = self.b.level(x);
        let m = self.b.reduce(Red::Max, x, l);
        let m = self.b.stopgrad(m);
        let mb = self.b.broadcast(m, xl);
        let sh = self.b.binary(Bin::Sub, x, mb);
        (self.b.unary(Un::Exp, sh), m)
    }

    fn logsumexp(&mut self, x: NodeId, l: Level) -> NodeId {
        let (e, m) = self.shifted_exp(x, l);
        let s = self.b.reduce(Red::Sum, e, l);
        let ls = self.b.unary(Un::Log, s);
        self.b.binary(Bin::Add, m, ls)
    }

    fn softmax(&mut self, x: NodeId, l: Level) -> NodeId {
        let xl = self.b.level(x);
        let (e, _) = self.shifted_exp(x, l);
        let s = self.b.reduce(Red::Sum, e, l);
        let sb = self.b.broadcast(s, xl);
        self.b.binary(Bin::Div, e, sb)
    }

    fn log_softmax(&mut self, x: NodeId, l: Level) -> NodeId {
        let xl = self.b.level(x);
        let lse = self.logsumexp(x, l);
        let lb = self.b.broadcast(lse, xl);
        self.b.binary(Bin::Sub, x, lb)
    }

    fn rank(&mut self, x: NodeId, l: Level) -> NodeId {
        let x = self.b.float(x);
        let xl = self.b.level(x);
        let x = self.b.stopgrad(x);
        self.b.add(Op::Rank { over: l }, vec![x], xl, DType::F64)
    }

    /// `objective.reduce` applied to a per-token (or per-sequence) value,
    /// over the tokens where `mask` (and `keep`, from `objective.mask`)
    /// hold. A value already reduced to one per batch is taken as it is.
    fn aggregate(
        &mut self,
        x: NodeId,
        mode: &str,
        norm: Option<NodeId>,
        keep: Option<NodeId>,
    ) -> NodeId {
        if self.b.level(x) <= Level::Batch {
            self.matrix = None;
            return self.b.broadcast(x, Level::Batch);
        }
        let x = self.b.float(x);
        let x = self.b.broadcast(x, Level::Token);
        let one = self.b.c(1.0);
        let ones = self.b.broadcast(one, Level::Token);
        let (x, ones) = match keep {
            Some(k) => {
                let k = self.b.float(k);
                let k = self.b.broadcast(k, Level::Token);
                (
                    self.b.binary(Bin::Mul, x, k),
                    self.b.binary(Bin::Mul, ones, k),
                )
            }
            None => (x, ones),
        };
        self.matrix = Some((x, ones));
        let b = &mut self.b;
        match mode {
            // verl 0.9.1 `agg_loss`: the mean over sequences with a valid
            // token of each sequence's token sum (or token mean); the
            // `_norm` form then divides by a constant (Dr. GRPO).
            "seq_mean_token_sum" | "seq_mean_token_mean" | "seq_mean_token_sum_norm" => {
                let s = b.reduce(Red::Sum, x, Level::Seq);
                let n = b.reduce(Red::Sum, ones, Level::Seq);
                let zero = b.c(0.0);
                let valid = b.binary(Bin::Gt, n, zero);
                let per = if mode == "seq_mean_token_mean" {
                    let tiny = b.c(1e-8);
                    let den = b.binary(Bin::Add, n, tiny);
                    b.binary(Bin::Div, s, den)
                } else {
                    s
                };
                let kept = b.where_(valid, per, zero);
                let num = b.reduce(Red::Sum, kept, Level::Batch);
                let vf = b.float(valid);
                let den = b.reduce(Red::Sum, vf, Level::Batch);
                let den = b.binary(Bin::Max, den, one);
                let mean = b.binary(Bin::Div, num, den);
                if mode != "seq_mean_token_sum_norm" {
                    return mean;
                }
                let norm = match norm {
                    Some(n) => n,
                    None => b.add(Op::PaddedLength, Vec::new(), Level::Batch, DType::F64),
                };
                b.binary(Bin::Div, mean, norm)
            }
            _ => {
                let s = b.reduce(Red::Sum, x, Level::Batch);
                let n = b.reduce(Red::Sum, ones, Level::Batch);
                let n = b.binary(Bin::Max, n, one);
                b.binary(Bin::Div, s, n)
            }
        }
    }
}

fn is_literal(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Number { .. } | ExprKind::Bool(_) => true,
        ExprKind::Unary(UnOp::Neg, x) | ExprKind::Paren(x) => is_literal(x),
        _ => false,
    }
}

/// A compiled loss program and what it needs.
/// One term of the loss as the recipe wrote it: `coef · reduce(value)`
/// with the objective's reduction `mode` (and `norm`). The exporter hands a
/// term's token-level matrix to an engine's own aggregation.
#[derive(Clone, Debug, PartialEq)]
pub struct LossTerm {
    /// `objective`, `divergence` or `entropy`.
    pub section: String,
    /// The token-level matrix reduced (the value broadcast to tokens, times
    /// the term's mask) and the token weights it is counted with (1, or the
    /// term's mask); `None` when the value is already a batch-level scalar
    /// (then `scalar` is it). Masked-out tokens of the batch count for
    /// neither.
    pub matrix: Option<(NodeId, NodeId)>,
    /// The term's aggregated value, before `coef`.
    pub scalar: NodeId,
    /// `token_mean`, `seq_mean_token_mean`, `seq_mean_token_sum` or
    /// `seq_mean_token_sum_norm`.
    pub mode: String,
    pub norm: Option<NodeId>,
    /// `S.coef` (`None`: 1, and always for the objective).
    pub coef: Option<NodeId>,
}

pub struct Program0 {
    pub graph: Graph,
    /// The loss's terms (their nodes are in `graph`; the loss is their sum).
    pub terms: Vec<LossTerm>,
    /// Monitor keys left out because the batch lacks an input they read.
    pub skipped_metrics: Vec<String>,
}

/// Build the loss program of a checked recipe.
pub fn loss_program(
    prog: &Program,
    merged: &Merged,
    checked: &CheckedRecipe,
    have: &dyn Available,
) -> Result<Program0, Vec<Diagnostic>> {
    loss_program_with(prog, merged, checked, have, false)
}

/// [`loss_program`], optionally differentiating a given `entropy` input too
/// (output `d_entropy`), for callers that compute logp and entropy with the
/// fused logits kernel and carry both gradients back to the logits.
pub fn loss_program_with(
    prog: &Program,
    merged: &Merged,
    checked: &CheckedRecipe,
    have: &dyn Available,
    entropy_grad: bool,
) -> Result<Program0, Vec<Diagnostic>> {
    let mut lw = Lowering::new(prog, merged, checked, have);
    lw.entropy_grad = entropy_grad;
    let mode = match checked.value("objective", "reduce").map(|v| &v.info.ty) {
        Some(builtins::Ty::Sym(s)) => s.clone(),
        _ => "token_mean".to_string(),
    };
    let fail = |lw: Lowering| lw.errors;
    let Ok(loss) = lw.entry("objective", "loss") else {
        if lw.errors.is_empty() {
            lw.errors.push(
                Diagnostic::error(
                    codes::NO_LOSS,
                    format!("recipe `{}` defines no loss", merged.name),
                    Label::new(merged.file, merged.name_span, "no `objective.loss`"),
                )
                .with_help("add `objective { loss = ... }`"),
            );
        }
        return Err(fail(lw));
    };
    let norm = match merged.section("objective").and_then(|s| s.entry("norm")) {
        Some(_) => lw.entry("objective", "norm").ok(),
        None => None,
    };
    // `S.mask` restricts the tokens of term S; divergence and entropy terms
    // default to the objective's mask.
    let mask_of =
        |lw: &mut Lowering, sec: &str, default: Option<NodeId>| -> Result<Option<NodeId>, ()> {
            match merged.section(sec).and_then(|s| s.entry("mask")) {
                Some(_) => lw.entry(sec, "mask").map(Some),
                None => Ok(default),
            }
        };
    let Ok(keep) = mask_of(&mut lw, "objective", None) else {
        return Err(fail(lw));
    };
    let mut total = lw.aggregate(loss, &mode, norm, keep);
    let mut terms = vec![LossTerm {
        section: "objective".into(),
        matrix: lw.matrix,
        scalar: total,
        mode: mode.clone(),
        norm,
        coef: None,
    }];
    for sec in ["divergence", "entropy"] {
        if merged.section(sec).and_then(|s| s.entry("value")).is_none() {
            continue;
        }
        let Ok(v) = lw.entry(sec, "value") else {
            return Err(fail(lw));
        };
        let given = merged.section(sec).and_then(|s| s.entry("coef")).is_some();
        let coef = if given {
            let Ok(c) = lw.entry(sec, "coef") else {
                return Err(fail(lw));
            };
            c
        } else {
            lw.b.c(1.0)
        };
        let Ok(term_keep) = mask_of(&mut lw, sec, keep) else {
            return Err(fail(lw));
        };
        let agg = lw.aggregate(v, &mode, norm, term_keep);
        terms.push(LossTerm {
            section: sec.into(),
            matrix: lw.matrix,
            scalar: agg,
            mode: mode.clone(),
            norm,
            coef: given.then_some(coef),
        });
        let term = lw.b.binary(Bin::Mul, coef, agg);
        total = lw.b.binary(Bin::Add, total, term);
    }
    let mut outputs = vec![("loss".to_string(), total)];
    let mask = lw.input("mask");
    if merged
        .section("credit")
        .and_then(|s| s.entry("value"))
        .is_some()
        || have.has("advantages")
    {
        let Ok(c) = lw.entry("credit", "value") else {
            return Err(fail(lw));
        };
        let c = lw.b.float(c);
        let c = lw.b.stopgrad(c);
        let ct = lw.b.broadcast(c, Level::Token);
        let adv = lw.b.binary(Bin::Mul, ct, mask);
        outputs.push(("advantages".to_string(), adv));
    }
    // Gradients.
    let logp = lw.input("logp");
    let mut wrt = vec![logp];
    let logits = (have.has("logits")).then(|| lw.input("logits"));
    if let Some(z) = logits {
        wrt.push(z);
    }
    // Without logits, a read `entropy` is a given token-level input; when the
    // caller asks for `d_entropy`, its gradient lets the fused logits kernel
    // carry the loss back to the logits outside the program.
    let entropy = (logits.is_none() && entropy_grad && checked.inputs.contains_key("entropy"))
        .then(|| lw.input("entropy"));
    if let Some(h) = entropy {
        wrt.push(h);
    }
    let grads = match autodiff::gradients(&mut lw.b, total, &wrt) {
        Ok(g) => g,
        Err(op) => {
            lw.errors.push(
                Diagnostic::error(
                    codes::NOT_DIFFERENTIABLE,
                    format!("the gradient of the loss would flow through {op}, which has no derivative"),
                    Label::new(merged.file, merged.name_span, "in this recipe's loss"),
                )
                .with_note("the gradient flows from `logp` (and `logits`) through every value that is not under `stopgrad`")
                .with_help("wrap the argument in `stopgrad(...)`: statistics and selections of advantages usually carry no gradient"),
            );
            return Err(fail(lw));
        }
    };
    let zero = lw.b.c(0.0);
    let d_logp = match grads.first().copied().flatten() {
        Some(g) => lw.b.binary(Bin::Mul, g, mask),
        None => lw.b.broadcast(zero, Level::Token),
    };
    outputs.push(("d_logp".to_string(), d_logp));
    if logits.is_some() {
        let d = match grads.get(1).copied().flatten() {
            Some(g) => lw.b.binary(Bin::Mul, g, mask),
            None => lw.b.broadcast(zero, Level::Vocab),
        };
        outputs.push(("d_logits".to_string(), d));
    }
    if entropy.is_some() {
        let d = match grads.get(1).copied().flatten() {
            Some(g) => lw.b.binary(Bin::Mul, g, mask),
            None => lw.b.broadcast(zero, Level::Token),
        };
        outputs.push(("d_entropy".to_string(), d));
    }
    // The critic: `critic.loss` reduced by `critic.reduce`, differentiated
    // w.r.t. `vpred` alone, where the batch holds `vpred`. The policy's
    // loss must not read `vpred`: its gradient would reach no model.
    if let Some((file, span)) = checked.inputs.get("vpred").copied()
        && inputs_of(&lw.b.graph, total).iter().any(|n| n == "vpred")
    {
        lw.errors.push(
            Diagnostic::error(
                codes::CRITIC_INPUT,
                "the policy's loss reads `vpred`, the critic's prediction during the update",
                Label::new(file, span, "read here"),
            )
            .with_note("`vpred` is differentiated only through `critic.loss`; the policy's terms (reward, credit, objective, divergence, entropy) read `values`, the critic's prediction at rollout time")
            .with_help("read `values` here, or move the term into `critic { loss = ... }`"),
        );
        return Err(fail(lw));
    }
    if merged
        .section("critic")
        .and_then(|s| s.entry("loss"))
        .is_some()
        && have.has("vpred")
    {
        let Ok(v) = lw.entry("critic", "loss") else {
            return Err(fail(lw));
        };
        let cmode = match checked.value("critic", "reduce").map(|v| &v.info.ty) {
            Some(builtins::Ty::Sym(s)) => s.clone(),
            _ => "token_mean".to_string(),
        };
        let value_loss = lw.aggregate(v, &cmode, None, None);
        let vpred = lw.input("vpred");
        let d = match autodiff::gradients(&mut lw.b, value_loss, &[vpred]) {
            Ok(g) => g.first().copied().flatten(),
            Err(op) => {
                lw.errors.push(
                    Diagnostic::error(
                        codes::NOT_DIFFERENTIABLE,
                        format!("the gradient of the critic's loss would flow through {op}, which has no derivative"),
                        Label::new(merged.file, merged.name_span, "in this recipe's critic loss"),
                    )
                    .with_help("wrap the argument in `stopgrad(...)`"),
                );
                return Err(fail(lw));
            }
        };
        let d_vpred = match d {
            Some(g) => lw.b.binary(Bin::Mul, g, mask),
            None => lw.b.broadcast(zero, Level::Token),
        };
        outputs.push(("value_loss".to_string(), value_loss));
        outputs.push(("d_vpred".to_string(), d_vpred));
    }
    // Metrics.
    let mut skipped = Vec::new();
    if let Some(mon) = merged.section("monitor") {
        for e in &mon.entries {
            if e.is_let {
                continue;
            }
            let before = lw.errors.len();
            match lw.entry("monitor", &e.name) {
                Ok(id) => {
                    let id = lw.b.float(id);
                    outputs.push((format!("metric.{}", e.name), id));
                }
                Err(()) => {
                    lw.errors.truncate(before);
                    skipped.push(e.name.clone());
                }
            }
        }
    }
    if !lw.errors.is_empty() {
        return Err(lw.errors);
    }
    let mut graph = lw.b.graph;
    graph.outputs = outputs;
    // Metrics that read inputs the batch lacks are dropped, not errors.
    let mut kept = Vec::new();
    for (name, id) in std::mem::take(&mut graph.outputs) {
        if let Some(m) = name.strip_prefix("metric.") {
            let missing = inputs_of(&graph, id)
                .into_iter()
                .any(|i| !have.has(&i) && !derivable(&i, have));
            if missing {
                skipped.push(m.to_string());
                continue;
            }
        }
        kept.push((name, id));
    }
    graph.outputs = kept;
    Ok(Program0 {
        graph,
        terms,
        skipped_metrics: skipped,
    })
}

/// Inputs the loader can make up when the batch lacks them.
pub fn derivable(name: &str, have: &dyn Available) -> bool {
    match name {
        "position" | "length" | "vocab_index" | "index" | "step" | "epoch" | "progress"
        | "total_steps" => true,
        "logp" => have.has("logits") && have.has("tokens"),
        "entropy" | "mean_logp" => have.has("logits"),
        _ => false,
    }
}

/// The inputs a node transitively reads.
pub fn inputs_of(g: &Graph, id: NodeId) -> Vec<String> {
    let mut seen = vec![false; g.nodes.len()];
    let mut stack = vec![id];
    let mut out = Vec::new();
    while let Some(i) = stack.pop() {
        if seen[i] {
            continue;
        }
        seen[i] = true;
        if let Op::Input(n) = &g.nodes[i].op {
            out.push(n.clone());
        }
        stack.extend(g.nodes[i].args.iter().copied());
    }
    out.sort();
    out.dedup();
    out
}

/// The host part of a recipe: its step-level values (schedules, state
/// updates, guard conditions) and, when it is elementwise over samples, its
/// reward. Batch reductions the host reads stay device nodes; host code
/// receives their values.
pub struct HostGraph {
    pub graph: Graph,
    /// `curriculum.stage`, `rollout.max_turns`, `optimizer.lr`, `state.NAME`
    /// (the next value from `update`), `guard.K`.
    pub scalars: Vec<(String, NodeId)>,
    /// The reward per sample, when the recipe defines one.
    pub reward: Option<NodeId>,
}

/// `optimizer.lr` with the recipe's `warmup` and `schedule` applied, when
/// it sets either: at step k (counted from 1) of T, the written `lr` (a
/// number or a schedule of `step`) times `min(1, k / warmup)` and, after the
/// warm-up, a decay over p = clamp((k − warmup) / (T − warmup), 0, 1):
/// 1 (`constant`), 1 − p (`linear`), (1 + cos πp) / 2 (`cosine`). These
/// are the schedules of verl's `get_cosine_schedule_with_warmup` with
/// `zero_indexed_step=False` (steps counted from 1, as Keel's `step` is).
fn scheduled_lr(
    lw: &mut Lowering,
    merged: &Merged,
    checked: &CheckedRecipe,
    scalars: &mut Vec<(String, NodeId)>,
) {
    let Some(opt) = merged.section("optimizer") else {
        return;
    };
    let decay = match checked.setting("optimizer", "schedule") {
        Some(Setting::Sym(s)) => s,
        _ => "constant".to_string(),
    };
    let warmup = opt
        .entry("warmup")
        .and_then(|_| lw.entry("optimizer", "warmup").ok());
    if warmup.is_none() && decay == "constant" {
        return;
    }
    let lr = match scalars.iter().position(|(n, _)| n == "optimizer.lr") {
        Some(i) => scalars.remove(i).1,
        // No `lr` entry: the schema's default.
        None => match checked.setting("optimizer", "lr") {
            Some(Setting::Num(x)) => lw.b.c(x),
            _ => lw.b.c(f64::NAN),
        },
    };
    let step = lw.input("step");
    let total = lw.input("total_steps");
    let b = &mut lw.b;
    let one = b.c(1.0);
    let w = warmup.unwrap_or_else(|| b.c(0.0));
    let mut factor = one;
    if warmup.is_some() {
        // min(1, k / max(w, 1)): 1 throughout when w is 0.
        let w1 = b.binary(Bin::Max, w, one);
        let ramp = b.binary(Bin::Div, step, w1);
        factor = b.binary(Bin::Min, one, ramp);
    }
    if decay != "constant" {
        let zero = b.c(0.0);
        let done = b.binary(Bin::Sub, step, w);
        let span = b.binary(Bin::Sub, total, w);
        let span = b.binary(Bin::Max, span, one);
        let p = b.binary(Bin::Div, done, span);
        let p = b.binary(Bin::Max, p, zero);
        let p = b.binary(Bin::Min, p, one);
        let d = if decay == "linear" {
            b.binary(Bin::Sub, one, p)
        } else {
            let pi = b.c(std::f64::consts::PI);
            let angle = b.binary(Bin::Mul, pi, p);
            let cos = b.unary(Un::Cos, angle);
            let half = b.c(0.5);
            let up = b.binary(Bin::Add, one, cos);
            b.binary(Bin::Mul, half, up)
        };
        factor = b.binary(Bin::Mul, factor, d);
    }
    let lr = b.binary(Bin::Mul, lr, factor);
    scalars.push(("optimizer.lr".into(), lr));
}

pub fn host_graph(
    prog: &Program,
    merged: &Merged,
    checked: &CheckedRecipe,
) -> Result<HostGraph, Vec<Diagnostic>> {
    let have = |n: &str| !matches!(n, "logits" | "teacher_logits" | "old_logits" | "advantages");
    let mut lw = Lowering::new(prog, merged, checked, &have);
    let mut scalars = Vec::new();
    for sec in ["curriculum", "rollout", "optimizer"] {
        let Some(s) = merged.section(sec) else {
            continue;
        };
        for e in s.entries.iter().filter(|e| !e.is_let) {
            if let Some(v) = checked.value(sec, &e.name)
                && matches!(
                    v.info.ty,
                    builtins::Ty::Sym(_) | builtins::Ty::Str | builtins::Ty::List(_)
                )
            {
                continue;
            }
            if let Ok(id) = lw.entry(sec, &e.name) {
                scalars.push((format!("{sec}.{}", e.name), id));
            }
        }
    }
    scheduled_lr(&mut lw, merged, checked, &mut scalars);
    if let Some(u) = merged.section("update") {
        for e in u.entries.iter().filter(|e| !e.is_let) {
            if let Ok(id) = lw.entry("update", &e.name) {
                scalars.push((format!("state.{}", e.name), id));
            }
        }
    }
    for (k, g) in merged.guards.iter().enumerate() {
        let ctx = Ctx {
            file: g.file,
            section: "guard",
            env: None,
        };
        if let Ok(id) = lw.expr(&ctx, &g.guard.cond) {
            let name = g
                .guard
                .name
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_else(|| k.to_string());
            scalars.push((format!("guard.{name}"), id));
        }
    }
    let reward = match merged.section("reward").and_then(|s| s.entry("value")) {
        Some(_) => lw.entry("reward", "value").ok(),
        None => None,
    };
    if !lw.errors.is_empty() {
        return Err(lw.errors);
    }
    let mut graph = lw.b.graph;
    graph.outputs = scalars.clone();
    if let Some(r) = reward {
        graph.outputs.push(("reward".into(), r));
    }
    Ok(HostGraph {
        graph,
        scalars,
        reward,
    })
}

/// Host scalar `name` (`optimizer.lr`) at each step 1..=`total`, by the
/// reference interpreter, when it is a schedule: it reads nothing but the
/// step (`step`, `total_steps`, `progress`, `epoch`) and constants. `Err`
/// says what else it reads (a state variable, a batch statistic).
pub fn schedule_values(h: &HostGraph, name: &str, total: u64) -> Result<Vec<f64>, String> {
    let Some(&(_, id)) = h.scalars.iter().find(|(n, _)| n == name) else {
        return Err(format!("the recipe has no `{name}`"));
    };
    let g = &h.graph;
    let live = g.live_from([id]);
    for node in g
        .nodes
        .iter()
        .zip(&live)
        .filter(|(_, l)| **l)
        .map(|(n, _)| n)
    {
        let other = match &node.op {
            Op::Input(n)
                if !matches!(n.as_str(), "step" | "total_steps" | "progress" | "epoch") =>
            {
                Some(format!("`{n}`"))
            }
            Op::Param { name: p, .. } if p.starts_with("state.") => Some(format!("`{p}`")),
            _ if node.level != Level::Step => Some("a batch value".to_string()),
            _ => None,
        };
        if let Some(what) = other {
            return Err(format!("`{name}` reads {what}, not only the step"));
        }
    }
    let mut graph = g.clone();
    graph.outputs = vec![(name.to_string(), id)];
    let shape = crate::interp::Shape {
        b: 0,
        t: 0,
        v: 0,
        group_of: Vec::new(),
        n_groups: 0,
    };
    (1..=total)
        .map(|k| {
            let t = total.max(1) as f64;
            let inputs: HashMap<String, Vec<f64>> = [
                ("step", k as f64),
                ("total_steps", total as f64),
                ("progress", (k as f64 / t).min(1.0)),
                ("epoch", 0.0),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), vec![v]))
            .collect();
            let env = crate::interp::Env {
                shape: shape.clone(),
                mask: &[],
                inputs: &inputs,
            };
            let vals = crate::interp::run(&graph, &env).map_err(|e| e.0)?;
            vals.get(id)
                .and_then(|v| v.first())
                .copied()
                .ok_or_else(|| format!("`{name}` has no value at step {k}"))
        })
        .collect()
}
