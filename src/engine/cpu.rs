//! The CPU reference engine: f64 accumulation, one pass over each weight
//! tensor, conv strengths in time proportional to weights + nodes.

use crate::checkpoint::Tensor;
use crate::error::Result;
use crate::graph::{Conv, Layer, LayerKind};
use crate::spec::Layout;
use crate::stats::{self, Factors, Histogram, Lanes, Moments};

use super::field::{Classes, Field};
use super::{dense_in_out, dense_storage, Engine, LayerMeasures};

/// Elements decoded at a time when streaming a tensor.
const CHUNK: usize = 4096;

/// Dense layers with at least this many weights are split into blocks
/// (measured in parallel).
const PARALLEL_MIN_WEIGHTS: usize = 1 << 19;

/// Layers with at least this many weights are measured one at a time.
const ALONE_MIN_WEIGHTS: usize = 1 << 23;

/// Weights per block of a split layer (rounded up to whole rows).
const BLOCK_WEIGHTS: usize = 1 << 18;

/// The f64 reference engine.
#[derive(Debug, Clone)]
pub struct CpuEngine {
    threads: usize,
}

impl CpuEngine {
    /// An engine that may use `threads` threads inside one large layer.
    pub fn new(threads: usize) -> Self {
        CpuEngine { threads: threads.max(1) }
    }
}

impl Default for CpuEngine {
    fn default() -> Self {
        CpuEngine::new(1)
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn layer(
        &self,
        layer: &Layer,
        layout: Layout,
        weight: &Tensor<'_>,
        scale: Option<&[f64]>,
        shift: Option<&[f64]>,
        bins: usize,
    ) -> Result<LayerMeasures> {
        let (mut s_in, s_out, weights, histogram) = match layer.kind {
            LayerKind::Conv(conv) => self.conv(layout, &Decoder { weight, scale, layout, conv }, &conv, bins),
            LayerKind::Dense { inputs, outputs, in_out } => {
                // A folded BatchNorm (rare on dense layers): the scaled
                // weights, decoded once, are what every pass reads.
                let scaled = scale.map(|a| super::scaled_weights(weight, layer, layout, a));
                let weight = &scaled.as_deref().map_or(*weight, |v| Tensor::f64_like(v, weight));
                // Dense node indices are in the layout's order.
                let (s_in, s_out, m) = self.dense(in_out, weight, inputs, outputs);
                let histogram = self.histogram(weight, &m, bins);
                (
                    Field::from_nodes(s_in, layer.output, layout),
                    Field::from_nodes(s_out, layer.input, layout),
                    m,
                    histogram,
                )
            }
            _ => unreachable!("Engine::layer measures dense and conv layers"),
        };
        if let Some(b) = shift {
            s_in.add_per_channel(|o| b[o]);
        }
        Ok(LayerMeasures { s_in, s_out, weights, histogram })
    }

    fn distribution(&self, values: &[f64], bins: usize) -> Result<(Moments, Histogram)> {
        let m = Moments::from_slice(values);
        let mut h = Histogram::for_range(m.min, m.max, bins);
        h.add_f64(values);
        Ok((m, h))
    }

    /// Layers go side by side, one per thread (each still split over
    /// every thread when large), but the largest one at a time: two of
    /// those at once contend for memory bandwidth (measured: vgg11_bn 7%
    /// slower; resnet18 15% faster with its 2.4M-weight convs side by side).
    fn concurrent_layers(&self, weights: usize) -> usize {
        if weights < ALONE_MIN_WEIGHTS {
            self.threads
        } else {
            1
        }
    }

    fn distribution_counted(&self, values: &[f64], counts: &[u64], bins: usize) -> Result<(Moments, Histogram)> {
        let m = Moments::from_counted(values, counts);
        let mut h = Histogram::for_range(m.min, m.max, bins);
        h.add_counted(values, counts);
        Ok((m, h))
    }
}

/// Row sums, column sums and moments of a stored `rows x cols` matrix.
struct RowColSums {
    rows: Vec<f64>,
    cols: Vec<f64>,
    moments: Moments,
}

/// One pass over rows `r0..r1` of a stored matrix: f32 read in place,
/// other dtypes decoded a block of whole rows (about [`CHUNK`] elements)
/// at a time. `shift` is near the weights' mean (see [`Lanes`]).
fn row_col_sums(weight: &Tensor<'_>, cols: usize, r0: usize, r1: usize, shift: f64) -> RowColSums {
    let mut out =
        RowColSums { rows: Vec::with_capacity(r1 - r0), cols: written_zeros(cols), moments: Moments::default() };
    if cols == 0 {
        out.rows.resize(r1 - r0, 0.0);
        return out;
    }
    let block = (CHUNK / cols).max(1);
    if let Some(xs) = weight.as_f32() {
        for rows in xs[r0 * cols..r1 * cols].chunks(16 * block * cols) {
            out.add_rows(rows, shift, |c, r, l| sweep_f32(c, r, Factors::Row(1.0), l));
        }
        return out;
    }
    let mut buf = vec![0.0; block.min(r1 - r0) * cols];
    for b0 in (r0..r1).step_by(block) {
        let buf = &mut buf[..block.min(r1 - b0) * cols];
        weight.decode_into(b0 * cols, buf);
        out.add_rows(buf, shift, |c, r, l| sweep(c, r, Factors::Row(1.0), l));
    }
    out
}

impl RowColSums {
    /// Adds whole rows, one `sweep` each (row sum, column sums, lanes); the
    /// block's moments are merged in at the end, so the power sums stay
    /// short.
    fn add_rows<T>(&mut self, rows: &[T], shift: f64, sweep: impl Fn(&mut [f64], &[T], &mut Lanes) -> f64) {
        let mut lanes = Lanes::new(shift);
        for row in rows.chunks_exact(self.cols.len()) {
            let sum = sweep(&mut self.cols, row, &mut lanes);
            self.rows.push(sum);
        }
        self.moments.merge(&lanes.moments(rows.len() as u64));
    }
}

/// One row, each value times its factor: added to its column sum and to
/// lane `k % 4`; returns the row's sum.
fn sweep<T: Copy + Into<f64>>(cols: &mut [f64], row: &[T], factors: Factors<'_>, lanes: &mut Lanes) -> f64 {
    let mut sum = [0.0; 4];
    for (k, (c, &x)) in cols.iter_mut().zip(row).enumerate() {
        let x: f64 = x.into() * factors.at(k);
        *c += x;
        sum[k & 3] += x;
        lanes.add(k & 3, x);
    }
    (sum[0] + sum[1]) + (sum[2] + sum[3])
}

/// [`sweep`] of f32 values, whole blocks of 8 columns with AVX2 where the
/// processor has it.
fn sweep_f32(cols: &mut [f64], row: &[f32], factors: Factors<'_>, lanes: &mut Lanes) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        let body = row.len() / 8 * 8;
        let (head, tail) = cols.split_at_mut(body);
        let head_factors = match factors {
            Factors::Columns(c) => Factors::Columns(&c[..body]),
            row => row,
        };
        // SAFETY: the processor has AVX2.
        let sum = unsafe { crate::simd::sweep_row(head, &row[..body], head_factors, lanes) };
        return sum + sweep(tail, &row[body..], factors.from(body), lanes);
    }
    sweep(cols, row, factors, lanes)
}

