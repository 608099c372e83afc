// Adds the per-block column partials of one dense chunk into the column
// sums: one thread per column, a pairwise (tree) sum over the blocks.

struct Params {
    blocks: u32,
    cols: u32,
}

@group(0) @binding(0) var<storage, read> col_parts: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> col_sums: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let c = (wg.x + wg.y * nwg.x) * 256u + t;
    if (c >= p.cols) {
        return;
    }
    // Pairwise summation with an explicit stack of partial sums: block b
    // merges with the partials its trailing one-bits complete.
    var stack: array<f32, 32>;
    var depth = 0u;
    for (var b = 0u; b < p.blocks; b++) {
        var s = col_parts[b * p.cols + c];
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
    col_sums[c] += total;
}
