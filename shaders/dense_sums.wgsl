// Dense layer, one pass over a block of ROWS rows of the stored matrix:
// each thread walks its columns (strided by the workgroup size) down the
// block, giving the column partial of the block and per-row partials; the
// row partials are then reduced as a tree in workgroup memory.

struct Params {
    rows: u32,      // rows in this chunk
    cols: u32,
    first: u32,     // element offset of the chunk's first row in `raw`
    row_base: u32,  // index of the chunk's first row in `row_sums`
}

const WG: u32 = 256u;
const ROWS: u32 = 16u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> row_sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> col_parts: array<f32>;

var<workgroup> tree: array<f32, WG>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let block = group_index(wg, nwg);
    let r0 = block * ROWS;
    if (r0 >= p.rows) {
        return;
    }
    let nr = min(ROWS, p.rows - r0);
    var acc: array<f32, ROWS>;
    for (var c = t; c < p.cols; c += WG) {
        var col = 0.0;
        for (var r = 0u; r < nr; r++) {
            let x = load(p.first + (r0 + r) * p.cols + c);
            col += x;
            acc[r] += x;
        }
        col_parts[block * p.cols + c] = col;
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
            row_sums[p.row_base + r0 + r] = tree[0];
        }
        workgroupBarrier();
    }
}
