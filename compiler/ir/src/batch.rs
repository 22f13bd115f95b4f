//! Loss batches: reading and writing safetensors files, and checking a batch
//! against what a compiled recipe reads (`docs/batch-format.md`).
//!
//! Every problem is a diagnostic that names the tensor, the expected and the
//! found dtype or shape, and points at the recipe line that reads the input.

use crate::builtins::{self, Level};
use crate::check::CheckedRecipe;
use crate::codes::{self, Code};
use crate::diagnostic::{Diagnostic, Label};
use crate::interp::Shape;
use crate::ir::{Graph, Op};
use crate::source::FileId;
use keel_grammar::Span;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// A logits element: f32, or bf16 stored as its upper 16 bits.
pub trait Elem: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

/// A bf16 value (the upper half of an f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bf16(pub u16);

impl Elem for Bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl Bf16 {
    /// Round to nearest even.
    pub fn from_f32(x: f32) -> Bf16 {
        let b = x.to_bits();
        let round = ((b >> 16) & 1) + 0x7FFF;
        Bf16((b.wrapping_add(round) >> 16) as u16)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Values,
}

/// A tensor's values, flat. A file's bf16 tensors are held as bf16 (a
/// [B, T, V] logits tensor costs 2 bytes an entry), its f32 and f16 ones as
/// f32 (each f16 value is exact in f32), everything else (f64, integers,
/// masks) as f64.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bf16(Vec<Bf16>),
}

/// Borrowed [`Values`].
#[derive(Clone, Copy, Debug)]
pub enum View<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bf16(&'a [Bf16]),
}

impl Values {
    pub fn len(&self) -> usize {
        self.view().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn view(&self) -> View<'_> {
        match self {
            Values::F32(v) => View::F32(v),
            Values::F64(v) => View::F64(v),
            Values::Bf16(v) => View::Bf16(v),
        }
    }
    /// Element `i` as f64.
    pub fn get(&self, i: usize) -> Option<f64> {
        self.view().get(i)
    }
    /// Set element `i` (rounded to f32 or bf16 in a narrower tensor); out of
    /// range: nothing.
    pub fn set(&mut self, i: usize, x: f64) {
        match self {
            Values::Bf16(v) => {
                if let Some(o) = v.get_mut(i) {
                    *o = Bf16::from_f32(x as f32);
                }
            }
            Values::F32(v) => {
                if let Some(o) = v.get_mut(i) {
                    *o = x as f32;
                }
            }
            Values::F64(v) => {
                if let Some(o) = v.get_mut(i) {
                    *o = x;
                }
            }
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.view().iter()
    }
    /// The values as f64 (a copy).
    pub fn to_f64(&self) -> Vec<f64> {
        self.iter().collect()
    }
    /// The values as f64 (f64 ones handed over, not copied).
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            Values::F64(v) => v,
            other => other.to_f64(),
        }
    }
}

impl<'a> View<'a> {
    pub fn len(&self) -> usize {
        match self {
            View::F32(v) => v.len(),
            View::F64(v) => v.len(),
            View::Bf16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            View::F32(v) => v.get(i).map(|&x| x as f64),
            View::F64(v) => v.get(i).copied(),
            View::Bf16(v) => v.get(i).map(|x| x.f32() as f64),
        }
    }
    pub fn iter(self) -> impl Iterator<Item = f64> + 'a {
        let (a, b, c) = match self {
            View::F32(v) => (Some(v.iter().map(|&x| x as f64)), None, None),
            View::F64(v) => (None, Some(v.iter().copied()), None),
            View::Bf16(v) => (None, None, Some(v.iter().map(|x| x.f32() as f64))),
        };
        a.into_iter()
            .flatten()
            .chain(b.into_iter().flatten())
            .chain(c.into_iter().flatten())
    }
    /// Elements `i0..i0 + out.len()` as f64 into `out` (NaN past the end).
    #[inline(always)]
    pub fn widen(&self, i0: usize, out: &mut [f64]) {
        let c = out.len();
        match self {
            View::F64(s) if i0 + c <= s.len() => out.copy_from_slice(&s[i0..i0 + c]),
            View::F32(s) if i0 + c <= s.len() => {
                for (o, x) in out.iter_mut().zip(&s[i0..i0 + c]) {
                    *o = *x as f64;
                }
            }
            View::Bf16(s) if i0 + c <= s.len() => {
                for (o, x) in out.iter_mut().zip(&s[i0..i0 + c]) {
                    *o = x.f32() as f64;
                }
            }
            _ => out.fill(f64::NAN),
        }
    }
}

