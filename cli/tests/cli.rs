//! End-to-end tests of the `keel` binary: exit codes, the plain error line,
//! JSON output, `explain` and `fmt --check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("keel runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_recipe(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-cli-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write temp recipe");
    p
}

#[test]
fn check_passes_on_stdlib_and_examples() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["stdlib", "examples"] {
        for e in std::fs::read_dir(root().join(dir)).expect("dir").flatten() {
            files.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(|s| s.as_str()))
        .collect();
    let out = keel(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_fails_with_plain_lines_and_never_panics() {
    let p = temp_recipe(
        "bad.recipe",
        "import std/grpo\nrecipe r extends grpo {\n    credit = mean(rewrd) over group\n}\n",
    );
    let ps = p.to_string_lossy().to_string();
    let out = keel(&["check", "--color", "never", &ps]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{ps}:3:19: error[E0100]: cannot find `rewrd`")),
        "{err}"
    );
    assert!(err.contains("Help: did you mean `reward`?"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn warnings_exit_zero() {
    let p = temp_recipe(
        "warn.recipe",
        "import std/grpo\nrecipe r extends grpo { clip.eps_hgh = 0.3 }\n",
    );
    let out = keel(&["check", "--error-format", "short", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("warning[W0002]"));
}

#[test]
fn json_error_format() {
    let p = temp_recipe("json.recipe", "recipe r { objective.loss = logp * eps }\n");
    let out = keel(&["check", "--error-format", "json", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("one JSON object");
    assert_eq!(v["errors"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "E0100");
    assert_eq!(v["diagnostics"][0]["primary"]["line"], 1);
    assert_eq!(v["diagnostics"][0]["primary"]["column"], 36);
    assert_eq!(v["recipes"][0]["inputs"][0], "logp");
}

#[test]
fn missing_file_is_a_located_error() {
    let out = keel(&["check", "no/such.recipe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("no/such.recipe:1:1: error[E0101]"));
}

#[test]
fn explain_prints_the_index_entry() {
    let out = keel(&["explain", "E0202"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("## E0202: value is finer than its context allows"));
    let out = keel(&["explain", "E9999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a Keel error code"));
}

#[test]
fn fmt_check_and_write() {
    let p = temp_recipe("fmt.recipe", "recipe r{objective.loss=-logp}\n");
    let ps = p.to_string_lossy().to_string();
    let out = keel(&["fmt", "--check", &ps]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("would be reformatted"));
    let out = keel(&["fmt", &ps]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&p).unwrap_or_default(),
        "recipe r {\n    objective.loss = -logp\n}\n"
    );
    assert!(keel(&["fmt", "--check", &ps]).status.success());
    let broken = temp_recipe("broken.recipe", "recipe r { objective.loss = }\n");
    let out = keel(&["fmt", &broken.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap_or_default(),
        "recipe r { objective.loss = }\n"
    );
}
