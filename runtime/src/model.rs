//! The policy: a decoder-only transformer on burn tensors — token embedding,
//! blocks of RMSNorm → causal self-attention with rotary positions (optional
//! qk-norm) → RMSNorm → SwiGLU, a final RMSNorm and an untied output layer.
//!
//! The weights are a flat list of named rank-2 tensors (norm gains are
//! [1, d]), so saving, loading, the optimizer and gradient clipping are plain
//! loops over one list. Prompts are left-padded: padded keys are masked out and
//! rotary positions are relative, so a prompt's padding never changes what the
//! model computes for it.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, codes};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
    pub qk_norm: bool,
    pub seed: u64,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !(self.d_model / self.heads).is_multiple_of(2)
        {
            return Err(Error::new(
                codes::MODEL_SETTING,
                format!(
                    "model.d_model = {} is not a multiple of 2 × model.heads = {}",
                    self.d_model, self.heads
                ),
                "rotary positions need an even head width: choose d_model divisible by 2·heads (e.g. d_model = 64, heads = 4)",
            )
            .at("model.heads"));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    pub fn hidden(&self) -> usize {
        // SwiGLU width: 8/3 · d rounded up to a multiple of 8.
        (8 * self.d_model / 3).div_ceil(8) * 8
    }

    /// Names and shapes of every weight, in a fixed order.
    pub fn layout(&self) -> Vec<(String, [usize; 2])> {
        let d = self.d_model;
        let h = self.hidden();
        let mut out = vec![("embed".to_string(), [self.vocab, d])];
        for l in 0..self.layers {
            let p = |n: &str| format!("layers.{l}.{n}");
            out.push((p("attn_norm"), [1, d]));
            out.push((p("wq"), [d, d]));
            out.push((p("wk"), [d, d]));
            out.push((p("wv"), [d, d]));
            out.push((p("wo"), [d, d]));
            if self.qk_norm {
                out.push((p("q_norm"), [1, self.head_dim()]));
                out.push((p("k_norm"), [1, self.head_dim()]));
            }
            out.push((p("mlp_norm"), [1, d]));
            out.push((p("w1"), [d, h]));
            out.push((p("w3"), [d, h]));
            out.push((p("w2"), [h, d]));
        }
        out.push(("final_norm".to_string(), [1, d]));
        out.push(("head".to_string(), [d, self.vocab]));
        out
    }
}

/// Weights as host vectors (f32), the form checkpoints store.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub names: Vec<String>,
    pub shapes: Vec<[usize; 2]>,
    pub data: Vec<Vec<f32>>,
}

impl Weights {
    /// Seeded initial weights: N(0, 0.02), output projections scaled by
    /// 1/√(2·layers), norm gains 1.
    pub fn init(cfg: &ModelConfig) -> Weights {
        let mut rng = Rng::new(cfg.seed.wrapping_add(0x5EED));
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        let mut data = Vec::new();
        let out_scale = 1.0 / ((2 * cfg.layers.max(1)) as f64).sqrt();
        for (name, shape) in cfg.layout() {
            let n = shape[0] * shape[1];
            let v: Vec<f32> = if name.ends_with("norm") {
                vec![1.0; n]
            } else {
                let s = if name.ends_with("wo") || name.ends_with("w2") {
                    0.02 * out_scale
                } else {
                    0.02
                };
                (0..n).map(|_| (rng.normal() * s) as f32).collect()
            };
            names.push(name);
            shapes.push(shape);
            data.push(v);
        }
        Weights {
            names,
            shapes,
            data,
        }
    }

    pub fn to_tensors(&self, device: &Device) -> Vec<Tensor<2>> {
        self.data
            .iter()
            .zip(&self.shapes)
            .map(|(d, s)| Tensor::from_data(TensorData::new(d.clone(), *s), device))
            .collect()
    }

