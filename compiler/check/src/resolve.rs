//! Resolution: loading modules through imports, building each module's scope,
//! and flattening `extends` chains into one merged recipe per declaration.
//!
//! Merging rule: a recipe starts from everything its base defines, then
//! applies its own members in order. A section block merges key by key; a
//! dotted assignment (`clip.eps_high = 0.28`) overrides one key; `S = expr`
//! sets the section's principal key; `S = none` removes the section and
//! `S.k = none` one key. A named guard replaces the base's guard of that name.

use crate::builtins;
use crate::codes::{self, Code};
use crate::diagnostic::{Diagnostic, Label, suggest};
use crate::source::{FileId, SourceDb, Sources};
use crate::stdlib;
use keel_grammar::{
    Assign, AssignOp, Expr, ExprKind, File, FnDef, Guard, Ident, Item, Member, ModPath, Recipe,
    Span, Stmt, SyntaxError, parse,
};
use std::collections::HashMap;

/// One parsed file.
#[derive(Debug)]
pub struct Module {
    pub file: FileId,
    pub ast: File,
    /// Names visible in the module: its own recipes and functions, then
    /// whatever its imports bring.
    pub scope: HashMap<String, Target>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Recipe { module: usize, index: usize },
    Fn { module: usize, index: usize },
}

/// A key or `let` of a merged section.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub is_let: bool,
    pub value: Expr,
    pub file: FileId,
    pub name_span: Span,
    /// Name of the recipe whose text defines this entry.
    pub defined_in: String,
    /// Where the overridden definition was, if this overrides one.
    pub overrides: Option<(FileId, Span)>,
}

#[derive(Clone, Debug)]
pub struct SectionDef {
    pub name: String,
    pub file: FileId,
    pub name_span: Span,
    pub entries: Vec<Entry>,
    /// Statements that are not definitions (`stop` outside a guard …), kept
    /// for the checker to report.
    pub stray: Vec<(FileId, Stmt)>,
}

impl SectionDef {
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct GuardDef {
    pub file: FileId,
    pub guard: Guard,
}

/// A recipe with its `extends` chain flattened.
#[derive(Clone, Debug)]
pub struct Merged {
    pub name: String,
    pub file: FileId,
    pub module: usize,
    pub name_span: Span,
    /// Base recipes, nearest first.
    pub bases: Vec<String>,
    pub sections: Vec<SectionDef>,
    pub guards: Vec<GuardDef>,
    /// Whether some base could not be resolved (its contents are missing).
    pub base_missing: bool,
    /// What `S = none` and `S.k = none` removed, in order: an inherited
    /// entry that still reads it is blamed on the removal.
    pub removed: Vec<Removal>,
}

/// One `S = none` (`key` is `None`) or `S.k = none`.
#[derive(Clone, Debug)]
pub struct Removal {
    pub section: String,
    pub key: Option<String>,
    pub file: FileId,
    pub span: Span,
    /// The recipe whose text removes it.
    pub by: String,
}

impl Merged {
    pub fn section(&self, name: &str) -> Option<&SectionDef> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Every module reached from a root file, with the diagnostics of loading.
pub struct Program {
    pub sources: Sources,
    pub modules: Vec<Module>,
    pub diagnostics: Vec<Diagnostic>,
    by_key: HashMap<String, usize>,
}

impl Program {
    pub fn module_of(&self, file: FileId) -> Option<&Module> {
        self.modules.iter().find(|m| m.file == file)
    }

    pub fn fn_def(&self, module: usize, index: usize) -> Option<(FileId, &FnDef)> {
        let m = self.modules.get(module)?;
        match m.ast.items.get(index)? {
            Item::Fn(f) => Some((m.file, f)),
            _ => None,
        }
    }

    fn recipe(&self, module: usize, index: usize) -> Option<&Recipe> {
        match self.modules.get(module)?.ast.items.get(index)? {
            Item::Recipe(r) => Some(r),
            _ => None,
        }
    }

    /// Load `text` (named `name`) and every module it imports.
    pub fn load(db: &dyn SourceDb, name: &str, text: &str) -> Program {
        let mut p = Program {
            sources: Sources::new(),
            modules: Vec::new(),
            diagnostics: Vec::new(),
            by_key: HashMap::new(),
        };
        p.add_module(db, name.to_string(), text.to_string());
        p
    }

