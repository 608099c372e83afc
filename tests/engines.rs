//! Engine primitives against the CPU reference on odd sizes: node-set
//! moments and histograms, link-weight statistics, and the GPU's chunked
//! path for tensors larger than a binding (forced with a tiny chunk limit).

mod common;

use std::sync::Arc;

use cntscope::checkpoint::{Checkpoint, DType};
use cntscope::engine::{CpuEngine, Engine, GpuContext, GpuEngine, LayerMeasures};
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::Layout;
use cntscope::stats::{Histogram, Moments};
use common::{assert_close, engines, values, write_st, T};

const ODD_SIZES: [usize; 6] = [1, 700, 2257, 6 * 1024, 65_537, 1_000_003];

fn summary(m: &Moments) -> [f64; 6] {
    [m.mean, m.std(), m.min, m.max, m.skewness(), m.kurtosis()]
}

/// Checks an engine's histogram against the reference's and the values
/// both counted. The ranges agree within SPEC section 7's tolerance
/// (`1e-5 x max|value|`), every value within the range (up to that
/// tolerance) is counted, and every inner bin edge lies where the
/// reference puts it up to twice the tolerance: the count below it must lie
/// between the counts of the values below that edge moved down and up by
/// that much (an f32 value and an f32 edge may each be off by the
/// tolerance, so a value that close to an edge may land on either side;
/// with many equal values, as in f16 weights, that can move a whole bin's
/// worth).
#[track_caller]
fn assert_histogram(what: &str, got: &Histogram, want: &Histogram, values: &[f64]) {
    assert_eq!(got.counts.len(), want.counts.len(), "{what}: bins");
    let tol = 1e-5 * want.lo.abs().max(want.hi.abs());
    assert!(
        (got.lo - want.lo).abs() <= tol && (got.hi - want.hi).abs() <= tol,
        "{what}: range [{}, {}], want [{}, {}]",
        got.lo,
        got.hi,
        want.lo,
        want.hi
    );
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let delta = 2.0 * tol;
    let from = sorted.partition_point(|&v| v < want.lo - tol);
    let below = |e: f64| (sorted.partition_point(|&v| v < e) - from) as u64;
    let total = sorted.partition_point(|&v| v <= want.hi + tol) - from;
    assert_eq!(got.counts.iter().sum::<u64>(), total as u64, "{what}: values counted");
    let edges = want.edges();
    let mut counted = 0;
    for (k, &c) in got.counts[..got.counts.len() - 1].iter().enumerate() {
        counted += c;
        let (e, bounds) = (edges[k + 1], below(edges[k + 1] - delta)..=below(edges[k + 1] + delta));
        assert!(
            bounds.contains(&counted),
            "{what}: {counted} values below edge {} ({e}), want {bounds:?}; counts {:?}, reference {:?}",
            k + 1,
            got.counts,
            want.counts
        );
    }
}

#[test]
fn node_set_distributions_match_reference() {
    let cpu = CpuEngine::default();
    for (i, n) in ODD_SIZES.into_iter().enumerate() {
        // Strength-like values: offset, skewed, heavy-ish tail.
        let v: Vec<f64> = values(n, i as u64).iter().map(|x| 3.0 + x * x * x * 5.0 + x).collect();
        let (want, want_h) = cpu.distribution(&v, 37).unwrap();
        for e in engines() {
            let (m, h) = e.distribution(&v, 37).unwrap();
            assert_eq!(m.n, n as u64);
            let scale = want.min.abs().max(want.max.abs());
            // mean, std, min, max within 1e-5 of the set's largest value.
            let got4 = [m.mean, m.std(), m.min, m.max, scale];
            let want4 = [want.mean, want.std(), want.min, want.max, scale];
            assert_close(&format!("{} n={n} [mean, std, min, max]", e.name()), &got4, &want4, 1e-5);
            if n > 2 {
                assert_close(
                    &format!("{} n={n} [skew, kurt]", e.name()),
                    &summary(&m)[4..],
                    &summary(&want)[4..],
                    1e-3,
                );
            }
            assert_histogram(&format!("{} n={n}", e.name()), &h, &want_h, &v);
        }
    }
}

