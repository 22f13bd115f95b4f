//! Group rollouts: each problem's prompt sampled `group` times from a
//! model (or CURE's branching: first responses, then continuations from
//! their highest-entropy tokens), each response decoded and judged by the
//! environment, and laid out as rows ([`crate::batch::Rollouts`]).
//!
//! May import: `crate::batch`, `crate::env`, and `keel-model` (the
//! transformer, the sampler, the tokenizer); nothing else of the runtime.

use keel_model::rng::Rng;
use keel_model::sample::{self, SampleConfig};
use keel_model::tokenizer::Tokenizer;
use keel_model::transformer::Transformer;

use crate::batch::{Rollouts, Row};
use crate::env::{Environment, Problem};

/// A problem's prompt ids (every JSONL prompt, and the first generated one,
/// were encoded and rendered once when the environment was opened, so this
/// cannot fail).
pub fn encode_prompt(tok: &Tokenizer, p: &Problem) -> Vec<u32> {
    p.prompt_ids(tok).unwrap_or_default()
}

/// Each problem's encoded prompt `k` times, with the problem index of each.
fn replicate_prompts(
    tok: &Tokenizer,
    problems: &[Problem],
    k: usize,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut prompts = Vec::new();
    let mut owner = Vec::new();
    for (g, p) in problems.iter().enumerate() {
        let enc = encode_prompt(tok, p);
        for _ in 0..k {
            prompts.push(enc.clone());
            owner.push(g);
        }
    }
    (prompts, owner)
}

/// `p` with its token budget said at the end of its prompt (and of a
/// conversation's last message).
pub fn with_budget(p: &Problem, b: usize) -> Problem {
    let say = format!(" I will answer the question within {b} tokens.");
    let mut q = p.clone();
    q.prompt.push_str(&say);
    if let Some(last) = q.messages.as_mut().and_then(|m| m.last_mut())
        && let Some(c) = last.get("content").and_then(|c| c.as_str())
    {
        last["content"] = serde_json::Value::String(format!("{c}{say}"));
    }
    q
}

/// What sampling reads: the model, the environment that judges, the
/// tokenizer, and the sampler's settings.
#[derive(Clone, Copy)]
pub struct Sampler<'a> {
    pub model: &'a Transformer,
    pub env: &'a dyn Environment,
    pub tok: &'a Tokenizer,
    pub cfg: SampleConfig,
}

