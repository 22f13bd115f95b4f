//! A span-free, parenthesised rendering of the AST. Two trees print the same
//! exactly when they are equal up to spans and comments; the formatter's
//! round-trip tests and the parser snapshots rely on it.

use crate::ast::*;
use std::fmt::Write;

/// Render a file as an s-expression without spans.
pub fn sexp(file: &File) -> String {
    let mut out = String::new();
    for item in &file.items {
        item_sexp(&mut out, item);
        out.push('\n');
    }
    out
}

fn item_sexp(out: &mut String, item: &Item) {
    match item {
        Item::Import(i) => {
            let _ = write!(out, "(import {}", path_sexp(&i.path));
            if let Some(a) = &i.alias {
                let _ = write!(out, " as {}", a.name);
            }
            out.push(')');
        }
        Item::Fn(f) => {
            let _ = write!(out, "(fn {} (", f.name.name);
            for (i, p) in f.params.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                match &p.default {
                    Some(d) => {
                        let _ = write!(out, "(= {} ", p.name.name);
                        expr_sexp(out, d);
                        out.push(')');
                    }
                    None => out.push_str(&p.name.name),
                }
            }
            out.push_str(") ");
            expr_sexp(out, &f.body);
            out.push(')');
        }
        Item::Recipe(r) => {
            let _ = write!(out, "(recipe {}", r.name.name);
            if let Some(e) = &r.extends {
                let _ = write!(out, " extends {}", path_sexp(e));
            }
            for m in &r.members {
                out.push_str("\n  ");
                member_sexp(out, m);
            }
            out.push(')');
        }
        Item::Error(_) => out.push_str("(error)"),
    }
}

fn path_sexp(p: &ModPath) -> String {
    match p {
        ModPath::Named(_) => p.display(),
        ModPath::File { text, .. } => text.clone(),
    }
}

fn member_sexp(out: &mut String, m: &Member) {
    match m {
        Member::Section(s) => {
            let _ = write!(out, "(section {}", s.name.name);
            for st in &s.body {
                out.push_str("\n    ");
                stmt_sexp(out, st);
            }
            out.push(')');
        }
        Member::Assign(a) => assign_sexp(out, a),
        Member::Guard(g) => {
            out.push_str("(guard");
            if let Some(n) = &g.name {
                let _ = write!(out, " {}", n.name);
            }
            out.push(' ');
            expr_sexp(out, &g.cond);
            if let Some((n, unit)) = &g.window {
                out.push_str(" (for ");
                expr_sexp(out, n);
                let _ = write!(out, " {})", unit.name);
            }
            for a in &g.actions {
                out.push(' ');
                stmt_sexp(out, a);
            }
            out.push(')');
        }
        Member::Error(_) => out.push_str("(error)"),
    }
}

fn assign_sexp(out: &mut String, a: &Assign) {
    let _ = write!(out, "({} {} ", a.op.text(), a.path_text());
    expr_sexp(out, &a.value);
    out.push(')');
}

fn stmt_sexp(out: &mut String, s: &Stmt) {
    match s {
        Stmt::Let { name, value, .. } => {
            let _ = write!(out, "(let {} ", name.name);
            expr_sexp(out, value);
            out.push(')');
        }
        Stmt::Assign(a) => assign_sexp(out, a),
        Stmt::Command { name, arg, .. } => {
            let _ = write!(out, "(cmd {}", name.name);
            if let Some(a) = arg {
                out.push(' ');
                expr_sexp(out, a);
            }
            out.push(')');
        }
        Stmt::Error(_) => out.push_str("(error)"),
    }
}

fn expr_sexp(out: &mut String, e: &Expr) {
    match &e.kind {
        ExprKind::Number { text, .. } => out.push_str(text),
        ExprKind::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        ExprKind::Str(s) => out.push_str(s),
        ExprKind::None => out.push_str("none"),
        ExprKind::Var(i) => out.push_str(&i.name),
        ExprKind::Field(b, f) => {
            out.push_str("(. ");
            expr_sexp(out, b);
            let _ = write!(out, " {})", f.name);
        }
        ExprKind::Index(b, i) => {
            out.push_str("([] ");
            expr_sexp(out, b);
            out.push(' ');
            expr_sexp(out, i);
            out.push(')');
        }
        ExprKind::List(items) => {
            out.push_str("(list");
            for i in items {
                out.push(' ');
                expr_sexp(out, i);
            }
            out.push(')');
        }
        ExprKind::Unary(op, x) => {
            out.push_str(match op {
                UnOp::Neg => "(neg ",
                UnOp::Not => "(not ",
            });
            expr_sexp(out, x);
            out.push(')');
        }
        ExprKind::Binary(op, a, b) => {
            let _ = write!(out, "({} ", op.text());
            expr_sexp(out, a);
            out.push(' ');
            expr_sexp(out, b);
            out.push(')');
        }
        ExprKind::Call { func, args, over } => {
            let _ = write!(out, "(call {}", func.name);
            for a in args {
                out.push(' ');
                if let Some(n) = &a.name {
                    let _ = write!(out, "{}=", n.name);
                }
                expr_sexp(out, &a.value);
            }
            if let Some(o) = over {
                let _ = write!(out, " over {}", o.name);
            }
            out.push(')');
        }
        ExprKind::If(c, a, b) => {
            out.push_str("(if ");
            expr_sexp(out, c);
            out.push(' ');
            expr_sexp(out, a);
            out.push(' ');
            expr_sexp(out, b);
            out.push(')');
        }
        ExprKind::Paren(x) => {
            out.push_str("(paren ");
            expr_sexp(out, x);
            out.push(')');
        }
        ExprKind::Error => out.push_str("(error)"),
    }
}