    pub fn from_tensors(names: &[String], shapes: &[[usize; 2]], ts: &[Tensor<2>]) -> Weights {
        Weights {
            names: names.to_vec(),
            shapes: shapes.to_vec(),
            data: ts.iter().map(to_vec).collect(),
        }
    }
}

/// A tensor's values on the host.
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// The policy with its weights as (autodiff) tensors.
#[derive(Clone)]
pub struct Policy {
    pub cfg: ModelConfig,
    pub names: Vec<String>,
    pub shapes: Vec<[usize; 2]>,
    pub params: Vec<Tensor<2>>,
    pub device: Device,
}

/// Per-layer keys and values of the positions seen so far.
pub struct KvCache {
    k: Vec<Tensor<4>>,
    v: Vec<Tensor<4>>,
    /// [B][positions]: whether each cached key is a real token.
    valid: Vec<Vec<bool>>,
}

const NEG: f32 = -1e9;

impl Policy {
    pub fn new(cfg: ModelConfig, w: &Weights, device: &Device) -> Policy {
        Policy {
            names: w.names.clone(),
            shapes: w.shapes.clone(),
            params: w.to_tensors(device),
            cfg,
            device: device.clone(),
        }
    }

    pub fn weights(&self) -> Weights {
        Weights::from_tensors(&self.names, &self.shapes, &self.params)
    }

    /// Fresh leaves that record gradients.
    pub fn require_grad(&mut self) {
        self.params = self
            .params
            .drain(..)
            .map(|p| p.detach().require_grad())
            .collect();
    }

    /// A copy whose tensors record nothing (sampling, the reference policy).
    pub fn detached(&self) -> Policy {
        let mut p = self.clone();
        p.params = p.params.iter().map(|t| t.clone().detach()).collect();
        p
    }

    fn p(&self, i: usize) -> Tensor<2> {
        self.params[i].clone()
    }

    fn rms(&self, x: Tensor<3>, gain: usize) -> Tensor<3> {
        let g = self.p(gain).unsqueeze_dim::<3>(0);
        rms_norm(x, g)
    }

    /// Logits [B, T, V] for `tokens` [B·T] with `valid` [B·T] (false for
    /// padding), causal attention.
    pub fn forward(&self, tokens: &[u32], valid: &[bool], b: usize, t: usize) -> Tensor<3> {
        let (logits, _) = self.run(tokens, valid, b, t, 0, None);
        logits
    }

    /// Run the prompt [B·P] and return the last position's logits [B, V] and the cache.
    pub fn prefill(
        &self,
        tokens: &[u32],
        valid: &[bool],
        b: usize,
        p: usize,
    ) -> (Tensor<2>, KvCache) {
        let mut cache = KvCache {
            k: Vec::new(),
            v: Vec::new(),
            valid: vec![Vec::new(); b],
        };
        let (logits, _) = self.run(tokens, valid, b, p, 0, Some(&mut cache));
        let last = logits.narrow(1, p - 1, 1).reshape([b, self.cfg.vocab]);
        (last, cache)
    }

    /// One decoding step: the next tokens [B] at position `pos`; logits [B, V].
    pub fn decode(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        valid: &[bool],
        pos: usize,
    ) -> Tensor<2> {
        let b = tokens.len();
        let (logits, _) = self.run(tokens, valid, b, 1, pos, Some(cache));
        logits.reshape([b, self.cfg.vocab])
    }

