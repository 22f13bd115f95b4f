//! `keel export RECIPE --target torch|verl|trl --out DIR [--set NAME=VALUE]... [--allow-partial]`

use crate::diagnostics;
use keel_compiler::{Diagnostic, Error, codes};
use std::path::Path;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A PyTorch package: `forward(batch)` → loss, advantages, metrics.
    Torch,
    /// A package for verl 0.9.1: the loss and credit registered with verl,
    /// `overrides.txt` and `run.sh`.
    Verl,
    /// A package for TRL 1.16.0: a `GRPOTrainer` subclass with the
    /// recipe's loss and credit, and `train.py`.
    Trl,
}

#[derive(clap::Args)]
pub struct Args {
    /// The recipe file.
    recipe: String,
    /// What to write: `torch`, a plain PyTorch package; `verl`, a package
    /// registering the loss and credit with verl 0.9.1, its Hydra
    /// overrides and `run.sh`; `trl`, a TRL 1.16 `GRPOTrainer` subclass
    /// and `train.py` (see docs/export.md).
    #[arg(long, value_enum, default_value = "torch")]
    target: Target,
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
    #[command(flatten)]
    options: diagnostics::Options,
}

pub fn run(a: Args) -> ExitCode {
    let (error_format, color) = a.options.resolve();
    let Some((checked, index)) =
        diagnostics::load(&a.recipe, &a.set, a.name.as_deref(), error_format, color)
    else {
        return ExitCode::from(1);
    };
    // The package and what to say of it, or the diagnostics of a refusal.
    let exported: Result<(keel_export::Package, String), Vec<Diagnostic>> = match a.target {
        Target::Torch => {
            let has = keel_export::torch_inputs(&checked.recipes[index]);
            keel_export::torch_package(&checked, index, &has, &a.recipe).map(|mut package| {
                // The credit as a verl advantage estimator, when verl gives
                // it what it reads (imported only by a user of verl).
                let note = match keel_export::verl_estimator(&checked, index, &a.recipe) {
                    Ok(files) => {
                        package.files.extend(files);
                        format!(
                            "  the credit as a verl advantage estimator: import {}.verl_adv, algorithm.adv_estimator={}",
                            package.name, package.name
                        )
                    }
                    Err(why) => format!("  no verl advantage estimator: {why}"),
                };
                (package, note)
            })
        }
        Target::Verl => keel_export::verl_package(&checked, index, &a.recipe, a.allow_partial)
            .map(|v| {
                let mut note = format!(
                    "  for verl {}: the loss as {} (./run.sh launches verl.trainer.main_ppo with overrides.txt)",
                    keel_export::VERL_VERSION,
                    if v.mode == "policy_loss" {
                        "a registered policy loss"
                    } else {
                        "a replacement of ppo_loss"
                    }
                );
                note.push_str(&listed(&v.caveats, &v.dropped, &v.unmapped));
                (v.package, note)
            }),
        Target::Trl => keel_export::trl_package(&checked, index, &a.recipe, a.allow_partial)
            .map(|t| {
                let mut note = format!(
                    "  for TRL {}: KeelGRPOTrainer (a GRPOTrainer) with the recipe's loss{}; python train.py MODEL DATA.jsonl",
                    keel_export::TRL_VERSION,
                    if t.credit { " and credit" } else { "" }
                );
                note.push_str(&listed(&t.caveats, &t.dropped, &t.unmapped));
                (t.package, note)
            }),
    };
    let (package, note) = match exported {
        Ok(p) => p,
        Err(d) => {
            diagnostics::print(&a.recipe, &d, checked.sources(), error_format, color);
            return ExitCode::from(1);
        }
    };
    let out = Path::new(&a.out);
    for (rel, body) in &package.files {
        let path = out.join(rel);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, body));
        if let Err(e) = written {
            diagnostics::fail(
                &Error::new(
                    codes::RUN_DIR,
                    format!("cannot write `{}`: {e}", path.display()),
                    "choose an --out directory you can write to",
                )
                .at(path.display().to_string()),
            );
            return ExitCode::from(1);
        }
    }
    eprintln!(
        "keel export: {} → {} (package `{}`; see {}/README.md)",
        a.recipe,
        out.display(),
        package.name,
        out.display()
    );
    eprintln!("{note}");
    #[cfg(unix)]
    if let Some((rel, _)) = package.files.iter().find(|(r, _)| r.ends_with(".sh")) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(out.join(rel), std::fs::Permissions::from_mode(0o755));
    }
    ExitCode::SUCCESS
}

/// `caveat:`, `dropped:` and `not mapped:` lines of the summary.
fn listed(caveats: &[String], dropped: &[String], unmapped: &[String]) -> String {
    let mut s = String::new();
    for u in unmapped {
        s.push_str(&format!("\n  not mapped: {u}"));
    }
    for c in caveats {
        s.push_str(&format!("\n  caveat: {c}"));
    }
    for d in dropped {
        s.push_str(&format!("\n  dropped: {d}"));
    }
    s
}
