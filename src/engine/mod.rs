//! Engines compute the measures: per-layer strengths and link-weight
//! statistics, per-node-set moments and histograms. The CPU engine is the
//! f64 reference; the GPU engine runs the same primitives as WGSL kernels.
//! [`assemble`] (behind [`Engine::analyze`]) builds a whole network's
//! measures from those primitives, so both engines share one definition of
//! node strength.

pub mod cpu;
pub mod field;
mod fixed;
pub mod gpu;
mod ordered;

use crate::checkpoint::{Checkpoint, Tensor};
use crate::error::Result;
use crate::graph::{Conv, GraphSource, Layer, LayerKind, Network, NodeShape, Norm, Reading};
use crate::spec::{Layout, Scale};
use crate::stats::{Histogram, Moments};

pub use cpu::CpuEngine;
pub use field::{Classes, Field};
pub use gpu::{GpuContext, GpuEngine};

/// What one layer contributes to the node strengths and the distribution
/// of its link weights.
#[derive(Debug, Clone)]
pub struct LayerMeasures {
    /// In-strength of each output node (bias included when one was passed).
    pub s_in: Field,
    /// Out-strength of each input node.
    pub s_out: Field,
    /// Moments of the layer's weights (biases excluded).
    pub weights: Moments,
    /// Histogram of the weights over their `[min, max]`.
    pub histogram: Histogram,
}

/// The primitives an engine provides. Each is checked against the CPU
/// reference by the same tests on every engine.
pub trait Engine: Send + Sync {
    /// Short name (`cpu`, or `gpu (adapter name)`).
    fn name(&self) -> String;

    /// Measures one dense or conv layer: `s_in` of its outputs (plus
    /// `shift` per output channel when given), `s_out` of its inputs, in
    /// `layout`'s flatten order; the weights' moments and a histogram of
    /// `bins` bins over their range. With `scale`, every weight of output
    /// channel `o` counts as `scale[o] * W[o, ...]` (a folded BatchNorm),
    /// in the strengths and in the statistics alike.
    fn layer(
        &self,
        layer: &Layer,
        layout: Layout,
        weight: &Tensor<'_>,
        scale: Option<&[f64]>,
        shift: Option<&[f64]>,
        bins: usize,
    ) -> Result<LayerMeasures>;

    /// Moments of `values` and their histogram of `bins` bins over
    /// `[min, max]`.
    fn distribution(&self, values: &[f64], bins: usize) -> Result<(Moments, Histogram)>;

    /// [`Engine::distribution`] of values that each stand for `counts[i]`
    /// nodes (a node set's cells). The default measures every node's
    /// value; the CPU reference weights the cells.
    fn distribution_counted(&self, values: &[f64], counts: &[u64], bins: usize) -> Result<(Moments, Histogram)> {
        let nodes: Vec<f64> =
            values.iter().zip(counts).flat_map(|(&v, &k)| std::iter::repeat_n(v, k as usize)).collect();
        self.distribution(&nodes, bins)
    }

    /// Measures one network.
    fn analyze(&self, net: &Network, ck: &Checkpoint, opts: &AnalysisOptions) -> Result<Analysis> {
        self.analyze_batch(&[(net, ck)], opts).pop().expect("one result per network")
    }

    /// Measures several networks, one result each, in order. The default
    /// assembles each from [`Engine::layer`] and [`Engine::distribution`];
    /// the GPU engine measures a whole batch in one submission.
    fn analyze_batch(&self, items: &[(&Network, &Checkpoint)], opts: &AnalysisOptions) -> Vec<Result<Analysis>> {
        items.iter().map(|&(net, ck)| assemble(self, net, ck, opts)).collect()
    }

    /// Node-set strengths and layer weights of one network, each binned on
    /// the caller's `[lo, hi]` (edges shared by every checkpoint of a study,
    /// so the counts merge), with their moments. The default measures with
    /// [`Engine::analyze`] and also returns the values.
    fn binned(&self, net: &Network, ck: &Checkpoint, ranges: &BinRanges, bins: usize) -> Result<BinnedNetwork> {
        binned_by_values(self, net, ck, ranges, bins)
    }

    /// How many checkpoints a caller should hand to one `analyze_batch`.
    fn batch_size(&self) -> usize {
        1
    }

    /// How many layers of `weights` learned weights each [`assemble`] may
    /// measure at once (their node sets are still summed in order).
    fn concurrent_layers(&self, weights: usize) -> usize {
        let _ = weights;
        1
    }
}