/// A batch file's tensors ([`Values`]).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tensors: BTreeMap<String, Tensor>,
}

fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(&c[..N]);
    b
}

impl Batch {
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Parse a safetensors file's bytes; an unreadable file is E0604.
    pub fn from_bytes(bytes: &[u8]) -> Result<Batch, crate::Error> {
        let unreadable = |message: String| {
            crate::Error::new(
                keel_check::codes::BATCH_UNREADABLE,
                message,
                "a batch is a safetensors file; see docs/batch-format.md",
            )
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| unreadable(format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let f64s = |size: usize, f: &dyn Fn(&[u8]) -> f64| -> Values {
                Values::F64(raw.chunks_exact(size).map(f).collect())
            };
            let f32s = |size: usize, f: &dyn Fn(&[u8]) -> f32| -> Values {
                Values::F32(raw.chunks_exact(size).map(f).collect())
            };
            let (dtype, data): (&str, Values) = match view.dtype() {
                Dtype::F32 => ("f32", f32s(4, &|c| f32::from_le_bytes(le(c)))),
                Dtype::F64 => ("f64", f64s(8, &|c| f64::from_le_bytes(le(c)))),
                Dtype::BF16 => (
                    "bf16",
                    Values::Bf16(
                        raw.chunks_exact(2)
                            .map(|c| Bf16(u16::from_le_bytes(le(c))))
                            .collect(),
                    ),
                ),
                Dtype::F16 => (
                    "f16",
                    f32s(2, &|c| f16_to_f64(u16::from_le_bytes(le(c))) as f32),
                ),
                Dtype::U8 => ("u8", f64s(1, &|c| c[0] as f64)),
                Dtype::BOOL => ("bool", f64s(1, &|c| f64::from(u8::from(c[0] != 0)))),
                Dtype::I64 => ("i64", f64s(8, &|c| i64::from_le_bytes(le(c)) as f64)),
                Dtype::I32 => ("i32", f64s(4, &|c| i32::from_le_bytes(le(c)) as f64)),
                other => {
                    return Err(unreadable(format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )));
                }
            };
            tensors.insert(
                name.to_string(),
                Tensor {
                    dtype: dtype.to_string(),
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Batch { tensors })
    }

    /// Add a tensor held as f64.
    pub fn insert(&mut self, name: &str, dtype: &str, shape: Vec<usize>, data: Vec<f64>) {
        self.insert_values(name, dtype, shape, Values::F64(data));
    }

    /// Add a tensor held as f32 (4 bytes an entry).
    pub fn insert_f32(&mut self, name: &str, dtype: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.insert_values(name, dtype, shape, Values::F32(data));
    }

    pub fn insert_values(&mut self, name: &str, dtype: &str, shape: Vec<usize>, data: Values) {
        self.tensors.insert(
            name.to_string(),
            Tensor {
                dtype: dtype.to_string(),
                shape,
                data,
            },
        );
    }

    /// The tensors' bytes in their recorded dtype (`f32`, `f64`, `i64`,
    /// `u8`): an f32 tensor held as f32 is borrowed, not copied (on
    /// little-endian machines).
    fn encoded(&self) -> Vec<Encoded<'_>> {
        let mut bufs = Vec::new();
        for (name, t) in &self.tensors {
            let (dt, bytes): (Dtype, Cow<[u8]>) = match (t.dtype.as_str(), &t.data) {
                ("f64", d) => (Dtype::F64, d.iter().flat_map(|x| x.to_le_bytes()).collect()),
                ("i64", d) => (
                    Dtype::I64,
                    d.iter().flat_map(|x| (x as i64).to_le_bytes()).collect(),
                ),
                ("u8" | "bool", d) => (Dtype::U8, d.iter().map(|x| x as u8).collect()),
                #[cfg(target_endian = "little")]
                (_, Values::F32(v)) => (Dtype::F32, Cow::Borrowed(bytemuck::cast_slice(v))),
                (_, d) => (
                    Dtype::F32,
                    d.iter().flat_map(|x| (x as f32).to_le_bytes()).collect(),
                ),
            };
            bufs.push((name.clone(), dt, t.shape.clone(), bytes));
        }
        bufs
    }

    /// The tensors as safetensors views in their recorded dtype (an f32
    /// tensor held as f32 borrowed, not copied), handed to `f`: the caller
    /// writes them where it wants (`safetensors::tensor::serialize_to_file`
    /// streams them to a file without a copy of the whole file).
    pub fn with_views<R>(
        &self,
        f: impl FnOnce(Vec<(String, safetensors::tensor::TensorView<'_>)>) -> R,
    ) -> Result<R, String> {
        let bufs = self.encoded();
        Ok(f(views(&bufs)?))
    }

    /// Serialise as safetensors, each tensor in its recorded dtype
    /// (`f32`, `f64`, `i64`, `u8`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let bufs = self.encoded();
        safetensors::tensor::serialize(views(&bufs)?, &None).map_err(|e| e.to_string())
    }
}

/// What reading a safetensors file of `file_len` bytes into a [`Batch`]
/// holds at its peak, in bytes, from its header alone (read from `f`, the
/// file's start; the caller opens it): the file's bytes and its tensors as
/// held ([`Values`]: bf16 as 2 bytes, f32 and f16 as 4, the rest as 8).
/// `None` when the header cannot be read; [`Batch::from_bytes`] then says
/// what is wrong.
pub fn bytes_to_read(mut f: impl std::io::Read, file_len: usize) -> Option<usize> {
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    let n = usize::try_from(u64::from_le_bytes(n)).ok()?;
    // The format's own limit on a header.
    if n > 100_000_000 || n > file_len {
        return None;
    }
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    let mut held = file_len;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let entries = info
            .get("shape")?
            .as_array()?
            .iter()
            .try_fold(1usize, |acc, d| {
                acc.checked_mul(usize::try_from(d.as_u64()?).ok()?)
            })?;
        let width = match info.get("dtype")?.as_str()? {
            "BF16" => 2,
            "F32" | "F16" => 4,
            _ => 8,
        };
        held = held.saturating_add(entries.saturating_mul(width));
    }
    Some(held)
}

type Encoded<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

fn views<'a>(
    bufs: &'a [Encoded<'_>],
) -> Result<Vec<(String, safetensors::tensor::TensorView<'a>)>, String> {
    bufs.iter()
        .map(|(n, dt, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// The checked inputs of one evaluation: the batch's tensors borrowed (a
/// [B, T, V] tensor is not copied), the inputs a batch may leave out
/// (`position`, `index`, `length`, step inputs) computed. `vocab_index` is
/// never laid out: executors compute it from the element's index.
pub struct Prepared<'a> {
    pub shape: Shape,
    pub mask: Vec<f64>,
    pub inputs: HashMap<String, Cow<'a, Values>>,
}

impl Prepared<'_> {
    /// The inputs as f64, as the reference interpreter takes them (a copy).
    pub fn inputs_f64(&self) -> HashMap<String, Vec<f64>> {
        self.inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.to_f64()))
            .collect()
    }

    /// The inputs as f32 (with `mask`), as the kernel executors take them
    /// (a copy; [`Prepared::view`] borrows them instead).
    pub fn inputs_f32(&self) -> HashMap<String, Vec<f32>> {
        let mut out: HashMap<String, Vec<f32>> = self
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|x| x as f32).collect()))
            .collect();
        out.entry("mask".to_string())
            .or_insert_with(|| self.mask.iter().map(|&x| x as f32).collect());
        out
    }
}

