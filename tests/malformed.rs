//! Malformed and hostile files: each class gives an error naming the file
//! (and the tensor where there is one), never a panic.

mod common;

use std::path::Path;

use cntscope::checkpoint::{Checkpoint, DType};
use cntscope::engine::{AnalysisOptions, BinRanges, CpuEngine, Engine};
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::Spec;
use common::{write_st, T};

fn good_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.safetensors");
    write_st(&p, &[T::f32("a.weight", &[3, 4], vec![0.5; 12]), T::f32("a.bias", &[3], vec![0.1; 3])], &[]);
    std::fs::read(p).unwrap()
}

/// A file whose header JSON is replaced by `header` (data section kept).
fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(vec![0u8; data_len]);
    b
}

/// Opens `bytes` as a checkpoint and measures it: returns the error text.
fn error_of(bytes: &[u8]) -> (String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let result = Checkpoint::open(&path).and_then(|ck| {
        let net = Network::build(&ck, &GraphOptions::default())?;
        CpuEngine::default().analyze(&net, &ck, &AnalysisOptions::default()).map(|_| ())
    });
    let msg = result.expect_err("malformed input must be an error").to_string();
    (msg, path, dir)
}

#[track_caller]
fn assert_names(msg: &str, path: &Path, parts: &[&str]) {
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    for p in parts {
        assert!(msg.contains(p), "error does not mention `{p}`: {msg}");
    }
}

#[test]
fn truncated_file() {
    let good = good_bytes();
    for cut in [0, 5, 8, 20, good.len() / 2, good.len() - 1] {
        let (msg, path, _d) = error_of(&good[..cut]);
        assert_names(&msg, &path, &[]);
    }
}

#[test]
fn trailing_bytes() {
    let mut b = good_bytes();
    b.extend([1, 2, 3]);
    let (msg, path, _d) = error_of(&b);
    assert_names(&msg, &path, &["file length"]);
}

#[test]
fn garbage_header() {
    let (msg, path, _d) = error_of(&with_header("{not json at all", 0));
    assert_names(&msg, &path, &["JSON"]);
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend([0xff, 0xfe, 0xfd, 0xfc]);
    let (msg, path, _d) = error_of(&b);
    assert_names(&msg, &path, &["UTF-8"]);
}

#[test]
fn huge_declared_header_length() {
    for n in [u64::MAX, 1 << 40, 99_000_000] {
        let mut b = n.to_le_bytes().to_vec();
        b.extend(b"{}");
        let (msg, path, _d) = error_of(&b);
        assert_names(&msg, &path, &["header length"]);
    }
}

