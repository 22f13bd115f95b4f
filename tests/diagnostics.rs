//! Snapshot tests of rendered diagnostics (colour off), one malformed input
//! per case. Every code in the error index must appear in some snapshot
//! (`every_code_has_a_snapshot`).

use keel_tests::{check_str, check_with, codes, render};

/// `case!(name, "E0xxx", source)`: checking `source` reports code `E0xxx`
/// and renders as the stored snapshot.
macro_rules! case {
    ($name:ident, $code:literal, $src:expr) => {
        #[test]
        fn $name() {
            let c = check_str($src);
            assert!(
                codes(&c).contains(&$code),
                "expected {} in:\n{}",
                $code,
                render(&c)
            );
            insta::assert_snapshot!(stringify!($name), render(&c));
        }
    };
}

const G: &str = "import std/grpo\n";

// ----- syntax ----------------------------------------------------------------

case!(
    e0001_missing_value,
    "E0001",
    "import std/grpo\nrecipe r extends grpo {\n    clip { eps_low = , eps_high = 0.2 }\n}\n"
);
case!(
    e0001_if_needs_parens,
    "E0001",
    "import std/grpo\nrecipe r extends grpo {\n    reward = 2 * if correct then 1 else 0\n}\n"
);
case!(e0002_eof, "E0002", "recipe r extends");
case!(
    e0003_bad_char,
    "E0003",
    "import std/grpo\nrecipe r extends grpo {\n    reward = float(correct) & 1\n}\n"
);
case!(
    e0003_hash_comment,
    "E0003",
    "# a python comment\nimport std/grpo\nrecipe r extends grpo {}\n"
);
case!(
    e0004_unterminated_string,
    "E0004",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 => warn \"low entropy\n}\n"
);
case!(
    e0005_unclosed_brace,
    "E0005",
    "import std/grpo\nrecipe r extends grpo {\n    clip { eps_low = 0.1\n}\n"
);
case!(
    e0005_unclosed_paren,
    "E0005",
    "import std/grpo\nrecipe r extends grpo {\n    reward = float(correct\n}\n"
);
case!(
    e0006_unopened,
    "E0006",
    "import std/grpo\nrecipe r extends grpo {\n    reward = float(correct))\n}\n"
);

#[test]
fn several_syntax_errors_are_all_reported() {
    let src = "recipe r {\n    clip { eps_low = , eps_high = }\n    credit = reward @ 2\n    objective { loss = -(logp * }\n}\n";
    let c = check_str(src);
    let syntax: Vec<_> = codes(&c)
        .into_iter()
        .filter(|c| c.starts_with("E000"))
        .collect();
    assert!(syntax.len() >= 4, "{}", render(&c));
    insta::assert_snapshot!("several_syntax_errors", render(&c));
    // The partial tree still has the recipe and its sections.
    assert_eq!(c.recipes.len(), 1);
}

// ----- names and structure -------------------------------------------------------

