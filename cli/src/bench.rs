//! `keel bench loss RECIPE --tokens N [--vocab V] [--backend ...]`: the
//! recipe's compiled loss and gradient on a synthetic batch of N response
//! tokens: time per evaluation, tokens/s and effective GB/s per backend.
//! `keel bench logits` times the fused logits kernel, `keel bench parity`
//! holds the device kernels to the interpreter.

use crate::diagnostics::{self, Color, ErrorFormat};
use keel_compiler::batch::{Batch, Prepared, Values};
use keel_compiler::builtins::Level;
use keel_compiler::ir::Graph;
use keel_compiler::logits::KernelPath;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{Checked, CheckedRecipe, Disk, check_source};
use std::borrow::Cow;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// The loss and its gradient on a synthetic batch.
    Loss(LossArgs),
    /// The fused logits kernel (logp, entropy, d_logits) on random logits,
    /// with peak memory.
    Logits(LogitsArgs),
    /// Device kernels against the interpreter: every stdlib recipe on
    /// randomized batches with edge cases, and the logits kernel; prints the
    /// largest errors and fails above tolerance (for CUDA machines, where
    /// the test suite cannot be built).
    Parity(ParityArgs),
}

#[derive(clap::Args)]
struct LossArgs {
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
}

#[derive(clap::Args)]
struct LogitsArgs {
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
}

#[derive(clap::Args)]
struct ParityArgs {
    /// Also a larger batch per recipe (sequences × positions).
    #[arg(long, default_value_t = 64)]
    seqs: usize,
    #[arg(long)]
    json: bool,
}

/// `keel bench loss|logits|parity`.
pub fn run(a: Args) -> ExitCode {
    match a.what {
        What::Loss(a) => loss(a),
        What::Logits(a) => logits(a),
        What::Parity(a) => parity(a),
    }
}

/// The synthetic batch: B × T positions holding `valid` response tokens,
/// a vocabulary of `v` when it has logits, `bytes` moved per evaluation.
struct BatchSize {
    b: usize,
    t: usize,
    v: usize,
    has_logits: bool,
    valid: usize,
    bytes: usize,
}

impl BatchSize {
    fn of(batch: &Batch, d: Dims) -> BatchSize {
        BatchSize {
            b: d.b,
            t: d.t,
            v: d.v,
            has_logits: batch.has("logits"),
            valid: batch
                .tensors
                .get("mask")
                .map(|m| m.data.iter().filter(|&x| x > 0.0).count())
                .unwrap_or(0),
            bytes: synth::traffic_bytes(batch),
        }
    }
}

/// The programs each backend evaluates and their inputs, compiled and
/// checked once: the timings are of the evaluation.
struct Programs<'b> {
    /// The recipe's program keeping what a training step reads (loss,
    /// gradients, metrics), not the diagnostic per-token advantages: the
    /// interpreter's and the device's.
    training_graph: Graph,
    /// The batch as the interpreter and the device read it (the device
    /// runs the logits step inside its plan).
    prepared: Option<Prepared<'b>>,
    /// With logits, the fused logits kernel computes logp and entropy for
    /// the kernel backend and carries their gradients back.
    path: Option<KernelPath<'b>>,
    /// The kernel backend's program (it sees logp and entropy).
    kernel_graph: Graph,
    /// The kernel's inputs, read in place (the batch's f32 logits
    /// included), as a training step hands them over.
    kernel_in: Option<Prepared<'b>>,
}

/// What the backends measured: a row per backend (median seconds, or
/// `None`: not available, with a note in `unavailable`) and the losses
/// they computed.
#[derive(Default)]
struct Timings<'a> {
    rows: Vec<(String, Option<f64>)>,
    losses: Vec<(&'a str, f64)>,
    unavailable: Vec<String>,
    device_name: &'static str,
}

/// One backend's evaluations.
enum Timed {
    /// Seconds per evaluation, and the losses computed.
    Ran(Vec<f64>, Vec<f64>),
    /// A row `not available`, with the note why.
    Unavailable(String),
}