    fn add_module(&mut self, db: &dyn SourceDb, key: String, text: String) -> usize {
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        let file = self.sources.add(key.clone(), text.clone());
        let (ast, errors) = parse(&text);
        for e in errors {
            self.diagnostics.push(syntax_diagnostic(file, &e));
        }
        let index = self.modules.len();
        self.by_key.insert(key.clone(), index);
        self.modules.push(Module {
            file,
            ast,
            scope: HashMap::new(),
        });
        // Own definitions first, so they shadow imports.
        let mut scope = HashMap::new();
        let mut seen: HashMap<String, Span> = HashMap::new();
        let items = self.modules[index].ast.items.clone();
        for (i, item) in items.iter().enumerate() {
            let (name, target) = match item {
                Item::Recipe(r) => (
                    &r.name,
                    Target::Recipe {
                        module: index,
                        index: i,
                    },
                ),
                Item::Fn(f) => {
                    if builtins::builtin(&f.name.name).is_some() {
                        self.diagnostics.push(
                            Diagnostic::error(
                                codes::DUPLICATE,
                                format!("`{}` is a built-in function", f.name.name),
                                Label::new(file, f.name.span, "redefined here"),
                            )
                            .with_help("choose another name for this function"),
                        );
                        continue;
                    }
                    (
                        &f.name,
                        Target::Fn {
                            module: index,
                            index: i,
                        },
                    )
                }
                _ => continue,
            };
            if let Some(prev) = seen.get(&name.name) {
                self.diagnostics.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        format!("`{}` is defined twice in this file", name.name),
                        Label::new(file, name.span, "defined again here"),
                    )
                    .with_label(Label::new(file, *prev, "first defined here"))
                    .with_help("rename or remove one of the definitions"),
                );
                continue;
            }
            seen.insert(name.name.clone(), name.span);
            scope.insert(name.name.clone(), target);
        }
        for item in &items {
            let Item::Import(imp) = item else { continue };
            let Some(m) = self.resolve_module(db, file, &key, &imp.path) else {
                continue;
            };
            let names: Vec<(String, Target)> = self.modules[m]
                .ast
                .items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| match it {
                    Item::Recipe(r) => Some((
                        r.name.name.clone(),
                        Target::Recipe {
                            module: m,
                            index: i,
                        },
                    )),
                    Item::Fn(f) => Some((
                        f.name.name.clone(),
                        Target::Fn {
                            module: m,
                            index: i,
                        },
                    )),
                    _ => None,
                })
                .collect();
            if let Some(alias) = &imp.alias {
                let recipes: Vec<&(String, Target)> = names
                    .iter()
                    .filter(|(_, t)| matches!(t, Target::Recipe { .. }))
                    .collect();
                match recipes.as_slice() {
                    [(_, t)] => {
                        scope.entry(alias.name.clone()).or_insert(*t);
                    }
                    _ => self.diagnostics.push(
                        Diagnostic::error(
                            codes::BAD_PATH,
                            format!(
                                "`as {}` needs a module with exactly one recipe; `{}` has {}",
                                alias.name,
                                imp.path.display(),
                                recipes.len()
                            ),
                            Label::new(file, alias.span, "alias here"),
                        )
                        .with_help("drop the alias and refer to the recipes by their names"),
                    ),
                }
            }
            for (n, t) in names {
                scope.entry(n).or_insert(t);
            }
        }
        self.modules[index].scope = scope;
        index
    }

    /// Find (and load) the module a path names; reports E0101 when missing.
    fn resolve_module(
        &mut self,
        db: &dyn SourceDb,
        file: FileId,
        importer: &str,
        path: &ModPath,
    ) -> Option<usize> {
        match path {
            ModPath::Named(segs) => {
                let shown = path.display();
                let names: Vec<&str> = segs.iter().map(|s| s.name.as_str()).collect();
                match names.as_slice() {
                    ["std", name] => match stdlib::get(name) {
                        Some(text) => Some(self.add_module(
                            db,
                            format!("std/{name}.recipe"),
                            text.to_string(),
                        )),
                        None => {
                            let mut d = Diagnostic::error(
                                codes::UNKNOWN_MODULE,
                                format!("there is no stdlib module `{shown}`"),
                                Label::new(file, path.span(), "not in the stdlib"),
                            );
                            d = match suggest(name, stdlib::names()) {
                                Some(s) => d.with_help(format!("did you mean `std/{s}`?")),
                                None => d.with_help(
                                    "stdlib modules are named after their method, `std/NAME`; `stdlib/README.md` lists them",
                                ),
                            };
                            self.diagnostics.push(d);
                            None
                        }
                    },
                    _ => {
                        self.diagnostics.push(
                            Diagnostic::error(
                                codes::UNKNOWN_MODULE,
                                format!("cannot import `{shown}`"),
                                Label::new(file, path.span(), "unknown module path"),
                            )
                            .with_help(
                                "import stdlib recipes as `std/NAME`, or a file as `\"./file.recipe\"`",
                            ),
                        );
                        None
                    }
                }
            }
            ModPath::File { span, .. } => {
                let rel = path.display();
                let full = join_path(importer, &rel);
                if let Some(&i) = self.by_key.get(&full) {
                    return Some(i);
                }
                match db.load(&full) {
                    Some(text) => Some(self.add_module(db, full, text)),
                    None => {
                        self.diagnostics.push(
                            Diagnostic::error(
                                codes::UNKNOWN_MODULE,
                                format!("cannot read `{full}`"),
                                Label::new(file, *span, "file not found"),
                            )
                            .with_help("paths are relative to the importing file"),
                        );
                        None
                    }
                }
            }
        }
    }

    /// Merge every recipe declared in module `module`.
    pub fn merge_all(&mut self, module: usize) -> Vec<Merged> {
        let count = self
            .modules
            .get(module)
            .map(|m| m.ast.items.len())
            .unwrap_or(0);
        let mut out = Vec::new();
        for i in 0..count {
            if self.recipe(module, i).is_some() {
                let mut stack = Vec::new();
                if let Some(m) = self.merge(module, i, &mut stack, true) {
                    out.push(m);
                }
            }
        }
        out
    }

    fn merge(
        &mut self,
        module: usize,
        index: usize,
        stack: &mut Vec<(usize, usize)>,
        report: bool,
    ) -> Option<Merged> {
        let recipe = self.recipe(module, index)?.clone();
        let file = self.modules[module].file;
        if stack.contains(&(module, index)) {
            // Reported even for a base: each recipe of the cycle is wrong.
            {
                self.diagnostics.push(
                    Diagnostic::error(
                        codes::CYCLIC_EXTENDS,
                        format!("recipe `{}` extends itself", recipe.name.name),
                        Label::new(file, recipe.name.span, "part of an `extends` cycle"),
                    )
                    .with_help("remove `extends` from one recipe of the cycle"),
                );
            }
            return None;
        }
        stack.push((module, index));
        let mut merged = match &recipe.extends {
            None => Merged {
                name: recipe.name.name.clone(),
                file,
                module,
                name_span: recipe.name.span,
                bases: Vec::new(),
                sections: Vec::new(),
                guards: Vec::new(),
                base_missing: false,
                removed: Vec::new(),
            },
            Some(path) => {
                let base = self.find_base(module, file, path);
                // A base's own mistakes are reported when the base itself is
                // checked, not again for every recipe extending it.
                let base_merged = base.and_then(|(m, i)| self.merge(m, i, stack, false));
                match base_merged {
                    Some(mut b) => {
                        b.bases.insert(0, b.name.clone());
                        b.name = recipe.name.name.clone();
                        b.file = file;
                        b.module = module;
                        b.name_span = recipe.name.span;
                        b
                    }
                    None => Merged {
                        name: recipe.name.name.clone(),
                        file,
                        module,
                        name_span: recipe.name.span,
                        bases: Vec::new(),
                        sections: Vec::new(),
                        guards: Vec::new(),
                        base_missing: true,
                        removed: Vec::new(),
                    },
                }
            }
        };
        stack.pop();
        let mut diags = Vec::new();
        apply_members(&mut merged, &recipe, file, &mut diags);
        if report {
            self.diagnostics.extend(diags);
        }
        Some(merged)
    }

    fn find_base(&mut self, module: usize, file: FileId, path: &ModPath) -> Option<(usize, usize)> {
        let key = self.sources.name(file).to_string();
        let (target_module, wanted) = match path {
            ModPath::Named(segs) if segs.len() == 1 => {
                let name = &segs[0];
                return match self.modules[module].scope.get(&name.name) {
                    Some(Target::Recipe { module, index }) => Some((*module, *index)),
                    _ => {
                        let candidates: Vec<String> = self.modules[module]
                            .scope
                            .iter()
                            .filter(|(_, t)| matches!(t, Target::Recipe { .. }))
                            .map(|(n, _)| n.clone())
                            .chain(stdlib::names().map(String::from))
                            .collect();
                        let mut d = Diagnostic::error(
                            codes::UNKNOWN_RECIPE,
                            format!("cannot find recipe `{}` to extend", name.name),
                            Label::new(file, name.span, "not defined or imported"),
                        );
                        if stdlib::get(&name.name).is_some() {
                            d = d.with_help(format!(
                                "`{0}` is in the stdlib: add `import std/{0}` or write `extends std/{0}`",
                                name.name
                            ));
                        } else if let Some(s) =
                            suggest(&name.name, candidates.iter().map(|s| s.as_str()))
                        {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        } else {
                            d = d.with_help("define the recipe in this file or import it");
                        }
                        self.diagnostics.push(d);
                        None
                    }
                };
            }
            ModPath::Named(segs) => {
                let db = crate::source::NoFiles;
                let m = self.resolve_module(&db, file, &key, path)?;
                (m, segs.last().map(|s| s.name.clone()))
            }
            ModPath::File { .. } => {
                // Files were loaded with imports; an `extends "file"` loads it
                // only if it was imported too.
                let full = join_path(&key, &path.display());
                match self.by_key.get(&full) {
                    Some(&m) => (m, None),
                    None => {
                        self.diagnostics.push(
                            Diagnostic::error(
                                codes::UNKNOWN_MODULE,
                                format!("`{full}` is not imported"),
                                Label::new(
                                    file,
                                    path.span(),
                                    "extends a file that was not imported",
                                ),
                            )
                            .with_help(format!(
                                "add `import \"{}\"` at the top of the file",
                                path.display()
                            )),
                        );
                        return None;
                    }
                }
            }
        };
        let items = &self.modules[target_module].ast.items;
        let found = items.iter().enumerate().find_map(|(i, it)| match it {
            Item::Recipe(r) if wanted.as_deref().is_none_or(|w| w == r.name.name) => Some(i),
            _ => None,
        });
        if found.is_none() {
            self.diagnostics.push(
                Diagnostic::error(
                    codes::UNKNOWN_RECIPE,
                    format!("`{}` defines no such recipe", path.display()),
                    Label::new(file, path.span(), "nothing to extend here"),
                )
                .with_help("name a module that defines a recipe of the same name"),
            );
        }
        found.map(|i| (target_module, i))
    }
}

