// Moments of each reduction job's values: each thread streams its strided
// share with the one-pass update of mean and central sums M2..M4
// (Welford/Pébay), then the workgroup merges thread states as a tree with
// the pairwise formulas (Chan/Pébay); one partial per workgroup, merged on
// the host in f64. Never E[x^2] - E[x]^2.

const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<uniform> p: Dispatch;
@group(0) @binding(2) var<storage, read> jobs: array<u32>;
@group(0) @binding(3) var<storage, read> strengths: array<f32>;
// Per partial: n, mean, m2, m3, m4, min, max, pad.
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

var<workgroup> sn: array<f32, WG>;
var<workgroup> smean: array<f32, WG>;
var<workgroup> sm2: array<f32, WG>;
var<workgroup> sm3: array<f32, WG>;
var<workgroup> sm4: array<f32, WG>;
var<workgroup> smin: array<f32, WG>;
var<workgroup> smax: array<f32, WG>;

// Folds thread state b into thread state a.
fn merge(a: u32, b: u32) {
    let nb = sn[b];
    if (nb == 0.0) {
        return;
    }
    let na = sn[a];
    if (na == 0.0) {
        sn[a] = nb;
        smean[a] = smean[b];
        sm2[a] = sm2[b];
        sm3[a] = sm3[b];
        sm4[a] = sm4[b];
        smin[a] = smin[b];
        smax[a] = smax[b];
        return;
    }
    let n = na + nb;
    let d = smean[b] - smean[a];
    let dn = d / n;
    let d2 = d * d;
    let m2a = sm2[a];
    let m2b = sm2[b];
    let m3a = sm3[a];
    let m3b = sm3[b];
    let m2 = m2a + m2b + d2 * na * nb / n;
    let m3 = m3a + m3b + d2 * dn * na * nb * (na - nb) / n + 3.0 * dn * (na * m2b - nb * m2a);
    let m4 = sm4[a] + sm4[b] + d2 * dn * dn * na * nb * (na * na - na * nb + nb * nb) / n
        + 6.0 * dn * dn * (na * na * m2b + nb * nb * m2a) + 4.0 * dn * (na * m3b - nb * m3a);
    sn[a] = n;
    smean[a] = smean[a] + dn * nb;
    sm2[a] = m2;
    sm3[a] = m3;
    sm4[a] = m4;
    smin[a] = min(smin[a], smin[b]);
    smax[a] = max(smax[a], smax[b]);
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
    let g = id - jobs[j];
    let stride = jobs[j + 1u] * WG;
    let count = jobs[j + 7u];
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    var m3 = 0.0;
    var m4 = 0.0;
    var lo = 3.0e38;
    var hi = -3.0e38;
    for (var i = g * WG + t; i < count; i += stride) {
        let x = value(j, i);
        let n1 = n;
        n += 1.0;
        let d = x - mean;
        let dn = d / n;
        let dn2 = dn * dn;
        let term1 = d * dn * n1;
        mean += dn;
        m4 += term1 * dn2 * (n * n - 3.0 * n + 3.0) + 6.0 * dn2 * m2 - 4.0 * dn * m3;
        m3 += term1 * dn * (n - 2.0) - 3.0 * dn * m2;
        m2 += term1;
        lo = min(lo, x);
        hi = max(hi, x);
    }
    sn[t] = n;
    smean[t] = mean;
    sm2[t] = m2;
    sm3[t] = m3;
    sm4[t] = m4;
    smin[t] = lo;
    smax[t] = hi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            merge(t, t + s);
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let o = (jobs[j + 8u] + g) * 8u;
        partials[o] = sn[0];
        partials[o + 1u] = smean[0];
        partials[o + 2u] = sm2[0];
        partials[o + 3u] = sm3[0];
        partials[o + 4u] = sm4[0];
        partials[o + 5u] = smin[0];
        partials[o + 6u] = smax[0];
        partials[o + 7u] = 0.0;
    }
}
