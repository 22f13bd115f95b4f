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

/// The checker resolves each guard for the runtime: bare keys to their
/// section, constant expressions folded, string literals decoded, windows and
/// rollback counts as integers; a guard with an error is left out.
#[test]
fn guards_are_resolved_by_the_checker() {
    use keel_compiler::{CheckedGuard, GuardAction as A, GuardOp as Op};
    let c = keel_tests::check_str(
        "import std/grpo\nrecipe r extends grpo {\n    state { s = 1.0 }\n    update { s = s }\n    \
         guard g: step >= 2 for 3 steps => { lr *= 0.5; optimizer.lr = 1e-4 * 0.5; s += 2; rollback 4; warn \"a \\\"b\\\"\"; warn; stop }\n    \
         guard mean(entropy) over batch < 0.1 => skip\n}\n",
    );
    assert!(!c.has_errors(), "{}", keel_tests::render(&c));
    let r = &c.recipes[c.main_recipe(None).expect("r")];
    let got: Vec<(&str, u64, &[A])> = r
        .guards
        .iter()
        .map(|g: &CheckedGuard| (g.name.as_str(), g.window, g.actions.as_slice()))
        .collect();
    let assign = |t: &str, op, value| A::Assign {
        target: t.to_string(),
        op,
        value,
    };
    assert_eq!(
        got,
        vec![
            (
                "g",
                3,
                &[
                    assign("optimizer.lr", Op::Mul, 0.5),
                    assign("optimizer.lr", Op::Set, 1e-4 * 0.5),
                    assign("state.s", Op::Add, 2.0),
                    A::Rollback(4),
                    A::Warn("a \"b\"".to_string()),
                    A::Warn("guard `g` fired".to_string()),
                    A::Stop,
                ][..]
            ),
            ("1", 1, &[A::Skip][..]),
        ]
    );
    // A guard with an error is not handed to the runtime.
    let bad = keel_tests::check_str(
        "import std/grpo\nrecipe r extends grpo {\n    guard step > 1 => optimizer.lr = mean(entropy) over batch\n}\n",
    );
    assert!(bad.has_errors());
    let r = &bad.recipes[bad.main_recipe(None).expect("r")];
    assert!(r.guards.is_empty());
}

/// The dependency graph `cargo tree` prints for `package` (normal and build
/// edges, no dev-dependencies), one crate name a line; `None` if cargo
/// cannot be run here.
fn crate_tree(package: &str, depth: Option<u32>) -> Option<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["tree", "--offline", "-p", package, "-e", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(keel_tests::root());
    if let Some(d) = depth {
        cmd.args(["--depth", &d.to_string()]);
    }
    let out = cmd.output().ok()?;
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect(),
    )
}

