//! A bound on expression nesting.
//!
//! Later stages walk expressions recursively. To keep them from exhausting
//! the stack on pathological input (ten thousand nested parentheses, a
//! generated sum of a million terms), [`limit_depth`] replaces every
//! expression nested deeper than [`MAX_DEPTH`] with an error node and reports
//! it. The walk and the disposal of the cut subtree are iterative.

use crate::SyntaxError;
use crate::ast::*;

/// Deeper than any hand-written recipe, shallow enough for every recursive
/// pass on a small thread stack.
pub const MAX_DEPTH: usize = 256;

pub(crate) fn limit_depth(file: &mut File, errors: &mut Vec<SyntaxError>) {
    for item in &mut file.items {
        match item {
            Item::Fn(f) => {
                for p in &mut f.params {
                    if let Some(d) = &mut p.default {
                        limit(d, errors);
                    }
                }
                limit(&mut f.body, errors);
            }
            Item::Recipe(r) => {
                for m in &mut r.members {
                    match m {
                        Member::Section(s) => {
                            s.body.iter_mut().for_each(|st| limit_stmt(st, errors))
                        }
                        Member::Assign(a) => limit(&mut a.value, errors),
                        Member::Guard(g) => {
                            limit(&mut g.cond, errors);
                            if let Some((n, _)) = &mut g.window {
                                limit(n, errors);
                            }
                            g.actions.iter_mut().for_each(|st| limit_stmt(st, errors));
                        }
                        Member::Error(_) => {}
                    }
                }
            }
            Item::Import(_) | Item::Error(_) => {}
        }
    }
}

fn limit_stmt(s: &mut Stmt, errors: &mut Vec<SyntaxError>) {
    match s {
        Stmt::Let { value, .. } => limit(value, errors),
        Stmt::Assign(a) => limit(&mut a.value, errors),
        Stmt::Command { arg: Some(a), .. } => limit(a, errors),
        Stmt::Command { .. } | Stmt::Error(_) => {}
    }
}

fn children_mut(e: &mut Expr) -> Vec<&mut Expr> {
    match &mut e.kind {
        ExprKind::Field(b, _) | ExprKind::Unary(_, b) | ExprKind::Paren(b) => vec![&mut **b],
        ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => vec![&mut **a, &mut **b],
        ExprKind::If(a, b, c) => vec![&mut **a, &mut **b, &mut **c],
        ExprKind::List(items) => items.iter_mut().collect(),
        ExprKind::Call { args, .. } => args.iter_mut().map(|a| &mut a.value).collect(),
        _ => Vec::new(),
    }
}

fn limit(root: &mut Expr, errors: &mut Vec<SyntaxError>) {
    let mut stack: Vec<(&mut Expr, usize)> = vec![(root, 1)];
    while let Some((e, depth)) = stack.pop() {
        // Cut a node whose children would lie deeper than the limit.
        if depth >= MAX_DEPTH && !children_mut(e).is_empty() {
            errors.push(SyntaxError::TooDeep { span: e.span });
            let cut = std::mem::replace(
                e,
                Expr {
                    kind: ExprKind::Error,
                    span: e.span,
                },
            );
            dispose(cut);
            continue;
        }
        for c in children_mut(e) {
            stack.push((c, depth + 1));
        }
    }
}

/// Drop a tree without recursion.
pub(crate) fn dispose(e: Expr) {
    let mut stack = vec![e];
    while let Some(mut e) = stack.pop() {
        let kind = std::mem::replace(&mut e.kind, ExprKind::Error);
        match kind {
            ExprKind::Field(b, _) | ExprKind::Unary(_, b) | ExprKind::Paren(b) => stack.push(*b),
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => {
                stack.push(*a);
                stack.push(*b);
            }
            ExprKind::If(a, b, c) => {
                stack.push(*a);
                stack.push(*b);
                stack.push(*c);
            }
            ExprKind::List(items) => stack.extend(items),
            ExprKind::Call { args, .. } => stack.extend(args.into_iter().map(|a| a.value)),
            _ => {}
        }
    }
}
