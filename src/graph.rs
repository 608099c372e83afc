//! The network as a graph (SPEC sections 1-3): a DAG of node sets joined by
//! layers. Weighted layers (dense, 2-D convolution, BatchNorm as a diagonal
//! layer) carry learned link weights; fixed layers (pools, interpolations,
//! pads, identity skips) carry constant ones. A layer reads a channel range
//! of one set and writes a channel range of another, so residual adds
//! (overlapping writers) and concatenations (disjoint writers) are ordinary
//! graphs. A chain is the
//! case where each set has one writer and one reader; the per-layer
//! analysis is the DAG whose layers share no sets.
//!
//! Graphs come from a spec file ([`crate::spec`]) or from discovery
//! ([`crate::discover`]); both become [`LayerSpec`] entries and one
//! builder turns them into a [`Network`], checking every shape.

use std::collections::HashMap;
use std::fmt;

use crate::checkpoint::Checkpoint;
use crate::discover;
use crate::error::{Error, Result};
use crate::spec::{BnMode, EntryKind, InterpolateMode, LayerSpec, Layout, PadMode, PoolName, Scale, Spec};

/// Default BatchNorm epsilon (torch's).
pub const DEFAULT_EPS: f64 = 1e-5;
/// Default BatchNorm epsilon in the keras layout (keras').
pub const KERAS_EPS: f64 = 1e-3;

/// How to read a checkpoint as a graph: validated settings, whatever their
/// source (spec file, command line, defaults).
#[derive(Debug, Clone, Default)]
pub struct GraphOptions {
    /// The spec file, when one was given.
    pub spec: Option<Spec>,
    /// One sample's shape (`[C, H, W]` or `[features]`); overrides the spec's.
    pub input: Option<Vec<usize>>,
    /// Layout; overrides the spec's; auto-detected from tensor names if unset.
    pub layout: Option<Layout>,
    /// `Some(false)` leaves biases and BatchNorm shifts out of `s_in`
    /// (`--no-bias`).
    pub bias: Option<bool>,
    /// BatchNorm treatment; overrides the spec's (default fold).
    pub bn: Option<BnMode>,
    /// The entry of a wrapped checkpoint that holds the weights (`--key`):
    /// tensors named `KEY.*`, read without the prefix (for a PyTorch
    /// checkpoint, a path through its nested dicts: `ema`, `model.backbone`).
    pub key: Option<String>,
}

/// The shape of a node set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeShape {
    /// A vector of neurons.
    Flat(usize),
    /// A feature map of `c` channels of `h x w` pixels.
    Map {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
}

/// The longest side a node set's grid may have: a padding, stride or
/// input typo in a spec gives grids of billions of rows, which would be
/// measured for hours in tens of gigabytes rather than refused.
pub const MAX_SIDE: usize = 1 << 20;
/// The most nodes a node set may have.
pub const MAX_NODES: usize = 1 << 40;

impl NodeShape {
    /// Why the shape is beyond [`MAX_SIDE`] or [`MAX_NODES`], if it is.
    pub fn too_large(self) -> Option<String> {
        let (c, [h, w]) = (self.channels(), self.grid().unwrap_or([1, 1]));
        if h.max(w) > MAX_SIDE {
            return Some(format!(
                "a {h}x{w} grid is beyond the limit of {MAX_SIDE} a side (a padding or stride typo?)"
            ));
        }
        let nodes = c.checked_mul(h).and_then(|n| n.checked_mul(w)).filter(|&n| n <= MAX_NODES);
        nodes.is_none().then(|| format!("{c}x{h}x{w} nodes are beyond the limit of {MAX_NODES} a node set"))
    }

    /// Number of nodes.
    pub fn count(self) -> usize {
        match self {
            NodeShape::Flat(n) => n,
            NodeShape::Map { c, h, w } => c * h * w,
        }
    }

    /// Channels (features of a vector).
    pub fn channels(self) -> usize {
        match self {
            NodeShape::Flat(n) => n,
            NodeShape::Map { c, .. } => c,
        }
    }

    /// The pixel grid of a map.
    pub fn grid(self) -> Option<[usize; 2]> {
        match self {
            NodeShape::Flat(_) => None,
            NodeShape::Map { h, w, .. } => Some([h, w]),
        }
    }

    /// The same grid with `c` channels.
    pub fn with_channels(self, c: usize) -> NodeShape {
        match self {
            NodeShape::Flat(_) => NodeShape::Flat(c),
            NodeShape::Map { h, w, .. } => NodeShape::Map { c, h, w },
        }
    }

    fn of(grid: Option<[usize; 2]>, c: usize) -> NodeShape {
        match grid {
            None => NodeShape::Flat(c),
            Some([h, w]) => NodeShape::Map { c, h, w },
        }
    }
}

impl fmt::Display for NodeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeShape::Flat(n) => write!(f, "{n}"),
            NodeShape::Map { c, h, w } => write!(f, "{c}x{h}x{w}"),
        }
    }
}

/// Stride, zero padding, dilation and groups of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[ph, pw]`: zero padding before the input (top, left).
    pub padding: [usize; 2],
    /// Zero padding after it (bottom, right): `padding` but for
    /// TensorFlow's `"same"`, whose odd cell goes after. A padded cell has
    /// no link: taps that land there are left out, before or after.
    pub padding_after: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl ConvGeometry {
    /// Stride 1, no padding, no dilation, in `groups` groups.
    pub fn plain(groups: usize) -> Self {
        ConvGeometry { stride: [1, 1], padding: [0, 0], padding_after: [0, 0], dilation: [1, 1], groups }
    }
}

/// A 2-D convolution's sizes (in canonical torch order) and geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    /// Output channels.
    pub cout: usize,
    /// Input channels per group.
    pub cin_g: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Input map height and width (`[1, 1]` at channel level).
    pub in_hw: [usize; 2],
    /// Output map height and width (`[1, 1]` at channel level).
    pub out_hw: [usize; 2],
    /// Stride, padding, dilation, groups.
    pub geometry: ConvGeometry,
    /// Measured at channel level (SPEC 2: the input grid is unknown;
    /// channels are nodes and `c -> o` carries the sum of its kernel's
    /// taps, as if every tap landed).
    pub channel_level: bool,
}

impl Conv {
    /// Output size along one axis: `floor((n + before + after - d(k-1) - 1)
    /// / s) + 1`,
    /// or `None` when the dilated kernel does not fit.
    pub fn out_len(n: usize, k: usize, s: usize, [before, after]: [usize; 2], d: usize) -> Option<usize> {
        let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
        let padded = n.checked_add(before)?.checked_add(after)?;
        padded.checked_sub(span).map(|r| r / s + 1)
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin_g * self.geometry.groups
    }
}

/// What a pool computes (SPEC 1.4), or which interpolation resamples the
/// grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolOp {
    /// Max pool: the average of the window's taps inside the input.
    Max,
    /// Average pool; `count_include_pad` as torch's `AvgPool2d`.
    Avg {
        /// Padding cells count in the divisor.
        count_include_pad: bool,
    },
    /// Adaptive average pool (torch's windows).
    AdaptiveAvg,
    /// Interpolation to the output grid, as torch's `F.interpolate`: each
    /// output pixel the fixed combination of input pixels the mode takes,
    /// link weights its coefficients (the product of each axis' factor).
    Interpolate(Interpolation),
    /// Padding (torch's `F.pad`): each output pixel copies the input pixel
    /// `before` cells up and left of it, or, outside the input, the one
    /// the mode fills it from (none for zeros); a negative count crops.
    Pad {
        /// How cells outside the input are filled.
        mode: PadMode,
        /// Cells added before the input (top, left).
        before: [i64; 2],
    },
}

/// An interpolation's parameters, as torch's `F.interpolate` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interpolation {
    /// The mode.
    pub mode: InterpolateMode,
    /// `align_corners` (bilinear, bicubic).
    pub align_corners: bool,
    /// The `scale_factor` torch used for the coordinates, if given.
    pub scale_factor: Option<[f64; 2]>,
}

