//! `keel explain FILE`: a recipe's compiled objective as readable math —
//! the total loss, each term with its definitions, the credit, the reduction,
//! the hyperparameter values, and the papers the recipe and its bases cite.

use crate::builtins::{self, Ty};
use crate::check::Res;
use crate::format::expr;
use crate::resolve::{Merged, SectionDef};
use crate::{Checked, CheckedRecipe};
use keel_grammar::{Expr, ExprKind, Item};
use std::collections::BTreeSet;
use std::fmt::Write;

/// What each reduction means, as a formula.
pub fn reduction_formula(mode: &str) -> &'static str {
    match mode {
        "seq_mean_token_sum" => "(1/B') Σ_i Σ_t m_it·ℓ_it   (B' = sequences with a valid token)",
        "seq_mean_token_mean" => "(1/B') Σ_i [Σ_t m_it·ℓ_it / (Σ_t m_it + 1e-8)]",
        "seq_mean_token_sum_norm" => {
            "(1/B') Σ_i Σ_t m_it·ℓ_it / N   (B' = sequences with a valid token; N = objective.norm, default the padded length T)"
        }
        _ => "Σ_it m_it·ℓ_it / Σ_it m_it",
    }
}

fn pretty(e: &Expr) -> String {
    expr(e).replace(" * ", " · ")
}

/// The leading comment block of a recipe's source file (its citation).
fn header(checked: &Checked, merged_file: crate::FileId) -> Vec<String> {
    let Some(src) = checked.sources().get(merged_file) else {
        return Vec::new();
    };
    src.text
        .lines()
        .take_while(|l| l.trim_start().starts_with("//"))
        .map(|l| l.trim_start().trim_start_matches("//").trim().to_string())
        .filter(|l| !l.starts_with("expect:"))
        .collect()
}

fn section_block(out: &mut String, sec: &SectionDef, key: &str) {
    let Some(main) = sec.entry(key) else { return };
    let _ = writeln!(out, "  {}.{} = {}", sec.name, key, pretty(&main.value));
    // What the value is built from, in definition order, except plain
    // hyperparameters (listed at the end).
    let mut wanted = BTreeSet::new();
    let mut todo = vec![&main.value];
    while let Some(e) = todo.pop() {
        let mut names = Vec::new();
        var_names(e, &mut names);
        for n in names {
            if let Some(d) = sec.entry(&n)
                && d.name != key
                && wanted.insert(n)
            {
                todo.push(&d.value);
            }
        }
    }
    let helpers: Vec<_> = sec
        .entries
        .iter()
        .filter(|e| wanted.contains(&e.name))
        .filter(|e| e.is_let || !matches!(e.value.kind, ExprKind::Number { .. } | ExprKind::Var(_)))
        .collect();
    for (i, l) in helpers.iter().enumerate() {
        let lead = if i == 0 { "    where" } else { "         " };
        let _ = writeln!(out, "{lead} {} = {}", l.name, pretty(&l.value));
    }
}

fn var_names(e: &Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Var(i) => out.push(i.name.clone()),
        ExprKind::Field(b, _) | ExprKind::Unary(_, b) | ExprKind::Paren(b) => var_names(b, out),
        ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => {
            var_names(a, out);
            var_names(b, out);
        }
        ExprKind::If(a, b, c) => {
            var_names(a, out);
            var_names(b, out);
            var_names(c, out);
        }
        ExprKind::List(xs) => xs.iter().for_each(|x| var_names(x, out)),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| var_names(&a.value, out)),
        _ => {}
    }
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Render recipe `index` of a checked file.
pub fn explain_recipe(checked: &Checked, index: usize) -> String {
    let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
        return String::new();
    };
    let mut out = String::new();
    let chain = if m.bases.is_empty() {
        String::new()
    } else {
        format!(" (extends {})", m.bases.join(" → "))
    };
    let _ = writeln!(out, "recipe {}{chain}", m.name);
    // Citations: this recipe's file and every base's stdlib file.
    let mut cited = BTreeSet::new();
    let mut files = vec![m.file];
    for b in &m.bases {
        if let Some(f) = checked
            .program
            .modules
            .iter()
            .find(|md| {
                md.ast
                    .items
                    .iter()
                    .any(|it| matches!(it, Item::Recipe(r) if r.name.name == *b))
            })
            .map(|md| md.file)
        {
            files.push(f);
        }
    }
    for f in files {
        if !cited.insert(f) {
            continue;
        }
        let lines = header(checked, f);
        if let Some(first) = lines.first() {
            let _ = writeln!(out, "  {}: {first}", checked.sources().name(f));
            for l in lines.iter().skip(1).take_while(|l| !l.is_empty()) {
                let _ = writeln!(
                    out,
                    "  {:width$}  {l}",
                    "",
                    width = checked.sources().name(f).len()
                );
            }
        }
    }
    out.push('\n');
    let mode = match c.value("objective", "reduce").map(|v| &v.info.ty) {
        Some(Ty::Sym(s)) => s.clone(),
        _ => "token_mean".to_string(),
    };
    // The total loss.
    let mut total = format!("{mode}(objective.loss)");
    for sec in ["divergence", "entropy"] {
        if m.section(sec).and_then(|s| s.entry("value")).is_some() {
            let coef = c
                .value(sec, "coef")
                .and_then(|v| v.info.constant)
                .map(num)
                .unwrap_or_else(|| {
                    if m.section(sec).and_then(|s| s.entry("coef")).is_some() {
                        format!("{sec}.coef")
                    } else {
                        "1".into()
                    }
                });
            let _ = write!(total, " + {coef} · {mode}({sec}.value)");
        }
    }
    let _ = writeln!(out, "loss = {total}");
    let _ = writeln!(out, "  where {mode}(ℓ) = {}", reduction_formula(&mode));
    out.push('\n');
    for (sec, key) in [
        ("objective", "loss"),
        ("credit", "value"),
        ("reward", "value"),
        ("divergence", "value"),
        ("entropy", "value"),
    ] {
        if let Some(s) = m.section(sec) {
            section_block(&mut out, s, key);
        }
    }
    // Functions the recipe calls.
    let mut fns: Vec<(String, String)> = Vec::new();
    for r in c.resolutions.values() {
        if let Res::UserFn { module, index } = r
            && let Some((_, f)) = checked.program.fn_def(*module, *index)
        {
            let params: Vec<String> = f.params.iter().map(|p| p.name.name.clone()).collect();
            fns.push((
                f.name.name.clone(),
                format!(
                    "{}({}) = {}",
                    f.name.name,
                    params.join(", "),
                    pretty(&f.body)
                ),
            ));
        }
    }
    fns.sort();
    fns.dedup();
    if !fns.is_empty() {
        let _ = writeln!(out, "\nfunctions");
        for (_, f) in fns {
            let _ = writeln!(out, "  {f}");
        }
    }
    schedules(&mut out, m);
    hyperparameters(&mut out, m, c);
    out
}