/// `keel bench loss`.
fn loss(a: LossArgs) -> ExitCode {
    let Some((checked, index)) = load(&a.recipe, a.name.as_deref()) else {
        return ExitCode::from(1);
    };
    let recipe = &checked.recipes[index];
    let dims = dims(&checked, index, &a);
    let Some(backends) = parse_backends(&a.backend) else {
        return ExitCode::from(2);
    };
    if let Some(code) = refuse_beyond_memory(recipe, &backends, dims.b, dims.t, a.vocab) {
        return code;
    }
    let batch = synth::batch(recipe, dims, 1);
    let size = BatchSize::of(&batch, dims);
    let want = |name: &str| backends.contains(&name);
    let fail = |d: Vec<keel_compiler::Diagnostic>| {
        diagnostics::print(&a.recipe, &d, checked.sources(), ErrorFormat::Human, false);
        ExitCode::from(1)
    };
    let have = |n: &str| batch.has(n);
    let compiled = match keel_compiler::compile_loss(&checked, index, &have) {
        Ok(c) => c,
        Err(d) => return fail(d),
    };
    let prepared = if want("interp") || want("device") {
        match keel_compiler::batch::prepare(&batch, "synthetic batch", &compiled.graph, recipe) {
            Ok(p) => Some(p),
            Err(d) => return fail(d),
        }
    } else {
        None
    };
    let path = match KernelPath::of(&batch, recipe) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", e.0);
            return ExitCode::from(1);
        }
    };
    let logits_path = if path.is_some() {
        keel_compiler::LogitsPath::Fused
    } else {
        keel_compiler::LogitsPath::Program
    };
    let kbatch = match &path {
        Some(p) => Cow::Owned(p.program_batch(&batch, &p.forward())),
        None => Cow::Borrowed(&batch),
    };
    let khave = |n: &str| kbatch.has(n);
    let mut kcompiled = match keel_compiler::compile_loss_for(&checked, index, &khave, logits_path)
    {
        Ok(c) => c,
        Err(d) => return fail(d),
    };
    kcompiled.graph.keep_training_outputs();
    let mut training_graph = compiled.graph.clone();
    training_graph.keep_training_outputs();
    let kernel_in = if want("kernel") {
        match keel_compiler::batch::prepare(&kbatch, "synthetic batch", &kcompiled.graph, recipe) {
            Ok(p) => Some(p),
            Err(d) => return fail(d),
        }
    } else {
        None
    };
    let mut programs = Programs {
        training_graph,
        prepared,
        path,
        kernel_graph: kcompiled.graph,
        kernel_in,
    };
    let timings = match time_backends(&backends, &mut programs, a.iters) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if !losses_agree(&timings.losses) {
        return ExitCode::from(1);
    }
    if a.json {
        print_loss_json(&recipe.name, &size, &timings);
    } else {
        print_loss_table(&recipe.name, &size, &timings);
    }
    ExitCode::SUCCESS
}

/// The recipe `keel bench loss` times (checked, its diagnostics printed),
/// or `None`.
fn load(path: &str, name: Option<&str>) -> Option<(Checked, usize)> {
    let text = diagnostics::read(path)?;
    let checked = check_source(&Disk, path, &text);
    if checked.has_errors() {
        diagnostics::print(
            path,
            &checked.diagnostics,
            checked.sources(),
            ErrorFormat::Human,
            diagnostics::use_color(Color::Auto),
        );
        return None;
    }
    let Some(index) = checked.main_recipe(name) else {
        eprintln!("error: `{path}` has no recipe to benchmark");
        return None;
    };
    Some((checked, index))
}

/// The batch `--tokens`, `--seq-len` and `--vocab` ask for: B × T
/// positions, B rounded up to whole groups of the recipe's
/// `rollout.group`.
fn dims(checked: &Checked, index: usize, a: &LossArgs) -> Dims {
    let group = keel_runtime::settings::Settings { checked, index }
        .int("rollout", "group")
        .max(1);
    let t = a.seq_len.max(1);
    let b = (a.tokens.max(1))
        .div_ceil(t)
        .div_ceil(group)
        .saturating_mul(group);
    Dims {
        b,
        t,
        v: a.vocab,
        group,
    }
}

/// `--backend`: `all` or a comma-separated list; `None` (the error
/// printed) for an unknown name.
fn parse_backends(list: &str) -> Option<Vec<&str>> {
    let backends: Vec<&str> = match list {
        "all" => vec!["interp", "kernel", "device"],
        list => list.split(',').map(str::trim).collect(),
    };
    if let Some(bad) = backends
        .iter()
        .find(|b| !matches!(**b, "interp" | "kernel" | "device"))
    {
        eprintln!("error: unknown backend `{bad}`");
        eprintln!(
            "help: use `--backend interp`, `kernel`, `device`, a comma-separated list of them, or `all`"
        );
        return None;
    }
    Some(backends)
}

