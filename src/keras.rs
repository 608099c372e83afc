//! Keras' weight files, named as the keras layout names tensors,
//! `LAYER/kernel`, `LAYER/bias`, `LAYER/gamma`, ..., by the layers' own
//! names:
//!
//! - the HDF5 files of `model.save("m.h5")` and Keras 2's
//!   `save_weights("w.h5")` (`model_weights/LAYER/.../kernel:0`): each
//!   dataset is named by its layer and its own name (a nested model's
//!   layer under the model's name, as a `.keras` names it); the
//!   optimizer's weights are left out;
//! - Keras 3's `.weights.h5` (`layers/GROUP/vars/I`, the layer's name an
//!   attribute of `vars`) and the `.keras` archive that holds one
//!   (`model.weights.h5`, a stored zip entry): the file names a variable by
//!   its place only, and its group by the layer's class (`conv2d`,
//!   `dense_1`), so the place is named by the class: 0, 1 of a dense or
//!   conv layer are `kernel`, `bias`; a separable conv's three
//!   `depthwise_kernel`, `pointwise_kernel`, `bias`; a
//!   BatchNormalization's four `gamma`, `beta`, `moving_mean`,
//!   `moving_variance` (fewer without its scale or shift: a `.keras`
//!   archive's config says which). Other variables keep their place
//!   (`LAYER/vars/I`) and are listed unused, but a ConvNeXt layer scale's
//!   one, `gamma`.
//!
//! The model's config, where the file keeps one (`model_config`,
//! `config.json`), comes with the weights, with the backend and Keras
//! version that saved it where the file says ([`ModelConfig`]):
//! [`crate::keras_graph`] reads the graph from it.
//!
//! A depthwise kernel `[.., C, M]` is read as the grouped kernel it is,
//! `[.., 1, C * M]` (the same bytes in the same order), named
//! `LAYER/kernel`. Tensors come in the order they were written (the model's
//! order), which discovery follows, not in HDF5's order of names.

use std::collections::{HashMap, HashSet};

use crate::hdf5::{self, Dataset};

/// The entry of a `.keras` archive that holds the weights.
const WEIGHTS_ENTRY: &str = "model.weights.h5";

/// One weight: its name, dtype, shape and byte range in the file.
pub(crate) struct Weight {
    pub(crate) name: String,
    pub(crate) dtype: safetensors::tensor::Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// True when a zip archive is a `.keras` file (it holds `model.weights.h5`).
pub(crate) fn is_keras_zip(bytes: &[u8]) -> bool {
    crate::zip::is_zip(bytes) && crate::zip::entries(bytes).is_ok_and(|e| e.iter().any(|e| e.name == WEIGHTS_ENTRY))
}

/// A Keras file's weights, in the order they were written, and the model's
/// config where the file keeps one (a legacy `.h5`'s `model_config`, a
/// `.keras` archive's `config.json`; a `.weights.h5` has none).
pub(crate) struct KerasFile {
    pub(crate) weights: Vec<Weight>,
    pub(crate) config: Option<ModelConfig>,
}

/// A Keras model's config as the file keeps it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The config (JSON): the layers, their arguments and connections.
    pub json: String,
    /// The backend that saved the model, where the file says (a legacy
    /// `.h5` does: `tensorflow`, `jax`, `torch`; a `.keras` does not).
    pub backend: Option<String>,
    /// The Keras version that saved it (`3.15.1`), where the file says.
    pub keras_version: Option<String>,
}

impl ModelConfig {
    /// The saving Keras' `(major, minor)` version, where the file says.
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut parts = self.keras_version.as_deref()?.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    }
}

/// The entry of a `.keras` archive that holds the model's config.
const CONFIG_ENTRY: &str = "config.json";

/// The entry of a `.keras` archive that says which Keras saved it.
const METADATA_ENTRY: &str = "metadata.json";

