//! Branch-free `exp` and `ln` in f64 for the CPU kernel executor, and `exp`
//! in f32 for the fused logits kernel.
//!
//! The standard library calls libm one value at a time; these are written
//! as straight-line arithmetic and bit operations (no calls, no branches,
//! no fused multiply-adds), so the loops that apply them to a chunk
//! compile to vector code, and they give the same bits on every x86-64 or
//! AArch64 machine. Both are within 2 ulp of the correctly rounded result
//! over the whole f64 range (tested against the standard library), which
//! is far inside the executors' parity tolerance; special values (±∞,
//! NaN, 0, negative arguments of `ln`, subnormals) follow the standard
//! library exactly.

// The constants are fdlibm's, digit for digit as published.
#![allow(clippy::excessive_precision)]

/// 1.5 · 2^52: adding it rounds a value below 2^51 to an integer in the
/// low bits of the mantissa.
const SHIFT: f64 = 6_755_399_441_055_744.0;
/// ln 2 split in two (fdlibm): `n · LN2_HI` is exact for |n| < 2^11.
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;

/// e^x.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    // Beyond these, e^x is ∞ or 0 in f64; NaN stays NaN.
    let xc = x.clamp(-746.0, 710.0);
    // x = n·ln 2 + r, |r| ≤ ln 2 / 2.
    let t = xc * std::f64::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r by its Taylor series to r^13 (truncation error < 1e-17).
    let mut p = 1.0 / 6_227_020_800.0;
    p = p * r + 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // · 2^n, in two factors so that n down to -1076 and up to 1025 stay in
    // the exponent's range (the last product rounds into subnormals or ∞).
    let k = (t.to_bits() as i64).wrapping_sub(SHIFT.to_bits() as i64);
    let k1 = k >> 1;
    let k2 = k - k1;
    let s1 = f64::from_bits((k1.wrapping_add(1023) as u64) << 52);
    let s2 = f64::from_bits((k2.wrapping_add(1023) as u64) << 52);
    let y = p * s1 * s2;
    if x.is_nan() { x } else { y }
}

/// e^x in f32 (Cephes' reduction and polynomial), for the fused logits
/// kernel: eight lanes per AVX2 vector.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let xc = x.clamp(-104.0, 89.0);
    const SHIFT32: f32 = 12_582_912.0; // 1.5 · 2^23
    let t = xc * std::f32::consts::LOG2_E + SHIFT32;
    let n = t - SHIFT32;
    let r = (xc - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // · 2^n in two factors (n from -150 to 129).
    let k = (t.to_bits() as i32).wrapping_sub(SHIFT32.to_bits() as i32);
    let k1 = k >> 1;
    let k2 = k - k1;
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k2.wrapping_add(127) as u32) << 23);
    let e = y * s1 * s2;
    if x.is_nan() { x } else { e }
}

