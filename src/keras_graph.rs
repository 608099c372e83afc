//! A spec from a Keras model's own config, which `model.save` stores in the
//! file (`config.json` of a `.keras` archive, the `model_config` attribute
//! of a legacy `.h5`): the layers, their arguments and how they connect, so
//! a Keras checkpoint is read as the graph it is, with no spec written and
//! nothing assumed. The spec is written as spec text and read back with
//! [`Spec::parse`], so it is checked as a user's spec is.
//!
//! Read:
//! - `InputLayer`;
//! - `Conv2D`, `DepthwiseConv2D` and `SeparableConv2D` (its depthwise conv,
//!   then its 1x1 conv: two entries): channels last, any stride, dilation
//!   and groups, `padding="same"` as Keras computes it, its odd cell after
//!   the input (`padding_after`);
//! - `Conv2DTranspose`, its output cropped as the saving backend and Keras
//!   version crop it, with a note where the file does not say and
//!   backends differ;
//! - `Dense` on a flat input, or on a feature map (per pixel: a 1x1 conv),
//!   and ConvNeXt's `LayerScale` folded into it;
//! - `BatchNormalization`, folded into the layer before it where that
//!   layer feeds it alone;
//! - `MaxPooling2D` and `AveragePooling2D` (valid or same, the odd cell
//!   after), the global pools, `ZeroPadding2D`, `Cropping2D`, `Flatten`;
//! - `Add`, `Concatenate` on channels, Inception-ResNet's
//!   `CustomScaleLayer` (a sum whose branch is scaled by a constant folded
//!   into the branch's last layer), a `Multiply` by a per-channel gate
//!   (squeeze-and-excitation), a `Reshape` of a vector to a 1x1 map or
//!   back, `UpSampling2D` (nearest or bilinear: an `interpolate` entry);
//! - no entry for activations, dropout, drop paths, input preprocessing,
//!   `LayerNormalization` (named in a note) and an `Add` or `Multiply` of
//!   one map with itself or a constant (hard-swish);
//! - a model used as a layer (a backbone): its layers, named under its
//!   name as its weights are;
//! - on a signal (`(L, C)`, a `1 x L` map): `Conv1D` ("causal" too),
//!   `DepthwiseConv1D`, `SeparableConv1D`, `Conv1DTranspose`, the 1-D
//!   pools, `UpSampling1D`, `ZeroPadding1D`, `Cropping1D`, as the 2-D
//!   layers over its grid.
//!
//! A model built for inputs of any size takes the input given on the
//! command line. Any other layer, a layer called twice or several inputs
//! is an error naming it; the caller then falls back to discovery and
//! says why. Each layer's output shape is checked against the shape Keras
//! recorded for it where the config has one.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::keras::ModelConfig;
use crate::spec::Spec;

/// Layers with no weights that change no shape: no entry.
const PASS_THROUGH: &[&str] = &[
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Softmax",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    // Input preprocessing (a fixed scale and shift of the pixels, as
    // EfficientNet's): no links of the network; Normalization's mean and
    // variance are listed unused.
    "Rescaling",
    "Normalization",
    // The identity at inference (ConvNeXt's drop path).
    "StochasticDepth",
];

/// What a layer's output is: the spec name that refers to it and its shape.
#[derive(Clone, Debug)]
struct Out {
    /// `input`, or an entry's name.
    set: String,
    shape: Shape,
    /// The entry that wrote it, when this layer's output is only that
    /// entry's (a pass-through keeps its input's).
    entry: Option<usize>,
    /// True when every layer from that entry to here feeds only the next.
    alone: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// Channels, height, width.
    Map(usize, usize, usize),
    Flat(usize),
}

impl Shape {
    /// As Keras writes it, without the batch axis (channels last).
    fn keras(self) -> Vec<usize> {
        match self {
            Shape::Map(c, h, w) => vec![h, w, c],
            Shape::Flat(n) => vec![n],
        }
    }

    fn channels(self) -> usize {
        match self {
            Shape::Map(c, ..) => c,
            Shape::Flat(n) => n,
        }
    }
}

/// One entry being written: its name, its other keys in order (values as
/// spec text), and where it writes.
#[derive(Default)]
struct Entry {
    name: String,
    keys: Vec<(&'static str, String)>,
    to: Option<(String, usize)>,
    norm: Option<(String, f64)>,
}

impl Entry {
    fn named(name: &str) -> Self {
        Entry { name: name.to_string(), ..Entry::default() }
    }

    /// A key whose value is written as it displays (numbers, arrays).
    fn key(mut self, k: &'static str, v: impl std::fmt::Display) -> Self {
        self.keys.push((k, v.to_string()));
        self
    }

    /// A key whose value is a string.
    fn text(self, k: &'static str, v: &str) -> Self {
        self.key(k, quoted(v))
    }

    /// `padding` of `(before, after)` rows and columns, and `padding_after`
    /// where they differ (Keras' "same" puts the odd cell after).
    fn padded(self, (top, bottom): (usize, usize), (left, right): (usize, usize)) -> Self {
        let e = self.key("padding", format!("[{top}, {left}]"));
        if (top, left) == (bottom, right) {
            e
        } else {
            e.key("padding_after", format!("[{bottom}, {right}]"))
        }
    }
}

/// A string as spec text (JSON's escapes are TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The spec of the model a Keras config describes (`path` names it in
/// errors), with notes on what it assumed, or why there is none.
pub(crate) fn spec(config: &ModelConfig, path: &Path, input: Option<&[usize]>) -> Result<Spec, String> {
    // An input given on the command line (`[C, H, W]` or `[n]`), for a
    // model built for inputs of any size.
    let given = input.map(|v| match *v {
        [c, h, w] => Shape::Map(c, h, w),
        _ => Shape::Flat(v.iter().product()),
    });
    let root: Value = serde_json::from_str(&config.json).map_err(|e| format!("config is not JSON: {e}"))?;
    let mut g = Graph {
        entries: Vec::new(),
        outs: HashMap::new(),
        input: None,
        given,
        backend: config.backend.as_deref(),
        version: config.version(),
        notes: Vec::new(),
        sample_norms: Vec::new(),
    };
    g.model(&root, "", None, 0)?;
    if !g.sample_norms.is_empty() {
        g.notes.push(format!(
            "{} LayerNormalizations normalise each sample by its own statistics: not layers of the weight graph (as \
             discovery reads them), they keep their input's nodes and their tensors are unused: {}",
            g.sample_norms.len(),
            g.sample_norms.join(", ")
        ));
    }
    let input = g.input.ok_or("no InputLayer")?;
    let mut text = format!(
        "layout = \"keras\"\ninput = {:?}\n",
        match input {
            Shape::Map(c, h, w) => vec![c, h, w],
            Shape::Flat(n) => vec![n],
        }
    );
    for e in &g.entries {
        let _ = writeln!(text, "\n[[layers]]\nname = {}", quoted(&e.name));
        for (k, v) in &e.keys {
            let _ = writeln!(text, "{k} = {v}");
        }
        if let Some((norm, eps)) = &e.norm {
            let _ = writeln!(text, "norm = {}\neps = {eps:?}", quoted(norm));
        }
        if let Some((to, offset)) = &e.to {
            let _ = writeln!(text, "to = {}\noffset = {offset}", quoted(to));
        }
    }
    let at = std::path::PathBuf::from(format!("{}#keras-config", path.display()));
    let mut spec = Spec::parse(&text, &at).map_err(|e| format!("the spec written from it: {e}"))?;
    spec.notes = g.notes;
    Ok(spec)
}

/// The entries written so far and every layer's output.
struct Graph<'a> {
    entries: Vec<Entry>,
    outs: HashMap<String, Out>,
    input: Option<Shape>,
    /// The input given on the command line, for a model of any size.
    given: Option<Shape>,
    /// The backend that saved the model, where the file says.
    backend: Option<&'a str>,
    /// The Keras `(major, minor)` that saved it, where the file says.
    version: Option<(u32, u32)>,
    /// What was assumed, for the user.
    notes: Vec<String>,
    /// The LayerNormalizations, which keep their input's nodes.
    sample_norms: Vec<String>,
}

