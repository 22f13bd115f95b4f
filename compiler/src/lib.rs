//! `keel-compiler`: from a checked recipe ([`keel_check`]) to its IR, its
//! derived gradient, the reference interpreter and the CPU executors.
//!
//! Entry points: [`compile_loss`] (IR + autodiff for one recipe and one
//! batch's inputs) and [`run_loss`] (the f64 reference interpreter, or the
//! kernel plan). The front end is re-exported from `keel-check` so that
//! `keel_compiler::check_source` and `keel_compiler::builtins` keep working.

pub mod autodiff;
pub mod batch;
pub mod disk;
pub mod fastmath;
pub mod host;
#[cfg(feature = "llvm")]
pub mod host_llvm;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod logits;
pub mod lower;
pub mod parity;
pub mod synth;

pub use disk::Disk;
pub use keel_check::{
    Checked, CheckedGuard, CheckedRecipe, Diagnostic, FileId, GuardAction, GuardOp, Label, Merged,
    NoFiles, Program, Severity, SourceDb, Sources, builtins, check, check_source,
    check_source_with, codes, diagnostic, explain, format, on_big_stack, resolve, source, stdlib,
};

/// A loss program compiled for one recipe and the inputs a batch provides.
pub struct CompiledLoss {
    pub graph: ir::Graph,
    pub skipped_metrics: Vec<String>,
}

/// Compile recipe `index` of `checked` into its loss program (IR with the
/// derived gradient), for a batch that has the tensors `have` says.
pub fn compile_loss(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    compile_loss_for(checked, index, have, false)
}

/// [`compile_loss`] for a batch whose `logp` and `entropy` come from the
/// fused logits kernel ([`logits`]): a read `entropy` is differentiated too,
/// and the program outputs `d_entropy` beside `d_logp`.
pub fn compile_loss_kernel(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    compile_loss_for(checked, index, have, true)
}

/// [`compile_loss`], or [`compile_loss_kernel`] when `logits_kernel`.
pub fn compile_loss_for(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
    logits_kernel: bool,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
        return Err(Vec::new());
    };
    on_big_stack(|| lower::loss_program_with(&checked.program, m, c, have, logits_kernel)).map(
        |p| CompiledLoss {
            graph: p.graph,
            skipped_metrics: p.skipped_metrics,
        },
    )
}

/// What `keel loss` reports.
#[derive(Clone, Debug)]
pub struct LossResult {
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
    pub skipped_metrics: Vec<String>,
    pub b: usize,
    pub t: usize,
    pub v: Option<usize>,
    pub d_logp: Vec<f64>,
    pub advantages: Option<Vec<f64>>,
    /// [B·T·V]: f32 from the fused logits kernel, f64 from a program.
    pub d_logits: Option<batch::Values>,
}

/// Which executor evaluates a loss program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The f64 reference interpreter.
    Interp,
    /// The fused kernels ([`kernel::Plan`]) on the CPU, f32, on up to
    /// `threads` threads.
    Kernel { threads: usize },
}

/// Why an executor could not evaluate a loss program.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecError {
    /// Evaluation failed on this batch (an input's shape, a missing input).
    Failed(String),
    /// The batch needs more memory than the executor can give it: what it
    /// needs against what there is, and what to do (reported as E0606).
    TooLarge { message: String, help: String },
}

impl From<String> for ExecError {
    fn from(e: String) -> Self {
        ExecError::Failed(e)
    }
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Failed(e) => f.write_str(e),
            ExecError::TooLarge { message, help } => write!(f, "{message} ({help})"),
        }
    }
}

/// Memory this process may still allocate, in bytes: `KEEL_MEMORY_LIMIT`
/// (bytes) when set, else the smaller of the system's `MemAvailable` and
/// what the cgroup (v2) limit leaves; `None` where neither can be read.
pub fn available_memory() -> Option<usize> {
    if let Ok(v) = std::env::var("KEEL_MEMORY_LIMIT")
        && let Ok(n) = v.trim().parse::<usize>()
    {
        return Some(n);
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let system = read("/proc/meminfo").and_then(|s| {
        let line = s
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))?
            .to_string();
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .and_then(|m| m.trim().parse::<usize>().ok())
        .map(|max| {
            let used = read("/sys/fs/cgroup/memory.current")
                .and_then(|c| c.trim().parse::<usize>().ok())
                .unwrap_or(0);
            max.saturating_sub(used)
        });
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `n` bytes for a reader: `12.4 GB`, `310.2 MB`, `950 bytes`.
pub fn human_bytes(n: usize) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.1} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} kB", x / 1e3)
    } else {
        format!("{n} bytes")
    }
}

