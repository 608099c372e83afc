// Each reduction job's histogram range from its moment partials: min and
// max as a tree over the job's workgroup partials (one workgroup a job),
// widened by 0.5 either side when all values are equal, as numpy does.

// Job: the reduction job table (14 words, values.wgsl); one workgroup per job.
const STRIDE: u32 = 14u; // a reduction job (values.wgsl)
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Dispatch;
@group(0) @binding(1) var<storage, read> jobs: array<u32>;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
// Per job: lo, hi, bins / (hi - lo), pad.
@group(0) @binding(3) var<storage, read_write> ranges: array<f32>;

var<workgroup> tmin: array<f32, WG>;
var<workgroup> tmax: array<f32, WG>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let job = group_index(wg, nwg);
    if (job >= p.count) {
        return;
    }
    let j = job * STRIDE;
    var lo = 3.0e38;
    var hi = -3.0e38;
    for (var g = t; g < jobs[j + 1u]; g += WG) {
        let o = (jobs[j + 8u] + g) * 8u;
        if (partials[o] > 0.0) {
            lo = min(lo, partials[o + 5u]);
            hi = max(hi, partials[o + 6u]);
        }
    }
    tmin[t] = lo;
    tmax[t] = hi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            tmin[t] = min(tmin[t], tmin[t + s]);
            tmax[t] = max(tmax[t], tmax[t + s]);
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        var a = tmin[0];
        var b = tmax[0];
        if (!(a < b)) {
            if (abs(a) <= 3.0e38) {
                b = a + 0.5;
                a = a - 0.5;
            } else {
                a = 0.0;
                b = 1.0;
            }
        }
        ranges[job * 4u] = a;
        ranges[job * 4u + 1u] = b;
        ranges[job * 4u + 2u] = f32(jobs[j + 10u]) / (b - a);
        ranges[job * 4u + 3u] = 0.0;
    }
}