/// The shared ranges of [`Engine::binned`]: one per node set, one per layer.
#[derive(Debug, Clone, Default)]
pub struct BinRanges {
    /// `[lo, hi]` of each node set's strengths.
    pub node_sets: Vec<(f64, f64)>,
    /// `[lo, hi]` of each layer's weights.
    pub layers: Vec<(f64, f64)>,
}

/// One distribution binned on given edges.
#[derive(Debug, Clone)]
pub struct Binned {
    /// Moments of all the values.
    pub moments: Moments,
    /// Counts on the given edges.
    pub histogram: Histogram,
    /// The values themselves, where the engine has them at hand.
    pub values: Option<Vec<f64>>,
}

/// A network's node sets and layers, binned.
#[derive(Debug, Clone)]
pub struct BinnedNetwork {
    /// One per node set.
    pub node_sets: Vec<Binned>,
    /// One per weighted layer.
    pub layers: Vec<Binned>,
}

/// An empty histogram on exactly `[lo, hi]` (no widening).
pub(crate) fn histogram_on((lo, hi): (f64, f64), bins: usize) -> Histogram {
    Histogram { lo, hi, counts: vec![0; bins.max(1)] }
}

/// [`Engine::binned`] from the values: node sets measured by [`assemble`]
/// and binned from their cells (each counted once per node it stands
/// for), weights decoded on the host. The values themselves go along
/// where a pool could keep them ([`crate::density::EXACT_MAX`]).
pub fn binned_by_values<E: Engine + ?Sized>(
    engine: &E,
    net: &Network,
    ck: &Checkpoint,
    ranges: &BinRanges,
    bins: usize,
) -> Result<BinnedNetwork> {
    let (_, cells) = assemble_with_cells(engine, net, ck, &AnalysisOptions { keep_values: false, bins: 1 }, true)?;
    let small = |n: usize| n <= crate::density::EXACT_MAX;
    // NaN and infinite values are left out of pooled distributions.
    let node_sets = cells
        .iter()
        .zip(&ranges.node_sets)
        .map(|(field, &range)| {
            let (values, counts) = field.finite_cells();
            let mut histogram = histogram_on(range, bins);
            histogram.add_counted(&values, &counts);
            let moments = Moments::from_counted(&values, &counts);
            let values = small(field.nodes()).then(|| Finite::of(field.to_nodes(net.layout)).values);
            Binned { moments, histogram, values }
        })
        .collect();
    let layers = net
        .weighted_layers()
        .zip(&ranges.layers)
        .map(|((_, l), &range)| {
            // A block at a time: a large layer is never held as f64. Blocks
            // long enough for the histogram's count tables, whose
            // increments do not wait on one another (weights crowd a few
            // of the 4096 fine bins).
            const BLOCK: usize = 1 << 17;
            let mut histogram = histogram_on(range, bins);
            let mut moments = Moments::default();
            let mut values = Some(Vec::new());
            let mut block = Vec::with_capacity(BLOCK.min(l.weight_count()));
            let mut flush = |block: &mut Vec<f64>| {
                histogram.add_f64(block);
                block.clear();
            };
            link_weight_chunks(net, l, ck, |chunk| {
                let start = block.len();
                block.extend(chunk.iter().filter(|v| v.is_finite()));
                moments.merge(&Moments::from_slice(&block[start..]));
                match &mut values {
                    Some(v) if small(v.len() + block.len() - start) => v.extend_from_slice(&block[start..]),
                    _ => values = None,
                }
                if block.len() >= BLOCK - chunk.len() {
                    flush(&mut block);
                }
            })?;
            flush(&mut block);
            Ok(Binned { moments, histogram, values })
        })
        .collect::<Result<_>>()?;
    Ok(BinnedNetwork { node_sets, layers })
}

/// What to compute besides the summaries.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisOptions {
    /// Bins of every histogram (link weights and node strengths).
    pub bins: usize,
    /// Keep per-node values (for `cntscope nodes`).
    pub keep_values: bool,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions { bins: 50, keep_values: false }
    }
}

/// Per-node values of one node set.
#[derive(Debug, Clone)]
pub struct NodeValues {
    /// In-strength of each node (0 for the input set).
    pub s_in: Vec<f64>,
    /// Out-strength of each node (0 for the output set).
    pub s_out: Vec<f64>,
    /// `s_in + s_out`.
    pub strength: Vec<f64>,
}

