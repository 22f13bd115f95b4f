//! The Keel lexer.
//!
//! Built on logos. The lexer never fails: a character that starts no token
//! becomes a [`Tok::Error`] token, which the parser treats as an unexpected
//! token and recovers from, so one stray byte never hides the rest of the
//! file. Comments are not tokens; they are collected on the side so the
//! formatter can keep them.
//!
//! After lexing, [`lex`] balances brackets: every `(`, `[` or `{` still open at
//! the end of the file gets a synthetic closer (and a "not closed" error), so a
//! half-typed recipe still parses into a useful tree.

use crate::ast::{Comment, Span};
use logos::Logos;
use std::fmt;

/// A token. Literal tokens carry their source text so the formatter can
/// reproduce numbers exactly as written (`1e-6` stays `1e-6`).
#[derive(Logos, Debug, Clone, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
pub enum Tok {
    #[token("recipe")]
    Recipe,
    #[token("extends")]
    Extends,
    #[token("import")]
    Import,
    #[token("as")]
    As,
    #[token("let")]
    Let,
    #[token("fn")]
    Fn,
    #[token("guard")]
    Guard,
    #[token("for")]
    For,
    #[token("over")]
    Over,
    #[token("if")]
    If,
    #[token("then")]
    Then,
    #[token("else")]
    Else,
    #[token("and")]
    And,
    #[token("or")]
    Or,
    #[token("not")]
    Not,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("none")]
    None,

    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token(".")]
    Dot,
    #[token("=>")]
    FatArrow,
    #[token("=")]
    Eq,
    #[token("+=")]
    PlusEq,
    #[token("-=")]
    MinusEq,
    #[token("*=")]
    StarEq,
    #[token("/=")]
    SlashEq,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("^")]
    Caret,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string())]
    Ident(String),
    #[regex(r"[0-9][0-9_]*", |lex| lex.slice().to_string(), priority = 3)]
    Int(String),
    #[regex(r"[0-9][0-9_]*\.[0-9][0-9_]*([eE][+-]?[0-9]+)?", |lex| lex.slice().to_string())]
    #[regex(r"[0-9][0-9_]*[eE][+-]?[0-9]+", |lex| lex.slice().to_string())]
    Float(String),
    #[regex(r#""([^"\\\n]|\\[^\n])*""#, |lex| lex.slice().to_string())]
    Str(String),

    /// `// ...` to the end of the line; never reaches the parser.
    #[regex(r"//[^\n]*")]
    Comment,
    /// `# ...`: a comment in another language's syntax; reported, then
    /// skipped like a comment so it costs one error, not a cascade.
    #[regex(r"#[^\n]*")]
    HashComment,
    /// A string literal with no closing quote on its line.
    #[regex(r#""([^"\\\n]|\\[^\n])*"#, priority = 1)]
    UnterminatedStr,

    /// Anything the lexer could not read. Produced by [`lex`], never by logos.
    Error,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Tok::Ident(s) => return write!(f, "identifier `{s}`"),
            Tok::Int(s) | Tok::Float(s) => return write!(f, "number `{s}`"),
            Tok::Str(_) => "a string",
            Tok::Comment | Tok::HashComment => "a comment",
            Tok::UnterminatedStr => "an unterminated string",
            Tok::Error => "an unreadable character",
            other => return write!(f, "`{}`", other.text()),
        };
        f.write_str(s)
    }
}

