//! Runtime errors are Keel's one error type, [`keel_compiler::Error`]: a
//! stable code (listed in docs/errors.md, `keel explain CODE`), what went
//! wrong, where (a file and line, or a recipe key), and what to do.

pub use keel_compiler::Error;

/// The codes the runtime reports, by what they mean to it; their long
/// explanations live in docs/errors.md (`keel explain`).
pub mod codes {
    use keel_compiler::codes::{self as c, Code};
    pub const DATA_UNREADABLE: Code = c::DATA_UNREADABLE;
    pub const DATA_RECORD: Code = c::DATA_RECORD;
    pub const TASK_SETTING: Code = c::TASK_SETTING;
    pub const MODEL_SETTING: Code = c::MODEL_SETTING;
    pub const CHECKPOINT: Code = c::RUN_DIR;
    pub const RESUME_MISMATCH: Code = c::RESUME_MISMATCH;
    pub const LOSS_PROGRAM: Code = c::RUNTIME_INPUT;
    pub const WEIGHTS: Code = c::WEIGHTS;
    pub const CHECKPOINT_FORMAT: Code = c::CHECKPOINT_FORMAT;
    pub const DEVICE: Code = c::DEVICE;
    pub const TOO_LARGE: Code = c::TOO_LARGE;
}

pub type Result<T> = std::result::Result<T, Error>;