    fn run(
        &self,
        tokens: &[u32],
        valid: &[bool],
        b: usize,
        t: usize,
        pos0: usize,
        mut cache: Option<&mut KvCache>,
    ) -> (Tensor<3>, ()) {
        let c = &self.cfg;
        let (d, nh, hd) = (c.d_model, c.heads, c.head_dim());
        let dev = &self.device;
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * t]), dev);
        let mut x = self.p(0).select(0, ids).reshape([b, t, d]);
        // Key validity, including the cached positions.
        if let Some(cache) = cache.as_deref_mut() {
            for (bi, row) in cache.valid.iter_mut().enumerate() {
                row.extend_from_slice(&valid[bi * t..(bi + 1) * t]);
            }
        }
        let keys: Vec<Vec<bool>> = match cache.as_deref() {
            Some(cache) => cache.valid.clone(),
            None => (0..b)
                .map(|bi| valid[bi * t..(bi + 1) * t].to_vec())
                .collect(),
        };
        let tk = keys.first().map(|r| r.len()).unwrap_or(t);
        let past = tk - t;
        let mut bias = vec![0f32; b * t * tk];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..tk {
                    if j > past + i || !keys[bi][j] {
                        bias[(bi * t + i) * tk + j] = NEG;
                    }
                }
            }
        }
        let bias = Tensor::<4>::from_data(TensorData::new(bias, [b, 1, t, tk]), dev);
        let (cos, sin) = rope_tables(hd, pos0, t, dev);
        let per_layer = 9 + if c.qk_norm { 2 } else { 0 };
        for l in 0..c.layers {
            let base = 1 + l * per_layer;
            let mut k_ix = base + 1;
            let mut next = || {
                let i = k_ix;
                k_ix += 1;
                i
            };
            let (wq, wk, wv, wo) = (next(), next(), next(), next());
            let (qn, kn) = if c.qk_norm {
                (Some(next()), Some(next()))
            } else {
                (None, None)
            };
            let (mn, w1, w3, w2) = (next(), next(), next(), next());
            let h = self.rms(x.clone(), base);
            let h2 = h.reshape([b * t, d]);
            let heads = |w: usize| -> Tensor<4> {
                h2.clone()
                    .matmul(self.p(w))
                    .reshape([b, t, nh, hd])
                    .swap_dims(1, 2)
            };
            let (mut q, mut k, v) = (heads(wq), heads(wk), heads(wv));
            if let (Some(qn), Some(kn)) = (qn, kn) {
                q = rms_norm(q, self.p(qn).reshape([1, 1, 1, hd]));
                k = rms_norm(k, self.p(kn).reshape([1, 1, 1, hd]));
            }
            let q = rope(q, &cos, &sin, hd);
            let k = rope(k, &cos, &sin, hd);
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => {
                    let (k, v) = if cache.k.len() > l {
                        (
                            Tensor::cat(vec![cache.k[l].clone(), k], 2),
                            Tensor::cat(vec![cache.v[l].clone(), v], 2),
                        )
                    } else {
                        (k, v)
                    };
                    if cache.k.len() > l {
                        cache.k[l] = k.clone();
                        cache.v[l] = v.clone();
                    } else {
                        cache.k.push(k.clone());
                        cache.v.push(v.clone());
                    }
                    (k, v)
                }
                None => (k, v),
            };
            let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt()) + bias.clone();
            let att = softmax(scores, 3).matmul(v); // [B, H, T, hd]
            let att = att.swap_dims(1, 2).reshape([b * t, d]).matmul(self.p(wo));
            x = x + att.reshape([b, t, d]);
            let h = self.rms(x.clone(), mn).reshape([b * t, d]);
            let gate = silu(h.clone().matmul(self.p(w1)));
            let up = h.matmul(self.p(w3));
            let y = (gate * up).matmul(self.p(w2));
            x = x + y.reshape([b, t, d]);
        }
        let n = self.params.len();
        let x = self.rms(x, n - 2).reshape([b * t, d]);
        let logits = x.matmul(self.p(n - 1)).reshape([b, t, c.vocab]);
        (logits, ())
    }
}

fn rms_norm<const D: usize>(x: Tensor<D>, gain: Tensor<D>) -> Tensor<D> {
    let ms = x.clone().powf_scalar(2.0).mean_dim(D - 1);
    x * (ms + 1e-6).sqrt().recip() * gain
}

