//! What every pointwise op means: the one definition of `unary`, `binary`,
//! `clamp`, `where` and `rand` on f64. The interpreter evaluates nodes with
//! it, the graph's constant folder ([`fold`]) folds with it, the CPU kernel
//! plan, the host JIT and the device lowering call it or are tested against
//! it bit for bit (`docs/kernels.md`, `docs/host-code.md`).

use crate::ir::{Bin, Op, Un};

/// A uniform number in [0, 1) from a seed and an index (SplitMix64).
pub fn uniform(seed: f64, i: usize) -> f64 {
    let mut z = (seed as i64 as u64) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Unary operations on f64 (`sign(0) = 0`; `not` maps 0 to 1, anything
/// else to 0).
pub fn unary(u: Un, x: f64) -> f64 {
    match u {
        Un::Neg => -x,
        Un::Exp => x.exp(),
        Un::Log => x.ln(),
        Un::Log1p => x.ln_1p(),
        Un::Expm1 => x.exp_m1(),
        Un::Sqrt => x.sqrt(),
        Un::Abs => x.abs(),
        Un::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        Un::Sigmoid => {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }
        Un::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        Un::Tanh => x.tanh(),
        Un::Relu => x.max(0.0),
        Un::Cos => x.cos(),
        Un::Sin => x.sin(),
        Un::Floor => x.floor(),
        Un::Ceil => x.ceil(),
        Un::Round => x.round(),
        Un::Not => b(x == 0.0),
    }
}

fn b(v: bool) -> f64 {
    if v { 1.0 } else { 0.0 }
}

/// Binary operations. `min`/`max` propagate NaN (like torch.minimum).
pub fn binary(op: Bin, x: f64, y: f64) -> f64 {
    match op {
        Bin::Add => x + y,
        Bin::Sub => x - y,
        Bin::Mul => x * y,
        Bin::Div => x / y,
        Bin::Pow => x.powf(y),
        // NaN-propagating; otherwise the smaller (larger) value, the first
        // argument on a tie (so -0 and +0 are deterministic). The host JIT
        // reproduces exactly this.
        Bin::Min => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if y < x {
                y
            } else {
                x
            }
        }
        Bin::Max => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if y > x {
                y
            } else {
                x
            }
        }
        Bin::Lt => b(x < y),
        Bin::Le => b(x <= y),
        Bin::Gt => b(x > y),
        Bin::Ge => b(x >= y),
        Bin::Eq => b(x == y),
        Bin::Ne => b(x != y),
        Bin::And => b(x != 0.0 && y != 0.0),
        Bin::Or => b(x != 0.0 || y != 0.0),
    }
}

/// `min(max(x, lo), hi)`, NaN-propagating in x, like torch.clamp: below lo
/// gives lo, then above hi gives hi (a NaN bound never wins a comparison).
pub fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let y = if x < lo { lo } else { x };
    if y > hi { hi } else { y }
}

/// Fold a pointwise op over constants (the builder's constant folding).
pub fn fold(op: &Op, a: &[f64]) -> Option<f64> {
    Some(match (op, a) {
        (Op::Unary(u), [x]) => unary(*u, *x),
        (Op::Binary(bn), [x, y]) => binary(*bn, *x, *y),
        (Op::Where, [c, t, e]) => {
            if *c != 0.0 {
                *t
            } else {
                *e
            }
        }
        (Op::Clamp, [x, lo, hi]) => clamp(*x, *lo, *hi),
        _ => return None,
    })
}
