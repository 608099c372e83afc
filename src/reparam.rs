//! Weights that torch keeps reparametrized, as its state_dicts store them:
//! weight norm (`w = g v / ||v||`, by `torch.nn.utils.weight_norm` as
//! `weight_g` / `weight_v`, by `torch.nn.utils.parametrizations.weight_norm`
//! as `parametrizations.weight.original0` / `original1`) and spectral norm
//! (`w = W / sigma` with `sigma = u . (W_mat v)` from the stored
//! power-iteration vectors, as torch computes it in eval mode; by
//! `torch.nn.utils.spectral_norm` as `weight_orig` / `weight_u` /
//! `weight_v`, by `torch.nn.utils.parametrizations.spectral_norm` as
//! `parametrizations.weight.original` / `parametrizations.weight.0._u` /
//! `_v`), and pruning (`w = W * mask`, by `torch.nn.utils.prune` as
//! `weight_orig` / `weight_mask`). The layer's weight is computed from its
//! parts in f64 and read
//! under the name the module would give it without the reparametrization
//! (`conv.weight`), the name a spec written from the model's code uses.

/// One weight computed from the tensors a reparametrization stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reparametrized {
    /// The weight's name (`conv.weight`).
    pub(crate) name: String,
    /// What computes it.
    pub(crate) kind: Kind,
    /// Its parts: weight norm `[g, v]`, spectral norm `[W, u, v]`, pruning
    /// `[W, mask]`.
    pub(crate) parts: Vec<String>,
}

/// A reparametrization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `w = g v / ||v||`, the norm over every axis but `g`'s.
    WeightNorm,
    /// `w = W / (u . W_mat v)`.
    SpectralNorm,
    /// `w = W * mask`.
    Pruned,
}

impl Kind {
    /// The part whose shape the weight has (weight norm's `v`, spectral
    /// norm's `W`).
    pub(crate) fn shaped_like(self) -> usize {
        match self {
            Kind::WeightNorm => 1,
            Kind::SpectralNorm | Kind::Pruned => 0,
        }
    }

    /// How `inspect` and the notes name it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::WeightNorm => "weight norm",
            Kind::SpectralNorm => "spectral norm",
            Kind::Pruned => "pruning mask",
        }
    }
}

/// The reparametrized weights among `names`, `has` telling whether a name
/// is among them (a module that also stores its plain `weight` keeps that
/// one).
pub(crate) fn find<'a>(names: impl IntoIterator<Item = &'a str>, has: impl Fn(&str) -> bool) -> Vec<Reparametrized> {
    let mut out = Vec::new();
    for n in names {
        let found = if let Some(p) = n.strip_suffix(".parametrizations.weight.original0") {
            let v = format!("{p}.parametrizations.weight.original1");
            has(&v).then(|| (p, Kind::WeightNorm, vec![n.to_string(), v]))
        } else if let Some(p) = n.strip_suffix(".parametrizations.weight.original") {
            let (u, v) = (format!("{p}.parametrizations.weight.0._u"), format!("{p}.parametrizations.weight.0._v"));
            (has(&u) && has(&v)).then(|| (p, Kind::SpectralNorm, vec![n.to_string(), u, v]))
        } else if let Some(p) = n.strip_suffix(".weight_orig") {
            let (u, v, mask) = (format!("{p}.weight_u"), format!("{p}.weight_v"), format!("{p}.weight_mask"));
            match (has(&u) && has(&v), has(&mask)) {
                (true, false) => Some((p, Kind::SpectralNorm, vec![n.to_string(), u, v])),
                (false, true) => Some((p, Kind::Pruned, vec![n.to_string(), mask])),
                _ => None,
            }
        } else if let Some(p) = n.strip_suffix(".weight_g") {
            let v = format!("{p}.weight_v");
            (has(&v) && !has(&format!("{p}.weight_orig"))).then(|| (p, Kind::WeightNorm, vec![n.to_string(), v]))
        } else {
            None
        };
        if let Some((p, kind, parts)) = found {
            let name = format!("{p}.weight");
            if !has(&name) {
                out.push(Reparametrized { name, kind, parts });
            }
        }
    }
    out
}