/// Whether `need` bytes for `what` fit in [`available_memory`]; if not,
/// says so: "{what} need 12.4 GB; 9.1 GB of memory is available".
pub fn check_memory(what: &str, need: usize) -> Result<(), String> {
    match available_memory() {
        Some(free) if need > free => Err(format!(
            "{what} need {}; {} of memory is available",
            human_bytes(need),
            human_bytes(free)
        )),
        _ => Ok(()),
    }
}

/// Compile and run recipe `index` on a batch with the reference interpreter.
pub fn run_loss(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
) -> Result<LossResult, Vec<Diagnostic>> {
    run_loss_with(checked, index, batch, batch_name, Backend::Interp)
}

/// Whether a recipe reads the token distribution only through `logp` and
/// `entropy`, so the fused logits kernel can compute both from the logits and
/// carry their gradients back (no vocabulary-level value in the program).
pub fn reads_logits_only_through_kernel(recipe: &CheckedRecipe) -> bool {
    !recipe.inputs.keys().any(|k| {
        k == "mean_logp" || builtins::input(k).is_some_and(|i| i.level == builtins::Level::Vocab)
    })
}

/// Compile and run recipe `index` on a batch with the chosen executor.
///
/// The kernel backend runs the fused kernels: when the batch carries
/// `logits` and the recipe reads the distribution only through `logp` and
/// `entropy`, the fused logits kernel computes them (f32), the loss program
/// sees them as inputs, and the kernel carries `d_logp` and `d_entropy` back
/// to `d_logits`; the rest of the program runs as fused loops.
pub fn run_loss_with(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
    backend: Backend,
) -> Result<LossResult, Vec<Diagnostic>> {
    match backend {
        Backend::Interp => run_loss_exec(checked, index, batch, batch_name, false, &mut |g, p| {
            check_memory(
                "the reference interpreter's values for this batch",
                interp::memory_bytes(g, &p.shape),
            )
            .map_err(|message| ExecError::TooLarge {
                message,
                help: "the interpreter keeps every value of the program as f64 (it is the reference, for small batches): use `--backend kernel` (the fused kernels read the batch in place), or split the batch; KEEL_MEMORY_LIMIT=BYTES sets the limit".into(),
            })?;
            let inputs = p.inputs_f64();
            let env = interp::Env {
                shape: p.shape.clone(),
                mask: &p.mask,
                inputs: &inputs,
            };
            let vals = interp::run(g, &env).map_err(|e| ExecError::Failed(e.0))?;
            Ok(g.outputs
                .iter()
                .map(|(n, id)| (n.clone(), batch::Values::F64(vals[*id].clone())))
                .collect())
        }),
        Backend::Kernel { threads } => {
            run_loss_exec(checked, index, batch, batch_name, true, &mut |g, p| {
                let plan = kernel::Plan::new(g)?;
                check_memory(
                    "the kernel plan's values for this batch",
                    plan.memory_bytes(&p.shape),
                ).map_err(
                    |message| ExecError::TooLarge {
                        message,
                        help: "evaluate fewer sequences at once (split the batch), or run on a GPU with `--backend device`; KEEL_MEMORY_LIMIT=BYTES sets the limit".into(),
                    },
                )?;
                plan.run(&p.shape, p, threads)
                    .map_err(|e| ExecError::Failed(e.0))
            })
        }
    }
}

/// The outputs of one evaluation of a loss program, by name.
pub type Outputs = kernel::Outputs;

