//! Robustness: random bytes, random token soup, and every prefix and many
//! one-byte mutations of every stdlib and example file go through the parser,
//! the resolver, the checker, the renderer and (when the text parses) the
//! formatter. Nothing may panic, and every diagnostic must carry a valid span.
//! Together the tests below run well over 100,000 cases.

use keel_compiler::{Checked, NoFiles, check_source};
use keel_tests::all_recipes;
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

static CASES: AtomicUsize = AtomicUsize::new(0);

/// Check `src` and validate every span; render with the given probability.
fn exercise(src: &str, render: bool) {
    CASES.fetch_add(1, Ordering::Relaxed);
    let c: Checked = check_source(&NoFiles, "fuzz.recipe", src);
    for d in &c.diagnostics {
        for l in std::iter::once(&d.primary).chain(&d.secondary) {
            let file = c.sources().get(l.file).expect("label file exists");
            let text = &file.text;
            assert!(l.span.start <= l.span.end, "{d:?}");
            assert!(l.span.end <= text.len(), "span past the end: {d:?}");
            assert!(
                text.is_char_boundary(l.span.start) && text.is_char_boundary(l.span.end),
                "{d:?}"
            );
        }
        assert!(!d.message.is_empty());
        assert!(d.help.is_some(), "every diagnostic says what to do: {d:?}");
        if render {
            let _ = d.render(c.sources(), false);
            let _ = d.plain_line(c.sources());
        }
    }
    let (_, errors) = keel_grammar::parse(src);
    if errors.is_empty()
        && let Ok(once) = keel_compiler::format::format_source(src)
    {
        assert_eq!(
            keel_compiler::format::format_source(&once).as_deref(),
            Ok(once.as_str())
        );
    }
}

const TOKENS: &[&str] = &[
    "recipe",
    "extends",
    "import",
    "std/grpo",
    "std/dapo",
    "\"./x.recipe\"",
    "as",
    "let",
    "fn",
    "guard",
    "for",
    "steps",
    "over",
    "if",
    "then",
    "else",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ":",
    ".",
    "=>",
    "=",
    "+=",
    "*=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    "+",
    "-",
    "*",
    "/",
    "^",
    "x",
    "grpo",
    "clip",
    "eps_low",
    "credit",
    "objective",
    "loss",
    "reduce",
    "token_mean",
    "reward",
    "logp",
    "entropy",
    "mean",
    "std",
    "min",
    "clamp",
    "where",
    "rscan",
    "group",
    "seq",
    "batch",
    "token",
    "vocab",
    "rollout",
    "state",
    "update",
    "monitor",
    "stop",
    "rollback",
    "0",
    "1",
    "0.2",
    "1e-6",
    "3",
    "\"msg\"",
    "// c\n",
    "\n",
    "@",
    "é",
    "#x\n",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        exercise(&String::from_utf8_lossy(&bytes), true);
    }

    #[test]
    fn random_text(s in "\\PC{0,120}") {
        exercise(&s, true);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 30_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_soup(s in soup()) {
        exercise(&s, true);
    }
}

/// Every prefix and, at every position, a handful of one-byte edits of every
/// stdlib and example file.
#[test]
fn prefixes_and_mutations_of_real_recipes() {
    let edits: &[Option<u8>] = &[
        None,
        Some(b'{'),
        Some(b'}'),
        Some(b'('),
        Some(b'"'),
        Some(b'='),
        Some(b'x'),
    ];
    let mut n = 0;
    for (name, text) in all_recipes() {
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            if text.is_char_boundary(cut) {
                exercise(&text[..cut], cut % 16 == 0);
                n += 1;
            }
        }
        for pos in 0..bytes.len() {
            for (k, e) in edits.iter().enumerate() {
                let mut m = bytes.to_vec();
                match e {
                    None => {
                        m.remove(pos);
                    }
                    Some(b) => m[pos] = *b,
                }
                exercise(&String::from_utf8_lossy(&m), (pos + k) % 32 == 0);
                n += 1;
            }
        }
        assert!(n > 0, "{name}");
    }
    assert!(n >= 50_000, "only {n} prefix/mutation cases");
    eprintln!(
        "prefixes and mutations: {n} cases; all fuzz tests so far: {}",
        CASES.load(Ordering::Relaxed)
    );
}
