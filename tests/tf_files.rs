//! TensorFlow checkpoints (tests/fixtures/tf, made by its make_fixtures.py
//! with TensorFlow 2.15): Keras 2's `save_weights` in TensorFlow's format,
//! a Keras 2 SavedModel's variables and a `tf.train.Checkpoint` of a model
//! and its optimizer give the tables
//! of safetensors twins holding what TensorFlow's own reader returns; the
//! optimizer's state is left out, top-level scalars are columns; an index
//! without its data file, a damaged index and a data file cut short are
//! refused by name; mutated indexes never panic. A Keras 2 SavedModel's
//! `keras_metadata.pb` names its weights and gives its graph.

mod common;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf")
}

/// Each row of a table without its first column (the checkpoint).
fn rows(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| l.split_once(',').unwrap().1.to_string()).collect()
}

#[test]
fn tensorflow_checkpoints_equal_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let (good, twin) = (dir.path().join("good"), dir.path().join("twin"));
    let o = common::scan_paths(&[fixtures().join("good")], &good, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(common::scan_paths(&[fixtures().join("twin")], &twin, &[]).status.success());
    for table in ["nodes.csv", "links.csv"] {
        let (a, b) = (rows(&good.join(table)), rows(&twin.join(table)));
        let per_checkpoint = if table == "nodes.csv" { 6 } else { 3 };
        assert_eq!(a.len(), 1 + 3 * per_checkpoint, "{table}: every checkpoint, every layer");
        assert_eq!(a, b, "{table}");
    }
    let nodes = std::fs::read_to_string(good.join("nodes.csv")).unwrap();
    // The optimizer's slots (as large as the weights) and a SavedModel's
    // metrics are no layers; the BatchNorm is folded into the conv;
    // `save_counter` is a column.
    assert!(!nodes.contains("optimizer") && !nodes.contains("keras_api"), "{nodes}");
    assert!(nodes.contains("save_counter") && nodes.contains("savedmodel/variables/variables.index"), "{nodes}");
    assert!(nodes
        .lines()
        .any(|l| l.starts_with(&format!("{}", fixtures().join("good/object/ckpt-1.index").display()))));
}

#[test]
fn a_checkpoint_is_opened_by_its_prefix_as_tensorflow_names_it() {
    use cntscope::checkpoint::Checkpoint;
    let ck = Checkpoint::open(fixtures().join("good/run/cp-0002.ckpt")).unwrap();
    assert!(ck.path().ends_with("cp-0002.ckpt.index"));
    // A scan takes the prefix too, and names the checkpoint by its index.
    let dir = tempfile::tempdir().unwrap();
    let o = common::scan_paths(&[fixtures().join("good/run/cp-0002.ckpt")], &dir.path().join("out"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nodes = std::fs::read_to_string(dir.path().join("out/nodes.csv")).unwrap();
    assert!(nodes.lines().nth(1).is_some_and(|l| l.contains("cp-0002.ckpt.index,")), "{nodes}");
    let names = ck.names();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("layer_with_weights-")), "{names:?}");
}

#[test]
fn broken_tensorflow_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = common::scan_paths(&[fixtures().join("hostile")], &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = [
        ("no_data.index", "data file `"),
        ("damaged.index", "the block at 0 has a CRC-32C that does not match (a damaged file)"),
        ("cut.index", "tensor `layer_with_weights-0/bias`: bytes 432..448 lie past the end of"),
    ];
    common::assert_error_rows(&out.join("errors.csv"), "tensorflow", &rows);
}

