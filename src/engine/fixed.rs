//! Strengths of the layers whose link weights follow from their geometry
//! (SPEC 1.4: pools, identity skips; interpolations and pads, README) or
//! from a few per-channel numbers (a BatchNorm as its own diagonal layer).
//! Both engines take them from here: they read no weight tensor, and cost
//! O(channels x position classes).

use super::field::{Classes, Field};
use crate::graph::{Layer, LayerKind, NodeShape};
use crate::spec::Layout;

/// The channel of node `i` of a node set of `shape`, in the layout's order.
pub(crate) fn channel_of(shape: NodeShape, layout: Layout) -> impl Fn(usize) -> usize {
    let c = shape.channels().max(1);
    let plane = (shape.count() / c).max(1);
    let channels_last = matches!(shape, NodeShape::Map { .. }) && layout == Layout::Keras;
    move |i| if channels_last { i % c } else { i / plane }
}

/// Fills `out` (a node set of `shape` in the layout's order) with `f(c)`
/// for each node of channel `c`.
pub(crate) fn per_channel(out: &mut [f64], shape: NodeShape, layout: Layout, f: impl Fn(usize) -> f64) {
    let channel = channel_of(shape, layout);
    for (i, v) in out.iter_mut().enumerate() {
        *v = f(channel(i));
    }
}

/// `(s_in, s_out)` of a pool, interpolation, pad or identity layer.
pub(crate) fn strengths(layer: &Layer) -> (Field, Field) {
    match layer.kind {
        LayerKind::Identity => (Field::per_channel(layer.output, |_| 1.0), Field::per_channel(layer.input, |_| 1.0)),
        LayerKind::Pool(pool) => {
            // A link's weight is the product of its two axes' factors, so
            // both strengths factorise by axis too: positions with equal
            // factors share a class.
            let axis = |a: usize| {
                let mut into = vec![0.0; pool.out_hw[a]];
                let mut from = vec![0.0; pool.in_hw[a]];
                for w in &pool.windows(a) {
                    into[w.output] += (w.end - w.start) as f64 * w.weight;
                    for f in &mut from[w.start..w.end] {
                        *f += w.weight;
                    }
                }
                (into, from)
            };
            let ((in_y, out_y), (in_x, out_x)) = (axis(0), axis(1));
            let grid = |ys: &[f64], xs: &[f64], shape: NodeShape| {
                let classes = |v: &[f64]| {
                    let (c, bits) = Classes::group_by(v.iter().map(|x| x.to_bits()));
                    (c, bits.into_iter().map(f64::from_bits).collect::<Vec<_>>())
                };
                let ((rows, ys), (cols, xs)) = (classes(ys), classes(xs));
                let plane: Vec<f64> = ys.iter().flat_map(|y| xs.iter().map(move |x| y * x)).collect();
                let c = shape.channels();
                Field::new(c, rows, cols, plane.iter().copied().cycle().take(c * plane.len()).collect())
            };
            (grid(&in_y, &in_x, layer.output), grid(&out_y, &out_x, layer.input))
        }
        _ => unreachable!("only pools and identities are fixed"),
    }
}

/// `(s_in, s_out)` of a BatchNorm layer: one link `a[c]` per node, its
/// in-strength plus `shift[c]` when given.
pub(crate) fn norm_strengths(layer: &Layer, a: &[f64], shift: Option<&[f64]>) -> (Field, Field) {
    let s_in = Field::per_channel(layer.output, |c| a[c] + shift.map_or(0.0, |s| s[c]));
    (s_in, Field::per_channel(layer.input, |c| a[c]))
}