/// The measures of one node set.
#[derive(Debug, Clone)]
pub struct NodeSetResult {
    /// The node set's name.
    pub name: String,
    /// Its shape.
    pub shape: NodeShape,
    /// Moments of `strength`: its std is the layer fluctuation.
    pub strength: Moments,
    /// Mean of `s_in`.
    pub s_in_mean: f64,
    /// Mean of `s_out`.
    pub s_out_mean: f64,
    /// Histogram of `strength`.
    pub histogram: Histogram,
    /// Nodes whose strength is NaN or infinite (they touch a NaN/Inf weight
    /// or bias); every statistic above is over the other nodes.
    pub non_finite: u64,
    /// Per-node values (all nodes), when asked for.
    pub values: Option<NodeValues>,
}

/// The measures of one weighted layer.
#[derive(Debug, Clone)]
pub struct LayerResult {
    /// Its `L` number (from 1, counting fixed layers too).
    pub index: usize,
    /// The layer's name.
    pub name: String,
    /// `dense`, `conv2d` or `batchnorm`.
    pub kind: &'static str,
    /// The weight tensor.
    pub weight: String,
    /// Moments of the finite link weights.
    pub weights: Moments,
    /// Moments of the finite bias values (after folding a BatchNorm: its
    /// shift; a BatchNorm layer: `c`), when the layer has one.
    pub bias: Option<Moments>,
    /// Histogram of the finite link weights.
    pub histogram: Histogram,
    /// NaN or infinite values among the weights and the bias.
    pub non_finite: u64,
}

/// Everything measured on one checkpoint.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// `None` for a chain; otherwise why strengths are per layer only.
    pub not_chain: Option<String>,
    /// How the graph was obtained.
    pub source: GraphSource,
    /// One entry per node set.
    pub node_sets: Vec<NodeSetResult>,
    /// One entry per weighted layer.
    pub layers: Vec<LayerResult>,
}

impl Analysis {
    /// A digest of the measures (each node set's and layer's count, mean,
    /// spread and range, to the bit): equal for two checkpoints of the same
    /// weights read as the same graph, and, short of a 64-bit collision,
    /// only for them.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        let moments = |m: &Moments, h: &mut std::hash::DefaultHasher| {
            m.n.hash(h);
            for x in [m.mean, m.m2, m.min, m.max] {
                x.to_bits().hash(h);
            }
        };
        for s in &self.node_sets {
            moments(&s.strength, &mut h);
            s.s_in_mean.to_bits().hash(&mut h);
        }
        for l in &self.layers {
            moments(&l.weights, &mut h);
            if let Some(b) = &l.bias {
                moments(b, &mut h);
            }
        }
        h.finish()
    }
}

/// Measures a network with an engine's primitives: strengths per layer,
/// summed into node sets over every layer touching them (SPEC 1.5:
/// `strength = s_in + s_out`), with moments and histograms. NaN or
/// infinite weights and biases are counted per layer (and the nodes they
/// reach per node set) and left out of the statistics.
pub fn assemble<E: Engine + ?Sized>(
    engine: &E,
    net: &Network,
    ck: &Checkpoint,
    opts: &AnalysisOptions,
) -> Result<Analysis> {
    assemble_with_cells(engine, net, ck, opts, false).map(|(a, _)| a)
}

