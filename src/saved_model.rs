//! Keras 2's SavedModel folders (`model.save(path)` in TensorFlow's
//! format, Keras 2's default): `variables/variables.index` is a TensorFlow
//! checkpoint ([`crate::tf`]) whose keys are object paths
//! (`layer_with_weights-0/kernel`; a nested model's weights often under
//! the root's `variables/N`), and `keras_metadata.pb` keeps each layer's
//! config by its object path (`root.layer_with_weights-0`: `{"name":
//! "conv1", "class_name": "Conv2D", ...}`) and the model's config at
//! `root`. Read together with the checkpoint's object graph (whose nodes
//! name their children and the keys of their variables), each weight gets
//! the name Keras gives it (`conv1/kernel`; `backbone/conv1/kernel` in a
//! nested model), and the model's config is read as a `.keras` file's is.
//! Both files are protobuf, read as data by the bounded field reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::cursor::{fields, Field};
use crate::keras::ModelConfig;

/// The file of a SavedModel folder that keeps the Keras model.
pub(crate) const METADATA: &str = "keras_metadata.pb";

/// The largest `keras_metadata.pb` read (a large model's is a few MB).
const MAX_METADATA: u64 = 1 << 28;

/// The most nodes an object graph may have.
const MAX_NODES: usize = 1 << 22;

/// What a SavedModel's Keras metadata says of its checkpoint: the Keras
/// name of each weight (by the name the checkpoint reads it by) and the
/// model's config.
#[derive(Debug)]
pub(crate) struct SavedModel {
    pub(crate) names: HashMap<String, KerasName>,
    pub(crate) config: ModelConfig,
}

/// A weight's name as Keras' other files name it, and whether it is a
/// depthwise kernel (`[.., C, M]`, read as the grouped kernel it is, as
/// [`crate::keras`] reads one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KerasName {
    pub(crate) name: String,
    pub(crate) depthwise: bool,
}

/// The `keras_metadata.pb` of the SavedModel whose variables `index` is
/// (`MODEL/variables/variables.index`), when there is one.
pub(crate) fn metadata_beside(index: &Path) -> Option<PathBuf> {
    let dir = index.parent()?;
    if index.file_name()? != "variables.index" || dir.file_name()? != "variables" {
        return None;
    }
    Some(dir.parent()?.join(METADATA)).filter(|p| p.is_file())
}

/// Reads the metadata file at `path` (size-bounded) with the checkpoint's
/// object graph (`graph`, a `TrackableObjectGraph`).
pub(crate) fn read(path: &Path, graph: &[u8]) -> Result<SavedModel, String> {
    parse(&crate::checkpoint::read_whole(path, MAX_METADATA)?, graph)
}

