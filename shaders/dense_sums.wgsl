// Dense layers, one pass over the weights: a workgroup takes ROWS rows of
// one stored matrix; each thread walks its columns (strided by the
// workgroup size) down those rows, giving the block's column partial and
// per-row partials; row partials are reduced as a tree in workgroup memory.
// Row sums (+ bias) go to the layer's s_in or s_out region, column partials
// to scratch for `column_sums`.

// Job (11 words): first block, weight word offset, dtype, first element,
// rows, cols, partials offset (scratch), row destination, row bias (or NONE),
// scale region (in strengths, or NONE: a folded BatchNorm's factor per
// output), scale by column (1: the outputs are the columns, 0: the rows).
const STRIDE: u32 = 11u;
const WG: u32 = 256u;
const ROWS: u32 = 16u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Dispatch;
@group(0) @binding(2) var<storage, read> jobs: array<u32>;
@group(0) @binding(3) var<storage, read> biases: array<f32>;
@group(0) @binding(4) var<storage, read_write> strengths: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;

var<workgroup> tree: array<f32, WG>;

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
    let block = id - jobs[j];
    let base = jobs[j + 1u];
    let dtype = jobs[j + 2u];
    let first = jobs[j + 3u];
    let rows = jobs[j + 4u];
    let cols = jobs[j + 5u];
    let parts = jobs[j + 6u];
    let row_dst = jobs[j + 7u];
    let row_bias = jobs[j + 8u];
    let r0 = block * ROWS;
    let nr = min(ROWS, rows - r0);
    let scale = jobs[j + 9u];
    let by_col = jobs[j + 10u] == 1u;
    var acc: array<f32, ROWS>;
    for (var c = t; c < cols; c += WG) {
        var col = 0.0;
        for (var r = 0u; r < nr; r++) {
            var x = load(base, dtype, first + (r0 + r) * cols + c);
            if (scale != NONE) {
                x *= strengths[scale + select(r0 + r, c, by_col)];
            }
            col += x;
            acc[r] += x;
        }
        scratch[parts + block * cols + c] = col;
    }
    for (var r = 0u; r < nr; r++) {
        tree[t] = acc[r];
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (t < s) {
                tree[t] += tree[t + s];
            }
            workgroupBarrier();
        }
        if (t == 0u) {
            var v = tree[0];
            if (row_bias != NONE) {
                v += biases[row_bias + r0 + r];
            }
            strengths[row_dst + r0 + r] = v;
        }
        workgroupBarrier();
    }
}
