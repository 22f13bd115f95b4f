//! `keel bench loss RECIPE --tokens N [--vocab V] [--backend ...]`: the
//! recipe's compiled loss and gradient on a synthetic batch of N response
//! tokens: time per evaluation, tokens/s and effective GB/s per backend.
//! `keel bench logits` times the fused logits kernel, `keel bench parity`
//! holds the device kernels to the interpreter.

use crate::diagnostics::{self, Color, ErrorFormat};
use keel_compiler::batch::Values;
use keel_compiler::synth::{self, Dims};
use keel_compiler::{Disk, check_source};
use std::borrow::Cow;
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

/// `keel bench loss`.
fn loss(a: LossArgs) -> ExitCode {
    let Some(text) = diagnostics::read(&a.recipe) else {
        return ExitCode::from(1);
    };
    let checked = check_source(&Disk, &a.recipe, &text);
    if checked.has_errors() {
        diagnostics::print(
            &a.recipe,
            &checked.diagnostics,
            checked.sources(),
            ErrorFormat::Human,
            diagnostics::use_color(Color::Auto),
        );
        return ExitCode::from(1);
    }
    let Some(index) = checked.main_recipe(a.name.as_deref()) else {
        eprintln!("error: `{}` has no recipe to benchmark", a.recipe);
        return ExitCode::from(1);
    };
    let recipe = &checked.recipes[index];
    let group = keel_runtime::settings::Settings {
        checked: &checked,
        index,
    }
    .int("rollout", "group", 8)
    .max(1);
    let t = a.seq_len.max(1);
    let b = (a.tokens.max(1))
        .div_ceil(t)
        .div_ceil(group)
        .saturating_mul(group);
    let reads_vocab = ["logits", "entropy", "mean_logp"]
        .iter()
        .any(|n| recipe.inputs.contains_key(*n));
    let backends: Vec<&str> = match a.backend.as_str() {
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
        return ExitCode::from(2);
    }
    let want = |name: &str| backends.contains(&name);
    let positions = b.saturating_mul(t);
    let entries = positions.saturating_mul(a.vocab.max(1));
    if reads_vocab && want("interp") && entries > 32 << 20 {
        eprintln!(
            "error: {b} × {t} × {} logits is more than the reference interpreter can hold (it keeps several f64 copies)",
            a.vocab
        );
        eprintln!(
            "help: lower --tokens or --vocab (B·T·V ≤ 33.5 M), or leave the interpreter out: `--backend kernel,device`"
        );
        return ExitCode::from(2);
    }
    // [B, T, V] tensors of the batch: the logits, and any other
    // vocabulary-level input (a teacher's logits).
    let vocab_tensors = recipe
        .inputs
        .keys()
        .filter(|n| *n != "logits")
        .filter(|n| {
            keel_compiler::builtins::input(n)
                .is_some_and(|i| i.level == keel_compiler::builtins::Level::Vocab)
        })
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
        .filter(|n| {
            keel_compiler::builtins::input(n)
                .is_some_and(|i| i.level == keel_compiler::builtins::Level::Token)
        })
        .count()
        + 2;
    let vocab_batch = reads_vocab && a.vocab > 0;
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
            format!(" × {} vocabulary entries", a.vocab)
        } else {
            String::new()
        }
    );
    if let Some(code) = beyond_memory(&what, need, "lower --tokens or --vocab") {
        return code;
    }
    let batch = synth::batch(
        recipe,
        Dims {
            b,
            t,
            v: a.vocab,
            group,
        },
        1,
    );
    let bytes = synth::traffic_bytes(&batch);
    let valid: usize = batch
        .tensors
        .get("mask")
        .map(|m| m.data.iter().filter(|&x| x > 0.0).count())
        .unwrap_or(0);
    // Compile and check the batch once; the timings are of the evaluation.
    let fail = |d: Vec<keel_compiler::Diagnostic>| {
        diagnostics::print(&a.recipe, &d, checked.sources(), ErrorFormat::Human, false);
        ExitCode::from(1)
    };
    let have = |n: &str| batch.has(n);
    let compiled = match keel_compiler::compile_loss(&checked, index, &have) {
        Ok(c) => c,
        Err(d) => return fail(d),
    };
    // The interpreter and the device read the batch as it is (the device
    // runs the logits step inside its plan).
    let prepared = if want("interp") || want("device") {
        match keel_compiler::batch::prepare(&batch, "synthetic batch", &compiled.graph, recipe) {
            Ok(p) => Some(p),
            Err(d) => return fail(d),
        }
    } else {
        None
    };
    // The kernel backend: with logits, the fused logits kernel computes logp
    // and entropy and carries their gradients back; the program sees them.
    let path = match keel_compiler::logits::KernelPath::of(&batch, recipe) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", e.0);
            return ExitCode::from(1);
        }
    };
    let has_logits = batch.has("logits");
    let logits_path = if path.is_some() {
        keel_compiler::LogitsPath::Fused
    } else {
        keel_compiler::LogitsPath::Program
    };
    let kbatch = match &path {
        Some(p) => std::borrow::Cow::Owned(p.program_batch(&batch, &p.forward())),
        None => std::borrow::Cow::Borrowed(&batch),
    };
    let khave = |n: &str| kbatch.has(n);
    // The kernel and device backends compute what a training step reads
    // (loss, gradients, metrics), not the diagnostic per-token advantages.
    let mut kcompiled = match keel_compiler::compile_loss_for(&checked, index, &khave, logits_path)
    {
        Ok(c) => c,
        Err(d) => return fail(d),
    };
    kcompiled.graph.keep_training_outputs();
    let mut training_graph = compiled.graph.clone();
    training_graph.keep_training_outputs();
    // The kernel's inputs, read in place (the batch's f32 logits included),
    // as a training step hands them over.
    let mut kernel_in = if want("kernel") {
        match keel_compiler::batch::prepare(&kbatch, "synthetic batch", &kcompiled.graph, recipe) {
            Ok(p) => Some(p),
            Err(d) => return fail(d),
        }
    } else {
        None
    };
    let interp_in = prepared.as_ref().map(|p| p.inputs_f64());
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let mut rows = Vec::new();
    let mut losses = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    let mut device_name = "";
    for &be in &backends {
        let mut times = Vec::new();
        match be {
            "interp" => {
                let (Some(prepared), Some(inputs)) = (&prepared, &interp_in) else {
                    continue;
                };
                let env = keel_compiler::interp::Env {
                    shape: prepared.shape.clone(),
                    mask: &prepared.mask,
                    inputs,
                };
                for _ in 0..a.iters.max(1) {
                    let start = Instant::now();
                    let vals = match keel_compiler::interp::run(&training_graph, &env) {
                        Ok(v) => v,
                        Err(e) => {
                            eprintln!("error: {}", e.0);
                            return ExitCode::from(1);
                        }
                    };
                    times.push(start.elapsed().as_secs_f64());
                    if let Some(l) = training_graph.output("loss") {
                        losses.push((be, vals[l].first().copied().unwrap_or(f64::NAN)));
                    }
                }
            }
            "kernel" => {
                let Some(kprepared) = &mut kernel_in else {
                    continue;
                };
                let kshape = &kprepared.shape.clone();
                let plan = match keel_compiler::kernel::Plan::new(&kcompiled.graph) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("error: internal compiler error while planning kernels: {e}");
                        return ExitCode::from(101);
                    }
                };
                if let Some(code) = beyond_memory(
                    "the kernel plan's values for this batch",
                    plan.memory_bytes(kshape),
                    "lower --tokens or --vocab",
                ) {
                    return code;
                }
                let threads = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1);
                // One d_logits buffer for every evaluation, as a training
                // loop keeps (`keel bench logits` does the same).
                let mut d_logits = match &path {
                    Some(p) => vec![0.0f32; p.tokens.len() * p.v],
                    None => Vec::new(),
                };
                for _ in 0..a.iters.max(1) {
                    let start = Instant::now();
                    let fwd = path.as_ref().map(|p| {
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
                            return ExitCode::from(1);
                        }
                    };
                    if let (Some(p), Some(f)) = (&path, &fwd) {
                        p.d_logits_into(f, &out, &mut d_logits);
                        std::hint::black_box(&d_logits);
                    }
                    times.push(start.elapsed().as_secs_f64());
                    if let Some(l) = out.get("loss") {
                        losses.push((be, l.get(0).unwrap_or(f64::NAN)));
                    }
                    // As a training loop does once it has read them.
                    plan.recycle(out.into_values());
                }
            }
            "device" => {
                // The cubecl kernels with the batch already on the device (as
                // in training, where logits live there): kernels + sync.
                let (client, name) = match keel_device::client_named() {
                    Ok(c) => c,
                    Err(e) => {
                        unavailable.push(format!("device: no device ({e})"));
                        rows.push((be.to_string(), None));
                        continue;
                    }
                };
                device_name = name;
                let Some(prepared) = &prepared else { continue };
                let run = || -> Result<(Vec<f64>, f64), String> {
                    let dp = keel_device::plan::DevicePlan::of_graph(&training_graph)?;
                    let mut times = Vec::new();
                    let mut loss = f64::NAN;
                    // One untimed run compiles the kernels.
                    for k in 0..a.iters.max(1) + 1 {
                        let mut on = dp.upload(&client, &prepared.shape, prepared)?;
                        let start = Instant::now();
                        dp.execute(&client, &mut on)?;
                        if k > 0 {
                            times.push(start.elapsed().as_secs_f64());
                        }
                        let out = dp.download(&client, on)?;
                        loss = out.get("loss").and_then(|l| l.get(0)).unwrap_or(f64::NAN);
                    }
                    Ok((times, loss))
                };
                match run() {
                    Ok((t, loss)) => {
                        times = t;
                        losses.push((be, loss));
                    }
                    // Asked for alone, a failure is an error; beside the
                    // others, a note (the CPU rows still stand).
                    Err(e) if backends.len() == 1 => {
                        eprintln!("error: the device backend failed: {e}");
                        return ExitCode::from(1);
                    }
                    Err(e) => {
                        let first = e.lines().next().unwrap_or("").to_string();
                        unavailable.push(format!("device: failed: {first}"));
                        rows.push((be.to_string(), None));
                        continue;
                    }
                }
            }
            // Every name was checked above.
            _ => continue,
        }
        rows.push((be.to_string(), Some(median(times))));
    }
    // The backends must agree before their speeds mean anything (the
    // device computes in f32: its loss is held to 1e-4 of max(|loss|, 0.1)).
    if let Some((_, x)) = losses.iter().find(|(b, _)| *b == "interp") {
        for (b, y) in &losses {
            let tol = if *b == "device" {
                1e-4 * x.abs().max(0.1)
            } else {
                1e-5 * x.abs().max(1e-6)
            };
            if (x - y).abs() > tol {
                eprintln!("error: the {b} backend's loss {y} differs from the interpreter's {x}");
                return ExitCode::from(1);
            }
        }
    }
    if a.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(be, s)| {
                serde_json::json!({
                    "backend": be,
                    "device": if be == "device" { device_name } else { "cpu" },
                    "available": s.is_some(),
                    "seconds": s,
                    "tokens_per_s": s.map(|s| valid as f64 / s),
                    "gb_per_s": s.map(|s| bytes as f64 / s / 1e9),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"recipe": recipe.name, "b": b, "t": t, "v": a.vocab, "tokens": valid, "bytes": bytes, "backends": out})
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{}: {} sequences × {} positions ({} valid tokens){}; {:.1} MB moved per evaluation (f32)",
        recipe.name,
        b,
        t,
        valid,
        if has_logits {
            format!(", vocabulary {}", a.vocab)
        } else {
            String::new()
        },
        bytes as f64 / 1e6
    );
    println!(
        "{:<8} {:>12} {:>14} {:>10}",
        "backend", "time", "tokens/s", "GB/s"
    );
    for (be, s) in &rows {
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
    for u in &unavailable {
        println!("  ({u})");
    }
    println!(
        "  (every backend: the loss, its gradients and metrics, as a training step reads them)"
    );
    if !device_name.is_empty() {
        println!("  (device: cubecl on {device_name}, inputs already on the device; f32)");
    }
    if let (Some((_, Some(i))), Some((_, Some(k)))) = (
        rows.iter().find(|(b, _)| b == "interp"),
        rows.iter().find(|(b, _)| b == "kernel"),
    ) {
        println!("kernel / interp: {:.1}x", i / k);
    }
    ExitCode::SUCCESS
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
    tf.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    let (f, b) = (tf[tf.len() / 2], tb[tb.len() / 2]);
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

/// `keel bench parity`: the device kernels against the interpreter on every
/// stdlib recipe (randomized batches and their edge cases, a small and a
/// larger shape) and the logits kernel against the CPU kernel.
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

fn parity(a: ParityArgs) -> ExitCode {
    let (seqs, json) = (a.seqs, a.json);
    use keel_compiler::synth::{self, Dims};
    // The larger shape: `seqs` × 128 positions, up to 8 vocabulary entries
    // each, in every executor's copies (~700 bytes a position).
    let need = seqs.saturating_mul(128).saturating_mul(700);
    if let Some(code) = beyond_memory(&format!("{seqs} sequences"), need, "lower --seqs") {
        return code;
    }
    let Some((client, name)) = diagnostics::device_client() else {
        return ExitCode::from(1);
    };
    let mut runs = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut worst: Vec<(f64, String)> = Vec::new();
    // The logits kernel first (fast), then recipe by recipe with a line of
    // progress each on stderr: a run cut short by a time limit still shows
    // what it checked.
    let logits_worst = logits_parity(&client, &mut failures);
    eprintln!("logits kernel vs the CPU kernel: {logits_worst:.2e}");
    for (file, text) in keel_compiler::stdlib::FILES {
        let c = check_source(&keel_compiler::NoFiles, &format!("std/{file}.recipe"), text);
        if c.has_errors() {
            failures.push(format!("std/{file} does not check"));
            continue;
        }
        for (idx, r) in c.recipes.iter().enumerate() {
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
                    let Ok(want) = keel_compiler::run_loss_with(
                        &c,
                        idx,
                        &batch,
                        "b",
                        keel_compiler::Backend::Interp,
                    ) else {
                        continue;
                    };
                    let have = |n: &str| batch.has(n);
                    let got = keel_compiler::compile_loss(&c, idx, &have)
                        .map_err(|_| "does not compile".to_string())
                        .and_then(|cl| {
                            let p = keel_compiler::batch::prepare(&batch, "b", &cl.graph, r)
                                .map_err(|_| "batch does not fit".to_string())?;
                            keel_device::run_graph(&client, &cl.graph, &p)
                                .map_err(|e| e.to_string())
                        });
                    let got = match got {
                        Ok(g) => g,
                        Err(e) => {
                            failures.push(format!("{} ({what}, {b}x{t}): {e}", r.name));
                            continue;
                        }
                    };
                    runs += 1;
                    for (out, e) in keel_compiler::parity::errors(&got, &want) {
                        let label = format!("{what}, {b}x{t}, {out}");
                        if e > rworst.0 {
                            rworst = (e, label.clone());
                        }
                        if e > keel_compiler::parity::F32_TOLERANCE {
                            failures.push(format!("{} ({label}): error {e:.2e}", r.name));
                        }
                    }
                }
            }
            eprintln!(
                "{}: largest error {:.2e} ({}); {runs} runs so far",
                r.name, rworst.0, rworst.1
            );
            worst.push((rworst.0, format!("{} ({})", r.name, rworst.1)));
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": name,
                "runs": runs,
                "recipes": worst.len(),
                "largest": worst.iter().take(5).map(|(e, l)| serde_json::json!({"error": e, "where": l})).collect::<Vec<_>>(),
                "logits_error": logits_worst,
                "failures": failures,
            })
        );
    } else {
        println!(
            "device kernels on {name}: {runs} runs over {} recipes",
            worst.len()
        );
        println!("largest errors (relative to each output's scale):");
        for (e, l) in worst.iter().take(5) {
            println!("  {e:.2e}  {l}");
        }
        println!("logits kernel vs the CPU kernel: {logits_worst:.2e}");
        for f in &failures {
            println!("FAILED {f}");
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