/// In a walked folder, a `.index` with neither data files nor TensorFlow's
/// footer (a FAISS index) is no checkpoint; one with data files beside it
/// is, and a damaged footer is then an error, never passed over.
#[test]
fn only_tensorflow_indexes_are_taken_from_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("project");
    std::fs::create_dir(&folder).unwrap();
    let run = fixtures().join("good/run");
    for f in ["cp-0002.ckpt.index", "cp-0002.ckpt.data-00000-of-00001"] {
        std::fs::copy(run.join(f), folder.join(f)).unwrap();
    }
    std::fs::write(folder.join("faiss.index"), vec![7u8; 4096]).unwrap();
    let out = dir.path().join("out");
    let o = common::scan_paths(std::slice::from_ref(&folder), &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 analysed, 0 failed"));
    // Its footer cut off, with its data file beside it: said.
    let index = std::fs::read(run.join("cp-0002.ckpt.index")).unwrap();
    std::fs::write(folder.join("cp-0002.ckpt.index"), &index[..index.len() - 8]).unwrap();
    let o = common::scan_paths(&[folder], &dir.path().join("out2"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let errors = std::fs::read_to_string(dir.path().join("out2/errors.csv")).unwrap();
    assert!(errors.contains("cp-0002.ckpt.index") && !errors.contains("faiss"), "{errors}");
}

/// A Keras 2 SavedModel's variables are read with the `keras_metadata.pb`
/// beside them: Keras' names (a nested model's weights, which the
/// checkpoint keys `variables/N`, under its name; a depthwise kernel as
/// the layer's `kernel`) and the model's graph, so the tables are those of
/// the same model saved as Keras 2's legacy `.h5`, and the input's
/// strengths those TensorFlow computes. A `keras_metadata.pb` cut short is
/// said in a note, and the weights still measured under their object paths.
#[test]
fn a_saved_models_keras_metadata_names_the_weights_and_gives_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let keras_saved = fixtures().join("keras_saved");
    let (saved, h5) = (dir.path().join("saved"), dir.path().join("h5"));
    let o = common::scan_paths(&[keras_saved.join("model")], &saved, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("graph from the Keras model config"));
    assert!(common::scan_paths(&[keras_saved.join("model.h5")], &h5, &[]).status.success());
    for table in ["nodes.csv", "links.csv"] {
        assert_eq!(rows(&saved.join(table)), rows(&h5.join(table)), "{table}");
    }
    // Named by its folder, as Keras saved it, it opens the same.
    let ck = cntscope::checkpoint::Checkpoint::open(keras_saved.join("model")).unwrap();
    assert!(ck.path().ends_with("model/variables/variables.index"));
    let names = ck.names();
    for name in ["backbone/stem/kernel", "backbone/stem_bn/gamma", "dw/kernel", "head/bias"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let nodes = std::fs::read_to_string(saved.join("nodes.csv")).unwrap();
    for set in [",backbone/stem,", ",dw,", ",skip,", ",head,"] {
        assert!(nodes.contains(set), "{set} in {nodes}");
    }
    // The input's strengths, as TensorFlow computes them.
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(keras_saved.join("expected.json")).unwrap()).unwrap();
    let header: Vec<&str> = nodes.lines().next().unwrap().split(',').collect();
    let input: Vec<&str> = nodes.lines().find(|l| l.contains(",input,")).unwrap().split(',').collect();
    for column in ["strength_mean", "fluctuation"] {
        let ours: f64 = input[header.iter().position(|h| *h == column).unwrap()].parse().unwrap();
        let theirs = expected["input"][column].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 1e-12 * theirs.abs(), "{column}: {ours} vs TensorFlow's {theirs}");
    }
    // Its metadata cut short: said, and measured under the object paths.
    let damaged = dir.path().join("damaged");
    let o = common::scan_paths(&[keras_saved.join("damaged")], &damaged, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("keras_metadata.pb` was not read (damaged or cut short"), "{stderr}");
    let nodes = std::fs::read_to_string(damaged.join("nodes.csv")).unwrap();
    assert!(nodes.contains(",layer_with_weights-5:out,"), "{nodes}");
}

/// A TF1 `Saver` checkpoint named as TF-slim names its layers: `weights`
/// and `biases` read in TensorFlow's layout, each `LAYER/BatchNorm` (with
/// or without its `gamma`) folded into its layer, the global step a
/// column; each layer's links' mean as numpy computes it from the saved
/// arrays.
#[test]
fn tf_slim_checkpoints_are_read_in_tensorflows_layout() {
    let dir = tempfile::tempdir().unwrap();
    let slim = fixtures().join("slim");
    let o = common::scan_paths(std::slice::from_ref(&slim), &dir.path().join("out"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let links = std::fs::read_to_string(dir.path().join("out/links.csv")).unwrap();
    let header: Vec<&str> = links.lines().next().unwrap().split(',').collect();
    let column = |row: &[&str], name: &str| row[header.iter().position(|h| *h == name).unwrap()].to_string();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(slim.join("expected.json")).unwrap()).unwrap();
    let rows: Vec<Vec<&str>> = links.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{links}");
    for row in &rows {
        let layer = column(row, "name");
        let theirs = expected["link_mean"][&layer].as_f64().unwrap_or_else(|| panic!("{layer}"));
        let ours: f64 = column(row, "mean").parse().unwrap();
        assert!((ours - theirs).abs() <= 1e-12 * theirs.abs(), "{layer}: {ours} vs numpy's {theirs}");
        assert_eq!(column(row, "step"), "1200");
    }
    // The BatchNorms are folded (their shift is the conv's bias), none unused.
    let ck = cntscope::checkpoint::Checkpoint::open(slim.join("model.ckpt-1200")).unwrap();
    let net = cntscope::graph::Network::build(&ck, &Default::default()).unwrap();
    assert!(net.unused.iter().all(|(n, _)| !n.contains("BatchNorm")), "{:?}", net.unused);
}

#[test]
fn random_mutations_never_panic() {
    let run = fixtures().join("good/run");
    let dir = tempfile::tempdir().unwrap();
    let data = "cp-0002.ckpt.data-00000-of-00001";
    std::fs::copy(run.join(data), dir.path().join(data)).unwrap();
    let good = std::fs::read(run.join("cp-0002.ckpt.index")).unwrap();
    let index = dir.path().join("cp-0002.ckpt.index");
    let (ok, refused) = common::measure_mutations(&good, &index, 1500);
    assert!(refused > 0 && ok + refused == 1500, "{ok} measured, {refused} refused");
}

/// Mutations of a SavedModel's `keras_metadata.pb` never panic: each is
/// read, said in a note or refused.
#[test]
fn keras_metadata_mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("keras_saved/model");
    std::fs::create_dir_all(dir.path().join("variables")).unwrap();
    for f in ["variables/variables.index", "variables/variables.data-00000-of-00001"] {
        std::fs::copy(model.join(f), dir.path().join(f)).unwrap();
    }
    let good = std::fs::read(model.join("keras_metadata.pb")).unwrap();
    let (meta, index) = (dir.path().join("keras_metadata.pb"), dir.path().join("variables/variables.index"));
    let (ok, refused) = common::measure_mutations_in(&good, &meta, &index, 800);
    assert!(ok > 0 && ok + refused == 800, "{ok} measured, {refused} refused");
}