/// One dense layer `[rows, cols]` stored as `dtype`, measured by `engine`;
/// also its weights as stored.
fn dense_layer(engine: &dyn Engine, rows: usize, cols: usize, dtype: DType, bins: usize) -> (LayerMeasures, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let w: Vec<f64> = values(rows * cols, 42).into_iter().map(|x| 0.1 + x * 0.5).collect();
    write_st(&path, &[T { name: "l.weight", dtype, shape: vec![rows, cols], values: w }], &[]);
    let ck = Checkpoint::open(&path).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    let w = ck.tensor("l.weight").unwrap();
    (engine.layer(&net.layers[0], net.layout, &w, None, None, bins).unwrap(), w.to_f64())
}

/// A dense layer's strengths from two engines agree node by node.
fn assert_strengths_close(what: &str, got: &LayerMeasures, want: &LayerMeasures) {
    for (side, g, w) in [("s_in", &got.s_in, &want.s_in), ("s_out", &got.s_out, &want.s_out)] {
        assert_close(&format!("{what} {side}"), &g.to_nodes(Layout::Torch), &w.to_nodes(Layout::Torch), 1e-5);
    }
}

#[test]
fn link_weight_statistics_match_reference() {
    let cpu = CpuEngine::default();
    for (rows, cols) in [(700, 1), (6, 1024), (37, 61), (1025, 333)] {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let (want, weights) = dense_layer(&cpu, rows, cols, dtype, 50);
            for e in engines() {
                let (got, _) = dense_layer(e.as_ref(), rows, cols, dtype, 50);
                let what = format!("{} {rows}x{cols} {dtype:?}", e.name());
                assert_eq!(got.weights.n, want.weights.n, "{what}");
                assert_close(
                    &format!("{what} weights"),
                    &summary(&got.weights)[..4],
                    &summary(&want.weights)[..4],
                    1e-5,
                );
                assert_strengths_close(&what, &got, &want);
                assert_histogram(&what, &got.histogram, &want.histogram, &weights);
            }
        }
    }
}

#[test]
fn gpu_uploads_large_tensors_in_parallel() {
    // Over 8 MiB: copied to the staging memory by several threads, in
    // parts that do not divide the tensor evenly.
    let Some(ctx) = common::gpu() else { return };
    let gpu = GpuEngine::new(ctx);
    let (rows, cols) = (1543, 1367);
    let (want, weights) = dense_layer(&CpuEngine::default(), rows, cols, DType::F32, 50);
    let (got, _) = dense_layer(&gpu, rows, cols, DType::F32, 50);
    assert!(weights.len() * 4 > 8 << 20);
    assert_strengths_close("parallel upload", &got, &want);
    assert_histogram("parallel upload", &got.histogram, &want.histogram, &weights);
}

#[test]
fn gpu_chunks_tensors_larger_than_a_binding() {
    // A 64 KiB chunk limit splits these layers into many row chunks, with
    // f16 chunks starting mid-word: the same path that lets an 8192 x 8192
    // layer run on an adapter with 128 MiB bindings.
    let Some(_) = common::gpu() else { return };
    let small = Arc::new(GpuContext::with_chunk_limit(None, 64 << 10).unwrap());
    let gpu = GpuEngine::new(small);
    let cpu = CpuEngine::default();
    for (rows, cols, dtype) in [(1001, 97, DType::F16), (513, 300, DType::F32), (77, 1023, DType::BF16)] {
        let (want, weights) = dense_layer(&cpu, rows, cols, dtype, 20);
        let (got, _) = dense_layer(&gpu, rows, cols, dtype, 20);
        let what = format!("chunked {rows}x{cols} {dtype:?}");
        assert_strengths_close(&what, &got, &want);
        assert_close(&format!("{what} weights"), &summary(&got.weights)[..4], &summary(&want.weights)[..4], 1e-5);
        assert_histogram(&what, &got.histogram, &want.histogram, &weights);
    }
}

