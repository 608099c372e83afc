// Histograms of each reduction job's values on its bins over its range
// (last bin closed): counts go to workgroup-local atomics, then once per
// bin to the job's global counts.

const WG: u32 = 256u;
const MAX_BINS: u32 = 4096u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Dispatch;
@group(0) @binding(2) var<storage, read> jobs: array<u32>;
@group(0) @binding(3) var<storage, read> strengths: array<f32>;
@group(0) @binding(4) var<storage, read> ranges: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<atomic<u32>>;

var<workgroup> local_counts: array<atomic<u32>, MAX_BINS>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let id = group_index(wg, nwg);
    if (id >= p.total) {
        return;
    }
    let job = find_job(id, p.count, STRIDE);
    let j = job * STRIDE;
    let bins = jobs[j + 10u];
    if (bins == 0u) {
        return;
    }
    for (var b = t; b < bins; b += WG) {
        atomicStore(&local_counts[b], 0u);
    }
    workgroupBarrier();
    let lo = ranges[job * 4u];
    let hi = ranges[job * 4u + 1u];
    let scale = ranges[job * 4u + 2u];
    let g = id - jobs[j];
    let stride = jobs[j + 1u] * WG;
    let count = jobs[j + 7u];
    for (var i = g * WG + t; i < count; i += stride) {
        let x = value(j, i);
        if (x >= lo && x <= hi) {
            let b = min(u32((x - lo) * scale), bins - 1u);
            atomicAdd(&local_counts[b], 1u);
        }
    }
    workgroupBarrier();
    let out = jobs[j + 9u];
    for (var b = t; b < bins; b += WG) {
        let c = atomicLoad(&local_counts[b]);
        if (c > 0u) {
            atomicAdd(&counts[out + b], c);
        }
    }
}