/// Refuses (exit code 2, the error printed) a `b` × `t` batch with a
/// vocabulary of `vocab` that the interpreter, or this machine's memory,
/// cannot hold for the `backends` asked for.
fn refuse_beyond_memory(
    recipe: &CheckedRecipe,
    backends: &[&str],
    b: usize,
    t: usize,
    vocab: usize,
) -> Option<ExitCode> {
    let want = |name: &str| backends.contains(&name);
    let reads_vocab = ["logits", "entropy", "mean_logp"]
        .iter()
        .any(|n| recipe.inputs.contains_key(*n));
    let positions = b.saturating_mul(t);
    let entries = positions.saturating_mul(vocab.max(1));
    if reads_vocab && want("interp") && entries > 32 << 20 {
        eprintln!(
            "error: {b} × {t} × {vocab} logits is more than the reference interpreter can hold (it keeps several f64 copies)"
        );
        eprintln!(
            "help: lower --tokens or --vocab (B·T·V ≤ 33.5 M), or leave the interpreter out: `--backend kernel,device`"
        );
        return Some(ExitCode::from(2));
    }
    let at_level =
        |n: &str, level: Level| keel_compiler::builtins::input(n).is_some_and(|i| i.level == level);
    // [B, T, V] tensors of the batch: the logits, and any other
    // vocabulary-level input (a teacher's logits).
    let vocab_tensors = recipe
        .inputs
        .keys()
        .filter(|n| *n != "logits")
        .filter(|n| at_level(n, Level::Vocab))
        .count()
        + 1;
    let through_kernel = keel_compiler::LogitsPath::fusable(recipe);
    // Bytes per [B, T, V] entry at the least: the batch's (f32, read in
    // place by the kernel plan and the logits kernel); for the kernel, the
    // logits kernel's f32 gradient (a vocabulary-level program's own values
    // are checked once it is planned); for the interpreter, its f64 copies;
    // for the device, the f32 arena its upload is laid out in and the f32
    // gradient it downloads.
    let per_entry = 4 * vocab_tensors
        + if want("kernel") && through_kernel {
            4
        } else {
            0
        }
        + if want("interp") { 8 * vocab_tensors } else { 0 }
        + if want("device") {
            4 * vocab_tensors + 4
        } else {
            0
        };
    // Per position: each [B, T] tensor (the recipe's token-level inputs,
    // the mask, the tokens) as the batch's f64 and the executors' f32 copy.
    let token_tensors = recipe
        .inputs
        .keys()
        .filter(|n| at_level(n, Level::Token))
        .count()
        + 2;
    let vocab_batch = reads_vocab && vocab > 0;
    let need = positions
        .saturating_mul(12 * token_tensors)
        .saturating_add(if vocab_batch {
            entries.saturating_mul(per_entry)
        } else {
            0
        });
    let what = format!(
        "{b} × {t} positions{}",
        if vocab_batch {
            format!(" × {vocab} vocabulary entries")
        } else {
            String::new()
        }
    );
    beyond_memory(&what, need, "lower --tokens or --vocab")
}

/// Each backend's evaluations, in the order asked for; `Err`: an exit
/// code, the error printed.
fn time_backends<'a>(
    backends: &[&'a str],
    p: &mut Programs,
    iters: usize,
) -> Result<Timings<'a>, ExitCode> {
    let interp_in = p.prepared.as_ref().map(|p| p.inputs_f64());
    let mut timings = Timings::default();
    for &be in backends {
        let timed = match be {
            "interp" => {
                let (Some(prepared), Some(inputs)) = (&p.prepared, &interp_in) else {
                    continue;
                };
                time_interp(&p.training_graph, prepared, inputs, iters)?
            }
            "kernel" => {
                let Some(kernel_in) = &mut p.kernel_in else {
                    continue;
                };
                time_kernel(&p.kernel_graph, kernel_in, p.path.as_ref(), iters)?
            }
            "device" => match keel_device::client_named() {
                Ok((client, name)) => {
                    timings.device_name = name;
                    let Some(prepared) = &p.prepared else {
                        continue;
                    };
                    let alone = backends.len() == 1;
                    time_device(&client, &p.training_graph, prepared, iters, alone)?
                }
                Err(e) => Timed::Unavailable(format!("device: no device ({e})")),
            },
            // Every name was checked by `parse_backends`.
            _ => continue,
        };
        match timed {
            Timed::Ran(times, losses) => {
                timings.losses.extend(losses.into_iter().map(|l| (be, l)));
                timings.rows.push((be.to_string(), Some(median(times))));
            }
            Timed::Unavailable(why) => {
                timings.unavailable.push(why);
                timings.rows.push((be.to_string(), None));
            }
        }
    }
    Ok(timings)
}

