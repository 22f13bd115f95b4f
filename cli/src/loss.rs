//! `keel loss RECIPE --batch BATCH.safetensors [--json] [--grad-out GRAD]
//! [--set NAME=VALUE]... [--backend interp|kernel|device]`

use crate::diagnostics;
use keel_compiler::batch::Batch;
use keel_compiler::{Backend, Checked, Diagnostic, Error, LossResult, codes, run_loss_on};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The recipe file.
    recipe: String,
    /// A safetensors batch (see docs/batch-format.md).
    #[arg(long)]
    batch: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Write d_logp, advantages (and d_logits, d_vpred) to this safetensors file.
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
    #[command(flatten)]
    options: diagnostics::Options,
}

pub fn run(a: Args) -> ExitCode {
    let (error_format, color) = a.options.resolve();
    // `None`: the device.
    let backend = if a.backend == "device" {
        None
    } else {
        match parse_backend(&a.backend) {
            Some(b) => Some(b),
            None => {
                eprintln!("error: unknown backend `{}`", a.backend);
                eprintln!(
                    "help: use `--backend interp` (the f64 reference interpreter), `kernel` (the fused kernels on the CPU) or `device` (the kernels on cubecl: CUDA or Vulkan)"
                );
                return ExitCode::from(1);
            }
        }
    };
    let Some((checked, index)) =
        diagnostics::load(&a.recipe, &a.set, a.name.as_deref(), error_format, color)
    else {
        return ExitCode::from(1);
    };
    let Some(batch) = read_batch(&a.batch) else {
        return ExitCode::from(1);
    };
    let Some((result, device_name)) = evaluate(&checked, index, &batch, &a.batch, backend) else {
        return ExitCode::from(1);
    };
    let mut result = match result {
        Ok(r) => r,
        Err(diags) => {
            diagnostics::print(&a.recipe, &diags, checked.sources(), error_format, color);
            return ExitCode::from(1);
        }
    };
    // The batch's logits are no longer needed while the gradient is written.
    drop(batch);
    if let Some(path) = &a.grad_out
        && let Err(e) = write_gradients(&mut result, path)
    {
        eprintln!("error: cannot write `{path}`: {e}");
        return ExitCode::from(1);
    }
    let recipe_name = checked
        .recipes
        .get(index)
        .map(|r| r.name.clone())
        .unwrap_or_default();
    if a.json {
        print_json(&result, &recipe_name, &a.backend);
    } else {
        print_text(&result, &recipe_name, backend, device_name);
    }
    ExitCode::SUCCESS
}

/// The batch file, or its error printed (`None`). A file whose tensors
/// cannot be held is refused before it is read.
fn read_batch(path: &str) -> Option<Batch> {
    let header = std::fs::File::open(path).ok().and_then(|f| {
        let len = usize::try_from(f.metadata().ok()?.len()).ok()?;
        keel_compiler::batch::bytes_to_read(f, len)
    });
    if let Some(need) = header
        && let Err(e) = keel_compiler::check_memory(
            "reading this batch's tensors would",
            need,
            keel_compiler::available_memory(),
            "split the batch into files of fewer sequences; KEEL_MEMORY_LIMIT=BYTES sets the limit",
        )
    {
        diagnostics::fail(&e.at(format!("{path}:1:1")));
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            diagnostics::fail(
                &Error::new(
                    codes::BATCH_UNREADABLE,
                    format!("cannot read batch file: {e}"),
                    "check the path given to --batch",
                )
                .at(format!("{path}:1:1")),
            );
            return None;
        }
    };
    // The file's bytes are converted (and dropped on return); a full
    // vocabulary's logits are large.
    match Batch::from_bytes(&bytes) {
        Ok(b) => Some(b),
        Err(e) => {
            diagnostics::fail(&e.at(format!("{path}:1:1")));
            None
        }
    }
}

