//! The policy: a decoder-only transformer on burn tensors — token embedding,
//! blocks of RMSNorm → causal self-attention with rotary positions (optional
//! qk-norm, q/k/v biases, grouped-query heads) → RMSNorm → SwiGLU, a final
//! RMSNorm and an output layer (or the embedding's transpose, tied). Keel's
//! own small model and the Llama/Qwen/SmolLM checkpoints `crate::hf` and
//! `crate::gguf` load are this one architecture with different knobs.
//!
//! The weights are a flat list of named rank-2 tensors (norm gains are
//! [1, d]), so saving, loading, the optimizer and gradient clipping are plain
//! loops over one list. Prompts are left-padded: padded keys are masked out and
//! rotary positions are relative, so a prompt's padding never changes what the
//! model computes for it.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Kind};
use crate::rng::Rng;

/// Rotary positions: the base and an optional frequency rescaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Llama 3.1's rescaling (`rope_scaling.rope_type = "llama3"`).
    pub llama3: Option<Llama3Rope>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: f64,
}

impl Rope {
    /// The inverse frequency of each of the `hd / 2` feature pairs.
    pub fn inv_freq(&self, hd: usize) -> Vec<f64> {
        (0..hd / 2)
            .map(|i| {
                let f = self.theta.powf(-((2 * i) as f64) / hd as f64);
                match &self.llama3 {
                    None => f,
                    Some(s) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low = s.original_context / s.low_freq_factor;
                        let high = s.original_context / s.high_freq_factor;
                        if wavelen < high {
                            f
                        } else if wavelen > low {
                            f / s.factor
                        } else {
                            let smooth = (s.original_context / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// The transformer's shape. Keel's own small model (`ModelConfig::small`)
/// and the checkpoint families it loads (Llama, Qwen2, Qwen3, SmolLM:
/// `crate::hf`, `crate::gguf`) are the same architecture with these knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention): query head h reads kv head
    /// h / (heads / kv_heads).
    pub kv_heads: usize,
    /// Width of one head (Qwen3 sets it apart from d_model / heads).
    pub head_dim: usize,
    /// SwiGLU width.
    pub hidden: usize,
    pub context: usize,
    /// Per-head RMSNorm of queries and keys before rotary positions (Qwen3).
    pub qk_norm: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    pub norm_eps: f64,
    pub rope: Rope,
    /// The output layer is the embedding's transpose (no `head` weight).
    pub tied: bool,
    pub seed: u64,
}

impl ModelConfig {
    /// Keel's own model: d / heads per head, SwiGLU width 8/3·d rounded up
    /// to a multiple of 8, no biases, eps 1e-6, rotary base 10,000, an
    /// untied output layer.
    pub fn small(
        vocab: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        context: usize,
        qk_norm: bool,
        seed: u64,
    ) -> ModelConfig {
        ModelConfig {
            vocab,
            d_model,
            layers,
            heads,
            kv_heads: heads,
            head_dim: d_model.checked_div(heads).unwrap_or(0),
            hidden: (8 * d_model / 3).div_ceil(8) * 8,
            context,
            qk_norm,
            qkv_bias: false,
            norm_eps: 1e-6,
            rope: Rope {
                theta: 10000.0,
                llama3: None,
            },
            tied: false,
            seed,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !(self.d_model / self.heads).is_multiple_of(2)
        {
            return Err(Error::new(
                Kind::ModelSetting,
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

    /// Whether the shape can be built (checkpoints' configs are checked by
    /// their loaders with the key named; this is the last line).
    pub fn consistent(&self) -> bool {
        self.heads > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(2)
            && self.d_model > 0
            && self.vocab > 0
    }

    /// Names and shapes of every weight, in a fixed order.
    pub fn layout(&self) -> Vec<(String, [usize; 2])> {
        let d = self.d_model;
        let h = self.hidden;
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let mut out = vec![("embed".to_string(), [self.vocab, d])];
        for l in 0..self.layers {
            let p = |n: &str| format!("layers.{l}.{n}");
            out.push((p("attn_norm"), [1, d]));
            out.push((p("wq"), [d, q]));
            out.push((p("wk"), [d, kv]));
            out.push((p("wv"), [d, kv]));
            if self.qkv_bias {
                out.push((p("bq"), [1, q]));
                out.push((p("bk"), [1, kv]));
                out.push((p("bv"), [1, kv]));
            }
            out.push((p("wo"), [q, d]));
            if self.qk_norm {
                out.push((p("q_norm"), [1, self.head_dim]));
                out.push((p("k_norm"), [1, self.head_dim]));
            }
            out.push((p("mlp_norm"), [1, d]));
            out.push((p("w1"), [d, h]));
            out.push((p("w3"), [d, h]));
            out.push((p("w2"), [h, d]));
        }
        out.push(("final_norm".to_string(), [1, d]));
        if !self.tied {
            out.push(("head".to_string(), [d, self.vocab]));
        }
        out
    }

    /// The number of weights.
    pub fn parameters(&self) -> usize {
        self.layout()
            .iter()
            .map(|(_, [r, c])| r.saturating_mul(*c))
            .fold(0usize, usize::saturating_add)
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
            } else if name.ends_with(".bq") || name.ends_with(".bk") || name.ends_with(".bv") {
                vec![0.0; n]
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

    /// A critic's weights from a policy's: the same trunk (embedding,
    /// blocks, final norm), no language-model head, and a fresh scalar
    /// value head as transformers' `AutoModelForTokenClassification` makes
    /// one (weight N(0, 0.02) drawn from `seed`, bias 0).
    pub fn critic(&self, d_model: usize, seed: u64) -> Weights {
        let mut w = Weights {
            names: Vec::new(),
            shapes: Vec::new(),
            data: Vec::new(),
        };
        for ((n, s), d) in self.names.iter().zip(&self.shapes).zip(&self.data) {
            if n != "head" {
                w.names.push(n.clone());
                w.shapes.push(*s);
                w.data.push(d.clone());
            }
        }
        let mut rng = Rng::new(seed.wrapping_add(0x00C2_171C));
        w.names.push(VALUE_HEAD.into());
        w.shapes.push([d_model, 1]);
        w.data
            .push((0..d_model).map(|_| (rng.normal() * 0.02) as f32).collect());
        w.names.push(VALUE_BIAS.into());
        w.shapes.push([1, 1]);
        w.data.push(vec![0.0]);
        w
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

/// Named 2-D tensors to read one at a time, wherever they live: host
/// [`Weights`], or a policy's (or an optimizer's) tensors, copied to the
/// host one tensor at a time when read. Checkpoints and exported
/// directories are written from it, so writing a real model holds at most
/// one extra tensor.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub names: &'a [String],
    pub shapes: &'a [[usize; 2]],
    data: ParamData<'a>,
}

#[derive(Clone, Copy)]
enum ParamData<'a> {
    Host(&'a [Vec<f32>]),
    Live(&'a [Tensor<2>]),
}

impl<'a> Params<'a> {
    /// Tensors `ts` under `names` and `shapes`.
    pub fn live(names: &'a [String], shapes: &'a [[usize; 2]], ts: &'a [Tensor<2>]) -> Params<'a> {
        Params {
            names,
            shapes,
            data: ParamData::Live(ts),
        }
    }

    /// Tensor `i`'s values.
    pub fn values(&self, i: usize) -> std::borrow::Cow<'a, [f32]> {
        match self.data {
            ParamData::Host(d) => {
                std::borrow::Cow::Borrowed(d.get(i).map_or(&[][..], |v| v.as_slice()))
            }
            ParamData::Live(ts) => {
                std::borrow::Cow::Owned(ts.get(i).map(to_vec).unwrap_or_default())
            }
        }
    }
}

impl Weights {
    pub fn view(&self) -> Params<'_> {
        Params {
            names: &self.names,
            shapes: &self.shapes,
            data: ParamData::Host(&self.data),
        }
    }

    /// The names and shapes alone (no values): what checkpoints are read
    /// against.
    pub fn layout(&self) -> Weights {
        Weights {
            names: self.names.clone(),
            shapes: self.shapes.clone(),
            data: Vec::new(),
        }
    }
}

impl Transformer {
    pub fn view(&self) -> Params<'_> {
        Params::live(&self.names, &self.shapes, &self.params)
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
pub struct Transformer {
    pub cfg: ModelConfig,
    pub names: Vec<String>,
    pub shapes: Vec<[usize; 2]>,
    pub params: Vec<Tensor<2>>,
    pub device: Device,
    ix: Index,
}

/// Where each weight sits in the flat list, found by name once.
#[derive(Clone, Debug, Default)]
struct Index {
    embed: usize,
    final_norm: usize,
    /// `None`: tied, the output layer is the embedding's transpose.
    head: Option<usize>,
    /// A critic's scalar value head ([`VALUE_HEAD`], [`VALUE_BIAS`]).
    value: Option<[usize; 2]>,
    layers: Vec<LayerIx>,
}

/// The weight of a critic's value head, [d_model, 1].
pub const VALUE_HEAD: &str = "value_head";
/// Its bias, [1, 1].
pub const VALUE_BIAS: &str = "value_bias";

#[derive(Clone, Debug, Default)]
struct LayerIx {
    attn_norm: usize,
    wq: usize,
    wk: usize,
    wv: usize,
    wo: usize,
    bias: Option<[usize; 3]>,
    qk_norm: Option<[usize; 2]>,
    mlp_norm: usize,
    w1: usize,
    w3: usize,
    w2: usize,
}

impl Index {
    /// Positions by name; a name the list lacks points at weight 0 (the
    /// list comes from `ModelConfig::layout`, which names them all).
    fn new(cfg: &ModelConfig, names: &[String]) -> Index {
        let at = |n: &str| names.iter().position(|x| x == n);
        let get = |n: &str| at(n).unwrap_or(0);
        let layers = (0..cfg.layers)
            .map(|l| {
                let p = |n: &str| format!("layers.{l}.{n}");
                LayerIx {
                    attn_norm: get(&p("attn_norm")),
                    wq: get(&p("wq")),
                    wk: get(&p("wk")),
                    wv: get(&p("wv")),
                    wo: get(&p("wo")),
                    bias: match (at(&p("bq")), at(&p("bk")), at(&p("bv"))) {
                        (Some(q), Some(k), Some(v)) => Some([q, k, v]),
                        _ => None,
                    },
                    qk_norm: match (at(&p("q_norm")), at(&p("k_norm"))) {
                        (Some(q), Some(k)) => Some([q, k]),
                        _ => None,
                    },
                    mlp_norm: get(&p("mlp_norm")),
                    w1: get(&p("w1")),
                    w3: get(&p("w3")),
                    w2: get(&p("w2")),
                }
            })
            .collect();
        Index {
            embed: get("embed"),
            final_norm: get("final_norm"),
            head: at("head"),
            value: match (at(VALUE_HEAD), at(VALUE_BIAS)) {
                (Some(w), Some(b)) => Some([w, b]),
                _ => None,
            },
            layers,
        }
    }
}

/// Per-layer keys and values of the positions seen so far.
pub struct KvCache {
    k: Vec<Tensor<4>>,
    v: Vec<Tensor<4>>,
    /// [B][positions]: whether each cached key is a real token.
    valid: Vec<Vec<bool>>,
}

const NEG: f32 = -1e9;

impl Transformer {
    pub fn new(cfg: ModelConfig, w: &Weights, device: &Device) -> Transformer {
        Transformer {
            ix: Index::new(&cfg, &w.names),
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
    pub fn detached(&self) -> Transformer {
        let mut p = self.clone();
        p.params = p.params.iter().map(|t| t.clone().detach()).collect();
        p
    }

    fn p(&self, i: usize) -> Tensor<2> {
        self.params[i].clone()
    }

    fn rms(&self, x: Tensor<3>, gain: usize) -> Tensor<3> {
        let g = self.p(gain).unsqueeze_dim::<3>(0);
        rms_norm(x, g, self.cfg.norm_eps)
    }

    /// Logits [B, T, V] for `tokens` [B·T] with `valid` [B·T] (false for
    /// padding), causal attention: the language-model head on the trunk.
    pub fn forward(&self, tokens: &[u32], valid: &[bool], b: usize, t: usize) -> Tensor<3> {
        self.lm_head(self.hidden(tokens, valid, b, t))
    }

    /// The trunk: the final hidden states [B, T, d_model] (after the final
    /// RMSNorm) for `tokens` [B·T] with `valid` [B·T]. Heads read them: the
    /// language-model head ([`Transformer::lm_head`]), and a scalar value
    /// head is one more.
    pub fn hidden(&self, tokens: &[u32], valid: &[bool], b: usize, t: usize) -> Tensor<3> {
        self.trunk(tokens, valid, b, t, 0, None)
    }

    /// The language-model head: hidden states [B, T, d] → logits [B, T, V]
    /// (the output layer, or the embedding's transpose where tied).
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = hidden.dims();
        let head = match self.ix.head {
            Some(h) => self.p(h),
            None => self.p(self.ix.embed).transpose(),
        };
        hidden
            .reshape([b * t, d])
            .matmul(head)
            .reshape([b, t, self.cfg.vocab])
    }

    /// The log-prob of `tokens` [B·T] at each position, from hidden states
    /// [B, T, d] at `temperature`, without a [B, T, V] buffer: the
    /// language-model head runs over the vocabulary in slices of `chunk`
    /// columns with an online log-sum-exp (the sampled token's logit
    /// picked in its slice). [B, T] on the host.
    pub fn token_logp(
        &self,
        hidden: Tensor<3>,
        tokens: &[u32],
        temperature: f64,
        chunk: usize,
    ) -> Vec<f32> {
        let [b, t, d] = hidden.dims();
        let n = b * t;
        let v = self.cfg.vocab;
        let h = hidden.reshape([n, d]);
        let head = match self.ix.head {
            Some(i) => self.p(i),
            None => self.p(self.ix.embed).transpose(),
        };
        let mut m = vec![f32::NEG_INFINITY; n];
        let mut s = vec![0f32; n];
        let mut picked = vec![f32::NAN; n];
        let chunk = chunk.max(1);
        let mut lo = 0;
        while lo < v {
            let hi = (lo + chunk).min(v);
            let z = to_vec(
                &h.clone()
                    .matmul(head.clone().narrow(1, lo, hi - lo))
                    .div_scalar(temperature),
            );
            let w = hi - lo;
            for i in 0..n {
                let row = &z[i * w..(i + 1) * w];
                let cm = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let nm = m[i].max(cm);
                let scaled = if m[i].is_finite() {
                    s[i] * (m[i] - nm).exp()
                } else {
                    0.0
                };
                s[i] = scaled + row.iter().map(|&x| (x - nm).exp()).sum::<f32>();
                m[i] = nm;
                let tok = tokens.get(i).copied().unwrap_or(0) as usize;
                if (lo..hi).contains(&tok) {
                    picked[i] = row[tok - lo];
                }
            }
            lo = hi;
        }
        (0..n).map(|i| picked[i] - m[i] - s[i].ln()).collect()
    }

    /// The value head: hidden states [B, T, d] → one value per position
    /// [B, T]; `None` for a model without one (only a critic has it).
    pub fn value_head(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        let [w, bias] = self.ix.value?;
        let [b, t, d] = hidden.dims();
        let v = hidden.reshape([b * t, d]).matmul(self.p(w)) + self.p(bias);
        Some(v.reshape([b, t]))
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
        let hidden = self.trunk(tokens, valid, b, p, 0, Some(&mut cache));
        let last = self
            .lm_head(hidden)
            .narrow(1, p - 1, 1)
            .reshape([b, self.cfg.vocab]);
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
        let hidden = self.trunk(tokens, valid, b, 1, pos, Some(cache));
        self.lm_head(hidden).reshape([b, self.cfg.vocab])
    }

    /// The blocks over `t` new positions after `pos0` cached ones (the
    /// cache, where given, grows by them); the final RMSNorm's output.
    fn trunk(
        &self,
        tokens: &[u32],
        valid: &[bool],
        b: usize,
        t: usize,
        pos0: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let c = &self.cfg;
        let (d, nh, nkv, hd) = (c.d_model, c.heads, c.kv_heads, c.head_dim);
        let rep = nh / nkv.max(1);
        let dev = &self.device;
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * t]), dev);
        let mut x = self.p(self.ix.embed).select(0, ids).reshape([b, t, d]);
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
        let (cos, sin) = rope_tables(&c.rope, hd, pos0, t, dev);
        for (l, ix) in self.ix.layers.iter().enumerate() {
            let h = self.rms(x.clone(), ix.attn_norm);
            let h2 = h.reshape([b * t, d]);
            let heads = |w: usize, bias: Option<usize>, n: usize| -> Tensor<4> {
                let mut y = h2.clone().matmul(self.p(w));
                if let Some(bi) = bias {
                    y = y + self.p(bi);
                }
                y.reshape([b, t, n, hd]).swap_dims(1, 2)
            };
            let bq = ix.bias.map(|[q, k, v]| (q, k, v));
            let mut q = heads(ix.wq, bq.map(|x| x.0), nh);
            let mut k = heads(ix.wk, bq.map(|x| x.1), nkv);
            let v = heads(ix.wv, bq.map(|x| x.2), nkv);
            if let Some([qn, kn]) = ix.qk_norm {
                q = rms_norm(q, self.p(qn).reshape([1, 1, 1, hd]), c.norm_eps);
                k = rms_norm(k, self.p(kn).reshape([1, 1, 1, hd]), c.norm_eps);
            }
            let q = rope(q, &cos, &sin, hd);
            let k = rope(k, &cos, &sin, hd);
            // The cache keeps the kv heads as they are; grouped-query
            // attention repeats them only for the product.
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
            let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
            let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt()) + bias.clone();
            let att = softmax(scores, 3).matmul(v); // [B, H, T, hd]
            let att = att
                .swap_dims(1, 2)
                .reshape([b * t, nh * hd])
                .matmul(self.p(ix.wo));
            x = x + att.reshape([b, t, d]);
            let h = self.rms(x.clone(), ix.mlp_norm).reshape([b * t, d]);
            let gate = silu(h.clone().matmul(self.p(ix.w1)));
            let up = h.matmul(self.p(ix.w3));
            let y = (gate * up).matmul(self.p(ix.w2));
            x = x + y.reshape([b, t, d]);
        }
        self.rms(x, self.ix.final_norm)
    }
}

/// [B, KV, T, hd] → [B, KV·rep, T, hd], each kv head repeated `rep` times
/// in place (head h reads kv head h / rep), as grouped-query attention needs.
fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, rep, t, hd])
        .reshape([b, kv * rep, t, hd])
}

fn rms_norm<const D: usize>(x: Tensor<D>, gain: Tensor<D>, eps: f64) -> Tensor<D> {
    let ms = x.clone().powf_scalar(2.0).mean_dim(D - 1);
    x * (ms + eps).sqrt().recip() * gain
}

/// cos and sin [1, 1, T, hd/2] for positions pos0..pos0+T.
fn rope_tables(
    rope: &Rope,
    hd: usize,
    pos0: usize,
    t: usize,
    dev: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = hd / 2;
    let inv = rope.inv_freq(hd);
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in pos0..pos0 + t {
        for &freq in &inv {
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

    fn tiny(qk_norm: bool) -> Transformer {
        let cfg = ModelConfig::small(11, 16, 2, 2, 32, qk_norm, 3);
        let mut w = Weights::init(&cfg);
        // Larger weights than the init so the test sees real differences.
        for d in &mut w.data {
            for x in d.iter_mut() {
                *x *= 8.0;
            }
        }
        Transformer::new(cfg, &w, &Device::flex())
    }

    /// The vocabulary-sliced log-prob pass equals log_softmax of the full
    /// head's logits at the sampled tokens (slices of 3 over 11 entries,
    /// the last one short; temperature 0.7); a critic's value head reads
    /// the same trunk and gives one value per position.
    #[test]
    fn sliced_token_logp_equals_the_full_head_and_the_value_head_reads_the_trunk() {
        let m = tiny(false);
        let (b, t) = (2, 5);
        let toks: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let valid = vec![true; b * t];
        let h = m.hidden(&toks, &valid, b, t);
        let full = to_vec(&burn::tensor::activation::log_softmax(
            m.lm_head(h.clone()).div_scalar(0.7),
            2,
        ));
        let got = m.token_logp(h, &toks, 0.7, 3);
        for i in 0..b * t {
            let want = full[i * 11 + toks[i] as usize];
            assert!((got[i] - want).abs() < 1e-4, "{i}: {} vs {want}", got[i]);
        }
        let w = m.weights().critic(16, 5);
        assert_eq!(w.names.iter().filter(|n| *n == "head").count(), 0);
        let c = Transformer::new(m.cfg.clone(), &w, &Device::flex());
        let v = c
            .value_head(c.hidden(&toks, &valid, b, t))
            .expect("a value head");
        assert_eq!(v.dims(), [b, t]);
        assert!(to_vec(&v).iter().all(|x| x.is_finite()));
        assert!(m.value_head(m.hidden(&toks, &valid, b, t)).is_none());
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
        let mut p = Transformer::new(p.cfg.clone(), &w, &dev);
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
