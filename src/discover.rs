//! Discovery (SPEC 2): a graph from tensor names and shapes when no spec
//! is given. Weighted tensors in natural order of names, each paired with
//! its bias; BatchNorm tensors placed after the weighted layer they follow;
//! integer buffers and normalisations without running statistics listed as
//! unused. The chain is accepted only when every shape fits; otherwise the
//! per-layer analysis, which never invents pixel grids. Everything assumed
//! is recorded in [`Network::notes`].

use std::collections::HashMap;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::graph::{
    dims, display_name, find_member, find_norm, list, make_conv, norm_tensors, Builder, ConvGeometry, Dims,
    GraphSource, Layer, LayerKind, Network, NodeSet, NodeShape, Norm, Reading, Settings,
};
use crate::spec::{BnMode, LayerSpec, Layout};

/// What discovery found: entries in forward order, the tensors it will not
/// use, and what it assumed.
pub(crate) struct Discovered {
    pub(crate) entries: Vec<LayerSpec>,
    pub(crate) unused: Vec<(String, String)>,
    pub(crate) notes: Vec<String>,
}

/// The layout the file's format fixes (TensorFlow's), else Keras when a
/// tensor is named like a keras kernel.
pub(crate) fn detect_layout(ck: &Checkpoint) -> Layout {
    if let Some(layout) = ck.native_layout() {
        return layout;
    }
    if ck.names().iter().any(|n| n.ends_with("kernel") || n.ends_with("kernel:0")) {
        Layout::Keras
    } else {
        Layout::Torch
    }
}

/// A tensor name split into its module prefix and its role suffix.
fn split(name: &str) -> (&str, &str) {
    let name_no_tf = name.strip_suffix(":0").unwrap_or(name);
    match name_no_tf.rfind(['.', '/']) {
        Some(i) => (&name[..i], &name_no_tf[i + 1..]),
        None => ("", name_no_tf),
    }
}

/// Module names whose `[vocab, d]` weight is an embedding table.
fn is_embedding(prefix: &str) -> bool {
    let last = prefix.rsplit(['.', '/']).next().unwrap_or(prefix).to_lowercase();
    last.contains("emb") || matches!(last.as_str(), "wte" | "wpe" | "shared")
}

/// GPT-2's `Conv1D` modules, stored `[in, out]`.
fn is_conv1d(prefix: &str) -> bool {
    let last = prefix.rsplit(['.', '/']).next().unwrap_or(prefix);
    matches!(last, "c_attn" | "c_proj" | "c_fc")
}

/// The tensors of each module prefix, prefixes in the order their first
/// tensor appears (one pass: checkpoints can hold 10^5 modules).
fn modules<'a>(names: &[&'a str]) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for &n in names {
        let (p, _) = split(n);
        let i = *at.entry(p).or_insert_with(|| {
            out.push((p, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(n);
    }
    out
}

/// Why a normalisation's tensors are in no layer.
const SAMPLE_NORM: &str = "a normalisation without running statistics (LayerNorm / RMSNorm / GroupNorm): \
                           per-sample, so not a layer of the weight graph";

/// Why a vector `weight` alone is in no layer: the names cannot tell an
/// RMSNorm's from an activation's.
const WEIGHT_ONLY: &str = "a vector without running statistics or bias: an RMSNorm's (per-sample) or an \
                           activation's (PReLU), so not a layer of the weight graph";

/// Why a module's vector weight (and bias), with no running statistics,
/// is in no layer: [`SAMPLE_NORM`], or [`WEIGHT_ONLY`] when it has no bias.
fn vector_reason(has_bias: bool) -> &'static str {
    if has_bias {
        SAMPLE_NORM
    } else {
        WEIGHT_ONLY
    }
}

/// [`vector_reason`] for the `weight` or `bias` of a module whose weight is
/// a vector and which keeps no running statistics, else `None`.
pub(crate) fn sample_norm(ck: &Checkpoint, layout: Layout, name: &str) -> Option<&'static str> {
    let (prefix, role) = split(name);
    let roles = norm_roles(layout);
    let weight = find_member(ck, layout, prefix, roles.weight)?;
    let stats = find_member(ck, layout, prefix, roles.mean);
    let vector = ck.shape(&weight).is_some_and(|s| s.len() == 1);
    let bias = find_member(ck, layout, prefix, &["bias", "beta"]).is_some();
    ((roles.weight.contains(&role) || matches!(role, "bias" | "beta")) && vector && stats.is_none())
        .then_some(vector_reason(bias))
}

/// The names a normalisation's tensors go by, one list per role.
pub(crate) struct NormRoles {
    pub(crate) weight: &'static [&'static str],
    pub(crate) mean: &'static [&'static str],
    pub(crate) var: &'static [&'static str],
}

