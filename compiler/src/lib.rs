//! `keel-compiler`: the compiler's driver over its stage crates.
//!
//! The stages are crates of their own (`docs/architecture.md`): the front
//! end [`keel_check`], the IR with its semantics and the reference
//! interpreter [`keel_ir`], the kernel plan and its CPU executor
//! [`keel_kernel`], host code [`keel_host`]. This crate re-exports them
//! under the names the executables use (`keel_compiler::check_source`,
//! `keel_compiler::ir`, `keel_compiler::kernel`, …) and adds what ties them
//! together:
//! - the one loss driver, [`LossProgram`]: compile a recipe's loss for a
//!   batch and a [`LogitsPath`], then run it on any [`Executor`] (the
//!   logits forward pass, the program's batch, prepare, run, collect the
//!   loss, gradients and metrics); `keel loss`, `keel bench` and the
//!   training loop all run a loss through it;
//! - [`run_loss`] and its variants, what `keel loss` reports;
//! - what touches the machine: the [`Disk`] a [`SourceDb`] reads and the
//!   memory the process may still allocate ([`available_memory`]), handed
//!   to the pure stages as values.

pub mod disk;
pub mod parity;

pub use disk::Disk;
pub use keel_check::{
    Checked, CheckedGuard, CheckedRecipe, Diagnostic, FileId, GuardAction, GuardOp, Label, Merged,
    NoFiles, Program, Setting, Severity, SourceDb, Sources, builtins, check, check_source,
    check_source_with, codes, diagnostic, explain, format, on_big_stack, resolve, source, stdlib,
};
#[cfg(feature = "llvm")]
pub use keel_host::llvm as host_llvm;
pub use keel_ir::{
    CompiledLoss, Error, Executor, LogitsPath, Outputs, autodiff, batch, check_memory,
    compile_host, compile_loss, compile_loss_for, compile_loss_kernel, describe_node, human_bytes,
    interp, ir, lower, ops, synth,
};
pub use keel_kernel::{fastmath, logits};
pub use {keel_host as host, keel_kernel as kernel};

/// A recipe's loss program, compiled once for one [`LogitsPath`] and the
/// inputs a batch provides; hyperparameter values can be set between runs
/// (the training loop's schedules).
pub struct LossProgram {
    /// The loss, its derived gradient and the metrics, as one graph.
    pub graph: ir::Graph,
    pub recipe: CheckedRecipe,
    pub path: LogitsPath,
    /// Metrics the batch cannot give (an input it lacks).
    pub skipped_metrics: Vec<String>,
}

/// What one evaluation of a [`LossProgram`] gives.
#[derive(Clone, Debug, Default)]
pub struct LossOutput {
    /// NaN when the program has no `loss` output.
    pub loss: f64,
    /// `metric.NAME` outputs, in the graph's order.
    pub metrics: Vec<(String, f64)>,
    pub b: usize,
    pub t: usize,
    /// The vocabulary size, when the batch has logits.
    pub v: Option<usize>,
    /// d(loss)/d(logp) [B·T] (empty when the program has none).
    pub d_logp: Vec<f64>,
    /// d(loss)/d(entropy) [B·T] on the fused path (empty otherwise).
    pub d_entropy: Vec<f64>,
    pub advantages: Option<Vec<f64>>,
    /// d(loss)/d(logits) [B·T·V]: f32 from the fused logits kernel or the
    /// CPU plan, f64 from the interpreter.
    pub d_logits: Option<batch::Values>,
    /// The fused logits kernel's logp [B·T] (f32), on the fused path.
    pub logp: Option<Vec<f32>>,
    /// The critic's reduced `critic.loss`, where the recipe has one and the
    /// batch holds `vpred`.
    pub value_loss: Option<f64>,
    /// d(value_loss)/d(vpred) [B·T] (empty without a critic loss).
    pub d_vpred: Vec<f64>,
    /// Every other output, by name.
    pub rest: Outputs,
}

