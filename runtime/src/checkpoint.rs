//! Checkpoints: weights and optimizer moments as safetensors, the rest of the
//! training state as JSON; written into a temporary directory, fsynced, then
//! renamed into place, so a crash leaves either the old or the new checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, codes};
use crate::model::Weights;

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
    /// Per difficulty bucket: (correct, attempts) — the curriculum's online pass rates.
    pub pass_counts: Vec<(u64, u64)>,
}

pub fn bits(x: f64) -> u64 {
    x.to_bits()
}

pub fn unbits(x: u64) -> f64 {
    f64::from_bits(x)
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        codes::CHECKPOINT,
        format!("cannot {what} `{}`: {e}", path.display()),
        "check that the run directory is writable and the disk is not full",
    )
    .at(path.display().to_string())
}

/// Write bytes to `path` and fsync them.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = fs::File::create(path).map_err(|e| io_err("create", path, e))?;
    f.write_all(bytes).map_err(|e| io_err("write", path, e))?;
    f.sync_all().map_err(|e| io_err("sync", path, e))
}

/// Write `contents` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename into", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `write_weights_file` into a temporary file, then renamed into place.
pub fn write_weights_atomic(path: &Path, sets: &[(&str, &Weights)]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    write_weights_file(&tmp, sets)?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename into", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Write `sets` as a safetensors file at `path` and fsync it, streaming:
/// the tensors are viewed as bytes in place (no copy of a real model's
/// weights or moments, no serialised buffer), so a checkpoint needs no
/// memory beyond what the run holds.
pub fn write_weights_file(path: &Path, sets: &[(&str, &Weights)]) -> Result<(), Error> {
    let enc = |e: safetensors::SafeTensorError| {
        Error::new(
            codes::CHECKPOINT,
            format!("cannot encode weights: {e}"),
            "this is a runtime bug; please report it",
        )
    };
    let mut views: Vec<(String, TensorView)> = Vec::new();
    let mut owned: Vec<Vec<u8>> = Vec::new();
    // safetensors is little-endian; on a big-endian host the bytes are copied.
    if cfg!(target_endian = "big") {
        for (_, w) in sets {
            for d in &w.data {
                owned.push(d.iter().flat_map(|x| x.to_le_bytes()).collect());
            }
        }
    }
    let mut k = 0;
    for (prefix, w) in sets {
        for ((name, shape), data) in w.names.iter().zip(&w.shapes).zip(&w.data) {
            let bytes: &[u8] = match owned.get(k) {
                Some(b) => b,
                None => bytemuck::cast_slice(data),
            };
            k += 1;
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            views.push((
                full,
                TensorView::new(Dtype::F32, shape.to_vec(), bytes).map_err(enc)?,
            ));
        }
    }
    safetensors::serialize_to_file(views, &None, path).map_err(|e| io_err("write", path, e))?;
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("sync", path, e))
}

/// Read tensors `prefix.NAME` for every name of `like` (shapes must match).
pub fn weights_from_bytes(
    bytes: &[u8],
    prefix: &str,
    like: &Weights,
    path: &Path,
) -> Result<Weights, Error> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::new(
            codes::WEIGHTS,
            format!("not a safetensors file: {e}"),
            "pass a file written by `keel run` or another safetensors writer",
        )
        .at(path.display().to_string())
    })?;
    let mut data = Vec::new();
    for (name, shape) in like.names.iter().zip(&like.shapes) {
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let t = st.tensor(&full).map_err(|_| {
            Error::new(
                codes::WEIGHTS,
                format!("the file has no tensor `{full}`"),
                "the weights must come from a model with the same `model` settings (d_model, layers, heads, vocabulary)",
            )
            .at(path.display().to_string())
        })?;
        if t.shape() != shape.as_slice() || t.dtype() != Dtype::F32 {
            return Err(Error::new(
                codes::WEIGHTS,
                format!("tensor `{full}` is {:?} {:?}, expected F32 {:?}", t.dtype(), t.shape(), shape),
                "the weights must come from a model with the same `model` settings (d_model, layers, heads, vocabulary)",
            )
            .at(path.display().to_string()));
        }
        data.push(
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Ok(Weights {
        names: like.names.clone(),
        shapes: like.shapes.clone(),
        data,
    })
}

pub struct Checkpoint {
    pub state: TrainState,
    pub weights: Weights,
    pub m: Weights,
    pub v: Weights,
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// Save into `root/step-NNNNNNN/` and keep only the newest `keep`.
pub fn save(root: &Path, ck: &Checkpoint, keep: usize) -> Result<PathBuf, Error> {
    fs::create_dir_all(root).map_err(|e| io_err("create", root, e))?;
    let name = dir_name(ck.state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| io_err("create", &tmp, e))?;
    write_weights_file(&tmp.join("weights.safetensors"), &[("", &ck.weights)])?;
    write_weights_file(
        &tmp.join("optimizer.safetensors"),
        &[("m", &ck.m), ("v", &ck.v)],
    )?;
    let json = serde_json::to_vec_pretty(&ck.state).map_err(|e| io_err("encode", &tmp, e))?;
    write_synced(&tmp.join("state.json"), &json)?;
    sync_dir(&tmp);
    let dest = root.join(&name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| io_err("rename into", &dest, e))?;
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

pub fn load(dir: &Path, like: &Weights) -> Result<Checkpoint, Error> {
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read(&p).map_err(|e| io_err("read", &p, e))
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
    let weights = weights_from_bytes(&read("weights.safetensors")?, "", like, &wp)?;
    let op = dir.join("optimizer.safetensors");
    let ob = read("optimizer.safetensors")?;
    let m = weights_from_bytes(&ob, "m", like, &op)?;
    let v = weights_from_bytes(&ob, "v", like, &op)?;
    Ok(Checkpoint {
        state,
        weights,
        m,
        v,
    })
}
