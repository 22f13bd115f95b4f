//! The one table of the inputs the runtime produces ([`INPUTS`]): for each,
//! where its values come from, whether the loss batch carries it (and as
//! what dtype) and when. The loss batch ([`loss_batch`]), host code's view
//! ([`host_inputs`]), what the loss is compiled against ([`provided`]), the
//! dry batch, the memory estimate's vocabulary-level columns, and the list
//! in docs/runtime.md all read it.
//!
//! A new input is one row here and the code that fills it: a role's
//! token-level column goes in [`Row::extra`] under the input's name
//! ([`Fill::Extra`]); anything else is a [`Fill`] of its own.

use std::collections::HashMap;

use keel_compiler::batch::Batch;

use super::{Rollouts, Row, StepInputs};

/// Where an input's values come from.
#[derive(Clone, Copy)]
pub enum Fill {
    /// One value per response token of each row [B·T], 0 past it.
    Token(fn(&Row) -> &[f64]),
    /// A token-level column a role fills in [`Row::extra`] (zeros in a row
    /// without it).
    Extra,
    /// Laid out over the whole batch [B·T] (mask, tokens, step ends).
    Batch(fn(&Rollouts) -> Vec<f64>),
    /// One value per row [B].
    Seq(fn(&Row) -> f64),
    /// One value per step [1].
    Step(fn(&StepInputs) -> f64),
    /// The behaviour policy's distribution [B·T·V] or a statistic of it
    /// [B·T], from the rows' kept logits (present only where they kept
    /// them).
    Vocab(VocabStat),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VocabStat {
    Logits,
    MeanLogp,
    /// The teacher's logits [B·T·V], filled per minibatch.
    Teacher,
}

/// When the loss batch carries an input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only where the run has the role that fills it (the frozen reference,
    /// the critic).
    Read,
    /// Only from rows that kept their logits (a recipe that reads the
    /// behaviour policy's distribution).
    KeptLogits,
}

/// One input the runtime produces.
#[derive(Clone, Copy)]
pub struct Input {
    pub name: &'static str,
    pub fill: Fill,
    /// Its dtype in the loss batch (docs/batch-format.md); `None`: host
    /// code reads it, and the loss derives it (`logp`, `entropy` and
    /// `mean_logp` from `logits`; `index` and `position` from the shape).
    pub loss: Option<&'static str>,
    pub when: When,
}

const fn input(name: &'static str, fill: Fill, loss: Option<&'static str>, when: When) -> Input {
    Input {
        name,
        fill,
        loss,
        when,
    }
}

fn as_f64(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}

