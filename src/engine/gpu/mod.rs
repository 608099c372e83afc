//! The GPU engine: WGSL compute kernels (`shaders/*.wgsl`, embedded at
//! compile time) run through wgpu on any Vulkan, Metal or DX12 adapter.
//!
//! One [`GpuContext`] per process holds the device, the pipelines (created
//! on first use, cached by kernel: shapes and dtypes are data in the job
//! tables, not pipeline keys) and scratch buffers reused across batches.
//! A batch of networks becomes one `plan::Plan`: every tensor uploaded as
//! stored (F16/BF16 as raw halves, widened in the shader), then one
//! submission of at most seven dispatches whatever the batch size, then one
//! readback of moment partials and histogram counts (and strengths only when
//! per-node values were asked for). Node-set strengths `s_in + s_out` are
//! reduced straight from the two regions, never assembled. Kernels
//! accumulate in f32 with tree reductions; partial moments are merged on the
//! host in f64. Dense tensors larger than a binding are streamed in row
//! chunks.

mod plan;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use crate::checkpoint::{Checkpoint, Tensor};
use crate::error::{Error, Result};
use crate::graph::{Layer, LayerKind, Network};
use crate::spec::Layout;
use crate::stats::{Histogram, Moments};

use super::{
    assemble, binned_by_values, dense_in_out, dense_storage, histogram_on, is_finite, Analysis, AnalysisOptions,
    BinRanges, Binned, BinnedNetwork, CpuEngine, Engine, Field, LayerMeasures, LayerParams, LayerResult, NodeSetResult,
    NodeValues,
};
use plan::{kernel_range, Footprint, GpuTensor, Plan, Reduction, Source, PARTIAL};

/// Largest histogram the kernel's workgroup memory holds.
pub const MAX_BINS: usize = 4096;
/// Upper bound on one upload, whatever the adapter allows.
const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Uploads at least this large are copied to the staging memory by
/// several threads.
const PARALLEL_UPLOAD_BYTES: usize = 8 << 20;
/// A batch is submitted once its weights reach this size.
const BATCH_BYTES: u64 = 64 << 20;

/// The compute kernels, one per `shaders/*.wgsl` file besides the shared
/// helpers (`jobs.wgsl`, `elements.wgsl`, `values.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Dense row sums and per-block column partials, one pass.
    DenseSums,
    /// Pairwise sum of the column partials.
    ColumnSums,
    /// Convolution kernel sums over input channels and group outputs.
    ConvKernelSums,
    /// Convolution node strengths over the pixel grid.
    ConvStrengths,
    /// Moments (mean, M2..M4, min, max) per workgroup.
    Moments,
    /// Histogram ranges from the moment partials.
    HistogramRange,
    /// Histograms on equal bins.
    Histogram,
}

impl Kernel {
    /// Every kernel, for validation.
    pub const ALL: [Kernel; 7] = [
        Kernel::DenseSums,
        Kernel::ColumnSums,
        Kernel::ConvKernelSums,
        Kernel::ConvStrengths,
        Kernel::Moments,
        Kernel::HistogramRange,
        Kernel::Histogram,
    ];

    /// The kernel's full WGSL source: the shared helpers it uses, then its
    /// own file.
    pub fn source(self) -> String {
        const JOBS: &str = include_str!("../../../shaders/jobs.wgsl");
        const ELEMENTS: &str = include_str!("../../../shaders/elements.wgsl");
        const VALUES: &str = include_str!("../../../shaders/values.wgsl");
        let parts: &[&str] = match self {
            Kernel::DenseSums => &[JOBS, ELEMENTS, include_str!("../../../shaders/dense_sums.wgsl")],
            Kernel::ColumnSums => &[JOBS, include_str!("../../../shaders/column_sums.wgsl")],
            Kernel::ConvKernelSums => &[JOBS, ELEMENTS, include_str!("../../../shaders/conv_kernel_sums.wgsl")],
            Kernel::ConvStrengths => &[JOBS, include_str!("../../../shaders/conv_strengths.wgsl")],
            Kernel::Moments => &[JOBS, ELEMENTS, VALUES, include_str!("../../../shaders/moments.wgsl")],
            Kernel::HistogramRange => &[JOBS, include_str!("../../../shaders/histogram_range.wgsl")],
            Kernel::Histogram => &[JOBS, ELEMENTS, VALUES, include_str!("../../../shaders/histogram.wgsl")],
        };
        parts.join("\n")
    }
}

