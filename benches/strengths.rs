//! Dense and conv strengths and node-set reductions on each engine, with the
//! floor beside them: one pass reading every weight byte of the same mapped
//! file. Run: `cargo bench --bench strengths` (GPU rows appear when an
//! adapter exists).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use cntscope::checkpoint::Checkpoint;
use cntscope::engine::{CpuEngine, Engine, GpuContext, GpuEngine};
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::Spec;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use safetensors::tensor::{Dtype, TensorView};

/// `n` pseudo-random f32 values in [-0.5, 0.5), as little-endian bytes.
fn random_f32_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = 0x2545f4914f6cdd1du64 ^ seed;
    (0..n)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5).to_le_bytes()
        })
        .collect()
}

/// Writes one f32 tensor of `shape` with pseudo-random values.
fn write_tensor(path: &Path, name: &str, shape: &[usize]) {
    let bytes = random_f32_bytes(shape.iter().product(), 0);
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes).unwrap();
    safetensors::tensor::serialize_to_file([(name, view)], None, path).unwrap();
}

fn engines() -> Vec<(&'static str, Box<dyn Engine>)> {
    let mut v: Vec<(&'static str, Box<dyn Engine>)> = vec![("cpu", Box::new(CpuEngine::new(num_cpus())))];
    match GpuContext::new(None) {
        Ok(ctx) => {
            eprintln!("gpu adapter: {}", ctx.adapter());
            v.push(("gpu", Box::new(GpuEngine::new(Arc::new(ctx)))));
        }
        Err(e) => eprintln!("no GPU rows: {e}"),
    }
    v
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One pass over every byte of the tensor: the floor of the problem.
fn read_floor(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).fold(0u64, |a, x| a.wrapping_add(x))
}

fn bench_layers(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engines = engines();
    let cases: [(&str, Vec<usize>, Option<&str>); 2] = [
        ("dense 4096x4096", vec![4096, 4096], None),
        (
            "conv 128x64x3x3 on 32x32",
            vec![128, 64, 3, 3],
            Some("input = [64, 32, 32]\n[[layers]]\nweight = \"w.weight\"\npadding = 1\n"),
        ),
    ];
    let mut group = c.benchmark_group("layer");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(4));
    for (label, shape, spec) in cases {
        let path = dir.path().join(format!("{}.safetensors", label.replace(' ', "_")));
        write_tensor(&path, "w.weight", &shape);
        let ck = Checkpoint::open(&path).unwrap();
        let spec = spec.map(|s| Spec::parse(s, Path::new("bench.toml")).unwrap());
        let net = Network::build(&ck, &GraphOptions { spec, ..Default::default() }).unwrap();
        let w = ck.tensor("w.weight").unwrap();
        group.throughput(Throughput::Bytes(w.bytes().len() as u64));
        group.bench_function(BenchmarkId::new("read floor", label), |b| b.iter(|| black_box(read_floor(w.bytes()))));
        for (name, e) in &engines {
            group.bench_function(BenchmarkId::new(*name, label), |b| {
                b.iter(|| black_box(e.layer(&net.layers[0], net.layout, &w, None, None, 50).unwrap()))
            });
        }
    }
    group.finish();
}

fn bench_reductions(c: &mut Criterion) {
    let engines = engines();
    let mut group = c.benchmark_group("node set distribution");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(4));
    for n in [700usize, 6 * 1024, 1 << 20] {
        let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 * 1e-3 - 0.5).collect();
        group.throughput(Throughput::Elements(n as u64));
        for (name, e) in &engines {
            group.bench_function(BenchmarkId::new(*name, n), |b| b.iter(|| black_box(e.distribution(&v, 50).unwrap())));
        }
    }
    group.finish();
}

/// A zoo of small networks (64-24-16-10 MLPs, as in a seed sweep): the
/// per-checkpoint cost of each engine, the GPU measuring a whole batch per
/// submission.
fn bench_collection(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let sizes = [64usize, 24, 16, 10];
    let cks: Vec<Checkpoint> = (0..n)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.safetensors"));
            let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..3)
                .map(|l| {
                    let shape = vec![sizes[l + 1], sizes[l]];
                    let bytes = random_f32_bytes(shape[0] * shape[1], (i * 3 + l) as u64 + 1);
                    (format!("net.{}.weight", 2 * l), shape, bytes)
                })
                .collect();
            let views: Vec<(String, TensorView<'_>)> = tensors
                .iter()
                .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
                .collect();
            safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
            Checkpoint::open(&path).unwrap()
        })
        .collect();
    let nets: Vec<Network> = cks.iter().map(|ck| Network::build(ck, &GraphOptions::default()).unwrap()).collect();
    let items: Vec<(&Network, &Checkpoint)> = nets.iter().zip(&cks).collect();
    let opts = cntscope::engine::AnalysisOptions::default();
    let mut group = c.benchmark_group("collection");
    group.sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    group.throughput(Throughput::Elements(n as u64));
    for (name, e) in engines() {
        // The CPU engine of a scan runs one checkpoint per core.
        let cpu_one = CpuEngine::new(1);
        let e: &dyn Engine = if name == "cpu" { &cpu_one } else { e.as_ref() };
        group.bench_function(BenchmarkId::new(name, "1000 MLPs 64-24-16-10"), |b| {
            b.iter(|| black_box(e.analyze_batch(&items, &opts)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layers, bench_reductions, bench_collection);
criterion_main!(benches);