/// [`assemble`], also returning each node set's strengths as cells when
/// `keep_cells` (empty otherwise).
fn assemble_with_cells<E: Engine + ?Sized>(
    engine: &E,
    net: &Network,
    ck: &Checkpoint,
    opts: &AnalysisOptions,
    keep_cells: bool,
) -> Result<(Analysis, Vec<Field>)> {
    // A node set's sums exist from its first layer to its last, then its
    // measures are taken and its memory freed: memory follows the sets
    // alive at once, not the whole network.
    let mut last = vec![0usize; net.node_sets.len()];
    for (i, l) in net.layers.iter().enumerate() {
        last[l.to] = i;
        last[l.from] = last[l.from].max(i);
    }
    let mut sums: Vec<Option<(Field, Field)>> = vec![None; net.node_sets.len()];
    let mut results: Vec<Option<(NodeSetResult, Option<Field>)>> = vec![None; net.node_sets.len()];
    let mut layers = Vec::new();
    // Layers are measured side by side where the engine says so; each
    // result is summed into its node sets in layer order.
    let mut failed = None;
    let mut i = 0;
    let mut sum_layer = |measured: Result<(Field, Field, Option<LayerResult>)>| -> Result<()> {
        let layer = &net.layers[i];
        let (s_in, mut s_out, result) = measured?;
        layers.extend(result);
        // An entry that read its input another way (`view`, a pixel
        // shuffle): its out-strengths back on the set's own nodes.
        if layer.reading != Reading::Direct {
            s_out = read_back(&s_out, layer, net.read_shape(layer), net.layout);
        }
        for (set, offset, step, part, inward) in
            [(layer.to, layer.offset, layer.step, &s_in, true), (layer.from, layer.from_channels[0], 1, &s_out, false)]
        {
            let shape = net.node_sets[set].shape;
            let (a, b) = sums[set].get_or_insert_with(|| (Field::zeros(shape), Field::zeros(shape)));
            (if inward { a } else { b }).add_at(offset, step, part);
        }
        for set in [layer.to, layer.from] {
            if last[set] == i {
                if let Some((s_in, s_out)) = sums[set].take() {
                    let set_opts = (engine, net.layout, opts, keep_cells);
                    results[set] = Some(node_set_result(set_opts, &net.node_sets[set], s_in, s_out)?);
                }
            }
        }
        i += 1;
        Ok(())
    };
    let concurrent: Vec<usize> = net.layers.iter().map(|l| engine.concurrent_layers(l.weight_count())).collect();
    // Runs of consecutive layers that may go side by side as many at once.
    let mut start = 0;
    for run in concurrent.chunk_by(|a, b| a == b) {
        ordered::ordered(
            run.len(),
            run[0],
            |k| measure_layer(engine, net, ck, start + k, &net.layers[start + k], opts),
            |measured| {
                if failed.is_none() {
                    failed = sum_layer(measured).err();
                }
            },
        );
        start += run.len();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let (node_sets, cells): (Vec<_>, Vec<_>) =
        results.into_iter().map(|r| r.expect("every node set touches a layer")).unzip();
    let analysis = Analysis { not_chain: net.not_chain.clone(), source: net.source, node_sets, layers };
    Ok((analysis, cells.into_iter().flatten().collect()))
}

/// A BatchNorm's per-channel `(a, c)`: `y = a x + c` (SPEC 1.3).
pub fn norm_affine(ck: &Checkpoint, n: &Norm) -> Result<(Vec<f64>, Vec<f64>)> {
    let mean = ck.tensor(&n.mean)?.to_f64();
    let var = ck.tensor(&n.var)?.to_f64();
    let gamma = n.weight.as_deref().map(|t| ck.tensor(t).map(|t| t.to_f64())).transpose()?;
    let beta = n.bias.as_deref().map(|t| ck.tensor(t).map(|t| t.to_f64())).transpose()?;
    let a: Vec<f64> =
        var.iter().enumerate().map(|(i, v)| gamma.as_ref().map_or(1.0, |g| g[i]) / (v + n.eps).sqrt()).collect();
    let c = a.iter().zip(&mean).enumerate().map(|(i, (a, m))| beta.as_ref().map_or(0.0, |b| b[i]) - a * m).collect();
    Ok((a, c))
}

/// What a dense or conv layer's measurement needs besides its weights.
#[derive(Debug, Clone, Default)]
pub struct LayerParams {
    /// Per-output-channel factor of a folded BatchNorm.
    pub scale: Option<Vec<f64>>,
    /// The layer's bias as reported (after folding: `a b + c`).
    pub bias: Option<Vec<f64>>,
    /// What `s_in` adds per output channel: the bias when biases count.
    pub shift: Option<Vec<f64>>,
}

impl LayerParams {
    /// The parameters of a dense or conv layer of `net`.
    pub fn of(net: &Network, layer: &Layer, ck: &Checkpoint) -> Result<LayerParams> {
        let bias = layer.bias.as_deref().map(|b| ck.tensor(b).map(|t| t.to_f64())).transpose()?;
        let (scale, bias) = match folded_affine(ck, layer)? {
            None => (None, bias),
            Some((a, c)) => {
                let folded = (0..a.len()).map(|o| a[o] * bias.as_ref().map_or(0.0, |b| b[o]) + c[o]).collect();
                (Some(a), Some(folded))
            }
        };
        let shift = bias.clone().filter(|_| net.bias);
        Ok(LayerParams { scale, bias, shift })
    }
}

/// The per-output-channel `(a, c)` folded into a dense or conv layer, `y =
/// a (W x + b) + c`: its layer scale `s` (`a = s`, `c = 0`), then its
/// folded BatchNorm (SPEC 1.3) on top (`a = a_bn s`, `c = c_bn`); `None`
/// when it has neither.
pub fn folded_affine(ck: &Checkpoint, layer: &Layer) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
    let norm = match (layer.kind, &layer.norm) {
        (LayerKind::Norm, _) | (_, None) => None,
        (_, Some(n)) => Some(norm_affine(ck, n)?),
    };
    let scale = match &layer.scale {
        None => None,
        Some(Scale::Tensor(t)) => Some(ck.tensor(t)?.to_f64()),
        Some(Scale::Factor(f)) => Some(vec![*f; layer.output.channels()]),
    };
    Ok(match (norm, scale) {
        (None, None) => None,
        (Some(ac), None) => Some(ac),
        (None, Some(s)) => {
            let zeros = vec![0.0; s.len()];
            Some((s, zeros))
        }
        (Some((a, c)), Some(s)) => Some((a.iter().zip(&s).map(|(a, s)| a * s).collect(), c)),
    })
}