/// Every input the runtime produces.
pub const INPUTS: &[Input] = &[
    // The loss batch's `logits` are the current policy's (the update
    // passes them); host code, before the update, reads the behaviour
    // policy's as the current ones.
    input(
        "logits",
        Fill::Vocab(VocabStat::Logits),
        Some("f32"),
        When::Always,
    ),
    input(
        "old_logits",
        Fill::Vocab(VocabStat::Logits),
        Some("f32"),
        When::KeptLogits,
    ),
    input(
        "mean_logp",
        Fill::Vocab(VocabStat::MeanLogp),
        None,
        When::KeptLogits,
    ),
    input(
        "old_mean_logp",
        Fill::Vocab(VocabStat::MeanLogp),
        Some("f32"),
        When::KeptLogits,
    ),
    // Before the update the current policy is the behaviour policy.
    input("logp", Fill::Token(|r| &r.old_logp), None, When::Always),
    input(
        "old_logp",
        Fill::Token(|r| &r.old_logp),
        Some("f32"),
        When::Always,
    ),
    input("entropy", Fill::Token(|r| &r.entropy), None, When::Always),
    input("ref_logp", Fill::Extra, Some("f32"), When::Read),
    // The critic's: its value of each token at rollout time, and during the
    // update its prediction with a graph (the update fills `vpred`).
    input("values", Fill::Extra, Some("f32"), When::Read),
    input("vpred", Fill::Extra, Some("f32"), When::Read),
    // The frozen teacher's: its log-prob of each sampled token (rollout
    // time) and its distribution (per minibatch, during the update).
    input("teacher_logp", Fill::Extra, Some("f32"), When::Read),
    input(
        "teacher_logits",
        Fill::Vocab(VocabStat::Teacher),
        Some("f32"),
        When::Read,
    ),
    input(
        "tokens",
        Fill::Batch(|b| b.tokens().iter().map(|&x| x as f64).collect()),
        Some("i64"),
        When::Always,
    ),
    input(
        "mask",
        Fill::Batch(Rollouts::mask),
        Some("f32"),
        When::Always,
    ),
    input(
        "step_reward",
        Fill::Batch(|b| step_columns(b).0),
        Some("f32"),
        When::Always,
    ),
    input(
        "step_end",
        Fill::Batch(|b| step_columns(b).1),
        Some("u8"),
        When::Always,
    ),
    input("position", Fill::Batch(positions), None, When::Always),
    input(
        "correct",
        Fill::Seq(|r| as_f64(r.verdict.correct)),
        Some("u8"),
        When::Always,
    ),
    // The outcome reward before the recipe's `reward` section: 1 if correct.
    input(
        "reward",
        Fill::Seq(|r| as_f64(r.verdict.correct)),
        Some("f32"),
        When::Always,
    ),
    input(
        "format_ok",
        Fill::Seq(|r| as_f64(r.verdict.format_ok)),
        Some("u8"),
        When::Always,
    ),
    input(
        "truncated",
        Fill::Seq(|r| as_f64(r.truncated)),
        Some("u8"),
        When::Always,
    ),
    input(
        "length",
        Fill::Seq(|r| r.response.len() as f64),
        Some("i64"),
        When::Always,
    ),
    input(
        "group",
        Fill::Seq(|r| r.group as f64),
        Some("i64"),
        When::Always,
    ),
    input(
        "index",
        Fill::Batch(|b| (0..b.len()).map(|i| i as f64).collect()),
        None,
        When::Always,
    ),
    input("source", Fill::Seq(|r| r.source), Some("i64"), When::Always),
    // The external judge's score (`--judge`), else the task's rule judge's.
    input("judge", Fill::Seq(|r| r.judge), Some("f32"), When::Always),
    // Consecutive prompts in bundles of `rollout.bundle` (RiskPO).
    input("bundle", Fill::Seq(|r| r.bundle), Some("i64"), When::Always),
    // The token budget of the sequence's subgroup (HBPO).
    input("budget", Fill::Seq(|r| r.budget), Some("f32"), When::Always),
    // EVOL-RL's novelty within the group, from the frozen reference.
    input(
        "novelty",
        Fill::Seq(|r| r.novelty),
        Some("f32"),
        When::Always,
    ),
    input("step", Fill::Step(|s| s.step), Some("i64"), When::Always),
    input(
        "total_steps",
        Fill::Step(|s| s.total_steps),
        Some("i64"),
        When::Always,
    ),
    input(
        "progress",
        Fill::Step(|s| (s.step / s.total_steps.max(1.0)).min(1.0)),
        Some("f32"),
        When::Always,
    ),
    input("epoch", Fill::Step(|s| s.epoch), Some("i64"), When::Always),
];

/// Inputs of the language the runtime does not produce yet: a recipe that
/// reads one is refused before training (E0706), at the place it reads it.
/// Everything else the language lists is a row of [`INPUTS`] or derived by
/// the loss from them (`keel_compiler::lower::derivable`).
pub const NOT_PRODUCED: &[&str] = &["advantages", "void"];

/// Inputs read from the behaviour policy's distribution: a run keeps the
/// sampled positions' logits only when its recipe reads one.
pub const VOCAB_INPUTS: [&str; 4] = ["logits", "old_logits", "mean_logp", "old_mean_logp"];

/// The row of `name`.
pub fn input_named(name: &str) -> Option<&'static Input> {
    INPUTS.iter().find(|i| i.name == name)
}

/// Whether the loss batch carries `name` (what the loss is compiled
/// against); a role's column only where the run has the role (`roles`).
pub fn provided(name: &str, roles: impl Fn(&str) -> bool) -> bool {
    input_named(name).is_some_and(|i| i.loss.is_some() && (i.when != When::Read || roles(i.name)))
}

/// Vocabulary-level tensors every loss batch holds ([B, T, V] f32 each):
/// the current policy's logits. The memory estimate counts them.
pub fn vocab_columns_always() -> usize {
    INPUTS
        .iter()
        .filter(|i| matches!(i.fill, Fill::Vocab(VocabStat::Logits)) && i.when == When::Always)
        .count()
}

