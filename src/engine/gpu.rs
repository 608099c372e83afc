//! The GPU engine: WGSL compute kernels (`shaders/*.wgsl`, embedded at
//! compile time) run through wgpu on any Vulkan, Metal or DX12 adapter.
//!
//! One [`GpuContext`] is built per process: it holds the device, the
//! pipelines (created on first use and cached by kernel key, never by
//! shape) and scratch buffers reused across layers and checkpoints.
//! Tensors are uploaded as stored (F16/BF16 as raw halves, widened in the
//! shader); tensors larger than the adapter's binding limit are processed
//! in row chunks. Kernels accumulate in f32 with tree reductions; partial
//! moments are merged on the host in f64.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use crate::checkpoint::{DType, Tensor};
use crate::error::{Error, Result};
use crate::graph::{Conv, Layer, LayerKind};
use crate::spec::Layout;
use crate::stats::{Histogram, Moments};

use super::cpu::add_bias;
use super::{dense_in_out, dense_storage, Engine, LayerMeasures};

/// Threads per workgroup of every kernel.
const WG: u32 = 256;
/// Rows per workgroup of `dense_sums.wgsl`.
const DENSE_ROWS: u32 = 16;
/// Largest histogram the kernel's workgroup memory holds.
pub const MAX_BINS: usize = 4096;
/// Upper bound on workgroups of the strided reductions.
const REDUCE_GROUPS: u32 = 1024;
/// Upper bound on one uploaded chunk, whatever the adapter allows.
const MAX_CHUNK_BYTES: u64 = 1 << 30;

/// Source of the element-loading helpers prepended to kernels that read raw
/// tensor words.
const ELEMENTS: &str = include_str!("../../shaders/elements.wgsl");

/// The compute kernels, one per `shaders/*.wgsl` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Dense row sums and per-block column partials, one pass.
    DenseSums,
    /// Pairwise sum of the column partials.
    ColumnSums,
    /// Moments (mean, M2..M4, min, max) per workgroup.
    Moments,
    /// Histogram on equal bins.
    Histogram,
    /// Convolution kernel sums over input channels and group outputs.
    ConvKernelSums,
    /// Convolution node strengths over the pixel grid.
    ConvStrengths,
}

impl Kernel {
    /// Every kernel, for validation.
    pub const ALL: [Kernel; 6] = [
        Kernel::DenseSums,
        Kernel::ColumnSums,
        Kernel::Moments,
        Kernel::Histogram,
        Kernel::ConvKernelSums,
        Kernel::ConvStrengths,
    ];

    /// The kernel's full WGSL source (with the element helpers where it
    /// reads raw tensor words).
    pub fn source(self) -> String {
        let (own, raw) = match self {
            Kernel::DenseSums => (include_str!("../../shaders/dense_sums.wgsl"), true),
            Kernel::ColumnSums => (include_str!("../../shaders/column_sums.wgsl"), false),
            Kernel::Moments => (include_str!("../../shaders/moments.wgsl"), true),
            Kernel::Histogram => (include_str!("../../shaders/histogram.wgsl"), true),
            Kernel::ConvKernelSums => (include_str!("../../shaders/conv_kernel_sums.wgsl"), true),
            Kernel::ConvStrengths => (include_str!("../../shaders/conv_strengths.wgsl"), false),
        };
        if raw {
            format!("{ELEMENTS}\n{own}")
        } else {
            own.to_string()
        }
    }

    /// Whether the kernel reads raw tensor words (and so takes `DTYPE`).
    fn reads_raw(self) -> bool {
        !matches!(self, Kernel::ColumnSums | Kernel::ConvStrengths)
    }
}

/// Storage types as the kernels read them (F64 is narrowed on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GpuDType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
}

impl GpuDType {
    fn size(self) -> usize {
        if self == GpuDType::F32 {
            4
        } else {
            2
        }
    }
}

/// A growable buffer reused across calls.
struct Slot {
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

impl Slot {
    fn new(usage: wgpu::BufferUsages) -> Self {
        Slot { usage, buffer: None }
    }
}

/// The scratch buffers, one per role.
struct Scratch {
    weights: Slot,
    row_sums: Slot,
    col_sums: Slot,
    col_parts: Slot,
    partials: Slot,
    counts: Slot,
    k_in: Slot,
    q_out: Slot,
    bias: Slot,
    readback: Slot,
}

/// A wgpu device and queue with cached pipelines and reusable buffers.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    max_binding: u64,
    pipelines: Mutex<HashMap<(Kernel, GpuDType), wgpu::ComputePipeline>>,
    scratch: Mutex<Scratch>,
}

