// Reading tensor elements from raw little-endian words, as stored.
// Prepended to every kernel that declares `raw: array<u32>`.
// DTYPE: 0 = f32, 1 = f16, 2 = bf16 (two elements per word).

override DTYPE: u32 = 0u;

fn load(i: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(raw[i]);
    }
    let word = raw[i >> 1u];
    if (DTYPE == 1u) {
        return half_to_f32(select(word & 0xffffu, word >> 16u, (i & 1u) == 1u));
    }
    // bf16 is the high half of an f32.
    if ((i & 1u) == 0u) {
        return bitcast<f32>(word << 16u);
    }
    return bitcast<f32>(word & 0xffff0000u);
}

// IEEE half bits (low 16 bits of h) to f32, without needing the adapter's
// f16 capabilities: normals and infinities/NaN by re-biasing, subnormals
// by scaling.
fn half_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(m) * 5.9604645e-8; // m * 2^-24
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// Linear workgroup index of a 2-D dispatch (x up to 65535, then y).
fn group_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}
