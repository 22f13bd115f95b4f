//! `keel compile FILE --emit ir|kernels|kernel-source|clif|llvm-ir`

use crate::diagnostics::{self, ErrorFormat};
use keel_compiler::{Checked, Diagnostic, Disk, check_source, compile_loss};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    file: String,
    #[arg(long, default_value = "ir")]
    emit: String,
    #[arg(long)]
    recipe: Option<String>,
    /// Compile for a batch that carries logits and tokens.
    #[arg(long)]
    logits: bool,
    #[command(flatten)]
    options: diagnostics::Options,
}

/// The checked recipe to show, and how its diagnostics are printed.
struct Recipe<'a> {
    path: &'a str,
    checked: Checked,
    index: usize,
    format: ErrorFormat,
    color: bool,
}

impl Recipe<'_> {
    fn print(&self, diags: &[Diagnostic]) {
        diagnostics::print(
            self.path,
            diags,
            self.checked.sources(),
            self.format,
            self.color,
        );
    }
}

pub fn run(a: Args) -> ExitCode {
    let path = a.file.as_str();
    let (format, color) = a.options.resolve();
    let Some(text) = diagnostics::read(path) else {
        return ExitCode::from(1);
    };
    let checked = check_source(&Disk, path, &text);
    if checked.has_errors() {
        diagnostics::print(path, &checked.diagnostics, checked.sources(), format, color);
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(a.recipe.as_deref()) else {
        eprintln!("error: `{path}` has no such recipe");
        return ExitCode::from(1);
    };
    let r = Recipe {
        path,
        checked,
        index,
        format,
        color,
    };
    match a.emit.as_str() {
        "kernel-source" => kernel_source(&r, a.logits),
        "ir" => ir(&r, a.logits, false),
        "kernels" => ir(&r, a.logits, true),
        "clif" => clif(&r),
        "llvm-ir" => emit_llvm(&r.checked, r.index),
        other => {
            eprintln!(
                "error: `--emit {other}` is not available; use `ir`, `kernels`, `kernel-source`, `clif` or `llvm-ir`"
            );
            ExitCode::from(1)
        }
    }
}

/// `--emit kernel-source`: a small synthetic batch of what the recipe
/// reads runs the kernels once, so the runtime compiles them.
fn kernel_source(r: &Recipe, logits: bool) -> ExitCode {
    let (checked, index) = (&r.checked, r.index);
    let recipe = &checked.recipes[index];
    let d = keel_compiler::synth::Dims {
        b: 8,
        t: 16,
        v: if logits { 8 } else { 0 },
        group: 4,
    };
    let batch = keel_compiler::synth::batch(recipe, d, 1);
    let have = |n: &str| batch.has(n);
    let source = compile_loss(checked, index, &have)
        .map_err(|d| r.print(&d))
        .and_then(|c| {
            let p = keel_compiler::batch::prepare(&batch, "synthetic batch", &c.graph, recipe)
                .map_err(|d| r.print(&d))?;
            keel_device::kernel_sources(&c.graph, &p).map_err(|e| {
                diagnostics::fail(&keel_compiler::Error::new(
                    keel_compiler::codes::DEVICE,
                    format!("cannot compile the kernels on a device: {e}"),
                    "install a Vulkan driver (Debian: mesa-vulkan-drivers) or build with `--features cuda` on an NVIDIA machine",
                ));
            })
        });
    match source {
        Ok((text, device)) => {
            println!(
                "// the kernels of `{}` as the {device} runtime compiles them",
                recipe.name
            );
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(()) => ExitCode::from(1),
    }
}

/// `--emit ir`, or with `kernels`, `--emit kernels` (the fused kernel
/// plan). Without a batch, the usual tensors are assumed (and logits if
/// asked).
fn ir(r: &Recipe, logits: bool, kernels: bool) -> ExitCode {
    let have = move |n: &str| match n {
        "logits" | "tokens" => logits,
        "teacher_logits" | "advantages" => false,
        _ => true,
    };
    match compile_loss(&r.checked, r.index, &have) {
        Ok(c) if !kernels => {
            print!("{}", c.graph.print());
            ExitCode::SUCCESS
        }
        Ok(c) => match keel_compiler::kernel::Plan::new(&c.graph) {
            Ok(plan) => {
                print!("{}", plan.print());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: internal compiler error while planning kernels: {e}");
                ExitCode::from(101)
            }
        },
        Err(diags) => {
            r.print(&diags);
            ExitCode::from(1)
        }
    }
}

/// `--emit clif`: the host code as cranelift IR.
fn clif(r: &Recipe) -> ExitCode {
    match keel_compiler::compile_host(&r.checked, r.index) {
        Ok(h) => match emit_clif(&h) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cranelift: {e}");
                ExitCode::from(1)
            }
        },
        Err(diags) => {
            r.print(&diags);
            ExitCode::from(1)
        }
    }
}

