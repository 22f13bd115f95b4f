//! `keel lsp`: the Keel language server.
//!
//! Built on `lsp-server` (the crate rust-analyzer, gleam and nickel use): a
//! plain, synchronous event loop over stdio that we fully control — the
//! server has no async work, and the compiler is fast enough to answer every
//! request on the loop. It reuses the compiler's parser, resolver and checker
//! through [`analysis`]; it has no parser of its own.
//!
//! - Edits are full-text syncs; diagnostics are published once the editor
//!   pauses (no message for [`DEBOUNCE`]), so a burst of keystrokes costs
//!   one check.
//! - Every request handler runs under `catch_unwind`: a bug becomes an error
//!   response and the server keeps running.
//! - Positions are UTF-16 columns, converted at this boundary only
//!   ([`line_index`]).

pub mod analysis;
pub mod find;
pub mod line_index;

use analysis::{Analysis, analyse};
use line_index::LineIndex;
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types as lsp;
use lsp_types::notification::Notification as _;
use lsp_types::request::Request as _;
use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// How long the editor must be quiet before diagnostics are recomputed.
pub const DEBOUNCE: Duration = Duration::from_millis(5);

/// A request that panics on purpose, to test that the server survives one.
pub const DEBUG_PANIC: &str = "keel/debugPanic";