impl Interpolation {
    /// The taps of every output position along an axis of `n` inputs and
    /// `m` outputs (`a`: 0 rows, 1 columns), as torch's CPU kernels place
    /// them (`aten/src/ATen/native/UpSample.h`), rounding included: nearest
    /// modes in f32, the others in f64 (torch's for float64 tensors).
    fn taps(&self, a: usize, n: usize, m: usize) -> Vec<Window> {
        let tap = |output: usize, i: usize, weight: f64| Window { output, start: i, end: i + 1, weight };
        let given = self.scale_factor.map(|s| 1.0 / s[a]);
        // `area_pixel_compute_scale`.
        let scale = if self.align_corners {
            if m > 1 {
                (n - 1) as f64 / (m - 1) as f64
            } else {
                0.0
            }
        } else {
            given.unwrap_or(n as f64 / m as f64)
        };
        let source = |o: usize| if self.align_corners { scale * o as f64 } else { scale * (o as f64 + 0.5) - 0.5 };
        // `guard_index_and_lambda`: `floorf`, then the distance clamped to [0, 1].
        let guard = |real: f64| {
            let i = ((real as f32).floor() as i64).min(n as i64 - 1);
            (i, (real - i as f64).clamp(0.0, 1.0))
        };
        // `compute_scales_value<float>` of the nearest modes.
        let scale32 = given.map_or(n as f32 / m as f32, |s| s as f32);
        let mut taps = Vec::with_capacity(m * 4);
        for o in 0..m {
            match self.mode {
                InterpolateMode::Nearest | InterpolateMode::NearestExact => {
                    let i = match self.mode {
                        InterpolateMode::Nearest if m == n => o,
                        InterpolateMode::Nearest if m == 2 * n => o >> 1,
                        InterpolateMode::Nearest => (o as f32 * scale32).floor() as usize,
                        _ => (((o as f64 + 0.5) * scale32 as f64) as f32).floor() as usize,
                    };
                    taps.push(tap(o, i.min(n - 1), 1.0));
                }
                InterpolateMode::Bilinear if m == n => taps.push(tap(o, o, 1.0)),
                InterpolateMode::Bilinear => {
                    let (i, l1) = guard(source(o).max(0.0));
                    let i = i as usize;
                    taps.push(tap(o, i, 1.0 - l1));
                    taps.push(tap(o, if i + 1 < n { i + 1 } else { i }, l1));
                }
                InterpolateMode::Bicubic => {
                    let (i, t) = guard(source(o));
                    // `get_cubic_upsample_coefficients`, A = -0.75.
                    const A: f64 = -0.75;
                    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
                    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
                    let x2 = 1.0 - t;
                    let coeffs = [far(t + 1.0), near(t), near(x2), far(x2 + 1.0)];
                    for (j, c) in coeffs.into_iter().enumerate() {
                        taps.push(tap(o, (i - 1 + j as i64).clamp(0, n as i64 - 1) as usize, c));
                    }
                }
            }
        }
        taps
    }
}

/// The input each output position of a padded axis copies (`n` inputs,
/// `m` outputs, `before` cells added before the input), as torch's
/// `F.pad` fills it: zeros (no tap), the input mirrored without its edge,
/// the edge repeated, or wrapped around.
fn pad_taps(mode: PadMode, before: i64, n: usize, m: usize) -> Vec<Window> {
    let n = n as i64;
    (0..m)
        .filter_map(|o| {
            let i = o as i64 - before;
            let i = match mode {
                PadMode::Constant => (0..n).contains(&i).then_some(i)?,
                PadMode::Reflect => {
                    // One reflection (torch requires each pad < n).
                    let i = i.abs();
                    if i >= n {
                        2 * (n - 1) - i
                    } else {
                        i
                    }
                }
                PadMode::Replicate => i.clamp(0, n - 1),
                PadMode::Circular => i.rem_euclid(n),
            };
            Some(Window { output: o, start: i as usize, end: i as usize + 1, weight: 1.0 })
        })
        .collect()
}

/// A pooling, interpolation or padding layer's geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool {
    /// The operation.
    pub op: PoolOp,
    /// Window (unused by adaptive pools).
    pub kernel: [usize; 2],
    /// Stride (unused by adaptive pools).
    pub stride: [usize; 2],
    /// Zero padding before the input (top, left; unused by adaptive pools).
    pub padding: [usize; 2],
    /// Zero padding after it (bottom, right): `padding` but for
    /// TensorFlow's "same" pools, whose odd cell goes after.
    pub padding_after: [usize; 2],
    /// The output grid rounds up (torch's `ceil_mode`): the last window
    /// may reach past the padding, and only what it covers of the padded
    /// input counts in an average pool's divisor.
    pub ceil_mode: bool,
    /// Input grid.
    pub in_hw: [usize; 2],
    /// Output grid.
    pub out_hw: [usize; 2],
}

/// One window of an output position along one axis: the input positions
/// `start..end` inside the input, and its link weight's factor along this
/// axis (a pool's `1 / divisor`, an interpolation's coefficient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// The output position.
    pub output: usize,
    /// First input position inside the window.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// This axis' factor of the link weight.
    pub weight: f64,
}

impl Pool {
    /// Output length along an axis of `n` positions padded by `before` and
    /// `after`, as torch computes it: rounded down, or with `ceil_mode` up,
    /// but never a window that starts past the input and its left padding;
    /// `None` when the window is larger than the padded input.
    pub fn out_len(
        n: usize,
        kernel: usize,
        stride: usize,
        [before, after]: [usize; 2],
        ceil_mode: bool,
    ) -> Option<usize> {
        // Sizes from a spec: checked.
        let span = n.checked_add(before)?.checked_add(after)?.checked_sub(kernel)?;
        if !ceil_mode {
            return Some(span / stride + 1);
        }
        let out = span.div_ceil(stride) + 1;
        Some(if (out - 1).checked_mul(stride)? >= n + before { out - 1 } else { out })
    }

    /// The windows of every output position along axis `a` (0: rows, 1:
    /// columns), in output order: one per position for a pool, a tap per
    /// input it reads for an interpolation (an input read twice, at an
    /// edge, twice). A link's weight is the product of its two axes'
    /// factors.
    pub fn windows(&self, a: usize) -> Vec<Window> {
        let (n, m) = (self.in_hw[a], self.out_hw[a]);
        match self.op {
            PoolOp::Interpolate(ip) => ip.taps(a, n, m),
            PoolOp::Pad { mode, before } => pad_taps(mode, before[a], n, m),
            PoolOp::AdaptiveAvg => (0..m)
                .map(|o| {
                    let (start, end) = (o * n / m, ((o + 1) * n).div_ceil(m));
                    Window { output: o, start, end, weight: 1.0 / (end - start) as f64 }
                })
                .collect(),
            PoolOp::Max | PoolOp::Avg { .. } => (0..m).map(|o| self.window(a, n, o)).collect(),
        }
    }

    /// The window of output position `o` of a max or average pool along
    /// axis `a` of `n` inputs.
    fn window(&self, a: usize, n: usize, o: usize) -> Window {
        let pad = self.padding[a] as i64;
        let first = (o * self.stride[a]) as i64 - pad;
        let last = first + self.kernel[a] as i64;
        let (start, end) = (first.max(0) as usize, (last.min(n as i64)).max(0) as usize);
        let inside = end.saturating_sub(start);
        let divisor = match self.op {
            // The window within the padded input (all of it unless
            // ceil_mode's last window reaches past).
            PoolOp::Avg { count_include_pad: true } => (last.min((n + self.padding_after[a]) as i64) - first) as usize,
            _ => inside,
        };
        Window { output: o, start, end: end.max(start), weight: if inside == 0 { 0.0 } else { 1.0 / divisor as f64 } }
    }

    /// A layer that resamples the grid (an interpolation, a pad): no
    /// window geometry of its own.
    fn resampling(op: PoolOp, in_hw: [usize; 2], out_hw: [usize; 2]) -> Pool {
        Pool {
            op,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            padding_after: [0, 0],
            ceil_mode: false,
            in_hw,
            out_hw,
        }
    }
}

/// A BatchNorm's tensors (SPEC 1.3): `y = a x + c` per channel, with
/// `a = gamma / sqrt(var + eps)` and `c = beta - a mean`.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    /// The tensor prefix (`bn1`).
    pub prefix: String,
    /// `gamma` (absent without affine parameters: 1).
    pub weight: Option<String>,
    /// `beta` (absent: 0).
    pub bias: Option<String>,
    /// Running mean.
    pub mean: String,
    /// Running variance.
    pub var: String,
    /// Epsilon.
    pub eps: f64,
}

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerKind {
    /// A dense (fully connected) layer with `inputs -> outputs` links.
    Dense {
        /// Input neurons.
        inputs: usize,
        /// Output neurons.
        outputs: usize,
        /// Stored `[in, out]` (keras, GPT-2's Conv1D, embeddings) rather
        /// than `[out, in]`.
        in_out: bool,
    },
    /// A 2-D convolution, unrolled over the pixel grid.
    Conv(Conv),
    /// A transposed 2-D convolution (`ConvTranspose2d`): the links of the
    /// convolution [`Conv`] from this layer's output grid to its input
    /// grid, reversed (its `cout` is this layer's input channels, its
    /// `cin()` this layer's output channels), read from the same weights.
    ConvTranspose(Conv),
    /// A BatchNorm as its own diagonal layer (its tensors in
    /// [`Layer::norm`]).
    Norm,
    /// A pool, an interpolation or a pad (fixed): the grid resampled.
    Pool(Pool),
    /// An identity skip (fixed).
    Identity,
}