/// `dir(importer)/rel`, with `./` and `../` folded.
fn join_path(importer: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    let mut parts: Vec<&str> = importer.split('/').collect();
    parts.pop();
    for seg in rel.split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                if matches!(parts.last(), Some(p) if *p != "..") && !parts.is_empty() {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// Apply a recipe's own members on top of what it inherited.
fn apply_members(merged: &mut Merged, recipe: &Recipe, file: FileId, diags: &mut Vec<Diagnostic>) {
    let owner = recipe.name.name.clone();
    // What this recipe body itself defines, to report duplicates.
    let mut own: HashMap<String, Span> = HashMap::new();
    let mut note_own = |key: String, span: Span, diags: &mut Vec<Diagnostic>| -> bool {
        if let Some(prev) = own.get(&key) {
            diags.push(
                Diagnostic::error(
                    codes::DUPLICATE,
                    format!("`{key}` is defined twice in recipe `{owner}`"),
                    Label::new(file, span, "defined again here"),
                )
                .with_label(Label::new(file, *prev, "first defined here"))
                .with_help("keep one definition; a later one would silently win"),
            );
            false
        } else {
            own.insert(key, span);
            true
        }
    };
    for member in &recipe.members {
        match member {
            Member::Section(sec) => {
                let sname = sec.name.name.clone();
                let def = section_mut(merged, &sname, file, sec.name.span);
                for stmt in &sec.body {
                    match stmt {
                        Stmt::Let { name, value, .. } => {
                            if note_own(format!("{sname}.{}", name.name), name.span, diags) {
                                upsert(def, name, true, value.clone(), file, &recipe.name.name);
                            }
                        }
                        Stmt::Assign(a) if a.path.len() == 1 && a.op == AssignOp::Set => {
                            let name = &a.path[0];
                            if !note_own(format!("{sname}.{}", name.name), name.span, diags) {
                                continue;
                            }
                            if matches!(a.value.kind, ExprKind::None) {
                                def.entries.retain(|e| e.name != name.name);
                            } else {
                                upsert(def, name, false, a.value.clone(), file, &recipe.name.name);
                            }
                        }
                        Stmt::Assign(_) | Stmt::Command { .. } => {
                            def.stray.push((file, stmt.clone()));
                        }
                        Stmt::Error(_) => {}
                    }
                }
            }
            Member::Assign(a) => {
                apply_assign(merged, a, file, &recipe.name.name, diags, &mut note_own)
            }
            Member::Guard(g) => {
                if let Some(n) = &g.name {
                    if !note_own(format!("guard {}", n.name), n.span, diags) {
                        continue;
                    }
                    merged
                        .guards
                        .retain(|d| d.guard.name.as_ref().map(|x| &x.name) != Some(&n.name));
                }
                merged.guards.push(GuardDef {
                    file,
                    guard: g.clone(),
                });
            }
            Member::Error(_) => {}
        }
    }
}

fn apply_assign(
    merged: &mut Merged,
    a: &Assign,
    file: FileId,
    owner: &str,
    diags: &mut Vec<Diagnostic>,
    note_own: &mut dyn FnMut(String, Span, &mut Vec<Diagnostic>) -> bool,
) {
    if a.op != AssignOp::Set {
        diags.push(
            Diagnostic::error(
                codes::COMPOUND_OUTSIDE_GUARD,
                format!(
                    "`{}` can only change a value inside a guard action",
                    a.op.text()
                ),
                Label::new(file, a.span, "compound assignment here"),
            )
            .with_help(format!(
                "write `{} = ...` with the new value",
                a.path_text()
            )),
        );
        return;
    }
    let is_none = matches!(a.value.kind, ExprKind::None);
    match a.path.as_slice() {
        [sec] => {
            if !note_own(sec.name.clone(), sec.span, diags) {
                return;
            }
            if is_none {
                merged.sections.retain(|s| s.name != sec.name);
                merged.removed.push(Removal {
                    section: sec.name.clone(),
                    key: None,
                    file,
                    span: a.span,
                    by: owner.to_string(),
                });
                return;
            }
            let principal = builtins::section(&sec.name).and_then(|s| s.principal);
            match principal {
                Some(key) => {
                    let def = section_mut(merged, &sec.name, file, sec.span);
                    let ident = Ident {
                        name: key.to_string(),
                        span: sec.span,
                    };
                    upsert(def, &ident, false, a.value.clone(), file, owner);
                }
                None => {
                    let d = match builtins::section(&sec.name) {
                        Some(_) => Diagnostic::error(
                            codes::SECTION_NEEDS_BLOCK,
                            format!("section `{}` has no single value to set", sec.name),
                            Label::new(file, a.span, "assigned here"),
                        )
                        .with_help(format!(
                            "write `{} {{ key = value }}`, or `{}.key = value` to set one key",
                            sec.name, sec.name
                        )),
                        None => unknown_section(file, &sec.name, sec.span),
                    };
                    diags.push(d);
                }
            }
        }
        [sec, key] => {
            if !note_own(format!("{}.{}", sec.name, key.name), key.span, diags) {
                return;
            }
            let def = section_mut(merged, &sec.name, file, sec.span);
            if is_none {
                def.entries.retain(|e| e.name != key.name);
                merged.removed.push(Removal {
                    section: sec.name.clone(),
                    key: Some(key.name.clone()),
                    file,
                    span: a.span,
                    by: owner.to_string(),
                });
            } else {
                upsert(def, key, false, a.value.clone(), file, owner);
            }
        }
        _ => diags.push(
            Diagnostic::error(
                codes::BAD_PATH,
                format!("`{}` has too many parts", a.path_text()),
                Label::new(file, a.path_span(), "expected `section` or `section.key`"),
            )
            .with_help("hyperparameters are addressed as `section.key`"),
        ),
    }
}

pub(crate) fn unknown_section(file: FileId, name: &str, span: Span) -> Diagnostic {
    let d = Diagnostic::error(
        codes::UNKNOWN_SECTION,
        format!("there is no section `{name}`"),
        Label::new(file, span, "unknown section"),
    );
    match suggest(name, builtins::SECTIONS.iter().map(|s| s.name)) {
        Some(s) => d.with_help(format!("did you mean `{s}`?")),
        None => d.with_help(format!(
            "sections are: {}",
            builtins::SECTIONS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn section_mut<'a>(
    merged: &'a mut Merged,
    name: &str,
    file: FileId,
    span: Span,
) -> &'a mut SectionDef {
    let pos = match merged.sections.iter().position(|s| s.name == name) {
        Some(p) => p,
        None => {
            merged.sections.push(SectionDef {
                name: name.to_string(),
                file,
                name_span: span,
                entries: Vec::new(),
                stray: Vec::new(),
            });
            merged.sections.len() - 1
        }
    };
    &mut merged.sections[pos]
}

fn upsert(
    def: &mut SectionDef,
    name: &Ident,
    is_let: bool,
    value: Expr,
    file: FileId,
    owner: &str,
) {
    let entry = Entry {
        name: name.name.clone(),
        is_let,
        value,
        file,
        name_span: name.span,
        defined_in: owner.to_string(),
        overrides: None,
    };
    match def.entries.iter_mut().find(|e| e.name == name.name) {
        Some(old) => {
            let overrides = Some((old.file, old.name_span));
            *old = Entry { overrides, ..entry };
        }
        None => def.entries.push(entry),
    }
}

/// Turn a syntax error into a diagnostic.
pub fn syntax_diagnostic(file: FileId, e: &SyntaxError) -> Diagnostic {
    let expected_list = |exp: &[String]| -> String {
        let shown: Vec<&str> = exp.iter().take(6).map(|s| s.as_str()).collect();
        match shown.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            [init @ .., last] => {
                let more = if exp.len() > 6 { ", …" } else { "" };
                format!("{}{more} or {last}", init.join(", "))
            }
        }
    };
    let code_help = |c: Code| c;
    match e {
        SyntaxError::Unexpected {
            span,
            found,
            expected,
        } => {
            let mut d = Diagnostic::error(
                code_help(codes::UNEXPECTED_TOKEN),
                format!("unexpected {found}"),
                Label::new(
                    file,
                    *span,
                    if expected.is_empty() {
                        "not expected here".to_string()
                    } else {
                        format!("expected {}", expected_list(expected))
                    },
                ),
            );
            d = d.with_help(if found == "`if`" {
                "an `if` inside a larger expression needs parentheses: `x * (if c then a else b)`"
                    .to_string()
            } else if found.contains("`=`") && expected.iter().any(|x| x == "`}`") {
                "the previous line looks unfinished; complete its expression".to_string()
            } else if expected.iter().any(|x| x == "an expression") {
                "write a value here, such as a number, a name or a call".to_string()
            } else {
                "check the line for a missing or extra symbol".to_string()
            });
            d
        }
        SyntaxError::UnexpectedEof { at, expected } => Diagnostic::error(
            codes::UNEXPECTED_EOF,
            "the file ended early",
            Label::new(
                file,
                Span::new(*at, *at),
                format!("expected {}", expected_list(expected)),
            ),
        )
        .with_help("finish the last definition"),
        SyntaxError::BadChar { span, ch } => Diagnostic::error(
            codes::BAD_CHAR,
            format!("`{ch}` is not part of the language"),
            Label::new(file, *span, "unreadable character"),
        )
        .with_help(if ch == "&" || ch == "|" || ch == "!" {
            "logical operators are written `and`, `or` and `not`".to_string()
        } else if ch == "#" {
            "comments start with `//`".to_string()
        } else if ch == "'" {
            "strings use double quotes: \"...\"".to_string()
        } else {
            "remove the character".to_string()
        }),
        SyntaxError::UnterminatedStr { span } => Diagnostic::error(
            codes::UNTERMINATED_STRING,
            "this string is never closed",
            Label::new(file, *span, "string starts here"),
        )
        .with_help("add a closing `\"` on the same line"),
        SyntaxError::Unclosed { open, at, closer } => Diagnostic::error(
            codes::UNCLOSED_DELIMITER,
            format!("this delimiter is never closed; expected `{closer}`"),
            Label::new(file, *open, "opened here"),
        )
        .with_label(Label::new(
            file,
            Span::new(*at, *at),
            format!("`{closer}` assumed here"),
        ))
        .with_help(format!("add the matching `{closer}`")),
        SyntaxError::TooDeep { span } => Diagnostic::error(
            codes::TOO_DEEP,
            format!(
                "this expression is nested more than {} levels deep",
                keel_grammar::MAX_DEPTH
            ),
            Label::new(file, *span, "too deep"),
        )
        .with_help("split it into `let` bindings"),
        SyntaxError::Unopened { span, ch } => Diagnostic::error(
            codes::UNOPENED_DELIMITER,
            format!("`{ch}` closes nothing"),
            Label::new(file, *span, "no matching opener"),
        )
        .with_help("remove it, or add the opening delimiter it belongs to"),
    }
}
