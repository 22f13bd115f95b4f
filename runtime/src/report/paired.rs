//! The paired comparison of `keel compare --baseline`: for one metric, the
//! differences d_i = arm_i − baseline_i over the seeds both arms ran (same
//! seed: same warm start, same problems), their mean, a 95 % percentile
//! bootstrap interval of that mean over seeds, and how many seeds agree in
//! sign with it.
//!
//! The bootstrap draws `RESAMPLES` samples of the n differences with
//! replacement (a fixed SplitMix64 stream: the same runs give the same
//! interval), takes each sample's mean, and reports the 2.5 % and 97.5 %
//! quantiles of those means (linear interpolation between order
//! statistics, numpy's default). It assumes the seeds are independent
//! draws of one distribution of paired differences; with few seeds the
//! percentile interval is too narrow (it cannot be wider than the
//! differences themselves), so the sign agreement is reported beside it.
//! With one seed there is no interval.

use keel_model::rng::Rng;

/// Bootstrap samples drawn per interval.
pub const RESAMPLES: usize = 10_000;
/// The interval's coverage.
pub const CONFIDENCE: f64 = 0.95;

/// The paired comparison of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    /// Mean of the differences (arm − baseline).
    pub mean: f64,
    /// The 95 % bootstrap interval of the mean; `None` with one seed.
    pub interval: Option<(f64, f64)>,
    /// Seeds paired.
    pub n: usize,
    /// Seeds whose difference has the sign of the mean (none when the mean
    /// is 0).
    pub agree: usize,
}

impl Paired {
    /// Whether the interval excludes 0 (the difference is marked).
    pub fn excludes_zero(&self) -> bool {
        self.interval.is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0)
    }
}

/// The paired comparison of the differences `d` (one per seed); `None`
/// when there is none.
pub fn bootstrap(d: &[f64], resamples: usize, seed: u64) -> Option<Paired> {
    let n = d.len();
    if n == 0 {
        return None;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let agree = d
        .iter()
        .filter(|&&x| (mean > 0.0 && x > 0.0) || (mean < 0.0 && x < 0.0))
        .count();
    let interval = (n > 1).then(|| {
        let mut rng = Rng::new(seed);
        let mut means: Vec<f64> = (0..resamples.max(1))
            .map(|_| {
                let s: f64 = (0..n)
                    .map(|_| d[(rng.next_u64() % n as u64) as usize])
                    .sum();
                s / n as f64
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let tail = (1.0 - CONFIDENCE) / 2.0;
        (quantile(&means, tail), quantile(&means, 1.0 - tail))
    });
    Some(Paired {
        mean,
        interval,
        n,
        agree,
    })
}

/// Quantile `q` of the sorted `v`, interpolating linearly between order
/// statistics (numpy's default, R's type 7).
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    let next = v.get(i + 1).copied().unwrap_or(v[i]);
    v[i] + f * (next - v[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known difference: every seed is 0.1 to 0.3 better, so every
    /// resampled mean lies in [0.1, 0.3]: the interval excludes 0 and all
    /// six seeds agree.
    #[test]
    fn a_known_difference_excludes_zero() {
        let d = [0.1, 0.2, 0.3, 0.2, 0.1, 0.3];
        let p = bootstrap(&d, RESAMPLES, 1).expect("paired");
        assert!((p.mean - 0.2).abs() < 1e-15);
        let (lo, hi) = p.interval.expect("an interval");
        assert!(
            (0.1..0.2).contains(&lo) && hi > 0.2 && hi <= 0.3,
            "{lo} {hi}"
        );
        assert!(p.excludes_zero());
        assert_eq!((p.n, p.agree), (6, 6));
        // A constant difference has a point interval.
        let p = bootstrap(&[0.05; 4], RESAMPLES, 1).expect("paired");
        assert_eq!(p.interval, Some((0.05, 0.05)));
    }

    /// Differences that cancel: mean 0, an interval around it, no mark.
    #[test]
    fn a_zero_difference_is_not_marked() {
        let d = [0.1, -0.1, 0.1, -0.1, 0.2, -0.2];
        let p = bootstrap(&d, RESAMPLES, 1).expect("paired");
        assert_eq!(p.mean, 0.0);
        let (lo, hi) = p.interval.expect("an interval");
        assert!(lo < 0.0 && hi > 0.0, "{lo} {hi}");
        assert!(!p.excludes_zero());
        assert_eq!(p.agree, 0);
    }

    /// Two seeds with differences 0 and 1: a resample's mean is 0, 0.5 or
    /// 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 %
    /// quantiles are exactly 0 and 1.
    #[test]
    fn two_seeds_give_the_exact_quantiles() {
        let p = bootstrap(&[0.0, 1.0], RESAMPLES, 7).expect("paired");
        assert_eq!(p.mean, 0.5);
        assert_eq!(p.interval, Some((0.0, 1.0)));
        assert!(!p.excludes_zero());
        assert_eq!(p.agree, 1);
    }

    /// One seed: the difference, no interval, never marked; no seed: none.
    #[test]
    fn one_seed_has_no_interval() {
        let p = bootstrap(&[0.3], RESAMPLES, 1).expect("paired");
        assert_eq!((p.mean, p.interval, p.n, p.agree), (0.3, None, 1, 1));
        assert!(!p.excludes_zero());
        assert_eq!(bootstrap(&[], RESAMPLES, 1), None);
    }

    /// The same differences and seed give the same interval.
    #[test]
    fn the_interval_is_reproducible() {
        let d = [0.02, -0.01, 0.04, 0.0, 0.03];
        assert_eq!(bootstrap(&d, RESAMPLES, 3), bootstrap(&d, RESAMPLES, 3));
    }
}
