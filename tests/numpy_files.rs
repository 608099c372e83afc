//! NumPy checkpoints (tests/fixtures/numpy, made by its make_fixtures.py):
//! the paper's own `np.save` of Keras weight lists (object arrays, read as
//! a keras-layout chain, settings from the file names with
//! `--name-pattern cnt-dnns`), `np.savez` and `np.savez_compressed` of
//! named arrays (one in Fortran order) give the tables of their
//! safetensors twins; compressed archives that are damaged, declare sizes
//! they do not hold or use another method, a single array and a pickle
//! that would run code are refused; mutated files never panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpy")
}

fn scan(dir: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["scan", dir.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn rows(path: &Path, last: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    r.records().map(|rec| rec.unwrap().iter().take(end).skip(1).map(String::from).collect()).collect()
}

#[test]
fn numpy_files_equal_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let (good, twin) = (dir.path().join("good"), dir.path().join("twin"));
    let o = scan(&fixtures().join("good"), &good, &["--name-pattern", "cnt-dnns"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(scan(&fixtures().join("twin"), &twin, &[]).status.success());
    for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
        let (a, b) = (rows(&good.join(table), last), rows(&twin.join(table), last));
        assert!(a.len() >= 12, "{table}: every file measured");
        assert_eq!(a, b, "{table}");
    }
    let nodes = std::fs::read_to_string(good.join("nodes.csv")).unwrap();
    let header: Vec<&str> = nodes.lines().next().unwrap().split(',').collect();
    let acc = header.iter().position(|h| *h == "accuracy").expect("accuracy from the file names");
    assert!(nodes.lines().any(|l| l.split(',').nth(acc) == Some("0.9012")), "{nodes}");
    // The weight lists are a keras-layout chain: 12 -> 8 -> 5 -> 3.
    assert!(nodes.lines().filter(|l| l.contains("seed-1_")).count() == 4, "{nodes}");
}

#[test]
fn numpy_files_that_are_not_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = scan(&fixtures().join("hostile"), &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!fixtures().join("PWNED").exists());
    let rows = [
        ("damaged_crc.npz", "its inflated bytes have CRC-32 2a3b4371, the directory records 12345678"),
        ("declares_more.npz", "more than 64 times as many plus 64 MB, refused"),
        ("declares_less.npz", "`net.0.weight.npy` does not inflate to the 100 bytes its directory entry declares"),
        ("bzip2.npz", "compression method 12 is not read (only stored and deflated)"),
        ("single.npy", "not a checkpoint of named weights"),
        ("system.npy", "item 0 of the weight list is a `posix.system` (read as inert data, nothing of it run)"),
    ];
    common::assert_error_rows(&out.join("errors.csv"), "numpy", &rows);
}

#[test]
fn random_mutations_never_panic() {
    // Stored and deflated archives, and a pickled weight list.
    let list = "MNIST_fc_nlayers-5_init-random-normal_support-0.05_seed-1_realaccuracy-0.9012_binaccuracy-0.9000.npy";
    for (file, name) in [("named.npz", "m.npz"), ("compressed.npz", "m.npz"), (list, "m.npy")] {
        let good = std::fs::read(fixtures().join("good").join(file)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ok, refused) = common::measure_mutations(&good, &dir.path().join(name), 1500);
        assert!(refused > 0 && ok + refused == 1500, "{file}: {ok} measured, {refused} refused");
    }
}