/// Named inputs an executor reads in place: `mask` and the batch's tensors
/// ([`View`]).
pub trait Inputs {
    fn view(&self, name: &str) -> Option<View<'_>>;
}

impl Inputs for Prepared<'_> {
    fn view(&self, name: &str) -> Option<View<'_>> {
        match self.inputs.get(name) {
            Some(v) => Some(v.view()),
            None if name == "mask" => Some(View::F64(&self.mask)),
            None => None,
        }
    }
}

impl Inputs for HashMap<String, Vec<f32>> {
    fn view(&self, name: &str) -> Option<View<'_>> {
        self.get(name).map(|v| View::F32(v))
    }
}

/// Where a recipe reads an input (for error labels).
fn reader(checked: &CheckedRecipe, name: &str) -> (FileId, Span, String) {
    if name == "group"
        && let Some((f, s)) = checked.group_use
    {
        return (f, s, "group statistics need `group`".to_string());
    }
    match checked.inputs.get(name) {
        Some((f, s)) => (*f, *s, format!("`{name}` is read here")),
        None => {
            let (f, s) = checked
                .inputs
                .get("logp")
                .copied()
                .unwrap_or((checked.file, checked.name_span));
            (f, s, format!("this recipe's loss needs `{name}`"))
        }
    }
}

