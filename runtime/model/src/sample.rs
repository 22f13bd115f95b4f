//! Sampling with the KV cache: temperature, top-p, a token limit; records the
//! behaviour log-prob and entropy of every sampled token.

use crate::rng::Rng;
use crate::tokenizer::PAD;
use crate::transformer::{Transformer, to_vec};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub response: Vec<u32>,
    /// log π(token) under the temperature-scaled distribution.
    pub old_logp: Vec<f64>,
    pub entropy: Vec<f64>,
    /// The temperature-scaled logits of every step, [len, V] row-major.
    pub logits: Vec<f32>,
    /// Generation hit `max_tokens` (or the context) before EOS.
    pub truncated: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct SampleConfig {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    /// The end-of-sequence token.
    pub eos: u32,
    /// Keep each sampled position's (tempered) logits, [len, V] a sample:
    /// only a recipe that reads the behaviour policy's distribution needs
    /// them.
    pub keep_logits: bool,
    /// Draw only among the first ids: a checkpoint's embedding can have
    /// more rows than its tokenizer has ids (Qwen: 151,936 and 151,669);
    /// the rows beyond are never sampled.
    pub draw_limit: usize,
}

/// Left-pad `prompts` to a common length: tokens and validity, row-major.
pub fn left_pad<P: AsRef<[u32]>>(prompts: &[P]) -> (Vec<u32>, Vec<bool>, usize) {
    let p = prompts
        .iter()
        .map(|x| x.as_ref().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut toks = Vec::with_capacity(prompts.len() * p);
    let mut valid = Vec::with_capacity(prompts.len() * p);
    for pr in prompts {
        let pr = pr.as_ref();
        for _ in pr.len()..p {
            toks.push(PAD);
            valid.push(false);
        }
        toks.extend_from_slice(pr);
        valid.extend(std::iter::repeat_n(true, pr.len()));
    }
    (toks, valid, p)
}

/// log-softmax of `z / temperature` (f64) and its entropy.
#[cfg(test)]
fn log_probs(z: &[f32], temperature: f64) -> (Vec<f64>, f64) {
    let st = Stats::new(z, temperature);
    let lp: Vec<f64> = z.iter().map(|&x| x as f64 / temperature - st.lse).collect();
    (lp, st.entropy)
}

/// One row's tempered distribution, summarised in two passes over the
/// logits without storing anything of vocabulary size: the max, the
/// log-sum-exp and the entropy H = lse − Σ p·s.
struct Stats {
    t: f64,
    max: f64,
    /// Σ exp(s − max).
    z: f64,
    lse: f64,
    entropy: f64,
}

impl Stats {
    fn new(row: &[f32], t: f64) -> Stats {
        let max = row
            .iter()
            .map(|&x| x as f64 / t)
            .fold(f64::NEG_INFINITY, f64::max);
        let (mut z, mut zs) = (0.0, 0.0);
        for &x in row {
            let s = x as f64 / t;
            let e = (s - max).exp();
            z += e;
            zs += e * s;
        }
        let lse = max + z.ln();
        Stats {
            t,
            max,
            z,
            lse,
            entropy: lse - zs / z,
        }
    }

    fn logp(&self, x: f32) -> f64 {
        x as f64 / self.t - self.lse
    }
}

/// Draw from the tempered distribution of `row` restricted to the smallest
/// set of tokens with mass ≥ top_p. At `top_p ≥ 1` that is the whole
/// vocabulary, drawn by one pass in index order (no sort); below it, the
/// nucleus is found by partial selection: the k most likely tokens (k = 64,
/// doubled until their mass reaches top_p) are selected in O(V) and only
/// they are sorted. Ties order by token id, so the nucleus is the one a
/// full sort gives.
fn draw(row: &[f32], st: &Stats, top_p: f64, rng: &mut Rng) -> u32 {
    if top_p >= 1.0 {
        let u = rng.uniform() * st.z;
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &x) in row.iter().enumerate() {
            let e = (x as f64 / st.t - st.max).exp();
            if e > 0.0 {
                last = i;
            }
            acc += e;
            if u < acc {
                return i as u32;
            }
        }
        return last as u32;
    }
    let before = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..row.len()).collect();
    let v = order.len();
    let mut k = 64.min(v);
    loop {
        if k < v {
            order.select_nth_unstable_by(k - 1, before);
        }
        let top = &mut order[..k];
        top.sort_by(before);
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in top.iter() {
            keep += 1;
            mass += st.logp(row[i]).exp();
            if mass >= top_p {
                break;
            }
        }
        if mass >= top_p || k == v {
            let u = rng.uniform() * mass;
            let mut acc = 0.0;
            for &i in &top[..keep] {
                acc += st.logp(row[i]).exp();
                if u < acc {
                    return i as u32;
                }
            }
            return top[keep.saturating_sub(1)] as u32;
        }
        k = (2 * k).min(v);
    }
}

