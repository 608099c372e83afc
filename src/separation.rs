//! Which measure separates accurate from under-trained networks (SPEC
//! section 6): for every per-checkpoint summary, Spearman's rank
//! correlation with accuracy, and the AUROC of the summary for telling the
//! top third of checkpoints by accuracy from the bottom third.

/// Ranks from 1, ties getting the average of the ranks they span.
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation; NaN when either side is constant.
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rho: the Pearson correlation of the ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// AUROC of `score` for telling `positives` from `negatives`: the
/// probability that a positive scores higher than a negative, ties counting
/// half (the Mann-Whitney U statistic over `n_pos x n_neg`).
pub fn auroc(positives: &[f64], negatives: &[f64]) -> f64 {
    let all: Vec<f64> = positives.iter().chain(negatives).copied().collect();
    let r = ranks(&all);
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    let rank_sum: f64 = r[..positives.len()].iter().sum();
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// How one summary relates to accuracy.
#[derive(Debug, Clone)]
pub struct Separation {
    /// The summary (e.g. `V1 layers.0 fluctuation`).
    pub feature: String,
    /// Checkpoints with both the summary and accuracy.
    pub n: usize,
    /// Spearman's rho with accuracy.
    pub spearman: f64,
    /// AUROC for top third vs bottom third by accuracy (0.5: none).
    pub auroc: f64,
}

impl Separation {
    /// `higher` when the summary is larger in accurate networks, `lower`
    /// when smaller, `none` at exactly 0.5.
    pub fn direction(&self) -> &'static str {
        if self.auroc > 0.5 {
            "higher"
        } else if self.auroc < 0.5 {
            "lower"
        } else {
            "none"
        }
    }

    /// `|AUROC - 0.5| * 2`: 0 no separation, 1 perfect, either direction.
    pub fn strength(&self) -> f64 {
        (self.auroc - 0.5).abs() * 2.0
    }
}

/// Measures one summary's `(value, accuracy)` pairs (non-finite pairs are
/// left out).
pub fn separation(feature: &str, pairs: &[(f64, f64)]) -> Separation {
    let mut pairs: Vec<(f64, f64)> = pairs.iter().copied().filter(|(v, a)| v.is_finite() && a.is_finite()).collect();
    let n = pairs.len();
    let (values, acc): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let rho = if n >= 3 { spearman(&values, &acc) } else { f64::NAN };
    pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let third = n / 3;
    let auroc = if third >= 2 {
        let bottom: Vec<f64> = pairs[..third].iter().map(|p| p.0).collect();
        let top: Vec<f64> = pairs[n - third..].iter().map(|p| p.0).collect();
        auroc(&top, &bottom)
    } else {
        f64::NAN
    };
    Separation { feature: feature.to_string(), n, spearman: rho, auroc }
}

/// Every summary's separation, strongest first (by AUROC distance from 0.5,
/// then |rho|; undefined ones last).
pub fn rank_table(mut rows: Vec<Separation>) -> Vec<Separation> {
    let key = |s: &Separation| (if s.auroc.is_nan() { -1.0 } else { s.strength() }, s.spearman.abs().max(0.0));
    rows.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.total_cmp(&ka.1))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), [1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn spearman_known_values() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]) - 0.8207826816681233).abs() < 1e-12);
    }

    #[test]
    fn auroc_known_values() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 3.0], &[2.0, 2.0]), 0.5);
        // One tie between the groups counts half: (1 + 1 + 0.5 + 1) / 4.
        assert_eq!(auroc(&[2.0, 5.0], &[1.0, 2.0]), 0.875);
    }

    #[test]
    fn separation_uses_top_and_bottom_thirds() {
        // Value follows accuracy exactly: rho 1, AUROC 1, "higher".
        let pairs: Vec<(f64, f64)> = (0..9).map(|i| (i as f64 * 2.0, i as f64 / 10.0)).collect();
        let s = separation("x", &pairs);
        assert_eq!((s.n, s.spearman, s.auroc, s.direction()), (9, 1.0, 1.0, "higher"));
        let s = separation("y", &pairs.iter().map(|(v, a)| (-v, *a)).collect::<Vec<_>>());
        assert_eq!((s.auroc, s.direction()), (0.0, "lower"));
        assert!(separation("z", &pairs[..4]).auroc.is_nan());
    }
}
