//! PyTorch Distributed Checkpoint folders (tests/fixtures/dcp, made by its
//! make_fixtures.py with torch's own `torch.distributed.checkpoint.save`):
//! a state dict sharded over two ranks as FSDP2 shards it (along dim 0,
//! and a conv along dim 1; replicated entries stored once) with an
//! optimizer's state beside it, the same saved with each rank's tensors
//! as one safetensors file (`serialization_format=SAFETENSORS`), and a bare
//! state dict saved by one process, give the tables of the same weights as
//! safetensors; each folder is one checkpoint; Lightning's FSDP
//! checkpoints keep their columns from `meta.pt`; cut-short files are
//! refused by name; random mutations never panic.

mod common;

use std::path::{Path, PathBuf};

use cntscope::checkpoint::Checkpoint;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcp")
}

/// A table's rows cut to the columns up to `last`, without the checkpoint.
fn measures(path: &Path, last: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    r.records().map(|rec| rec.unwrap().iter().take(end).skip(1).map(String::from).collect()).collect()
}

#[test]
fn distributed_checkpoints_equal_their_safetensors_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin = dir.path().join("twin");
    assert!(common::scan_paths(&[fixtures().join("twin.safetensors")], &twin, &[]).status.success());
    for folder in ["sharded", "whole", "sharded_safetensors"] {
        let out = dir.path().join(folder);
        let o = common::scan_paths(&[fixtures().join(folder)], &out, &[]);
        assert!(o.status.success(), "{folder}: {}", String::from_utf8_lossy(&o.stderr));
        for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
            let (a, b) = (measures(&out.join(table), last), measures(&twin.join(table), last));
            assert!(a.len() >= 2, "{folder} {table}: measured");
            assert_eq!(a, b, "{folder} {table}");
        }
    }
    // The model's entry, not the optimizer's state beside it (as large as
    // the weights); the epoch a column.
    let ck = Checkpoint::open(fixtures().join("sharded")).unwrap();
    let twin = Checkpoint::open(fixtures().join("twin.safetensors")).unwrap();
    let (mut a, mut b) = (ck.names(), twin.names());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(ck.metadata().get("epoch").map(String::as_str), Some("3"));
    // `--key optim` reads the optimizer's state instead.
    let optim = Checkpoint::open_as(fixtures().join("sharded"), Some("optim")).unwrap();
    assert!(optim.names().iter().any(|n| n.ends_with("exp_avg")), "{:?}", optim.names());
}

/// Lightning's FSDP strategy (sharded state dict): the model from the
/// distributed checkpoint (its `model.` prefix off, the optimizer's state
/// left out), its epoch, global step, hyperparameters and monitored score
/// from the `meta.pt` beside it.
#[test]
fn lightning_fsdp_checkpoints_keep_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixtures().join("lightning/epoch=1-step=4.ckpt");
    let (out, twin) = (dir.path().join("out"), dir.path().join("twin"));
    let o = common::scan_paths(std::slice::from_ref(&folder), &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(common::scan_paths(&[fixtures().join("lightning/twin.safetensors")], &twin, &[]).status.success());
    for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
        assert_eq!(measures(&out.join(table), last), measures(&twin.join(table), last), "{table}");
    }
    let ck = Checkpoint::open(&folder).unwrap();
    let m = ck.metadata();
    for (column, value) in [("epoch", "2"), ("global_step", "4"), ("hyper_parameters.lr", "0.05"), ("val_acc", "1")] {
        assert_eq!(m.get(column).map(String::as_str), Some(value), "{column} in {m:?}");
    }
    assert!(ck.names().iter().all(|n| !n.starts_with("model.") && !n.contains("optimizer")), "{:?}", ck.names());
    // A `meta.pt` that cannot be read: said, and the model still measured.
    let copy = dir.path().join("copy.ckpt");
    std::fs::create_dir(&copy).unwrap();
    for f in [".metadata", "__0_0.distcp"] {
        std::fs::copy(folder.join(f), copy.join(f)).unwrap();
    }
    std::fs::write(copy.join("meta.pt"), b"not an archive").unwrap();
    let ck = Checkpoint::open(&copy).unwrap();
    assert!(ck.metadata().get("epoch").is_none());
    assert!(ck.notes().iter().any(|n| n.contains("meta.pt` was not read")), "{:?}", ck.notes());
}

#[test]
fn cut_short_distributed_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = common::scan_paths(&[fixtures().join("hostile")], &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = [
        ("cut_metadata", "distributed checkpoint: pickle byte"),
        ("cut_data", "lie past the end of its data file (cut short?)"),
    ];
    common::assert_error_rows(&out.join("errors.csv"), "torch", &rows);
}

#[test]
fn random_mutations_never_panic() {
    for (folder, file) in
        [("sharded", ".metadata"), ("sharded", "__1_0.distcp"), ("sharded_safetensors", "__1_0.distcp")]
    {
        let dir = tempfile::tempdir().unwrap();
        for f in [".metadata", "__0_0.distcp", "__1_0.distcp"] {
            std::fs::copy(fixtures().join(folder).join(f), dir.path().join(f)).unwrap();
        }
        let good = std::fs::read(fixtures().join(folder).join(file)).unwrap();
        let (ok, refused) = common::measure_mutations_in(&good, &dir.path().join(file), dir.path(), 600);
        assert!(ok + refused == 600 && refused > 0, "{folder}/{file}: {ok} measured, {refused} refused");
    }
}