/// A growable buffer reused across submissions.
struct Slot {
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

/// The buffers, one per role.
struct Buffers {
    weights: Slot,
    biases: Slot,
    strengths: Slot,
    scratch: Slot,
    partials: Slot,
    ranges: Slot,
    counts: Slot,
    jobs: [Slot; 5],
    readback: Slot,
}

/// What one submission brings back.
struct Output {
    partials: Vec<f32>,
    counts: Vec<u64>,
    strengths: Vec<f32>,
}

/// A wgpu device and queue with cached pipelines and reusable buffers.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Largest buffer range one binding may hold, in bytes.
    max_binding: u64,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    buffers: Mutex<Buffers>,
}

/// Mesa's Vulkan drivers print `error: XDG_RUNTIME_DIR is invalid or not
/// set` in every process that lacks one (a CI job, `sudo`, a cron job):
/// where it is unset, the process gets a private one (mode 0700 under the
/// temporary directory) before the first adapter is looked for.
fn private_runtime_dir() {
    #[cfg(unix)]
    {
        static DONE: std::sync::Once = std::sync::Once::new();
        DONE.call_once(|| {
            if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
                return;
            }
            use std::os::unix::fs::DirBuilderExt;
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            let dir = std::env::temp_dir().join(format!("cntscope-runtime-{uid}"));
            let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
            let ours = std::fs::symlink_metadata(&dir).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0
            });
            if ours && (made.is_ok() || dir.is_dir()) {
                // Before any GPU thread exists (Once), and only this
                // variable.
                std::env::set_var("XDG_RUNTIME_DIR", &dir);
            }
        });
    }
}

impl GpuContext {
    /// Opens a device on the adapter whose name contains `adapter`
    /// (case-insensitive), or else the best one available (discrete, then
    /// integrated, then virtual, then software).
    pub fn new(adapter: Option<&str>) -> Result<Self> {
        Self::with_chunk_limit(adapter, MAX_CHUNK_BYTES)
    }

    /// As [`GpuContext::new`], binding at most `chunk_bytes` of a buffer at
    /// once (further capped by the adapter's limits), so larger tensors are
    /// streamed in chunks. Tests use a small limit to exercise that path.
    pub fn with_chunk_limit(adapter: Option<&str>, chunk_bytes: u64) -> Result<Self> {
        private_runtime_dir();
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
            limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(chunk_bytes.max(1024)) / 4 * 4;
        use wgpu::BufferUsages as U;
        let slot = |usage| Slot { usage, buffer: None };
        let storage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let buffers = Buffers {
            weights: slot(U::STORAGE | U::COPY_DST),
            biases: slot(U::STORAGE | U::COPY_DST),
            strengths: slot(storage),
            scratch: slot(U::STORAGE),
            partials: slot(storage),
            ranges: slot(U::STORAGE | U::COPY_DST),
            counts: slot(storage),
            jobs: std::array::from_fn(|_| slot(U::STORAGE | U::COPY_DST)),
            readback: slot(U::MAP_READ | U::COPY_DST),
        };
        Ok(GpuContext {
            device,
            queue,
            info,
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            buffers: Mutex::new(buffers),
        })
    }

    /// The adapter in use, for `-v` and error messages.
    pub fn adapter(&self) -> String {
        describe(&self.info)
    }

