//! A run directory's layout, written once: what `keel run` writes and
//! `keel report`, `keel compare` and `--resume` read (docs/runtime.md).
//!
//! ```text
//! RUN_DIR/run.json                 the recipe, its --set values, a fingerprint
//! RUN_DIR/metrics.jsonl            one JSON object a step (metric names below)
//! RUN_DIR/samples.jsonl            `--log-samples N`: N trajectories a step
//! RUN_DIR/checkpoints/step-NNNNNNN/ weights, optimizer moments, state
//! RUN_DIR/final.safetensors        the last weights
//! RUN_DIR/final-hf/                a pretrained model's weights as HF loads them
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result, from_model};

pub const RUN_FILE: &str = "run.json";
pub const METRICS: &str = "metrics.jsonl";
pub const SAMPLES: &str = "samples.jsonl";
pub const CHECKPOINTS: &str = "checkpoints";
pub const FINAL: &str = "final.safetensors";
pub const FINAL_HF: &str = "final-hf";

/// The metric names of `metrics.jsonl` that readers look up by name.
pub mod metric {
    pub const STEP: &str = "step";
    pub const PHASE: &str = "phase";
    pub const EVENTS: &str = "events";
    /// `pass_at_1`, `pass_at_K` (K = `eval.k`).
    pub const PASS_AT: &str = "pass_at_";
    pub const PASS_AT_1: &str = "pass_at_1";
    /// A distillation run's teacher, measured once before RL.
    pub const TEACHER_PASS_AT_1: &str = "teacher_pass_at_1";
    pub const REWARD: &str = "reward_mean";
    pub const CORRECT: &str = "correct_mean";
    pub const FORMAT_OK: &str = "format_ok";
    pub const ENTROPY: &str = "entropy_mean";
    pub const RESPONSE_LEN: &str = "response_len";
    pub const KL_REF: &str = "kl_ref";
    pub const LR: &str = "lr";
    pub const LOSS: &str = "loss";
    pub const GRAD_NORM: &str = "grad_norm";
    pub const CLIP_FRAC: &str = "clip_frac";
    pub const Z_LOSS: &str = "z_loss";
    /// Samples the external judge failed on, scored 0 (`--judge-failures skip`).
    pub const JUDGE_SKIPPED: &str = "judge_skipped";
    /// The critic's loss (`critic.loss` reduced) and its gradient's norm.
    pub const VALUE_LOSS: &str = "value_loss";
    pub const CRITIC_GRAD_NORM: &str = "critic_grad_norm";
    pub const SKIPPED: &str = "skipped";
    pub const ROLLED_BACK_TO: &str = "rolled_back_to";
    pub const SAMPLES: &str = "samples";
    pub const TOKENS: &str = "tokens";
    /// `monitor.NAME`: the recipe's monitors.
    pub const MONITOR: &str = "monitor.";
    pub const WARM_S: &str = "warm_s";
    /// Wall-clock figures (the only fields that differ between identical runs).
    pub const ROLLOUT_S: &str = "rollout_s";
    pub const TRAIN_S: &str = "train_s";
    pub const TOKENS_PER_S: &str = "tokens_per_s";

    /// `pass_at_K`.
    pub fn pass_at(k: usize) -> String {
        format!("{PASS_AT}{k}")
    }
}

/// The paths of one run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir {
            root: root.to_path_buf(),
        }
    }
    pub fn run_file(&self) -> PathBuf {
        self.root.join(RUN_FILE)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }
    pub fn samples(&self) -> PathBuf {
        self.root.join(SAMPLES)
    }
    /// Every answer of the external judge (`--judge`), replayed on resume.
    pub fn judge_record(&self) -> PathBuf {
        self.root.join("judge.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }
    pub fn final_weights(&self) -> PathBuf {
        self.root.join(FINAL)
    }
    pub fn final_hf(&self) -> PathBuf {
        self.root.join(FINAL_HF)
    }
}

/// An IO error on the run directory or the cache.
pub fn io_error(what: &str, p: &Path, e: impl std::fmt::Display) -> Error {
    from_model(keel_model::io::io_error(what, p, e))
}

/// Append one line to `metrics.jsonl` and sync it.
pub fn write_line(f: &mut fs::File, line: &Map<String, Value>, path: &Path) -> Result<()> {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    f.write_all(s.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| io_error("write", path, e))
}

/// Keep the first `n` lines of a file.
pub fn truncate_lines(path: &Path, n: u64) -> Result<()> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .take(n as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    keel_model::io::write_atomic(path, kept.as_bytes()).map_err(from_model)
}

/// A finite number, or null (JSON has no NaN).
pub fn json_num(x: f64) -> Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        Value::Null
    }
}
