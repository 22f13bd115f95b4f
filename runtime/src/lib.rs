//! `keel-runtime`: runs a recipe end to end — a transformer policy on burn,
//! built-in verifiable tasks, group rollouts with a KV cache, rewards and
//! schedules from the recipe's host code, the recipe's compiled loss and its
//! derived gradient fed back into burn's autodiff, AdamW, guards, atomic
//! checkpoints with exact resume, metrics and an offline HTML report.

pub mod checkpoint;
pub mod error;
pub mod hostprog;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sample;
pub mod settings;
pub mod tasks;
pub mod tokenizer;

pub use error::RunError;
