// Reading tensor elements from raw little-endian words, as stored.
// Prepended to every kernel that declares `raw: array<u32>`.
// dtype: 0 = f32, 1 = f16, 2 = bf16 (two elements per word).

fn load(base: u32, dtype: u32, i: u32) -> f32 {
    if (dtype == 0u) {
        return bitcast<f32>(raw[base + i]);
    }
    let word = raw[base + (i >> 1u)];
    let bits = select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
    if (dtype == 1u) {
        return half_to_f32(bits);
    }
    // bf16 is the high half of an f32.
    return bitcast<f32>(bits << 16u);
}

// IEEE half bits to f32 without the adapter's f16 capabilities: normals
// and infinities/NaN by re-biasing the exponent, subnormals by scaling.
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