#[test]
fn gpu_batches_match_one_by_one_reference() {
    // Mixed conv and dense networks, F16 and F32, with and without biases,
    // a network with a NaN weight and one that cannot be measured in the
    // middle; a small binding limit makes the batch flush several times.
    // Every network must get the CPU's numbers (the NaN one exactly: it is
    // handed to the reference) and the failing one its own error.
    let Some(_) = common::gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 0..12u64 {
        let path = dir.path().join(format!("n{i}.safetensors"));
        let dtype = if i % 2 == 0 { DType::F32 } else { DType::F16 };
        let mut tensors = vec![
            T { name: "a.weight", dtype, shape: vec![4, 2, 3, 3], values: values(72, i) },
            T { name: "b.weight", dtype, shape: vec![7, 4 * 6 * 6], values: values(7 * 144, i + 50) },
        ];
        if i % 3 != 0 {
            tensors.push(T { name: "a.bias", dtype, shape: vec![4], values: values(4, i + 99) });
            tensors.push(T { name: "b.bias", dtype, shape: vec![7], values: values(7, i + 98) });
        }
        if i == 5 {
            tensors[1].values[3] = f64::NAN;
        }
        write_st(&path, &tensors, &[]);
        if i == 7 {
            // An integer bias of the right shape: the graph builds, measuring fails.
            let mut bytes = std::fs::read(&path).unwrap();
            let (from, to) = (br#""F16","shape":[7]"#, br#""I16","shape":[7]"#);
            let at = bytes.windows(from.len()).position(|w| w == from).expect("the bias in the header");
            bytes[at..at + to.len()].copy_from_slice(to);
            std::fs::write(&path, bytes).unwrap();
        }
        paths.push(path);
    }
    let options = GraphOptions { input: Some(vec![2, 8, 8]), ..Default::default() };
    let cks: Vec<Checkpoint> = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let nets: Vec<Network> = cks.iter().map(|c| Network::build(c, &options).unwrap()).collect();
    let items: Vec<(&Network, &Checkpoint)> = nets.iter().zip(&cks).collect();
    let opts = cntscope::engine::AnalysisOptions { keep_values: true, bins: 9 };
    let gpu = GpuEngine::new(Arc::new(GpuContext::with_chunk_limit(None, 16 << 10).unwrap()));
    let batched = gpu.analyze_batch(&items, &opts);
    assert_eq!(batched.len(), items.len());
    for (i, (got, (net, ck))) in batched.iter().zip(&items).enumerate() {
        let want = CpuEngine::default().analyze(net, ck, &opts);
        if i == 7 {
            let (g, w) = (got.as_ref().unwrap_err().to_string(), want.unwrap_err().to_string());
            assert!(g.contains("`b.bias` has unsupported dtype I16"), "{g}");
            assert_eq!(g, w, "the failing network's error");
            continue;
        }
        if i == 5 {
            let (got, want) = (got.as_ref().unwrap(), want.unwrap());
            assert_eq!(got.layers.iter().map(|l| l.non_finite).collect::<Vec<_>>(), [0, 1]);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "the NaN network");
            continue;
        }
        let (got, want) = (got.as_ref().unwrap(), want.unwrap());
        for (g, w) in got.node_sets.iter().zip(&want.node_sets) {
            let what = format!("network {i} node set {}", w.name);
            let (gv, wv) = (&g.values.as_ref().unwrap().strength, &w.values.as_ref().unwrap().strength);
            assert_close(&what, gv, wv, 1e-5);
            let scale = w.strength.min.abs().max(w.strength.max.abs());
            let got4 = [g.strength.mean, g.strength.std(), g.s_in_mean, g.s_out_mean, scale];
            let want4 = [w.strength.mean, w.strength.std(), w.s_in_mean, w.s_out_mean, scale];
            assert_close(&format!("{what} summaries"), &got4, &want4, 1e-5);
            assert_histogram(&what, &g.histogram, &w.histogram, wv);
        }
        for (g, w) in got.layers.iter().zip(&want.layers) {
            let what = format!("network {i} layer {}", w.name);
            assert_close(&what, &summary(&g.weights)[..4], &summary(&w.weights)[..4], 1e-5);
            assert_eq!(g.bias.map(|b| b.n), w.bias.map(|b| b.n), "{what} bias");
            assert_histogram(&what, &g.histogram, &w.histogram, &ck.tensor(&w.weight).unwrap().to_f64());
        }
    }
}