impl Graph<'_> {
    /// The layers of model `root` (`{"class_name": ..., "config": {"layers":
    /// ...}}`), named under `prefix` (a nested model's `NAME/`, as its
    /// weights are). `bound`: what a nested model's call gives its inputs
    /// (`None` at the top, whose InputLayer is the network's input);
    /// `out_readers`: how many layers outside read its output. Returns its
    /// output (none from a top-level model of several outputs).
    fn model(
        &mut self,
        root: &Value,
        prefix: &str,
        bound: Option<&[Out]>,
        out_readers: usize,
    ) -> Result<Option<Out>, String> {
        let class = root.get("class_name").and_then(Value::as_str).unwrap_or("");
        let cfg = root.get("config").ok_or("config without `config`")?;
        let layers = cfg.get("layers").and_then(Value::as_array).ok_or("config without `layers`")?;
        let sequential = class == "Sequential";
        if !sequential && !is_model(class) {
            return Err(format!("a model of class `{class}`"));
        }
        // Each layer's name (under the prefix) and inputs.
        let names: Vec<String> =
            layers.iter().map(|l| layer_name(l).map(|n| format!("{prefix}{n}"))).collect::<Result<_, _>>()?;
        let mut inputs: Vec<Vec<String>> = Vec::with_capacity(layers.len());
        for (k, l) in layers.iter().enumerate() {
            let nodes = l.get("inbound_nodes").and_then(Value::as_array).filter(|n| !n.is_empty());
            inputs.push(match nodes {
                Some(n) if n.len() > 1 => return Err(format!("layer `{}` is called {} times", names[k], n.len())),
                Some(n) => prefixed_references(&n[0], prefix),
                None if sequential => names[..k].last().cloned().into_iter().collect(),
                None => Vec::new(),
            });
        }
        // A nested model's InputLayers take what its call gives, in the
        // order of its `input_layers` (a Sequential's: its first layer's).
        let bound: Option<HashMap<String, Out>> = match bound {
            None => None,
            Some(given) => {
                let order = match cfg.get("input_layers") {
                    Some(i) if !sequential => prefixed_references(i, prefix),
                    _ => names.first().cloned().into_iter().collect(),
                };
                if order.len() != given.len() {
                    return Err(format!(
                        "a nested model `{prefix}` of {} inputs called on {}",
                        order.len(),
                        given.len()
                    ));
                }
                Some(order.into_iter().zip(given.iter().cloned()).collect())
            }
        };
        // A Sequential written without an InputLayer (Keras 2's) gives the
        // input's shape to its first layer, or records the shape it was built for.
        let first = layers.first().and_then(|l| l.get("class_name")).and_then(Value::as_str);
        if sequential && first.is_some_and(|c| c != "InputLayer") {
            let key = format!("{prefix}{SEQUENTIAL_INPUT}");
            let out = match &bound {
                // (One input: its call's, as the count was checked.)
                Some(b) => b.values().next().cloned().expect("one input"),
                None => {
                    let shape = layers[0]
                        .get("config")
                        .and_then(|c| c.get("batch_input_shape"))
                        .or(cfg.get("build_input_shape"));
                    let shape = self
                        .given
                        .or_else(|| input_shape(shape))
                        .ok_or("a Sequential without an InputLayer or an input shape")?;
                    self.input = Some(shape);
                    Out { set: "input".into(), shape, entry: None, alone: false }
                }
            };
            self.outs.insert(key.clone(), out);
            inputs[0] = vec![key];
        }
        // The model's outputs (a Sequential's last layer), which `out_readers`
        // layers read outside it.
        let outputs: Vec<String> = match cfg.get("output_layers") {
            Some(o) if !sequential => prefixed_references(o, prefix),
            _ => names.last().cloned().into_iter().collect(),
        };
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for r in inputs.iter().flatten().chain(outputs.iter().flat_map(|o| std::iter::repeat_n(o, out_readers))) {
            *readers.entry(r.as_str()).or_default() += 1;
        }
        for ((l, name), refs) in layers.iter().zip(&names).zip(&inputs) {
            let ins: Vec<Out> = refs
                .iter()
                .map(|r| {
                    self.outs
                        .get(r)
                        .cloned()
                        .ok_or_else(|| format!("layer `{name}` reads `{r}`, which no layer before it writes"))
                })
                .collect::<Result<_, _>>()?;
            let readers_of = readers.get(name.as_str()).copied().unwrap_or(0);
            let out = self.layer(l, name, ins, readers_of, bound.as_ref())?;
            self.outs.insert(name.to_string(), out);
        }
        self.check_recorded_shapes(layers, &inputs)?;
        match &outputs[..] {
            [one] => {
                self.outs.get(one).cloned().map(Some).ok_or_else(|| format!("output `{one}`, which no layer writes"))
            }
            _ if bound.is_none() => Ok(None),
            o => Err(format!("a nested model `{prefix}` with {} outputs", o.len())),
        }
    }

    /// Layer `l` (named `name`, as a model's layers are under its prefix)
    /// on its inputs `ins`, read by `readers_of` layers after it; `bound`:
    /// what a nested model's call gives its InputLayers, by name.
    fn layer(
        &mut self,
        l: &Value,
        name: &str,
        ins: Vec<Out>,
        readers_of: usize,
        bound: Option<&HashMap<String, Out>>,
    ) -> Result<Out, String> {
        let class = l.get("class_name").and_then(Value::as_str).unwrap_or("");
        let c = l.get("config").ok_or_else(|| format!("layer `{name}` without a config"))?;
        let what = |reason: &str| format!("layer `{name}` ({class}): {reason}");
        // A 1-D layer on an `(L, C)` signal is the 2-D layer over its
        // `1 x L` grid (as the spec reads a 1-D conv's rank-3 kernel).
        let lifted = lift_1d(class, c).map_err(|e| what(&e))?;
        let (class, c) = lifted.as_ref().map_or((class, c), |(class, c)| (*class, c));
        let one = || match &ins[..] {
            [one] => Ok(one.clone()),
            _ => Err(what(&format!("{} inputs, not 1", ins.len()))),
        };
        let alone_next = readers_of <= 1;
        Ok(match class {
            "InputLayer" if bound.is_some() => {
                let Some(o) = bound.and_then(|b| b.get(name)) else {
                    return Err(what("an input the nested model's call does not give"));
                };
                Out { alone: o.alone && alone_next, ..o.clone() }
            }
            "InputLayer" => {
                let shape = self
                    .given
                    .or_else(|| input_shape(c.get("batch_shape").or(c.get("batch_input_shape"))))
                    .ok_or_else(|| {
                        what("an input of unknown size (give --input C,H,W), or of neither [h, w, c] nor [n]")
                    })?;
                if self.input.is_some() {
                    return Err(what("a second input"));
                }
                self.input = Some(shape);
                Out { set: "input".into(), shape, entry: None, alone: false }
            }
            _ if PASS_THROUGH.contains(&class) => {
                let i = one()?;
                Out { alone: i.alone && alone_next, ..i }
            }
            // A vector read as a 1x1 map or back: the same nodes in the same
            // order (squeeze-and-excitation's `Reshape((1, 1, C))`).
            "Reshape" => {
                let i = one()?;
                let target: Option<Vec<usize>> = c
                    .get("target_shape")
                    .and_then(Value::as_array)
                    .and_then(|t| t.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
                let shape = match (i.shape, target.as_deref()) {
                    (Shape::Flat(n), Some(&[1, 1, ch])) if ch == n => Shape::Map(n, 1, 1),
                    (Shape::Map(ch, 1, 1), Some(&[n])) if ch == n => Shape::Flat(n),
                    _ => return Err(what("a reshape other than of a vector to a 1x1 map or back")),
                };
                Out { shape, alone: i.alone && alone_next, ..i }
            }
            // A function of one map alone, element by element (a constant
            // added, hard-swish's `x * relu6(x + 3) / 6`): an activation.
            "Add" | "Multiply"
                if !ins.is_empty() && ins.iter().all(|i| i.set == ins[0].set && i.shape == ins[0].shape) =>
            {
                Out { alone: ins[0].alone && alone_next && ins.len() == 1, ..ins[0].clone() }
            }
            // A gate: a map times one factor per channel (squeeze and
            // excitation). A product has no links: the map goes on, and the
            // gate's branch ends in a set no layer reads (as torch_to_spec
            // reads torch's gates).
            "Multiply" => match &ins[..] {
                [a, b] if a.shape.channels() == b.shape.channels() => {
                    let is_gate = |o: &Out| matches!(o.shape, Shape::Map(_, 1, 1) | Shape::Flat(_));
                    match (is_gate(a), is_gate(b)) {
                        (false, true) => Out { alone: false, ..a.clone() },
                        (true, false) => Out { alone: false, ..b.clone() },
                        _ => return Err(what("a product other than a map by one factor per channel")),
                    }
                }
                _ => return Err(what("a product other than a map by one factor per channel")),
            },
            "Flatten" => {
                let i = one()?;
                let n = i
                    .shape
                    .keras()
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| what("too large"))?;
                Out { shape: Shape::Flat(n), alone: i.alone && alone_next, ..i }
            }
            "Conv2D" | "DepthwiseConv2D" | "SeparableConv2D" => {
                self.conv(name, class, c, one()?, alone_next).map_err(|e| what(&e))?
            }
            "Conv2DTranspose" => self.conv_transpose(name, c, one()?, alone_next).map_err(|e| what(&e))?,
            // On a feature map, a Dense maps each pixel's channels (its
            // last axis): the 1x1 conv it is (ConvNeXt's pointwise convs).
            "Dense" => {
                let i = one()?;
                let units = uint(c, "units").ok_or_else(|| what("no `units`"))?;
                let mut e = Entry::named(name).text("weight", &format!("{name}/kernel"));
                if c.get("use_bias").and_then(Value::as_bool).unwrap_or(true) {
                    e = e.text("bias", &format!("{name}/bias"));
                }
                let shape = match i.shape {
                    Shape::Flat(_) => Shape::Flat(units),
                    Shape::Map(_, h, w) => {
                        e = e.key("per_pixel", true);
                        Shape::Map(units, h, w)
                    }
                };
                self.push(e.text("from", &i.set), shape, alone_next)
            }
            // ConvNeXt's layer scale (`x * gamma`, per channel): folded
            // into the weighted layer that feeds it alone, as a BatchNorm.
            "LayerScale" => {
                let i = one()?;
                let Some(j) = self.scalable(&i) else {
                    return Err(what("a layer scale other than right after a weighted layer it alone reads"));
                };
                self.entries[j].keys.push(("scale", quoted(&format!("{name}/gamma"))));
                Out { alone: i.alone && alone_next, ..i }
            }
            // Normalised by each sample's own statistics: not links of
            // the weight graph (as torch_to_spec reads LayerNorms).
            "LayerNormalization" => {
                let i = one()?;
                self.sample_norms.push(name.to_string());
                Out { alone: i.alone && alone_next, ..i }
            }
            "BatchNormalization" => self.batch_norm(name, c, one()?, alone_next).map_err(|e| what(&e))?,
            "MaxPooling2D" | "AveragePooling2D" | "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
                self.pool(name, class, c, one()?, alone_next).map_err(|e| what(&e))?
            }
            // Nearest repeats rows and columns; bilinear is half-pixel, as
            // torch's and TensorFlow's (bicubic differs between them).
            "UpSampling2D" => {
                let i = one()?;
                let Shape::Map(ch, h, w) = i.shape else { return Err(what("a flat input")) };
                let [sh, sw] = pair(c, "size").unwrap_or([2, 2]);
                let mode = c.get("interpolation").and_then(Value::as_str).unwrap_or("nearest");
                if !matches!(mode, "nearest" | "bilinear") {
                    return Err(what(&format!("interpolation \"{mode}\", whose taps differ between Keras' backends")));
                }
                let (Some(ho), Some(wo)) = (h.checked_mul(sh).filter(|&v| v > 0), w.checked_mul(sw).filter(|&v| v > 0))
                else {
                    return Err(what("a size of 0 or too large"));
                };
                let e = Entry::named(name)
                    .text("from", &i.set)
                    .text("interpolate", mode)
                    .key("output", format!("[{ho}, {wo}]"));
                self.push(e, Shape::Map(ch, ho, wo), alone_next)
            }
            // A pad entry, by negative counts for a crop (a U-Net's skip
            // cropped to the upsampled map's size).
            "ZeroPadding2D" | "Cropping2D" => {
                let i = one()?;
                let Shape::Map(ch, h, w) = i.shape else { return Err(what("a flat input")) };
                let crop = class == "Cropping2D";
                let key = if crop { "cropping" } else { "padding" };
                let p = c.get(key).ok_or_else(|| what(&format!("no `{key}`")))?;
                let [[t, b], [l, r]] =
                    pairs(p).ok_or_else(|| what(&format!("a {key} not ((top, bottom), (left, right))")))?;
                let resize = |n: usize, a: usize, b: usize| match crop {
                    true => n.checked_sub(a)?.checked_sub(b).filter(|&m| m > 0),
                    false => n.checked_add(a)?.checked_add(b),
                };
                let (Some(ho), Some(wo)) = (resize(h, t, b), resize(w, l, r)) else {
                    return Err(what(if crop { "a crop of the whole map" } else { "too large" }));
                };
                let sign = if crop { "-" } else { "" };
                let pad = format!("[{sign}{l}, {sign}{r}, {sign}{t}, {sign}{b}]");
                self.push(Entry::named(name).text("from", &i.set).key("pad", pad), Shape::Map(ch, ho, wo), alone_next)
            }
            "Add" | "Concatenate" => self.merge(name, class, c, &ins, alone_next).map_err(|e| what(&e))?,
            // Inception-ResNet's `x + r * scale`: the constant folded into
            // the layer that writes `r` (and feeds only this), then a sum.
            "CustomScaleLayer" => {
                let f = c.get("scale").and_then(Value::as_f64).ok_or_else(|| what("no numeric `scale`"))?;
                let Some(j) = ins.get(1).filter(|_| ins.len() == 2).and_then(|r| self.scalable(r)) else {
                    return Err(what("a scaled input other than a weighted layer that feeds only this sum"));
                };
                self.entries[j].keys.push(("scale", format!("{f:?}")));
                self.merge(name, "Add", c, &ins, alone_next).map_err(|e| what(&e))?
            }
            // A model used as a layer (a keras.applications backbone in a
            // model of one's own): its layers, named under its name.
            _ if is_model(class) && c.get("layers").is_some() => self
                .model(l, &format!("{name}/"), Some(&ins), readers_of)?
                .ok_or_else(|| what("a nested model without an output"))?,
            _ => return Err(what("a layer a spec cannot describe")),
        })
    }

    /// Each layer's inputs' shapes, as computed, against those Keras
    /// recorded for them (`inputs`: what each of `layers` reads).
    fn check_recorded_shapes(&self, layers: &[Value], inputs: &[Vec<String>]) -> Result<(), String> {
        for (l, refs) in layers.iter().zip(inputs) {
            let mut recorded = Vec::new();
            match l.get("inbound_nodes").and_then(Value::as_array).and_then(|n| n.first()) {
                Some(n) => recorded_shapes(n, &mut recorded),
                // A Sequential's layers record the shape they were built for.
                None => {
                    let shape = l.get("build_config").and_then(|b| b.get("input_shape")).and_then(Value::as_array);
                    recorded.extend(shape.map(|s| dims(s)));
                }
            }
            for (r, shape) in refs.iter().zip(recorded) {
                // (A size Keras left open, `None`, fits any.)
                let mut computed = self.outs[r].shape.keras();
                if shape.len() == 2 && computed.len() == 3 && computed[0] == 1 {
                    computed.remove(0); // (a signal's `1 x L` map, which Keras records as `[L, C]`)
                }
                let fits = shape.len() == computed.len()
                    && shape.iter().zip(&computed).all(|(s, c)| s.is_none_or(|s| s == *c));
                if !fits {
                    return Err(format!(
                        "layer `{r}`: output shape {computed:?} computed, Keras recorded {shape:?} (channels last)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The weighted entry that wrote `o` and feeds nothing else, with no
    /// BatchNorm or scale folded into it yet: where a scale of `o` folds.
    fn scalable(&self, o: &Out) -> Option<usize> {
        o.entry.filter(|&j| {
            let e = &self.entries[j];
            o.alone && is_weighted(e) && e.norm.is_none() && e.keys.iter().all(|(k, _)| *k != "scale")
        })
    }

    /// Adds an entry writing a new set of `shape`, named after the entry.
    fn push(&mut self, e: Entry, shape: Shape, alone: bool) -> Out {
        let set = e.name.clone();
        self.entries.push(e);
        Out { set, shape, entry: Some(self.entries.len() - 1), alone }
    }

    fn conv(&mut self, name: &str, class: &str, c: &Value, i: Out, alone: bool) -> Result<Out, String> {
        let ConvArgs { input: [ch, h, w], kernel: [kh, kw], strides: [sh, sw], dilation: [dh, dw] } =
            ConvArgs::of(c, &i)?;
        let multiplier = uint(c, "depth_multiplier").unwrap_or(1);
        let (cout, groups) = match class {
            "DepthwiseConv2D" | "SeparableConv2D" => (ch.checked_mul(multiplier).ok_or("channels overflow")?, ch),
            _ => (uint(c, "filters").ok_or("no `filters`")?, uint(c, "groups").unwrap_or(1)),
        };
        let causal = c.get("padding").and_then(Value::as_str) == Some("causal");
        let ((ph, ho), (pw, wo)) = if causal && kh == 1 {
            // Conv1D's "causal": every padded cell before the signal, the
            // output as long as the input (WaveNet's, TCNs').
            if kw == 0 || sw == 0 || dw == 0 {
                return Err("a kernel, stride or dilation of 0".into());
            }
            let before = (kw - 1).checked_mul(dw).ok_or("a kernel too large")?;
            (((0, 0), h), ((before, 0), (w - 1) / sw + 1))
        } else {
            let same = padding_same(c)?;
            let rows = axis(h, kh, sh, dh, same).ok_or("a kernel larger than its input")?;
            (rows, axis(w, kw, sw, dw, same).ok_or("a kernel larger than its input")?)
        };
        // A separable conv is its depthwise conv, then a 1x1 conv (with the
        // bias) on the depthwise output: two entries, a set between them.
        let (entry, kernel) = match class {
            "SeparableConv2D" => (format!("{name}.depthwise"), format!("{name}/depthwise_kernel")),
            _ => (name.to_string(), format!("{name}/kernel")),
        };
        let mut e = Entry::named(&entry)
            .text("weight", &kernel)
            .text("from", &i.set)
            .key("stride", format!("[{sh}, {sw}]"))
            .padded(ph, pw)
            .key("dilation", format!("[{dh}, {dw}]"))
            .key("groups", groups);
        let bias = c.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
        if class == "SeparableConv2D" {
            let depthwise = self.push(e, Shape::Map(cout, ho, wo), true);
            let filters = uint(c, "filters").ok_or("no `filters`")?;
            let mut e =
                Entry::named(name).text("weight", &format!("{name}/pointwise_kernel")).text("from", &depthwise.set);
            if bias {
                e = e.text("bias", &format!("{name}/bias"));
            }
            return Ok(self.push(e, Shape::Map(filters, ho, wo), alone));
        }
        if bias {
            e = e.text("bias", &format!("{name}/bias"));
        }
        Ok(self.push(e, Shape::Map(cout, ho, wo), alone))
    }

    /// A `Conv2DTranspose` (kernel `[kh, kw, filters, in]`): a transposed
    /// entry whose output the backend's alignment crops ([`crop`]).
    fn conv_transpose(&mut self, name: &str, c: &Value, i: Out, alone: bool) -> Result<Out, String> {
        let ConvArgs { input: [_, h, w], kernel: [kh, kw], strides: [sh, sw], dilation: [dh, dw] } =
            ConvArgs::of(c, &i)?;
        let filters = uint(c, "filters").ok_or("no `filters`")?;
        let same = padding_same(c)?;
        // `output_padding`: null, or one number per axis.
        let extra: [Option<usize>; 2] = match c.get("output_padding") {
            None | Some(Value::Null) => [None, None],
            Some(_) => pair(c, "output_padding").ok_or("an `output_padding` not [h, w]")?.map(Some),
        };
        // Each axis' crop as TensorFlow and JAX take it, and as torch did.
        let crops = |torch: bool| {
            let axis = |k, s, d, op| crop(k, s, d, same, op, torch).ok_or("a kernel, stride or dilation out of range");
            Ok::<_, &str>([axis(kh, sh, dh, extra[0])?, axis(kw, sw, dw, extra[1])?])
        };
        let (tf, torch) = (crops(false)?, crops(true)?);
        // Keras before 3.15 on torch cropped as torch's ConvTranspose2d
        // can (keras-team/keras#22876); since, every backend crops alike.
        let alike = self.version.is_some_and(|v| v >= (3, 15)) || tf == torch;
        if !alike && self.backend.is_none() {
            let [(th, bh), (lw, rw)] = tf;
            let [(th2, bh2), (lw2, rw2)] = torch;
            self.notes.push(format!(
                "Conv2DTranspose `{name}` ({kh}x{kw}, stride {sh}x{sw}, padding \"{}\"): its output cropped as \
                 TensorFlow and JAX crop it ({th}x{lw} before, {bh}x{rw} after); Keras before 3.15 on the torch \
                 backend crops {th2}x{lw2} before, {bh2}x{rw2} after, and the file does not say which backend \
                 trained it",
                if same { "same" } else { "valid" },
            ));
        }
        let [rows, cols] = if self.backend == Some("torch") && !alike { torch } else { tf };
        // The full output, `(n - 1) s + (k - 1) d + 1` cells, less the crop.
        let len = |n: usize, k: usize, s: usize, d: usize, (before, after): (i64, i64)| {
            let full = (n as i64 - 1).checked_mul(s as i64)?.checked_add(((k - 1) * d + 1) as i64)?;
            usize::try_from(full - before - after).ok().filter(|&l| l > 0)
        };
        let (Some(ho), Some(wo)) = (len(h, kh, sh, dh, rows), len(w, kw, sw, dw, cols)) else {
            return Err("no output grid".into());
        };
        // A negative crop after is torch's `output_padding`: rows added.
        let (after, added) = (|c: i64| c.max(0) as usize, |c: i64| (-c).max(0));
        let mut e = Entry::named(name)
            .text("weight", &format!("{name}/kernel"))
            .text("from", &i.set)
            .key("transposed", true)
            .key("stride", format!("[{sh}, {sw}]"))
            .padded((rows.0 as usize, after(rows.1)), (cols.0 as usize, after(cols.1)))
            .key("dilation", format!("[{dh}, {dw}]"));
        if (added(rows.1), added(cols.1)) != (0, 0) {
            e = e.key("output_padding", format!("[{}, {}]", added(rows.1), added(cols.1)));
        }
        if c.get("use_bias").and_then(Value::as_bool).unwrap_or(true) {
            e = e.text("bias", &format!("{name}/bias"));
        }
        Ok(self.push(e, Shape::Map(filters, ho, wo), alone))
    }

    fn batch_norm(&mut self, name: &str, c: &Value, i: Out, alone: bool) -> Result<Out, String> {
        let axis = c.get("axis").and_then(Value::as_i64).unwrap_or(-1);
        let rank = i.shape.keras().len() as i64;
        if axis != -1 && axis != rank {
            return Err(format!("normalises axis {axis}, not the channels"));
        }
        let eps = c.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3);
        if let Some(j) = i.entry.filter(|&j| i.alone && self.entries[j].norm.is_none() && is_weighted(&self.entries[j]))
        {
            // Folded into the layer that feeds it alone.
            self.entries[j].norm = Some((name.to_string(), eps));
            return Ok(Out { alone: alone && i.alone, ..i });
        }
        let e = Entry { norm: Some((name.to_string(), eps)), ..Entry::named(name).text("from", &i.set) };
        Ok(self.push(e, i.shape, alone))
    }

    fn pool(&mut self, name: &str, class: &str, c: &Value, i: Out, alone: bool) -> Result<Out, String> {
        let Shape::Map(ch, h, w) = i.shape else { return Err("a flat input".into()) };
        let flat = !c.get("keepdims").and_then(Value::as_bool).unwrap_or(false);
        let e = Entry::named(name).text("from", &i.set);
        match class {
            "GlobalAveragePooling2D" => {
                let shape = if flat { Shape::Flat(ch) } else { Shape::Map(ch, 1, 1) };
                Ok(self.push(e.text("pool", "global_avg"), shape, alone))
            }
            "GlobalMaxPooling2D" => {
                let shape = if flat { Shape::Flat(ch) } else { Shape::Map(ch, 1, 1) };
                Ok(self.push(e.text("pool", "max").key("kernel", format!("[{h}, {w}]")), shape, alone))
            }
            _ => {
                let [kh, kw] = pair(c, "pool_size").ok_or("no `pool_size`")?;
                let [sh, sw] = pair(c, "strides").unwrap_or([kh, kw]);
                let same = padding_same(c)?;
                let (ph, ho) = axis(h, kh, sh, 1, same).ok_or("a window larger than its input")?;
                let (pw, wo) = axis(w, kw, sw, 1, same).ok_or("a window larger than its input")?;
                let op = if class == "MaxPooling2D" { "max" } else { "avg" };
                let uneven = (ph.0, pw.0) != (ph.1, pw.1);
                if op == "avg" && uneven && self.backend.is_none_or(|b| b == "torch") {
                    // (Keras' torch backend pads such a pool by repeating
                    // the edge cells, then averages whole windows.)
                    self.notes.push(format!(
                        "average pool `{name}` ({kh}x{kw}, stride {sh}x{sw}, padding \"same\", {}x{} before, \
                         {}x{} after): averaged over the cells inside the input, as TensorFlow and JAX average; \
                         Keras' torch backend repeats the edge cells into the padding, so its edge cells' \
                         strengths differ{}",
                        ph.0,
                        pw.0,
                        ph.1,
                        pw.1,
                        match self.backend {
                            Some(_) => ", and the torch backend saved this file",
                            None => ", and the file does not say which backend trained it",
                        }
                    ));
                }
                let mut e = e
                    .text("pool", op)
                    .key("kernel", format!("[{kh}, {kw}]"))
                    .key("stride", format!("[{sh}, {sw}]"))
                    .padded(ph, pw);
                if op == "avg" {
                    // Keras averages over the cells inside the input.
                    e = e.key("count_include_pad", false);
                }
                Ok(self.push(e, Shape::Map(ch, ho, wo), alone))
            }
        }
    }

    /// An `Add` or a `Concatenate` on channels: each input written into the
    /// merge's set, by the entry that wrote it where that entry feeds only
    /// the merge, else by an identity entry.
    fn merge(&mut self, name: &str, class: &str, c: &Value, ins: &[Out], alone: bool) -> Result<Out, String> {
        if ins.len() < 2 {
            return Err(format!("{} inputs", ins.len()));
        }
        let concat = class == "Concatenate";
        if concat {
            let rank = ins[0].shape.keras().len() as i64;
            let axis = c.get("axis").and_then(Value::as_i64).unwrap_or(-1);
            if axis != -1 && axis != rank {
                return Err(format!("joins axis {axis}, not the channels"));
            }
        }
        let mut offset = 0;
        for (k, i) in ins.iter().enumerate() {
            let same = match (i.shape, ins[0].shape) {
                (Shape::Map(_, h, w), Shape::Map(_, h0, w0)) => concat && (h, w) == (h0, w0),
                (Shape::Flat(_), Shape::Flat(_)) => concat,
                _ => false,
            };
            if i.shape != ins[0].shape && !same {
                return Err(format!("inputs of shapes {:?} and {:?}", ins[0].shape.keras(), i.shape.keras()));
            }
            let writer = i.entry.filter(|&j| i.alone && self.entries[j].to.is_none());
            // An input read twice by this merge is written by identities.
            let twice = ins.iter().filter(|o| o.set == i.set).count() > 1;
            match writer.filter(|_| !twice) {
                Some(j) => self.entries[j].to = Some((name.to_string(), offset)),
                None => {
                    let e = Entry { to: Some((name.to_string(), offset)), ..Entry::named(&format!("{name}.{k}")) }
                        .key("identity", true)
                        .text("from", &i.set);
                    self.entries.push(e);
                }
            }
            if concat {
                offset = offset.checked_add(i.shape.channels()).ok_or("channels overflow")?;
            }
        }
        let shape = match ins[0].shape {
            Shape::Map(_, h, w) if concat => Shape::Map(offset, h, w),
            Shape::Flat(_) if concat => Shape::Flat(offset),
            s => s,
        };
        Ok(Out { set: name.to_string(), shape, entry: None, alone })
    }
}

/// The name the input of a Sequential without an InputLayer goes by.
const SEQUENTIAL_INPUT: &str = "\0input";

/// A sample's shape from Keras' batch shape (`[null, h, w, c]` or `[null,
/// n]`).
fn input_shape(batch: Option<&Value>) -> Option<Shape> {
    let dims: Vec<usize> = dims(batch?.as_array()?).into_iter().collect::<Option<_>>()?;
    match dims[..] {
        [h, w, c] if h > 0 && w > 0 && c > 0 => Some(Shape::Map(c, h, w)),
        // A signal of `L` steps and `C` channels: a `1 x L` map.
        [l, c] if l > 0 && c > 0 => Some(Shape::Map(c, 1, l)),
        [n] if n > 0 => Some(Shape::Flat(n)),
        _ => None,
    }
}

/// True for an entry with a weight.
fn is_weighted(e: &Entry) -> bool {
    e.keys.iter().any(|(k, _)| *k == "weight")
}

fn layer_name(l: &Value) -> Result<&str, String> {
    l.get("name")
        .or_else(|| l.get("config").and_then(|c| c.get("name")))
        .and_then(Value::as_str)
        .ok_or_else(|| "a layer without a name".to_string())
}

fn uint(c: &Value, key: &str) -> Option<usize> {
    c.get(key)?.as_u64().map(|v| v as usize)
}

/// A `[a, b]` (or a single number for both) argument.
fn pair(c: &Value, key: &str) -> Option<[usize; 2]> {
    match c.get(key)? {
        Value::Array(a) if a.len() == 2 => Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize]),
        v => v.as_u64().map(|v| [v as usize; 2]),
    }
}

/// `((top, bottom), (left, right))`, or a number or pair as Keras allows.
fn pairs(v: &Value) -> Option<[[usize; 2]; 2]> {
    let n = |v: &Value| v.as_u64().map(|v| v as usize);
    match v {
        Value::Array(a) if a.len() == 2 => match (&a[0], &a[1]) {
            (Value::Array(x), Value::Array(y)) if x.len() == 2 && y.len() == 2 => {
                Some([[n(&x[0])?, n(&x[1])?], [n(&y[0])?, n(&y[1])?]])
            }
            (x, y) => Some([[n(x)?; 2], [n(y)?; 2]]),
        },
        v => Some([[n(v)?; 2]; 2]),
    }
}

/// A 1-D layer's class and config as the 2-D layer's over a `1 x L` grid
/// (kernel `[1, k]`, strides `[1, s]`, ...; "causal" padding as all before
/// the signal), or `None` for any other layer.
fn lift_1d(class: &str, c: &Value) -> Result<Option<(&'static str, Value)>, String> {
    let two_d = match class {
        "Conv1D" => "Conv2D",
        "DepthwiseConv1D" => "DepthwiseConv2D",
        "SeparableConv1D" => "SeparableConv2D",
        "Conv1DTranspose" => "Conv2DTranspose",
        "MaxPooling1D" => "MaxPooling2D",
        "AveragePooling1D" => "AveragePooling2D",
        "GlobalAveragePooling1D" => "GlobalAveragePooling2D",
        "GlobalMaxPooling1D" => "GlobalMaxPooling2D",
        "UpSampling1D" => "UpSampling2D",
        "ZeroPadding1D" => "ZeroPadding2D",
        "Cropping1D" => "Cropping2D",
        _ => return Ok(None),
    };
    let mut c = c.clone();
    let Some(o) = c.as_object_mut() else { return Err("a config that is not an object".into()) };
    let one = |v: &Value| match v {
        Value::Array(a) if a.len() == 1 => a[0].as_u64(),
        v => v.as_u64(),
    };
    // (The grid's one row: a kernel, stride, dilation and pool of 1, no
    // output padding.)
    for (key, row) in
        [("kernel_size", 1), ("strides", 1), ("dilation_rate", 1), ("pool_size", 1), ("output_padding", 0)]
    {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = one(v).ok_or_else(|| format!("a `{key}` not one number"))?;
                o.insert(key.into(), serde_json::json!([row, n]));
            }
        }
    }
    match class {
        "UpSampling1D" => {
            let n = o.get("size").map_or(Some(2), one).ok_or("a `size` not one number")?;
            o.insert("size".into(), serde_json::json!([1, n]));
        }
        "ZeroPadding1D" | "Cropping1D" => {
            let key = if class == "Cropping1D" { "cropping" } else { "padding" };
            let [a, b] = pair(&c, key).ok_or_else(|| format!("a `{key}` not (left, right)"))?;
            c[key] = serde_json::json!([[0, 0], [a, b]]);
        }
        _ => {}
    }
    Ok(Some((two_d, c)))
}

