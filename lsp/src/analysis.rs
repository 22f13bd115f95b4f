//! Everything the server computes from a document, all through the
//! compiler's own front end: diagnostics, hover, completion, definitions,
//! symbols, semantic tokens and formatting.

use crate::find::{Found, find};
use crate::line_index::LineIndex;
use keel_check::builtins::{self, Level, Ty};
use keel_check::check::Res;
use keel_check::{Checked, FileId, SourceDb, check_source};
use keel_grammar::{Item, Member, Span, Stmt, Tok};
use lsp_types as lsp;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Open buffers first, then the disk.
pub struct Overlay<'a> {
    pub docs: &'a HashMap<String, String>,
}

impl SourceDb for Overlay<'_> {
    fn load(&self, path: &str) -> Option<String> {
        self.docs
            .get(path)
            .cloned()
            .or_else(|| std::fs::read_to_string(path).ok())
    }
}

/// A document checked, with the means to map its files to URIs.
pub struct Analysis {
    pub checked: Checked,
    pub path: String,
}

pub fn analyse(path: &str, text: &str, docs: &HashMap<String, String>) -> Analysis {
    let db = Overlay { docs };
    Analysis {
        checked: check_source(&db, path, text),
        path: path.to_string(),
    }
}

/// Where embedded stdlib files are written so editors can open them
/// (read-only) for go-to-definition.
pub fn stdlib_dir() -> PathBuf {
    std::env::temp_dir().join(format!("keel-std-{}", env!("CARGO_PKG_VERSION")))
}

fn materialize_stdlib(name: &str) -> Option<PathBuf> {
    let stem = name.strip_prefix("std/")?.strip_suffix(".recipe")?;
    let text = keel_check::stdlib::get(stem)?;
    let dir = stdlib_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{stem}.recipe"));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text).ok()?;
        if let Ok(meta) = std::fs::metadata(&path) {
            let mut perms = meta.permissions();
            perms.set_readonly(true);
            let _ = std::fs::set_permissions(&path, perms);
        }
    }
    Some(path)
}