/// Reads a Keras HDF5 file or `.keras` archive.
pub(crate) fn read(bytes: &[u8]) -> Result<KerasFile, String> {
    if hdf5::is_hdf5(bytes) {
        let h5 = hdf5::File::open(bytes)?;
        let json = h5.strings_of("", "model_config")?.and_then(|v| v.into_iter().next());
        let weights = weights(&h5, 0, json.as_deref())?;
        let Some(json) = json else { return Ok(KerasFile { weights, config: None }) };
        let attribute = |name| h5.strings_of("model_weights", name).map(|v| v.and_then(|v| v.into_iter().next()));
        let (backend, keras_version) = (attribute("backend")?, attribute("keras_version")?);
        return Ok(KerasFile { weights, config: Some(ModelConfig { json, backend, keras_version }) });
    }
    let entries = crate::zip::entries(bytes)?;
    let (start, h5) = stored(bytes, &entries, WEIGHTS_ENTRY)?.ok_or("no `model.weights.h5` in the archive")?;
    let json = stored(bytes, &entries, CONFIG_ENTRY)?.map(|(_, c)| String::from_utf8_lossy(c).into_owned());
    let weights = hdf5::File::open(h5)
        .and_then(|h5| weights(&h5, start, json.as_deref()))
        .map_err(|e| format!("{WEIGHTS_ENTRY}: {e}"))?;
    // `metadata.json`: `{"keras_version": "3.15.1", "date_saved": ...}`.
    let keras_version = stored(bytes, &entries, METADATA_ENTRY)?
        .and_then(|(_, m)| serde_json::from_slice::<serde_json::Value>(m).ok())
        .and_then(|m| m.get("keras_version")?.as_str().map(str::to_string));
    Ok(KerasFile { weights, config: json.map(|json| ModelConfig { json, backend: None, keras_version }) })
}

/// A stored (uncompressed) entry of a zip archive, if it has one: where it
/// starts and its bytes. A compressed one is an error: nothing is inflated.
fn stored<'a>(
    bytes: &'a [u8],
    entries: &[crate::zip::ZipEntry],
    name: &str,
) -> Result<Option<(usize, &'a [u8])>, String> {
    let Some(entry) = entries.iter().find(|e| e.name == name) else { return Ok(None) };
    if entry.method != 0 {
        return Err(format!("`{name}` is compressed (method {}): nothing is inflated", entry.method));
    }
    let end = entry.start.checked_add(entry.len).ok_or("truncated")?;
    bytes.get(entry.start..end).map(|b| Some((entry.start, b))).ok_or_else(|| format!("`{name}` truncated"))
}

/// The datasets of HDF5 file `h5` named as weights, in the model's order,
/// their ranges moved by `offset` (where `h5` starts in the bytes read);
/// the model's `config`, where the file keeps one, says what the names do
/// not ([`ConfigLayers`]).
fn weights(h5: &hdf5::File, offset: usize, config: Option<&str>) -> Result<Vec<Weight>, String> {
    let layers = ConfigLayers::of(config);
    let datasets = h5.datasets()?;
    let keras3 = datasets.iter().any(|d| d.path.starts_with("layers/") || d.path.starts_with("vars/"));
    let legacy_model = datasets.iter().any(|d| d.path.starts_with("model_weights/"));
    let kept: Vec<Dataset> = datasets
        .into_iter()
        .filter(|d| match () {
            _ if keras3 => !d.path.starts_with("optimizer/"),
            _ if legacy_model => d.path.starts_with("model_weights/"),
            _ => !d.path.starts_with("optimizer_weights/"),
        })
        .collect();
    let kept = if keras3 { kept } else { in_layer_order(h5, kept, legacy_model)? };
    let mut named = if keras3 { keras3_names(h5, &kept, &layers)? } else { legacy_names(&kept, &layers) };
    // Two datasets named alike (layers nested in models of the same layer
    // names) keep their whole paths.
    let mut count = HashMap::<String, usize>::new();
    for n in &named {
        *count.entry(n.name.clone()).or_default() += 1;
    }
    for (n, d) in named.iter_mut().zip(&kept) {
        if count[&n.name] > 1 {
            n.name = d.path.replace(":0", "");
        }
    }
    kept.into_iter()
        .zip(named)
        .map(|(d, n)| {
            let (start, end) = (d.start.checked_add(offset), d.end.checked_add(offset));
            let (Some(start), Some(end)) = (start, end) else { return Err("offsets overflow".to_string()) };
            let mut shape = d.shape;
            if n.depthwise {
                as_grouped(&mut shape)?;
            }
            Ok(Weight { name: n.name, dtype: d.dtype, shape, start, end })
        })
        .collect()
}

