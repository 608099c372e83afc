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

/// One-pass running statistics in four lanes: sums of powers 1-4 of
/// `x - shift`, min and max. The CPU engine's sweeps fill them (portable or
/// SIMD, value `k` of a row going to lane `k % 4`); [`Lanes::moments`]
/// turns them into [`Moments`].
#[derive(Debug, Clone, Copy)]
pub struct Lanes {
    /// The value the powers are taken about: near the mean.
    pub shift: f64,
    /// `p[k][l]`: sum of `(x - shift)^(k + 1)` over lane `l`.
    pub p: [[f64; 4]; 4],
    /// Smallest value per lane.
    pub min: [f64; 4],
    /// Largest value per lane.
    pub max: [f64; 4],
}

impl Lanes {
    /// Empty lanes about `shift`.
    pub fn new(shift: f64) -> Self {
        Lanes { shift, p: [[0.0; 4]; 4], min: [f64::INFINITY; 4], max: [f64::NEG_INFINITY; 4] }
    }

    /// Adds `x` to lane `l`.
    #[inline(always)]
    pub fn add(&mut self, l: usize, x: f64) {
        let d = x - self.shift;
        let d2 = d * d;
        self.p[0][l] += d;
        self.p[1][l] += d2;
        self.p[2][l] += d2 * d;
        self.p[3][l] += d2 * d2;
        self.min[l] = if x < self.min[l] { x } else { self.min[l] };
        self.max[l] = if x > self.max[l] { x } else { self.max[l] };
    }

    /// The moments of the `n` values added.
    pub fn moments(&self, n: u64) -> Moments {
        let fold = |p: &[f64; 4]| (p[0] + p[1]) + (p[2] + p[3]);
        let min = self.min.into_iter().fold(f64::INFINITY, f64::min);
        let max = self.max.into_iter().fold(f64::NEG_INFINITY, f64::max);
        Moments::from_power_sums(n, self.shift, self.p.each_ref().map(fold), min, max)
    }
}

/// What each value of a row of weights is taken times: one factor for the
/// row (a torch-layout conv's output channel's folded BatchNorm, or 1), or
/// one per column (a keras-layout conv's run: its columns are the output
/// channels).
#[derive(Debug, Clone, Copy)]
pub enum Factors<'a> {
    /// One factor for every value.
    Row(f64),
    /// `columns[j]` for the value in column `j`.
    Columns(&'a [f64]),
}

