//! `keel export RECIPE --target torch --out DIR [--set NAME=VALUE]...`

use crate::{Color, ErrorFormat, diagnostics};
use keel_compiler::{Error, codes};
use std::path::Path;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A PyTorch package: `forward(batch)` → loss, advantages, metrics.
    Torch,
}

pub struct Args {
    pub recipe: String,
    pub target: Target,
    pub out: String,
    pub set: Vec<String>,
    pub name: Option<String>,
    pub error_format: ErrorFormat,
    pub color: Color,
}

pub fn run(a: Args) -> ExitCode {
    let color = diagnostics::use_color(a.color);
    let Some((checked, index)) =
        diagnostics::load(&a.recipe, &a.set, a.name.as_deref(), a.error_format, color)
    else {
        return ExitCode::from(1);
    };
    let Target::Torch = a.target;
    let has = keel_export::torch_inputs(&checked.recipes[index]);
    let mut package = match keel_export::torch_package(&checked, index, &has, &a.recipe) {
        Ok(p) => p,
        Err(d) => {
            diagnostics::print(&a.recipe, &d, checked.sources(), a.error_format, color);
            return ExitCode::from(1);
        }
    };
    // The credit as a verl advantage estimator, when verl gives it what it
    // reads (imported only by a user of verl).
    let estimator = keel_export::verl_estimator(&checked, index, &a.recipe);
    if let Ok(files) = &estimator {
        package.files.extend(files.iter().cloned());
    }
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
    match estimator {
        Ok(_) => eprintln!(
            "  the credit as a verl advantage estimator: import {}.verl_adv, algorithm.adv_estimator={}",
            package.name, package.name
        ),
        Err(why) => eprintln!("  no verl advantage estimator: {why}"),
    }
    ExitCode::SUCCESS
}
