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

/// Codes; their long explanations live in docs/errors.md (`keel explain`).
pub mod codes {
    use keel_compiler::codes as c;
    pub const DATA_UNREADABLE: &str = c::DATA_UNREADABLE.0;
    pub const DATA_RECORD: &str = c::DATA_RECORD.0;
    pub const TASK_SETTING: &str = c::TASK_SETTING.0;
    pub const MODEL_SETTING: &str = c::MODEL_SETTING.0;
    pub const CHECKPOINT: &str = c::RUN_DIR.0;
    pub const RESUME_MISMATCH: &str = c::RESUME_MISMATCH.0;
    pub const LOSS_PROGRAM: &str = c::RUNTIME_INPUT.0;
    pub const WEIGHTS: &str = c::WEIGHTS.0;
    pub const DEVICE: &str = c::DEVICE.0;
    pub const TOO_LARGE: &str = c::TOO_LARGE.0;
}

pub type Result<T> = std::result::Result<T, RunError>;