/// [`read`] of the metadata's bytes.
fn parse(metadata: &[u8], graph: &[u8]) -> Result<SavedModel, String> {
    let nodes = object_graph(graph)?;
    // Each object's layer name by its path; the root's metadata. (Each
    // object's JSON is read for the fields used, not as a whole tree: a
    // large model's metadata is megabytes of layer configs.)
    let mut names: HashMap<String, String> = HashMap::new();
    let mut root = None;
    let objects = saved_objects(metadata).map_err(|e| format!("damaged or cut short: {e}"))?;
    for (path, identifier, text) in objects {
        // A compiled model's metrics (`root.keras_api.metrics.0`) are no layers.
        if identifier == "_tf_keras_metric" {
            continue;
        }
        let bad = |e: serde_json::Error| format!("object `{path}`: {e}");
        if path == "root" {
            root = Some(serde_json::from_str::<Root>(&text).map_err(bad)?);
        } else if let Some(name) = serde_json::from_str::<Named>(&text).map_err(bad)?.name {
            names.insert(path, name);
        }
    }
    let root = root.ok_or("no `root` object")?;
    let config = root
        .model_config
        .filter(|c| c.get("config").is_some())
        .ok_or("the model keeps no config (a subclassed model: its layers are code, not data); give a spec")?;
    let config =
        ModelConfig { json: untupled(config).to_string(), backend: root.backend, keras_version: root.keras_version };
    let mut weights = HashMap::new();
    for path in names.keys() {
        let Some(rest) = path.strip_prefix("root.") else { continue };
        // The layer's node, and its name under the models that hold it.
        let (mut node, mut at, mut layer) = (0, String::from("root"), Vec::new());
        for step in rest.split('.') {
            node = nodes[node]
                .children
                .iter()
                .find(|(name, _)| name == step)
                .map(|&(_, id)| id)
                .ok_or_else(|| format!("object `{path}` is not in the checkpoint's object graph"))?;
            at = format!("{at}.{step}");
            layer.push(names.get(&at).ok_or_else(|| format!("object `{at}` has no name"))?.as_str());
        }
        let layer = layer.join("/");
        let children = &nodes[node].children;
        // A SeparableConv2D's depthwise kernel is one of two: it keeps its
        // name; a DepthwiseConv2D's is its `kernel`, as in Keras' files.
        let separable = children.iter().any(|(local, _)| local == "pointwise_kernel");
        for (local, id) in children {
            let Some(name) = nodes[*id].key.as_deref().and_then(crate::tf::weight_name) else { continue };
            let depthwise = local == "depthwise_kernel";
            let var = if depthwise && !separable { "kernel" } else { local };
            let keras = KerasName { name: format!("{layer}/{var}"), depthwise };
            weights.entry(name.to_string()).or_insert(keras);
        }
    }
    Ok(SavedModel { names: weights, config })
}

/// What is read of the root object's metadata.
#[derive(Deserialize)]
struct Root {
    model_config: Option<Value>,
    backend: Option<String>,
    keras_version: Option<String>,
}

/// What is read of a layer's metadata.
#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

/// A node of the object graph: its children by local name, and the
/// checkpoint key of its value when it is a variable.
#[derive(Debug, Default)]
struct Node {
    children: Vec<(String, usize)>,
    key: Option<String>,
}

/// The nodes of a `TrackableObjectGraph` (node 0 is the root), every
/// child's id checked.
fn object_graph(b: &[u8]) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    for (number, field) in fields(b, "object graph")? {
        let (1, Field::Bytes(object)) = (number, field) else { continue };
        let mut node = Node::default();
        for field in fields(object, "object graph node")? {
            match field {
                (1, Field::Bytes(reference)) => {
                    let (mut id, mut name) = (0, String::new());
                    for f in fields(reference, "object reference")? {
                        match f {
                            (1, Field::Varint(v)) => id = v,
                            (2, Field::Bytes(s)) => name = utf8(s)?,
                            _ => {}
                        }
                    }
                    let id = usize::try_from(id).map_err(|_| format!("a child {id}"))?;
                    node.children.push((name, id));
                }
                (2, Field::Bytes(tensor)) => {
                    let (mut attribute, mut key) = (String::new(), None);
                    for f in fields(tensor, "serialized tensor")? {
                        match f {
                            (1, Field::Bytes(s)) => attribute = utf8(s)?,
                            (3, Field::Bytes(s)) => key = Some(utf8(s)?),
                            _ => {}
                        }
                    }
                    if attribute == "VARIABLE_VALUE" {
                        node.key = key;
                    }
                }
                _ => {}
            }
        }
        nodes.push(node);
        if nodes.len() > MAX_NODES {
            return Err(format!("an object graph of more than {MAX_NODES} nodes"));
        }
    }
    if nodes.is_empty() {
        return Err("an empty object graph".into());
    }
    let n = nodes.len();
    if let Some(id) = nodes.iter().flat_map(|node| &node.children).map(|&(_, id)| id).find(|&id| id >= n) {
        return Err(format!("the object graph names node {id} of {n}"));
    }
    Ok(nodes)
}

/// The `(node_path, identifier, metadata)` of each `SavedObject` of a
/// `SavedMetadata`.
fn saved_objects(b: &[u8]) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    for (number, field) in fields(b, METADATA)? {
        let (1, Field::Bytes(object)) = (number, field) else { continue };
        let (mut path, mut identifier, mut metadata) = (String::new(), String::new(), String::new());
        for f in fields(object, "saved object")? {
            match f {
                (3, Field::Bytes(s)) => path = utf8(s)?,
                (4, Field::Bytes(s)) => identifier = utf8(s)?,
                (5, Field::Bytes(s)) => metadata = utf8(s)?,
                _ => {}
            }
        }
        out.push((path, identifier, metadata));
    }
    Ok(out)
}

