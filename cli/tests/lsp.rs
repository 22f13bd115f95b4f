//! Drives `keel lsp` over stdio with JSON-RPC, as an editor does.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    next_id: i64,
    /// Notifications received while waiting for something else.
    backlog: Vec<Value>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("keel lsp starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value =
                    serde_json::from_slice(&body).expect("every message is well-formed JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            rx,
            next_id: 1,
            backlog: Vec::new(),
        };
        let r = c.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {}}),
        );
        assert!(r["result"]["capabilities"].is_object(), "{r}");
        c.notify("initialized", json!({}));
        c
    }

    fn send(&mut self, v: Value) {
        let body = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{}", body.len(), body).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("a response in time");
            if v.get("id") == Some(&json!(id)) {
                assert_eq!(v["jsonrpc"], "2.0");
                assert!(v.get("result").is_some() || v.get("error").is_some(), "{v}");
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| {
            v["method"] == "textDocument/publishDiagnostics" && v["params"]["uri"] == uri
        }) {
            return self.backlog.remove(i)["params"]["diagnostics"].clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("diagnostics in time");
            if v["method"] == "textDocument/publishDiagnostics" && v["params"]["uri"] == uri {
                return v["params"]["diagnostics"].clone();
            }
            self.backlog.push(v);
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "keel", "version": 1, "text": text}}),
        );
    }

    fn change(&mut self, uri: &str, version: i64, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
        );
    }

    fn at(&mut self, method: &str, uri: &str, line: u32, character: u32) -> Value {
        self.request(method, json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}))
    }

    fn shutdown(mut self) {
        let r = self.request("shutdown", Value::Null);
        assert!(r.get("error").is_none(), "{r}");
        self.notify("exit", Value::Null);
        let status = self.child.wait().expect("exits");
        assert!(status.success());
    }
}

fn uri(name: &str) -> String {
    format!("file:///tmp/keel-lsp-test/{name}")
}

/// Strip what depends on the machine (the stdlib cache path) from a value.
fn stable(v: &Value) -> String {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    let dir = std::env::temp_dir()
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    s.replace(&dir, "<tmp>")
}

const BROKEN: &str = "import std/grpo\n\nrecipe mine extends grpo {\n    clip.eps_low = 1.28\n    credit = (reward - mean(rewrd) over group)\n    objective { loss = -( }\n}\n";
const FIXED: &str = "import std/grpo\n\nrecipe mine extends grpo {\n    clip.eps_high = 0.28\n    credit = (reward - mean(reward) over group)\n    monitor { kl = mean(logp - ref_logp) over batch }\n}\n";