/// The reference interpreter on the training graph.
fn time_interp(
    graph: &Graph,
    prepared: &Prepared,
    inputs: &HashMap<String, Vec<f64>>,
    iters: usize,
) -> Result<Timed, ExitCode> {
    let env = keel_compiler::interp::Env {
        shape: prepared.shape.clone(),
        mask: &prepared.mask,
        inputs,
    };
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        let vals = match keel_compiler::interp::run(graph, &env) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {}", e.0);
                return Err(ExitCode::from(1));
            }
        };
        times.push(start.elapsed().as_secs_f64());
        if let Some(l) = graph.output("loss") {
            losses.push(vals[l].first().copied().unwrap_or(f64::NAN));
        }
    }
    Ok(Timed::Ran(times, losses))
}

/// The fused CPU kernels, with the logits kernel in front where there is
/// one (`path`), as a training step runs them.
fn time_kernel(
    graph: &Graph,
    kprepared: &mut Prepared,
    path: Option<&KernelPath>,
    iters: usize,
) -> Result<Timed, ExitCode> {
    let kshape = &kprepared.shape.clone();
    let plan = match keel_compiler::kernel::Plan::new(graph) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: internal compiler error while planning kernels: {e}");
            return Err(ExitCode::from(101));
        }
    };
    if let Some(code) = beyond_memory(
        "the kernel plan's values for this batch",
        plan.memory_bytes(kshape),
        "lower --tokens or --vocab",
    ) {
        return Err(code);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // One d_logits buffer for every evaluation, as a training
    // loop keeps (`keel bench logits` does the same).
    let mut d_logits = match path {
        Some(p) => vec![0.0f32; p.tokens.len() * p.v],
        None => Vec::new(),
    };
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        let fwd = path.map(|p| {
            let f = p.forward();
            for (name, x) in [("logp", &f.logp), ("entropy", &f.entropy)] {
                kprepared
                    .inputs
                    .insert(name.into(), Cow::Owned(Values::F32(x.clone())));
            }
            f
        });
        let out = match plan.run(kshape, &*kprepared, threads) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {}", e.0);
                return Err(ExitCode::from(1));
            }
        };
        if let (Some(p), Some(f)) = (path, &fwd) {
            p.d_logits_into(f, &out, &mut d_logits);
            std::hint::black_box(&d_logits);
        }
        times.push(start.elapsed().as_secs_f64());
        if let Some(l) = out.get("loss") {
            losses.push(l.get(0).unwrap_or(f64::NAN));
        }
        // As a training loop does once it has read them.
        plan.recycle(out.into_values());
    }
    Ok(Timed::Ran(times, losses))
}

/// The cubecl kernels with the batch already on the device (as in
/// training, where logits live there): kernels + sync. A failure is an
/// error when the device was asked for `alone`; beside the others, a note
/// (the CPU rows still stand).
fn time_device(
    client: &keel_device::Client,
    graph: &Graph,
    prepared: &Prepared,
    iters: usize,
    alone: bool,
) -> Result<Timed, ExitCode> {
    let run = || -> Result<(Vec<f64>, f64), String> {
        let dp = keel_device::plan::DevicePlan::of_graph(graph)?;
        let mut times = Vec::new();
        let mut loss = f64::NAN;
        // One untimed run compiles the kernels.
        for k in 0..iters.max(1) + 1 {
            let mut on = dp.upload(client, &prepared.shape, prepared)?;
            let start = Instant::now();
            dp.execute(client, &mut on)?;
            if k > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
            let out = dp.download(client, on)?;
            loss = out.get("loss").and_then(|l| l.get(0)).unwrap_or(f64::NAN);
        }
        Ok((times, loss))
    };
    match run() {
        Ok((times, loss)) => Ok(Timed::Ran(times, vec![loss])),
        Err(e) if alone => {
            eprintln!("error: the device backend failed: {e}");
            Err(ExitCode::from(1))
        }
        Err(e) => {
            let first = e.lines().next().unwrap_or("").to_string();
            Ok(Timed::Unavailable(format!("device: failed: {first}")))
        }
    }
}

