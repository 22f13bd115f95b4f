//! `keel fmt [--check] FILE...`

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<String>,
    /// Do not write; exit 1 if a file is not formatted.
    #[arg(long)]
    check: bool,
}

pub fn run(a: Args) -> ExitCode {
    let mut failed = false;
    for path in &a.files {
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
        if a.check {
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
