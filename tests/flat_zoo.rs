//! Flat-matrix zoos (tests/fixtures/flat, made by its make_flat_zoo.py in
//! the Small CNN Zoo's own format): one checkpoint per matrix row, measured
//! as the same tensors saved as safetensors are, its metrics row as its
//! metadata; every kind of damage to the matrix, layout or metrics is an
//! error row naming the file and what is wrong, and the rest of the
//! collection is still analysed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flat")
}

fn spec() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/specs/small_cnn_zoo.toml").display().to_string()
}

fn scan(paths: &[&Path], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .arg("scan")
        .args(paths)
        .args(["-o", out.to_str().unwrap(), "--spec", &spec()])
        .output()
        .unwrap()
}

/// `table`'s header and rows.
fn read(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    (header, r.records().map(|rec| rec.unwrap().iter().map(String::from).collect()).collect())
}

/// Rows without the checkpoint cell, up to column `last`.
fn measures(path: &Path, last: &str) -> Vec<Vec<String>> {
    let (header, rows) = read(path);
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    rows.into_iter().map(|r| r[1..end].to_vec()).collect()
}

#[test]
fn rows_are_checkpoints_measured_as_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let (zoo, twins) = (dir.path().join("zoo"), dir.path().join("twins"));
    let o = scan(&[&fixtures().join("zoo")], &zoo);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("6 analysed, 0 failed"));
    assert!(scan(&[&fixtures().join("twins")], &twins).status.success());
    for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
        let (a, b) = (measures(&zoo.join(table), last), measures(&twins.join(table), last));
        // Six node sets, four weighted layers (the pool has no links row).
        assert_eq!(a.len(), if table == "nodes.csv" { 36 } else { 24 }, "{table}");
        assert_eq!(a, b, "{table}");
    }
    // Each row is named for the matrix and its row, with its metrics row.
    let (header, rows) = read(&zoo.join("nodes.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name}"));
    let (ck, acc, step, run, row) = (col("checkpoint"), col("test_accuracy"), col("step"), col("modeldir"), col("row"));
    let last = rows.iter().rev().find(|r| r[1] == "0").unwrap();
    assert!(last[ck].ends_with("zoo/weights.npy#row=5"), "{}", last[ck]);
    assert_eq!(
        (last[acc].as_str(), last[step].as_str(), last[run].as_str(), last[row].as_str()),
        ("0.5", "2000", "run-1", "5")
    );
    assert!(header.iter().any(|h| h == "config.init_std"));
}

#[test]
fn one_row_named_as_a_scan_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let row = fixtures().join("zoo/weights.npy#row=4");
    let o = scan(&[&row], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, rows) = read(&dir.path().join("nodes.csv"));
    assert_eq!(rows.len(), 6);
    let o = scan(&[&fixtures().join("zoo/weights.npy#row=6")], &dir.path().join("past"));
    assert_eq!(o.status.code(), Some(2), "row past the end");
    let (_, errors) = read(&dir.path().join("past/errors.csv"));
    assert!(errors[0][3].contains("row 6 asked for; the matrix has 6 rows"), "{:?}", errors[0]);
}

/// A copy of the fixture zoo with one file changed by `damage`.
fn damaged(root: &Path, name: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let zoo = root.join(name);
    std::fs::create_dir_all(&zoo).unwrap();
    for f in ["weights.npy", "layout.csv", "metrics.csv.gz"] {
        std::fs::copy(fixtures().join("zoo").join(f), zoo.join(f)).unwrap();
    }
    damage(&zoo);
    zoo
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Replaces text in a `.npy` header by text of the same length.
fn header_edit(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(path).unwrap();
    let at = b.windows(from.len()).position(|w| w == from.as_bytes()).expect("in the header");
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(path, b).unwrap();
}

fn gzip(text: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text).unwrap();
    e.finish().unwrap()
}

#[test]
fn damage_is_an_error_row_and_the_rest_is_analysed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    let npy = |z: &Path| z.join("weights.npy");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            damaged(&root, "past_end", |z| {
                edit(&z.join("layout.csv"), |t| t.replace("4810,4970,160", "4810,4971,161"))
            }),
            "outside the matrix's 0..4970",
        ),
        (
            damaged(&root, "shape", |z| edit(&z.join("layout.csv"), |t| t.replace("\"(16, 10)\"", "\"(16, 11)\""))),
            "has shape [16, 11] but spans 160 columns",
        ),
        (
            damaged(&root, "overlap", |z| edit(&z.join("layout.csv"), |t| t.replace(",0,16,16,", ",8,24,16,"))),
            "overlap",
        ),
        (
            damaged(&root, "columns", |z| edit(&z.join("layout.csv"), |t| t.replace("start_idx", "first"))),
            "no `start_idx` column",
        ),
        (
            damaged(&root, "truncated", |z| {
                let b = std::fs::read(npy(z)).unwrap();
                std::fs::write(npy(z), &b[..b.len() - 100]).unwrap();
            }),
            "need more bytes than the file's",
        ),
        (
            damaged(&root, "fortran", |z| {
                header_edit(&npy(z), "'fortran_order': False", "'fortran_order': True ");
            }),
            "Fortran-ordered",
        ),
        (
            damaged(&root, "vector", |z| {
                header_edit(&npy(z), "(6, 4970)", "(29820,) ");
            }),
            "one row per network",
        ),
        (
            damaged(&root, "few_metrics", |z| {
                let text = "config.dataset,step\nmnist,0\n";
                std::fs::write(z.join("metrics.csv.gz"), gzip(text.as_bytes())).unwrap();
            }),
            "1 rows for the matrix's 6",
        ),
        (
            damaged(&root, "bad_gzip", |z| std::fs::write(z.join("metrics.csv.gz"), b"\x1f\x8b\x08garbage").unwrap()),
            "gzip",
        ),
        (
            damaged(&root, "bomb", |z| {
                let mut text = b"config.dataset,step\n".to_vec();
                text.extend(std::iter::repeat_n(b' ', 8 << 20));
                std::fs::write(z.join("metrics.csv.gz"), gzip(&text)).unwrap();
            }),
            "more than 64 times its size",
        ),
    ];
    let good = fixtures().join("twins/row0.safetensors");
    let mut paths: Vec<&Path> = cases.iter().map(|(p, _)| p.as_path()).collect();
    paths.push(&good);
    let out = dir.path().join("out");
    let o = scan(&paths, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("1 analysed, {} failed", cases.len())), "{stderr}");
    let (_, errors) = read(&out.join("errors.csv"));
    for (zoo, want) in &cases {
        let row = errors.iter().find(|r| Path::new(&r[0]).starts_with(zoo)).unwrap_or_else(|| panic!("{zoo:?}"));
        assert!(row[3].contains(want), "{zoo:?}: {}", row[3]);
        assert_eq!(row[1], "flat_zoo", "{zoo:?}");
        assert!(row[3].contains(&zoo.display().to_string()), "names the file: {}", row[3]);
    }
}
