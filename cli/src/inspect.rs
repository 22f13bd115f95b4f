//! `keel inspect DIR|FILE.gguf [--prompt TEXT [--chat]] [--json]`: what a pretrained
//! checkpoint holds (architecture, parameter count, dtype, tokenizer, chat
//! template) and, with a prompt, the model's next-token top-10, so a user
//! can sanity-check a checkpoint before training on it.

use crate::diagnostics;
use keel_compiler::{Error, codes};
use keel_model::chat::ChatTemplate;
use keel_model::pretrained::{self, Pretrained};
use keel_runtime::error::from_model;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory (config.json, safetensors) or a .gguf file.
    path: String,
    /// Text to encode and continue by one token.
    #[arg(long)]
    prompt: Option<String>,
    /// Put the prompt through the checkpoint's chat template first, as
    /// a user message with the assistant's turn opened (as `keel run`
    /// does for an instruct checkpoint).
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The prompt (after the chat template, with --chat) as encoded, and the
/// next token's top 10 under the model: (id, text, logp).
#[derive(Default)]
struct Prompt {
    text: Option<String>,
    ids: Vec<u32>,
    top: Vec<(u32, String, f64)>,
}

pub fn run(a: Args) -> ExitCode {
    let Some(m) = open(&a.path) else {
        return ExitCode::from(1);
    };
    // The template compiles (or what is wrong with it).
    let template = m.chat().map_err(from_model);
    let prompt = match &a.prompt {
        Some(text) => match continue_prompt(&m, &template, &a.path, text, a.chat) {
            Some(p) => p,
            None => return ExitCode::from(1),
        },
        None => Prompt::default(),
    };
    if a.json {
        print_json(&m, &template, &prompt);
    } else {
        print_text(&a.path, &m, &template, &prompt, a.chat);
    }
    ExitCode::SUCCESS
}

/// The checkpoint at `path`, or its error printed (`None`).
fn open(path: &str) -> Option<Pretrained> {
    let p = Path::new(path);
    if !pretrained::is_pretrained(p) {
        diagnostics::fail(
            &Error::new(
                codes::CHECKPOINT_FORMAT,
                format!("`{path}` is neither a checkpoint directory (with config.json) nor a .gguf file"),
                "give a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json) or a GGUF file",
            )
            .at(path.to_string()),
        );
        return None;
    }
    match pretrained::open(p, 0) {
        Ok(m) => Some(m),
        Err(e) => {
            diagnostics::fail(&from_model(e));
            None
        }
    }
}

/// `--prompt TEXT [--chat]`: the prompt encoded (through the chat template
/// with `chat`) and continued by one token, or what stops it printed
/// (`None`).
fn continue_prompt(
    m: &Pretrained,
    template: &Result<Option<ChatTemplate>, Error>,
    path: &str,
    text: &str,
    chat: bool,
) -> Option<Prompt> {
    let text = if chat {
        let rendered = match template {
            Ok(Some(t)) => t
                .render(&[keel_model::chat::user(text)], true)
                .map_err(from_model),
            Ok(None) => Err(Error::new(
                codes::CHECKPOINT_FORMAT,
                "the checkpoint has no chat template",
                "drop --chat, or add the model's chat_template.jinja to the directory",
            )
            .at(path.to_string())),
            Err(e) => Err(e.clone()),
        };
        match rendered {
            Ok(t) => t,
            Err(e) => {
                diagnostics::fail(&e);
                return None;
            }
        }
    } else {
        text.to_string()
    };
    let Some(tok) = &m.tokenizer else {
        diagnostics::fail(
            &Error::new(
                codes::CHECKPOINT_FORMAT,
                "the checkpoint has no tokenizer to encode the prompt",
                "put the model's tokenizer.json in the directory",
            )
            .at(path.to_string()),
        );
        return None;
    };
    let mut ids = Vec::new();
    // A chat template writes its own special tokens.
    if !chat {
        ids.extend(tok.bos());
    }
    match tok.encode(&text) {
        Ok(encoded) => ids.extend(encoded),
        Err(e) => {
            eprintln!("error: cannot encode the prompt: {e}");
            return None;
        }
    }
    let top = pretrained::next_token(m, &ids, 10)
        .into_iter()
        .map(|(id, lp)| (id, tok.token_text(id), lp))
        .collect();
    Some(Prompt {
        text: Some(text),
        ids,
        top,
    })
}

