//! The network spec file (TOML, SPEC section 3): input shape, layout, bias
//! and BatchNorm policy, and the entries of the graph in forward order:
//! weighted layers (dense, conv), fixed layers (pools, identity skips) and
//! BatchNorm-only entries, with `from` / `to` / `offset` for adds and
//! concatenations. Version 1 files (weighted entries only) are valid
//! version 2 files.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Weight layout convention of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// PyTorch: dense `[out, in]`, conv `[Cout, Cin/g, kh, kw]`, flatten `c, y, x`.
    Torch,
    /// Keras: dense `[in, out]`, conv `[kh, kw, Cin/g, Cout]`, flatten `y, x, c`.
    Keras,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Torch => "torch",
            Layout::Keras => "keras",
        })
    }
}

/// How BatchNorm tensors enter the graph (SPEC 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Folded into the weighted layer it follows (a diagonal layer where
    /// it follows none).
    #[default]
    Fold,
    /// Its own diagonal layer with its own output node set.
    Layer,
    /// Left out.
    Ignore,
}

impl std::fmt::Display for BnMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BnMode::Fold => "fold",
            BnMode::Layer => "layer",
            BnMode::Ignore => "ignore",
        })
    }
}

/// True for a valid sample shape: `[C, H, W]` or `[features]`, all
/// positive.
pub fn is_input_shape(dims: &[usize]) -> bool {
    matches!(dims.len(), 1 | 3) && !dims.contains(&0)
}

/// A value or an `[h, w]` pair of them: integers as `stride`, `padding`,
/// `dilation` and `kernel` accept them, numbers as `scale_factor` does.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Pair<T = usize> {
    /// The same value for both axes.
    One(T),
    /// `[h, w]`.
    Two([T; 2]),
}

impl<T: Copy> Pair<T> {
    /// The `[h, w]` values.
    pub fn hw(self) -> [T; 2] {
        match self {
            Pair::One(v) => [v, v],
            Pair::Two(v) => v,
        }
    }
}

/// A fixed pooling layer's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolName {
    /// `MaxPool2d`: modelled as the average of the taps inside the input.
    Max,
    /// `AvgPool2d`.
    Avg,
    /// `AdaptiveAvgPool2d` (needs `output`).
    AdaptiveAvg,
    /// Global average pool (`AdaptiveAvgPool2d(1)`).
    GlobalAvg,
}

/// An interpolation's mode, as torch's `F.interpolate` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InterpolateMode {
    /// `nearest`: output `o` copies input `floor(o * in / out)`.
    #[serde(rename = "nearest")]
    Nearest,
    /// `nearest-exact`: output `o` copies input `floor((o + 0.5) * in / out)`.
    #[serde(rename = "nearest-exact")]
    NearestExact,
    /// `bilinear` (and 1-D `linear`): two taps per axis.
    #[serde(rename = "bilinear")]
    Bilinear,
    /// `bicubic`: four taps per axis (Keys' cubic, `A = -0.75`).
    #[serde(rename = "bicubic")]
    Bicubic,
}

impl InterpolateMode {
    /// The mode as torch names it.
    pub fn name(self) -> &'static str {
        match self {
            InterpolateMode::Nearest => "nearest",
            InterpolateMode::NearestExact => "nearest-exact",
            InterpolateMode::Bilinear => "bilinear",
            InterpolateMode::Bicubic => "bicubic",
        }
    }
}

/// How a pad entry fills the cells outside its input, as torch's `F.pad`
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros: a padded cell has no link.
    #[default]
    Constant,
    /// The input mirrored at its edge (the edge not repeated).
    Reflect,
    /// The edge repeated.
    Replicate,
    /// The input wrapped around.
    Circular,
}

impl PadMode {
    /// The mode as torch names it.
    pub fn name(self) -> &'static str {
        match self {
            PadMode::Constant => "constant",
            PadMode::Reflect => "reflect",
            PadMode::Replicate => "replicate",
            PadMode::Circular => "circular",
        }
    }
}