/// The natural logarithm (fdlibm's reduction and polynomial).
#[inline(always)]
pub fn ln(x: f64) -> f64 {
    // Subnormals: scale into the normal range first.
    let tiny = x < f64::MIN_POSITIVE;
    let xs = if tiny {
        x * 18_014_398_509_481_984.0
    } else {
        x
    }; // 2^54
    // x = 2^k · m, m in [√2/2, √2).
    const SQRT_HALF_BITS: i64 = 0x3fe6_a09e_667f_3bcd;
    let ix = (xs.to_bits() as i64).wrapping_add(0x3ff0_0000_0000_0000 - SQRT_HALF_BITS);
    let k = (ix >> 52) - 1023 - if tiny { 54 } else { 0 };
    let m = f64::from_bits(((ix & 0x000f_ffff_ffff_ffff) + SQRT_HALF_BITS) as u64);
    let f = m - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let mut r = 1.479_819_860_511_658_591e-1;
    r = r * z + 1.531_383_769_920_937_332e-1;
    r = r * z + 1.818_357_216_161_805_012e-1;
    r = r * z + 2.222_219_843_214_978_396e-1;
    r = r * z + 2.857_142_874_366_239_149e-1;
    r = r * z + 3.999_999_999_940_941_908e-1;
    r = r * z + 6.666_666_666_666_735_130e-1;
    r *= z;
    // k as f64 without an integer conversion instruction (|k| < 2^20).
    let dk = f64::from_bits(0x4330_0000_0000_0000 | (k + (1 << 20)) as u64)
        - (4_503_599_627_370_496.0 + 1_048_576.0);
    let y = dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f);
    if x > 0.0 && x < f64::INFINITY {
        y
    } else if x == 0.0 {
        f64::NEG_INFINITY
    } else if x == f64::INFINITY {
        x
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place (same sign, finite).
    fn ulps(a: f64, b: f64) -> u64 {
        if a == b || (a.is_nan() && b.is_nan()) {
            return 0;
        }
        if a.is_nan() || b.is_nan() || a.signum() != b.signum() {
            return u64::MAX;
        }
        a.to_bits().abs_diff(b.to_bits())
    }

    fn sweep() -> Vec<f64> {
        let mut v = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(f64::from_bits(state));
        }
        for i in -8000..8000 {
            v.push(i as f64 * 0.0937);
        }
        v
    }

    #[test]
    fn exp_is_within_two_ulp_everywhere() {
        let mut worst = 0;
        for x in sweep().into_iter().filter(|x| x.abs() < 800.0) {
            let d = ulps(exp(x), x.exp());
            assert!(d <= 2, "exp({x:e}) = {:e}, std {:e}", exp(x), x.exp());
            worst = worst.max(d);
        }
        assert!(worst <= 2);
        for (x, want) in [
            (0.0, 1.0),
            (-0.0, 1.0),
            (1.0, std::f64::consts::E),
            (f64::INFINITY, f64::INFINITY),
            (f64::NEG_INFINITY, 0.0),
            (709.9, f64::INFINITY),
            (-745.2, 0.0),
            (1e300, f64::INFINITY),
            (-1e300, 0.0),
        ] {
            let got = exp(x);
            assert!(
                got == want || ulps(got, want) <= 1,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(exp(f64::NAN).is_nan());
        // Into the subnormals, within 2 ulp of the subnormal grid.
        for x in [-708.5, -720.0, -740.0, -744.0] {
            assert!(ulps(exp(x), x.exp()) <= 2, "exp({x})");
        }
    }

    #[test]
    fn exp_f32_is_within_two_ulp_everywhere() {
        let ulps32 = |a: f32, b: f32| -> u32 {
            if a == b {
                0
            } else if a.is_nan() || b.is_nan() || a.signum() != b.signum() {
                u32::MAX
            } else {
                a.to_bits().abs_diff(b.to_bits())
            }
        };
        let mut worst = 0;
        for x in sweep()
            .into_iter()
            .map(|x| x as f32)
            .filter(|x| x.abs() < 110.0)
        {
            // Against the correctly rounded value (f64 exp, rounded once).
            let want = (x as f64).exp() as f32;
            let d = ulps32(exp_f32(x), want);
            assert!(d <= 2, "exp_f32({x:e}) = {:e}, want {want:e}", exp_f32(x));
            worst = worst.max(d);
        }
        assert!(worst <= 2);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-110.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn ln_is_within_two_ulp_everywhere() {
        for x in sweep().into_iter().filter(|x| *x > 0.0 && x.is_finite()) {
            let d = ulps(ln(x), x.ln());
            assert!(d <= 2, "ln({x:e}) = {:e}, std {:e}", ln(x), x.ln());
        }
        for x in [
            1.0,
            2.0,
            0.5,
            1e-310,
            4.9e-324,
            f64::MAX,
            1.0 + 1e-15,
            1.0 - 1e-16,
        ] {
            assert!(
                ulps(ln(x), x.ln()) <= 1,
                "ln({x:e}) = {}, std {}",
                ln(x),
                x.ln()
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert_eq!(ln(-0.0), f64::NEG_INFINITY);
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
        assert!(ln(-1.0).is_nan());
        assert!(ln(f64::NEG_INFINITY).is_nan());
        assert!(ln(f64::NAN).is_nan());
    }
}