#[test]
fn session_diagnostics_hover_completion_definition_formatting() {
    let mut c = Client::start();
    let u = uri("mine.recipe");
    c.open(&u, BROKEN);
    let d = c.diagnostics(&u);
    insta::assert_snapshot!("lsp_broken_diagnostics", stable(&d));
    // The same content as `keel check`.
    let codes: Vec<&str> = d
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["code"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        codes.contains(&"E0005") && codes.contains(&"E0100") && codes.contains(&"E0300"),
        "{codes:?}"
    );

    c.change(&u, 2, FIXED);
    let d = c.diagnostics(&u);
    assert_eq!(d, json!([]), "fixed text is clean");

    // Hover: an inherited hyperparameter set here, an input, a function, a preset.
    let h = c.at("textDocument/hover", &u, 3, 11);
    insta::assert_snapshot!("lsp_hover_key", stable(&h["result"]));
    let h = c.at("textDocument/hover", &u, 4, 16);
    assert!(
        h["result"]["contents"]["value"]
            .as_str()
            .unwrap_or("")
            .contains("seq-level number"),
        "{h}"
    );
    let h = c.at("textDocument/hover", &u, 4, 25);
    let v = h["result"]["contents"]["value"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(v.contains("mean(x)"), "{h}");
    // The level and type of the expression under the cursor.
    assert!(v.ends_with("this expression: group-level number"), "{h}");
    let h = c.at("textDocument/hover", &u, 2, 23);
    assert!(
        h["result"]["contents"]["value"]
            .as_str()
            .unwrap_or("")
            .contains("DeepSeekMath"),
        "{h}"
    );

    // Completion: presets after `extends`, keys inside a section.
    let u2 = uri("complete.recipe");
    c.open(&u2, "recipe r extends \n");
    let _ = c.diagnostics(&u2);
    let r = c.at("textDocument/completion", &u2, 0, 17);
    let labels: Vec<String> = r["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["label"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        labels.contains(&"std/grpo".to_string()) && labels.contains(&"std/dapo".to_string()),
        "{labels:?}"
    );
    c.change(&u2, 2, "recipe r {\n    clip {\n        \n    }\n}\n");
    let r = c.at("textDocument/completion", &u2, 2, 8);
    let items = r["result"].as_array().cloned().unwrap_or_default();
    let eps = items
        .iter()
        .find(|x| x["label"] == "eps_high")
        .expect("eps_high offered");
    assert_eq!(eps["detail"], "default 0.2");
    c.change(&u2, 3, "recipe r {\n    \n}\n");
    let r = c.at("textDocument/completion", &u2, 1, 4);
    let labels: Vec<String> = r["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["label"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for s in ["objective", "credit", "clip", "guard"] {
        assert!(labels.contains(&s.to_string()), "{s} in {labels:?}");
    }

    // Definition: an inherited key resolves into the (read-only) stdlib file.
    let r = c.at("textDocument/definition", &u, 3, 11);
    let target = r["result"]["uri"].as_str().unwrap_or("");
    assert!(
        target.ends_with("/grpo.recipe") || target.ends_with("/ppo.recipe"),
        "{r}"
    );
    let u3 = uri("defs.recipe");
    c.open(
        &u3,
        "recipe r {\n    objective {\n        let a = logp * 2\n        loss = a + a\n    }\n}\n",
    );
    let _ = c.diagnostics(&u3);
    let r = c.at("textDocument/definition", &u3, 3, 15);
    assert_eq!(
        r["result"]["range"]["start"],
        json!({"line": 2, "character": 12}),
        "{r}"
    );

    // Symbols, formatting, semantic tokens.
    let r = c.request(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": u}}),
    );
    insta::assert_snapshot!("lsp_symbols", stable(&r["result"]));
    c.change(&u3, 2, "recipe r{objective.loss=-logp}\n");
    let r = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": u3}, "options": {"tabSize": 4, "insertSpaces": true}}),
    );
    assert_eq!(
        r["result"][0]["newText"], "recipe r {\n    objective.loss = -logp\n}\n",
        "{r}"
    );
    let r = c.request(
        "textDocument/semanticTokens/full",
        json!({"textDocument": {"uri": u}}),
    );
    let data = r["result"]["data"].as_array().map(|a| a.len()).unwrap_or(0);
    assert!(data > 20 && data.is_multiple_of(5), "{r}");

    // A panic inside a handler is an error response; the server keeps going.
    let r = c.request("keel/debugPanic", Value::Null);
    assert_eq!(r["error"]["code"], -32603, "{r}");
    let h = c.at("textDocument/hover", &u, 3, 11);
    assert!(h["result"].is_object());
    c.shutdown();
}

