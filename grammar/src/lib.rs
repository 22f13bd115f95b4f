//! `keel-grammar`: the lexer (logos), the grammar (lalrpop) and the AST of
//! the Keel recipe language.
//!
//! Parsing cannot fail: [`parse`] always returns a [`File`] plus the list of
//! syntax errors. Broken constructs become `Error` nodes. This crate does no
//! IO and knows nothing of diagnostics rendering; `keel-compiler` turns
//! [`SyntaxError`]s into its diagnostics.

pub mod ast;
mod depth;
pub mod lexer;
mod sexp;

use lalrpop_util::lalrpop_mod;

lalrpop_mod!(
    #[allow(clippy::all, clippy::pedantic, unused_parens, unused_imports)]
    grammar
);

pub use ast::*;
pub use depth::MAX_DEPTH;
pub use lexer::{LexError, Tok};
pub use sexp::sexp;

/// An error the parser recovered from.
pub type Recovered = lalrpop_util::ErrorRecovery<usize, Tok, LexError>;

/// A syntax error: what went wrong, and where (byte offsets).
#[derive(Clone, Debug, PartialEq)]
pub enum SyntaxError {
    /// A token the grammar does not allow here.
    Unexpected {
        span: Span,
        found: String,
        expected: Vec<String>,
    },
    /// The file ended where more was needed.
    UnexpectedEof { at: usize, expected: Vec<String> },
    /// A character that starts no token.
    BadChar { span: Span, ch: String },
    /// A string literal with no closing quote.
    UnterminatedStr { span: Span },
    /// A bracket that is never closed.
    Unclosed { open: Span, at: usize, closer: char },
    /// A closing bracket with nothing to close.
    Unopened { span: Span, ch: String },
    /// An expression nested deeper than [`MAX_DEPTH`]; replaced by an error node.
    TooDeep { span: Span },
}

impl SyntaxError {
    /// The primary span of the error.
    pub fn span(&self) -> Span {
        match self {
            SyntaxError::Unexpected { span, .. }
            | SyntaxError::BadChar { span, .. }
            | SyntaxError::UnterminatedStr { span }
            | SyntaxError::Unopened { span, .. }
            | SyntaxError::TooDeep { span } => *span,
            SyntaxError::UnexpectedEof { at, .. } => Span::new(*at, *at),
            SyntaxError::Unclosed { open, .. } => *open,
        }
    }
}

/// The span of a recovered error: the offending token plus everything dropped.
pub(crate) fn recovered_span(e: &Recovered, l: usize, r: usize) -> Span {
    use lalrpop_util::ParseError as P;
    let mut span = match &e.error {
        P::UnrecognizedToken { token, .. } | P::ExtraToken { token } => Span::new(token.0, token.2),
        P::UnrecognizedEof { location, .. } | P::InvalidToken { location } => {
            Span::new(*location, *location)
        }
        P::User { .. } => Span::new(l, r.max(l)),
    };
    for (a, _, b) in &e.dropped_tokens {
        span = span.to(Span::new(*a, *b));
    }
    span
}

/// Parse a whole file. Never fails: returns the (possibly partial) tree and
/// every syntax error found, in source order.
pub fn parse(src: &str) -> (File, Vec<SyntaxError>) {
    let lexed = lexer::lex(src);
    let mut errors = Vec::new();
    for e in lexed.errors {
        errors.push(lex_error(e, Some(src)));
    }
    let mut recovered = Vec::new();
    let tokens = lexed
        .tokens
        .into_iter()
        // Bad characters were reported by the lexer; the parser skips them.
        .filter(|(_, t, _)| *t != Tok::Error)
        .map(Ok::<_, LexError>);
    let result = grammar::FileParser::new().parse(&mut recovered, tokens);
    let items = match result {
        Ok(items) => items,
        Err(e) => {
            errors.push(convert(e));
            Vec::new()
        }
    };
    let mut file = File {
        items,
        comments: lexed.comments,
    };
    depth::limit_depth(&mut file, &mut errors);
    errors.extend(recovered.into_iter().map(|r| convert(r.error)));
    // A synthetic closer (empty span) is already reported as `Unclosed`.
    errors.retain(|e| !matches!(e, SyntaxError::Unexpected { span, .. } if span.is_empty()));
    errors.sort_by_key(|e| e.span());
    errors.dedup();
    (file, errors)
}

