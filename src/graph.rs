//! The network as a graph (SPEC sections 1-3): weighted layers (dense and
//! 2-D convolution) linking node sets, built from a spec file or discovered
//! from tensor names, with the chain check and the non-chain fallback.

use std::fmt;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::spec::{Layout, Spec};

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
    /// `Some(false)` leaves biases out of `s_in` (`--no-bias`).
    pub bias: Option<bool>,
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

impl NodeShape {
    /// Number of nodes.
    pub fn count(self) -> usize {
        match self {
            NodeShape::Flat(n) => n,
            NodeShape::Map { c, h, w } => c * h * w,
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
    /// `[ph, pw]`.
    pub padding: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
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
    /// Input map height and width.
    pub in_hw: [usize; 2],
    /// Output map height and width.
    pub out_hw: [usize; 2],
    /// Stride, padding, dilation, groups.
    pub geometry: ConvGeometry,
}

impl Conv {
    /// Output size along one axis: `floor((n + 2p - d(k-1) - 1) / s) + 1`,
    /// or `None` when the dilated kernel does not fit.
    pub fn out_len(n: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
        let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
        let padded = n.checked_add(p.checked_mul(2)?)?;
        padded.checked_sub(span).map(|r| r / s + 1)
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin_g * self.geometry.groups
    }
}

/// What a weighted layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A dense (fully connected) layer with `inputs -> outputs` links.
    Dense {
        /// Input neurons.
        inputs: usize,
        /// Output neurons.
        outputs: usize,
    },
    /// A 2-D convolution, unrolled over the pixel grid.
    Conv(Conv),
}

impl LayerKind {
    /// `dense` or `conv2d`.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Dense { .. } => "dense",
            LayerKind::Conv(_) => "conv2d",
        }
    }
}

/// One weighted layer of the graph.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Display name (the weight tensor's name without `.weight` / `/kernel`).
    pub name: String,
    /// Weight tensor name.
    pub weight: String,
    /// Bias tensor name, if the layer has one.
    pub bias: Option<String>,
    /// Dense or convolution, with sizes.
    pub kind: LayerKind,
    /// Shape of the node set on the input side.
    pub input: NodeShape,
    /// Shape of the node set on the output side.
    pub output: NodeShape,
}

/// One node set `Vk` and the layers on either side of it.
#[derive(Debug, Clone)]
pub struct NodeSet {
    /// Its name (`input`, or the layer that produces it; `name:in` /
    /// `name:out` when the network is not a chain).
    pub name: String,
    /// Its shape.
    pub shape: NodeShape,
    /// The layer whose outputs these nodes are (gives `s_in`).
    pub in_layer: Option<usize>,
    /// The layer whose inputs these nodes are (gives `s_out`).
    pub out_layer: Option<usize>,
}

/// A checkpoint read as a directed weighted graph.
#[derive(Debug, Clone)]
pub struct Network {
    /// The weight layout.
    pub layout: Layout,
    /// Whether biases count in `s_in`.
    pub bias: bool,
    /// The weighted layers, in forward order.
    pub layers: Vec<Layer>,
    /// The node sets: `V0..VK` for a chain, two per layer otherwise.
    pub node_sets: Vec<NodeSet>,
    /// `None` for a chain; otherwise why node strength across layers is not
    /// defined and layers are analysed one by one.
    pub not_chain: Option<String>,
}

/// A layer as listed (by the spec or by discovery), before shapes are known.
struct Candidate {
    weight: String,
    bias: Option<String>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: Option<usize>,
}

