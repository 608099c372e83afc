//! The `cntscope` binary end to end on real files: CSV contracts, metadata
//! columns, sharded checkpoints, exit codes, resume.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use cntscope::checkpoint::DType;
use common::{values, write_st, T};

fn cntscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntscope")).args(args).output().expect("runs cntscope")
}

fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Reads a CSV file as header + rows.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r.records().map(|rec| rec.unwrap().iter().map(String::from).collect()).collect();
    (header, rows)
}

/// A 6-5-3 MLP in torch naming with its accuracy and seed as metadata.
fn mlp(path: &Path, seed: u64, accuracy: &str) {
    common::mlp(path, seed, &[("accuracy", accuracy), ("seed", &seed.to_string())]);
}

#[test]
fn nodes_csv_contract_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("m.safetensors");
    mlp(&ck, 1, "0.5");
    let o = cntscope(&["nodes", ck.to_str().unwrap(), "--device", "cpu"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("node_layer,node,s_in,s_out,strength"));
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 6 + 5 + 3);
    // Output node 0 of layer 2: s_in = row sum + bias, by hand.
    let w2 = values(15, 3).into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>();
    let b2 = values(3, 4)[0] as f32 as f64;
    let want = w2[..5].iter().sum::<f64>() + b2;
    let row = rows.iter().find(|r| r[0] == 2.0 && r[1] == 0.0).unwrap();
    assert!((row[2] - want).abs() < 1e-9 && row[3] == 0.0 && row[4] == row[2], "{row:?} vs {want}");
    for r in &rows {
        assert!((r[2] + r[3] - r[4]).abs() < 1e-12);
    }

    // --layer and --no-bias, written to a file.
    let file = dir.path().join("v2.csv");
    let o = cntscope(&["nodes", ck.to_str().unwrap(), "--layer", "2", "--no-bias", "-o", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (header, rows) = csv(&file);
    assert_eq!(header, ["node_layer", "node", "s_in", "s_out", "strength"]);
    assert_eq!(rows.len(), 3);
    let s_in: f64 = rows[0][2].parse().unwrap();
    assert!((s_in - (want - b2)).abs() < 1e-9);

    let o = cntscope(&["nodes", ck.to_str().unwrap(), "--layer", "9"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn scan_records_failures_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir_all(data.join("run")).unwrap();
    mlp(&data.join("a_2.safetensors"), 10, "0.91");
    mlp(&data.join("a_10.safetensors"), 20, "0.42");
    mlp(&data.join("run/b.safetensors"), 30, "0.77");
    std::fs::write(data.join("broken.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let mut nan = values(30, 5);
    nan[3] = f64::NAN;
    write_st(&data.join("diverged.safetensors"), &[T::f32("net.0.weight", &[5, 6], nan)], &[("accuracy", "0.1")]);
    std::fs::write(data.join("notes.txt"), "not a checkpoint").unwrap();

    let out = dir.path().join("out");
    let o = cntscope(&["scan", data.to_str().unwrap(), "--device", "cpu", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    let (header, rows) = csv(&out.join("nodes.csv"));
    assert_eq!(&header[..5], ["checkpoint", "node_layer", "nodes", "strength_mean", "fluctuation"]);
    assert!(header.contains(&"accuracy".to_string()) && header.contains(&"seed".to_string()), "{header:?}");
    let acc = header.iter().position(|h| h == "accuracy").unwrap();
    let non_finite = header.iter().position(|h| h == "non_finite").unwrap();
    // The NaN weight (row 0, column 3) reaches one node of each set; the
    // checkpoint is analysed, not failed.
    let (diverged, rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r[0].ends_with("diverged.safetensors"));
    let flagged: Vec<(&str, &str)> = diverged.iter().map(|r| (r[2].as_str(), r[non_finite].as_str())).collect();
    assert_eq!(flagged, [("5", "1"), ("4", "1")]);
    assert!(text(&o).contains("warning: 1 checkpoint(s) hold NaN or infinite"), "{}", text(&o));
    // Three good MLPs x three node sets, in natural order of paths.
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r[non_finite] == "0"));
    let order: Vec<&str> = rows.iter().step_by(3).map(|r| r[0].rsplit('/').next().unwrap()).collect();
    assert_eq!(order, ["a_2.safetensors", "a_10.safetensors", "b.safetensors"]);
    assert_eq!(rows[0][acc], "0.91");

    // Fluctuation of V0 of a_2: std (ddof 0) of the column sums of net.0.weight.
    let w = values(30, 10).into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>();
    let cols: Vec<f64> = (0..6).map(|i| (0..5).map(|j| w[j * 6 + i]).sum()).collect();
    let mean = cols.iter().sum::<f64>() / 6.0;
    let std = (cols.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
    let got: f64 = rows[0][4].parse().unwrap();
    assert!((got - std).abs() < 1e-12, "{got} vs {std}");

    let (link_header, links) = csv(&out.join("links.csv"));
    assert_eq!(links.len(), 7);
    let non_finite = link_header.iter().position(|h| h == "non_finite").unwrap();
    let flagged: Vec<&str> = links.iter().map(|r| r[non_finite].as_str()).collect();
    assert_eq!(flagged, ["0", "0", "0", "0", "1", "0", "0"], "{links:?}");
    let (_, hist) = csv(&out.join("histograms.csv"));
    assert!(!hist.is_empty());

    let (eh, errors) = csv(&out.join("errors.csv"));
    assert_eq!(eh, ["checkpoint", "kind", "tensor", "message"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let broken = errors.iter().find(|e| e[0].ends_with("broken.safetensors")).unwrap();
    assert_eq!(broken[1], "malformed");
    assert!(broken[3].contains("broken.safetensors"), "{broken:?}");
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"nonsense").unwrap();
    let out = dir.path().join("out");
    let o = cntscope(&["scan", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "nothing analysed: {}", text(&o));
    let o = cntscope(&["scan", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "missing paths is bad usage");
    let o = cntscope(&["nodes", dir.path().join("missing.safetensors").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let o = cntscope(&["inspect", bad.to_str().unwrap(), "--input", "3,x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--input"));
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.safetensors");
    mlp(&single, 7, "0.8");
    let sharded = dir.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    let meta = [("accuracy", "0.8"), ("seed", "7")];
    write_st(
        &sharded.join("model-00001-of-00002.safetensors"),
        &[T::f32("net.0.weight", &[5, 6], values(30, 7)), T::f32("net.0.bias", &[5], values(5, 8))],
        &meta,
    );
    write_st(
        &sharded.join("model-00002-of-00002.safetensors"),
        &[T::f32("net.2.weight", &[3, 5], values(15, 9)), T::f32("net.2.bias", &[3], values(3, 10))],
        &meta,
    );
    let index = r#"{"metadata": {"total_size": 216}, "weight_map": {
        "net.0.weight": "model-00001-of-00002.safetensors", "net.0.bias": "model-00001-of-00002.safetensors",
        "net.2.weight": "model-00002-of-00002.safetensors", "net.2.bias": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(sharded.join("model.safetensors.index.json"), index).unwrap();
    let a = cntscope(&["nodes", single.to_str().unwrap()]);
    let b = cntscope(&["nodes", sharded.to_str().unwrap()]);
    assert!(a.status.success() && b.status.success(), "{}\n{}", text(&a), text(&b));
    assert_eq!(a.stdout, b.stdout);

    // A scan of the parent sees the sharded directory as one checkpoint.
    let out = dir.path().join("out");
    let o = cntscope(&["scan", dir.path().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (header, rows) = csv(&out.join("nodes.csv"));
    let checkpoints: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(checkpoints.len(), 2, "{checkpoints:?}");
    assert!(header.contains(&"total_size".to_string()));
}

#[test]
fn resume_after_interruption_gives_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    for i in 0..6 {
        mlp(&data.join(format!("m{i}.safetensors")), 100 + i, &format!("0.{i}"));
    }
    let full = dir.path().join("full");
    let o = cntscope(&["scan", data.to_str().unwrap(), "-o", full.to_str().unwrap(), "--jobs", "2"]);
    assert!(o.status.success(), "{}", text(&o));

    // Simulate a kill partway: the journal cut in the middle of a record,
    // no tables yet.
    let part = dir.path().join("part");
    std::fs::create_dir(&part).unwrap();
    let journal = std::fs::read(full.join("scan.journal")).unwrap();
    std::fs::write(part.join("scan.journal"), &journal[..journal.len() * 3 / 5]).unwrap();
    let manifest = std::fs::read_to_string(full.join("scan.manifest")).unwrap();
    std::fs::write(part.join("scan.manifest"), manifest.replace(r#""complete": true"#, r#""complete": false"#))
        .unwrap();
    // ... and the killed run's half-written tables.
    let stale = part.join(".nodes.csv.tmp4242");
    std::fs::write(&stale, "checkpoint,node_layer\n").unwrap();
    let o = cntscope(&["scan", data.to_str().unwrap(), "-o", part.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists(), "a killed run's temporary table is left behind");
    for table in ["nodes.csv", "links.csv", "histograms.csv", "errors.csv"] {
        assert_eq!(
            std::fs::read(full.join(table)).unwrap(),
            std::fs::read(part.join(table)).unwrap(),
            "{table} differs after resume"
        );
    }
    let resumed = std::fs::read(part.join("scan.journal")).unwrap();
    assert_eq!(resumed.len(), journal.len(), "the resumed journal holds every record once");

    // A journal without a manifest (an older build's) cannot be checked:
    // refused, never mixed into the tables.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("scan.journal"), &journal).unwrap();
    let o = cntscope(&["scan", data.to_str().unwrap(), "-o", old.to_str().unwrap(), "--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("without a scan.manifest"), "{}", text(&o));
    assert!(!old.join("nodes.csv").exists());
}

#[test]
fn inspect_and_globs_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("c.safetensors");
    write_st(
        &ck,
        &[
            T { name: "features.0.weight", dtype: DType::F16, shape: vec![4, 3, 3, 3], values: values(108, 1) },
            T { name: "features.0.bias", dtype: DType::F16, shape: vec![4], values: values(4, 2) },
            T { name: "head.weight", dtype: DType::BF16, shape: vec![2, 4 * 6 * 6], values: values(288, 3) },
        ],
        &[("epoch", "3")],
    );
    let o = cntscope(&["inspect", ck.to_str().unwrap(), "--input", "3,8,8"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in ["V0", "3x8x8", "4x6x6", "conv2d 3x3", "features.0.weight [4, 3, 3, 3]", "head", "epoch=3"] {
        assert!(out.contains(want), "inspect lacks `{want}`:\n{out}");
    }
    assert!(!out.contains("not a chain"));
    let pattern = format!("{}/*.safetensors", dir.path().display());
    let out_dir = dir.path().join("out");
    let o = cntscope(&["scan", &pattern, "--input", "3,8,8", "-o", out_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (_, rows) = csv(&out_dir.join("nodes.csv"));
    assert_eq!(rows.len(), 3);
}

#[test]
fn gpu_scan_matches_cpu_scan() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    for i in 0..9 {
        mlp(&data.join(format!("m{i}.safetensors")), 300 + i, &format!("0.{i}"));
    }
    std::fs::write(data.join("m4.safetensors"), b"truncated").unwrap();
    let run = |device: &str| {
        let out = dir.path().join(device);
        let o = cntscope(&["scan", data.to_str().unwrap(), "--device", device, "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        out
    };
    let (cpu, gpu) = (run("cpu"), run("gpu"));
    let (hc, rc) = csv(&cpu.join("nodes.csv"));
    let (hg, rg) = csv(&gpu.join("nodes.csv"));
    assert_eq!(hc, hg);
    assert_eq!(rc.len(), rg.len());
    for (a, b) in rc.iter().zip(&rg) {
        assert_eq!(a[..3], b[..3]);
        let scale = a[5].parse::<f64>().unwrap().abs().max(a[6].parse::<f64>().unwrap().abs());
        for col in 3..7 {
            let (x, y): (f64, f64) = (a[col].parse().unwrap(), b[col].parse().unwrap());
            assert!((x - y).abs() <= 1e-5 * scale, "{} column {}: {x} vs {y}", a[0], hc[col]);
        }
    }
    assert_eq!(std::fs::read(cpu.join("errors.csv")).unwrap(), std::fs::read(gpu.join("errors.csv")).unwrap());
}

#[test]
fn shards_merge_into_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    for i in 0..11 {
        mlp(&data.join(format!("m{i}.safetensors")), 500 + i, &format!("0.{i}"));
    }
    std::fs::write(data.join("m7.safetensors"), b"broken").unwrap();
    let whole = dir.path().join("whole");
    let o = cntscope(&["scan", data.to_str().unwrap(), "-o", whole.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let mut parts = Vec::new();
    for i in 0..4 {
        let part = dir.path().join(format!("part{i}"));
        let shard = format!("{i}/4");
        let o = cntscope(&["scan", data.to_str().unwrap(), "--shard", &shard, "-o", part.to_str().unwrap()]);
        assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{}", text(&o));
        parts.push(part.to_str().unwrap().to_string());
    }
    let merged = dir.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(parts.iter().map(String::as_str));
    args.extend(["-o", merged.to_str().unwrap()]);
    // Merged is success; the failed checkpoint is reported, a row of errors.csv.
    let o = cntscope(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("1 failed"), "{}", text(&o));
    for table in ["nodes.csv", "links.csv", "histograms.csv", "errors.csv"] {
        assert_eq!(std::fs::read(whole.join(table)).unwrap(), std::fs::read(merged.join(table)).unwrap(), "{table}");
    }
    let o = cntscope(&["scan", data.to_str().unwrap(), "--shard", "4/4", "-o", merged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "shard out of range is bad usage");
}

#[test]
fn strict_stops_and_sidecar_metadata_fills_columns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    for i in 0..6 {
        mlp(&data.join(format!("m{i}.safetensors")), 700 + i, "0.5");
    }
    std::fs::write(data.join("m0.safetensors"), b"broken").unwrap();
    let out = dir.path().join("strict");
    let o = cntscope(&["scan", data.to_str().unwrap(), "--strict", "--jobs", "1", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "stopped at the first checkpoint: {}", text(&o));
    let (_, errors) = csv(&out.join("errors.csv"));
    assert_eq!(errors.len(), 1);

    let table = dir.path().join("meta.csv");
    std::fs::write(&table, "path,lr,accuracy\nzoo/m1.safetensors,0.01,0.99\nzoo/m2.safetensors,0.1,\n").unwrap();
    let out = dir.path().join("meta");
    let o =
        cntscope(&["scan", data.to_str().unwrap(), "--metadata", table.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (header, rows) = csv(&out.join("nodes.csv"));
    let (lr, acc) =
        (header.iter().position(|h| h == "lr").unwrap(), header.iter().position(|h| h == "accuracy").unwrap());
    let m1: Vec<&Vec<String>> = rows.iter().filter(|r| r[0].ends_with("m1.safetensors")).collect();
    assert_eq!((m1[0][lr].as_str(), m1[0][acc].as_str()), ("0.01", "0.99"), "sidecar overrides the file's accuracy");
    let m3 = rows.iter().find(|r| r[0].ends_with("m3.safetensors")).unwrap();
    assert_eq!((m3[lr].as_str(), m3[acc].as_str()), ("", "0.5"));
}

#[test]
fn report_ranks_a_measure_that_tracks_accuracy() {
    // Nine runs of a 6-5-3 MLP; the first layer's weights are scaled with
    // accuracy, so the input nodes' fluctuation follows accuracy exactly
    // (rho 1, AUROC 1), while an unrelated network would not.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zoo");
    std::fs::create_dir(&data).unwrap();
    for run in 0..9u64 {
        for epoch in 1..=2u64 {
            let acc = 0.1 * run as f64 + 0.02 * epoch as f64;
            let w0: Vec<f64> = values(30, 1).iter().map(|x| x * (1.0 + acc * 3.0)).collect();
            let meta = [("accuracy", format!("{acc:.3}")), ("epoch", epoch.to_string()), ("run", format!("r{run}"))];
            let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
            write_st(
                &data.join(format!("r{run}-e{epoch}.safetensors")),
                &[T::f32("net.0.weight", &[5, 6], w0), T::f32("net.2.weight", &[3, 5], values(15, 100 + run))],
                &meta,
            );
        }
    }
    let out = dir.path().join("report");
    let o = cntscope(&["report", data.to_str().unwrap(), "--width", "0.3", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for f in
        ["report.html", "separation.csv", "divergence.csv", "densities.csv", "dynamics.csv", "layer_divergence.csv"]
    {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Spearman"), "report has figures and the table");
    let (_, rows) = csv(&out.join("separation.csv"));
    let row = rows.iter().find(|r| r[1] == "V0 input fluctuation").unwrap();
    let (rho, auroc): (f64, f64) = (row[3].parse().unwrap(), row[4].parse().unwrap());
    assert!((rho - 1.0).abs() < 1e-12 && auroc == 1.0 && row[5] == "higher", "{row:?}");
    // Divergence matrices: zero on the diagonal, symmetric.
    let (_, div) = csv(&out.join("divergence.csv"));
    let groups: std::collections::BTreeSet<&str> = div.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(groups.len(), 3, "accuracy 0.12..0.84 in bins of 0.3: {groups:?}");
    let js = |m: &str, i: &str, a: &str, b: &str| -> f64 {
        div.iter().find(|r| r[0] == m && r[1] == i && r[3] == a && r[4] == b).unwrap()[8].parse().unwrap()
    };
    for a in &groups {
        assert_eq!(js("strength", "0", a, a), 0.0);
        for b in &groups {
            assert!((js("strength", "0", a, b) - js("strength", "0", b, a)).abs() < 1e-12);
        }
    }
    // Dynamics: one row per run, epoch and node set.
    let (_, dynamics) = csv(&out.join("dynamics.csv"));
    assert_eq!(dynamics.len(), 9 * 2 * 3);
    // The GPU engine pools on the GPU (binned KDE): the same divergences
    // within 2%.
    if common::gpu().is_some() {
        let on_gpu = dir.path().join("gpu");
        let o = cntscope(&[
            "report",
            data.to_str().unwrap(),
            "--width",
            "0.3",
            "--device",
            "gpu",
            "-o",
            on_gpu.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let (_, gpu_div) = csv(&on_gpu.join("divergence.csv"));
        assert_eq!(gpu_div.len(), div.len());
        for (c, g) in div.iter().zip(&gpu_div) {
            assert_eq!(c[..5], g[..5]);
            let (a, b): (f64, f64) = (c[8].parse().unwrap(), g[8].parse().unwrap());
            assert!((a - b).abs() <= 0.02 * a.max(1e-3), "{c:?} vs {g:?}");
        }
    }
    // A scan directory can be studied again without scanning.
    let again = dir.path().join("again");
    let o =
        cntscope(&["ensemble", out.join("scan").to_str().unwrap(), "--width", "0.3", "-o", again.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(out.join("separation.csv")).unwrap(),
        std::fs::read(again.join("separation.csv")).unwrap()
    );
}

/// `inspect` says how a layer reads a set another way than it holds it (a
/// `view`, a pixel shuffle), with both shapes.
#[test]
fn inspect_shows_views_and_pixel_shuffles() {
    let fixture = |name: &str| format!("{}/tests/fixtures/torch/{name}", env!("CARGO_MANIFEST_DIR"));
    for (net, want) in [
        ("eca_tiny", "(V2 6x1x1 viewed as 1x1x6 -> V3 1x1x6)"),
        ("subpixel_tiny", "(V0 3x10x8 pixel-unshuffled by 2 to 12x5x4 -> V1 8x5x4)"),
        ("subpixel_tiny", "(V2 36x5x4 pixel-shuffled by 3 to 4x15x12 -> V3 8x15x12)"),
    ] {
        let (st, spec) = (fixture(&format!("{net}.safetensors")), fixture(&format!("{net}.toml")));
        let o = cntscope(&["inspect", &st, "--spec", &spec]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains(want), "{net}: {out}");
    }
}