/// What every Keras conv layer's config says: its input map `[C, H, W]`
/// (channels last), kernel, strides and dilation.
struct ConvArgs {
    input: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    dilation: [usize; 2],
}

impl ConvArgs {
    fn of(c: &Value, i: &Out) -> Result<Self, String> {
        if c.get("data_format").and_then(Value::as_str).is_some_and(|f| f != "channels_last") {
            return Err("channels first".into());
        }
        let Shape::Map(ch, h, w) = i.shape else { return Err("a flat input".into()) };
        Ok(ConvArgs {
            input: [ch, h, w],
            kernel: pair(c, "kernel_size").ok_or("no `kernel_size`")?,
            strides: pair(c, "strides").unwrap_or([1, 1]),
            dilation: pair(c, "dilation_rate").unwrap_or([1, 1]),
        })
    }
}

/// A model class (whose config lists its layers).
fn is_model(class: &str) -> bool {
    matches!(class, "Functional" | "Model" | "Sequential")
}

/// True for `padding="same"`, false for `"valid"`.
fn padding_same(c: &Value) -> Result<bool, String> {
    match c.get("padding").and_then(Value::as_str).unwrap_or("valid") {
        "valid" => Ok(false),
        "same" => Ok(true),
        p => Err(format!("padding \"{p}\"")),
    }
}

