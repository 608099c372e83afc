//! The individual analysis on training runs saved the usual ways, with a
//! step in each path and no `run` or `epoch` in the files: runs are found
//! in the paths, checkpoints ordered by step, and every assumption is a
//! note on stderr and in the report.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cntscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().expect("runs cntscope")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `cntscope ARGS`, which must succeed: what it said.
fn succeeds(args: &[&str]) -> String {
    let o = cntscope(args);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    text(&o)
}

/// An MLP of weights from `seed` at `path` (its folders made), with an
/// accuracy `0.<accuracy>`.
fn save(path: &Path, seed: u64, accuracy: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    common::mlp(path, seed, &[("accuracy", &format!("0.{accuracy}"))]);
}

/// `dynamics.csv` of a study in `out`: run -> its `order` values, in order.
fn runs(out: &Path, order: &str) -> BTreeMap<String, Vec<f64>> {
    let mut r = csv::Reader::from_path(out.join("dynamics.csv")).unwrap();
    let header = r.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("{name} in {header:?}"));
    let (run, at, layer) = (col("run"), col(order), col("node_layer"));
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        // One point per checkpoint: its first node set's row.
        if &rec[layer] == "0" {
            out.entry(rec[run].to_string()).or_default().push(rec[at].parse().unwrap());
        }
    }
    out
}

