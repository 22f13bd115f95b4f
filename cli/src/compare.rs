//! `keel compare RUN_DIR... [--out OUT] [--baseline ARM]`: several runs on one page,
//! OUT/compare.html and OUT/summary.json (drawn by `keel_runtime::report::compare`).

use crate::diagnostics;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Directories written by `keel run`.
    #[arg(required = true)]
    run_dirs: Vec<String>,
    /// Where to write (default: the current directory).
    #[arg(long, default_value = ".")]
    out: String,
    /// Pair every other arm's seeds with this arm's same seeds and report
    /// each summary metric's mean difference with a 95 % bootstrap
    /// interval (an arm's name as the table shows it, or its recipe's).
    #[arg(long)]
    baseline: Option<String>,
}

pub fn run(a: Args) -> ExitCode {
    let dirs: Vec<PathBuf> = a.run_dirs.iter().map(PathBuf::from).collect();
    match keel_runtime::report::compare::write(&dirs, Path::new(&a.out), a.baseline.as_deref()) {
        Ok((html, json)) => {
            eprintln!("wrote {} and {}", html.display(), json.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            diagnostics::fail(&e);
            ExitCode::from(1)
        }
    }
}