/// One `[[layers]]` entry, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// The entry's name (default: the weight's name without `.weight` /
    /// `/kernel`).
    pub name: Option<String>,
    /// Name of the weight tensor (a weighted entry).
    pub weight: Option<String>,
    /// Name of the bias tensor, if any.
    pub bias: Option<String>,
    /// BatchNorm tensor prefix (`bn1` for `bn1.weight`, `bn1.running_mean`,
    /// ...): after the weighted layer, or a BatchNorm-only entry.
    pub norm: Option<String>,
    /// This entry's BatchNorm epsilon.
    pub eps: Option<f64>,
    /// Convolution or pool stride.
    pub stride: Option<Pair>,
    /// Convolution or pool zero padding (default 0).
    pub padding: Option<Pair>,
    /// Convolution or max/avg pool zero padding after the input (`[bottom,
    /// right]`) where it differs from `padding` before it: TensorFlow's and
    /// Keras' `padding="same"`, whose odd cell goes after (default
    /// `padding`). A transposed convolution's: the rows and columns cropped
    /// off its output's end (its adjoint conv's padding after).
    pub padding_after: Option<Pair>,
    /// Convolution dilation (default 1).
    pub dilation: Option<Pair>,
    /// Convolution groups (default 1).
    pub groups: Option<usize>,
    /// What it reads: an entry, a set, or `input` (default: what the
    /// previous entry wrote).
    pub from: Option<String>,
    /// Only channels `[a, b)` of what it reads.
    pub from_channels: Option<[usize; 2]>,
    /// Reads what it reads as this `[c, h, w]` shape: the same nodes in
    /// the layout's flatten order (ECA's pooled channels read as one row
    /// by a `Conv1d` across them).
    pub view: Option<[usize; 3]>,
    /// Reads what it reads depth to space, as torch's `PixelShuffle(r)`
    /// gives it: `[C r², H, W]` as `[C, H r, W r]`.
    pub pixel_shuffle: Option<usize>,
    /// Reads what it reads space to depth (`PixelUnshuffle(r)`): `[C, H r,
    /// W r]` as `[C r², H, W]`.
    pub pixel_unshuffle: Option<usize>,
    /// The set it writes (default: a new set named after the entry).
    pub to: Option<String>,
    /// First channel (or feature) it writes in its target.
    pub offset: Option<usize>,
    /// Its channel `k` goes to channel `offset + k * channel_step` of its
    /// target (a write interleaved by ShuffleNet's channel shuffle).
    pub channel_step: Option<usize>,
    /// A pooling entry.
    pub pool: Option<PoolName>,
    /// Pool window.
    pub kernel: Option<Pair>,
    /// Average pool: padding cells count in the divisor (default true).
    pub count_include_pad: Option<bool>,
    /// Max or average pool: the output grid rounds up, as torch's
    /// `ceil_mode` (default false).
    pub ceil_mode: Option<bool>,
    /// Adaptive average pool or interpolation output `[h, w]`.
    pub output: Option<Pair>,
    /// An interpolation entry (`nn.Upsample`, `F.interpolate`): its mode.
    pub interpolate: Option<InterpolateMode>,
    /// Bilinear or bicubic interpolation: torch's `align_corners` (default
    /// false).
    pub align_corners: Option<bool>,
    /// The `scale_factor` torch was given (without
    /// `recompute_scale_factor`): it places the output on the input grid
    /// as `1 / scale_factor`, not as `in / out`; `output` defaults to
    /// `floor(in * scale_factor)`.
    pub scale_factor: Option<Pair<f64>>,
    /// A pad entry: `[left, right, top, bottom]` cells added (negative:
    /// removed), in torch's `F.pad` order.
    pub pad: Option<[i64; 4]>,
    /// What a pad entry fills its new cells with (default zeros).
    pub pad_mode: Option<PadMode>,
    /// An identity skip connection.
    pub identity: Option<bool>,
    /// A dense weight `[out, in]` applied at every pixel of a feature map
    /// (a `Linear` on a channels-last map, as in ConvNeXt): the 1x1
    /// convolution it is.
    pub per_pixel: Option<bool>,
    /// A factor of the layer's outputs, folded into its weights and bias
    /// before any `norm`: a tensor of one per output channel (ConvNeXt's
    /// layer scale), or a number for all (Inception-ResNet's branch scale).
    pub scale: Option<Scale>,
    /// A transposed convolution (`ConvTranspose2d`, weight `[Cin,
    /// Cout/g, kh, kw]`): each input pixel spreads over the output grid.
    pub transposed: Option<bool>,
    /// A transposed convolution's extra rows and columns of output
    /// (`output_padding`, default 0).
    pub output_padding: Option<Pair>,
    /// Dense storage `[in, out]` instead of the layout's (set by discovery
    /// for GPT-2's Conv1D and embeddings; not a spec key).
    #[serde(skip)]
    pub in_out: Option<bool>,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Dense or convolution weights.
    Weighted,
    /// A pool.
    Pool(PoolName),
    /// An interpolation (resampling of the grid).
    Interpolate(InterpolateMode),
    /// Padding (or cropping) of the grid.
    Pad,
    /// An identity skip.
    Identity,
    /// A BatchNorm on its own.
    Norm,
}

