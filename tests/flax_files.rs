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
/// in Keras' layout, are given Flax's epsilon by the spec), and the MLPs
/// discovered: node and link tables row by row, each file scanned beside
/// its twin. Orbax's directories of the same trees (`orbax/`: their
/// arrays decompressed from an OCDBT database, one stored out of line,
/// one in a grid of chunks, in Zarr v2 and in Zarr v3's shards, and a
/// folder of files per array, without OCDBT) give the same tables. The TrainState's step is
/// a column; its optimizer's arrays are not weights.
#[test]
fn flax_files_equal_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(fixtures().join("cnn.toml")).unwrap();
    let twin_spec = dir.path().join("twin.toml");
    std::fs::write(&twin_spec, format!("eps = 1e-5\n{spec}")).unwrap();
    let cnn_spec = fixtures().join("cnn.toml");
    let cnn =
        ["good/variables.msgpack", "good/train_state.msgpack", "good/checkpoint_7", "orbax/standard", "orbax/nnx"];
    let cnn_twins = ["variables", "train_state", "checkpoint_7", "variables", "variables"];
    let mlp = [
        "good/flax_model.msgpack",
        "good/chunked.msgpack",
        "orbax/manager/1",
        "orbax/wide",
        "orbax/wide_zarr3",
        "orbax/wide_files",
    ];
    let cases = cnn
        .iter()
        .zip(cnn_twins)
        .chain([("orbax/checkpoint_7", "checkpoint_7")].iter().map(|(a, b)| (a, *b)))
        .map(|(f, t)| (*f, t, cnn_spec.to_str().unwrap()))
        .chain(
            mlp.iter()
                .zip(["flax_model", "flax_model", "flax_model", "wide", "wide", "wide"])
                .map(|(f, t)| (*f, t, "")),
        );
    for (i, (file, twin, spec)) in cases.enumerate() {
        let good = fixtures().join(file);
        let twin = fixtures().join("twin").join(format!("{twin}.safetensors"));
        let (a, b) = (dir.path().join(format!("good{i}")), dir.path().join(format!("twin{i}")));
        let (extra, twin_extra): (Vec<&str>, Vec<&str>) = match spec.is_empty() {
            true => (vec![], vec![]),
            false => (vec!["--spec", spec], vec!["--spec", twin_spec.to_str().unwrap()]),
        };
        // Orbax's arrays decompressed side by side however small (the
        // mutations below take the one-thread path).
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cntscope"))
            .arg("scan")
            .arg(&good)
            .args(["-o", a.to_str().unwrap()])
            .args(&extra)
            .env("CNTSCOPE_TEST_PARALLEL_BYTES", "0")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(scan(&[twin], &b, &twin_extra).status.code(), Some(0));
        for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
            let (_, x) = measures(&a.join(table), last);
            let (_, y) = measures(&b.join(table), last);
            assert!(x.len() >= 2, "{table} of {file}: measured");
            assert_eq!(x, y, "{table} of {file}");
        }
        // The TrainState's step, in the msgpack file and in Orbax's tree.
        if file.contains("train_state") || file == "orbax/checkpoint_7" {
            let (header, _) = measures(&a.join("nodes.csv"), "graph");
            let rows = std::fs::read_to_string(a.join("nodes.csv")).unwrap();
            let step = header.iter().position(|h| h == "step").expect("a step column");
            let row = rows.lines().nth(1).unwrap();
            assert_eq!(row.split(',').nth(step), Some("1"), "{file}: {row}");
        }
    }
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
    for file in ["variables.msgpack", "train_state.msgpack", "chunked.msgpack"] {
        let good = std::fs::read(fixtures().join("good").join(file)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ok, refused) = common::measure_mutations(&good, &dir.path().join("m.msgpack"), 1500);
        assert!(refused > 0 && ok + refused == 1500, "{file}: {ok} measured, {refused} refused");
    }
}

/// An array Flax stored in chunks whose shape does not fit its chunks is
/// refused, saying so, not read short or past its end.
#[test]
fn chunks_that_do_not_fit_their_shape_are_refused() {
    let good = std::fs::read(fixtures().join("good/chunked.msgpack")).unwrap();
    // fc1/kernel's shape map {"0": 4, "1": 7}, as msgpack fixstr and fixint.
    let shape = b"\xa10\x04\xa11\x07";
    let at = good.windows(shape.len()).position(|w| w == shape).expect("the kernel's shape");
    let mut bad = good.clone();
    bad[at + shape.len() - 1] = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.msgpack");
    std::fs::write(&path, &bad).unwrap();
    let e = cntscope::checkpoint::Checkpoint::open(&path).err().expect("refused").to_string();
    assert!(e.contains("array `fc1/kernel` stored in chunks: shape [4, 8] does not fit its chunks' 112 bytes"), "{e}");
}