pub fn capabilities() -> lsp::ServerCapabilities {
    lsp::ServerCapabilities {
        position_encoding: Some(lsp::PositionEncodingKind::UTF16),
        text_document_sync: Some(lsp::TextDocumentSyncCapability::Kind(
            lsp::TextDocumentSyncKind::FULL,
        )),
        hover_provider: Some(lsp::HoverProviderCapability::Simple(true)),
        completion_provider: Some(lsp::CompletionOptions {
            trigger_characters: Some(vec![".".into(), "/".into(), " ".into()]),
            ..Default::default()
        }),
        definition_provider: Some(lsp::OneOf::Left(true)),
        document_symbol_provider: Some(lsp::OneOf::Left(true)),
        document_formatting_provider: Some(lsp::OneOf::Left(true)),
        semantic_tokens_provider: Some(
            lsp::SemanticTokensServerCapabilities::SemanticTokensOptions(
                lsp::SemanticTokensOptions {
                    legend: lsp::SemanticTokensLegend {
                        token_types: analysis::TOKEN_TYPES.to_vec(),
                        token_modifiers: analysis::TOKEN_MODIFIERS.to_vec(),
                    },
                    full: Some(lsp::SemanticTokensFullOptions::Bool(true)),
                    range: None,
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// Serve on stdin/stdout until the client says `exit`.
pub fn run_stdio() -> Result<(), String> {
    let (connection, io) = Connection::stdio();
    let served = serve(&connection);
    // The writer thread ends when the last sender is gone.
    drop(connection);
    served?;
    io.join().map_err(|e| e.to_string())
}

/// Initialize and run the loop on a connection.
pub fn serve(connection: &Connection) -> Result<(), String> {
    let caps = serde_json::to_value(capabilities()).map_err(|e| e.to_string())?;
    connection.initialize(caps).map_err(|e| e.to_string())?;
    Server::default().run(connection)
}

struct Doc {
    /// The path (or URI text) the compiler sees as the file's name.
    path: String,
    text: String,
    analysis: Option<Analysis>,
}

#[derive(Default)]
struct Server {
    docs: HashMap<lsp::Url, Doc>,
    pending: BTreeSet<lsp::Url>,
}

fn path_of(uri: &lsp::Url) -> String {
    uri.to_file_path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| uri.to_string())
}

impl Server {
    fn run(&mut self, c: &Connection) -> Result<(), String> {
        loop {
            let msg = if self.pending.is_empty() {
                match c.receiver.recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                }
            } else {
                match c.receiver.recv_timeout(DEBOUNCE) {
                    Ok(m) => m,
                    Err(crossbeam_timeout) => {
                        if crossbeam_timeout.is_disconnected() {
                            return Ok(());
                        }
                        self.publish_pending(c);
                        continue;
                    }
                }
            };
            match msg {
                Message::Request(req) => {
                    if c.handle_shutdown(&req).map_err(|e| e.to_string())? {
                        return Ok(());
                    }
                    let id = req.id.clone();
                    let resp = match catch_unwind(AssertUnwindSafe(|| self.request(req))) {
                        Ok(r) => r,
                        Err(_) => Response::new_err(
                            id,
                            ErrorCode::InternalError as i32,
                            "internal error in keel lsp; the server keeps running".into(),
                        ),
                    };
                    c.sender
                        .send(Message::Response(resp))
                        .map_err(|e| e.to_string())?;
                }
                Message::Notification(n) => {
                    if catch_unwind(AssertUnwindSafe(|| self.notification(c, n))).is_err() {
                        let msg = lsp::LogMessageParams {
                            typ: lsp::MessageType::ERROR,
                            message: "internal error in keel lsp while handling a notification"
                                .into(),
                        };
                        let _ = c.sender.send(Message::Notification(Notification::new(
                            lsp::notification::LogMessage::METHOD.into(),
                            msg,
                        )));
                    }
                }
                Message::Response(_) => {}
            }
        }
    }

    fn notification(&mut self, c: &Connection, n: Notification) {
        match n.method.as_str() {
            lsp::notification::DidOpenTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lsp::DidOpenTextDocumentParams>(n.params) {
                    let uri = p.text_document.uri;
                    self.docs.insert(
                        uri.clone(),
                        Doc {
                            path: path_of(&uri),
                            text: p.text_document.text,
                            analysis: None,
                        },
                    );
                    self.pending.remove(&uri);
                    self.publish(c, &uri);
                }
            }
            lsp::notification::DidChangeTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lsp::DidChangeTextDocumentParams>(n.params)
                {
                    let uri = p.text_document.uri;
                    if let Some(doc) = self.docs.get_mut(&uri) {
                        for change in p.content_changes {
                            match change.range {
                                None => doc.text = change.text,
                                Some(r) => {
                                    let li = LineIndex::new(&doc.text);
                                    let (a, b) = (li.offset(r.start), li.offset(r.end));
                                    if a <= b && b <= doc.text.len() {
                                        doc.text.replace_range(a..b, &change.text);
                                    }
                                }
                            }
                        }
                        // Other open recipes may import this one: recheck them too.
                        for (u, d) in self.docs.iter_mut() {
                            d.analysis = None;
                            self.pending.insert(u.clone());
                        }
                        self.pending.insert(uri);
                    }
                }
            }
            lsp::notification::DidCloseTextDocument::METHOD => {
                if let Ok(p) = serde_json::from_value::<lsp::DidCloseTextDocumentParams>(n.params) {
                    let uri = p.text_document.uri;
                    self.docs.remove(&uri);
                    self.pending.remove(&uri);
                    let params = lsp::PublishDiagnosticsParams::new(uri, Vec::new(), None);
                    send_notification::<lsp::notification::PublishDiagnostics>(c, params);
                }
            }
            _ => {}
        }
    }

    fn analysis(&mut self, uri: &lsp::Url) -> Option<&Analysis> {
        let texts: HashMap<String, String> = self
            .docs
            .values()
            .map(|d| (d.path.clone(), d.text.clone()))
            .collect();
        let doc = self.docs.get_mut(uri)?;
        if doc.analysis.is_none() {
            doc.analysis = Some(analyse(&doc.path, &doc.text, &texts));
        }
        doc.analysis.as_ref()
    }

    fn publish(&mut self, c: &Connection, uri: &lsp::Url) {
        let diags = match self.analysis(uri) {
            Some(a) => a.diagnostics(),
            None => return,
        };
        let params = lsp::PublishDiagnosticsParams::new(uri.clone(), diags, None);
        send_notification::<lsp::notification::PublishDiagnostics>(c, params);
    }

    fn publish_pending(&mut self, c: &Connection) {
        let pending = std::mem::take(&mut self.pending);
        for uri in pending {
            self.publish(c, &uri);
        }
    }

    fn offset(&mut self, uri: &lsp::Url, pos: lsp::Position) -> Option<usize> {
        let doc = self.docs.get(uri)?;
        Some(LineIndex::new(&doc.text).offset(pos))
    }

    fn request(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        let result: Result<serde_json::Value, String> = match req.method.as_str() {
            lsp::request::HoverRequest::METHOD => parse::<lsp::HoverParams>(req.params).map(|p| {
                let pp = p.text_document_position_params;
                let text = self
                    .offset(&pp.text_document.uri, pp.position)
                    .and_then(|o| {
                        self.analysis(&pp.text_document.uri)
                            .and_then(|a| a.hover(o))
                    });
                json(text.map(|t| lsp::Hover {
                    contents: lsp::HoverContents::Markup(lsp::MarkupContent {
                        kind: lsp::MarkupKind::Markdown,
                        value: t,
                    }),
                    range: None,
                }))
            }),
            lsp::request::Completion::METHOD => {
                parse::<lsp::CompletionParams>(req.params).map(|p| {
                    let pp = p.text_document_position;
                    let items = self
                        .offset(&pp.text_document.uri, pp.position)
                        .and_then(|o| {
                            self.analysis(&pp.text_document.uri)
                                .map(|a| a.completion(o))
                        })
                        .unwrap_or_default();
                    json(lsp::CompletionResponse::Array(items))
                })
            }
            lsp::request::GotoDefinition::METHOD => parse::<lsp::GotoDefinitionParams>(req.params)
                .map(|p| {
                    let pp = p.text_document_position_params;
                    let loc = self
                        .offset(&pp.text_document.uri, pp.position)
                        .and_then(|o| {
                            self.analysis(&pp.text_document.uri)
                                .and_then(|a| a.definition(o))
                        });
                    json(loc.map(lsp::GotoDefinitionResponse::Scalar))
                }),
            lsp::request::DocumentSymbolRequest::METHOD => {
                parse::<lsp::DocumentSymbolParams>(req.params).map(|p| {
                    let syms = self
                        .analysis(&p.text_document.uri)
                        .map(|a| a.symbols())
                        .unwrap_or_default();
                    json(lsp::DocumentSymbolResponse::Nested(syms))
                })
            }
            lsp::request::Formatting::METHOD => parse::<lsp::DocumentFormattingParams>(req.params)
                .map(|p| {
                    let edits = self.docs.get(&p.text_document.uri).and_then(|d| {
                        let formatted = keel_check::format::format_source(&d.text).ok()?;
                        if formatted == d.text {
                            return Some(Vec::new());
                        }
                        let li = LineIndex::new(&d.text);
                        Some(vec![lsp::TextEdit::new(
                            li.range(0, d.text.len()),
                            formatted,
                        )])
                    });
                    json(edits)
                }),
            lsp::request::SemanticTokensFullRequest::METHOD => {
                parse::<lsp::SemanticTokensParams>(req.params).map(|p| {
                    let data = self
                        .analysis(&p.text_document.uri)
                        .map(|a| a.semantic_tokens())
                        .unwrap_or_default();
                    json(lsp::SemanticTokensResult::Tokens(lsp::SemanticTokens {
                        result_id: None,
                        data,
                    }))
                })
            }
            DEBUG_PANIC => panic!("requested by {DEBUG_PANIC}"),
            other => {
                return Response::new_err(
                    id,
                    ErrorCode::MethodNotFound as i32,
                    format!("keel lsp does not handle `{other}`"),
                );
            }
        };
        match result {
            Ok(v) => Response::new_ok(id, v),
            Err(e) => Response::new_err(id, ErrorCode::InvalidParams as i32, e),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("invalid parameters: {e}"))
}

fn json<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn send_notification<N: lsp::notification::Notification>(c: &Connection, params: N::Params) {
    let _ = c.sender.send(Message::Notification(Notification::new(
        N::METHOD.into(),
        params,
    )));
}