impl LayerSpec {
    /// The entry's kind, or why it has none (or several).
    pub fn kind(&self) -> std::result::Result<EntryKind, String> {
        let identity = self.identity == Some(true);
        let kinds = [
            (self.weight.is_some(), EntryKind::Weighted),
            (self.pool.is_some(), EntryKind::Pool(self.pool.unwrap_or(PoolName::Max))),
            (self.interpolate.is_some(), EntryKind::Interpolate(self.interpolate.unwrap_or(InterpolateMode::Nearest))),
            (self.pad.is_some(), EntryKind::Pad),
            (identity, EntryKind::Identity),
        ];
        let mut given = kinds.iter().filter(|(given, _)| *given).map(|(_, kind)| *kind);
        match (given.next(), given.next()) {
            (Some(EntryKind::Identity), None) if self.norm.is_some() => {
                Err("combines `identity` with `norm`: one entry, one layer".into())
            }
            (Some(kind), None) => Ok(kind),
            (None, _) if self.norm.is_some() => Ok(EntryKind::Norm),
            (None, _) => Err("has none of `weight`, `pool`, `interpolate`, `pad`, `identity` or `norm`".into()),
            (Some(_), Some(_)) => {
                Err("combines `weight`, `pool`, `interpolate`, `pad` or `identity`: one entry, one layer".into())
            }
        }
    }

    /// Its zero padding `[h, w]` before the input and after it (`padding`,
    /// default 0; `padding_after`, default `padding`).
    pub fn paddings(&self) -> ([usize; 2], [usize; 2]) {
        let before = self.padding.map_or([0, 0], |p| p.hw());
        (before, self.padding_after.map_or(before, |p| p.hw()))
    }

    /// A label for error messages: the name, else the weight, else the kind.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let Some(w) = &self.weight {
            return crate::graph::display_name(w);
        }
        if let Some(m) = self.interpolate {
            return format!("{} interpolation", m.name());
        }
        if self.pad.is_some() {
            return "pad".into();
        }
        match (&self.pool, &self.norm, &self.to) {
            (Some(p), ..) => format!("{p:?} pool").to_lowercase(),
            (_, Some(n), _) => n.clone(),
            (.., Some(t)) => format!("identity into {t}"),
            _ => "unnamed".into(),
        }
    }
}

/// A weighted entry's `scale`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scale {
    /// A tensor of one factor per output channel.
    Tensor(String),
    /// One factor for every output channel.
    Factor(f64),
}

/// A parsed spec file.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// One sample's shape: `[C, H, W]` or `[features]`.
    pub input: Option<Vec<usize>>,
    /// Weight layout (default torch).
    pub layout: Option<Layout>,
    /// Whether biases (and BatchNorm shifts) count in `s_in` (default true).
    pub bias: Option<bool>,
    /// BatchNorm treatment (default fold).
    pub bn: Option<BnMode>,
    /// BatchNorm epsilon (default 1e-5).
    pub eps: Option<f64>,
    /// The entries in forward order.
    pub layers: Vec<LayerSpec>,
    /// The line each entry starts on (for error messages).
    pub lines: Vec<usize>,
    /// The file (for error messages).
    pub path: PathBuf,
    /// What the spec's writer assumed, for the user to see with the graph
    /// (a Keras config read as a spec: which backend's alignment a layer
    /// took); none in a spec file.
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    input: Option<Vec<usize>>,
    layout: Option<Layout>,
    bias: Option<bool>,
    bn: Option<BnMode>,
    eps: Option<f64>,
    layers: Vec<toml::Spanned<LayerSpec>>,
}