impl GpuContext {
    /// Opens a device on the adapter whose name contains `adapter`
    /// (case-insensitive), or else the best one available (discrete, then
    /// integrated, then virtual, then software).
    pub fn new(adapter: Option<&str>) -> Result<Self> {
        Self::with_chunk_limit(adapter, MAX_CHUNK_BYTES)
    }

    /// As [`GpuContext::new`], uploading tensors in chunks of at most
    /// `chunk_bytes` (further capped by the adapter's binding limits). Tests
    /// use a small limit to exercise the chunked path on small tensors.
    pub fn with_chunk_limit(adapter: Option<&str>, chunk_bytes: u64) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let names: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        let chosen = match adapter {
            Some(want) => {
                let want = want.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&want)).ok_or_else(|| {
                    Error::GpuUnavailable(format!(
                        "no adapter name contains `{want}`; adapters: [{}]",
                        names.join(", ")
                    ))
                })?
            }
            None => adapters.into_iter().min_by_key(|a| rank(a.get_info().device_type)).ok_or_else(|| {
                Error::GpuUnavailable(
                    "no Vulkan, Metal or DX12 adapter found (on Linux without a GPU, install Mesa's software driver: \
                     apt-get install mesa-vulkan-drivers)"
                        .into(),
                )
            })?,
        };
        let info = chosen.get_info();
        let limits = chosen.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("cntscope"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(chosen.request_device(&desc))
            .map_err(|e| Error::GpuUnavailable(format!("{}: {e}", describe(&info))))?;
        let max_binding =
            u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size).min(chunk_bytes.max(64));
        use wgpu::BufferUsages as U;
        let storage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let scratch = Scratch {
            weights: Slot::new(U::STORAGE | U::COPY_DST),
            row_sums: Slot::new(storage),
            col_sums: Slot::new(storage),
            col_parts: Slot::new(storage),
            partials: Slot::new(storage),
            counts: Slot::new(storage),
            k_in: Slot::new(storage),
            q_out: Slot::new(storage),
            bias: Slot::new(U::STORAGE | U::COPY_DST),
            readback: Slot::new(U::MAP_READ | U::COPY_DST),
        };
        Ok(GpuContext {
            device,
            queue,
            info,
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            scratch: Mutex::new(scratch),
        })
    }

    /// The adapter in use, for `-v` and error messages.
    pub fn adapter(&self) -> String {
        describe(&self.info)
    }

    /// True when the adapter is a software rasteriser (llvmpipe/lavapipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The pipeline of `kernel` for `dtype`, created on first use.
    fn pipeline(&self, kernel: Kernel, dtype: GpuDType) -> wgpu::ComputePipeline {
        let dtype = if kernel.reads_raw() { dtype } else { GpuDType::F32 };
        let mut cache = self.pipelines.lock().expect("pipeline cache poisoned");
        cache
            .entry((kernel, dtype))
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{kernel:?}")),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
                let constants = [("DTYPE", dtype as u32 as f64)];
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{kernel:?}/{dtype:?}")),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: if kernel.reads_raw() { &constants } else { &[] },
                        ..Default::default()
                    },
                    cache: None,
                })
            })
            .clone()
    }

    /// The slot's buffer, grown (to the next power of two, within the
    /// device's limits) to hold at least `bytes`.
    fn grow<'s>(&self, slot: &'s mut Slot, bytes: u64) -> &'s wgpu::Buffer {
        let bytes = bytes.max(16).next_multiple_of(4);
        if slot.buffer.as_ref().is_none_or(|b| b.size() < bytes) {
            let size = bytes.next_power_of_two().min(self.device.limits().max_buffer_size).max(bytes);
            slot.buffer = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: slot.usage,
                mapped_at_creation: false,
            }));
        }
        slot.buffer.as_ref().expect("just created")
    }

    /// Copies `bytes` into the slot's buffer, padding to whole words.
    fn upload(&self, slot: &mut Slot, bytes: &[u8]) {
        let buffer = self.grow(slot, bytes.len() as u64);
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(buffer, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(buffer, whole as u64, &tail);
        }
    }

    /// Records one dispatch of `kernel` over `groups` workgroups (spread
    /// over x and y beyond 65535) with `buffers` bound in order, after a
    /// uniform block `params` at `params_binding`.
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        dtype: GpuDType,
        params: &[u8],
        params_binding: u32,
        buffers: &[(&wgpu::Buffer, u64)],
        groups: u32,
    ) {
        let pipeline = self.pipeline(kernel, dtype);
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, params);
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        let mut binding = 0;
        for (buffer, bytes) in buffers {
            if binding == params_binding {
                binding += 1;
            }
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: NonZeroU64::new((*bytes).max(4).next_multiple_of(4)),
                }),
            });
            binding += 1;
        }
        entries.push(wgpu::BindGroupEntry { binding: params_binding, resource: uniform.as_entire_binding() });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let x = groups.clamp(1, 65535);
        pass.dispatch_workgroups(x, groups.div_ceil(x).max(1), 1);
    }

    /// Submits `encoder`, then copies each `(buffer, bytes)` back to the host.
    fn finish_and_read(
        &self,
        readback: &mut Slot,
        mut encoder: wgpu::CommandEncoder,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let total: u64 = reads.iter().map(|(_, b)| b.next_multiple_of(8)).sum();
        let target = self.grow(readback, total);
        let mut offset = 0;
        for (buffer, bytes) in reads {
            if *bytes > 0 {
                encoder.copy_buffer_to_buffer(buffer, 0, target, offset, Some(bytes.next_multiple_of(4)));
            }
            offset += bytes.next_multiple_of(8);
        }
        self.queue.submit([encoder.finish()]);
        let slice = target.slice(..total.max(8));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
        rx.recv().map_err(|e| Error::Gpu(e.to_string()))?.map_err(|e| Error::Gpu(e.to_string()))?;
        let mut out = Vec::with_capacity(reads.len());
        {
            let view = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("{e:?}")))?;
            let mut offset = 0usize;
            for (_, bytes) in reads {
                out.push(view[offset..offset + *bytes as usize].to_vec());
                offset += bytes.next_multiple_of(8) as usize;
            }
        }
        target.unmap();
        Ok(out)
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn words(values: &[u32]) -> Vec<u8> {
    bytemuck::cast_slice(values).to_vec()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Merges the per-workgroup moment partials in f64.
fn merge_partials(bytes: &[u8]) -> Moments {
    let mut m = Moments::default();
    for p in f32s(bytes).chunks_exact(8) {
        if p[0] > 0.0 {
            m.merge(&Moments {
                n: p[0] as u64,
                mean: p[1] as f64,
                m2: p[2] as f64,
                m3: p[3] as f64,
                m4: p[4] as f64,
                min: p[5] as f64,
                max: p[6] as f64,
            });
        }
    }
    m
}

/// Workgroups for a strided reduction over `n` elements.
fn reduce_groups(n: usize) -> u32 {
    (n.div_ceil(WG as usize) as u32).clamp(1, REDUCE_GROUPS)
}

/// A tensor's bytes as the kernels read them: F64 narrowed to F32.
struct GpuTensor<'a> {
    dtype: GpuDType,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl<'a> GpuTensor<'a> {
    fn new(t: &Tensor<'a>) -> Self {
        match t.dtype {
            DType::F32 => GpuTensor { dtype: GpuDType::F32, bytes: t.bytes().into() },
            DType::F16 => GpuTensor { dtype: GpuDType::F16, bytes: t.bytes().into() },
            DType::BF16 => GpuTensor { dtype: GpuDType::BF16, bytes: t.bytes().into() },
            DType::F64 => {
                let narrowed: Vec<f32> = t.to_f64().into_iter().map(|v| v as f32).collect();
                GpuTensor { dtype: GpuDType::F32, bytes: bytemuck::cast_slice(&narrowed).to_vec().into() }
            }
        }
    }

    fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Bytes of elements `start..end`, widened to whole words, and the
    /// element offset of `start` within them.
    fn chunk(&self, start: usize, end: usize) -> (&[u8], u32) {
        let size = self.dtype.size();
        let (b0, b1) = (start * size, end * size);
        let aligned = b0 / 4 * 4;
        (&self.bytes[aligned..b1], ((b0 - aligned) / size) as u32)
    }
}

/// The GPU engine over a shared context.
pub struct GpuEngine {
    ctx: Arc<GpuContext>,
}

impl GpuEngine {
    /// An engine on `ctx`.
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        GpuEngine { ctx }
    }

    /// Histogram of the elements of `t` (uploaded chunk by chunk unless
    /// `resident` says the whole tensor is in the weights slot already).
    fn histogram(
        &self,
        s: &mut Scratch,
        t: &GpuTensor<'_>,
        chunk_elems: usize,
        range: (f64, f64),
        bins: usize,
        resident: bool,
    ) -> Result<Histogram> {
        let ctx = &self.ctx;
        let mut h = Histogram::for_range(range.0, range.1, bins);
        if bins > MAX_BINS {
            return Err(Error::Gpu(format!("{bins} histogram bins; the GPU engine supports up to {MAX_BINS}")));
        }
        let counts_bytes = bins as u64 * 4;
        let counts = ctx.grow(&mut s.counts, counts_bytes).clone();
        let mut encoder = ctx.encoder();
        encoder.clear_buffer(&counts, 0, Some(counts_bytes.next_multiple_of(4)));
        let n = t.len();
        let mut start = 0;
        while start < n {
            let end = (start + chunk_elems).min(n);
            let (bytes, first) = t.chunk(start, end);
            if !resident {
                if start > 0 {
                    ctx.queue.submit([std::mem::replace(&mut encoder, ctx.encoder()).finish()]);
                }
                ctx.upload(&mut s.weights, bytes);
            }
            let weights = s.weights.buffer.as_ref().expect("uploaded");
            let scale = (bins as f64 / (h.hi - h.lo)) as f32;
            let mut params = words(&[(end - start) as u32, first, bins as u32, 0]);
            params.extend(bytemuck::cast_slice(&[h.lo as f32, h.hi as f32, scale, 0.0f32]));
            ctx.dispatch(
                &mut encoder,
                Kernel::Histogram,
                t.dtype,
                &params,
                1,
                &[(weights, bytes.len() as u64), (&counts, counts_bytes)],
                reduce_groups(end - start),
            );
            start = end;
        }
        let out = ctx.finish_and_read(&mut s.readback, encoder, &[(&counts, counts_bytes)])?;
        h.counts = out[0].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64).collect();
        Ok(h)
    }

    /// Dense row and column sums and moments of a stored `rows x cols`
    /// matrix, in row chunks that fit the adapter's binding limit.
    fn dense(
        &self,
        s: &mut Scratch,
        t: &GpuTensor<'_>,
        rows: usize,
        cols: usize,
        bins: usize,
    ) -> Result<(Vec<f64>, Vec<f64>, Moments, Histogram)> {
        let ctx = &self.ctx;
        let row_bytes = (cols * t.dtype.size()) as u64;
        let chunk_rows = ((ctx.max_binding - 4) / row_bytes).max(1) as usize;
        if row_bytes + 4 > ctx.max_binding {
            return Err(Error::Gpu(format!(
                "one row of {cols} values exceeds the adapter's {} byte binding limit",
                ctx.max_binding
            )));
        }
        let row_sums = ctx.grow(&mut s.row_sums, rows as u64 * 4).clone();
        let col_sums = ctx.grow(&mut s.col_sums, cols as u64 * 4).clone();
        let blocks_max = chunk_rows.min(rows).div_ceil(DENSE_ROWS as usize);
        let col_parts = ctx.grow(&mut s.col_parts, (blocks_max * cols) as u64 * 4).clone();
        let groups_max = reduce_groups(chunk_rows.min(rows) * cols);
        let partials = ctx.grow(&mut s.partials, groups_max as u64 * 32).clone();
        let mut moments = Moments::default();
        let mut encoder = ctx.encoder();
        encoder.clear_buffer(&col_sums, 0, Some((cols as u64 * 4).next_multiple_of(4)));
        let mut row_vals = Vec::new();
        let mut col_vals = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + chunk_rows).min(rows);
            let n = (r1 - r0) * cols;
            let (bytes, first) = t.chunk(r0 * cols, r1 * cols);
            ctx.upload(&mut s.weights, bytes);
            let weights = s.weights.buffer.as_ref().expect("uploaded");
            let blocks = (r1 - r0).div_ceil(DENSE_ROWS as usize);
            let wb = bytes.len() as u64;
            ctx.dispatch(
                &mut encoder,
                Kernel::DenseSums,
                t.dtype,
                &words(&[(r1 - r0) as u32, cols as u32, first, r0 as u32]),
                1,
                &[(weights, wb), (&row_sums, rows as u64 * 4), (&col_parts, (blocks * cols) as u64 * 4)],
                blocks as u32,
            );
            ctx.dispatch(
                &mut encoder,
                Kernel::ColumnSums,
                GpuDType::F32,
                &words(&[blocks as u32, cols as u32]),
                1,
                &[(&col_parts, (blocks * cols) as u64 * 4), (&col_sums, cols as u64 * 4)],
                cols.div_ceil(WG as usize) as u32,
            );
            let groups = reduce_groups(n);
            ctx.dispatch(
                &mut encoder,
                Kernel::Moments,
                t.dtype,
                &words(&[n as u32, first]),
                1,
                &[(weights, wb), (&partials, groups as u64 * 32)],
                groups,
            );
            r0 = r1;
            let last = r0 >= rows;
            let mut reads = vec![(&partials, groups as u64 * 32)];
            if last {
                reads.push((&row_sums, rows as u64 * 4));
                reads.push((&col_sums, cols as u64 * 4));
            }
            let out = ctx.finish_and_read(&mut s.readback, std::mem::replace(&mut encoder, ctx.encoder()), &reads)?;
            moments.merge(&merge_partials(&out[0]));
            if last {
                row_vals = f32s(&out[1]).into_iter().map(f64::from).collect();
                col_vals = f32s(&out[2]).into_iter().map(f64::from).collect();
            }
        }
        let resident = chunk_rows >= rows;
        let histogram = self.histogram(s, t, chunk_rows * cols, (moments.min, moments.max), bins, resident)?;
        Ok((row_vals, col_vals, moments, histogram))
    }

    /// Convolution strengths: kernel sums, then one thread per node.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        s: &mut Scratch,
        t: &GpuTensor<'_>,
        conv: &Conv,
        layout: Layout,
        bias: Option<&[f64]>,
        bins: usize,
    ) -> Result<(Vec<f64>, Vec<f64>, Moments, Histogram)> {
        let ctx = &self.ctx;
        if t.bytes.len() as u64 > ctx.max_binding {
            return Err(Error::Gpu(format!(
                "a {} byte convolution kernel exceeds the adapter's binding limit",
                t.bytes.len()
            )));
        }
        let &Conv { cout, cin_g, kh, kw, in_hw: [h, w], out_hw: [ho, wo], geometry: g } = conv;
        let cin = conv.cin();
        let taps = kh * kw;
        let keras = u32::from(layout == Layout::Keras);
        let (bytes, first) = t.chunk(0, t.len());
        ctx.upload(&mut s.weights, bytes);
        let bias_f32: Vec<f32> = bias.map_or(vec![0.0], |b| b.iter().map(|&v| v as f32).collect());
        ctx.upload(&mut s.bias, bytemuck::cast_slice(&bias_f32));
        let k_bytes = (cout * taps) as u64 * 4;
        let q_bytes = (cin * taps) as u64 * 4;
        let k_in = ctx.grow(&mut s.k_in, k_bytes).clone();
        let q_out = ctx.grow(&mut s.q_out, q_bytes).clone();
        let (n_in, n_out) = ((cout * ho * wo) as u64, (cin * h * w) as u64);
        let s_in = ctx.grow(&mut s.row_sums, n_in * 4).clone();
        let s_out = ctx.grow(&mut s.col_sums, n_out * 4).clone();
        let groups = reduce_groups(t.len());
        let partials = ctx.grow(&mut s.partials, groups as u64 * 32).clone();
        let weights = s.weights.buffer.as_ref().expect("uploaded");
        let bias_buf = s.bias.buffer.as_ref().expect("uploaded");
        let wb = bytes.len() as u64;
        let mut encoder = ctx.encoder();
        let params =
            [cout, cin_g, taps, cout / g.groups, g.groups, keras as usize, first as usize, 0].map(|v| v as u32);
        ctx.dispatch(
            &mut encoder,
            Kernel::ConvKernelSums,
            t.dtype,
            &words(&params),
            1,
            &[(weights, wb), (&k_in, k_bytes), (&q_out, q_bytes)],
            ((cout + cin) * taps).div_ceil(WG as usize) as u32,
        );
        let [sh, sw] = g.stride;
        let [ph, pw] = g.padding;
        let [dh, dw] = g.dilation;
        let params =
            [cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, keras as usize, usize::from(bias.is_some())]
                .map(|v| v as u32);
        ctx.dispatch(
            &mut encoder,
            Kernel::ConvStrengths,
            GpuDType::F32,
            &words(&params),
            3,
            &[
                (&k_in, k_bytes),
                (&q_out, q_bytes),
                (bias_buf, bias_f32.len() as u64 * 4),
                (&s_in, n_in * 4),
                (&s_out, n_out * 4),
            ],
            (n_in + n_out).div_ceil(WG as u64) as u32,
        );
        ctx.dispatch(
            &mut encoder,
            Kernel::Moments,
            t.dtype,
            &words(&[t.len() as u32, first]),
            1,
            &[(weights, wb), (&partials, groups as u64 * 32)],
            groups,
        );
        let out = ctx.finish_and_read(
            &mut s.readback,
            encoder,
            &[(&s_in, n_in * 4), (&s_out, n_out * 4), (&partials, groups as u64 * 32)],
        )?;
        let moments = merge_partials(&out[2]);
        let histogram = self.histogram(s, t, t.len(), (moments.min, moments.max), bins, true)?;
        let widen = |b: &[u8]| f32s(b).into_iter().map(f64::from).collect::<Vec<f64>>();
        Ok((widen(&out[0]), widen(&out[1]), moments, histogram))
    }
}

