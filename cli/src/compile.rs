//! `keel compile FILE --emit ir`

use crate::{Color, ErrorFormat, report};
use keel_compiler::{Disk, check_source, compile_loss};
use std::process::ExitCode;

pub fn run(
    path: &str,
    emit: &str,
    name: Option<&str>,
    logits: bool,
    format: ErrorFormat,
    color: Color,
) -> ExitCode {
    let color = report::use_color(color);
    let Some(text) = report::read(path) else {
        return ExitCode::from(1);
    };
    let checked = check_source(&Disk, path, &text);
    if checked.has_errors() {
        report::print(path, &checked.diagnostics, checked.sources(), format, color);
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(name) else {
        eprintln!("error: `{path}` has no such recipe");
        return ExitCode::from(1);
    };
    match emit {
        "ir" => {
            // Without a batch, assume the usual tensors (and logits if asked).
            let have = move |n: &str| match n {
                "logits" | "tokens" => logits,
                "teacher_logits" | "advantages" => false,
                _ => true,
            };
            match compile_loss(&checked, index, &have) {
                Ok(c) => {
                    print!("{}", c.graph.print());
                    ExitCode::SUCCESS
                }
                Err(diags) => {
                    report::print(path, &diags, checked.sources(), format, color);
                    ExitCode::from(1)
                }
            }
        }
        other => {
            eprintln!("error: `--emit {other}` is not available; this build emits `ir`");
            ExitCode::from(1)
        }
    }
}
