//! AVX2 builds of the CPU engine's two hot loops, for x86-64 processors
//! that have it (checked at run time with [`avx2`]); elsewhere the portable
//! loops in [`crate::stats`] and the CPU engine run. Both put each value in
//! the same lane; the AVX2 loop keeps two sets of lanes and adds them at
//! the end, so sums agree to rounding and histogram counts exactly.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::stats::Lanes;

/// True when this processor runs the AVX2 loops (the answer is cached by
/// the standard library).
#[inline]
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One sweep over a row of f32 weights whose length is a multiple of 8:
/// adds each value to its column sum and to `lanes` (values `4k..4k+3` of
/// every 8 to lanes 0-3 of the first set, `4k+4..` to the second, merged
/// at the end), and returns the row's sum.
///
/// # Safety
/// The processor must have AVX2 ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn sweep_row(cols: &mut [f64], row: &[f32], lanes: &mut Lanes) -> f64 {
    assert!(cols.len() == row.len() && row.len().is_multiple_of(8), "whole blocks of 8 columns");
    let load = |a: &[f64; 4]| unsafe { _mm256_loadu_pd(a.as_ptr()) };
    let store = |a: &mut [f64; 4], v: __m256d| unsafe { _mm256_storeu_pd(a.as_mut_ptr(), v) };
    let shift = _mm256_set1_pd(lanes.shift);
    let zero = _mm256_setzero_pd();
    let [mut p1, mut p2, mut p3, mut p4] = lanes.p.each_ref().map(load);
    let [mut q1, mut q2, mut q3, mut q4] = [zero; 4];
    let (mut min, mut max) = (load(&lanes.min), load(&lanes.max));
    let (mut min_b, mut max_b) = (min, max);
    let (mut sum, mut sum_b) = (zero, zero);
    for (c, x) in cols.chunks_exact_mut(8).zip(row.chunks_exact(8)) {
        // SAFETY: each chunk holds 8 values; unaligned loads and stores.
        let (xa, xb, ca, cb) = unsafe {
            (
                _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr())),
                _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(4))),
                _mm256_loadu_pd(c.as_ptr()),
                _mm256_loadu_pd(c.as_ptr().add(4)),
            )
        };
        unsafe {
            _mm256_storeu_pd(c.as_mut_ptr(), _mm256_add_pd(ca, xa));
            _mm256_storeu_pd(c.as_mut_ptr().add(4), _mm256_add_pd(cb, xb));
        }
        sum = _mm256_add_pd(sum, xa);
        sum_b = _mm256_add_pd(sum_b, xb);
        let (da, db) = (_mm256_sub_pd(xa, shift), _mm256_sub_pd(xb, shift));
        let (da2, db2) = (_mm256_mul_pd(da, da), _mm256_mul_pd(db, db));
        p1 = _mm256_add_pd(p1, da);
        q1 = _mm256_add_pd(q1, db);
        p2 = _mm256_add_pd(p2, da2);
        q2 = _mm256_add_pd(q2, db2);
        p3 = _mm256_add_pd(p3, _mm256_mul_pd(da2, da));
        q3 = _mm256_add_pd(q3, _mm256_mul_pd(db2, db));
        p4 = _mm256_add_pd(p4, _mm256_mul_pd(da2, da2));
        q4 = _mm256_add_pd(q4, _mm256_mul_pd(db2, db2));
        // `min_pd(x, m)` is `x < m ? x : m`, as the portable loop.
        min = _mm256_min_pd(xa, min);
        min_b = _mm256_min_pd(xb, min_b);
        max = _mm256_max_pd(xa, max);
        max_b = _mm256_max_pd(xb, max_b);
    }
    for (slot, (a, b)) in lanes.p.iter_mut().zip([(p1, q1), (p2, q2), (p3, q3), (p4, q4)]) {
        store(slot, _mm256_add_pd(a, b));
    }
    store(&mut lanes.min, _mm256_min_pd(min_b, min));
    store(&mut lanes.max, _mm256_max_pd(max_b, max));
    let mut s = [0.0; 4];
    store(&mut s, _mm256_add_pd(sum, sum_b));
    (s[0] + s[1]) + (s[2] + s[3])
}

/// Histogram bins of f32 values, four at a time: `(x - lo) * scale`
/// truncated and capped at `bins - 1`, or `bins` (the discard bin) for
/// values outside `[lo, hi]` and NaN: what the portable loop computes.
///
/// # Safety
/// The processor must have AVX2 ([`avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn histogram_bins(xs: &[f32], lo: f64, hi: f64, scale: f64, bins: u32, out: &mut [u32]) {
    assert_eq!(xs.len(), out.len());
    let (lo_v, hi_v, scale_v) = (_mm256_set1_pd(lo), _mm256_set1_pd(hi), _mm256_set1_pd(scale));
    let last = _mm256_set1_pd(f64::from(bins - 1));
    let discard = _mm256_set1_pd(f64::from(bins));
    let quads = xs.len() / 4 * 4;
    for (x, o) in xs[..quads].chunks_exact(4).zip(out[..quads].chunks_exact_mut(4)) {
        // SAFETY: each chunk holds 4 values.
        let x = unsafe { _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr())) };
        let inside = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(x, lo_v), _mm256_cmp_pd::<_CMP_LE_OQ>(x, hi_v));
        let t = _mm256_min_pd(_mm256_mul_pd(_mm256_sub_pd(x, lo_v), scale_v), last);
        let t = _mm256_blendv_pd(discard, t, inside);
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), _mm256_cvttpd_epi32(t)) };
    }
    for (x, o) in xs[quads..].iter().zip(&mut out[quads..]) {
        let x = f64::from(*x);
        *o = if x >= lo && x <= hi { ((x - lo) * scale).min(f64::from(bins - 1)) as u32 } else { bins };
    }
}
