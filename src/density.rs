//! Densities of pooled measures and the divergences between them (SPEC
//! section 6): Gaussian KDE with Scott's bandwidth on an evenly spaced grid,
//! each density normalised to sum to 1 over the grid; symmetric KL (the
//! paper's "Shannon divergence") and Jensen-Shannon.
//!
//! A [`Pool`] keeps its values while they are few (exact KDE) and always a
//! fine histogram on edges shared by every pool of the same measure, which
//! merges across checkpoints and gives the binned KDE once the values are
//! too many to keep.

use crate::stats::{Histogram, Moments};

/// Points of the density grid.
pub const GRID_POINTS: usize = 1000;
/// Bins of the fine histogram behind a binned KDE.
pub const FINE_BINS: usize = 4096;
/// Values a pool keeps for the exact KDE; beyond, it uses its histogram.
pub const EXACT_MAX: usize = 20_000;

/// A pooled sample of one measure in one group.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Moments of every value added.
    pub moments: Moments,
    values: Option<Vec<f64>>,
    fine: Histogram,
}

impl Pool {
    /// An empty pool whose fine histogram covers `[lo, hi]` (the range of
    /// the measure over every group, so all pools share edges).
    pub fn new(lo: f64, hi: f64) -> Self {
        Pool { moments: Moments::default(), values: Some(Vec::new()), fine: Histogram::for_range(lo, hi, FINE_BINS) }
    }

    /// Adds values.
    pub fn add(&mut self, xs: &[f64]) {
        self.moments.merge(&Moments::from_slice(xs));
        self.fine.add_all(xs);
        if let Some(v) = &mut self.values {
            if v.len() + xs.len() <= EXACT_MAX {
                v.extend_from_slice(xs);
            } else {
                self.values = None;
            }
        }
    }

    /// Adds values already binned on this pool's edges
    /// ([`Histogram::range_for`] of its `lo, hi`, [`FINE_BINS`] bins), with their moments, and the values themselves
    /// when the binner kept them (else the pool goes over to the binned KDE).
    pub fn add_binned(&mut self, moments: &Moments, counts: &Histogram, values: Option<&[f64]>) {
        debug_assert_eq!((counts.lo, counts.hi, counts.counts.len()), (self.fine.lo, self.fine.hi, FINE_BINS));
        self.moments.merge(moments);
        self.fine.merge(counts);
        match (values, &mut self.values) {
            (Some(xs), Some(v)) if v.len() + xs.len() <= EXACT_MAX => v.extend_from_slice(xs),
            _ => self.values = None,
        }
    }

    /// Scott's bandwidth `std(ddof=1) n^(-1/5)`; where that is zero (one
    /// value, or all equal) the grid spacing `fallback` instead.
    pub fn bandwidth(&self, fallback: f64) -> f64 {
        let n = self.moments.n as f64;
        let h = if n > 1.0 { (self.moments.m2 / (n - 1.0)).sqrt() * n.powf(-0.2) } else { 0.0 };
        if h > 0.0 && h.is_finite() {
            h
        } else {
            fallback
        }
    }

    /// The KDE on `grid`, normalised to sum to 1 (all zeros for an empty
    /// pool).
    pub fn density(&self, grid: &[f64]) -> Vec<f64> {
        let step = if grid.len() > 1 { grid[1] - grid[0] } else { 1.0 };
        let h = self.bandwidth(step);
        let mut d = vec![0.0; grid.len()];
        let mut add = |center: f64, weight: f64| gaussian_onto(&mut d, grid[0], step, center, h, weight);
        match &self.values {
            Some(values) => values.iter().for_each(|&v| add(v, 1.0)),
            None => {
                let edges = self.fine.edges();
                let mids: Vec<f64> = edges.windows(2).map(|e| 0.5 * (e[0] + e[1])).collect();
                // Bins far narrower than the kernel are merged, a run of
                // `m` at its counts' centroid, while a run stays under h/8
                // wide: the density moves by well under 1% of its peak
                // (second order in width / h), and a broad kernel costs
                // 4096 / m walks instead of 4096.
                let width = (self.fine.hi - self.fine.lo) / self.fine.counts.len() as f64;
                let mut m = 1;
                while m < self.fine.counts.len() && (2 * m) as f64 * width <= h / 8.0 {
                    m *= 2;
                }
                for (counts, mids) in self.fine.counts.chunks(m).zip(mids.chunks(m)) {
                    let total: u64 = counts.iter().sum();
                    if total == 0 {
                        continue;
                    }
                    let centre = match counts {
                        [_] => mids[0],
                        _ => counts.iter().zip(mids).map(|(&c, &x)| c as f64 * x).sum::<f64>() / total as f64,
                    };
                    add(centre, total as f64);
                }
            }
        }
        let total: f64 = d.iter().sum();
        if total > 0.0 {
            d.iter_mut().for_each(|v| *v /= total);
        }
        d
    }
}

