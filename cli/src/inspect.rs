//! `keel inspect DIR|FILE.gguf [--prompt TEXT [--chat]] [--json]`: what a pretrained
//! checkpoint holds (architecture, parameter count, dtype, tokenizer, chat
//! template) and, with a prompt, the model's next-token top-10, so a user
//! can sanity-check a checkpoint before training on it.

use crate::diagnostics;
use keel_compiler::{Error, codes};
use keel_runtime::pretrained;
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

pub fn run(a: Args) -> ExitCode {
    let (path, prompt, chat, as_json) = (a.path.as_str(), a.prompt.as_deref(), a.chat, a.json);
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
        return ExitCode::from(1);
    }
    let m = match pretrained::open(p, 0) {
        Ok(m) => m,
        Err(e) => {
            diagnostics::fail(&e);
            return ExitCode::from(1);
        }
    };
    let c = &m.cfg;
    // The template compiles (or what is wrong with it).
    let template = m.chat();
    let template_line = match (&m.chat_template, &template) {
        (None, _) => "none".to_string(),
        (Some(_), Ok(_)) => format!("yes, from {}", m.chat_origin),
        (Some(_), Err(e)) => format!("does not compile: {}", e.message),
    };
    let mut top = Vec::new();
    let mut prompt_ids = Vec::new();
    let mut prompt_text = None;
    if let Some(text) = prompt {
        let text = if chat {
            let rendered = match &template {
                Ok(Some(t)) => t.render(&[keel_runtime::chat::user(text)], true),
                Ok(None) => Err(keel_runtime::Error::new(
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
                    return ExitCode::from(1);
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
            return ExitCode::from(1);
        };
        // A chat template writes its own special tokens.
        if !chat {
            prompt_ids.extend(tok.bos());
        }
        match tok.encode(&text) {
            Ok(ids) => prompt_ids.extend(ids),
            Err(e) => {
                eprintln!("error: cannot encode the prompt: {e}");
                return ExitCode::from(1);
            }
        }
        top = pretrained::next_token(&m, &prompt_ids, 10)
            .into_iter()
            .map(|(id, lp)| (id, tok.token_text(id), lp))
            .collect();
        prompt_text = Some(text);
    }
    let rope = match &c.rope.llama3 {
        Some(s) => format!("theta {}, llama3 scaling ×{}", c.rope.theta, s.factor),
        None => format!("theta {}", c.rope.theta),
    };
    let tokenizer = m.tokenizer.as_ref().map(pretrained::describe_tokenizer);
    if as_json {
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
            "tokenizer": tokenizer,
            "chat_template": m.chat_template.is_some(),
            "chat_template_compiles": matches!(template, Ok(Some(_))),
            "prompt_text": prompt_text,
            "prompt_ids": prompt_ids,
            "next_token": top.iter().map(|(id, s, lp)| json!({"id": id, "text": s, "logp": lp})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
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
    if !top.is_empty() {
        if chat && let Some(t) = &prompt_text {
            println!("  prompt        {t:?}");
        }
        println!("  prompt ids    {prompt_ids:?}");
        println!("  next token    (top 10)");
        for (id, s, lp) in &top {
            println!("    {id:>7}  {lp:>9.4}  {s:?}");
        }
    }
    ExitCode::SUCCESS
}
