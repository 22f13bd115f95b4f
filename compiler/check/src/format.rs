//! The canonical formatter behind `keel fmt`.
//!
//! It prints the AST back with fixed layout rules and keeps every comment:
//! comments before a definition stay before it, a comment at the end of a
//! line stays there, and a comment inside an expression moves to the line
//! before its statement. One blank line between definitions is kept where
//! the source had one. Parentheses are printed as written, so
//! `parse(format(x))` equals `parse(x)` and formatting is idempotent.
//!
//! Layout: four-space indentation; blocks on their own lines, except a short
//! block of plain `key = literal` settings (at most four, no comments), which
//! stays on one line: `rollout { group = 8, temperature = 1.0 }`.

use keel_grammar::{
    Arg, Assign, Comment, Expr, ExprKind, File, FnDef, Guard, Item, Member, ModPath, Recipe, Span,
    Stmt, UnOp, parse,
};

const INDENT: &str = "    ";
const WIDTH: usize = 100;

/// Format a source text. Fails (with the number of syntax errors) when the
/// text does not parse cleanly: a formatter must not rewrite broken code.
pub fn format_source(text: &str) -> Result<String, usize> {
    let (file, errors) = parse(text);
    if !errors.is_empty() {
        return Err(errors.len());
    }
    Ok(format_file(&file, text))
}

/// Format a parsed file; `text` is its source (for blank lines and comments).
pub fn format_file(file: &File, text: &str) -> String {
    let mut f = Formatter {
        text,
        comments: &file.comments,
        next_comment: 0,
        out: String::new(),
    };
    f.items(&file.items);
    f.rest_comments(0, text.len());
    let mut out = f.out.trim_end().to_string();
    out.push('\n');
    if out.trim().is_empty() {
        return String::new();
    }
    out
}

struct Formatter<'a> {
    text: &'a str,
    comments: &'a [Comment],
    next_comment: usize,
    out: String,
}