impl Engine for GpuEngine {
    fn name(&self) -> String {
        format!("gpu: {}", self.ctx.adapter())
    }

    fn layer(
        &self,
        layer: &Layer,
        layout: Layout,
        weight: &Tensor<'_>,
        bias: Option<&Tensor<'_>>,
        bins: usize,
    ) -> Result<LayerMeasures> {
        let t = GpuTensor::new(weight);
        let mut s = self.ctx.scratch.lock().expect("GPU scratch poisoned");
        let bias = bias.map(|b| b.to_f64());
        let (s_in, s_out, weights, histogram) = match layer.kind {
            LayerKind::Dense { inputs, outputs } => {
                let (rows, cols) = dense_storage(layout, inputs, outputs);
                let (row, col, m, h) = self.dense(&mut s, &t, rows, cols, bins)?;
                let (mut s_in, s_out) = dense_in_out(layout, row, col);
                if let Some(b) = &bias {
                    add_bias(&mut s_in, b, layer, layout);
                }
                (s_in, s_out, m, h)
            }
            LayerKind::Conv(conv) => self.conv(&mut s, &t, &conv, layout, bias.as_deref(), bins)?,
        };
        Ok(LayerMeasures { s_in, s_out, weights, histogram })
    }

    fn distribution(&self, values: &[f64], bins: usize) -> Result<(Moments, Histogram)> {
        let ctx = &self.ctx;
        let narrowed: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let t = GpuTensor { dtype: GpuDType::F32, bytes: bytemuck::cast_slice(&narrowed).into() };
        let mut s = ctx.scratch.lock().expect("GPU scratch poisoned");
        if t.bytes.len() as u64 > ctx.max_binding {
            return Err(Error::Gpu(format!("{} node values exceed the adapter's binding limit", values.len())));
        }
        ctx.upload(&mut s.weights, &t.bytes);
        let groups = reduce_groups(values.len());
        let partials = ctx.grow(&mut s.partials, groups as u64 * 32).clone();
        let weights = s.weights.buffer.as_ref().expect("uploaded");
        let mut encoder = ctx.encoder();
        ctx.dispatch(
            &mut encoder,
            Kernel::Moments,
            GpuDType::F32,
            &words(&[values.len() as u32, 0]),
            1,
            &[(weights, t.bytes.len() as u64), (&partials, groups as u64 * 32)],
            groups,
        );
        let out = ctx.finish_and_read(&mut s.readback, encoder, &[(&partials, groups as u64 * 32)])?;
        let m = merge_partials(&out[0]);
        let h = self.histogram(&mut s, &t, values.len(), (m.min, m.max), bins, true)?;
        Ok((m, h))
    }
}