/// A file in no format read, named otherwise than as safetensors, is
/// said to be that, with how it begins (safetensors has no magic bytes,
/// so it is not a "malformed safetensors file"); named as safetensors, it
/// is a malformed one, its beginning shown too. A scan lists each and
/// measures the rest.
#[test]
fn a_file_in_no_format_read_says_so_and_how_it_begins() {
    let dir = tempfile::tempdir().unwrap();
    let random: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();
    let cases: [(&str, &[u8], &str); 4] = [
        ("notes.bin", b"hello, these are the notes of run 7\n", "it begins with `hello, these are the not` ..."),
        ("config.pt", br#"{"lr": 0.1}"#, r#"it begins with `{\"lr\": 0.1}`"#),
        ("empty.ckpt", b"", "the file is empty"),
        ("noise.pth", &random, "it begins with `\\x"),
    ];
    for (name, bytes, begins) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let Err(e) = Checkpoint::open(&path) else { panic!("{name} opened") };
        assert_eq!(e.kind(), "unknown_format", "{name}: {e}");
        assert_names(&e.to_string(), &path, &["not a checkpoint in a format cntscope reads", begins]);
    }
    let named = dir.path().join("notes.safetensors");
    std::fs::write(&named, b"hello, these are the notes of run 7\n").unwrap();
    let Err(e) = Checkpoint::open(&named) else { panic!("notes.safetensors opened") };
    assert_eq!(e.kind(), "malformed", "{e}");
    assert_names(&e.to_string(), &named, &["header length", "it begins with `hello"]);

    common::mlp(&dir.path().join("good.safetensors"), 1, &[]);
    let out = dir.path().join("out");
    let run = common::scan_paths(&[dir.path().to_path_buf()], &out, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    // (The CSV doubles the quotes of config.pt's beginning.)
    let rows: Vec<(&str, &str)> =
        cases.iter().map(|&(name, _, begins)| (name, begins.split('"').next().unwrap())).collect();
    common::assert_error_rows(&out.join("errors.csv"), "unknown_format", &rows);
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
    assert!(nodes.lines().skip(1).all(|l| l.contains("good.safetensors")) && nodes.lines().count() > 1, "{nodes}");
}

#[test]
fn offsets_out_of_range_or_overlapping() {
    let out_of_range = r#"{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"a.bias":{"dtype":"F32","shape":[2],"data_offsets":[16,1000000]}}"#;
    let (msg, path, _d) = error_of(&with_header(out_of_range, 24));
    assert_names(&msg, &path, &[]);
    let overlapping = r#"{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"a.bias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let (msg, path, _d) = error_of(&with_header(overlapping, 16));
    assert_names(&msg, &path, &["a.bias"]);
    let overflow = r#"{"a.weight":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#;
    let (msg, path, _d) = error_of(&with_header(overflow, 16));
    assert_names(&msg, &path, &["overflow"]);
}

#[test]
fn unsupported_dtype_names_tensor() {
    let header = r#"{"a.weight":{"dtype":"I64","shape":[2,2],"data_offsets":[0,32]}}"#;
    let (msg, path, _d) = error_of(&with_header(header, 32));
    assert_names(&msg, &path, &["a.weight", "I64"]);
}

#[test]
fn unsupported_dtype_elsewhere_is_ignored() {
    // An integer buffer (like BatchNorm's num_batches_tracked) is not a layer.
    let header = r#"{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"bn.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[16,24]}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.safetensors");
    std::fs::write(&path, with_header(header, 24)).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    CpuEngine::default().analyze(&net, &ck, &AnalysisOptions::default()).unwrap();
}

/// NaN and Inf weights and biases do not fail a checkpoint: each layer
/// counts its own, each node set the nodes they reach, and every statistic
/// is over the finite values (hand-computed here), on every engine, and in
/// the binned distributions of a study.
#[test]
fn non_finite_values_are_flagged_per_layer_and_node_set() {
    for bad in [f64::NAN, f64::INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diverged.safetensors");
        // a: 4 -> 3 with w[k] = (k + 1) / 8, except w[5] (row 1, column 1)
        // and w[7] (row 1, column 3); b: 3 -> 2, its second bias bad.
        let mut a: Vec<f64> = (0..12).map(|k| (k + 1) as f64 * 0.125).collect();
        a[5] = bad;
        a[7] = bad;
        write_st(
            &path,
            &[
                T::f32("a.weight", &[3, 4], a),
                T { name: "a.bias", dtype: DType::F16, shape: vec![3], values: vec![0.5; 3] },
                T::f32("b.weight", &[2, 3], vec![0.25, 0.5, 0.75, 1.0, 1.25, 1.5]),
                T::f32("b.bias", &[2], vec![0.25, bad]),
            ],
            &[],
        );
        let ck = Checkpoint::open(&path).unwrap();
        let net = Network::build(&ck, &GraphOptions::default()).unwrap();
        for engine in common::engines() {
            let what = format!("{bad} on {}", engine.name());
            let r = engine.analyze(&net, &ck, &AnalysisOptions::default()).unwrap();
            // Layers: (non-finite, finite weights, their mean, bias values kept).
            let layers: Vec<_> = r.layers.iter().map(|l| (l.non_finite, l.weights.n, l.weights.mean)).collect();
            assert_eq!(layers, [(2, 10, 0.8), (1, 6, 0.875)], "{what}");
            assert_eq!(r.layers[0].histogram.counts.iter().sum::<u64>(), 10, "{what}");
            let bias = r.layers[1].bias.unwrap();
            assert_eq!((bias.n, bias.mean), (1, 0.25), "{what}");
            // V0: column sums 1.875, bad, 2.625, bad. V1: rows of a + 0.5
            // plus columns of b: 3, bad, 8. V2: 1.75, bad.
            let sets: Vec<_> =
                r.node_sets.iter().map(|s| (s.non_finite, s.strength.n, s.strength.mean, s.strength.std())).collect();
            assert_eq!(sets, [(2, 2, 2.25, 0.375), (1, 2, 5.5, 2.5), (1, 1, 1.75, 0.0)], "{what}");
            assert_eq!((r.node_sets[1].s_in_mean, r.node_sets[1].s_out_mean), (3.75, 1.75), "{what}");
            for s in &r.node_sets {
                assert_eq!(s.histogram.counts.iter().sum::<u64>(), s.strength.n, "{what}: {}", s.name);
            }
            // A layer measured alone (how the GPU takes networks too large
            // to batch): the bad row's sum is not finite, the others exact.
            let w = ck.tensor("a.weight").unwrap();
            let layer = engine.layer(&net.layers[0], net.layout, &w, None, None, 8).unwrap();
            let s_in = layer.s_in.to_nodes(net.layout);
            assert!(!s_in[1].is_finite(), "{what}: {s_in:?}");
            assert_eq!((s_in[0], s_in[2]), (1.25, 5.25), "{what}");
            // A study's binned distributions leave the same values out.
            let ranges = BinRanges { node_sets: vec![(0.0, 10.0); 3], layers: vec![(0.0, 2.0); 2] };
            let b = engine.binned(&net, &ck, &ranges, 16).unwrap();
            let kept: Vec<(u64, u64)> =
                b.node_sets.iter().chain(&b.layers).map(|d| (d.moments.n, d.histogram.counts.iter().sum())).collect();
            assert_eq!(kept, [(2, 2), (2, 2), (1, 1), (10, 10), (6, 6)], "{what}");
        }
    }
}

#[test]
fn shape_that_breaks_the_chain_names_both_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_st(
        &path,
        &[T::f32("first.weight", &[5, 4], vec![0.1; 20]), T::f32("second.weight", &[3, 6], vec![0.1; 18])],
        &[],
    );
    let ck = Checkpoint::open(&path).unwrap();
    let spec = Spec::parse(
        "[[layers]]\nweight = \"first.weight\"\n[[layers]]\nweight = \"second.weight\"\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let err = Network::build(&ck, &GraphOptions { spec: Some(spec), ..Default::default() }).unwrap_err().to_string();
    assert_names(&err, &path, &["first", "second"]);
    // Without a spec, discovery falls back to layer-by-layer analysis.
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    assert!(!net.is_chain());
    assert_eq!(net.node_sets.len(), 4);
    let a = CpuEngine::default().analyze(&net, &ck, &AnalysisOptions::default()).unwrap();
    assert_eq!(a.node_sets[0].strength.n, 4);
    assert!((a.node_sets[0].strength.mean - 0.5).abs() < 1e-6, "out-strength of first's inputs is 5 x 0.1");
}

#[test]
fn bad_bias_shape_and_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.safetensors");
    write_st(&path, &[T::f32("a.weight", &[3, 4], vec![0.1; 12]), T::f32("a.bias", &[4], vec![0.1; 4])], &[]);
    let ck = Checkpoint::open(&path).unwrap();
    // A [3, 4] weight with a bias of 4 is read as stored [in, out] (GPT-2's
    // Conv1D), and says so.
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    assert!(net.notes.iter().any(|n| n.contains("[in, out]")), "{:?}", net.notes);
    // A bias that fits neither orientation is an error naming it.
    let path = dir.path().join("b5.safetensors");
    write_st(&path, &[T::f32("a.weight", &[3, 4], vec![0.1; 12]), T::f32("a.bias", &[5], vec![0.1; 5])], &[]);
    let ck5 = Checkpoint::open(&path).unwrap();
    let err = Network::build(&ck5, &GraphOptions::default()).unwrap_err().to_string();
    assert_names(&err, &path, &["a.bias", "3 outputs"]);
    let path = dir.path().join("b.safetensors");
    let spec = Spec::parse("[[layers]]\nweight = \"nope.weight\"\n", Path::new("s.toml")).unwrap();
    let err = Network::build(&ck, &GraphOptions { spec: Some(spec), ..Default::default() }).unwrap_err().to_string();
    assert_names(&err, &path, &["nope.weight", "not found"]);
}

