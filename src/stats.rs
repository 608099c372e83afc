//! Mergeable statistics: moments up to the fourth (two-pass within a chunk,
//! Chan/Pébay merges across chunks, workgroups, checkpoints and shards),
//! and histograms.

use serde::{Deserialize, Serialize};

/// Count, mean, central moment sums `M2..M4`, min and max of a sample.
///
/// Built exactly from a slice by [`Moments::from_slice`] (two passes) and
/// combined with [`Moments::merge`] (Pébay's pairwise formulas), so no
/// statistic is ever computed as `E[x^2] - E[x]^2`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Number of values.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Sum of cubed deviations.
    pub m3: f64,
    /// Sum of fourth-power deviations.
    pub m4: f64,
    /// Smallest value (`+inf` when empty).
    pub min: f64,
    /// Largest value (`-inf` when empty).
    pub max: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments { n: 0, mean: 0.0, m2: 0.0, m3: 0.0, m4: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Moments {
    /// Exact moments of a slice: mean first, then central sums.
    pub fn from_slice(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        Self::from_slice_with_sum(xs, xs.iter().sum())
    }

    /// As [`Moments::from_slice`] when the caller already has the sum.
    pub fn from_slice_with_sum(xs: &[f64], sum: f64) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        let n = xs.len() as f64;
        let mean = sum / n;
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &x in xs {
            let d = x - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
            min = min.min(x);
            max = max.max(x);
        }
        Moments { n: xs.len() as u64, mean, m2, m3, m4, min, max }
    }

    /// Folds `other` into `self` as if both samples had been one.
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let d = other.mean - self.mean;
        let d_n = d / n;
        let d2 = d * d;
        let m2 = self.m2 + other.m2 + d2 * na * nb / n;
        let m3 = self.m3 + other.m3 + d2 * d_n * na * nb * (na - nb) / n + 3.0 * d_n * (na * other.m2 - nb * self.m2);
        let m4 = self.m4
            + other.m4
            + d2 * d_n * d_n * na * nb * (na * na - na * nb + nb * nb) / n
            + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * other.m3 - nb * self.m3);
        self.mean += d_n * nb;
        self.m2 = m2;
        self.m3 = m3;
        self.m4 = m4;
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Population variance (ddof = 0).
    pub fn variance(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.m2 / self.n as f64
        }
    }

    /// Population standard deviation (ddof = 0): the layer fluctuation when
    /// the sample is a node set's strengths.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Skewness `m3 / m2^1.5` (biased, as `scipy.stats.skew`); NaN when the
    /// values are all equal.
    pub fn skewness(&self) -> f64 {
        let n = self.n as f64;
        let v = self.m2 / n;
        if self.n == 0 || v <= 0.0 {
            return f64::NAN;
        }
        (self.m3 / n) / v.powf(1.5)
    }

    /// Excess kurtosis `m4 / m2^2 - 3` (biased, as `scipy.stats.kurtosis`);
    /// NaN when the values are all equal.
    pub fn kurtosis(&self) -> f64 {
        let n = self.n as f64;
        let v = self.m2 / n;
        if self.n == 0 || v <= 0.0 {
            return f64::NAN;
        }
        (self.m4 / n) / (v * v) - 3.0
    }
}

/// Counts of values in equal-width bins over `[lo, hi]`; the last bin is
/// closed, as numpy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Empty histogram of `bins` bins over the range of `m` (widened by 0.5
    /// either side when all values are equal, as numpy does).
    pub fn for_range(min: f64, max: f64, bins: usize) -> Self {
        let (lo, hi) = if min < max {
            (min, max)
        } else if min.is_finite() {
            (min - 0.5, min + 0.5)
        } else {
            (0.0, 1.0)
        };
        Histogram { lo, hi, counts: vec![0; bins.max(1)] }
    }

    /// Bin index of `x`, or `None` outside `[lo, hi]` (and for NaN).
    #[inline]
    pub fn bin(&self, x: f64) -> Option<usize> {
        if !(x >= self.lo && x <= self.hi) {
            return None;
        }
        let bins = self.counts.len();
        let b = ((x - self.lo) / (self.hi - self.lo) * bins as f64) as usize;
        Some(b.min(bins - 1))
    }

    /// Counts every value of `xs`.
    pub fn add_all(&mut self, xs: &[f64]) {
        for &x in xs {
            if let Some(b) = self.bin(x) {
                self.counts[b] += 1;
            }
        }
    }

    /// Edges `lo + i (hi - lo) / bins`, `i = 0..=bins`.
    pub fn edges(&self) -> Vec<f64> {
        let bins = self.counts.len();
        (0..=bins).map(|i| self.lo + (self.hi - self.lo) * i as f64 / bins as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_whole() {
        let xs: Vec<f64> = (0..1001).map(|i| ((i * 7919) % 1000) as f64 * 0.013 - 3.0 + (i as f64).sin()).collect();
        let whole = Moments::from_slice(&xs);
        let mut merged = Moments::default();
        for chunk in xs.chunks(37) {
            merged.merge(&Moments::from_slice(chunk));
        }
        assert_eq!(whole.n, merged.n);
        for (a, b) in [(whole.mean, merged.mean), (whole.m2, merged.m2), (whole.m3, merged.m3), (whole.m4, merged.m4)] {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!((whole.min, whole.max), (merged.min, merged.max));
    }

    #[test]
    fn known_values() {
        let m = Moments::from_slice(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.mean, 2.5);
        assert!((m.std() - 1.118033988749895).abs() < 1e-15);
        assert!(m.skewness().abs() < 1e-15);
        assert!((m.kurtosis() - (-1.36)).abs() < 1e-12);
        assert!(Moments::from_slice(&[2.0, 2.0]).skewness().is_nan());
    }

    #[test]
    fn histogram_closes_last_bin() {
        let mut h = Histogram::for_range(0.0, 1.0, 4);
        h.add_all(&[0.0, 0.25, 0.5, 0.99, 1.0, 1.5]);
        assert_eq!(h.counts, [1, 1, 1, 2]);
    }
}
