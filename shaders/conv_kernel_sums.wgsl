// Convolution kernel sums, one thread per output value: K[o, tap] = sum over
// input channels of W[o, c', tap] (gives in-strengths), and Q[c, tap] = sum
// over the output channels of c's group of W[o, c', tap] (out-strengths).

// Job (12 words): first workgroup, weight word offset, dtype, cout, cin_g,
// taps (kh * kw), cout_g (outputs per group), groups, keras (1: stored
// [kh, kw, cin_g, cout], 0: [cout, cin_g, kh, kw]), K offset, Q offset,
// scale region (in strengths, or NONE: a folded BatchNorm's factor per
// output channel).
const STRIDE: u32 = 12u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Dispatch;
@group(0) @binding(2) var<storage, read> jobs: array<u32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(4) var<storage, read> strengths: array<f32>;

// The factor of output channel o's weights.
fn scale_of(j: u32, o: u32) -> f32 {
    let s = jobs[j + 11u];
    return select(strengths[s + o], 1.0, s == NONE);
}

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
    let i = (id - jobs[j]) * 256u + t;
    let base = jobs[j + 1u];
    let dtype = jobs[j + 2u];
    let cout = jobs[j + 3u];
    let cin_g = jobs[j + 4u];
    let taps = jobs[j + 5u];
    let cout_g = jobs[j + 6u];
    let groups = jobs[j + 7u];
    let keras = jobs[j + 8u] == 1u;
    let n_k = cout * taps;
    if (i < n_k) {
        let o = i / taps;
        let tap = i % taps;
        var s = 0.0;
        for (var ci = 0u; ci < cin_g; ci++) {
            let w = select((o * cin_g + ci) * taps + tap, (tap * cin_g + ci) * cout + o, keras);
            s += load(base, dtype, w);
        }
        scratch[jobs[j + 9u] + i] = s * scale_of(j, o);
        return;
    }
    let q = i - n_k;
    if (q >= cin_g * groups * taps) {
        return;
    }
    let c = q / taps;
    let tap = q % taps;
    let g = c / cin_g;
    let ci = c % cin_g;
    var s = 0.0;
    for (var o = g * cout_g; o < (g + 1u) * cout_g; o++) {
        let w = select((o * cin_g + ci) * taps + tap, (tap * cin_g + ci) * cout + o, keras);
        s += load(base, dtype, w) * scale_of(j, o);
    }
    scratch[jobs[j + 10u] + q] = s;
}
