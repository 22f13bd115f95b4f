//! Sources. The compiler does no IO: every text comes through a [`SourceDb`],
//! so the CLI reads the disk, the language server reads unsaved buffers and
//! tests read strings.

use keel_grammar::Span;

/// An index into a [`Sources`] table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// Where module paths are looked up.
pub trait SourceDb: Sync {
    /// Load a file by a path relative to the importing file's directory (or
    /// absolute). `None` when it does not exist or cannot be read.
    fn load(&self, path: &str) -> Option<String>;
}

/// A `SourceDb` with no files: only the embedded stdlib resolves.
pub struct NoFiles;

impl SourceDb for NoFiles {
    fn load(&self, _path: &str) -> Option<String> {
        None
    }
}

/// One loaded text with its line starts.
#[derive(Clone, Debug)]
pub struct Source {
    /// The name shown in diagnostics (a path, or `std/grpo` for the stdlib).
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, col + 1)
    }

    /// The text of a span, or "" when the span is out of range.
    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or("")
    }
}

/// All the texts one compilation has seen.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<Source>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(Source::new(name, text));
        FileId(self.files.len() - 1)
    }
    pub fn get(&self, id: FileId) -> Option<&Source> {
        self.files.get(id.0)
    }
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name == name).map(FileId)
    }
    pub fn name(&self, id: FileId) -> &str {
        self.get(id).map(|s| s.name.as_str()).unwrap_or("<unknown>")
    }
    pub fn iter(&self) -> impl Iterator<Item = (FileId, &Source)> {
        self.files.iter().enumerate().map(|(i, s)| (FileId(i), s))
    }
}
