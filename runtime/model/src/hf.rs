//! Hugging Face checkpoint directories: `config.json` + safetensors (one
//! file or shards listed by `model.safetensors.index.json`), as written by
//! `save_pretrained` for Llama, Qwen2, Qwen3 and SmolLM (a Llama).
//!
//! Loading maps every tensor into the runtime's own named-weight list
//! (`crate::transformer::ModelConfig::layout`): HF stores a linear layer as
//! `[out, in]`, Keel as `[in, out]`, so projections are transposed once,
//! here; norms and biases become `[1, n]` rows. F32, F16 and BF16 tensors
//! are read into f32. Everything downstream (the policy, checkpoints,
//! resume, the warm-start cache) sees the same list as for Keel's own
//! model. [`write_dir`] is the inverse: a directory that
//! `transformers.AutoModelForCausalLM.from_pretrained` loads.
//!
//! What the model cannot compute is refused with the config key named
//! (E0709): another `model_type`, `hidden_act`, a sliding window, rotary
//! scaling other than `llama3`, biases on the output or MLP projections.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Value, json};

use crate::error::{Error, Kind};
use crate::family::{self, Loaded, Meta, Window, assemble, f16_to_f32, hf_name, transpose};
use crate::io::{Lazy, io_error, write_lazy};
use crate::transformer::{Llama3Rope, ModelConfig, Params, Rope, Weights};

fn err(path: &Path, key: &str, message: String, help: &str) -> Error {
    let at = if key.is_empty() {
        path.display().to_string()
    } else {
        format!("{}: `{key}`", path.display())
    };
    Error::new(Kind::CheckpointFormat, message, help).at(at)
}

fn read_json(path: &Path) -> Result<Value, Error> {
    let text = fs::read_to_string(path).map_err(|e| {
        err(
            path,
            "",
            format!("cannot read `{}`: {e}", path.display()),
            "`model.init` names a Hugging Face checkpoint directory (config.json and model.safetensors), a `.gguf` file, or a `.safetensors` file written by `keel run`",
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        err(
            path,
            "",
            format!("`{}` is not JSON: {e}", path.display()),
            "the file is written by transformers' save_pretrained; restore it from the checkpoint's source",
        )
    })
}

/// A config key as an unsigned integer.
fn uint(cfg: &Value, path: &Path, key: &str, default: Option<usize>) -> Result<usize, Error> {
    match cfg.get(key) {
        Some(v) if !v.is_null() => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            err(
                path,
                key,
                format!("`{key}` is {v}, not a non-negative integer"),
                "fix the value in config.json",
            )
        }),
        _ => default.ok_or_else(|| {
            err(
                path,
                key,
                format!("config.json has no `{key}`"),
                "a causal-LM config names its shape: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size",
            )
        }),
    }
}

fn num(cfg: &Value, path: &Path, key: &str, default: f64) -> Result<f64, Error> {
    match cfg.get(key) {
        Some(v) if !v.is_null() => v.as_f64().ok_or_else(|| {
            err(
                path,
                key,
                format!("`{key}` is {v}, not a number"),
                "fix the value in config.json",
            )
        }),
        _ => Ok(default),
    }
}

