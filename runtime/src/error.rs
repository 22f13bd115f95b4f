//! Runtime errors: a stable code (listed in docs/errors.md, `keel explain
//! CODE`), what went wrong, where (a file and line, or a recipe key), and what
//! to do.

use std::fmt;

#[derive(Clone, Debug)]
pub struct RunError {
    pub code: &'static str,
    pub message: String,
    /// `path:line`, a file, or a recipe setting such as `task.path`.
    pub location: Option<String>,
    pub help: String,
    /// Located compiler diagnostics behind this error (rendered against the
    /// recipe's sources by the CLI).
    pub diagnostics: Vec<keel_compiler::Diagnostic>,
}

impl RunError {
    pub fn new(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        RunError {
            code,
            message: message.into(),
            location: None,
            help: help.into(),
            diagnostics: Vec::new(),
        }
    }

    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => writeln!(f, "{l}: error[{}]: {}", self.code, self.message)?,
            None => writeln!(f, "error[{}]: {}", self.code, self.message)?,
        }
        write!(f, "  = help: {}", self.help)
    }
}

impl std::error::Error for RunError {}

/// Codes; their long explanations live in docs/errors.md.
pub mod codes {
    /// A task data file is missing or unreadable.
    pub const DATA_UNREADABLE: &str = "E0700";
    /// A line of a JSONL task file is not a valid record.
    pub const DATA_RECORD: &str = "E0701";
    /// A task setting is invalid (unknown verifier pattern, text outside the tokenizer).
    pub const TASK_SETTING: &str = "E0702";
    /// The model settings do not fit (heads, context).
    pub const MODEL_SETTING: &str = "E0703";
    /// A run directory or checkpoint cannot be written or read.
    pub const CHECKPOINT: &str = "E0704";
    /// `--resume` names a run of a different recipe or settings.
    pub const RESUME_MISMATCH: &str = "E0705";
    /// The recipe's loss cannot be evaluated on the runtime's batch.
    pub const LOSS_PROGRAM: &str = "E0706";
    /// A weights file (`model.init`) does not match the model.
    pub const WEIGHTS: &str = "E0707";
}

pub type Result<T> = std::result::Result<T, RunError>;