/// The layout's rules, as `cargo tree` sees them: the language server links
/// no code generator (cranelift, cubecl, burn), the runtime reads checked
/// recipes, never the AST (no direct `keel-grammar` dependency), and each
/// compiler stage (`keel-ir`, `keel-kernel`, `keel-host`) depends only on
/// the stages before it and links no code generator it does not own.
#[test]
fn crate_graph_keeps_its_rules() {
    let Some(lsp) = crate_tree("keel-lsp", None) else {
        return;
    };
    assert!(lsp.iter().any(|c| c == "keel-check"), "{lsp:?}");
    let heavy: Vec<&String> = lsp
        .iter()
        .filter(|c| {
            c.starts_with("cranelift")
                || c.starts_with("cubecl")
                || c.starts_with("burn")
                || *c == "keel-compiler"
        })
        .collect();
    assert!(heavy.is_empty(), "keel-lsp links {heavy:?}");
    let runtime = crate_tree("keel-runtime", Some(1)).unwrap_or_default();
    assert!(runtime.iter().any(|c| c == "keel-compiler"), "{runtime:?}");
    assert!(
        !runtime.iter().any(|c| c == "keel-grammar"),
        "keel-runtime depends on keel-grammar directly: {runtime:?}"
    );
    let check = crate_tree("keel-check", None).unwrap_or_default();
    assert!(
        !check
            .iter()
            .any(|c| c.starts_with("cranelift") || c == "safetensors"),
        "keel-check: {check:?}"
    );
    // The IR and the kernel plan link no code generator; host code links
    // no GPU runtime; each stage depends only on the stages before it.
    let code_generators = |c: &String| {
        c.starts_with("cranelift")
            || c.starts_with("inkwell")
            || c.starts_with("cubecl")
            || c.starts_with("burn")
    };
    for (krate, later) in [
        (
            "keel-ir",
            &["keel-kernel", "keel-host", "keel-device", "keel-compiler"][..],
        ),
        (
            "keel-kernel",
            &["keel-host", "keel-device", "keel-compiler"][..],
        ),
        // The exporter is a backend of the IR: it writes Python from the
        // graph and links no executor.
        (
            "keel-export",
            &[
                "keel-kernel",
                "keel-host",
                "keel-device",
                "keel-compiler",
                "keel-runtime",
            ][..],
        ),
    ] {
        let tree = crate_tree(krate, None).unwrap_or_default();
        assert!(tree.iter().any(|c| c == "keel-check"), "{krate}: {tree:?}");
        let bad: Vec<&String> = tree
            .iter()
            .filter(|c| code_generators(c) || later.contains(&c.as_str()))
            .collect();
        assert!(bad.is_empty(), "{krate} links {bad:?}");
    }
    // The models' crate knows nothing of recipes: no compiler crate.
    let model = crate_tree("keel-model", None).unwrap_or_default();
    assert!(model.iter().any(|c| c.starts_with("burn")), "{model:?}");
    let compiler: Vec<&String> = model
        .iter()
        .filter(|c| c.starts_with("keel-") && *c != "keel-model")
        .collect();
    assert!(compiler.is_empty(), "keel-model links {compiler:?}");
    let host = crate_tree("keel-host", None).unwrap_or_default();
    assert!(host.iter().any(|c| c.starts_with("cranelift")), "{host:?}");
    assert!(
        !host
            .iter()
            .any(|c| c.starts_with("cubecl") || c.starts_with("burn") || c == "keel-kernel"),
        "keel-host: {host:?}"
    );
}

/// A crate's Rust source (`SRC/**/*.rs`) as text: each file's top-level
/// module (`SRC/X.rs` or `SRC/X/…`; `None` for lib.rs and main.rs) and its
/// text without comments and `#[cfg(test)]` modules.
fn sources(src: &std::path::Path) -> Vec<(Option<String>, String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(src).unwrap_or(&f).to_path_buf();
            let first = rel.components().next().map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            });
            let top = first.filter(|n| n != "lib" && n != "main");
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            (top, rel.display().to_string(), without_tests(&text))
        })
        .collect()
}