/// The backends must agree before their speeds mean anything (the device
/// computes in f32: its loss is held to 1e-4 of max(|loss|, 0.1)); `false`
/// with the error printed.
fn losses_agree(losses: &[(&str, f64)]) -> bool {
    let Some((_, x)) = losses.iter().find(|(b, _)| *b == "interp") else {
        return true;
    };
    for (b, y) in losses {
        let tol = if *b == "device" {
            1e-4 * x.abs().max(0.1)
        } else {
            1e-5 * x.abs().max(1e-6)
        };
        if (x - y).abs() > tol {
            eprintln!("error: the {b} backend's loss {y} differs from the interpreter's {x}");
            return false;
        }
    }
    true
}

/// `--json`: one object on stdout.
fn print_loss_json(recipe: &str, size: &BatchSize, timings: &Timings) {
    let BatchSize {
        b,
        t,
        v,
        valid,
        bytes,
        ..
    } = *size;
    let out: Vec<serde_json::Value> = timings
        .rows
        .iter()
        .map(|(be, s)| {
            serde_json::json!({
                "backend": be,
                "device": if be == "device" { timings.device_name } else { "cpu" },
                "available": s.is_some(),
                "seconds": s,
                "tokens_per_s": s.map(|s| valid as f64 / s),
                "gb_per_s": s.map(|s| bytes as f64 / s / 1e9),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"recipe": recipe, "b": b, "t": t, "v": v, "tokens": valid, "bytes": bytes, "backends": out})
    );
}

/// The batch, a row per backend, and the kernel's speed-up.
fn print_loss_table(recipe: &str, size: &BatchSize, timings: &Timings) {
    let BatchSize {
        b,
        t,
        v,
        has_logits,
        valid,
        bytes,
    } = *size;
    println!(
        "{}: {} sequences × {} positions ({} valid tokens){}; {:.1} MB moved per evaluation (f32)",
        recipe,
        b,
        t,
        valid,
        if has_logits {
            format!(", vocabulary {v}")
        } else {
            String::new()
        },
        bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>12} {:>14} {:>10}",
        "backend", "time", "tokens/s", "GB/s"
    );
    for (be, s) in &timings.rows {
        match s {
            Some(s) => println!(
                "{be:<8} {:>10.3} ms {:>14.0} {:>10.3}",
                s * 1e3,
                valid as f64 / s,
                bytes as f64 / s / 1e9
            ),
            None => println!("{be:<8} not available"),
        }
    }
    for u in &timings.unavailable {
        println!("  ({u})");
    }
    println!(
        "  (every backend: the loss, its gradients and metrics, as a training step reads them)"
    );
    if !timings.device_name.is_empty() {
        println!(
            "  (device: cubecl on {}, inputs already on the device; f32)",
            timings.device_name
        );
    }
    let row = |name: &str| timings.rows.iter().find(|(b, _)| b == name);
    if let (Some((_, Some(i))), Some((_, Some(k)))) = (row("interp"), row("kernel")) {
        println!("kernel / interp: {:.1}x", i / k);
    }
}