/// A tensor's values and shape.
pub(crate) type Values = (Vec<f64>, Vec<usize>);

/// The weight `r` computes from its parts' values (in the order of
/// [`Reparametrized::parts`]), or what does not fit.
pub(crate) fn compute(r: &Reparametrized, parts: &[Values]) -> Result<Vec<f64>, String> {
    match (r.kind, parts) {
        (Kind::WeightNorm, [g, v]) => weight_norm(g, v),
        (Kind::SpectralNorm, [w, u, v]) => spectral_norm(w, &u.0, &v.0),
        (Kind::Pruned, [(w, shape), (mask, mask_shape)]) if shape == mask_shape => {
            Ok(w.iter().zip(mask).map(|(w, m)| w * m).collect())
        }
        (Kind::Pruned, [(_, shape), (_, mask_shape)]) => {
            Err(format!("a mask of shape {mask_shape:?} for a weight of shape {shape:?}"))
        }
        _ => unreachable!("find names the parts of each kind"),
    }
}

/// The axis of `shape` whose index `flat` element `i` has, for an axis of
/// `n` positions whose positions are `stride` elements apart.
fn coordinate(i: usize, stride: usize, n: usize) -> usize {
    i / stride % n
}

/// `g v / ||v||`: `g` of one value (a norm over all of `v`) or of `v`'s
/// length along one axis and 1 along every other (torch's `dim`).
fn weight_norm((g, g_shape): &Values, (v, shape): &Values) -> Result<Vec<f64>, String> {
    let misfit = || format!("`g` of shape {g_shape:?} does not fit `v` of shape {shape:?}");
    let (n, stride) = if g.len() == 1 {
        (1, 1)
    } else {
        let axes: Vec<usize> = (0..g_shape.len()).filter(|&a| g_shape[a] != 1).collect();
        match axes[..] {
            [a] if g_shape.len() == shape.len() && g_shape[a] == shape[a] => {
                (shape[a], shape[a + 1..].iter().product())
            }
            _ => return Err(misfit()),
        }
    };
    let mut norms = vec![0.0; n];
    for (i, x) in v.iter().enumerate() {
        norms[coordinate(i, stride, n)] += x * x;
    }
    let factors: Vec<f64> = g.iter().zip(&norms).map(|(g, s)| g / s.sqrt()).collect();
    Ok(v.iter().enumerate().map(|(i, x)| x * factors[coordinate(i, stride, n)]).collect())
}