case!(
    e0100_typo,
    "E0100",
    "import std/grpo\nrecipe r extends grpo {\n    credit = (reward - mean(rewrd) over group)\n}\n"
);
case!(
    e0100_ambiguous,
    "E0100",
    "import std/grpo\nrecipe r extends grpo {\n    clip { beta = 1.0 }\n    divergence { beta = 2.0 }\n    objective.loss = beta * logp\n}\n"
);
case!(
    e0100_fn_body_scope,
    "E0100",
    "import std/grpo\nfn scaled(x) = x * eps_low\nrecipe r extends grpo {\n    objective.loss = scaled(logp)\n}\n"
);
case!(
    e0100_guard_target,
    "E0100",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 => learning_rate *= 0.5\n}\n"
);
case!(
    e0101_unknown_std,
    "E0101",
    "import std/grop\nrecipe r { objective.loss = logp }\n"
);
case!(
    e0101_missing_file,
    "E0101",
    "import \"./base.recipe\"\nrecipe r { objective.loss = logp }\n"
);
case!(
    e0102_stdlib_not_imported,
    "E0102",
    "recipe r extends grpo {}\n"
);
case!(
    e0102_typo,
    "E0102",
    "recipe base { objective.loss = -logp }\nrecipe r extends bsae {}\n"
);
case!(
    e0103_cycle,
    "E0103",
    "recipe a extends b { objective.loss = logp }\nrecipe b extends a {}\n"
);
case!(
    e0104_duplicate_key,
    "E0104",
    "import std/grpo\nrecipe r extends grpo {\n    clip { eps_low = 0.1, eps_low = 0.2 }\n}\n"
);
case!(
    e0104_duplicate_recipe,
    "E0104",
    "recipe r { objective.loss = logp }\nrecipe r { objective.loss = -logp }\n"
);
case!(
    e0104_builtin_fn_name,
    "E0104",
    "fn exp(x) = x\nrecipe r { objective.loss = logp }\n"
);
case!(
    e0105_unknown_section,
    "E0105",
    "import std/grpo\nrecipe r extends grpo {\n    value_model { gamma = 0.99 }\n}\n"
);
case!(
    e0106_unknown_key,
    "E0106",
    "import std/grpo\nrecipe r extends grpo {\n    rollout { temprature = 0.7 }\n}\n"
);
case!(
    e0107_cycle,
    "E0107",
    "import std/grpo\nrecipe r extends grpo {\n    credit { a = b, b = a * 2, value = a }\n}\n"
);
case!(
    e0108_path_too_long,
    "E0108",
    "import std/grpo\nrecipe r extends grpo {\n    clip.eps.high = 0.3\n}\n"
);
case!(
    e0108_dotted_in_section,
    "E0108",
    "import std/grpo\nrecipe r extends grpo {\n    objective { clip.eps_low = 0.1 }\n}\n"
);
case!(
    e0109_unknown_field,
    "E0109",
    "import std/grpo\nrecipe r extends grpo {\n    objective.loss = logp * clip.eps_hihg\n}\n"
);
case!(
    e0109_let_is_private,
    "E0109",
    "import std/grpo\nrecipe r extends grpo {\n    objective.loss = logp * credit.mu\n}\n"
);
case!(
    e0110_missing_argument,
    "E0110",
    "import std/grpo\nrecipe r extends grpo {\n    objective.loss = clamp(logp, -1)\n}\n"
);
case!(
    e0110_unknown_parameter,
    "E0110",
    "import std/grpo\nrecipe r extends grpo {\n    credit = whiten(reward, epsilon = 1e-8) over batch\n}\n"
);
case!(
    e0110_user_fn_arity,
    "E0110",
    "import std/grpo\nimport std/kl\nrecipe r extends grpo {\n    divergence.value = kl_k3(logp)\n}\n"
);
case!(
    e0111_unknown_function,
    "E0111",
    "import std/grpo\nrecipe r extends grpo {\n    divergence.value = kl_k4(logp, ref_logp)\n}\n"
);
case!(
    e0111_not_imported,
    "E0111",
    "import std/grpo\nrecipe r extends grpo {\n    divergence.value = kl_k2(logp, ref_logp)\n}\n"
);
case!(
    e0112_recursive,
    "E0112",
    "fn f(x) = f(x) + 1\nrecipe r { objective.loss = f(logp) }\n"
);
case!(
    e0113_section_needs_block,
    "E0113",
    "import std/grpo\nrecipe r extends grpo {\n    clip = 0.2\n}\n"
);

// ----- types and levels ----------------------------------------------------------

