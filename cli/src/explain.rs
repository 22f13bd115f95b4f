//! `keel explain CODE`

use std::process::ExitCode;

pub fn run(code: &str) -> ExitCode {
    match keel_compiler::codes::explain(code) {
        Some(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("error: `{code}` is not a Keel error code");
            eprintln!("help: codes look like E0202 or W0001; `docs/errors.md` lists them all");
            ExitCode::from(1)
        }
    }
}
