//! A pretrained checkpoint, whichever its format: a Hugging Face directory
//! (`crate::hf`) or a GGUF file (`crate::gguf`), with the tokenizer and chat
//! template that come with it. `model.init` and `keel inspect` open
//! checkpoints through [`open`].

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, codes};
use crate::hf::{self, Meta};
use crate::model::{ModelConfig, Weights};
use crate::tokenizer::Tokenizer;
use crate::{gguf, tokenizer};

pub struct Pretrained {
    pub cfg: ModelConfig,
    pub weights: Weights,
    pub meta: Meta,
    /// `tokenizer.json` of the directory, or the GGUF metadata's.
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<String>,
    /// `hf` or `gguf`.
    pub format: &'static str,
}

/// Whether `path` names a checkpoint [`open`] reads (and not a
/// `.safetensors` file of Keel's own weights).
pub fn is_pretrained(path: &Path) -> bool {
    hf::is_checkpoint_dir(path) || path.extension().is_some_and(|e| e == "gguf")
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        codes::CHECKPOINT_FORMAT,
        format!("cannot build the checkpoint's tokenizer: {e}"),
        "the tokenizer.json (or the GGUF file's tokenizer metadata) must be a Hugging Face tokenizer; `task.tokenizer` names another",
    )
    .at(path.display().to_string())
}

/// Open a checkpoint directory or GGUF file.
pub fn open(path: &Path, seed: u64) -> Result<Pretrained, Error> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let g = gguf::Gguf::open(path)?;
        let (cfg, weights, meta) = gguf::load(&g, seed)?;
        let add_bos = matches!(
            g.meta.get("tokenizer.ggml.add_bos_token"),
            Some(gguf::Val::Bool(true))
        );
        let tokenizer = match gguf::tokenizer_json(&g)? {
            Some(json) => {
                let tk: tokenizers::Tokenizer = json.parse().map_err(|e| tok_err(path, e))?;
                Some(Tokenizer::pretrained(tk, &meta, add_bos).map_err(|e| tok_err(path, e))?)
            }
            None => None,
        };
        return Ok(Pretrained {
            cfg,
            weights,
            chat_template: gguf::chat_template(&g),
            meta,
            tokenizer,
            format: "gguf",
        });
    }
    let (cfg, weights, meta) = hf::load_dir(path, seed)?;
    let tk_path = path.join("tokenizer.json");
    let tk_cfg: Value = fs::read_to_string(path.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let add_bos = tk_cfg.get("add_bos_token").and_then(Value::as_bool) == Some(true);
    let tokenizer = if tk_path.exists() {
        let tk = tokenizers::Tokenizer::from_file(&tk_path).map_err(|e| tok_err(&tk_path, e))?;
        Some(Tokenizer::pretrained(tk, &meta, add_bos).map_err(|e| tok_err(&tk_path, e))?)
    } else {
        None
    };
    let chat_template = fs::read_to_string(path.join("chat_template.jinja"))
        .ok()
        .or_else(|| {
            tk_cfg
                .get("chat_template")
                .and_then(Value::as_str)
                .map(String::from)
        });
    Ok(Pretrained {
        cfg,
        weights,
        meta,
        tokenizer,
        chat_template,
        format: "hf",
    })
}

/// The next token's `k` most likely ids with their log-probabilities after
/// `prompt` (the tokenizer's ids), under the checkpoint's model.
pub fn next_token(p: &Pretrained, prompt: &[u32], k: usize) -> Vec<(u32, f64)> {
    let device = burn::tensor::Device::flex();
    let policy = crate::model::Policy::new(p.cfg.clone(), &p.weights, &device);
    let t = prompt.len().max(1);
    let toks: Vec<u32> = if prompt.is_empty() {
        vec![0]
    } else {
        prompt.to_vec()
    };
    let (last, _) = policy.prefill(&toks, &vec![true; t], 1, t);
    let row = crate::model::to_vec(&last);
    let limit = p
        .tokenizer
        .as_ref()
        .map_or(row.len(), |tk| tk.vocab_size().min(row.len()));
    let row = &row[..limit];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut ids: Vec<usize> = (0..row.len()).collect();
    let k = k.min(ids.len());
    let by = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by);
    }
    ids.truncate(k);
    ids.sort_by(by);
    ids.into_iter()
        .map(|i| (i as u32, row[i] as f64 - lse))
        .collect()
}

/// A short description of the tokenizer for `keel inspect`.
pub fn describe_tokenizer(t: &Tokenizer) -> String {
    tokenizer::describe(t)
}