impl CpuEngine {
    /// Runs `f` over `0..n` elements in blocks of whole `unit`s (rows),
    /// about [`BLOCK_WEIGHTS`] each, and folds the blocks' results in block
    /// order with `merge`. The blocks depend only on `n` and `unit`, never
    /// on the thread count, and the fold is always left to right, so
    /// neither do the (floating-point) results: shards measured on
    /// machines with any number of cores merge to the bytes of one run.
    /// The blocks run as [`super::ordered::ordered`] items (all inline
    /// when `n` is small).
    fn split<T: Send>(
        &self,
        n: usize,
        unit: usize,
        f: impl Fn(usize, usize) -> T + Sync,
        merge: impl Fn(&mut T, T),
    ) -> T {
        if n < PARALLEL_MIN_WEIGHTS {
            return f(0, n);
        }
        let block = BLOCK_WEIGHTS.div_ceil(unit.max(1)) * unit.max(1);
        let count = n.div_ceil(block);
        let run = |i: usize| f(i * block, ((i + 1) * block).min(n));
        let mut all: Option<T> = None;
        let mut fold = |part: T| match &mut all {
            Some(all) => merge(all, part),
            None => all = Some(part),
        };
        super::ordered::ordered(count, self.threads, run, &mut fold);
        all.expect("n > 0: one block at least")
    }

    /// Dense strengths: one pass over the stored matrix gives its row and
    /// column sums; which is `s_in` depends on the layout.
    fn dense(&self, in_out: bool, weight: &Tensor<'_>, inputs: usize, outputs: usize) -> (Vec<f64>, Vec<f64>, Moments) {
        let (rows, cols) = dense_storage(in_out, inputs, outputs);
        // The power sums are taken about the mean of a first sample.
        let mut first = [0.0; 1024];
        let first = &mut first[..weight.len().min(1024)];
        weight.decode_into(0, first);
        let shift = if first.is_empty() { 0.0 } else { stats::sum(first) / first.len() as f64 };
        let sums = self.split(
            rows * cols,
            cols,
            |start, end| row_col_sums(weight, cols, start / cols, end / cols, shift),
            |all, part| {
                all.rows.extend(part.rows);
                for (a, b) in all.cols.iter_mut().zip(&part.cols) {
                    *a += b;
                }
                all.moments.merge(&part.moments);
            },
        );
        let (s_in, s_out) = dense_in_out(in_out, sums.rows, sums.cols);
        (s_in, s_out, sums.moments)
    }
}

/// A conv weight tensor read in storage order as f64, blocks at a time,
/// each value multiplied by its output channel's factor when a BatchNorm
/// is folded in (so the scaled weights are never stored).
struct Decoder<'a> {
    weight: &'a Tensor<'a>,
    scale: Option<&'a [f64]>,
    layout: Layout,
    conv: Conv,
}

