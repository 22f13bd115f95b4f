//! The fused logits kernel (CPU): from logits [N, V] and the sampled tokens,
//! `logp` and `entropy` per row in one streaming pass with an online
//! log-sum-exp over vocabulary chunks; in the backward pass, `d_logits` from
//! `d_logp` and `d_entropy` in a second pass that writes the only [N, V]
//! buffer it allocates. Rows are split across threads.
//!
//! With p = softmax(z), lse = log Σ exp z and E[z] = Σ p z:
//! logp = z_tok − lse, entropy = lse − E[z],
//! ∂logp/∂z_k = δ(k, tok) − p_k, ∂entropy/∂z_k = −p_k (z_k − E[z]).
//! The interpreter's `pick(log_softmax(logits))` and entropy nodes define the
//! same values; tests compare the two and finite differences.

use crate::fastmath;
pub use keel_ir::batch::{Bf16, Elem};

/// Per-row statistics of the forward pass (kept for the backward pass).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forward {
    pub logp: Vec<f32>,
    pub entropy: Vec<f32>,
    pub lse: Vec<f32>,
    /// E_p[z].
    pub mean_z: Vec<f32>,
}

const CHUNK: usize = 2048;

fn threads(n: usize) -> usize {
    std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.max(1))
}

/// Online (max, Σ e^(z−max), Σ e^(z−max)·z) of one row, chunk by chunk
/// (compiled for AVX2 too, picked at run time: eight f32 lanes).
fn row_stats<E: Elem>(row: &[E]) -> (f64, f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { row_stats_avx2(row) };
    }
    row_stats_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_stats_avx2<E: Elem>(row: &[E]) -> (f64, f64, f64) {
    row_stats_body(row)
}

#[inline(always)]
fn row_stats_body<E: Elem>(row: &[E]) -> (f64, f64, f64) {
    let mut m = f64::NEG_INFINITY;
    let (mut s, mut sz) = (0.0f64, 0.0f64);
    for chunk in row.chunks(CHUNK) {
        let cm = chunk.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x.f32())) as f64;
        if cm > m {
            let scale = if m.is_finite() { (m - cm).exp() } else { 0.0 };
            s *= scale;
            sz *= scale;
            m = cm;
        }
        let mf = m as f32;
        // Eight independent partial sums so the loop vectorises.
        let (mut cs, mut csz) = ([0.0f32; 8], [0.0f32; 8]);
        let mut lanes = chunk.chunks_exact(8);
        for block in &mut lanes {
            for k in 0..8 {
                let z = block[k].f32();
                let e = fastmath::exp_f32(z - mf);
                cs[k] += e;
                csz[k] += e * z;
            }
        }
        for &x in lanes.remainder() {
            let z = x.f32();
            let e = fastmath::exp_f32(z - mf);
            cs[0] += e;
            csz[0] += e * z;
        }
        s += cs.iter().map(|&x| x as f64).sum::<f64>();
        sz += csz.iter().map(|&x| x as f64).sum::<f64>();
    }
    (m, s, sz)
}

/// logp and entropy of every row of `logits` [n, v] at `tokens` [n].
pub fn forward<E: Elem>(logits: &[E], tokens: &[u32], v: usize) -> Forward {
    let n = tokens.len().min(logits.len() / v.max(1));
    let mut out = Forward {
        logp: vec![0.0; n],
        entropy: vec![0.0; n],
        lse: vec![0.0; n],
        mean_z: vec![0.0; n],
    };
    let mut stats = vec![(0f32, 0f32, 0f32, 0f32); n];
    let per = n.div_ceil(threads(n)).max(1);
    std::thread::scope(|sc| {
        for (t, part) in stats.chunks_mut(per).enumerate() {
            sc.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    let i = t * per + j;
                    let row = &logits[i * v..(i + 1) * v];
                    let (m, s, sz) = row_stats(row);
                    let lse = m + s.ln();
                    let mean_z = sz / s;
                    let tok = (tokens[i] as usize).min(v - 1);
                    let logp = row[tok].f32() as f64 - lse;
                    *slot = (
                        logp as f32,
                        (lse - mean_z) as f32,
                        lse as f32,
                        mean_z as f32,
                    );
                }
            });
        }
    });
    for (i, &(a, b, c, d)) in stats.iter().enumerate() {
        out.logp[i] = a;
        out.entropy[i] = b;
        out.lse[i] = c;
        out.mean_z[i] = d;
    }
    out
}

/// d_logits [n, v] = d_logp · (onehot − p) − d_entropy · p · (z − E[z]).
pub fn backward<E: Elem>(
    logits: &[E],
    tokens: &[u32],
    v: usize,
    fwd: &Forward,
    d_logp: &[f32],
    d_entropy: &[f32],
    d_logits: &mut [f32],
) {
    let n = tokens
        .len()
        .min(logits.len() / v.max(1))
        .min(d_logits.len() / v.max(1));
    let k = threads(n);
    let per = n.div_ceil(k.max(1)).max(1);
    std::thread::scope(|s| {
        for (t, out) in d_logits[..n * v].chunks_mut(per * v).enumerate() {
            s.spawn(move || {
                for (j, orow) in out.chunks_mut(v).enumerate() {
                    let i = t * per + j;
                    let row = &logits[i * v..(i + 1) * v];
                    let (lse, ez) = (fwd.lse[i], fwd.mean_z[i]);
                    let gl = d_logp.get(i).copied().unwrap_or(0.0);
                    let ge = d_entropy.get(i).copied().unwrap_or(0.0);
                    backward_row(row, orow, lse, ez, gl, ge);
                    let tok = (tokens[i] as usize).min(v - 1);
                    orow[tok] += gl;
                }
            });
        }
    });
}

