//! The checker: names, types and levels of a merged recipe.
//!
//! Each section entry is checked once, on demand (so entries may refer to
//! each other in any order), with cycle detection. The checker computes for
//! every value its type, its level and, when it is known before training,
//! its constant value, which the hyperparameter range checks use.
//!
//! Name lookup inside a section `S`, first match wins:
//! 1. parameters (inside a function body: only these, inputs and functions);
//! 2. lets and keys of `S` (an entry never sees itself, so
//!    `entropy = mean(entropy) over batch` reads the input);
//! 3. `state` variables;
//! 4. the value of section `reward` or `credit`, by the section's name;
//! 5. built-in inputs (`logp`, `reward`, …);
//! 6. a key of another section, when exactly one section has it (`eps_low`).

use crate::builtins::{self, FnKind, KeyTy, Level, Range, Ret, Ty};
use crate::codes::{self, Code};
use crate::diagnostic::{Diagnostic, Label, suggest};
use crate::resolve::{Entry, Merged, Program, Target};
use crate::source::FileId;
use keel_grammar::{Arg, AssignOp, BinOp, Expr, ExprKind, Guard, Span, Stmt, UnOp};
use std::collections::{BTreeMap, HashMap, HashSet};

/// What the checker knows of one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub ty: Ty,
    pub level: Level,
    /// The value, when it is known before training (bools as 1/0).
    pub constant: Option<f64>,
}

impl Info {
    fn unknown() -> Info {
        Info {
            ty: Ty::Unknown,
            level: Level::Step,
            constant: None,
        }
    }
    fn new(ty: Ty, level: Level) -> Info {
        Info {
            ty,
            level,
            constant: None,
        }
    }
}

/// What a name (or `section.key`, or a call) in the source refers to; the
/// lowering to IR follows these, so it never re-implements name lookup.
#[derive(Clone, Debug, PartialEq)]
pub enum Res {
    FnParam(String),
    Entry(String, String),
    State(String),
    Input(String),
    /// A schema key the recipe does not set, with its default.
    Default {
        section: String,
        key: String,
        value: f64,
    },
    UserFn {
        module: usize,
        index: usize,
    },
}

/// Keyed by file and the span of the name, field access or call.
pub type Resolutions = HashMap<(FileId, usize, usize), Res>;

/// A checked section entry.
#[derive(Clone, Debug)]
pub struct Value {
    pub section: String,
    pub name: String,
    pub is_let: bool,
    pub info: Info,
    pub file: FileId,
    pub name_span: Span,
    pub defined_in: String,
    /// The decoded text, when the entry is a string literal.
    pub text: Option<String>,
    /// The numbers, when the entry is a list literal of numbers
    /// (`rollout.budgets = [512, 1024]`).
    pub list: Option<Vec<f64>>,
}

/// How a guard changes a value: `=`, `+=`, `-=`, `*=`, `/=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardOp {
    Set,
    Add,
    Sub,
    Mul,
    Div,
}

impl GuardOp {
    fn of(op: AssignOp) -> GuardOp {
        match op {
            AssignOp::Set => GuardOp::Set,
            AssignOp::Add => GuardOp::Add,
            AssignOp::Sub => GuardOp::Sub,
            AssignOp::Mul => GuardOp::Mul,
            AssignOp::Div => GuardOp::Div,
        }
    }

    /// The new value of `cur` after `cur op= v`.
    pub fn apply(self, cur: f64, v: f64) -> f64 {
        match self {
            GuardOp::Set => v,
            GuardOp::Add => cur + v,
            GuardOp::Sub => cur - v,
            GuardOp::Mul => cur * v,
            GuardOp::Div => cur / v,
        }
    }

    /// The operator as written (`*=`).
    pub fn text(self) -> &'static str {
        match self {
            GuardOp::Set => "=",
            GuardOp::Add => "+=",
            GuardOp::Sub => "-=",
            GuardOp::Mul => "*=",
            GuardOp::Div => "/=",
        }
    }
}

/// One action of a guard, as the checker resolved it.
#[derive(Clone, Debug, PartialEq)]
pub enum GuardAction {
    /// `warn` with its message (the literal decoded, or a default).
    Warn(String),
    Stop,
    Skip,
    /// `rollback N`: N checkpoints' worth of steps.
    Rollback(u64),
    /// `target op= value`: `target` is the resolved `section.key`
    /// (`state.x` for a state variable, `optimizer.lr` for `lr`), `value`
    /// the constant-folded right-hand side.
    Assign {
        target: String,
        op: GuardOp,
        value: f64,
    },
}

/// A guard of a recipe, resolved: what the runtime executes (it never reads
/// the guard's syntax). A guard with an error in any action is left out.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedGuard {
    /// The guard's name, or its index among the recipe's guards; the host
    /// program computes its condition as `guard.NAME`.
    pub name: String,
    /// Consecutive steps the condition must hold (`for N steps`; 1 if none).
    pub window: u64,
    pub actions: Vec<GuardAction>,
    pub file: FileId,
    pub span: Span,
}

/// The result of checking one recipe.
#[derive(Clone, Debug)]
pub struct CheckedRecipe {
    pub name: String,
    pub file: FileId,
    pub name_span: Span,
    pub bases: Vec<String>,
    /// Built-in inputs the recipe reads, with the first place that reads each.
    pub inputs: BTreeMap<String, (FileId, Span)>,
    pub values: Vec<Value>,
    pub resolutions: Resolutions,
    /// The first `over group`, if the recipe uses group statistics.
    pub group_use: Option<(FileId, Span)>,
    /// The type and level of every expression of the recipe's own text,
    /// keyed like [`Resolutions`] (for hover).
    pub types: HashMap<(FileId, usize, usize), Info>,
    /// The recipe's guards, resolved, in definition order.
    pub guards: Vec<CheckedGuard>,
}

/// The sections of model roles besides the policy: a guard names their
/// keys in full (`critic.lr`), never by the bare key (`lr` is the
/// optimizer's).
const ROLE_SECTIONS: &[&str] = &["critic", "teacher"];

/// A number written as a literal (`512`, `-0.5`, `(2)`).
fn literal_number(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Number { value, .. } => Some(*value),
        ExprKind::Paren(x) => literal_number(x),
        ExprKind::Unary(UnOp::Neg, x) => literal_number(x).map(|v| -v),
        _ => None,
    }
}

/// A constant setting of a recipe ([`CheckedRecipe::setting`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    /// A list literal of numbers.
    List(Vec<f64>),
    Num(f64),
    /// An option name (`arithmetic`, `adamw`).
    Sym(String),
    Str(String),
}

impl CheckedRecipe {
    pub fn value(&self, section: &str, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|v| v.section == section && v.name == name)
    }

    /// The setting `section.key`: the recipe's value (a string literal's
    /// text, an option name, or a constant; `None` for a value that changes
    /// during the run), else the schema's default — the one place defaults
    /// are read (`true`/`false` as 1/0).
    pub fn setting(&self, section: &str, key: &str) -> Option<Setting> {
        if let Some(v) = self.value(section, key) {
            if let Some(t) = &v.text {
                return Some(Setting::Str(t.clone()));
            }
            if let Some(l) = &v.list {
                return Some(Setting::List(l.clone()));
            }
            return match (&v.info.ty, v.info.constant) {
                (_, Some(c)) => Some(Setting::Num(c)),
                (Ty::Sym(s), None) => Some(Setting::Sym(s.clone())),
                _ => None,
            };
        }
        let d = builtins::section(section)?.key(key)?.default?;
        Some(match d.parse::<f64>() {
            Ok(x) => Setting::Num(x),
            Err(_) if d == "true" => Setting::Num(1.0),
            Err(_) if d == "false" => Setting::Num(0.0),
            Err(_) => Setting::Sym(d.trim_matches('"').to_string()),
        })
    }
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    file: FileId,
    section: &'a str,
    module: usize,
    /// Inside a function body: its parameters.
    params: Option<&'a HashMap<String, Info>>,
    /// The entry being defined, which its own expression cannot see.
    me: Option<&'a str>,
}

pub(crate) struct Checker<'p> {
    prog: &'p Program,
    recipe: &'p Merged,
    pub diags: Vec<Diagnostic>,
    memo: HashMap<(String, String), Info>,
    in_progress: Vec<(String, String)>,
    inputs: BTreeMap<String, (FileId, Span)>,
    used: HashSet<(String, String)>,
    group_use: Option<(FileId, Span)>,
    fn_stack: Vec<(usize, usize)>,
    res: Resolutions,
    types: HashMap<(FileId, usize, usize), Info>,
    guards: Vec<CheckedGuard>,
    /// Errors about a missing value (index into `diags`, the section and
    /// key it names): `blame::removals` moves those an inherited entry
    /// raises to the removal that caused them.
    unresolved: Vec<(usize, String, Option<String>)>,
}