/// A weighted layer's link weights as `links.csv` describes them: the
/// weights after folding (dense, conv), or one `a[c]` per node (a
/// BatchNorm layer).
pub fn link_weights(net: &Network, layer: &Layer, ck: &Checkpoint) -> Result<Vec<f64>> {
    let mut all = Vec::with_capacity(layer.weight_count());
    link_weight_chunks(net, layer, ck, |chunk| all.extend_from_slice(chunk))?;
    Ok(all)
}

/// [`link_weights`] handed to `f` a few thousand at a time, in storage
/// order, never all at once.
pub fn link_weight_chunks(net: &Network, layer: &Layer, ck: &Checkpoint, mut f: impl FnMut(&[f64])) -> Result<()> {
    const CHUNK: usize = 4096;
    match (layer.kind, &layer.norm) {
        (LayerKind::Norm, Some(n)) => f(&norm_link_weights(layer, net.layout, &norm_affine(ck, n)?.0)),
        _ => {
            let w = ck.tensor(layer.weight.as_deref().unwrap_or(""))?;
            let scale = folded_affine(ck, layer)?.map(|(a, _)| a);
            let mut buf = vec![0.0; CHUNK.min(w.len())];
            for at in (0..w.len()).step_by(CHUNK) {
                let chunk = &mut buf[..CHUNK.min(w.len() - at)];
                w.decode_into(at, chunk);
                if let Some(a) = &scale {
                    scale_weights_at(chunk, at, w.len(), layer, net.layout, a);
                }
                f(chunk);
            }
        }
    }
    Ok(())
}

/// A BatchNorm layer's link weights: `a[c]` for each node of channel `c`.
fn norm_link_weights(layer: &Layer, layout: Layout, a: &[f64]) -> Vec<f64> {
    let mut v = vec![0.0; layer.output.count()];
    fixed::per_channel(&mut v, layer.output, layout, |c| a[c]);
    v
}

/// The stored weights in f64, each of output channel `o` times `scale[o]`
/// (a copy, for layers whose folded factor is not applied while reading).
pub(crate) fn scaled_weights(weight: &Tensor<'_>, layer: &Layer, layout: Layout, scale: &[f64]) -> Vec<f64> {
    let mut values = weight.to_f64();
    scale_weights_at(&mut values, 0, weight.len(), layer, layout, scale);
    values
}

/// Multiplies each of the values `at..at + values.len()` of a tensor of
/// `len` stored weights by `scale[o]` of its output channel `o`.
fn scale_weights_at(values: &mut [f64], at: usize, len: usize, layer: &Layer, layout: Layout, scale: &[f64]) {
    match layer.kind {
        LayerKind::ConvTranspose(adjoint) => scale_transposed_at(values, at, &adjoint, layout, scale),
        _ => scale_by_output(values, at, len, layer.outputs_last(layout), scale),
    }
}