/// [`run_loss_with`] with any executor: `exec` evaluates the compiled graph
/// on the prepared batch. With `logits_kernel`, a batch with `logits` goes
/// through the fused logits kernel (see [`run_loss_with`]).
pub fn run_loss_exec(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
    logits_kernel: bool,
    exec: &mut dyn FnMut(&ir::Graph, &batch::Prepared) -> Result<Outputs, ExecError>,
) -> Result<LossResult, Vec<Diagnostic>> {
    let recipe = checked.recipes.get(index).ok_or_else(Vec::new)?;
    let failed = |e: interp::InterpError| {
        vec![
            Diagnostic::error(
                codes::BATCH_SHAPE,
                e.0.clone(),
                Label::new(
                    recipe.file,
                    recipe.name_span,
                    "while evaluating this recipe",
                ),
            )
            .with_help("check the batch tensors against docs/batch-format.md"),
        ]
    };
    // The logits kernel's forward pass, and the batch the program then sees.
    let path = if logits_kernel {
        logits::KernelPath::of(batch, recipe).map_err(failed)?
    } else {
        None
    };
    let fwd = path.as_ref().map(|p| p.forward());
    let kernel_batch;
    let batch = match (&path, &fwd) {
        (Some(p), Some(f)) => {
            kernel_batch = p.program_batch(batch, f);
            &kernel_batch
        }
        _ => batch,
    };
    let have = |n: &str| batch.has(n);
    let compiled = compile_loss_for(checked, index, &have, path.is_some())?;
    let prepared = batch::prepare(batch, batch_name, &compiled.graph, recipe)?;
    let g = &compiled.graph;
    let mut values = exec(g, &prepared).map_err(|e| match e {
        ExecError::Failed(e) => failed(interp::InterpError(e)),
        ExecError::TooLarge { message, help } => vec![
            Diagnostic::error(
                codes::TOO_LARGE,
                message,
                Label::new(
                    recipe.file,
                    recipe.name_span,
                    "while evaluating this recipe",
                ),
            )
            .with_help(help),
        ],
    })?;
    let kernel_d_logits = match (&path, &fwd) {
        (Some(p), Some(f)) => Some(p.d_logits(f, &values)),
        _ => None,
    };
    let first = |name: &str| values.get(name).and_then(|v| v.get(0));
    let loss = first("loss").unwrap_or(f64::NAN);
    let d_logp = values
        .get("d_logp")
        .map(batch::Values::to_f64)
        .unwrap_or_default();
    if !loss.is_finite() || d_logp.iter().any(|x| !x.is_finite()) {
        let what = if loss.is_finite() {
            "its gradient"
        } else {
            "the loss"
        };
        return Err(vec![Diagnostic::error(
            codes::NON_FINITE_RESULT,
            format!("{what} is not finite on batch `{batch_name}` (loss = {loss})"),
            Label::new(recipe.file, recipe.name_span, "in this recipe"),
        )
        .with_help("look for a division by a zero count, a whitening over one token, or a log of a non-positive value")]);
    }
    let metrics = g
        .outputs
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix("metric.")
                .map(|m| (m.to_string(), first(n).unwrap_or(f64::NAN)))
        })
        .collect();
    Ok(LossResult {
        loss,
        metrics,
        skipped_metrics: compiled.skipped_metrics,
        b: prepared.shape.b,
        t: prepared.shape.t,
        v: path
            .as_ref()
            .map(|p| p.v)
            .or_else(|| batch.has("logits").then_some(prepared.shape.v)),
        d_logp,
        // Taken, not cloned: d_logits is [B, T, V].
        advantages: values.remove("advantages").map(batch::Values::into_f64),
        d_logits: match kernel_d_logits {
            Some(d) => Some(batch::Values::F32(d)),
            None => values.remove("d_logits"),
        },
    })
}

/// The host part of recipe `index` (schedules, state updates, guard
/// conditions, the per-sample reward) as IR, for the cranelift backend.
pub fn compile_host(checked: &Checked, index: usize) -> Result<lower::HostGraph, Vec<Diagnostic>> {
    let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
        return Err(Vec::new());
    };
    on_big_stack(|| lower::host_graph(&checked.program, m, c))
}

/// Describe a node for listings (`input step`, `param clip.eps_low`, `%12`).
pub fn describe_node(g: &ir::Graph, id: ir::NodeId) -> String {
    match g.nodes.get(id).map(|n| &n.op) {
        Some(ir::Op::Input(n)) => format!("input {n}"),
        Some(ir::Op::Param { name, .. }) => format!("param {name}"),
        Some(op) => format!(
            "%{id} ({})",
            format!("{op:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("")
                .to_lowercase()
        ),
        None => format!("%{id}"),
    }
}