/// `W / sigma`, `sigma = u . (W_mat v)`, `W_mat` the weight with axis
/// `dim` first and the rest flattened: torch's `dim` is 0, but 1 for a
/// transposed convolution, whose kind the tensors do not say. Where both
/// axes fit `u`, the one whose `W_mat v` points along `u` is the one the
/// power iteration ran on (`u` is `W_mat v` normalised, as of the last
/// training step).
fn spectral_norm((w, shape): &Values, u: &[f64], v: &[f64]) -> Result<Vec<f64>, String> {
    let misfit = || format!("`u` of {} and `v` of {} values do not fit a weight of shape {shape:?}", u.len(), v.len());
    let numel = w.len();
    let candidates: Vec<usize> =
        (0..shape.len().min(2)).filter(|&d| shape[d] == u.len() && u.len() * v.len() == numel).collect();
    // (sigma, cosine of W_mat v with u) for axis d.
    let sigma_along = |d: usize| {
        let (n, inner) = (shape[d], shape[d + 1..].iter().product::<usize>());
        let mut wv = vec![0.0; n];
        for (i, x) in w.iter().enumerate() {
            let (row, col) = if d == 0 {
                (i / inner, i % inner)
            } else {
                // Axis 1 first: `j` counts the other axes in order.
                let (outer, row, rest) = (i / (n * inner), coordinate(i, inner, n), i % inner);
                (row, outer * inner + rest)
            };
            wv[row] += x * v[col];
        }
        let sigma: f64 = wv.iter().zip(u).map(|(a, b)| a * b).sum();
        let norms = wv.iter().map(|a| a * a).sum::<f64>().sqrt() * u.iter().map(|a| a * a).sum::<f64>().sqrt();
        (sigma, (sigma / norms).abs())
    };
    let sigma = match candidates[..] {
        [] => return Err(misfit()),
        [d] => sigma_along(d).0,
        _ => {
            let (a, b) = (sigma_along(0), sigma_along(1));
            if a.1 >= b.1 {
                a.0
            } else {
                b.0
            }
        }
    };
    Ok(w.iter().map(|x| x / sigma).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_apis_of_both_norms_are_found() {
        let names = [
            "a.weight_g",
            "a.weight_v",
            "a.bias",
            "b.parametrizations.weight.original0",
            "b.parametrizations.weight.original1",
            "c.weight_orig",
            "c.weight_u",
            "c.weight_v",
            "d.parametrizations.weight.original",
            "d.parametrizations.weight.0._u",
            "d.parametrizations.weight.0._v",
            "e.weight_g",
            "e.weight_v",
            "e.weight",
            "f.weight_orig",
            "f.weight_mask",
        ];
        let found = find(names, |n| names.contains(&n));
        let got: Vec<(&str, Kind)> = found.iter().map(|r| (r.name.as_str(), r.kind)).collect();
        let want = [
            ("a.weight", Kind::WeightNorm),
            ("b.weight", Kind::WeightNorm),
            ("c.weight", Kind::SpectralNorm),
            ("d.weight", Kind::SpectralNorm),
            ("f.weight", Kind::Pruned),
        ];
        assert_eq!(got, want);
        assert_eq!(found[2].parts, ["c.weight_orig", "c.weight_u", "c.weight_v"]);
    }

    #[test]
    fn weight_norm_scales_each_slice_along_gs_axis() {
        // v [2, 3]: rows (3, 4, 0) and (0, 0, 2); g along axis 0 and axis 1.
        let v = (vec![3.0, 4.0, 0.0, 0.0, 0.0, 2.0], vec![2, 3]);
        let rows = weight_norm(&(vec![10.0, 1.0], vec![2, 1]), &v).unwrap();
        assert_eq!(rows, [6.0, 8.0, 0.0, 0.0, 0.0, 1.0]);
        let cols = weight_norm(&(vec![1.0, 2.0, 4.0], vec![1, 3]), &v).unwrap();
        assert_eq!(cols, [1.0, 2.0, 0.0, 0.0, 0.0, 4.0]);
        let all = weight_norm(&(vec![5.0 * 29f64.sqrt()], vec![]), &v).unwrap();
        assert_eq!(all, [15.0, 20.0, 0.0, 0.0, 0.0, 10.0]);
        assert!(weight_norm(&(vec![1.0, 2.0], vec![2, 2]), &v).is_err());
    }

    #[test]
    fn spectral_norm_divides_by_u_w_v_on_the_iterated_axis() {
        // W [2, 2, 1]: axis 0 gives W_mat [[1, 2], [3, 4]], axis 1 [[1, 3], [2, 4]].
        let w = (vec![1.0, 2.0, 3.0, 4.0], vec![2, 2, 1]);
        let v = [0.6, 0.8];
        // u along W_mat v of axis 0: (2.2, 5.0), normalised.
        let n = (2.2f64 * 2.2 + 25.0).sqrt();
        let u0 = [2.2 / n, 5.0 / n];
        let got = spectral_norm(&w, &u0, &v).unwrap();
        assert!((got[0] - 1.0 / n).abs() < 1e-12, "{got:?}");
        // u along W_mat v of axis 1: (3.0, 4.4).
        let n = (9.0f64 + 4.4 * 4.4).sqrt();
        let got = spectral_norm(&w, &[3.0 / n, 4.4 / n], &v).unwrap();
        assert!((got[3] - 4.0 / n).abs() < 1e-12, "{got:?}");
        assert!(spectral_norm(&w, &[1.0; 3], &v).is_err());
    }
}