impl<'p> Checker<'p> {
    pub(crate) fn new(prog: &'p Program, recipe: &'p Merged) -> Checker<'p> {
        Checker {
            prog,
            recipe,
            diags: Vec::new(),
            memo: HashMap::new(),
            in_progress: Vec::new(),
            inputs: BTreeMap::new(),
            used: HashSet::new(),
            group_use: None,
            fn_stack: Vec::new(),
            res: HashMap::new(),
            types: HashMap::new(),
            guards: Vec::new(),
            unresolved: Vec::new(),
        }
    }

    fn module_of(&self, file: FileId) -> usize {
        self.prog
            .modules
            .iter()
            .position(|m| m.file == file)
            .unwrap_or(0)
    }

    fn err(
        &mut self,
        code: Code,
        msg: impl Into<String>,
        file: FileId,
        span: Span,
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(code, msg, Label::new(file, span, label)));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    pub(crate) fn run(mut self) -> (CheckedRecipe, Vec<Diagnostic>) {
        let recipe = self.recipe;
        // Evaluate every entry (names, types, levels).
        for sec in &recipe.sections {
            for e in &sec.entries {
                self.eval_entry(&sec.name, &e.name);
            }
        }
        for sec in &recipe.sections {
            self.check_section(sec);
        }
        for (k, g) in recipe.guards.iter().enumerate() {
            if let Some(checked) = self.check_guard(g.file, &g.guard, k) {
                self.guards.push(checked);
            }
        }
        self.check_recipe_rules();
        crate::blame::removals(recipe, &mut self.diags, &self.unresolved);
        let mut values = Vec::new();
        for sec in &recipe.sections {
            for e in &sec.entries {
                let info = self
                    .memo
                    .get(&(sec.name.clone(), e.name.clone()))
                    .cloned()
                    .unwrap_or_else(Info::unknown);
                values.push(Value {
                    section: sec.name.clone(),
                    name: e.name.clone(),
                    is_let: e.is_let,
                    info,
                    file: e.file,
                    name_span: e.name_span,
                    defined_in: e.defined_in.clone(),
                    text: match &e.value.kind {
                        ExprKind::Str(s) => Some(keel_grammar::unquote(s)),
                        _ => None,
                    },
                    list: match &e.value.kind {
                        ExprKind::List(items) => items.iter().map(literal_number).collect(),
                        _ => None,
                    },
                });
            }
        }
        let checked = CheckedRecipe {
            name: recipe.name.clone(),
            file: recipe.file,
            name_span: recipe.name_span,
            bases: recipe.bases.clone(),
            inputs: self.inputs,
            values,
            resolutions: self.res,
            group_use: self.group_use,
            types: self.types,
            guards: self.guards,
        };
        (checked, self.diags)
    }

    fn entry(&self, section: &str, name: &str) -> Option<&'p Entry> {
        self.recipe.section(section)?.entry(name)
    }

    fn eval_entry(&mut self, section: &str, name: &str) -> Info {
        let key = (section.to_string(), name.to_string());
        if let Some(i) = self.memo.get(&key) {
            return i.clone();
        }
        let Some(entry) = self.entry(section, name) else {
            return Info::unknown();
        };
        if self.in_progress.contains(&key) {
            let cycle: Vec<String> = self
                .in_progress
                .iter()
                .skip_while(|k| **k != key)
                .map(|(s, n)| format!("{s}.{n}"))
                .collect();
            self.err(
                codes::CYCLIC_DEFINITION,
                format!("`{section}.{name}` depends on itself"),
                entry.file,
                entry.name_span,
                "defined in terms of itself",
            )
            .notes
            .push(format!(
                "the cycle: {} → {section}.{name}",
                cycle.join(" → ")
            ));
            if let Some(d) = self.diags.last_mut() {
                d.help =
                    Some("break the cycle: one of these values must not use the others".into());
            }
            self.memo.insert(key, Info::unknown());
            return Info::unknown();
        }
        self.in_progress.push(key.clone());
        let ctx = Ctx {
            file: entry.file,
            section,
            module: self.module_of(entry.file),
            params: None,
            me: Some(name),
        };
        let schema_key = builtins::section(section).and_then(|s| s.key(name));
        let info = match schema_key.map(|k| k.ty) {
            Some(KeyTy::Sym(options)) if !entry.is_let => {
                self.check_symbol(&ctx, &entry.value, section, name, options)
            }
            _ => self.check_expr(&ctx, &entry.value),
        };
        self.in_progress.pop();
        self.memo.insert(key, info.clone());
        info
    }

    fn check_symbol(
        &mut self,
        ctx: &Ctx,
        e: &Expr,
        section: &str,
        name: &str,
        options: &[&str],
    ) -> Info {
        if let ExprKind::Var(id) = &e.kind
            && options.contains(&id.name.as_str())
        {
            return Info::new(Ty::Sym(id.name.clone()), Level::Step);
        }
        let written = match &e.kind {
            ExprKind::Var(id) => id.name.clone(),
            _ => String::new(),
        };
        let list = options
            .iter()
            .map(|o| format!("`{o}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let help = match suggest(&written, options.iter().copied()) {
            Some(s) if !written.is_empty() => format!("did you mean `{s}`? the options are {list}"),
            _ => format!("write one of {list}"),
        };
        self.err(
            codes::BAD_SYMBOL,
            format!("`{section}.{name}` must be one of its options"),
            ctx.file,
            e.span,
            if written.is_empty() {
                "not an option name".to_string()
            } else {
                format!("`{written}` is not an option of `{section}.{name}`")
            },
        )
        .help = Some(help);
        Info::unknown()
    }

    // ----- expressions ---------------------------------------------------

    fn check_expr(&mut self, ctx: &Ctx, e: &Expr) -> Info {
        let info = self.check_expr_inner(ctx, e);
        // Function bodies are checked once per call; record only recipe text.
        if ctx.params.is_none() {
            self.types
                .insert((ctx.file, e.span.start, e.span.end), info.clone());
        }
        info
    }

    fn check_expr_inner(&mut self, ctx: &Ctx, e: &Expr) -> Info {
        match &e.kind {
            ExprKind::Number { value, is_int, .. } => Info {
                ty: if *is_int { Ty::Int } else { Ty::Num },
                level: Level::Step,
                constant: Some(*value),
            },
            ExprKind::Bool(b) => Info {
                ty: Ty::Bool,
                level: Level::Step,
                constant: Some(f64::from(u8::from(*b))),
            },
            ExprKind::Str(_) => Info::new(Ty::Str, Level::Step),
            ExprKind::None => {
                self.err(
                    codes::NONE_IN_EXPRESSION,
                    "`none` is not a value",
                    ctx.file,
                    e.span,
                    "used inside an expression",
                )
                .help = Some(
                    "`none` only removes an inherited definition: `divergence = none` or `clip.dual = none`".into(),
                );
                Info::unknown()
            }
            ExprKind::Error => Info::unknown(),
            ExprKind::Paren(x) => self.check_expr(ctx, x),
            ExprKind::Var(id) => self.lookup(ctx, &id.name, id.span),
            ExprKind::Field(base, field) => self.check_field(ctx, e.span, base, field),
            ExprKind::Index(base, idx) => {
                let b = self.check_expr(ctx, base);
                let i = self.check_expr(ctx, idx);
                if !i.ty.is_numeric() {
                    self.type_error(ctx, idx.span, "a list index must be a number", &i.ty);
                }
                let elem = match b.ty {
                    Ty::List(t) => *t,
                    Ty::Unknown => Ty::Unknown,
                    other => {
                        self.type_error(ctx, base.span, "only lists can be indexed", &other);
                        Ty::Unknown
                    }
                };
                Info::new(elem, b.level.join(i.level))
            }
            ExprKind::List(items) => {
                let mut ty = Ty::Unknown;
                let mut level = Level::Step;
                for it in items {
                    let i = self.check_expr(ctx, it);
                    level = level.join(i.level);
                    ty = match (&ty, &i.ty) {
                        (Ty::Unknown, t) => t.clone(),
                        (a, b) if a == b => a.clone(),
                        (Ty::Int, Ty::Num) | (Ty::Num, Ty::Int) => Ty::Num,
                        (a, b) => {
                            let a = a.clone();
                            self.err(
                                codes::TYPE_MISMATCH,
                                format!(
                                    "list elements must share a type; found {} and {}",
                                    a.name(),
                                    b.name()
                                ),
                                ctx.file,
                                it.span,
                                format!("this is a {}", b.name()),
                            )
                            .help = Some(
                                "make every element of the list the same kind of value".into(),
                            );
                            a
                        }
                    };
                }
                Info::new(Ty::List(Box::new(ty)), level)
            }
            ExprKind::Unary(op, x) => {
                let i = self.check_expr(ctx, x);
                match op {
                    UnOp::Neg => {
                        if !i.ty.is_numeric() {
                            self.type_error(ctx, x.span, "`-` needs a number", &i.ty);
                            return Info::unknown();
                        }
                        Info {
                            constant: i.constant.map(|c| -c),
                            ..i
                        }
                    }
                    UnOp::Not => {
                        if !i.ty.is_bool() {
                            self.type_error(ctx, x.span, "`not` needs a bool", &i.ty);
                            return Info::unknown();
                        }
                        Info {
                            ty: Ty::Bool,
                            level: i.level,
                            constant: i.constant.map(|c| f64::from(u8::from(c == 0.0))),
                        }
                    }
                }
            }
            ExprKind::Binary(op, a, b) => self.check_binary(ctx, *op, a, b),
            ExprKind::If(c, a, b) => {
                let ci = self.check_expr(ctx, c);
                if !ci.ty.is_bool() {
                    self.type_error(ctx, c.span, "the condition of `if` must be a bool", &ci.ty);
                }
                let ai = self.check_expr(ctx, a);
                let bi = self.check_expr(ctx, b);
                let ty = self.unify(ctx, &ai.ty, &bi.ty, b.span, "the branches of `if`");
                let constant = match ci.constant {
                    Some(c) if c != 0.0 => ai.constant,
                    Some(_) => bi.constant,
                    None => None,
                };
                Info {
                    ty,
                    level: ci.level.join(ai.level).join(bi.level),
                    constant,
                }
            }
            ExprKind::Call { func, args, over } => {
                self.check_call(ctx, e.span, func, args, over.as_ref())
            }
        }
    }

    fn type_error(&mut self, ctx: &Ctx, span: Span, what: &str, found: &Ty) {
        let help = match found {
            Ty::Bool => "turn a bool into a number with `float(b)` or `if b then 1 else 0`",
            Ty::Str => "strings are only for names and messages",
            Ty::List(_) => "pick one element with `list[i]`",
            _ => "compare numbers with `<`, `==`, … to get a bool",
        };
        self.err(
            codes::TYPE_MISMATCH,
            format!("{what}, but this is a {}", found.name()),
            ctx.file,
            span,
            found.name(),
        )
        .help = Some(help.into());
    }

    fn unify(&mut self, ctx: &Ctx, a: &Ty, b: &Ty, span: Span, what: &str) -> Ty {
        match (a, b) {
            (Ty::Unknown, t) | (t, Ty::Unknown) => t.clone(),
            (Ty::Int, Ty::Num) | (Ty::Num, Ty::Int) => Ty::Num,
            (x, y) if x == y => x.clone(),
            (x, y) => {
                self.err(
                    codes::TYPE_MISMATCH,
                    format!(
                        "{what} must have the same type; found {} and {}",
                        x.name(),
                        y.name()
                    ),
                    ctx.file,
                    span,
                    format!("this is a {}", y.name()),
                )
                .help = Some("make both sides the same kind of value".into());
                Ty::Unknown
            }
        }
    }

    fn check_binary(&mut self, ctx: &Ctx, op: BinOp, a: &Expr, b: &Expr) -> Info {
        let ai = self.check_expr(ctx, a);
        let bi = self.check_expr(ctx, b);
        let level = ai.level.join(bi.level);
        let both = ai.constant.zip(bi.constant);
        if op.is_logical() {
            for (i, x) in [(&ai, a), (&bi, b)] {
                if !i.ty.is_bool() {
                    self.type_error(ctx, x.span, &format!("`{}` needs bools", op.text()), &i.ty);
                }
            }
            let constant = both.map(|(x, y)| {
                let r = match op {
                    BinOp::And => x != 0.0 && y != 0.0,
                    _ => x != 0.0 || y != 0.0,
                };
                f64::from(u8::from(r))
            });
            return Info {
                ty: Ty::Bool,
                level,
                constant,
            };
        }
        if op.is_comparison() {
            let eq = matches!(op, BinOp::Eq | BinOp::Ne);
            let ok = (ai.ty.is_numeric() && bi.ty.is_numeric())
                || (eq && (ai.ty == bi.ty || ai.ty == Ty::Unknown || bi.ty == Ty::Unknown));
            if !ok {
                let bad = if ai.ty.is_numeric() {
                    (&bi, b)
                } else {
                    (&ai, a)
                };
                self.type_error(
                    ctx,
                    bad.1.span,
                    &format!("`{}` compares numbers", op.text()),
                    &bad.0.ty,
                );
            }
            let constant = both.map(|(x, y)| {
                let r = match op {
                    BinOp::Eq => x == y,
                    BinOp::Ne => x != y,
                    BinOp::Lt => x < y,
                    BinOp::Le => x <= y,
                    BinOp::Gt => x > y,
                    _ => x >= y,
                };
                f64::from(u8::from(r))
            });
            return Info {
                ty: Ty::Bool,
                level,
                constant,
            };
        }
        for (i, x) in [(&ai, a), (&bi, b)] {
            if !i.ty.is_numeric() {
                self.type_error(
                    ctx,
                    x.span,
                    &format!("`{}` needs numbers", op.text()),
                    &i.ty,
                );
                return Info::new(Ty::Unknown, level);
            }
        }
        let ty = if ai.ty == Ty::Int
            && bi.ty == Ty::Int
            && matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul)
        {
            Ty::Int
        } else if ai.ty == Ty::Unknown || bi.ty == Ty::Unknown {
            Ty::Unknown
        } else {
            Ty::Num
        };
        let constant = both.map(|(x, y)| match op {
            BinOp::Add => x + y,
            BinOp::Sub => x - y,
            BinOp::Mul => x * y,
            BinOp::Div => x / y,
            _ => x.powf(y),
        });
        Info {
            ty,
            level,
            constant,
        }
    }

    fn note_input(&mut self, name: &str, file: FileId, span: Span) {
        self.inputs.entry(name.to_string()).or_insert((file, span));
    }

    fn resolve(&mut self, ctx: &Ctx, span: Span, r: Res) {
        self.res.insert((ctx.file, span.start, span.end), r);
    }

    fn lookup(&mut self, ctx: &Ctx, name: &str, span: Span) -> Info {
        if let Some(params) = ctx.params {
            if let Some(i) = params.get(name) {
                let i = i.clone();
                self.resolve(ctx, span, Res::FnParam(name.to_string()));
                return i;
            }
            if let Some(inp) = builtins::input(name) {
                self.note_input(name, ctx.file, span);
                self.resolve(ctx, span, Res::Input(name.to_string()));
                return Info::new(inp.ty.ty(), inp.level);
            }
            let candidates: Vec<&str> = params
                .keys()
                .map(|s| s.as_str())
                .chain(builtins::INPUTS.iter().map(|i| i.name))
                .collect();
            let d = self.unknown_name(ctx, name, span, candidates);
            d.notes
                .push("a function body sees only its parameters and the built-in inputs".into());
            if d.help
                .as_deref()
                .is_some_and(|h| h.starts_with("define it"))
            {
                d.help = Some(format!("pass `{name}` to the function as a parameter"));
            }
            return Info::unknown();
        }
        // 2. the current section
        if ctx.me != Some(name)
            && let Some(e) = self.entry(ctx.section, name)
        {
            self.used
                .insert((ctx.section.to_string(), name.to_string()));
            let _ = e;
            self.resolve(
                ctx,
                span,
                Res::Entry(ctx.section.to_string(), name.to_string()),
            );
            return self.eval_entry(ctx.section, name);
        }
        // 3. state variables
        if ctx.section != "state" && self.entry("state", name).is_some() {
            let mut i = self.eval_entry("state", name);
            i.constant = None; // state changes during training
            self.resolve(ctx, span, Res::State(name.to_string()));
            return i;
        }
        // 4. the value of `reward` or `credit` by the section's name
        if name != ctx.section
            && matches!(name, "reward" | "credit")
            && let Some(p) = builtins::section(name).and_then(|s| s.principal)
            && self.entry(name, p).is_some()
        {
            self.resolve(ctx, span, Res::Entry(name.to_string(), p.to_string()));
            return self.eval_entry(name, p);
        }
        // 5. built-in inputs
        if let Some(inp) = builtins::input(name) {
            self.note_input(name, ctx.file, span);
            self.resolve(ctx, span, Res::Input(name.to_string()));
            return Info::new(inp.ty.ty(), inp.level);
        }
        // 6. a key of exactly one other section
        let owners: Vec<&str> = self
            .recipe
            .sections
            .iter()
            .filter(|s| s.name != ctx.section && !matches!(s.name.as_str(), "update" | "monitor"))
            .filter(|s| s.entries.iter().any(|e| e.name == name && !e.is_let))
            .map(|s| s.name.as_str())
            .collect();
        match owners.as_slice() {
            [one] => {
                let one = one.to_string();
                self.resolve(ctx, span, Res::Entry(one.clone(), name.to_string()));
                return self.eval_entry(&one, name);
            }
            [] => {}
            many => {
                let list = many
                    .iter()
                    .map(|s| format!("`{s}.{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.err(
                    codes::UNKNOWN_NAME,
                    format!("`{name}` is ambiguous"),
                    ctx.file,
                    span,
                    "defined in several sections",
                )
                .help = Some(format!("write one of {list}"));
                return Info::unknown();
            }
        }
        if let Some(p) = builtins::section(name)
            && name != ctx.section
        {
            let help = match p.principal {
                Some(k) => format!(
                    "section `{name}` has no value here; define `{name} = ...` or `{name}.{k}`"
                ),
                None => format!("section `{name}` is a group of keys; write `{name}.KEY`"),
            };
            self.err(
                codes::UNKNOWN_NAME,
                format!("`{name}` has no value in this recipe"),
                ctx.file,
                span,
                "section used as a value",
            )
            .help = Some(help);
            self.unresolved
                .push((self.diags.len() - 1, name.to_string(), None));
            return Info::unknown();
        }
        let mut candidates: Vec<String> = Vec::new();
        if let Some(sec) = self.recipe.section(ctx.section) {
            candidates.extend(sec.entries.iter().map(|e| e.name.clone()));
        }
        if let Some(sec) = self.recipe.section("state") {
            candidates.extend(sec.entries.iter().map(|e| e.name.clone()));
        }
        for s in &self.recipe.sections {
            candidates.push(s.name.clone());
            candidates.extend(
                s.entries
                    .iter()
                    .filter(|e| !e.is_let)
                    .map(|e| e.name.clone()),
            );
        }
        candidates.extend(builtins::INPUTS.iter().map(|i| i.name.to_string()));
        let cands: Vec<&str> = candidates.iter().map(|s| s.as_str()).collect();
        self.unknown_name(ctx, name, span, cands);
        Info::unknown()
    }

    fn unknown_name(
        &mut self,
        ctx: &Ctx,
        name: &str,
        span: Span,
        candidates: Vec<&str>,
    ) -> &mut Diagnostic {
        let help = if builtins::builtin(name).is_some() {
            format!("`{name}` is a function; call it: `{name}(...)`")
        } else {
            match suggest(name, candidates) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "define it with `let`, as a key of a section, or in `state`".to_string(),
            }
        };
        let d = self.err(
            codes::UNKNOWN_NAME,
            format!("cannot find `{name}`"),
            ctx.file,
            span,
            "not defined",
        );
        d.help = Some(help);
        d
    }

    fn check_field(
        &mut self,
        ctx: &Ctx,
        span: Span,
        base: &Expr,
        field: &keel_grammar::Ident,
    ) -> Info {
        let sec_name = match &base.kind {
            ExprKind::Var(id)
                if builtins::section(&id.name).is_some()
                    || self.recipe.section(&id.name).is_some() =>
            {
                id.name.clone()
            }
            _ => {
                let b = self.check_expr(ctx, base);
                if b.ty != Ty::Unknown {
                    self.err(
                        codes::UNKNOWN_FIELD,
                        format!("a {} has no fields", b.ty.name()),
                        ctx.file,
                        field.span,
                        "field access on a value",
                    )
                    .help = Some("only sections have fields, as in `clip.eps_high`".into());
                }
                return Info::unknown();
            }
        };
        if let Some(e) = self.entry(&sec_name, &field.name) {
            if e.is_let {
                self.err(
                    codes::UNKNOWN_FIELD,
                    format!("`{}` is a `let` of `{sec_name}`, private to it", field.name),
                    ctx.file,
                    field.span,
                    "not visible outside its section",
                )
                .help = Some(format!(
                    "make it a key: write `{} = ...` instead of `let {} = ...`",
                    field.name, field.name
                ));
                return Info::unknown();
            }
            let mut i = self.eval_entry(&sec_name, &field.name);
            if sec_name == "state" {
                i.constant = None;
                self.resolve(ctx, span, Res::State(field.name.clone()));
            } else {
                self.resolve(ctx, span, Res::Entry(sec_name.clone(), field.name.clone()));
            }
            return i;
        }
        let schema = builtins::section(&sec_name);
        if let Some(k) = schema.and_then(|s| s.key(&field.name))
            && let Some(d) = k.default
        {
            let ty = match k.ty {
                KeyTy::Int => Ty::Int,
                KeyTy::Bool => Ty::Bool,
                KeyTy::Sym(_) => Ty::Sym(d.to_string()),
                KeyTy::Str => Ty::Str,
                _ => Ty::Num,
            };
            let constant = keel_grammar::number_value(d);
            if !constant.is_nan() {
                self.resolve(
                    ctx,
                    span,
                    Res::Default {
                        section: sec_name.clone(),
                        key: field.name.clone(),
                        value: constant,
                    },
                );
            }
            return Info {
                ty,
                level: Level::Step,
                constant: (!constant.is_nan()).then_some(constant),
            };
        }
        let mut names: Vec<&str> = self
            .recipe
            .section(&sec_name)
            .map(|s| {
                s.entries
                    .iter()
                    .filter(|e| !e.is_let)
                    .map(|e| e.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(s) = schema {
            names.extend(s.keys.iter().map(|k| k.name));
        }
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(*n));
        let help = match suggest(&field.name, names.iter().copied()) {
            Some(s) => format!("did you mean `{sec_name}.{s}`?"),
            None if names.is_empty() => format!("section `{sec_name}` defines no keys here"),
            None => format!("`{sec_name}` has: {}", names.join(", ")),
        };
        self.err(
            codes::UNKNOWN_FIELD,
            format!("section `{sec_name}` has no key `{}`", field.name),
            ctx.file,
            field.span,
            "unknown key",
        )
        .help = Some(help);
        self.unresolved.push((
            self.diags.len() - 1,
            sec_name.to_string(),
            Some(field.name.clone()),
        ));
        Info::unknown()
    }

    fn over_level(&mut self, ctx: &Ctx, over: &keel_grammar::Ident) -> Option<Level> {
        match Level::from_over(&over.name) {
            Some(l) => {
                if l == Level::Group {
                    self.group_use.get_or_insert((ctx.file, over.span));
                }
                Some(l)
            }
            None => {
                let help = match suggest(&over.name, Level::OVER_NAMES.iter().copied()) {
                    Some(s) => format!("did you mean `over {s}`?"),
                    None => "reduce `over` one of: token (or vocab), seq, group, batch".into(),
                };
                self.err(
                    codes::UNKNOWN_LEVEL,
                    format!("`{}` is not a level", over.name),
                    ctx.file,
                    over.span,
                    "unknown level",
                )
                .help = Some(help);
                None
            }
        }
    }

    fn check_call(
        &mut self,
        ctx: &Ctx,
        span: Span,
        func: &keel_grammar::Ident,
        args: &[Arg],
        over: Option<&keel_grammar::Ident>,
    ) -> Info {
        if func.name == "search" {
            return self.check_search(ctx, span, func, args, over);
        }
        if let Some(b) = builtins::builtin(&func.name) {
            return self.check_builtin(ctx, span, b, func, args, over);
        }
        let target = self
            .prog
            .modules
            .get(ctx.module)
            .and_then(|m| m.scope.get(&func.name))
            .copied();
        if let Some(Target::Fn { module, index }) = target {
            self.resolve(ctx, span, Res::UserFn { module, index });
            return self.check_user_call(ctx, span, module, index, func, args, over);
        }
        for a in args {
            self.check_expr(ctx, &a.value);
        }
        let mut names: Vec<String> = builtins::BUILTINS
            .iter()
            .map(|b| b.name.to_string())
            .collect();
        if let Some(m) = self.prog.modules.get(ctx.module) {
            names.extend(
                m.scope
                    .iter()
                    .filter(|(_, t)| matches!(t, Target::Fn { .. }))
                    .map(|(n, _)| n.clone()),
            );
        }
        let home = crate::stdlib::FILES
            .iter()
            .find(|(_, text)| text.contains(&format!("fn {}(", func.name)));
        let help =
            if builtins::input(&func.name).is_some() || builtins::section(&func.name).is_some() {
                format!("`{}` is a value, not a function", func.name)
            } else if let Some((module, _)) = home {
                format!(
                    "`{}` is defined in `std/{module}`: add `import std/{module}`",
                    func.name
                )
            } else {
                match suggest(&func.name, names.iter().map(|s| s.as_str())) {
                Some(s) => format!("did you mean `{s}`?"),
                None => {
                    "define it with `fn NAME(params) = expr`, or import the module that defines it"
                        .into()
                }
            }
            };
        self.err(
            codes::UNKNOWN_FUNCTION,
            format!("cannot find function `{}`", func.name),
            ctx.file,
            func.span,
            "not a built-in or defined function",
        )
        .help = Some(help);
        Info::unknown()
    }

    /// Match call arguments to parameter names. Returns, per parameter, the
    /// argument expression (if given).
    fn bind_args<'e>(
        &mut self,
        ctx: &Ctx,
        func: &keel_grammar::Ident,
        params: &[(String, bool)],
        args: &'e [Arg],
    ) -> Option<Vec<Option<&'e Expr>>> {
        let mut bound: Vec<Option<&Expr>> = vec![None; params.len()];
        let mut ok = true;
        let sig = params
            .iter()
            .map(|(n, opt)| if *opt { format!("{n}?") } else { n.clone() })
            .collect::<Vec<_>>()
            .join(", ");
        let mut positional = 0;
        for a in args {
            match &a.name {
                None => {
                    if positional >= params.len() {
                        self.err(
                            codes::BAD_ARGUMENTS,
                            format!(
                                "`{}` takes {} argument(s), but more were given",
                                func.name,
                                params.len()
                            ),
                            ctx.file,
                            a.value.span,
                            "extra argument",
                        )
                        .help = Some(format!("the signature is `{}({sig})`", func.name));
                        ok = false;
                    } else {
                        bound[positional] = Some(&a.value);
                    }
                    positional += 1;
                }
                Some(n) => match params.iter().position(|(p, _)| *p == n.name) {
                    Some(i) if bound[i].is_some() => {
                        self.err(
                            codes::BAD_ARGUMENTS,
                            format!("argument `{}` is given twice", n.name),
                            ctx.file,
                            n.span,
                            "given again here",
                        )
                        .help = Some(format!("the signature is `{}({sig})`", func.name));
                        ok = false;
                    }
                    Some(i) => bound[i] = Some(&a.value),
                    None => {
                        let help = match suggest(&n.name, params.iter().map(|(p, _)| p.as_str())) {
                            Some(s) => format!(
                                "did you mean `{s}`? the signature is `{}({sig})`",
                                func.name
                            ),
                            None => format!("the signature is `{}({sig})`", func.name),
                        };
                        self.err(
                            codes::BAD_ARGUMENTS,
                            format!("`{}` has no parameter `{}`", func.name, n.name),
                            ctx.file,
                            n.span,
                            "unknown parameter",
                        )
                        .help = Some(help);
                        ok = false;
                    }
                },
            }
        }
        for (i, (p, optional)) in params.iter().enumerate() {
            if bound[i].is_none() && !optional {
                self.err(
                    codes::BAD_ARGUMENTS,
                    format!("`{}` is missing its argument `{p}`", func.name),
                    ctx.file,
                    func.span,
                    format!("`{p}` not given"),
                )
                .help = Some(format!("the signature is `{}({sig})`", func.name));
                ok = false;
            }
        }
        ok.then_some(bound)
    }

    fn check_builtin(
        &mut self,
        ctx: &Ctx,
        span: Span,
        b: &builtins::Builtin,
        func: &keel_grammar::Ident,
        args: &[Arg],
        over: Option<&keel_grammar::Ident>,
    ) -> Info {
        let params: Vec<(String, bool)> = b
            .params
            .iter()
            .map(|p| match p.strip_suffix('?') {
                Some(n) => (n.to_string(), true),
                None => (p.to_string(), false),
            })
            .collect();
        let Some(bound) = self.bind_args(ctx, func, &params, args) else {
            for a in args {
                self.check_expr(ctx, &a.value);
            }
            return Info::unknown();
        };
        let infos: Vec<Option<(Info, Span)>> = bound
            .iter()
            .map(|a| a.map(|e| (self.check_expr(ctx, e), e.span)))
            .collect();
        // Types.
        for (i, slot) in infos.iter().enumerate() {
            let Some((info, sp)) = slot else { continue };
            let want_bool = (b.bool_first && i == 0)
                || (b.name == "latest" && i == 1)
                || (matches!(b.name, "sum_by" | "min_by" | "max_by") && i == 2)
                || (b.name == "quantile_by" && i == 3);
            let is_branch = b.ret == Ret::Branches && i > 0;
            if want_bool && !info.ty.is_bool() {
                self.type_error(
                    ctx,
                    *sp,
                    &format!("`{}` needs a bool here", b.name),
                    &info.ty,
                );
            } else if !want_bool && !is_branch && b.name != "count" && !info.ty.is_numeric() {
                self.type_error(
                    ctx,
                    *sp,
                    &format!("`{}` needs a number here", b.name),
                    &info.ty,
                );
            }
        }
        let first = infos
            .first()
            .and_then(|s| s.as_ref())
            .map(|(i, _)| i.clone());
        let arg_level = infos
            .iter()
            .flatten()
            .map(|(i, _)| i.level)
            .fold(Level::Step, Level::join);
        let ret_ty = match b.ret {
            Ret::Num => Ty::Num,
            Ret::Bool => Ty::Bool,
            Ret::Same => match first.as_ref().map(|f| f.ty.clone()) {
                Some(Ty::Int) => Ty::Int,
                Some(Ty::Unknown) => Ty::Unknown,
                _ => Ty::Num,
            },
            Ret::Branches => {
                let t1 = infos
                    .get(1)
                    .and_then(|s| s.as_ref())
                    .map(|(i, _)| i.ty.clone())
                    .unwrap_or(Ty::Unknown);
                let t2 = infos
                    .get(2)
                    .and_then(|s| s.as_ref())
                    .map(|(i, _)| i.ty.clone())
                    .unwrap_or(Ty::Unknown);
                self.unify(ctx, &t1, &t2, span, "the branches of `where`")
            }
        };
        let is_reduce = match b.kind {
            FnKind::ElementwiseOrReduce => over.is_some(),
            FnKind::Reduce | FnKind::Normalize => true,
            _ => false,
        };
        if b.kind == FnKind::ElementwiseOrReduce {
            let given = infos.iter().filter(|s| s.is_some()).count();
            if over.is_some() && given == 2 {
                self.err(
                    codes::UNEXPECTED_OVER,
                    format!(
                        "`{}` of two values is elementwise; it takes no `over`",
                        b.name
                    ),
                    ctx.file,
                    span,
                    "two arguments and `over`",
                )
                .help = Some(format!(
                    "write `{0}(a, b)` for elementwise, or `{0}(x) over LEVEL` to reduce",
                    b.name
                ));
                return Info::unknown();
            }
            if over.is_none() && given == 1 {
                self.err(
                    codes::MISSING_OVER,
                    format!("`{}` of one value must say what it reduces over", b.name),
                    ctx.file,
                    span,
                    "missing `over`",
                )
                .help = Some(format!(
                    "write `{}(x) over seq` (or token, group, batch)",
                    b.name
                ));
                return Info::unknown();
            }
        }
        if !is_reduce {
            if let Some(o) = over {
                self.err(
                    codes::UNEXPECTED_OVER,
                    format!("`{}` does not reduce, so it takes no `over`", b.name),
                    ctx.file,
                    o.span,
                    "`over` not allowed here",
                )
                .help = Some("remove `over ...`; reductions are sum, mean, std, var, min, max, count, logsumexp, quantile, any, all".into());
            }
            let constant = match (b.kind, infos.as_slice()) {
                (FnKind::Elementwise | FnKind::ElementwiseOrReduce, _) => {
                    let cs: Option<Vec<f64>> =
                        infos.iter().flatten().map(|(i, _)| i.constant).collect();
                    cs.and_then(|cs| const_fn(b.name, &cs))
                }
                _ => None,
            };
            let level = match b.kind {
                FnKind::Scan => {
                    if arg_level > Level::Token {
                        self.vocab_needs_reduction(ctx, span, b.name);
                    }
                    Level::Token
                }
                FnKind::Pick => {
                    if let Some(f) = &first
                        && f.level != Level::Vocab
                        && f.ty != Ty::Unknown
                    {
                        self.err(
                            codes::LEVEL_MISMATCH,
                            format!("`pick` reads a vocabulary-level value, but this is {}", f.level.adj()),
                            ctx.file,
                            span,
                            "not vocabulary-level",
                        )
                        .help = Some("`pick(x)` takes the sampled token's entry of a [B, T, V] value such as `log_softmax(logits) over vocab`".into());
                    }
                    Level::Token
                }
                _ => arg_level,
            };
            return Info {
                ty: ret_ty,
                level,
                constant,
            };
        }
        let Some(o) = over else {
            self.err(
                codes::MISSING_OVER,
                format!("`{}` reduces, so it needs `over LEVEL`", b.name),
                ctx.file,
                span,
                "missing `over`",
            )
            .help = Some(format!(
                "write `{}(...) over seq` (or token, group, batch, vocab)",
                b.name
            ));
            return Info::unknown();
        };
        let Some(target) = self.over_level(ctx, o) else {
            return Info::unknown();
        };
        // The reduced operand is the first argument (or the mask for `count()`).
        let operand = first.as_ref().map(|f| f.level).unwrap_or(Level::Token);
        let operand_known = first.as_ref().is_none_or(|f| f.ty != Ty::Unknown);
        if operand_known && operand <= target {
            let what = if target == Level::Token {
                format!(
                    "`over {}` reduces a vocabulary-level value to one per token",
                    o.name
                )
            } else {
                format!(
                    "`over {}` reduces to one value per {}",
                    o.name,
                    target.name()
                )
            };
            self.err(
                codes::BAD_REDUCTION_LEVEL,
                format!(
                    "`{}(...) over {}` needs a value finer than {}, but this is {}",
                    b.name,
                    o.name,
                    target.adj(),
                    operand.adj()
                ),
                ctx.file,
                span,
                what,
            )
            .help = Some(match operand {
                Level::Step => {
                    "this value is the same everywhere; there is nothing to reduce".to_string()
                }
                l => format!(
                    "it is already {}; reduce over a coarser level ({}) or drop the reduction",
                    l.adj(),
                    coarser_names(l)
                ),
            });
            return Info::unknown();
        }
        let level = if b.kind == FnKind::Normalize {
            operand
        } else {
            target
        };
        let ty = if b.kind == FnKind::Normalize && b.ret == Ret::Bool {
            Ty::Bool
        } else {
            ret_ty
        };
        Info::new(ty, level)
    }

    fn vocab_needs_reduction(&mut self, ctx: &Ctx, span: Span, what: &str) {
        self.err(
            codes::LEVEL_MISMATCH,
            format!("`{what}` works on token-level values, but this is vocabulary-level"),
            ctx.file,
            span,
            "vocabulary-level argument",
        )
        .help = Some("reduce over the vocabulary first, e.g. `sum(p * x) over vocab`, or read the sampled token with `pick(x)`".into());
    }

    /// `search(f, lo, hi, step, args...)`: the first of lo, lo + step, …, hi
    /// (clamped to hi) at which the function `f(c, args...)` holds, else hi.
    /// The grid must be known before training; the compiler unrolls it into
    /// one batch reduction per candidate.
    fn check_search(
        &mut self,
        ctx: &Ctx,
        span: Span,
        func: &keel_grammar::Ident,
        args: &[Arg],
        over: Option<&keel_grammar::Ident>,
    ) -> Info {
        let sig = "the form is `search(f, lo, hi, step, args...)`: the first c in lo, lo + step, ..., hi where f(c, args...) holds";
        if let Some(o) = over {
            self.err(
                codes::UNEXPECTED_OVER,
                "`search` takes no `over`",
                ctx.file,
                o.span,
                "`over` not allowed here",
            )
            .help = Some(sig.into());
        }
        let named = args.iter().find_map(|a| a.name.as_ref());
        if args.len() < 4 || named.is_some() {
            let at = named.map(|n| n.span).unwrap_or(func.span);
            self.err(
                codes::BAD_ARGUMENTS,
                "`search` needs a function, lo, hi and step, in that order",
                ctx.file,
                at,
                "malformed search",
            )
            .help = Some(sig.into());
            for a in args {
                self.check_expr(ctx, &a.value);
            }
            return Info::unknown();
        }
        let fname = match &args[0].value.kind {
            ExprKind::Var(id) => Some(id),
            _ => None,
        };
        let target = fname.and_then(|id| {
            self.prog
                .modules
                .get(ctx.module)
                .and_then(|m| m.scope.get(&id.name))
                .copied()
        });
        let Some(Target::Fn { module, index }) = target else {
            self.err(codes::BAD_ARGUMENTS, "the first argument of `search` must name a function", ctx.file, args[0].value.span, "not a function name")
                .help = Some("define the condition with `fn ok(c, ...) = ...` and write `search(ok, lo, hi, step, ...)`".into());
            return Info::unknown();
        };
        self.resolve(ctx, args[0].value.span, Res::UserFn { module, index });
        let mut grid = Vec::new();
        for a in &args[1..4] {
            let i = self.check_expr(ctx, &a.value);
            match i.constant {
                Some(c) if i.level == Level::Step => grid.push(c),
                _ => {
                    if i.ty != Ty::Unknown {
                        self.err(
                            codes::NOT_CONSTANT,
                            "the grid of `search` must be known before training",
                            ctx.file,
                            a.value.span,
                            "not a constant",
                        )
                        .help = Some("give lo, hi and step as numbers or hyperparameters".into());
                    }
                    return Info::unknown();
                }
            }
        }
        let (lo, hi, step) = (grid[0], grid[1], grid[2]);
        let count = if step > 0.0 && hi >= lo {
            ((hi - lo) / step).ceil() + 1.0
        } else {
            f64::INFINITY
        };
        if !(count.is_finite() && count <= 1000.0) {
            self.err(
                codes::BAD_ARGUMENTS,
                "`search` needs lo <= hi, step > 0 and at most 1000 candidates",
                ctx.file,
                span,
                "bad grid",
            )
            .help = Some(sig.into());
            return Info::unknown();
        }
        let extra: Vec<Info> = args[4..]
            .iter()
            .map(|a| self.check_expr(ctx, &a.value))
            .collect();
        let Some((fn_file, def)) = self.prog.fn_def(module, index) else {
            return Info::unknown();
        };
        if def.params.len() != extra.len() + 1 {
            self.err(
                codes::BAD_ARGUMENTS,
                format!(
                    "`{}` takes {} parameter(s), but `search` passes {}",
                    def.name.name,
                    def.params.len(),
                    extra.len() + 1
                ),
                ctx.file,
                span,
                "the candidate and the extra arguments",
            )
            .help = Some(sig.into());
            return Info::unknown();
        }
        let mut env = HashMap::new();
        env.insert(
            def.params[0].name.name.clone(),
            Info::new(Ty::Num, Level::Step),
        );
        for (p, i) in def.params.iter().skip(1).zip(extra) {
            env.insert(p.name.name.clone(), i);
        }
        let body_ctx = Ctx {
            file: fn_file,
            section: ctx.section,
            module,
            params: Some(&env),
            me: None,
        };
        let body = self.check_expr(&body_ctx, &def.body);
        if body.ty != Ty::Unknown && body.ty != Ty::Bool {
            self.type_error(
                ctx,
                args[0].value.span,
                "the condition of `search` must return a bool",
                &body.ty,
            );
            return Info::unknown();
        }
        if body.level > Level::Batch {
            self.err(
                codes::LEVEL_MISMATCH,
                format!(
                    "the condition of `search` must be one value per batch, but it is {}",
                    body.level.adj()
                ),
                ctx.file,
                args[0].value.span,
                "condition too fine",
            )
            .help =
                Some("reduce it inside the function, e.g. `sum(...) over batch >= target`".into());
            return Info::unknown();
        }
        Info::new(Ty::Num, body.level)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_user_call(
        &mut self,
        ctx: &Ctx,
        span: Span,
        module: usize,
        index: usize,
        func: &keel_grammar::Ident,
        args: &[Arg],
        over: Option<&keel_grammar::Ident>,
    ) -> Info {
        let Some((fn_file, def)) = self.prog.fn_def(module, index) else {
            return Info::unknown();
        };
        if let Some(o) = over {
            self.err(
                codes::UNEXPECTED_OVER,
                format!(
                    "`{}` is a function, not a reduction; it takes no `over`",
                    func.name
                ),
                ctx.file,
                o.span,
                "`over` not allowed here",
            )
            .help = Some("put the reduction inside the function body, or around the call".into());
        }
        if self.fn_stack.contains(&(module, index)) {
            self.err(
                codes::RECURSIVE_FN,
                format!("`{}` calls itself", func.name),
                ctx.file,
                func.span,
                "recursive call",
            )
            .help = Some("functions are inlined into the loss; write the recursion as a scan (`rscan`, `cumsum`) instead".into());
            return Info::unknown();
        }
        let params: Vec<(String, bool)> = def
            .params
            .iter()
            .map(|p| (p.name.name.clone(), p.default.is_some()))
            .collect();
        let Some(bound) = self.bind_args(ctx, func, &params, args) else {
            for a in args {
                self.check_expr(ctx, &a.value);
            }
            return Info::unknown();
        };
        let fn_ctx_module = module;
        let mut env = HashMap::new();
        for (i, p) in def.params.iter().enumerate() {
            let info = match (bound[i], &p.default) {
                (Some(e), _) => self.check_expr(ctx, e),
                (None, Some(d)) => {
                    let empty = HashMap::new();
                    let dctx = Ctx {
                        file: fn_file,
                        section: ctx.section,
                        module: fn_ctx_module,
                        params: Some(&empty),
                        me: None,
                    };
                    self.check_expr(&dctx, d)
                }
                (None, None) => Info::unknown(),
            };
            env.insert(p.name.name.clone(), info);
        }
        self.fn_stack.push((module, index));
        let before = self.diags.len();
        let body_ctx = Ctx {
            file: fn_file,
            section: ctx.section,
            module: fn_ctx_module,
            params: Some(&env),
            me: None,
        };
        let info = self.check_expr(&body_ctx, &def.body);
        for d in &mut self.diags[before..] {
            if d.primary.file != ctx.file || !span.contains(d.primary.span.start) {
                d.secondary.push(Label::new(
                    ctx.file,
                    span,
                    format!("in this call of `{}`", func.name),
                ));
            }
        }
        self.fn_stack.pop();
        info
    }

    // ----- sections, guards, recipe rules ---------------------------------

    fn check_section(&mut self, sec: &crate::resolve::SectionDef) {
        let schema = builtins::section(&sec.name);
        if schema.is_none() {
            self.diags.push(crate::resolve::unknown_section(
                sec.file,
                &sec.name,
                sec.name_span,
            ));
        }
        for (file, stmt) in &sec.stray {
            self.stray_statement(*file, &sec.name, stmt);
        }
        let state_names: Vec<String> = self
            .recipe
            .section("state")
            .map(|s| s.entries.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default();
        for e in &sec.entries {
            let info = self
                .memo
                .get(&(sec.name.clone(), e.name.clone()))
                .cloned()
                .unwrap_or_else(Info::unknown);
            if e.is_let {
                if e.file == self.recipe.file
                    && e.defined_in == self.recipe.name
                    && !self.used.contains(&(sec.name.clone(), e.name.clone()))
                {
                    self.diags.push(
                        Diagnostic::warning(
                            codes::UNUSED_LET,
                            format!("`let {}` is never used", e.name),
                            Label::new(e.file, e.name_span, "defined here"),
                        )
                        .with_help(format!("remove it, or use it in a key of `{}` (lets are private to their section)", sec.name)),
                    );
                }
                if builtins::input(&e.name).is_some() {
                    self.diags.push(
                        Diagnostic::warning(
                            codes::SHADOWS_INPUT,
                            format!("`let {}` hides the built-in input `{}`", e.name, e.name),
                            Label::new(e.file, e.name_span, "shadows an input"),
                        )
                        .with_help("rename the let so readers know which value is meant"),
                    );
                }
            }
            let Some(schema) = schema else { continue };
            if sec.name == "update" && !state_names.contains(&e.name) {
                let help = match suggest(&e.name, state_names.iter().map(|s| s.as_str())) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("declare it first: `state {{ {} = INITIAL }}`", e.name),
                };
                self.diags.push(
                    Diagnostic::error(
                        codes::NOT_STATE,
                        format!(
                            "`update` assigns `{}`, which is not a state variable",
                            e.name
                        ),
                        Label::new(e.file, e.name_span, "not declared in `state`"),
                    )
                    .with_help(help),
                );
                continue;
            }
            let key = if e.is_let { None } else { schema.key(&e.name) };
            if !e.is_let && key.is_none() {
                let names: Vec<&str> = schema.keys.iter().map(|k| k.name).collect();
                let near = suggest(&e.name, names.iter().copied());
                if schema.closed {
                    let help = match &near {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("`{}` takes: {}", sec.name, names.join(", ")),
                    };
                    self.diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_KEY,
                            format!("section `{}` has no key `{}`", sec.name, e.name),
                            Label::new(e.file, e.name_span, "unknown key"),
                        )
                        .with_help(help),
                    );
                    continue;
                } else if let Some(s) = near
                    && e.file == self.recipe.file
                {
                    self.diags.push(
                        Diagnostic::warning(
                            codes::PROBABLE_TYPO_KEY,
                            format!("`{}.{}` defines a new key; `{}.{s}` is the known one", sec.name, e.name, sec.name),
                            Label::new(e.file, e.name_span, format!("did you mean `{s}`?")),
                        )
                        .with_help(format!("write `{s}` to set the known hyperparameter, or rename the key if it is new on purpose")),
                    );
                }
            }
            if info.ty == Ty::Unknown {
                continue;
            }
            // Level.
            let allowed = match key {
                Some(k) => k.level,
                None if sec.name == "state" => Level::Step,
                None => schema.level,
            };
            // A `let` is an intermediate value: its level is checked where it
            // ends up (a vocabulary-level let reduced later is fine).
            if !e.is_let && info.level > allowed {
                self.level_error(e, &sec.name, info.level, allowed);
                continue;
            }
            // Type.
            let ty_ok = match key.map(|k| k.ty) {
                Some(KeyTy::Num) => info.ty.is_numeric(),
                Some(KeyTy::Int) => {
                    info.ty == Ty::Int || info.constant.is_some_and(|c| c.fract() == 0.0)
                }
                Some(KeyTy::Bool) => info.ty.is_bool(),
                Some(KeyTy::Str) => info.ty == Ty::Str,
                Some(KeyTy::Sym(_)) | Some(KeyTy::Any) => true,
                None if sec.name == "monitor" || sec.name == "update" || sec.name == "state" => {
                    info.ty.is_numeric() || info.ty.is_bool()
                }
                None => true,
            };
            if !ty_ok {
                let want = match key.map(|k| k.ty) {
                    Some(KeyTy::Int) => "an integer",
                    Some(KeyTy::Bool) => "a bool",
                    Some(KeyTy::Str) => "a string",
                    _ => "a number",
                };
                self.diags.push(
                    Diagnostic::error(
                        codes::TYPE_MISMATCH,
                        format!(
                            "`{}.{}` must be {want}, but this is a {}",
                            sec.name,
                            e.name,
                            info.ty.name()
                        ),
                        Label::new(
                            e.file,
                            e.value.span,
                            format!("this is a {}", info.ty.name()),
                        ),
                    )
                    .with_help(match info.ty {
                        Ty::Bool => "turn a bool into a number with `float(b)`".to_string(),
                        _ => format!("write {want} here"),
                    }),
                );
                continue;
            }
            // Known before training?
            // Rollout settings may follow a schedule of the step (a horizon
            // curriculum); the model, the task and initial state may not.
            let needs_constant = matches!(
                sec.name.as_str(),
                "model" | "task" | "state" | "eval" | "checkpoint"
            );
            if needs_constant
                && info.constant.is_none()
                && info.ty != Ty::Str
                && !matches!(info.ty, Ty::Sym(_))
            {
                self.diags.push(
                    Diagnostic::error(
                        codes::NOT_CONSTANT,
                        format!(
                            "`{}.{}` must be fixed before training starts",
                            sec.name, e.name
                        ),
                        Label::new(
                            e.file,
                            e.value.span,
                            "depends on the training step or on state",
                        ),
                    )
                    .with_help(if sec.name == "state" {
                        "give the initial value as a number; change it in `update`".to_string()
                    } else {
                        format!(
                            "write a constant; `{}` cannot change during a run",
                            sec.name
                        )
                    }),
                );
                continue;
            }
            // Range.
            if let (Some(k), Some(c)) = (key, info.constant)
                && k.range != Range::None
                && !k.range.holds(c)
            {
                let negative_coef = k.name == "coef" && c < 0.0;
                let (code, strict) = if negative_coef && k.strict {
                    (codes::NEGATIVE_COEFFICIENT, true)
                } else if k.strict {
                    (codes::OUT_OF_RANGE, true)
                } else {
                    (codes::SUSPICIOUS_VALUE, false)
                };
                let msg = format!(
                    "`{}.{}` is {}, but it must be {}",
                    sec.name,
                    e.name,
                    fmt_num(c),
                    k.range.describe()
                );
                let label = Label::new(e.file, e.value.span, format!("= {}", fmt_num(c)));
                let mut d = if strict {
                    Diagnostic::error(code, msg, label)
                } else {
                    Diagnostic::warning(code, msg, label)
                };
                d = d.with_note(format!("`{}.{}`: {}", sec.name, e.name, k.doc));
                d = d.with_help(range_help(&sec.name, k.name, c));
                self.diags.push(d);
            } else if let (Some(k), Some(c)) = (key, info.constant) {
                self.suspicious(e, &sec.name, k.name, c);
            }
        }
    }

    fn suspicious(&mut self, e: &Entry, section: &str, key: &str, c: f64) {
        let msg = match (section, key) {
            ("optimizer", "lr") if c > 0.01 => format!(
                "a learning rate of {} is unusually large for RL fine-tuning",
                fmt_num(c)
            ),
            ("clip", "eps_high") if (1.0..2.0).contains(&c) => format!(
                "`clip.eps_high` = {} lets ratios reach {}; did you mean the epsilon {}? (0.28 means up to 1.28)",
                fmt_num(c),
                fmt_num(1.0 + c),
                fmt_num(c - 1.0)
            ),
            ("rollout", "temperature") if c > 2.0 => format!(
                "sampling at temperature {} produces mostly noise",
                fmt_num(c)
            ),
            ("entropy", "coef") if c > 0.1 => format!(
                "an entropy coefficient of {} usually dominates the loss",
                fmt_num(c)
            ),
            _ => return,
        };
        self.diags.push(
            Diagnostic::warning(
                codes::SUSPICIOUS_VALUE,
                msg,
                Label::new(e.file, e.value.span, "this value"),
            )
            .with_help("double-check the value; this is a warning, the recipe still runs"),
        );
    }

    fn level_error(&mut self, e: &Entry, section: &str, found: Level, allowed: Level) {
        let help = match (found, allowed) {
            (Level::Vocab, _) => "reduce over the vocabulary, e.g. `sum(softmax(logits) over vocab * x) over vocab`, or read the sampled token with `pick(x)`".to_string(),
            (_, Level::Step) => format!(
                "`{section}` values are fixed on the host before the batch is seen; compute data-dependent values in `objective`/`credit`, or reduce them over the batch into `state` via `update`"
            ),
            (_, Level::Batch) => "reduce it to one number per step, e.g. `mean(...) over batch`".to_string(),
            (_, Level::Seq) => "the reward is per sequence; reduce token values with `sum(x) over seq`".to_string(),
            _ => format!("reduce it with `... over {}`", allowed.name()),
        };
        self.diags.push(
            Diagnostic::error(
                codes::LEVEL_MISMATCH,
                format!(
                    "`{section}.{}` must be at most {}, but its value is {}",
                    e.name,
                    allowed.adj(),
                    found.adj()
                ),
                Label::new(e.file, e.value.span, format!("{} value", found.adj())),
            )
            .with_help(help),
        );
    }

    fn stray_statement(&mut self, file: FileId, section: &str, stmt: &Stmt) {
        match stmt {
            Stmt::Command { name, arg, span } => {
                let help = match arg {
                    Some(_) => format!("did you mean `{} = ...`? definitions need `=`", name.name),
                    None => format!(
                        "write `{} = VALUE`; actions like `stop` belong in a guard",
                        name.name
                    ),
                };
                self.diags.push(
                    Diagnostic::error(
                        codes::COMMAND_OUTSIDE_GUARD,
                        format!("`{}` without `=` in section `{section}`", name.name),
                        Label::new(file, *span, "not a definition"),
                    )
                    .with_help(help),
                );
            }
            Stmt::Assign(a) if a.op != AssignOp::Set => {
                self.diags.push(
                    Diagnostic::error(
                        codes::COMPOUND_OUTSIDE_GUARD,
                        format!("`{}` can only change a value inside a guard action", a.op.text()),
                        Label::new(file, a.span, "compound assignment here"),
                    )
                    .with_help(format!("write `{} = ...` with the new value; use `update` for values that change every step", a.path_text())),
                );
            }
            Stmt::Assign(a) => {
                self.diags.push(
                    Diagnostic::error(
                        codes::BAD_PATH,
                        format!("`{}` inside section `{section}` names another section", a.path_text()),
                        Label::new(file, a.path_span(), "dotted name inside a section"),
                    )
                    .with_help("inside a section write `key = value`; use `section.key = value` at recipe level"),
                );
            }
            _ => {}
        }
    }

    /// Check a guard and resolve it for the runtime (`None` when any part
    /// of it has an error, which is then reported).
    fn check_guard(&mut self, file: FileId, g: &Guard, index: usize) -> Option<CheckedGuard> {
        let errors = self.diags.iter().filter(|d| d.is_error()).count();
        let guard_name = g
            .name
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| index.to_string());
        let mut window = 1;
        let mut actions = Vec::new();
        let module = self.module_of(file);
        let ctx = Ctx {
            file,
            section: "guard",
            module,
            params: None,
            me: None,
        };
        let c = self.check_expr(&ctx, &g.cond);
        if c.ty != Ty::Unknown && c.ty != Ty::Bool {
            self.type_error(&ctx, g.cond.span, "a guard condition must be a bool", &c.ty);
        } else if c.level > Level::Batch {
            self.diags.push(
                Diagnostic::error(
                    codes::LEVEL_MISMATCH,
                    format!(
                        "a guard condition must be one value per step, but this is {}",
                        c.level.adj()
                    ),
                    Label::new(file, g.cond.span, format!("{} condition", c.level.adj())),
                )
                .with_help("reduce it over the batch, e.g. `mean(entropy) over batch < 0.05`"),
            );
        }
        if let Some((n, unit)) = &g.window {
            let ni = self.check_expr(&ctx, n);
            let good_n = ni.constant.is_some_and(|v| v >= 1.0 && v.fract() == 0.0);
            let good_unit = unit.name == "steps" || unit.name == "step";
            if let (Some(v), true, true) = (ni.constant, good_n, good_unit) {
                window = v as u64;
            }
            if !good_n || !good_unit {
                let (span, label) = if good_n {
                    (unit.span, format!("`{}` is not a unit", unit.name))
                } else {
                    (n.span, "not a positive whole number".to_string())
                };
                self.diags.push(
                    Diagnostic::error(
                        codes::BAD_WINDOW,
                        "a guard window is `for N steps` with N a positive whole number",
                        Label::new(file, span, label),
                    )
                    .with_help("write e.g. `for 20 steps`"),
                );
            }
        }
        for a in &g.actions {
            match a {
                Stmt::Command { name, arg, span } => {
                    let Some((_, arg_ty, _)) =
                        builtins::ACTIONS.iter().find(|(n, _, _)| *n == name.name)
                    else {
                        let names: Vec<&str> =
                            builtins::ACTIONS.iter().map(|(n, _, _)| *n).collect();
                        let help = match suggest(&name.name, names.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "actions are {}, or `name = value` / `name *= factor`",
                                names.join(", ")
                            ),
                        };
                        self.diags.push(
                            Diagnostic::error(
                                codes::BAD_ACTION,
                                format!("`{}` is not a guard action", name.name),
                                Label::new(file, name.span, "unknown action"),
                            )
                            .with_help(help),
                        );
                        continue;
                    };
                    let arg_info = arg.as_ref().map(|e| (self.check_expr(&ctx, e), e.span));
                    let bad = match (arg_ty, &arg_info) {
                        (Some(_), None) => Some(format!(
                            "`{}` needs a number of steps, e.g. `{} 50`",
                            name.name, name.name
                        )),
                        (Some(_), Some((i, _)))
                            if !i.constant.is_some_and(|v| v >= 1.0 && v.fract() == 0.0) =>
                        {
                            Some(format!(
                                "`{}` needs a positive whole number of steps",
                                name.name
                            ))
                        }
                        (None, Some((i, _))) if name.name == "warn" && i.ty != Ty::Str => {
                            Some("`warn` takes an optional message string".to_string())
                        }
                        (None, Some(_)) if name.name != "warn" => {
                            Some(format!("`{}` takes no argument", name.name))
                        }
                        _ => None,
                    };
                    if let Some(msg) = bad {
                        self.diags.push(
                            Diagnostic::error(
                                codes::BAD_ACTION,
                                msg.clone(),
                                Label::new(file, *span, "malformed action"),
                            )
                            .with_help(msg),
                        );
                        continue;
                    }
                    let count = arg_info
                        .as_ref()
                        .and_then(|(i, _)| i.constant)
                        .unwrap_or(1.0);
                    actions.push(match name.name.as_str() {
                        "warn" => GuardAction::Warn(match arg.as_ref().map(|a| &a.kind) {
                            Some(ExprKind::Str(s)) => keel_grammar::unquote(s),
                            _ => format!("guard `{guard_name}` fired"),
                        }),
                        "stop" => GuardAction::Stop,
                        "skip" => GuardAction::Skip,
                        _ => GuardAction::Rollback(count as u64),
                    });
                }
                Stmt::Assign(asg) => {
                    let section = match asg.path.as_slice() {
                        [k] => {
                            let owners: Vec<String> = self
                                .recipe
                                .sections
                                .iter()
                                .filter(|s| {
                                    s.entries.iter().any(|e| e.name == k.name && !e.is_let)
                                        || builtins::section(&s.name)
                                            .and_then(|x| x.key(&k.name))
                                            .is_some()
                                })
                                .filter(|s| s.name != "update" && s.name != "monitor")
                                // A model role's keys are always written
                                // in full (`critic.lr`).
                                .filter(|s| !ROLE_SECTIONS.contains(&s.name.as_str()))
                                .map(|s| s.name.clone())
                                .collect();
                            let owners = if owners.is_empty() {
                                builtins::SECTIONS
                                    .iter()
                                    .filter(|s| s.key(&k.name).is_some())
                                    .filter(|s| !ROLE_SECTIONS.contains(&s.name))
                                    .map(|s| s.name.to_string())
                                    .collect()
                            } else {
                                owners
                            };
                            match owners.as_slice() {
                                [one] => Some(one.clone()),
                                _ => None,
                            }
                        }
                        [s, k] => (self.entry(&s.name, &k.name).is_some()
                            || builtins::section(&s.name)
                                .and_then(|x| x.key(&k.name))
                                .is_some())
                        .then(|| s.name.clone()),
                        _ => None,
                    };
                    if section.is_none() {
                        self.diags.push(
                            Diagnostic::error(
                                codes::UNKNOWN_NAME,
                                format!("a guard can change a hyperparameter or state variable, but `{}` is neither (or is ambiguous)", asg.path_text()),
                                Label::new(file, asg.path_span(), "not a hyperparameter"),
                            )
                            .with_help("name it as `section.key`, e.g. `optimizer.lr *= 0.5`"),
                        );
                    }
                    let v = self.check_expr(&ctx, &asg.value);
                    if !v.ty.is_numeric() && !v.ty.is_bool() {
                        self.type_error(&ctx, asg.value.span, "a guard assigns numbers", &v.ty);
                    } else if v.level > Level::Batch {
                        self.diags.push(
                            Diagnostic::error(
                                codes::LEVEL_MISMATCH,
                                format!(
                                    "a guard action assigns one value per step, but this is {}",
                                    v.level.adj()
                                ),
                                Label::new(file, asg.value.span, "too fine"),
                            )
                            .with_help("reduce it over the batch first"),
                        );
                    } else if v.constant.is_none() {
                        self.diags.push(
                            Diagnostic::error(
                                codes::NOT_CONSTANT,
                                "a guard assigns a value known before training, but this one is computed during it",
                                Label::new(file, asg.value.span, format!("{} value", v.level.adj())),
                            )
                            .with_help("write a number or a constant expression (`optimizer.lr = 1e-4 * 0.5`); for a value that follows the run, keep it in `state` and set it in `update`"),
                        );
                    }
                    if let (Some(sec), Some(value), Some(key)) =
                        (section, v.constant, asg.path.last())
                    {
                        actions.push(GuardAction::Assign {
                            target: format!("{sec}.{}", key.name),
                            op: GuardOp::of(asg.op),
                            value,
                        });
                    }
                }
                Stmt::Let { name, .. } => {
                    self.diags.push(
                        Diagnostic::error(
                            codes::BAD_ACTION,
                            "`let` is not a guard action",
                            Label::new(file, name.span, "let inside a guard"),
                        )
                        .with_help("compute the value in the condition, or in `state`/`update`"),
                    );
                }
                Stmt::Error(_) => {}
            }
        }
        let now = self.diags.iter().filter(|d| d.is_error()).count();
        (now == errors).then_some(CheckedGuard {
            name: guard_name,
            window,
            actions,
            file,
            span: g.span,
        })
    }

    fn check_recipe_rules(&mut self) {
        let r = self.recipe;
        if !r.base_missing
            && r.section("objective")
                .and_then(|s| s.entry("loss"))
                .is_none()
        {
            let mut d = Diagnostic::error(
                codes::NO_LOSS,
                format!("recipe `{}` defines no loss", r.name),
                Label::new(r.file, r.name_span, "no `objective.loss`"),
            )
            .with_help(
                "add `objective { loss = ... }`, or extend a stdlib recipe: `extends std/NAME` (`stdlib/README.md` lists them)",
            );
            if !r.bases.is_empty() {
                d = d.with_note(format!("inherited from: {}", r.bases.join(" → ")));
            }
            self.diags.push(d);
        }
        // Group-relative statistics need groups.
        if let Some((ufile, uspan)) = self.group_use
            && let Some(e) = self.entry("rollout", "group")
            && let Some(info) = self.memo.get(&("rollout".to_string(), "group".to_string()))
            && let Some(g) = info.constant
            && g < 2.0
        {
            self.diags.push(
                Diagnostic::error(
                    codes::GROUP_TOO_SMALL,
                    format!("`rollout.group` is {}, but the recipe uses group statistics", fmt_num(g)),
                    Label::new(e.file, e.value.span, "fewer than 2 responses per prompt"),
                )
                .with_label(Label::new(ufile, uspan, "group-relative statistic here"))
                .with_note("with one response per prompt, every group mean equals the reward and the credit is zero (or the reward itself)")
                .with_help("sample at least 2 responses per prompt: `rollout { group = 8 }`"),
            );
        }
    }
}