#[test]
fn conv_without_input_shape_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    write_st(&path, &[T::f32("c.weight", &[2, 1, 3, 3], vec![0.1; 18])], &[]);
    let ck = Checkpoint::open(&path).unwrap();
    // Without --input the grid is unknown: measured at channel level, and said.
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    assert!(net.notes.iter().any(|n| n.contains("channel level")), "{:?}", net.notes);
    assert!(net.not_chain.as_deref().is_some_and(|r| r.contains("--input")), "{:?}", net.not_chain);
}

#[test]
fn random_mutations_never_panic() {
    // Flip, overwrite and cut bytes of a valid file: every outcome is Ok or
    // an error, never a panic (the harness would report it).
    let good = good_bytes();
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        if next() % 4 == 0 {
            b.truncate((next() as usize) % b.len());
        }
        std::fs::write(&path, &b).unwrap();
        if let Ok(ck) = Checkpoint::open(&path) {
            if let Ok(net) = Network::build(&ck, &GraphOptions::default()) {
                let _ = CpuEngine::default().analyze(&net, &ck, &AnalysisOptions::default());
            }
        }
    }
}

/// Files of every length around the reader's thresholds (one read of 64
/// KiB first, mapping from 1 MiB) read back whole, and the same files one
/// byte short or four bytes long are rejected.
#[test]
fn lengths_around_the_read_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    for threshold in [64usize << 10, 1 << 20] {
        let mut lengths = Vec::new();
        for n in threshold / 4 - 24..threshold / 4 + 4 {
            let values: Vec<f64> = (0..n).map(|i| i as f64).collect();
            write_st(&path, &[T::f32("x", &[n], values)], &[]);
            let good = std::fs::read(&path).unwrap();
            lengths.push(good.len());
            let ck = Checkpoint::open(&path).unwrap();
            let x = ck.tensor("x").unwrap().to_f64();
            assert!(x.len() == n && x.iter().enumerate().all(|(i, &v)| v == i as f64), "{} bytes", good.len());
            let mut long = good.clone();
            long.extend([0; 4]);
            for bad in [&good[..good.len() - 1], &long[..]] {
                std::fs::write(&path, bad).unwrap();
                let msg = Checkpoint::open(&path).err().expect("a file of the wrong length").to_string();
                assert!(msg.contains("file length does not match"), "{} bytes: {msg}", bad.len());
            }
        }
        for len in [threshold - 4, threshold, threshold + 4] {
            assert!(lengths.contains(&len), "no file of {len} bytes among {lengths:?}");
        }
    }
}