/// Run-time behaviour: schedules over the step (curriculum, rollout,
/// optimizer), state updates and guards.
fn schedules(out: &mut String, m: &Merged) {
    let mut rows = Vec::new();
    for sec in ["curriculum", "rollout", "optimizer"] {
        if let Some(s) = m.section(sec) {
            for e in s.entries.iter().filter(|e| {
                !matches!(
                    e.value.kind,
                    ExprKind::Number { .. } | ExprKind::Var(_) | ExprKind::Bool(_)
                )
            }) {
                rows.push(format!("  {sec}.{} = {}", e.name, pretty(&e.value)));
            }
        }
    }
    if let Some(u) = m.section("update") {
        for e in &u.entries {
            rows.push(format!("  state.{} <- {}", e.name, pretty(&e.value)));
        }
    }
    for g in &m.guards {
        let g = &g.guard;
        let name = g
            .name
            .as_ref()
            .map(|n| format!("{}: ", n.name))
            .unwrap_or_default();
        let window = g
            .window
            .as_ref()
            .map(|(n, u)| format!(" for {} {}", pretty(n), u.name))
            .unwrap_or_default();
        let actions: Vec<String> = g
            .actions
            .iter()
            .map(|a| match a {
                keel_grammar::Stmt::Assign(x) => {
                    format!("{} {} {}", x.path_text(), x.op.text(), pretty(&x.value))
                }
                keel_grammar::Stmt::Command { name, arg, .. } => match arg {
                    Some(a) => format!("{} {}", name.name, pretty(a)),
                    None => name.name.clone(),
                },
                _ => String::new(),
            })
            .collect();
        rows.push(format!(
            "  guard {name}{}{window} => {}",
            pretty(&g.cond),
            actions.join("; ")
        ));
    }
    if !rows.is_empty() {
        let _ = writeln!(out, "\nschedules, state and guards");
        for r in rows {
            let _ = writeln!(out, "{r}");
        }
    }
}

fn hyperparameters(out: &mut String, m: &Merged, c: &CheckedRecipe) {
    let mut rows = Vec::new();
    for s in &m.sections {
        if matches!(s.name.as_str(), "monitor" | "update") {
            continue;
        }
        for e in s.entries.iter().filter(|e| !e.is_let) {
            let v = c.value(&s.name, &e.name);
            let shown = match v.map(|v| (&v.info.ty, v.info.constant)) {
                Some((Ty::Sym(sym), _)) => sym.clone(),
                Some((_, Some(k))) => num(k),
                _ => continue,
            };
            let from = if e.defined_in == m.name {
                String::new()
            } else {
                format!("   (from {})", e.defined_in)
            };
            let doc = builtins::section(&s.name)
                .and_then(|x| x.key(&e.name))
                .map(|k| k.doc)
                .unwrap_or("");
            rows.push((format!("{}.{}", s.name, e.name), shown, from, doc));
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nhyperparameters");
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v, from, doc) in rows {
        let doc = if doc.is_empty() {
            String::new()
        } else {
            format!("   {doc}")
        };
        let _ = writeln!(out, "  {k:w$} = {v}{from}{doc}");
    }
}
