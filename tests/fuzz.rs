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

/// Every prefix and, at every position, three one-byte edits (a deletion, a
/// stray `}` and a stray `"`, the edits that disturb the most structure) of
/// every stdlib and example file. The files are split over two threads.
#[test]
fn prefixes_and_mutations_of_real_recipes() {
    // The findings' arms are copies of one another but for a line or two:
    // they add CI time, not coverage.
    let files: Vec<_> = all_recipes()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("examples/findings/"))
        .collect();
    let (even, odd): (Vec<_>, Vec<_>) = files.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let sweep = |part: Vec<(usize, &(String, String))>| -> usize {
        let mut n = 0;
        for (_, (_, text)) in part {
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                if text.is_char_boundary(cut) {
                    exercise(&text[..cut], cut % 16 == 0);
                    n += 1;
                }
            }
            for pos in 0..bytes.len() {
                let mut deleted = bytes.to_vec();
                deleted.remove(pos);
                exercise(&String::from_utf8_lossy(&deleted), pos % 32 == 0);
                for (k, ch) in [b'}', b'"'].into_iter().enumerate() {
                    let mut edited = bytes.to_vec();
                    edited[pos] = ch;
                    exercise(&String::from_utf8_lossy(&edited), (pos + k) % 32 == 1);
                }
                n += 3;
            }
        }
        n
    };
    let n = std::thread::scope(|s| {
        let a = s.spawn(|| sweep(even));
        let b = sweep(odd);
        a.join().unwrap_or(0) + b
    });
    assert!(n >= 100_000, "only {n} prefix/mutation cases");
    eprintln!("prefixes and mutations: {n} cases");
}

fn arb_tensor() -> impl Strategy<Value = (String, Vec<usize>, Vec<f64>)> {
    let dtype = prop::sample::select(vec!["f32", "f64", "i64", "u8"]);
    let shape = prop::collection::vec(0usize..5, 0..4);
    (dtype, shape).prop_flat_map(|(d, s)| {
        let n: usize = s.iter().product();
        let vals = prop::collection::vec(
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(0.0),
                Just(1.0),
                -100.0..100.0f64,
                0.0..70.0f64
            ],
            n..=n,
        );
        (Just(d.to_string()), Just(s), vals)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary batches (missing tensors, wrong shapes and dtypes, NaNs,
    /// out-of-range token ids) through every stdlib recipe: a result or
    /// located errors, never a panic.
    #[test]
    fn arbitrary_batches_never_panic(
        tensors in prop::collection::vec(
            (prop::sample::select(vec!["logp", "old_logp", "ref_logp", "mask", "reward", "group", "values",
                "entropy", "logits", "tokens", "advantages", "length"]), arb_tensor()),
            0..10,
        ),
        preset in prop::sample::select(keel_compiler::stdlib::names().filter(|n| *n != "kl").collect::<Vec<_>>()),
    ) {
        let mut b = keel_compiler::batch::Batch::default();
        for (name, (dtype, shape, data)) in tensors {
            b.insert(name, &dtype, shape, data);
        }
        let src = format!("import std/{preset}\nrecipe r extends {preset} {{}}\n");
        let c = check_source(&NoFiles, "r.recipe", &src);
        prop_assert!(!c.has_errors());
        if let Err(diags) = keel_compiler::run_loss(&c, 0, &b, "b.safetensors") {
            prop_assert!(!diags.is_empty());
            for d in &diags {
                let _ = d.render(c.sources(), false);
            }
        }
        // Round trip through the file format.
        let bytes = b.to_bytes();
        if let Ok(bytes) = bytes {
            prop_assert!(keel_compiler::batch::Batch::from_bytes(&bytes).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    /// Well-shaped batches with arbitrary contents (zero masks, one-token
    /// groups, out-of-range token ids, NaNs) and random subsets of tensors.
    #[test]
    fn well_shaped_batches_never_panic(
        b in 1usize..5, t in 1usize..6, v in 1usize..5,
        keep in prop::collection::vec(any::<bool>(), 12),
        vals in prop::collection::vec(prop_oneof![Just(0.0), Just(1.0), Just(f64::NAN), -3.0..3.0f64, 0.0..6.0f64], 200),
        preset in prop::sample::select(keel_compiler::stdlib::names().filter(|n| *n != "kl").collect::<Vec<_>>()),
    ) {
        let mut batch = keel_compiler::batch::Batch::default();
        let take = |n: usize, k: usize| -> Vec<f64> { (0..n).map(|i| vals[(i + k * 7) % vals.len()]).collect() };
        let specs: [(&str, &str, Vec<usize>); 12] = [
            ("mask", "u8", vec![b, t]), ("logp", "f32", vec![b, t]), ("old_logp", "f32", vec![b, t]),
            ("ref_logp", "f32", vec![b, t]), ("reward", "f32", vec![b]), ("group", "i64", vec![b]),
            ("values", "f32", vec![b, t]), ("entropy", "f32", vec![b, t]), ("logits", "f32", vec![b, t, v]),
            ("tokens", "i64", vec![b, t]), ("advantages", "f32", vec![b, t]), ("length", "i64", vec![b]),
        ];
        for (k, (name, dtype, shape)) in specs.into_iter().enumerate() {
            if keep[k] || name == "mask" {
                let n = shape.iter().product();
                let mut data = take(n, k);
                if name == "mask" {
                    data.iter_mut().for_each(|x| *x = f64::from(u8::from(*x > 0.5)));
                }
                batch.insert(name, dtype, shape, data);
            }
        }
        let src = format!("import std/{preset}\nrecipe r extends {preset} {{}}\n");
        let c = check_source(&NoFiles, "r.recipe", &src);
        if let Ok(r) = keel_compiler::run_loss(&c, 0, &batch, "b.safetensors") {
            prop_assert!(r.loss.is_finite());
            prop_assert_eq!(r.d_logp.len(), b * t);
        }
    }
}