/// Parse a single expression (for `--set NAME=VALUE`). Fails with the
/// syntax errors when the text is not exactly one well-formed expression.
pub fn parse_expr(src: &str) -> Result<Expr, Vec<SyntaxError>> {
    let lexed = lexer::lex(src);
    let mut errors: Vec<SyntaxError> = Vec::new();
    if !lexed.errors.is_empty() || lexed.tokens.iter().any(|(_, t, _)| *t == Tok::Error) {
        let (_, errs) = parse(src);
        return Err(errs);
    }
    let mut recovered = Vec::new();
    let tokens = lexed.tokens.into_iter().map(Ok::<_, LexError>);
    match grammar::ExprParser::new().parse(&mut recovered, tokens) {
        Ok(mut e) if recovered.is_empty() => {
            let mut file = File {
                items: vec![Item::Fn(FnDef {
                    name: Ident {
                        name: String::new(),
                        span: e.span,
                    },
                    params: Vec::new(),
                    body: e.clone(),
                    span: e.span,
                })],
                comments: Vec::new(),
            };
            depth::limit_depth(&mut file, &mut errors);
            if let Some(Item::Fn(f)) = file.items.pop() {
                e = f.body;
            }
            if errors.is_empty() {
                Ok(e)
            } else {
                Err(errors)
            }
        }
        Ok(_) => Err(recovered.into_iter().map(|r| convert(r.error)).collect()),
        Err(err) => Err(vec![convert(err)]),
    }
}

fn convert(e: lalrpop_util::ParseError<usize, Tok, LexError>) -> SyntaxError {
    use lalrpop_util::ParseError as P;
    match e {
        P::UnrecognizedToken {
            token: (a, tok, b),
            expected,
        } => SyntaxError::Unexpected {
            span: Span::new(a, b),
            found: tok.to_string(),
            expected: tidy_expected(expected),
        },
        P::ExtraToken { token: (a, tok, b) } => SyntaxError::Unexpected {
            span: Span::new(a, b),
            found: tok.to_string(),
            expected: Vec::new(),
        },
        P::UnrecognizedEof { location, expected } => SyntaxError::UnexpectedEof {
            at: location,
            expected: tidy_expected(expected),
        },
        P::InvalidToken { location } => SyntaxError::BadChar {
            span: Span::new(location, location + 1),
            ch: String::new(),
        },
        P::User { error } => lex_error(error, None),
    }
}

/// A lexer error as a syntax error; with the source, bad characters are
/// quoted in the message.
fn lex_error(e: LexError, src: Option<&str>) -> SyntaxError {
    let text = |span: Span| {
        src.and_then(|s| s.get(span.start..span.end))
            .unwrap_or("")
            .to_string()
    };
    match e {
        LexError::BadChar(span) => SyntaxError::BadChar {
            span,
            ch: text(span),
        },
        LexError::UnterminatedStr(span) => SyntaxError::UnterminatedStr { span },
        LexError::Unclosed {
            open,
            at_eof,
            closer,
        } => SyntaxError::Unclosed {
            open,
            at: at_eof,
            closer,
        },
        LexError::Unopened(span) => SyntaxError::Unopened {
            span,
            ch: text(span),
        },
    }
}

/// lalrpop lists expected terminals by their grammar names in quotes; keep the
/// list short and readable: `"identifier"` → `identifier`, `"}"` → `` `}` ``.
fn tidy_expected(expected: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = expected
        .into_iter()
        .map(|e| {
            let bare = e.trim_matches('"').replace("\\\"", "\"");
            match bare.as_str() {
                "identifier" | "integer" | "float" | "string" => bare,
                "unreadable character" => String::new(),
                _ => format!("`{bare}`"),
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    // Collapse the long "any expression" lists into one phrase.
    let expr_starts = ["`(`", "`-`", "`not`", "`if`", "`[`", "integer", "float"];
    if expr_starts
        .iter()
        .filter(|s| out.contains(&s.to_string()))
        .count()
        >= 5
    {
        out.retain(|s| {
            !expr_starts.contains(&s.as_str())
                && s != "`true`"
                && s != "`false`"
                && s != "`none`"
                && s != "string"
                && s != "identifier"
        });
        out.insert(0, "an expression".to_string());
    }
    // Collapse the operators that could continue an expression.
    let ops = [
        "`!=`", "`*`", "`+`", "`-`", "`/`", "`<=`", "`<`", "`==`", "`>=`", "`>`", "`^`", "`and`",
        "`or`", "`.`", "`[`", "`(`",
    ];
    if ops.iter().filter(|s| out.contains(&s.to_string())).count() >= 6 {
        out.retain(|s| !ops.contains(&s.as_str()));
        out.push("an operator".to_string());
    }
    out
}
