//! A node set's per-node values held once per *cell*. Conv, pool,
//! identity and BatchNorm strengths depend on a pixel's position only
//! through which kernel taps or pool windows reach it, and those change
//! only near the borders (and with the stride's phase): along each axis
//! the positions fall into a few classes, and every node of one channel
//! whose row is in one row class and whose column is in one column class
//! has the same value. A 64x224x224 map's strengths are then a few dozen
//! values per channel, summed and measured with the number of nodes each
//! stands for. Values that vary node by node (a dense layer reading a
//! flattened map) are the case where every position is its own class.
//!
//! Nothing is approximated: a cell's value is computed exactly as each of
//! its nodes' would be, and statistics count it once per node.

use std::collections::HashMap;
use std::hash::Hash;

use crate::graph::NodeShape;
use crate::spec::Layout;

/// Classes [`Classes::group_by`] finds by comparing keys, before it hashes.
const SCAN_CLASSES: usize = 16;

/// A partition of the positions `0..n` of one axis into classes, numbered
/// in order of first occurrence (so equal partitions are equal values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    /// The class of each position.
    of: Vec<u32>,
    /// Positions in each class.
    sizes: Vec<u64>,
}

impl Classes {
    /// All `n` positions in one class.
    pub fn one(n: usize) -> Self {
        Classes { of: vec![0; n], sizes: if n == 0 { vec![] } else { vec![n as u64] } }
    }

    /// Every position its own class.
    pub fn each(n: usize) -> Self {
        Classes { of: (0..n as u32).collect(), sizes: vec![1; n] }
    }

    /// Positions with equal keys share a class; also returns each class's key.
    /// An axis has a handful of classes (borders, stride phases), found by
    /// comparing with the keys seen so far, the last one matched first; a
    /// hash map takes over past 16 of them (`SCAN_CLASSES`; positions each their own
    /// class, as behind a dense layer).
    pub fn group_by<K: Eq + Hash + Clone>(keys: impl IntoIterator<Item = K>) -> (Self, Vec<K>) {
        let mut c = Classes { of: Vec::new(), sizes: Vec::new() };
        let mut first: Vec<K> = Vec::new();
        let mut map: Option<HashMap<K, u32>> = None;
        let mut last = 0;
        for k in keys {
            let found = match &map {
                _ if first.get(last) == Some(&k) => Some(last as u32),
                None => first.iter().position(|f| *f == k).map(|i| i as u32),
                Some(map) => map.get(&k).copied(),
            };
            let id = found.unwrap_or_else(|| {
                let id = first.len() as u32;
                if let Some(map) = &mut map {
                    map.insert(k.clone(), id);
                } else if first.len() == SCAN_CLASSES {
                    let mut all: HashMap<K, u32> = first.iter().cloned().zip(0..).collect();
                    all.insert(k.clone(), id);
                    map = Some(all);
                }
                first.push(k);
                c.sizes.push(0);
                id
            });
            last = id as usize;
            c.sizes[last] += 1;
            c.of.push(id);
        }
        (c, first)
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// True when there are no positions.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Number of positions.
    pub fn positions(&self) -> usize {
        self.of.len()
    }

    /// The class of position `p`.
    pub fn class(&self, p: usize) -> usize {
        self.of[p] as usize
    }

    /// The coarsest partition finer than both (positions share a class
    /// when they do in `self` and in `other`), with each class's class in
    /// `self` and in `other`.
    fn join(&self, other: &Classes) -> (Classes, Vec<u32>, Vec<u32>) {
        debug_assert_eq!(self.positions(), other.positions());
        let (joined, pairs) = Classes::group_by(self.of.iter().copied().zip(other.of.iter().copied()));
        let (a, b) = pairs.into_iter().unzip();
        (joined, a, b)
    }
}

/// Per-node values of a node set (or of the part of one a layer touches):
/// `channels` planes, each a grid of row class x column class cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    channels: usize,
    rows: Classes,
    cols: Classes,
    /// `cells[(c * rows.len() + r) * cols.len() + k]`.
    cells: Vec<f64>,
}

impl Field {
    /// A field from its parts; `cells` holds `channels x rows.len() x
    /// cols.len()` values, channel by channel.
    pub fn new(channels: usize, rows: Classes, cols: Classes, cells: Vec<f64>) -> Self {
        assert_eq!(cells.len(), channels * rows.len() * cols.len(), "one value per cell");
        Field { channels, rows, cols, cells }
    }

    /// The value `f(c)` on every node of channel `c` of a node set of `shape`.
    pub fn per_channel(shape: NodeShape, f: impl Fn(usize) -> f64) -> Self {
        let (c, [h, w]) = dims(shape);
        Field::new(c, Classes::one(h), Classes::one(w), (0..c).map(f).collect())
    }

