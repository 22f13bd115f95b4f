//! Shared helpers of Keel's integration tests. This is the only place the
//! tests call the compiler API; test files use these one-liners.

use keel_compiler::{Checked, SourceDb, check_source};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `(relative path, text)` of every `.recipe` file directly under `dir`.
pub fn recipes_in(dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
        return out;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let file = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            // Subfolders too (examples/findings/NAME/*.recipe).
            out.extend(recipes_in(&format!("{dir}/{file}")));
        } else if p.extension().is_some_and(|x| x == "recipe") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.push((format!("{dir}/{file}"), text));
        }
    }
    out
}

/// Every stdlib and example file.
pub fn all_recipes() -> Vec<(String, String)> {
    let mut v = recipes_in("stdlib");
    v.extend(recipes_in("examples"));
    v
}

/// In-memory files for imports in tests.
#[derive(Default)]
pub struct MemFiles(pub HashMap<String, String>);

impl SourceDb for MemFiles {
    fn load(&self, path: &str) -> Option<String> {
        self.0.get(path).cloned()
    }
}

/// Check a single in-memory file named `test.recipe`.
pub fn check_str(src: &str) -> Checked {
    check_source(&MemFiles::default(), "test.recipe", src)
}

/// Check with extra in-memory files available to `import "./NAME"`.
pub fn check_with(src: &str, files: &[(&str, &str)]) -> Checked {
    let db = MemFiles(
        files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect(),
    );
    check_source(&db, "test.recipe", src)
}

/// Every diagnostic rendered as `keel check` prints it, colour off: each a
/// block whose first line is its one-line form.
pub fn render(checked: &Checked) -> String {
    let mut out = String::new();
    for d in &checked.diagnostics {
        out.push_str(&d.render(checked.sources(), false));
    }
    out
}

/// The codes of all diagnostics, in order.
pub fn codes(checked: &Checked) -> Vec<&'static str> {
    checked.diagnostics.iter().map(|d| d.code.0).collect()
}

/// A generated recipe of about `lines` lines that checks clean: many lets,
/// keys, monitors and guards that refer to each other, on top of GRPO.
pub fn generated_recipe(lines: usize) -> String {
    let blocks = lines.saturating_sub(20) / 18;
    let mut s = String::from(
        "// generated for benchmarks\nimport std/ppo\nimport std/grpo\nimport std/kl\n\nrecipe big extends grpo {\n",
    );
    s.push_str("    clip { eps_low = 0.2, eps_high = 0.28 }\n");
    s.push_str("    objective {\n");
    s.push_str("        let r0 = exp(clamp(logp - old_logp, -20, 20))\n");
    s.push_str("        let t0 = clip_loss(r0, credit, 1 - eps_low, 1 + eps_high)\n");
    for i in 1..=blocks * 6 {
        let prev = i - 1;
        s.push_str(&format!(
            "        let t{i} = 0.5 * t{prev} + where(credit > 0, min(t{prev}, r0 * {i}.0), stopgrad(t{prev})) / (1 + {i})\n"
        ));
    }
    s.push_str(&format!("        loss = t{}\n    }}\n", blocks * 6));
    s.push_str("    credit {\n");
    for i in 0..blocks * 3 {
        s.push_str(&format!("        c{i} = (reward - mean(reward) over group) / (std(reward) over group + 1e-{})\n", i % 9 + 1));
    }
    s.push_str("        value = c0\n    }\n    monitor {\n");
    for i in 0..blocks * 3 {
        s.push_str(&format!("        m{i} = mean(kl_k3(logp, ref_logp) * {i}) over batch + max(abs(logp - old_logp)) over batch\n"));
    }
    s.push_str("    }\n    state {\n");
    for i in 0..blocks * 2 {
        s.push_str(&format!("        s{i} = {i}.5\n"));
    }
    s.push_str("    }\n    update {\n");
    for i in 0..blocks * 2 {
        s.push_str(&format!(
            "        s{i} = 0.9 * s{i} + 0.1 * mean(entropy) over batch\n"
        ));
    }
    s.push_str("    }\n");
    for i in 0..blocks * 2 {
        s.push_str(&format!("    guard g{i}: mean(entropy) over batch < 0.01 * s{i} for {} steps => optimizer.lr *= 0.5\n", i + 1));
    }
    s.push_str("}\n");
    s
}

/// Load a safetensors batch from `tests/golden/NAME.safetensors`.
pub fn golden_batch(name: &str) -> keel_compiler::batch::Batch {
    let bytes = std::fs::read(
        root()
            .join("tests/golden")
            .join(format!("{name}.safetensors")),
    )
    .unwrap_or_default();
    keel_compiler::batch::Batch::from_bytes(&bytes).unwrap_or_default()
}

/// The recipe file of a preset: `stdlib/NAME.recipe`, else `tests/golden/NAME.recipe`.
pub fn preset_path(name: &str) -> PathBuf {
    let std = root().join("stdlib").join(format!("{name}.recipe"));
    if std.exists() {
        std
    } else {
        root().join("tests/golden").join(format!("{name}.recipe"))
    }
}

