// Convolution kernel sums, one thread per output: K[o, tap] = sum over the
// input channels of W[o, c', tap] (for in-strengths), and Q[c, tap] = sum
// over the output channels of c's group of W[o, c', tap] (out-strengths).

struct Params {
    cout: u32,
    cin_g: u32,
    taps: u32,      // kh * kw
    cout_g: u32,    // output channels per group
    groups: u32,
    keras: u32,     // 1: stored [kh, kw, cin_g, cout]; 0: [cout, cin_g, kh, kw]
    first: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> k_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> q_out: array<f32>;

fn weight(o: u32, ci: u32, tap: u32) -> f32 {
    if (p.keras == 1u) {
        return load(p.first + (tap * p.cin_g + ci) * p.cout + o);
    }
    return load(p.first + (o * p.cin_g + ci) * p.taps + tap);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = group_index(wg, nwg) * 256u + t;
    let n_k = p.cout * p.taps;
    if (i < n_k) {
        let o = i / p.taps;
        let tap = i % p.taps;
        var s = 0.0;
        for (var ci = 0u; ci < p.cin_g; ci++) {
            s += weight(o, ci, tap);
        }
        k_in[i] = s;
        return;
    }
    let j = i - n_k;
    if (j >= p.cin_g * p.groups * p.taps) {
        return;
    }
    let c = j / p.taps;
    let tap = j % p.taps;
    let g = c / p.cin_g;
    let ci = c % p.cin_g;
    var s = 0.0;
    for (var o = g * p.cout_g; o < (g + 1u) * p.cout_g; o++) {
        s += weight(o, ci, tap);
    }
    q_out[j] = s;
}