/// Adds `weight * exp(-z^2 / 2)`, `z = (x - center) / h`, at every point
/// `x = x0 + i step` of `d`, as far as f64 does not underflow (so, as a
/// direct evaluation would, tails far from the centre stay positive: the
/// symmetric KL depends on them), walking up and down from the point
/// nearest the centre.
fn gaussian_onto(d: &mut [f64], x0: f64, step: f64, center: f64, h: f64, weight: f64) {
    let last = d.len() - 1;
    let j0 = ((center - x0) / step).round().clamp(0.0, last as f64) as usize;
    let z0 = (x0 + j0 as f64 * step - center) / h;
    let s = step / h;
    let (down, up) = d.split_at_mut(j0);
    walk(up, false, z0, s, weight);
    walk(down, true, z0 - s, -s, weight);
}

/// Chains of the walk of [`gaussian_onto`]: independent, so their
/// multiplications overlap (and vectorise).
const LANES: usize = 8;

/// `|z|` beyond which `exp(-z^2 / 2)` underflows to zero in f64.
const Z_UNDERFLOW: f64 = 38.7;

/// Adds `weight * exp(-z_t^2 / 2)`, `z_t = z0 + t s`, to the `t`-th point
/// of `d` in walking order (from its end when `reverse`), where `z_t`
/// moves away from 0 (`z0` lies within `s / 2` of it, or beyond it in the
/// direction of `s`), until it underflows. Along the walk the Gaussian
/// obeys `g(z + L s) = g(z) r` with the ratio `r = exp(-L s z - L^2 s^2 /
/// 2)` itself multiplied by `exp(-L^2 s^2)` each step: [`LANES`] chains
/// `L` points apart cost two multiplications a point.
fn walk(d: &mut [f64], reverse: bool, z0: f64, s: f64, weight: f64) {
    let alive = ((Z_UNDERFLOW - z0 * s.signum()) / s.abs()).floor() + 1.0;
    let n = d.len().min(alive.max(0.0) as usize);
    let len = d.len();
    let d = if reverse { &mut d[len - n..] } else { &mut d[..n] };
    // Lane `p` holds the points `t = L b + t_p` in memory order.
    let lane_t = |p: usize| if reverse { LANES - 1 - p } else { p };
    let l = LANES as f64;
    let (mut g, mut r) = ([0.0; LANES], [0.0; LANES]);
    for p in 0..LANES {
        let z = z0 + lane_t(p) as f64 * s;
        g[p] = (-0.5 * z * z).exp();
        r[p] = (-l * s * z - 0.5 * l * l * s * s).exp();
    }
    let k = (-l * l * s * s).exp();
    let mut block = |points: &mut [f64]| {
        for p in 0..LANES {
            points[p] += weight * g[p];
            g[p] *= r[p];
            r[p] *= k;
        }
    };
    let rest = n % LANES;
    if reverse {
        d.rchunks_exact_mut(LANES).for_each(&mut block);
        // The first `rest` points, the walk's last: lanes `L - rest..`.
        for (x, g) in d[..rest].iter_mut().zip(&g[LANES - rest..]) {
            *x += weight * g;
        }
    } else {
        d.chunks_exact_mut(LANES).for_each(&mut block);
        for (x, g) in d[n - rest..].iter_mut().zip(&g) {
            *x += weight * g;
        }
    }
}

/// `n` evenly spaced points from `lo` to `hi` (both included).
pub fn grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let (lo, hi) = if lo < hi { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
}

/// `sum p ln(p/q) + sum q ln(q/p)` over the points where both are > 0;
/// NaN where there is no such point (densities with no common support: the
/// empty sum's 0 would read as "the same distribution").
pub fn symmetric_kl(p: &[f64], q: &[f64]) -> f64 {
    let both = p.iter().zip(q).filter(|(a, b)| **a > 0.0 && **b > 0.0);
    let (mut sum, mut any) = (0.0, false);
    for (a, b) in both {
        sum += a * (a / b).ln() + b * (b / a).ln();
        any = true;
    }
    if any {
        sum
    } else {
        f64::NAN
    }
}