/// Check a recipe file (with `--set`-style overrides).
pub fn check_file(path: &Path, sets: &[(&str, &str)]) -> Checked {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    keel_compiler::check_source_with(&keel_compiler::Disk, &path.to_string_lossy(), &text, &sets)
}

/// Run the main recipe of a checked file on a batch, panicking with the
/// rendered diagnostics on failure.
pub fn loss_of(c: &Checked, batch: &keel_compiler::batch::Batch) -> keel_compiler::LossResult {
    loss_of_recipe(c, None, batch)
}

/// Run recipe `name` (or the file's main recipe) on a batch.
pub fn loss_of_recipe(
    c: &Checked,
    name: Option<&str>,
    batch: &keel_compiler::batch::Batch,
) -> keel_compiler::LossResult {
    assert!(!c.has_errors(), "{}", render(c));
    let i = c.main_recipe(name).expect("a recipe");
    match keel_compiler::run_loss(c, i, batch, "batch") {
        Ok(r) => r,
        Err(d) => {
            let mut out = String::new();
            for x in &d {
                out.push_str(&x.render(c.sources(), false));
            }
            panic!("{out}")
        }
    }
}

/// Run an in-memory recipe on a batch.
pub fn loss_str(src: &str, batch: &keel_compiler::batch::Batch) -> keel_compiler::LossResult {
    let c = keel_compiler::check_source(&MemFiles::default(), "test.recipe", src);
    loss_of(&c, batch)
}

/// A batch builder for worked examples: `b.f("logp", &[B, T], data)`.
pub fn batch() -> keel_compiler::batch::Batch {
    keel_compiler::batch::Batch::default()
}

/// Relative closeness with an absolute floor.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * b.abs() + abs
}

/// Run an in-memory recipe on a batch and render the errors it reports.
pub fn loss_errors(src: &str, batch: &keel_compiler::batch::Batch) -> String {
    let c = keel_compiler::check_source(&MemFiles::default(), "test.recipe", src);
    assert!(!c.has_errors(), "{}", render(&c));
    let i = c.main_recipe(None).expect("a recipe");
    let Err(diags) = keel_compiler::run_loss(&c, i, batch, "b.safetensors") else {
        panic!("expected the batch to be rejected");
    };
    let mut out = String::new();
    for d in &diags {
        out.push_str(&d.render(c.sources(), false));
    }
    for d in &diags {
        out.push_str(&d.plain_line(c.sources()));
        out.push('\n');
    }
    out
}

/// Central differences of the interpreter's own forward pass (stop-gradient
/// and rank nodes held at their values) against the derived gradient.
pub fn fd_check(
    c: &Checked,
    recipe: Option<&str>,
    b: &keel_compiler::batch::Batch,
    wrt: &str,
    samples: usize,
) -> usize {
    use keel_compiler::interp;
    let i = c.main_recipe(recipe).expect("recipe");
    let have = |n: &str| b.has(n);
    let compiled = keel_compiler::compile_loss(c, i, &have).expect("compiles");
    let g = &compiled.graph;
    let prep = keel_compiler::batch::prepare(b, "batch", g, &c.recipes[i]).expect("batch fits");
    let run = |inputs: &std::collections::HashMap<String, Vec<f64>>,
               frozen: Option<&[Vec<f64>]>| {
        let env = interp::Env {
            shape: prep.shape.clone(),
            mask: &prep.mask,
            inputs,
        };
        interp::run_with(g, &env, frozen).expect("runs")
    };
    let inputs64 = prep.inputs_f64();
    let base = run(&inputs64, None);
    // `vpred` is differentiated through the critic's loss alone.
    let (loss_name, grad_name) = match wrt {
        "logits" => ("loss", "d_logits"),
        "vpred" => ("value_loss", "d_vpred"),
        _ => ("loss", "d_logp"),
    };
    let loss_id = g.output(loss_name).expect("loss");
    let grad_id = g.output(grad_name).expect("gradient");
    let grad = &base[grad_id];
    let x = inputs64.get(wrt).expect("input").clone();
    let h = 1e-6;
    let mut checked = 0;
    let step = (x.len() / samples).max(1);
    for k in (0..x.len()).step_by(step) {
        let token = if wrt == "logits" { k / prep.shape.v } else { k };
        if prep.mask[token] == 0.0 {
            continue;
        }
        let mut inputs = inputs64.clone();
        let mut at = |d: f64| {
            if let Some(v) = inputs.get_mut(wrt) {
                v[k] = x[k] + d;
            }
            run(&inputs, Some(&base))[loss_id][0]
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            close(grad[k], fd, 1e-5, 1e-8),
            "d/d{wrt}[{k}]: derived {} vs finite difference {fd}",
            grad[k]
        );
        checked += 1;
    }
    checked
}
