//! PyTorch checkpoints written by real `torch.save` (tests/fixtures/pt,
//! made by its make_fixtures.py): plain, wrapped (`state_dict`, `model`,
//! Lightning's `model.` prefix, DataParallel's `module.`), f16 / bf16,
//! shared storages, non-contiguous views and a Ray Tune `checkpoints` file
//! give exactly the tables of the same weights saved as safetensors;
//! hostile files are refused by name and nothing in them runs; random byte
//! mutations never panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pt")
}

fn scan(dir: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["scan", dir.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap()
}

/// A table's rows, each cut to the columns before the metadata columns
/// and without the checkpoint's name; and the header.
fn measures(path: &Path, last: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let end = header.iter().position(|h| h == last).unwrap() + 1;
    let rows = r.records().map(|rec| rec.unwrap().iter().take(end).skip(1).map(String::from).collect()).collect();
    (header, rows)
}

#[test]
fn key_and_torch_shards_read_the_weights_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (k, t) = (fixtures().join("keyed"), fixtures().join("keyed_twin"));
    let pairs = [
        (
            vec![k.join("ema.pt"), k.join("prefixed.safetensors")],
            vec![t.join("ema.safetensors"), t.join("prefixed.safetensors")],
            vec!["--key", "ema"],
        ),
        // Hugging Face's torch shards: one checkpoint, named by its directory.
        (vec![k.join("sharded")], vec![t.join("sharded.safetensors")], vec![]),
    ];
    for (i, (paths, twins, extra)) in pairs.iter().enumerate() {
        let (a, b) = (dir.path().join(format!("a{i}")), dir.path().join(format!("b{i}")));
        let o = common::scan_paths(paths, &a, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(common::scan_paths(twins, &b, &[]).status.success());
        for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
            let (_, x) = measures(&a.join(table), last);
            let (_, y) = measures(&b.join(table), last);
            assert!(!x.is_empty());
            assert_eq!(x, y, "{table} of {paths:?}");
        }
    }
    // Without --key, ema.pt's state_dict is read (other weights); a key
    // that is not there is an error naming what is.
    let o = common::scan_paths(&[k.join("ema.pt")], &dir.path().join("plain"), &[]);
    assert!(o.status.success());
    let (_, plain) = measures(&dir.path().join("plain/links.csv"), "non_finite");
    let (_, ema) = measures(&dir.path().join("a0/links.csv"), "non_finite");
    assert_ne!(plain[0], ema[0]);
    let o = common::scan_paths(
        &[k.join("ema.pt"), k.join("prefixed.safetensors")],
        &dir.path().join("bad"),
        &["--key", "emb"],
    );
    assert_eq!(o.status.code(), Some(2));
    let errors = std::fs::read_to_string(dir.path().join("bad/errors.csv")).unwrap();
    assert!(
        errors.contains("--key emb: no tensors under `emb` (entries holding tensors: state_dict, ema)"),
        "{errors}"
    );
    assert!(
        errors.contains("--key emb: no tensors named `emb.*` (the tensors' first names: 0, 1, 3, ema)"),
        "{errors}"
    );
}

#[test]
fn torch_save_files_equal_their_safetensors_twins() {
    let dir = tempfile::tempdir().unwrap();
    let (good, twin) = (dir.path().join("good"), dir.path().join("twin"));
    assert!(scan(&fixtures().join("good"), &good).status.success());
    assert!(scan(&fixtures().join("twin"), &twin).status.success());
    for (table, last) in [("nodes.csv", "graph"), ("links.csv", "non_finite")] {
        let (_, a) = measures(&good.join(table), last);
        let (_, b) = measures(&twin.join(table), last);
        assert_eq!(a.len(), b.len(), "{table}: rows");
        assert!(a.len() >= 32, "{table}: every file measured");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "{table} row {i}");
        }
    }
    // Wrappers' scalars are metadata columns.
    let mut r = csv::Reader::from_path(good.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no `{name}` column"));
    let (epoch, step) = (col("epoch"), col("global_step"));
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    let of = |file: &str| rows.iter().find(|r| r[0].ends_with(file)).unwrap();
    assert_eq!(&of("lightning.ckpt")[epoch], "3");
    assert_eq!(&of("lightning.ckpt")[step], "120");
    // Its step is its global_step, for `dynamics --order-by step`.
    assert_eq!(&of("lightning.ckpt")[col("step")], "120");
    assert_eq!(&of("wrapped.pth")[epoch], "3");
    // Numpy scalars are numbers; objects (a timm run's `args`, a Lightning
    // run's hyperparameters) are data, no columns.
    assert_eq!(&of("model_in_dict.pt")[epoch], "4");
    assert_eq!(&of("model_in_dict.pt")[col("acc")], "0.5");
    assert_eq!(&of("timm_train.pth.tar")[col("metric")], "71.25");
    assert_eq!(&of("timm_train.pth.tar")[col("arch")], "mlp");
    // The ImageNet example's wrapper: its state_dict entry is the network
    // (not the wrapper, for the tensors beside it), its 0-dim tensor a value.
    assert_eq!(&of("imagenet_example.pth.tar")[col("best_acc1")], "71.5");
    assert_eq!(&of("lightning_hparams.ckpt")[step], "120");
    // Lightning's hyperparameters are columns; a Path among them is data.
    assert_eq!(&of("lightning_hparams.ckpt")[col("hyper_parameters.lr")], "0.1");
    assert!(!header.iter().any(|h| h == "hyper_parameters.data_dir"), "{header:?}");
    assert!(!header.iter().any(|h| h == "args" || h == "hyper_parameters"), "{header:?}");
    // The Ray Tune trial's step comes from its folder name.
    assert_eq!(&of("checkpoint_000003/checkpoints")[col("step")], "3");
}

