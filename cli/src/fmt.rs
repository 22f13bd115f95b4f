//! `keel fmt [--check] FILE...`

use std::process::ExitCode;

pub fn run(files: &[String], check: bool) -> ExitCode {
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
        let formatted = match keel_compiler::format::format_source(&text) {
            Ok(f) => f,
            Err(n) => {
                eprintln!(
                    "{path}: not formatted: it has {n} syntax error(s); run `keel check {path}`"
                );
                failed = true;
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        if check {
            eprintln!("{path}: would be reformatted");
            failed = true;
        } else if let Err(e) = std::fs::write(path, formatted) {
            eprintln!("{path}: cannot write: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
