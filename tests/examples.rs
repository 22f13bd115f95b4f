//! Every file in `stdlib/`, `examples/` and `tests/fail/` carries a header
//! saying what checking it must do: `// expect: pass` or
//! `// expect: error E0xxx [E0yyy ...]` (the exact list of codes reported).

use keel_tests::{all_recipes, codes, recipes_in, render};

fn expectation(text: &str) -> Option<Vec<String>> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("// expect:"))?;
    let rest = line.trim_start().trim_start_matches("// expect:").trim();
    if rest == "pass" {
        return Some(Vec::new());
    }
    let codes = rest
        .strip_prefix("error")?
        .split_whitespace()
        .map(String::from)
        .collect();
    Some(codes)
}

fn check_file(name: &str, text: &str) -> keel_compiler::Checked {
    keel_compiler::check_source(
        &keel_compiler::Disk,
        &keel_tests::root().join(name).to_string_lossy(),
        text,
    )
}

#[test]
fn stdlib_checks_clean() {
    let files = keel_tests::recipes_in("stdlib");
    assert!(files.len() >= 5, "stdlib should have its recipes");
    for (name, text) in files {
        let c = check_file(&name, &text);
        assert!(c.diagnostics.is_empty(), "{name}:\n{}", render(&c));
        assert!(
            !c.recipes.is_empty() || name.ends_with("kl.recipe"),
            "{name} defines no recipe"
        );
    }
}

#[test]
fn embedded_stdlib_matches_files() {
    for (name, text) in keel_compiler::stdlib::FILES {
        let on_disk =
            std::fs::read_to_string(keel_tests::root().join(format!("stdlib/{name}.recipe")));
        assert_eq!(on_disk.ok().as_deref(), Some(*text), "stdlib/{name}.recipe");
    }
    assert_eq!(
        keel_compiler::stdlib::FILES.len(),
        recipes_in("stdlib").len(),
        "every stdlib file is embedded"
    );
}

#[test]
fn examples_meet_their_headers() {
    let mut files = recipes_in("examples");
    assert!(files.len() >= 3);
    files.extend(recipes_in("tests/fail"));
    for (name, text) in files {
        let want =
            expectation(&text).unwrap_or_else(|| panic!("{name} has no `// expect:` header"));
        let c = check_file(&name, &text);
        let got: Vec<String> = codes(&c)
            .into_iter()
            .filter(|c| c.starts_with('E'))
            .map(String::from)
            .collect();
        assert_eq!(got, want, "{name}:\n{}", render(&c));
        if want.is_empty() {
            assert!(
                c.diagnostics.is_empty(),
                "{name} should be clean:\n{}",
                render(&c)
            );
        }
    }
}

#[test]
fn every_file_declares_its_expectation_or_is_stdlib() {
    for (name, text) in all_recipes() {
        if name.starts_with("examples/") {
            assert!(expectation(&text).is_some(), "{name} lacks `// expect:`");
        }
    }
}

#[test]
fn stdlib_recipes_record_their_inputs() {
    let text = keel_compiler::stdlib::get("grpo").unwrap_or_default();
    let c = check_file("stdlib/grpo.recipe", text);
    let grpo = c
        .recipes
        .iter()
        .find(|r| r.name == "grpo")
        .expect("grpo is checked");
    let inputs: Vec<&str> = grpo.inputs.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        inputs,
        ["entropy", "logp", "old_logp", "ref_logp", "reward"]
    );
    assert_eq!(grpo.bases, ["ppo"]);
    // The merged credit is group-level z-scoring: sequence-level.
    let credit = grpo.value("credit", "value").expect("credit");
    assert_eq!(credit.info.level, keel_compiler::builtins::Level::Seq);
    let loss = grpo.value("objective", "loss").expect("loss");
    assert_eq!(loss.info.level, keel_compiler::builtins::Level::Token);
    let eps = grpo.value("clip", "eps_high").expect("eps_high");
    assert_eq!(eps.info.constant, Some(0.2));
}

#[test]
fn extends_overrides_single_hyperparameters() {
    let text = keel_compiler::stdlib::get("dapo").unwrap_or_default();
    let c = check_file("stdlib/dapo.recipe", text);
    let dapo = c.recipes.iter().find(|r| r.name == "dapo").expect("dapo");
    assert_eq!(dapo.bases, ["grpo", "ppo"]);
    assert_eq!(
        dapo.value("clip", "eps_high").and_then(|v| v.info.constant),
        Some(0.28)
    );
    assert_eq!(
        dapo.value("clip", "eps_low").and_then(|v| v.info.constant),
        Some(0.2)
    );
    assert!(
        dapo.value("divergence", "value").is_none(),
        "divergence = none removes the KL"
    );
    assert_eq!(
        dapo.value("clip", "eps_high")
            .map(|v| v.defined_in.as_str()),
        Some("dapo")
    );
}

#[test]
fn generated_benchmark_recipe_is_clean_and_long() {
    let src = keel_tests::generated_recipe(1000);
    let lines = src.lines().count();
    assert!((950..=1050).contains(&lines), "{lines} lines");
    let c = keel_tests::check_str(&src);
    assert!(c.diagnostics.is_empty(), "{}", render(&c));
}

#[test]
fn language_reference_lists_every_builtin_and_input() {
    let doc =
        std::fs::read_to_string(keel_tests::root().join("docs/language.md")).unwrap_or_default();
    for b in keel_compiler::builtins::BUILTINS {
        assert!(
            doc.contains(b.name),
            "docs/language.md does not mention `{}`",
            b.name
        );
    }
    for i in keel_compiler::builtins::INPUTS {
        assert!(
            doc.contains(&format!("`{}`", i.name)),
            "docs/language.md does not list input `{}`",
            i.name
        );
    }
    for s in keel_compiler::builtins::SECTIONS {
        assert!(
            doc.contains(&format!("`{}`", s.name)),
            "docs/language.md does not list section `{}`",
            s.name
        );
    }
}