/// The text without `//` comments and `#[cfg(test)] mod … { … }` blocks.
fn without_tests(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(k) => &l[..k],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(k) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..k]);
        let after = &rest[k..];
        let body = after.find('{').filter(|&b| after[..b].contains("mod "));
        let Some(b) = body else {
            out.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        };
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[b..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = b + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Which top-level modules each top-level module names (`crate::X`).
fn module_imports(
    src: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let files = sources(src);
    let mods: std::collections::BTreeSet<String> =
        files.iter().filter_map(|f| f.0.clone()).collect();
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = mods
        .iter()
        .map(|m| (m.clone(), Default::default()))
        .collect();
    for (top, _, text) in &files {
        let Some(a) = top else { continue };
        for (k, _) in text.match_indices("crate::") {
            let name: String = text[k + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if mods.contains(&name) && &name != a {
                edges.entry(a.clone()).or_default().insert(name);
            }
        }
    }
    edges
}

/// A cycle of the graph, if it has one.
fn cycle(
    edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(k) = path.iter().position(|p| p == v) {
            return Some(path[k..].to_vec());
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = Default::default();
    edges
        .keys()
        .find_map(|v| visit(v, edges, &mut Vec::new(), &mut done))
}

/// The rooms of the runtime: no import cycle between the top-level modules
/// of `keel-runtime` or of `keel-model`, and each room of the runtime
/// imports only the rooms its README names (`runtime/src/lib.rs`).
#[test]
fn runtime_rooms_import_one_way() {
    let root = keel_tests::root();
    for src in ["runtime/src", "runtime/model/src"] {
        let edges = module_imports(&root.join(src));
        assert!(edges.len() > 5, "{src}: {edges:?}");
        assert_eq!(cycle(&edges), None, "{src}: an import cycle");
    }
    let allowed: &[(&str, &[&str])] = &[
        ("error", &[]),
        ("settings", &["error"]),
        ("env", &["error", "settings"]),
        ("batch", &["env", "error"]),
        ("rollout", &["batch", "env", "error"]),
        ("roles", &["batch", "env", "rollout", "error"]),
        (
            "run",
            &["batch", "env", "rollout", "roles", "error", "settings"],
        ),
        ("report", &["run", "error"]),
    ];
    let edges = module_imports(&root.join("runtime/src"));
    assert_eq!(
        edges.keys().collect::<Vec<_>>(),
        {
            let mut rooms: Vec<&str> = allowed.iter().map(|a| a.0).collect();
            rooms.sort();
            rooms
        },
        "the runtime's rooms"
    );
    for (room, may) in allowed {
        let bad: Vec<&String> = edges[*room]
            .iter()
            .filter(|m| !may.contains(&m.as_str()))
            .collect();
        assert!(
            bad.is_empty(),
            "`{room}` imports {bad:?}; it may import {may:?}"
        );
    }
}

/// No function outside tests is longer than 150 lines in the runtime (the
/// model crate included) and the CLI: a long one is split into named parts.
#[test]
fn no_function_over_150_lines_in_the_runtime_and_the_cli() {
    let root = keel_tests::root();
    let mut long = Vec::new();
    for src in ["runtime/src", "runtime/model/src", "cli/src"] {
        for (_, file, text) in sources(&root.join(src)) {
            let lines: Vec<&str> = text.lines().collect();
            for (k, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                let t = t
                    .strip_prefix("pub ")
                    .or_else(|| t.strip_prefix("pub(crate) "))
                    .unwrap_or(t);
                let t = t.strip_prefix("const ").unwrap_or(t);
                let Some(name) = t.strip_prefix("fn ") else {
                    continue;
                };
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let (mut depth, mut started) = (0i64, false);
                for (j, l) in lines.iter().enumerate().skip(k) {
                    for c in l.chars() {
                        match c {
                            '{' => {
                                depth += 1;
                                started = true;
                            }
                            '}' => depth -= 1,
                            _ => {}
                        }
                    }
                    if !started && l.trim_end().ends_with(';') {
                        break;
                    }
                    if started && depth <= 0 {
                        if j - k + 1 > 150 {
                            long.push(format!("{src}/{file}::{name} {} lines", j - k + 1));
                        }
                        break;
                    }
                }
            }
        }
    }
    assert!(long.is_empty(), "functions over 150 lines: {long:?}");
}

/// docs/runtime.md's list of what the runtime provides follows the input
/// table: every row of `INPUTS` and every name of `NOT_PRODUCED` is named
/// in its paragraph.
#[test]
fn the_runtime_doc_lists_the_input_table() {
    use keel_runtime::batch::inputs::{INPUTS, NOT_PRODUCED};
    let doc = std::fs::read_to_string(keel_tests::root().join("docs/runtime.md")).expect("doc");
    let start = doc
        .find("## What the runtime provides to a recipe")
        .expect("section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |k| k + 3)];
    let (provided, refused) = section
        .split_once("anything else")
        .expect("the refused list");
    for i in INPUTS {
        assert!(
            provided.contains(&format!("`{}`", i.name)),
            "`{}` is not in the list",
            i.name
        );
    }
    for n in NOT_PRODUCED {
        assert!(
            refused.contains(&format!("`{n}`")),
            "`{n}` is not in the refused list"
        );
    }
}