impl Decoder<'_> {
    /// Values `at..at + out.len()` into `out`; returns `out` (or, for an
    /// unscaled f64 tensor, the values in place).
    fn block<'b>(&'b self, at: usize, out: &'b mut [f64]) -> &'b [f64] {
        let n = out.len();
        match (self.weight.as_f32(), self.weight.as_f64()) {
            (_, Some(xs)) if self.scale.is_none() => return &xs[at..at + n],
            (Some(xs), _) => {
                for (b, &x) in out.iter_mut().zip(&xs[at..at + n]) {
                    *b = f64::from(x);
                }
            }
            _ => self.weight.decode_into(at, out),
        }
        if let Some(a) = self.scale {
            match self.layout {
                // [cout, ...]: each output channel's values are one span.
                Layout::Torch => {
                    let per = self.conv.cin_g * self.conv.kh * self.conv.kw;
                    let mut j = 0;
                    while j < n {
                        let o = (at + j) / per;
                        let end = ((o + 1) * per - at).min(n);
                        out[j..end].iter_mut().for_each(|v| *v *= a[o]);
                        j = end;
                    }
                }
                // [..., cout]: blocks start at whole runs of `cout`.
                Layout::Keras => {
                    debug_assert_eq!(at % a.len(), 0);
                    for run in out.chunks_mut(a.len()) {
                        run.iter_mut().zip(a).for_each(|(v, f)| *v *= f);
                    }
                }
            }
        }
        out
    }
}

/// The K and Q sums and moments of a range of a conv's weights.
struct KernelSums {
    k_in: Vec<f64>,
    q_out: Vec<f64>,
    moments: Moments,
}

impl KernelSums {
    /// Empty sums for `conv`'s K and Q.
    fn zeros(conv: &Conv) -> Self {
        let taps = conv.kh * conv.kw;
        KernelSums {
            k_in: written_zeros(conv.cout * taps),
            q_out: written_zeros(conv.cin() * taps),
            moments: Moments::default(),
        }
    }
}

/// `n` zeros, written rather than taken zeroed from the allocator: memory
/// fresh from the system is read first as the shared zero page, and the
/// first store into each page is then a copy-on-write fault whose TLB flush
/// interrupts every core the scan runs on (a tenth of a small network's
/// scan, where each layer's sums are fresh).
fn written_zeros(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
}

impl CpuEngine {
    /// Histogram of a dense layer's weights over their `[min, max]`.
    fn histogram(&self, weight: &Tensor<'_>, m: &Moments, bins: usize) -> Histogram {
        let count = |start: usize, end: usize| {
            let mut h = Histogram::for_range(m.min, m.max, bins);
            match (weight.as_f32(), weight.as_f64()) {
                (Some(xs), _) => h.add_f32(&xs[start..end]),
                (_, Some(xs)) => h.add_f64(&xs[start..end]),
                _ => {
                    let mut buf = vec![0.0; CHUNK.min(end - start)];
                    for at in (start..end).step_by(CHUNK) {
                        let chunk = &mut buf[..(end - at).min(CHUNK)];
                        weight.decode_into(at, chunk);
                        h.add_f64(chunk);
                    }
                }
            }
            h
        };
        self.split(weight.len(), 1, count, |all, part| all.merge(&part))
    }

    /// Conv strengths without the unrolled graph. Summing the kernel over
    /// input channels gives `K[o, ky, kx]`, and over each group's output
    /// channels `Q[c, ky, kx]`; the pixel grid enters only through which
    /// taps are valid, which factorises by axis; positions with the same
    /// valid taps share a class (a [`Field`] cell), so the cost is `O(kh +
    /// kw)` per cell, not per node. The weights are read in two passes
    /// ([`CpuEngine::two_passes`]), or, for a small layer of one input
    /// channel per group (a depthwise conv), scaled once
    /// ([`one_channel_groups`]).
    fn conv(&self, layout: Layout, d: &Decoder<'_>, conv: &Conv, bins: usize) -> (Field, Field, Moments, Histogram) {
        let &Conv { cout, kh, kw, in_hw: [h, wd], out_hw: [ho, wo], geometry: g, .. } = conv;
        let (cin, taps) = (conv.cin(), kh * kw);
        let (sums, histogram) = match (layout, d.weight.as_f32()) {
            (Layout::Torch, Some(xs)) if conv.cin_g == 1 && xs.len() < PARALLEL_MIN_WEIGHTS => {
                one_channel_groups(xs, d.scale, conv, bins)
            }
            _ => self.two_passes(layout, d, conv, bins),
        };
        let m = sums.moments;
        let KernelSums { k_in, q_out, .. } = sums;
        if conv.channel_level {
            // Channels as nodes: every tap counts.
            let total = |k: &[f64]| {
                let cells: Vec<f64> = k.chunks_exact(taps).map(|t| t.iter().sum()).collect();
                Field::new(cells.len(), Classes::one(1), Classes::one(1), cells)
            };
            return (total(&k_in), total(&q_out), m, histogram);
        }
        let [sh, sw] = g.stride;
        let [ph, pw] = g.padding;
        let [dh, dw] = g.dilation;
        let field = |kern: &[f64], n: usize, rows: AxisTaps, cols: AxisTaps| {
            let ((rows, vy), (cols, vx)) = (rows.classes(), cols.classes());
            Field::new(n, rows, cols, separable(kern, kh, kw, &vy, &vx))
        };
        let s_in = field(&k_in, cout, taps_into(ho, h, kh, sh, ph, dh), taps_into(wo, wd, kw, sw, pw, dw));
        let s_out = field(&q_out, cin, taps_from(h, ho, kh, sh, ph, dh), taps_from(wd, wo, kw, sw, pw, dw));
        (s_in, s_out, m, histogram)
    }

