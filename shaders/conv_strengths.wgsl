// Convolution node strengths over the unrolled pixel grid, one thread per
// node, without materialising the graph. An output pixel's in-strength sums
// K over the taps that land inside the input (plus its channel's bias); an
// input pixel's out-strength sums Q over the taps of every output window
// covering it. Written in the layout's flatten order.

// Job (21 words): first workgroup, K offset, Q offset, bias (or NONE),
// s_in destination, s_out destination, cin, h, w, cout, ho, wo, kh, kw,
// sh, sw, ph, pw, dh, dw, keras (1: flatten y, x, c; 0: c, y, x),
// channel level (1: the grid is 1x1 and every tap counts).
const STRIDE: u32 = 22u;

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
    let i = (id - jobs[j]) * 256u + t;
    let cin = jobs[j + 6u];
    let h = jobs[j + 7u];
    let w = jobs[j + 8u];
    let cout = jobs[j + 9u];
    let ho = jobs[j + 10u];
    let wo = jobs[j + 11u];
    let kh = jobs[j + 12u];
    let kw = jobs[j + 13u];
    let sh = jobs[j + 14u];
    let sw = jobs[j + 15u];
    let ph = jobs[j + 16u];
    let pw = jobs[j + 17u];
    let dh = jobs[j + 18u];
    let dw = jobs[j + 19u];
    let keras = jobs[j + 20u] == 1u;
    let all = jobs[j + 21u] == 1u;
    let taps = kh * kw;
    let plane_out = ho * wo;
    let n_out = cout * plane_out;
    if (i < n_out) {
        let o = i / plane_out;
        let px = i % plane_out;
        let oy = px / wo;
        let ox = px % wo;
        let k = jobs[j + 1u] + o * taps;
        var s = 0.0;
        for (var ky = 0u; ky < kh; ky++) {
            let y = i32(oy * sh + ky * dh) - i32(ph);
            if (!all && (y < 0 || y >= i32(h))) {
                continue;
            }
            for (var kx = 0u; kx < kw; kx++) {
                let x = i32(ox * sw + kx * dw) - i32(pw);
                if (all || (x >= 0 && x < i32(w))) {
                    s += scratch[k + ky * kw + kx];
                }
            }
        }
        let bias = jobs[j + 3u];
        if (bias != NONE) {
            s += biases[bias + o];
        }
        strengths[jobs[j + 4u] + select(i, px * cout + o, keras)] = s;
        return;
    }
    let plane_in = h * w;
    let q = i - n_out;
    if (q >= cin * plane_in) {
        return;
    }
    let c = q / plane_in;
    let px = q % plane_in;
    let y = px / w;
    let x = px % w;
    let k = jobs[j + 2u] + c * taps;
    var s = 0.0;
    for (var ky = 0u; ky < kh; ky++) {
        let qy = i32(y + ph) - i32(ky * dh);
        if (!all && (qy < 0 || qy % i32(sh) != 0 || qy / i32(sh) >= i32(ho))) {
            continue;
        }
        for (var kx = 0u; kx < kw; kx++) {
            let qx = i32(x + pw) - i32(kx * dw);
            if (all || (qx >= 0 && qx % i32(sw) == 0 && qx / i32(sw) < i32(wo))) {
                s += scratch[k + ky * kw + kx];
            }
        }
    }
    strengths[jobs[j + 5u] + select(q, px * cin + c, keras)] = s;
}