/// The host program and the reward column program, as cranelift IR.
fn emit_clif(h: &keel_compiler::lower::HostGraph) -> Result<String, String> {
    use keel_compiler::builtins::Level;
    use std::fmt::Write;
    let mut jit = keel_compiler::host::Jit::new()?;
    let mut out = String::new();
    let g = &h.graph;
    let scalars: Vec<_> = h
        .scalars
        .iter()
        .filter(|(_, id)| g.nodes[*id].level <= Level::Batch)
        .collect();
    if !scalars.is_empty() {
        let ids: Vec<_> = scalars.iter().map(|(_, id)| *id).collect();
        let f = jit.scalar(g, &ids)?;
        let _ = writeln!(
            out,
            "; host program: fn(inputs: *const f64, outputs: *mut f64)"
        );
        for (k, id) in f.inputs.iter().enumerate() {
            let _ = writeln!(
                out,
                ";   inputs[{k}] = {}",
                keel_compiler::describe_node(g, *id)
            );
        }
        for (k, (name, _)) in scalars.iter().enumerate() {
            let _ = writeln!(out, ";   outputs[{k}] = {name}");
        }
        out.push_str(&f.clif);
        out.push('\n');
    }
    if let Some(r) = h.reward {
        match jit.column(g, r) {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "; reward: fn(n: i64, cols: *const *const f64, scalars: *const f64, out: *mut f64)"
                );
                for (k, id) in f.columns.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        ";   cols[{k}] = {}",
                        keel_compiler::describe_node(g, *id)
                    );
                }
                for (k, id) in f.scalars.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        ";   scalars[{k}] = {}",
                        keel_compiler::describe_node(g, *id)
                    );
                }
                out.push_str(&f.clif);
            }
            Err(_) => {
                let _ = writeln!(
                    out,
                    "; reward: uses group or batch statistics, so it runs with the device program"
                );
            }
        }
    }
    if out.is_empty() {
        out.push_str("; this recipe has no host code (no schedules, state, guards or reward)\n");
    }
    Ok(out)
}

#[cfg(feature = "llvm")]
fn emit_llvm(checked: &keel_compiler::Checked, index: usize) -> ExitCode {
    use keel_compiler::builtins::Level;
    let Ok(h) = keel_compiler::compile_host(checked, index) else {
        eprintln!("error: the host program could not be built; run `keel check`");
        return ExitCode::from(1);
    };
    let ids: Vec<_> = h
        .scalars
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| h.graph.nodes[*id].level <= Level::Batch)
        .collect();
    if ids.is_empty() {
        println!("; this recipe has no host program");
        return ExitCode::SUCCESS;
    }
    match keel_compiler::host_llvm::scalar(&h.graph, &ids) {
        Ok(f) => {
            print!("{}", f.llvm_ir);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: llvm: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(feature = "llvm"))]
fn emit_llvm(_: &keel_compiler::Checked, _: usize) -> ExitCode {
    eprintln!("error: this `keel` was built without the LLVM backend");
    eprintln!(
        "help: install Debian's llvm-16-dev and build with `cargo build -p keel-cli --features llvm` (LLVM_SYS_160_PREFIX=/usr/lib/llvm-16)"
    );
    ExitCode::from(1)
}