/// `--json`: everything as one pretty-printed object.
fn print_json(m: &Pretrained, template: &Result<Option<ChatTemplate>, Error>, prompt: &Prompt) {
    let c = &m.cfg;
    let v = json!({
        "format": m.format,
        "family": m.meta.family,
        "dtype": m.meta.dtype,
        "parameters": c.parameters(),
        "vocab": c.vocab,
        "d_model": c.d_model,
        "layers": c.layers,
        "heads": c.heads,
        "kv_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden": c.hidden,
        "max_positions": m.meta.max_positions,
        "qk_norm": c.qk_norm,
        "qkv_bias": c.qkv_bias,
        "tied": c.tied,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope.theta,
        "rope_llama3": c.rope.llama3.as_ref().map(|s| s.factor),
        "eos": m.meta.eos,
        "bos": m.meta.bos,
        "tokenizer": m.tokenizer.as_ref().map(pretrained::describe_tokenizer),
        "chat_template": m.chat_template.is_some(),
        "chat_template_compiles": matches!(template, Ok(Some(_))),
        "prompt_text": prompt.text,
        "prompt_ids": prompt.ids,
        "next_token": prompt.top.iter().map(|(id, s, lp)| json!({"id": id, "text": s, "logp": lp})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// One line per property, then the prompt's next tokens.
fn print_text(
    path: &str,
    m: &Pretrained,
    template: &Result<Option<ChatTemplate>, Error>,
    prompt: &Prompt,
    chat: bool,
) {
    let c = &m.cfg;
    let template_line = match (&m.chat_template, template) {
        (None, _) => "none".to_string(),
        (Some(_), Ok(_)) => format!("yes, from {}", m.chat_origin),
        (Some(_), Err(e)) => format!("does not compile: {}", e.message),
    };
    let rope = match &c.rope.llama3 {
        Some(s) => format!("theta {}, llama3 scaling ×{}", c.rope.theta, s.factor),
        None => format!("theta {}", c.rope.theta),
    };
    let tokenizer = m.tokenizer.as_ref().map(pretrained::describe_tokenizer);
    println!("{path}");
    println!(
        "  format        {} ({}), stored as {}",
        m.format, m.meta.family, m.meta.dtype
    );
    println!(
        "  parameters    {} ({:.1} M)",
        c.parameters(),
        c.parameters() as f64 / 1e6
    );
    println!(
        "  shape         {} layers, d_model {}, {} heads ({} kv, width {}), MLP {}, vocabulary {}",
        c.layers, c.d_model, c.heads, c.kv_heads, c.head_dim, c.hidden, c.vocab
    );
    println!(
        "  features      rope {rope}; rms eps {}; {}{}{}",
        c.norm_eps,
        if c.tied {
            "tied output layer"
        } else {
            "separate output layer"
        },
        if c.qk_norm { "; q/k norm" } else { "" },
        if c.qkv_bias { "; q/k/v biases" } else { "" }
    );
    println!("  positions     {}", m.meta.max_positions);
    println!(
        "  tokenizer     {}",
        tokenizer.unwrap_or_else(|| "none (give task.tokenizer)".into())
    );
    println!("  chat template {template_line}");
    if !prompt.top.is_empty() {
        if chat && let Some(t) = &prompt.text {
            println!("  prompt        {t:?}");
        }
        println!("  prompt ids    {:?}", prompt.ids);
        println!("  next token    (top 10)");
        for (id, s, lp) in &prompt.top {
            println!("    {id:>7}  {lp:>9.4}  {s:?}");
        }
    }
}