impl LossProgram {
    /// Compile recipe `index` of `checked` for a batch that holds the
    /// tensors `has` says, on `path` (see [`LogitsPath::of`]).
    pub fn compile(
        checked: &Checked,
        index: usize,
        path: LogitsPath,
        has: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<LossProgram, Vec<Diagnostic>> {
        let have = |n: &str| path.program_has(n, has(n));
        LossProgram::compiled(checked, index, path, &have)
    }

    /// [`LossProgram::compile`] with the reward given by the engine, as an
    /// export to verl or TRL computes it: the batch's `reward` is the
    /// recipe's reward (its `reward` section is not run).
    pub fn compile_engine_reward(
        checked: &Checked,
        index: usize,
        path: LogitsPath,
        has: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<LossProgram, Vec<Diagnostic>> {
        let have = lower::EngineReward(|n: &str| path.program_has(n, has(n)));
        LossProgram::compiled(checked, index, path, &have)
    }

    fn compiled(
        checked: &Checked,
        index: usize,
        path: LogitsPath,
        have: &dyn lower::Available,
    ) -> Result<LossProgram, Vec<Diagnostic>> {
        let recipe = checked.recipes.get(index).cloned().ok_or_else(Vec::new)?;
        let compiled = compile_loss_for(checked, index, have, path)?;
        Ok(LossProgram {
            graph: compiled.graph,
            recipe,
            path,
            skipped_metrics: compiled.skipped_metrics,
        })
    }

    /// [`LossProgram::compile`] for `batch`: on the fused path when `fuse`
    /// and the recipe and the batch allow it.
    pub fn for_batch(
        checked: &Checked,
        index: usize,
        batch: &batch::Batch,
        fuse: bool,
    ) -> Result<LossProgram, Vec<Diagnostic>> {
        let has = |n: &str| batch.has(n);
        let path = match checked.recipes.get(index) {
            Some(r) if fuse => LogitsPath::of(r, &has),
            _ => LogitsPath::Program,
        };
        LossProgram::compile(checked, index, path, &has)
    }

    /// A located error on this recipe.
    fn error(&self, code: codes::Code, message: String, help: &str) -> Vec<Diagnostic> {
        vec![
            Diagnostic::error(
                code,
                message,
                Label::new(
                    self.recipe.file,
                    self.recipe.name_span,
                    "while evaluating this recipe",
                ),
            )
            .with_help(help),
        ]
    }

    /// Evaluate the program on `batch` (called `batch_name` in errors) with
    /// `exec`: on the fused path, the logits kernel's forward pass first
    /// and its backward pass after; then the loss, gradients and metrics.
    /// A shape the program cannot read or a batch too large for the
    /// executor is a located error (E0602, E0606).
    pub fn run(
        &self,
        exec: &mut dyn Executor,
        batch: &batch::Batch,
        batch_name: &str,
    ) -> Result<LossOutput, Vec<Diagnostic>> {
        let shape_error = |e: String| {
            self.error(
                codes::BATCH_SHAPE,
                e,
                "check the batch tensors against docs/batch-format.md",
            )
        };
        // The logits kernel's forward pass, and the batch the program sees.
        let kernel = match self.path {
            LogitsPath::Fused => Some(
                logits::KernelPath::of(batch, &self.recipe)
                    .map_err(|e| shape_error(e.0))?
                    .ok_or_else(|| {
                        shape_error(
                            "the program was compiled for a batch with `logits` and `tokens`"
                                .into(),
                        )
                    })?,
            ),
            LogitsPath::Program => None,
        };
        let fwd = kernel.as_ref().map(|k| k.forward());
        let program_batch;
        let seen = match (&kernel, &fwd) {
            (Some(k), Some(f)) => {
                program_batch = k.program_batch(batch, f);
                &program_batch
            }
            _ => batch,
        };
        let prepared = batch::prepare(seen, batch_name, &self.graph, &self.recipe)?;
        let mut values = exec
            .run(&self.graph, &prepared)
            .map_err(|e| self.error(e.code, e.message, &e.help))?;
        let d_logits = match (&kernel, &fwd) {
            (Some(k), Some(f)) => Some(batch::Values::F32(k.d_logits(f, &values))),
            _ => values.remove("d_logits"),
        };
        let first = |values: &Outputs, name: &str| values.get(name).and_then(|v| v.get(0));
        let metrics = self
            .graph
            .outputs
            .iter()
            .filter_map(|(n, _)| {
                let m = n.strip_prefix("metric.")?;
                Some((m.to_string(), first(&values, n).unwrap_or(f64::NAN)))
            })
            .collect();
        let loss = first(&values, "loss").unwrap_or(f64::NAN);
        let value_loss = first(&values, "value_loss");
        let mut take = |n: &str| values.remove(n).map(batch::Values::into_f64);
        Ok(LossOutput {
            loss,
            metrics,
            b: prepared.shape.b,
            t: prepared.shape.t,
            v: kernel
                .as_ref()
                .map(|k| k.v)
                .or_else(|| batch.has("logits").then_some(prepared.shape.v)),
            d_logp: take("d_logp").unwrap_or_default(),
            d_entropy: take("d_entropy").unwrap_or_default(),
            advantages: take("advantages"),
            d_logits,
            logp: fwd.map(|f| f.logp),
            value_loss,
            d_vpred: take("d_vpred").unwrap_or_default(),
            rest: values,
        })
    }
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
    /// The critic's loss and its gradient w.r.t. `vpred` [B·T], where the
    /// recipe has `critic.loss` and the batch holds `vpred`.
    pub value_loss: Option<f64>,
    pub d_vpred: Vec<f64>,
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

/// Compile and run recipe `index` on a batch with the reference interpreter.
pub fn run_loss(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
) -> Result<LossResult, Vec<Diagnostic>> {
    run_loss_with(checked, index, batch, batch_name, Backend::Interp)
}

/// Compile and run recipe `index` on a batch with the chosen executor, with
/// no memory limit.
///
/// The kernel backend runs the fused kernels: when the batch carries
/// `logits` and the recipe reads the distribution only through `logp` and
/// `entropy` ([`LogitsPath::Fused`]), the fused logits kernel computes them
/// (f32), the loss program sees them as inputs, and the kernel carries
/// `d_logp` and `d_entropy` back to `d_logits`; the rest of the program runs
/// as fused loops.
pub fn run_loss_with(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
    backend: Backend,
) -> Result<LossResult, Vec<Diagnostic>> {
    match backend {
        Backend::Interp => run_loss_on(
            checked,
            index,
            batch,
            batch_name,
            &mut interp::Interp::default(),
            false,
        ),
        Backend::Kernel { threads } => run_loss_on(
            checked,
            index,
            batch,
            batch_name,
            &mut kernel::Cpu::new(threads, None),
            true,
        ),
    }
}

/// [`run_loss_with`] on any executor (with its own memory limit), through
/// the fused logits kernel when `fuse` and the recipe and batch allow it.
/// A loss or gradient that is not finite is an error (E0502).
pub fn run_loss_on(
    checked: &Checked,
    index: usize,
    batch: &batch::Batch,
    batch_name: &str,
    exec: &mut dyn Executor,
    fuse: bool,
) -> Result<LossResult, Vec<Diagnostic>> {
    let program = LossProgram::for_batch(checked, index, batch, fuse)?;
    let out = program.run(exec, batch, batch_name)?;
    let loss = out.loss;
    if !loss.is_finite()
        || out.d_logp.iter().any(|x| !x.is_finite())
        || out.value_loss.is_some_and(|x| !x.is_finite())
        || out.d_vpred.iter().any(|x| !x.is_finite())
    {
        let what = if loss.is_finite() {
            "its gradient"
        } else {
            "the loss"
        };
        return Err(vec![Diagnostic::error(
            codes::NON_FINITE_RESULT,
            format!("{what} is not finite on batch `{batch_name}` (loss = {loss})"),
            Label::new(program.recipe.file, program.recipe.name_span, "in this recipe"),
        )
        .with_help("look for a division by a zero count, a whitening over one token, or a log of a non-positive value")]);
    }
    Ok(LossResult {
        loss,
        metrics: out.metrics,
        skipped_metrics: program.skipped_metrics,
        b: out.b,
        t: out.t,
        v: out.v,
        d_logp: out.d_logp,
        advantages: out.advantages,
        d_logits: out.d_logits,
        value_loss: out.value_loss,
        d_vpred: out.d_vpred,
    })
}
