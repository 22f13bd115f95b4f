//! `keel`: the command-line tool. One module per subcommand.

mod bench;
mod check;
mod compile;
mod diagnostics;
mod explain;
mod export;
mod fmt;
mod inspect;
mod loss;
mod run;

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
    /// Explain an error code (`keel explain E0202`) or a recipe's objective
    /// (`keel explain stdlib/grpo.recipe`).
    Explain {
        /// An error code such as E0202, or a recipe file.
        what: String,
        /// Which recipe of the file (default: the one named like the file, else the last).
        #[arg(long)]
        recipe: Option<String>,
    },
    /// Compute a recipe's loss, gradient and metrics on one batch file.
    Loss {
        /// The recipe file.
        recipe: String,
        /// A safetensors batch (see docs/batch-format.md).
        #[arg(long)]
        batch: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Write d_logp, advantages (and d_logits) to this safetensors file.
        #[arg(long)]
        grad_out: Option<String>,
        /// Override a hyperparameter: `--set clip.eps_high=0.28` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// `interp` (the f64 reference interpreter) or `kernel`.
        #[arg(long, default_value = "interp")]
        backend: String,
        /// Which recipe of the file.
        #[arg(long = "recipe")]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        error_format: ErrorFormat,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Export a recipe's loss as Python: a package whose `forward(batch)`
    /// computes the loss, advantages and metrics in PyTorch, one expression
    /// per IR node (`keel export stdlib/grpo.recipe --out export/grpo`).
    Export {
        /// The recipe file.
        recipe: String,
        /// What to write: `torch`, a plain PyTorch package; `verl`, a package
        /// registering the loss and credit with verl 0.9.1, its Hydra
        /// overrides and `run.sh`; `trl`, a TRL 1.16 `GRPOTrainer` subclass
        /// and `train.py` (see docs/export.md).
        #[arg(long, value_enum, default_value = "torch")]
        target: export::Target,
        /// Export what the target can run and list the rest (guards,
        /// curriculum, state, a credit it cannot compute) in the README.
        #[arg(long)]
        allow_partial: bool,
        /// The directory to write (created; files in it are replaced).
        #[arg(long)]
        out: String,
        /// Override a hyperparameter: `--set clip.eps_high=0.28` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Which recipe of the file.
        #[arg(long = "recipe")]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        error_format: ErrorFormat,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Train a policy with a recipe: warm start, rollouts, the compiled loss,
    /// guards, checkpoints, metrics (`keel run examples/quickstart.recipe`).
    Run {
        /// The recipe file (omit with --resume).
        recipe: Option<String>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "recipe")]
        resume: Option<String>,
        /// Run directory (default: runs/RECIPE, runs/RECIPE-2, ...).
        #[arg(long)]
        out: Option<String>,
        /// Override a setting: `--set optimizer.steps=50` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Which recipe of the file.
        #[arg(long = "recipe")]
        name: Option<String>,
        /// Run N seeds one after another into RUN_DIR/seed-1 … seed-N
        /// (`model.seed` and `task.seed` = the seed).
        #[arg(long, value_name = "N", conflicts_with = "resume")]
        seeds: Option<u32>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Benchmarks: `keel bench loss RECIPE --tokens N` times the recipe's loss
    /// and gradient on a synthetic batch (tokens/s and effective GB/s).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Write RUN_DIR/report.html: plots of a run's metrics and guard events.
    Report {
        /// A directory written by `keel run`.
        run_dir: String,
    },
    /// Several runs on one page: OUT/compare.html (the metrics overlaid,
    /// seeds of one arm as a mean with a min–max band) and OUT/summary.json
    /// (final and best pass@1 and pass@k, entropy, response length, reward).
    Compare {
        /// Directories written by `keel run`.
        #[arg(required = true)]
        run_dirs: Vec<String>,
        /// Where to write (default: the current directory).
        #[arg(long, default_value = ".")]
        out: String,
    },
    /// What a pretrained checkpoint holds (a Hugging Face directory or a
    /// GGUF file): architecture, parameters, dtype, tokenizer, chat
    /// template; with --prompt, the next token's top-10 under the model.
    Inspect {
        /// A checkpoint directory (config.json, safetensors) or a .gguf file.
        path: String,
        /// Text to encode and continue by one token.
        #[arg(long)]
        prompt: Option<String>,
        /// Put the prompt through the checkpoint's chat template first, as
        /// a user message with the assistant's turn opened (as `keel run`
        /// does for an instruct checkpoint).
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the language server on stdin/stdout.
    Lsp,
    /// Show what the compiler makes of a recipe: `--emit ir` (the typed IR
    /// and its gradient), `kernels` (the fused kernel plan), `kernel-source`
    /// (the device kernels as the runtime compiles them: WGSL or CUDA C++),
    /// `clif` (host code), `llvm-ir`.
    Compile {
        file: String,
        #[arg(long, default_value = "ir")]
        emit: String,
        #[arg(long)]
        recipe: Option<String>,
        /// Compile for a batch that carries logits and tokens.
        #[arg(long)]
        logits: bool,
        #[arg(long, value_enum, default_value = "human")]
        error_format: ErrorFormat,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The loss and its gradient on a synthetic batch.
    Loss {
        recipe: String,
        /// Positions in the batch, B × T (rounded up to whole groups of
        /// sequences); responses fill between half and all of their T.
        #[arg(long, default_value_t = 65_536)]
        tokens: usize,
        /// Positions per sequence.
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        /// Vocabulary size, for recipes that read logits, entropy or mean_logp
        /// (0: logp and entropy given per token, no logits).
        #[arg(long, default_value_t = 64)]
        vocab: usize,
        /// `interp`, `kernel`, `device`, a comma-separated list of them
        /// (`interp,kernel`), or `all`.
        #[arg(long, default_value = "all")]
        backend: String,
        /// Evaluations timed (the median is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long = "recipe")]
        name: Option<String>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The fused logits kernel (logp, entropy, d_logits) on random logits,
    /// with peak memory.
    Logits {
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        #[arg(long, default_value_t = 151_936)]
        vocab: usize,
        /// bf16 logits (default f32).
        #[arg(long)]
        bf16: bool,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Run the cubecl kernel on the device (CUDA with `--features cuda`,
        /// else Vulkan), logits already there; f32, or bf16 with `--bf16`.
        #[arg(long)]
        device: bool,
    },
    /// Device kernels against the interpreter: every stdlib recipe on
    /// randomized batches with edge cases, and the logits kernel; prints the
    /// largest errors and fails above tolerance (for CUDA machines, where
    /// the test suite cannot be built).
    Parity {
        /// Also a larger batch per recipe (sequences × positions).
        #[arg(long, default_value_t = 64)]
        seqs: usize,
        #[arg(long)]
        json: bool,
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
        Command::Explain { what, recipe } => explain::run(&what, recipe.as_deref()),
        Command::Export {
            recipe,
            target,
            out,
            set,
            name,
            allow_partial,
            error_format,
            color,
        } => export::run(export::Args {
            recipe,
            target,
            allow_partial,
            out,
            set,
            name,
            error_format,
            color,
        }),
        Command::Loss {
            recipe,
            batch,
            json,
            grad_out,
            set,
            backend,
            name,
            error_format,
            color,
        } => loss::run(loss::Args {
            recipe,
            batch,
            json,
            grad_out,
            set,
            backend,
            name,
            error_format,
            color,
        }),
        Command::Run {
            recipe,
            resume,
            out,
            set,
            name,
            seeds,
            quiet,
            color,
        } => {
            let args = run::Args {
                recipe,
                resume,
                out,
                set,
                name,
                quiet,
                color,
                cache: None,
            };
            match seeds {
                Some(n) => run::run_seeds(args, n),
                None => run::run(args),
            }
        }
        Command::Bench {
            what:
                BenchWhat::Loss {
                    recipe,
                    tokens,
                    seq_len,
                    vocab,
                    backend,
                    iters,
                    name,
                    json,
                },
        } => bench::run(bench::Args {
            recipe,
            tokens,
            seq_len,
            vocab,
            backend,
            iters,
            name,
            json,
        }),
        Command::Bench {
            what:
                BenchWhat::Logits {
                    tokens,
                    vocab,
                    bf16,
                    iters,
                    device,
                },
        } => bench::logits(bench::LogitsArgs {
            tokens,
            vocab,
            bf16,
            iters,
            device,
        }),
        Command::Bench {
            what: BenchWhat::Parity { seqs, json },
        } => bench::parity(seqs, json),
        Command::Report { run_dir } => {
            match keel_runtime::report::write(std::path::Path::new(&run_dir)) {
                Ok(path) => {
                    eprintln!("wrote {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Inspect {
            path,
            prompt,
            chat,
            json,
        } => inspect::run(&path, prompt.as_deref(), chat, json),
        Command::Compare { run_dirs, out } => {
            let dirs: Vec<std::path::PathBuf> =
                run_dirs.iter().map(std::path::PathBuf::from).collect();
            match keel_runtime::report::compare::write(&dirs, std::path::Path::new(&out)) {
                Ok((html, json)) => {
                    eprintln!("wrote {} and {}", html.display(), json.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Lsp => match keel_lsp::run_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keel lsp: {e}");
                ExitCode::from(1)
            }
        },
        Command::Compile {
            file,
            emit,
            recipe,
            logits,
            error_format,
            color,
        } => compile::run(&file, &emit, recipe.as_deref(), logits, error_format, color),
    }
}