    /// K, Q and the moments in one pass over the weights (a block per
    /// [`CpuEngine::split`] item), then the histogram on their range in a
    /// second.
    fn two_passes(&self, layout: Layout, d: &Decoder<'_>, conv: &Conv, bins: usize) -> (KernelSums, Histogram) {
        let taps = conv.kh * conv.kw;
        // Blocks of whole runs (a run: the values sharing their K and Q rows).
        let run = if layout == Layout::Torch { taps } else { conv.cout };
        let len = d.weight.len();
        let merge = |all: &mut KernelSums, part: KernelSums| {
            for (a, b) in all.k_in.iter_mut().zip(&part.k_in).chain(all.q_out.iter_mut().zip(&part.q_out)) {
                *a += b;
            }
            all.moments.merge(&part.moments);
        };
        // The moments' shift, near the mean. On the stack: a fresh heap
        // block costs two page faults with a TLB flush on every core (see
        // `written_zeros`).
        let shift = || {
            let mut first = [0.0; 1024];
            let first = d.block(0, &mut first[..len.min(1024)]);
            if first.is_empty() {
                0.0
            } else {
                stats::sum(first) / first.len() as f64
            }
        };
        let sums = match (layout, d.weight.as_f32()) {
            // The common case, read in place: each output channel's values
            // are one row of the dense sweep.
            (Layout::Torch, Some(xs)) => {
                let (per, shift) = (conv.cin_g * taps, shift());
                let rows = |start: usize, end: usize| torch_rows(xs, d.scale, conv, start / per, end / per, shift);
                self.split(len, per, rows, merge)
            }
            // Keras layout: each (tap, input channel)'s `cout` values are
            // one run, read in place when f32.
            (Layout::Keras, Some(xs)) => {
                let shift = shift();
                let runs = |start: usize, end: usize| keras_rows(xs, d.scale, conv, start / run, end / run, shift);
                self.split(len, run, runs, merge)
            }
            (Layout::Keras, None) => {
                self.split(len, run, |start, end| keras_runs(d, conv, start / run, end / run), merge)
            }
            _ => self.split(len, run, |start, end| kernel_sums(d, conv, start, end), merge),
        };
        let m = sums.moments;
        let histogram = match (d.weight.as_f32(), d.scale) {
            (Some(_), None) => self.histogram(d.weight, &m, bins),
            // Torch layout: one factor per output channel's span.
            (Some(xs), Some(a)) if layout == Layout::Torch => {
                let per = conv.cin_g * taps;
                let count = |start: usize, end: usize| {
                    let mut hist = Histogram::for_range(m.min, m.max, bins);
                    hist.add_f32_rows(&xs[start..end], per, &a[start / per..end / per]);
                    hist
                };
                self.split(len, per, count, |all, part| all.merge(&part))
            }
            // Keras layout: one factor per column of each run.
            (Some(xs), Some(a)) => {
                let count = |start: usize, end: usize| {
                    let mut hist = Histogram::for_range(m.min, m.max, bins);
                    hist.add_f32_columns(&xs[start..end], a);
                    hist
                };
                self.split(len, run, count, |all, part| all.merge(&part))
            }
            _ => {
                let count = |start: usize, end: usize| {
                    let mut hist = Histogram::for_range(m.min, m.max, bins);
                    // Longer blocks than the first pass' (binning pays a
                    // set-up per call), yet under malloc's mmap threshold.
                    let block_len = (2 * CHUNK / run).max(1) * run;
                    let mut buf = vec![0.0; block_len.min(end - start)];
                    for at in (start..end).step_by(block_len) {
                        hist.add_f64(d.block(at, &mut buf[..block_len.min(end - at)]));
                    }
                    hist
                };
                self.split(len, run, count, |all, part| all.merge(&part))
            }
        };
        (sums, histogram)
    }
}