impl Analysis {
    fn uri_of(&self, file: FileId) -> Option<lsp::Url> {
        let name = self.checked.sources().name(file);
        let path = match materialize_stdlib(name) {
            Some(p) => p,
            None => {
                let p = Path::new(name);
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    std::env::current_dir().ok()?.join(p)
                }
            }
        };
        lsp::Url::from_file_path(path).ok()
    }

    fn text(&self, file: FileId) -> &str {
        self.checked
            .sources()
            .get(file)
            .map(|s| s.text.as_str())
            .unwrap_or("")
    }

    /// The document's diagnostics, in LSP form (identical in content to
    /// `keel check`: message, code, help and notes).
    pub fn diagnostics(&self) -> Vec<lsp::Diagnostic> {
        let root = FileId(0);
        let idx = LineIndex::new(self.text(root));
        let mut out = Vec::new();
        for d in &self.checked.diagnostics {
            if d.primary.file != root {
                continue;
            }
            let mut message = d.message.clone();
            if !d.primary.message.is_empty() {
                message.push_str(&format!(" ({})", d.primary.message));
            }
            for n in &d.notes {
                message.push_str(&format!("\nnote: {n}"));
            }
            if let Some(h) = &d.help {
                message.push_str(&format!("\nhelp: {h}"));
            }
            let related: Vec<lsp::DiagnosticRelatedInformation> = d
                .secondary
                .iter()
                .filter_map(|l| {
                    let li = LineIndex::new(self.text(l.file));
                    Some(lsp::DiagnosticRelatedInformation {
                        location: lsp::Location::new(
                            self.uri_of(l.file)?,
                            li.range(l.span.start, l.span.end),
                        ),
                        message: if l.message.is_empty() {
                            d.message.clone()
                        } else {
                            l.message.clone()
                        },
                    })
                })
                .collect();
            out.push(lsp::Diagnostic {
                range: idx.range(d.primary.span.start, d.primary.span.end),
                severity: Some(if d.is_error() {
                    lsp::DiagnosticSeverity::ERROR
                } else {
                    lsp::DiagnosticSeverity::WARNING
                }),
                code: Some(lsp::NumberOrString::String(d.code.0.to_string())),
                source: Some("keel".into()),
                message,
                related_information: (!related.is_empty()).then_some(related),
                ..Default::default()
            });
        }
        out
    }

    fn ast(&self) -> Option<&keel_grammar::File> {
        self.checked.program.modules.first().map(|m| &m.ast)
    }

    fn recipe_index(&self, name: Option<&str>) -> Option<usize> {
        let name = name?;
        self.checked
            .recipes
            .iter()
            .position(|r| r.name == name && r.file == FileId(0))
    }

    /// What the cursor is on and what it resolves to.
    fn at(&self, offset: usize) -> (Option<Found>, Option<usize>) {
        let Some(ast) = self.ast() else {
            return (None, None);
        };
        let (found, recipe) = find(ast, offset);
        (found, self.recipe_index(recipe.as_deref()))
    }

    fn resolution(&self, recipe: Option<usize>, span: Span) -> Option<Res> {
        let r = self.checked.recipes.get(recipe?)?;
        r.resolutions
            .get(&(FileId(0), span.start, span.end))
            .cloned()
    }

    /// "token-level number" for the expression with this span, if checked.
    fn expr_type(&self, recipe: Option<usize>, span: Span) -> Option<String> {
        let r = self.checked.recipes.get(recipe?)?;
        let i = r.types.get(&(FileId(0), span.start, span.end))?;
        Some(format!("{} {}", i.level.adj(), i.ty.name()))
    }

    pub fn hover(&self, offset: usize) -> Option<String> {
        let (found, recipe) = self.at(offset);
        let here = match &found {
            Some(Found::Call { span, .. }) => self
                .expr_type(recipe, *span)
                .map(|t| format!("\n\n---\nthis expression: {t}")),
            _ => None,
        };
        let text = self.hover_text(found, recipe)?;
        Some(text + &here.unwrap_or_default())
    }

    fn hover_text(&self, found: Option<Found>, recipe: Option<usize>) -> Option<String> {
        Some(match found? {
            Found::Name { span, text } => match self.resolution(recipe, span) {
                Some(Res::Input(n)) => input_doc(&n),
                Some(Res::Entry(s, n)) => {
                    let mut out = value_doc(self, recipe, &s, &n);
                    if let Some(k) = builtins::section(&s).and_then(|x| x.key(&n)) {
                        out.push_str(&format!("\n\n{}", k.doc));
                    }
                    out
                }
                Some(Res::State(n)) => format!(
                    "{}\n\nhost-side state: set by `state`, changed by `update`",
                    value_doc(self, recipe, "state", &n)
                ),
                Some(Res::Default {
                    section,
                    key,
                    value,
                }) => {
                    let doc = builtins::section(&section)
                        .and_then(|x| x.key(&key))
                        .map(|k| k.doc)
                        .unwrap_or("");
                    format!(
                        "```keel\n{section}.{key} = {value}\n```\ndefault (not set by this recipe) — {doc}"
                    )
                }
                Some(Res::FnParam(n)) => format!("`{n}`: function parameter"),
                _ => format!("`{text}`"),
            },
            Found::Call { name, span } => {
                if let Some(b) = builtins::builtin(&name) {
                    format!(
                        "```keel\n{}({})\n```\n{} — *{}*",
                        b.name,
                        b.params.join(", "),
                        b.doc,
                        kind_word(b.kind)
                    )
                } else if let Some(Res::UserFn { module, index }) = self.resolution(recipe, span) {
                    match self.checked.program.fn_def(module, index) {
                        Some((_, f)) => format!(
                            "```keel\nfn {}({}) = {}\n```",
                            f.name.name,
                            f.params
                                .iter()
                                .map(|p| p.name.name.clone())
                                .collect::<Vec<_>>()
                                .join(", "),
                            keel_check::format::expr(&f.body)
                        ),
                        None => format!("`{name}`"),
                    }
                } else {
                    format!("`{name}`: unknown function")
                }
            }
            Found::Level(l) => level_doc(&l),
            Found::Section(s) => section_doc(&s),
            Found::Key {
                section,
                key,
                is_let,
            } => {
                let mut out = value_doc(self, recipe, &section, &key);
                if is_let {
                    out.push_str("\n\nprivate to its section (`let`)");
                } else if let Some(k) = builtins::section(&section).and_then(|x| x.key(&key)) {
                    out.push_str(&format!(
                        "\n\n{}{}",
                        k.doc,
                        k.default
                            .map(|d| format!(" (default {d})"))
                            .unwrap_or_default()
                    ));
                }
                out
            }
            Found::RecipeName(_) => {
                let i = recipe?;
                format!(
                    "```\n{}```",
                    keel_check::explain::explain_recipe(&self.checked, i)
                )
            }
            Found::Extends(p) | Found::Import(p) => {
                preset_doc(&p.display()).unwrap_or_else(|| format!("`{}`", p.display()))
            }
            Found::FnName(n) => format!("function `{n}`"),
        })
    }

    pub fn definition(&self, offset: usize) -> Option<lsp::Location> {
        let (found, recipe) = self.at(offset);
        let (file, span) = match found? {
            Found::Name { span, .. } => match self.resolution(recipe, span)? {
                Res::Entry(s, n) => self.entry_location(recipe?, &s, &n)?,
                Res::State(n) => self.entry_location(recipe?, "state", &n)?,
                _ => return None,
            },
            Found::Call { span, .. } => match self.resolution(recipe, span)? {
                Res::UserFn { module, index } => {
                    let (f, def) = self.checked.program.fn_def(module, index)?;
                    (f, def.name.span)
                }
                _ => return None,
            },
            // On a definition that overrides an inherited one: go to that one.
            Found::Key { section, key, .. } => {
                let e = self
                    .checked
                    .merged
                    .get(recipe?)?
                    .section(&section)?
                    .entry(&key)?;
                e.overrides.unwrap_or((e.file, e.name_span))
            }
            Found::Extends(p) => self.recipe_location(&p.default_name())?,
            Found::Import(p) => {
                let m = self.checked.program.modules.iter().find(|m| {
                    self.checked
                        .sources()
                        .name(m.file)
                        .trim_end_matches(".recipe")
                        .ends_with(
                            &p.display()
                                .trim_start_matches("./")
                                .trim_end_matches(".recipe")
                                .to_string(),
                        )
                })?;
                (m.file, Span::new(0, 0))
            }
            _ => return None,
        };
        let li = LineIndex::new(self.text(file));
        Some(lsp::Location::new(
            self.uri_of(file)?,
            li.range(span.start, span.end),
        ))
    }

    fn entry_location(&self, recipe: usize, section: &str, name: &str) -> Option<(FileId, Span)> {
        let m = self.checked.merged.get(recipe)?;
        let e = m.section(section)?.entry(name)?;
        Some((e.file, e.name_span))
    }

    fn recipe_location(&self, name: &str) -> Option<(FileId, Span)> {
        for m in &self.checked.program.modules {
            for it in &m.ast.items {
                if let Item::Recipe(r) = it
                    && r.name.name == name
                {
                    return Some((m.file, r.name.span));
                }
            }
        }
        None
    }

    pub fn symbols(&self) -> Vec<lsp::DocumentSymbol> {
        let Some(ast) = self.ast() else {
            return Vec::new();
        };
        let li = LineIndex::new(self.text(FileId(0)));
        let sym = |name: String,
                   detail: Option<String>,
                   kind: lsp::SymbolKind,
                   span: Span,
                   sel: Span,
                   children: Vec<lsp::DocumentSymbol>| {
            #[allow(deprecated)]
            lsp::DocumentSymbol {
                name: if name.is_empty() { "?".into() } else { name },
                detail,
                kind,
                tags: None,
                deprecated: None,
                range: li.range(span.start, span.end),
                selection_range: li.range(sel.start, sel.end),
                children: (!children.is_empty()).then_some(children),
            }
        };
        let mut out = Vec::new();
        for item in &ast.items {
            match item {
                Item::Import(i) => out.push(sym(
                    i.path.display(),
                    None,
                    lsp::SymbolKind::MODULE,
                    i.span,
                    i.path.span(),
                    vec![],
                )),
                Item::Fn(f) => out.push(sym(
                    f.name.name.clone(),
                    Some("fn".into()),
                    lsp::SymbolKind::FUNCTION,
                    f.span,
                    f.name.span,
                    vec![],
                )),
                Item::Recipe(r) => {
                    let mut children = Vec::new();
                    for m in &r.members {
                        match m {
                            Member::Section(s) => {
                                let entries = s
                                    .body
                                    .iter()
                                    .filter_map(|st| match st {
                                        Stmt::Let { name, span, .. } => Some(sym(
                                            name.name.clone(),
                                            Some("let".into()),
                                            lsp::SymbolKind::VARIABLE,
                                            *span,
                                            name.span,
                                            vec![],
                                        )),
                                        Stmt::Assign(a) => {
                                            let k = a.path.last()?;
                                            Some(sym(
                                                a.path_text(),
                                                None,
                                                lsp::SymbolKind::FIELD,
                                                a.span,
                                                k.span,
                                                vec![],
                                            ))
                                        }
                                        _ => None,
                                    })
                                    .collect();
                                children.push(sym(
                                    s.name.name.clone(),
                                    Some("section".into()),
                                    lsp::SymbolKind::NAMESPACE,
                                    s.span,
                                    s.name.span,
                                    entries,
                                ));
                            }
                            Member::Assign(a) => children.push(sym(
                                a.path_text(),
                                None,
                                lsp::SymbolKind::FIELD,
                                a.span,
                                a.path_span(),
                                vec![],
                            )),
                            Member::Guard(g) => {
                                let name = g
                                    .name
                                    .as_ref()
                                    .map(|n| n.name.clone())
                                    .unwrap_or_else(|| "guard".into());
                                let sel = g.name.as_ref().map(|n| n.span).unwrap_or(g.span);
                                children.push(sym(
                                    name,
                                    Some("guard".into()),
                                    lsp::SymbolKind::EVENT,
                                    g.span,
                                    sel,
                                    vec![],
                                ));
                            }
                            Member::Error(_) => {}
                        }
                    }
                    let detail = r
                        .extends
                        .as_ref()
                        .map(|e| format!("extends {}", e.display()));
                    out.push(sym(
                        r.name.name.clone(),
                        detail,
                        lsp::SymbolKind::CLASS,
                        r.span,
                        r.name.span,
                        children,
                    ));
                }
                Item::Error(_) => {}
            }
        }
        out
    }

    pub fn completion(&self, offset: usize) -> Vec<lsp::CompletionItem> {
        let text = self.text(FileId(0));
        let mut at = offset.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = text.get(..at).unwrap_or("");
        let line = before.rsplit('\n').next().unwrap_or("");
        let word_start = line.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_');
        let mut items = Vec::new();
        let item = |label: String, kind: lsp::CompletionItemKind, detail: String, doc: String| {
            lsp::CompletionItem {
                label,
                kind: Some(kind),
                detail: (!detail.is_empty()).then_some(detail),
                documentation: (!doc.is_empty()).then_some(lsp::Documentation::String(doc)),
                ..Default::default()
            }
        };
        // After `extends` or `import std/`: presets.
        if word_start.trim_end().ends_with("extends")
            || word_start.ends_with("std/")
            || word_start.trim_end().ends_with("import")
        {
            let with_prefix = !word_start.ends_with("std/");
            for n in keel_check::stdlib::names() {
                let label = if with_prefix {
                    format!("std/{n}")
                } else {
                    n.to_string()
                };
                items.push(item(
                    label,
                    lsp::CompletionItemKind::MODULE,
                    "stdlib".into(),
                    header_of(n),
                ));
            }
            if word_start.trim_end().ends_with("extends") {
                for r in &self.checked.recipes {
                    items.push(item(
                        r.name.clone(),
                        lsp::CompletionItemKind::CLASS,
                        "recipe in this file".into(),
                        String::new(),
                    ));
                }
            }
            return items;
        }
        if word_start.trim_end().ends_with("over") {
            for l in ["token", "seq", "group", "batch", "vocab"] {
                items.push(item(
                    l.into(),
                    lsp::CompletionItemKind::ENUM_MEMBER,
                    "level".into(),
                    level_doc(l),
                ));
            }
            return items;
        }
        // `section.` : that section's keys.
        if let Some(prefix) = word_start.strip_suffix('.') {
            let sec = prefix
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            if let Some(s) = builtins::section(sec) {
                for k in s.keys {
                    items.push(item(
                        k.name.into(),
                        lsp::CompletionItemKind::FIELD,
                        k.default
                            .map(|d| format!("default {d}"))
                            .unwrap_or_default(),
                        k.doc.into(),
                    ));
                }
                return items;
            }
        }
        let (section, in_recipe) = self.context(at);
        match section {
            Some(sec) if !line.contains('=') && !line.contains("=>") => {
                if let Some(s) = builtins::section(&sec) {
                    for k in s.keys {
                        items.push(item(
                            k.name.into(),
                            lsp::CompletionItemKind::FIELD,
                            k.default
                                .map(|d| format!("default {d}"))
                                .unwrap_or_default(),
                            k.doc.into(),
                        ));
                    }
                }
                items.push(item(
                    "let".into(),
                    lsp::CompletionItemKind::KEYWORD,
                    "a private value".into(),
                    String::new(),
                ));
            }
            Some(_) => self.expression_items(&mut items),
            None if in_recipe && !line.contains('=') => {
                for s in builtins::SECTIONS {
                    items.push(item(
                        s.name.into(),
                        lsp::CompletionItemKind::MODULE,
                        "section".into(),
                        s.doc.into(),
                    ));
                }
                items.push(item(
                    "guard".into(),
                    lsp::CompletionItemKind::KEYWORD,
                    "guard COND [for N steps] => ACTION".into(),
                    String::new(),
                ));
            }
            None if in_recipe => self.expression_items(&mut items),
            None => {
                for k in ["recipe", "import", "fn"] {
                    items.push(item(
                        k.into(),
                        lsp::CompletionItemKind::KEYWORD,
                        String::new(),
                        String::new(),
                    ));
                }
            }
        }
        items
    }

    fn expression_items(&self, items: &mut Vec<lsp::CompletionItem>) {
        for b in builtins::BUILTINS {
            items.push(lsp::CompletionItem {
                label: b.name.into(),
                kind: Some(lsp::CompletionItemKind::FUNCTION),
                detail: Some(format!("{}({})", b.name, b.params.join(", "))),
                documentation: Some(lsp::Documentation::String(b.doc.into())),
                ..Default::default()
            });
        }
        for i in builtins::INPUTS {
            items.push(lsp::CompletionItem {
                label: i.name.into(),
                kind: Some(lsp::CompletionItemKind::VARIABLE),
                detail: Some(format!("{}-level input", i.level.name())),
                documentation: Some(lsp::Documentation::String(i.doc.into())),
                ..Default::default()
            });
        }
        for s in builtins::SECTIONS {
            items.push(lsp::CompletionItem {
                label: s.name.into(),
                kind: Some(lsp::CompletionItemKind::MODULE),
                detail: Some("section".into()),
                ..Default::default()
            });
        }
    }

    /// The section enclosing `at` (if any) and whether it is inside a recipe.
    fn context(&self, at: usize) -> (Option<String>, bool) {
        let Some(ast) = self.ast() else {
            return (None, false);
        };
        for item in &ast.items {
            if let Item::Recipe(r) = item
                && r.span.start < at
                && at < r.span.end.max(r.span.start + 1)
            {
                for m in &r.members {
                    if let Member::Section(s) = m
                        && s.name.span.end < at
                        && at < s.span.end
                    {
                        return (Some(s.name.name.clone()), true);
                    }
                }
                return (None, true);
            }
        }
        (None, false)
    }

    pub fn semantic_tokens(&self) -> Vec<lsp::SemanticToken> {
        let text = self.text(FileId(0));
        let li = LineIndex::new(text);
        let lexed = keel_grammar::lexer::lex(text);
        let mut raw: Vec<(usize, usize, u32, u32)> = Vec::new();
        let toks = &lexed.tokens;
        for (k, (s, tok, e)) in toks.iter().enumerate() {
            if s == e {
                continue;
            }
            let next = toks.get(k + 1).map(|t| &t.1);
            let prev = k.checked_sub(1).and_then(|i| toks.get(i)).map(|t| &t.1);
            let (ty, md) = match tok {
                Tok::Int(_) | Tok::Float(_) => (TOKEN_NUMBER, 0),
                Tok::Str(_) => (TOKEN_STRING, 0),
                Tok::Ident(name) => {
                    if matches!(prev, Some(Tok::Over)) {
                        (TOKEN_ENUM_MEMBER, 0)
                    } else if matches!(next, Some(Tok::LParen)) {
                        (
                            TOKEN_FUNCTION,
                            if builtins::builtin(name).is_some() {
                                MOD_DEFAULT_LIBRARY
                            } else {
                                0
                            },
                        )
                    } else if builtins::section(name).is_some()
                        && matches!(next, Some(Tok::LBrace | Tok::Dot | Tok::Eq))
                    {
                        (TOKEN_NAMESPACE, 0)
                    } else if builtins::input(name).is_some() {
                        (TOKEN_VARIABLE, MOD_DEFAULT_LIBRARY | MOD_READONLY)
                    } else {
                        (TOKEN_PROPERTY, 0)
                    }
                }
                Tok::Error => continue,
                t if !t.text().is_empty() && t.text().chars().all(|c| c.is_ascii_alphabetic()) => {
                    (TOKEN_KEYWORD, 0)
                }
                _ => (TOKEN_OPERATOR, 0),
            };
            raw.push((*s, *e, ty, md));
        }
        for c in &lexed.comments {
            raw.push((c.span.start, c.span.end, TOKEN_COMMENT, 0));
        }
        raw.sort();
        let mut out = Vec::new();
        let (mut pl, mut pc) = (0u32, 0u32);
        for (s, e, ty, md) in raw {
            let start = li.position(s);
            let end = li.position(e);
            if end.line != start.line {
                continue;
            }
            let dl = start.line - pl;
            let dc = if dl == 0 {
                start.character - pc
            } else {
                start.character
            };
            out.push(lsp::SemanticToken {
                delta_line: dl,
                delta_start: dc,
                length: end.character - start.character,
                token_type: ty,
                token_modifiers_bitset: md,
            });
            pl = start.line;
            pc = start.character;
        }
        out
    }
}

