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
pub mod rollout;
pub mod sample;
pub mod settings;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::RunError;
pub mod report;

/// The device a run uses: burn's Flex CPU backend with autodiff, or with the
/// `cuda` feature the first CUDA GPU (unless `KEEL_DEVICE=cpu`).
pub fn default_device() -> burn::tensor::Device {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("KEEL_DEVICE").as_deref() != Ok("cpu") {
            return burn::tensor::Device::cuda(0).autodiff();
        }
    }
    burn::tensor::Device::flex().autodiff()
}