/// K, Q, moments and histogram of a conv of one input channel per group
/// (`[cout, 1, kh, kw]`, f32, torch layout): every weight is its own tap
/// sum, so its scaled values are K itself, each group's sum of them Q, and
/// one vectorised pass each gives the moments and the histogram. (The
/// sweep of [`torch_rows`] pays a set-up per row, and a depthwise row is
/// 9 values.) The same values and bins as the two passes, the moments
/// exact to rounding.
fn one_channel_groups(xs: &[f32], scale: Option<&[f64]>, conv: &Conv, bins: usize) -> (KernelSums, Histogram) {
    let taps = conv.kh * conv.kw;
    let cout_g = conv.cout / conv.geometry.groups;
    let mut k_in = Vec::with_capacity(xs.len());
    for (o, row) in xs.chunks_exact(taps).enumerate() {
        let a = scale.map_or(1.0, |s| s[o]);
        k_in.extend(row.iter().map(|&x| f64::from(x) * a));
    }
    let moments = Moments::from_slice(&k_in);
    let mut histogram = Histogram::for_range(moments.min, moments.max, bins);
    histogram.add_f64(&k_in);
    let mut q_out = written_zeros(conv.cin() * taps);
    for (o, row) in k_in.chunks_exact(taps).enumerate() {
        let q = &mut q_out[(o / cout_g) * taps..][..taps];
        q.iter_mut().zip(row).for_each(|(q, v)| *q += v);
    }
    (KernelSums { k_in, q_out, moments }, histogram)
}

/// One pass over output channels `o0..o1` of f32 weights in torch layout
/// (`[cout, cin_g, kh, kw]`): each channel's `cin_g x taps` values are one
/// row whose column sums are its group's part of Q (the dense sweep, in
/// SIMD where the processor has it), and whose sums per tap are its row of
/// K. `factor[o]` is a folded BatchNorm's; `shift` is near the mean.
fn torch_rows(xs: &[f32], scale: Option<&[f64]>, conv: &Conv, o0: usize, o1: usize, shift: f64) -> KernelSums {
    let &Conv { cout, cin_g, kh, kw, geometry: g, .. } = conv;
    let (taps, cout_g) = (kh * kw, cout / g.groups);
    let per = cin_g * taps;
    let mut out = KernelSums::zeros(conv);
    let mut block_sums = vec![0.0; 8 * taps];
    // Moments merged a block of rows at a time, so the power sums stay short.
    let rows_per_block = (16 * CHUNK / per.max(1)).max(1);
    for b0 in (o0..o1).step_by(rows_per_block) {
        let b1 = (b0 + rows_per_block).min(o1);
        let mut lanes = Lanes::new(shift);
        for o in b0..b1 {
            let row = &xs[o * per..(o + 1) * per];
            let a = scale.map_or(1.0, |s| s[o]);
            let group = o / cout_g;
            let sum = sweep_f32(&mut out.q_out[group * per..(group + 1) * per], row, Factors::Row(a), &mut lanes);
            let k = &mut out.k_in[o * taps..(o + 1) * taps];
            if taps == 1 {
                // A 1x1 kernel: K is the row's sum.
                k[0] = sum;
                continue;
            }
            tap_sums(row, k, &mut block_sums);
            k.iter_mut().for_each(|v| *v *= a);
        }
        out.moments.merge(&lanes.moments(((b1 - b0) * per) as u64));
    }
    out
}

/// One pass over runs `r0..r1` of f32 weights in keras layout (`[kh, kw,
/// cin_g, cout]`), read in place: run `t * cin_g + ci` (tap `t`, input
/// channel `ci`) holds its `cout` values, one row of the dense sweep with a
/// folded BatchNorm's factor per column. Its column sums go to K's row of
/// tap `t` (summed tap-major, turned output-major at the end), each group's
/// part of its sum to its cell of Q. A depthwise conv's runs (`cin_g` 1)
/// are swept whole and its Q summed from K at the end, not a sweep per
/// group of a few values. `shift` is near the mean.
fn keras_rows(xs: &[f32], scale: Option<&[f64]>, conv: &Conv, r0: usize, r1: usize, shift: f64) -> KernelSums {
    let &Conv { cout, cin_g, kh, kw, geometry: g, .. } = conv;
    let (taps, cout_g) = (kh * kw, cout / g.groups);
    let factors = scale.map_or(Factors::Row(1.0), Factors::Columns);
    let mut by_tap = written_zeros(taps * cout);
    let mut out = KernelSums::zeros(conv);
    // Moments merged a block of runs at a time, so the power sums stay short.
    let runs_per_block = (16 * CHUNK / cout).max(1);
    for b0 in (r0..r1).step_by(runs_per_block) {
        let b1 = (b0 + runs_per_block).min(r1);
        let mut lanes = Lanes::new(shift);
        for r in b0..b1 {
            let (t, ci) = (r / cin_g, r % cin_g);
            let (run, k) = (&xs[r * cout..][..cout], &mut by_tap[t * cout..][..cout]);
            if g.groups == 1 || cin_g == 1 {
                let sum = sweep_f32(k, run, factors, &mut lanes);
                if g.groups == 1 {
                    out.q_out[ci * taps + t] += sum;
                }
                continue;
            }
            for (group, (k, run)) in k.chunks_exact_mut(cout_g).zip(run.chunks_exact(cout_g)).enumerate() {
                let sum = sweep_f32(k, run, factors.from(group * cout_g), &mut lanes);
                out.q_out[(group * cin_g + ci) * taps + t] += sum;
            }
        }
        out.moments.merge(&lanes.moments(((b1 - b0) * cout) as u64));
    }
    if g.groups > 1 && cin_g == 1 {
        // One input channel per group: a group's Q is its outputs' K.
        for (t, row) in by_tap.chunks_exact(cout).enumerate() {
            for (group, part) in row.chunks_exact(cout_g).enumerate() {
                out.q_out[group * taps + t] = stats::sum(part);
            }
        }
    }
    for (t, row) in by_tap.chunks_exact(cout).enumerate() {
        for (o, &k) in row.iter().enumerate() {
            out.k_in[o * taps + t] = k;
        }
    }
    out
}

