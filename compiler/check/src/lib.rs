//! `keel-check`: the front end, from recipe text to a *checked recipe*.
//!
//! Loading modules through a [`SourceDb`] (no IO of its own), `extends`
//! merging, name resolution, the type and level checker, hyperparameter
//! rules, the diagnostic type and its renderings, the error codes and their
//! index, the formatter, `keel explain`'s text and the embedded stdlib.
//!
//! Entry points: [`check_source`] and [`check_source_with`] (with `--set`
//! overrides). The result, [`Checked`], holds for every recipe its
//! [`CheckedRecipe`]: typed values with their constants, resolved names and
//! resolved guards, which is all the runtime reads. None of it panics on
//! user input or does IO.

#![forbid(unsafe_code)]

mod blame;
pub mod builtins;
pub mod check;
pub mod codes;
pub mod diagnostic;
pub mod error;
pub mod explain;
pub mod format;
pub mod resolve;
pub mod source;
pub mod stdlib;

pub use check::{CheckedGuard, CheckedRecipe, GuardAction, GuardOp, Setting};
pub use diagnostic::{Diagnostic, Label, Severity};
pub use error::Error;
pub use resolve::{Merged, Program};
pub use source::{FileId, NoFiles, SourceDb, Sources};

use keel_grammar::Span;

/// The result of checking one file.
pub struct Checked {
    pub program: Program,
    /// The recipes of the root file, with `extends` flattened.
    pub merged: Vec<Merged>,
    pub recipes: Vec<CheckedRecipe>,
    /// Sorted by file, then position; duplicates removed.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.is_error())
    }
    pub fn sources(&self) -> &Sources {
        &self.program.sources
    }
    /// The recipe a command acts on: the one named, or the one named like the
    /// file, or the last one in the file.
    pub fn main_recipe(&self, name: Option<&str>) -> Option<usize> {
        if let Some(n) = name {
            return self.recipes.iter().position(|r| r.name == n);
        }
        let root = self
            .program
            .sources
            .get(FileId(0))
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let stem = root
            .rsplit('/')
            .next()
            .unwrap_or(&root)
            .trim_end_matches(".recipe")
            .to_string();
        self.recipes
            .iter()
            .position(|r| r.name == stem)
            .or_else(|| self.recipes.len().checked_sub(1))
    }
}

/// Stack for the front end's thread: long `let` chains recurse once per link.
const STACK: usize = 256 << 20;

/// Run `f` on a thread with a large stack (on this thread if none can be
/// started). A panic inside `f` is a compiler bug; it propagates unchanged.
pub fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut f = Some(f);
    let out = std::thread::scope(|s| {
        let job = &mut f;
        let handle = std::thread::Builder::new()
            .name("keel-front".into())
            .stack_size(STACK)
            .spawn_scoped(s, move || job.take().map(|f| f()));
        match handle {
            Ok(h) => match h.join() {
                Ok(v) => v,
                Err(payload) => std::panic::resume_unwind(payload),
            },
            Err(_) => None,
        }
    });
    match (out, f) {
        (Some(v), _) => v,
        (None, Some(f)) => f(),
        (None, None) => std::panic::resume_unwind(Box::new("keel-front produced no value")),
    }
}

/// Parse, resolve and check the file `name` with contents `text`.
pub fn check_source(db: &dyn SourceDb, name: &str, text: &str) -> Checked {
    check_source_with(db, name, text, &[])
}

/// Like [`check_source`], with hyperparameter overrides `(section.key, value
/// text)` applied to the root file's recipes before checking, as
/// `keel loss --set` does. The value is an expression (`0.28`,
/// `seq_mean_token_mean`).
pub fn check_source_with(
    db: &dyn SourceDb,
    name: &str,
    text: &str,
    overrides: &[(String, String)],
) -> Checked {
    on_big_stack(|| check_on_this_thread(db, name, text, overrides))
}

fn check_on_this_thread(
    db: &dyn SourceDb,
    name: &str,
    text: &str,
    overrides: &[(String, String)],
) -> Checked {
    let mut program = Program::load(db, name, text);
    let mut merged = program.merge_all(0);
    let mut diagnostics = std::mem::take(&mut program.diagnostics);
    // Only the root file's syntax errors matter here; an imported file with
    // errors is reported where it is imported from.
    let root = program.modules.first().map(|m| m.file);
    let mut broken: Vec<Diagnostic> = Vec::new();
    diagnostics.retain(|d| {
        if Some(d.primary.file) == root || !is_syntax(d) {
            true
        } else {
            broken.push(d.clone());
            false
        }
    });
    let mut broken_files: Vec<FileId> = broken.iter().map(|d| d.primary.file).collect();
    broken_files.sort();
    broken_files.dedup();
    for f in broken_files {
        let name = program.sources.name(f).to_string();
        if let Some(root) = root {
            // The imported file's own errors come along as related locations.
            let mut d = Diagnostic::error(
                codes::UNKNOWN_MODULE,
                format!("`{name}` has syntax errors"),
                Label::new(root, import_span(&program, &name), "imported here"),
            )
            .with_help(format!("run `keel check {name}` to see them"));
            for e in broken.iter().filter(|e| e.primary.file == f).take(5) {
                d = d.with_label(Label::new(
                    f,
                    e.primary.span,
                    format!("{}: {}", e.code.0, e.message),
                ));
            }
            diagnostics.push(d);
        }
    }
    for (path, value) in overrides {
        apply_override(&mut program, &mut merged, path, value, &mut diagnostics);
    }
    let mut recipes = Vec::new();
    for m in &merged {
        let (checked, diags) = check::Checker::new(&program, m).run();
        diagnostics.extend(diags);
        recipes.push(checked);
    }
    diagnostics.sort_by(|a, b| {
        (
            a.primary.file,
            a.primary.span.start,
            a.primary.span.end,
            a.code,
        )
            .cmp(&(
                b.primary.file,
                b.primary.span.start,
                b.primary.span.end,
                b.code,
            ))
    });
    diagnostics
        .dedup_by(|a, b| a.primary == b.primary && a.code == b.code && a.message == b.message);
    Checked {
        program,
        merged,
        recipes,
        diagnostics,
    }
}