impl LayerKind {
    /// The kind as `links.csv` and `inspect` name it.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Dense { .. } => "dense",
            LayerKind::Conv(_) => "conv2d",
            LayerKind::ConvTranspose(_) => "conv_transpose2d",
            LayerKind::Norm => "batchnorm",
            LayerKind::Pool(p) => match p.op {
                PoolOp::Max => "maxpool",
                PoolOp::Avg { .. } => "avgpool",
                PoolOp::AdaptiveAvg => "adaptive_avgpool",
                PoolOp::Interpolate(ip) => match ip.mode {
                    InterpolateMode::Nearest => "interpolate_nearest",
                    InterpolateMode::NearestExact => "interpolate_nearest_exact",
                    InterpolateMode::Bilinear => "interpolate_bilinear",
                    InterpolateMode::Bicubic => "interpolate_bicubic",
                },
                PoolOp::Pad { mode, .. } => match mode {
                    PadMode::Constant => "pad",
                    PadMode::Reflect => "pad_reflect",
                    PadMode::Replicate => "pad_replicate",
                    PadMode::Circular => "pad_circular",
                },
            },
            LayerKind::Identity => "identity",
        }
    }

    /// True for layers with learned link weights (a `links.csv` row).
    pub fn is_weighted(&self) -> bool {
        matches!(self, LayerKind::Dense { .. } | LayerKind::Conv(_) | LayerKind::ConvTranspose(_) | LayerKind::Norm)
    }
}

/// How a layer reads the nodes of the channels it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading {
    /// As its source set holds them.
    #[default]
    Direct,
    /// As another shape: the same nodes in the layout's order (`view`).
    View,
    /// Depth to space (`pixel_shuffle = r`): channel `c r² + i r + j` at
    /// `(y, x)` is read as channel `c` at `(y r + i, x r + j)`.
    PixelShuffle(usize),
    /// Space to depth (`pixel_unshuffle = r`), the inverse.
    PixelUnshuffle(usize),
}

impl Reading {
    /// The node `[c, y, x]` of the source that a layer reading this way
    /// sees as its input node `[c, y, x]`.
    pub fn source_node(self, [c, y, x]: [usize; 3]) -> [usize; 3] {
        match self {
            Reading::Direct | Reading::View => [c, y, x],
            Reading::PixelShuffle(r) => [(c * r + y % r) * r + x % r, y / r, x / r],
            Reading::PixelUnshuffle(r) => [c / (r * r), y * r + c / r % r, x * r + c % r],
        }
    }
}

/// One layer of the graph.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Display name.
    pub name: String,
    /// Weight tensor (dense and conv layers).
    pub weight: Option<String>,
    /// Bias tensor, if the layer has one.
    pub bias: Option<String>,
    /// The BatchNorm folded into a dense or conv layer, or the BatchNorm
    /// of a [`LayerKind::Norm`] layer.
    pub norm: Option<Norm>,
    /// A factor folded into a dense or conv layer's weights and bias
    /// before its BatchNorm, per output channel (ConvNeXt's layer scale) or
    /// one for all.
    pub scale: Option<Scale>,
    /// What it computes, with sizes.
    pub kind: LayerKind,
    /// The node set it reads.
    pub from: usize,
    /// The channels `[a, b)` of `from` it reads.
    pub from_channels: [usize; 2],
    /// The node set it writes.
    pub to: usize,
    /// The first channel of `to` it writes.
    pub offset: usize,
    /// Its output channel `k` is channel `offset + k * step` of `to` (1
    /// but for a write interleaved by ShuffleNet's channel shuffle).
    pub step: usize,
    /// Shape of what it reads (channels `from_channels` of `from`), as it
    /// reads them ([`Layer::reading`]).
    pub input: NodeShape,
    /// How it reads them.
    pub reading: Reading,
    /// Shape of what it writes (at `offset` in `to`).
    pub output: NodeShape,
}

impl Layer {
    /// Number of learned link weights: those of the weight tensor (dense,
    /// conv), one per channel (a BatchNorm layer), none (fixed layers).
    pub fn weight_count(&self) -> usize {
        match self.kind {
            LayerKind::Dense { inputs, outputs, .. } => inputs * outputs,
            LayerKind::Conv(c) | LayerKind::ConvTranspose(c) => c.cout * c.cin_g * c.kh * c.kw,
            LayerKind::Norm => self.output.channels(),
            LayerKind::Pool(_) | LayerKind::Identity => 0,
        }
    }

    /// True when the output channel is the last (fastest) axis of the
    /// stored weights (`[in, out]` dense, keras convs), false when it is
    /// the first (torch).
    pub fn outputs_last(&self, layout: Layout) -> bool {
        match self.kind {
            LayerKind::Dense { in_out, .. } => in_out,
            _ => layout == Layout::Keras,
        }
    }

    /// The tensor `links.csv` names for the layer: its weight, or for a
    /// BatchNorm layer the prefix.
    pub fn tensor(&self) -> &str {
        self.weight.as_deref().or(self.norm.as_ref().map(|n| n.prefix.as_str())).unwrap_or("")
    }
}

/// One node set.
#[derive(Debug, Clone)]
pub struct NodeSet {
    /// Its name (`input`, or the entry or `to` that created it; `name:in`
    /// / `name:out` in the per-layer analysis).
    pub name: String,
    /// Its shape.
    pub shape: NodeShape,
}

/// How a network's graph was obtained (the `graph` column of `nodes.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphSource {
    /// From a spec file.
    Spec,
    /// Discovered from tensor names and shapes (a chain).
    Discovered,
    /// The per-layer fallback: node strength across layers not defined.
    PerLayer,
}

impl GraphSource {
    /// `spec`, `discovered` or `per_layer`.
    pub fn name(self) -> &'static str {
        match self {
            GraphSource::Spec => "spec",
            GraphSource::Discovered => "discovered",
            GraphSource::PerLayer => "per_layer",
        }
    }
}

/// A checkpoint read as a directed weighted graph.
#[derive(Debug, Clone)]
pub struct Network {
    /// The weight layout.
    pub layout: Layout,
    /// Whether biases and BatchNorm shifts count in `s_in`.
    pub bias: bool,
    /// BatchNorm treatment in force.
    pub bn: BnMode,
    /// The layers, in forward order (`L1..`).
    pub layers: Vec<Layer>,
    /// The node sets, `V0` the input.
    pub node_sets: Vec<NodeSet>,
    /// How the graph was obtained.
    pub source: GraphSource,
    /// For the per-layer analysis: why node strength across layers is not
    /// defined.
    pub not_chain: Option<String>,
    /// What was assumed rather than given (conv geometry, tensor
    /// orientations, channel-level convolutions), for the user to see.
    pub notes: Vec<String>,
    /// Tensors the graph does not use, each with the reason.
    pub unused: Vec<(String, String)>,
}

/// The note naming the discovered convolutions measured on a pixel grid
/// whose stride, padding and dilation were assumed (no spec), if any.
fn assumed_geometry(net: &Network) -> Option<String> {
    let assumed: Vec<&str> = net
        .layers
        .iter()
        .filter(|l| matches!(&l.kind, LayerKind::Conv(c) | LayerKind::ConvTranspose(c) if !c.channel_level))
        .map(|l| l.name.as_str())
        .collect();
    (!assumed.is_empty()).then(|| {
        format!(
            "conv geometry assumed (no spec): stride 1, padding 0, dilation 1, groups from channel counts \
             for {}; give a spec (python/torch_to_spec.py writes one) for the real geometry",
            list(&assumed)
        )
    })
}

/// The note of a graph with node sets that no layer reads, besides the
/// last layer's (their out-strength is 0): another output of the network
/// (an auxiliary head), the end of a branch, as a squeeze-and-excitation
/// gate's, or a set a spec's `from` skipped.
fn dead_ends(net: &Network) -> Option<String> {
    let mut read = vec![false; net.node_sets.len()];
    for l in &net.layers {
        read[l.from] = true;
    }
    if let Some(last) = net.layers.last() {
        read[last.to] = true;
    }
    let ends: Vec<&str> =
        net.node_sets.iter().zip(&read).filter(|(_, &r)| !r).map(|(set, _)| set.name.as_str()).collect();
    (!ends.is_empty()).then(|| {
        format!(
            "node sets that no layer reads (out-strength 0: another output, or the end of a branch, as a \
             squeeze-and-excitation gate's): {}",
            list(&ends)
        )
    })
}

/// The note of a discovered graph with BatchNorms: their epsilon, which
/// no checkpoint stores, was taken as the layout's default.
fn assumed_eps(net: &Network, eps: f64) -> Option<String> {
    let norms = net.layers.iter().filter(|l| l.norm.is_some()).count();
    (norms > 0).then(|| {
        format!(
            "BatchNorm epsilon assumed {eps:e} for {norms} BatchNorms (the framework's default; checkpoints do not \
             store it): a model built with another (MobileNetV3 and EfficientNet use 1e-3) needs a spec with `eps`"
        )
    })
}