    /// Zero on every node of `shape`.
    pub fn zeros(shape: NodeShape) -> Self {
        Field::per_channel(shape, |_| 0.0)
    }

    /// One value per node, in `layout`'s order for `shape`.
    pub fn from_nodes(values: Vec<f64>, shape: NodeShape, layout: Layout) -> Self {
        assert_eq!(values.len(), shape.count(), "one value per node");
        let (c, [h, w]) = dims(shape);
        let cells = match (shape, layout) {
            (NodeShape::Map { .. }, Layout::Keras) if c > 1 => {
                let mut cells = vec![0.0; values.len()];
                for (p, px) in values.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        cells[ch * h * w + p] = v;
                    }
                }
                cells
            }
            _ => values,
        };
        Field::new(c, Classes::each(h), Classes::each(w), cells)
    }

    /// The value of every node, in `layout`'s order.
    pub fn to_nodes(&self, layout: Layout) -> Vec<f64> {
        let (h, w) = (self.rows.positions(), self.cols.positions());
        let mut out = Vec::with_capacity(self.nodes());
        let plane = self.rows.len() * self.cols.len();
        let at = |c: usize, y: usize, x: usize| {
            self.cells[c * plane + self.rows.class(y) * self.cols.len() + self.cols.class(x)]
        };
        if layout == Layout::Keras && h * w > 1 {
            for y in 0..h {
                for x in 0..w {
                    out.extend((0..self.channels).map(|c| at(c, y, x)));
                }
            }
        } else {
            for c in 0..self.channels {
                for y in 0..h {
                    out.extend((0..w).map(|x| at(c, y, x)));
                }
            }
        }
        out
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.channels * self.rows.positions() * self.cols.positions()
    }

    /// One value per cell, channel by channel.
    pub fn cells(&self) -> &[f64] {
        &self.cells
    }

    /// Nodes per cell, in the order of [`Field::cells`]; `None` when each
    /// cell is one node.
    pub fn counts(&self) -> Option<Vec<u64>> {
        if self.cells.len() == self.nodes() {
            return None;
        }
        let plane: Vec<u64> =
            self.rows.sizes.iter().flat_map(|&r| self.cols.sizes.iter().map(move |&k| r * k)).collect();
        Some(plane.iter().copied().cycle().take(self.cells.len()).collect())
    }

    /// The finite cells, in order, with the nodes each stands for.
    pub fn finite_cells(&self) -> (Vec<f64>, Vec<u64>) {
        let counts = self.counts();
        let finite = self.cells.iter().enumerate().filter(|(_, v)| v.is_finite());
        finite.map(|(i, &v)| (v, counts.as_ref().map_or(1, |c| c[i]))).unzip()
    }

    /// Adds `f(c)` to every node of channel `c` (a bias).
    pub fn add_per_channel(&mut self, f: impl Fn(usize) -> f64) {
        let plane = self.rows.len() * self.cols.len();
        for (c, cells) in self.cells.chunks_exact_mut(plane.max(1)).enumerate() {
            let v = f(c);
            cells.iter_mut().for_each(|x| *x += v);
        }
    }

    /// Adds `part` (same grid) into channels `offset, offset + step, ...`
    /// of `self` (`step` 1: the channels `offset..`).
    pub fn add_at(&mut self, offset: usize, step: usize, part: &Field) {
        assert!(part.channels == 0 || offset + (part.channels - 1) * step < self.channels, "channels in range");
        assert_eq!(
            (self.rows.positions(), self.cols.positions()),
            (part.rows.positions(), part.cols.positions()),
            "same grid"
        );
        if self.rows != part.rows || self.cols != part.cols {
            let (rows, self_r, part_r) = self.rows.join(&part.rows);
            let (cols, self_k, part_k) = self.cols.join(&part.cols);
            *self = self.resampled(rows.clone(), &self_r, cols.clone(), &self_k);
            return self.add_at(offset, step, &part.resampled(rows, &part_r, cols, &part_k));
        }
        let plane = self.rows.len() * self.cols.len();
        if step == 1 {
            for (d, s) in self.cells[offset * plane..].iter_mut().zip(&part.cells) {
                *d += s;
            }
            return;
        }
        for (k, src) in part.cells.chunks_exact(plane.max(1)).enumerate() {
            let at = (offset + k * step) * plane;
            for (d, s) in self.cells[at..at + plane].iter_mut().zip(src) {
                *d += s;
            }
        }
    }

    /// The same values on a finer partition: new row class `r` lies in
    /// this field's row class `from_r[r]` (columns alike).
    fn resampled(&self, rows: Classes, from_r: &[u32], cols: Classes, from_k: &[u32]) -> Field {
        let plane = self.rows.len() * self.cols.len();
        let mut cells = Vec::with_capacity(self.channels * rows.len() * cols.len());
        for c in 0..self.channels {
            let src = &self.cells[c * plane..(c + 1) * plane];
            for &r in from_r {
                let line = &src[r as usize * self.cols.len()..];
                cells.extend(from_k.iter().map(|&k| line[k as usize]));
            }
        }
        Field { channels: self.channels, rows, cols, cells }
    }

    /// Brings two fields of one node set onto one partition, so that their
    /// cells correspond (their sum is then cell by cell).
    pub fn align(a: &mut Field, b: &mut Field) {
        if a.rows != b.rows || a.cols != b.cols {
            let (rows, a_r, b_r) = a.rows.join(&b.rows);
            let (cols, a_k, b_k) = a.cols.join(&b.cols);
            *a = a.resampled(rows.clone(), &a_r, cols.clone(), &a_k);
            *b = b.resampled(rows, &b_r, cols, &b_k);
        }
    }
}

