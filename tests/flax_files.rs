//! Flax checkpoints written by Flax itself (tests/fixtures/flax, made by its
//! make_fixtures.py): a model's variables, a `TrainState` with its
//! optimizer state, `save_checkpoint`'s extensionless file and Hugging
//! Face's bare parameter tree give exactly the tables of the same arrays
//! saved as safetensors; both engines give the per-node strengths JAX
//! itself computes, BatchNorm folded with Flax's epsilon; random byte
//! mutations never panic; Orbax's directories are refused by name.

mod common;

use std::path::{Path, PathBuf};

use cntscope::checkpoint::Checkpoint;
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::Spec;
use common::scan_paths as scan;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flax")
}

/// A table's header and rows without the checkpoint's name, up to column
/// `last`.
fn measures(path: &Path, last: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    (header, r.records().map(|rec| rec.unwrap().iter().take(end).skip(1).map(String::from).collect()).collect())
}

/// The CNN files and their twins, with the spec (the twins, safetensors
/// in Keras' layout, are given Flax's epsilon by the spec), and the MLP
/// discovered: node and link tables row by row. The TrainState's step is
/// a column; its optimizer's arrays are not weights.
#[test]
fn flax_files_equal_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(fixtures().join("cnn.toml")).unwrap();
    let twin_spec = dir.path().join("twin.toml");
    std::fs::write(&twin_spec, format!("eps = 1e-5\n{spec}")).unwrap();
    let cnn_spec = fixtures().join("cnn.toml");
    let cases = [
        (vec!["variables.msgpack", "train_state.msgpack", "checkpoint_7"], cnn_spec.to_str().unwrap()),
        (vec!["flax_model.msgpack"], ""),
    ];
    for (i, (files, spec)) in cases.iter().enumerate() {
        let good: Vec<PathBuf> = files.iter().map(|f| fixtures().join("good").join(f)).collect();
        let twins: Vec<PathBuf> = files
            .iter()
            .map(|f| fixtures().join("twin").join(format!("{}.safetensors", f.trim_end_matches(".msgpack"))))
            .collect();
        let (a, b) = (dir.path().join(format!("good{i}")), dir.path().join(format!("twin{i}")));
        let (extra, twin_extra): (Vec<&str>, Vec<&str>) = match spec.is_empty() {
            true => (vec![], vec![]),
            false => (vec!["--spec", spec], vec!["--spec", twin_spec.to_str().unwrap()]),
        };
        let o = scan(&good, &a, &extra);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(scan(&twins, &b, &twin_extra).status.code(), Some(0));
        for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
            let (_, x) = measures(&a.join(table), last);
            let (_, y) = measures(&b.join(table), last);
            assert!(x.len() >= 2 * files.len(), "{table}: every file measured");
            assert_eq!(x, y, "{table} of {files:?}");
        }
    }
    let (header, _) = measures(&dir.path().join("good0/nodes.csv"), "graph");
    let rows = std::fs::read_to_string(dir.path().join("good0/nodes.csv")).unwrap();
    let step = header.iter().position(|h| h == "step").expect("a step column");
    let state = rows.lines().find(|l| l.contains("train_state.msgpack")).unwrap();
    assert_eq!(state.split(',').nth(step), Some("1"), "{state}");
}

/// Every node set's strengths are those JAX computed for the model
/// (`expected/`), on both engines: SAME convs (the odd padded cell after,
/// at stride 2), a max pool, Flax's (y, x, c) flatten into the dense
/// head, and each BatchNorm folded with Flax's epsilon (1e-5), which the
/// file does not say and the graph takes from the format (Keras' 1e-3
/// would be off by about 1e-3).
#[test]
fn strengths_match_jax() {
    let ck = Checkpoint::open(fixtures().join("good/variables.msgpack")).unwrap();
    let expected = Checkpoint::open(fixtures().join("expected/variables.msgpack.safetensors")).unwrap();
    let spec = Spec::load(&fixtures().join("cnn.toml")).unwrap();
    let net = Network::build(&ck, &GraphOptions { spec: Some(spec), ..GraphOptions::default() }).unwrap();
    common::assert_strengths_match("variables.msgpack", &net, &ck, &expected);
}

/// Without a spec, each BatchNorm (Flax's `scale`, `bias`, `mean`, `var`
/// in two collections) is found and folded into the conv of its number,
/// and the optimizer's arrays are no part of the model.
#[test]
fn discovery_folds_flax_batchnorms() {
    for file in ["variables.msgpack", "train_state.msgpack"] {
        let ck = Checkpoint::open(fixtures().join("good").join(file)).unwrap();
        assert!(ck.names().iter().all(|n| !n.contains("opt_state") && !n.starts_with("params")), "{:?}", ck.names());
        let opts = GraphOptions { input: Some(vec![1, 8, 8]), ..GraphOptions::default() };
        let net = Network::build(&ck, &opts).unwrap();
        let folded: Vec<(&str, &str)> =
            net.layers.iter().filter_map(|l| Some((l.name.as_str(), l.norm.as_ref()?.prefix.as_str()))).collect();
        assert_eq!(folded, [("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")], "{file}");
        assert!(net.notes.iter().any(|n| n.starts_with("BatchNorm epsilon assumed 1e-5")), "{:?}", net.notes);
        assert!(net.unused.is_empty(), "{file}: {:?}", net.unused);
    }
}

#[test]
fn random_mutations_never_panic() {
    for file in ["variables.msgpack", "train_state.msgpack"] {
        let good = std::fs::read(fixtures().join("good").join(file)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ok, refused) = common::measure_mutations(&good, &dir.path().join("m.msgpack"), 1500);
        assert!(refused > 0 && ok + refused == 1500, "{file}: {ok} measured, {refused} refused");
    }
}

/// Orbax's checkpoint directories, as Orbax writes them (`save_checkpoint`
/// by default, `StandardCheckpointer`, a `CheckpointManager`'s step): each
/// is one checkpoint, never walked into, refused as a format not read
/// with the recipe that makes it a .msgpack (naming a manager step's
/// tree folder); the rest of the scan is measured. A folder that is no
/// checkpoint of any kind says what it lacks.
#[test]
fn orbax_directories_are_named_and_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = scan(&[fixtures().join("orbax"), fixtures().join("good/flax_model.msgpack")], &out, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
    assert_eq!(errors.lines().count(), 4, "{errors}");
    common::assert_error_rows(
        &out.join("errors.csv"),
        "unknown_format",
        &[
            ("orbax/checkpoint_7,", "an Orbax checkpoint directory"),
            ("orbax/standard,", "StandardCheckpointer().restore(p)"),
            ("orbax/manager/1,", "step of a CheckpointManager, its trees in `default/`"),
        ],
    );
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    assert!(nodes.lines().skip(1).all(|l| l.contains("flax_model.msgpack")) && nodes.lines().count() > 1, "{nodes}");

    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let Err(e) = Checkpoint::open(&plain) else { panic!("an empty folder opened") };
    assert_eq!(e.kind(), "unknown_format", "{e}");
    assert!(e.to_string().contains("a directory with neither"), "{e}");
}