/// Process rewards and step ends [B·T]: each verdict's steps, at the
/// token that closes them.
fn step_columns(b: &Rollouts) -> (Vec<f64>, Vec<f64>) {
    let t = b.t();
    let mut step_reward = vec![0.0; b.len() * t];
    let mut step_end = vec![0.0; b.len() * t];
    for (r, row) in b.rows.iter().enumerate() {
        for &(pos, val) in &row.verdict.steps {
            if pos < t && pos < row.response.len() {
                step_reward[r * t + pos] = val;
                step_end[r * t + pos] = 1.0;
            }
        }
    }
    (step_reward, step_end)
}

fn positions(b: &Rollouts) -> Vec<f64> {
    let t = b.t();
    (0..b.len() * t).map(|k| (k % t) as f64).collect()
}

/// Mean over the vocabulary of the behaviour policy's log-probs [B·T].
fn mean_logp(b: &Rollouts) -> Vec<f64> {
    let t = b.t();
    let v = b.vocab.max(1);
    let mut mean_lp = vec![0.0; b.len() * t];
    for (r, row) in b.rows.iter().enumerate() {
        for (j, tok) in row.old_logits.chunks_exact(v).enumerate().take(t) {
            let m = tok.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let lse = m + tok.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            mean_lp[r * t + j] = tok.iter().map(|&x| x as f64 - lse).sum::<f64>() / v as f64;
        }
    }
    mean_lp
}

/// An input's values over `b` at step `s`, flat in level order.
fn values(i: &Input, b: &Rollouts, s: &StepInputs) -> Vec<f64> {
    match i.fill {
        Fill::Token(col) => b.token_level(col),
        Fill::Extra => b.token_level(|r| r.extra.get(i.name).map_or(&[][..], Vec::as_slice)),
        Fill::Batch(f) => f(b),
        Fill::Seq(f) => b.rows.iter().map(f).collect(),
        Fill::Step(f) => vec![f(s)],
        Fill::Vocab(VocabStat::Logits) => b.old_logits_flat().iter().map(|&x| x as f64).collect(),
        Fill::Vocab(VocabStat::MeanLogp) => mean_logp(b),
        Fill::Vocab(VocabStat::Teacher) => {
            b.teacher_logits_flat().iter().map(|&x| x as f64).collect()
        }
    }
}

/// Every input for host code and the interpreter: the whole table, the
/// vocabulary-level inputs only where the rows kept their logits.
pub fn host_inputs(b: &Rollouts, s: StepInputs) -> HashMap<String, Vec<f64>> {
    let kept = b.keeps_logits();
    // Host code never reads the teacher's distribution (a minibatch's
    // loss does).
    INPUTS
        .iter()
        .filter(|i| kept || !matches!(i.fill, Fill::Vocab(_)))
        .filter(|i| !matches!(i.fill, Fill::Vocab(VocabStat::Teacher)))
        .map(|i| (i.name.to_string(), values(i, b, &s)))
        .collect()
}