/// One pass over runs `r0..r1` of a conv's weights in keras layout (`[kh,
/// kw, cin_g, cout]`: run `t * cin_g + ci` holds the `cout` values of tap
/// `t` and input channel `ci`), a block of runs decoded (and scaled by a
/// folded BatchNorm) at a time: K is summed tap-major, so each run adds to
/// one contiguous row of it (turned output-major at the end), and each
/// group's part of a run sums to its cell of Q.
fn keras_runs(d: &Decoder<'_>, conv: &Conv, r0: usize, r1: usize) -> KernelSums {
    let &Conv { cout, cin_g, kh, kw, geometry: g, .. } = conv;
    let (taps, cout_g) = (kh * kw, cout / g.groups);
    let mut by_tap = written_zeros(taps * cout);
    let mut out = KernelSums::zeros(conv);
    let runs_per_block = (CHUNK / cout).max(1);
    let mut buf = vec![0.0; runs_per_block.min(r1 - r0) * cout];
    for b0 in (r0..r1).step_by(runs_per_block) {
        let b1 = (b0 + runs_per_block).min(r1);
        let block = d.block(b0 * cout, &mut buf[..(b1 - b0) * cout]);
        out.moments.merge(&Moments::from_slice(block));
        for (r, run) in block.chunks_exact(cout).enumerate() {
            let (t, ci) = ((b0 + r) / cin_g, (b0 + r) % cin_g);
            by_tap[t * cout..][..cout].iter_mut().zip(run).for_each(|(k, v)| *k += v);
            if cout_g == 1 {
                for (group, &v) in run.iter().enumerate() {
                    out.q_out[(group * cin_g + ci) * taps + t] += v;
                }
            } else {
                for (group, part) in run.chunks_exact(cout_g).enumerate() {
                    out.q_out[(group * cin_g + ci) * taps + t] += stats::sum(part);
                }
            }
        }
    }
    for (t, row) in by_tap.chunks_exact(cout).enumerate() {
        for (o, &k) in row.iter().enumerate() {
            out.k_in[o * taps + t] = k;
        }
    }
    out
}

/// Adds to `k[t]` the sum of a torch-layout row's values of tap `t`
/// (`row[c * taps + t]`, `taps = k.len()`). Blocks of `8 x taps` values
/// start on tap 0, so they add to `block_sums` element by element (eight
/// lanes at a time, each add independent of the last), folded onto the
/// taps at the end; summing into `k` directly made each add wait on the
/// one before it, a run earlier.
fn tap_sums(row: &[f32], k: &mut [f64], block_sums: &mut [f64]) {
    let taps = k.len();
    let block = 8 * taps;
    if row.len() < 2 * block {
        for run in row.chunks_exact(taps) {
            for (k, &x) in k.iter_mut().zip(run) {
                *k += f64::from(x);
            }
        }
        return;
    }
    let sums = &mut block_sums[..block];
    sums.fill(0.0);
    let mut blocks = row.chunks_exact(block);
    for b in &mut blocks {
        crate::simd::add_widened(sums, b);
    }
    crate::simd::add_widened(sums, blocks.remainder());
    for run in sums.chunks_exact(taps) {
        for (k, s) in k.iter_mut().zip(run) {
            *k += s;
        }
    }
}

/// One pass over weights `start..end` (whole runs) of a conv in torch
/// layout that is not f32 read in place ([`torch_rows`] is), a block of
/// decoded values at a time: each run of `taps` values shares its output
/// and input channel, and goes to their K and Q cells and the moments.
fn kernel_sums(d: &Decoder<'_>, conv: &Conv, start: usize, end: usize) -> KernelSums {
    let &Conv { cout, cin_g, kh, kw, geometry: g, .. } = conv;
    let cout_g = cout / g.groups;
    let taps = kh * kw;
    let mut out = KernelSums::zeros(conv);
    let (k_in, q_out) = (&mut out.k_in, &mut out.q_out);
    let block_len = (CHUNK / taps).max(1) * taps;
    let mut buf = vec![0.0; block_len.min(end - start)];
    for at in (start..end).step_by(block_len) {
        let block = d.block(at, &mut buf[..block_len.min(end - at)]);
        out.moments.merge(&Moments::from_slice(block));
        for (r, run) in block.chunks_exact(taps).enumerate() {
            let row = (at / taps) + r;
            let (o, ci) = (row / cin_g, row % cin_g);
            let c = (o / cout_g) * cin_g + ci;
            for ((k, q), &v) in k_in[o * taps..][..taps].iter_mut().zip(&mut q_out[c * taps..][..taps]).zip(run) {
                *k += v;
                *q += v;
            }
        }
    }
    out
}