/// The median of `t` (not empty).
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// When `need` bytes for `what` do not fit in the memory available: the
/// error and `help` printed, and exit code 2.
fn beyond_memory(what: &str, need: usize, help: &str) -> Option<ExitCode> {
    let e =
        keel_compiler::check_memory(what, need, keel_compiler::available_memory(), help).err()?;
    crate::diagnostics::fail(&e);
    Some(ExitCode::from(2))
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `keel bench logits`: the fused logits kernel (logp, entropy, d_logits) on
/// random [N, V] logits: time, GB/s and peak memory against one [N, V] buffer.
fn logits(a: LogitsArgs) -> ExitCode {
    use keel_compiler::logits::{self as lk, Bf16};
    let (n, v) = (a.tokens.max(1), a.vocab.max(2));
    // The logits and one f32 gradient of the same shape.
    let need = n
        .saturating_mul(v)
        .saturating_mul(if a.bf16 { 2 } else { 4 } + 4);
    let what = format!("{n} × {v} logits and their gradient");
    if let Some(code) = beyond_memory(&what, need, "lower --tokens or --vocab") {
        return code;
    }
    let mut rng = keel_compiler::synth::Lcg(0x9E37_79B9);
    let mut next = || rng.uniform(-4.0, 4.0);
    let base_rss = peak_rss().unwrap_or(0);
    let z32: Vec<f32>;
    let z16: Vec<Bf16>;
    if a.bf16 {
        z16 = (0..n * v).map(|_| Bf16::from_f32(next())).collect();
        z32 = Vec::new();
    } else {
        z32 = (0..n * v).map(|_| next()).collect();
        z16 = Vec::new();
    }
    let tokens: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
    let d_logp: Vec<f32> = (0..n).map(|_| next() / 4.0).collect();
    let d_ent: Vec<f32> = (0..n).map(|_| next() / 4.0).collect();
    let after_inputs = peak_rss().unwrap_or(0);
    if a.device {
        let z = if a.bf16 {
            keel_device::Logits::Bf16(&z16)
        } else {
            keel_device::Logits::F32(&z32)
        };
        return logits_device(z, &tokens, v, &d_logp, &d_ent, a.iters);
    }
    let elem = if a.bf16 { 2 } else { 4 };
    let mut d_logits = vec![0.0f32; n * v];
    let (mut tf, mut tb) = (Vec::new(), Vec::new());
    let mut check = 0.0f64;
    for _ in 0..a.iters.max(1) {
        let s = Instant::now();
        let f = if a.bf16 {
            lk::forward(&z16, &tokens, v)
        } else {
            lk::forward(&z32, &tokens, v)
        };
        tf.push(s.elapsed().as_secs_f64());
        let s = Instant::now();
        if a.bf16 {
            lk::backward(&z16, &tokens, v, &f, &d_logp, &d_ent, &mut d_logits);
        } else {
            lk::backward(&z32, &tokens, v, &f, &d_logp, &d_ent, &mut d_logits);
        }
        tb.push(s.elapsed().as_secs_f64());
        check += f.logp.iter().map(|&x| x as f64).sum::<f64>() + d_logits[n * v / 2] as f64;
    }
    let (f, b) = (median(tf), median(tb));
    let nv = (n * v) as f64;
    let peak = peak_rss().unwrap_or(0);
    let one_buffer = n * v * 4;
    println!(
        "logits kernel: {n} tokens × {v} vocabulary, {} logits ({:.2} GB in)",
        if a.bf16 { "bf16" } else { "f32" },
        nv * elem as f64 / 1e9
    );
    println!(
        "forward  (logp, entropy): {:>9.1} ms  {:>7.2} GB/s read",
        f * 1e3,
        nv * elem as f64 / f / 1e9
    );
    println!(
        "backward (d_logits):      {:>9.1} ms  {:>7.2} GB/s read + write",
        b * 1e3,
        nv * (elem + 4) as f64 / b / 1e9
    );
    println!("tokens/s (forward + backward): {:.0}", n as f64 / (f + b));
    println!(
        "peak RSS {:.2} GB; after the inputs {:.2} GB; growth {:.2} GB = {:.2} × one [N, V] f32 buffer ({:.2} GB)",
        peak as f64 / 1e9,
        after_inputs as f64 / 1e9,
        peak.saturating_sub(after_inputs) as f64 / 1e9,
        peak.saturating_sub(after_inputs) as f64 / one_buffer as f64,
        one_buffer as f64 / 1e9
    );
    let _ = base_rss;
    if !check.is_finite() {
        eprintln!("error: non-finite results");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `keel bench logits --device`: the cubecl logits kernel with the logits
/// already on the device; checked against the CPU kernel on a few rows.
fn logits_device(
    z: keel_device::Logits,
    tokens: &[u32],
    v: usize,
    d_logp: &[f32],
    d_ent: &[f32],
    iters: usize,
) -> ExitCode {
    let n = tokens.len();
    let Some((client, name)) = diagnostics::device_client() else {
        return ExitCode::from(1);
    };
    // Parity on the first rows (the kernel is the same for every row).
    let k = n.min(64);
    let cpu = z.head(k * v).cpu_forward(&tokens[..k], v);
    let dev = match keel_device::logits_forward(&client, z.head(k * v), &tokens[..k], v) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: the device logits kernel failed: {e}");
            return ExitCode::from(1);
        }
    };
    let mut worst = 0.0f64;
    for i in 0..k {
        for (a, b) in [(dev.logp[i], cpu.logp[i]), (dev.entropy[i], cpu.entropy[i])] {
            worst = worst.max(((a - b).abs() / b.abs().max(1.0)) as f64);
        }
    }
    let t = match keel_device::logits_bench(&client, z, tokens, v, d_logp, d_ent, iters) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: the device logits kernel failed: {e}");
            return ExitCode::from(1);
        }
    };
    let nv = (n * v) as f64;
    let elem = z.elem_bytes() as f64;
    println!(
        "logits kernel on {name}: {n} tokens × {v} vocabulary, {} ({:.2} GB in)",
        if z.is_bf16() { "bf16" } else { "f32" },
        nv * elem / 1e9
    );
    println!(
        "forward  (logp, entropy): {:>9.2} ms  {:>8.1} GB/s read",
        t.forward_s * 1e3,
        nv * elem / t.forward_s / 1e9
    );
    println!(
        "backward (d_logits):      {:>9.2} ms  {:>8.1} GB/s read + write",
        t.backward_s * 1e3,
        nv * (elem + 4.0) / t.backward_s / 1e9
    );
    println!(
        "tokens/s (forward + backward): {:.0}",
        n as f64 / (t.forward_s + t.backward_s)
    );
    println!(
        "device memory: {:.2} GB = logits + one [N, V] gradient + O(N) ({:.2} × the logits)",
        t.bytes as f64 / 1e9,
        t.bytes as f64 / (nv * elem)
    );
    println!("parity with the CPU kernel on {k} rows: largest error {worst:.2e}");
    if worst > 1e-4 {
        eprintln!("error: the device kernel differs from the CPU kernel");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The device logits kernel against the CPU kernel (f32 and bf16, up to
/// V = 151,936): the largest error; failures are pushed to `failures`.
fn logits_parity(client: &keel_device::Client, failures: &mut Vec<String>) -> f64 {
    let mut logits_worst = 0.0f64;
    for (n, v, bf16) in [(7, 50, false), (16, 151_936, false), (16, 151_936, true)] {
        let z = keel_compiler::synth::Lcg(7).fill(n * v, -5.0, 5.0);
        let zb: Vec<keel_compiler::logits::Bf16> = if bf16 {
            z.iter()
                .map(|&x| keel_compiler::logits::Bf16::from_f32(x))
                .collect()
        } else {
            Vec::new()
        };
        let z = if bf16 {
            keel_device::Logits::Bf16(&zb)
        } else {
            keel_device::Logits::F32(&z)
        };
        let tokens: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let cpu = z.cpu_forward(&tokens, v);
        let dl: Vec<f32> = (0..n).map(|i| 0.3 - 0.1 * i as f32).collect();
        let de: Vec<f32> = (0..n).map(|i| 0.05 * i as f32 - 0.2).collect();
        let dc = z.cpu_backward(&tokens, v, &cpu, &dl, &de);
        let ran = keel_device::logits_forward(client, z, &tokens, v).and_then(|dev| {
            let dd = keel_device::logits_backward(client, z, &tokens, v, &dev, &dl, &de)?;
            Ok((dev, dd))
        });
        let (dev, dd) = match ran {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("logits kernel ({n} x {v}): {e}"));
                continue;
            }
        };
        for i in 0..n {
            for (a, b) in [(dev.logp[i], cpu.logp[i]), (dev.entropy[i], cpu.entropy[i])] {
                logits_worst = logits_worst.max(((a - b).abs() / b.abs().max(1.0)) as f64);
            }
        }
        let scale = dc.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
        for (a, b) in dd.iter().zip(&dc) {
            logits_worst = logits_worst.max(((a - b).abs() / scale) as f64);
        }
    }
    if logits_worst > 1e-5 {
        failures.push(format!("logits kernel: error {logits_worst:.2e}"));
    }
    logits_worst
}