fn err(code: Code, msg: String, at: (FileId, Span, String), help: impl Into<String>) -> Diagnostic {
    Diagnostic::error(code, msg, Label::new(at.0, at.1, at.2)).with_help(help)
}

fn expected_dtypes(name: &str) -> &'static [&'static str] {
    match name {
        "mask" => &["f32", "f64", "u8", "bool"],
        "logits" | "teacher_logits" | "old_logits" => &["f32", "bf16", "f16", "f64"],
        _ => match builtins::input(name).map(|i| i.ty) {
            Some(builtins::Ty0::Int) => &["i64", "i32"],
            Some(builtins::Ty0::Bool) => &["u8", "bool"],
            _ => &["f32", "f64", "bf16", "f16"],
        },
    }
}

/// Step-level inputs a single batch is evaluated at when it does not say:
/// the first step of a run.
fn step_default(name: &str) -> Option<f64> {
    match name {
        "step" | "total_steps" => Some(1.0),
        "epoch" | "progress" => Some(0.0),
        _ => None,
    }
}

/// An input computed, not read from the batch.
fn computed<'a>(xs: impl IntoIterator<Item = f64>) -> Cow<'a, Values> {
    Cow::Owned(Values::F64(xs.into_iter().collect()))
}

/// Check the batch against the inputs the graph reads, and lay them out.
pub fn prepare<'a>(
    batch: &'a Batch,
    batch_name: &str,
    graph: &Graph,
    checked: &CheckedRecipe,
) -> Result<Prepared<'a>, Vec<Diagnostic>> {
    let mut errs = Vec::new();
    let live = graph.live();
    let mut needed: Vec<String> = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| live[*i])
        .filter_map(|(_, n)| match &n.op {
            Op::Input(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let uses_pick = graph
        .nodes
        .iter()
        .enumerate()
        .any(|(i, n)| live[i] && matches!(n.op, Op::Pick | Op::OneHot));
    if uses_pick {
        needed.push("tokens".into());
    }
    let uses_groups = graph.nodes.iter().enumerate().any(|(i, n)| {
        live[i]
            && (n.level == Level::Group
                || matches!(
                    n.op,
                    Op::Rank { over: Level::Group }
                        | Op::Quantile { over: Level::Group }
                        | Op::SortedCumsum {
                            over: Level::Group,
                            ..
                        }
                ))
    });
    if uses_groups {
        needed.push("group".into());
    }
    needed.push("mask".into());
    needed.sort();
    needed.dedup();
    // The mask fixes B and T.
    let Some(mask_t) = batch.tensors.get("mask") else {
        return Err(vec![err(
            codes::BATCH_MISSING,
            format!("batch `{batch_name}` has no tensor `mask`"),
            (
                checked.file,
                checked.name_span,
                "every loss needs the response mask".into(),
            ),
            "add `mask` (f32 or u8, [B, T]): 1 for response tokens that count, 0 for padding",
        )]);
    };
    if mask_t.shape.len() != 2 {
        return Err(vec![err(
            codes::BATCH_SHAPE,
            format!(
                "tensor `mask` has shape {:?}, expected [B, T]",
                mask_t.shape
            ),
            (
                checked.file,
                checked.name_span,
                "the loss needs a [B, T] mask".into(),
            ),
            "write the mask as a 2-d tensor",
        )]);
    }
    let (b, t) = (mask_t.shape[0], mask_t.shape[1]);
    let v = ["logits", "teacher_logits", "old_logits"]
        .iter()
        .find_map(|n| batch.tensors.get(*n).and_then(|l| l.shape.get(2).copied()))
        .unwrap_or(1);
    let mut inputs: HashMap<String, Cow<Values>> = HashMap::new();
    for name in &needed {
        let level = builtins::input(name)
            .map(|i| i.level)
            .unwrap_or(Level::Token);
        let want: Vec<usize> = match level {
            Level::Vocab => vec![b, t, v],
            Level::Token => vec![b, t],
            Level::Seq => vec![b],
            _ => vec![],
        };
        let shown = match level {
            Level::Vocab => "[B, T, V]",
            Level::Token => "[B, T]",
            Level::Seq => "[B]",
            _ => "[]",
        };
        let Some(tensor) = batch.tensors.get(name) else {
            match name.as_str() {
                "position" => {
                    inputs.insert(name.clone(), computed((0..b * t).map(|i| (i % t) as f64)));
                }
                n if step_default(n).is_some() => {
                    inputs.insert(name.clone(), computed(step_default(n)));
                }
                "index" => {
                    inputs.insert(name.clone(), computed((0..b).map(|i| i as f64)));
                }
                // Computed from the element's index by every executor.
                "vocab_index" => {}
                "length" => {
                    let mask = mask_t.data.to_f64();
                    let len = mask
                        .chunks(t.max(1))
                        .take(b)
                        .map(|row| row.iter().filter(|m| **m != 0.0).count() as f64);
                    inputs.insert(name.clone(), computed(len));
                }
                _ => {
                    let dt = expected_dtypes(name)[0];
                    let help = match name.as_str() {
                        "logp" => "add `logp` (f32, [B, T]), or `logits` [B, T, V] with `tokens` to derive it".to_string(),
                        "tokens" => "add `tokens` (i64, [B, T]): the sampled token ids, needed to read the logits".to_string(),
                        "group" => "add `group` (i64, [B]): equal ids mark responses to the same prompt".to_string(),
                        _ => format!("add `{name}` ({dt}, {shown}) to the batch"),
                    };
                    errs.push(err(
                        codes::BATCH_MISSING,
                        format!("batch `{batch_name}` has no tensor `{name}`"),
                        reader(checked, name),
                        help,
                    ));
                }
            }
            continue;
        };
        let ok_dtypes = expected_dtypes(name);
        if !ok_dtypes.contains(&tensor.dtype.as_str()) {
            errs.push(err(
                codes::BATCH_DTYPE,
                format!(
                    "tensor `{name}` has dtype {}, expected {}",
                    tensor.dtype,
                    ok_dtypes.join(" or ")
                ),
                reader(checked, name),
                format!("convert `{name}` to {}", ok_dtypes[0]),
            ));
            continue;
        }
        if tensor.shape != want {
            errs.push(err(
                codes::BATCH_SHAPE,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shown} = {want:?}",
                    tensor.shape
                ),
                reader(checked, name),
                format!(
                    "B and T come from `mask` {:?}; write `{name}` as {shown}",
                    mask_t.shape
                ),
            ));
            continue;
        }
        if let Some(i) = tensor.data.iter().position(|x| !x.is_finite()) {
            let at = match tensor.shape.len() {
                3 => format!("[{}, {}, {}]", i / (t * v), (i / v) % t, i % v),
                2 => format!("[{}, {}]", i / t, i % t),
                _ => format!("[{i}]"),
            };
            errs.push(err(
                codes::BATCH_NONFINITE,
                format!(
                    "tensor `{name}` holds {} at {at}",
                    tensor.data.get(i).unwrap_or(f64::NAN)
                ),
                reader(checked, name),
                "inputs must be finite; check the code that produced the batch",
            ));
            continue;
        }
        inputs.insert(name.clone(), Cow::Borrowed(&tensor.data));
    }
    if let Some(i) = mask_t.data.iter().position(|m| !m.is_finite()) {
        errs.push(err(
            codes::BATCH_NONFINITE,
            format!(
                "tensor `mask` holds {} at [{}, {}]",
                mask_t.data.get(i).unwrap_or(f64::NAN),
                i / t.max(1),
                i % t.max(1)
            ),
            (
                checked.file,
                checked.name_span,
                "the mask of this recipe's loss".into(),
            ),
            "the mask must be 0 or 1",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut group_of = Vec::with_capacity(b);
    let mut n_groups = 0;
    if let Some(g) = inputs.get("group") {
        let mut ids: Vec<f64> = Vec::new();
        for x in g.iter() {
            let k = match ids.iter().position(|y| *y == x) {
                Some(k) => k,
                None => {
                    ids.push(x);
                    ids.len() - 1
                }
            };
            group_of.push(k);
        }
        n_groups = ids.len();
    } else {
        group_of = vec![0; b];
        n_groups = n_groups.max(1);
    }
    Ok(Prepared {
        shape: Shape {
            b,
            t,
            v,
            group_of,
            n_groups,
        },
        mask: mask_t
            .data
            .iter()
            .map(|m| f64::from(u8::from(m != 0.0)))
            .collect(),
        inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, dt, shape, b)| {
                let v = TensorView::new(*dt, shape.clone(), b).expect("view");
                (n.to_string(), v)
            })
            .collect();
        safetensors::tensor::serialize(views, &None).expect("serialise")
    }

    /// Each dtype's values, exactly; bf16 held as it is (2 bytes an entry),
    /// f32 and f16 as f32, the rest as f64.
    #[test]
    fn dtypes_are_read_exactly_and_held_narrow() {
        let bf16: Vec<u8> = [0x3F80u16, 0xC020, 0x0001] // 1, -2.5, smallest subnormal
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16: Vec<u8> = [0x3C00u16, 0xC100, 0x0001, 0x7BFF] // 1, -2.5, 2^-24, 65504
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [0.1f32, -3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [0.1f64, 1e300]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let i64s: Vec<u8> = [-7i64, 151_935]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b = Batch::from_bytes(&file(&[
            ("a", Dtype::BF16, vec![3], bf16),
            ("b", Dtype::F16, vec![4], f16),
            ("c", Dtype::F32, vec![2], f32s),
            ("d", Dtype::F64, vec![2], f64s),
            ("e", Dtype::I64, vec![2], i64s),
            ("f", Dtype::U8, vec![2], vec![0, 3]),
        ]))
        .expect("parses");
        let t = |n: &str| &b.tensors[n].data;
        assert_eq!(
            t("a"),
            &Values::Bf16(vec![Bf16(0x3F80), Bf16(0xC020), Bf16(1)])
        );
        assert_eq!(
            t("a").to_f64(),
            vec![1.0, -2.5, f32::from_bits(0x0001_0000) as f64]
        );
        assert_eq!(
            t("b"),
            &Values::F32(vec![1.0, -2.5, 2f32.powi(-24), 65504.0])
        );
        assert_eq!(t("c"), &Values::F32(vec![0.1, -3.0]));
        assert_eq!(t("d"), &Values::F64(vec![0.1, 1e300]));
        assert_eq!(t("e"), &Values::F64(vec![-7.0, 151_935.0]));
        assert_eq!(t("f"), &Values::F64(vec![0.0, 3.0]));
        assert_eq!(b.tensors["a"].dtype, "bf16");
        assert_eq!(t("c").get(0), Some(0.1f32 as f64));
        assert_eq!(t("c").get(2), None);
    }

    /// A batch written to a file reads back as it was, f32 tensors
    /// bit for bit, and `write` produces the bytes `to_bytes` does.
    #[test]
    fn write_and_read_back() {
        let mut b = Batch::default();
        b.insert_f32(
            "d_logits",
            "f32",
            vec![2, 3],
            vec![0.5, -1e-30, 3.25, 0.0, 7.0, -2.0],
        );
        b.insert("d_logp", "f32", vec![2], vec![0.25, -0.125]);
        b.insert("mask", "u8", vec![2], vec![1.0, 0.0]);
        b.insert("group", "i64", vec![2], vec![4.0, -1.0]);
        b.insert("x", "f64", vec![1], vec![0.1]);
        let bytes = b.to_bytes().expect("serialises");
        let back = Batch::from_bytes(&bytes).expect("parses");
        assert_eq!(back.tensors["d_logits"], b.tensors["d_logits"]);
        assert_eq!(back.tensors["d_logp"].data, Values::F32(vec![0.25, -0.125]));
        assert_eq!(back.tensors["mask"].data, Values::F64(vec![1.0, 0.0]));
        assert_eq!(back.tensors["group"].data, Values::F64(vec![4.0, -1.0]));
        assert_eq!(back.tensors["x"].data, Values::F64(vec![0.1]));
    }
}
