//! `keel`: the command-line tool. One module per subcommand.

mod check;
mod explain;
mod fmt;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a language and compiler for ML training recipes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ErrorFormat {
    /// Drawn reports with source excerpts, then one line per diagnostic.
    Human,
    /// One `PATH:LINE:COL: error[CODE]: MESSAGE` line per diagnostic.
    Short,
    /// One JSON object per file on stdout.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check recipes; exit 1 if any has an error.
    Check {
        /// Recipe files to check.
        #[arg(required = true)]
        files: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        error_format: ErrorFormat,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Format recipes in place (or, with --check, report files that differ).
    Fmt {
        #[arg(required = true)]
        files: Vec<String>,
        /// Do not write; exit 1 if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
    /// Explain an error code (e.g. `keel explain E0202`).
    Explain {
        /// The code, such as E0202 or W0001.
        code: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            files,
            error_format,
            color,
        } => check::run(&files, error_format, color),
        Command::Fmt { files, check } => fmt::run(&files, check),
        Command::Explain { code } => explain::run(&code),
    }
}