pub const TOKEN_TYPES: &[lsp::SemanticTokenType] = &[
    lsp::SemanticTokenType::KEYWORD,
    lsp::SemanticTokenType::NUMBER,
    lsp::SemanticTokenType::STRING,
    lsp::SemanticTokenType::COMMENT,
    lsp::SemanticTokenType::FUNCTION,
    lsp::SemanticTokenType::VARIABLE,
    lsp::SemanticTokenType::PROPERTY,
    lsp::SemanticTokenType::NAMESPACE,
    lsp::SemanticTokenType::ENUM_MEMBER,
    lsp::SemanticTokenType::OPERATOR,
];
const TOKEN_KEYWORD: u32 = 0;
const TOKEN_NUMBER: u32 = 1;
const TOKEN_STRING: u32 = 2;
const TOKEN_COMMENT: u32 = 3;
const TOKEN_FUNCTION: u32 = 4;
const TOKEN_VARIABLE: u32 = 5;
const TOKEN_PROPERTY: u32 = 6;
const TOKEN_NAMESPACE: u32 = 7;
const TOKEN_ENUM_MEMBER: u32 = 8;
const TOKEN_OPERATOR: u32 = 9;
pub const TOKEN_MODIFIERS: &[lsp::SemanticTokenModifier] = &[
    lsp::SemanticTokenModifier::DEFAULT_LIBRARY,
    lsp::SemanticTokenModifier::READONLY,
];
const MOD_DEFAULT_LIBRARY: u32 = 1;
const MOD_READONLY: u32 = 2;

