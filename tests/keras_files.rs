//! Keras weight files written by Keras itself (tests/fixtures/keras, made by
//! its make_fixtures.py): Keras 3's `.keras` and `.weights.h5`, the legacy
//! HDF5 of `model.save("m.h5")`, and tf.keras 2's `save_weights` layout
//! give exactly the tables of the same weights saved as safetensors, their
//! tensors named as the keras layout names them and in the model's order
//! (which HDF5's groups, sorted by name, do not keep); a model's graph is
//! read from the config the file keeps, and both engines give the per-node
//! strengths Keras itself computes (`expected/`); chunked, compressed
//! and `libver="latest"` files and truncated ones are refused by name;
//! random byte mutations never panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cntscope::checkpoint::Checkpoint;
use cntscope::graph::{GraphOptions, Network};
use common::scan_paths as scan;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras")
}

/// A table's rows without the checkpoint's name, up to column `last`.
fn measures(path: &Path, last: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    r.records().map(|rec| rec.unwrap().iter().take(end).skip(1).map(String::from).collect()).collect()
}

/// Scans each Keras file and its twin with the same options and compares
/// node and link tables row by row.
fn assert_same_as_twins(files: &[&str], extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (good, twin) = (dir.path().join("good"), dir.path().join("twin"));
    let keras: Vec<PathBuf> = files.iter().map(|f| fixtures().join("good").join(f)).collect();
    let twins: Vec<PathBuf> = files.iter().map(|f| fixtures().join("twin").join(format!("{f}.safetensors"))).collect();
    let o = scan(&keras, &good, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = scan(&twins, &twin, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // (The `graph` column aside: a Keras file's graph may come from its
    // model config, its twin's is discovered.)
    for (table, last) in [("nodes.csv", "non_finite"), ("links.csv", "non_finite")] {
        let (a, b) = (measures(&good.join(table), last), measures(&twin.join(table), last));
        assert_eq!(a.len(), b.len(), "{table}: rows");
        assert!(a.len() >= 2 * files.len(), "{table}: every file measured");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "{table} row {i} ({files:?})");
        }
    }
}

#[test]
fn keras_files_equal_their_safetensors_twins() {
    let spec = |name: &str| fixtures().join("specs").join(name).to_str().unwrap().to_string();
    assert_same_as_twins(&["cnn.keras", "cnn.weights.h5", "cnn.h5"], &["--spec", &spec("cnn.toml")]);
    // A chain of 20 dense layers, and a Sequential nested in a functional
    // model (discovered, and read from its config).
    assert_same_as_twins(&["deep.h5", "deep.weights.h5", "nested.keras", "tfkeras2.h5"], &["--input", "1,8,8"]);
}

/// The graph read from each model's config: every node set's strengths
/// are those Keras itself computed (conv of an all-ones input, autograd
/// or JAX's `vjp` for the out-strengths; `make_fixtures.py`), on both
/// engines, through "same" paddings with the odd cell after, depthwise and
/// transposed convs, pools, concatenations, residual sums (scaled ones
/// too), nested models and ConvNeXt's blocks.
#[test]
fn strengths_from_the_models_config_match_keras() {
    let mut files = 0;
    for entry in std::fs::read_dir(fixtures().join("expected")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().strip_suffix(".safetensors").unwrap().to_string();
        let expected = Checkpoint::open(&path).unwrap();
        let ck = Checkpoint::open(fixtures().join("good").join(&file)).unwrap();
        let net = Network::build(&ck, &GraphOptions::default()).unwrap();
        assert!(
            net.notes.iter().any(|n| n.starts_with("graph from the Keras model config")),
            "{file}: {:?}",
            net.notes
        );
        common::assert_strengths_match(&file, &net, &ck, &expected);
        files += 1;
    }
    assert_eq!(files, 23);
}