case!(
    e0200_bool_arithmetic,
    "E0200",
    "import std/grpo\nrecipe r extends grpo {\n    reward = correct + 1\n}\n"
);
case!(
    e0200_if_branches,
    "E0200",
    "import std/grpo\nrecipe r extends grpo {\n    reward = if correct then 1 else \"no\"\n}\n"
);
case!(
    e0200_integer_key,
    "E0200",
    "import std/grpo\nrecipe r extends grpo {\n    rollout { group = 2.5 }\n}\n"
);
case!(
    e0200_condition_not_bool,
    "E0200",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch => stop\n}\n"
);
case!(
    e0202_monitor_token,
    "E0202",
    "import std/grpo\nrecipe r extends grpo {\n    monitor { ratio = exp(logp - old_logp) }\n}\n"
);
case!(
    e0202_hyperparameter_reads_data,
    "E0202",
    "import std/grpo\nrecipe r extends grpo {\n    clip { eps_low = mean(reward) over batch }\n}\n"
);
case!(
    e0202_reward_token_level,
    "E0202",
    "import std/grpo\nrecipe r extends grpo {\n    reward = logp\n}\n"
);
case!(
    e0202_vocab_unreduced,
    "E0202",
    "import std/grpo\nrecipe r extends grpo {\n    entropy.value = logits\n}\n"
);
case!(
    e0202_guard_condition,
    "E0202",
    "import std/grpo\nrecipe r extends grpo {\n    guard entropy < 0.1 => stop\n}\n"
);
case!(
    e0203_missing_over,
    "E0203",
    "import std/grpo\nrecipe r extends grpo {\n    credit = reward - mean(reward)\n}\n"
);
case!(
    e0203_min_of_one,
    "E0203",
    "import std/grpo\nrecipe r extends grpo {\n    credit = reward - min(reward)\n}\n"
);
case!(
    e0204_over_on_elementwise,
    "E0204",
    "import std/grpo\nrecipe r extends grpo {\n    credit = exp(reward) over group\n}\n"
);
case!(
    e0205_same_level,
    "E0205",
    "import std/grpo\nrecipe r extends grpo {\n    credit = reward - mean(reward) over seq\n}\n"
);
case!(
    e0205_constant,
    "E0205",
    "import std/grpo\nrecipe r extends grpo {\n    monitor { one = mean(1.0) over batch }\n}\n"
);
case!(
    e0206_unknown_level,
    "E0206",
    "import std/grpo\nrecipe r extends grpo {\n    credit = reward - mean(reward) over prompt\n}\n"
);
case!(
    e0207_none_in_expression,
    "E0207",
    "import std/grpo\nrecipe r extends grpo {\n    credit = reward * none\n}\n"
);

// ----- hyperparameters -------------------------------------------------------------

case!(
    e0300_eps_not_an_epsilon,
    "E0300",
    "import std/grpo\nrecipe r extends grpo {\n    clip.eps_low = 1.2\n}\n"
);
case!(
    e0300_temperature_zero,
    "E0300",
    "import std/grpo\nrecipe r extends grpo {\n    rollout { temperature = 0 }\n}\n"
);
case!(
    e0300_dual_clip,
    "E0300",
    "import std/grpo\nrecipe r extends grpo {\n    clip.dual = 0.5\n}\n"
);
case!(
    e0301_group_of_one,
    "E0301",
    "import std/grpo\nrecipe r extends grpo {\n    rollout { group = 1 }\n}\n"
);
case!(
    e0302_negative_kl,
    "E0302",
    "import std/grpo\nrecipe r extends grpo {\n    divergence.coef = -0.001\n}\n"
);
case!(
    e0303_model_schedule,
    "E0303",
    "import std/grpo\nrecipe r extends grpo {\n    model { layers = 2 * step }\n}\n"
);
case!(
    e0303_guard_value_computed_during_training,
    "E0303",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 => optimizer.lr = mean(entropy) over batch\n}\n"
);
case!(
    e0303_state_init,
    "E0303",
    "import std/grpo\nrecipe r extends grpo {\n    state { seen = progress }\n}\n"
);
case!(
    e0304_bad_reduce,
    "E0304",
    "import std/grpo\nrecipe r extends grpo {\n    objective.reduce = token_man\n}\n"
);
case!(
    e0304_bad_optimizer,
    "E0304",
    "import std/grpo\nrecipe r extends grpo {\n    optimizer { name = \"adamw\" }\n}\n"
);

// ----- recipe rules ----------------------------------------------------------------

