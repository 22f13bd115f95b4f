//! Shared helpers of Keel's integration tests. This is the only place the
//! tests call the compiler API; test files use these one-liners.

use keel_compiler::{check_source, Checked, SourceDb};
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
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "recipe") {
            let name = format!("{dir}/{}", p.file_name().and_then(|n| n.to_str()).unwrap_or(""));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.push((name, text));
        }
    }
    out.sort();
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
    let db = MemFiles(files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect());
    check_source(&db, "test.recipe", src)
}

/// Every diagnostic rendered as `keel check` prints it, colour off, followed
/// by the plain lines.
pub fn render(checked: &Checked) -> String {
    let mut out = String::new();
    for d in &checked.diagnostics {
        out.push_str(&d.render(checked.sources(), false));
    }
    for d in &checked.diagnostics {
        out.push_str(&d.plain_line(checked.sources()));
        out.push('\n');
    }
    out
}

/// The codes of all diagnostics, in order.
pub fn codes(checked: &Checked) -> Vec<&'static str> {
    checked.diagnostics.iter().map(|d| d.code.0).collect()
}