/// A mapped checkpoint that is not in the page cache (dropped from it with
/// `POSIX_FADV_DONTNEED` after a sync) is read in by the reader's own
/// thread while it is measured, and reads back whole, twice over.
#[cfg(target_os = "linux")]
#[test]
fn a_checkpoint_out_of_the_page_cache_reads_back_whole() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cold.safetensors");
    let n = 3 << 20;
    write_st(&path, &[T::f32("x", &[n], (0..n).map(|i| (i % 1000) as f64).collect())], &[]);
    for _ in 0..2 {
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a valid descriptor; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let ck = Checkpoint::open(&path).unwrap();
        let x = ck.tensor("x").unwrap().to_f64();
        assert!(x.len() == n && x.iter().enumerate().all(|(i, &v)| v == (i % 1000) as f64));
    }
}

/// A two-layer dense network of about 1.5 MB (mapped, not read), its
/// values drawn from `seed`.
fn mapped_mlp(path: &Path, seed: u64) {
    mlp_of(path, seed, 600, 640);
}

/// A dense network `i -> h -> 10`, its values drawn from `seed`.
fn mlp_of(path: &Path, seed: u64, i: usize, h: usize) {
    let w1 = common::values(h * i, seed);
    let w2 = common::values(10 * h, seed + 1);
    write_st(path, &[T::f32("a.weight", &[h, i], w1), T::f32("b.weight", &[10, h], w2)], &[]);
}

