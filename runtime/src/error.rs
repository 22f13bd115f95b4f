//! Runtime errors are Keel's one error type, [`keel_compiler::Error`]: a
//! stable code (listed in docs/errors.md, `keel explain CODE`), what went
//! wrong, where (a file and line, or a recipe key), and what to do. Errors
//! of `keel-model` (which knows no codes) get theirs here, in one place
//! ([`from_model`]).

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
    pub const JUDGE: Code = c::JUDGE;
}

pub type Result<T> = std::result::Result<T, Error>;

/// The code of each kind of model error.
pub fn code_of(kind: keel_model::Kind) -> keel_compiler::codes::Code {
    use keel_model::Kind;
    match kind {
        Kind::CheckpointFormat => codes::CHECKPOINT_FORMAT,
        Kind::Weights => codes::WEIGHTS,
        Kind::ModelSetting => codes::MODEL_SETTING,
        Kind::Io => codes::CHECKPOINT,
    }
}

/// A model, tokenizer or checkpoint-file error with its code.
pub fn from_model(e: keel_model::Error) -> Error {
    let out = Error::new(code_of(e.kind), e.message, e.help);
    match e.location {
        Some(at) => out.at(at),
        None => out,
    }
}

/// `?` on `keel-model`'s results: `model_call().coded()?`.
pub trait Coded<T> {
    fn coded(self) -> Result<T>;
}

impl<T> Coded<T> for std::result::Result<T, keel_model::Error> {
    fn coded(self) -> Result<T> {
        self.map_err(from_model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of model error has a code of the error index.
    #[test]
    fn every_model_error_kind_has_an_indexed_code() {
        for kind in keel_model::Kind::ALL {
            let code = code_of(kind);
            assert!(
                keel_compiler::codes::ALL.iter().any(|(c, _)| *c == code),
                "{kind:?} → {}",
                code.0
            );
        }
        let e = from_model(keel_model::Error::new(keel_model::Kind::Weights, "m", "h").at("f"));
        assert_eq!(
            (
                e.code,
                e.message.as_str(),
                e.help.as_str(),
                e.location.as_deref()
            ),
            (codes::WEIGHTS, "m", "h", Some("f"))
        );
    }
}