case!(
    e0400_unknown_action,
    "E0400",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 => { rollbak 10 }\n}\n"
);
case!(
    e0400_rollback_without_steps,
    "E0400",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 => rollback\n}\n"
);
case!(
    e0401_missing_equals,
    "E0401",
    "import std/grpo\nrecipe r extends grpo {\n    clip { eps_low 0.1 }\n}\n"
);
case!(
    e0402_update_not_state,
    "E0402",
    "import std/grpo\nrecipe r extends grpo {\n    state { avg = 0.0 }\n    update { avgg = mean(entropy) over batch }\n}\n"
);
case!(
    e0403_compound_in_section,
    "E0403",
    "import std/grpo\nrecipe r extends grpo {\n    optimizer { lr *= 0.5 }\n}\n"
);
case!(
    e0403_compound_at_recipe_level,
    "E0403",
    "import std/grpo\nrecipe r extends grpo {\n    optimizer.lr *= 0.5\n}\n"
);
case!(
    e0404_window_zero,
    "E0404",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 for 0 steps => stop\n}\n"
);
case!(
    e0404_window_unit,
    "E0404",
    "import std/grpo\nrecipe r extends grpo {\n    guard mean(entropy) over batch < 0.1 for 3 epochs => stop\n}\n"
);
case!(
    e0405_no_loss,
    "E0405",
    "recipe r {\n    rollout { group = 4 }\n}\n"
);

// ----- warnings ------------------------------------------------------------------------

case!(
    w0001_unused_let,
    "W0001",
    "import std/grpo\nrecipe r extends grpo {\n    objective { let unused = 2 * logp }\n}\n"
);
case!(
    w0002_typo_key,
    "W0002",
    "import std/grpo\nrecipe r extends grpo {\n    clip.eps_hgh = 0.28\n}\n"
);
case!(
    w0003_loose_clip,
    "W0003",
    "import std/grpo\nrecipe r extends grpo {\n    clip.eps_high = 1.28\n}\n"
);
case!(
    w0003_large_lr,
    "W0003",
    "import std/grpo\nrecipe r extends grpo {\n    optimizer { lr = 0.5 }\n}\n"
);
case!(
    w0004_let_shadows_input,
    "W0004",
    "import std/grpo\nrecipe r extends grpo {\n    objective {\n        let logp = old_logp\n        loss = -logp\n    }\n}\n"
);

#[test]
fn syntax_errors_in_imported_file_are_reported_at_the_import() {
    let c = check_with(
        "import \"./base.recipe\"\nrecipe r extends base {}\n",
        &[("base.recipe", "recipe base { objective.loss = ( }\n")],
    );
    assert!(codes(&c).contains(&"E0101"), "{}", render(&c));
    insta::assert_snapshot!("e0101_broken_import", render(&c));
}

#[test]
fn relative_imports_resolve() {
    let c = check_with(
        "import \"./lib/base.recipe\"\nrecipe r extends base { clip.eps_high = 0.3 }\n",
        &[(
            "lib/base.recipe",
            "import std/grpo\nrecipe base extends grpo {}\n",
        )],
    );
    assert!(c.diagnostics.is_empty(), "{}", render(&c));
    let r = c.recipes.first().expect("r");
    assert_eq!(r.bases, ["base", "grpo", "ppo"]);
}

#[test]
fn warnings_alone_do_not_fail() {
    let c = check_str(&format!(
        "{G}recipe r extends grpo {{ clip.eps_hgh = 0.28 }}\n"
    ));
    assert!(!c.has_errors());
    assert_eq!(codes(&c), ["W0002"]);
}