impl Sampler<'_> {
    /// Sample `group` responses for each problem.
    pub fn groups(&self, problems: &[Problem], group: usize, rng: &mut Rng) -> Rollouts {
        let (prompts, groups) = replicate_prompts(self.tok, problems, group);
        let samples = sample::sample(self.model, &prompts, self.cfg, rng);
        self.assemble(problems, samples, prompts, groups)
    }

    /// HBPO's budgets: each problem's `group` responses split into equal
    /// subgroups, one per budget b (in order); their prompt ends with "I
    /// will answer the question within b tokens." (a conversation's last
    /// message does) and their responses stop at min(b, max_tokens).
    /// Each row's `budget` is its b.
    pub fn budgeted(
        &self,
        problems: &[Problem],
        group: usize,
        budgets: &[usize],
        rng: &mut Rng,
    ) -> Rollouts {
        let per = (group / budgets.len().max(1)).max(1);
        let (mut prompts, mut owner, mut limits, mut row_budget) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (g, p) in problems.iter().enumerate() {
            for &b in budgets {
                let enc = encode_prompt(self.tok, &with_budget(p, b));
                for _ in 0..per {
                    prompts.push(enc.clone());
                    owner.push(g);
                    limits.push(b.min(self.cfg.max_tokens).max(1));
                    row_budget.push(b as f64);
                }
            }
        }
        let samples = sample::sample_limited(self.model, &prompts, self.cfg, &limits, rng);
        let mut out = self.assemble(problems, samples, prompts, owner);
        for (row, b) in out.rows.iter_mut().zip(row_budget) {
            row.budget = b;
        }
        out
    }

    /// CURE's branching: `first` responses per problem; each is cut at one
    /// of its `top_k` highest-entropy tokens (never the first; chosen
    /// uniformly) and `samples` continuations are drawn from the prompt and
    /// that prefix. A problem's group holds its first responses and their
    /// continuations (prefix + continuation, with the prefix's recorded
    /// log-probs).
    pub fn branched(
        &self,
        problems: &[Problem],
        (first, samples, top_k): (usize, usize, usize),
        rng: &mut Rng,
    ) -> Rollouts {
        let cfg = self.cfg;
        let (prompts, owner) = replicate_prompts(self.tok, problems, first);
        let firsts = sample::sample(self.model, &prompts, cfg, rng);
        let v = self.model.cfg.vocab;
        let mut cont_prompts = Vec::new();
        let mut limits = Vec::new();
        let mut cuts = Vec::new();
        for (i, s) in firsts.iter().enumerate() {
            let n = s.response.len();
            if n < 2 {
                cuts.push(None);
                continue;
            }
            let mut pos: Vec<usize> = (1..n).collect();
            pos.sort_by(|&a, &b| s.entropy[b].total_cmp(&s.entropy[a]).then(a.cmp(&b)));
            pos.truncate(top_k.max(1));
            let cut = pos[(rng.next_u64() % pos.len() as u64) as usize];
            cuts.push(Some(cut));
            let mut pr = prompts[i].clone();
            pr.extend_from_slice(&s.response[..cut]);
            for _ in 0..samples {
                cont_prompts.push(pr.clone());
                limits.push(cfg.max_tokens.saturating_sub(cut).max(1));
            }
        }
        let mut conts =
            sample::sample_limited(self.model, &cont_prompts, cfg, &limits, rng).into_iter();
        let (mut all, mut all_prompts, mut groups) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in firsts.into_iter().enumerate() {
            if let Some(cut) = cuts[i] {
                for _ in 0..samples {
                    let Some(c) = conts.next() else { break };
                    let mut joined = sample::Sample {
                        response: s.response[..cut].to_vec(),
                        old_logp: s.old_logp[..cut].to_vec(),
                        entropy: s.entropy[..cut].to_vec(),
                        // Empty unless the recipe reads the distribution.
                        logits: s.logits.get(..cut * v).unwrap_or_default().to_vec(),
                        truncated: c.truncated,
                    };
                    joined.response.extend(c.response);
                    joined.old_logp.extend(c.old_logp);
                    joined.entropy.extend(c.entropy);
                    joined.logits.extend(c.logits);
                    all.push(joined);
                    all_prompts.push(prompts[i].clone());
                    groups.push(owner[i]);
                }
            }
            all.push(s);
            all_prompts.push(prompts[i].clone());
            groups.push(owner[i]);
        }
        self.assemble(problems, all, all_prompts, groups)
    }

    /// Verify samples and lay them out as rollouts.
    fn assemble(
        &self,
        problems: &[Problem],
        samples: Vec<sample::Sample>,
        prompts: Vec<Vec<u32>>,
        groups: Vec<usize>,
    ) -> Rollouts {
        let tok = self.tok;
        let mut out = Rollouts {
            vocab: self.model.cfg.vocab,
            difficulty: problems.iter().map(|p| p.difficulty).collect(),
            ..Default::default()
        };
        let shared: Vec<std::sync::Arc<Problem>> = problems
            .iter()
            .map(|p| std::sync::Arc::new(p.clone()))
            .collect();
        for ((s, pr), g) in samples.into_iter().zip(prompts).zip(groups) {
            let text = tok.decode(&s.response);
            let mut verdict = self.env.verify(&problems[g], &text);
            // Steps end at byte offsets of the text; the rewards sit on the
            // tokens that hold those bytes.
            for step in &mut verdict.steps {
                step.0 = tok.token_at_byte(&s.response, step.0);
            }
            if s.truncated {
                verdict.format_ok = false;
            }
            out.rows.push(Row {
                old_logp: s.old_logp,
                entropy: s.entropy,
                old_logits: s.logits,
                group: g,
                judge: verdict.judge.unwrap_or(0.0),
                problem: shared.get(g).cloned().unwrap_or_default(),
                verdict,
                truncated: s.truncated,
                ..Row::sampled(pr, s.response)
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::TRAIN_STREAM;
    use crate::env::arithmetic::{Arithmetic, Prm};
    use burn::tensor::Device;
    use keel_model::tokenizer::CharTokenizer;
    use keel_model::transformer::{ModelConfig, Weights};

    /// A tiny random policy of `context` positions, the arithmetic task
    /// and two of its problems, and the character tokenizer.
    fn fixture(context: usize) -> (Transformer, Arithmetic, Vec<Problem>, Tokenizer) {
        let cfg = ModelConfig::small(88, 16, 1, 2, context, false, 5);
        let policy = Transformer::new(cfg.clone(), &Weights::init(&cfg), &Device::flex());
        let task = Arithmetic {
            seed: 1,
            difficulty: 0.5,
            prm: Prm::Exact,
            natural: false,
        };
        let problems: Vec<Problem> = (0..2).map(|i| task.problem(TRAIN_STREAM, i)).collect();
        (
            policy,
            task,
            problems,
            Tokenizer::Char(CharTokenizer::default()),
        )
    }

    /// Sampling at temperature 1 (no top-p) up to `max_tokens`.
    fn config(tok: &Tokenizer, max_tokens: usize, keep_logits: bool) -> SampleConfig {
        SampleConfig {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens,
            eos: tok.eos(),
            keep_logits,
            draw_limit: usize::MAX,
        }
    }

    /// HBPO's budgets: a group of 4 with budgets [3, 5] is two subgroups of
    /// two; each row's prompt says its budget, its response stops at it,
    /// and `budget` holds it.
    #[test]
    fn budgets_split_groups_say_the_budget_and_stop_at_it() {
        let (policy, task, problems, tok) = fixture(64);
        let sampler = Sampler {
            model: &policy,
            env: &task,
            tok: &tok,
            cfg: config(&tok, 20, false),
        };
        let r = sampler.budgeted(&problems, 4, &[3, 5], &mut Rng::new(4));
        assert_eq!(r.len(), 8);
        assert_eq!(r.groups(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
        let budgets: Vec<f64> = r.rows.iter().map(|x| x.budget).collect();
        assert_eq!(budgets, vec![3.0, 3.0, 5.0, 5.0, 3.0, 3.0, 5.0, 5.0]);
        for row in &r.rows {
            assert!(row.response.len() <= row.budget as usize, "{row:?}");
            let prompt = tok.decode(&row.prompt);
            let want = format!("within {} tokens.", row.budget);
            assert!(prompt.ends_with(&want), "{prompt}");
        }
    }

    /// Branched groups: every continuation starts with a prefix of its first
    /// response, cut at one of that response's highest-entropy tokens, and
    /// carries the prefix's recorded log-probs.
    #[test]
    fn branching_cuts_at_high_entropy_tokens_and_keeps_prefixes() {
        let (policy, task, problems, tok) = fixture(48);
        let sc = config(&tok, 10, true);
        let mut rng = Rng::new(9);
        let (first, samples, top_k) = (3, 2, 2);
        let sampler = Sampler {
            model: &policy,
            env: &task,
            tok: &tok,
            cfg: sc,
        };
        let r = sampler.branched(&problems, (first, samples, top_k), &mut rng);
        // With these seeds every first response has at least two tokens, so
        // each first response comes with its continuations: rows in blocks of
        // [continuation × samples, first].
        assert_eq!(r.len(), 2 * first * (1 + samples));
        let mut checked = 0;
        for block in (0..r.len()).collect::<Vec<_>>().chunks(samples + 1) {
            let fi = block[samples];
            let f = &r.rows[fi].response;
            let mut order: Vec<usize> = (1..f.len()).collect();
            order.sort_by(|&a, &b| {
                r.rows[fi].entropy[b]
                    .total_cmp(&r.rows[fi].entropy[a])
                    .then(a.cmp(&b))
            });
            order.truncate(top_k);
            for &c in &block[..samples] {
                assert_eq!(r.rows[c].group, r.rows[fi].group);
                // The cut is one of the top-k positions: the continuation
                // shares exactly that prefix (and its recorded log-probs).
                let ok = order.iter().any(|&cut| {
                    r.rows[c].response.len() > cut
                        && r.rows[c].response[..cut] == f[..cut]
                        && r.rows[c].old_logp[..cut] == r.rows[fi].old_logp[..cut]
                });
                assert!(ok, "row {c} does not continue row {fi} at {order:?}");
                assert!(
                    r.rows[c].response.len() <= 10,
                    "continuation over the token limit"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * first * samples);
        assert_eq!(r.n_groups(), 2);
    }
}