fn coarser_names(l: Level) -> String {
    [Level::Seq, Level::Group, Level::Batch]
        .iter()
        .filter(|x| **x < l)
        .map(|x| x.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn range_help(section: &str, key: &str, c: f64) -> String {
    match (section, key) {
        ("clip", "eps_low" | "eps_high") if c > 1.0 => format!(
            "`{key}` is an epsilon around a ratio of 1 (0.2 means [0.8, 1.2]); to set a ratio bound directly, use `{key} = {}`",
            fmt_num((c - 1.0).abs().clamp(0.01, 0.99))
        ),
        (_, "coef") => "a negative coefficient reverses the term: it would reward the divergence it is meant to limit; use a positive value or remove the section".into(),
        ("clip", "dual") => "the dual-clip bound must exceed 1 (verl uses 3.0)".into(),
        _ => "change the value to lie within the range".into(),
    }
}

/// Fold a built-in elementwise function over constant arguments.
fn const_fn(name: &str, a: &[f64]) -> Option<f64> {
    let x = *a.first()?;
    let y = a.get(1).copied();
    Some(match (name, y) {
        ("exp", _) => x.exp(),
        ("log", _) => x.ln(),
        ("log1p", _) => x.ln_1p(),
        ("expm1", _) => x.exp_m1(),
        ("sqrt", _) => x.sqrt(),
        ("abs", _) => x.abs(),
        ("sign", _) => {
            if x == 0.0 {
                0.0
            } else {
                x.signum()
            }
        }
        ("sigmoid", _) => 1.0 / (1.0 + (-x).exp()),
        ("softplus", _) => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        ("tanh", _) => x.tanh(),
        ("relu", _) => x.max(0.0),
        ("cos", _) => x.cos(),
        ("sin", _) => x.sin(),
        ("floor", _) => x.floor(),
        ("ceil", _) => x.ceil(),
        ("round", _) => x.round(),
        ("pow", Some(y)) => x.powf(y),
        ("min", Some(y)) => x.min(y),
        ("max", Some(y)) => x.max(y),
        ("clamp", Some(lo)) => x.max(lo).min(*a.get(2)?),
        ("where", Some(t)) => {
            if x != 0.0 {
                t
            } else {
                *a.get(2)?
            }
        }
        ("float", _) | ("broadcast", _) | ("stopgrad", _) => x,
        _ => return None,
    })
}