impl Network {
    /// Builds the graph of a checkpoint from the spec (when given) or by
    /// discovery from tensor names.
    pub fn build(ck: &Checkpoint, opts: &GraphOptions) -> Result<Network> {
        let spec = opts.spec.as_ref();
        let layout = opts.layout.or(spec.and_then(|s| s.layout)).unwrap_or_else(|| detect_layout(ck));
        let bias = opts.bias.unwrap_or(true) && spec.and_then(|s| s.bias).unwrap_or(true);
        let input = opts.input.clone().or_else(|| spec.and_then(|s| s.input.clone()));
        let candidates = match spec {
            Some(spec) => from_spec(spec),
            None => discover(ck, layout),
        };
        if candidates.is_empty() {
            return Err(Error::NoLayers { path: ck.path().to_path_buf() });
        }
        let input = input.map(|v| match v[..] {
            [n] => NodeShape::Flat(n),
            [c, h, w] => NodeShape::Map { c, h, w },
            _ => NodeShape::Flat(v.iter().product()),
        });
        match chain(ck, layout, &candidates, input) {
            Ok(layers) => {
                let node_sets = chain_node_sets(&layers);
                Ok(Network { layout, bias, layers, node_sets, not_chain: None })
            }
            Err(e @ Error::Graph { .. }) if spec.is_none() => {
                let layers = layer_by_layer(ck, layout, &candidates, input)?;
                let node_sets = split_node_sets(&layers);
                let reason = e.to_string();
                let reason = reason.strip_prefix(&format!("{}: ", ck.path().display())).unwrap_or(&reason).to_string();
                Ok(Network { layout, bias, layers, node_sets, not_chain: Some(reason) })
            }
            Err(e) => Err(e),
        }
    }

    /// True when the layers form a chain and node strength across layers is
    /// defined.
    pub fn is_chain(&self) -> bool {
        self.not_chain.is_none()
    }
}

fn detect_layout(ck: &Checkpoint) -> Layout {
    if ck.names().iter().any(|n| n.ends_with("kernel") || n.ends_with("kernel:0")) {
        Layout::Keras
    } else {
        Layout::Torch
    }
}

fn from_spec(spec: &Spec) -> Vec<Candidate> {
    spec.layers
        .iter()
        .map(|l| Candidate {
            weight: l.weight.clone(),
            bias: l.bias.clone(),
            stride: l.stride.map_or([1, 1], |p| p.hw()),
            padding: l.padding.map_or([0, 0], |p| p.hw()),
            dilation: l.dilation.map_or([1, 1], |p| p.hw()),
            groups: l.groups,
        })
        .collect()
}

/// Weight tensors by natural order of names, each paired with its bias.
fn discover(ck: &Checkpoint, layout: Layout) -> Vec<Candidate> {
    let (weight_suffixes, bias_suffixes): (&[&str], &[&str]) = match layout {
        Layout::Torch => (&["weight"], &["bias"]),
        Layout::Keras => (&["kernel:0", "kernel"], &["bias:0", "bias"]),
    };
    let mut out = Vec::new();
    for name in ck.names() {
        let Some(prefix) = weight_suffixes.iter().find_map(|s| name.strip_suffix(s)) else {
            continue;
        };
        let rank = ck.shape(name).map_or(0, <[usize]>::len);
        if rank != 2 && rank != 4 {
            continue; // norms, embeddings of rank 1, scalars: not weighted layers
        }
        let bias =
            bias_suffixes.iter().map(|s| format!("{prefix}{s}")).find(|b| ck.shape(b).is_some_and(|s| s.len() == 1));
        out.push(Candidate {
            weight: name.to_string(),
            bias,
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: None,
        });
    }
    out
}

fn display_name(weight: &str) -> String {
    for s in [".weight", "/kernel:0", "/kernel", ":0"] {
        if let Some(p) = weight.strip_suffix(s) {
            if !p.is_empty() {
                return p.to_string();
            }
        }
    }
    weight.to_string()
}

/// Sizes of a weight tensor, in canonical order: dense `(out, in)`, conv
/// `(cout, cin_g, kh, kw)`.
enum Dims {
    Dense(usize, usize),
    Conv(usize, usize, usize, usize),
}