/// Each weight of a transposed conv (elements `at..` of its tensor in
/// `layout`) times `a` of the output channel it links to: an input channel
/// of its `adjoint` conv, whose weight the tensor is (torch `[Cin, Cout/g,
/// kh, kw]`, keras `[kh, kw, Cout/g, Cin]`).
fn scale_transposed_at(values: &mut [f64], at: usize, adjoint: &Conv, layout: Layout, a: &[f64]) {
    let (taps, rows_per_group) = (adjoint.kh * adjoint.kw, adjoint.cout / adjoint.geometry.groups);
    for (i, v) in (at..).zip(values) {
        let (row, column) = match layout {
            Layout::Torch => (i / (adjoint.cin_g * taps), i / taps % adjoint.cin_g),
            Layout::Keras => (i % adjoint.cout, i / adjoint.cout % adjoint.cin_g),
        };
        *v *= a[row / rows_per_group * adjoint.cin_g + column];
    }
}

/// A transposed conv measured as its adjoint conv (the same links,
/// reversed): the adjoint's out-strengths are this layer's in-strengths
/// (the bias added), its in-strengths this layer's out-strengths. A folded
/// factor, one per output channel here and so per input channel of the
/// adjoint, scales a copy of the weights.
fn transposed<E: Engine + ?Sized>(
    engine: &E,
    layout: Layout,
    layer: &Layer,
    adjoint: Conv,
    w: &Tensor<'_>,
    p: &LayerParams,
    bins: usize,
) -> Result<LayerMeasures> {
    let folded = p.scale.as_ref().map(|a| scaled_weights(w, layer, layout, a));
    let w = folded.as_deref().map_or(*w, |v| Tensor::f64_like(v, w));
    let mirror = Layer {
        kind: LayerKind::Conv(adjoint),
        input: layer.output,
        output: layer.input,
        norm: None,
        scale: None,
        ..layer.clone()
    };
    let LayerMeasures { s_in, mut s_out, weights, histogram } = engine.layer(&mirror, layout, &w, None, None, bins)?;
    if let Some(shift) = &p.shift {
        s_out.add_per_channel(|c| shift[c]);
    }
    Ok(LayerMeasures { s_in: s_out, s_out: s_in, weights, histogram })
}

/// [`scale_weights_at`] for weights whose output index is the fastest
/// (`outputs_last`) or the slowest.
fn scale_by_output(values: &mut [f64], at: usize, len: usize, outputs_last: bool, scale: &[f64]) {
    let n = scale.len().max(1);
    let per = (len / n).max(1);
    if outputs_last {
        // The output cycles through 0..n value by value: counted, not
        // divided (a division per weight was a sixth of `ensemble`).
        let mut o = at % n;
        for v in values {
            *v *= scale[o];
            o = if o + 1 == n { 0 } else { o + 1 };
        }
    } else {
        // Runs of `per` values share their output.
        let mut i = 0;
        while i < values.len() {
            let o = (at + i) / per;
            let stop = ((o + 1) * per - at).min(values.len());
            values[i..stop].iter_mut().for_each(|v| *v *= scale[o]);
            i = stop;
        }
    }
}

/// The measures of one node set from its summed `s_in` and `s_out`.
/// Also returns the strengths as cells when `keep_cells`.
fn node_set_result<E: Engine + ?Sized>(
    (engine, layout, opts, keep_cells): (&E, Layout, &AnalysisOptions, bool),
    set: &crate::graph::NodeSet,
    mut s_in: Field,
    mut s_out: Field,
) -> Result<(NodeSetResult, Option<Field>)> {
    Field::align(&mut s_in, &mut s_out);
    let counts = s_in.counts();
    // Means of s_in and s_out over the nodes whose strength is finite,
    // as the moments are.
    let (sum_in, sum_out, finite) = finite_sums(s_in.cells(), s_out.cells(), counts.as_deref());
    let nodes = s_in.nodes() as u64;
    let values = opts.keep_values.then(|| (s_in.to_nodes(layout), s_out.to_nodes(layout)));
    // Summed in place: no third field.
    let mut strength = s_in;
    strength.add_at(0, 1, &s_out);
    // Strengths are NaN/Inf only next to NaN/Inf weights or biases: the
    // finite cells are copied out only then.
    let kept = (finite < nodes).then(|| strength.finite_cells());
    let (m, histogram) = match (&kept, &counts) {
        (Some((values, counts)), _) => engine.distribution_counted(values, counts, opts.bins)?,
        (None, Some(counts)) => engine.distribution_counted(strength.cells(), counts, opts.bins)?,
        (None, None) => engine.distribution(strength.cells(), opts.bins)?,
    };
    let values = values.map(|(s_in, s_out)| NodeValues { s_in, s_out, strength: strength.to_nodes(layout) });
    let result = NodeSetResult {
        name: set.name.clone(),
        shape: set.shape,
        strength: m,
        s_in_mean: sum_in / finite as f64,
        s_out_mean: sum_out / finite as f64,
        histogram,
        non_finite: nodes - finite,
        values,
    };
    Ok((result, keep_cells.then_some(strength)))
}

