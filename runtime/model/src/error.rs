//! What goes wrong in a model, a tokenizer or a checkpoint file: the kind
//! of failure, what happened, where (a file, `file: key`), and what to do.
//! This crate links no compiler crate, so it gives no error codes: the
//! runtime maps each [`Kind`] to its stable code (`keel explain CODE`).

use std::fmt;

/// What failed, as the user sees it (one stable error code each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A checkpoint's config, metadata, tensors, tokenizer or chat
    /// template that Keel cannot read or run.
    CheckpointFormat,
    /// A weights file that does not fit the model (missing tensor, shape).
    Weights,
    /// A model shape that cannot be built (heads that do not divide the width).
    ModelSetting,
    /// A file that cannot be created, written, synced or renamed.
    Io,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::CheckpointFormat,
        Kind::Weights,
        Kind::ModelSetting,
        Kind::Io,
    ];
}

#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    /// A file, or `file: key` inside it.
    pub location: Option<String>,
    /// What to do about it.
    pub help: String,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>, help: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            location: None,
            help: help.into(),
        }
    }

    /// Where it went wrong: a file, or `file: key`.
    pub fn at(mut self, location: impl Into<String>) -> Error {
        self.location = Some(location.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        write!(f, "{}", self.message)?;
        if !self.help.is_empty() {
            write!(f, "\n  = help: {}", self.help)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