/// `KL(p||m)/2 + KL(q||m)/2` with `m = (p + q)/2`, natural log. Each term
/// `a ln(a/m)` is taken as `a ln(2a/(a+b))`: for the smallest subnormal
/// `a` (a kernel's far tail), `m` itself underflows to 0 and `a/m` would
/// be infinite.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let term = |a: f64, b: f64| if a > 0.0 { a * (2.0 * a / (a + b)).ln() } else { 0.0 };
    p.iter().zip(q).map(|(a, b)| (term(*a, *b) + term(*b, *a)) / 2.0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalish(n: usize, shift: f64) -> Vec<f64> {
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                let mut acc = 0.0;
                for _ in 0..4 {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    acc += (s >> 11) as f64 / (1u64 << 53) as f64;
                }
                acc - 2.0 + shift
            })
            .collect()
    }

    /// Within 1% of the exact KDE's peak: narrow kernels (many values)
    /// and broad ones (few values: bins merged, up to 16 at a time), on a
    /// grid inside the range and on one wider than it.
    #[test]
    fn binned_kde_is_within_one_percent_of_exact() {
        for (n, range, lo, hi) in
            [(EXACT_MAX, 3.0, -2.5, 2.5), (100, 3.0, -2.5, 2.5), (100, 3.0, -5.0, 5.0), (7, 1.5, -2.0, 2.0)]
        {
            let xs = normalish(n, 0.3);
            let mut exact = Pool::new(-range, range);
            exact.add(&xs);
            let mut binned = exact.clone();
            binned.values = None;
            let g = grid(lo, hi, GRID_POINTS);
            let (e, b) = (exact.density(&g), binned.density(&g));
            let peak = e.iter().fold(0.0f64, |m, v| m.max(*v));
            let worst = e.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f64, f64::max);
            assert!(worst <= 0.01 * peak, "{n} values: binned KDE off by {worst} (peak {peak})");
            assert!(jensen_shannon(&e, &b) < 1e-4, "{n} values");
        }
    }

    #[test]
    fn divergences_of_known_densities() {
        let p = [0.5, 0.5, 0.0];
        let q = [0.25, 0.25, 0.5];
        // Both > 0 on the first two points only.
        let skl = 2.0 * (0.5 * 2f64.ln() + 0.25 * 0.5f64.ln());
        assert!((symmetric_kl(&p, &q) - skl).abs() < 1e-12);
        // m = (p + q) / 2 = [0.375, 0.375, 0.25]
        let js = 0.5 * (2.0 * 0.5 * (0.5f64 / 0.375).ln())
            + 0.5 * (2.0 * 0.25 * (0.25f64 / 0.375).ln() + 0.5 * (0.5f64 / 0.25).ln());
        assert!((jensen_shannon(&p, &q) - js).abs() < 1e-12, "{} vs {js}", jensen_shannon(&p, &q));
        assert_eq!(jensen_shannon(&p, &p), 0.0);
        // Disjoint supports: JS is ln 2, even where a density is the
        // smallest subnormal (its midpoint with 0 underflows); the
        // symmetric KL has no point to sum over.
        let tiny = f64::from_bits(1);
        let (a, b) = ([0.5, 0.5 - tiny, tiny, 0.0], [0.0, 0.0, 0.0, 1.0]);
        assert!((jensen_shannon(&a, &b) - 2f64.ln()).abs() < 1e-12, "{}", jensen_shannon(&a, &b));
        assert!(jensen_shannon(&[tiny, 1.0], &[0.0, 1.0]).is_finite());
        assert!(symmetric_kl(&a, &b).is_nan());
        let g = grid(-1.0, 1.0, 5);
        assert_eq!(g, [-1.0, -0.5, 0.0, 0.5, 1.0]);
    }

    /// The walk agrees with evaluating every point directly, wherever the
    /// centre lies (inside the grid, off either end) and however wide the
    /// kernel (a few grid steps to wider than the grid), on grids of every
    /// length around the lane count: within 1e-11 of each value down to
    /// 1e-280 (measured: 2.9e-12; a one-lane walk of the same points errs
    /// by up to 1.0e-11), and nothing where the value underflows.
    #[test]
    fn gaussian_walk_matches_direct_evaluation() {
        let mut worst = (0.0f64, String::new());
        for n in [1, 2, 7, 8, 9, 17, 1000] {
            let (x0, step) = (-1.0, 2.0 / n as f64);
            for center in [-3.0, -1.0, -0.3137, 0.0, 0.77, 1.0 + 1e-9, 5.0] {
                for h in [0.001, 0.013, 0.2, 3.0] {
                    let mut d = vec![0.0; n];
                    gaussian_onto(&mut d, x0, step, center, h, 2.5);
                    for (i, &got) in d.iter().enumerate() {
                        let z = (x0 + i as f64 * step - center) / h;
                        let want = 2.5 * (-0.5 * z * z).exp();
                        let err =
                            if want > 1e-280 { (got - want).abs() / want } else { f64::from(u8::from(got > 1e-270)) };
                        if err > worst.0 {
                            worst = (err, format!("n {n} center {center} h {h} point {i}: {got:e} vs {want:e}"));
                        }
                    }
                }
            }
        }
        assert!(worst.0 <= 1e-11, "worst relative error {:e} at {}", worst.0, worst.1);
    }

    #[test]
    fn scott_bandwidth_and_normalisation() {
        let mut pool = Pool::new(0.0, 10.0);
        pool.add(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let h = pool.bandwidth(1.0);
        assert!((h - 2.5f64.sqrt() * 5f64.powf(-0.2)).abs() < 1e-12);
        let d = pool.density(&grid(0.0, 6.0, GRID_POINTS));
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
