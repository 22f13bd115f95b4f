//! The formatter: idempotent, AST-preserving, keeps every comment.

use keel_compiler::format::format_source;
use keel_grammar::{parse, sexp};
use keel_tests::all_recipes;

/// Format, then check the three properties on the result.
fn roundtrip(name: &str, src: &str) -> String {
    let once = format_source(src).unwrap_or_else(|n| panic!("{name}: {n} syntax errors"));
    let twice = format_source(&once)
        .unwrap_or_else(|n| panic!("{name}: formatted text has {n} syntax errors:\n{once}"));
    assert_eq!(once, twice, "{name}: formatting is not idempotent");
    let (a, _) = parse(src);
    let (b, _) = parse(&once);
    assert_eq!(sexp(&a), sexp(&b), "{name}: formatting changed the tree");
    let comments = |f: &keel_grammar::File, t: &str| -> Vec<String> {
        f.comments
            .iter()
            .map(|c| t[c.span.start..c.span.end].trim_end().to_string())
            .collect()
    };
    assert_eq!(
        comments(&a, src),
        comments(&b, &once),
        "{name}: comments changed"
    );
    once
}

#[test]
fn stdlib_and_examples_round_trip() {
    let files = all_recipes();
    assert!(files.len() >= 9);
    for (name, text) in files {
        let formatted = roundtrip(&name, &text);
        assert_eq!(
            formatted, text,
            "{name} is not formatted; run `keel fmt {name}`"
        );
    }
}

#[test]
fn messy_input_is_normalised() {
    let src = r#"// header

import std/grpo
recipe   r extends grpo{ // trailing on the brace line
  rollout{group=4,temperature=0.7}
  credit=(reward-mean(reward)over group)/(std(reward) over group+1e-6)


  objective {
      let ratio=exp(logp-old_logp)   // the ratio
      // a comment before the loss
      loss=-min(ratio*credit,clamp(ratio,1-eps_low,1+eps_high)*credit)
  reduce=token_mean }
  guard low: mean(entropy)over batch<0.05 for 20 steps=>{rollback 50;optimizer.lr*=0.5}
  guard x:mean(entropy) over batch > 9 => stop
}
fn  f( a,b=2 )=a*b
"#;
    let out = roundtrip("messy", src);
    insta::assert_snapshot!("messy_formatted", out);
}

#[test]
fn comments_inside_expressions_are_kept() {
    let src = "import std/grpo\nrecipe r extends grpo {\n    credit = (reward // the outcome\n        - 1)\n}\n";
    let out = roundtrip("inner", src);
    assert!(out.contains("// the outcome"), "{out}");
}

#[test]
fn broken_files_are_not_formatted() {
    assert_eq!(format_source("recipe r { clip { eps_low = } }"), Err(1));
}

#[test]
fn empty_and_comment_only_files() {
    assert_eq!(format_source("").as_deref(), Ok(""));
    assert_eq!(format_source("   \n\n").as_deref(), Ok(""));
    assert_eq!(
        format_source("// just a note\n").as_deref(),
        Ok("// just a note\n")
    );
}

#[test]
fn long_blocks_break_into_lines() {
    let src = "recipe r { model { d_model = 64, layers = 2, heads = 4, context = 96, seed = 1 } objective.loss = logp }\n";
    let out = roundtrip("long", src);
    assert!(out.contains("    model {\n        d_model = 64\n"), "{out}");
    assert!(out.contains("    objective.loss = logp\n"), "{out}");
}
