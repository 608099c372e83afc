//! One GPU submission's work: the tensors to upload, the job tables of
//! every kernel, and the sizes of the buffers they write. The layers and
//! node sets of many networks go into one plan, so one submission and a
//! handful of dispatches serve a whole batch.

use std::borrow::Cow;

use crate::checkpoint::{Checkpoint, DType, Tensor};
use crate::graph::{Conv, Layer, LayerKind, Network};

use crate::spec::Layout;

use super::super::{dense_in_out, dense_storage};

/// "No such region" in job tables (`NONE` in `jobs.wgsl`).
pub(super) const NONE: u32 = u32::MAX;
/// Rows per workgroup of `dense_sums.wgsl`.
pub(super) const DENSE_ROWS: usize = 16;
/// Threads per workgroup of the element-wise kernels.
pub(super) const WG: usize = 256;
/// Upper bound on the workgroups of one reduction job.
pub(super) const REDUCE_GROUPS: usize = 1024;
/// Elements per workgroup below which a reduction job gets no more
/// workgroups: small jobs take one, a large tensor up to `REDUCE_GROUPS`.
const REDUCE_PER_GROUP: usize = 8 * WG;
/// Floats per moment partial (`moments.wgsl`).
pub(super) const PARTIAL: usize = 8;

/// Storage types as the kernels read them (F64 is narrowed on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GpuDType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
}

impl GpuDType {
    pub(super) fn size(self) -> usize {
        if self == GpuDType::F32 {
            4
        } else {
            2
        }
    }
}

/// A tensor's bytes as the kernels read them.
pub(super) struct GpuTensor<'a> {
    pub(super) dtype: GpuDType,
    pub(super) bytes: Cow<'a, [u8]>,
}

impl<'a> GpuTensor<'a> {
    pub(super) fn new(t: &Tensor<'a>) -> Self {
        let (dtype, bytes) = match t.dtype {
            DType::F32 => (GpuDType::F32, t.bytes().into()),
            DType::F16 => (GpuDType::F16, t.bytes().into()),
            DType::BF16 => (GpuDType::BF16, t.bytes().into()),
            DType::F64 => {
                let narrowed: Vec<f32> = t.to_f64().into_iter().map(|v| v as f32).collect();
                (GpuDType::F32, Cow::Owned(bytemuck::cast_slice(&narrowed).to_vec()))
            }
        };
        GpuTensor { dtype, bytes }
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Elements `start..end`: their bytes from the enclosing word on, and
    /// the element offset of `start` within that word.
    pub(super) fn chunk(&self, start: usize, end: usize) -> GpuTensor<'_> {
        let size = self.dtype.size();
        let aligned = start * size / 4 * 4;
        GpuTensor { dtype: self.dtype, bytes: Cow::Borrowed(&self.bytes[aligned..end * size]) }
    }

    /// Element offset of a chunk's first element within its first word.
    pub(super) fn lead(&self, start: usize) -> u32 {
        ((start * self.dtype.size()) % 4 / self.dtype.size()) as u32
    }
}

/// Bytes a plan binds per buffer role; a plan must keep each under the
/// adapter's binding limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Footprint {
    pub(super) weights: u64,
    pub(super) strengths: u64,
    pub(super) scratch: u64,
    pub(super) biases: u64,
}

impl Footprint {
    /// The largest of the roles.
    pub(super) fn largest(&self) -> u64 {
        self.weights.max(self.strengths).max(self.scratch).max(self.biases)
    }

    fn add(&mut self, o: Footprint) {
        self.weights += o.weights;
        self.strengths += o.strengths;
        self.scratch += o.scratch;
        self.biases += o.biases;
    }

    /// What one layer adds, its weights taking `weight_bytes` on the GPU.
    pub(super) fn of_layer(layer: &Layer, weight_bytes: u64) -> Footprint {
        let scratch = match layer.kind {
            LayerKind::Dense { inputs, outputs, in_out } => {
                let (rows, cols) = dense_storage(in_out, inputs, outputs);
                rows.div_ceil(DENSE_ROWS) * cols
            }
            LayerKind::Conv(c) | LayerKind::ConvTranspose(c) => (c.cout + c.cin()) * c.kh * c.kw,
            _ => 0,
        };
        let scales = if layer.norm.is_some() || layer.scale.is_some() { layer.output.channels() } else { 0 };
        Footprint {
            weights: weight_bytes.next_multiple_of(4),
            strengths: 4 * (layer.input.count() + layer.output.count() + scales) as u64,
            scratch: 4 * scratch as u64,
            biases: 4 * layer.output.count() as u64,
        }
    }