/// What `keel bench parity` found: the runs compared, what failed, and
/// each recipe's largest error and where.
#[derive(Default)]
struct Parity {
    runs: usize,
    failures: Vec<String>,
    worst: Vec<(f64, String)>,
}

/// `keel bench parity`: the device kernels against the interpreter on every
/// stdlib recipe (randomized batches and their edge cases, a small and a
/// larger shape) and the logits kernel against the CPU kernel.
fn parity(a: ParityArgs) -> ExitCode {
    let seqs = a.seqs;
    // The larger shape: `seqs` × 128 positions, up to 8 vocabulary entries
    // each, in every executor's copies (~700 bytes a position).
    let need = seqs.saturating_mul(128).saturating_mul(700);
    if let Some(code) = beyond_memory(&format!("{seqs} sequences"), need, "lower --seqs") {
        return code;
    }
    let Some((client, name)) = diagnostics::device_client() else {
        return ExitCode::from(1);
    };
    let mut p = Parity::default();
    // The logits kernel first (fast), then recipe by recipe with a line of
    // progress each on stderr: a run cut short by a time limit still shows
    // what it checked.
    let logits_worst = logits_parity(&client, &mut p.failures);
    eprintln!("logits kernel vs the CPU kernel: {logits_worst:.2e}");
    for (file, text) in keel_compiler::stdlib::FILES {
        let c = check_source(&keel_compiler::NoFiles, &format!("std/{file}.recipe"), text);
        if c.has_errors() {
            p.failures.push(format!("std/{file} does not check"));
            continue;
        }
        for (idx, r) in c.recipes.iter().enumerate() {
            let rworst = recipe_parity(&client, &c, idx, seqs, &mut p);
            eprintln!(
                "{}: largest error {:.2e} ({}); {} runs so far",
                r.name, rworst.0, rworst.1, p.runs
            );
            p.worst
                .push((rworst.0, format!("{} ({})", r.name, rworst.1)));
        }
    }
    p.worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    print_parity(name, &p, logits_worst, a.json);
    if p.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Recipe `idx` of `c` on the device against the interpreter, on every
/// variant of a small and a larger batch (`seqs` sequences): its largest
/// error and where; runs and failures are counted in `p`.
fn recipe_parity(
    client: &keel_device::Client,
    c: &Checked,
    idx: usize,
    seqs: usize,
    p: &mut Parity,
) -> (f64, String) {
    let r = &c.recipes[idx];
    let v = if keel_compiler::LogitsPath::fusable(r) {
        0
    } else {
        8
    };
    let shapes = [(16, 24), (seqs.max(8) / 4 * 4, 128)];
    let mut rworst = (0.0f64, String::new());
    for (k, (b, t)) in shapes.into_iter().enumerate() {
        let d = Dims { b, t, v, group: 4 };
        for (what, batch) in synth::variants(r, d, 11 + k as u64) {
            let Ok(want) =
                keel_compiler::run_loss_with(c, idx, &batch, "b", keel_compiler::Backend::Interp)
            else {
                continue;
            };
            let have = |n: &str| batch.has(n);
            let got = keel_compiler::compile_loss(c, idx, &have)
                .map_err(|_| "does not compile".to_string())
                .and_then(|cl| {
                    let p = keel_compiler::batch::prepare(&batch, "b", &cl.graph, r)
                        .map_err(|_| "batch does not fit".to_string())?;
                    keel_device::run_graph(client, &cl.graph, &p).map_err(|e| e.to_string())
                });
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    p.failures
                        .push(format!("{} ({what}, {b}x{t}): {e}", r.name));
                    continue;
                }
            };
            p.runs += 1;
            for (out, e) in keel_compiler::parity::errors(&got, &want) {
                let label = format!("{what}, {b}x{t}, {out}");
                if e > rworst.0 {
                    rworst = (e, label.clone());
                }
                if e > keel_compiler::parity::F32_TOLERANCE {
                    p.failures
                        .push(format!("{} ({label}): error {e:.2e}", r.name));
                }
            }
        }
    }
    rworst
}

/// The five largest errors and every failure (with `json`, one object).
fn print_parity(device: &str, p: &Parity, logits_worst: f64, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": device,
                "runs": p.runs,
                "recipes": p.worst.len(),
                "largest": p.worst.iter().take(5).map(|(e, l)| serde_json::json!({"error": e, "where": l})).collect::<Vec<_>>(),
                "logits_error": logits_worst,
                "failures": p.failures,
            })
        );
        return;
    }
    println!(
        "device kernels on {device}: {} runs over {} recipes",
        p.runs,
        p.worst.len()
    );
    println!("largest errors (relative to each output's scale):");
    for (e, l) in p.worst.iter().take(5) {
        println!("  {e:.2e}  {l}");
    }
    println!("logits kernel vs the CPU kernel: {logits_worst:.2e}");
    for f in &p.failures {
        println!("FAILED {f}");
    }
}
