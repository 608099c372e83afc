//! AVX2 (with FMA) builds of the CPU engine's two hot loops, for x86-64
//! processors that have them (checked at run time with [`avx2`]); elsewhere
//! the portable loops in [`crate::stats`] and the CPU engine run. The sweep
//! puts each value's powers in the same lane as the portable loop, so sums
//! agree to rounding; the bin loop works in f32 and bins again in f64 every
//! value within f32 rounding of a bin edge, so counts agree exactly. Both
//! fetch memory ahead of their loads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::stats::{Binning, Factors, Lanes};

/// How far ahead (in f32 values) the loops over weights fetch memory: the
/// hardware prefetcher alone leaves them waiting on loads of a large tensor.
const PREFETCH: usize = 2048;

/// True when this processor runs the AVX2 loops (AVX2 with FMA, as every
/// AVX2 processor has; the answers are cached by the standard library).
#[inline]
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One sweep over a row of f32 weights whose length is a multiple of 8,
/// each taken times its factor ([`Factors`]: one for the row, a torch-layout
/// conv's output channel's folded BatchNorm or 1; or one per column, a
/// keras-layout conv's output channels'): adds each value to its column
/// sum and to `lanes` (the powers 2-4 of values `4k..4k+3` of every 8 to
/// lanes 0-3 of the first set, `4k+4..` to the second, merged at the end;
/// the row's sum of deviations to lane 0), and returns the row's sum.
/// Powers are fused multiply-adds; with one factor, min and max are taken
/// on the f32 values, then scaled (exact: scaling is monotone).
///
/// # Safety
/// The processor must have AVX2 and FMA ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sweep_row(cols: &mut [f64], row: &[f32], factors: Factors<'_>, lanes: &mut Lanes) -> f64 {
    assert!(cols.len() == row.len() && row.len().is_multiple_of(8), "whole blocks of 8 columns");
    match factors {
        Factors::Row(factor) => unsafe { sweep::<false>(cols, row, factor, &[], lanes) },
        Factors::Columns(columns) => {
            assert_eq!(columns.len(), row.len(), "a factor per column");
            unsafe { sweep::<true>(cols, row, 1.0, columns, lanes) }
        }
    }
}