/// The sums of `s_in` and `s_out` over the nodes whose strength `s_in +
/// s_out` is finite, and how many nodes those are (cell `i` standing for
/// `counts[i]` nodes). Its own function, so the sums stay in registers.
fn finite_sums(s_in: &[f64], s_out: &[f64], counts: Option<&[u64]>) -> (f64, f64, u64) {
    let (mut sum_in, mut sum_out, mut finite) = (0.0, 0.0, 0u64);
    let mut add = |a: f64, b: f64, k: u64| {
        if (a + b).is_finite() {
            sum_in += a * k as f64;
            sum_out += b * k as f64;
            finite += k;
        }
    };
    match counts {
        Some(counts) => s_in.iter().zip(s_out).zip(counts).for_each(|((&a, &b), &k)| add(a, b, k)),
        None => s_in.iter().zip(s_out).for_each(|(&a, &b)| add(a, b, 1)),
    }
    (sum_in, sum_out, finite)
}

/// One layer's `(s_in, s_out)` and, for a weighted layer, its link-weight
/// measures.
fn measure_layer<E: Engine + ?Sized>(
    engine: &E,
    net: &Network,
    ck: &Checkpoint,
    i: usize,
    layer: &Layer,
    opts: &AnalysisOptions,
) -> Result<(Field, Field, Option<LayerResult>)> {
    let mut result = None;
    let (s_in, s_out) = match layer.kind {
        LayerKind::Dense { .. } | LayerKind::Conv(_) | LayerKind::ConvTranspose(_) => {
            let weight = layer.weight.as_deref().expect("dense and conv layers have weights");
            let w = ck.tensor(weight)?;
            let p = LayerParams::of(net, layer, ck)?;
            let LayerMeasures { s_in, s_out, mut weights, mut histogram } = match layer.kind {
                LayerKind::ConvTranspose(adjoint) => transposed(engine, net.layout, layer, adjoint, &w, &p, opts.bins)?,
                _ => engine.layer(layer, net.layout, &w, p.scale.as_deref(), p.shift.as_deref(), opts.bins)?,
            };
            let bias = p.bias.map(Finite::of);
            let mut non_finite = bias.as_ref().map_or(0, |b| b.non_finite);
            if !is_finite(&weights) {
                // Rare: measure the finite weights on their own.
                let finite = Finite::of(link_weights(net, layer, ck)?);
                (weights, histogram) = engine.distribution(&finite.values, opts.bins)?;
                non_finite += finite.non_finite;
            }
            result = Some(LayerResult {
                index: i + 1,
                name: layer.name.clone(),
                kind: layer.kind.name(),
                weight: layer.tensor().to_string(),
                weights,
                bias: bias.map(|b| Moments::from_slice(&b.values)),
                histogram,
                non_finite,
            });
            (s_in, s_out)
        }
        LayerKind::Norm => {
            let (a, c) = norm_affine(ck, layer.norm.as_ref().expect("a BatchNorm layer has its tensors"))?;
            let (s_in, s_out) = fixed::norm_strengths(layer, &a, net.bias.then_some(&c[..]));
            // One link `a[c]` per node of channel `c`.
            let per_channel = (layer.output.count() / a.len().max(1)) as u64;
            let weights = Finite::of(a);
            let counts = vec![per_channel; weights.values.len()];
            let (m, histogram) = engine.distribution_counted(&weights.values, &counts, opts.bins)?;
            let shift = Finite::of(c);
            result = Some(LayerResult {
                index: i + 1,
                name: layer.name.clone(),
                kind: layer.kind.name(),
                weight: layer.tensor().to_string(),
                weights: m,
                bias: Some(Moments::from_slice(&shift.values)),
                histogram,
                non_finite: weights.non_finite * per_channel + shift.non_finite,
            });
            (s_in, s_out)
        }
        LayerKind::Pool(_) | LayerKind::Identity => fixed::strengths(layer),
    };
    Ok((s_in, s_out, result))
}

