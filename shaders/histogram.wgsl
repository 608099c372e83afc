// Histogram of n elements on `bins` equal bins over [lo, hi] (last bin
// closed): counts go to workgroup-local atomics, then once per bin to the
// global counts.

struct Params {
    n: u32,
    first: u32,
    bins: u32,
    _pad: u32,
    lo: f32,
    hi: f32,
    scale: f32,  // bins / (hi - lo)
    _pad2: f32,
}

const WG: u32 = 256u;
const MAX_BINS: u32 = 4096u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;

var<workgroup> local_counts: array<atomic<u32>, MAX_BINS>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    for (var b = t; b < p.bins; b += WG) {
        atomicStore(&local_counts[b], 0u);
    }
    workgroupBarrier();
    let stride = nwg.x * WG;
    for (var i = wg.x * WG + t; i < p.n; i += stride) {
        let x = load(p.first + i);
        if (x >= p.lo && x <= p.hi) {
            let b = min(u32((x - p.lo) * p.scale), p.bins - 1u);
            atomicAdd(&local_counts[b], 1u);
        }
    }
    workgroupBarrier();
    for (var b = t; b < p.bins; b += WG) {
        let c = atomicLoad(&local_counts[b]);
        if (c > 0u) {
            atomicAdd(&counts[b], c);
        }
    }
}