fn kind_word(k: builtins::FnKind) -> &'static str {
    match k {
        builtins::FnKind::Elementwise => "elementwise",
        builtins::FnKind::Reduce => "reduction: needs `over LEVEL`",
        builtins::FnKind::Normalize => {
            "normalising: needs `over LEVEL`, keeps its argument's level"
        }
        builtins::FnKind::Scan => "scan along each sequence",
        builtins::FnKind::ElementwiseOrReduce => {
            "elementwise with two arguments, a reduction with `over`"
        }
        builtins::FnKind::Pick => "vocabulary → token",
    }
}

fn input_doc(name: &str) -> String {
    match builtins::input(name) {
        Some(i) => format!(
            "```keel\n{}: {}-level {}\n```\n{}{}",
            i.name,
            i.level.name(),
            i.ty.ty().name(),
            i.doc,
            if i.differentiable {
                "\n\ndifferentiable: the loss's gradient flows into it"
            } else {
                ""
            }
        ),
        None => format!("`{name}`"),
    }
}

fn value_doc(a: &Analysis, recipe: Option<usize>, section: &str, name: &str) -> String {
    let v = recipe
        .and_then(|i| a.checked.recipes.get(i))
        .and_then(|r| r.value(section, name));
    match v {
        Some(v) => {
            let value = match (&v.info.ty, v.info.constant) {
                (Ty::Sym(s), _) => format!(" = {s}"),
                (_, Some(c)) => format!(" = {}", number(c)),
                _ => String::new(),
            };
            let from = if recipe
                .and_then(|i| a.checked.recipes.get(i))
                .is_some_and(|r| r.name != v.defined_in)
            {
                format!("\n\ninherited from `{}`", v.defined_in)
            } else {
                String::new()
            };
            format!(
                "```keel\n{section}.{name}{value}\n```\n{} {}{from}",
                v.info.level.adj(),
                v.info.ty.name()
            )
        }
        None => format!("`{section}.{name}`"),
    }
}