#[test]
fn utf16_positions() {
    let mut c = Client::start();
    let u = uri("utf16.recipe");
    // `é` is 2 bytes and 1 UTF-16 unit; `𝛼` is 4 bytes and 2 units.
    let line1 = "recipe r { monitor { x = \"é𝛼é\" } objective.loss = ";
    c.open(&u, &format!("// é 𝛼\n{line1}lp }}\n"));
    let d = c.diagnostics(&u);
    let e0100 = d
        .as_array()
        .and_then(|a| a.iter().find(|x| x["code"] == "E0100"))
        .expect("E0100")
        .clone();
    let col = line1.encode_utf16().count();
    assert_ne!(col, line1.len(), "the line has multi-byte characters");
    assert_eq!(
        e0100["range"]["start"],
        json!({"line": 1, "character": col}),
        "{d}"
    );
    assert_eq!(
        e0100["range"]["end"],
        json!({"line": 1, "character": col + 2}),
        "{d}"
    );
    c.shutdown();
}

/// 2,000 random edits (insertions and deletions of random characters) to a
/// stdlib recipe, with requests at random positions: no crash, every
/// response well-formed.
#[test]
fn stress_random_edits() {
    let mut c = Client::start();
    let u = uri("stress.recipe");
    let mut text = std::fs::read_to_string(root().join("stdlib/dapo.recipe")).expect("stdlib file");
    c.open(&u, &text);
    let _ = c.diagnostics(&u);
    let alphabet: Vec<char> = "{}()[]=.,;:+-*/^<>\"#@ \nabcxyz019_éλ𝛼".chars().collect();
    let mut seed: u64 = 0x5eed;
    let mut rnd = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n.max(1)
    };
    for version in 0..2000 {
        let chars: Vec<char> = text.chars().collect();
        let pos = rnd(chars.len() + 1);
        let mut new: Vec<char> = chars.clone();
        if rnd(2) == 0 || new.is_empty() {
            new.insert(pos.min(new.len()), alphabet[rnd(alphabet.len())]);
        } else {
            let end = (pos + 1 + rnd(3)).min(new.len());
            new.drain(pos.min(end)..end);
        }
        text = new.into_iter().collect();
        c.change(&u, version + 2, &text);
        if version % 50 == 0 {
            let line = rnd(30) as u32;
            let col = rnd(40) as u32;
            for m in [
                "textDocument/hover",
                "textDocument/completion",
                "textDocument/definition",
            ] {
                let _ = c.at(m, &u, line, col);
            }
            let _ = c.request(
                "textDocument/documentSymbol",
                json!({"textDocument": {"uri": u}}),
            );
            let _ = c.request(
                "textDocument/semanticTokens/full",
                json!({"textDocument": {"uri": u}}),
            );
            let r = c.request("textDocument/formatting", json!({"textDocument": {"uri": u}, "options": {"tabSize": 4, "insertSpaces": true}}));
            assert!(r.get("result").is_some(), "{r}");
        }
    }
    // The final text's diagnostics arrive, and every published batch so far
    // was well-formed (the reader thread parses every message).
    let d = c.diagnostics(&u);
    assert!(d.is_array());
    for v in &c.backlog {
        if v["method"] == "textDocument/publishDiagnostics" {
            for diag in v["params"]["diagnostics"].as_array().into_iter().flatten() {
                assert!(
                    diag["range"]["start"]["line"].is_u64() && diag["message"].is_string(),
                    "{diag}"
                );
            }
        }
    }
    c.shutdown();
}

/// An error in a file reached through `import`/`extends` shows at the import,
/// with the imported file's own errors as related information — including
/// unsaved text of the imported file open in the editor.
#[test]
fn errors_in_imported_files_are_related_information() {
    let mut c = Client::start();
    let base = uri("base.recipe");
    let user = uri("user.recipe");
    c.open(&base, "recipe base { objective.loss = ( }\n");
    let _ = c.diagnostics(&base);
    c.open(
        &user,
        "import \"./base.recipe\"\nrecipe r extends base {}\n",
    );
    let d = c.diagnostics(&user);
    let first = &d[0];
    assert_eq!(first["code"], "E0101", "{d}");
    let related = &first["relatedInformation"][0];
    assert_eq!(related["location"]["uri"], base, "{d}");
    assert!(
        related["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("E0005"),
        "{d}"
    );
    c.shutdown();
}
