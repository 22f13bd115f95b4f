//! `keel-runtime`: runs a recipe end to end — its model (from
//! `keel-model`) trained by group rollouts from an environment, rewards and
//! schedules from the recipe's host code, the recipe's compiled loss and its
//! derived gradient fed back into burn's autodiff, AdamW, guards, atomic
//! checkpoints with exact resume, metrics and an offline HTML report.
//!
//! Rooms (top-level modules), each importing only those before it:
//!
//! | room | owns |
//! | --- | --- |
//! | [`error`], [`settings`] | the error codes; the recipe's constants with the schema's defaults |
//! | [`env`] | the `Environment` trait, its registry, one file per task |
//! | [`batch`] | rows of samples, the stored loss mask, the one table of inputs |
//! | [`rollout`] | group and branched sampling, judged by the environment |
//! | [`roles`] | models besides the policy that fill columns (the reference) |
//! | [`run`] | the training loop, its config, warm start, guards, the update behind `LossStep`, checkpoints, the run directory |
//! | [`report`] | `keel report`, `keel compare`, plots, reading runs through `run::dir` |
//!
//! `docs/architecture.md` has the rule at each boundary; `tests/examples.rs`
//! checks them.

pub mod batch;
pub mod env;
pub mod error;
pub mod report;
pub mod roles;
pub mod rollout;
pub mod run;
pub mod settings;

pub use error::Error;

/// The device a run uses: burn's Flex CPU backend with autodiff, or with the
/// `cuda` feature the first CUDA GPU (unless `KEEL_DEVICE=cpu`). A CUDA build
/// without a usable GPU is an error (E0708) that says how to use the CPU.
pub fn default_device() -> Result<burn::tensor::Device, Error> {
    let want = std::env::var("KEEL_DEVICE").unwrap_or_default();
    if !want.is_empty() && want != "cpu" && want != "cuda" {
        return Err(Error::new(
            error::codes::DEVICE,
            format!("KEEL_DEVICE={want} names no device"),
            "use KEEL_DEVICE=cpu or KEEL_DEVICE=cuda (a build with `--features cuda`)",
        ));
    }
    #[cfg(feature = "cuda")]
    {
        if want != "cpu" {
            return cuda_device();
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        if want == "cuda" {
            return Err(Error::new(
                error::codes::DEVICE,
                "this keel was built without CUDA",
                "build with `cargo build --release -p keel-cli --features cuda` (see docs/runtime.md), or unset KEEL_DEVICE",
            ));
        }
    }
    Ok(burn::tensor::Device::flex().autodiff())
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<burn::tensor::Device, Error> {
    // The CUDA runtime panics when no driver or GPU answers; probe once with
    // the panic message silenced and turn a failure into an error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let dev = burn::tensor::Device::cuda(0).autodiff();
        let t = burn::tensor::Tensor::<1>::zeros([1], &dev);
        let _ = t.into_data();
        dev
    });
    std::panic::set_hook(hook);
    probe.map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA runtime failed to start".into());
        Error::new(
            error::codes::DEVICE,
            format!("no usable CUDA device: {why}"),
            "check `nvidia-smi` and that libcuda and libnvrtc are on LD_LIBRARY_PATH, or run on the CPU with KEEL_DEVICE=cpu",
        )
    })
}