/// Along one axis of `n` cells, a window of `k` taps `d` apart moved by
/// `s`: the padding before and after (Keras' "same": the output
/// `ceil(n / s)`, the odd cell after) and the output length.
fn axis(n: usize, k: usize, s: usize, d: usize, same: bool) -> Option<((usize, usize), usize)> {
    // Sizes from a file: checked.
    if n == 0 || k == 0 || s == 0 || d == 0 {
        return None;
    }
    let span = (k - 1).checked_mul(d)?.checked_add(1)?;
    if !same {
        return (n >= span).then(|| ((0, 0), (n - span) / s + 1));
    }
    let out = n.div_ceil(s);
    let total = (out - 1).checked_mul(s)?.checked_add(span)?.saturating_sub(n);
    Some(((total / 2, total - total / 2), out))
}

/// Along one axis, a transposed conv's crop of its full output (`(n - 1)
/// s + (k - 1) d + 1` cells): `(before, after)`, a negative `after` being
/// cells added. As Keras computes it for TensorFlow and JAX (`torch`
/// false), or for torch's `ConvTranspose2d` (`torch` true: its `padding`
/// before and after, less its `output_padding` after), which differ where
/// "same" crops an odd number of cells. `op`: Keras' `output_padding`.
fn crop(k: usize, s: usize, d: usize, same: bool, op: Option<usize>, torch: bool) -> Option<(i64, i64)> {
    // Sizes from a file: checked.
    if k == 0 || s == 0 || d == 0 || k > 1 << 16 || s > 1 << 16 || d > 1 << 16 || op.is_some_and(|o| o > 1 << 16) {
        return None;
    }
    let (k, s, op) = (((k - 1) * d + 1) as i64, s as i64, op.map(|o| o as i64));
    if !same {
        // (n - 1) s + max(k, s) cells: none cropped, the rest added after.
        return Some((0, -op.unwrap_or((s - k).max(0))));
    }
    if torch {
        // keras' `_convert_conv_transpose_padding_args_from_keras_to_torch`.
        let op = op.unwrap_or(s - k % 2);
        let padding = (-((k % 2 - k + op).div_euclid(2))).max(0);
        let output_padding = (2 * padding + k % 2 - k + op).min(s - 1);
        return Some((padding, padding - output_padding));
    }
    // keras' `_convert_conv_transpose_padding_args_from_keras_to_jax`: the
    // dilated input padded `left` and `right`, then a valid conv.
    let pad = match op {
        None => s + k - 2,
        Some(op) => k + k % 2 - 2 + op,
    };
    let left = (pad / 2 + pad % 2).min(k - 1);
    Some((k - 1 - left, k - 1 - (pad - left)))
}

