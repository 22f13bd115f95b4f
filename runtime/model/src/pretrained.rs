//! A pretrained checkpoint, whichever its format: a Hugging Face directory
//! (`crate::hf`) or a GGUF file (`crate::gguf`), with the tokenizer and chat
//! template that come with it. `model.init` and `keel inspect` open
//! checkpoints through [`open`].

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{Error, Kind};
use crate::family::Meta;
use crate::hf;
use crate::tokenizer::Tokenizer;
use crate::transformer::{ModelConfig, Weights};
use crate::{gguf, tokenizer};

pub struct Pretrained {
    pub cfg: ModelConfig,
    pub weights: Weights,
    pub meta: Meta,
    /// `tokenizer.json` of the directory, or the GGUF metadata's.
    pub tokenizer: Option<Tokenizer>,
    /// The chat template's source, where the checkpoint has one.
    pub chat_template: Option<String>,
    /// Where it came from (a file, or the GGUF key), for errors.
    pub chat_origin: String,
    /// The tokenizer's `bos_token` and `eos_token` strings, which templates
    /// read as variables.
    pub special: (Option<String>, Option<String>),
    /// `hf` or `gguf`.
    pub format: &'static str,
}

impl Pretrained {
    /// The compiled chat template, if the checkpoint has one.
    pub fn chat(&self) -> Result<Option<ChatTemplate>, Error> {
        self.chat_template
            .as_deref()
            .map(|src| {
                ChatTemplate::new(
                    src,
                    self.special.0.clone(),
                    self.special.1.clone(),
                    &self.chat_origin,
                )
            })
            .transpose()
    }
}

/// The strings of the BOS and first EOS ids, where the tokenizer has them.
fn special_of(tk: Option<&Tokenizer>, meta: &Meta) -> (Option<String>, Option<String>) {
    let text = |id: Option<u32>| match (tk, id) {
        (Some(Tokenizer::Hf { tk, .. }), Some(id)) => tk.id_to_token(id),
        _ => None,
    };
    (text(meta.bos), text(meta.eos.first().copied()))
}

/// `"<s>"` or `{"content": "<s>", …}` in a tokenizer_config.json.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// Whether `path` names a checkpoint [`open`] reads (and not a
/// `.safetensors` file of Keel's own weights).
pub fn is_pretrained(path: &Path) -> bool {
    hf::is_checkpoint_dir(path) || path.extension().is_some_and(|e| e == "gguf")
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::CheckpointFormat,
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
        let special = special_of(tokenizer.as_ref(), &meta);
        return Ok(Pretrained {
            cfg,
            weights,
            chat_template: gguf::chat_template(&g),
            chat_origin: format!("{}: `tokenizer.chat_template`", path.display()),
            special,
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
    let jinja = path.join("chat_template.jinja");
    let (chat_template, chat_origin) = match fs::read_to_string(&jinja) {
        Ok(t) => (Some(t), jinja.display().to_string()),
        Err(_) => (
            tk_cfg
                .get("chat_template")
                .and_then(Value::as_str)
                .map(String::from),
            format!(
                "{}: `chat_template`",
                path.join("tokenizer_config.json").display()
            ),
        ),
    };
    let (bos, eos) = special_of(tokenizer.as_ref(), &meta);
    let special = (
        token_string(tk_cfg.get("bos_token")).or(bos),
        token_string(tk_cfg.get("eos_token")).or(eos),
    );
    Ok(Pretrained {
        cfg,
        weights,
        meta,
        tokenizer,
        chat_template,
        chat_origin,
        special,
        format: "hf",
    })
}

/// The next token's `k` most likely ids with their log-probabilities after
/// `prompt` (the tokenizer's ids), under the checkpoint's model.
pub fn next_token(p: &Pretrained, prompt: &[u32], k: usize) -> Vec<(u32, f64)> {
    let device = burn::tensor::Device::flex();
    let policy = crate::transformer::Transformer::new(p.cfg.clone(), &p.weights, &device);
    let t = prompt.len().max(1);
    let toks: Vec<u32> = if prompt.is_empty() {
        vec![0]
    } else {
        prompt.to_vec()
    };
    let (last, _) = policy.prefill(&toks, &vec![true; t], 1, t);
    let row = crate::transformer::to_vec(&last);
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