impl Formatter<'_> {
    fn line(&mut self, depth: usize, s: &str) {
        for _ in 0..depth {
            self.out.push_str(INDENT);
        }
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn blank(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") && !self.out.ends_with("{\n") {
            self.out.push('\n');
        }
    }

    /// Whether the source has an empty line between `a` and `b` (two
    /// offsets with only whitespace between them).
    fn blank_between(&self, a: usize, b: usize) -> bool {
        let seg = self.text.get(a.min(b)..b).unwrap_or("");
        seg.matches('\n').count() >= 2
    }

    /// Emit the comments that start before `pos`, each on its own line,
    /// keeping blank lines between them and before the node.
    fn leading(&mut self, depth: usize, pos: usize) {
        let mut last_end: Option<usize> = None;
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.span.start >= pos {
                break;
            }
            if let Some(le) = last_end
                && self.blank_between(le, c.span.start)
            {
                self.blank();
            }
            let text = c.text.trim_end().to_string();
            self.line(depth, &text);
            self.next_comment += 1;
            last_end = Some(c.span.end);
        }
        if let Some(le) = last_end
            && pos <= self.text.len()
            && self.blank_between(le, pos)
        {
            self.blank();
        }
    }

    /// Emit a comment that sits on the same line right after `end`, appended
    /// to the line just written.
    fn trailing(&mut self, end: usize) {
        let Some(c) = self.comments.get(self.next_comment) else {
            return;
        };
        let between = self.text.get(end..c.span.start).unwrap_or("\n");
        if c.span.start >= end && !between.contains('\n') {
            if self.out.ends_with('\n') {
                self.out.pop();
            }
            self.out.push_str("  ");
            self.out.push_str(c.text.trim_end());
            self.out.push('\n');
            self.next_comment += 1;
        }
    }

    /// Whether any comment lies inside `span`.
    fn has_comments(&self, span: Span) -> bool {
        self.comments
            .iter()
            .any(|c| c.span.start >= span.start && c.span.start < span.end)
    }

    fn rest_comments(&mut self, depth: usize, end: usize) {
        self.leading(depth, end);
    }

    fn items(&mut self, items: &[Item]) {
        let mut prev: Option<&Item> = None;
        for item in items {
            if let Some(p) = prev {
                let both_imports = matches!(p, Item::Import(_)) && matches!(item, Item::Import(_));
                if !both_imports
                    || self.blank_between(p.span().end, self.comment_start(item.span().start))
                {
                    self.blank();
                }
            }
            self.leading(0, item.span().start);
            match item {
                Item::Import(i) => {
                    let mut s = format!("import {}", path(&i.path));
                    if let Some(a) = &i.alias {
                        s.push_str(&format!(" as {}", a.name));
                    }
                    self.line(0, &s);
                }
                Item::Fn(f) => self.fn_def(f),
                Item::Recipe(r) => self.recipe(r),
                Item::Error(_) => {}
            }
            self.trailing(item.span().end);
            prev = Some(item);
        }
    }

    /// Where the comments attached before `pos` start (for blank-line checks).
    fn comment_start(&self, pos: usize) -> usize {
        self.comments
            .get(self.next_comment)
            .filter(|c| c.span.start < pos)
            .map(|c| c.span.start)
            .unwrap_or(pos)
    }

    fn fn_def(&mut self, f: &FnDef) {
        let params: Vec<String> = f
            .params
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("{} = {}", p.name.name, expr(d)),
                None => p.name.name.clone(),
            })
            .collect();
        self.leading(0, f.body.span.start);
        self.line(
            0,
            &format!(
                "fn {}({}) = {}",
                f.name.name,
                params.join(", "),
                expr(&f.body)
            ),
        );
        self.hoist_inside(0, f.span);
    }

    /// Comments inside an expression cannot stay there; put them after it.
    fn hoist_inside(&mut self, depth: usize, span: Span) {
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.span.start >= span.end {
                break;
            }
            let text = c.text.trim_end().to_string();
            self.line(depth, &text);
            self.next_comment += 1;
        }
    }

    fn recipe(&mut self, r: &Recipe) {
        let mut head = format!("recipe {}", r.name.name);
        if let Some(e) = &r.extends {
            head.push_str(&format!(" extends {}", path(e)));
        }
        if r.members.is_empty() && !self.has_comments(r.span) {
            self.line(0, &format!("{head} {{}}"));
            return;
        }
        self.line(0, &format!("{head} {{"));
        let mut prev_end: Option<usize> = None;
        for m in &r.members {
            if let Some(pe) = prev_end
                && self.blank_between(pe, self.comment_start(m.span().start))
            {
                self.blank();
            }
            self.leading(1, m.span().start);
            self.member(m);
            self.trailing(m.span().end);
            prev_end = Some(m.span().end);
        }
        self.leading(1, r.span.end);
        self.line(0, "}");
    }

    fn member(&mut self, m: &Member) {
        match m {
            Member::Section(s) => {
                let name = s.name.name.clone();
                self.block(1, &name, &s.body, s.span);
            }
            Member::Assign(a) => {
                self.line(1, &assign(a));
                self.hoist_inside(1, a.span);
            }
            Member::Guard(g) => self.guard(g),
            Member::Error(_) => {}
        }
    }

    /// `head { stmts }`, inline when short and plain.
    fn block(&mut self, depth: usize, head: &str, body: &[Stmt], span: Span) {
        // Sections of expressions read better one definition per line.
        let expression_section = matches!(
            head,
            "reward" | "credit" | "objective" | "divergence" | "entropy" | "update" | "monitor"
        );
        let plain = body.len() <= 4
            && !expression_section
            && body.iter().all(|s| match s {
                Stmt::Assign(a) => a.path.len() == 1 && is_simple(&a.value),
                _ => false,
            });
        if body.is_empty() && !self.has_comments(span) {
            self.line(depth, &format!("{head} {{}}"));
            return;
        }
        if plain && !self.has_comments(span) {
            let inner: Vec<String> = body.iter().map(stmt).collect();
            let one = format!("{head} {{ {} }}", inner.join(", "));
            if one.len() + depth * INDENT.len() <= WIDTH {
                self.line(depth, &one);
                return;
            }
        }
        self.line(depth, &format!("{head} {{"));
        let mut prev_end: Option<usize> = None;
        for s in body {
            if let Some(pe) = prev_end
                && self.blank_between(pe, self.comment_start(s.span().start))
            {
                self.blank();
            }
            self.leading(depth + 1, s.span().start);
            if !matches!(s, Stmt::Error(_)) {
                self.line(depth + 1, &stmt(s));
            }
            self.hoist_inside(depth + 1, s.span());
            self.trailing(s.span().end);
            prev_end = Some(s.span().end);
        }
        self.leading(depth + 1, span.end);
        self.line(depth, "}");
    }

    fn guard(&mut self, g: &Guard) {
        let mut head = "guard ".to_string();
        if let Some(n) = &g.name {
            head.push_str(&format!("{}: ", n.name));
        }
        head.push_str(&expr(&g.cond));
        if let Some((n, unit)) = &g.window {
            head.push_str(&format!(" for {} {}", expr(n), unit.name));
        }
        head.push_str(" =>");
        let actions: Vec<String> = g.actions.iter().map(stmt).collect();
        let inline_ok = !self.has_comments(g.span);
        if !g.braced && inline_ok {
            if let Some(a) = actions.first() {
                self.line(1, &format!("{head} {a}"));
            }
            return;
        }
        let one = format!("{head} {{ {} }}", actions.join("; "));
        if inline_ok && one.len() + INDENT.len() <= WIDTH {
            self.line(1, &one);
            return;
        }
        self.block(1, &head, &g.actions, g.span);
    }
}

