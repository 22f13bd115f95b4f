//! `keel-ir`: a checked recipe ([`keel_check`]) as a typed graph, its
//! derived gradient, and what every node means.
//!
//! Lowering from the checked recipe ([`lower`], the one place besides
//! `keel-check` that reads the AST), the graph and its constant folder
//! ([`ir`]), reverse-mode autodiff ([`autodiff`]), the meaning of every op
//! ([`ops`] for the pointwise ones, [`interp`] for the rest) and the f64
//! reference interpreter that defines every node, batches in memory
//! ([`batch`]: safetensors bytes in and out, checked against a program),
//! synthetic batches ([`synth`]), and the [`Executor`] trait that the
//! interpreter, the CPU kernel plan (`keel-kernel`) and the device
//! (`keel-device`) implement.
//!
//! Pure: no IO, no environment, no unsafe code. Batches come in as bytes or
//! a reader, memory limits as values.

#![forbid(unsafe_code)]

// The front end's modules under the names this crate has always used.
use keel_check::{builtins, check, codes, diagnostic, resolve, source};

pub mod autodiff;
pub mod batch;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod ops;
pub mod synth;

use keel_check::{Checked, CheckedRecipe, Diagnostic, on_big_stack};
use std::collections::HashMap;

/// The outputs of one evaluation of a loss program, by name.
pub type Outputs = HashMap<String, batch::Values>;

/// Which path the token distribution takes into a loss program: the one
/// predicate that decides whether the fused logits kernel applies
/// (`keel loss --backend kernel`, `keel bench` and the training loop all ask
/// it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsPath {
    /// The program reads what the batch holds, `logits` included, and
    /// differentiates it itself.
    Program,
    /// The recipe reads the distribution only through `logp` and `entropy`
    /// and the batch has `logits` and `tokens`: the fused logits kernel
    /// computes both from the logits, the program sees them as token inputs
    /// and outputs `d_logp` and `d_entropy`, and the kernel carries them
    /// back to `d_logits`.
    Fused,
}

impl LogitsPath {
    /// Whether `recipe` reads the token distribution only through `logp`
    /// and `entropy` (no vocabulary-level input, no `mean_logp`), so the
    /// fused logits kernel can stand in for every vocabulary-level value.
    pub fn fusable(recipe: &CheckedRecipe) -> bool {
        !recipe.inputs.keys().any(|k| {
            k == "mean_logp"
                || builtins::input(k).is_some_and(|i| i.level == builtins::Level::Vocab)
        })
    }

    /// The path of `recipe` on a batch that holds the tensors `has` says:
    /// [`LogitsPath::Fused`] when the recipe is [fusable](Self::fusable)
    /// and the batch has `logits` and `tokens`.
    pub fn of(recipe: &CheckedRecipe, has: &dyn Fn(&str) -> bool) -> LogitsPath {
        if Self::fusable(recipe) && has("logits") && has("tokens") {
            LogitsPath::Fused
        } else {
            LogitsPath::Program
        }
    }

    /// Whether the program's batch has `name`, when the batch before the
    /// logits stage has it or not (`before`): on the fused path the logits
    /// become `logp` and `entropy`.
    pub fn program_has(self, name: &str, before: bool) -> bool {
        match self {
            LogitsPath::Program => before,
            LogitsPath::Fused => (before && name != "logits") || matches!(name, "logp" | "entropy"),
        }
    }
}

/// A loss program compiled for one recipe and the inputs a batch provides.
pub struct CompiledLoss {
    pub graph: ir::Graph,
    /// The loss's terms as the recipe wrote them (nodes of `graph`).
    pub terms: Vec<lower::LossTerm>,
    pub skipped_metrics: Vec<String>,
}

/// Compile recipe `index` of `checked` into its loss program (IR with the
/// derived gradient), for a batch that has the tensors `have` says.
pub fn compile_loss(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    compile_loss_for(checked, index, have, LogitsPath::Program)
}

