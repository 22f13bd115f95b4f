//! The one error type for what goes wrong outside a recipe's own text: a
//! batch, a data file, a checkpoint, an executor, a device, a run directory.
//! Like a [`Diagnostic`] it carries a stable code (`keel explain CODE`), what
//! went wrong and what to do; instead of a span it names a place (a file and
//! line, a file, or a recipe setting), and it can carry the located
//! diagnostics behind it, which a caller renders against the recipe's
//! sources. Every stage returns it; nothing formats a help line into a
//! message.

use crate::Diagnostic;
use crate::codes::Code;
use std::fmt;

#[derive(Clone, Debug)]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// `path:line`, a file, or a recipe setting such as `task.path`.
    pub location: Option<String>,
    /// What to do about it.
    pub help: String,
    /// Located diagnostics behind this error, in the recipe's sources.
    pub diagnostics: Vec<Diagnostic>,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>, help: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            location: None,
            help: help.into(),
            diagnostics: Vec::new(),
        }
    }

    /// Where it went wrong: `path:line`, a file, or a recipe setting.
    pub fn at(mut self, location: impl Into<String>) -> Error {
        self.location = Some(location.into());
        self
    }

    /// A different help line (a caller knows better what to do).
    pub fn with_help(mut self, help: impl Into<String>) -> Error {
        self.help = help.into();
        self
    }

    pub fn with_diagnostics(mut self, diagnostics: Vec<Diagnostic>) -> Error {
        self.diagnostics = diagnostics;
        self
    }

    /// Whether one of the diagnostics behind it already says the same (its
    /// code), so that printing both would repeat it.
    pub fn told_by_diagnostics(&self) -> bool {
        self.diagnostics.iter().any(|d| d.code == self.code)
    }

    /// The machine-readable form (`--error-format json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.code.0,
            "severity": "error",
            "message": self.message,
            "location": self.location,
            "help": self.help,
        })
    }
}

/// `location: error[CODE]: message` and, on the next line, `  = help: …`
/// (rustc's form).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        write!(f, "error[{}]: {}", self.code.0, self.message)?;
        if !self.help.is_empty() {
            write!(f, "\n  = help: {}", self.help)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;

    #[test]
    fn prints_location_code_message_and_help_like_rustc() {
        let e = Error::new(codes::RUN_DIR, "cannot open `x`", "check the directory")
            .at("runs/a/metrics.jsonl");
        assert_eq!(
            e.to_string(),
            "runs/a/metrics.jsonl: error[E0704]: cannot open `x`\n  = help: check the directory"
        );
        let bare = Error::new(codes::DEVICE, "no device", "");
        assert_eq!(bare.to_string(), "error[E0708]: no device");
        assert_eq!(bare.to_json()["code"], "E0708");
        assert_eq!(e.to_json()["location"], "runs/a/metrics.jsonl");
    }
}