    /// What a whole network adds (tensors it cannot read count as empty:
    /// planning it reports the error).
    pub(super) fn of_network(net: &Network, ck: &Checkpoint) -> Footprint {
        let mut f = Footprint::default();
        for layer in &net.layers {
            let tensor = layer.weight.as_deref().map(|w| ck.tensor(w));
            let bytes = tensor.and_then(|t| t.ok()).map_or(0, |t| (t.len() * gpu_size(t.dtype)) as u64);
            f.add(Footprint::of_layer(layer, bytes));
        }
        f
    }

    /// The sum of two footprints.
    pub(super) fn plus(mut self, o: Footprint) -> Footprint {
        self.add(o);
        self
    }
}

/// Bytes per element on the GPU (F64 is narrowed to f32).
fn gpu_size(d: DType) -> usize {
    if d == DType::F64 {
        4
    } else {
        d.size()
    }
}

/// A job table: `stride` words a job, word 0 the job's first work item.
#[derive(Debug, Clone)]
pub(super) struct JobTable {
    pub(super) words: Vec<u32>,
    /// Work items (workgroups) over all jobs.
    pub(super) total: u32,
    /// Jobs.
    pub(super) count: u32,
}

impl JobTable {
    fn new() -> Self {
        JobTable { words: Vec::new(), total: 0, count: 0 }
    }

    fn push(&mut self, items: usize, fields: &[u32]) -> u32 {
        self.words.push(self.total);
        self.words.extend_from_slice(fields);
        self.total += items as u32;
        self.count += 1;
        self.count - 1
    }
}

/// A histogram range as the kernels take it (set by the host in
/// [`Plan::fixed_ranges`]): `lo, hi, bins / (hi - lo)`.
pub(super) fn kernel_range((lo, hi): (f64, f64), bins: usize) -> [f32; 4] {
    [lo as f32, hi as f32, (bins as f64 / (hi - lo)) as f32, 0.0]
}

/// A folded BatchNorm's factors in the strengths buffer: element `i` of a
/// tensor counts `region[(i / divisor) % count]` times.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scale {
    pub(super) region: u32,
    pub(super) divisor: u32,
    pub(super) count: u32,
}

/// What a reduction job runs over.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// A tensor in the weights buffer: word offset, dtype, first element,
    /// and its factors when a BatchNorm is folded into it.
    Weights(u32, GpuDType, u32, Option<Scale>),
    /// One strengths region, or the sum of two (s_in + s_out).
    Strengths(u32, Option<u32>),
}

/// Where a reduction job's results land.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reduction {
    /// Its index in the reduction job table.
    pub(super) job: usize,
    /// Index of its first partial.
    pub(super) partials: usize,
    /// Its partials (workgroups).
    pub(super) groups: usize,
    /// Offset of its histogram in the counts.
    pub(super) counts: usize,
    /// Its bins (0: no histogram).
    pub(super) bins: usize,
}

/// Where one layer's strengths land in the strengths buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct LayerSlots {
    /// Offset and length of the in-strengths of its outputs.
    pub(super) s_in: (u32, usize),
    /// Offset and length of the out-strengths of its inputs.
    pub(super) s_out: (u32, usize),
}

/// The work of one submission.
pub(super) struct Plan<'a> {
    /// Tensors and the byte offsets they go to in the weights buffer.
    pub(super) uploads: Vec<(u64, GpuTensor<'a>)>,
    pub(super) weight_bytes: u64,
    pub(super) biases: Vec<f32>,
    /// Values written into the strengths buffer by the host.
    pub(super) host_strengths: Vec<(u32, Vec<f32>)>,
    pub(super) strength_len: usize,
    pub(super) scratch_len: usize,
    pub(super) partials_len: usize,
    pub(super) counts_len: usize,
    pub(super) dense: JobTable,
    pub(super) columns: JobTable,
    pub(super) conv_sums: JobTable,
    pub(super) conv_strengths: JobTable,
    pub(super) reductions: JobTable,
    /// Histogram ranges set by the host (one per reduction job) instead of
    /// computed from the moments, for tensors streamed in chunks.
    pub(super) fixed_ranges: Option<Vec<[f32; 4]>>,
}