fn level_doc(l: &str) -> String {
    match Level::from_over(l) {
        Some(Level::Token) => {
            "`over token` / `over vocab`: reduce a vocabulary-level value to one per token".into()
        }
        Some(level) => format!(
            "`over {l}`: combine the values within each {}; the result is {}",
            level.name(),
            level.adj()
        ),
        None => format!("`{l}` is not a level"),
    }
}

fn section_doc(s: &str) -> String {
    match builtins::section(s) {
        Some(sec) => {
            let mut out = format!("**section `{}`** — {}\n", sec.name, sec.doc);
            if let Some(p) = sec.principal {
                out.push_str(&format!(
                    "\n`{} = expr` sets `{}.{}`\n",
                    sec.name, sec.name, p
                ));
            }
            for k in sec.keys {
                out.push_str(&format!(
                    "\n- `{}`{}: {}",
                    k.name,
                    k.default.map(|d| format!(" = {d}")).unwrap_or_default(),
                    k.doc
                ));
            }
            out
        }
        None => format!("`{s}` is not a section"),
    }
}

fn header_of(stdlib: &str) -> String {
    keel_check::stdlib::get(stdlib)
        .map(|t| {
            t.lines()
                .take_while(|l| l.starts_with("//"))
                .map(|l| l.trim_start_matches("//").trim())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The `keel explain` text of a stdlib preset (`std/grpo` or `grpo`).
fn preset_doc(path: &str) -> Option<String> {
    let name = path.trim_start_matches("std/");
    let text = keel_check::stdlib::get(name)?;
    let checked = check_source(&keel_check::NoFiles, &format!("std/{name}.recipe"), text);
    let i = checked
        .main_recipe(Some(name))
        .or_else(|| checked.main_recipe(None));
    match i {
        Some(i) => Some(format!(
            "```\n{}```",
            keel_check::explain::explain_recipe(&checked, i)
        )),
        None => Some(header_of(name)),
    }
}

/// A constant as hover shows it: whole numbers without a fraction.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}