/// A protobuf string field's text.
fn utf8(s: &[u8]) -> Result<String, String> {
    String::from_utf8(s.to_vec()).map_err(|_| "text that is not UTF-8".to_string())
}

/// Keras 2's SavedModel writes tuples as `{"class_name": "__tuple__",
/// "items": [...]}`, where its `.h5` configs have lists: lists again.
fn untupled(v: Value) -> Value {
    match v {
        Value::Object(map) if map.get("class_name").and_then(Value::as_str) == Some("__tuple__") => {
            match map.get("items") {
                Some(Value::Array(items)) => Value::Array(items.iter().cloned().map(untupled).collect()),
                _ => Value::Object(map),
            }
        }
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, untupled(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(untupled).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf bytes: a length-delimited field.
    fn bytes_field(number: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8];
        let mut n = b.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(b);
        out
    }

    fn reference(id: u8, name: &str) -> Vec<u8> {
        let mut r = vec![1 << 3, id];
        r.extend(bytes_field(2, name.as_bytes()));
        bytes_field(1, &r)
    }

    fn variable(key: &str) -> Vec<u8> {
        let mut t = bytes_field(1, b"VARIABLE_VALUE");
        t.extend(bytes_field(3, key.as_bytes()));
        bytes_field(2, &t)
    }

    fn object(path: &str, metadata: &str) -> Vec<u8> {
        let mut o = bytes_field(3, path.as_bytes());
        o.extend(bytes_field(5, metadata.as_bytes()));
        bytes_field(1, &o)
    }

    /// A nested model's weight, keyed under the root's `variables/0`, is
    /// named under the nested model's name; a tuple is a list again.
    #[test]
    fn weights_take_their_layers_names() {
        // 0 root -> 1 backbone -> 2 conv -> 3 kernel (key variables/0)
        let nodes: Vec<Vec<u8>> = vec![
            [reference(1, "layer_with_weights-0"), reference(3, "variables")].concat(),
            reference(2, "layer_with_weights-0"),
            reference(3, "kernel"),
            variable("variables/0/.ATTRIBUTES/VARIABLE_VALUE"),
        ];
        let graph: Vec<u8> = nodes.iter().flat_map(|n| bytes_field(1, n)).collect();
        let root = r#"{"keras_version": "2.15.0", "backend": "tensorflow", "model_config": {"class_name": "Functional", "config": {"k": {"class_name": "__tuple__", "items": [3, 3]}}}}"#;
        let metadata = [
            object("root", root),
            object("root.layer_with_weights-0", r#"{"name": "backbone"}"#),
            object("root.layer_with_weights-0.layer_with_weights-0", r#"{"name": "conv"}"#),
        ]
        .concat();
        let m = parse(&metadata, &graph).unwrap();
        let kernel = KerasName { name: "backbone/conv/kernel".into(), depthwise: false };
        assert_eq!(m.names.get("variables/0"), Some(&kernel));
        assert_eq!(m.names.len(), 1);
        assert_eq!(m.config.json, r#"{"class_name":"Functional","config":{"k":[3,3]}}"#);
        assert_eq!(m.config.version(), Some((2, 15)));
        // A path the object graph does not have, a child past its nodes.
        let stray = [metadata.clone(), object("root.layer-9", r#"{"name": "x"}"#)].concat();
        assert!(parse(&stray, &graph).unwrap_err().contains("`root.layer-9` is not in"));
        let past = [graph.clone(), bytes_field(1, &reference(9, "x"))].concat();
        assert!(parse(&metadata, &past).unwrap_err().contains("node 9 of 5"));
        // A subclassed model: no config.
        let subclassed = [object("root", r#"{"name": "m"}"#)].concat();
        assert!(parse(&subclassed, &graph).unwrap_err().contains("subclassed"));
    }
}
