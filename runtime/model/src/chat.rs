//! Chat templates: the Jinja program an instruct checkpoint ships
//! (`chat_template.jinja`, `tokenizer_config.json`'s `chat_template`, or the
//! GGUF key `tokenizer.chat_template`) that turns a conversation into the
//! prompt text the model was tuned on.
//!
//! Rendered as transformers' `apply_chat_template` renders it: Jinja with
//! `trim_blocks` and `lstrip_blocks`, loop controls, Python's string methods
//! (`.strip()`, `.split()`, `.startswith()`, …), `raise_exception`, the
//! tokenizer's `bos_token` and `eos_token` as variables, and
//! `add_generation_prompt`. `strftime_now` is left undefined, so templates
//! that date their system prompt (Llama 3) take their own fixed default and a
//! run stays a function of its recipe. The output is tokenized without added
//! special tokens: the template writes them.

use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Kind};

/// A compiled chat template with the tokenizer's special-token strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: Option<String>,
    eos: Option<String>,
    /// Where the template came from, for errors.
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.origin)
    }
}

/// One message of a conversation (`{"role": ..., "content": ...}`, and any
/// other fields a template reads, such as `tool_calls`).
pub type Message = serde_json::Value;

/// A user message.
pub fn user(content: &str) -> Message {
    serde_json::json!({"role": "user", "content": content})
}

/// A system message.
pub fn system(content: &str) -> Message {
    serde_json::json!({"role": "system", "content": content})
}

/// A JSON value as a template value.
fn to_jinja(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::from(a.iter().map(to_jinja).collect::<Vec<_>>()),
        J::Object(o) => Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
    }
}

fn jinja_error(e: &minijinja::Error) -> String {
    // minijinja's `Display` names the template and line; the detail of a
    // `raise_exception` is its message.
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s = format!("{s} (template line {line})");
    }
    s
}

impl ChatTemplate {
    /// Compile `source`; `origin` names the file (or GGUF key) it came from.
    pub fn new(
        source: &str,
        bos: Option<String>,
        eos: Option<String>,
        origin: &str,
    ) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| {
                Error::new(
                    Kind::CheckpointFormat,
                    format!("the chat template does not compile: {}", jinja_error(&e)),
                    "fix the template, or set `task.chat = off` to use prompts as they are",
                )
                .at(origin.to_string())
            })?;
        Ok(ChatTemplate {
            env,
            bos,
            eos,
            origin: origin.to_string(),
        })
    }

    /// The prompt text of `messages`, ending with the assistant's turn
    /// opened when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let t = self.env.get_template("chat").map_err(|e| {
            Error::new(
                Kind::CheckpointFormat,
                jinja_error(&e),
                "this is a runtime bug",
            )
        })?;
        let ctx = to_jinja(&serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos.clone().unwrap_or_default(),
            "eos_token": self.eos.clone().unwrap_or_default(),
        }));
        t.render(ctx).map_err(|e| {
            Error::new(
                Kind::CheckpointFormat,
                format!(
                    "the chat template of {} refuses the conversation: {}",
                    self.origin,
                    jinja_error(&e)
                ),
                "give the conversation the roles and order the template expects (most alternate user and assistant after an optional system message), or set `task.chat = off`",
            )
        })
    }
}

/// How a run's prompts become text: the template, and a system message
/// put before each prompt (`task.system`).
#[derive(Debug)]
pub struct Chat {
    pub template: ChatTemplate,
    pub system: Option<String>,
}

impl Chat {
    /// The conversation of a prompt: its own messages (a JSONL record's
    /// conversation), or its text as one user message, after the system
    /// message.
    pub fn conversation(&self, text: &str, messages: Option<&[Message]>) -> Vec<Message> {
        let mut out: Vec<Message> = self.system.as_deref().map(system).into_iter().collect();
        match messages {
            Some(m) => out.extend(m.iter().cloned()),
            None => out.push(user(text)),
        }
        out
    }

    /// The prompt text of a conversation, the assistant's turn opened.
    pub fn render(&self, text: &str, messages: Option<&[Message]>) -> Result<String, Error> {
        self.template
            .render(&self.conversation(text, messages), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers renders with trim_blocks and lstrip_blocks: a block tag
    /// eats its line's indentation and the newline after it (the expected
    /// text is transformers' rendering of the same template).
    #[test]
    fn blocks_are_trimmed_as_transformers_trims_them() {
        let src = "{% for m in messages %}\n    {{ m.role }}: {{ m.content | trim }}\n{% endfor %}\n{% if add_generation_prompt %}\nassistant:{% endif %}";
        let t = ChatTemplate::new(src, None, None, "t.jinja").expect("compiles");
        let out = t
            .render(&[system(" be brief "), user("2+2?")], true)
            .expect("renders");
        // (lstrip_blocks strips before block tags only, not before `{{`.)
        assert_eq!(out, "    system: be brief\n    user: 2+2?\nassistant:");
    }

    #[test]
    fn python_string_methods_raise_exception_and_special_tokens() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'assistant' %}{{ raise_exception('no assistant turns here') }}{% endif %}{{ m.content.split('</think>')[-1].lstrip('\\n').upper() }}{% if m.content.startswith('<') %}!{% endif %}{{ eos_token }}{% endfor %}";
        let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()), "t.jinja")
            .expect("compiles");
        assert_eq!(
            t.render(&[user("<think>x</think>\nhi")], false)
                .expect("renders"),
            "<s>HI!</s>"
        );
        let e = t
            .render(
                &[serde_json::json!({"role": "assistant", "content": "x"})],
                false,
            )
            .expect_err("the template raises");
        assert_eq!(e.kind, Kind::CheckpointFormat);
        assert!(e.message.contains("no assistant turns here"), "{e}");
        let e = ChatTemplate::new("{% for %}", None, None, "bad.jinja").expect_err("syntax");
        assert_eq!(e.location.as_deref(), Some("bad.jinja"));
        assert!(e.message.contains("does not compile"), "{e}");
    }

    /// Real templates (SmolLM2, Qwen2.5, Qwen3, Llama 3.2) rendered as
    /// transformers renders them (tests/reference/chat_templates.py): byte
    /// for byte, with and without the generation prompt, over system
    /// messages, multi-turn histories and Qwen3's thinking blocks.
    #[test]
    fn real_templates_render_as_transformers_renders_them() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat");
        let golden: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("golden.json")).expect("golden.json"),
        )
        .expect("json");
        assert_eq!(golden.len(), 32);
        for case in &golden {
            let name = case["template"].as_str().expect("name");
            let src = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).expect("template");
            let special = |k: &str| case[k].as_str().map(String::from);
            let t =
                ChatTemplate::new(&src, special("bos"), special("eos"), name).expect("compiles");
            let messages = case["messages"].as_array().expect("messages");
            let generation = case["add_generation_prompt"].as_bool().expect("bool");
            let got = t.render(messages, generation).expect("renders");
            assert_eq!(
                got,
                case["text"].as_str().expect("text"),
                "{name} {messages:?} {generation}"
            );
        }
    }
}