/// One draw from a row of logits at a temperature and top-p: the token,
/// its log-probability under the tempered distribution, and the entropy —
/// what the sampler records for every generated token.
pub fn draw_row(row: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> (u32, f64, f64) {
    let st = Stats::new(row, temperature);
    let tok = draw(row, &st, top_p, rng);
    let lp = row
        .get(tok as usize)
        .map_or(f64::NEG_INFINITY, |&x| st.logp(x));
    (tok, lp, st.entropy)
}

/// Sample one response per prompt.
pub fn sample(
    policy: &Transformer,
    prompts: &[Vec<u32>],
    cfg: SampleConfig,
    rng: &mut Rng,
) -> Vec<Sample> {
    sample_limited(policy, prompts, cfg, &[], rng)
}

/// Sample one response per prompt, row `i` stopping after `limits[i]` tokens
/// (`cfg.max_tokens` where `limits` is shorter).
pub fn sample_limited(
    policy: &Transformer,
    prompts: &[Vec<u32>],
    cfg: SampleConfig,
    limits: &[usize],
    rng: &mut Rng,
) -> Vec<Sample> {
    let b = prompts.len();
    if b == 0 {
        return Vec::new();
    }
    let (toks, valid, p) = left_pad(prompts);
    let budget = cfg
        .max_tokens
        .min(policy.cfg.context.saturating_sub(p))
        .max(1);
    let limit = |i: usize| limits.get(i).copied().unwrap_or(budget).clamp(1, budget);
    let mut out: Vec<Sample> = (0..b)
        .map(|_| Sample {
            response: Vec::new(),
            old_logp: Vec::new(),
            entropy: Vec::new(),
            logits: Vec::new(),
            truncated: false,
        })
        .collect();
    let mut done = vec![false; b];
    let (mut logits, mut cache) = policy.prefill(&toks, &valid, b, p);
    for step in 0..budget {
        let z = to_vec(&logits);
        let v = policy.cfg.vocab;
        let mut next = vec![PAD; b];
        for bi in 0..b {
            if done[bi] {
                continue;
            }
            let row = &z[bi * v..(bi + 1) * v];
            let drawn = &row[..cfg.draw_limit.clamp(1, v)];
            let (tok, lp, entropy) = draw_row(drawn, cfg.temperature, cfg.top_p, rng);
            let s = &mut out[bi];
            s.response.push(tok);
            s.old_logp.push(lp);
            s.entropy.push(entropy);
            if cfg.keep_logits {
                s.logits
                    .extend(row.iter().map(|&x| (x as f64 / cfg.temperature) as f32));
            }
            next[bi] = tok;
            if tok == cfg.eos {
                done[bi] = true;
            } else if s.response.len() >= limit(bi) {
                done[bi] = true;
                s.truncated = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == budget {
            break;
        }
        let live: Vec<bool> = next.iter().zip(&done).map(|(_, &d)| !d).collect();
        logits = policy.decode(&mut cache, &next, &live, p + step);
    }
    for (s, d) in out.iter_mut().zip(&done) {
        if !d {
            s.truncated = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_and_entropy() {
        let (lp, h) = log_probs(&[0.0, 0.0, 0.0, 0.0], 1.0);
        assert!(lp.iter().all(|&l| (l + 4f64.ln()).abs() < 1e-12));
        assert!((h - 4f64.ln()).abs() < 1e-12);
        // Temperature 2 halves the logits.
        let (a, _) = log_probs(&[2.0, 0.0], 2.0);
        let (b, _) = log_probs(&[1.0, 0.0], 1.0);
        assert!((a[0] - b[0]).abs() < 1e-12);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let lp: Vec<f32> = [0.6f32, 0.3, 0.1].iter().map(|p| p.ln()).collect();
        let st = Stats::new(&lp, 1.0);
        let draw = |p: f64, rng: &mut Rng| draw(&lp, &st, p, rng);
        let mut rng = Rng::new(1);
        assert!((0..200).all(|_| draw(0.5, &mut rng) == 0));
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[draw(0.85, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "outside the nucleus");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!(
            (ratio - 2.0).abs() < 0.1,
            "renormalised within the nucleus: {ratio}"
        );
        let mut all = [0usize; 3];
        for _ in 0..30_000 {
            all[draw(1.0, &mut rng) as usize] += 1;
        }
        assert!((all[2] as f64 / 30_000.0 - 0.1).abs() < 0.01);
    }

    /// At a real vocabulary's size the partial selection finds the nucleus
    /// a full sort finds (ties by token id), including one wider than the
    /// first 64 candidates, and top_p = 1 draws in proportion.
    #[test]
    fn partial_selection_matches_a_full_sort() {
        let mut rng = Rng::new(9);
        let v = 2000;
        // Many equal logits (ties) and a long flat tail.
        let row: Vec<f32> = (0..v)
            .map(|i| {
                if i % 7 == 0 {
                    2.0
                } else {
                    (rng.uniform() * 3.0) as f32 - 1.5
                }
            })
            .collect();
        let st = Stats::new(&row, 0.7);
        for p in [0.05, 0.5, 0.9, 0.99] {
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut mass = 0.0;
            let mut nucleus = std::collections::BTreeSet::new();
            for &i in &order {
                nucleus.insert(i as u32);
                mass += st.logp(row[i]).exp();
                if mass >= p {
                    break;
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..600 {
                let t = draw(&row, &st, p, &mut rng);
                assert!(nucleus.contains(&t), "p={p}: {t} outside the nucleus");
                seen.insert(t);
            }
            if nucleus.len() <= 20 {
                assert_eq!(seen, nucleus, "p={p}: every nucleus token is drawn");
            }
        }
        // Entropy from the two-pass summary equals the direct sum.
        let lp: Vec<f64> = row.iter().map(|&x| st.logp(x)).collect();
        let h: f64 = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
        assert!((h - st.entropy).abs() < 1e-10, "{h} vs {}", st.entropy);
    }

    #[test]
    fn left_padding() {
        let (t, v, p) = left_pad(&[vec![1, 5], vec![1, 6, 7, 8]]);
        assert_eq!(p, 4);
        assert_eq!(t, vec![PAD, PAD, 1, 5, 1, 6, 7, 8]);
        assert_eq!(v, vec![false, false, true, true, true, true, true, true]);
    }
}
