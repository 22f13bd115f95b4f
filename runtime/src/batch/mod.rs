//! One step's samples as the recipe reads them: rows (one sampled response
//! each, with what the runtime knows of it), laid out as the batch of
//! docs/batch-format.md for the loss and as flat columns for host code.
//! Which inputs there are, and how each is laid out, is one table:
//! [`inputs::INPUTS`].
//!
//! May import: `crate::env` (a row's verdict), `keel-compiler`'s batch and
//! shape types, and `keel-model`'s token ids; nothing else of the runtime.

pub mod inputs;

use std::collections::{BTreeMap, HashMap};

use keel_compiler::batch::Batch;
use keel_compiler::interp::Shape;
use keel_model::tokenizer::PAD;

use crate::env::Verdict;

/// One sampled response and what the runtime knows of it.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// The prompt tokens (BOS first).
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// The loss mask of each response token: 1 for a token the policy
    /// sampled and is trained on, 0 for one it did not write (a tool's
    /// output). Stored, not derived from the length.
    pub mask: Vec<f64>,
    /// The behaviour policy's log-prob of each response token.
    pub old_logp: Vec<f64>,
    pub entropy: Vec<f64>,
    /// The behaviour policy's (temperature-scaled) logits, [len·V]; empty
    /// unless the recipe reads the distribution.
    pub old_logits: Vec<f32>,
    /// The teacher's (temperature-scaled) logits, [len·V]: filled for a
    /// minibatch's rows while its loss runs, empty otherwise.
    pub teacher_logits: Vec<f32>,
    /// Its group (prompt) index, 0..n_groups.
    pub group: usize,
    pub verdict: Verdict,
    pub truncated: bool,
    /// 0 on-policy, 1 a rehearsal sample of the initial policy.
    pub source: f64,
    /// The judge's score (`judge`): the external judge's, else the task's
    /// rule judge's, else 0.
    pub judge: f64,
    /// The external judge failed on it (`--judge-failures skip`).
    pub judge_skipped: bool,
    /// Its bundle of prompts (`rollout.bundle`; RiskPO).
    pub bundle: f64,
    /// Its token budget (`rollout.budgets`; HBPO), 0 without budgets.
    pub budget: f64,
    /// Its novelty within its group (EVOL-RL; filled by the reference).
    pub novelty: f64,
    /// The problem it answers (what a judge is sent).
    pub problem: std::sync::Arc<crate::env::Problem>,
    /// Token-level columns filled by a role (`ref_logp` by the reference),
    /// by input name: a new input is a row of [`inputs::INPUTS`] and the
    /// code that fills it here. A row without one reads zeros.
    pub extra: BTreeMap<&'static str, Vec<f64>>,
}

impl Row {
    /// A response of `response` tokens, all trained on.
    pub fn sampled(prompt: Vec<u32>, response: Vec<u32>) -> Row {
        Row {
            mask: vec![1.0; response.len()],
            prompt,
            response,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Rollouts {
    pub rows: Vec<Row>,
    /// Vocabulary size of the rows' `old_logits`.
    pub vocab: usize,
    /// Per group: the problem's difficulty.
    pub difficulty: Vec<f64>,
}

/// Step-level inputs.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs {
    pub step: f64,
    pub total_steps: f64,
    pub epoch: f64,
}

/// One batch, as host code (and the interpreter) sees it.
pub struct BatchView<'a> {
    pub shape: Shape,
    pub mask: &'a [f64],
    pub inputs: &'a HashMap<String, Vec<f64>>,
}

impl Rollouts {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn n_groups(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.group)
            .max()
            .map(|g| g + 1)
            .unwrap_or(0)
    }