/// A depthwise kernel's shape `[.., C, M]` made the grouped kernel's it
/// is, `[.., 1, C * M]` (the same bytes in the same order).
pub(crate) fn as_grouped(shape: &mut [usize]) -> Result<(), String> {
    if let [.., _, c, m] = shape {
        *m = c.checked_mul(*m).ok_or("shape overflows")?;
        *c = 1;
    }
    Ok(())
}

/// A dataset's tensor name, and whether it is a depthwise kernel.
struct Named {
    name: String,
    depthwise: bool,
}

/// A legacy file's datasets in the model's order of layers, which its
/// `layer_names` attribute keeps (Keras writes the layers' groups sorted by
/// name); a layer's own weights in the order written. Without the
/// attribute, in the order written.
fn in_layer_order(h5: &hdf5::File, mut datasets: Vec<Dataset>, model: bool) -> Result<Vec<Dataset>, String> {
    let group = if model { "model_weights" } else { "" };
    let Some(layers) = h5.strings_of(group, "layer_names")? else { return Ok(datasets) };
    let place: HashMap<&str, usize> = layers.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let layer_of = |d: &Dataset| place.get(LegacyPath::of(d).group).copied().unwrap_or(usize::MAX);
    datasets.sort_by_key(|d| (layer_of(d), d.header));
    Ok(datasets)
}

/// `model_weights/LAYER/.../NAME:0` (or without `model_weights/`, as
/// Keras 2's `save_weights` writes): `LAYER/NAME`, a nested model's
/// layer `MODEL/LAYER/NAME` ([`LegacyPath`]). A depthwise kernel (Keras
/// 2's `depthwise_kernel`, or the `kernel` of a layer the file's
/// `model_config` says is a `DepthwiseConv2D`) is `LAYER/kernel`.
fn legacy_names(datasets: &[Dataset], config: &ConfigLayers) -> Vec<Named> {
    let paths: Vec<LegacyPath> = datasets.iter().map(LegacyPath::of).collect();
    // A SeparableConv2D's depthwise kernel is one of two: it keeps its name.
    let separable: HashSet<&str> = paths.iter().filter(|p| p.var == "pointwise_kernel").map(|p| p.layer).collect();
    paths
        .iter()
        .map(|p| {
            let depthwise = p.var == "depthwise_kernel"
                || p.var == "kernel"
                    && config
                        .class
                        .get(p.layer)
                        .is_some_and(|c| matches!(c.as_str(), "DepthwiseConv2D" | "DepthwiseConv1D"));
            let var = match () {
                _ if depthwise && !separable.contains(p.layer) => "kernel",
                // (A ConvNeXt layer scale's one weight, which Keras names
                // `variable_N`: `gamma`, as in a `.keras`.)
                _ if config.class.get(p.layer).is_some_and(|c| c == "LayerScale") => "gamma",
                _ => p.var,
            };
            let name = if p.bare { var.to_string() } else { format!("{}/{var}", p.named(config)) };
            Named { name, depthwise }
        })
        .collect()
}

