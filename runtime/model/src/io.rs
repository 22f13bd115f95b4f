//! Files written so that a crash leaves the old or the new version, never
//! half of one (temporary file, fsync, rename), and weights as safetensors
//! files, written one tensor at a time and read back against a layout.

use std::borrow::Cow;
use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Kind};
use crate::transformer::{Params, Weights};

/// A file that cannot be created, written, synced or renamed.
pub fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::Io,
        format!("cannot {what} `{}`: {e}", path.display()),
        "check that the run directory is writable and the disk is not full",
    )
    .at(path.display().to_string())
}

/// Write bytes to `path` and fsync them.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = fs::File::create(path).map_err(|e| io_error("create", path, e))?;
    f.write_all(bytes).map_err(|e| io_error("write", path, e))?;
    f.sync_all().map_err(|e| io_error("sync", path, e))
}

/// Write `contents` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| io_error("rename into", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `write_weights_file` into a temporary file, then renamed into place.
pub fn write_weights_atomic(path: &Path, sets: &[(&str, Params)]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    write_weights_file(&tmp, sets)?;
    fs::rename(&tmp, path).map_err(|e| io_error("rename into", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// An f32 tensor whose little-endian bytes are made when the writer reaches
/// it: safetensors asks each view for its data in turn, so a file of a real
/// model is written holding one tensor's bytes at a time.
pub struct Lazy<'a> {
    shape: Vec<usize>,
    make: Box<dyn Fn() -> Cow<'a, [u8]> + 'a>,
}

impl<'a> Lazy<'a> {
    pub fn new(shape: Vec<usize>, make: impl Fn() -> Cow<'a, [u8]> + 'a) -> Lazy<'a> {
        Lazy {
            shape,
            make: Box::new(make),
        }
    }

    /// Values as f32 bytes (borrowed where they already are).
    pub fn bytes(v: Cow<'a, [f32]>) -> Cow<'a, [u8]> {
        if cfg!(target_endian = "big") {
            return Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
        match v {
            Cow::Borrowed(b) => Cow::Borrowed(bytemuck::cast_slice(b)),
            Cow::Owned(o) => Cow::Owned(bytemuck::cast_slice(&o).to_vec()),
        }
    }
}

impl View for &Lazy<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        (self.make)()
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Write named lazy tensors to `path` (with safetensors metadata `meta`)
/// and fsync the file.
pub fn write_lazy(
    path: &Path,
    tensors: &[(String, Lazy)],
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<(), Error> {
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta, path)
        .map_err(|e| io_error("write", path, e))?;
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("sync", path, e))
}

/// Write `sets` (each under its prefix) as a safetensors file at `path`
/// and fsync it, one tensor at a time: host weights are viewed as bytes in
/// place, live tensors copied to the host as they are written.
pub fn write_weights_file(path: &Path, sets: &[(&str, Params)]) -> Result<(), Error> {
    let mut tensors = Vec::new();
    for (prefix, w) in sets {
        for (i, (name, shape)) in w.names.iter().zip(w.shapes).enumerate() {
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let w = *w;
            tensors.push((
                full,
                Lazy::new(shape.to_vec(), move || Lazy::bytes(w.values(i))),
            ));
        }
    }
    write_lazy(path, &tensors, None)
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
            Kind::Weights,
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
                Kind::Weights,
                format!("the file has no tensor `{full}`"),
                "the weights must come from a model with the same `model` settings (d_model, layers, heads, vocabulary)",
            )
            .at(path.display().to_string())
        })?;
        if t.shape() != shape.as_slice() || t.dtype() != Dtype::F32 {
            return Err(Error::new(
                Kind::Weights,
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
