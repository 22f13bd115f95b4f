//! `keel report RUN_DIR`: RUN_DIR/report.html, plots of a run's metrics and
//! guard events (drawn by `keel_runtime::report`).

use crate::diagnostics;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A directory written by `keel run`.
    run_dir: String,
}

pub fn run(a: Args) -> ExitCode {
    match keel_runtime::report::write(Path::new(&a.run_dir)) {
        Ok(path) => {
            eprintln!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            diagnostics::fail(&e);
            ExitCode::from(1)
        }
    }
}