impl<'a> Plan<'a> {
    pub(super) fn new() -> Self {
        Plan {
            uploads: Vec::new(),
            weight_bytes: 0,
            biases: Vec::new(),
            host_strengths: Vec::new(),
            strength_len: 0,
            scratch_len: 0,
            partials_len: 0,
            counts_len: 0,
            dense: JobTable::new(),
            columns: JobTable::new(),
            conv_sums: JobTable::new(),
            conv_strengths: JobTable::new(),
            reductions: JobTable::new(),
            fixed_ranges: None,
        }
    }

    /// The bytes this plan binds per buffer role.
    pub(super) fn footprint(&self) -> Footprint {
        Footprint {
            weights: self.weight_bytes,
            strengths: 4 * self.strength_len as u64,
            scratch: 4 * self.scratch_len as u64,
            biases: 4 * self.biases.len() as u64,
        }
    }

    /// Queues a tensor for upload; returns its word offset.
    pub(super) fn add_tensor(&mut self, t: GpuTensor<'a>) -> u32 {
        let offset = self.weight_bytes;
        self.weight_bytes += (t.bytes.len() as u64).next_multiple_of(4);
        self.uploads.push((offset, t));
        (offset / 4) as u32
    }

    /// Appends bias values; returns their offset.
    pub(super) fn add_bias(&mut self, values: &[f64]) -> u32 {
        let offset = self.biases.len() as u32;
        self.biases.extend(values.iter().map(|&v| v as f32));
        offset
    }

    /// Reserves `n` floats of strengths.
    pub(super) fn alloc_strengths(&mut self, n: usize) -> u32 {
        let offset = self.strength_len as u32;
        self.strength_len += n;
        offset
    }

    /// Values the host writes into the strengths buffer.
    pub(super) fn add_host_strengths(&mut self, values: Vec<f32>) -> u32 {
        let offset = self.alloc_strengths(values.len());
        self.host_strengths.push((offset, values));
        offset
    }