fn is_simple(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Number { .. }
        | ExprKind::Bool(_)
        | ExprKind::Str(_)
        | ExprKind::Var(_)
        | ExprKind::None => true,
        ExprKind::Unary(UnOp::Neg, x) => is_simple(x),
        _ => false,
    }
}

fn path(p: &ModPath) -> String {
    match p {
        ModPath::Named(_) => p.display(),
        ModPath::File { text, .. } => text.clone(),
    }
}

fn assign(a: &Assign) -> String {
    format!("{} {} {}", a.path_text(), a.op.text(), expr(&a.value))
}

fn stmt(s: &Stmt) -> String {
    match s {
        Stmt::Let { name, value, .. } => format!("let {} = {}", name.name, expr(value)),
        Stmt::Assign(a) => assign(a),
        Stmt::Command { name, arg, .. } => match arg {
            Some(a) => format!("{} {}", name.name, expr(a)),
            None => name.name.clone(),
        },
        Stmt::Error(_) => String::new(),
    }
}

fn args(list: &[Arg]) -> String {
    list.iter()
        .map(|a| match &a.name {
            Some(n) => format!("{} = {}", n.name, expr(&a.value)),
            None => expr(&a.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Print an expression on one line. Parentheses come from `Paren` nodes only.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, .. } => text.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => s.clone(),
        ExprKind::None => "none".into(),
        ExprKind::Var(i) => i.name.clone(),
        ExprKind::Field(b, f) => format!("{}.{}", expr(b), f.name),
        ExprKind::Index(b, i) => format!("{}[{}]", expr(b), expr(i)),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(expr).collect::<Vec<_>>().join(", ")
        ),
        ExprKind::Unary(UnOp::Neg, x) => format!("-{}", expr(x)),
        ExprKind::Unary(UnOp::Not, x) => format!("not {}", expr(x)),
        ExprKind::Binary(op, a, b) => format!("{} {} {}", expr(a), op.text(), expr(b)),
        ExprKind::Call {
            func,
            args: a,
            over,
        } => {
            let mut s = format!("{}({})", func.name, args(a));
            if let Some(o) = over {
                s.push_str(&format!(" over {}", o.name));
            }
            s
        }
        ExprKind::If(c, a, b) => format!("if {} then {} else {}", expr(c), expr(a), expr(b)),
        ExprKind::Paren(x) => format!("({})", expr(x)),
        ExprKind::Error => "<error>".into(),
    }
}