/// torch's names (`weight`, `running_mean`, `running_var`), Keras'
/// (`gamma`, `moving_mean`, `moving_variance`) and, in Keras' layout,
/// Flax's (`scale`, `mean`, `var`).
pub(crate) fn norm_roles(layout: Layout) -> NormRoles {
    match layout {
        Layout::Torch => NormRoles {
            weight: &["weight", "gamma"],
            mean: &["running_mean", "moving_mean"],
            var: &["running_var", "moving_variance"],
        },
        Layout::Keras => NormRoles {
            weight: &["weight", "gamma", "scale"],
            mean: &["running_mean", "moving_mean", "mean"],
            var: &["running_var", "moving_variance", "var"],
        },
    }
}

/// Finds the layers, in natural order of names.
pub(crate) fn discover(ck: &Checkpoint, layout: Layout) -> Discovered {
    let mut out = Discovered { entries: Vec::new(), unused: Vec::new(), notes: Vec::new() };
    let names = ck.names();
    let modules = modules(&names);
    let mut transposed = Vec::new();
    let mut embeddings = Vec::new();
    // BatchNorms: prefix, channels, and how many weighted layers precede it.
    let mut norms: Vec<(&str, usize, usize)> = Vec::new();
    let mut scales = Vec::new();
    let mut deconvs = Vec::new();
    for (prefix, members) in modules {
        let role = |roles: &[&str]| members.iter().copied().find(|n| roles.contains(&split(n).1));
        // A weight or bias of another dtype is still the layer's: measuring
        // it then fails with an error naming it, rather than a layer
        // silently measured without it. torch's nn.MultiheadAttention
        // (ViT's, CLIP's) keeps its query, key and value projections as one
        // `[3d, d]` dense weight, `in_proj_weight`.
        // (TF-slim's `weights` and `biases`, in TensorFlow's files.)
        let (weights, biases): (&[&str], &[&str]) = match layout {
            Layout::Keras => (&["weight", "kernel", "weights"], &["bias", "beta", "biases"]),
            Layout::Torch => (&["weight", "kernel"], &["bias", "beta"]),
        };
        let (weight, bias) = match role(weights) {
            None if role(&["in_proj_weight"]).is_some() => (role(&["in_proj_weight"]), role(&["in_proj_bias"])),
            w => (w, role(biases)),
        };
        let norm = norm_roles(layout);
        let (mean, var) = (role(norm.mean), role(norm.var));
        let rank = |n: &str| ck.shape(n).map_or(0, <[usize]>::len);
        let mut used: Vec<&str> = Vec::new();
        if let (Some(_), Some(_)) = (mean, var) {
            // A BatchNorm: placed once every weighted layer is known.
            let channels = ck.shape(mean.expect("checked")).map_or(0, |s| s.iter().product());
            norms.push((prefix, channels, out.entries.len()));
            used.extend([mean, var, weight, bias, role(norm.weight)].into_iter().flatten());
        } else if let Some(w) = weight.filter(|w| matches!(rank(w), 2..=4)) {
            let shape = ck.shape(w).expect("listed");
            let mut e = LayerSpec { weight: Some(w.to_string()), ..LayerSpec::default() };
            used.push(w);
            if shape.len() == 2 && layout == Layout::Torch {
                if is_embedding(prefix) {
                    e.in_out = Some(true);
                    embeddings.push(display_name(w));
                } else if is_conv1d(prefix)
                    || bias.is_some_and(|b| ck.shape(b) == Some(&[shape[1]][..]) && shape[0] != shape[1])
                {
                    e.in_out = Some(true);
                    transposed.push(display_name(w));
                }
            }
            // A transposed conv (torch `[in, out/g, kh, kw]`, keras `[kh, kw,
            // out, in]`): its bias fits the output axis, not a conv's.
            let (out_axis, conv_axis) =
                if layout == Layout::Torch { (1, 0) } else { (shape.len() - 2, shape.len() - 1) };
            if let (3 | 4, Some(&[n])) = (shape.len(), bias.and_then(|b| ck.shape(b))) {
                if n != shape[conv_axis] && n % shape[out_axis] == 0 {
                    e.transposed = Some(true);
                    e.groups = (n / shape[out_axis] > 1).then_some(n / shape[out_axis]);
                    deconvs.push(display_name(w));
                }
            }
            let outputs = match dims(ck, layout, w, e.in_out) {
                Ok(Dims::Dense(o, _)) | Ok(Dims::Conv(o, ..)) => o,
                Err(_) => 0,
            };
            if let Some(b) = bias {
                // A bias that fits no output is still the layer's: the graph
                // then fails, naming it.
                let _ = outputs;
                e.bias = Some(b.to_string());
                used.push(b);
            }
            out.entries.push(e);
        } else if let Some(w) = weight.or(role(&["scale"]).filter(|_| layout == Layout::Keras)).filter(|w| rank(w) == 1)
        {
            // (Flax's LayerNorm keeps a `scale`.)
            let why = vector_reason(bias.is_some());
            for n in [Some(w), bias].into_iter().flatten() {
                out.unused.push((n.to_string(), why.into()));
                used.push(n);
            }
        }
        for n in members {
            if !used.contains(&n) {
                let why = match ck.shape(n).map(<[usize]>::len) {
                    _ if ck.part_of(n).is_some() => {
                        let (weight, how) = ck.part_of(n).expect("checked");
                        format!("a part of `{weight}` ({how}): the weight computed from it is read")
                    }
                    _ if !ck.is_float(n) => format!(
                        "a tensor of {}, not of a float dtype the analysis reads (a buffer such as num_batches_tracked)",
                        ck.dtype_name(n).unwrap_or_default()
                    ),
                    _ if matches!(split(n).1, "layer_scale" | "gamma") && bias.is_none() => {
                        scales.push(n);
                        "a layer scale (one factor per channel of a layer's output): folded only with a spec \
                         (`scale`)"
                            .into()
                    }
                    Some(r) if split(n).1 == "weight" || split(n).1 == "kernel" => {
                        format!("a weight of rank {r}: neither dense (2) nor conv (3: 1-D, 4)")
                    }
                    _ => "not a weight, bias or BatchNorm tensor of a layer".to_string(),
                };
                out.unused.push((n.to_string(), why));
            }
        }
    }
    place_norms(ck, layout, &mut out.entries, &norms, &mut out.notes);
    if !embeddings.is_empty() {
        out.notes.push(format!(
            "read as embeddings ([vocab, d] tables: each of the vocab rows is a one-hot input linked to d features): {}",
            embeddings.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    if !deconvs.is_empty() {
        out.notes.push(format!(
            "read as transposed convolutions (ConvTranspose2d: the bias fits the weight's output axis); one without \
             a bias, or with as many outputs as inputs, cannot be told from a convolution: give a spec: {}",
            list(&deconvs)
        ));
    }
    if !scales.is_empty() {
        out.notes.push(format!(
            "layer scales (ConvNeXt's, CaiT's) not folded: without a spec, the layers they scale are measured with \
             their raw weights; a spec folds them (`scale`, written by python/torch_to_spec.py): {}",
            list(&scales)
        ));
    }
    if !transposed.is_empty() {
        out.notes.push(format!(
            "dense weights stored [in, out] (GPT-2's Conv1D, recognised by name or bias shape): {}",
            list(&transposed)
        ));
    }
    out
}

/// Places each BatchNorm after the weighted layer it belongs to; its size
/// must fit that layer's outputs.
///
/// 1. Its sibling by name, wherever it stands: `bn2` of `conv2`,
///    `downsample.1` of `downsample.0`, and Keras' names of a layer plus a
///    kind (`conv2_block1_0_bn` of `conv2_block1_0_conv`, `block_1_expand_BN`
///    of `block_1_expand`, `bn_Conv1` of `Conv1`).
/// 2. Else by position: BatchNorms that stand together after weighted
///    layers take those layers in the same order (a branching model written
///    in order of depth, as Keras writes ResNet's shortcut: `0_conv`, `3_conv`,
///    `0_bn`, `3_bn`); a lone one takes the layer right before it. When
///    another layer before them would fit as well, the pairing is an
///    assumption, and a note says so.
/// 3. A BatchNorm that fits none becomes a BatchNorm-only entry where it
///    stands.
fn place_norms(
    ck: &Checkpoint,
    layout: Layout,
    entries: &mut Vec<LayerSpec>,
    norms: &[(&str, usize, usize)],
    notes: &mut Vec<String>,
) {
    let outputs = |e: &LayerSpec| match e.weight.as_deref().map(|w| dims(ck, layout, w, e.in_out)) {
        Some(Ok(Dims::Dense(o, _))) | Some(Ok(Dims::Conv(o, ..))) => o,
        _ => 0,
    };
    let parent = |name: &str| name.rfind(['.', '/']).map_or("", |i| &name[..i]).to_string();
    let last = |name: &str| name.rsplit(['.', '/']).next().unwrap_or(name).to_string();
    let digits = |s: &str| s.trim_start_matches(|c: char| !c.is_ascii_digit()).to_string();
    let sibling = |bn: &str, e: &LayerSpec| {
        let w = display_name(e.weight.as_deref().unwrap_or(""));
        // In the layer's own scope: TF-slim's `conv1/BatchNorm` of `conv1`.
        if parent(bn) == w && last(bn).to_ascii_lowercase().contains("norm") {
            return true;
        }
        if parent(&w) != parent(bn) {
            return false;
        }
        let (a, b) = (last(bn), last(&w));
        // Named as a pair: `bn2` of `conv2`, keras' `batch_normalization_1`
        // of `conv2d_1` (not `bn1` of `down1`, another kind of layer).
        let named = |s: &str, kinds: &[&str]| kinds.iter().any(|k| s.to_ascii_lowercase().contains(k));
        match (a.parse::<usize>(), b.parse::<usize>()) {
            (Ok(i), Ok(j)) => j + 1 == i,
            _ if keras_stem(&a, NORM_WORDS).is_some_and(|s| s == b || keras_stem(&b, LAYER_WORDS) == Some(s)) => true,
            _ => {
                !digits(&a).is_empty()
                    && digits(&a) == digits(&b)
                    && named(&a, &["bn", "norm"])
                    && named(&b, &["conv", "fc", "linear", "dense", "proj"])
            }
        }
    };
    let fits = |e: &LayerSpec, channels: usize| e.weight.is_some() && e.norm.is_none() && outputs(e) == channels;
    let mut placed: Vec<Option<usize>> = vec![None; norms.len()];
    for (i, &(prefix, channels, _)) in norms.iter().enumerate() {
        let partner = (0..entries.len()).find(|&j| fits(&entries[j], channels) && sibling(prefix, &entries[j]));
        if let Some(j) = partner {
            entries[j].norm = Some(prefix.to_string());
            placed[i] = Some(j);
        }
    }
    let mut assumed = Vec::new();
    let mut i = 0;
    while i < norms.len() {
        // The BatchNorms standing together after the same weighted layers.
        let at = norms[i].2;
        let end = i + norms[i..].iter().take_while(|n| n.2 == at).count();
        let run = (i..end).filter(|&k| placed[k].is_none()).count();
        let mut slot = at.saturating_sub(run);
        for k in i..end {
            if placed[k].is_some() {
                continue;
            }
            let (prefix, channels, _) = norms[k];
            if let Some(j) = (slot..at).find(|&j| fits(&entries[j], channels)) {
                let others = (0..at).filter(|&o| o != j && fits(&entries[o], channels)).count();
                entries[j].norm = Some(prefix.to_string());
                placed[k] = Some(j);
                slot = j + 1;
                if run > 1 && others > 0 {
                    assumed.push(format!(
                        "`{prefix}` after `{}`",
                        display_name(entries[j].weight.as_deref().unwrap_or(""))
                    ));
                }
            }
        }
        i = end;
    }
    if !assumed.is_empty() {
        notes.push(format!(
            "BatchNorms placed by their order in the file, which does not say which layer each follows (another \
             layer of their size stands before them as well): {}; give a spec if the model is otherwise",
            assumed.join(", ")
        ));
    }
    let alone: Vec<(usize, &str)> =
        norms.iter().zip(&placed).filter(|(_, p)| p.is_none()).map(|(&(prefix, _, at), _)| (at, prefix)).collect();
    for (at, prefix) in alone.into_iter().rev() {
        let e = LayerSpec { name: Some(prefix.to_string()), norm: Some(prefix.to_string()), ..LayerSpec::default() };
        entries.insert(at, e);
    }
}

/// Words that name a normalisation in Keras' layer names (`conv1_bn`,
/// `block_1_expand_BN`, `bn_Conv1`).
const NORM_WORDS: &[&str] = &["bn", "batchnorm", "batch_norm", "norm"];
/// Words that name a weighted layer in Keras' layer names (`conv1_conv`,
/// `block1a_dwconv`, `fc1_dense`).
const LAYER_WORDS: &[&str] = &["conv", "dwconv", "dense", "fc", "linear"];

/// A name without its first or last `_`-separated word when that word is
/// one of `words` (any case): `conv2_block1_0_bn` -> `conv2_block1_0`.
fn keras_stem<'a>(name: &'a str, words: &[&str]) -> Option<&'a str> {
    let is = |w: &str| words.iter().any(|k| w.eq_ignore_ascii_case(k));
    match (name.rsplit_once('_'), name.split_once('_')) {
        (Some((stem, w)), _) if is(w) && !stem.is_empty() => Some(stem),
        (_, Some((w, stem))) if is(w) && !stem.is_empty() => Some(stem),
        _ => None,
    }
}

/// The entries as a chain: in natural order, else with their top-level
/// modules in another order (torchvision's `classifier.*` sorts before
/// `features.*`). Returns the network and a note when the order changed.
pub(crate) fn chain(
    ck: &Checkpoint,
    s: Settings,
    input: Option<NodeShape>,
    entries: &[LayerSpec],
) -> Result<(Network, Option<String>)> {
    let first = Builder::new(ck, s, input, None).build(entries);
    let Err(first_err @ Error::Graph { .. }) = first else { return first.map(|n| (n, None)) };
    let top = |e: &LayerSpec| -> String {
        let name = e.weight.as_deref().or(e.norm.as_deref()).unwrap_or("");
        name.split(['.', '/']).next().unwrap_or("").to_string()
    };
    let mut groups: Vec<(String, Vec<LayerSpec>)> = Vec::new();
    for e in entries {
        match groups.last_mut() {
            Some((g, v)) if *g == top(e) => v.push(e.clone()),
            _ => groups.push((top(e), vec![e.clone()])),
        }
    }
    if !(2..=4).contains(&groups.len()) {
        return Err(first_err);
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    while next_permutation(&mut order) {
        let reordered: Vec<LayerSpec> = order.iter().flat_map(|&g| groups[g].1.iter().cloned()).collect();
        if let Ok(net) = Builder::new(ck, s, input, None).build(&reordered) {
            let names: Vec<String> = order.iter().map(|&g| format!("`{}`", groups[g].0)).collect();
            return Ok((
                net,
                Some(format!(
                    "modules taken in the order {} (the order in which their shapes form a chain)",
                    names.join(", ")
                )),
            ));
        }
    }
    Err(first_err)
}

/// Lexicographic next permutation; false after the last.
fn next_permutation(v: &mut [usize]) -> bool {
    let Some(i) = (1..v.len()).rev().find(|&i| v[i - 1] < v[i]) else { return false };
    let j = (i..v.len()).rev().find(|&j| v[j] > v[i - 1]).expect("exists");
    v.swap(i - 1, j);
    v[i..].reverse();
    true
}

/// The per-layer analysis: each weighted layer between two node sets of
/// its own (`name:in`, `name:out`). A conv reads a known grid only as the
/// first layer on the `--input` map; every other conv is measured at
/// channel level, a conv of one input channel per group after a layer of
/// `C` outputs as depthwise (`C` groups, said in a note). BatchNorms fold
/// into the layer they follow when their size fits (or become their own
/// layer with `--bn layer`); others are listed as unused.
pub(crate) fn per_layer(
    ck: &Checkpoint,
    s: Settings,
    input: Option<NodeShape>,
    entries: &[LayerSpec],
) -> Result<Network> {
    let graph = |reason: String| Error::Graph { path: ck.path().to_path_buf(), reason };
    let mut net = Network {
        layout: s.layout,
        bias: s.bias,
        bn: s.bn,
        layers: Vec::new(),
        node_sets: Vec::new(),
        source: GraphSource::PerLayer,
        not_chain: None,
        notes: Vec::new(),
        unused: Vec::new(),
    };
    let mut channel_level = Vec::new();
    let mut depthwise = Vec::new();
    let mut maybe_grouped = Vec::new();
    // Output channels of the weighted layer before, in entry order.
    let mut before: Option<usize> = None;
    let names = ck.names();
    let modules: HashMap<&str, Vec<&str>> = modules(&names).into_iter().collect();
    let tensors_of = |prefix: &str| -> Vec<&str> {
        modules.get(prefix).into_iter().flatten().copied().filter(|n| ck.is_float(n)).collect()
    };
    // BatchNorms left out of this analysis (said in a note).
    let mut unplaced: Vec<String> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(w) = e.weight.as_deref() else {
            let prefix = e.norm.as_deref().unwrap_or("");
            for t in tensors_of(prefix) {
                net.unused.push((
                    t.to_string(),
                    format!("BatchNorm `{prefix}` follows no weighted layer; not placed in the per-layer analysis"),
                ));
            }
            unplaced.push(prefix.to_string());
            continue;
        };
        let name = display_name(w);
        let (kind, in_shape, out_shape) =
            match dims(ck, s.layout, w, e.in_out).map_err(|r| graph(format!("layer `{name}`: {r}")))? {
                Dims::Dense(o, i) => (
                    LayerKind::Dense { inputs: i, outputs: o, in_out: e.in_out.unwrap_or(s.layout == Layout::Keras) },
                    NodeShape::Flat(i),
                    NodeShape::Flat(o),
                ),
                Dims::Conv(o, ci, kh, kw) if e.transposed == Some(true) => {
                    // At channel level: the adjoint conv's links, reversed.
                    let groups = e.groups.unwrap_or(1);
                    let geometry = ConvGeometry::plain(groups);
                    let adjoint = make_conv((o, ci, kh, kw), ci * groups, [1, 1], geometry, true)
                        .map_err(|r| graph(format!("layer `{name}`: {r}")))?;
                    channel_level.push(name.clone());
                    let map = |c| NodeShape::Map { c, h: 1, w: 1 };
                    (LayerKind::ConvTranspose(adjoint), map(o), map(ci * groups))
                }
                Dims::Conv(o, ci, kh, kw) => {
                    let grid = match input {
                        Some(NodeShape::Map { c, h, w }) if i == 0 && c % ci == 0 => Some((c, [h, w])),
                        _ => None,
                    };
                    let (ch, hw, level) = match (grid, before) {
                        (Some((c, hw)), _) => (c, hw, false),
                        // One input channel per group after a layer of `c > 1`
                        // outputs: a depthwise conv (MobileNet, EfficientNet),
                        // not one reading a single channel of all `c`.
                        (None, Some(c)) if ci == 1 && c > 1 && o % c == 0 => {
                            depthwise.push(name.clone());
                            (c, [1, 1], true)
                        }
                        // Its input channels divide the outputs before it: a
                        // grouped conv (ResNeXt, RegNet) or one after a layer of
                        // another branch (a downsample); groups 1, and said.
                        (None, Some(c)) if ci > 1 && c > ci && c % ci == 0 => {
                            maybe_grouped.push(name.clone());
                            (ci, [1, 1], true)
                        }
                        (None, _) => (ci, [1, 1], true),
                    };
                    let geometry = ConvGeometry::plain(ch / ci);
                    let conv = make_conv((o, ci, kh, kw), ch, hw, geometry, level)
                        .or_else(|_| make_conv((o, ci, kh, kw), ci, [1, 1], ConvGeometry::plain(1), true))
                        .map_err(|r| graph(format!("layer `{name}`: {r}")))?;
                    if conv.channel_level {
                        channel_level.push(name.clone());
                    }
                    let (a, b) = if conv.channel_level { ([1, 1], [1, 1]) } else { (conv.in_hw, conv.out_hw) };
                    (
                        LayerKind::Conv(conv),
                        NodeShape::Map { c: conv.cin(), h: a[0], w: a[1] },
                        NodeShape::Map { c: o, h: b[0], w: b[1] },
                    )
                }
            };
        if let Some(b) = &e.bias {
            let shape = ck.shape(b).unwrap_or(&[]);
            if shape != [out_shape.channels()] {
                return Err(graph(format!(
                    "layer `{name}`: bias `{b}` has shape {shape:?}; the layer has {} outputs",
                    out_shape.channels()
                )));
            }
        }
        let bias = e.bias.clone();
        before = Some(out_shape.channels());
        let norm = e.norm.as_deref().map(|p| resolve_norm(ck, s, p, out_shape.channels()));
        let base = net.node_sets.len();
        net.node_sets.push(NodeSet { name: format!("{name}:in"), shape: in_shape });
        net.node_sets.push(NodeSet { name: format!("{name}:out"), shape: out_shape });
        let mut layer = Layer {
            name: name.clone(),
            weight: Some(w.to_string()),
            bias,
            norm: None,
            scale: None,
            kind,
            from: base,
            from_channels: [0, in_shape.channels()],
            to: base + 1,
            offset: 0,
            step: 1,
            input: in_shape,
            reading: Reading::Direct,
            output: out_shape,
        };
        match (norm, s.bn) {
            (None, _) => net.layers.push(layer),
            (Some(Err(why)), _) => {
                for t in tensors_of(e.norm.as_deref().unwrap_or_default()) {
                    net.unused.push((t.to_string(), why.clone()));
                }
                unplaced.push(e.norm.clone().unwrap_or_default());
                net.layers.push(layer);
            }
            (Some(Ok(n)), BnMode::Fold) => {
                layer.norm = Some(n);
                net.layers.push(layer);
            }
            (Some(Ok(n)), BnMode::Ignore) => {
                net.unused.extend(norm_tensors(&n).map(|t| (t, "BatchNorm ignored (bn = ignore)".to_string())));
                net.layers.push(layer);
            }
            (Some(Ok(n)), BnMode::Layer) => {
                net.layers.push(layer);
                let bn_set = net.node_sets.len();
                net.node_sets.push(NodeSet { name: n.prefix.clone(), shape: out_shape });
                net.layers.push(Layer {
                    name: n.prefix.clone(),
                    weight: None,
                    bias: None,
                    norm: Some(n),
                    scale: None,
                    kind: LayerKind::Norm,
                    from: base + 1,
                    from_channels: [0, out_shape.channels()],
                    to: bn_set,
                    offset: 0,
                    step: 1,
                    input: out_shape,
                    reading: Reading::Direct,
                    output: out_shape,
                });
            }
        }
    }
    if net.layers.is_empty() {
        return Err(Error::NoLayers { path: ck.path().to_path_buf() });
    }
    if !unplaced.is_empty() {
        net.notes.push(format!(
            "BatchNorms left out (no weighted layer of their size before them; give a spec): {}",
            list(&unplaced)
        ));
    }
    if !depthwise.is_empty() {
        net.notes.push(format!(
            "convolutions of one input channel per group read as depthwise (as many groups as the layer before \
             has outputs; give a spec if one reads a single channel): {}",
            list(&depthwise)
        ));
    }
    if !maybe_grouped.is_empty() {
        net.notes.push(format!(
            "convolutions read with groups 1 whose input channels divide the outputs of the layer before them: \
             grouped convolutions (ResNeXt's, RegNet's) would have more input nodes; give a spec for their groups: {}",
            list(&maybe_grouped)
        ));
    }
    if !channel_level.is_empty() {
        net.notes.push(format!(
            "convolutions measured at channel level (input grid unknown; each link c -> o carries the sum of its \
             kernel's taps): {}",
            list(&channel_level)
        ));
    }
    Ok(net)
}

/// The BatchNorm of tensor prefix `p` with `channels` channels, or why it
/// cannot be placed.
fn resolve_norm(ck: &Checkpoint, s: Settings, p: &str, channels: usize) -> std::result::Result<Norm, String> {
    let norm = find_norm(ck, s.layout, p, s.eps).ok_or_else(|| format!("BatchNorm `{p}` has no running statistics"))?;
    if norm_tensors(&norm).any(|t| ck.shape(&t) != Some(&[channels][..])) {
        return Err(format!("BatchNorm `{p}`: its size fits no output of the layer before it ({channels} channels)"));
    }
    Ok(norm)
}