/// `values` of a layer's input nodes (its `input` shape, as it read them)
/// on the nodes of the source they are (`read`, the channels it read).
fn read_back(values: &Field, layer: &Layer, read: NodeShape, layout: Layout) -> Field {
    if layer.reading == Reading::View {
        // The same nodes in the layout's order.
        return Field::from_nodes(values.to_nodes(layout), read, layout);
    }
    // A pixel shuffle moves node [c, y, x] whatever the layout: in torch's
    // c, y, x order on both sides.
    let given = values.to_nodes(Layout::Torch);
    let [h, w] = layer.input.grid().unwrap_or([1, 1]);
    let [rh, rw] = read.grid().unwrap_or([1, 1]);
    let mut nodes = vec![0.0; given.len()];
    for (i, v) in given.into_iter().enumerate() {
        let [sc, sy, sx] = layer.reading.source_node([i / (h * w), i / w % h, i % w]);
        nodes[(sc * rh + sy) * rw + sx] = v;
    }
    Field::from_nodes(nodes, read, Layout::Torch)
}

/// True when moments were taken over finite values only: a NaN or an
/// infinity among them leaves the mean or `m2` non-finite.
pub(crate) fn is_finite(m: &Moments) -> bool {
    m.mean.is_finite() && m.m2.is_finite()
}

/// The finite values of a sample, and how many others it had.
#[derive(Debug, Clone, Default)]
pub struct Finite {
    /// The finite values, in order.
    pub values: Vec<f64>,
    /// How many values were NaN or infinite.
    pub non_finite: u64,
}

impl Finite {
    /// Splits `values` (no copy when all are finite).
    pub fn of(mut values: Vec<f64>) -> Self {
        let n = values.len();
        values.retain(|v| v.is_finite());
        Finite { non_finite: (n - values.len()) as u64, values }
    }
}

/// A dense layer's weight matrix as stored: `(rows, cols)` for `inputs ->
/// outputs` links, stored `[in, out]` when `in_out`.
pub(crate) fn dense_storage(in_out: bool, inputs: usize, outputs: usize) -> (usize, usize) {
    if in_out {
        (inputs, outputs)
    } else {
        (outputs, inputs)
    }
}

/// Which of a stored dense matrix's row and column sums are `(s_in, s_out)`.
pub(crate) fn dense_in_out<T>(in_out: bool, row_sums: T, col_sums: T) -> (T, T) {
    if in_out {
        (col_sums, row_sums)
    } else {
        (row_sums, col_sums)
    }
}

/// Where the measures run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The f64 reference engine.
    Cpu,
    /// The GPU engine; fails when no adapter exists.
    Gpu,
    /// The engine measured fastest for this work: the CPU. Every weight
    /// byte is read once either way, and a GPU must also copy each one
    /// over to itself after a start-up of about 0.25 s; on an NVIDIA H200
    /// machine the CPU engine scanned a 528 MB checkpoint in 0.031 s, the
    /// GPU engine in 0.32 s (BENCHMARKS.md).
    Auto,
}

/// Builds the engine for `device`. `threads` is what the CPU engine may use
/// inside one layer; `adapter` picks a GPU adapter by name substring.
pub fn select_engine(device: Device, adapter: Option<&str>, threads: usize) -> Result<Box<dyn Engine>> {
    match device {
        Device::Cpu | Device::Auto => Ok(Box::new(CpuEngine::new(threads))),
        Device::Gpu => Ok(Box::new(GpuEngine::new(std::sync::Arc::new(GpuContext::new(adapter)?)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scaled a chunk at a time from any offset, as one factor per output
    /// index computed value by value.
    #[test]
    fn weights_are_scaled_by_their_outputs_factor_in_chunks() {
        let (n, per) = (7, 13);
        let scale: Vec<f64> = (0..n).map(|o| 1.0 + o as f64).collect();
        for outputs_last in [false, true] {
            let want: Vec<f64> =
                (0..n * per).map(|i| scale[if outputs_last { i % n } else { i / per }] * (i as f64 + 0.5)).collect();
            for chunk in [1, 5, 13, 40, n * per] {
                let mut got: Vec<f64> = (0..n * per).map(|i| i as f64 + 0.5).collect();
                for (k, part) in got.chunks_mut(chunk).enumerate() {
                    scale_by_output(part, k * chunk, n * per, outputs_last, &scale);
                }
                assert_eq!(got, want, "outputs last: {outputs_last}, chunks of {chunk}");
            }
        }
    }
}