/// [`sweep_row`] with one `factor` or, when `COLUMNS`, `columns[j]` for
/// column `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sweep<const COLUMNS: bool>(
    cols: &mut [f64],
    row: &[f32],
    factor: f64,
    columns: &[f64],
    lanes: &mut Lanes,
) -> f64 {
    let load = |a: &[f64; 4]| unsafe { _mm256_loadu_pd(a.as_ptr()) };
    let store = |a: &mut [f64; 4], v: __m256d| unsafe { _mm256_storeu_pd(a.as_mut_ptr(), v) };
    let shift = _mm256_set1_pd(lanes.shift);
    let f = _mm256_set1_pd(factor);
    let zero = _mm256_setzero_pd();
    let [_, mut p2, mut p3, mut p4] = lanes.p.each_ref().map(load);
    let [mut q2, mut q3, mut q4] = [zero; 3];
    let (mut min, mut max) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
    // With a factor per column, min and max of the products, in f64.
    let (mut min_pd, mut max_pd) = (load(&lanes.min), load(&lanes.max));
    let (mut sum, mut sum_b) = (zero, zero);
    for (j, (c, x)) in cols.chunks_exact_mut(8).zip(row.chunks_exact(8)).enumerate() {
        // SAFETY: each chunk holds 8 values; unaligned loads and stores.
        let (x8, ca, cb) =
            unsafe { (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_pd(c.as_ptr()), _mm256_loadu_pd(c.as_ptr().add(4))) };
        // Rows lie end to end: fetch ahead across them.
        _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add(PREFETCH).cast());
        let (xa, xb) = (_mm256_cvtps_pd(_mm256_castps256_ps128(x8)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x8)));
        let (xa, xb) = if COLUMNS {
            // SAFETY: `columns` is as long as the row (checked by the caller).
            let (fa, fb) = unsafe {
                let at = columns.as_ptr().add(8 * j);
                (_mm256_loadu_pd(at), _mm256_loadu_pd(at.add(4)))
            };
            let (xa, xb) = (_mm256_mul_pd(xa, fa), _mm256_mul_pd(xb, fb));
            // `min_pd(x, m)` is `x < m ? x : m`, as the portable loop.
            min_pd = _mm256_min_pd(xb, _mm256_min_pd(xa, min_pd));
            max_pd = _mm256_max_pd(xb, _mm256_max_pd(xa, max_pd));
            (xa, xb)
        } else {
            (_mm256_mul_pd(xa, f), _mm256_mul_pd(xb, f))
        };
        unsafe {
            _mm256_storeu_pd(c.as_mut_ptr(), _mm256_add_pd(ca, xa));
            _mm256_storeu_pd(c.as_mut_ptr().add(4), _mm256_add_pd(cb, xb));
        }
        sum = _mm256_add_pd(sum, xa);
        sum_b = _mm256_add_pd(sum_b, xb);
        let (da, db) = (_mm256_sub_pd(xa, shift), _mm256_sub_pd(xb, shift));
        let (da2, db2) = (_mm256_mul_pd(da, da), _mm256_mul_pd(db, db));
        p2 = _mm256_fmadd_pd(da, da, p2);
        q2 = _mm256_fmadd_pd(db, db, q2);
        p3 = _mm256_fmadd_pd(da2, da, p3);
        q3 = _mm256_fmadd_pd(db2, db, q3);
        p4 = _mm256_fmadd_pd(da2, da2, p4);
        q4 = _mm256_fmadd_pd(db2, db2, q4);
        if !COLUMNS {
            // `min_ps(x, m)` is `x < m ? x : m`, as the portable loop.
            min = _mm256_min_ps(x8, min);
            max = _mm256_max_ps(x8, max);
        }
    }
    for (slot, (a, b)) in lanes.p[1..].iter_mut().zip([(p2, q2), (p3, q3), (p4, q4)]) {
        store(slot, _mm256_add_pd(a, b));
    }
    if !COLUMNS {
        // The eight f32 lanes folded onto the four f64 lanes (`k` and `k + 4`).
        let halves = |v: __m256| (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let ((min_a, min_b), (max_a, max_b)) = (halves(min), halves(max));
        let (lo, hi) = (_mm256_cvtps_pd(_mm_min_ps(min_a, min_b)), _mm256_cvtps_pd(_mm_max_ps(max_a, max_b)));
        let (lo, hi) = (_mm256_mul_pd(lo, f), _mm256_mul_pd(hi, f));
        let (lo, hi) = if factor < 0.0 { (hi, lo) } else { (lo, hi) };
        min_pd = _mm256_min_pd(lo, min_pd);
        max_pd = _mm256_max_pd(hi, max_pd);
    }
    store(&mut lanes.min, min_pd);
    store(&mut lanes.max, max_pd);
    let mut s = [0.0; 4];
    store(&mut s, _mm256_add_pd(sum, sum_b));
    let total = (s[0] + s[1]) + (s[2] + s[3]);
    lanes.p[0][0] += total - row.len() as f64 * lanes.shift;
    total
}

