//! Shared test helpers: writing safetensors files, the engines under test,
//! and the one tolerance check every numeric test uses.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cntscope::checkpoint::{Checkpoint, DType};
use cntscope::engine::{CpuEngine, Engine, GpuContext, GpuEngine};
use safetensors::tensor::{Dtype, TensorView};

/// A tensor to write: name, storage dtype, shape, values (rounded to the
/// dtype on write).
pub struct T<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl<'a> T<'a> {
    pub fn f32(name: &'a str, shape: &[usize], values: Vec<f64>) -> Self {
        T { name, dtype: DType::F32, shape: shape.to_vec(), values }
    }
}

/// The value as it reads back after storage in `dtype`.
pub fn stored(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
    }
}

fn encode(values: &[f64], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::F32 => out.extend((v as f32).to_le_bytes()),
            DType::F64 => out.extend(v.to_le_bytes()),
            DType::F16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
        }
    }
    out
}

/// A 6-5-3 MLP in torch naming (weights and biases from `seed`) with
/// `metadata`.
pub fn mlp(path: &Path, seed: u64, metadata: &[(&str, &str)]) {
    write_st(
        path,
        &[
            T::f32("net.0.weight", &[5, 6], values(30, seed)),
            T::f32("net.0.bias", &[5], values(5, seed + 1)),
            T::f32("net.2.weight", &[3, 5], values(15, seed + 2)),
            T::f32("net.2.bias", &[3], values(3, seed + 3)),
        ],
        metadata,
    );
}

/// Writes a safetensors file with the tensors and `__metadata__`.
pub fn write_st(path: &Path, tensors: &[T<'_>], metadata: &[(&str, &str)]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(&t.values, t.dtype)).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let dtype = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::F64 => Dtype::F64,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
            };
            (t.name.to_string(), TensorView::new(dtype, t.shape.clone(), b).unwrap())
        })
        .collect();
    let meta: Option<HashMap<String, String>> =
        (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    safetensors::tensor::serialize_to_file(views, meta, path).unwrap();
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Every engine to run a correctness test on: the CPU reference and the
/// GPU (see [`gpu`]).
pub fn engines() -> Vec<Box<dyn Engine>> {
    let mut v: Vec<Box<dyn Engine>> = vec![Box::new(CpuEngine::new(2))];
    if let Some(ctx) = gpu() {
        v.push(Box::new(GpuEngine::new(ctx)));
    }
    v
}

/// The process's one GPU context. Without an adapter a GPU test fails,
/// saying how to get one (Mesa's software Vulkan driver runs the real
/// kernels anywhere), so a skip is never invisible; `CNTSCOPE_SKIP_GPU=1`
/// skips instead, as an explicit choice (`None`, with a SKIP line).
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(None) {
        Ok(ctx) => Some(Arc::new(ctx)),
        Err(e) if std::env::var("CNTSCOPE_SKIP_GPU").is_ok_and(|v| v == "1") => {
            eprintln!("SKIP gpu engine (CNTSCOPE_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!(
            "no GPU adapter for the GPU tests: {e}\ninstall Mesa's software Vulkan driver \
             (`apt-get install mesa-vulkan-drivers`), or set CNTSCOPE_SKIP_GPU=1 to skip them"
        ),
    })
    .clone()
}

/// Checks `got` against `want` within `rel * max|want|` (SPEC section 7's
/// form), and says where and by how much it failed.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    assert_within(what, got, want, |_| rel * scale);
}

/// Checks `got[i]` against `want[i]` within `tol(i)`, and says where and by
/// how much it failed (the worst value).
#[track_caller]
pub fn assert_within(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    // The value furthest outside its tolerance (NaN counts as furthest).
    let excess = |i: usize| {
        let e = (got[i] - want[i]).abs() - tol(i);
        if e.is_nan() {
            f64::INFINITY
        } else {
            e
        }
    };
    let Some(i) = (0..got.len()).max_by(|&a, &b| excess(a).total_cmp(&excess(b))) else { return };
    if excess(i) > 0.0 {
        panic!(
            "{what}: node {i}: got {}, want {} (|diff| {:.3e} > tolerance {:.3e})",
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            tol(i)
        );
    }
}

/// Every node set's strengths on every engine against `expected`'s
/// `SET/strength` vectors (computed by the framework itself): the CPU
/// within 1e-9 of each set's largest value, the GPU within 1e-5.
pub fn assert_strengths_match(what: &str, net: &cntscope::graph::Network, ck: &Checkpoint, expected: &Checkpoint) {
    assert_eq!(net.node_sets.len(), expected.names().len(), "{what}: node sets");
    for engine in engines() {
        let cpu = engine.name() == "cpu";
        let options = cntscope::engine::AnalysisOptions { keep_values: true, bins: 10 };
        let a = engine.analyze(net, ck, &options).unwrap();
        for set in &a.node_sets {
            let want = expected.tensor(&format!("{}/strength", set.name)).unwrap().to_f64();
            let got = &set.values.as_ref().unwrap().strength;
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let tol = |_| if cpu { 1e-9 * scale } else { 1e-5 * scale };
            assert_within(&format!("{what} {} {}", engine.name(), set.name), got, &want, tol);
        }
    }
}

/// Writes `n` mutations of a valid file's bytes to `path` in turn and
/// opens, builds and measures each (none may panic): how many were
/// measured and how many refused.
pub fn measure_mutations(good: &[u8], path: &Path, n: usize) -> (usize, usize) {
    measure_mutations_in(good, path, path, n)
}

/// [`measure_mutations`] of one file of a checkpoint that is a folder:
/// each mutation written to `file`, the checkpoint `open`ed; `file` is
/// left as `good` was.
pub fn measure_mutations_in(good: &[u8], file: &Path, open: &Path, n: usize) -> (usize, usize) {
    use cntscope::checkpoint::Checkpoint;
    use cntscope::engine::AnalysisOptions;
    use cntscope::graph::{GraphOptions, Network};
    let (mut ok, mut refused) = (0, 0);
    for m in mutations(good, n) {
        std::fs::write(file, &m).unwrap();
        let measured = Checkpoint::open(open).and_then(|ck| {
            let net = Network::build(&ck, &GraphOptions::default())?;
            CpuEngine::default().analyze(&net, &ck, &AnalysisOptions::default())
        });
        match measured {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    std::fs::write(file, good).unwrap();
    (ok, refused)
}

/// Each file's row of a scan's `errors.csv`: of `kind`, saying `want`.
pub fn assert_error_rows(errors_csv: &Path, kind: &str, rows: &[(&str, &str)]) {
    let errors = std::fs::read_to_string(errors_csv).unwrap();
    for (file, want) in rows {
        let line = errors.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("no errors.csv row for {file}"));
        assert!(line.contains(&format!(",{kind},")) && line.contains(want), "{file}: {line}");
    }
}

/// `n` mutations of a valid file's bytes, the same every run: one to four
/// changes each, a bit flipped, a byte replaced or the file cut short.
pub fn mutations(good: &[u8], n: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut s = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n).map(move |_| {
        let mut m = good.to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() % m.len() as u64) as usize;
            match next() % 3 {
                0 => m[at] ^= 1 << (next() % 8),
                1 => m[at] = next() as u8,
                _ => m.truncate(at.max(1)),
            }
        }
        m
    })
}

/// `cntscope scan PATHS... -o OUT EXTRA...`, run to its end.
pub fn scan_paths(paths: &[std::path::PathBuf], out: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cntscope"))
        .arg("scan")
        .args(paths)
        .args(["-o", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}