    /// The pipeline of `kernel`, created on first use.
    fn pipeline(&self, kernel: Kernel) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().expect("pipeline cache poisoned");
        cache
            .entry(kernel)
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{kernel:?}")),
                    source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                });
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{kernel:?}")),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .clone()
    }

    /// The slot's buffer, grown (to the next power of two, within the
    /// device's limits) to hold at least `bytes`.
    fn grow(&self, slot: &mut Slot, bytes: u64) -> wgpu::Buffer {
        let bytes = bytes.max(16).next_multiple_of(8);
        if slot.buffer.as_ref().is_none_or(|b| b.size() < bytes) {
            let size = bytes.next_power_of_two().min(self.device.limits().max_buffer_size).max(bytes);
            slot.buffer = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: slot.usage,
                mapped_at_creation: false,
            }));
        }
        slot.buffer.clone().expect("just created")
    }

    /// Writes `bytes` at `offset`, padding the tail to a whole word. Large
    /// writes are copied into the staging memory by several threads (one
    /// thread's copy from a mapped checkpoint is slower than the transfer).
    fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        let whole = bytes.len() / 4 * 4;
        // (Asked only for large writes: the answer costs a few system calls.)
        let threads = || std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let threads = if whole >= PARALLEL_UPLOAD_BYTES { threads() } else { 1 };
        let view = NonZeroU64::new(whole as u64)
            .filter(|_| threads > 1)
            .and_then(|size| self.queue.write_buffer_with(buffer, offset, size));
        if let Some(mut view) = view {
            let part = whole.div_ceil(threads).next_multiple_of(4);
            // The staging memory can only be written, and its `WriteOnly`
            // slices cannot move between threads: each thread gets the
            // address of its own disjoint part.
            struct Staging(std::ptr::NonNull<u8>);
            // SAFETY: the parts written through it are disjoint, and the
            // view outlives the threads.
            unsafe impl Send for Staging {}
            let staging = view.slice(..).as_raw_ptr().cast::<u8>();
            std::thread::scope(|s| {
                for (i, src) in bytes[..whole].chunks(part).enumerate() {
                    let dst = Staging(staging);
                    s.spawn(move || {
                        // (Bound whole, so the closure takes the wrapper, not its field.)
                        let dst = dst;
                        // SAFETY: `i * part + src.len() <= whole`, the view's length.
                        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0.as_ptr().add(i * part), src.len()) }
                    });
                }
            });
        } else if whole > 0 {
            self.queue.write_buffer(buffer, offset, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(buffer, offset + whole as u64, &tail);
        }
    }

    /// Records one dispatch of `kernel` over a job table's work items, with
    /// the uniform `Dispatch` block at `uniform_at` and `buffers` (with the
    /// bytes each binds) at the other bindings, in order.
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        (total, count): (u32, u32),
        uniform_at: u32,
        buffers: &[(&wgpu::Buffer, u64)],
    ) {
        if total == 0 {
            return;
        }
        let pipeline = self.pipeline(kernel);
        let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 8,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&[total, count]));
        let mut entries = vec![wgpu::BindGroupEntry { binding: uniform_at, resource: uniform.as_entire_binding() }];
        let others = (0..).filter(|&b| b != uniform_at);
        for ((buffer, bytes), binding) in buffers.iter().zip(others) {
            let size = NonZeroU64::new((*bytes).max(4).next_multiple_of(4));
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset: 0, size }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let x = total.min(65535);
        pass.dispatch_workgroups(x, total.div_ceil(x), 1);
    }

    /// Uploads a plan, runs its kernels in one submission and reads back
    /// the partials, counts and (when `read_strengths`) the strengths.
    fn run(&self, plan: &Plan<'_>, read_strengths: bool) -> Result<Output> {
        let largest = plan.footprint().largest();
        if largest > self.max_binding {
            return Err(Error::Gpu(format!(
                "a batch needs a {largest} byte binding; the adapter allows {}",
                self.max_binding
            )));
        }
        let mut b = self.buffers.lock().expect("GPU buffers poisoned");
        let weights = self.grow(&mut b.weights, plan.weight_bytes);
        for (offset, t) in &plan.uploads {
            self.write(&weights, *offset, &t.bytes);
        }
        let biases = self.grow(&mut b.biases, 4 * plan.biases.len() as u64);
        self.write(&biases, 0, bytemuck::cast_slice(&plan.biases));
        let strengths = self.grow(&mut b.strengths, 4 * plan.strength_len as u64);
        for (offset, values) in &plan.host_strengths {
            self.write(&strengths, 4 * u64::from(*offset), bytemuck::cast_slice(values));
        }
        let scratch = self.grow(&mut b.scratch, 4 * plan.scratch_len as u64);
        let partials_bytes = (4 * PARTIAL * plan.partials_len) as u64;
        let partials = self.grow(&mut b.partials, partials_bytes);
        let ranges = self.grow(&mut b.ranges, 16 * u64::from(plan.reductions.count));
        let counts_bytes = 4 * plan.counts_len as u64;
        let counts = self.grow(&mut b.counts, counts_bytes);
        let tables = [&plan.dense, &plan.columns, &plan.conv_sums, &plan.conv_strengths, &plan.reductions];
        let jobs: Vec<(wgpu::Buffer, u64)> = tables
            .iter()
            .zip(b.jobs.iter_mut())
            .map(|(t, slot)| {
                let bytes = 4 * t.words.len() as u64;
                let buffer = self.grow(slot, bytes);
                self.write(&buffer, 0, bytemuck::cast_slice(&t.words));
                (buffer, bytes)
            })
            .collect();
        if let Some(fixed) = &plan.fixed_ranges {
            self.write(&ranges, 0, bytemuck::cast_slice(fixed));
        }

        let w = (&weights, plan.weight_bytes);
        let bi = (&biases, 4 * plan.biases.len() as u64);
        let st = (&strengths, 4 * plan.strength_len as u64);
        let sc = (&scratch, 4 * plan.scratch_len as u64);
        let pa = (&partials, partials_bytes);
        let ra = (&ranges, 16 * u64::from(plan.reductions.count));
        let co = (&counts, counts_bytes);
        let job = |i: usize| (&jobs[i].0, jobs[i].1);
        let size = |t: &plan::JobTable| (t.total, t.count);
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        if counts_bytes > 0 {
            enc.clear_buffer(&counts, 0, Some(counts_bytes.next_multiple_of(4)));
        }
        self.dispatch(&mut enc, Kernel::DenseSums, size(&plan.dense), 1, &[w, job(0), bi, st, sc]);
        self.dispatch(&mut enc, Kernel::ColumnSums, size(&plan.columns), 0, &[job(1), bi, sc, st]);
        self.dispatch(&mut enc, Kernel::ConvKernelSums, size(&plan.conv_sums), 1, &[w, job(2), sc, st]);
        self.dispatch(&mut enc, Kernel::ConvStrengths, size(&plan.conv_strengths), 0, &[job(3), bi, sc, st]);
        let reductions = size(&plan.reductions);
        self.dispatch(&mut enc, Kernel::Moments, reductions, 1, &[w, job(4), st, pa]);
        if plan.counts_len > 0 {
            if plan.fixed_ranges.is_none() {
                let per_job = (plan.reductions.count, plan.reductions.count);
                self.dispatch(&mut enc, Kernel::HistogramRange, per_job, 0, &[job(4), pa, ra]);
            }
            self.dispatch(&mut enc, Kernel::Histogram, reductions, 1, &[w, job(4), st, ra, co]);
        }

        let mut reads = vec![pa, co];
        if read_strengths {
            reads.push(st);
        }
        let out = self.read(&mut b.readback, enc, &reads)?;
        Ok(Output {
            partials: f32s(&out[0]),
            counts: out[1].chunks_exact(4).map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            strengths: out.get(2).map(|s| f32s(s)).unwrap_or_default(),
        })
    }

    /// Submits `encoder` after copying each `(buffer, bytes)` into the
    /// readback buffer; returns their bytes.
    fn read(
        &self,
        readback: &mut Slot,
        mut encoder: wgpu::CommandEncoder,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let padded = |b: u64| b.next_multiple_of(8);
        let total: u64 = reads.iter().map(|(_, b)| padded(*b)).sum();
        let target = self.grow(readback, total);
        let mut offset = 0;
        for (buffer, bytes) in reads {
            if *bytes > 0 {
                encoder.copy_buffer_to_buffer(buffer, 0, &target, offset, Some(bytes.next_multiple_of(4)));
            }
            offset += padded(*bytes);
        }
        self.queue.submit([encoder.finish()]);
        let slice = target.slice(..total.max(8));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
        rx.recv().map_err(|e| Error::Gpu(e.to_string()))?.map_err(|e| Error::Gpu(e.to_string()))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("{e:?}")))?;
            let mut offset = 0usize;
            reads
                .iter()
                .map(|(_, bytes)| {
                    let part = view[offset..offset + *bytes as usize].to_vec();
                    offset += padded(*bytes) as usize;
                    part
                })
                .collect()
        };
        target.unmap();
        Ok(out)
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

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

