//! `keel-model`: the models a run trains and reads, and the files they come
//! from. It links no compiler crate: nothing here knows what a recipe is.
//!
//! - [`transformer`]: the decoder-only transformer every role uses (policy,
//!   reference, warm start, `keel inspect`): a trunk that returns hidden
//!   states, and heads on it; the KV cache.
//! - [`sample`]: the sampler (temperature, top-p by partial selection, the
//!   draw) over the KV cache.
//! - [`optim`]: AdamW and gradient clipping over any list of weights.
//! - [`rng`]: SplitMix64, and FNV-1a.
//! - [`tokenizer`], [`chat`]: character and Hugging Face tokenizers, chat
//!   templates rendered as transformers renders them (they take messages).
//! - [`io`], [`family`], [`hf`], [`gguf`], [`pretrained`]: atomic files and
//!   safetensors weights; the one table of model families; Hugging Face
//!   directories read and written; GGUF files dequantized; either opened
//!   with its tokenizer and chat template.
//!
//! Errors are [`Error`]s with a [`error::Kind`]; the runtime gives each kind
//! its stable code.

pub mod chat;
pub mod error;
pub mod family;
pub mod gguf;
pub mod hf;
pub mod io;
pub mod optim;
pub mod pretrained;
pub mod rng;
pub mod sample;
pub mod tokenizer;
pub mod transformer;

pub use error::{Error, Kind};