/// A Ray Tune 2 experiment as Tune writes it (`tests/fixtures/pt/ray2`):
/// its `checkpoint_<N>` folders count checkpoints from 0 (one every second
/// iteration), so each checkpoint takes the result line that names its
/// folder (`test_acc` is `seed + 0.1 x iteration` there), and its step is
/// that line's iteration.
#[test]
fn ray2_trials_give_each_checkpoint_its_own_result_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = scan(&fixtures().join("ray2"), &out);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_path(out.join("nodes.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no `{name}`"));
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).filter(|r| &r[1] == "0").collect();
    assert_eq!(rows.len(), 4, "two trials, two checkpoints each");
    for row in &rows {
        let folder = Path::new(&row[0]).parent().unwrap().file_name().unwrap().to_str().unwrap();
        let iteration: f64 = row[col("training_iteration")].parse().unwrap();
        let seed: f64 = row[col("seed")].parse().unwrap();
        let index: f64 = folder.strip_prefix("checkpoint_").unwrap().parse().unwrap();
        assert_eq!(iteration, 2.0 * index + 2.0, "{folder}: the line of its own checkpoint");
        assert_eq!(row[col("checkpoint_dir_name")], *folder);
        assert!((row[col("test_acc")].parse::<f64>().unwrap() - (seed + 0.1 * iteration)).abs() < 1e-9);
        assert_eq!(row[col("step")], row[col("training_iteration")]);
    }
}

#[test]
fn hostile_files_are_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = scan(&fixtures().join("hostile"), &out);
    assert_eq!(o.status.code(), Some(2), "nothing could be analysed");
    assert!(!fixtures().join("PWNED").exists(), "a pickle's os.system ran");
    let rows = [
        (
            "system.pt",
            "no tensors in the checkpoint; entries read as inert data, nothing of them run: `w` (a `posix.system`)",
        ),
        ("eval.pt", "`w` (a `__builtin__.eval`)"),
        ("deep.pt", "nested deeper than"),
        ("wrong_storage_size.pt", "declares 100 elements of 4 bytes but holds 24 bytes"),
        ("huge_storage.pt", "declares 2684354560 elements"),
        ("offset_past_storage.pt", "reaches past its storage"),
        ("missing_storage.pt", "storage `7` is not in the archive"),
        ("zip_bomb.pt", "is compressed"),
        ("truncated.pt", "truncated"),
        ("legacy.pt", "legacy format of torch < 1.6"),
    ];
    common::assert_error_rows(&out.join("errors.csv"), "torch", &rows);
}

/// Tensors torch 2 saves on untyped storages (`_rebuild_tensor_v3`) are
/// read with their own dtype: uint16 and complex buffers are listed as
/// unused (the file is measured: `good/unsigned_buffers.pt` is in the twin
/// test above), a float8 weight is refused by name, never measured.
#[test]
fn tensors_of_untyped_storages_keep_their_dtype() {
    let o = Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .args(["inspect", fixtures().join("good/unsigned_buffers.pt").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (tensor, dtype) in [("0.codes", "U16"), ("3.ids", "U32"), ("freqs", "C64")] {
        assert!(text.contains(&format!("{tensor}: a tensor of {dtype}, not of a float dtype")), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = scan(&fixtures().join("dtypes"), &out);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = [("float8_weights.pt", "tensor `0.weight` has unsupported dtype F8_E4M3")];
    common::assert_error_rows(&out.join("errors.csv"), "unsupported_dtype", &rows);
}

#[test]
fn random_mutations_never_panic() {
    // A state_dict, and pickles of whole objects (a module, a timm run's
    // checkpoint with its arguments and numpy scalars).
    for file in ["plain.pt", "whole_model.pt", "timm_train.pth.tar", "scripted.pt", "unsigned_buffers.pt"] {
        let good = std::fs::read(fixtures().join("good").join(file)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ok, refused) = common::measure_mutations(&good, &dir.path().join("m.pt"), 1500);
        assert!(refused > 0 && ok + refused == 1500, "{file}: {ok} measured, {refused} refused");
    }
}