impl Output {
    /// A reduction's moments: its workgroup partials merged in f64.
    fn moments(&self, r: &Reduction) -> Moments {
        let mut m = Moments::default();
        for p in self.partials[PARTIAL * r.partials..PARTIAL * (r.partials + r.groups)].chunks_exact(PARTIAL) {
            if p[0] > 0.0 {
                let [mean, m2, m3, m4, min, max] = [p[1], p[2], p[3], p[4], p[5], p[6]].map(f64::from);
                m.merge(&Moments { n: p[0] as u64, mean, m2, m3, m4, min, max });
            }
        }
        m
    }

    /// A reduction's moments and histogram (over the range its moments give).
    fn distribution(&self, r: &Reduction) -> (Moments, Histogram) {
        let m = self.moments(r);
        let mut h = Histogram::for_range(m.min, m.max, r.bins);
        h.counts.copy_from_slice(&self.counts[r.counts..r.counts + r.bins]);
        (m, h)
    }

    fn strengths(&self, (offset, len): (u32, usize)) -> Vec<f64> {
        widen(&self.strengths[offset as usize..offset as usize + len])
    }
}

/// Where one network's results land in a plan.
struct Planned {
    layers: Vec<Reduction>,
    slots: Vec<plan::LayerSlots>,
    /// Per node set: strength, s_in and s_out reductions.
    node_sets: Vec<(Reduction, Option<Reduction>, Option<Reduction>)>,
    bias: Vec<Option<Moments>>,
    /// Per node set: the layer writing it and the layer reading it.
    sides: Vec<(Option<usize>, Option<usize>)>,
}