#[test]
fn binned_on_shared_edges_matches_reference() {
    // The ensemble analysis pools node strengths and weights on edges shared
    // by all checkpoints; the GPU bins them in one submission.
    let Some(ctx) = common::gpu() else { return };
    let gpu = GpuEngine::new(ctx);
    let cpu = CpuEngine::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.safetensors");
    write_st(
        &path,
        &[
            T::f32("a.weight", &[37, 61], values(37 * 61, 3)),
            T::f32("a.bias", &[37], values(37, 4)),
            T { name: "b.weight", dtype: DType::F16, shape: vec![5, 37], values: values(185, 5) },
        ],
        &[],
    );
    let ck = Checkpoint::open(&path).unwrap();
    let net = Network::build(&ck, &GraphOptions::default()).unwrap();
    let ranges = cntscope::engine::BinRanges {
        node_sets: vec![(-20.0, 20.0), (-40.0, 40.0), (-30.0, 30.0)],
        layers: vec![(-1.0, 1.0), (-1.5, 1.5)],
    };
    let want = cpu.binned(&net, &ck, &ranges, 4096).unwrap();
    let got = gpu.binned(&net, &ck, &ranges, 4096).unwrap();
    for (what, g, w) in want
        .node_sets
        .iter()
        .zip(&got.node_sets)
        .map(|(w, g)| ("node set", g, w))
        .chain(want.layers.iter().zip(&got.layers).map(|(w, g)| ("layer", g, w)))
    {
        assert_eq!((g.histogram.lo, g.histogram.hi), (w.histogram.lo, w.histogram.hi));
        assert_histogram(what, &g.histogram, &w.histogram, w.values.as_ref().unwrap());
        let scale = w.moments.min.abs().max(w.moments.max.abs());
        assert_close(what, &[g.moments.mean, g.moments.std(), scale], &[w.moments.mean, w.moments.std(), scale], 1e-5);
        assert!(w.values.is_some() && g.values.is_none());
    }
}

/// Keras-layout convs are read two ways on the CPU: f32 kernels copied
/// into torch's order for the SIMD passes, other dtypes summed run by run
/// in their own order. The same values (representable in f16) stored as
/// F32, F16 and F64 give the same strengths, moments and histograms, with
/// a BatchNorm folded, groups and a stride.
#[test]
fn keras_convs_read_alike_in_every_dtype() {
    let spec = "input = [4, 9, 7]\nlayout = \"keras\"\n\
                [[layers]]\nweight = \"a/kernel\"\nbias = \"a/bias\"\nnorm = \"bn\"\nstride = 2\npadding = 1\n\
                [[layers]]\nweight = \"dw/kernel\"\ngroups = 6\npadding = [1, 0]\npadding_after = [1, 1]\n\
                [[layers]]\nweight = \"b/kernel\"\ngroups = 2\n";
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("net.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let spec = cntscope::spec::Spec::load(&spec_path).unwrap();
    let f16ish = |n: usize, seed: u64| -> Vec<f64> {
        values(n, seed).into_iter().map(|v| half::f16::from_f64(v).to_f64()).collect()
    };
    let measured: Vec<_> = [DType::F32, DType::F16, DType::F64]
        .into_iter()
        .map(|dtype| {
            let t = |name, shape: &[usize], seed| T {
                name,
                dtype,
                shape: shape.to_vec(),
                values: f16ish(shape.iter().product(), seed),
            };
            let var = T {
                values: f16ish(6, 9).iter().map(|v| half::f16::from_f64(v.abs() + 0.5).to_f64()).collect(),
                ..t("bn/moving_variance", &[6], 9)
            };
            let tensors = vec![
                t("a/kernel", &[3, 3, 4, 6], 1),
                t("a/bias", &[6], 2),
                t("bn/gamma", &[6], 3),
                t("bn/beta", &[6], 4),
                t("bn/moving_mean", &[6], 5),
                var,
                t("dw/kernel", &[3, 3, 1, 6], 6),
                t("b/kernel", &[1, 3, 3, 8], 7),
            ];
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            write_st(&path, &tensors, &[]);
            let ck = Checkpoint::open(&path).unwrap();
            let net = Network::build(&ck, &GraphOptions { spec: Some(spec.clone()), ..Default::default() }).unwrap();
            CpuEngine::default()
                .analyze(&net, &ck, &cntscope::engine::AnalysisOptions { keep_values: true, bins: 20 })
                .unwrap()
        })
        .collect();
    let (f32s, others) = measured.split_first().unwrap();
    for other in others {
        for (a, b) in f32s.node_sets.iter().zip(&other.node_sets) {
            let (x, y) = (&a.values.as_ref().unwrap().strength, &b.values.as_ref().unwrap().strength);
            assert_close(&format!("{} strengths", a.name), x, y, 1e-12);
        }
        for (a, b) in f32s.layers.iter().zip(&other.layers) {
            assert_close(&format!("{} weights", a.name), &summary(&a.weights)[..4], &summary(&b.weights)[..4], 1e-12);
            assert_eq!(a.histogram.counts, b.histogram.counts, "{} histogram", a.name);
        }
    }
}