#[test]
fn runs_are_found_in_training_layouts_and_ordered_by_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runs");
    // Ray Tune: trial folders of checkpoint folders of files.
    for (k, (trial, steps)) in [("trial_a", [1, 2, 3]), ("trial_b", [1, 2, 10])].into_iter().enumerate() {
        for s in steps {
            save(&root.join(format!("ray/{trial}/checkpoint_{s:06}/model.safetensors")), 100 * k as u64 + s, s);
        }
    }
    // A Trainer's checkpoint folders, and Lightning's checkpoint files.
    for s in [500, 1000] {
        save(&root.join(format!("trainer/checkpoint-{s}/model.safetensors")), s, s / 500);
        save(&root.join(format!("lightning/version_0/checkpoints/epoch={}-step={s}.safetensors", s / 500)), s + 1, 3);
    }
    let out = dir.path().join("study");
    let said = succeeds(&["dynamics", root.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(said.contains("no `epoch` column: checkpoints are ordered by `step`"), "{said}");
    assert!(said.contains("no `run` column: runs are the checkpoints' folders (4 runs:"), "{said}");
    assert!(said.contains("4 runs ->"), "{said}");
    let want: BTreeMap<String, Vec<f64>> = [
        ("lightning/version_0/checkpoints", vec![500.0, 1000.0]),
        ("ray/trial_a", vec![1.0, 2.0, 3.0]),
        ("ray/trial_b", vec![1.0, 2.0, 10.0]),
        ("trainer", vec![500.0, 1000.0]),
    ]
    .into_iter()
    .map(|(r, s)| (r.to_string(), s))
    .collect();
    assert_eq!(runs(&out, "step"), want);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Notes:") && html.contains("runs are the checkpoints' folders"), "the report says it too");

    // Named columns win over the paths; one that mixes runs is noticed.
    let scan = out.join("scan");
    let named = dir.path().join("named");
    let (scan, named) = (scan.to_str().unwrap(), named.to_str().unwrap());
    let said = succeeds(&["dynamics", scan, "--order-by", "step", "--run-by", "accuracy", "-o", named]);
    assert!(!said.contains("no `run` column"), "{said}");
    assert!(said.contains("run `0.1` has several checkpoints at step 1 ("), "{said}");
    assert!(said.contains("trial_a/checkpoint_000001"), "{said}");
}

#[test]
fn checkpoints_at_one_step_of_one_run_and_ones_without_a_step_are_noted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flat");
    // Two runs saved into one folder: each step twice.
    for s in [1, 2] {
        save(&root.join(format!("step_{s}.safetensors")), s, s);
        save(&root.join(format!("checkpoint-{s}.safetensors")), s + 2, s + 2);
    }
    save(&root.join("final.safetensors"), 9, 9);
    let out = dir.path().join("study");
    let said = succeeds(&["dynamics", root.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(said.contains("run `flat` has several checkpoints at step 1 ("), "{said}");
    assert!(said.contains("two runs taken as one? (give --run-by COLUMN)"), "{said}");
    assert!(said.contains("1 checkpoint has no `step` value and is left out of the dynamics (first: "), "{said}");
    assert!(said.contains("final.safetensors"), "{said}");
    assert_eq!(runs(&out, "step")["flat"].len(), 4);
}

/// A folder `name` under `dir` of `n` MLPs, the `k`th of weights from
/// seed `k` with the metadata `meta(k)`.
fn mlps(dir: &Path, name: &str, n: u64, meta: impl Fn(u64) -> Vec<(&'static str, String)>) -> PathBuf {
    let zoo = dir.join(name);
    std::fs::create_dir(&zoo).unwrap();
    for k in 0..n {
        let meta = meta(k);
        let meta: Vec<(&str, &str)> = meta.iter().map(|(key, v)| (*key, v.as_str())).collect();
        common::mlp(&zoo.join(format!("m{k}.safetensors")), k, &meta);
    }
    zoo
}

#[test]
fn an_accuracy_by_another_name_is_taken_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = mlps(dir.path(), "zoo", 6, |k| {
        vec![("eval_accuracy", format!("0.{}", 3 + k)), ("train_accuracy", format!("0.{}", 4 + k))]
    });
    let out = dir.path().join("study");
    let o = cntscope(&["ensemble", zoo.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("no `accuracy` column: `eval_accuracy` is the accuracy and the groups (give --accuracy COLUMN, --by COLUMN)"),
        "{said}"
    );
    assert!(said.contains("6 groups by eval_accuracy"), "{said}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("`eval_accuracy` is the accuracy"), "the report says it too");
    let separation = std::fs::read_to_string(out.join("separation.csv")).unwrap();
    assert!(!separation.lines().nth(1).unwrap_or("").is_empty(), "a separation table: {separation}");

    // Two held-out accuracies: none is chosen; percentages are noticed.
    let zoo2 = mlps(dir.path(), "zoo2", 4, |k| {
        vec![("val_acc", format!("{}", 50 + 10 * k)), ("test_accuracy", format!("0.{}", 5 + k))]
    });
    let o = cntscope(&["ensemble", zoo2.to_str().unwrap(), "-o", dir.path().join("s2").to_str().unwrap()]);
    let said = text(&o);
    assert!(said.contains("several that could be one (test_accuracy, val_acc): give --accuracy COLUMN"), "{said}");
    // An accuracy in percent: groups of 10 points (values 50, 60, 70, 80:
    // four groups), or as `--width` says, noted either way.
    let scan = dir.path().join("s2/scan");
    let study = |extra: &[&str], out: &str| {
        let args = [&["ensemble", scan.to_str().unwrap(), "--accuracy", "val_acc", "--by", "val_acc"], extra].concat();
        cntscope(&[&args[..], &["-o", dir.path().join(out).to_str().unwrap()]].concat())
    };
    let said = text(&study(&[], "s3"));
    assert!(said.contains("`val_acc` is in percent (values up to 80): its groups are 10 wide"), "{said}");
    assert!(said.contains("4 groups by val_acc"), "{said}");
    let said = text(&study(&["--width", "0.1"], "s4"));
    assert!(
        said.contains("`val_acc` has values above 1 (percentages?): the groups are 0.1 wide (give --width)"),
        "{said}"
    );
    let said = text(&study(&["--width", "25"], "s5"));
    assert!(!said.contains("percent"), "{said}");
    assert!(said.contains("2 groups by val_acc"), "{said}");
}

/// `report` of the fixture folder `rel` into `dir/study`, which must
/// succeed: the fixture's path, the study's and what was said.
fn report_fixture(rel: &str, dir: &Path) -> (PathBuf, PathBuf, String) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel);
    let out = dir.join("study");
    let said = succeeds(&["report", fixture.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    (fixture, out, said)
}

/// A CSV table's rows, each by column name.
fn table_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().clone();
    r.records()
        .map(|rec| header.iter().map(String::from).zip(rec.unwrap().iter().map(String::from)).collect())
        .collect()
}

/// The row of a CSV log (`metrics.csv`, `summary.csv`) whose first column
/// is `epoch`, by column name.
fn logged(log: &Path, epoch: &str) -> BTreeMap<String, String> {
    table_rows(log).into_iter().find(|r| r.get("epoch").map(String::as_str) == Some(epoch)).expect("a logged epoch")
}

/// Two runs as Lightning's Trainer wrote them (`make_lightning.py`): the
/// monitored `val_acc` of each checkpoint is read from its
/// `ModelCheckpoint` state and equals what Lightning logged in
/// `metrics.csv` at that epoch; runs are the `version_<k>` folders.
#[test]
fn lightning_runs_as_lightning_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, out, said) = report_fixture("pt/lightning_logs", dir.path());
    assert!(said.contains("`val_acc` is the accuracy and the groups"), "{said}");
    assert!(said.contains("(2 runs: version_0, version_1;"), "{said}");
    // `last.ckpt` is a copy of the last epoch's file: not two runs.
    assert!(!said.contains("several checkpoints"), "{said}");
    let points = table_rows(&out.join("dynamics.csv"));
    for p in &points {
        let want: f64 = logged(&logs.join(&p["run"]).join("metrics.csv"), &p["epoch"])["val_acc"].parse().unwrap();
        let got: f64 = p["val_acc"].parse().unwrap();
        assert!((got - want).abs() < 1e-6, "{} epoch {}: {got} against Lightning's {want}", p["run"], p["epoch"]);
    }
    // 2 runs x 4 checkpoints (3 epochs and last.ckpt) x 3 node sets.
    assert_eq!(points.len(), 2 * 4 * 3);
}

/// A run as timm's `train.py` leaves it (`make_timm.py`, by timm's own
/// `CheckpointSaver` and `update_summary`): each checkpoint gets its
/// epoch's row of `summary.csv`, `eval_top1` is the accuracy (in percent,
/// which a note points out), the run is the folder, ordered by epoch.
#[test]
fn a_timm_run_as_timm_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (run, out, said) = report_fixture("pt/timm_run", dir.path());
    assert!(said.contains("`eval_top1` is the accuracy and the groups"), "{said}");
    assert!(said.contains("`eval_top1` is in percent (values up to 65.625): its groups are 10 wide"), "{said}");
    assert!(said.contains("(1 run: timm_run;"), "{said}");
    assert!(!said.contains("several checkpoints"), "last and model_best are copies: {said}");
    let mut seen = std::collections::BTreeSet::new();
    for row in table_rows(&out.join("scan/nodes.csv")) {
        let summary = logged(&run.join("summary.csv"), &row["epoch"]);
        for column in ["eval_top1", "train_loss", "eval_loss"] {
            assert_eq!(row[column], summary[column], "{column} of {}", row["checkpoint"]);
        }
        seen.insert(row["checkpoint"].rsplit('/').next().unwrap().to_string());
    }
    let want =
        ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar", "model_best.pth.tar"];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
}

