//! `keel check FILE...`

use crate::diagnostics::{self, ErrorFormat};
use keel_compiler::{Disk, check_source};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Recipe files to check.
    #[arg(required = true)]
    files: Vec<String>,
    #[command(flatten)]
    options: diagnostics::Options,
}

pub fn run(a: Args) -> ExitCode {
    let (format, color) = a.options.resolve();
    let mut failed = false;
    for path in &a.files {
        let Some(text) = diagnostics::read(path) else {
            failed = true;
            continue;
        };
        let checked = check_source(&Disk, path, &text);
        failed |= checked.has_errors();
        if format == ErrorFormat::Json {
            let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
            let out = serde_json::json!({
                "file": path,
                "errors": errors,
                "warnings": checked.diagnostics.len() - errors,
                "diagnostics": checked.diagnostics.iter().map(|d| d.to_json(checked.sources())).collect::<Vec<_>>(),
                "recipes": checked.recipes.iter().map(|r| serde_json::json!({
                    "name": r.name,
                    "extends": r.bases,
                    "inputs": r.inputs.keys().collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            println!("{out}");
        } else {
            diagnostics::print(path, &checked.diagnostics, checked.sources(), format, color);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