/// A legacy dataset's path, `model_weights/GROUP/[SCOPE/]LAYER/NAME:0`:
/// `GROUP` a layer of the model (Keras 2 and 3 write `dense/dense/kernel`,
/// Keras 3 a Sequential's `c1/sequential/c1/bias`), or a nested model
/// (`backbone/stem/kernel`, a nested Sequential's `head/head/hidden/kernel`).
struct LegacyPath<'a> {
    /// A dataset at the top, not in a layer's group.
    bare: bool,
    /// The model's layer whose group holds it.
    group: &'a str,
    /// The groups between it and the layer.
    scopes: Vec<&'a str>,
    /// The layer's own name.
    layer: &'a str,
    /// The variable's own name, without `:0`.
    var: &'a str,
}

impl<'a> LegacyPath<'a> {
    fn of(d: &'a Dataset) -> Self {
        let path = d.path.strip_prefix("model_weights/").unwrap_or(&d.path);
        let parts: Vec<&str> = path.split('/').collect();
        let var = parts[parts.len() - 1];
        let (group, layer) = (parts[0], parts[parts.len().saturating_sub(2)]);
        let scopes = parts.get(1..parts.len().saturating_sub(2)).unwrap_or_default().to_vec();
        LegacyPath { bare: parts.len() == 1, group, scopes, layer, var: var.strip_suffix(":0").unwrap_or(var) }
    }

    /// The layer as cntscope names it: its group, or with a model config,
    /// the nested models it is in (but the saved model itself), then its
    /// own name, as `.keras` files name them.
    fn named(&self, config: &ConfigLayers) -> String {
        if config.root.is_none() {
            return self.group.to_string();
        }
        let mut names: Vec<&str> = Vec::new();
        for &p in std::iter::once(&self.group).chain(&self.scopes) {
            if config.is_nested_model(p) && names.last() != Some(&p) && p != self.layer {
                names.push(p);
            }
        }
        names.push(self.layer);
        names.join("/")
    }
}

/// What a Keras model config says of its layers (nested models' too), by
/// layer name: each one's class, and the variables of each
/// BatchNormalization (`gamma` if it scales, `beta` if it shifts, then its
/// statistics). Empty without a config.
#[derive(Default)]
struct ConfigLayers {
    class: HashMap<String, String>,
    norm_variables: HashMap<String, Vec<&'static str>>,
    /// The saved model's own name.
    root: Option<String>,
}

impl ConfigLayers {
    fn of(config: Option<&str>) -> Self {
        let mut layers = ConfigLayers::default();
        if let Some(json) = config.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok()) {
            layers.add(&json);
            let root = json.get("config").and_then(|c| c.get("name")).and_then(|n| n.as_str());
            layers.root = Some(root.unwrap_or_default().to_string());
        }
        layers
    }

    /// True for a model used as a layer of the saved one.
    fn is_nested_model(&self, name: &str) -> bool {
        self.root.as_deref() != Some(name)
            && self.class.get(name).is_some_and(|c| matches!(c.as_str(), "Functional" | "Sequential" | "Model"))
    }

    /// Every object with a `class_name` and a `config.name`, at any depth.
    fn add(&mut self, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                let c = o.get("config");
                let name = c.and_then(|c| c.get("name")).and_then(|n| n.as_str());
                if let (Some(class), Some(name)) = (o.get("class_name").and_then(|c| c.as_str()), name) {
                    self.class.entry(name.to_string()).or_insert_with(|| class.to_string());
                    if class == "BatchNormalization" {
                        let flag = |k: &str| c.and_then(|c| c.get(k)).and_then(|v| v.as_bool()).unwrap_or(true);
                        let mut vars = Vec::new();
                        vars.extend(flag("scale").then_some("gamma"));
                        vars.extend(flag("center").then_some("beta"));
                        vars.extend(["moving_mean", "moving_variance"]);
                        self.norm_variables.entry(name.to_string()).or_insert(vars);
                    }
                }
                o.values().for_each(|v| self.add(v));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| self.add(v)),
            _ => {}
        }
    }
}

