//! `keel check FILE...`

use crate::{Color, ErrorFormat};
use keel_compiler::{Disk, Severity, check_source};
use std::io::IsTerminal;
use std::process::ExitCode;

pub fn run(files: &[String], format: ErrorFormat, color: Color) -> ExitCode {
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut failed = false;
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}:1:1: error[E0101]: cannot read file: {e}");
                failed = true;
                continue;
            }
        };
        let checked = check_source(&Disk, path, &text);
        let sources = checked.sources();
        let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = checked.diagnostics.len() - errors;
        failed |= errors > 0;
        match format {
            ErrorFormat::Json => {
                let out = serde_json::json!({
                    "file": path,
                    "errors": errors,
                    "warnings": warnings,
                    "diagnostics": checked.diagnostics.iter().map(|d| d.to_json(sources)).collect::<Vec<_>>(),
                    "recipes": checked.recipes.iter().map(|r| serde_json::json!({
                        "name": r.name,
                        "extends": r.bases,
                        "inputs": r.inputs.keys().collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                });
                println!("{out}");
            }
            ErrorFormat::Short => {
                for d in &checked.diagnostics {
                    eprintln!("{}", d.plain_line(sources));
                }
            }
            ErrorFormat::Human => {
                for d in &checked.diagnostics {
                    eprint!("{}", d.render(sources, color));
                }
                for d in &checked.diagnostics {
                    eprintln!("{}", d.plain_line(sources));
                }
                if !checked.diagnostics.is_empty() {
                    let sev = |n: usize, w: &str| {
                        if n == 1 {
                            format!("1 {w}")
                        } else {
                            format!("{n} {w}s")
                        }
                    };
                    eprintln!(
                        "{path}: {}, {}",
                        sev(errors, "error"),
                        sev(warnings, "warning")
                    );
                }
            }
        }
        let _ = Severity::Error;
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