impl Network {
    /// The shape of what `layer` reads: the channels it reads of its
    /// source set (its `input`, unless the entry reads them as a `view`).
    pub fn read_shape(&self, layer: &Layer) -> NodeShape {
        let [a, b] = layer.from_channels;
        self.node_sets[layer.from].shape.with_channels(b - a)
    }

    /// The note of a per-layer analysis: why, and what gives a graph.
    pub fn per_layer_note(&self) -> Option<String> {
        self.not_chain.as_ref().map(|reason| {
            format!(
                "analysed layer by layer ({reason}); node strength across layers is not defined for it: give a \
                 spec (torch_to_spec writes one from a model's code; a transformer's attention has no links, so \
                 a transformer stays per layer)"
            )
        })
    }

    /// Builds the graph of a checkpoint from the spec (when given) or by
    /// discovery from tensor names.
    pub fn build(ck: &Checkpoint, opts: &GraphOptions) -> Result<Network> {
        // A Keras file that keeps its model's config is read as the spec
        // the config describes; where it cannot be, discovery says why.
        let from_config = match (&opts.spec, ck.model_config()) {
            (None, Some(config)) => Some(crate::keras_graph::spec(config, ck.path(), opts.input.as_deref())),
            _ => None,
        };
        let config_spec = from_config.as_ref().and_then(|s| s.as_ref().ok());
        let built = match (Self::build_with(ck, opts, config_spec), &from_config) {
            (Ok(mut net), Some(Ok(_))) => {
                net.notes.insert(
                    0,
                    "graph from the Keras model config the file keeps (its layers, their arguments and connections)"
                        .into(),
                );
                Ok(net)
            }
            // A graph the config's spec does not build: discovered instead.
            (Err(e @ (Error::Graph { .. } | Error::Spec { .. })), Some(Ok(_))) => {
                Self::build_with(ck, opts, None).map(|net| net.with_config_note(&e.to_string()))
            }
            (built, Some(Err(why))) => built.map(|net| net.with_config_note(why)),
            (built, _) => built,
        };
        // What opening the file said comes first: it explains the rest.
        built.map(|mut net| {
            net.notes.splice(0..0, ck.notes());
            net
        })
    }

    /// A note, first, that the file's Keras model config could not be read
    /// as a graph, and why.
    fn with_config_note(mut self, why: &str) -> Self {
        self.notes
            .insert(0, format!("the Keras model config the file keeps was not read as a graph ({why}): give a spec"));
        self
    }

    /// [`Network::build`] with `config` (a spec from the file's model
    /// config) in place of a spec the options lack.
    fn build_with(ck: &Checkpoint, opts: &GraphOptions, config: Option<&Spec>) -> Result<Network> {
        let spec = opts.spec.as_ref().or(config);
        let layout = opts.layout.or(spec.and_then(|s| s.layout)).unwrap_or_else(|| discover::detect_layout(ck));
        let bias = opts.bias.unwrap_or(true) && spec.and_then(|s| s.bias).unwrap_or(true);
        let bn = opts.bn.or(spec.and_then(|s| s.bn)).unwrap_or_default();
        // Keras' BatchNormalization defaults to 1e-3, torch's and Flax's
        // to 1e-5.
        let eps = spec.and_then(|s| s.eps).or(ck.norm_eps()).unwrap_or(if layout == Layout::Keras {
            KERAS_EPS
        } else {
            DEFAULT_EPS
        });
        let input = opts.input.clone().or_else(|| spec.and_then(|s| s.input.clone()));
        let input = input.map(|v| match v[..] {
            [c, h, w] => NodeShape::Map { c, h, w },
            _ => NodeShape::Flat(v.iter().product()),
        });
        if let Some(why) = input.and_then(NodeShape::too_large) {
            return Err(Error::Graph { path: ck.path().to_path_buf(), reason: format!("the input: {why}") });
        }
        let settings = Settings { layout, bias, bn, eps };
        if let Some(spec) = spec {
            let mut net = Builder::new(ck, settings, input, Some(spec)).build(&spec.layers)?;
            net.source = GraphSource::Spec;
            net.notes.extend(spec.notes.iter().cloned());
            net.notes.extend(dead_ends(&net));
            net.unused = unused_tensors(ck, &net, Vec::new());
            return Ok(net);
        }
        let found = discover::discover(ck, layout);
        if found.entries.is_empty() {
            return Err(Error::NoLayers { path: ck.path().to_path_buf() });
        }
        let mut notes = found.notes.clone();
        match discover::chain(ck, settings, input, &found.entries) {
            Ok((mut net, order_note)) => {
                net.source = GraphSource::Discovered;
                notes.extend(order_note);
                notes.extend(assumed_geometry(&net));
                notes.extend(assumed_eps(&net, eps));
                net.notes = notes;
                net.unused = unused_tensors(ck, &net, found.unused);
                Ok(net)
            }
            Err(e @ Error::Graph { .. }) => {
                let reason = e.to_string();
                let reason = reason.strip_prefix(&format!("{}: ", ck.path().display())).unwrap_or(&reason).to_string();
                let mut net = discover::per_layer(ck, settings, input, &found.entries)?;
                notes.append(&mut net.notes);
                notes.extend(assumed_geometry(&net));
                notes.extend(assumed_eps(&net, eps));
                net.notes = notes;
                net.not_chain = Some(reason);
                // The per-layer analysis' own reasons (BatchNorms it could
                // not place) first, then discovery's.
                let mut known = std::mem::take(&mut net.unused);
                known.extend(found.unused);
                net.unused = unused_tensors(ck, &net, known);
                Ok(net)
            }
            Err(e) => Err(e),
        }
    }

    /// True when node strength across layers is defined (not the per-layer
    /// fallback).
    pub fn is_chain(&self) -> bool {
        self.not_chain.is_none()
    }

    /// The layers with learned link weights, with their `L` number (from 1).
    pub fn weighted_layers(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().enumerate().filter(|(_, l)| l.kind.is_weighted()).map(|(i, l)| (i + 1, l))
    }

    /// Every tensor a layer reads.
    pub fn used_tensors(&self) -> Vec<&str> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend(l.weight.as_deref());
            v.extend(l.bias.as_deref());
            if let Some(Scale::Tensor(t)) = &l.scale {
                v.push(t.as_str());
            }
            if let Some(n) = &l.norm {
                v.extend([n.mean.as_str(), n.var.as_str()]);
                v.extend(n.weight.as_deref());
                v.extend(n.bias.as_deref());
            }
        }
        v
    }

    /// For each node set, the one layer writing all of it and the one
    /// layer reading all of it, when every set has at most one of each and
    /// every layer is dense or conv (a folded BatchNorm allowed: the shape
    /// the GPU engine's batched path measures in one submission).
    pub fn simple_sides(&self) -> Option<Vec<(Option<usize>, Option<usize>)>> {
        let mut sides = vec![(None, None); self.node_sets.len()];
        for (i, l) in self.layers.iter().enumerate() {
            // (A view keeps every node's place in the buffers; a pixel
            // shuffle moves them.)
            if !matches!(l.kind, LayerKind::Dense { .. } | LayerKind::Conv(_))
                || !matches!(l.reading, Reading::Direct | Reading::View)
            {
                return None;
            }
            let full = |set: usize, shape: NodeShape| self.node_sets[set].shape.count() == shape.count();
            if !full(l.from, l.input)
                || !full(l.to, l.output)
                || l.offset != 0
                || l.step != 1
                || l.from_channels[0] != 0
            {
                return None;
            }
            let (w, r) = (&mut sides[l.to].0, l.from);
            if w.replace(i).is_some() {
                return None;
            }
            if sides[r].1.replace(i).is_some() {
                return None;
            }
        }
        Some(sides)
    }
}

