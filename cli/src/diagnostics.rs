//! Printing diagnostics and errors the same way for every subcommand
//! (human, short or JSON; colour or not, as `--error-format` and `--color`
//! ask), reading a recipe file with a located error, and finding the device
//! for `--backend device`.

use clap::ValueEnum;
use keel_compiler::{Checked, Diagnostic, Disk, Error, Sources, check_source_with, codes};
use std::io::IsTerminal;

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

/// `--error-format` and `--color`, for the subcommands that check a recipe
/// (flattened into their `Args`).
#[derive(clap::Args)]
pub struct Options {
    #[arg(long, value_enum, default_value = "human")]
    pub error_format: ErrorFormat,
    #[arg(long, value_enum, default_value = "auto")]
    pub color: Color,
}

impl Options {
    /// The error format, and whether to colour (see [`use_color`]).
    pub fn resolve(&self) -> (ErrorFormat, bool) {
        (self.error_format, use_color(self.color))
    }
}

pub fn use_color(color: Color) -> bool {
    match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// Print diagnostics to stderr (JSON goes to stdout as one object).
pub fn print(
    path: &str,
    diags: &[Diagnostic],
    sources: &Sources,
    format: ErrorFormat,
    color: bool,
) {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match format {
        ErrorFormat::Json => {
            let out = serde_json::json!({
                "file": path,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": diags.iter().map(|d| d.to_json(sources)).collect::<Vec<_>>(),
            });
            println!("{out}");
        }
        ErrorFormat::Short => {
            for d in diags {
                eprintln!("{}", d.plain_line(sources));
            }
        }
        ErrorFormat::Human => {
            // Each diagnostic once, as a block (`--error-format short` gives
            // one line each), then the count.
            for d in diags {
                eprint!("{}", d.render(sources, color));
            }
            if !diags.is_empty() {
                let n = |k: usize, w: &str| {
                    if k == 1 {
                        format!("1 {w}")
                    } else {
                        format!("{k} {w}s")
                    }
                };
                eprintln!("{path}: {}, {}", n(errors, "error"), n(warnings, "warning"));
            }
        }
    }
}

/// Print an error (`location: error[CODE]: message`, then its help line).
pub fn fail(e: &Error) {
    eprintln!("{e}");
}

/// Print an error and the located diagnostics behind it (rendered against
/// the recipe's `sources`), each once.
pub fn fail_with(e: &Error, path: &str, sources: &Sources, format: ErrorFormat, color: bool) {
    if !e.diagnostics.is_empty() {
        print(path, &e.diagnostics, sources, format, color);
    }
    if !e.told_by_diagnostics() {
        fail(e);
    }
}

/// Read a recipe file, or print a located error.
pub fn read(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            fail(
                &Error::new(
                    codes::UNKNOWN_MODULE,
                    format!("cannot read file: {e}"),
                    "check the path; recipes are `.recipe` files",
                )
                .at(format!("{path}:1:1")),
            );
            None
        }
    }
}

/// `--set NAME=VALUE` arguments as (name, value) pairs, or what is wrong.
pub fn parse_set(set: &[String]) -> Result<Vec<(String, String)>, String> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!(
                "`--set {s}` must look like `--set section.key=VALUE`"
            )),
        })
        .collect()
}

/// Read the recipe file at `path`, apply `--set`, check it, and pick the
/// recipe a command acts on (`name`, else the file's main one). Every
/// failure is printed; `None` means exit 1.
pub fn load(
    path: &str,
    set: &[String],
    name: Option<&str>,
    format: ErrorFormat,
    color: bool,
) -> Option<(Checked, usize)> {
    let text = read(path)?;
    let overrides = match parse_set(set) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return None;
        }
    };
    let checked = check_source_with(&Disk, path, &text, &overrides);
    if checked.has_errors() {
        print(path, &checked.diagnostics, checked.sources(), format, color);
        return None;
    }
    let Some(index) = checked.main_recipe(name) else {
        let names: Vec<&str> = checked.recipes.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "error: `{path}` has no recipe{}",
            name.map(|n| format!(" named `{n}`")).unwrap_or_default()
        );
        if !names.is_empty() {
            eprintln!("help: recipes in the file: {}", names.join(", "));
        }
        return None;
    };
    Some((checked, index))
}

/// The device client for the device backends, or an E0708 error printed
/// (`None`).
pub fn device_client() -> Option<(keel_device::Client, &'static str)> {
    match keel_device::client_named() {
        Ok(c) => Some(c),
        Err(e) => {
            fail(&device_error(format!("no usable device: {e}")));
            None
        }
    }
}

/// E0708 with what to do about it.
pub fn device_error(message: String) -> Error {
    Error::new(
        codes::DEVICE,
        message,
        "install a Vulkan driver (Debian: mesa-vulkan-drivers), build with `--features cuda` on an NVIDIA machine, or use `--backend kernel` (the fused kernels on the CPU)",
    )
}