/// Channels and grid of a node set's shape (a vector: its features as
/// channels of a 1 x 1 grid).
fn dims(shape: NodeShape) -> (usize, [usize; 2]) {
    (shape.channels(), shape.grid().unwrap_or([1, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classes are numbered in order of first occurrence, by the scan and,
    /// past its classes, by the hash map alike.
    #[test]
    fn group_by_numbers_classes_by_first_occurrence() {
        for distinct in [1, 3, SCAN_CLASSES, SCAN_CLASSES + 1, 40] {
            let keys: Vec<usize> = (0..200).map(|p| (p * 7 + p / 3) % distinct * 10).collect();
            let (classes, first) = Classes::group_by(keys.iter().copied());
            let mut want_first: Vec<usize> = Vec::new();
            for &k in &keys {
                if !want_first.contains(&k) {
                    want_first.push(k);
                }
            }
            assert_eq!(first, want_first, "{distinct} keys");
            for (p, &k) in keys.iter().enumerate() {
                assert_eq!(first[classes.of[p] as usize], k, "{distinct} keys, position {p}");
            }
            let sizes: Vec<u64> = want_first.iter().map(|w| keys.iter().filter(|&&k| k == *w).count() as u64).collect();
            assert_eq!(classes.sizes, sizes, "{distinct} keys");
        }
    }

    #[test]
    fn join_and_add_agree_with_node_values() {
        let shape = NodeShape::Map { c: 3, h: 5, w: 4 };
        // Rows in classes {0, 4}, {1, 2, 3}; columns all one.
        let (rows, _) = Classes::group_by([0, 1, 1, 1, 0]);
        let a = Field::new(3, rows, Classes::one(4), (0..6).map(f64::from).collect());
        let b = Field::from_nodes((0..60).map(|i| f64::from(i) * 0.5).collect(), shape, Layout::Keras);
        for layout in [Layout::Torch, Layout::Keras] {
            let mut sum = a.clone();
            sum.add_at(0, 1, &b);
            let want: Vec<f64> = a.to_nodes(layout).iter().zip(b.to_nodes(layout)).map(|(x, y)| x + y).collect();
            assert_eq!(sum.to_nodes(layout), want);
        }
        // Keras order in and out.
        assert_eq!(b.to_nodes(Layout::Keras), (0..60).map(|i| f64::from(i) * 0.5).collect::<Vec<_>>());
        // A part at a channel offset.
        let mut set = Field::zeros(NodeShape::Map { c: 5, h: 5, w: 4 });
        set.add_at(2, 1, &a);
        let nodes = set.to_nodes(Layout::Torch);
        assert!(nodes[..40].iter().all(|&v| v == 0.0));
        assert_eq!(&nodes[40..], &a.to_nodes(Layout::Torch)[..]);
        assert_eq!(set.counts().unwrap().iter().sum::<u64>(), 100);
        // Interleaved: channel k of the part into channel 1 + 2k.
        let mut set = Field::zeros(NodeShape::Map { c: 7, h: 5, w: 4 });
        set.add_at(1, 2, &a);
        let (nodes, part) = (set.to_nodes(Layout::Torch), a.to_nodes(Layout::Torch));
        for c in 0..7 {
            let want: &[f64] = if c % 2 == 1 { &part[(c / 2) * 20..(c / 2 + 1) * 20] } else { &[0.0; 20] };
            assert_eq!(&nodes[c * 20..(c + 1) * 20], want, "channel {c}");
        }
    }
}
