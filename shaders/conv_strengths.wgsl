// Convolution node strengths over the unrolled pixel grid, one thread per
// node, without materialising the graph. An output pixel's in-strength sums
// K over the taps that land inside the input (plus its channel's bias); an
// input pixel's out-strength sums Q over the taps of every output window
// that covers it. Results are written in the layout's flatten order.

struct Params {
    cin: u32, h: u32, w: u32,
    cout: u32, ho: u32, wo: u32,
    kh: u32, kw: u32,
    sh: u32, sw: u32,
    ph: u32, pw: u32,
    dh: u32, dw: u32,
    keras: u32,     // 1: flatten y, x, c; 0: c, y, x
    has_bias: u32,
}

@group(0) @binding(0) var<storage, read> k_in: array<f32>;
@group(0) @binding(1) var<storage, read> q_out: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> s_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> s_out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let i = (wg.x + wg.y * nwg.x) * 256u + t;
    let taps = p.kh * p.kw;
    let plane_out = p.ho * p.wo;
    let n_out = p.cout * plane_out;
    if (i < n_out) {
        let o = i / plane_out;
        let px = i % plane_out;
        let oy = px / p.wo;
        let ox = px % p.wo;
        var s = 0.0;
        for (var ky = 0u; ky < p.kh; ky++) {
            let y = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
            if (y < 0 || y >= i32(p.h)) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                let x = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
                if (x >= 0 && x < i32(p.w)) {
                    s += k_in[o * taps + ky * p.kw + kx];
                }
            }
        }
        if (p.has_bias == 1u) {
            s += bias[o];
        }
        s_in[select(i, px * p.cout + o, p.keras == 1u)] = s;
        return;
    }
    let plane_in = p.h * p.w;
    let j = i - n_out;
    if (j >= p.cin * plane_in) {
        return;
    }
    let c = j / plane_in;
    let px = j % plane_in;
    let y = px / p.w;
    let x = px % p.w;
    var s = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let qy = i32(y + p.ph) - i32(ky * p.dh);
        if (qy < 0 || qy % i32(p.sh) != 0 || qy / i32(p.sh) >= i32(p.ho)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let qx = i32(x + p.pw) - i32(kx * p.dw);
            if (qx >= 0 && qx % i32(p.sw) == 0 && qx / i32(p.sw) < i32(p.wo)) {
                s += q_out[c * taps + ky * p.kw + kx];
            }
        }
    }
    s_out[select(j, px * p.cin + c, p.keras == 1u)] = s;
}