/// Checkpoints with no value in the grouping column (a Trainer logs its
/// evaluation only every so many steps) are in no group, and a note says
/// how many, never leaving them out silently.
#[test]
fn checkpoints_without_an_accuracy_are_said_to_be_in_no_group() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = mlps(dir.path(), "zoo", 5, |k| match k % 2 {
        0 => vec![("accuracy", format!("0.{}", 5 + k))],
        _ => vec![("seed", "1".to_string())],
    });
    let said = succeeds(&["ensemble", zoo.to_str().unwrap(), "-o", dir.path().join("e").to_str().unwrap()]);
    assert!(said.contains("2 checkpoints have no `accuracy` value and are in no group (first: "), "{said}");
    assert!(said.contains("m1.safetensors"), "{said}");
    assert!(said.contains("5 checkpoints, 3 groups by accuracy"), "{said}");
}

/// Two `CheckpointManager` runs (step folders `1`, `2`, `3` of a real
/// Orbax step, copied): the step is each folder's number, the run the
/// folder holding them, the accuracy the step's saved metrics.
#[cfg(unix)]
#[test]
fn checkpoint_manager_runs_are_their_folders() {
    let step = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flax/orbax/manager/1");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("managers");
    for (run, steps) in [("seed_0", [1, 2, 3]), ("seed_1", [1, 2, 5])] {
        std::fs::create_dir_all(root.join(run)).unwrap();
        for s in steps {
            let to = root.join(run).join(s.to_string());
            assert!(Command::new("cp").arg("-r").arg(&step).arg(&to).status().unwrap().success());
        }
    }
    let out = dir.path().join("study");
    let said = succeeds(&["dynamics", root.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(said.contains("(2 runs: seed_0, seed_1;"), "{said}");
    assert!(said.contains("ordered by `step`"), "{said}");
    let want: BTreeMap<String, Vec<f64>> =
        [("seed_0".to_string(), vec![1.0, 2.0, 3.0]), ("seed_1".to_string(), vec![1.0, 2.0, 5.0])].into();
    assert_eq!(runs(&out, "step"), want);
    let rows = table_rows(&out.join("dynamics.csv"));
    assert!(rows.iter().all(|r| r["accuracy"] == "0.875"), "the steps' metrics");
}

/// Grouped by another column, checkpoints without an accuracy stay in
/// their groups and are left out of the separation table, with a note.
#[test]
fn checkpoints_without_an_accuracy_are_said_to_be_left_out_of_the_separation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("zoo");
    std::fs::create_dir_all(&root).unwrap();
    for seed in 0..6u64 {
        let init = if seed % 2 == 0 { "normal" } else { "uniform" };
        let accuracy = format!("0.{}", 3 + seed);
        let mut meta = vec![("init", init)];
        if seed != 4 {
            meta.push(("accuracy", &accuracy));
        }
        common::mlp(&root.join(format!("net{seed}.safetensors")), seed, &meta);
    }
    let (scan, out) = (dir.path().join("scan"), dir.path().join("study"));
    succeeds(&["scan", root.to_str().unwrap(), "-o", scan.to_str().unwrap()]);
    let said = succeeds(&["ensemble", scan.to_str().unwrap(), "--by", "init", "-o", out.to_str().unwrap()]);
    let note = "1 checkpoint has no `accuracy` value and is left out of the separation table (first: ";
    assert!(said.contains(note) && said.contains("net4.safetensors)"), "{said}");
    assert!(std::fs::read_to_string(out.join("notes.txt")).unwrap().contains(note));
    // Grouped by the accuracy itself, the note for the groups says it.
    let said = succeeds(&["ensemble", scan.to_str().unwrap(), "-o", dir.path().join("by_acc").to_str().unwrap()]);
    assert!(!said.contains("left out of the separation table") && said.contains("is in no group"), "{said}");
}