/// `acc[i] += xs[i]` for the f32 values of `xs` (as many as it has), in
/// AVX2 where the processor has it.
#[inline]
pub fn add_widened(acc: &mut [f64], xs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_avx2(acc: &mut [f64], xs: &[f32]) {
        add(acc, xs)
    }
    #[inline(always)]
    fn add(acc: &mut [f64], xs: &[f32]) {
        for (a, &x) in acc.iter_mut().zip(xs) {
            *a += f64::from(x);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the processor has AVX2.
        return unsafe { add_avx2(acc, xs) };
    }
    add(acc, xs)
}

/// A [`Binning`] in the form of the f32 bin loop: the same bins, computed
/// eight at a time in f32, with every value whose f32 position lies within
/// the f32 error bound of a bin edge binned again in f64. With a factor
/// (a folded BatchNorm's), the bins are those of `f64::from(x) * factor`.
#[derive(Debug, Clone, Copy)]
pub struct F32Bins {
    binning: Binning,
    factor: f64,
    /// The position of `x` is `(x - lo) * scale` in bins.
    lo: f32,
    scale: f32,
    /// The smallest f32 `>= lo` and the largest `<= hi`: for f32 values,
    /// `lo_in <= x <= hi_in` exactly when `lo <= x <= hi`.
    lo_in: f32,
    hi_in: f32,
    /// Bound on `|(x - lo) * scale|` in f32 minus the same in f64, in bins.
    eps: f32,
    /// `bins + eps`: positions above are outside.
    top: f32,
}

impl F32Bins {
    /// The f32 form of `binning`, or `None` where f32 cannot hold it (a
    /// range beyond f32, or one so narrow next to its distance from zero
    /// that most values would need the f64 check).
    pub fn new(binning: &Binning) -> Option<Self> {
        let Binning { lo, hi, scale, .. } = *binning;
        let (lo_f, hi_f, scale_f) = (lo as f32, hi as f32, scale as f32);
        if !(lo_f.is_finite() && hi_f.is_finite() && scale_f.is_finite() && scale_f > 0.0) {
            return None;
        }
        let lo_in = if f64::from(lo_f) < lo { lo_f.next_up() } else { lo_f };
        let hi_in = if f64::from(hi_f) > hi { hi_f.next_down() } else { hi_f };
        Self::with_bounds(binning, 1.0, (lo_f, scale_f), (lo_in, hi_in))
    }

    /// The f32 form of `binning` applied to `f64::from(x) * factor`: the
    /// position is `(x - lo / factor) * (scale * factor)`, with the same
    /// error bound (the range is checked on positions, every value near its
    /// ends binned again in f64), or `None` where f32 cannot hold it.
    pub fn scaled(binning: &Binning, factor: f64) -> Option<Self> {
        if factor == 1.0 {
            return Self::new(binning);
        }
        let (lo_f, scale_f) = ((binning.lo / factor) as f32, (binning.scale * factor) as f32);
        if !(lo_f.is_finite() && scale_f.is_finite() && scale_f != 0.0) {
            return None;
        }
        Self::with_bounds(binning, factor, (lo_f, scale_f), (f32::NEG_INFINITY, f32::INFINITY))
    }

    /// The loop's constants for positions `(x - lo) * scale` and values
    /// inside `[lo_in, hi_in]`.
    fn with_bounds(
        binning: &Binning,
        factor: f64,
        (lo, scale): (f32, f32),
        (lo_in, hi_in): (f32, f32),
    ) -> Option<Self> {
        let bins = f64::from(binning.bins);
        // Rounding lo, x - lo, the scale and the product to f32 each errs
        // by at most 2^-24 of its size; for counted values `x - lo <= hi -
        // lo`, so the position errs by at most 2^-24 (scale |lo| + 3 bins),
        // and twice that covers the f64 computation's own rounding.
        let eps = (binning.scale * binning.lo.abs() + 3.0 * bins + 1.0) * f64::from(f32::EPSILON);
        let (eps, top) = (eps as f32, (bins + eps) as f32);
        (eps < 0.25).then_some(F32Bins { binning: *binning, factor, lo, scale, lo_in, hi_in, eps, top })
    }

    /// Writes the bin of each value of `xs` to `out`, as
    /// [`Binning::bin`] would.
    ///
    /// # Safety
    /// The processor must have AVX2 and FMA ([`avx2`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bins(&self, xs: &[f32], out: &mut [u32]) {
        assert_eq!(xs.len(), out.len());
        let (lo, scale) = (_mm256_set1_ps(self.lo), _mm256_set1_ps(self.scale));
        let (lo_in, hi_in) = (_mm256_set1_ps(self.lo_in), _mm256_set1_ps(self.hi_in));
        let (eps, one_less) = (_mm256_set1_ps(self.eps), _mm256_set1_ps(1.0 - self.eps));
        let (bottom, top) = (_mm256_set1_ps(-self.eps), _mm256_set1_ps(self.top));
        let last = _mm256_set1_ps((self.binning.bins - 1) as f32);
        let discard = _mm256_set1_ps(self.binning.bins as f32);
        let body = xs.len() / 8 * 8;
        for (chunk, o) in xs[..body].chunks_exact(8).zip(out[..body].chunks_exact_mut(8)) {
            // SAFETY: each chunk holds 8 values.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(PREFETCH).cast());
            let t = _mm256_mul_ps(_mm256_sub_ps(x, lo), scale);
            // Inside by value (exact) and by position (within the error
            // bound; a position near either end is near an edge, and
            // binned again).
            let inside = _mm256_and_ps(
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, lo_in), _mm256_cmp_ps::<_CMP_LE_OQ>(x, hi_in)),
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(t, bottom), _mm256_cmp_ps::<_CMP_LE_OQ>(t, top)),
            );
            let whole = _mm256_floor_ps(t);
            let frac = _mm256_sub_ps(t, whole);
            let near =
                _mm256_or_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(frac, eps), _mm256_cmp_ps::<_CMP_GT_OQ>(frac, one_less));
            let bin = _mm256_blendv_ps(discard, _mm256_min_ps(whole, last), inside);
            unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm256_cvttps_epi32(bin)) };
            let mut recheck = _mm256_movemask_ps(_mm256_and_ps(near, inside));
            while recheck != 0 {
                let k = recheck.trailing_zeros() as usize;
                o[k] = self.binning.bin(f64::from(chunk[k]) * self.factor);
                recheck &= recheck - 1;
            }
        }
        for (x, o) in xs[body..].iter().zip(&mut out[body..]) {
            *o = self.binning.bin(f64::from(*x) * self.factor);
        }
    }
}

