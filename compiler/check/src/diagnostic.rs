//! The one diagnostic type of the project, and its three renderings: the
//! terminal (ariadne, byte offsets, exactly one place), the plain
//! `PATH:LINE:COL: error[CODE]: MESSAGE` line, and JSON for machines.
//! The language server converts the same values.

use crate::codes::Code;
use crate::source::{FileId, Sources};
use ariadne::{Config, IndexType, Label as ALabel, Report, ReportKind};
use keel_grammar::Span;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A span in a file, with an optional message.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub file: FileId,
    pub span: Span,
    pub message: String,
}

impl Label {
    pub fn new(file: FileId, span: Span, message: impl Into<String>) -> Label {
        Label {
            file,
            span,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub primary: Label,
    pub secondary: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: Code, message: impl Into<String>, primary: Label) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary,
            secondary: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }
    pub fn warning(code: Code, message: impl Into<String>, primary: Label) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, primary)
        }
    }
    pub fn with_label(mut self, label: Label) -> Diagnostic {
        self.secondary.push(label);
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `PATH:LINE:COL: error[CODE]: MESSAGE` — one line, for tests and editors.
    pub fn plain_line(&self, sources: &Sources) -> String {
        let (name, line, col) = match sources.get(self.primary.file) {
            Some(src) => {
                let (l, c) = src.line_col(self.primary.span.start);
                (src.name.as_str(), l, c)
            }
            None => ("<unknown>", 1, 1),
        };
        format!(
            "{name}:{line}:{col}: {}[{}]: {}",
            severity_word(self.severity),
            self.code.0,
            self.message
        )
    }

    /// The full report as ariadne draws it, with or without colour.
    pub fn render(&self, sources: &Sources, color: bool) -> String {
        let kind = match self.severity {
            Severity::Error => ReportKind::Error,
            Severity::Warning => ReportKind::Warning,
        };
        let name = |f: FileId| sources.name(f).to_string();
        let clamp = |f: FileId, s: Span| {
            let len = sources.get(f).map(|s| s.text.len()).unwrap_or(0);
            let start = s.start.min(len);
            start..s.end.clamp(start, len)
        };
        let mut report = Report::build(
            kind,
            (
                name(self.primary.file),
                clamp(self.primary.file, self.primary.span),
            ),
        )
        .with_config(
            Config::default()
                .with_index_type(IndexType::Byte)
                .with_color(color),
        )
        .with_code(self.code.0)
        .with_message(&self.message);
        let mut primary = ALabel::new((
            name(self.primary.file),
            clamp(self.primary.file, self.primary.span),
        ))
        .with_order(0);
        if !self.primary.message.is_empty() {
            primary = primary.with_message(&self.primary.message);
        }
        if color {
            primary = primary.with_color(ariadne::Color::Red);
        }
        report = report.with_label(primary);
        for (i, l) in self.secondary.iter().enumerate() {
            let mut label =
                ALabel::new((name(l.file), clamp(l.file, l.span))).with_order(i as i32 + 1);
            if !l.message.is_empty() {
                label = label.with_message(&l.message);
            }
            if color {
                label = label.with_color(ariadne::Color::Blue);
            }
            report = report.with_label(label);
        }
        for n in &self.notes {
            report = report.with_note(n);
        }
        if let Some(h) = &self.help {
            report = report.with_help(h);
        }
        let cache = ariadne::sources(
            sources
                .iter()
                .map(|(_, s)| (s.name.clone(), s.text.clone())),
        );
        let mut out = Vec::new();
        if report.finish().write(cache, &mut out).is_err() {
            return self.plain_line(sources);
        }
        // The block's first line is the one-line form (`file:line:col:
        // error[CODE]: message`, as `--error-format short` prints it), so a
        // diagnostic is printed once and still found by its location.
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once('\n').map_or("", |(_, rest)| rest);
        let mut head = self.plain_line(sources);
        if color {
            let word = format!("{}[{}]", severity_word(self.severity), self.code.0);
            let paint = match self.severity {
                Severity::Error => "\x1b[1;31m",
                Severity::Warning => "\x1b[1;33m",
            };
            head = head.replacen(&word, &format!("{paint}{word}\x1b[0m"), 1);
        }
        format!("{head}\n{body}")
    }

    /// The machine-readable form (`--error-format json`).
    pub fn to_json(&self, sources: &Sources) -> serde_json::Value {
        let label = |l: &Label| {
            let (line, col) = sources
                .get(l.file)
                .map(|s| s.line_col(l.span.start))
                .unwrap_or((1, 1));
            let (end_line, end_col) = sources
                .get(l.file)
                .map(|s| s.line_col(l.span.end))
                .unwrap_or((1, 1));
            serde_json::json!({
                "file": sources.name(l.file),
                "start": l.span.start,
                "end": l.span.end,
                "line": line,
                "column": col,
                "end_line": end_line,
                "end_column": end_col,
                "message": l.message,
            })
        };
        serde_json::json!({
            "severity": self.severity,
            "code": self.code.0,
            "message": self.message,
            "primary": label(&self.primary),
            "secondary": self.secondary.iter().map(label).collect::<Vec<_>>(),
            "notes": self.notes,
            "help": self.help,
        })
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment), for
/// "did you mean" suggestions: `grop` is one edit from `grpo`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    if let Some(first) = d.first_mut() {
        for (j, cell) in first.iter_mut().enumerate() {
            *cell = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}