/// Per position along one axis, the kernel taps that count there: a list
/// of tap indices, `start[p]..start[p + 1]` of `taps`.
struct AxisTaps {
    start: Vec<usize>,
    taps: Vec<usize>,
}

impl AxisTaps {
    fn build(n: usize, valid: impl Fn(usize, usize) -> bool, k: usize) -> Self {
        let mut a = AxisTaps { start: Vec::with_capacity(n + 1), taps: Vec::new() };
        for p in 0..n {
            a.start.push(a.taps.len());
            a.taps.extend((0..k).filter(|&t| valid(p, t)));
        }
        a.start.push(a.taps.len());
        a
    }

    fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// Positions with the same taps as one class each, and the taps of
    /// each class.
    fn classes(&self) -> (Classes, AxisTaps) {
        let (classes, lists) = Classes::group_by((0..self.len()).map(|p| self.at(p)));
        let mut a = AxisTaps { start: Vec::with_capacity(lists.len() + 1), taps: Vec::new() };
        for list in lists {
            a.start.push(a.taps.len());
            a.taps.extend_from_slice(list);
        }
        a.start.push(a.taps.len());
        (classes, a)
    }

    fn at(&self, p: usize) -> &[usize] {
        &self.taps[self.start[p]..self.start[p + 1]]
    }
}

/// Taps of output position `p` that land inside the input
/// (`0 <= p s - pad + t d < n_in`).
fn taps_into(n_out: usize, n_in: usize, k: usize, s: usize, pad: usize, d: usize) -> AxisTaps {
    AxisTaps::build(
        n_out,
        |p, t| {
            let pos = (p * s + t * d) as i64 - pad as i64;
            pos >= 0 && pos < n_in as i64
        },
        k,
    )
}

/// Taps by which some output position reaches input position `y` (`y +
/// pad - t d` is a multiple of `s` within the output).
fn taps_from(n_in: usize, n_out: usize, k: usize, s: usize, pad: usize, d: usize) -> AxisTaps {
    AxisTaps::build(
        n_in,
        |y, t| {
            let q = (y + pad) as i64 - (t * d) as i64;
            q >= 0 && q % s as i64 == 0 && ((q / s as i64) as usize) < n_out
        },
        k,
    )
}

