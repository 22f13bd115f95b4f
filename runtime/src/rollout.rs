//! One step's rollouts laid out as the batch of docs/batch-format.md: the
//! inputs the recipe's loss and host code read.

use std::collections::HashMap;

use keel_compiler::batch::Batch;
use keel_compiler::interp::Shape;

use crate::hostprog::BatchView;
use crate::tasks::Verdict;
use crate::tokenizer::PAD;

#[derive(Clone, Debug, Default)]
pub struct Rollouts {
    /// Per row: the prompt tokens (BOS first).
    pub prompts: Vec<Vec<u32>>,
    pub responses: Vec<Vec<u32>>,
    pub old_logp: Vec<Vec<f64>>,
    pub entropy: Vec<Vec<f64>>,
    /// Per row: the behaviour policy's (temperature-scaled) logits, [len·V].
    pub old_logits: Vec<Vec<f32>>,
    /// Vocabulary size of `old_logits`.
    pub vocab: usize,
    pub ref_logp: Option<Vec<Vec<f64>>>,
    /// Per row: its group (prompt) index, 0..n_groups.
    pub group: Vec<usize>,
    pub verdicts: Vec<Verdict>,
    pub truncated: Vec<bool>,
    /// Per row: 0 on-policy, 1 a rehearsal sample of the initial policy
    /// (empty: all 0).
    pub source: Vec<f64>,
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

impl Rollouts {
    pub fn len(&self) -> usize {
        self.responses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }

    pub fn n_groups(&self) -> usize {
        self.group.iter().copied().max().map(|g| g + 1).unwrap_or(0)
    }

    /// Keep the rows of the listed groups (renumbered in order).
    pub fn select_groups(&self, groups: &[usize]) -> Rollouts {
        let rows: Vec<usize> = groups
            .iter()
            .flat_map(|&g| (0..self.len()).filter(move |&r| self.group[r] == g))
            .collect();
        self.select_rows(&rows)
    }

    /// Keep the listed rows; each keeps its group (renumbered in order of
    /// first appearance).
    pub fn select_rows(&self, rows: &[usize]) -> Rollouts {
        let mut out = Rollouts {
            ref_logp: self.ref_logp.as_ref().map(|_| Vec::new()),
            vocab: self.vocab,
            ..Default::default()
        };
        let mut map: Vec<(usize, usize)> = Vec::new();
        for &r in rows.iter().filter(|&&r| r < self.len()) {
            let g = self.group[r];
            let new = match map.iter().find(|m| m.0 == g) {
                Some(m) => m.1,
                None => {
                    map.push((g, map.len()));
                    out.difficulty
                        .push(self.difficulty.get(g).copied().unwrap_or(0.0));
                    map.len() - 1
                }
            };
            out.prompts.push(self.prompts[r].clone());
            out.responses.push(self.responses[r].clone());
            out.old_logp.push(self.old_logp[r].clone());
            out.entropy.push(self.entropy[r].clone());
            out.old_logits
                .push(self.old_logits.get(r).cloned().unwrap_or_default());
            if let (Some(dst), Some(src)) = (out.ref_logp.as_mut(), self.ref_logp.as_ref()) {
                dst.push(src[r].clone());
            }
            out.group.push(new);
            out.verdicts.push(self.verdicts[r].clone());
            out.truncated.push(self.truncated[r]);
            out.source.push(self.source.get(r).copied().unwrap_or(0.0));
        }
        out
    }

    /// Append another set of rollouts (its groups renumbered after ours).
    pub fn extend(&mut self, other: Rollouts) {
        let base = self.n_groups();
        let (n_self, n_other) = (self.len(), other.len());
        self.source.resize(n_self, 0.0);
        let mut src = other.source;
        src.resize(n_other, 0.0);
        self.source.extend(src);
        self.prompts.extend(other.prompts);
        self.responses.extend(other.responses);
        self.old_logp.extend(other.old_logp);
        self.entropy.extend(other.entropy);
        self.old_logits.extend(other.old_logits);
        self.vocab = self.vocab.max(other.vocab);
        match (self.ref_logp.as_mut(), other.ref_logp) {
            (Some(a), Some(b)) => a.extend(b),
            _ => self.ref_logp = None,
        }
        self.group.extend(other.group.into_iter().map(|g| g + base));
        self.verdicts.extend(other.verdicts);
        self.truncated.extend(other.truncated);
        self.difficulty.extend(other.difficulty);
    }