/// The loss batch: every input with a loss dtype, in its shape; `logits`
/// are the current policy's (`None`: left out), the behaviour policy's
/// distribution only where the rows kept it.
pub fn loss_batch(b: &Rollouts, mut logits: Option<Vec<f32>>, v: usize, s: StepInputs) -> Batch {
    let (n, t) = (b.len(), b.t());
    let kept = b.keeps_logits();
    let mut batch = Batch::default();
    for i in INPUTS {
        let Some(dtype) = i.loss else { continue };
        if i.when == When::KeptLogits && !kept {
            continue;
        }
        match i.fill {
            Fill::Vocab(VocabStat::Logits) if i.name == "logits" => {
                if let Some(z) = logits.take() {
                    batch.insert_f32(i.name, dtype, vec![n, t, v], z);
                }
            }
            Fill::Vocab(VocabStat::Logits) => {
                batch.insert_f32(
                    i.name,
                    dtype,
                    vec![n, t, b.vocab.max(1)],
                    b.old_logits_flat(),
                );
            }
            // Only for a minibatch whose rows the teacher filled.
            Fill::Vocab(VocabStat::Teacher) => {
                if b.rows.iter().any(|r| !r.teacher_logits.is_empty()) {
                    batch.insert_f32(
                        i.name,
                        dtype,
                        vec![n, t, b.vocab.max(1)],
                        b.teacher_logits_flat(),
                    );
                }
            }
            Fill::Token(_) | Fill::Extra | Fill::Batch(_) | Fill::Vocab(VocabStat::MeanLogp) => {
                batch.insert(i.name, dtype, vec![n, t], values(i, b, &s));
            }
            Fill::Seq(_) => batch.insert(i.name, dtype, vec![n], values(i, b, &s)),
            Fill::Step(_) => batch.insert(i.name, dtype, vec![], values(i, b, &s)),
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use keel_compiler::{builtins, lower};

    use super::*;

    /// The table is the language's list of inputs minus those the runtime
    /// does not produce yet: every input is a row, or derived by the loss
    /// from the rows the loss batch carries.
    #[test]
    fn the_table_is_the_language_minus_what_is_not_produced_yet() {
        let carried = |n: &str| provided(n, |_| true);
        let produced: BTreeSet<&str> = builtins::INPUTS
            .iter()
            .map(|i| i.name)
            .filter(|n| input_named(n).is_some() || carried(n) || lower::derivable(n, &carried))
            .collect();
        let language: BTreeSet<&str> = builtins::INPUTS
            .iter()
            .map(|i| i.name)
            .filter(|n| !NOT_PRODUCED.contains(n))
            .collect();
        assert_eq!(produced, language);
        for i in INPUTS {
            let lang = builtins::input(i.name);
            assert!(
                lang.is_some(),
                "`{}` is not an input of the language",
                i.name
            );
        }
        for n in NOT_PRODUCED {
            assert!(builtins::input(n).is_some(), "`{n}`");
            assert!(input_named(n).is_none() && !carried(n), "`{n}` is produced");
        }
        for n in VOCAB_INPUTS {
            assert!(
                matches!(input_named(n).map(|i| i.fill), Some(Fill::Vocab(_))),
                "`{n}`"
            );
        }
    }

    /// Host code sees every row of the table; the loss batch carries the
    /// rows with a dtype, in the level's shape.
    #[test]
    fn the_host_view_and_the_loss_batch_follow_the_table() {
        let mut row = Row::sampled(vec![1], vec![4, 5, 2]);
        row.old_logp = vec![-1.0, -2.0, -3.0];
        row.entropy = vec![0.1, 0.2, 0.3];
        row.old_logits = vec![0.0; 3 * 4];
        row.teacher_logits = vec![0.5; 3 * 4];
        row.extra.insert("ref_logp", vec![-1.5, -2.5, -3.5]);
        let b = Rollouts {
            rows: vec![row.clone(), Row { group: 1, ..row }],
            vocab: 4,
            difficulty: vec![0.5, 0.5],
        };
        let s = StepInputs {
            step: 3.0,
            total_steps: 6.0,
            epoch: 1.0,
        };
        let host = host_inputs(&b, s);
        let names: BTreeSet<&str> = host.keys().map(String::as_str).collect();
        // Host code never sees the teacher's distribution.
        assert_eq!(
            names,
            INPUTS
                .iter()
                .map(|i| i.name)
                .filter(|n| *n != "teacher_logits")
                .collect()
        );
        assert_eq!(host["ref_logp"], vec![-1.5, -2.5, -3.5, -1.5, -2.5, -3.5]);
        assert_eq!(host["position"], vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        assert_eq!(host["progress"], vec![0.5]);
        let batch = loss_batch(&b, Some(vec![0.0; 2 * 3 * 4]), 4, s);
        for i in INPUTS {
            let t = batch.tensors.get(i.name);
            assert_eq!(t.is_some(), i.loss.is_some(), "`{}`", i.name);
            if let (Some(t), Some(dtype)) = (t, i.loss) {
                assert_eq!(t.dtype, dtype, "`{}`", i.name);
                let shape = match i.fill {
                    Fill::Seq(_) => vec![2],
                    Fill::Step(_) => vec![],
                    Fill::Vocab(VocabStat::Logits | VocabStat::Teacher) => vec![2, 3, 4],
                    _ => vec![2, 3],
                };
                assert_eq!(t.shape, shape, "`{}`", i.name);
            }
        }
    }
}