/// Where Keras' backends compute a layer otherwise (a 3x3 stride-2
/// "same" Conv2DTranspose before Keras 3.15, an unevenly padded "same"
/// average pool), the graph follows what the file says saved it, and says
/// what it assumed where the file does not say.
#[test]
fn backend_differences_are_read_as_the_file_says_or_noted() {
    let notes = |f: &str| {
        let ck = Checkpoint::open(fixtures().join("good").join(f)).unwrap();
        let net = Network::build(&ck, &GraphOptions::default()).unwrap();
        let kinds: Vec<String> = net.layers.iter().map(|l| format!("{} {:?}", l.name, l.kind)).collect();
        (net.notes, kinds)
    };
    let noted = |notes: &[String], start: &str| notes.iter().any(|n| n.starts_with(start));
    // Keras 3.14 on torch (the file says): torch's crop, 1 before, 0 after.
    let (h5, kinds) = notes("backends.h5");
    assert!(!noted(&h5, "Conv2DTranspose"), "{h5:?}");
    assert!(kinds[0].contains("padding: [1, 1], padding_after: [0, 0]"), "{kinds:?}");
    // Keras 3.15 (every backend alike): TensorFlow's crop, 0 before, 1 after.
    let (new, kinds) = notes("backends.keras");
    assert!(!noted(&new, "Conv2DTranspose"), "{new:?}");
    assert!(kinds[0].contains("padding: [0, 0], padding_after: [1, 1]"), "{kinds:?}");
    assert!(noted(&new, "average pool `avg`"), "{new:?}");
    // Keras 3.14, backend unknown: TensorFlow's crop, and a note.
    let (old, _) = notes("backends_old.keras");
    let note = old.iter().find(|n| n.starts_with("Conv2DTranspose `up`")).expect("a note");
    assert!(note.contains("0x0 before, 1x1 after") && note.contains("does not say which backend"), "{note}");
}

