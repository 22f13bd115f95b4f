//! Checkpoints: weights and optimizer moments as safetensors, the rest of the
//! training state as JSON; written into a temporary directory, fsynced, then
//! renamed into place, so a crash leaves either the old or the new checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use keel_model::io::{sync_dir, weights_from_bytes, write_synced, write_weights_file};
use keel_model::transformer::{Params, Weights};
use serde::{Deserialize, Serialize};

use crate::error::{Coded, Error, codes};

/// Everything but the tensors. Floats are stored as their bit patterns so a
/// resumed run sees exactly the values it saved (NaN and infinity included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The last completed RL step.
    pub step: u64,
    /// Problems consumed from the training stream.
    pub cursor: u64,
    pub rng: u64,
    pub adam_t: u64,
    /// `state.NAME` values of the recipe.
    pub host_state: BTreeMap<String, u64>,
    /// Hyperparameters changed by guards (`Param` name → value bits).
    pub overrides: BTreeMap<String, u64>,
    /// Computed values adjusted by guards: name → (scale bits, offset bits).
    pub adjust: BTreeMap<String, (u64, u64)>,
    /// Consecutive steps each guard's condition has held.
    pub guard_run: BTreeMap<String, u64>,
    /// Lines of metrics.jsonl written when this checkpoint was taken.
    pub metrics_lines: u64,
    /// Lines of samples.jsonl written when this checkpoint was taken
    /// (`--log-samples`; absent from checkpoints of older runs).
    #[serde(default)]
    pub samples_lines: u64,
    /// Per difficulty bucket: (correct, attempts) — the curriculum's online pass rates.
    pub pass_counts: Vec<(u64, u64)>,
    /// The critic's AdamW update count (absent from runs without one).
    #[serde(default)]
    pub critic_adam_t: u64,
}

pub fn bits(x: f64) -> u64 {
    x.to_bits()
}

pub fn unbits(x: u64) -> f64 {
    f64::from_bits(x)
}

/// A checkpoint as read back.
pub struct Checkpoint {
    pub state: TrainState,
    pub weights: Weights,
    pub m: Weights,
    pub v: Weights,
}

/// A role's weights and moments in a checkpoint (`critic.safetensors`):
/// read back as (weights, m, v).
pub type RoleState = (Weights, Weights, Weights);

/// The critic's file in a checkpoint directory.
pub const CRITIC_FILE: &str = "critic.safetensors";

pub fn dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// Save `state`, the weights and AdamW's moments into
/// `root/step-NNNNNNN/` (written from where they live, one tensor at a
/// time) and keep only the newest `keep`.
pub fn save(
    root: &Path,
    state: &TrainState,
    (weights, m, v): (Params, Params, Params),
    critic: Option<(Params, Params, Params)>,
    keep: usize,
) -> Result<PathBuf, Error> {
    fs::create_dir_all(root).map_err(|e| super::dir::io_error("create", root, e))?;
    let name = dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| super::dir::io_error("create", &tmp, e))?;
    write_weights_file(&tmp.join("weights.safetensors"), &[("", weights)]).coded()?;
    // Before AdamW's first update its moments are zeros by definition: a
    // step-0 checkpoint has no optimizer file (a real model's would be
    // twice its weights' size in zeros).
    if state.adam_t > 0 {
        write_weights_file(&tmp.join("optimizer.safetensors"), &[("m", m), ("v", v)]).coded()?;
    }
    // The critic: weights and moments in one file of its own (the policy's
    // `weights.safetensors` becomes `final.safetensors`).
    if let Some((w, m, v)) = critic {
        write_weights_file(&tmp.join(CRITIC_FILE), &[("w", w), ("m", m), ("v", v)]).coded()?;
    }
    let json =
        serde_json::to_vec_pretty(state).map_err(|e| super::dir::io_error("encode", &tmp, e))?;
    write_synced(&tmp.join("state.json"), &json).coded()?;
    sync_dir(&tmp);
    let dest = root.join(&name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| super::dir::io_error("rename into", &dest, e))?;
    sync_dir(root);
    let mut all = list(root);
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        let _ = fs::remove_dir_all(old);
    }
    Ok(dest)
}

/// Checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            let step = n.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The critic's weights and moments of the checkpoint in `dir`, read
/// against `like` (its layout).
pub fn load_critic(dir: &Path, like: &Weights) -> Result<RoleState, Error> {
    let p = dir.join(CRITIC_FILE);
    let bytes = fs::read(&p).map_err(|e| super::dir::io_error("read", &p, e))?;
    Ok((
        weights_from_bytes(&bytes, "w", like, &p).coded()?,
        weights_from_bytes(&bytes, "m", like, &p).coded()?,
        weights_from_bytes(&bytes, "v", like, &p).coded()?,
    ))
}

pub fn load(dir: &Path, like: &Weights) -> Result<Checkpoint, Error> {
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read(&p).map_err(|e| super::dir::io_error("read", &p, e))
    };
    let state: TrainState = serde_json::from_slice(&read("state.json")?).map_err(|e| {
        Error::new(
            codes::CHECKPOINT,
            format!("damaged checkpoint state: {e}"),
            "resume from an older checkpoint or start a new run",
        )
        .at(dir.join("state.json").display().to_string())
    })?;
    let wp = dir.join("weights.safetensors");
    let weights = weights_from_bytes(&read("weights.safetensors")?, "", like, &wp).coded()?;
    let op = dir.join("optimizer.safetensors");
    let (m, v) = if state.adam_t == 0 && !op.exists() {
        let zeros = || Weights {
            names: like.names.clone(),
            shapes: like.shapes.clone(),
            data: like.shapes.iter().map(|[r, c]| vec![0.0; r * c]).collect(),
        };
        (zeros(), zeros())
    } else {
        let ob = read("optimizer.safetensors")?;
        (
            weights_from_bytes(&ob, "m", like, &op).coded()?,
            weights_from_bytes(&ob, "v", like, &op).coded()?,
        )
    };
    Ok(Checkpoint {
        state,
        weights,
        m,
        v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint reads back what it saved; before AdamW's first update it
    /// has no optimizer file and its moments read back as zeros.
    #[test]
    fn step_zero_has_no_optimizer_file_and_reads_back_zero_moments() {
        let root = std::env::temp_dir().join(format!("keel-ck-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let w = Weights {
            names: vec!["a".into(), "b".into()],
            shapes: vec![[1, 3], [2, 2]],
            data: vec![vec![1.0, -2.0, 3.5], vec![0.25, 0.5, f32::NAN, 4.0]],
        };
        let m = Weights {
            data: vec![vec![0.1; 3], vec![0.2; 4]],
            ..w.clone()
        };
        let v = Weights {
            data: vec![vec![0.3; 3], vec![0.4; 4]],
            ..w.clone()
        };
        let mut state = TrainState::default();
        let dir = save(&root, &state, (w.view(), m.view(), v.view()), None, 3).expect("save");
        assert!(dir.join("weights.safetensors").exists());
        assert!(!dir.join("optimizer.safetensors").exists());
        let ck = load(&dir, &w.layout()).expect("load");
        assert_eq!(ck.weights.data[0], w.data[0]);
        assert!(ck.weights.data[1][2].is_nan());
        assert_eq!(ck.m.data, vec![vec![0.0; 3], vec![0.0; 4]]);
        assert_eq!(ck.v.data, ck.m.data);
        state.step = 1;
        state.adam_t = 1;
        let dir = save(
            &root,
            &state,
            (w.view(), m.view(), v.view()),
            Some((v.view(), w.view(), m.view())),
            3,
        )
        .expect("save");
        let ck = load(&dir, &w.layout()).expect("load");
        assert_eq!(
            (ck.m, ck.v.clone(), ck.state),
            (m.clone(), v.clone(), state)
        );
        // A critic's file holds its weights and moments under their own names.
        let (cw, cm, cv) = load_critic(&dir, &w.layout()).expect("critic");
        assert_eq!((cw, cv.data), (v, m.data));
        // (NaN != NaN: compare the bits' printout.)
        assert_eq!(format!("{:?}", cm.data), format!("{:?}", w.data));
        let _ = fs::remove_dir_all(&root);
    }
}