/// [`compile_loss`] for a batch whose `logp` and `entropy` come from the
/// fused logits kernel: a read `entropy` is differentiated too, and the
/// program outputs `d_entropy` beside `d_logp`.
pub fn compile_loss_kernel(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    compile_loss_for(checked, index, have, LogitsPath::Fused)
}

/// [`compile_loss`] on the given logits path (`have` is the program's
/// batch: see [`LogitsPath::program_has`]).
pub fn compile_loss_for(
    checked: &Checked,
    index: usize,
    have: &dyn lower::Available,
    path: LogitsPath,
) -> Result<CompiledLoss, Vec<Diagnostic>> {
    let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
        return Err(Vec::new());
    };
    on_big_stack(|| {
        lower::loss_program_with(&checked.program, m, c, have, path == LogitsPath::Fused)
    })
    .map(|p| CompiledLoss {
        graph: p.graph,
        terms: p.terms,
        skipped_metrics: p.skipped_metrics,
    })
}

/// The host part of recipe `index` (schedules, state updates, guard
/// conditions, the per-sample reward) as IR, for the host-code backend.
pub fn compile_host(checked: &Checked, index: usize) -> Result<lower::HostGraph, Vec<Diagnostic>> {
    let (Some(m), Some(c)) = (checked.merged.get(index), checked.recipes.get(index)) else {
        return Err(Vec::new());
    };
    on_big_stack(|| lower::host_graph(&checked.program, m, c))
}

/// Why an executor could not evaluate a loss program: Keel's one error
/// type. The executors use three codes: [`codes::TOO_LARGE`] (the batch
/// needs more memory than the executor can give it), [`codes::BATCH_SHAPE`]
/// (evaluation failed on this batch: an input's shape, a missing input) and
/// [`codes::NOT_LOWERABLE`] (the program cannot be planned or compiled for
/// the executor).
pub use keel_check::Error;

/// An executor of loss programs: evaluates a compiled graph on a prepared
/// batch. The reference interpreter ([`interp::Interp`]), the CPU kernel
/// plan (`keel-kernel`) and the device (`keel-device`) implement it; the
/// loss driver (`keel-compiler`) runs every one the same way.
pub trait Executor {
    /// Get ready to evaluate `g` (plan it, compile it): called when a
    /// program is compiled and again when its parameters change. An
    /// executor that needs nothing of the kind keeps the default.
    fn prepare(&mut self, _g: &ir::Graph) -> Result<(), Error> {
        Ok(())
    }

    /// Every output of `g` (the graph last [prepared](Self::prepare)) on
    /// `p`, by name.
    fn run(&mut self, g: &ir::Graph, p: &batch::Prepared) -> Result<Outputs, Error>;

    /// Outputs the caller is done with, for the executor to reuse their
    /// buffers.
    fn recycle(&mut self, _outputs: Outputs) {}
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

/// Whether `need` bytes for `what` fit in `free` (what the process may
/// still allocate, measured by the caller; `None`: unknown, so it fits); if
/// not, an E0606 error that says so, "{what} need 12.4 GB; 9.1 GB of memory
/// is available", with the caller's `help`.
pub fn check_memory(what: &str, need: usize, free: Option<usize>, help: &str) -> Result<(), Error> {
    match free {
        Some(free) if need > free => Err(Error::new(
            codes::TOO_LARGE,
            format!(
                "{what} need {}; {} of memory is available",
                human_bytes(need),
                human_bytes(free)
            ),
            help,
        )),
        _ => Ok(()),
    }
}

/// An evaluation that failed on a batch the program was compiled for (an
/// input's shape, a missing input): E0602.
pub fn batch_error(message: impl Into<String>) -> Error {
    Error::new(
        codes::BATCH_SHAPE,
        message,
        "check the batch tensors against docs/batch-format.md",
    )
}

/// A program the checker accepted that an executor cannot plan or compile
/// (E0500): a compiler bug.
pub fn plan_error(message: impl Into<String>) -> Error {
    Error::new(
        codes::NOT_LOWERABLE,
        message,
        "this is a compiler bug; please report it with the recipe",
    )
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
