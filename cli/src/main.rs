//! `keel`: the command-line tool. One module per subcommand, each with its
//! `Args` (the subcommand's flags, as clap derives them) and a `run(Args) ->
//! ExitCode`; this file names the subcommands and dispatches (`keel lsp`,
//! which has no flags, is one call to `keel_lsp`).

mod bench;
mod check;
mod compare;
mod compile;
mod diagnostics;
mod explain;
mod export;
mod fmt;
mod inspect;
mod loss;
mod report;
mod run;

use clap::{Parser, Subcommand};
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

#[derive(Subcommand)]
enum Command {
    /// Parse and check recipes; exit 1 if any has an error.
    Check(check::Args),
    /// Format recipes in place (or, with --check, report files that differ).
    Fmt(fmt::Args),
    /// Explain an error code (`keel explain E0202`) or a recipe's objective
    /// (`keel explain stdlib/grpo.recipe`).
    Explain(explain::Args),
    /// Compute a recipe's loss, gradient and metrics on one batch file.
    Loss(loss::Args),
    /// Export a recipe's loss as Python: a package whose `forward(batch)`
    /// computes the loss, advantages and metrics in PyTorch, one expression
    /// per IR node (`keel export stdlib/grpo.recipe --out export/grpo`).
    Export(export::Args),
    /// Train a policy with a recipe: warm start, rollouts, the compiled loss,
    /// guards, checkpoints, metrics (`keel run examples/quickstart.recipe`).
    Run(run::Args),
    /// Benchmarks: `keel bench loss RECIPE --tokens N` times the recipe's loss
    /// and gradient on a synthetic batch (tokens/s and effective GB/s).
    Bench(bench::Args),
    /// Write RUN_DIR/report.html: plots of a run's metrics and guard events.
    Report(report::Args),
    /// Several runs on one page: OUT/compare.html (the metrics overlaid,
    /// seeds of one arm as a mean with a min–max band) and OUT/summary.json
    /// (final and best pass@1 and pass@k, entropy, response length, reward).
    Compare(compare::Args),
    /// What a pretrained checkpoint holds (a Hugging Face directory or a
    /// GGUF file): architecture, parameters, dtype, tokenizer, chat
    /// template; with --prompt, the next token's top-10 under the model.
    Inspect(inspect::Args),
    /// Run the language server on stdin/stdout.
    Lsp,
    /// Show what the compiler makes of a recipe: `--emit ir` (the typed IR
    /// and its gradient), `kernels` (the fused kernel plan), `kernel-source`
    /// (the device kernels as the runtime compiles them: WGSL or CUDA C++),
    /// `clif` (host code), `llvm-ir`.
    Compile(compile::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check(a) => check::run(a),
        Command::Fmt(a) => fmt::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Loss(a) => loss::run(a),
        Command::Export(a) => export::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Lsp => lsp(),
        Command::Compile(a) => compile::run(a),
    }
}

/// `keel lsp`: the language server on stdin/stdout.
fn lsp() -> ExitCode {
    match keel_lsp::run_stdio() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel lsp: {e}");
            ExitCode::from(1)
        }
    }
}