/// Token ids of a config key that holds an int or a list of ints.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The rotary settings of either config form: transformers 5's
/// `rope_parameters`, or 4.x's `rope_theta` + `rope_scaling`.
fn rope(cfg: &Value, path: &Path) -> Result<Rope, Error> {
    let (params, key) = match cfg.get("rope_parameters") {
        Some(p) if p.is_object() => (p.clone(), "rope_parameters"),
        _ => (
            cfg.get("rope_scaling").cloned().unwrap_or(Value::Null),
            "rope_scaling",
        ),
    };
    let theta = match params.get("rope_theta") {
        Some(v) if v.is_number() => v.as_f64().unwrap_or(10000.0),
        _ => num(cfg, path, "rope_theta", 10000.0)?,
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let llama3 = match kind {
        "default" => None,
        "llama3" => {
            let f = |k: &str| -> Result<f64, Error> {
                params.get(k).and_then(Value::as_f64).ok_or_else(|| {
                    err(
                        path,
                        &format!("{key}.{k}"),
                        format!("`{key}` of type llama3 has no number `{k}`"),
                        "llama3 scaling needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings",
                    )
                })
            };
            Some(Llama3Rope {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_context: f("original_max_position_embeddings")?,
            })
        }
        other => {
            return Err(err(
                path,
                &format!("{key}.rope_type"),
                format!("rotary scaling `{other}` is not supported"),
                "Keel computes default rotary positions and Llama 3's `llama3` scaling; yarn, dynamic and linear scaling are refused rather than computed wrongly",
            ));
        }
    };
    Ok(Rope { theta, llama3 })
}

/// The shape and metadata of `dir/config.json` (and generation_config.json).
/// `has` answers whether the weights hold a tensor (biases and a separate
/// output layer are decided by what is stored).
pub fn read_config(
    dir: &Path,
    has: &dyn Fn(&str) -> bool,
    seed: u64,
) -> Result<(ModelConfig, Meta), Error> {
    let path = dir.join("config.json");
    let cfg = read_json(&path)?;
    let family = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(fam) = family::by_model_type(&family) else {
        return Err(err(
            &path,
            "model_type",
            format!("model_type `{family}` is not a family Keel can run"),
            &format!(
                "Keel runs decoder-only {} and SmolLM checkpoints (model_type {})",
                family::labels(),
                family::model_types()
            ),
        ));
    };
    if let Some(act) = cfg.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(err(
            &path,
            "hidden_act",
            format!("hidden_act `{act}` is not supported"),
            "Keel's MLP is SwiGLU with SiLU (hidden_act = \"silu\")",
        ));
    }
    let window = fam.sliding_window;
    let sliding = match window {
        Window::Flag => cfg
            .get(window.key())
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Window::Size => cfg.get(window.key()).is_some_and(|v| !v.is_null()),
    };
    if sliding {
        return Err(err(
            &path,
            window.key(),
            "sliding-window attention is not supported".into(),
            "Keel attends to every earlier position; a checkpoint trained with a sliding window would compute something else",
        ));
    }
    for key in ["mlp_bias"] {
        if cfg.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(err(
                &path,
                key,
                format!("`{key}` = true is not supported"),
                "Keel's MLP has no biases",
            ));
        }
    }
    if has("model.layers.0.self_attn.o_proj.bias") {
        return Err(err(
            &path,
            "attention_bias",
            "the output projection has a bias (`o_proj.bias`), which Keel's attention lacks".into(),
            "Keel reads biases on q, k and v (Qwen2) only",
        ));
    }
    let d = uint(&cfg, &path, "hidden_size", None)?;
    let heads = uint(&cfg, &path, "num_attention_heads", None)?;
    let kv_heads = uint(&cfg, &path, "num_key_value_heads", Some(heads))?;
    let head_dim = uint(&cfg, &path, "head_dim", d.checked_div(heads))?;
    let bad = |key: &str, why: String| err(&path, key, why, "fix config.json");
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(bad(
            "num_key_value_heads",
            format!("{heads} attention heads cannot share {kv_heads} key/value heads evenly"),
        ));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad(
            "head_dim",
            format!("head_dim {head_dim} is not even (rotary positions rotate pairs)"),
        ));
    }
    let max_positions = uint(&cfg, &path, "max_position_embeddings", Some(2048))?;
    let tied = match cfg.get("tie_word_embeddings").and_then(Value::as_bool) {
        Some(t) => t,
        None => !has("lm_head.weight"),
    };
    let model = ModelConfig {
        vocab: uint(&cfg, &path, "vocab_size", None)?,
        d_model: d,
        layers: uint(&cfg, &path, "num_hidden_layers", None)?,
        heads,
        kv_heads,
        head_dim,
        hidden: uint(&cfg, &path, "intermediate_size", None)?,
        context: max_positions,
        qk_norm: has("model.layers.0.self_attn.q_norm.weight"),
        qkv_bias: has("model.layers.0.self_attn.q_proj.bias"),
        norm_eps: num(&cfg, &path, "rms_norm_eps", 1e-6)?,
        rope: rope(&cfg, &path)?,
        tied,
        seed,
    };
    let mut eos = ids(cfg.get("eos_token_id"));
    let mut bos = ids(cfg.get("bos_token_id")).first().copied();
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        let g = read_json(&gen_path)?;
        for id in ids(g.get("eos_token_id")) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        bos = bos.or(ids(g.get("bos_token_id")).first().copied());
    }
    let dtype = cfg
        .get("dtype")
        .or_else(|| cfg.get("torch_dtype"))
        .and_then(Value::as_str)
        .unwrap_or("float32")
        .to_string();
    Ok((
        model,
        Meta {
            family,
            dtype,
            eos,
            bos,
            max_positions,
        },
    ))
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or
/// the shards `model.safetensors.index.json` lists.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let mut files: Vec<String> = v
            .get("weight_map")
            .and_then(Value::as_object)
            .map(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(err(
                &index,
                "weight_map",
                "the shard index lists no files".into(),
                "the index maps each tensor name to its shard file",
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(err(
        dir,
        "",
        format!(
            "`{}` holds neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        ),
        "save the model with `save_pretrained(dir, safe_serialization=True)`; PyTorch .bin checkpoints are not read",
    ))
}

/// Raw tensors of the checkpoint's files, by name.
pub struct Tensors {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Tensors {
    pub fn open(dir: &Path) -> Result<Tensors, Error> {
        let mut files = Vec::new();
        for f in weight_files(dir)? {
            let bytes = fs::read(&f).map_err(|e| {
                err(
                    &f,
                    "",
                    format!("cannot read `{}`: {e}", f.display()),
                    "the checkpoint's weight files must be readable",
                )
            })?;
            // Parse once here, so that a damaged file is reported by name.
            SafeTensors::deserialize(&bytes).map_err(|e| {
                err(
                    &f,
                    "",
                    format!("`{}` is not a safetensors file: {e:?}", f.display()),
                    "download or save the checkpoint again",
                )
            })?;
            files.push((f, bytes));
        }
        Ok(Tensors { files })
    }

    /// Whether any file holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.files.iter().any(|(_, b)| {
            SafeTensors::deserialize(b)
                .map(|st| st.tensor(name).is_ok())
                .unwrap_or(false)
        })
    }

    /// The tensor `name` as f32 values and its shape.
    pub fn get(&self, name: &str) -> Result<Option<Loaded>, Error> {
        for (path, bytes) in &self.files {
            let Ok(st) = SafeTensors::deserialize(bytes) else {
                continue;
            };
            if let Ok(view) = st.tensor(name) {
                let vals = to_f32(&view).ok_or_else(|| {
                    err(
                        path,
                        "",
                        format!("tensor `{name}` is stored as {:?}", view.dtype()),
                        "Keel reads F32, F16 and BF16 weights; convert the checkpoint (e.g. `model.to(torch.bfloat16).save_pretrained(...)`)",
                    )
                })?;
                return Ok(Some((vals, view.shape().to_vec())));
            }
        }
        Ok(None)
    }
}

fn to_f32(view: &TensorView) -> Option<Vec<f32>> {
    let b = view.data();
    match view.dtype() {
        Dtype::F32 => Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::BF16 => Some(
            b.chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
        ),
        Dtype::F16 => Some(
            b.chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        _ => None,
    }
}

/// A checkpoint directory's shape, weights (in the runtime's layout) and
/// metadata.
pub fn load_dir(dir: &Path, seed: u64) -> Result<(ModelConfig, Weights, Meta), Error> {
    let tensors = Tensors::open(dir)?;
    let (cfg, meta) = read_config(dir, &|n| tensors.has(n), seed)?;
    let w = assemble(
        &cfg,
        |hf| tensors.get(hf),
        |_, v| v,
        |message| {
            err(
                dir,
                "",
                message,
                "config.json and the weights do not describe the same model; re-save the checkpoint",
            )
        },
    )?;
    Ok((cfg, w, meta))
}

/// Whether `path` is a checkpoint directory this module reads.
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").exists()
}

/// What a directory transformers loads needs of a tokenizer: its
/// `tokenizer.json`, the special tokens' strings, whether a BOS is added,
/// and the chat template (an instruct model's).
#[derive(Clone, Debug, Default)]
pub struct TokenizerFiles {
    pub json: String,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// Write `w` as a Hugging Face directory (config.json, f32
/// model.safetensors, generation_config.json; with `tokenizer`, its
/// tokenizer.json, a tokenizer_config.json with the special tokens, the
/// pad token (the EOS where the model has none) and the chat template, and
/// chat_template.jinja) that transformers loads completely.
pub fn write_dir(
    dir: &Path,
    cfg: &ModelConfig,
    w: Params,
    meta: &Meta,
    tokenizer: Option<&TokenizerFiles>,
) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| io_error("write", dir, e))?;
    // Each tensor is transposed back to HF's [out, in] as the writer
    // reaches it: one tensor in memory at a time.
    let mut tensors = Vec::new();
    for (i, (name, shape)) in w.names.iter().zip(w.shapes).enumerate() {
        let Some((hf, transposed)) = hf_name(name) else {
            continue;
        };
        let (rows, cols) = (shape[0], shape[1]);
        let dims = if transposed {
            vec![cols, rows]
        } else if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        tensors.push((
            hf,
            Lazy::new(dims, move || {
                let v = w.values(i);
                Lazy::bytes(if transposed {
                    std::borrow::Cow::Owned(transpose(&v, rows, cols))
                } else {
                    v
                })
            }),
        ));
    }
    let meta_map = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    write_lazy(&tmp, &tensors, Some(meta_map))?;
    fs::rename(&tmp, &st_path).map_err(|e| io_error("write", &st_path, e))?;
    let fam = family::by_model_type(&meta.family).unwrap_or_else(|| family::of_own_model(cfg));
    let mut rope = json!({"rope_theta": cfg.rope.theta, "rope_type": "default"});
    if let Some(s) = &cfg.rope.llama3 {
        rope = json!({
            "rope_theta": cfg.rope.theta,
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_context,
        });
    }
    let eos: Value = match meta.eos.as_slice() {
        [one] => json!(one),
        [] => Value::Null,
        many => json!(many),
    };
    let mut config = json!({
        "architectures": [fam.architecture],
        "model_type": fam.model_type,
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": meta.max_positions.max(cfg.context),
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope.clone(),
        // 4.x readers take these two.
        "rope_theta": cfg.rope.theta,
        "rope_scaling": if cfg.rope.llama3.is_some() { rope } else { Value::Null },
        "tie_word_embeddings": cfg.tied,
        "attention_bias": cfg.qkv_bias,
        "bos_token_id": meta.bos,
        "eos_token_id": eos.clone(),
        "dtype": "float32",
        "torch_dtype": "float32",
    });
    if fam.sliding_window == Window::Flag {
        config[Window::Flag.key()] = json!(false);
    }
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    let write = |name: &str, bytes: &[u8]| -> Result<(), Error> {
        crate::io::write_atomic(&dir.join(name), bytes)
    };
    write("config.json", &pretty(&config))?;
    write(
        "generation_config.json",
        &pretty(&json!({"bos_token_id": meta.bos, "eos_token_id": eos})),
    )?;
    if let Some(t) = tokenizer {
        write("tokenizer.json", t.json.as_bytes())?;
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": t.bos,
            "eos_token": t.eos,
            "pad_token": t.eos,
            "add_bos_token": t.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": meta.max_positions.max(cfg.context),
        });
        if let Some(src) = &t.chat_template {
            tc["chat_template"] = json!(src);
            write("chat_template.jinja", src.as_bytes())?;
        }
        write("tokenizer_config.json", &pretty(&tc))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decodes_normals_subnormals_and_specials() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    use crate::transformer::{Transformer, to_vec};
    use burn::tensor::Device;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf")
    }

    /// (tokens [2, 16], logits [2, 16, V]) that transformers computed.
    fn golden(dir: &Path) -> (Vec<u32>, Vec<f32>, usize) {
        let bytes = fs::read(dir.join("golden.safetensors")).expect("golden");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor("tokens").expect("tokens");
        let tokens: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32)
            .collect();
        let l = st.tensor("logits").expect("logits");
        let v = l.shape()[2];
        (tokens, to_f32(&l).expect("f32"), v)
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Every fixture of `tests/reference/hf_models.py` (tiny random Llama
    /// untied and tied with llama3 rotary scaling, Qwen2 with q/k/v biases,
    /// Qwen3 with qk-norm and its own head_dim, one in bf16, one with a
    /// transformers 4.x config): the loaded model's logits equal
    /// transformers' to 1e-4, by the full forward pass and by an 8-token
    /// prefill followed by 8 KV-cache decode steps.
    #[test]
    fn checkpoints_match_transformers_logits() {
        let names = [
            "llama",
            "llama_tied",
            "qwen2",
            "qwen3",
            "qwen3_bf16",
            "llama_v4",
        ];
        for name in names {
            let dir = fixtures().join(name);
            let (cfg, w, meta) = load_dir(&dir, 0).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let (tokens, want, v) = golden(&dir);
            assert_eq!(cfg.vocab, v, "{name}");
            assert_eq!(meta.eos, vec![2], "{name}");
            let p = Transformer::new(cfg.clone(), &w, &Device::flex());
            let (b, t) = (2, tokens.len() / 2);
            let full = to_vec(&p.forward(&tokens, &vec![true; b * t], b, t));
            let e = max_err(&full, &want);
            assert!(e < 1e-4, "{name}: full forward differs by {e}");
            // Prefill 8, then decode 8: the logits at each position.
            let pre: Vec<u32> = [&tokens[0..8], &tokens[t..t + 8]].concat();
            let (mut last, mut cache) = p.prefill(&pre, &[true; 16], 2, 8);
            for pos in 8..=t {
                let got = to_vec(&last);
                for bi in 0..b {
                    let row = &want[(bi * t + pos - 1) * v..(bi * t + pos) * v];
                    let e = max_err(&got[bi * v..(bi + 1) * v], row);
                    assert!(e < 1e-4, "{name}: decode at {pos} row {bi} differs by {e}");
                }
                if pos < t {
                    let next = [tokens[pos], tokens[t + pos]];
                    last = p.decode(&mut cache, &next, &[true, true], pos);
                }
            }
        }
    }

    /// What the loader reads off each fixture's config.
    #[test]
    fn configs_are_read_in_both_forms() {
        let cfg = |n: &str| load_dir(&fixtures().join(n), 0).expect(n).0;
        let tied = cfg("llama_tied");
        assert!(tied.tied && tied.kv_heads == 1);
        assert_eq!(tied.rope.llama3.as_ref().map(|s| s.factor), Some(8.0));
        let q3 = cfg("qwen3");
        assert!(q3.qk_norm && q3.head_dim == 16 && q3.d_model == 32);
        assert!(cfg("qwen2").qkv_bias);
        let (v4, v5) = (cfg("llama_v4"), cfg("llama"));
        assert_eq!(v4, v5, "4.x and 5 config forms describe the same model");
        assert_eq!(v5.rope.theta, 500000.0);
        assert_eq!(v5.norm_eps, 1e-5);
    }

    /// Refusals name the file and key.
    #[test]
    fn unsupported_configs_are_refused_with_the_key() {
        let tmp = std::env::temp_dir().join(format!("keel-hf-refuse-{}", std::process::id()));
        let src = fixtures().join("llama");
        let cases = [
            ("model_type", json!("gpt2"), "model_type"),
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("sliding_window", json!(4096), "sliding_window"),
            (
                "rope_parameters",
                json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
                "rope_parameters.rope_type",
            ),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
        ];
        for (key, val, located) in cases {
            fs::create_dir_all(&tmp).expect("tmp");
            fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).expect("copy");
            let mut cfg = read_json(&src.join("config.json")).expect("config");
            cfg[key] = val;
            fs::write(tmp.join("config.json"), cfg.to_string()).expect("write");
            let e = load_dir(&tmp, 0).expect_err(key);
            assert_eq!(e.kind, Kind::CheckpointFormat, "{key}");
            let at = e.location.clone().unwrap_or_default();
            assert!(
                at.ends_with(&format!("config.json: `{located}`")),
                "{key}: {at}"
            );
            assert!(!e.help.is_empty());
        }
        // A missing tensor is named.
        fs::write(tmp.join("model.safetensors"), b"not safetensors").expect("write");
        fs::copy(src.join("config.json"), tmp.join("config.json")).expect("copy");
        let e = load_dir(&tmp, 0).expect_err("damaged");
        assert!(
            e.message.contains("not a safetensors file"),
            "{}",
            e.message
        );
        let _ = fs::remove_dir_all(&tmp);
    }

    /// write_dir then load_dir gives the same model back.
    #[test]
    fn written_directories_load_back() {
        let src = fixtures().join("qwen2");
        let (cfg, w, meta) = load_dir(&src, 0).expect("load");
        let tmp = std::env::temp_dir().join(format!("keel-hf-write-{}", std::process::id()));
        write_dir(&tmp, &cfg, w.view(), &meta, None).expect("write");
        let (cfg2, w2, meta2) = load_dir(&tmp, 0).expect("reload");
        assert_eq!(cfg2.rope, cfg.rope);
        assert_eq!((cfg2.kv_heads, cfg2.qkv_bias, cfg2.tied), (2, true, false));
        assert_eq!(w2, w);
        assert_eq!(meta2.eos, meta.eos);
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn names_map_both_ways() {
        assert_eq!(
            hf_name("layers.3.w1"),
            Some(("model.layers.3.mlp.gate_proj.weight".into(), true))
        );
        assert_eq!(
            hf_name("layers.0.bq"),
            Some(("model.layers.0.self_attn.q_proj.bias".into(), false))
        );
        assert_eq!(hf_name("head"), Some(("lm_head.weight".into(), true)));
        assert_eq!(hf_name("layers.0.nothing"), None);
    }
}
