//! Keras' weight files, named as the keras layout names tensors
//! (`LAYER/kernel`, `LAYER/bias`, `LAYER/gamma`, ...):
//!
//! - the HDF5 files of `model.save("m.h5")` and Keras 2's
//!   `save_weights("w.h5")` (`model_weights/LAYER/.../kernel:0`): each
//!   dataset is named by its layer and its own name; the optimizer's
//!   weights are left out;
//! - Keras 3's `.weights.h5` (`layers/LAYER/vars/I`) and the `.keras`
//!   archive that holds one (`model.weights.h5`, a stored zip entry): the
//!   file names a variable by its place only, so the place is named by the
//!   layer's class (the group is named after it: `conv2d`, `dense_1`): 0, 1
//!   of a dense or conv layer are `kernel`, `bias`; a BatchNormalization's
//!   four are `gamma`, `beta`, `moving_mean`, `moving_variance`. Other
//!   variables keep their place (`LAYER/vars/I`) and are listed unused.
//!
//! Tensors come in the order they were written (the model's order), which
//! discovery follows, not in HDF5's order of names.

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

/// The weights of a Keras HDF5 file, or of a `.keras` archive, in the order
/// they were written.
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<Weight>, String> {
    if hdf5::is_hdf5(bytes) {
        return weights(bytes, 0);
    }
    let entries = crate::zip::entries(bytes)?;
    let entry = entries.iter().find(|e| e.name == WEIGHTS_ENTRY).ok_or("no `model.weights.h5` in the archive")?;
    if entry.method != 0 {
        return Err(format!("`{WEIGHTS_ENTRY}` is compressed (method {}): nothing is inflated", entry.method));
    }
    let h5 = entry.start.checked_add(entry.len).and_then(|end| bytes.get(entry.start..end)).ok_or("truncated")?;
    weights(h5, entry.start).map_err(|e| format!("{WEIGHTS_ENTRY}: {e}"))
}

/// The datasets of HDF5 file `h5` named as weights, in the model's order,
/// their ranges moved by `offset` (where `h5` starts in the bytes read).
fn weights(h5: &[u8], offset: usize) -> Result<Vec<Weight>, String> {
    let datasets = hdf5::datasets(h5)?;
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
    let mut names: Vec<String> = if keras3 { keras3_names(&kept) } else { legacy_names(&kept) };
    // Two datasets named alike (layers nested in models of the same layer
    // names) keep their whole paths.
    let mut count = std::collections::HashMap::<&str, usize>::new();
    for n in &names {
        *count.entry(n.as_str()).or_default() += 1;
    }
    let clash: Vec<bool> = names.iter().map(|n| count[n.as_str()] > 1).collect();
    for ((name, d), clash) in names.iter_mut().zip(&kept).zip(clash) {
        if clash {
            *name = d.path.replace(":0", "");
        }
    }
    kept.into_iter()
        .zip(names)
        .map(|(d, name)| {
            let (start, end) = (d.start.checked_add(offset), d.end.checked_add(offset));
            let (Some(start), Some(end)) = (start, end) else { return Err("offsets overflow".to_string()) };
            Ok(Weight { name, dtype: d.dtype, shape: d.shape, start, end })
        })
        .collect()
}

/// A legacy file's datasets in the model's order of layers, which its
/// `layer_names` attribute keeps (Keras writes the layers' groups sorted by
/// name); a layer's own weights in the order written. Without the
/// attribute, in the order written.
fn in_layer_order(h5: &[u8], mut datasets: Vec<Dataset>, model: bool) -> Result<Vec<Dataset>, String> {
    let group = if model { "model_weights" } else { "" };
    let Some(layers) = hdf5::string_attribute(h5, group, "layer_names")? else { return Ok(datasets) };
    let place: std::collections::HashMap<&str, usize> =
        layers.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let layer_of = |d: &Dataset| {
        let path = d.path.strip_prefix("model_weights/").unwrap_or(&d.path);
        place.get(path.split('/').next().unwrap_or(path)).copied().unwrap_or(usize::MAX)
    };
    datasets.sort_by_key(|d| (layer_of(d), d.header));
    Ok(datasets)
}

/// `model_weights/LAYER/.../NAME:0` (or without `model_weights/`, as
/// Keras 2's `save_weights` writes): `LAYER/NAME`.
fn legacy_names(datasets: &[Dataset]) -> Vec<String> {
    datasets
        .iter()
        .map(|d| {
            let path = d.path.strip_prefix("model_weights/").unwrap_or(&d.path);
            let layer = path.split('/').next().unwrap_or(path);
            let name = path.rsplit('/').next().unwrap_or(path);
            let name = name.strip_suffix(":0").unwrap_or(name);
            if layer == path {
                name.to_string()
            } else {
                format!("{layer}/{name}")
            }
        })
        .collect()
}

/// `layers/A/layers/B/vars/I`: `A/B/` and the variable's name by B's class
/// and I (see the module's doc).
fn keras3_names(datasets: &[Dataset]) -> Vec<String> {
    let parent = |d: &Dataset| d.path.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    let mut siblings = std::collections::HashMap::<String, usize>::new();
    for d in datasets {
        *siblings.entry(parent(d)).or_default() += 1;
    }
    datasets
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.path.split('/').collect();
            let (Some(&index), Some(&"vars")) = (parts.last(), parts.len().checked_sub(2).and_then(|i| parts.get(i)))
            else {
                return d.path.clone();
            };
            let owner: Vec<&str> = parts[..parts.len() - 2].iter().copied().filter(|&p| p != "layers").collect();
            let siblings = siblings[&parent(d)];
            let class = owner.last().map_or("", |layer| class_of(layer));
            let var = index.parse::<usize>().ok().and_then(|i| variable(class, siblings, i));
            let var = var.map_or_else(|| format!("vars/{index}"), str::to_string);
            if owner.is_empty() {
                var
            } else {
                format!("{}/{var}", owner.join("/"))
            }
        })
        .collect()
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
            "dense" | "conv1d" | "conv2d" | "conv3d" | "conv1d_transpose" | "conv2d_transpose" | "conv3d_transpose",
            1..=2,
        ) => &["kernel", "bias"],
        ("batch_normalization", 4) => &["gamma", "beta", "moving_mean", "moving_variance"],
        ("batch_normalization", 2) => &["moving_mean", "moving_variance"],
        ("layer_normalization", 2) => &["gamma", "beta"],
        ("embedding", 1) => &["embeddings"],
        _ => &[],
    };
    names.get(index).copied()
}