impl Planned {
    /// True when every weight and bias of the network was finite: biases
    /// checked on the host, weights by [`weights_finite`] (their counts
    /// only where the histograms span the weights' own range).
    fn is_finite(&self, out: &Output, own_ranges: bool) -> bool {
        self.bias.iter().flatten().all(is_finite)
            && self.layers.iter().all(|r| {
                let counted = (own_ranges && r.bins > 0).then(|| out.counts[r.counts..r.counts + r.bins].iter().sum());
                weights_finite(&out.moments(r), counted)
            })
    }
}

/// True when a GPU reduction of weights saw only finite values: its moments
/// are finite and its histogram over the values' own range, where given
/// (`counted`), holds every value. WGSL lets a GPU assume values are
/// finite, so a NaN may show only as a value no bin counted.
fn weights_finite(m: &Moments, counted: Option<u64>) -> bool {
    is_finite(m) && m.min.is_finite() && m.max.is_finite() && counted.is_none_or(|c| c == m.n)
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

    /// Adds one network to `plan`. Everything fallible (tensor lookups,
    /// biases) happens before the plan is touched, so a failing network
    /// leaves the batch intact.
    /// Only networks of [`Network::simple_sides`] shape are planned.
    fn plan_network<'a>(&self, plan: &mut Plan<'a>, net: &Network, ck: &'a Checkpoint, bins: usize) -> Result<Planned> {
        let sides = net.simple_sides().ok_or_else(|| Error::Gpu("not a network of the batched shape".into()))?;
        let mut inputs = Vec::with_capacity(net.layers.len());
        for layer in &net.layers {
            let w = ck.tensor(layer.weight.as_deref().expect("dense and conv layers have weights"))?;
            inputs.push((GpuTensor::new(&w), LayerParams::of(net, layer, ck)?));
        }
        let mut planned = Planned { layers: vec![], slots: vec![], node_sets: vec![], bias: vec![], sides: vec![] };
        for (layer, (t, p)) in net.layers.iter().zip(inputs) {
            planned.bias.push(p.bias.as_deref().map(Moments::from_slice));
            let (slots, weights) =
                plan.add_measured_layer(layer, net.layout, t, p.shift.as_deref(), p.scale.as_deref(), bins);
            planned.slots.push(slots);
            planned.layers.push(weights);
        }
        planned.sides = sides;
        for (set, &(in_layer, out_layer)) in net.node_sets.iter().zip(&planned.sides) {
            let s_in = in_layer.map(|l| planned.slots[l].s_in.0);
            let s_out = out_layer.map(|l| planned.slots[l].s_out.0);
            let n = set.shape.count();
            let (a, b) = match (s_in, s_out) {
                (Some(a), b) => (a, b),
                (None, Some(a)) => (a, None),
                (None, None) => unreachable!("a node set touches at least one layer"),
            };
            let strength = plan.add_reduction(Source::Strengths(a, b), n, bins);
            let s_in = s_in.map(|a| plan.add_reduction(Source::Strengths(a, None), n, 0));
            let s_out = s_out.map(|a| plan.add_reduction(Source::Strengths(a, None), n, 0));
            planned.node_sets.push((strength, s_in, s_out));
        }
        Ok(planned)
    }

    /// Reads one network's results out of a finished plan. A network with
    /// NaN or infinite weights or biases is measured again by the CPU
    /// reference (WGSL lets a GPU assume values are finite, so its results
    /// for those mean nothing).
    fn collect(
        &self,
        out: &Output,
        planned: &Planned,
        net: &Network,
        ck: &Checkpoint,
        opts: &AnalysisOptions,
    ) -> Result<Analysis> {
        if !planned.is_finite(out, true) {
            return assemble(&CpuEngine::default(), net, ck, opts);
        }
        let keep = opts.keep_values;
        let mut layers = Vec::with_capacity(net.layers.len());
        for (i, layer) in net.layers.iter().enumerate() {
            let (weights, histogram) = out.distribution(&planned.layers[i]);
            layers.push(LayerResult {
                index: i + 1,
                name: layer.name.clone(),
                kind: layer.kind.name(),
                weight: layer.tensor().to_string(),
                weights,
                bias: planned.bias[i],
                histogram,
                non_finite: 0,
            });
        }
        let node_sets = net
            .node_sets
            .iter()
            .zip(planned.node_sets.iter().zip(&planned.sides))
            .map(|(set, ((strength, s_in, s_out), &(in_layer, out_layer)))| {
                let (m, histogram) = out.distribution(strength);
                let mean = |r: &Option<Reduction>| r.as_ref().map_or(0.0, |r| out.moments(r).mean);
                let values = keep.then(|| {
                    let n = set.shape.count();
                    let s_in = in_layer.map_or_else(|| vec![0.0; n], |l| out.strengths(planned.slots[l].s_in));
                    let s_out = out_layer.map_or_else(|| vec![0.0; n], |l| out.strengths(planned.slots[l].s_out));
                    let strength = s_in.iter().zip(&s_out).map(|(a, b)| a + b).collect();
                    NodeValues { s_in, s_out, strength }
                });
                NodeSetResult {
                    name: set.name.clone(),
                    shape: set.shape,
                    strength: m,
                    s_in_mean: mean(s_in),
                    s_out_mean: mean(s_out),
                    histogram,
                    non_finite: 0,
                    values,
                }
            })
            .collect();
        Ok(Analysis { not_chain: net.not_chain.clone(), source: net.source, node_sets, layers })
    }

    /// A dense layer too large for one binding, streamed in row chunks: row
    /// sums and column partial sums per chunk (column sums accumulated in
    /// f64 on the host), then a second pass for the histogram.
    fn streamed_dense(
        &self,
        t: &GpuTensor<'_>,
        rows: usize,
        cols: usize,
        bins: usize,
    ) -> Result<(Vec<f64>, Vec<f64>, Moments, Histogram)> {
        let row_bytes = (cols * t.dtype.size()) as u64;
        // Room for the chunk, its column partials (1/16 of it) and one word of lead.
        let chunk_rows = ((self.ctx.max_binding * 8 / 10) / row_bytes).max(1) as usize;
        if row_bytes * 2 > self.ctx.max_binding {
            return Err(Error::Gpu(format!("one row of {cols} values exceeds the adapter's binding limit")));
        }
        let mut row_sums = Vec::with_capacity(rows);
        let mut col_sums = vec![0.0; cols];
        let mut moments = Moments::default();
        let chunks: Vec<(usize, usize)> =
            (0..rows).step_by(chunk_rows).map(|r0| (r0, (r0 + chunk_rows).min(rows))).collect();
        for &(r0, r1) in &chunks {
            let mut plan = Plan::new();
            let lead = t.lead(r0 * cols);
            let word = plan.add_tensor(t.chunk(r0 * cols, r1 * cols));
            let row_dst = plan.alloc_strengths(r1 - r0);
            let col_dst = plan.alloc_strengths(cols);
            plan.add_dense(word, t.dtype, lead, r1 - r0, cols, row_dst, None, col_dst, None, None);
            let r = plan.add_reduction(Source::Weights(word, t.dtype, lead, None), (r1 - r0) * cols, 0);
            let out = self.ctx.run(&plan, true)?;
            row_sums.extend(out.strengths((row_dst, r1 - r0)));
            for (c, v) in col_sums.iter_mut().zip(out.strengths((col_dst, cols))) {
                *c += v;
            }
            moments.merge(&out.moments(&r));
        }
        let mut histogram = Histogram::for_range(moments.min, moments.max, bins);
        let range = kernel_range((histogram.lo, histogram.hi), bins);
        for &(r0, r1) in &chunks {
            let mut plan = Plan::new();
            let lead = t.lead(r0 * cols);
            let word = plan.add_tensor(t.chunk(r0 * cols, r1 * cols));
            let r = plan.add_reduction(Source::Weights(word, t.dtype, lead, None), (r1 - r0) * cols, bins);
            plan.fixed_ranges = Some(vec![range]);
            let out = self.ctx.run(&plan, false)?;
            for (a, b) in histogram.counts.iter_mut().zip(&out.counts[r.counts..r.counts + bins]) {
                *a += b;
            }
        }
        Ok((row_sums, col_sums, moments, histogram))
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
        scale: Option<&[f64]>,
        shift: Option<&[f64]>,
        bins: usize,
    ) -> Result<LayerMeasures> {
        let t = GpuTensor::new(weight);
        let need = Footprint::of_layer(layer, t.bytes.len() as u64);
        let m = if need.largest() > self.ctx.max_binding {
            // Larger than a binding: a dense layer goes in row chunks.
            let LayerKind::Dense { inputs, outputs, in_out } = layer.kind else {
                return Err(Error::Gpu(format!("convolution `{}` exceeds the adapter's binding limit", layer.name)));
            };
            if scale.is_some() {
                // A BatchNorm folded into a layer beyond a binding: the
                // streamed kernels take no factors; the reference does.
                return CpuEngine::default().layer(layer, layout, weight, scale, shift, bins);
            }
            let (rows, cols) = dense_storage(in_out, inputs, outputs);
            let (row, col, weights, histogram) = self.streamed_dense(&t, rows, cols, bins)?;
            let (s_in, s_out) = dense_in_out(in_out, row, col);
            let mut s_in = Field::from_nodes(s_in, layer.output, layout);
            if let Some(b) = shift {
                s_in.add_per_channel(|o| b[o]);
            }
            LayerMeasures { s_in, s_out: Field::from_nodes(s_out, layer.input, layout), weights, histogram }
        } else {
            let mut plan = Plan::new();
            let (slots, r) = plan.add_measured_layer(layer, layout, t, shift, scale, bins);
            let out = self.ctx.run(&plan, true)?;
            let (weights, histogram) = out.distribution(&r);
            LayerMeasures {
                s_in: Field::from_nodes(out.strengths(slots.s_in), layer.output, layout),
                s_out: Field::from_nodes(out.strengths(slots.s_out), layer.input, layout),
                weights,
                histogram,
            }
        };
        if weights_finite(&m.weights, Some(m.histogram.counts.iter().sum())) {
            return Ok(m);
        }
        // NaN/Inf weights: the GPU's sums mean nothing; the reference's do.
        CpuEngine::default().layer(layer, layout, weight, scale, shift, bins)
    }

    fn distribution(&self, values: &[f64], bins: usize) -> Result<(Moments, Histogram)> {
        if 4 * values.len() as u64 > self.ctx.max_binding {
            return Err(Error::Gpu(format!("{} node values exceed the adapter's binding limit", values.len())));
        }
        let mut plan = Plan::new();
        let region = plan.add_host_strengths(values.iter().map(|&v| v as f32).collect());
        let r = plan.add_reduction(Source::Strengths(region, None), values.len(), bins);
        Ok(self.ctx.run(&plan, false)?.distribution(&r))
    }

    /// One submission: the network's batch plan with its histograms on the
    /// caller's ranges instead of their own.
    fn binned(&self, net: &Network, ck: &Checkpoint, ranges: &BinRanges, bins: usize) -> Result<BinnedNetwork> {
        let batched = net.simple_sides().is_some();
        if !batched || bins > MAX_BINS || Footprint::of_network(net, ck).largest() > self.ctx.max_binding {
            return binned_by_values(self, net, ck, ranges, bins);
        }
        let mut plan = Plan::new();
        let planned = self.plan_network(&mut plan, net, ck, bins)?;
        let mut fixed = vec![[0.0, 1.0, 0.0, 0.0]; plan.reductions.count as usize];
        for (r, &range) in planned.layers.iter().zip(&ranges.layers) {
            fixed[r.job] = kernel_range(range, bins);
        }
        for ((r, _, _), &range) in planned.node_sets.iter().zip(&ranges.node_sets) {
            fixed[r.job] = kernel_range(range, bins);
        }
        plan.fixed_ranges = Some(fixed);
        let out = self.ctx.run(&plan, false)?;
        if !planned.is_finite(&out, false) {
            // NaN/Inf: measured by the CPU reference, those values left out.
            return binned_by_values(self, net, ck, ranges, bins);
        }
        let binned = |r: &Reduction, range| {
            let mut histogram = histogram_on(range, bins);
            histogram.counts.copy_from_slice(&out.counts[r.counts..r.counts + bins]);
            Binned { moments: out.moments(r), histogram, values: None }
        };
        let layers = planned.layers.iter().zip(&ranges.layers).map(|(r, &range)| binned(r, range)).collect();
        let node_sets =
            planned.node_sets.iter().zip(&ranges.node_sets).map(|((r, _, _), &range)| binned(r, range)).collect();
        Ok(BinnedNetwork { node_sets, layers })
    }

    /// Checkpoints per batch: enough to amortise a submission many times over.
    fn batch_size(&self) -> usize {
        256
    }

    /// Batches: networks are planned together until their weights reach
    /// 64 MiB (or a binding's limit), then measured in one submission.
    fn analyze_batch(&self, items: &[(&Network, &Checkpoint)], opts: &AnalysisOptions) -> Vec<Result<Analysis>> {
        let mut results: Vec<Option<Result<Analysis>>> = (0..items.len()).map(|_| None).collect();
        let mut plan = Plan::new();
        let mut pending: Vec<(usize, Planned)> = Vec::new();
        let flush =
            |plan: &mut Plan<'_>, pending: &mut Vec<(usize, Planned)>, results: &mut Vec<Option<Result<Analysis>>>| {
                if pending.is_empty() {
                    return;
                }
                match self.ctx.run(plan, opts.keep_values) {
                    Ok(out) => {
                        for (i, p) in pending.drain(..) {
                            let (net, ck) = items[i];
                            results[i] = Some(self.collect(&out, &p, net, ck, opts));
                        }
                    }
                    Err(e) => {
                        for (i, _) in pending.drain(..) {
                            results[i] = Some(Err(Error::Gpu(format!("{}: {e}", items[i].1.path().display()))));
                        }
                    }
                }
                *plan = Plan::new();
            };
        for (i, &(net, ck)) in items.iter().enumerate() {
            let need = Footprint::of_network(net, ck);
            if need.largest() > self.ctx.max_binding || net.simple_sides().is_none() {
                // Too large to batch, or a DAG (pools, adds, concatenations,
                // BatchNorm layers): layer by layer, assembled on the host.
                results[i] = Some(assemble(self, net, ck, opts));
                continue;
            }
            if plan.footprint().plus(need).largest() > self.ctx.max_binding {
                flush(&mut plan, &mut pending, &mut results);
            }
            match self.plan_network(&mut plan, net, ck, opts.bins) {
                Ok(planned) => pending.push((i, planned)),
                Err(e) => results[i] = Some(Err(e)),
            }
            if plan.weight_bytes >= BATCH_BYTES {
                flush(&mut plan, &mut pending, &mut results);
            }
        }
        flush(&mut plan, &mut pending, &mut results);
        results.into_iter().map(|r| r.expect("every item measured")).collect()
    }
}
