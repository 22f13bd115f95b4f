//! `keel explain CODE` (the error index) or `keel explain FILE` (a recipe's
//! objective as readable math).

use keel_compiler::{Disk, check_source};
use std::process::ExitCode;

fn looks_like_code(s: &str) -> bool {
    let s = s.trim();
    s.len() == 5
        && matches!(s.as_bytes()[0], b'E' | b'W' | b'e' | b'w')
        && s[1..].bytes().all(|b| b.is_ascii_digit())
}

#[derive(clap::Args)]
pub struct Args {
    /// An error code such as E0202, or a recipe file.
    what: String,
    /// Which recipe of the file (default: the one named like the file, else the last).
    #[arg(long)]
    recipe: Option<String>,
}

pub fn run(a: Args) -> ExitCode {
    let (what, recipe) = (a.what.as_str(), a.recipe.as_deref());
    if looks_like_code(what) {
        return match keel_compiler::codes::explain(what) {
            Some(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: `{what}` is not a Keel error code");
                eprintln!("help: codes look like E0202 or W0001; `docs/errors.md` lists them all");
                ExitCode::from(1)
            }
        };
    }
    let Ok(text) = std::fs::read_to_string(what) else {
        eprintln!(
            "error: `{what}` is neither an error code (like E0202) nor a readable recipe file"
        );
        return ExitCode::from(1);
    };
    let checked = check_source(&Disk, what, &text);
    if checked.has_errors() {
        for d in &checked.diagnostics {
            eprintln!("{}", d.plain_line(checked.sources()));
        }
        eprintln!("help: run `keel check {what}` for details");
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(recipe) else {
        eprintln!("error: `{what}` defines no such recipe");
        return ExitCode::from(1);
    };
    print!(
        "{}",
        keel_compiler::explain::explain_recipe(&checked, index)
    );
    ExitCode::SUCCESS
}
