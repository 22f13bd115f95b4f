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
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// A batch file's tensors, converted to f64.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Batch {
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Parse a safetensors file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Batch, String> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let (dtype, data): (&str, Vec<f64>) = match view.dtype() {
                Dtype::F32 => (
                    "f32",
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect(),
                ),
                Dtype::F64 => (
                    "f64",
                    raw.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                ),
                Dtype::BF16 => (
                    "bf16",
                    raw.chunks_exact(2)
                        .map(|c| {
                            f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64
                        })
                        .collect(),
                ),
                Dtype::F16 => (
                    "f16",
                    raw.chunks_exact(2)
                        .map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                ),
                Dtype::U8 => ("u8", raw.iter().map(|&b| b as f64).collect()),
                Dtype::BOOL => (
                    "bool",
                    raw.iter().map(|&b| f64::from(u8::from(b != 0))).collect(),
                ),
                Dtype::I64 => (
                    "i64",
                    raw.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f64
                        })
                        .collect(),
                ),
                Dtype::I32 => (
                    "i32",
                    raw.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect(),
                ),
                other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
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

    pub fn insert(&mut self, name: &str, dtype: &str, shape: Vec<usize>, data: Vec<f64>) {
        self.tensors.insert(
            name.to_string(),
            Tensor {
                dtype: dtype.to_string(),
                shape,
                data,
            },
        );
    }

    /// Serialise as safetensors, each tensor in its recorded dtype
    /// (`f32`, `f64`, `i64`, `u8`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let (dt, bytes): (Dtype, Vec<u8>) = match t.dtype.as_str() {
                "f64" => (
                    Dtype::F64,
                    t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                "i64" => (
                    Dtype::I64,
                    t.data
                        .iter()
                        .flat_map(|x| (*x as i64).to_le_bytes())
                        .collect(),
                ),
                "u8" | "bool" => (Dtype::U8, t.data.iter().map(|x| *x as u8).collect()),
                _ => (
                    Dtype::F32,
                    t.data
                        .iter()
                        .flat_map(|x| (*x as f32).to_le_bytes())
                        .collect(),
                ),
            };
            bufs.push((name.clone(), dt, t.shape.clone(), bytes));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, dt, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        safetensors::tensor::serialize(views, &None).map_err(|e| e.to_string())
    }
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

/// The checked inputs of one evaluation.
pub struct Prepared {
    pub shape: Shape,
    pub mask: Vec<f64>,
    pub inputs: HashMap<String, Vec<f64>>,
}

impl Prepared {
    /// The inputs as f32 (with `mask`), as the kernel executors take them.
    pub fn inputs_f32(&self) -> HashMap<String, Vec<f32>> {
        let mut out: HashMap<String, Vec<f32>> = self
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|&x| x as f32).collect()))
            .collect();
        out.entry("mask".to_string())
            .or_insert_with(|| self.mask.iter().map(|&x| x as f32).collect());
        out
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

/// Check the batch against the inputs the graph reads, and lay them out.
pub fn prepare(
    batch: &Batch,
    batch_name: &str,
    graph: &Graph,
    checked: &CheckedRecipe,
) -> Result<Prepared, Vec<Diagnostic>> {
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
    let mut inputs: HashMap<String, Vec<f64>> = HashMap::new();
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
                    inputs.insert(name.clone(), (0..b * t).map(|i| (i % t) as f64).collect());
                }
                n if step_default(n).is_some() => {
                    inputs.insert(name.clone(), vec![step_default(n).unwrap_or(0.0)]);
                }
                "index" => {
                    inputs.insert(name.clone(), (0..b).map(|i| i as f64).collect());
                }
                "vocab_index" => {
                    inputs.insert(
                        name.clone(),
                        (0..b * t * v).map(|i| (i % v) as f64).collect(),
                    );
                }
                "length" => {
                    let len = (0..b).map(|i| {
                        mask_t.data[i * t..(i + 1) * t]
                            .iter()
                            .filter(|m| **m != 0.0)
                            .count() as f64
                    });
                    inputs.insert(name.clone(), len.collect());
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
                format!("tensor `{name}` holds {} at {at}", tensor.data[i]),
                reader(checked, name),
                "inputs must be finite; check the code that produced the batch",
            ));
            continue;
        }
        inputs.insert(name.clone(), tensor.data.clone());
    }
    if let Some(i) = mask_t.data.iter().position(|m| !m.is_finite()) {
        errs.push(err(
            codes::BATCH_NONFINITE,
            format!(
                "tensor `mask` holds {} at [{}, {}]",
                mask_t.data[i],
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
        for &x in g {
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
            .map(|m| f64::from(u8::from(*m != 0.0)))
            .collect(),
        inputs,
    })
}