/// Replace (or add) `section.key` in every root recipe that has the section.
fn apply_override(
    program: &mut Program,
    merged: &mut [Merged],
    path: &str,
    value: &str,
    diags: &mut Vec<Diagnostic>,
) {
    // A string setting (a path, a system prompt) takes its text as it is
    // on the command line: `--set task.path=data.jsonl` needs no inner
    // quotes (a quoted value is taken as written).
    let string_key = path
        .split_once('.')
        .and_then(|(s, k)| builtins::section(s)?.key(k))
        .is_some_and(|k| matches!(k.ty, builtins::KeyTy::Str));
    let quoted;
    let value = if string_key && !value.trim_start().starts_with('"') {
        quoted = format!("{value:?}");
        quoted.as_str()
    } else {
        value
    };
    let file = program
        .sources
        .add(format!("--set {path}"), value.to_string());
    let whole = Span::new(0, value.len());
    let parts: Vec<&str> = path.split('.').collect();
    let expr = match keel_grammar::parse_expr(value) {
        Ok(e) => e,
        Err(errs) => {
            for e in errs {
                diags.push(resolve::syntax_diagnostic(file, &e));
            }
            return;
        }
    };
    let [section, key] = parts.as_slice() else {
        diags.push(
            Diagnostic::error(
                codes::UNKNOWN_SETTING,
                format!("`--set {path}=...` must name `section.key`"),
                Label::new(file, whole, "the value set"),
            )
            .with_help("write e.g. `--set clip.eps_high=0.28`"),
        );
        return;
    };
    let mut applied = false;
    for m in merged.iter_mut() {
        let known_key = builtins::section(section)
            .and_then(|s| s.key(key))
            .is_some();
        if known_key && !m.sections.iter().any(|s| s.name == *section) {
            // A known setting of a section the recipe leaves at its defaults.
            m.sections.push(resolve::SectionDef {
                name: section.to_string(),
                file,
                name_span: whole,
                entries: Vec::new(),
                stray: Vec::new(),
            });
        }
        let Some(sec) = m.sections.iter_mut().find(|s| s.name == *section) else {
            continue;
        };
        match sec.entries.iter_mut().find(|e| e.name == *key && !e.is_let) {
            Some(e) => {
                e.value = expr.clone();
                e.file = file;
                e.name_span = whole;
                applied = true;
            }
            None if known_key => {
                sec.entries.push(resolve::Entry {
                    name: key.to_string(),
                    is_let: false,
                    value: expr.clone(),
                    file,
                    name_span: whole,
                    defined_in: "--set".into(),
                    overrides: None,
                });
                applied = true;
            }
            None => {}
        }
    }
    if !applied {
        let mut names: Vec<String> = merged
            .iter()
            .flat_map(|m| {
                m.sections
                    .iter()
                    .filter(|s| !matches!(s.name.as_str(), "update" | "monitor"))
                    .flat_map(|s| {
                        s.entries
                            .iter()
                            .filter(|e| !e.is_let && is_setting(&e.value))
                            .map(move |e| format!("{}.{}", s.name, e.name))
                    })
            })
            .collect();
        names.sort();
        names.dedup();
        let near = diagnostic::suggest(path, names.iter().map(|s| s.as_str()));
        let help = match near {
            Some(s) => format!(
                "did you mean `{s}`? the recipe's hyperparameters are: {}",
                names.join(", ")
            ),
            None => format!("the recipe's hyperparameters are: {}", names.join(", ")),
        };
        diags.push(
            Diagnostic::error(
                codes::UNKNOWN_SETTING,
                format!("`--set {path}` names no hyperparameter of this recipe"),
                Label::new(file, whole, "value for an unknown name"),
            )
            .with_help(help),
        );
    }
}

/// A value `--set` is meant for: a literal or an option name.
fn is_setting(e: &keel_grammar::Expr) -> bool {
    use keel_grammar::{ExprKind, UnOp};
    match &e.kind {
        ExprKind::Number { .. } | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Var(_) => true,
        ExprKind::Unary(UnOp::Neg, x) | ExprKind::Paren(x) => is_setting(x),
        _ => false,
    }
}

fn is_syntax(d: &Diagnostic) -> bool {
    d.code.0.starts_with("E000")
}

fn import_span(program: &Program, name: &str) -> Span {
    let Some(root) = program.modules.first() else {
        return Span::default();
    };
    for item in &root.ast.items {
        if let keel_grammar::Item::Import(i) = item
            && name.ends_with(i.path.display().trim_start_matches("./"))
        {
            return i.path.span();
        }
    }
    Span::default()
}