impl<'a> Factors<'a> {
    /// The factors of columns `from..` of the row.
    pub fn from(self, from: usize) -> Factors<'a> {
        match self {
            Factors::Row(f) => Factors::Row(f),
            Factors::Columns(c) => Factors::Columns(&c[from..]),
        }
    }

    /// The factor of column `j`.
    #[inline(always)]
    pub fn at(self, j: usize) -> f64 {
        match self {
            Factors::Row(f) => f,
            Factors::Columns(c) => c[j],
        }
    }
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
    /// Accumulates in independent lanes, so the loop vectorises and each
    /// lane sums only every fourth value.
    pub fn from_slice(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        let mean = sum(xs) / xs.len() as f64;
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

    /// Exact moments of values each counted `counts[i]` times (a node
    /// set's cells): two passes, as [`Moments::from_slice`].
    pub fn from_counted(xs: &[f64], counts: &[u64]) -> Self {
        debug_assert_eq!(xs.len(), counts.len());
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return Self::default();
        }
        let mut total = [0.0; 2];
        for (i, (&x, &k)) in xs.iter().zip(counts).enumerate() {
            total[i & 1] += x * k as f64;
        }
        let mean = (total[0] + total[1]) / n as f64;
        let mut m = Moments { n, mean, ..Self::default() };
        for (&x, &k) in xs.iter().zip(counts) {
            let (d, k) = (x - mean, k as f64);
            let d2 = d * d;
            m.m2 += k * d2;
            m.m3 += k * d2 * d;
            m.m4 += k * d2 * d2;
            m.min = m.min.min(x);
            m.max = m.max.max(x);
        }
        m
    }

    /// Moments from sums of powers of the deviations `d = x - shift`:
    /// `sums = [sum d, sum d^2, sum d^3, sum d^4]`. One pass suffices for
    /// these; they are exact to rounding when `shift` is near the mean
    /// (within a fraction of a standard deviation), as a sample's mean is.
    pub fn from_power_sums(n: u64, shift: f64, sums: [f64; 4], min: f64, max: f64) -> Self {
        if n == 0 {
            return Self::default();
        }
        let nf = n as f64;
        let [s1, s2, s3, s4] = sums;
        let delta = s1 / nf;
        let m2 = (s2 - s1 * delta).max(0.0);
        let m3 = s3 - 3.0 * delta * s2 + 2.0 * nf * delta.powi(3);
        let m4 = s4 - 4.0 * delta * s3 + 6.0 * delta * delta * s2 - 3.0 * nf * delta.powi(4);
        Moments { n, mean: shift + delta, m2, m3, m4, min, max }
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

    /// Mean, smallest and largest value as reported: NaN when there are no
    /// values (never a 0.0 that looks like a measurement, nor infinities).
    pub fn location(&self) -> (f64, f64, f64) {
        if self.n == 0 {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            (self.mean, self.min, self.max)
        }
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
        (self.m3 / n) / (v * v.sqrt())
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

/// Histograms with fewer bins than this (the discard bin included) count
/// values in pairs (see [`Histogram::count`]) ...
const PAIR_BINS: usize = 64;
/// ... when given at least this many values at once (clearing and folding
/// the pair table costs about as much as counting this many singly).
const PAIR_MIN_VALUES: usize = 1 << 14;

/// How a histogram maps a value to its bin: `(x - lo) * scale` truncated
/// and capped at `bins - 1`, or `bins` (the discard bin) for values outside
/// `[lo, hi]` and NaN. Every bin loop, portable or SIMD, counts exactly
/// this.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Binning {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin (closed).
    pub hi: f64,
    /// `bins / (hi - lo)`.
    pub scale: f64,
    /// Number of bins.
    pub bins: u32,
}

impl Binning {
    /// The bin of `x`, `bins` when it is not counted.
    #[inline(always)]
    pub fn bin(&self, x: f64) -> u32 {
        // `as` saturates; values outside (and NaN) are discarded.
        if x >= self.lo && x <= self.hi {
            ((x - self.lo) * self.scale).min(f64::from(self.bins - 1)) as u32
        } else {
            self.bins
        }
    }
}

/// Values [`Histogram::count`] has binned at a time (small: its buffer is
/// zeroed on every call).
const COUNT_BLOCK: usize = 256;

/// Rows shorter than this are binned by [`Histogram::add_f32_rows`] as f64
/// products: the f32 loop's set-up per row costs more than it saves
/// (measured per value: rows of 32 values 1.34 against 0.79 ns, of 160
/// 0.84 against 0.78, of 576 0.72 against 0.76).
const SHORT_ROW: usize = 256;

/// The bin of each f64 value of `xs`, four at a time where the processor
/// has AVX2 (the same bins).
fn bins_f64(binning: &Binning, xs: &[f64], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the processor has AVX2 and FMA.
        return unsafe { crate::simd::bins_f64(binning, xs, out) };
    }
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = binning.bin(x);
    }
}