    /// Each row's group.
    pub fn groups(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.group).collect()
    }

    /// The rows of group `g`, by index.
    pub fn rows_of(&self, g: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.rows[i].group == g)
            .collect()
    }

    /// Keep the rows of the listed groups (renumbered in order).
    pub fn select_groups(&self, groups: &[usize]) -> Rollouts {
        let rows: Vec<usize> = groups.iter().flat_map(|&g| self.rows_of(g)).collect();
        self.select_rows(&rows)
    }

    /// Keep the listed rows; each keeps its group (renumbered in order of
    /// first appearance).
    pub fn select_rows(&self, rows: &[usize]) -> Rollouts {
        let mut out = Rollouts {
            vocab: self.vocab,
            ..Default::default()
        };
        let mut map: Vec<(usize, usize)> = Vec::new();
        for row in rows.iter().filter_map(|&r| self.rows.get(r)) {
            let g = row.group;
            let new = match map.iter().find(|m| m.0 == g) {
                Some(m) => m.1,
                None => {
                    map.push((g, map.len()));
                    out.difficulty
                        .push(self.difficulty.get(g).copied().unwrap_or(0.0));
                    map.len() - 1
                }
            };
            out.rows.push(Row {
                group: new,
                ..row.clone()
            });
        }
        out
    }

    /// Bundles of `k` prompts: the rows of groups `0..k` form bundle 0,
    /// the next `k` bundle 1, and so on (the last may be smaller).
    pub fn assign_bundles(&mut self, k: usize) {
        let k = k.max(1);
        for row in &mut self.rows {
            row.bundle = (row.group / k) as f64;
        }
    }

    /// Append another set of rollouts (its groups renumbered after ours).
    pub fn extend(&mut self, other: Rollouts) {
        let base = self.n_groups();
        self.vocab = self.vocab.max(other.vocab);
        self.rows.extend(other.rows.into_iter().map(|r| Row {
            group: r.group + base,
            ..r
        }));
        self.difficulty.extend(other.difficulty);
    }

    /// The padded response length.
    pub fn t(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.response.len())
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn shape(&self) -> Shape {
        Shape {
            b: self.len(),
            t: self.t(),
            v: self.vocab.max(1),
            group_of: self.groups(),
            n_groups: self.n_groups(),
        }
    }

    /// The stored loss mask [B·T], 0 past each response.
    pub fn mask(&self) -> Vec<f64> {
        self.token_level(|r| &r.mask)
    }

    /// Whether each position [B·T] holds a response token (what attention
    /// reads, masked from the loss or not).
    pub fn valid(&self) -> Vec<bool> {
        let t = self.t();
        let mut v = vec![false; self.len() * t];
        for (r, row) in self.rows.iter().enumerate() {
            v[r * t..r * t + row.response.len()].fill(true);
        }
        v
    }

    /// Response tokens [B·T], PAD beyond each response.
    pub fn tokens(&self) -> Vec<u32> {
        let t = self.t();
        let mut out = vec![PAD; self.len() * t];
        for (r, row) in self.rows.iter().enumerate() {
            out[r * t..r * t + row.response.len()].copy_from_slice(&row.response);
        }
        out
    }

    /// A token-level column [B·T] from each row's values, 0 past them.
    pub fn token_level(&self, col: impl Fn(&Row) -> &[f64]) -> Vec<f64> {
        let t = self.t();
        let mut out = vec![0.0; self.len() * t];
        for (r, row) in self.rows.iter().enumerate() {
            for (j, x) in col(row).iter().enumerate().take(t) {
                out[r * t + j] = *x;
            }
        }
        out
    }

    /// A role's token-level column `name` into each row's `extra`, from
    /// values laid out [B·T] (each row keeps its response's tokens).
    pub fn put_token_column(&mut self, name: &'static str, flat: &[f32]) {
        let t = self.t();
        for (i, row) in self.rows.iter_mut().enumerate() {
            let n = row.response.len();
            let vals = flat[i * t..i * t + n].iter().map(|&x| x as f64).collect();
            row.extra.insert(name, vals);
        }
    }

    /// Whether the rows carry the behaviour policy's distribution (they
    /// kept their logits; an empty batch counts as carrying it).
    pub fn keeps_logits(&self) -> bool {
        self.len() * self.t() == 0 || self.rows.iter().any(|r| !r.old_logits.is_empty())
    }

    /// The kept logits laid out [B·T·V], zeros past each response.
    pub fn old_logits_flat(&self) -> Vec<f32> {
        self.vocab_flat(|r| &r.old_logits)
    }

    /// The teacher's logits laid out [B·T·V], zeros past each response.
    pub fn teacher_logits_flat(&self) -> Vec<f32> {
        self.vocab_flat(|r| &r.teacher_logits)
    }

    fn vocab_flat(&self, col: impl Fn(&Row) -> &[f32]) -> Vec<f32> {
        let (t, v) = (self.t(), self.vocab.max(1));
        let mut z = vec![0.0; self.len() * t * v];
        for (r, row) in self.rows.iter().enumerate() {
            let row = col(row);
            let n = row.len().min(t * v) / v * v;
            z[r * t * v..r * t * v + n].copy_from_slice(&row[..n]);
        }
        z
    }

    /// The host program's view of these rollouts at step `s` (shape, mask
    /// and inputs), handed to `f`.
    pub fn with_host_view<R>(&self, s: StepInputs, f: impl FnOnce(&BatchView) -> R) -> R {
        let inputs = self.inputs(s);
        let mask = self.mask();
        f(&BatchView {
            shape: self.shape(),
            mask: &mask,
            inputs: &inputs,
        })
    }

    /// Every input the runtime provides, flat in level order (for the
    /// interpreter and host code): token level [B·T], sequence level [B],
    /// step level [1]; the vocabulary-level ones [B·T·V] only from rows
    /// that kept their logits. Laid out by [`inputs::INPUTS`].
    pub fn inputs(&self, s: StepInputs) -> HashMap<String, Vec<f64>> {
        inputs::host_inputs(self, s)
    }

    /// The loss batch for these rows, with the current policy's logits
    /// [B·T·V] (already divided by the sampling temperature) when given.
    /// Laid out by [`inputs::INPUTS`].
    pub fn loss_batch(&self, logits: Option<Vec<f32>>, v: usize, s: StepInputs) -> Batch {
        inputs::loss_batch(self, logits, v, s)
    }

    /// A one-row batch of a one-token response (`bos` → `eos`), every
    /// column present: a dry run of the loss on it reports an input the
    /// runtime does not produce before anything else runs.
    pub fn dry(bos: u32, eos: u32, vocab: usize) -> Rollouts {
        let mut row = Row::sampled(vec![bos], vec![eos]);
        row.old_logp = vec![0.0];
        row.entropy = vec![0.0];
        row.old_logits = vec![0.0; vocab];
        row.teacher_logits = vec![0.0; vocab];
        Rollouts {
            rows: vec![row],
            vocab,
            difficulty: vec![0.0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(groups: &[usize], len: usize) -> Rollouts {
        Rollouts {
            rows: groups
                .iter()
                .enumerate()
                .map(|(i, &g)| Row {
                    old_logp: vec![-1.0; len],
                    entropy: vec![0.5; len],
                    old_logits: vec![0.0; len * 2],
                    group: g,
                    ..Row::sampled(vec![1], vec![3 + i as u32; len])
                })
                .collect(),
            vocab: 2,
            difficulty: vec![0.1, 0.2, 0.3][..groups.iter().max().map(|g| g + 1).unwrap_or(0)]
                .to_vec(),
        }
    }

    fn sources(r: &Rollouts) -> Vec<f64> {
        r.rows.iter().map(|r| r.source).collect()
    }

    #[test]
    fn groups_and_sources_survive_selection_and_extension() {
        let mut a = rows(&[0, 0, 1, 1], 2);
        let mut b = rows(&[0, 0], 3).select_rows(&[1, 0]);
        for r in &mut b.rows {
            r.source = 1.0;
        }
        a.extend(b);
        assert_eq!(a.groups(), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(sources(&a), vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(a.n_groups(), 3);
        assert_eq!(a.t(), 3);
        let inp = a.inputs(StepInputs {
            step: 2.0,
            total_steps: 4.0,
            epoch: 0.0,
        });
        assert_eq!(inp["source"], vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(inp["progress"], vec![0.5]);
        assert_eq!(inp["length"], vec![2.0, 2.0, 2.0, 2.0, 3.0, 3.0]);
        // The mask and the padded tokens follow the lengths.
        assert_eq!(&a.mask()[..6], &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(&a.tokens()[12..18], &[4, 4, 4, 3, 3, 3]);
        // Keeping groups 2 and 0 renumbers them in that order.
        let s = a.select_groups(&[2, 0]);
        assert_eq!(s.groups(), vec![0, 0, 1, 1]);
        assert_eq!(sources(&s), vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(s.difficulty, vec![0.1, 0.1]);
        // old_mean_logp of uniform logits over V = 2 is ln(1/2).
        let inp = s.inputs(StepInputs {
            step: 1.0,
            total_steps: 1.0,
            epoch: 0.0,
        });
        assert!((inp["old_mean_logp"][0] - 0.5f64.ln()).abs() < 1e-12);
    }

    /// Seven prompts in bundles of three: groups 0-2 are bundle 0, 3-5
    /// bundle 1, 6 bundle 2; the input `bundle` carries it per sequence.
    #[test]
    fn prompts_form_bundles_in_order() {
        let mut r = rows(&[0, 0, 1, 2, 2], 1);
        let mut more = rows(&[0, 1, 1, 2], 1);
        r.difficulty = vec![0.0; 3];
        more.difficulty = vec![0.0; 3];
        let mut tail = rows(&[0], 1);
        tail.difficulty = vec![0.0];
        r.extend(more);
        r.extend(tail);
        assert_eq!(r.groups(), vec![0, 0, 1, 2, 2, 3, 4, 4, 5, 6]);
        r.assign_bundles(3);
        let s = StepInputs {
            step: 1.0,
            total_steps: 1.0,
            epoch: 0.0,
        };
        assert_eq!(
            r.inputs(s)["bundle"],
            vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0]
        );
    }

    /// The loss mask is stored: a token inside a response (a tool's
    /// output) can be left out of the loss, while attention still reads it
    /// and `length` still counts it.
    #[test]
    fn a_stored_mask_leaves_a_token_inside_a_response_out() {
        let mut a = rows(&[0, 0], 3);
        a.rows[1].mask[1] = 0.0;
        let s = StepInputs {
            step: 1.0,
            total_steps: 1.0,
            epoch: 0.0,
        };
        assert_eq!(a.mask(), vec![1.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
        assert_eq!(a.valid(), vec![true; 6]);
        assert_eq!(a.inputs(s)["length"], vec![3.0, 3.0]);
        let batch = a.loss_batch(None, 2, s);
        assert_eq!(
            batch.tensors["mask"].data.iter().collect::<Vec<f64>>(),
            vec![1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
        );
    }

    /// Rollouts of a recipe that does not read the distribution keep no
    /// logits, and their inputs have no [B, T, V] values; with logits kept,
    /// `logits` and `old_logits` are [B·T·V].
    #[test]
    fn vocabulary_inputs_only_from_kept_logits() {
        let s = StepInputs {
            step: 1.0,
            total_steps: 1.0,
            epoch: 0.0,
        };
        let mut r = rows(&[0, 0, 1], 4);
        let kept = r.inputs(s);
        for name in inputs::VOCAB_INPUTS {
            let want = if name.contains("logits") {
                3 * 4 * 2
            } else {
                3 * 4
            };
            assert_eq!(kept[name].len(), want, "{name}");
        }
        for row in &mut r.rows {
            row.old_logits = Vec::new();
        }
        let none = r.inputs(s);
        for name in inputs::VOCAB_INPUTS {
            assert!(!none.contains_key(name), "{name}");
        }
        assert_eq!(none["old_logp"], kept["old_logp"]);
        assert!(
            r.loss_batch(None, 2, s)
                .tensors
                .keys()
                .all(|k| !k.contains("logits")),
            "no logits in the loss batch"
        );
    }
}
