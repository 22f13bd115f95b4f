//! Sampling with the KV cache: temperature, top-p, a token limit; records the
//! behaviour log-prob and entropy of every sampled token.

use crate::model::{Policy, to_vec};
use crate::rng::Rng;
use crate::tokenizer::PAD;

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
}

/// Left-pad `prompts` to a common length: tokens and validity, row-major.
pub fn left_pad(prompts: &[Vec<u32>]) -> (Vec<u32>, Vec<bool>, usize) {
    let p = prompts.iter().map(|x| x.len()).max().unwrap_or(1).max(1);
    let mut toks = Vec::with_capacity(prompts.len() * p);
    let mut valid = Vec::with_capacity(prompts.len() * p);
    for pr in prompts {
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
pub fn log_probs(z: &[f32], temperature: f64) -> (Vec<f64>, f64) {
    let s: Vec<f64> = z.iter().map(|&x| x as f64 / temperature).collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    let lp: Vec<f64> = s.iter().map(|x| x - lse).collect();
    let ent = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
    (lp, ent)
}

/// Draw from `lp` restricted to the smallest set of tokens with mass ≥ top_p.
fn draw(lp: &[f64], top_p: f64, rng: &mut Rng) -> u32 {
    let mut order: Vec<usize> = (0..lp.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut keep = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        keep.push(i);
        mass += lp[i].exp();
        if mass >= top_p {
            break;
        }
    }
    let u = rng.uniform() * mass;
    let mut acc = 0.0;
    for &i in &keep {
        acc += lp[i].exp();
        if u < acc {
            return i as u32;
        }
    }
    keep.last().map(|&i| i as u32).unwrap_or(0)
}

/// Sample one response per prompt.
pub fn sample(
    policy: &Policy,
    prompts: &[Vec<u32>],
    cfg: SampleConfig,
    rng: &mut Rng,
) -> Vec<Sample> {
    sample_limited(policy, prompts, cfg, &[], rng)
}

/// Sample one response per prompt, row `i` stopping after `limits[i]` tokens
/// (`cfg.max_tokens` where `limits` is shorter).
pub fn sample_limited(
    policy: &Policy,
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
            let (lp, ent) = log_probs(row, cfg.temperature);
            let tok = draw(&lp, cfg.top_p, rng);
            let s = &mut out[bi];
            s.response.push(tok);
            s.old_logp.push(lp[tok as usize]);
            s.entropy.push(ent);
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
        let lp: Vec<f64> = [0.6f64, 0.3, 0.1].iter().map(|p| p.ln()).collect();
        let mut rng = Rng::new(1);
        assert!((0..200).all(|_| draw(&lp, 0.5, &mut rng) == 0));
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[draw(&lp, 0.85, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "outside the nucleus");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!(
            (ratio - 2.0).abs() < 0.1,
            "renormalised within the nucleus: {ratio}"
        );
        let mut all = [0usize; 3];
        for _ in 0..30_000 {
            all[draw(&lp, 1.0, &mut rng) as usize] += 1;
        }
        assert!((all[2] as f64 / 30_000.0 - 0.1).abs() < 0.01);
    }

    #[test]
    fn left_padding() {
        let (t, v, p) = left_pad(&[vec![1, 5], vec![1, 6, 7, 8]]);
        assert_eq!(p, 4);
        assert_eq!(t, vec![PAD, PAD, 1, 5, 1, 6, 7, 8]);
        assert_eq!(v, vec![false, false, true, true, true, true, true, true]);
    }
}