#[test]
fn json_form_carries_code_span_and_help() {
    let c = check_str(&format!(
        "{G}recipe r extends grpo {{ credit = mean(rewrd) over group }}\n"
    ));
    let j = c.diagnostics[0].to_json(c.sources());
    assert_eq!(j["code"], "E0100");
    assert_eq!(j["severity"], "error");
    assert_eq!(j["primary"]["line"], 2);
    assert_eq!(j["primary"]["file"], "test.recipe");
    assert_eq!(j["help"], "did you mean `reward`?");
    let start = j["primary"]["start"].as_u64().unwrap_or(0) as usize;
    let end = j["primary"]["end"].as_u64().unwrap_or(0) as usize;
    let src = format!("{G}recipe r extends grpo {{ credit = mean(rewrd) over group }}\n");
    assert_eq!(&src[start..end], "rewrd");
}

#[test]
fn every_code_has_a_snapshot_and_an_index_entry() {
    let dir = keel_tests::root().join("tests/snapshots");
    let mut all = String::new();
    for e in std::fs::read_dir(&dir).expect("snapshots dir").flatten() {
        all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    // Printed by the CLI before the compiler runs; covered by cli/tests/cli.rs.
    // E0604 is printed by the CLI before the compiler runs (cli/tests/cli.rs);
    // E0606 depends on the machine's memory (cli/tests/cli.rs sets the
    // limit); E07xx come from `keel run` (cli/tests/run.rs).
    const CLI_ONLY: &[&str] = &[
        "E0604", "E0606", "E0700", "E0701", "E0702", "E0703", "E0704", "E0705", "E0706", "E0707",
        "E0708", "E0709", "E0710", "E0711",
    ];
    let mut missing = Vec::new();
    for (code, _) in keel_compiler::codes::ALL {
        if !all.contains(&format!("[{}]", code.0)) && !CLI_ONLY.contains(&code.0) {
            missing.push(code.0);
        }
        assert!(
            keel_compiler::codes::explain(code.0).is_some(),
            "{} has no entry in docs/errors.md",
            code.0
        );
    }
    assert!(missing.is_empty(), "codes without a snapshot: {missing:?}");
}

#[test]
fn explain_returns_the_entry() {
    let text = keel_compiler::codes::explain("e0202").expect("entry");
    assert!(text.starts_with("## E0202: value is finer than its context allows"));
    assert!(!text.contains("## E0203"));
    assert!(keel_compiler::codes::explain("E9999").is_none());
}

#[test]
fn pathological_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        "recipe r {{ objective.loss = {}logp{} }}\n",
        "(".repeat(20_000),
        ")".repeat(20_000)
    );
    let c = check_str(&deep);
    assert_eq!(codes(&c), ["E0007"], "{}", render(&c));
    let long_sum = format!(
        "recipe r {{ objective.loss = logp{} }}\n",
        " + logp".repeat(50_000)
    );
    let c = check_str(&long_sum);
    assert_eq!(codes(&c), ["E0007"]);
    let unary = format!(
        "recipe r {{ objective.loss = {}logp }}\n",
        "-".repeat(50_000)
    );
    assert_eq!(codes(&check_str(&unary)), ["E0007"]);
    // Right at the limit is fine.
    let ok = format!(
        "recipe r {{ objective.loss = {}logp{} }}\n",
        "(".repeat(200),
        ")".repeat(200)
    );
    assert!(check_str(&ok).diagnostics.is_empty());
}

case!(
    e0007_too_deep,
    "E0007",
    &format!(
        "recipe r {{\n    objective.loss = logp{}\n}}\n",
        " + 1".repeat(300)
    )
);

// ----- compiling and running the loss, batches ----------------------------------------

fn small_batch() -> keel_compiler::batch::Batch {
    let mut b = keel_tests::batch();
    b.insert(
        "logp",
        "f32",
        vec![2, 3],
        vec![-1.0, -1.2, -0.7, -2.0, -0.1, -0.4],
    );
    b.insert(
        "old_logp",
        "f32",
        vec![2, 3],
        vec![-1.1, -1.0, -0.8, -1.9, -0.2, -0.3],
    );
    b.insert("ref_logp", "f32", vec![2, 3], vec![-1.0; 6]);
    b.insert(
        "mask",
        "f32",
        vec![2, 3],
        vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    );
    b.insert("reward", "f32", vec![2], vec![1.0, 0.0]);
    b.insert("group", "i64", vec![2], vec![0.0, 0.0]);
    b
}

