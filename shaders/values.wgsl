// The values a reduction job runs over: a weight tensor (as stored) or a
// node set's strengths, s_in + s_out read from two regions (never
// materialised). Prepended to the reduction kernels, after elements.wgsl.

// Reduction job (14 words): first workgroup, workgroups, source (0:
// weights, 1: strengths), dtype, a (word offset, or first region), b
// (second region or NONE), first element, n, partials offset (in partials),
// histogram offset, bins, scale region (in strengths, or NONE), scale
// divisor, scale count. With a scale (a folded BatchNorm), weight i counts
// as `scale[(i / divisor) % count] * W[i]`.
const STRIDE: u32 = 14u;

fn value(j: u32, i: u32) -> f32 {
    if (jobs[j + 2u] == 0u) {
        let x = load(jobs[j + 4u], jobs[j + 3u], jobs[j + 6u] + i);
        let s = jobs[j + 11u];
        if (s == NONE) {
            return x;
        }
        return x * strengths[s + (i / jobs[j + 12u]) % jobs[j + 13u]];
    }
    var v = strengths[jobs[j + 4u] + i];
    let b = jobs[j + 5u];
    if (b != NONE) {
        v += strengths[b + i];
    }
    return v;
}