/// Names as `a`, `b`, ... and N more (at most six shown), for notes.
pub(crate) fn list<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 6;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{}`", n.as_ref())).collect();
    if names.len() > SHOWN {
        s.push(format!("and {} more", names.len() - SHOWN));
    }
    s.join(", ")
}

/// Every tensor of the checkpoint no layer reads, with the reason:
/// discovery's reasons where it gave one, else "not in the spec".
fn unused_tensors(ck: &Checkpoint, net: &Network, mut known: Vec<(String, String)>) -> Vec<(String, String)> {
    let used: std::collections::HashSet<&str> = net.used_tensors().into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    known.retain(|(t, _)| !used.contains(t.as_str()) && seen.insert(t.clone()));
    let named: std::collections::HashSet<String> = known.iter().map(|(t, _)| t.clone()).collect();
    for name in ck.names() {
        if !used.contains(name) && !named.contains(name) {
            let why = match net.source {
                GraphSource::Spec => discover::sample_norm(ck, net.layout, name).unwrap_or("not named by the spec"),
                _ => "not part of any layer discovery recognised",
            };
            known.push((name.to_string(), why.to_string()));
        }
    }
    known
}

/// The graph settings in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) layout: Layout,
    pub(crate) bias: bool,
    pub(crate) bn: BnMode,
    pub(crate) eps: f64,
}

/// What a name means: a set, or a channel range of one.
#[derive(Debug, Clone, Copy)]
struct Ref {
    set: usize,
    range: Option<[usize; 2]>,
}

/// A node set while it is built.
#[derive(Debug, Clone)]
struct SetState {
    name: String,
    grid: Option<[usize; 2]>,
    /// Channels written so far, as ranges.
    written: Vec<[usize; 2]>,
    /// The entry that read all of it (no more writes allowed after).
    read_all: Option<String>,
    /// Channel ranges read so far, with the reader.
    read: Vec<([usize; 2], String)>,
    /// The entry that created it.
    creator: usize,
}

impl SetState {
    fn channels(&self) -> usize {
        self.written.iter().map(|r| r[1]).max().unwrap_or(0)
    }

    /// The first channel of `[a, b)` no entry has written yet (a sweep
    /// over the written ranges in order: an interleaved write adds one per
    /// channel).
    fn unwritten(&self, [a, b]: [usize; 2]) -> Option<usize> {
        let mut ranges: Vec<[usize; 2]> = self.written.iter().copied().filter(|r| r[1] > a && r[0] < b).collect();
        ranges.sort_unstable();
        let mut next = a;
        for [start, end] in ranges {
            if start > next {
                break;
            }
            next = next.max(end);
        }
        (next < b).then_some(next)
    }

    fn shape(&self, channels: usize) -> NodeShape {
        NodeShape::of(self.grid, channels)
    }
}

/// Turns entries into a network, checking each against the tensors and
/// the sets built so far.
pub(crate) struct Builder<'a> {
    ck: &'a Checkpoint,
    s: Settings,
    spec: Option<&'a Spec>,
    sets: Vec<SetState>,
    layers: Vec<Layer>,
    names: HashMap<String, Ref>,
    last: Ref,
    unused: Vec<(String, String)>,
    /// Index of the entry being built (for errors).
    at: usize,
    label: String,
}

/// Sizes of a weight tensor, in canonical order: dense `(out, in)`, conv
/// `(cout, cin_g, kh, kw)`.
pub(crate) enum Dims {
    Dense(usize, usize),
    Conv(usize, usize, usize, usize),
}

impl<'a> Builder<'a> {
    pub(crate) fn new(ck: &'a Checkpoint, s: Settings, input: Option<NodeShape>, spec: Option<&'a Spec>) -> Self {
        let (grid, written) = match input {
            Some(shape) => (shape.grid(), vec![[0, shape.channels()]]),
            None => (None, Vec::new()),
        };
        let input_set = SetState { name: "input".into(), grid, written, read_all: None, read: Vec::new(), creator: 0 };
        let mut names = HashMap::new();
        names.insert("input".to_string(), Ref { set: 0, range: None });
        Builder {
            ck,
            s,
            spec,
            sets: vec![input_set],
            layers: Vec::new(),
            names,
            last: Ref { set: 0, range: None },
            unused: Vec::new(),
            at: 0,
            label: String::new(),
        }
    }

    /// An error about the entry being built.
    fn err(&self, reason: impl Into<String>) -> Error {
        let reason = reason.into();
        match self.spec {
            // A spec that does not fit the checkpoint: both named.
            Some(spec) => {
                let Error::Spec { path, reason } = spec.entry_error(self.at, reason) else { unreachable!() };
                Error::Graph {
                    path: self.ck.path().to_path_buf(),
                    reason: format!("spec {}: {reason}", path.display()),
                }
            }
            None => {
                Error::Graph { path: self.ck.path().to_path_buf(), reason: format!("layer `{}`: {reason}", self.label) }
            }
        }
    }

    pub(crate) fn build(mut self, entries: &[LayerSpec]) -> Result<Network> {
        for (i, e) in entries.iter().enumerate() {
            self.at = i;
            self.label = e.label();
            self.entry(e)?;
        }
        for set in &self.sets[1..] {
            if let Some(c) = set.unwritten([0, set.channels()]) {
                self.at = set.creator;
                self.label = entries[set.creator].label();
                return Err(self.err(format!("channel {c} of node set `{}` is written by no entry", set.name)));
            }
        }
        if self.layers.is_empty() {
            return Err(Error::NoLayers { path: self.ck.path().to_path_buf() });
        }
        let node_sets: Vec<NodeSet> =
            self.sets.iter().map(|s| NodeSet { name: s.name.clone(), shape: s.shape(s.channels()) }).collect();
        Ok(Network {
            layout: self.s.layout,
            bias: self.s.bias,
            bn: self.s.bn,
            layers: self.layers,
            node_sets,
            source: GraphSource::Discovered,
            not_chain: None,
            notes: Vec::new(),
            unused: self.unused,
        })
    }

    fn resolve(&self, name: &str) -> Result<Ref> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| self.err(format!("`from` names `{name}`, which is no earlier entry or set (nor `input`)")))
    }

    /// Reads channels of a set (all of them without a range): checks
    /// they are all written, records the read, returns the range and shape.
    fn read(&mut self, r: Ref, channels: Option<[usize; 2]>) -> Result<([usize; 2], NodeShape)> {
        let whole = channels.or(r.range).is_none();
        let set = &self.sets[r.set];
        let range = channels.or(r.range).unwrap_or([0, set.channels()]);
        if range[1] > set.channels() && set.channels() > 0 {
            return Err(self.err(format!(
                "reads channels [{}, {}) of `{}`, which has {} channels",
                range[0],
                range[1],
                set.name,
                set.channels()
            )));
        }
        if let Some(c) = set.unwritten(range).filter(|_| set.channels() > 0) {
            return Err(self.err(format!("reads channel {c} of `{}` before any entry writes it", set.name)));
        }
        let shape = set.shape(range[1] - range[0]);
        let label = self.label.clone();
        let set = &mut self.sets[r.set];
        if whole {
            set.read_all.get_or_insert(label);
        } else {
            set.read.push((range, label));
        }
        Ok((range, shape))
    }

    /// Where an entry writes `shape`: its `to` (an existing set, or a new
    /// one of that name) at `offset`, else a new set named `default`.
    fn target(
        &mut self,
        to: Option<&str>,
        offset: usize,
        step: usize,
        shape: NodeShape,
        default: &str,
    ) -> Result<usize> {
        if let Some(why) = shape.too_large() {
            return Err(self.err(format!("its output: {why}")));
        }
        let existing = match to {
            Some("input") => return Err(self.err("cannot write into `input`")),
            Some(name) => self.names.get(name).copied(),
            None => None,
        };
        // The channels written, as ranges (one per channel when interleaved);
        // `offset` and `channel_step` come from the spec: checked.
        let end = shape.channels().checked_sub(1).and_then(|k| k.checked_mul(step)).and_then(|x| x.checked_add(offset));
        if end.is_none_or(|e| e >= u32::MAX as usize) && shape.channels() > 0 {
            return Err(self.err(format!("`offset` {offset} and `channel_step` {step} write past any channel count")));
        }
        let writes: Vec<[usize; 2]> = match step {
            1 => vec![[offset, offset + shape.channels()]],
            _ => (0..shape.channels()).map(|k| [offset + k * step, offset + k * step + 1]).collect(),
        };
        let Some(r) = existing else {
            if (offset != 0 || step != 1) && to.is_none() {
                return Err(self.err("`offset` and `channel_step` need a `to`"));
            }
            let name = to.unwrap_or(default).to_string();
            if self.names.contains_key(&name) {
                return Err(self.err(format!("the name `{name}` is used twice")));
            }
            self.sets.push(SetState {
                name: name.clone(),
                grid: shape.grid(),
                written: writes,
                read_all: None,
                read: Vec::new(),
                creator: self.at,
            });
            let set = self.sets.len() - 1;
            self.names.insert(name, Ref { set, range: None });
            return Ok(set);
        };
        if r.range.is_some() {
            return Err(self.err(format!("`to` names `{}`, a channel range, not a node set", to.unwrap_or(""))));
        }
        let set = &self.sets[r.set];
        if set.grid != shape.grid() {
            return Err(self.err(format!(
                "writes {shape} into `{}`, whose nodes are {}: the shapes do not add",
                set.name,
                set.shape(set.channels())
            )));
        }
        if let Some(reader) = &set.read_all {
            return Err(self.err(format!(
                "writes into `{}` after entry `{reader}` read all of it: a set is read only after its last writer",
                set.name
            )));
        }
        for range in &writes {
            if let Some((_, reader)) = set.read.iter().find(|(rr, _)| rr[0] < range[1] && range[0] < rr[1]) {
                return Err(self.err(format!(
                    "writes channels [{}, {}) of `{}`, which entry `{reader}` already read",
                    range[0], range[1], set.name
                )));
            }
        }
        self.sets[r.set].written.extend(writes);
        Ok(r.set)
    }

    fn entry(&mut self, e: &LayerSpec) -> Result<()> {
        let kind = e.kind().map_err(|reason| self.err(reason))?;
        let src = match &e.from {
            Some(name) => self.resolve(name)?,
            None => self.last,
        };
        if kind == EntryKind::Norm && self.s.bn == BnMode::Ignore {
            if e.to.is_some() {
                return Err(self.err("a BatchNorm-only entry with `to` cannot be ignored (--bn ignore)"));
            }
            let norm = self.norm(e, None)?;
            self.unused.extend(norm_tensors(&norm).map(|t| (t, "BatchNorm ignored (bn = ignore)".to_string())));
            // Its name now means what it reads.
            let r = Ref { set: src.set, range: e.from_channels.or(src.range) };
            if let Some(name) = &e.name {
                self.define(name, r)?;
            }
            self.last = r;
            return Ok(());
        }
        let (from_channels, input) = self.read(src, e.from_channels)?;
        let (input, reading) = self.reading(e, input)?;
        let offset = e.offset.unwrap_or(0);
        let step = e.channel_step.unwrap_or(1);
        let name = e.name.clone().unwrap_or_else(|| match &e.weight {
            Some(w) => display_name(w),
            None => e.to.clone().unwrap_or_default(),
        });
        let mut layer = Layer {
            name: name.clone(),
            weight: None,
            bias: None,
            norm: None,
            scale: None,
            kind: LayerKind::Identity,
            from: src.set,
            from_channels,
            to: 0,
            offset,
            step,
            input,
            reading,
            output: input,
        };
        let mut then_norm = None;
        match kind {
            EntryKind::Weighted => {
                let weight = e.weight.clone().expect("weighted");
                layer.kind = self.weighted(e, &weight, src.set, input)?;
                layer.output = match layer.kind {
                    LayerKind::Dense { outputs, .. } => NodeShape::Flat(outputs),
                    LayerKind::Conv(c) => NodeShape::Map { c: c.cout, h: c.out_hw[0], w: c.out_hw[1] },
                    // The adjoint conv reads this layer's output grid.
                    LayerKind::ConvTranspose(c) => NodeShape::Map { c: c.cin(), h: c.in_hw[0], w: c.in_hw[1] },
                    _ => unreachable!("weighted"),
                };
                if let LayerKind::Dense { inputs, .. } = layer.kind {
                    if input.count() == 0 {
                        // No --input: the input's size is what its first reader takes.
                        layer.input = NodeShape::Flat(inputs);
                        layer.from_channels = [0, inputs];
                        self.sets[src.set].written = vec![[0, inputs]];
                    }
                }
                layer.weight = Some(weight);
                layer.bias = e.bias.clone();
                if let Some(b) = &layer.bias {
                    self.check_vector(b, layer.output.channels(), "bias")?;
                }
                match &e.scale {
                    Some(Scale::Tensor(t)) => self.check_channels(t, layer.output.channels(), "scale")?,
                    Some(Scale::Factor(f)) if !f.is_finite() => {
                        return Err(self.err(format!("scale {f} is not a finite number")))
                    }
                    _ => {}
                }
                layer.scale = e.scale.clone();
                if e.norm.is_some() {
                    let norm = self.norm(e, Some(layer.output.channels()))?;
                    match self.s.bn {
                        BnMode::Fold => layer.norm = Some(norm),
                        BnMode::Layer => then_norm = Some(norm),
                        BnMode::Ignore => self
                            .unused
                            .extend(norm_tensors(&norm).map(|t| (t, "BatchNorm ignored (bn = ignore)".to_string()))),
                    }
                }
            }
            EntryKind::Pool(_) | EntryKind::Interpolate(_) | EntryKind::Pad => {
                let Some([h, w]) = input.grid() else {
                    let what = match kind {
                        EntryKind::Pool(_) => "a pool",
                        EntryKind::Pad => "a pad",
                        _ => "an interpolation",
                    };
                    return Err(
                        self.err(format!("{what} reads a feature map; `{}` is a vector", self.sets[src.set].name))
                    );
                };
                let pool = match kind {
                    EntryKind::Pool(p) => self.pool(e, p, [h, w])?,
                    EntryKind::Pad => self.pad(e, [h, w])?,
                    _ => self.interpolation(e, [h, w])?,
                };
                layer.kind = LayerKind::Pool(pool);
                layer.output = NodeShape::Map { c: input.channels(), h: pool.out_hw[0], w: pool.out_hw[1] };
            }
            EntryKind::Identity => {}
            EntryKind::Norm => {
                layer.norm = Some(self.norm(e, Some(input.channels()))?);
                layer.kind = LayerKind::Norm;
            }
        }
        let out = match &then_norm {
            // layer mode: the raw output is a set of its own, named after
            // the entry; the BatchNorm writes the entry's target.
            Some(_) => self.target(None, 0, 1, layer.output, &name)?,
            None => self.target(e.to.as_deref(), offset, step, layer.output, &name)?,
        };
        layer.to = out;
        if then_norm.is_some() {
            (layer.offset, layer.step) = (0, 1);
        }
        let output = layer.output;
        self.layers.push(layer);
        let mut wrote = out;
        if let Some(norm) = then_norm {
            let raw = Ref { set: out, range: None };
            let (from_channels, input) = self.read(raw, None)?;
            let prefix = norm.prefix.clone();
            let to = self.target(e.to.as_deref(), offset, step, output, &prefix)?;
            self.layers.push(Layer {
                name: prefix,
                weight: None,
                bias: None,
                norm: Some(norm),
                scale: None,
                kind: LayerKind::Norm,
                from: out,
                from_channels,
                to,
                offset,
                step,
                input,
                reading: Reading::Direct,
                output,
            });
            wrote = to;
            // The raw set's name is taken by the entry (which now means the
            // BatchNorm's output).
            self.names.remove(&name);
        }
        let r = Ref { set: wrote, range: None };
        if e.name.is_some() || e.weight.is_some() {
            if self.names.get(&name).is_some_and(|old| old.set != wrote) {
                return Err(self.err(format!("the name `{name}` is used twice")));
            }
            self.names.insert(name, r);
        }
        if let Some(norm) = &e.norm {
            self.names.entry(norm.clone()).or_insert(r);
        }
        self.last = r;
        Ok(())
    }

    fn define(&mut self, name: &str, r: Ref) -> Result<()> {
        if self.names.insert(name.to_string(), r).is_some() {
            return Err(self.err(format!("the name `{name}` is used twice")));
        }
        Ok(())
    }

    /// The shape of `tensor`, or the error naming it as missing.
    fn shape_of(&self, tensor: &str) -> Result<&'a [usize]> {
        let ck = self.ck;
        ck.shape(tensor).ok_or_else(|| Error::MissingTensor { path: ck.path().to_path_buf(), tensor: tensor.into() })
    }

    fn check_vector(&self, tensor: &str, n: usize, what: &str) -> Result<()> {
        let shape = self.shape_of(tensor)?;
        if shape != [n] {
            return Err(self.err(format!("{what} `{tensor}` has shape {shape:?}; the layer has {n} channels")));
        }
        Ok(())
    }

    /// Checks that `tensor` holds one value per channel in any shape whose
    /// other axes have length 1 (torchvision's layer scale is `[C, 1, 1]`).
    fn check_channels(&self, tensor: &str, n: usize, what: &str) -> Result<()> {
        let shape = self.shape_of(tensor)?;
        let long_axes = shape.iter().filter(|&&d| d != 1).count();
        if shape.iter().product::<usize>() != n || long_axes > 1 || !self.ck.is_float(tensor) {
            return Err(self.err(format!(
                "{what} `{tensor}` has shape {shape:?}; the layer has {n} channels (one float per channel)"
            )));
        }
        Ok(())
    }

    /// The BatchNorm tensors of `e.norm`, each a vector of `channels` when
    /// given.
    fn norm(&self, e: &LayerSpec, channels: Option<usize>) -> Result<Norm> {
        let prefix = e.norm.clone().expect("a norm entry");
        let Some(norm) = find_norm(self.ck, self.s.layout, &prefix, e.eps.unwrap_or(self.s.eps)) else {
            return Err(self.err(format!(
                "BatchNorm `{prefix}`: no running statistics ({prefix}.running_mean / .running_var, or keras' \
                 moving_mean / moving_variance, or Flax's mean / var) in the checkpoint"
            )));
        };
        let n = channels.unwrap_or_else(|| self.ck.shape(&norm.mean).map_or(0, |s| s.iter().product()));
        for t in norm_tensors(&norm) {
            self.check_vector(&t, n, &format!("BatchNorm `{prefix}`: tensor"))?;
        }
        Ok(norm)
    }

    fn pool(&self, e: &LayerSpec, p: PoolName, [h, w]: [usize; 2]) -> Result<Pool> {
        let (op, kernel) = match p {
            PoolName::Max => (PoolOp::Max, e.kernel.expect("checked").hw()),
            PoolName::Avg => (
                PoolOp::Avg { count_include_pad: e.count_include_pad.unwrap_or(true) },
                e.kernel.expect("checked").hw(),
            ),
            PoolName::AdaptiveAvg | PoolName::GlobalAvg => (PoolOp::AdaptiveAvg, [1, 1]),
        };
        let stride = e.stride.map_or(kernel, |s| s.hw());
        let (padding, padding_after) = e.paddings();
        let ceil_mode = e.ceil_mode.unwrap_or(false);
        let out_hw = match p {
            PoolName::AdaptiveAvg => e.output.expect("checked").hw(),
            PoolName::GlobalAvg => [1, 1],
            _ => {
                if (0..2).any(|a| padding[a].max(padding_after[a]) * 2 > kernel[a]) {
                    return Err(self.err(format!(
                        "padding {}x{} (after: {}x{}) is more than half the {}x{} window",
                        padding[0], padding[1], padding_after[0], padding_after[1], kernel[0], kernel[1]
                    )));
                }
                let len = |a: usize, n: usize| {
                    Pool::out_len(n, kernel[a], stride[a], [padding[a], padding_after[a]], ceil_mode)
                };
                let (Some(ho), Some(wo)) = (len(0, h), len(1, w)) else {
                    return Err(self.err(format!(
                        "the {}x{} window is larger than its padded {h}x{w} input",
                        kernel[0], kernel[1]
                    )));
                };
                [ho, wo]
            }
        };
        Ok(Pool { op, kernel, stride, padding, padding_after, ceil_mode, in_hw: [h, w], out_hw })
    }

    /// What an entry reads, as its `view`, `pixel_shuffle` or
    /// `pixel_unshuffle` says to read it: the same nodes, so the same count.
    fn reading(&self, e: &LayerSpec, input: NodeShape) -> Result<(NodeShape, Reading)> {
        if let Some([c, h, w]) = e.view {
            let view = NodeShape::Map { c, h, w };
            if c.checked_mul(h).and_then(|n| n.checked_mul(w)) != Some(input.count()) || view.count() == 0 {
                return Err(self.err(format!(
                    "view [{c}, {h}, {w}] of its {input} input: a view must keep the {} nodes",
                    input.count()
                )));
            }
            return Ok((view, Reading::View));
        }
        let (shuffle, r) = match (e.pixel_shuffle, e.pixel_unshuffle) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => return Ok((input, Reading::Direct)),
        };
        let (c, [h, w]) = (input.channels(), input.grid().unwrap_or([0, 0]));
        let rr = r.checked_mul(r).filter(|_| input.grid().is_some());
        let shaped = match rr {
            Some(rr) if shuffle && c % rr == 0 => h.checked_mul(r).zip(w.checked_mul(r)).map(|(h, w)| (c / rr, h, w)),
            Some(rr) if !shuffle && h % r == 0 && w % r == 0 => c.checked_mul(rr).map(|c| (c, h / r, w / r)),
            _ => None,
        };
        let Some((c, h, w)) = shaped else {
            let (key, needs) = if shuffle {
                ("pixel_shuffle", "channels a multiple of r²")
            } else {
                ("pixel_unshuffle", "a grid of multiples of r")
            };
            return Err(self.err(format!("{key} = {r} of its {input} input: it needs a feature map of {needs}")));
        };
        let reading = if shuffle { Reading::PixelShuffle(r) } else { Reading::PixelUnshuffle(r) };
        Ok((NodeShape::Map { c, h, w }, reading))
    }

    fn interpolation(&self, e: &LayerSpec, in_hw: [usize; 2]) -> Result<Pool> {
        let mode = e.interpolate.expect("an interpolation entry");
        let scale_factor = e.scale_factor.map(|f| f.hw());
        // torch's output size from a scale factor: floor(in * factor).
        let scaled = scale_factor.map(|f| [0, 1].map(|a| (in_hw[a] as f64 * f[a]).floor()));
        let out_hw = match (e.output.map(|o| o.hw()), scaled) {
            (Some(out), Some(s)) if out.iter().zip(&s).any(|(o, s)| *o as f64 != *s) => {
                return Err(self.err(format!(
                    "output {}x{} is not the {}x{} input times scale_factor ({}x{})",
                    out[0], out[1], in_hw[0], in_hw[1], s[0], s[1]
                )))
            }
            (Some(out), _) => out,
            (None, Some(s)) if s.iter().all(|v| *v >= 1.0 && *v <= MAX_SIDE as f64) => s.map(|v| v as usize),
            (None, Some(s)) => {
                return Err(self.err(format!(
                    "scale_factor takes the {}x{} input to a {}x{} grid",
                    in_hw[0], in_hw[1], s[0], s[1]
                )))
            }
            (None, None) => unreachable!("checked when parsed"),
        };
        let op =
            PoolOp::Interpolate(Interpolation { mode, align_corners: e.align_corners.unwrap_or(false), scale_factor });
        Ok(Pool::resampling(op, in_hw, out_hw))
    }

    fn pad(&self, e: &LayerSpec, in_hw: [usize; 2]) -> Result<Pool> {
        let [left, right, top, bottom] = e.pad.expect("a pad entry");
        let mode = e.pad_mode.unwrap_or_default();
        let sides = [[top, bottom], [left, right]];
        let mut out_hw = [0; 2];
        for (a, [first, last]) in sides.into_iter().enumerate() {
            let n = in_hw[a] as i64;
            // Counts from a spec: checked.
            let m =
                first.checked_add(last).and_then(|p| p.checked_add(n)).filter(|m| (1..=MAX_SIDE as i64).contains(m));
            let Some(m) = m else {
                return Err(self.err(format!(
                    "pad [{left}, {right}, {top}, {bottom}] leaves the {}x{} input no grid of 1 to {MAX_SIDE} a side",
                    in_hw[0], in_hw[1]
                )));
            };
            // torch's limits: only zeros crop; a reflection within the
            // input, at most one wrap around it.
            let limit = match mode {
                PadMode::Constant | PadMode::Replicate => None,
                PadMode::Reflect => Some(n - 1),
                PadMode::Circular => Some(n),
            };
            if mode != PadMode::Constant && (first < 0 || last < 0 || limit.is_some_and(|l| first.max(last) > l)) {
                let most = limit.map_or(String::new(), |l| format!(" and at most {l}"));
                return Err(self.err(format!(
                    "pad [{left}, {right}, {top}, {bottom}] in mode {}: each count must be 0 or more{most} for the \
                     {}x{} input",
                    mode.name(),
                    in_hw[0],
                    in_hw[1]
                )));
            }
            out_hw[a] = m as usize;
        }
        Ok(Pool::resampling(PoolOp::Pad { mode, before: [top, left] }, in_hw, out_hw))
    }

    fn weighted(&self, e: &LayerSpec, weight: &str, from: usize, input: NodeShape) -> Result<LayerKind> {
        let dims = dims(self.ck, self.s.layout, weight, e.in_out).map_err(|r| self.err(r))?;
        if e.transposed == Some(true) {
            return self.transposed(e, weight, dims, input);
        }
        if e.per_pixel == Some(true) {
            // The same values as a 1x1 conv's weight in either layout:
            // `[out, in]` = `[out, in, 1, 1]`, `[in, out]` = `[1, 1, in, out]`.
            let Dims::Dense(o, i) = dims else {
                return Err(self.err(format!("`per_pixel` needs a dense weight [out, in]; `{weight}` is a conv's")));
            };
            let Some([h, w]) = input.grid() else {
                return Err(self.err("`per_pixel` reads a feature map, but its input is a vector"));
            };
            if input.channels() != i {
                return Err(self.err(format!("takes {i} channels per pixel but its input has {}", input.channels())));
            }
            let geometry = ConvGeometry::plain(1);
            return make_conv((o, i, 1, 1), i, [h, w], geometry, false).map_err(|r| self.err(r)).map(LayerKind::Conv);
        }
        match dims {
            Dims::Dense(o, i) => {
                if input.count() != i && input.count() > 0 {
                    let shape = if input.grid().is_some() { format!(" ({input})") } else { String::new() };
                    let from = &self.sets[from].name;
                    return Err(self.err(format!("takes {i} inputs but `{from}` gives {}{shape}", input.count())));
                }
                let in_out = e.in_out.unwrap_or(self.s.layout == Layout::Keras);
                Ok(LayerKind::Dense { inputs: i, outputs: o, in_out })
            }
            Dims::Conv(o, ci, kh, kw) => {
                let (ch, hw) = match input {
                    NodeShape::Map { c, h, w } => (c, [h, w]),
                    NodeShape::Flat(n) if n > 0 => {
                        return Err(
                            self.err(format!("a convolution reads a feature map, but its input is {n} features"))
                        )
                    }
                    NodeShape::Flat(_) => {
                        return Err(
                            self.err("a convolution needs the input shape: give --input C,H,W or `input` in the spec")
                        )
                    }
                };
                let (padding, padding_after) = e.paddings();
                let geometry = ConvGeometry {
                    stride: e.stride.map_or([1, 1], |p| p.hw()),
                    padding,
                    padding_after,
                    dilation: e.dilation.map_or([1, 1], |p| p.hw()),
                    groups: match e.groups {
                        Some(g) => g,
                        None if ch % ci == 0 => ch / ci,
                        None => return Err(self.err(format!("takes {ci} channels per group but its input has {ch}"))),
                    },
                };
                make_conv((o, ci, kh, kw), ch, hw, geometry, false).map_err(|r| self.err(r)).map(LayerKind::Conv)
            }
        }
    }

    /// A transposed conv on `input`: its adjoint, the conv from the output
    /// grid (`(H - 1) s - p - p_after + d (k - 1) + output_padding + 1`
    /// rows, `p_after` = `padding_after` or `p`) back
    /// to `input`'s, whose weight `[Cin, Cout/g, kh, kw]` it reads as its
    /// own `[Cout, Cin/g, kh, kw]`.
    fn transposed(&self, e: &LayerSpec, weight: &str, dims: Dims, input: NodeShape) -> Result<LayerKind> {
        let Dims::Conv(cin, cout_g, kh, kw) = dims else {
            return Err(self.err(format!("`transposed` needs a conv weight; `{weight}` is a dense one")));
        };
        let NodeShape::Map { c, h, w } = input else {
            return Err(self.err("a transposed convolution reads a feature map, but its input is a vector"));
        };
        let groups = e.groups.unwrap_or(1);
        if c != cin || cin % groups != 0 {
            return Err(self.err(format!("takes {cin} channels in {groups} groups but its input has {c}")));
        }
        let (padding, padding_after) = e.paddings();
        let geometry = ConvGeometry {
            stride: e.stride.map_or([1, 1], |p| p.hw()),
            padding,
            padding_after,
            dilation: e.dilation.map_or([1, 1], |p| p.hw()),
            groups,
        };
        let extra = e.output_padding.map_or([0, 0], |p| p.hw());
        let grid = |a: usize, n: usize, k: usize| {
            let (s, d) = (geometry.stride[a], geometry.dilation[a]);
            // (torch also takes `output_padding < dilation`; then the adjoint
            // conv would read one row more than this layer's input has.)
            (extra[a] < s)
                .then(|| (n - 1).checked_mul(s)?.checked_add(d.checked_mul(k - 1)?)?.checked_add(extra[a] + 1))
                .flatten()
                .and_then(|len| len.checked_sub(geometry.padding[a])?.checked_sub(geometry.padding_after[a]))
                .filter(|&len| len > 0)
        };
        let (Some(ho), Some(wo)) = (grid(0, h, kh), grid(1, w, kw)) else {
            return Err(self.err(format!(
                "no output grid: {h}x{w} input, {kh}x{kw} kernel, stride {:?}, padding {:?} (after: {:?}), \
                 dilation {:?}, output_padding {extra:?} (each below its stride)",
                geometry.stride, geometry.padding, geometry.padding_after, geometry.dilation
            )));
        };
        let adjoint =
            make_conv((cin, cout_g, kh, kw), cout_g * groups, [ho, wo], geometry, false).map_err(|r| self.err(r))?;
        if adjoint.out_hw != [h, w] {
            return Err(self.err(format!("its {ho}x{wo} output does not map back onto its {h}x{w} input")));
        }
        Ok(LayerKind::ConvTranspose(adjoint))
    }
}

/// The BatchNorm of tensor prefix `p` (`p.running_mean`, keras'
/// `p/moving_mean`, Flax's `p/mean`, ... with or without `:0`), or `None` without running
/// statistics. Sizes are the caller's to check.
pub(crate) fn find_norm(ck: &Checkpoint, layout: Layout, p: &str, eps: f64) -> Option<Norm> {
    let find = |suffixes: &[&str]| find_member(ck, layout, p, suffixes);
    let roles = crate::discover::norm_roles(layout);
    Some(Norm {
        mean: find(roles.mean)?,
        var: find(roles.var)?,
        weight: find(roles.weight),
        bias: find(&["bias", "beta"]),
        eps,
        prefix: p.to_string(),
    })
}

/// The first tensor of module `p` named by one of `suffixes` (`p.s`,
/// keras' `p/s`, with or without `:0`), the layout's separator first.
pub(crate) fn find_member(ck: &Checkpoint, layout: Layout, p: &str, suffixes: &[&str]) -> Option<String> {
    let seps: &[&str] = match layout {
        Layout::Torch => &[".", "/"],
        Layout::Keras => &["/", "."],
    };
    seps.iter()
        .flat_map(|sep| suffixes.iter().flat_map(move |s| [format!("{p}{sep}{s}"), format!("{p}{sep}{s}:0")]))
        .find(|n| ck.shape(n).is_some())
}

/// A BatchNorm's tensors.
pub(crate) fn norm_tensors(n: &Norm) -> impl Iterator<Item = String> + '_ {
    n.weight.iter().chain(n.bias.iter()).chain([&n.mean, &n.var]).cloned()
}

/// The display name of a weight tensor: without `.weight` / `/kernel`.
pub fn display_name(weight: &str) -> String {
    if let Some(p) = weight.strip_suffix("_proj_weight") {
        return format!("{p}_proj"); // nn.MultiheadAttention's `in_proj_weight`
    }
    for s in [".weight", "/kernel:0", "/kernel", "/weights", ":0"] {
        if let Some(p) = weight.strip_suffix(s) {
            if !p.is_empty() {
                return p.to_string();
            }
        }
    }
    weight.to_string()
}

/// A weight tensor's sizes in canonical order; `in_out` overrides the
/// layout's dense storage order.
pub(crate) fn dims(
    ck: &Checkpoint,
    layout: Layout,
    weight: &str,
    in_out: Option<bool>,
) -> std::result::Result<Dims, String> {
    let Some(shape) = ck.shape(weight) else { return Err(format!("weight `{weight}` not found in the checkpoint")) };
    let dense_in_out = in_out.unwrap_or(layout == Layout::Keras);
    let d = match (layout, shape) {
        (_, &[a, b]) if dense_in_out => Dims::Dense(b, a),
        (_, &[o, i]) => Dims::Dense(o, i),
        (Layout::Torch, &[o, ci, kh, kw]) => Dims::Conv(o, ci, kh, kw),
        (Layout::Keras, &[kh, kw, ci, o]) => Dims::Conv(o, ci, kh, kw),
        // A 1-D conv (`Conv1d`, keras' `Conv1D`): the 2-D conv of a 1 x k
        // kernel over a 1 x L grid, stored alike.
        (Layout::Torch, &[o, ci, k]) => Dims::Conv(o, ci, 1, k),
        (Layout::Keras, &[k, ci, o]) => Dims::Conv(o, ci, 1, k),
        _ => {
            return Err(format!(
                "weight `{weight}` has shape {shape:?}; expected rank 2 (dense), 3 (1-D conv) or 4 (conv)"
            ))
        }
    };
    if shape.contains(&0) {
        return Err(format!("weight `{weight}` has an empty dimension: {shape:?}"));
    }
    Ok(d)
}

/// A convolution on a `ch x h x w` input, checked.
pub(crate) fn make_conv(
    (cout, cin_g, kh, kw): (usize, usize, usize, usize),
    ch: usize,
    [h, w]: [usize; 2],
    geometry: ConvGeometry,
    channel_level: bool,
) -> std::result::Result<Conv, String> {
    let groups = geometry.groups;
    if cin_g * groups != ch {
        return Err(format!("takes {cin_g} x {groups} groups = {} channels but its input has {ch}", cin_g * groups));
    }
    if cout % groups != 0 {
        return Err(format!("has {cout} output channels, not divisible by {groups} groups"));
    }
    if channel_level {
        return Ok(Conv { cout, cin_g, kh, kw, in_hw: [1, 1], out_hw: [1, 1], geometry, channel_level });
    }
    let [sh, sw] = geometry.stride;
    let [ph, pw] = geometry.padding;
    let [pb, pr] = geometry.padding_after;
    let [dh, dw] = geometry.dilation;
    let ho = Conv::out_len(h, kh, sh, [ph, pb], dh);
    let wo = Conv::out_len(w, kw, sw, [pw, pr], dw);
    let (Some(ho), Some(wo)) = (ho, wo) else {
        return Err(format!(
            "the {kh}x{kw} kernel (dilation {dh}x{dw}, padding {ph}x{pw}) does not fit the {h}x{w} input"
        ));
    };
    Ok(Conv { cout, cin_g, kh, kw, in_hw: [h, w], out_hw: [ho, wo], geometry, channel_level })
}
