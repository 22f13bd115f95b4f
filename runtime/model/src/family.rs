//! Model families: the one table both checkpoint readers (`crate::hf`,
//! `crate::gguf`) and the writer read, what a checkpoint says beside its
//! shape ([`Meta`]), and the one mapping from a file's tensors, named as
//! Hugging Face names them, to the runtime's weight list ([`assemble`]).
//! A new family is a row of [`FAMILIES`] (and, if its architecture differs,
//! a knob of `crate::transformer::ModelConfig`).

use crate::error::Error;
use crate::transformer::{ModelConfig, Weights};

/// One family of decoder-only checkpoints Keel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// `model_type` of config.json.
    pub model_type: &'static str,
    /// What users call it (in messages).
    pub label: &'static str,
    /// `general.architecture` of a GGUF file, where Keel reads this family
    /// from GGUF.
    pub gguf: Option<&'static str>,
    /// `architectures[0]` of a config.json written back.
    pub architecture: &'static str,
    /// The config key that turns on a sliding window: a boolean
    /// (`use_sliding_window`, Qwen) or a window that is not null.
    pub sliding_window: Window,
    /// llama.cpp's converter permutes the q and k rows of this family's
    /// GGUF files (undone on load).
    pub gguf_permuted_qk: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// `use_sliding_window = true` turns it on (written back as false).
    Flag,
    /// `sliding_window` set to anything but null turns it on.
    Size,
}

impl Window {
    pub fn key(self) -> &'static str {
        match self {
            Window::Flag => "use_sliding_window",
            Window::Size => "sliding_window",
        }
    }
}

/// The families Keel runs (SmolLM is a Llama).
pub const FAMILIES: &[Family] = &[
    Family {
        model_type: "llama",
        label: "Llama",
        gguf: Some("llama"),
        architecture: "LlamaForCausalLM",
        sliding_window: Window::Size,
        gguf_permuted_qk: true,
    },
    Family {
        model_type: "qwen2",
        label: "Qwen2",
        gguf: Some("qwen2"),
        architecture: "Qwen2ForCausalLM",
        sliding_window: Window::Flag,
        gguf_permuted_qk: false,
    },
    Family {
        model_type: "qwen3",
        label: "Qwen3",
        gguf: Some("qwen3"),
        architecture: "Qwen3ForCausalLM",
        sliding_window: Window::Flag,
        gguf_permuted_qk: false,
    },
    Family {
        model_type: "mistral",
        label: "Mistral",
        gguf: None,
        architecture: "MistralForCausalLM",
        sliding_window: Window::Size,
        gguf_permuted_qk: false,
    },
];

/// The family of a config.json's `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.model_type == model_type)
}

/// The family of a GGUF file's `general.architecture`.
pub fn by_gguf(arch: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.gguf == Some(arch))
}

/// The family a checkpoint of Keel's own model is written as: Qwen3 where
/// it normalises queries and keys, else Llama.
pub fn of_own_model(cfg: &ModelConfig) -> &'static Family {
    let name = if cfg.qk_norm { "qwen3" } else { "llama" };
    by_model_type(name).unwrap_or(&FAMILIES[0])
}

/// One field of every family that has it, for messages (`llama, qwen2, …`).
fn listed(field: impl Fn(&Family) -> Option<&'static str>) -> String {
    FAMILIES
        .iter()
        .filter_map(field)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `model_type` values, for messages: `llama, qwen2, qwen3, mistral`.
pub fn model_types() -> String {
    listed(|f| Some(f.model_type))
}

/// What users call the families, for messages: `Llama, Qwen2, …`.
pub fn labels() -> String {
    listed(|f| Some(f.label))
}

/// GGUF architectures, for messages: `llama, qwen2, qwen3`.
pub fn gguf_architectures() -> String {
    listed(|f| f.gguf)
}

/// A tensor read into f32: its values and its shape as stored.
pub type Loaded = (Vec<f32>, Vec<usize>);

/// What a checkpoint says beside its shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// `model_type` (`llama`, `qwen2`, `qwen3`, `mistral`).
    pub family: String,
    /// The stored dtype (`dtype`, or 4.x's `torch_dtype`).
    pub dtype: String,
    /// Every end-of-sequence id of config.json and generation_config.json.
    pub eos: Vec<u32>,
    pub bos: Option<u32>,
    /// `max_position_embeddings`.
    pub max_positions: usize,
}