impl Spec {
    /// Parses spec text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Spec { path: path.to_path_buf(), reason };
        let raw: RawSpec = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if raw.layers.is_empty() {
            return Err(err("no [[layers]] listed".into()));
        }
        if let Some(input) = &raw.input {
            if !is_input_shape(input) {
                return Err(err(format!("input must be [C, H, W] or [features] with positive sizes, got {input:?}")));
            }
        }
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let lines: Vec<usize> = raw.layers.iter().map(|l| line_of(l.span().start)).collect();
        let layers: Vec<LayerSpec> = raw.layers.into_iter().map(toml::Spanned::into_inner).collect();
        let spec = Spec {
            input: raw.input,
            layout: raw.layout,
            bias: raw.bias,
            bn: raw.bn,
            eps: raw.eps,
            layers,
            lines,
            path: path.to_path_buf(),
            notes: Vec::new(),
        };
        if spec.eps.is_some_and(|e| !(e >= 0.0 && e.is_finite())) {
            return Err(err("eps must be a finite number >= 0".into()));
        }
        for (i, l) in spec.layers.iter().enumerate() {
            let entry = |reason: String| spec.entry_error(i, reason);
            l.kind().map_err(entry)?;
            let positive = [("stride", l.stride), ("dilation", l.dilation), ("kernel", l.kernel), ("output", l.output)];
            if let Some((key, _)) = positive.into_iter().find(|(_, p)| p.is_some_and(|p| p.hw().contains(&0))) {
                return Err(entry(format!("{key} must be positive")));
            }
            if l.scale_factor.is_some_and(|f| !f.hw().iter().all(|v| *v > 0.0 && v.is_finite())) {
                return Err(entry("scale_factor must be positive".into()));
            }
            if l.groups == Some(0) {
                return Err(entry("groups must be positive".into()));
            }
            if [l.pixel_shuffle, l.pixel_unshuffle].contains(&Some(0)) {
                return Err(entry("pixel_shuffle and pixel_unshuffle must be positive".into()));
            }
            if [l.view.is_some(), l.pixel_shuffle.is_some(), l.pixel_unshuffle.is_some()].iter().filter(|g| **g).count()
                > 1
            {
                return Err(entry("one of `view`, `pixel_shuffle`, `pixel_unshuffle`: an entry reads one way".into()));
            }
            if l.channel_step == Some(0) {
                return Err(entry("channel_step must be positive".into()));
            }
            if l.eps.is_some_and(|e| !(e >= 0.0 && e.is_finite())) {
                return Err(entry("eps must be a finite number >= 0".into()));
            }
            if let Some([a, b]) = l.from_channels {
                if a >= b {
                    return Err(entry(format!("from_channels [{a}, {b}] is empty")));
                }
            }
            let kind = l.kind().expect("checked");
            // Keys that belong to some kinds of entry only, by the kind
            // they describe.
            let weighted = [
                ("bias", l.bias.is_some()),
                ("transposed", l.transposed.is_some()),
                ("output_padding", l.output_padding.is_some()),
                ("per_pixel", l.per_pixel.is_some()),
                ("scale", l.scale.is_some()),
                ("groups", l.groups.is_some()),
                ("dilation", l.dilation.is_some()),
            ];
            let strided = [
                ("stride", l.stride.is_some()),
                ("padding", l.padding.is_some()),
                ("padding_after", l.padding_after.is_some()),
            ];
            let pooling = [
                ("kernel", l.kernel.is_some()),
                ("count_include_pad", l.count_include_pad.is_some()),
                ("ceil_mode", l.ceil_mode.is_some()),
            ];
            let interpolating =
                [("align_corners", l.align_corners.is_some()), ("scale_factor", l.scale_factor.is_some())];
            let padding = [("pad_mode", l.pad_mode.is_some())];
            // (key, given) pairs: those of this kind, then the groups it does not take.
            type Given<'a> = (&'a str, bool);
            let (own, others): (Vec<Given>, Vec<&[Given]>) = match kind {
                EntryKind::Weighted => (
                    vec![
                        ("output_padding", l.output_padding.is_some() && l.transposed != Some(true)),
                        ("per_pixel", l.per_pixel == Some(true) && l.transposed == Some(true)),
                        ("output", l.output.is_some()),
                    ],
                    vec![&pooling, &interpolating, &padding],
                ),
                EntryKind::Pool(p) => (
                    vec![
                        ("norm", l.norm.is_some()),
                        ("kernel", l.kernel.is_some() && matches!(p, PoolName::AdaptiveAvg | PoolName::GlobalAvg)),
                        (
                            "padding_after",
                            l.padding_after.is_some() && matches!(p, PoolName::AdaptiveAvg | PoolName::GlobalAvg),
                        ),
                        ("output", l.output.is_some() && p != PoolName::AdaptiveAvg),
                        ("count_include_pad", l.count_include_pad.is_some() && p != PoolName::Avg),
                        ("ceil_mode", l.ceil_mode.is_some() && !matches!(p, PoolName::Max | PoolName::Avg)),
                    ],
                    vec![&weighted, &interpolating, &padding],
                ),
                EntryKind::Interpolate(m) => (
                    vec![
                        ("norm", l.norm.is_some()),
                        (
                            "align_corners",
                            l.align_corners.is_some()
                                && matches!(m, InterpolateMode::Nearest | InterpolateMode::NearestExact),
                        ),
                    ],
                    vec![&weighted, &strided, &pooling, &padding],
                ),
                EntryKind::Pad => (
                    vec![("norm", l.norm.is_some()), ("output", l.output.is_some())],
                    vec![&weighted, &strided, &pooling, &interpolating],
                ),
                EntryKind::Identity | EntryKind::Norm => (
                    vec![("output", l.output.is_some())],
                    vec![&weighted, &strided, &pooling, &interpolating, &padding],
                ),
            };
            let misplaced: Vec<Given> = own.into_iter().chain(others.into_iter().flatten().copied()).collect();
            if let Some((key, _)) = misplaced.iter().find(|(_, bad)| *bad) {
                return Err(entry(format!("`{key}` does not apply to this kind of entry")));
            }
            if l.per_pixel == Some(true) {
                let geometry = [
                    ("stride", l.stride),
                    ("padding", l.padding),
                    ("padding_after", l.padding_after),
                    ("dilation", l.dilation),
                ];
                if let Some((key, _)) = geometry.iter().find(|(_, p)| p.is_some()) {
                    return Err(entry(format!("`{key}` does not apply to a `per_pixel` entry (a 1x1 conv)")));
                }
                if l.groups.is_some() {
                    return Err(entry("`groups` does not apply to a `per_pixel` entry (a 1x1 conv)".into()));
                }
            }
            match kind {
                EntryKind::Pool(PoolName::Max | PoolName::Avg) if l.kernel.is_none() => {
                    return Err(entry("a max or avg pool needs `kernel`".into()))
                }
                EntryKind::Pool(PoolName::AdaptiveAvg) if l.output.is_none() => {
                    return Err(entry("an adaptive_avg pool needs `output = [h, w]`".into()))
                }
                EntryKind::Interpolate(_) if l.output.is_none() && l.scale_factor.is_none() => {
                    return Err(entry("an interpolation needs `output = [h, w]` or `scale_factor`".into()))
                }
                EntryKind::Pool(_)
                | EntryKind::Interpolate(_)
                | EntryKind::Pad
                | EntryKind::Identity
                | EntryKind::Norm
                    if l.name.is_none() && l.to.is_none() =>
                {
                    return Err(entry("a fixed or BatchNorm-only entry needs a `name` (or a `to`)".into()))
                }
                _ => {}
            }
        }
        Ok(spec)
    }

    /// Reads and parses a spec file, or reads the spec a Keras file's
    /// model config describes (a `.keras` or legacy `.h5`, whose graph then
    /// serves checkpoints that keep none, as `.weights.h5` files).
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let err = |reason: String| Error::Spec { path: path.to_path_buf(), reason };
        let mut head = Vec::with_capacity(8);
        let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        (&mut file).take(8).read_to_end(&mut head).map_err(|e| err(e.to_string()))?;
        if crate::hdf5::is_hdf5(&head) || crate::zip::is_zip(&head) {
            // A checkpoint, mapped (not read whole) for the config it keeps.
            let ck = crate::checkpoint::Checkpoint::open(path).map_err(|e| err(e.to_string()))?;
            let config = ck.model_config().ok_or_else(|| {
                err("a checkpoint that keeps no model config (a .weights.h5): give a spec file, or a .keras file"
                    .into())
            })?;
            return crate::keras_graph::spec(config, path, None)
                .map_err(|e| err(format!("its Keras model config: {e}")));
        }
        // A spec file: the rest of it after its first bytes.
        file.read_to_end(&mut head).map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8(head).map_err(|_| err("stream did not contain valid UTF-8".into()))?;
        Self::parse(&text, path)
    }

    /// An error about entry `i`, naming it and its line.
    pub fn entry_error(&self, i: usize, reason: String) -> Error {
        let line = self.lines.get(i).map(|l| format!(" (line {l})")).unwrap_or_default();
        Error::Spec { path: self.path.clone(), reason: format!("entry `{}`{line}: {reason}", self.layers[i].label()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "input = [4]\n\n[[layers]]\nweight = \"a.weight\"\nstrides = 2\n";
        let err = Spec::parse(text, Path::new("s.toml")).unwrap_err().to_string();
        assert!(err.contains("strides"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn pairs_and_defaults() {
        let text =
            "input = [3, 8, 8]\nlayout = \"keras\"\n[[layers]]\nweight = \"c/kernel\"\nstride = [2, 1]\npadding = 1\n";
        let spec = Spec::parse(text, Path::new("s.toml")).unwrap();
        assert_eq!(spec.layout, Some(Layout::Keras));
        assert_eq!(spec.layers[0].stride.unwrap().hw(), [2, 1]);
        assert_eq!(spec.layers[0].padding.unwrap().hw(), [1, 1]);
        assert!(spec.layers[0].dilation.is_none());
    }

    #[test]
    fn entry_errors_name_entry_and_line() {
        let cases = [
            ("[[layers]]\nweight = \"a\"\n\n[[layers]]\npool = \"max\"\nname = \"p\"\n", "needs `kernel`", "line 4"),
            ("[[layers]]\nweight = \"a\"\npool = \"max\"\n", "one entry, one layer", "line 1"),
            ("[[layers]]\nweight = \"a\"\n[[layers]]\nidentity = true\n", "needs a `name`", "line 3"),
            ("[[layers]]\nname = \"x\"\npool = \"global_avg\"\nkernel = 2\n", "`kernel` does not apply", "`x`"),
            ("[[layers]]\nweight = \"a\"\nfrom_channels = [3, 3]\n", "is empty", "`a`"),
            ("[[layers]]\nname = \"p\"\npool = \"adaptive_avg\"\n", "needs `output", "line 1"),
        ];
        for (text, want, at) in cases {
            let err = Spec::parse(text, Path::new("s.toml")).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(at), "{text:?}: {err}");
        }
    }

    #[test]
    fn v2_entries_parse() {
        let text = r#"
input = [3, 32, 32]
bn = "layer"
eps = 1e-3
[[layers]]
weight = "conv1.weight"
norm = "bn1"
stride = 2
padding = 3
[[layers]]
name = "maxpool"
pool = "max"
kernel = 3
stride = 2
padding = 1
[[layers]]
identity = true
from = "maxpool"
to = "conv1"
[[layers]]
name = "gap"
pool = "global_avg"
"#;
        let spec = Spec::parse(text, Path::new("s.toml")).unwrap();
        assert_eq!(spec.bn, Some(BnMode::Layer));
        let kinds: Vec<EntryKind> = spec.layers.iter().map(|l| l.kind().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Weighted,
                EntryKind::Pool(PoolName::Max),
                EntryKind::Identity,
                EntryKind::Pool(PoolName::GlobalAvg)
            ]
        );
        assert_eq!(spec.lines, [5, 10, 16, 20]);
    }
}
