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

/// A 64-bit linear congruential generator (Knuth's MMIX constants): the
/// cheap, reproducible uniforms of random logits in kernel tests and
/// benchmarks.
pub struct Lcg(pub u64);

impl Lcg {
    /// A uniform number in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f64 / (1u64 << 31) as f64 * (hi - lo) + lo) as f32
    }

    /// `n` uniforms in [lo, hi).
    pub fn fill(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
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
        (0..b)
            .map(|i| (i / d.group.max(1)) as f64)
            .collect::<Vec<f64>>(),
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
        out.insert_f32(
            "logits",
            "f32",
            vec![b, t, v],
            (0..b * t * v)
                .map(|_| (2.0 * g.n()) as f32)
                .collect::<Vec<f32>>(),
        );
        out.insert(
            "tokens",
            "i64",
            vec![b, t],
            (0..b * t)
                .map(|_| (g.u() * v as f64).floor().min(v as f64 - 1.0))
                .collect::<Vec<f64>>(),
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
        if info.level == Level::Vocab {
            // As a file's f32 tensor is held: 4 bytes an entry.
            let data: Vec<f32> = data.into_iter().map(|x| x as f32).collect();
            out.insert_f32(name, dtype, shape, data);
        } else {
            out.insert(name, dtype, shape, data);
        }
    }
    // The one-step values a batch file of a real run carries.
    if reads("reward") && !out.has("reward") {
        out.insert(
            "reward",
            "f32",
            vec![b],
            (0..b).map(|_| g.u()).collect::<Vec<f64>>(),
        );
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

/// A random batch and its edge cases, for differential tests of the
/// executors: all-equal groups (every per-sequence input of group 0 copied
/// from its first member), one-token sequences (rows 1–3) and a fully
/// masked row (row 4) in groups interleaved across the batch, extreme log-ratios against the behaviour and
/// reference policies, and — when the batch has logits and the recipe reads
/// the distribution only through logp and entropy — the same without
/// logits. Needs `d.b ≥ 5 · d.group / d.group` rows (at least 5) and `d.t ≥ 2`.
pub fn variants(recipe: &CheckedRecipe, d: Dims, seed: u64) -> Vec<(String, Batch)> {
    let (b, t, group) = (d.b, d.t, d.group.max(1));
    let base = batch(recipe, d, seed);
    let mut out = vec![(format!("random {seed}"), base.clone())];
    let mut eq = base.clone();
    for (name, tensor) in eq.tensors.iter_mut() {
        if tensor.shape == [b] && name != "group" {
            for i in 1..group.min(b) {
                let first = tensor.data.get(0).unwrap_or(0.0);
                tensor.data.set(i, first);
            }
        }
    }
    out.push(("all-equal group".into(), eq));
    let mut edge = base.clone();
    if let Some(m) = edge.tensors.get_mut("mask")
        && b >= 5
    {
        for r in 1..4 {
            for j in 0..t {
                m.data.set(r * t + j, if j == 0 { 1.0 } else { 0.0 });
            }
        }
        for j in 0..t {
            m.data.set(4 * t + j, 0.0);
        }
    }
    // Groups interleaved (sequence i answers prompt (G − 1) − i mod G), as a
    // batch need not keep a group's sequences together.
    if let Some(g) = edge.tensors.get_mut("group") {
        let n_groups = b.div_ceil(group) as f64;
        for i in 0..g.data.len() {
            g.data.set(i, n_groups - 1.0 - (i as f64 % n_groups));
        }
    }
    out.push(("short and masked rows, interleaved groups".into(), edge));
    let mut ext = base;
    let logp: Option<Vec<f64>> = ext.tensors.get("logp").map(|x| x.data.to_f64());
    if let Some(lp) = logp
        && lp.len() > t
    {
        for (name, delta) in [("old_logp", 15.0), ("ref_logp", -12.0)] {
            if let Some(x) = ext.tensors.get_mut(name) {
                for (k, dd) in [(0usize, delta), (1, -delta), (t, 0.5 * delta)] {
                    x.data.set(k, lp[k] + dd);
                }
            }
        }
    }
    out.push(("extreme log-ratios".into(), ext.clone()));
    if ext.has("logits") && crate::LogitsPath::fusable(recipe) {
        let mut plain = ext;
        plain.tensors.remove("logits");
        let n = b * t;
        plain.insert(
            "logp",
            "f32",
            vec![b, t],
            (0..n)
                .map(|i| -0.1 - (i % 7) as f64 * 0.3)
                .collect::<Vec<f64>>(),
        );
        plain.insert(
            "entropy",
            "f32",
            vec![b, t],
            (0..n)
                .map(|i| 0.2 + (i % 5) as f64 * 0.4)
                .collect::<Vec<f64>>(),
        );
        if let Some(x) = plain.tensors.get_mut("old_logp") {
            x.data.set(0, -20.0);
        }
        out.push(("given logp and entropy".into(), plain));
    }
    out
}