/// A checkpoint that another process cuts short (as `torch.save` does when
/// it overwrites a file) or rewrites in place while it is measured, on
/// each engine: the process survives the cut (a mapped page past the new
/// end would raise SIGBUS), and the measures are refused as
/// `Error::Changed`, naming the file, never kept. A small file, read
/// whole when opened, is not affected by a later rewrite.
#[test]
fn a_checkpoint_changed_while_measured_is_refused_not_measured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    let measure = |ck: &Checkpoint, engine: &dyn Engine| {
        let net = Network::build(ck, &GraphOptions::default())?;
        engine.analyze(&net, ck, &AnalysisOptions::default())
    };
    for engine in common::engines() {
        for cut in [true, false] {
            mapped_mlp(&path, 3);
            let ck = Checkpoint::open(&path).unwrap();
            assert!(ck.unless_changed(measure(&ck, engine.as_ref())).is_ok(), "{}: unchanged", engine.name());
            std::thread::sleep(std::time::Duration::from_millis(20));
            if cut {
                let half = std::fs::metadata(&path).unwrap().len() / 2;
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(half).unwrap();
            } else {
                use std::io::{Seek, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
                f.write_all(&[0x7f; 4096]).unwrap();
            }
            let err = ck.unless_changed(measure(&ck, engine.as_ref())).map(|_| ()).unwrap_err();
            assert_eq!(err.kind(), "changed", "{}: {err}", engine.name());
            assert_names(&err.to_string(), &path, &["changed while it was read"]);
        }
    }
    let small = dir.path().join("small.safetensors");
    std::fs::write(&small, good_bytes()).unwrap();
    let ck = Checkpoint::open(&small).unwrap();
    std::fs::write(&small, b"rewritten").unwrap();
    let a = ck.unless_changed(measure(&ck, &CpuEngine::default())).unwrap();
    // Each input node of the 3x4 layer of 0.5s: three links of 0.5.
    assert_eq!(a.node_sets[0].strength.mean, 1.5);
}

/// Scans of a run directory while the training script keeps overwriting
/// its checkpoints (truncated, then written a piece at a time, as
/// `torch.save` writes), each in turn with one of two versions (files
/// that are mapped and files that are read): no scan
/// dies, every row a scan keeps is one version's true measure (never a mix
/// of two, or of one and zeros), and every checkpoint it does not measure
/// is an `errors.csv` row: `changed` (written while read) or `malformed`
/// (read half written).
#[test]
fn scans_while_checkpoints_are_overwritten_never_die_or_mix() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("ckpt-{i}.safetensors")).collect();
    // Each checkpoint's rows, by file name, without the path.
    let rows = |out: &Path| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(out.join("nodes.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let (path, rest) = l.split_once(',').unwrap();
                (Path::new(path).file_name().unwrap().to_str().unwrap().to_string(), rest.to_string())
            })
            .collect()
    };
    let mut truth = Vec::new();
    let mut versions = Vec::new();
    for v in 0..2u64 {
        let version = dir.path().join(format!("version-{v}"));
        std::fs::create_dir_all(&version).unwrap();
        for (i, name) in names.iter().enumerate() {
            let (inputs, hidden) = if i % 2 == 0 { (600, 640) } else { (100, 200) };
            mlp_of(&version.join(name), 10 * v + i as u64, inputs, hidden);
        }
        let out = dir.path().join(format!("out-version-{v}"));
        assert!(common::scan_paths(std::slice::from_ref(&version), &out, &[]).status.success());
        truth.extend(rows(&out));
        versions.push(names.iter().map(|n| std::fs::read(version.join(n)).unwrap()).collect::<Vec<_>>());
    }
    for (name, b) in names.iter().zip(&versions[0]) {
        std::fs::write(run.join(name), b).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, run, names) = (stop.clone(), run.clone(), names.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            for round in 1.. {
                for (name, b) in names.iter().zip(&versions[round % 2]) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let mut f = std::fs::File::create(run.join(name)).unwrap();
                    for piece in b.chunks(b.len().div_ceil(6)) {
                        f.write_all(piece).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    // Training between saves.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        })
    };
    let (mut kept, mut changed, mut scans) = (0, 0, 0);
    let start = std::time::Instant::now();
    while scans < 4 || (changed == 0 || kept == 0) && start.elapsed() < std::time::Duration::from_secs(60) {
        let out = dir.path().join(format!("out-{scans}"));
        let o = common::scan_paths(std::slice::from_ref(&run), &out, &[]);
        let status = o.status;
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(matches!(status.code(), Some(0..=2)), "scan {scans} ended by {status}: {stderr}");
        for row in rows(&out) {
            assert!(truth.contains(&row), "scan {scans} kept a row neither version has: {row:?}");
            kept += 1;
        }
        let errors = std::fs::read_to_string(out.join("errors.csv")).unwrap();
        for line in errors.lines().skip(1) {
            assert!(line.contains(",changed,") || line.contains(",malformed,"), "scan {scans}: {line}");
            changed += usize::from(line.contains(",changed,"));
        }
        scans += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("{scans} scans: {kept} rows kept, {changed} checkpoints seen changing");
    assert!(changed > 0 && kept > 0, "{scans} scans: {kept} rows kept, {changed} checkpoints seen changing");
}
