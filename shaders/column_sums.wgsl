// Column sums of dense layers from the per-block partials of `dense_sums`:
// one thread per column, a pairwise (tree) sum over the blocks, plus bias,
// written to the layer's s_in or s_out region.

// Job (6 words): first workgroup, partials offset, blocks, cols,
// destination, bias (or NONE).
const STRIDE: u32 = 6u;

@group(0) @binding(0) var<uniform> p: Dispatch;
@group(0) @binding(1) var<storage, read> jobs: array<u32>;
@group(0) @binding(2) var<storage, read> biases: array<f32>;
@group(0) @binding(3) var<storage, read> scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> strengths: array<f32>;

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
    let j = find_job(id, p.count, STRIDE) * STRIDE;
    let c = (id - jobs[j]) * 256u + t;
    let parts = jobs[j + 1u];
    let blocks = jobs[j + 2u];
    let cols = jobs[j + 3u];
    if (c >= cols) {
        return;
    }
    // Pairwise summation with a stack of partial sums: block b merges with
    // the partials its trailing one-bits complete.
    var stack: array<f32, 32>;
    var depth = 0u;
    for (var b = 0u; b < blocks; b++) {
        var s = scratch[parts + b * cols + c];
        var k = b;
        while ((k & 1u) == 1u) {
            depth -= 1u;
            s += stack[depth];
            k >>= 1u;
        }
        stack[depth] = s;
        depth += 1u;
    }
    var total = 0.0;
    while (depth > 0u) {
        depth -= 1u;
        total += stack[depth];
    }
    let bias = jobs[j + 5u];
    if (bias != NONE) {
        total += biases[bias + c];
    }
    strengths[jobs[j + 4u] + c] = total;
}
