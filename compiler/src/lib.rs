//! `keel-compiler`: resolution, checking and diagnostics for Keel recipes.
//!
//! The front end's entry point is [`check_source`]: give it a root text and a
//! [`SourceDb`] for imports; it returns every recipe it could check and every
//! diagnostic, sorted. It never panics on user input and does no IO itself.

pub mod builtins;
pub mod check;
pub mod codes;
pub mod diagnostic;
pub mod format;
pub mod resolve;
pub mod source;
pub mod stdlib;

pub use check::CheckedRecipe;
pub use diagnostic::{Diagnostic, Label, Severity};
pub use resolve::Program;
pub use source::{Disk, FileId, NoFiles, SourceDb, Sources};

/// The result of checking one file.
pub struct Checked {
    pub program: Program,
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
}

/// Stack for the front end's thread: long `let` chains recurse once per link.
const STACK: usize = 256 << 20;

/// Parse, resolve and check the file `name` with contents `text`.
///
/// Runs on a thread of its own with a large stack, so that long chains of
/// definitions cannot overflow the caller's (possibly small) stack.
pub fn check_source(db: &dyn SourceDb, name: &str, text: &str) -> Checked {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("keel-check".into())
            .stack_size(STACK)
            .spawn_scoped(s, || check_on_this_thread(db, name, text))
            .ok()
            .and_then(|h| h.join().ok())
    })
    .unwrap_or_else(|| check_on_this_thread(db, name, text))
}

fn check_on_this_thread(db: &dyn SourceDb, name: &str, text: &str) -> Checked {
    let mut program = Program::load(db, name, text);
    let merged = program.merge_all(0);
    let mut diagnostics = std::mem::take(&mut program.diagnostics);
    // Only the root file's syntax errors matter here; an imported file with
    // errors is reported where it is imported from.
    let root = program.modules.first().map(|m| m.file);
    let mut broken_imports = Vec::new();
    diagnostics.retain(|d| {
        if Some(d.primary.file) == root || !is_syntax(d) {
            true
        } else {
            broken_imports.push(d.primary.file);
            false
        }
    });
    broken_imports.sort();
    broken_imports.dedup();
    for f in broken_imports {
        let name = program.sources.name(f).to_string();
        if let Some(root) = root {
            diagnostics.push(
                Diagnostic::error(
                    codes::UNKNOWN_MODULE,
                    format!("`{name}` has syntax errors"),
                    Label::new(root, import_span(&program, &name), "imported here"),
                )
                .with_help(format!("run `keel check {name}` to see them")),
            );
        }
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
        recipes,
        diagnostics,
    }
}

fn is_syntax(d: &Diagnostic) -> bool {
    d.code.0.starts_with("E000")
}

fn import_span(program: &Program, name: &str) -> keel_grammar::Span {
    let Some(root) = program.modules.first() else {
        return keel_grammar::Span::default();
    };
    for item in &root.ast.items {
        if let keel_grammar::Item::Import(i) = item
            && name.ends_with(&i.path.display().trim_start_matches("./").to_string())
        {
            return i.path.span();
        }
    }
    keel_grammar::Span::default()
}