/// Writes the bin of `f64::from(x) * factor` for each f32 value of `xs` to
/// `out`, four at a time, exactly as [`Binning::bin`] computes it: one
/// factor (the values of a torch-layout conv's output channel with its
/// folded BatchNorm's factor), or one per value (a stretch of a
/// keras-layout run, whose columns are the output channels).
///
/// # Safety
/// The processor must have AVX2 and FMA ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bins_scaled(binning: &Binning, xs: &[f32], factors: Factors<'_>, out: &mut [u32]) {
    assert_eq!(xs.len(), out.len());
    match factors {
        Factors::Row(factor) => unsafe { bins_times::<false>(binning, xs, factor, &[], out) },
        Factors::Columns(columns) => {
            assert_eq!(columns.len(), xs.len(), "a factor per value");
            unsafe { bins_times::<true>(binning, xs, 1.0, columns, out) }
        }
    }
}

/// [`bins_scaled`] with one `factor` or, when `COLUMNS`, `columns[i]` for
/// value `i`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bins_times<const COLUMNS: bool>(
    binning: &Binning,
    xs: &[f32],
    factor: f64,
    columns: &[f64],
    out: &mut [u32],
) {
    let (lo, hi, scale) = (_mm256_set1_pd(binning.lo), _mm256_set1_pd(binning.hi), _mm256_set1_pd(binning.scale));
    let (f, last) = (_mm256_set1_pd(factor), _mm256_set1_pd(f64::from(binning.bins - 1)));
    let discard = _mm256_set1_pd(f64::from(binning.bins));
    let body = xs.len() / 4 * 4;
    for (i, (chunk, o)) in xs[..body].chunks_exact(4).zip(out[..body].chunks_exact_mut(4)).enumerate() {
        // SAFETY: each chunk holds 4 values, and `columns` as many as `xs`.
        let f = if COLUMNS { unsafe { _mm256_loadu_pd(columns.as_ptr().add(4 * i)) } } else { f };
        let x = _mm256_mul_pd(_mm256_cvtps_pd(unsafe { _mm_loadu_ps(chunk.as_ptr()) }), f);
        let inside = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(x, lo), _mm256_cmp_pd::<_CMP_LE_OQ>(x, hi));
        let t = _mm256_min_pd(_mm256_mul_pd(_mm256_sub_pd(x, lo), scale), last);
        let bin = _mm256_cvttpd_epi32(_mm256_blendv_pd(discard, t, inside));
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), bin) };
    }
    for (i, (x, o)) in xs.iter().zip(out.iter_mut()).enumerate().skip(body) {
        *o = binning.bin(f64::from(*x) * if COLUMNS { columns[i] } else { factor });
    }
}

/// Writes the bin of each f64 value of `xs` to `out`, four at a time,
/// exactly as [`Binning::bin`] computes it (the same operations in the
/// same order, so no value needs a second look).
///
/// # Safety
/// The processor must have AVX2 and FMA ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bins_f64(binning: &Binning, xs: &[f64], out: &mut [u32]) {
    assert_eq!(xs.len(), out.len());
    let (lo, hi, scale) = (_mm256_set1_pd(binning.lo), _mm256_set1_pd(binning.hi), _mm256_set1_pd(binning.scale));
    let last = _mm256_set1_pd(f64::from(binning.bins - 1));
    let discard = _mm256_set1_pd(f64::from(binning.bins));
    let body = xs.len() / 4 * 4;
    for (chunk, o) in xs[..body].chunks_exact(4).zip(out[..body].chunks_exact_mut(4)) {
        // SAFETY: each chunk holds 4 values.
        let x = unsafe { _mm256_loadu_pd(chunk.as_ptr()) };
        let inside = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(x, lo), _mm256_cmp_pd::<_CMP_LE_OQ>(x, hi));
        // `min_pd(t, last)` is `t < last ? t : last`: NaN gives `last`, as `f64::min`.
        let t = _mm256_min_pd(_mm256_mul_pd(_mm256_sub_pd(x, lo), scale), last);
        let bin = _mm256_cvttpd_epi32(_mm256_blendv_pd(discard, t, inside));
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), bin) };
    }
    for (x, o) in xs[body..].iter().zip(&mut out[body..]) {
        *o = binning.bin(*x);
    }
}