/// A `.keras` file given as the spec gives its graph to checkpoints that
/// keep none (`.weights.h5`, the safetensors twin): the same tables as the
/// `.keras` file read alone. A `.weights.h5` cannot serve as a spec.
#[test]
fn a_keras_file_is_the_spec_of_checkpoints_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = |f: &str| fixtures().join("good").join(f);
    let spec = good("branchy.keras");
    let spec = spec.to_str().unwrap();
    let runs = [
        (vec![good("branchy.keras")], vec![]),
        (vec![good("branchy.weights.h5")], vec!["--spec", spec]),
        (vec![fixtures().join("twin/branchy.keras.safetensors")], vec!["--spec", spec]),
    ];
    let mut tables = Vec::new();
    for (i, (paths, extra)) in runs.iter().enumerate() {
        let out = dir.path().join(i.to_string());
        let o = scan(paths, &out, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        tables.push((measures(&out.join("nodes.csv"), "graph"), measures(&out.join("links.csv"), "non_finite")));
    }
    assert!(tables[0].0.len() == 6 && tables[0].0.iter().all(|row| row.last().unwrap() == "spec"), "{:?}", tables[0]);
    assert_eq!(tables[1], tables[0]);
    assert_eq!(tables[2], tables[0]);
    let out = dir.path().join("bad");
    let o = scan(&[good("branchy.keras")], &out, &["--spec", good("branchy.weights.h5").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("keeps no model config"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn every_tensor_equals_its_twin() {
    let mut files = 0;
    for entry in std::fs::read_dir(fixtures().join("good")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let ck = Checkpoint::open(&path).unwrap();
        let twin = Checkpoint::open(fixtures().join("twin").join(format!("{name}.safetensors"))).unwrap();
        let (mut a, mut b) = (ck.names(), twin.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: names");
        for n in a {
            let (x, y) = (ck.tensor(n).unwrap(), twin.tensor(n).unwrap());
            assert_eq!(x.shape, y.shape, "{name}: {n}");
            assert_eq!(x.to_f64(), y.to_f64(), "{name}: {n}");
        }
        files += 1;
    }
    assert_eq!(files, 32);
}

/// Each BatchNorm is folded into the layer whose output it normalises (as
/// the model's own graph says, `norm_pairs.json`), through residual
/// branches and depthwise convs, by names where they pair and by order
/// otherwise, with a note saying so.
#[test]
fn norms_fold_into_the_layer_they_follow() {
    let pairs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("norm_pairs.json")).unwrap()).unwrap();
    for (file, norms) in pairs.as_object().unwrap() {
        let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .args(["inspect", fixtures().join("good").join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        for (bn, layer) in norms.as_object().unwrap() {
            let layer = layer.as_str().unwrap();
            let line = stdout
                .lines()
                .find(|l| l.starts_with("  L") && l.split_whitespace().nth(1) == Some(layer))
                .unwrap_or_else(|| panic!("{file}: no layer {layer}:\n{stdout}"));
            assert!(line.contains(&format!("folded batchnorm {bn} ")), "{file}: {bn} not in {line}");
        }
        // Where the file keeps its model's config, the graph is read from
        // it; a `.weights.h5` keeps none, and discovery pairs them.
        let stderr = String::from_utf8_lossy(&o.stderr);
        let from_config = stderr.contains("graph from the Keras model config");
        assert_eq!(from_config, !file.ends_with(".weights.h5"), "{file}: {stderr}");
        let by_order = stderr.contains("BatchNorms placed by their order");
        assert_eq!(by_order, file == "branchy.weights.h5", "{file}: the note on pairing by order");
    }
}

#[test]
fn tensors_come_named_and_in_the_models_order() {
    let names = |file: &str| -> Vec<String> {
        let ck = Checkpoint::open(fixtures().join("good").join(file)).unwrap();
        ck.names().into_iter().map(String::from).collect()
    };
    let bn = ["gamma", "beta", "moving_mean", "moving_variance"];
    // The legacy file writes its layers sorted by name (batch_normalization
    // first); `layer_names` keeps the model's order.
    let mut legacy = vec!["c1/kernel".to_string(), "c1/bias".into()];
    legacy.extend(bn.iter().map(|v| format!("batch_normalization/{v}")));
    legacy.extend(["dense/kernel".into(), "dense/bias".into()]);
    assert_eq!(names("cnn.h5"), legacy);
    assert_eq!(names("cnn.weights.h5"), legacy);
    assert_eq!(names("cnn.keras"), legacy);
    // dense_1 .. dense_20, whose names sort as dense_1, dense_10, dense_11, ...
    let deep = names("deep.h5");
    assert_eq!(deep.len(), 40);
    let layers: Vec<usize> =
        deep.iter().step_by(2).map(|n| n["dense_".len()..n.find('/').unwrap()].parse().unwrap()).collect();
    assert!(layers.windows(2).all(|w| w[1] == w[0] + 1), "{deep:?}");
    let nested = names("nested.keras");
    assert!(nested[0].starts_with("sequential") && nested[0].ends_with("/kernel"), "{nested:?}");
    assert_eq!(nested[0].split('/').count(), 3, "{nested:?}");
    assert!(names("tfkeras2.h5").iter().all(|n| !n.ends_with(":0")));
}

#[test]
fn files_keras_cannot_be_read_here_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = scan(&[fixtures().join("hostile")], &out, &[]);
    assert_eq!(o.status.code(), Some(2), "nothing could be analysed");
    let rows = [
        ("chunked.h5", "`c1/c1/kernel:0`: compressed or filtered"),
        ("deflated.keras", "`model.weights.h5` is compressed (method 8)"),
        ("latest.h5", "superblock version 3 (written with libver=\"\"latest\"\")"),
        ("truncated.h5", "beyond the end of the file"),
    ];
    common::assert_error_rows(&out.join("errors.csv"), "keras", &rows);
}

#[test]
fn random_mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["cnn.h5", "cnn.keras", "deep.weights.h5"] {
        let good = std::fs::read(fixtures().join("good").join(file)).unwrap();
        let (ok, refused) = common::measure_mutations(&good, &dir.path().join(file), 1000);
        assert!(refused > 0 && ok > 0 && ok + refused == 1000, "{file}: {ok} measured, {refused} refused");
    }
}