fn dims(ck: &Checkpoint, layout: Layout, c: &Candidate) -> Result<Dims> {
    let graph = |reason: String| Error::Graph { path: ck.path().to_path_buf(), reason };
    let shape = ck
        .shape(&c.weight)
        .ok_or_else(|| Error::MissingTensor { path: ck.path().to_path_buf(), tensor: c.weight.clone() })?;
    let d = match (layout, shape) {
        (Layout::Torch, &[o, i]) => Dims::Dense(o, i),
        (Layout::Keras, &[i, o]) => Dims::Dense(o, i),
        (Layout::Torch, &[o, ci, kh, kw]) => Dims::Conv(o, ci, kh, kw),
        (Layout::Keras, &[kh, kw, ci, o]) => Dims::Conv(o, ci, kh, kw),
        _ => {
            return Err(graph(format!(
                "weight `{}` has shape {shape:?}; expected rank 2 (dense) or 4 (conv)",
                c.weight
            )))
        }
    };
    if shape.contains(&0) {
        return Err(graph(format!("weight `{}` has an empty dimension: {shape:?}", c.weight)));
    }
    let out = match d {
        Dims::Dense(o, _) | Dims::Conv(o, ..) => o,
    };
    if let Some(b) = &c.bias {
        let bshape =
            ck.shape(b).ok_or_else(|| Error::MissingTensor { path: ck.path().to_path_buf(), tensor: b.clone() })?;
        if bshape != [out] {
            return Err(graph(format!("bias `{b}` has shape {bshape:?}; layer `{}` has {out} outputs", c.weight)));
        }
    }
    Ok(d)
}

fn make_conv(
    name: &str,
    c: &Candidate,
    (cout, cin_g, kh, kw): (usize, usize, usize, usize),
    ch: usize,
    [h, w]: [usize; 2],
) -> std::result::Result<Conv, String> {
    let groups = match c.groups {
        Some(g) => g,
        None if ch.is_multiple_of(cin_g) => ch / cin_g,
        None => return Err(format!("layer `{name}` takes {cin_g} channels per group but its input has {ch} channels")),
    };
    if cin_g * groups != ch {
        return Err(format!(
            "layer `{name}` takes {cin_g} x {groups} groups = {} channels but its input has {ch}",
            cin_g * groups
        ));
    }
    if cout % groups != 0 {
        return Err(format!("layer `{name}` has {cout} output channels, not divisible by {groups} groups"));
    }
    let [sh, sw] = c.stride;
    let [ph, pw] = c.padding;
    let [dh, dw] = c.dilation;
    let ho = Conv::out_len(h, kh, sh, ph, dh);
    let wo = Conv::out_len(w, kw, sw, pw, dw);
    let (Some(ho), Some(wo)) = (ho, wo) else {
        return Err(format!("layer `{name}`: the {kh}x{kw} kernel (dilation {dh}x{dw}, padding {ph}x{pw}) does not fit the {h}x{w} input"));
    };
    let geometry = ConvGeometry { stride: c.stride, padding: c.padding, dilation: c.dilation, groups };
    Ok(Conv { cout, cin_g, kh, kw, in_hw: [h, w], out_hw: [ho, wo], geometry })
}