/// One row of `d_logits` without the one-hot term (AVX2 when the CPU has
/// it).
fn backward_row<E: Elem>(row: &[E], orow: &mut [f32], lse: f32, ez: f32, gl: f32, ge: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { backward_row_avx2(row, orow, lse, ez, gl, ge) };
    }
    backward_row_body(row, orow, lse, ez, gl, ge)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn backward_row_avx2<E: Elem>(row: &[E], orow: &mut [f32], lse: f32, ez: f32, gl: f32, ge: f32) {
    backward_row_body(row, orow, lse, ez, gl, ge)
}

#[inline(always)]
fn backward_row_body<E: Elem>(row: &[E], orow: &mut [f32], lse: f32, ez: f32, gl: f32, ge: f32) {
    for (o, &x) in orow.iter_mut().zip(row) {
        let z = x.f32();
        let p = fastmath::exp_f32(z - lse);
        *o = -gl * p - ge * p * (z - ez);
    }
}

/// The logits the fused kernel reads: borrowed from the batch when it holds
/// them as f32 or bf16 (read as they are), else converted to f32.
pub enum Logits<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bf16(&'a [Bf16]),
}

/// A batch's logits taken through the fused kernel: the logits
/// ([`Logits`]), the sampled tokens as indices, the vocabulary size. The
/// kernel computes `logp` and `entropy`, the loss program sees them as token
/// inputs, and the kernel carries `d_logp` and `d_entropy` back to
/// `d_logits` (f32).
pub struct KernelPath<'a> {
    pub z: Logits<'a>,
    pub tokens: Vec<u32>,
    pub v: usize,
}