/// The bin of `f64::from(x) * factor` for each value of `xs`, one factor
/// or one per value: with one, in f32 eight at a time where the processor
/// has AVX2 and f32 holds the bins; else in f64 four at a time where it
/// has AVX2.
fn bins_scaled(binning: &Binning, xs: &[f32], factors: Factors<'_>, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: the processor has AVX2 and FMA.
        return unsafe {
            match factors {
                Factors::Row(factor) => match crate::simd::F32Bins::scaled(binning, factor) {
                    Some(f32_bins) => f32_bins.bins(xs, out),
                    None => crate::simd::bins_scaled(binning, xs, factors, out),
                },
                Factors::Columns(_) => crate::simd::bins_scaled(binning, xs, factors, out),
            }
        };
    }
    for (i, (o, &x)) in out.iter_mut().zip(xs).enumerate() {
        *o = binning.bin(f64::from(x) * factors.at(i));
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
    /// / (hi - lo)`, as the GPU kernel computes it).
    pub fn add_all<T: Copy + Into<f64>>(&mut self, xs: &[T]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2() {
            // SAFETY: the processor has AVX2.
            return unsafe { self.add_all_avx2(xs) };
        }
        self.add_all_portable(xs)
    }

    /// [`Histogram::add_all`] compiled for AVX2 (the bin loop vectorises).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn add_all_avx2<T: Copy + Into<f64>>(&mut self, xs: &[T]) {
        self.add_all_portable(xs)
    }

    #[inline(always)]
    fn add_all_portable<T: Copy + Into<f64>>(&mut self, xs: &[T]) {
        let binning = self.binning();
        self.count(xs.len(), |start, out| {
            for (o, &x) in out.iter_mut().zip(&xs[start..]) {
                *o = binning.bin(x.into());
            }
        });
    }

    /// [`Histogram::add_all`] of f32 values, binned eight at a time in f32
    /// where the processor has AVX2 (values near a bin edge re-binned in
    /// f64, so the counts are exactly the portable loop's).
    pub fn add_f32(&mut self, xs: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2() {
            if let Some(f32_bins) = crate::simd::F32Bins::new(&self.binning()) {
                return self.count(xs.len(), |start, out| {
                    // SAFETY: the processor has AVX2 and FMA.
                    unsafe { f32_bins.bins(&xs[start..start + out.len()], out) }
                });
            }
        }
        self.add_all_portable(xs)
    }

    /// Counts each value of `xs` `counts[i]` times (a node set's cells).
    pub fn add_counted(&mut self, xs: &[f64], counts: &[u64]) {
        let binning = self.binning();
        for (&x, &k) in xs.iter().zip(counts) {
            if let Some(c) = self.counts.get_mut(binning.bin(x) as usize) {
                *c += k;
            }
        }
    }

    /// [`Histogram::add_all`] of f64 values, binned four at a time where
    /// the processor has AVX2 (exactly the portable loop's bins).
    pub fn add_f64(&mut self, xs: &[f64]) {
        let binning = self.binning();
        self.count(xs.len(), |start, out| bins_f64(&binning, &xs[start..start + out.len()], out));
    }

    /// Counts `f64::from(x) * factors[r]` for each value `x` of row `r` of
    /// `xs` (rows of `per` values: a conv's output channels with their
    /// folded BatchNorm's factors), four at a time where the processor has
    /// AVX2 (exactly the portable loop's bins).
    pub fn add_f32_rows(&mut self, xs: &[f32], per: usize, factors: &[f64]) {
        debug_assert_eq!(xs.len(), per * factors.len());
        let binning = self.binning();
        // Short rows (a 1x1 conv's over few channels): the products in f64,
        // binned a block at a time with no set-up per row.
        let short = per < SHORT_ROW;
        let mut scaled = [0.0; COUNT_BLOCK];
        self.count(xs.len(), |start, out| {
            // A block of bins may span rows: one factor per stretch.
            let mut at = start;
            let end = start + out.len();
            while at < end {
                let r = at / per;
                let stop = ((r + 1) * per).min(end);
                let (xs, factor, block) = (&xs[at..stop], factors[r], at - start..stop - start);
                if short {
                    scaled[block].iter_mut().zip(xs).for_each(|(v, &x)| *v = f64::from(x) * factor);
                } else {
                    bins_scaled(&binning, xs, Factors::Row(factor), &mut out[block]);
                }
                at = stop;
            }
            if short {
                bins_f64(&binning, &scaled[..out.len()], out);
            }
        });
    }

    /// Counts `f64::from(x) * factors[j]` for each value `x` of column `j`
    /// of `xs` (rows of `factors.len()` values: a keras-layout conv's runs,
    /// whose columns are the output channels, with their folded
    /// BatchNorm's factors), binned four at a time where the processor has
    /// AVX2 (exactly the portable loop's bins).
    pub fn add_f32_columns(&mut self, xs: &[f32], factors: &[f64]) {
        let cols = factors.len();
        debug_assert!(xs.len().is_multiple_of(cols));
        let binning = self.binning();
        self.count(xs.len(), |start, out| {
            // A block may start inside a row: the factors from its column on.
            let (mut j, mut done) = (start % cols, 0);
            while done < out.len() {
                let n = (cols - j).min(out.len() - done);
                let (xs, fs) = (&xs[start + done..][..n], Factors::Columns(&factors[j..][..n]));
                bins_scaled(&binning, xs, fs, &mut out[done..done + n]);
                (j, done) = (0, done + n);
            }
        });
    }

    /// How this histogram bins a value.
    pub fn binning(&self) -> Binning {
        let bins = u32::try_from(self.counts.len()).ok().filter(|&b| b < u32::MAX).expect("bins fit a u32");
        Binning { lo: self.lo, hi: self.hi, scale: f64::from(bins) / (self.hi - self.lo), bins }
    }

    /// Counts `n` values whose bins `fill(start, out)` writes a block at a
    /// time (`bins` meaning outside). Many values over up to [`PAIR_BINS`]
    /// bins are counted in pairs (one increment of a bins x bins table,
    /// which stays in L1, for every two values); otherwise into four
    /// interleaved sub-histograms, so consecutive increments of the same
    /// central bin do not wait on each other.
    #[inline(always)]
    fn count(&mut self, n: usize, mut fill: impl FnMut(usize, &mut [u32])) {
        const BLOCK: usize = COUNT_BLOCK;
        let bins = self.counts.len();
        let mut index = [0u32; BLOCK];
        if n < 16 * bins {
            // Too few values for the tables to pay for themselves.
            for start in (0..n).step_by(BLOCK) {
                let out = &mut index[..BLOCK.min(n - start)];
                fill(start, out);
                for &i in out.iter() {
                    if let Some(c) = self.counts.get_mut(i as usize) {
                        *c += 1;
                    }
                }
            }
            return;
        }
        // No cell counts more than the values seen since the last flush, so
        // none overflows while `since_flush` stays below `u32::MAX`.
        let mut since_flush = 0usize;
        if bins < PAIR_BINS && n >= PAIR_MIN_VALUES {
            let mut pairs = vec![0u32; PAIR_BINS * PAIR_BINS];
            for start in (0..n).step_by(BLOCK) {
                let out = &mut index[..BLOCK.min(n - start)];
                fill(start, out);
                let mut two = out.chunks_exact(2);
                for p in &mut two {
                    // (The mask lets the compiler drop the bounds check.)
                    pairs[(p[0] as usize * PAIR_BINS + p[1] as usize) & (PAIR_BINS * PAIR_BINS - 1)] += 1;
                }
                if let [i] = two.remainder() {
                    // Only the last block can be odd: its last value with the discard bin.
                    pairs[*i as usize * PAIR_BINS + bins] += 1;
                }
                since_flush += out.len();
                if since_flush > u32::MAX as usize - BLOCK {
                    self.flush_pairs(&mut pairs);
                    since_flush = 0;
                }
            }
            return self.flush_pairs(&mut pairs);
        }
        let mut sub = vec![[0u32; 4]; bins + 1];
        for start in (0..n).step_by(BLOCK) {
            let out = &mut index[..BLOCK.min(n - start)];
            fill(start, out);
            for (k, &i) in out.iter().enumerate() {
                // (The clamp lets the compiler drop the bounds check.)
                sub[(i as usize).min(bins)][k & 3] += 1;
            }
            since_flush += out.len();
            if since_flush > u32::MAX as usize - BLOCK {
                self.flush(&mut sub);
                since_flush = 0;
            }
        }
        self.flush(&mut sub);
    }

    /// Moves the pair table's counts into `counts` (each cell `(a, b)`
    /// counts a value in bin `a` and one in bin `b`; the discard bin is
    /// left out) and clears it.
    fn flush_pairs(&mut self, pairs: &mut [u32]) {
        let bins = self.counts.len();
        for (a, row) in pairs.chunks_exact(PAIR_BINS).enumerate().take(bins + 1) {
            for (b, &c) in row[..=bins].iter().enumerate() {
                let c = u64::from(c);
                if a < bins {
                    self.counts[a] += c;
                }
                if b < bins {
                    self.counts[b] += c;
                }
            }
        }
        pairs.fill(0);
    }

    /// Moves the sub-histograms' counts into `counts` (the discard bin is
    /// left out by the zip) and clears them.
    fn flush(&mut self, sub: &mut [[u32; 4]]) {
        for (c, s) in self.counts.iter_mut().zip(sub.iter()) {
            *c += s.iter().map(|&v| u64::from(v)).sum::<u64>();
        }
        sub.fill([0; 4]);
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

    /// The f32 path (SIMD bins where the processor has them) counts
    /// exactly as the generic one, edges, outside values and NaN included.
    #[test]
    fn f32_histogram_matches_generic() {
        let mut xs: Vec<f32> = (0..5003).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
        xs.extend([-1.0, 1.0, 1.0000001, -1.0000001, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0]);
        for bins in [1, 7, 50, 333] {
            let mut a = Histogram::for_range(-1.0, 1.0, bins);
            let mut b = a.clone();
            a.add_f32(&xs);
            b.add_all(&xs);
            assert_eq!(a.counts, b.counts, "{bins} bins");
            let inside = xs.iter().filter(|&&x| (-1.0..=1.0).contains(&f64::from(x))).count();
            assert_eq!(a.counts.iter().sum::<u64>(), inside as u64, "{bins} bins");
        }
    }

    /// The f64 SIMD bin loop (where the processor has it) counts exactly as
    /// the portable one: values on and next to every edge, outside, NaN,
    /// infinities, a range whose scale overflows.
    #[test]
    fn f64_histogram_matches_portable() {
        for (lo, hi) in [(-1.0, 1.0), (0.3, 0.30000000000000004), (-1e-300, 1e-300)] {
            for bins in [1, 7, 50, 333] {
                let mut a = Histogram { lo, hi, counts: vec![0; bins] };
                let mut xs: Vec<f64> = a.edges().iter().flat_map(|&e| [e.next_down(), e, e.next_up()]).collect();
                xs.extend((0..5003).map(|i| lo + (hi - lo) * ((i * 7919) % 2003) as f64 / 2002.0));
                xs.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, 2.0 * hi - lo]);
                let mut b = a.clone();
                a.add_f64(&xs);
                b.add_all_portable(&xs);
                assert_eq!(a.counts, b.counts, "[{lo}, {hi}], {bins} bins");
            }
        }
    }

    /// Each row binned with its own factor, in short rows (binned as f64
    /// products) and long ones (the f32 loop).
    #[test]
    fn rows_are_binned_with_their_own_factors() {
        let xs: Vec<f32> = (0..9000).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
        for per in [37, 300] {
            let factors: Vec<f64> = (0..xs.len() / per).map(|r| [0.5, -1.25, 2.0][r % 3]).collect();
            let xs = &xs[..factors.len() * per];
            let products: Vec<f64> = xs
                .chunks_exact(per)
                .zip(&factors)
                .flat_map(|(row, a)| row.iter().map(move |&x| f64::from(x) * a))
                .collect();
            let m = Moments::from_slice(&products);
            let (mut a, mut b) = (Histogram::for_range(m.min, m.max, 20), Histogram::for_range(m.min, m.max, 20));
            a.add_f32_rows(xs, per, &factors);
            b.add_all_portable(&products);
            assert_eq!(a.counts, b.counts, "rows of {per}");
        }
    }

    /// Each column of a keras-layout run is binned with its own factor,
    /// as the f64 products: rows longer and shorter than a block of bins
    /// (so blocks start inside rows), enough values for the pair counts.
    #[test]
    fn columns_are_binned_with_their_own_factors() {
        let xs: Vec<f32> = (0..20_000).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
        for cols in [3, 37, 300] {
            let factors: Vec<f64> = (0..cols).map(|j| [0.5, -1.25, 2.0, 0.7][j % 4]).collect();
            let xs = &xs[..xs.len() / cols * cols];
            let products: Vec<f64> = xs.iter().enumerate().map(|(i, &x)| f64::from(x) * factors[i % cols]).collect();
            let m = Moments::from_slice(&products);
            for bins in [7, 50] {
                let (mut a, mut b) =
                    (Histogram::for_range(m.min, m.max, bins), Histogram::for_range(m.min, m.max, bins));
                a.add_f32_columns(xs, &factors);
                b.add_all_portable(&products);
                assert_eq!(a.counts, b.counts, "rows of {cols}, {bins} bins");
            }
        }
    }

    /// Scaled f32 values (a folded BatchNorm's factor) bin exactly as
    /// their f64 products, factors of either sign.
    #[test]
    fn scaled_f32_histogram_matches_products() {
        let base: Vec<f32> = (0..5003).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
        for factor in [1.0, 0.3, -1.7] {
            // Values whose products land on and next to every edge (and
            // the range's ends) of each binning below.
            let mut xs = base.clone();
            let m = Moments::from_slice(&base.iter().map(|&x| f64::from(x) * factor).collect::<Vec<_>>());
            for bins in [1, 7, 50] {
                for e in Histogram::for_range(m.min, m.max, bins).edges() {
                    let x = (e / factor) as f32;
                    xs.extend([x.next_down(), x, x.next_up()]);
                }
            }
            xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5, -2.5]);
            // Whole rows of 37, then one of 21.
            while xs.len() % 37 != 21 {
                xs.push(0.0);
            }
            let products: Vec<f64> = xs.iter().map(|&x| f64::from(x) * factor).collect();
            for bins in [1, 7, 50] {
                let mut a = Histogram::for_range(m.min, m.max, bins);
                let mut b = a.clone();
                // Rows of 37 values, one factor each (an odd row length, so
                // blocks of bins span rows, and rows have a body of eight
                // at a time and a tail).
                let rows = xs.len() / 37 * 37;
                a.add_f32_rows(&xs[..rows], 37, &vec![factor; rows / 37]);
                a.add_f32_rows(&xs[rows..], 21, &[factor]);
                b.add_all_portable(&products);
                assert_eq!(a.counts, b.counts, "factor {factor}, {bins} bins");
                // Rows long enough for the f32 loop (and a short last one).
                let mut long = Histogram::for_range(m.min, m.max, bins);
                let rows = xs.len() / 300 * 300;
                long.add_f32_rows(&xs[..rows], 300, &vec![factor; rows / 300]);
                long.add_f32_rows(&xs[rows..], xs.len() - rows, &[factor]);
                assert_eq!(long.counts, b.counts, "factor {factor}, {bins} bins, rows of 300");
            }
        }
    }

    /// The f32 bin loop (where the processor has it) and the pair counts
    /// give exactly the f64 definition's counts: values on every edge and
    /// their f32 neighbours, ranges f32 holds exactly or not, a narrow
    /// range far from zero, 1 to 4096 bins, odd numbers of values.
    #[test]
    fn f32_bins_are_exact_at_every_edge() {
        let ranges = [(-1.0, 1.0), (-0.6123456789, 0.5987654321), (0.1, 0.7), (-3e-5, 7e-5), (1000.0, 1000.001)];
        for (lo, hi) in ranges {
            for bins in [1, 7, 50, 62, 63, 64, 333, 4096] {
                let empty = Histogram { lo, hi, counts: vec![0; bins] };
                let mut xs: Vec<f32> = Vec::new();
                for e in empty.edges() {
                    let e = e as f32;
                    xs.extend([e.next_down(), e, e.next_up()]);
                }
                let n = 40_001 + bins % 2;
                xs.extend((0..n).map(|i| (lo + (hi - lo) * ((i * 7919 % n) as f64 / n as f64)) as f32));
                xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, (lo - 1.0) as f32, (hi + 1.0) as f32]);
                let binning = empty.binning();
                let mut want = vec![0u64; bins];
                for &x in &xs {
                    if let Some(c) = want.get_mut(binning.bin(f64::from(x)) as usize) {
                        *c += 1;
                    }
                }
                let mut got = empty.clone();
                got.add_f32(&xs);
                assert_eq!(got.counts, want, "[{lo}, {hi}], {bins} bins");
            }
        }
    }

    #[test]
    fn histogram_closes_last_bin() {
        let mut h = Histogram::for_range(0.0, 1.0, 4);
        h.add_all(&[0.0, 0.25, 0.5, 0.99, 1.0, 1.5]);
        assert_eq!(h.counts, [1, 1, 1, 2]);
    }
}
