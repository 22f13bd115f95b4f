//! Diagnostics latency of `keel lsp` on a generated 1,000-line recipe: the
//! time from sending an edit (`didChange`) to receiving its
//! `publishDiagnostics`, through the real server loop (in-process
//! connection, so no pipe noise), including the debounce window. As a
//! baseline in the same run: the bare check of the same text.
//!
//! `cargo bench -p keel-lsp --bench latency` prints median and p99.

use lsp_server::{Connection, Message, Notification, Request, RequestId};
use serde_json::json;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() {
    // `cargo test --all-targets` runs benches once in test mode: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 5 } else { 200 };
    let base = keel_tests::generated_recipe(1000);
    let (server, client) = Connection::memory();
    let handle = std::thread::spawn(move || keel_lsp::serve(&server));
    let send = |m: Message| client.sender.send(m).expect("send");
    send(Message::Request(Request::new(
        RequestId::from(1),
        "initialize".into(),
        json!({"capabilities": {}}),
    )));
    let _ = client.receiver.recv();
    send(Message::Notification(Notification::new(
        "initialized".into(),
        json!({}),
    )));
    let uri = "file:///tmp/keel-bench/big.recipe";
    send(Message::Notification(Notification::new(
        "textDocument/didOpen".into(),
        json!({"textDocument": {"uri": uri, "languageId": "keel", "version": 1, "text": base}}),
    )));
    let wait_diags = || loop {
        if let Ok(Message::Notification(n)) = client.receiver.recv()
            && n.method == "textDocument/publishDiagnostics"
        {
            return n;
        }
    };
    let _ = wait_diags();
    let mut lsp = Vec::new();
    let mut bare = Vec::new();
    for i in 0..rounds {
        // Alternate a clean edit and one with an error, like typing.
        let text = if i % 2 == 0 {
            base.replacen(
                "eps_high = 0.28",
                &format!("eps_high = 0.{}", 20 + i % 9),
                1,
            )
        } else {
            base.replacen("value = c0", "value = c0 +", 1)
        };
        let t0 = Instant::now();
        send(Message::Notification(Notification::new(
            "textDocument/didChange".into(),
            json!({"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [{"text": text}]}),
        )));
        let _ = wait_diags();
        lsp.push(t0.elapsed());
        let t1 = Instant::now();
        let c = keel_tests::check_str(&text);
        std::hint::black_box(c.diagnostics.len());
        bare.push(t1.elapsed());
    }
    send(Message::Request(Request::new(
        RequestId::from(2),
        "shutdown".into(),
        json!(null),
    )));
    let _ = client.receiver.recv();
    send(Message::Notification(Notification::new(
        "exit".into(),
        json!(null),
    )));
    drop(client);
    let _ = handle.join();
    lsp.sort();
    bare.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("keel lsp diagnostics after an edit, 1,000-line recipe, {rounds} edits:");
    println!(
        "  edit -> publishDiagnostics: median {:.2} ms, p99 {:.2} ms (includes the {} ms debounce)",
        ms(percentile(&lsp, 0.5)),
        ms(percentile(&lsp, 0.99)),
        keel_lsp::DEBOUNCE.as_millis()
    );
    println!(
        "  baseline, bare check:       median {:.2} ms, p99 {:.2} ms",
        ms(percentile(&bare, 0.5)),
        ms(percentile(&bare, 0.99))
    );
}