const GRPO: &str = "import std/grpo\nrecipe r extends grpo {}\n";

macro_rules! batch_case {
    ($name:ident, $code:literal, $src:expr, $edit:expr) => {
        #[test]
        fn $name() {
            let mut b = small_batch();
            let edit: fn(&mut keel_compiler::batch::Batch) = $edit;
            edit(&mut b);
            let out = keel_tests::loss_errors($src, &b);
            assert!(out.contains(&format!("[{}]", $code)), "{out}");
            insta::assert_snapshot!(stringify!($name), out);
        }
    };
}

batch_case!(e0600_missing_tensor, "E0600", GRPO, |b| {
    b.tensors.remove("ref_logp");
});
batch_case!(e0600_missing_group, "E0600", GRPO, |b| {
    b.tensors.remove("group");
});
batch_case!(e0601_wrong_dtype, "E0601", GRPO, |b| {
    b.insert("group", "f32", vec![2], vec![0.0, 0.0]);
});
batch_case!(e0602_wrong_shape, "E0602", GRPO, |b| {
    b.insert("old_logp", "f32", vec![2, 2], vec![-1.0; 4]);
});
batch_case!(e0603_nan_input, "E0603", GRPO, |b| {
    b.insert(
        "old_logp",
        "f32",
        vec![2, 3],
        vec![-1.0, -1.0, -1.0, -1.0, f64::NAN, -1.0],
    );
});
batch_case!(
    e0502_non_finite_loss,
    "E0502",
    "recipe r { objective.loss = log(logp) }\n",
    |_| {}
);
batch_case!(
    e0501_not_differentiable,
    "E0501",
    "recipe r { objective.loss = quantile(logp, 0.5) over batch }\n",
    |_| {}
);
batch_case!(
    e0406_policy_reads_vpred,
    "E0406",
    "recipe r {\n    objective.loss = -logp * vpred\n    critic.loss = (vpred - 1) ^ 2\n}\n",
    |b| {
        b.insert("vpred", "f32", vec![2, 3], vec![0.5; 6]);
    }
);
batch_case!(
    e0500_not_lowerable,
    "E0500",
    "recipe r {\n    objective.loss = logp * (if step > 1 then [1, 2] else [3, 4])[0]\n}\n",
    |_| {}
);

#[test]
fn unreadable_batch_file_is_an_error() {
    assert!(keel_compiler::batch::Batch::from_bytes(b"not a safetensors file").is_err());
}

#[test]
fn unknown_set_name_lists_the_hyperparameters() {
    let c = keel_tests::check_file(
        &keel_tests::preset_path("grpo"),
        &[("clip.eps_hihg", "0.3")],
    );
    insta::assert_snapshot!("e0605_unknown_setting", render(&c));
}

#[test]
fn batch_file_error_code_has_an_entry() {
    // E0604 (unreadable batch) is printed by the CLI, not as a compiler diagnostic.
    assert!(keel_compiler::codes::explain("E0604").is_some());
}

// ----- export (`keel export --target verl`) ---------------------------------

/// `export_case!(name, "E08xx", source)`: `source` checks cleanly, and
/// exporting it for verl is refused with code `E08xx`, rendered as the
/// stored snapshot; `--allow-partial` exports it (E0801, E0802) or not
/// (E0800 in the loss).
macro_rules! export_case {
    ($name:ident, $code:literal, $src:expr, $partial_ok:expr) => {
        #[test]
        fn $name() {
            let mut c = check_str($src);
            assert!(!c.has_errors(), "{}", render(&c));
            let idx = c.recipes.len() - 1;
            let refused = keel_export::verl_package(&c, idx, "test.recipe", false)
                .err()
                .expect("refused");
            assert!(refused.iter().any(|d| d.code.0 == $code), "{refused:?}");
            c.diagnostics = refused;
            insta::assert_snapshot!(stringify!($name), render(&c));
            let partial = keel_export::verl_package(&c, idx, "test.recipe", true);
            assert_eq!(partial.is_ok(), $partial_ok);
            if let Ok(p) = partial {
                let readme = &p
                    .package
                    .files
                    .iter()
                    .find(|(n, _)| n == "README.md")
                    .expect("README")
                    .1;
                assert!(readme.contains("## Dropped"), "{readme}");
            }
        }
    };
}