/// Builds the layers as a chain, each fed by the previous one's outputs.
fn chain(ck: &Checkpoint, layout: Layout, cands: &[Candidate], input: Option<NodeShape>) -> Result<Vec<Layer>> {
    let graph = |reason: String| Error::Graph { path: ck.path().to_path_buf(), reason };
    let mut current = input;
    let mut layers: Vec<Layer> = Vec::with_capacity(cands.len());
    for c in cands {
        let name = display_name(&c.weight);
        let prev_name = layers.last().map_or("the input", |l| &l.name);
        let (kind, in_shape, out_shape) = match dims(ck, layout, c)? {
            Dims::Dense(o, i) => {
                let in_shape = current.unwrap_or(NodeShape::Flat(i));
                if in_shape.count() != i {
                    return Err(graph(format!(
                        "layer `{name}` takes {i} inputs but `{prev_name}` gives {} ({in_shape})",
                        in_shape.count()
                    )));
                }
                (LayerKind::Dense { inputs: i, outputs: o }, in_shape, NodeShape::Flat(o))
            }
            Dims::Conv(o, ci, kh, kw) => {
                let (ch, hw) = match current {
                    Some(NodeShape::Map { c, h, w }) => (c, [h, w]),
                    Some(s @ NodeShape::Flat(_)) => {
                        return Err(graph(format!(
                            "convolution `{name}` follows `{prev_name}`, whose {s} outputs are not a feature map"
                        )))
                    }
                    None => {
                        return Err(graph(format!(
                            "convolution `{name}` needs the input shape: give --input C,H,W or `input` in the spec"
                        )))
                    }
                };
                let conv = make_conv(&name, c, (o, ci, kh, kw), ch, hw).map_err(graph)?;
                let in_shape = NodeShape::Map { c: ch, h: hw[0], w: hw[1] };
                let out_shape = NodeShape::Map { c: o, h: conv.out_hw[0], w: conv.out_hw[1] };
                (LayerKind::Conv(conv), in_shape, out_shape)
            }
        };
        current = Some(out_shape);
        layers.push(Layer {
            name,
            weight: c.weight.clone(),
            bias: c.bias.clone(),
            kind,
            input: in_shape,
            output: out_shape,
        });
    }
    Ok(layers)
}

/// Builds each layer on its own, for checkpoints that are not a chain.
/// A convolution takes its channel count from its weight (groups 1 unless
/// given) and its pixel grid from the last feature map seen (initially the
/// `--input` shape's).
fn layer_by_layer(
    ck: &Checkpoint,
    layout: Layout,
    cands: &[Candidate],
    input: Option<NodeShape>,
) -> Result<Vec<Layer>> {
    let graph = |reason: String| Error::Graph { path: ck.path().to_path_buf(), reason };
    let mut grid = match input {
        Some(NodeShape::Map { h, w, .. }) => Some([h, w]),
        _ => None,
    };
    let mut layers = Vec::with_capacity(cands.len());
    for c in cands {
        let name = display_name(&c.weight);
        let (kind, in_shape, out_shape) = match dims(ck, layout, c)? {
            Dims::Dense(o, i) => (LayerKind::Dense { inputs: i, outputs: o }, NodeShape::Flat(i), NodeShape::Flat(o)),
            Dims::Conv(o, ci, kh, kw) => {
                let hw = grid.ok_or_else(|| {
                    graph(format!(
                        "convolution `{name}` needs the input shape: give --input C,H,W or `input` in the spec"
                    ))
                })?;
                let ch = ci * c.groups.unwrap_or(1);
                let conv = make_conv(&name, c, (o, ci, kh, kw), ch, hw).map_err(graph)?;
                grid = Some(conv.out_hw);
                (
                    LayerKind::Conv(conv),
                    NodeShape::Map { c: ch, h: hw[0], w: hw[1] },
                    NodeShape::Map { c: o, h: conv.out_hw[0], w: conv.out_hw[1] },
                )
            }
        };
        layers.push(Layer {
            name,
            weight: c.weight.clone(),
            bias: c.bias.clone(),
            kind,
            input: in_shape,
            output: out_shape,
        });
    }
    Ok(layers)
}

fn chain_node_sets(layers: &[Layer]) -> Vec<NodeSet> {
    let k = layers.len();
    (0..=k)
        .map(|i| NodeSet {
            name: if i == 0 { "input".into() } else { layers[i - 1].name.clone() },
            shape: if i == 0 { layers[0].input } else { layers[i - 1].output },
            in_layer: i.checked_sub(1),
            out_layer: (i < k).then_some(i),
        })
        .collect()
}

fn split_node_sets(layers: &[Layer]) -> Vec<NodeSet> {
    layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                NodeSet { name: format!("{}:in", l.name), shape: l.input, in_layer: None, out_layer: Some(i) },
                NodeSet { name: format!("{}:out", l.name), shape: l.output, in_layer: Some(i), out_layer: None },
            ]
        })
        .collect()
}