/// The loss on `backend` (`None`: the device) and the device's name, or
/// `None` when there is no device (its error printed).
fn evaluate(
    checked: &Checked,
    index: usize,
    batch: &Batch,
    batch_name: &str,
    backend: Option<Backend>,
) -> Option<(Result<LossResult, Vec<Diagnostic>>, &'static str)> {
    let memory = keel_compiler::available_memory();
    let result = match backend {
        Some(Backend::Interp) => run_loss_on(
            checked,
            index,
            batch,
            batch_name,
            &mut keel_compiler::interp::Interp { memory },
            false,
        ),
        Some(Backend::Kernel { threads }) => run_loss_on(
            checked,
            index,
            batch,
            batch_name,
            &mut keel_compiler::kernel::Cpu::new(threads, memory),
            true,
        ),
        None => {
            let (client, name) = diagnostics::device_client()?;
            let result = run_loss_on(
                checked,
                index,
                batch,
                batch_name,
                &mut keel_device::Device { client },
                false,
            );
            return Some((result, name));
        }
    };
    Some((result, ""))
}

/// `--grad-out`: d_logp, advantages and d_logits as a safetensors file,
/// written as it is serialised (an f32 d_logits is not copied).
fn write_gradients(result: &mut LossResult, path: &str) -> Result<(), String> {
    let mut out = Batch::default();
    out.insert(
        "d_logp",
        "f32",
        vec![result.b, result.t],
        result.d_logp.clone(),
    );
    if let Some(adv) = &result.advantages {
        out.insert("advantages", "f32", vec![result.b, result.t], adv.clone());
    }
    if result.value_loss.is_some() {
        out.insert(
            "d_vpred",
            "f32",
            vec![result.b, result.t],
            result.d_vpred.clone(),
        );
    }
    if let (Some(d), Some(v)) = (result.d_logits.take(), result.v) {
        out.insert_values("d_logits", "f32", vec![result.b, result.t, v], d);
    }
    out.with_views(|views| {
        safetensors::tensor::serialize_to_file(views, &None, std::path::Path::new(path))
            .map_err(|e| e.to_string())
    })
    .and_then(|r| r)
}

/// `--json`: one object on stdout.
fn print_json(result: &LossResult, recipe_name: &str, backend: &str) {
    let metrics: serde_json::Map<String, serde_json::Value> = result
        .metrics
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    let mut out = serde_json::json!({
        "recipe": recipe_name,
        "loss": result.loss,
        "metrics": metrics,
        "skipped_metrics": result.skipped_metrics,
        "backend": backend,
    });
    if let Some(v) = result.value_loss {
        out["value_loss"] = serde_json::json!(v);
    }
    println!("{out}");
}

/// The recipe, the backend, the loss and one line per metric.
fn print_text(result: &LossResult, recipe_name: &str, backend: Option<Backend>, device_name: &str) {
    println!("recipe   {recipe_name}");
    println!(
        "backend  {}",
        match backend {
            Some(Backend::Interp) => "interp (f64 reference)".to_string(),
            Some(Backend::Kernel { threads }) =>
                format!("kernel (fused loops on the CPU, {threads} threads)"),
            None => format!("device (cubecl kernels, f32, on {device_name})"),
        }
    );
    println!("loss     {:.9}", result.loss);
    if let Some(v) = result.value_loss {
        println!("value    {v:.9} (the critic's loss)");
    }
    for (k, v) in &result.metrics {
        println!("metric   {k:<16} {v:.9}");
    }
    if !result.skipped_metrics.is_empty() {
        println!(
            "skipped  {} (the batch lacks inputs they read)",
            result.skipped_metrics.join(", ")
        );
    }
}

/// `interp` or `kernel` (the fused CPU kernels on every core).
pub fn parse_backend(name: &str) -> Option<Backend> {
    match name {
        "interp" => Some(Backend::Interp),
        "kernel" => Some(Backend::Kernel {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }),
        _ => None,
    }
}