/// The HF name of a runtime weight, and whether it is stored transposed
/// (`[out, in]`). One table for loading and for writing.
pub fn hf_name(name: &str) -> Option<(String, bool)> {
    let fixed = match name {
        "embed" => Some(("model.embed_tokens.weight", false)),
        "final_norm" => Some(("model.norm.weight", false)),
        "head" => Some(("lm_head.weight", true)),
        _ => None,
    };
    if let Some((n, t)) = fixed {
        return Some((n.to_string(), t));
    }
    let rest = name.strip_prefix("layers.")?;
    let (l, part) = rest.split_once('.')?;
    let (hf, t) = match part {
        "attn_norm" => ("input_layernorm.weight", false),
        "mlp_norm" => ("post_attention_layernorm.weight", false),
        "wq" => ("self_attn.q_proj.weight", true),
        "wk" => ("self_attn.k_proj.weight", true),
        "wv" => ("self_attn.v_proj.weight", true),
        "wo" => ("self_attn.o_proj.weight", true),
        "bq" => ("self_attn.q_proj.bias", false),
        "bk" => ("self_attn.k_proj.bias", false),
        "bv" => ("self_attn.v_proj.bias", false),
        "q_norm" => ("self_attn.q_norm.weight", false),
        "k_norm" => ("self_attn.k_norm.weight", false),
        "w1" => ("mlp.gate_proj.weight", true),
        "w3" => ("mlp.up_proj.weight", true),
        "w2" => ("mlp.down_proj.weight", true),
        _ => return None,
    };
    Some((format!("model.layers.{l}.{hf}"), t))
}

/// f16 bits → f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value m · 2^-24.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// `[r, c]` row-major → `[c, r]`.
pub fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

/// The runtime's weight list for `cfg`, from tensors looked up by their HF
/// names: `get(hf)` gives a tensor's values and HF shape (`[out, in]` for
/// a linear layer), `fix(name, values)` adjusts one before it is
/// transposed (GGUF's permuted q/k rows), and `fail(message)` makes the
/// error for a missing or misshapen tensor. One loop for every format.
pub fn assemble(
    cfg: &ModelConfig,
    mut get: impl FnMut(&str) -> Result<Option<Loaded>, Error>,
    fix: impl Fn(&str, Vec<f32>) -> Vec<f32>,
    fail: impl Fn(String) -> Error,
) -> Result<Weights, Error> {
    let mut w = Weights {
        names: Vec::new(),
        shapes: Vec::new(),
        data: Vec::new(),
    };
    for (name, shape) in cfg.layout() {
        let Some((hf, transposed)) = hf_name(&name) else {
            continue;
        };
        let (vals, got) =
            get(&hf)?.ok_or_else(|| fail(format!("the checkpoint has no tensor `{hf}`")))?;
        let want: Vec<usize> = if transposed {
            vec![shape[1], shape[0]]
        } else if shape[0] == 1 {
            vec![shape[1]]
        } else {
            vec![shape[0], shape[1]]
        };
        if got != want {
            return Err(fail(format!(
                "tensor `{hf}` has shape {got:?}; the config implies {want:?}"
            )));
        }
        let vals = fix(&name, vals);
        let data = if transposed {
            transpose(&vals, shape[1], shape[0])
        } else {
            vals
        };
        w.names.push(name);
        w.shapes.push(shape);
        w.data.push(data);
    }
    Ok(w)
}
