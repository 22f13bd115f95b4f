//! What is under the cursor: a walk over the compiler's own AST (never a
//! second parser), returning the innermost interesting node.

use keel_grammar::{Expr, ExprKind, File, Ident, Item, Member, ModPath, Span, Stmt};

#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// A name or `section.key` used in an expression (span of the whole).
    Name {
        span: Span,
        text: String,
    },
    /// A call's function name.
    Call {
        name: String,
        span: Span,
    },
    /// The level after `over`.
    Level(String),
    /// A section name where it is declared or assigned.
    Section(String),
    /// A key or let defined in a section.
    Key {
        section: String,
        key: String,
        is_let: bool,
    },
    RecipeName(String),
    Extends(ModPath),
    Import(ModPath),
    FnName(String),
}

fn inside(span: Span, at: usize) -> bool {
    span.start <= at && at <= span.end
}

fn ident(id: &Ident, at: usize) -> bool {
    inside(id.span, at)
}

/// The innermost node at byte offset `at`, and the recipe containing it.
pub fn find(file: &File, at: usize) -> (Option<Found>, Option<String>) {
    for item in &file.items {
        if !inside(item.span(), at) {
            continue;
        }
        match item {
            Item::Import(i) if inside(i.path.span(), at) => {
                return (Some(Found::Import(i.path.clone())), None);
            }
            Item::Fn(f) => {
                if ident(&f.name, at) {
                    return (Some(Found::FnName(f.name.name.clone())), None);
                }
                for p in &f.params {
                    if let Some(d) = &p.default
                        && let Some(x) = expr(d, at)
                    {
                        return (Some(x), None);
                    }
                }
                return (expr(&f.body, at), None);
            }
            Item::Recipe(r) => {
                let name = Some(r.name.name.clone());
                if ident(&r.name, at) {
                    return (Some(Found::RecipeName(r.name.name.clone())), name);
                }
                if let Some(e) = &r.extends
                    && inside(e.span(), at)
                {
                    return (Some(Found::Extends(e.clone())), name);
                }
                for m in &r.members {
                    if !inside(m.span(), at) {
                        continue;
                    }
                    return (member(m, at), name);
                }
                return (None, name);
            }
            _ => {}
        }
    }
    (None, None)
}

fn member(m: &Member, at: usize) -> Option<Found> {
    match m {
        Member::Section(s) => {
            if ident(&s.name, at) {
                return Some(Found::Section(s.name.name.clone()));
            }
            s.body.iter().find_map(|st| stmt(&s.name.name, st, at))
        }
        Member::Assign(a) => {
            match a.path.as_slice() {
                [sec] if ident(sec, at) => return Some(Found::Section(sec.name.clone())),
                [sec, _] if ident(sec, at) => return Some(Found::Section(sec.name.clone())),
                [sec, key] if ident(key, at) => {
                    return Some(Found::Key {
                        section: sec.name.clone(),
                        key: key.name.clone(),
                        is_let: false,
                    });
                }
                _ => {}
            }
            expr(&a.value, at)
        }
        Member::Guard(g) => {
            if let Some(x) = expr(&g.cond, at) {
                return Some(x);
            }
            g.actions.iter().find_map(|st| stmt("guard", st, at))
        }
        Member::Error(_) => None,
    }
}

fn stmt(section: &str, s: &Stmt, at: usize) -> Option<Found> {
    match s {
        Stmt::Let { name, value, .. } => {
            if ident(name, at) {
                return Some(Found::Key {
                    section: section.to_string(),
                    key: name.name.clone(),
                    is_let: true,
                });
            }
            expr(value, at)
        }
        Stmt::Assign(a) => {
            if let [k] = a.path.as_slice()
                && ident(k, at)
            {
                return Some(Found::Key {
                    section: section.to_string(),
                    key: k.name.clone(),
                    is_let: false,
                });
            }
            expr(&a.value, at)
        }
        Stmt::Command { arg: Some(e), .. } => expr(e, at),
        _ => None,
    }
}

/// The innermost name, call or level in an expression.
pub fn expr(e: &Expr, at: usize) -> Option<Found> {
    if !inside(e.span, at) {
        return None;
    }
    match &e.kind {
        ExprKind::Var(id) => Some(Found::Name {
            span: e.span,
            text: id.name.clone(),
        }),
        ExprKind::Field(base, f) => {
            if ident(f, at) {
                return Some(Found::Name {
                    span: e.span,
                    text: format!("{}.{}", crate::find::head(base), f.name),
                });
            }
            expr(base, at)
        }
        ExprKind::Call { func, args, over } => {
            if ident(func, at) {
                return Some(Found::Call {
                    name: func.name.clone(),
                    span: e.span,
                });
            }
            if let Some(o) = over
                && ident(o, at)
            {
                return Some(Found::Level(o.name.clone()));
            }
            args.iter().find_map(|a| expr(&a.value, at))
        }
        ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => expr(a, at).or_else(|| expr(b, at)),
        ExprKind::If(a, b, c) => expr(a, at).or_else(|| expr(b, at)).or_else(|| expr(c, at)),
        ExprKind::Unary(_, x) | ExprKind::Paren(x) => expr(x, at),
        ExprKind::List(xs) => xs.iter().find_map(|x| expr(x, at)),
        _ => None,
    }
}

/// The text of a field access's base (`clip` in `clip.eps_high`).
pub fn head(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Var(id) => id.name.clone(),
        _ => String::new(),
    }
}