/// `layers/A/layers/B/vars/I`: `A/B/` by the layers' own names (each
/// `vars` group's `name` attribute; the group's name where it has none)
/// and the variable's name by B's class and I (see the module's doc).
fn keras3_names(h5: &hdf5::File, datasets: &[Dataset], config: &ConfigLayers) -> Result<Vec<Named>, String> {
    let parent = |d: &Dataset| d.path.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    let mut siblings = HashMap::<String, usize>::new();
    for d in datasets {
        *siblings.entry(parent(d)).or_default() += 1;
    }
    let mut real = HashMap::<String, String>::new();
    let mut out = Vec::with_capacity(datasets.len());
    for d in datasets {
        let parts: Vec<&str> = d.path.split('/').collect();
        let n = parts.len();
        if n < 2 || parts[n - 2] != "vars" {
            out.push(Named { name: d.path.clone(), depthwise: false });
            continue;
        }
        // Each layer group on the way (the component after a `layers`).
        let mut owner = Vec::new();
        for i in 1..n - 2 {
            if parts[i - 1] == "layers" {
                let group = parts[..=i].join("/");
                if !real.contains_key(&group) {
                    let name = h5
                        .strings_of(&format!("{group}/vars"), "name")?
                        .and_then(|v| v.into_iter().next())
                        .unwrap_or_else(|| parts[i].to_string());
                    real.insert(group.clone(), name);
                }
                owner.push(real[&group].clone());
            }
        }
        let class = parts.get(n.saturating_sub(3)).map_or("", |g| class_of(g));
        let index = parts[n - 1].parse::<usize>().ok();
        // A BatchNormalization's variables by the config, where it says.
        let known = owner
            .last()
            .and_then(|layer| config.norm_variables.get(layer.as_str()))
            .filter(|_| class == "batch_normalization");
        let var = match known {
            Some(vars) => index.and_then(|i| vars.get(i).copied()),
            None => index.and_then(|i| variable(class, siblings[&parent(d)], i)),
        };
        let depthwise =
            matches!(class, "depthwise_conv2d" | "separable_conv2d" | "depthwise_conv1d" | "separable_conv1d")
                && index == Some(0);
        let var = var.map_or_else(|| format!("vars/{}", parts[n - 1]), str::to_string);
        let name = if owner.is_empty() { var } else { format!("{}/{var}", owner.join("/")) };
        out.push(Named { name, depthwise });
    }
    Ok(out)
}

/// A layer group's class: its name without the `_N` Keras adds to make it
/// unique (`conv2d_3`: `conv2d`).
fn class_of(group: &str) -> &str {
    match group.rsplit_once('_') {
        Some((class, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => class,
        _ => group,
    }
}

/// The name of variable `index` of `count` of a layer of this class, where
/// the class fixes it.
fn variable(class: &str, count: usize, index: usize) -> Option<&'static str> {
    let names: &[&str] = match (class, count) {
        (
            "dense" | "conv1d" | "conv2d" | "conv3d" | "conv1d_transpose" | "conv2d_transpose" | "conv3d_transpose"
            | "depthwise_conv2d" | "depthwise_conv1d",
            1..=2,
        ) => &["kernel", "bias"],
        ("separable_conv2d" | "separable_conv1d", 2..=3) => &["depthwise_kernel", "pointwise_kernel", "bias"],
        ("batch_normalization", 4) => &["gamma", "beta", "moving_mean", "moving_variance"],
        ("batch_normalization", 2) => &["moving_mean", "moving_variance"],
        ("layer_normalization", 2) => &["gamma", "beta"],
        // keras.applications' ConvNeXt: its one weight, unnamed.
        ("layer_scale", 1) => &["gamma"],
        ("embedding", 1) => &["embeddings"],
        _ => &[],
    };
    names.get(index).copied()
}