/// `out[i, y, x] = sum_{ty in vy[y], tx in vx[x]} kern[i, ty, tx]`, done as
/// two contractions (over `tx`, then `ty`) on the kernels laid out tap by
/// tap, so each step adds a whole row of the `n` kernels' values (one loop
/// over every channel, not a loop of a few taps per channel: a depthwise
/// layer has hundreds of channels and 3 x 3 cells). Each value is summed in
/// the same order as one channel at a time would be.
fn separable(kern: &[f64], kh: usize, kw: usize, vy: &AxisTaps, vx: &AxisTaps) -> Vec<f64> {
    let (ny, nx, taps) = (vy.len(), vx.len(), kh * kw);
    let n = kern.len() / taps;
    let mut by_tap = vec![0.0; taps * n];
    for (c, k) in kern.chunks_exact(taps).enumerate() {
        for (t, &v) in k.iter().enumerate() {
            by_tap[t * n + c] = v;
        }
    }
    let add = |dst: &mut [f64], src: &[f64]| dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
    // rows[ty, x, :] = sum over tx in vx[x] of kern[:, ty, tx]
    let mut rows = written_zeros(kh * nx * n);
    for (tyx, dst) in rows.chunks_exact_mut(n.max(1)).enumerate() {
        let (ty, x) = (tyx / nx, tyx % nx);
        for &tx in vx.at(x) {
            add(dst, &by_tap[(ty * kw + tx) * n..][..n]);
        }
    }
    // cells[y, x, :] = sum over ty in vy[y] of rows[ty, x, :]
    let mut cells = written_zeros(ny * nx * n);
    for (yx, dst) in cells.chunks_exact_mut(n.max(1)).enumerate() {
        let (y, x) = (yx / nx, yx % nx);
        for &ty in vy.at(y) {
            add(dst, &rows[(ty * nx + x) * n..][..n]);
        }
    }
    let plane = ny * nx;
    let mut out = written_zeros(n * plane);
    for (cell, values) in cells.chunks_exact(n.max(1)).enumerate() {
        for (c, &v) in values.iter().enumerate() {
            out[c * plane + cell] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tap sums in blocks of `8 x taps` agree with summing run by run, for
    /// rows shorter than two blocks, whole blocks and a partial last block.
    #[test]
    fn tap_sums_match_run_by_run() {
        for taps in [1, 2, 4, 9, 25, 49] {
            for channels in [1, 3, 15, 16, 17, 64, 67] {
                let row: Vec<f32> =
                    (0..channels * taps).map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.5 + (i as f32).cos()).collect();
                let mut plain = vec![0.25; taps];
                for run in row.chunks_exact(taps) {
                    for (k, &x) in plain.iter_mut().zip(run) {
                        *k += f64::from(x);
                    }
                }
                let mut k = vec![0.25; taps];
                tap_sums(&row, &mut k, &mut vec![f64::NAN; 8 * taps]);
                for (t, (a, b)) in k.iter().zip(&plain).enumerate() {
                    let scale = row.iter().map(|x| f64::from(x.abs())).sum::<f64>();
                    assert!((a - b).abs() <= 1e-14 * scale, "taps {taps}, {channels} channels, tap {t}: {a} vs {b}");
                }
            }
        }
    }

    /// The SIMD sweep (where this processor has it) agrees with the
    /// portable one: an odd width, so both the 8-wide body and the tail
    /// run; one factor of either sign (a folded BatchNorm's) or one per
    /// column.
    #[test]
    fn f32_sweep_matches_portable() {
        let cols = 1003;
        let row: Vec<f32> =
            (0..cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.4 + (i as f32).sin() * 0.1).collect();
        // A factor per column too (a keras-layout conv's folded BatchNorm).
        let columns: Vec<f64> = (0..cols).map(|j| [0.5, -1.5, 2.0][j % 3]).collect();
        for (factor, factors) in [
            (1.0, Factors::Row(1.0)),
            (0.37, Factors::Row(0.37)),
            (-2.5, Factors::Row(-2.5)),
            (0.0, Factors::Columns(&columns)),
        ] {
            let (mut a, mut b) = (vec![0.5; cols], vec![0.5; cols]);
            // The shift near the mean, as the engine takes it.
            let (mut la, mut lb) = (Lanes::new(0.1 * factor), Lanes::new(0.1 * factor));
            let (mut sa, mut sb) = (0.0, 0.0);
            for _ in 0..3 {
                sa += sweep_f32(&mut a, &row, factors, &mut la);
                sb += sweep(&mut b, &row, factors, &mut lb);
            }
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
            assert!(close(sa, sb), "row sums {sa} vs {sb}");
            assert!(a.iter().zip(&b).all(|(&x, &y)| close(x, y)), "column sums differ");
            let (ma, mb) = (la.moments(3 * cols as u64), lb.moments(3 * cols as u64));
            for (x, y) in [(ma.mean, mb.mean), (ma.m2, mb.m2), (ma.m3, mb.m3), (ma.m4, mb.m4)] {
                assert!(close(x, y), "moments {ma:?} vs {mb:?}");
            }
            assert_eq!((ma.min, ma.max), (mb.min, mb.max));
            let exact = Moments::from_slice(
                &row.iter().enumerate().map(|(j, &x)| f64::from(x) * factors.at(j)).collect::<Vec<_>>(),
            );
            assert_eq!((ma.min, ma.max), (exact.min, exact.max));
            assert!(close(ma.variance(), exact.variance()), "{} vs {}", ma.variance(), exact.variance());
        }
    }

    /// The in-place sweep of keras-layout f32 runs gives the K, Q and
    /// moments of the decoding path, for one group, depthwise convs (with
    /// and without a channel multiplier) and groups of several inputs and
    /// outputs; odd channel counts; with and without a folded BatchNorm.
    #[test]
    fn keras_rows_match_decoded_runs() {
        use crate::checkpoint::DType;
        use crate::graph::ConvGeometry;
        // (cin, cout, groups)
        for (cin, cout, groups) in [(5, 19, 1), (13, 13, 13), (7, 14, 7), (6, 9, 3), (4, 40, 2)] {
            let (kh, kw) = (3, 2);
            let cin_g = cin / groups;
            let n = kh * kw * cin_g * cout;
            let xs: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.45).collect();
            let geometry =
                ConvGeometry { stride: [1; 2], padding: [0; 2], padding_after: [0; 2], dilation: [1; 2], groups };
            let conv = Conv { cout, cin_g, kh, kw, in_hw: [4, 4], out_hw: [3, 3], geometry, channel_level: false };
            let shape = [kh, kw, cin_g, cout];
            let weight = Tensor::for_test("kernel", DType::F32, &shape, bytemuck::cast_slice(&xs));
            let factors: Vec<f64> = (0..cout).map(|o| [0.5, -1.25, 2.0][o % 3]).collect();
            for scale in [None, Some(&factors[..])] {
                let d = Decoder { weight: &weight, scale, layout: Layout::Keras, conv };
                let runs = kh * kw * cin_g;
                let (a, b) = (keras_rows(&xs, scale, &conv, 0, runs, 0.0), keras_runs(&d, &conv, 0, runs));
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(1.0);
                let what = format!("{cin}->{cout} in {groups} groups, scaled {}", scale.is_some());
                assert!(a.k_in.iter().zip(&b.k_in).all(|(&x, &y)| close(x, y)), "K, {what}");
                assert!(a.q_out.iter().zip(&b.q_out).all(|(&x, &y)| close(x, y)), "Q, {what}");
                let (ma, mb) = (a.moments, b.moments);
                assert_eq!((ma.n, ma.min, ma.max), (mb.n, mb.min, mb.max), "{what}");
                for (x, y) in [(ma.mean, mb.mean), (ma.m2, mb.m2), (ma.m3, mb.m3), (ma.m4, mb.m4)] {
                    assert!(close(x, y), "moments {ma:?} vs {mb:?}, {what}");
                }
            }
        }
    }
}