    /// Plans a layer's strengths from its weights at `word`; the biases at
    /// offset `bias` are added to `s_in`; `scale` is the region of a folded
    /// BatchNorm's factors.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_layer(
        &mut self,
        layer: &Layer,
        layout: Layout,
        word: u32,
        dtype: GpuDType,
        bias: Option<u32>,
        scale: Option<u32>,
    ) -> LayerSlots {
        let s_in_len = layer.output.count();
        let s_out_len = layer.input.count();
        let s_in = self.alloc_strengths(s_in_len);
        let s_out = self.alloc_strengths(s_out_len);
        match layer.kind {
            LayerKind::Dense { inputs, outputs, in_out } => {
                let (rows, cols) = dense_storage(in_out, inputs, outputs);
                let (row_dst, col_dst) = dense_in_out(in_out, s_in, s_out);
                let (row_bias, col_bias) = dense_in_out(in_out, bias, None);
                let scale = scale.map(|s| (s, in_out));
                self.add_dense(word, dtype, 0, rows, cols, row_dst, row_bias, col_dst, col_bias, scale);
            }
            LayerKind::Conv(conv) => self.add_conv(&conv, layout, word, dtype, bias, scale, s_in, s_out),
            _ => unreachable!("only dense and conv layers are planned"),
        }
        LayerSlots { s_in: (s_in, s_in_len), s_out: (s_out, s_out_len) }
    }

    /// Plans one whole layer from its weights `t` (and bias values, added
    /// to `s_in`; a folded BatchNorm's factors per output channel):
    /// upload, strengths, and moments with a histogram of `bins` bins of
    /// its (scaled) weights.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_measured_layer(
        &mut self,
        layer: &Layer,
        layout: Layout,
        t: GpuTensor<'a>,
        bias: Option<&[f64]>,
        scale: Option<&[f64]>,
        bins: usize,
    ) -> (LayerSlots, Reduction) {
        let (n, dtype) = (t.len(), t.dtype);
        let bias = bias.map(|b| self.add_bias(b));
        let scale = scale.map(|a| {
            let outputs_last = layer.outputs_last(layout);
            let count = a.len();
            let divisor = if outputs_last { 1 } else { n / count.max(1) };
            let region = self.add_host_strengths(a.iter().map(|&v| v as f32).collect());
            Scale { region, divisor: divisor as u32, count: count as u32 }
        });
        let word = self.add_tensor(t);
        let slots = self.add_layer(layer, layout, word, dtype, bias, scale.map(|s| s.region));
        (slots, self.add_reduction(Source::Weights(word, dtype, 0, scale), n, bins))
    }

    /// Plans row and column sums of a stored `rows x cols` matrix.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_dense(
        &mut self,
        word: u32,
        dtype: GpuDType,
        lead: u32,
        rows: usize,
        cols: usize,
        row_dst: u32,
        row_bias: Option<u32>,
        col_dst: u32,
        col_bias: Option<u32>,
        scale: Option<(u32, bool)>,
    ) {
        let blocks = rows.div_ceil(DENSE_ROWS);
        let parts = self.scratch_len as u32;
        self.scratch_len += blocks * cols;
        let (scale, by_col) = scale.map_or((NONE, 0), |(s, by_col)| (s, u32::from(by_col)));
        let row_bias = row_bias.unwrap_or(NONE);
        let fields = [word, dtype as u32, lead, rows as u32, cols as u32, parts, row_dst, row_bias, scale, by_col];
        self.dense.push(blocks, &fields);
        let fields = [parts, blocks as u32, cols as u32, col_dst, col_bias.unwrap_or(NONE)];
        self.columns.push(cols.div_ceil(WG), &fields);
    }

    #[allow(clippy::too_many_arguments)]
    fn add_conv(
        &mut self,
        c: &Conv,
        layout: Layout,
        word: u32,
        dtype: GpuDType,
        bias: Option<u32>,
        scale: Option<u32>,
        s_in: u32,
        s_out: u32,
    ) {
        let taps = c.kh * c.kw;
        let cin = c.cin();
        let g = c.geometry;
        let keras = u32::from(layout == Layout::Keras);
        let k = self.scratch_len as u32;
        let q = k + (c.cout * taps) as u32;
        self.scratch_len += (c.cout + cin) * taps;
        let dims = [c.cout, c.cin_g, taps, c.cout / g.groups, g.groups].map(|v| v as u32);
        let fields =
            [word, dtype as u32, dims[0], dims[1], dims[2], dims[3], dims[4], keras, k, q, scale.unwrap_or(NONE)];
        self.conv_sums.push(((c.cout + cin) * taps).div_ceil(WG), &fields);
        let [h, w] = c.in_hw;
        let [ho, wo] = c.out_hw;
        let dims = [cin, h, w, c.cout, ho, wo, c.kh, c.kw, g.stride[0], g.stride[1], g.padding[0], g.padding[1]];
        let mut fields: Vec<u32> = vec![k, q, bias.unwrap_or(NONE), s_in, s_out];
        fields.extend(dims.iter().chain(&[g.dilation[0], g.dilation[1]]).map(|&v| v as u32));
        fields.push(keras);
        fields.push(u32::from(c.channel_level));
        let nodes = c.cout * ho * wo + cin * h * w;
        self.conv_strengths.push(nodes.div_ceil(WG), &fields);
    }

    /// Plans moments (and, with `bins > 0`, a histogram) of `n` values.
    pub(super) fn add_reduction(&mut self, source: Source, n: usize, bins: usize) -> Reduction {
        let groups = n.div_ceil(REDUCE_PER_GROUP).clamp(1, REDUCE_GROUPS);
        let r = Reduction {
            job: self.reductions.count as usize,
            partials: self.partials_len,
            groups,
            counts: self.counts_len,
            bins,
        };
        self.partials_len += groups;
        self.counts_len += bins;
        let (src, dtype, a, b, lead, scale) = match source {
            Source::Weights(word, dtype, lead, scale) => (0, dtype as u32, word, NONE, lead, scale),
            Source::Strengths(a, b) => (1, 0, a, b.unwrap_or(NONE), 0, None),
        };
        let scale = scale.map_or([NONE, 1, 1], |s| [s.region, s.divisor.max(1), s.count.max(1)]);
        let fields = [
            groups as u32,
            src,
            dtype,
            a,
            b,
            lead,
            n as u32,
            r.partials as u32,
            r.counts as u32,
            bins as u32,
            scale[0],
            scale[1],
            scale[2],
        ];
        self.reductions.push(groups, &fields);
        r
    }
}
