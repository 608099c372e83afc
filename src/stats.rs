//! Mergeable statistics: moments up to the fourth (two-pass within a chunk,
//! Chan/Pébay merges across chunks, workgroups, checkpoints and shards),
//! and histograms.

use serde::{Deserialize, Serialize};

/// Independent accumulators of the streaming reductions.
pub const LANES: usize = 8;

/// Sum of `xs` in [`LANES`] lanes, folded pairwise: vectorises, and is more
/// accurate than one running sum.
pub fn sum(xs: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += x;
    }
    fold(&acc)
}

/// Pairwise fold of the lanes.
fn fold(acc: &[f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

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
        Self::from_slice_with_sum(xs, sum(xs))
    }

    /// As [`Moments::from_slice`] when the caller already has the sum.
    /// Accumulates in independent lanes, so the loop vectorises and each
    /// lane sums only every fourth value.
    pub fn from_slice_with_sum(xs: &[f64], sum: f64) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        let mean = sum / xs.len() as f64;
        // Four lanes: five accumulators of four f64 fill the SSE2 registers.
        const L: usize = 4;
        let mut m2 = [0.0; L];
        let mut m3 = [0.0; L];
        let mut m4 = [0.0; L];
        let mut min = [f64::INFINITY; L];
        let mut max = [f64::NEG_INFINITY; L];
        let chunks = xs.chunks_exact(L);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..L {
                let x = c[l];
                let d = x - mean;
                let d2 = d * d;
                m2[l] += d2;
                m3[l] += d2 * d;
                m4[l] += d2 * d2;
                min[l] = if x < min[l] { x } else { min[l] };
                max[l] = if x > max[l] { x } else { max[l] };
            }
        }
        for (l, &x) in rest.iter().enumerate() {
            let d = x - mean;
            let d2 = d * d;
            m2[l] += d2;
            m3[l] += d2 * d;
            m4[l] += d2 * d2;
            min[l] = min[l].min(x);
            max[l] = max[l].max(x);
        }
        Moments {
            n: xs.len() as u64,
            mean,
            m2: (m2[0] + m2[1]) + (m2[2] + m2[3]),
            m3: (m3[0] + m3[1]) + (m3[2] + m3[3]),
            m4: (m4[0] + m4[1]) + (m4[2] + m4[3]),
            min: min.iter().copied().fold(f64::INFINITY, f64::min),
            max: max.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
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
    /// The `[lo, hi]` a histogram of values from `min` to `max` covers:
    /// widened by 0.5 either side when all values are equal (as numpy
    /// does), `[0, 1]` when there are none.
    pub fn range_for(min: f64, max: f64) -> (f64, f64) {
        if min < max {
            (min, max)
        } else if min.is_finite() {
            (min - 0.5, min + 0.5)
        } else {
            (0.0, 1.0)
        }
    }

    /// Empty histogram of `bins` bins over [`Histogram::range_for`]`(min, max)`.
    pub fn for_range(min: f64, max: f64, bins: usize) -> Self {
        let (lo, hi) = Self::range_for(min, max);
        Histogram { lo, hi, counts: vec![0; bins.max(1)] }
    }

    /// Counts every value of `xs` inside `[lo, hi]` (bin `(x - lo) * bins
    /// / (hi - lo)`, as the GPU kernel computes it). Consecutive values
    /// usually land in the same central bins, so counting goes to four
    /// interleaved sub-histograms to keep the increments independent.
    pub fn add_all(&mut self, xs: &[f64]) {
        assert!(self.counts.len() <= u32::MAX as usize, "bins must fit a u32");
        let (lo, hi) = (self.lo, self.hi);
        let bins = self.counts.len();
        let scale = bins as f64 / (hi - lo);
        let last = (bins - 1) as f64;
        let bin = |x: f64| {
            let t = ((x - lo) * scale).min(last);
            // SAFETY: callers pass only `lo <= x <= hi` (so not NaN), hence
            // `0 <= t <= bins - 1`, which fits a u32 (bins <= 4096).
            unsafe { t.to_int_unchecked::<u32>() as usize }
        };
        if xs.len() < 16 * bins {
            // Too few values for the sub-histograms to pay for themselves.
            for &x in xs {
                if x >= lo && x <= hi {
                    self.counts[bin(x)] += 1;
                }
            }
            return;
        }
        let mut sub = vec![[0u32; 4]; bins];
        for (k, chunk) in xs.chunks(u32::MAX as usize).enumerate() {
            if k > 0 {
                self.flush(&mut sub);
            }
            let quads = chunk.chunks_exact(4);
            let rest = quads.remainder();
            for q in quads {
                for (l, &x) in q.iter().enumerate() {
                    if x >= lo && x <= hi {
                        sub[bin(x)][l] += 1;
                    }
                }
            }
            for &x in rest {
                if x >= lo && x <= hi {
                    sub[bin(x)][0] += 1;
                }
            }
        }
        self.flush(&mut sub);
    }

    fn flush(&mut self, sub: &mut [[u32; 4]]) {
        for (c, s) in self.counts.iter_mut().zip(sub.iter_mut()) {
            *c += s.iter().map(|&v| u64::from(v)).sum::<u64>();
            *s = [0; 4];
        }
    }

    /// Adds another histogram's counts (same bins and range).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
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
