//! Sampling with the KV cache: temperature, top-p, a token limit; records the
//! behaviour log-prob and entropy of every sampled token.

use crate::model::{Policy, to_vec};
use crate::rng::Rng;
use crate::tokenizer::{EOS, PAD};

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub response: Vec<u32>,
    /// log π(token) under the temperature-scaled distribution.
    pub old_logp: Vec<f64>,
    pub entropy: Vec<f64>,
    /// Generation hit `max_tokens` (or the context) before EOS.
    pub truncated: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct SampleConfig {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
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
    keep.last().map(|&i| i as u32).unwrap_or(EOS)
}

/// Sample one response per prompt.
pub fn sample(
    policy: &Policy,
    prompts: &[Vec<u32>],
    cfg: SampleConfig,
    rng: &mut Rng,
) -> Vec<Sample> {
    let b = prompts.len();
    let (toks, valid, p) = left_pad(prompts);
    let budget = cfg
        .max_tokens
        .min(policy.cfg.context.saturating_sub(p))
        .max(1);
    let mut out: Vec<Sample> = (0..b)
        .map(|_| Sample {
            response: Vec::new(),
            old_logp: Vec::new(),
            entropy: Vec::new(),
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
            let (lp, ent) = log_probs(&z[bi * v..(bi + 1) * v], cfg.temperature);
            let tok = draw(&lp, cfg.top_p, rng);
            let s = &mut out[bi];
            s.response.push(tok);
            s.old_logp.push(lp[tok as usize]);
            s.entropy.push(ent);
            next[bi] = tok;
            if tok == EOS {
                done[bi] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == budget {
            break;
        }
        let live: Vec<bool> = next.iter().zip(&done).map(|(_, &d)| !d).collect();
        logits = policy.decode(&mut cache, &next, &live, p + step);
    }
    for (s, d) in out.iter_mut().zip(&done) {
        s.truncated = !d;
    }
    out
}