impl Tok {
    /// The fixed source text of a keyword or punctuation token.
    pub fn text(&self) -> &'static str {
        match self {
            Tok::Recipe => "recipe",
            Tok::Extends => "extends",
            Tok::Import => "import",
            Tok::As => "as",
            Tok::Let => "let",
            Tok::Fn => "fn",
            Tok::Guard => "guard",
            Tok::For => "for",
            Tok::Over => "over",
            Tok::If => "if",
            Tok::Then => "then",
            Tok::Else => "else",
            Tok::And => "and",
            Tok::Or => "or",
            Tok::Not => "not",
            Tok::True => "true",
            Tok::False => "false",
            Tok::None => "none",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Semi => ";",
            Tok::Colon => ":",
            Tok::Dot => ".",
            Tok::FatArrow => "=>",
            Tok::Eq => "=",
            Tok::PlusEq => "+=",
            Tok::MinusEq => "-=",
            Tok::StarEq => "*=",
            Tok::SlashEq => "/=",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Caret => "^",
            Tok::Ident(_)
            | Tok::Int(_)
            | Tok::Float(_)
            | Tok::Str(_)
            | Tok::Comment
            | Tok::HashComment
            | Tok::UnterminatedStr
            | Tok::Error => "",
        }
    }
}

/// A problem found while lexing.
#[derive(Debug, Clone, PartialEq)]
pub enum LexError {
    /// A character that starts no token.
    BadChar(Span),
    /// A string with no closing quote on its line.
    UnterminatedStr(Span),
    /// An opening bracket never closed; `at_eof` is where the closer was assumed.
    Unclosed {
        open: Span,
        at_eof: usize,
        closer: char,
    },
    /// A closing bracket with no matching opener; it is dropped.
    Unopened(Span),
}

/// The token stream the parser consumes: `(start, token, end)` triples.
pub type Spanned = (usize, Tok, usize);

/// The output of [`lex`].
pub struct Lexed {
    pub tokens: Vec<Spanned>,
    pub comments: Vec<Comment>,
    pub errors: Vec<LexError>,
}

/// Lex `src` into tokens, comments and errors. Never fails.
pub fn lex(src: &str) -> Lexed {
    let mut tokens = Vec::new();
    let mut comments = Vec::new();
    let mut errors = Vec::new();
    let mut stack: Vec<(Span, char)> = Vec::new();
    let mut lexer = Tok::lexer(src);
    while let Some(res) = lexer.next() {
        let r = lexer.span();
        let span = Span::new(r.start, r.end);
        let tok = match res {
            Ok(Tok::Comment) => {
                comments.push(Comment {
                    span,
                    text: src[r.clone()].to_string(),
                });
                continue;
            }
            Ok(Tok::HashComment) => {
                errors.push(LexError::BadChar(Span::new(r.start, r.start + 1)));
                continue;
            }
            Ok(Tok::UnterminatedStr) => {
                errors.push(LexError::UnterminatedStr(span));
                Tok::Error
            }
            Ok(t) => t,
            Err(()) => {
                errors.push(LexError::BadChar(span));
                Tok::Error
            }
        };
        match tok {
            Tok::LBrace => stack.push((span, '}')),
            Tok::LParen => stack.push((span, ')')),
            Tok::LBracket => stack.push((span, ']')),
            Tok::RBrace | Tok::RParen | Tok::RBracket => {
                let c = match tok {
                    Tok::RBrace => '}',
                    Tok::RParen => ')',
                    _ => ']',
                };
                if stack.iter().any(|(_, want)| *want == c) {
                    // Close everything opened inside the matching opener.
                    while let Some((open, want)) = stack.pop() {
                        if want == c {
                            break;
                        }
                        errors.push(LexError::Unclosed {
                            open,
                            at_eof: span.start,
                            closer: want,
                        });
                        tokens.push((span.start, closer_tok(want), span.start));
                    }
                } else {
                    errors.push(LexError::Unopened(span));
                    continue;
                }
            }
            _ => {}
        }
        tokens.push((span.start, tok, span.end));
    }
    let end = src.len();
    while let Some((open, want)) = stack.pop() {
        errors.push(LexError::Unclosed {
            open,
            at_eof: end,
            closer: want,
        });
        tokens.push((end, closer_tok(want), end));
    }
    Lexed {
        tokens,
        comments,
        errors,
    }
}

fn closer_tok(c: char) -> Tok {
    match c {
        '}' => Tok::RBrace,
        ')' => Tok::RParen,
        _ => Tok::RBracket,
    }
}