impl<'a> KernelPath<'a> {
    /// The path for `batch` when it has `logits` and `tokens` and the recipe
    /// reads the distribution only through `logp` and `entropy`
    /// ([`keel_ir::LogitsPath::fusable`]); checks shapes and
    /// token indices.
    pub fn of(
        batch: &'a keel_ir::batch::Batch,
        recipe: &keel_check::CheckedRecipe,
    ) -> Result<Option<KernelPath<'a>>, keel_ir::interp::InterpError> {
        use keel_ir::interp::InterpError;
        let (Some(z), Some(t)) = (batch.tensors.get("logits"), batch.tensors.get("tokens")) else {
            return Ok(None);
        };
        if !keel_ir::LogitsPath::fusable(recipe) {
            return Ok(None);
        }
        let v = match z.shape.as_slice() {
            [_, _, v] if *v > 0 => *v,
            other => {
                return Err(InterpError(format!(
                    "`logits` has shape {other:?}, expected [B, T, V]"
                )));
            }
        };
        if t.data.len() * v != z.data.len() {
            return Err(InterpError(format!(
                "`logits` has {} values but `tokens` {} positions of {v} entries",
                z.data.len(),
                t.data.len()
            )));
        }
        let mut tokens = Vec::with_capacity(t.data.len());
        for (i, x) in t.data.iter().enumerate() {
            if !(x >= 0.0 && x.fract() == 0.0 && (x as usize) < v) {
                return Err(InterpError(format!(
                    "`tokens` at flat position {i} is {x}, outside the vocabulary [0, {v})"
                )));
            }
            tokens.push(x as u32);
        }
        Ok(Some(KernelPath {
            z: match &z.data {
                keel_ir::batch::Values::F32(z) => Logits::F32(z.as_slice().into()),
                keel_ir::batch::Values::Bf16(z) => Logits::Bf16(z),
                keel_ir::batch::Values::F64(z) => {
                    Logits::F32(z.iter().map(|&x| x as f32).collect::<Vec<_>>().into())
                }
            },
            tokens,
            v,
        }))
    }

    /// The kernel's forward pass: logp and entropy of every position.
    pub fn forward(&self) -> Forward {
        match &self.z {
            Logits::F32(z) => forward(z, &self.tokens, self.v),
            Logits::Bf16(z) => forward(z, &self.tokens, self.v),
        }
    }

    /// The batch the loss program sees: `logits` replaced by the kernel's
    /// `logp` and `entropy` ([B, T], the shape of `tokens`).
    pub fn program_batch(
        &self,
        batch: &keel_ir::batch::Batch,
        fwd: &Forward,
    ) -> keel_ir::batch::Batch {
        // Everything but the logits (not cloned: [N, V]).
        let mut b = keel_ir::batch::Batch {
            tensors: batch
                .tensors
                .iter()
                .filter(|(name, _)| name.as_str() != "logits")
                .map(|(name, t)| (name.clone(), t.clone()))
                .collect(),
        };
        let shape = b
            .tensors
            .get("tokens")
            .map(|t| t.shape.clone())
            .unwrap_or_default();
        for (name, x) in [("logp", &fwd.logp), ("entropy", &fwd.entropy)] {
            b.insert_f32(name, "f32", shape.clone(), x.clone());
        }
        b
    }

    /// `d_logits` [N·V] from the program's `d_logp` and `d_entropy` (0
    /// where the program has none).
    pub fn d_logits(&self, fwd: &Forward, outputs: &keel_ir::Outputs) -> Vec<f32> {
        let mut d = vec![0.0f32; self.tokens.len() * self.v];
        self.d_logits_into(fwd, outputs, &mut d);
        d
    }

    /// [`Self::d_logits`] into a buffer of N·V entries (every entry is
    /// written), so a loop can keep one instead of faulting in a fresh
    /// [N, V] allocation each step.
    pub fn d_logits_into(&self, fwd: &Forward, outputs: &keel_ir::Outputs, d: &mut [f32]) {
        let n = self.tokens.len();
        let col = |name: &str| -> Vec<f32> {
            match outputs.get(name) {
                Some(x) if x.len() == n => x.iter().map(|y| y as f32).collect(),
                _ => vec![0.0; n],
            }
        };
        let (dl, de) = (col("d_logp"), col("d_entropy"));
        match &self.z {
            Logits::F32(z) => backward(z, &self.tokens, self.v, fwd, &dl, &de, d),
            Logits::Bf16(z) => backward(z, &self.tokens, self.v, fwd, &dl, &de, d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, v: usize, seed: u64) -> Vec<f32> {
        keel_ir::synth::Lcg(seed).fill(n * v, -4.0, 4.0)
    }

    /// Against a direct f64 computation, including a row whose maximum
    /// arrives late (the online rescaling) and large magnitudes.
    #[test]
    fn forward_matches_f64() {
        let (n, v) = (7, 5000);
        let mut z = rows(n, v, 3);
        z[v * 2 + 4999] = 60.0;
        for x in &mut z[v * 3..v * 4] {
            *x *= 20.0;
        }
        let tokens: Vec<u32> = (0..n as u32).map(|i| i * 700).collect();
        let f = forward(&z, &tokens, v);
        for i in 0..n {
            let r: Vec<f64> = z[i * v..(i + 1) * v].iter().map(|&x| x as f64).collect();
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let h = lse - r.iter().map(|x| (x - lse).exp() * x).sum::<f64>();
            let lp = r[tokens[i] as usize] - lse;
            assert!(
                (f.logp[i] as f64 - lp).abs() <= 1e-5 * lp.abs().max(1.0),
                "row {i}: {} vs {lp}",
                f.logp[i]
            );
            assert!(
                (f.entropy[i] as f64 - h).abs() <= 1e-5 * h.abs().max(1.0),
                "row {i}: {} vs {h}",
                f.entropy[i]
            );
        }
    }

    /// d_logits equals central differences of a·logp + b·entropy.
    #[test]
    fn backward_matches_finite_differences() {
        let (n, v) = (3, 37);
        let z = rows(n, v, 11);
        let tokens = vec![0u32, 17, 36];
        let (a, b) = ([0.7f32, -1.3, 0.2], [0.4f32, 0.9, -2.0]);
        let f = forward(&z, &tokens, v);
        let mut d = vec![0.0f32; n * v];
        backward(&z, &tokens, v, &f, &a, &b, &mut d);
        let obj = |zz: &[f64], i: usize| -> f64 {
            let m = zz.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + zz.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let h = lse - zz.iter().map(|x| (x - lse).exp() * x).sum::<f64>();
            a[i] as f64 * (zz[tokens[i] as usize] - lse) + b[i] as f64 * h
        };
        for i in 0..n {
            let base: Vec<f64> = z[i * v..(i + 1) * v].iter().map(|&x| x as f64).collect();
            for k in 0..v {
                let (mut up, mut dn) = (base.clone(), base.clone());
                up[k] += 1e-5;
                dn[k] -= 1e-5;
                let fd = (obj(&up, i) - obj(&dn, i)) / 2e-5;
                let got = d[i * v + k] as f64;
                assert!(
                    (got - fd).abs() <= 1e-4 * fd.abs().max(1e-2),
                    "row {i} k {k}: {got} vs {fd}"
                );
            }
        }
    }

    #[test]
    fn bf16_logits() {
        let (n, v) = (2, 300);
        let z = rows(n, v, 5);
        let zb: Vec<Bf16> = z.iter().map(|&x| Bf16::from_f32(x)).collect();
        let back: Vec<f32> = zb.iter().map(|x| x.f32()).collect();
        let tokens = vec![3u32, 299];
        let fb = forward(&zb, &tokens, v);
        let ff = forward(&back, &tokens, v);
        assert_eq!(fb, ff, "bf16 is read as its f32 value");
        assert_eq!(Bf16::from_f32(1.0).0, 0x3F80);
        assert_eq!(Bf16::from_f32(-2.5).f32(), -2.5);
    }
}
