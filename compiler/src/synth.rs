//! Synthetic batches for benchmarks and differential tests: every tensor a
//! recipe reads, with plausible values, from a seed.

use crate::batch::Batch;
use crate::builtins::{self, Level, Ty0};
use crate::check::CheckedRecipe;

/// SplitMix64 uniforms and normals.
struct Gen(u64);

impl Gen {
    fn u(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn n(&mut self) -> f64 {
        let (a, b) = (self.u().max(1e-300), self.u());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// The shape of a synthetic batch.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub v: usize,
    pub group: usize,
}

/// A batch with `mask`, `group` and every input `recipe` reads (logits and
/// tokens when it reads a vocabulary-level value or `logits` itself).
pub fn batch(recipe: &CheckedRecipe, d: Dims, seed: u64) -> Batch {
    let mut g = Gen(seed ^ 0x5EED_BA7C);
    let (b, t, v) = (d.b, d.t, d.v.max(1));
    let mut out = Batch::default();
    // Lengths between t/2 and t.
    let lens: Vec<usize> = (0..b)
        .map(|_| t / 2 + (g.u() * (t - t / 2 + 1) as f64) as usize)
        .map(|l| l.clamp(1, t))
        .collect();
    let mut mask = vec![0.0; b * t];
    for (r, &l) in lens.iter().enumerate() {
        for j in 0..l {
            mask[r * t + j] = 1.0;
        }
    }
    out.insert("mask", "f32", vec![b, t], mask);
    out.insert(
        "group",
        "i64",
        vec![b],
        (0..b).map(|i| (i / d.group.max(1)) as f64).collect(),
    );
    let reads = |n: &str| recipe.inputs.contains_key(n);
    // Entropy and mean log-probs get their gradient only through logits.
    // `v = 0`: no logits; `logp` and `entropy` are given per token (unless
    // the recipe reads the vocabulary itself).
    let vocab_level = recipe
        .inputs
        .keys()
        .any(|k| k == "mean_logp" || builtins::input(k).is_some_and(|i| i.level == Level::Vocab));
    let wants_logits = vocab_level || ((reads("entropy") || reads("logits")) && d.v > 0);
    if wants_logits {
        out.insert(
            "logits",
            "f32",
            vec![b, t, v],
            (0..b * t * v).map(|_| 2.0 * g.n()).collect(),
        );
        out.insert(
            "tokens",
            "i64",
            vec![b, t],
            (0..b * t)
                .map(|_| (g.u() * v as f64).floor().min(v as f64 - 1.0))
                .collect(),
        );
    }
    for (name, _) in recipe.inputs.iter() {
        if out.has(name)
            || matches!(
                name.as_str(),
                "length" | "position" | "index" | "vocab_index" | "advantages"
            )
        {
            continue;
        }
        if wants_logits && matches!(name.as_str(), "logp" | "entropy" | "mean_logp") {
            continue;
        }
        let Some(info) = builtins::input(name) else {
            continue;
        };
        let (shape, n) = match info.level {
            Level::Vocab => (vec![b, t, v], b * t * v),
            Level::Token => (vec![b, t], b * t),
            Level::Seq | Level::Group => (vec![b], b),
            Level::Batch | Level::Step => (vec![], 1),
        };
        let data: Vec<f64> = match (name.as_str(), info.ty) {
            ("logp" | "old_logp" | "ref_logp" | "mean_logp" | "old_mean_logp", _) => (0..n)
                .map(|_| -(0.2 + 1.0 * g.u()) - 0.1 * g.n().abs())
                .collect(),
            ("entropy", _) => (0..n).map(|_| 2.0 * g.u()).collect(),
            ("step_reward", _) => (0..n)
                .map(|_| if g.u() < 0.1 { g.u() } else { 0.0 })
                .collect(),
            ("reward" | "judge" | "novelty", _) => (0..n).map(|_| g.u()).collect(),
            ("budget", _) => (0..n).map(|_| (t as f64 * (0.5 + g.u())).round()).collect(),
            ("step", _) => vec![10.0],
            ("total_steps", _) => vec![100.0],
            ("progress", _) => vec![0.1],
            ("epoch", _) => vec![0.0],
            ("bundle" | "source", _) => (0..n).map(|i| ((i / d.group.max(1)) % 2) as f64).collect(),
            (_, Ty0::Bool) => (0..n)
                .map(|_| if g.u() < 0.5 { 1.0 } else { 0.0 })
                .collect(),
            (_, Ty0::Int) => (0..n).map(|_| (g.u() * 4.0).floor()).collect(),
            _ => (0..n).map(|_| g.n()).collect(),
        };
        let dtype = match info.ty {
            Ty0::Bool => "u8",
            Ty0::Int => "i64",
            _ => "f32",
        };
        out.insert(name, dtype, shape, data);
    }
    // The one-step values a batch file of a real run carries.
    if reads("reward") && !out.has("reward") {
        out.insert("reward", "f32", vec![b], (0..b).map(|_| g.u()).collect());
    }
    out
}

/// Bytes a loss evaluation reads and writes, as an f32 implementation stores
/// them: every input tensor once, plus d_logp (and d_logits) written.
pub fn traffic_bytes(batch: &Batch) -> usize {
    let read: usize = batch.tensors.values().map(|t| t.data.len() * 4).sum();
    let bt = batch.tensors.get("mask").map(|m| m.data.len()).unwrap_or(0);
    let bv = batch
        .tensors
        .get("logits")
        .map(|m| m.data.len())
        .unwrap_or(0);
    read + 4 * (bt + bv)
}