/// cos and sin [1, 1, T, hd/2] for positions pos0..pos0+T.
fn rope_tables(hd: usize, pos0: usize, t: usize, dev: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in pos0..pos0 + t {
        for i in 0..half {
            let freq = 10000f64.powf(-((2 * i) as f64) / hd as f64);
            let a = p as f64 * freq;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [1, 1, t, half]), dev),
        Tensor::from_data(TensorData::new(sin, [1, 1, t, half]), dev),
    )
}

/// Rotate the two halves of each head's features.
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>, hd: usize) -> Tensor<4> {
    let half = hd / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x1 * sin.clone() + x2 * cos.clone();
    Tensor::cat(vec![r1, r2], 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(qk_norm: bool) -> Policy {
        let cfg = ModelConfig {
            vocab: 11,
            d_model: 16,
            layers: 2,
            heads: 2,
            context: 32,
            qk_norm,
            seed: 3,
        };
        let mut w = Weights::init(&cfg);
        // Larger weights than the init so the test sees real differences.
        for d in &mut w.data {
            for x in d.iter_mut() {
                *x *= 8.0;
            }
        }
        Policy::new(cfg, &w, &Device::flex())
    }

    /// The KV-cache path (prefill + decode) equals the full forward pass, and
    /// left padding does not change a prompt's logits.
    #[test]
    fn kv_cache_and_padding_match_the_full_forward() {
        for qk in [false, true] {
            let p = tiny(qk);
            // Row 0: 2 pads then 5 tokens; row 1: 7 tokens.
            let toks: Vec<u32> = vec![0, 0, 3, 4, 5, 6, 7, 3, 9, 4, 8, 5, 6, 7];
            let valid: Vec<bool> = toks.iter().enumerate().map(|(i, _)| i >= 2).collect();
            let full = to_vec(&p.forward(&toks, &valid, 2, 7));
            // Prefill 4 positions, decode the remaining 3.
            let pre_t: Vec<u32> = [&toks[0..4], &toks[7..11]].concat();
            let pre_v: Vec<bool> = [&valid[0..4], &valid[7..11]].concat();
            let (mut last, mut cache) = p.prefill(&pre_t, &pre_v, 2, 4);
            for pos in 4..7 {
                let got = to_vec(&last);
                for bi in 0..2 {
                    for v in 0..11 {
                        let want = full[(bi * 7 + pos - 1) * 11 + v];
                        assert!(
                            (got[bi * 11 + v] - want).abs() < 1e-4,
                            "qk={qk} pos={pos} row={bi}: {} vs {want}",
                            got[bi * 11 + v]
                        );
                    }
                }
                last = p.decode(&mut cache, &[toks[pos], toks[7 + pos]], &[true, true], pos);
            }
            // Row 0 without its padding gives the same logits.
            let alone = to_vec(&p.forward(&toks[2..7], &[true; 5], 1, 5));
            for i in 0..5 * 11 {
                assert!(
                    (alone[i] - full[2 * 11 + i]).abs() < 1e-4,
                    "padding changed logits at {i}"
                );
            }
        }
    }

    /// Gradients reach every weight through burn's autodiff.
    #[test]
    fn gradients_reach_every_weight() {
        let mut p = tiny(true);
        p.cfg.seed = 1;
        let dev = Device::flex().autodiff();
        let w = p.weights();
        let mut p = Policy::new(p.cfg.clone(), &w, &dev);
        p.require_grad();
        let toks: Vec<u32> = vec![1, 3, 4, 5, 6, 2];
        let logits = p.forward(&toks, &[true; 6], 1, 6);
        let loss = burn::tensor::activation::log_softmax(logits, 2).sum();
        let grads = loss.backward();
        for (name, t) in p.names.iter().zip(&p.params) {
            let g = t.grad(&grads).map(|g| to_vec(&g)).unwrap_or_default();
            assert_eq!(g.len(), t.dims()[0] * t.dims()[1], "{name} has no gradient");
            assert!(g.iter().all(|x| x.is_finite()), "{name}");
        }
    }
}