    /// The padded response length.
    pub fn t(&self) -> usize {
        self.responses
            .iter()
            .map(|r| r.len())
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn shape(&self) -> Shape {
        Shape {
            b: self.len(),
            t: self.t(),
            v: self.vocab.max(1),
            group_of: self.group.clone(),
            n_groups: self.n_groups(),
        }
    }

    pub fn mask(&self) -> Vec<f64> {
        let t = self.t();
        let mut m = vec![0.0; self.len() * t];
        for (r, resp) in self.responses.iter().enumerate() {
            for j in 0..resp.len() {
                m[r * t + j] = 1.0;
            }
        }
        m
    }

    /// Response tokens [B·T], PAD beyond each response.
    pub fn tokens(&self) -> Vec<u32> {
        let t = self.t();
        let mut out = vec![PAD; self.len() * t];
        for (r, resp) in self.responses.iter().enumerate() {
            out[r * t..r * t + resp.len()].copy_from_slice(resp);
        }
        out
    }

    fn token_level(&self, rows: &[Vec<f64>]) -> Vec<f64> {
        let t = self.t();
        let mut out = vec![0.0; self.len() * t];
        for (r, row) in rows.iter().enumerate() {
            for (j, x) in row.iter().enumerate().take(t) {
                out[r * t + j] = *x;
            }
        }
        out
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
    /// step level [1].
    pub fn inputs(&self, s: StepInputs) -> HashMap<String, Vec<f64>> {
        let t = self.t();
        let b = self.len();
        let mut m = HashMap::new();
        let f = |x: bool| if x { 1.0 } else { 0.0 };
        m.insert("old_logp".into(), self.token_level(&self.old_logp));
        // Before the update the current policy is the behaviour policy.
        m.insert("logp".into(), self.token_level(&self.old_logp));
        m.insert("entropy".into(), self.token_level(&self.entropy));
        // The behaviour policy's distribution, [B, T, V], only from rollouts
        // that kept their logits (for a recipe that reads it, see
        // [`Rollouts::VOCAB_INPUTS`]).
        if self.keeps_logits() {
            self.vocab_inputs(&mut m);
        }
        m.insert(
            "tokens".into(),
            self.tokens().iter().map(|&x| x as f64).collect(),
        );
        m.insert("mask".into(), self.mask());
        // Present whenever the recipe reads it; zeros otherwise (an empty
        // batch of step-level evaluation has none).
        match &self.ref_logp {
            Some(r) => m.insert("ref_logp".into(), self.token_level(r)),
            None => m.insert("ref_logp".into(), vec![0.0; b * t]),
        };
        let mut step_reward = vec![0.0; b * t];
        let mut step_end = vec![0.0; b * t];
        for (r, v) in self.verdicts.iter().enumerate() {
            for &(pos, val) in &v.steps {
                if pos < t && pos < self.responses[r].len() {
                    step_reward[r * t + pos] = val;
                    step_end[r * t + pos] = 1.0;
                }
            }
        }
        m.insert("step_reward".into(), step_reward);
        m.insert("step_end".into(), step_end);
        m.insert(
            "correct".into(),
            self.verdicts.iter().map(|v| f(v.correct)).collect(),
        );
        m.insert(
            "reward".into(),
            self.verdicts.iter().map(|v| f(v.correct)).collect(),
        );
        m.insert(
            "format_ok".into(),
            self.verdicts.iter().map(|v| f(v.format_ok)).collect(),
        );
        m.insert(
            "truncated".into(),
            self.truncated.iter().map(|&x| f(x)).collect(),
        );
        m.insert(
            "length".into(),
            self.responses.iter().map(|r| r.len() as f64).collect(),
        );
        m.insert(
            "group".into(),
            self.group.iter().map(|&g| g as f64).collect(),
        );
        m.insert("index".into(), (0..b).map(|i| i as f64).collect());
        let mut source = self.source.clone();
        source.resize(b, 0.0);
        m.insert("source".into(), source);
        let mut pos = vec![0.0; b * t];
        for r in 0..b {
            for j in 0..t {
                pos[r * t + j] = j as f64;
            }
        }
        m.insert("position".into(), pos);
        m.insert("step".into(), vec![s.step]);
        m.insert("total_steps".into(), vec![s.total_steps]);
        m.insert(
            "progress".into(),
            vec![(s.step / s.total_steps.max(1.0)).min(1.0)],
        );
        m.insert("epoch".into(), vec![s.epoch]);
        m
    }

    /// Inputs read from the behaviour policy's distribution: a run keeps
    /// the sampled positions' logits only when its recipe reads one.
    pub const VOCAB_INPUTS: [&'static str; 4] =
        ["logits", "old_logits", "mean_logp", "old_mean_logp"];

    /// Whether the rows carry the behaviour policy's distribution (they
    /// kept their logits; an empty batch counts as carrying it).
    fn keeps_logits(&self) -> bool {
        self.len() * self.t() == 0 || self.old_logits.iter().any(|r| !r.is_empty())
    }

    /// The kept logits laid out [B·T·V], zeros past each response.
    fn old_logits_flat(&self) -> Vec<f32> {
        let (t, v) = (self.t(), self.vocab.max(1));
        let mut z = vec![0.0; self.len() * t * v];
        for (r, row) in self.old_logits.iter().enumerate() {
            let n = row.len().min(t * v) / v * v;
            z[r * t * v..r * t * v + n].copy_from_slice(&row[..n]);
        }
        z
    }

    /// `logits`, `old_logits` ([B·T·V], before the update the current
    /// policy is the behaviour policy), `mean_logp` and `old_mean_logp`.
    fn vocab_inputs(&self, m: &mut HashMap<String, Vec<f64>>) {
        let t = self.t();
        let v = self.vocab.max(1);
        let z: Vec<f64> = self.old_logits_flat().iter().map(|&x| x as f64).collect();
        let mut mean_lp = vec![0.0; self.len() * t];
        for (r, row) in self.old_logits.iter().enumerate() {
            for (j, tok) in row.chunks_exact(v).enumerate().take(t) {
                let m = tok.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
                let lse = m + tok.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                mean_lp[r * t + j] = tok.iter().map(|&x| x as f64 - lse).sum::<f64>() / v as f64;
            }
        }
        m.insert("logits".into(), z.clone());
        m.insert("old_logits".into(), z);
        m.insert("mean_logp".into(), mean_lp.clone());
        m.insert("old_mean_logp".into(), mean_lp);
    }

    /// The loss batch for these rows, with the current policy's logits
    /// [B·T·V] (already divided by the sampling temperature) when given.
    pub fn loss_batch(&self, logits: Option<Vec<f32>>, v: usize, s: StepInputs) -> Batch {
        let t = self.t();
        let b = self.len();
        let inputs = self.inputs(s);
        let mut batch = Batch::default();
        batch.insert("mask", "f32", vec![b, t], self.mask());
        if let Some(z) = logits {
            batch.insert_f32("logits", "f32", vec![b, t, v], z);
        }
        batch.insert(
            "tokens",
            "i64",
            vec![b, t],
            self.tokens()
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<f64>>(),
        );
        for name in ["old_logp", "ref_logp", "step_reward", "old_mean_logp"] {
            if let Some(x) = inputs.get(name) {
                batch.insert(name, "f32", vec![b, t], x.clone());
            }
        }
        if self.keeps_logits() {
            batch.insert_f32(
                "old_logits",
                "f32",
                vec![b, t, self.vocab.max(1)],
                self.old_logits_flat(),
            );
        }
        batch.insert("step_end", "u8", vec![b, t], inputs["step_end"].clone());
        for name in ["correct", "format_ok", "truncated"] {
            batch.insert(name, "u8", vec![b], inputs[name].clone());
        }
        batch.insert("reward", "f32", vec![b], inputs["reward"].clone());
        batch.insert("length", "i64", vec![b], inputs["length"].clone());
        batch.insert("group", "i64", vec![b], inputs["group"].clone());
        batch.insert("source", "i64", vec![b], inputs["source"].clone());
        batch.insert("step", "i64", vec![], vec![s.step]);
        batch.insert("total_steps", "i64", vec![], vec![s.total_steps]);
        batch.insert("epoch", "i64", vec![], vec![s.epoch]);
        batch.insert("progress", "f32", vec![], inputs["progress"].clone());
        batch
    }
}

/// Names of the batch tensors `loss_batch` provides (for compiling the loss).
pub fn provided(name: &str, has_ref: bool) -> bool {
    matches!(
        name,
        "mask"
            | "logits"
            | "tokens"
            | "old_logp"
            | "step_reward"
            | "step_end"
            | "correct"
            | "format_ok"
            | "truncated"
            | "reward"
            | "length"
            | "group"
            | "step"
            | "total_steps"
            | "epoch"
            | "progress"
            | "old_logits"
            | "old_mean_logp"
    ) || (name == "ref_logp" && has_ref)
        || name == "source"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(groups: &[usize], len: usize) -> Rollouts {
        let n = groups.len();
        Rollouts {
            prompts: vec![vec![1]; n],
            responses: (0..n).map(|i| vec![3 + i as u32; len]).collect(),
            old_logp: vec![vec![-1.0; len]; n],
            entropy: vec![vec![0.5; len]; n],
            old_logits: vec![vec![0.0; len * 2]; n],
            vocab: 2,
            ref_logp: None,
            group: groups.to_vec(),
            verdicts: vec![Verdict::default(); n],
            truncated: vec![false; n],
            source: Vec::new(),
            difficulty: vec![0.1, 0.2, 0.3][..groups.iter().max().map(|g| g + 1).unwrap_or(0)]
                .to_vec(),
        }
    }

    #[test]
    fn groups_and_sources_survive_selection_and_extension() {
        let mut a = rows(&[0, 0, 1, 1], 2);
        let mut b = rows(&[0, 0], 3).select_rows(&[1, 0]);
        b.source = vec![1.0; 2];
        a.extend(b);
        assert_eq!(a.group, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(a.source, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
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
        assert_eq!(s.group, vec![0, 0, 1, 1]);
        assert_eq!(s.source, vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(s.difficulty, vec![0.1, 0.1]);
        // old_mean_logp of uniform logits over V = 2 is ln(1/2).
        let inp = s.inputs(StepInputs {
            step: 1.0,
            total_steps: 1.0,
            epoch: 0.0,
        });
        assert!((inp["old_mean_logp"][0] - 0.5f64.ln()).abs() < 1e-12);
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
        for name in Rollouts::VOCAB_INPUTS {
            let want = if name.contains("logits") {
                3 * 4 * 2
            } else {
                3 * 4
            };
            assert_eq!(kept[name].len(), want, "{name}");
        }
        r.old_logits = vec![Vec::new(); 3];
        let none = r.inputs(s);
        for name in Rollouts::VOCAB_INPUTS {
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