/// The layers a node reads ([`references`]), named under `prefix`.
fn prefixed_references(v: &Value, prefix: &str) -> Vec<String> {
    let mut refs = Vec::new();
    references(v, &mut refs);
    refs.into_iter().map(|r| format!("{prefix}{r}")).collect()
}

/// The layers a node reads: Keras 3's `keras_history` of each tensor, or
/// Keras 2's `[name, node, tensor, kwargs]` lists.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(name) = o.get("keras_history").and_then(|h| h.get(0)).and_then(Value::as_str) {
                out.push(name.to_string());
                return;
            }
            o.values().for_each(|v| references(v, out));
        }
        Value::Array(a) => {
            if let [Value::String(name), Value::Number(_), Value::Number(_), ..] = &a[..] {
                out.push(name.clone());
                return;
            }
            a.iter().for_each(|v| references(v, out));
        }
        _ => {}
    }
}

/// A recorded shape's sizes after the batch axis (`None` where Keras left
/// one open).
fn dims(shape: &[Value]) -> Vec<Option<usize>> {
    shape.iter().skip(1).map(|d| d.as_u64().map(|d| d as usize)).collect()
}

/// The shapes Keras 3 recorded for a node's input tensors (batch axis
/// left out), in the order of [`references`].
fn recorded_shapes(v: &Value, out: &mut Vec<Vec<Option<usize>>>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("keras_history") {
                return;
            }
            if let (Some(_), Some(shape)) = (
                o.get("config").and_then(|c| c.get("keras_history")),
                o.get("config").and_then(|c| c.get("shape")).and_then(Value::as_array),
            ) {
                out.push(dims(shape));
                return;
            }
            o.values().for_each(|v| recorded_shapes(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| recorded_shapes(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as a file of unknown backend and version keeps it.
    fn config(json: &str) -> ModelConfig {
        ModelConfig { json: json.to_string(), backend: None, keras_version: None }
    }

    /// Keras 2's configs: a Sequential whose first layer carries the input
    /// shape, and a functional model whose nodes are `[name, node, tensor,
    /// kwargs]` lists.
    #[test]
    fn keras_2_configs() {
        let sequential = r#"{"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "Dense", "config": {"name": "d1", "units": 3, "batch_input_shape": [null, 4]}},
            {"class_name": "Dropout", "config": {"name": "drop", "rate": 0.5}},
            {"class_name": "Dense", "config": {"name": "d2", "units": 2, "use_bias": false}}]}}"#;
        let seq = spec(&config(sequential), Path::new("m.h5"), None).unwrap();
        assert_eq!(seq.input, Some(vec![4]));
        let weights: Vec<_> =
            seq.layers.iter().map(|l| (l.weight.as_deref(), l.bias.as_deref(), l.from.as_deref())).collect();
        assert_eq!(
            weights,
            [(Some("d1/kernel"), Some("d1/bias"), Some("input")), (Some("d2/kernel"), None, Some("d1"))]
        );
        let functional = r#"{"class_name": "Model", "config": {"name": "f", "layers": [
            {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_input_shape": [null, 5, 5, 2]}, "inbound_nodes": []},
            {"class_name": "Conv2D", "name": "c", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3], "strides": [2, 2],
             "padding": "same"}, "inbound_nodes": [[["x", 0, 0, {}]]]},
            {"class_name": "Add", "name": "sum", "config": {"name": "sum"}, "inbound_nodes": [[["c", 0, 0, {}], ["c", 0, 0, {}]]]}]}}"#;
        let fun = spec(&config(functional), Path::new("m.h5"), None).unwrap();
        assert_eq!(fun.input, Some(vec![2, 5, 5]));
        let conv = &fun.layers[0];
        assert_eq!(
            (conv.padding.map(|p| p.hw()), conv.padding_after.is_some()),
            (Some([1, 1]), false),
            "5 -> 3: one cell each side"
        );
        // The conv's output read twice by the sum: identities, not `to`.
        assert!(fun.layers[1..].iter().all(|l| l.identity == Some(true) && l.to.as_deref() == Some("sum")));
    }

    /// What a spec cannot say is refused by name, never guessed.
    #[test]
    fn refusals_name_the_layer() {
        let with = |layer: &str| {
            format!(
                r#"{{"class_name": "Sequential", "config": {{"name": "s", "layers": [
                {{"class_name": "InputLayer", "config": {{"name": "x", "batch_shape": [null, 6, 6, 1]}}}}, {layer}]}}}}"#
            )
        };
        for (layer, want) in [
            (
                r#"{"class_name": "Conv3D", "config": {"name": "u"}}"#,
                "layer `u` (Conv3D): a layer a spec cannot describe",
            ),
            (
                r#"{"class_name": "Conv2DTranspose", "config": {"name": "u", "filters": 2, "kernel_size": [3, 3],
                 "data_format": "channels_first"}}"#,
                "layer `u` (Conv2DTranspose): channels first",
            ),
            (
                r#"{"class_name": "LayerScale", "config": {"name": "s", "init_values": 1e-6, "projection_dim": 1}}"#,
                "layer `s` (LayerScale): a layer scale other than right after a weighted layer",
            ),
            (
                r#"{"class_name": "MaxPooling2D", "config": {"name": "p", "pool_size": [2, 2], "padding": "full"}}"#,
                "padding \"full\"",
            ),
            (
                r#"{"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3], "strides": [0, 0]}}"#,
                "larger than its input",
            ),
        ] {
            let e = spec(&config(&with(layer)), Path::new("m.keras"), None).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    /// A transposed conv's crops as Keras computes them for TensorFlow and
    /// JAX, and for torch before 3.15 (keras' own conversion functions,
    /// evaluated by hand): `(kernel, stride, dilation, same, output_padding)`.
    #[test]
    fn transposed_crops() {
        for (k, s, d, same, op, tf, torch) in [
            (3, 2, 1, true, None, (0, 1), (1, 0)),
            (4, 2, 1, true, None, (1, 1), (1, 1)),
            (2, 2, 1, true, None, (0, 0), (0, 0)),
            (1, 2, 1, true, None, (0, -1), (0, -1)),
            (5, 2, 1, true, None, (1, 2), (2, 1)),
            (3, 1, 2, true, None, (2, 2), (2, 2)),
            (3, 2, 1, true, Some(1), (0, 1), (1, 0)),
            (3, 2, 1, false, None, (0, 0), (0, 0)),
            (1, 3, 1, false, None, (0, -2), (0, -2)),
        ] {
            assert_eq!(crop(k, s, d, same, op, false), Some(tf), "{k} {s} {d} {same} {op:?}");
            assert_eq!(crop(k, s, d, same, op, true), Some(torch), "{k} {s} {d} {same} {op:?}");
        }
        assert_eq!(crop(0, 2, 1, true, None, false), None);
    }

    /// A nested model of two inputs binds them in the order of its
    /// `input_layers`, not of its layers.
    #[test]
    fn nested_inputs_bind_by_input_layers() {
        let inner = r#"{"class_name": "Functional", "name": "inner", "config": {"name": "inner",
            "input_layers": [["p", 0, 0], ["q", 0, 0]], "output_layers": [["sum", 0, 0]], "layers": [
            {"class_name": "InputLayer", "name": "q", "config": {"name": "q", "batch_shape": [null, 6]}, "inbound_nodes": []},
            {"class_name": "InputLayer", "name": "p", "config": {"name": "p", "batch_shape": [null, 4]}, "inbound_nodes": []},
            {"class_name": "Dense", "name": "d1", "config": {"name": "d1", "units": 3}, "inbound_nodes": [[["p", 0, 0, {}]]]},
            {"class_name": "Dense", "name": "d2", "config": {"name": "d2", "units": 3}, "inbound_nodes": [[["q", 0, 0, {}]]]},
            {"class_name": "Add", "name": "sum", "config": {"name": "sum"}, "inbound_nodes": [[["d1", 0, 0, {}], ["d2", 0, 0, {}]]]}]},
            "inbound_nodes": [[["a", 0, 0, {}], ["b", 0, 0, {}]]]}"#;
        let outer = format!(
            r#"{{"class_name": "Functional", "config": {{"name": "m", "layers": [
            {{"class_name": "InputLayer", "name": "x", "config": {{"name": "x", "batch_shape": [null, 4]}}, "inbound_nodes": []}},
            {{"class_name": "Dense", "name": "a", "config": {{"name": "a", "units": 4}}, "inbound_nodes": [[["x", 0, 0, {{}}]]]}},
            {{"class_name": "Dense", "name": "b", "config": {{"name": "b", "units": 6}}, "inbound_nodes": [[["x", 0, 0, {{}}]]]}},
            {inner}]}}}}"#
        );
        let spec = spec(&config(&outer), Path::new("m.keras"), None).unwrap();
        let from: Vec<_> = spec.layers.iter().map(|l| (l.name.as_deref(), l.from.as_deref())).collect();
        assert!(
            from.contains(&(Some("inner/d1"), Some("a"))) && from.contains(&(Some("inner/d2"), Some("b"))),
            "{from:?}"
        );
    }

    /// Every number of every fixture's config replaced, one at a time, by
    /// a hostile value: a spec or an error naming why, never a panic.
    #[test]
    fn hostile_numbers_in_configs_never_panic() {
        fn numbers(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            match v {
                Value::Number(_) => out.push(path.clone()),
                Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
                    path.push(i.to_string());
                    numbers(v, path, out);
                    path.pop();
                }),
                Value::Object(o) => o.iter().for_each(|(k, v)| {
                    path.push(k.clone());
                    numbers(v, path, out);
                    path.pop();
                }),
                _ => {}
            }
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras/good");
        let mut tried = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let Ok(file) = crate::keras::read(&std::fs::read(&path).unwrap()) else { continue };
            let Some(config) = file.config else { continue };
            let root: Value = serde_json::from_str(&config.json).unwrap();
            let mut paths = Vec::new();
            numbers(&root, &mut Vec::new(), &mut paths);
            for p in paths.iter().step_by(3) {
                for hostile in
                    [serde_json::json!(0), serde_json::json!(-1), serde_json::json!(u64::MAX), serde_json::json!(1e300)]
                {
                    let mut v = root.clone();
                    let slot = p.iter().fold(&mut v, |v, k| match v {
                        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                        v => &mut v[k.as_str()],
                    });
                    *slot = hostile;
                    let json = serde_json::to_string(&v).unwrap();
                    let _ = spec(&ModelConfig { json, ..config.clone() }, &path, None);
                    tried += 1;
                }
            }
        }
        assert!(tried > 1000, "{tried} configs tried");
    }
}