export_case!(
    e0800_export_reads_reward,
    "E0800",
    "import std/grpo\nrecipe r extends grpo {\n    objective.loss = -credit * logp * reward\n}\n",
    false
);
export_case!(
    e0800_export_credit_reads_step_reward,
    "E0800",
    "import std/grpo\nrecipe r extends grpo {\n    credit.value = step_reward\n}\n",
    true
);
export_case!(
    e0803_export_critic_not_verls,
    "E0803",
    "import std/ppo\nrecipe r extends ppo {\n    critic.loss = 0.5 * (vpred - credit.returns) ^ 2\n}\n",
    true
);
export_case!(
    e0801_export_guard,
    "E0801",
    "import std/grpo\nrecipe r extends grpo {\n    guard collapse: mean(entropy) over batch < 0.05 for 20 steps => { rollback 2 }\n}\n",
    true
);
export_case!(
    e0802_export_reward_section,
    "E0802",
    "import std/dapo\nrecipe r extends dapo {}\n",
    true
);

/// A recipe extending GRPO that removes `credit` and writes its own
/// objective: the inherited `let pg` of PPO's objective and its
/// `clip_frac` monitor still read `credit`. One error, at the user's
/// `credit = none`, with each inherited read as a label in std/ppo.recipe
/// and a help line naming the fix; the recipe with that fix checks clean.
/// Likewise `objective = none` and PPO's monitor reading `objective.ratio`.
#[test]
fn an_inherited_read_of_a_removed_section_is_blamed_on_the_removal() {
    let src = "import std/grpo\n\nrecipe mine extends grpo {\n    credit = none\n    objective { loss = -reward * logp }\n}\n";
    let c = keel_tests::check_str(src);
    assert_eq!(
        keel_tests::codes(&c),
        vec!["E0100"],
        "{}",
        keel_tests::render(&c)
    );
    let d = &c.diagnostics[0];
    let sources = c.sources();
    assert_eq!(sources.name(d.primary.file), "test.recipe");
    assert_eq!(
        &src[d.primary.span.start..d.primary.span.end],
        "credit = none"
    );
    assert!(
        d.message.contains("`objective.pg`") && d.message.contains("`monitor.clip_frac`"),
        "{}",
        d.message
    );
    assert!(d.secondary.len() >= 2);
    assert!(
        d.secondary
            .iter()
            .all(|l| sources.name(l.file) == "std/ppo.recipe"),
        "{}",
        keel_tests::render(&c)
    );
    let help = d.help.as_deref().unwrap_or("");
    assert!(
        help.contains("`objective = none` before your `objective { … }`")
            && help.contains("`monitor.clip_frac = none`"),
        "{help}"
    );
    let fixed = "import std/grpo\n\nrecipe mine extends grpo {\n    credit = none\n    objective = none\n    objective { loss = -reward * logp }\n    monitor.clip_frac = none\n}\n";
    let c = keel_tests::check_str(fixed);
    assert!(c.diagnostics.is_empty(), "{}", keel_tests::render(&c));

    let src = "import std/grpo\n\nrecipe mine extends grpo {\n    objective = none\n    objective { loss = -credit * logp }\n}\n";
    let c = keel_tests::check_str(src);
    assert_eq!(
        keel_tests::codes(&c),
        vec!["E0109"],
        "{}",
        keel_tests::render(&c)
    );
    let d = &c.diagnostics[0];
    assert_eq!(
        &src[d.primary.span.start..d.primary.span.end],
        "objective = none"
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or("")
            .contains("`monitor.clip_frac = none`"),
        "{:?}",
        d.help
    );
}
