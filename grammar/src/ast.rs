//! The Keel abstract syntax tree.
//!
//! Every node carries a byte-offset [`Span`] into its source. Syntax errors
//! become `Error` nodes (items, members, statements, expressions) so a broken
//! file still yields a tree the checker and the language server can use.
//! Parentheses are kept as [`ExprKind::Paren`] so the formatter reproduces
//! them; [`crate::sexp`] prints a tree without spans for comparisons.

use std::fmt;

/// A half-open byte range `start..end` into one source text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    pub fn contains(&self, offset: usize) -> bool {
        self.start <= offset && offset <= self.end
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A `// ...` comment, kept for the formatter.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    pub span: Span,
    pub text: String,
}

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed `.recipe` file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
    pub comments: Vec<Comment>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Import(Import),
    Recipe(Recipe),
    Fn(FnDef),
    Error(Span),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Import(i) => i.span,
            Item::Recipe(r) => r.span,
            Item::Fn(f) => f.span,
            Item::Error(s) => *s,
        }
    }
}

/// A module path: `std/grpo` (segments) or `"./base.recipe"` (a file).
#[derive(Clone, Debug, PartialEq)]
pub enum ModPath {
    Named(Vec<Ident>),
    File { text: String, span: Span },
}

impl ModPath {
    pub fn span(&self) -> Span {
        match self {
            ModPath::Named(segs) => match (segs.first(), segs.last()) {
                (Some(a), Some(b)) => a.span.to(b.span),
                _ => Span::default(),
            },
            ModPath::File { span, .. } => *span,
        }
    }
    /// The path as written, without quotes: `std/grpo` or `./base.recipe`.
    pub fn display(&self) -> String {
        match self {
            ModPath::Named(segs) => segs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            ModPath::File { text, .. } => unquote(text),
        }
    }
    /// The name a path binds by default: its last segment or file stem.
    pub fn default_name(&self) -> String {
        let shown = self.display();
        let last = shown.rsplit('/').next().unwrap_or(&shown);
        last.strip_suffix(".recipe").unwrap_or(last).to_string()
    }
}

/// `import std/grpo` or `import "./base.recipe" as base`.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub path: ModPath,
    pub alias: Option<Ident>,
    pub span: Span,
}

/// `fn name(a, b = 1.0) = expr`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// `recipe name [extends base] { members }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: Ident,
    pub extends: Option<ModPath>,
    pub members: Vec<Member>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    /// `clip { eps_low = 0.2, ... }`
    Section(Section),
    /// `credit = expr`, `clip.eps_high = 0.28`, `divergence = none`.
    Assign(Assign),
    Guard(Guard),
    Error(Span),
}

impl Member {
    pub fn span(&self) -> Span {
        match self {
            Member::Section(s) => s.span,
            Member::Assign(a) => a.span,
            Member::Guard(g) => g.span,
            Member::Error(s) => *s,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    Set,
    Add,
    Sub,
    Mul,
    Div,
}

impl AssignOp {
    pub fn text(self) -> &'static str {
        match self {
            AssignOp::Set => "=",
            AssignOp::Add => "+=",
            AssignOp::Sub => "-=",
            AssignOp::Mul => "*=",
            AssignOp::Div => "/=",
        }
    }
}

/// `path op value`; `path` has one segment (`eps`) or more (`clip.eps_high`).
#[derive(Clone, Debug, PartialEq)]
pub struct Assign {
    pub path: Vec<Ident>,
    pub op: AssignOp,
    pub value: Expr,
    pub span: Span,
}

impl Assign {
    pub fn path_span(&self) -> Span {
        match (self.path.first(), self.path.last()) {
            (Some(a), Some(b)) => a.span.to(b.span),
            _ => self.span,
        }
    }
    pub fn path_text(&self) -> String {
        self.path
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Assign(Assign),
    /// A guard action without `=`: `stop`, `rollback 50`, `warn "message"`.
    Command {
        name: Ident,
        arg: Option<Expr>,
        span: Span,
    },
    Error(Span),
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. } | Stmt::Command { span, .. } | Stmt::Error(span) => *span,
            Stmt::Assign(a) => a.span,
        }
    }
}

/// `guard [name:] cond [for N steps] => action` or `=> { actions }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    pub name: Option<Ident>,
    pub cond: Expr,
    /// `for N unit`: the count and the unit word (`steps`).
    pub window: Option<(Expr, Ident)>,
    pub actions: Vec<Stmt>,
    /// Whether the actions were written in braces.
    pub braced: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn text(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
    pub fn is_logical(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

/// A call argument: positional (`x`) or named (`temperature = 0.1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number as written; `is_int` when it has no `.` or exponent.
    Number {
        text: String,
        value: f64,
        is_int: bool,
    },
    Bool(bool),
    Str(String),
    /// `none`: removes an inherited section or key.
    None,
    Var(Ident),
    Field(Box<Expr>, Ident),
    Index(Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args) [over level]`
    Call {
        func: Ident,
        args: Vec<Arg>,
        over: Option<Ident>,
    },
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Paren(Box<Expr>),
    Error,
}

/// Remove the quotes and backslash escapes of a string literal.
pub fn unquote(text: &str) -> String {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse the text of a numeric literal (underscores allowed). Never fails:
/// an out-of-range integer becomes its nearest `f64`.
pub fn number_value(text: &str) -> f64 {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    clean.parse::<f64>().unwrap_or(f64::NAN)
}