/// Orbax's checkpoint directories are each one checkpoint, never walked
/// into (their data files are not checkpoints), a manager step's number,
/// metrics and custom metadata its columns; a folder that is no checkpoint
/// of any kind says what it lacks.
#[test]
fn orbax_directories_are_one_checkpoint_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = scan(&[fixtures().join("orbax")], &out, &[]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    let mut names: Vec<&str> = nodes.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    names.dedup();
    let names: Vec<&str> = names.iter().map(|n| n.rsplit("orbax/").next().unwrap()).collect();
    assert_eq!(names, ["checkpoint_7", "manager/1", "nnx", "standard", "wide", "wide_files", "wide_zarr3"]);
    // Flax NNX's state: each variable by its name (not its `value`), the
    // Dropout's RNG stream's key and count left out.
    let nnx = Checkpoint::open(fixtures().join("orbax/nnx")).unwrap();
    let twin = Checkpoint::open(fixtures().join("twin/variables.safetensors")).unwrap();
    let (mut a, mut b) = (nnx.names(), twin.names());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert!(nnx.metadata().is_empty(), "{:?}", nnx.metadata());
    // A manager step's metrics and custom metadata are its columns.
    let mut r = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name}: {header:?}"));
    let step = r.records().map(|r| r.unwrap()).find(|r| r[0].ends_with("manager/1")).unwrap();
    for (name, value) in [("accuracy", "0.875"), ("loss", "0.25"), ("seed", "2"), ("init", "lecun"), ("step", "1")] {
        assert_eq!(&step[col(name)], value, "{name}");
    }

    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let Err(e) = Checkpoint::open(&plain) else { panic!("an empty folder opened") };
    assert_eq!(e.kind(), "unknown_format", "{e}");
    assert!(e.to_string().contains("a directory with neither"), "{e}");
}

/// Every file of an Orbax checkpoint (its manifests, B+tree nodes and the
/// data file of out-of-line chunks; Zarr v2 and v3; or, without OCDBT,
/// its arrays' metadata and chunk files) mutated in turn, 100
/// times each: the CRC-32Cs and the bounds of every length catch what they
/// can, and nothing panics.
#[test]
fn orbax_mutations_never_panic() {
    for name in ["wide", "wide_zarr3", "wide_files"] {
        let src = fixtures().join("orbax").join(name);
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(name);
        let mut files = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&src).unwrap().to_path_buf();
                std::fs::create_dir_all(copy.join(&rel).parent().unwrap()).unwrap();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    std::fs::copy(&p, copy.join(&rel)).unwrap();
                    files.push(rel);
                }
            }
        }
        let stored = files.iter().filter(|f| f.starts_with("ocdbt.process_0/d")).count();
        assert!(name == "wide_files" || stored >= 2, "{files:?}");
        let mut refused = 0;
        for rel in &files {
            let good = std::fs::read(src.join(rel)).unwrap();
            refused += common::measure_mutations_in(&good, &copy.join(rel), &copy, 100).1;
        }
        assert!(refused > 0, "{name}");
        assert!(Checkpoint::open(&copy).is_ok(), "{name}: the restored copy reads");
    }
}

/// A manager step whose metrics file is a FIFO (never a regular file an
/// Orbax save writes) is read without it: opening the FIFO would hang
/// the scan.
#[test]
fn an_orbax_step_with_a_fifo_for_its_metrics_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let step = dir.path().join("7");
    let copy = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap();
        assert!(status.success());
    };
    copy(&fixtures().join("orbax/manager/1"), &step);
    let metrics = step.join("metrics/metrics");
    std::fs::remove_file(&metrics).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&metrics).status().unwrap().success());
    let ck = Checkpoint::open(&step).unwrap();
    let meta = ck.metadata();
    assert_eq!(meta.get("step").map(String::as_str), Some("7"), "{meta:?}");
    assert_eq!(meta.get("seed").map(String::as_str), Some("2"), "{meta:?}");
    assert!(!meta.contains_key("accuracy"), "{meta:?}");
}
