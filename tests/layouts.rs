//! Collections as researchers keep them: a Ray Tune trial tree laid out as
//! the Model Zoos dataset is (`<trial>/checkpoint_<N>/checkpoints` from
//! `torch.save`, `params.json`, `result.json`), scanned and studied with
//! `--accuracy test_acc`, no conversion step.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cntscope(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().unwrap()
}

/// A torch.save file whose weights differ per (trial, iteration): the
/// committed fixture with one weight byte changed.
fn checkpoint(path: &Path, salt: u8) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pt/good/plain.pt");
    let bytes = std::fs::read(fixture).unwrap();
    // The first storage's data: the 64-byte aligned region after "data/0".
    let at = bytes.windows(6).position(|w| w == b"data/0").unwrap() + 64;
    let at = at.next_multiple_of(64);
    let mut bytes = bytes;
    bytes[at + 1] ^= salt;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn ray_tune_trials_are_scanned_and_studied_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = dir.path().join("zoo");
    for t in 0..3u8 {
        let trial = zoo.join(format!("NN_tune_trainable_{t:05}_{t}_seed={t}"));
        std::fs::create_dir_all(&trial).unwrap();
        std::fs::write(
            trial.join("params.json"),
            format!(r#"{{"seed": {t}, "optim": {{"lr": 0.1}}, "init": "uniform"}}"#),
        )
        .unwrap();
        let mut results = String::new();
        for n in 1..=3u8 {
            let acc = 0.1 + 0.2 * f64::from(n) + 0.05 * f64::from(t);
            results += &format!(
                "{{\"training_iteration\": {n}, \"test_acc\": {acc}, \"train_acc\": {}, \"config\": {{\"seed\": {t}}}}}\n",
                acc + 0.01
            );
            let ck = trial.join(format!("checkpoint_{n:06}"));
            std::fs::create_dir_all(&ck).unwrap();
            checkpoint(&ck.join("checkpoints"), t * 3 + n);
        }
        std::fs::write(trial.join("result.json"), results).unwrap();
    }
    let out = dir.path().join("scan");
    let o = cntscope(&["scan", zoo.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap_or_else(|| panic!("no `{n}` column in {header:?}"));
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r[0].to_string()).collect::<std::collections::BTreeSet<_>>().len(), 9);
    for row in &rows {
        let path = &row[0];
        let t: u8 = path.split("seed=").nth(1).unwrap()[..1].parse().unwrap();
        let n: u8 = path.split("checkpoint_").nth(1).unwrap()[..6].parse().unwrap();
        let acc: f64 = row[col("test_acc")].parse().unwrap();
        assert!((acc - (0.1 + 0.2 * f64::from(n) + 0.05 * f64::from(t))).abs() < 1e-12, "{path}: test_acc {acc}");
        assert_eq!(&row[col("seed")], t.to_string(), "{path}");
        assert_eq!(&row[col("optim.lr")], "0.1");
        assert_eq!(&row[col("step")], n.to_string());
        assert!(!header.iter().any(|h| h.starts_with("config")), "the result's config is the params again");
    }
    let study = dir.path().join("study");
    let o = cntscope(&[
        "ensemble",
        out.to_str().unwrap(),
        "-o",
        study.to_str().unwrap(),
        "--by",
        "test_acc",
        "--accuracy",
        "test_acc",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = std::fs::read_to_string(study.join("separation.csv")).unwrap();
    assert!(table.lines().count() > 5, "{table}");
}

#[test]
fn name_patterns_become_columns() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, acc) in [(3, "0.9100"), (4, "0.4200")] {
        let name = format!(
            "MNIST_fc_nlayers-5_init-random-normal_support-0.05_seed-{seed}_realaccuracy-{acc}_binaccuracy-0.4000.pt"
        );
        checkpoint(&dir.path().join(name), seed);
    }
    let out = dir.path().join("scan");
    let o =
        cntscope(&["scan", dir.path().to_str().unwrap(), "--name-pattern", "cnt-dnns", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    for col in ["dataset", "arch", "nlayers", "init", "support", "seed", "accuracy", "binaccuracy"] {
        assert!(header.iter().any(|h| h == col), "no `{col}` column: {header:?}");
    }
    let acc = header.iter().position(|h| h == "accuracy").unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    assert!(rows.iter().any(|r| &r[acc] == "0.9100") && rows.iter().any(|r| &r[acc] == "0.4200"));
    let o = cntscope(&[
        "scan",
        dir.path().to_str().unwrap(),
        "--name-pattern",
        "nothing named",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no named group"));
}
