//! The DAG graph (SPEC 1.3-1.6) checked against an oracle that builds the
//! explicit edge list of every layer kind: convolutions (strided, padded,
//! dilated, depthwise, 1-D), dense layers (also applied per pixel, with a layer
//! scale), every pool (with padding and overlapping windows), identity
//! skips, residual adds, concatenations read by channel ranges, writes
//! interleaved by a channel shuffle, and BatchNorm folded, as its own
//! layer and ignored; in both layouts. Each network is written as a safetensors
//! file with a spec file; every engine is checked node set by node set.

mod common;

use std::collections::HashMap;

use cntscope::checkpoint::Checkpoint;
use cntscope::engine::{AnalysisOptions, CpuEngine, Engine};
use cntscope::graph::{GraphOptions, Network};
use cntscope::spec::{BnMode, Layout, Spec};
use common::{assert_within, engines, values, write_st, T};

/// A layer of a test network, as the oracle understands it.
#[derive(Clone, Debug)]
enum K {
    Conv {
        cout: usize,
        groups: usize,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
        bias: bool,
        norm: bool,
    },
    Dense {
        out: usize,
        bias: bool,
        norm: bool,
    },
    /// `op`: max, avg, adaptive_avg, global_avg; `ceil`: torch's ceil_mode.
    Pool {
        op: &'static str,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        include_pad: bool,
        ceil: bool,
        out: [usize; 2],
    },
    /// `F.interpolate` to `out` (`mode` as torch names it), with
    /// `align_corners` and the `scale_factor` torch was given.
    Interpolate {
        mode: &'static str,
        out: [usize; 2],
        align: bool,
        factor: Option<[f64; 2]>,
    },
    /// `F.pad(x, [left, right, top, bottom], mode)`.
    Pad {
        pad: [i64; 4],
        mode: &'static str,
    },
    /// A dense weight `[out, in]` applied at every pixel (`per_pixel`),
    /// with a layer scale `[out, 1, 1]` folded in when `scale`.
    PerPixel {
        out: usize,
        bias: bool,
        scale: bool,
        norm: bool,
    },
    Identity,
    Norm,
}

#[derive(Clone, Debug)]
struct E {
    name: &'static str,
    kind: K,
    from: Option<&'static str>,
    from_ch: Option<[usize; 2]>,
    to: Option<&'static str>,
    offset: usize,
    /// `channel_step`: output channel `k` written at `offset + k * step`.
    step: usize,
    /// A conv of a `1 x k` kernel stored as a 1-D conv's: rank 3.
    rank3: bool,
    /// A conv made transposed (`ConvTranspose2d`, weight `[in, out/g, kh,
    /// kw]`), with this `output_padding`.
    transposed: Option<[usize; 2]>,
    /// Reads its input as this `[c, h, w]` (`view`): the same nodes in the
    /// layout's order.
    view: Option<[usize; 3]>,
    /// Reads its input depth to space (`pixel_shuffle = r`, r > 0) or space
    /// to depth (`pixel_unshuffle = -r`).
    shuffle: Option<i64>,
    /// A conv's padding after its input (`padding_after`), when it differs
    /// from the padding before.
    pad_after: Option<[usize; 2]>,
    /// A conv's or dense layer's constant `scale`, folded before its
    /// BatchNorm (Inception-ResNet's branch scale).
    factor: Option<f64>,
}

fn e(name: &'static str, kind: K) -> E {
    E {
        name,
        kind,
        from: None,
        from_ch: None,
        to: None,
        offset: 0,
        step: 1,
        rank3: false,
        transposed: None,
        view: None,
        shuffle: None,
        pad_after: None,
        factor: None,
    }
}

fn conv(name: &'static str, cout: usize, k: usize, s: usize, p: usize) -> E {
    e(name, K::Conv { cout, groups: 1, k: [k, k], s: [s, s], p: [p, p], d: [1, 1], bias: true, norm: true })
}

/// A node set: channels, grid (flat: 1 x 1 and `flat`).
#[derive(Clone, Copy, Debug)]
struct S {
    c: usize,
    h: usize,
    w: usize,
    flat: bool,
}

impl S {
    fn n(&self) -> usize {
        self.c * self.h * self.w
    }
    /// The layout's index of node (c, y, x).
    fn at(&self, layout: Layout, c: usize, y: usize, x: usize) -> usize {
        match layout {
            Layout::Keras if !self.flat => (y * self.w + x) * self.c + c,
            _ => (c * self.h + y) * self.w + x,
        }
    }
    /// The node `[c, y, x]` at the layout's index `i` (the inverse of [`S::at`]).
    fn node(&self, layout: Layout, i: usize) -> [usize; 3] {
        match layout {
            Layout::Keras if !self.flat => [i % self.c, i / self.c / self.w, i / self.c % self.w],
            _ => [i / (self.h * self.w), i / self.w % self.h, i % self.w],
        }
    }
}

/// The inputs (and coefficients) that output `o` of an axis of `n` inputs
/// and `m` outputs reads in `F.interpolate`, from torch's definitions: the
/// output's position on the input axis (`(o + 0.5) n / m - 0.5`, or
/// `o (n - 1) / (m - 1)` with corners aligned; `1 / scale_factor` for
/// `n / m` when torch was given one), nearest modes computed in f32 as
/// torch does.
fn interpolation_taps(mode: &str, align: bool, factor: Option<f64>, n: usize, m: usize, o: usize) -> Vec<(usize, f64)> {
    let ratio = factor.map_or(n as f64 / m as f64, |f| 1.0 / f);
    let x = if align {
        if m > 1 {
            o as f64 * (n - 1) as f64 / (m - 1) as f64
        } else {
            0.0
        }
    } else {
        (o as f64 + 0.5) * ratio - 0.5
    };
    let last = n as i64 - 1;
    let at = |i: i64| i.clamp(0, last) as usize;
    let ratio32 = factor.map_or(n as f32 / m as f32, |f| (1.0 / f) as f32);
    match mode {
        "nearest" => vec![(at((o as f32 * ratio32).floor() as i64), 1.0)],
        "nearest-exact" => vec![(at((((o as f64 + 0.5) * ratio32 as f64) as f32).floor() as i64), 1.0)],
        "bilinear" => {
            let x = x.max(0.0);
            let i = (x.floor() as i64).min(last);
            let l = (x - i as f64).clamp(0.0, 1.0);
            vec![(at(i), 1.0 - l), (at(i + 1), l)]
        }
        "bicubic" => {
            // Keys' cubic convolution kernel, A = -0.75.
            let kernel = |d: f64| {
                let (a, d) = (-0.75, d.abs());
                if d <= 1.0 {
                    (a + 2.0) * d * d * d - (a + 3.0) * d * d + 1.0
                } else {
                    a * d * d * d - 5.0 * a * d * d + 8.0 * a * d - 4.0 * a
                }
            };
            let i = (x.floor() as i64).min(last);
            let t = (x - i as f64).clamp(0.0, 1.0);
            (0..4).map(|j| (at(i - 1 + j), kernel(t - (j - 1) as f64))).collect()
        }
        _ => unreachable!("{mode}"),
    }
}

/// The oracle: every link (and bias) as an explicit edge between nodes
/// `(set, [c, y, x])`, summed per node once the sets have their final
/// shapes (a concatenation grows its set as layers write into it).
struct Oracle {
    sets: Vec<S>,
    /// (target node, source node or none for a bias, weight).
    edges: Vec<(Node, Option<Node>, f64)>,
}

/// A node: its set and `[c, y, x]`.
type Node = (usize, [usize; 3]);

/// The set an entry with a `view` reads, in the oracle's edges until they
/// are moved onto the set it views.
const VIEWED: usize = usize::MAX;

impl Oracle {
    fn link(&mut self, from: Node, to: Node, w: f64) {
        self.edges.push((to, Some(from), w));
    }
    /// A bias: into node b's in-strength only.
    fn bias(&mut self, to: Node, w: f64) {
        self.edges.push((to, None, w));
    }
    /// Per set: each node's strength and the magnitude of its sum (for
    /// the f32 bound), in the layout's order.
    fn sums(&self, layout: Layout) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut s: Vec<Vec<f64>> = self.sets.iter().map(|x| vec![0.0; x.n()]).collect();
        let mut m = s.clone();
        for &(to, from, w) in &self.edges {
            for (set, [c, y, x]) in std::iter::once(to).chain(from) {
                let i = self.sets[set].at(layout, c, y, x);
                s[set][i] += w;
                m[set][i] += w.abs();
            }
        }
        (s, m)
    }
}

/// Builds the network's tensors, spec text and oracle.
fn build(entries: &[E], input: S, layout: Layout, bn: BnMode, seed: u64) -> (Vec<T<'static>>, String, Oracle) {
    let mut tensors: Vec<T<'static>> = Vec::new();
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut spec = format!(
        "input = [{}]\nlayout = \"{layout}\"\nbn = \"{bn}\"\n",
        if input.flat { input.c.to_string() } else { format!("{}, {}, {}", input.c, input.h, input.w) }
    );
    let mut o = Oracle { sets: vec![input], edges: Vec::new() };
    let mut names: HashMap<&str, usize> = HashMap::from([("input", 0)]);
    let mut last = 0usize;
    // The BatchNorm epsilon the spec leaves to the layout's default.
    let eps = if layout == Layout::Keras { 1e-3 } else { 1e-5 };
    let seed = std::cell::Cell::new(seed);
    let draw = |n: usize, lo: f64, hi: f64| {
        seed.set(seed.get() + 1);
        values(n, seed.get())
            .into_iter()
            .map(|v| lo + (v + 1.0) / 2.0 * (hi - lo))
            .map(|v| v as f32 as f64)
            .collect::<Vec<_>>()
    };
    // Creates or finds the target set; returns its index.
    fn target(
        o: &mut Oracle,
        names: &mut HashMap<&'static str, usize>,
        to: Option<&'static str>,
        default: &'static str,
        s: S,
        offset: usize,
    ) -> usize {
        match to.and_then(|t| names.get(t).copied()) {
            Some(i) => {
                let set = &mut o.sets[i];
                set.c = set.c.max(offset + s.c);
                i
            }
            None => {
                let mut s = s;
                s.c += offset;
                o.sets.push(s);
                names.insert(to.unwrap_or(default), o.sets.len() - 1);
                o.sets.len() - 1
            }
        }
    }
    for en in entries {
        let read_from = en.from.map_or(last, |f| names[f]);
        let real = o.sets[read_from];
        let [real_a, real_b] = en.from_ch.unwrap_or([0, real.c]);
        // A view: the layer reads a set of its own (VIEWED), whose links
        // are moved onto the real set's nodes by the layout's index below.
        let part = S { c: real_b - real_a, ..real };
        let (src, sset, [a, b]) = match (en.view, en.shuffle) {
            (Some([c, h, w]), _) => (VIEWED, S { c, h, w, flat: false }, [0, c]),
            // torch's pixel_shuffle: out[c, y r + i, x r + j] = in[c r² + i r + j, y, x].
            (_, Some(r)) if r > 0 => {
                let r = r as usize;
                let viewed = S { c: part.c / (r * r), h: part.h * r, w: part.w * r, flat: false };
                (VIEWED, viewed, [0, viewed.c])
            }
            (_, Some(r)) => {
                let r = (-r) as usize;
                let viewed = S { c: part.c * r * r, h: part.h / r, w: part.w / r, flat: false };
                (VIEWED, viewed, [0, viewed.c])
            }
            (None, None) => (read_from, real, [real_a, real_b]),
        };
        let edges_before = o.edges.len();
        let cin = b - a;
        let mut entry = format!("\n[[layers]]\nname = \"{}\"\n", en.name);
        if let Some([c, h, w]) = en.view {
            entry += &format!("view = [{c}, {h}, {w}]\n");
        }
        match en.shuffle {
            Some(r) if r > 0 => entry += &format!("pixel_shuffle = {r}\n"),
            Some(r) => entry += &format!("pixel_unshuffle = {}\n", -r),
            None => {}
        }
        if let Some(f) = en.from {
            entry += &format!("from = \"{f}\"\n");
        }
        if let Some([a, b]) = en.from_ch {
            entry += &format!("from_channels = [{a}, {b}]\n");
        }
        if let Some(t) = en.to {
            entry += &format!("to = \"{t}\"\n");
        }
        if en.offset > 0 {
            entry += &format!("offset = {}\n", en.offset);
        }
        if en.step > 1 {
            entry += &format!("channel_step = {}\n", en.step);
        }
        let first_edge = o.edges.len();
        // A BatchNorm's a and c for `n` channels, written as tensors.
        let norm = |prefix: &str, n: usize, tensors: &mut Vec<T<'static>>| -> (Vec<f64>, Vec<f64>) {
            let gamma = draw(n, 0.5, 1.5);
            let beta = draw(n, -0.5, 0.5);
            let mean = draw(n, -0.3, 0.3);
            let var = draw(n, 0.2, 2.0);
            for (suffix, v) in [("weight", &gamma), ("bias", &beta), ("running_mean", &mean), ("running_var", &var)] {
                tensors.push(T::f32(leak(format!("{prefix}.{suffix}")), &[n], v.clone()));
            }
            let a: Vec<f64> = (0..n).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
            let c = (0..n).map(|i| beta[i] - a[i] * mean[i]).collect();
            (a, c)
        };
        // A weighted entry's BatchNorm (`norm`, tensors `NAME_bn.*`, when
        // it has one) and the `(a, c)` folded into its `n` outputs.
        // (A constant `scale` multiplies the raw layer's outputs first.)
        let folded = |has_norm: bool, n: usize, entry: &mut String, tensors: &mut Vec<T<'static>>| {
            let f = en.factor.unwrap_or(1.0);
            if let Some(f) = en.factor {
                *entry += &format!("scale = {f:?}\n");
            }
            if !has_norm {
                return (vec![f; n], vec![0.0; n]);
            }
            let prefix = format!("{}_bn", en.name);
            *entry += &format!("norm = \"{prefix}\"\n");
            let (a, c) = norm(&prefix, n, tensors);
            match bn {
                BnMode::Fold => (a.iter().map(|a| a * f).collect(), c),
                _ => (vec![f; n], vec![0.0; n]),
            }
        };
        let (out_set, raw_name);
        match &en.kind {
            K::Conv { cout, groups, k, s, p, d, bias, norm: has_norm } => {
                let (cout, g) = (*cout, *groups);
                let (cin_g, cout_g) = (cin / g, cout / g);
                // A transposed conv spreads each input pixel over the output
                // grid; its weight is [in, out/g, kh, kw] (keras [kh, kw, out/g, in]).
                let after = en.pad_after.unwrap_or(*p);
                let grid = |n: usize, a: usize| match en.transposed {
                    None => (n + p[a] + after[a] - d[a] * (k[a] - 1) - 1) / s[a] + 1,
                    Some(op) => (n - 1) * s[a] + d[a] * (k[a] - 1) + op[a] + 1 - p[a] - after[a],
                };
                let (ho, wo) = (grid(sset.h, 0), grid(sset.w, 1));
                let (rows, cols) = if en.transposed.is_some() { (cin, cout_g) } else { (cout, cin_g) };
                let taps = k[0] * k[1];
                let wv = draw(rows * cols * taps, -1.0, 1.0);
                let bv = draw(cout, -0.5, 0.5);
                let wname = leak(format!("{}.weight", en.name));
                let stored = match layout {
                    Layout::Torch => (vec![rows, cols, k[0], k[1]], wv.clone()),
                    Layout::Keras => {
                        let mut st = vec![0.0; wv.len()];
                        for row in 0..rows {
                            for col in 0..cols {
                                for t in 0..taps {
                                    st[(t * cols + col) * rows + row] = wv[(row * cols + col) * taps + t];
                                }
                            }
                        }
                        (vec![k[0], k[1], cols, rows], st)
                    }
                };
                let mut shape = stored.0;
                if en.rank3 {
                    assert_eq!(k[0], 1, "a 1-D conv's kernel is 1 x k");
                    shape.remove(if layout == Layout::Torch { 2 } else { 0 });
                }
                tensors.push(T::f32(wname, &shape, stored.1));
                entry += &format!(
                    "weight = \"{wname}\"\nstride = [{}, {}]\npadding = [{}, {}]\ndilation = [{}, {}]\ngroups = {g}\n",
                    s[0], s[1], p[0], p[1], d[0], d[1]
                );
                if let Some(op) = en.transposed {
                    entry += &format!("transposed = true\noutput_padding = [{}, {}]\n", op[0], op[1]);
                }
                if let Some([b, r]) = en.pad_after {
                    entry += &format!("padding_after = [{b}, {r}]\n");
                }
                if *bias {
                    let bname = leak(format!("{}.bias", en.name));
                    tensors.push(T::f32(bname, &[cout], bv.clone()));
                    entry += &format!("bias = \"{bname}\"\n");
                }
                let (scale, shift) = folded(*has_norm, cout, &mut entry, &mut tensors);
                let oshape = S { c: cout, h: ho, w: wo, flat: false };
                let layer_mode = *has_norm && bn == BnMode::Layer;
                let (t, off) = if layer_mode {
                    (target(&mut o, &mut names, None, en.name, oshape, 0), 0)
                } else {
                    (target(&mut o, &mut names, en.to, en.name, oshape, en.offset), en.offset)
                };
                // Each tap links a pixel `q` of the strided grid (a conv's
                // output, a transposed conv's input) with `q s + k d - p` of
                // the other one, if inside it.
                let (small, big) =
                    if en.transposed.is_some() { ([sset.h, sset.w], [ho, wo]) } else { ([ho, wo], [sset.h, sset.w]) };
                for row in 0..rows {
                    for col in 0..cols {
                        // (input channel, output channel) of this weight.
                        let (ch, oc) = match en.transposed {
                            None => (a + row / cout_g * cin_g + col, row),
                            Some(_) => (a + row, row / cin_g * cout_g + col),
                        };
                        for ky in 0..k[0] {
                            for kx in 0..k[1] {
                                let wt = scale[oc] * wv[(row * cols + col) * taps + ky * k[1] + kx];
                                for qy in 0..small[0] {
                                    for qx in 0..small[1] {
                                        let y = (qy * s[0] + ky * d[0]) as i64 - p[0] as i64;
                                        let x = (qx * s[1] + kx * d[1]) as i64 - p[1] as i64;
                                        if y < 0 || x < 0 || y as usize >= big[0] || x as usize >= big[1] {
                                            continue;
                                        }
                                        let (by, bx) = (y as usize, x as usize);
                                        let ((iy, ix), (oy, ox)) = if en.transposed.is_some() {
                                            ((qy, qx), (by, bx))
                                        } else {
                                            ((by, bx), (qy, qx))
                                        };
                                        o.link((src, [ch, iy, ix]), (t, [off + oc, oy, ox]), wt);
                                    }
                                }
                            }
                        }
                    }
                }
                for oc in 0..cout {
                    let b = if *bias { scale[oc] * bv[oc] } else { 0.0 } + shift[oc];
                    for oy in 0..ho {
                        for ox in 0..wo {
                            o.bias((t, [off + oc, oy, ox]), b);
                        }
                    }
                }
                out_set = t;
                raw_name = layer_mode.then(|| format!("{}_bn", en.name));
            }
            K::Dense { out, bias, norm: has_norm } => {
                let n_in = cin * sset.h * sset.w;
                let wv = draw(out * n_in, -1.0, 1.0);
                let bv = draw(*out, -0.5, 0.5);
                let wname = leak(format!("{}.weight", en.name));
                // Inputs are indexed in the layout's flatten order of the read channels.
                let part = S { c: cin, ..sset };
                let stored = match layout {
                    Layout::Torch => (vec![*out, n_in], wv.clone()),
                    Layout::Keras => {
                        let mut st = vec![0.0; wv.len()];
                        for j in 0..*out {
                            for i in 0..n_in {
                                st[i * out + j] = wv[j * n_in + i];
                            }
                        }
                        (vec![n_in, *out], st)
                    }
                };
                tensors.push(T::f32(wname, &stored.0, stored.1));
                entry += &format!("weight = \"{wname}\"\n");
                if *bias {
                    let bname = leak(format!("{}.bias", en.name));
                    tensors.push(T::f32(bname, &[*out], bv.clone()));
                    entry += &format!("bias = \"{bname}\"\n");
                }
                let (scale, shift) = folded(*has_norm, *out, &mut entry, &mut tensors);
                let layer_mode = *has_norm && bn == BnMode::Layer;
                let oshape = S { c: *out, h: 1, w: 1, flat: true };
                let (t, off) = if layer_mode {
                    (target(&mut o, &mut names, None, en.name, oshape, 0), 0)
                } else {
                    (target(&mut o, &mut names, en.to, en.name, oshape, en.offset), en.offset)
                };
                for ch in 0..cin {
                    for y in 0..sset.h {
                        for x in 0..sset.w {
                            let i = part.at(layout, ch, y, x);
                            for j in 0..*out {
                                o.link((src, [a + ch, y, x]), (t, [off + j, 0, 0]), scale[j] * wv[j * n_in + i]);
                            }
                        }
                    }
                }
                for j in 0..*out {
                    let b = if *bias { scale[j] * bv[j] } else { 0.0 } + shift[j];
                    o.bias((t, [off + j, 0, 0]), b);
                }
                out_set = t;
                raw_name = layer_mode.then(|| format!("{}_bn", en.name));
            }
            K::PerPixel { out, bias, scale: has_scale, norm: has_norm } => {
                let out = *out;
                let wv = draw(out * cin, -1.0, 1.0);
                let bv = draw(out, -0.5, 0.5);
                let wname = leak(format!("{}.weight", en.name));
                let stored = match layout {
                    Layout::Torch => (vec![out, cin], wv.clone()),
                    Layout::Keras => (vec![cin, out], (0..wv.len()).map(|i| wv[(i % out) * cin + i / out]).collect()),
                };
                tensors.push(T::f32(wname, &stored.0, stored.1));
                entry += &format!("weight = \"{wname}\"\nper_pixel = true\n");
                if *bias {
                    let bname = leak(format!("{}.bias", en.name));
                    tensors.push(T::f32(bname, &[out], bv.clone()));
                    entry += &format!("bias = \"{bname}\"\n");
                }
                // The layer scale multiplies the raw outputs, before the BatchNorm.
                let ls = if *has_scale {
                    let sname = leak(format!("{}.ls", en.name));
                    let sv = draw(out, -1.5, 1.5);
                    tensors.push(T::f32(sname, &[out, 1, 1], sv.clone()));
                    entry += &format!("scale = \"{sname}\"\n");
                    sv
                } else {
                    vec![1.0; out]
                };
                let (scale, shift) = folded(*has_norm, out, &mut entry, &mut tensors);
                let oshape = S { c: out, ..sset };
                let layer_mode = *has_norm && bn == BnMode::Layer;
                let (t, off) = if layer_mode {
                    (target(&mut o, &mut names, None, en.name, oshape, 0), 0)
                } else {
                    (target(&mut o, &mut names, en.to, en.name, oshape, en.offset), en.offset)
                };
                for oc in 0..out {
                    let f = scale[oc] * ls[oc];
                    let b = if *bias { f * bv[oc] } else { 0.0 } + shift[oc];
                    for y in 0..sset.h {
                        for x in 0..sset.w {
                            for ci in 0..cin {
                                o.link((src, [a + ci, y, x]), (t, [off + oc, y, x]), f * wv[oc * cin + ci]);
                            }
                            o.bias((t, [off + oc, y, x]), b);
                        }
                    }
                }
                out_set = t;
                raw_name = layer_mode.then(|| format!("{}_bn", en.name));
            }
            K::Pool { op, k, s, p, include_pad, ceil, out } => {
                entry += &format!("pool = \"{op}\"\n");
                let after = en.pad_after.unwrap_or(*p);
                let (ho, wo) = match *op {
                    "adaptive_avg" => {
                        entry += &format!("output = [{}, {}]\n", out[0], out[1]);
                        (out[0], out[1])
                    }
                    "global_avg" => (1, 1),
                    _ => {
                        entry += &format!(
                            "kernel = [{}, {}]\nstride = [{}, {}]\npadding = [{}, {}]\n",
                            k[0], k[1], s[0], s[1], p[0], p[1]
                        );
                        if *op == "avg" {
                            entry += &format!("count_include_pad = {include_pad}\n");
                        }
                        if let Some([b, r]) = en.pad_after {
                            entry += &format!("padding_after = [{b}, {r}]\n");
                        }
                        if *ceil {
                            entry += "ceil_mode = true\n";
                        }
                        // torch's output size: in ceil mode rounded up, less
                        // a last window that would start in the right padding.
                        let len = |n: usize, k: usize, s: usize, p: usize, after: usize| {
                            let steps = (n + p + after - k) as f64 / s as f64;
                            let out = if *ceil { steps.ceil() } else { steps.floor() } as usize + 1;
                            if *ceil && (out - 1) * s >= n + p {
                                out - 1
                            } else {
                                out
                            }
                        };
                        (len(sset.h, k[0], s[0], p[0], after[0]), len(sset.w, k[1], s[1], p[1], after[1]))
                    }
                };
                let t = target(&mut o, &mut names, en.to, en.name, S { c: cin, h: ho, w: wo, flat: false }, en.offset);
                for ch in 0..cin {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            // The window's input cells (inside the input) and its divisor.
                            let (ys, xs, div): (Vec<usize>, Vec<usize>, f64) = match *op {
                                "adaptive_avg" | "global_avg" => {
                                    let ys: Vec<usize> = (oy * sset.h / ho..((oy + 1) * sset.h).div_ceil(ho)).collect();
                                    let xs: Vec<usize> = (ox * sset.w / wo..((ox + 1) * sset.w).div_ceil(wo)).collect();
                                    let n = (ys.len() * xs.len()) as f64;
                                    (ys, xs, n)
                                }
                                _ => {
                                    let inside = |o: usize, k: usize, s: usize, p: usize, n: usize| {
                                        (0..k)
                                            .map(|t| (o * s + t) as i64 - p as i64)
                                            .filter(|&v| v >= 0 && (v as usize) < n)
                                            .map(|v| v as usize)
                                            .collect::<Vec<_>>()
                                    };
                                    let ys = inside(oy, k[0], s[0], p[0], sset.h);
                                    let xs = inside(ox, k[1], s[1], p[1], sset.w);
                                    // Counting padding: the taps inside the padded input
                                    // (a ceil-mode window may reach past it).
                                    let padded = |o: usize, k: usize, s: usize, p: usize, after: usize, n: usize| {
                                        (0..k).filter(|t| o * s + t < n + p + after).count()
                                    };
                                    let n = if *op == "avg" && *include_pad {
                                        (padded(oy, k[0], s[0], p[0], after[0], sset.h)
                                            * padded(ox, k[1], s[1], p[1], after[1], sset.w))
                                            as f64
                                    } else {
                                        (ys.len() * xs.len()) as f64
                                    };
                                    (ys, xs, n)
                                }
                            };
                            for &y in &ys {
                                for &x in &xs {
                                    o.link((src, [a + ch, y, x]), (t, [en.offset + ch, oy, ox]), 1.0 / div);
                                }
                            }
                        }
                    }
                }
                out_set = t;
                raw_name = None;
            }
            K::Interpolate { mode, out, align, factor } => {
                entry += &format!("interpolate = \"{mode}\"\noutput = [{}, {}]\n", out[0], out[1]);
                if *align {
                    entry += "align_corners = true\n";
                }
                if let Some(f) = factor {
                    entry += &format!("scale_factor = [{:?}, {:?}]\n", f[0], f[1]);
                }
                let t = target(
                    &mut o,
                    &mut names,
                    en.to,
                    en.name,
                    S { c: cin, h: out[0], w: out[1], flat: false },
                    en.offset,
                );
                let ys: Vec<_> = (0..out[0])
                    .map(|oy| interpolation_taps(mode, *align, factor.map(|f| f[0]), sset.h, out[0], oy))
                    .collect();
                let xs: Vec<_> = (0..out[1])
                    .map(|ox| interpolation_taps(mode, *align, factor.map(|f| f[1]), sset.w, out[1], ox))
                    .collect();
                for ch in 0..cin {
                    for (oy, ys) in ys.iter().enumerate() {
                        for (ox, xs) in xs.iter().enumerate() {
                            for &(y, wy) in ys {
                                for &(x, wx) in xs {
                                    o.link((src, [a + ch, y, x]), (t, [en.offset + ch, oy, ox]), wy * wx);
                                }
                            }
                        }
                    }
                }
                out_set = t;
                raw_name = None;
            }
            K::Pad { pad, mode } => {
                entry += &format!("pad = {pad:?}\npad_mode = \"{mode}\"\n");
                let [left, right, top, bottom] = *pad;
                let (h, w) = (sset.h as i64, sset.w as i64);
                let (ho, wo) = (h + top + bottom, w + left + right);
                let t = target(
                    &mut o,
                    &mut names,
                    en.to,
                    en.name,
                    S { c: cin, h: ho as usize, w: wo as usize, flat: false },
                    en.offset,
                );
                // The input cell an output cell holds: torch's definitions of each mode.
                let source = |o: i64, before: i64, n: i64| -> Option<i64> {
                    let i = o - before;
                    match *mode {
                        "constant" => (i >= 0 && i < n).then_some(i),
                        "reflect" => Some(if i < 0 {
                            -i
                        } else if i >= n {
                            2 * n - 2 - i
                        } else {
                            i
                        }),
                        "replicate" => Some(i.max(0).min(n - 1)),
                        "circular" => Some(((i % n) + n) % n),
                        _ => unreachable!(),
                    }
                };
                for ch in 0..cin {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            if let (Some(y), Some(x)) = (source(oy, top, h), source(ox, left, w)) {
                                o.link(
                                    (src, [a + ch, y as usize, x as usize]),
                                    (t, [en.offset + ch, oy as usize, ox as usize]),
                                    1.0,
                                );
                            }
                        }
                    }
                }
                out_set = t;
                raw_name = None;
            }
            K::Identity => {
                entry += "identity = true\n";
                let t = target(&mut o, &mut names, en.to, en.name, S { c: cin, ..sset }, en.offset);
                for ch in 0..cin {
                    for y in 0..sset.h {
                        for x in 0..sset.w {
                            o.link((src, [a + ch, y, x]), (t, [en.offset + ch, y, x]), 1.0);
                        }
                    }
                }
                out_set = t;
                raw_name = None;
            }
            K::Norm => {
                entry += &format!("norm = \"{}\"\n", en.name);
                let (na, nc) = norm(en.name, cin, &mut tensors);
                if bn == BnMode::Ignore {
                    names.insert(en.name, src);
                    spec += &entry;
                    last = src;
                    continue;
                }
                let t = target(&mut o, &mut names, en.to, en.name, S { c: cin, ..sset }, en.offset);
                for ch in 0..cin {
                    for y in 0..sset.h {
                        for x in 0..sset.w {
                            o.link((src, [a + ch, y, x]), (t, [en.offset + ch, y, x]), na[ch]);
                            o.bias((t, [en.offset + ch, y, x]), nc[ch]);
                        }
                    }
                }
                out_set = t;
                raw_name = None;
            }
        }
        if src == VIEWED {
            for (_, from, _) in &mut o.edges[edges_before..] {
                if let Some((set, node)) = from.as_mut().filter(|(set, _)| *set == VIEWED) {
                    let [c, y, x] = match en.shuffle {
                        None => part.node(layout, sset.at(layout, node[0], node[1], node[2])),
                        Some(r) if r > 0 => {
                            let r = r as usize;
                            [node[0] * r * r + node[1] % r * r + node[2] % r, node[1] / r, node[2] / r]
                        }
                        Some(r) => {
                            let r = (-r) as usize;
                            let (i, j) = (node[0] / r % r, node[0] % r);
                            [node[0] / (r * r), node[1] * r + i, node[2] * r + j]
                        }
                    };
                    (*set, *node) = (read_from, [real_a + c, y, x]);
                }
            }
        }
        let mut wrote = out_set;
        if let Some(prefix) = raw_name {
            // layer mode: the BatchNorm after the raw conv output.
            let raw = o.sets[out_set];
            let (na, nc) = norm_values(&tensors, &prefix, eps);
            let t = target(&mut o, &mut names, en.to, leak(prefix.clone()), raw, en.offset);
            for ch in 0..raw.c {
                for y in 0..raw.h {
                    for x in 0..raw.w {
                        o.link((out_set, [ch, y, x]), (t, [en.offset + ch, y, x]), na[ch]);
                        o.bias((t, [en.offset + ch, y, x]), nc[ch]);
                    }
                }
            }
            wrote = t;
        }
        if en.step > 1 {
            // The links were drawn into channels `offset + k`: interleave them.
            let mut top = 0;
            for edge in &mut o.edges[first_edge..] {
                let (set, [c, ..]) = &mut edge.0;
                if *set == wrote && *c >= en.offset {
                    *c = en.offset + (*c - en.offset) * en.step;
                    top = top.max(*c + 1);
                }
            }
            o.sets[wrote].c = o.sets[wrote].c.max(top);
        }
        names.insert(en.name, wrote);
        last = wrote;
        spec += &entry;
    }
    (tensors, spec, o)
}

/// A BatchNorm's a and c from the tensors already drawn.
fn norm_values(tensors: &[T<'_>], prefix: &str, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let get = |s: &str| tensors.iter().find(|t| t.name == format!("{prefix}.{s}")).unwrap().values.clone();
    let (g, b, m, v) = (get("weight"), get("bias"), get("running_mean"), get("running_var"));
    let a: Vec<f64> = (0..g.len()).map(|i| g[i] / (v[i] + eps).sqrt()).collect();
    let c = (0..g.len()).map(|i| b[i] - a[i] * m[i]).collect();
    (a, c)
}

/// A network written: its checkpoint (in a directory that lives as long
/// as the first value), its graph built from its spec, the spec's text and
/// the oracle.
struct Written(tempfile::TempDir, Checkpoint, Network, String, Oracle);

/// Writes the network as a safetensors file and builds it from its spec.
fn written(what: &str, entries: &[E], input: S, layout: Layout, bn: BnMode) -> Written {
    let (tensors, spec_text, oracle) = build(entries, input, layout, bn, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    write_st(&path, &tensors, &[]);
    let spec = Spec::parse(&spec_text, std::path::Path::new("net.toml"))
        .unwrap_or_else(|e| panic!("{what}: {e}\n{spec_text}"));
    let ck = Checkpoint::open(&path).unwrap();
    let net = Network::build(&ck, &GraphOptions { spec: Some(spec), ..Default::default() })
        .unwrap_or_else(|e| panic!("{what}: {e}\n{spec_text}"));
    Written(dir, ck, net, spec_text, oracle)
}

/// Writes the network, builds it from its spec, and checks every engine's
/// strengths per node set against the oracle.
fn check(what: &str, entries: &[E], input: S, layout: Layout, bn: BnMode) {
    let Written(_dir, ck, net, spec_text, oracle) = written(what, entries, input, layout, bn);
    assert_eq!(net.node_sets.len(), oracle.sets.len(), "{what}: node sets\n{spec_text}");
    let (strength, magnitude) = oracle.sums(layout);
    let opts = AnalysisOptions { keep_values: true, bins: 9 };
    for engine in engines() {
        let a = engine.analyze(&net, &ck, &opts).unwrap();
        let cpu = engine.name() == "cpu";
        for (k, set) in a.node_sets.iter().enumerate() {
            let got = &set.values.as_ref().unwrap().strength;
            let (want, mag) = (&strength[k], &magnitude[k]);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            let tol = |i: usize| if cpu { 1e-9 * scale } else { 1e-5 * scale + 1e-6 * mag[i] };
            assert_within(&format!("{what}, {}, V{k} {}", engine.name(), set.name), got, want, tol);
            // The moments and the histogram are of the same values (the CPU
            // engine weights each cell by the nodes it stands for).
            let n = want.len() as f64;
            let mean = want.iter().sum::<f64>() / n;
            let std = (want.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let close = |x: f64, y: f64| (x - y).abs() <= if cpu { 1e-9 } else { 1e-5 } * scale.max(1.0);
            assert!(close(set.strength.mean, mean), "{what}: V{k} mean {} vs {mean}", set.strength.mean);
            assert!(close(set.strength.std(), std), "{what}: V{k} fluctuation {} vs {std}", set.strength.std());
            assert_eq!(set.strength.n, want.len() as u64, "{what}: V{k} nodes");
            assert_eq!(set.histogram.counts.iter().sum::<u64>(), want.len() as u64, "{what}: V{k} histogram");
        }
    }
}

/// A global average pool.
fn gap(name: &'static str) -> E {
    e(name, K::Pool { op: "global_avg", k: [1, 1], s: [1, 1], p: [0, 0], include_pad: true, ceil: false, out: [1, 1] })
}

/// [`check`] in both layouts and every BatchNorm mode.
fn check_every_mode(what: &str, entries: &[E], input: S) {
    for layout in [Layout::Torch, Layout::Keras] {
        for bn in [BnMode::Fold, BnMode::Layer, BnMode::Ignore] {
            check(&format!("{what} {layout} bn={bn}"), entries, input, layout, bn);
        }
    }
}

fn map(c: usize, h: usize, w: usize) -> S {
    S { c, h, w, flat: false }
}

/// A ResNet-like network: strided padded conv with BatchNorm, a padded
/// overlapping max pool, a basic block (identity add), a downsampling
/// block (strided 1x1 conv added to a strided 3x3), an average pool that
/// leaves padding out of its divisor, a global average pool and a head.
fn resnet_like() -> Vec<E> {
    vec![
        conv("conv1", 4, 3, 2, 1),
        e("pool", K::Pool { op: "max", k: [3, 3], s: [2, 2], p: [1, 1], include_pad: true, ceil: false, out: [0, 0] }),
        conv("b1c1", 4, 3, 1, 1),
        E { to: Some("b1"), ..conv("b1c2", 4, 3, 1, 1) },
        E { from: Some("pool"), to: Some("b1"), ..e("skip1", K::Identity) },
        E { from: Some("b1"), ..conv("b2c1", 6, 3, 2, 1) },
        E { to: Some("b2"), ..conv("b2c2", 6, 3, 1, 1) },
        E { from: Some("b1"), to: Some("b2"), ..conv("down", 6, 1, 2, 0) },
        E {
            from: Some("b2"),
            ..e(
                "avg",
                K::Pool { op: "avg", k: [2, 2], s: [1, 1], p: [1, 1], include_pad: false, ceil: false, out: [0, 0] },
            )
        },
        gap("gap"),
        e("fc", K::Dense { out: 3, bias: true, norm: false }),
    ]
}

#[test]
fn residual_network_in_every_bn_mode() {
    check_every_mode("resnet-like", &resnet_like(), map(3, 9, 11));
}

/// A DenseNet-like block: the block's set holds the input's channels (an
/// identity), then each layer reads the channels filled so far and writes
/// the next ones; a BatchNorm-only entry after the concatenation, a
/// depthwise dilated conv, an average pool counting its padding, an
/// adaptive pool to a grid that does not divide the input, and a
/// BatchNorm1d folded into the head.
fn densenet_like() -> Vec<E> {
    let grow = |name, a, b, off| E {
        from: Some("block"),
        from_ch: Some([a, b]),
        to: Some("block"),
        offset: off,
        ..e(name, K::Conv { cout: 3, groups: 1, k: [3, 3], s: [1, 1], p: [1, 1], d: [1, 1], bias: false, norm: false })
    };
    vec![
        E { to: Some("block"), ..e("stem", K::Identity) },
        grow("g1", 0, 2, 2),
        grow("g2", 0, 5, 5),
        E { from: Some("block"), ..e("bn_post", K::Norm) },
        e("dw", K::Conv { cout: 8, groups: 8, k: [3, 3], s: [1, 1], p: [2, 2], d: [2, 2], bias: true, norm: false }),
        e("avg", K::Pool { op: "avg", k: [3, 3], s: [2, 2], p: [1, 1], include_pad: true, ceil: false, out: [0, 0] }),
        e(
            "ada",
            K::Pool {
                op: "adaptive_avg",
                k: [1, 1],
                s: [1, 1],
                p: [0, 0],
                include_pad: true,
                ceil: false,
                out: [2, 3],
            },
        ),
        e("head", K::Dense { out: 5, bias: true, norm: true }),
    ]
}

/// Depthwise convs, one with a channel multiplier (12 outputs over 6
/// groups, strided) and one of 5x5 kernels, both with BatchNorms: node
/// strengths against the oracle, and each layer's link-weight moments and
/// histogram against the folded weights themselves (the CPU engine scales
/// such layers' weights once; the GPU's kernels read them as any conv's).
#[test]
fn depthwise_convs() {
    let dw = |name, cout, groups, k, s, p, bias| {
        e(name, K::Conv { cout, groups, k: [k, k], s: [s, s], p: [p, p], d: [1, 1], bias, norm: true })
    };
    let entries = vec![
        conv("stem", 6, 3, 1, 1),
        dw("dw1", 12, 6, 3, 2, 1, false),
        dw("dw2", 12, 12, 5, 1, 2, true),
        e("head", K::Dense { out: 3, bias: true, norm: false }),
    ];
    for layout in [Layout::Torch, Layout::Keras] {
        for bn in [BnMode::Fold, BnMode::Layer] {
            let what = format!("depthwise {layout} {bn:?}");
            check(&what, &entries, map(3, 9, 8), layout, bn);
            let Written(_dir, ck, net, ..) = written(&what, &entries, map(3, 9, 8), layout, bn);
            for engine in engines() {
                let a = engine.analyze(&net, &ck, &AnalysisOptions { keep_values: false, bins: 9 }).unwrap();
                let cpu = engine.name() == "cpu";
                for l in &a.layers {
                    let layer = net.layers.iter().find(|x| x.name == l.name).unwrap();
                    let w = cntscope::engine::link_weights(&net, layer, &ck).unwrap();
                    let m = cntscope::stats::Moments::from_slice(&w);
                    let tol = if cpu { 1e-12 } else { 1e-5 } * m.std().max(m.mean.abs());
                    let got = &l.weights;
                    let at = format!("{what}, {}, {}", engine.name(), l.name);
                    assert_eq!(got.n, m.n, "{at}: count");
                    for (g, want, q) in
                        [(got.mean, m.mean, "mean"), (got.std(), m.std(), "std"), (got.min, m.min, "min")]
                    {
                        assert!((g - want).abs() <= tol, "{at}: {q} {g} vs {want}");
                    }
                    if cpu {
                        let mut h = cntscope::stats::Histogram::for_range(m.min, m.max, 9);
                        h.add_f64(&w);
                        assert_eq!(l.histogram, h, "{at}: histogram");
                    }
                }
            }
        }
    }
}

/// Pools in ceil mode (torch's `ceil_mode`): a max pool whose last
/// window hangs past an unpadded edge, an average pool counting its
/// padding whose last window reaches past the padding (its divisor counts
/// only the padded input), one leaving padding out, whose last column
/// window would start in the padding and is dropped; three heads summed.
/// Inception-ResNet's blocks: a branch's last conv scaled by a constant
/// (`scale = 0.17`) before the residual sum, one with a BatchNorm after
/// the scale; a dense head scaled likewise (a negative factor).
#[test]
fn constant_scales() {
    let scaled = |e: E, f| E { factor: Some(f), ..e };
    let entries = vec![
        conv("stem", 4, 3, 2, 1),
        conv("b1", 3, 3, 1, 1),
        E { to: Some("sum"), ..scaled(conv("up", 4, 1, 1, 0), 0.17) },
        E { from: Some("stem"), to: Some("sum"), ..e("skip", K::Identity) },
        scaled(conv("b2", 4, 3, 1, 1), 0.1),
        gap("gap"),
        scaled(e("fc", K::Dense { out: 2, bias: true, norm: true }), -1.5),
    ];
    check_every_mode("constant scales", &entries, map(2, 9, 7));
}

/// A ConvNeXt-like block: a depthwise 7x7 conv, two dense layers applied
/// at every pixel (`per_pixel`), the second with a layer scale folded in
/// (and a BatchNorm after it, in every mode), added to the block's input
/// through an identity; then a per-pixel layer reading a channel range.
#[test]
fn per_pixel_layers_and_layer_scales() {
    let pp = |name, out, scale, norm| e(name, K::PerPixel { out, bias: true, scale, norm });
    let entries = vec![
        conv("stem", 4, 2, 2, 0),
        e("dw", K::Conv { cout: 4, groups: 4, k: [7, 7], s: [1, 1], p: [3, 3], d: [1, 1], bias: true, norm: false }),
        pp("fc1", 9, false, false),
        E { to: Some("block"), ..pp("fc2", 4, true, true) },
        E { from: Some("stem"), to: Some("block"), ..e("skip", K::Identity) },
        E { from: Some("block"), from_ch: Some([1, 4]), ..pp("head", 5, true, false) },
    ];
    // A chain (one writer and one reader per set: the GPU engine's batched path).
    let chain =
        vec![conv("c", 5, 3, 1, 1), pp("p", 6, true, true), e("fc", K::Dense { out: 3, bias: true, norm: false })];
    check_every_mode("convnext-like", &entries, map(3, 13, 11));
    check_every_mode("per-pixel chain", &chain, map(2, 5, 4));
}

/// ShuffleNetV2-like units: two branches written interleaved
/// (`channel_step = 2`, as the channel shuffle after their concatenation
/// leaves them), then a unit that keeps one half of the shuffled set (an
/// identity) and convolves the other, again interleaved.
#[test]
fn interleaved_writes_of_a_channel_shuffle() {
    let dw = |name, c| {
        e(name, K::Conv { cout: c, groups: c, k: [3, 3], s: [1, 1], p: [1, 1], d: [1, 1], bias: false, norm: true })
    };
    let entries = vec![
        conv("stem", 4, 3, 2, 1),
        dw("b1.dw", 4),
        E { to: Some("s1"), step: 2, ..conv("b1.pw", 3, 1, 1, 0) },
        E { from: Some("stem"), ..conv("b2.pw1", 3, 1, 1, 0) },
        dw("b2.dw", 3),
        E { to: Some("s1"), offset: 1, step: 2, ..conv("b2.pw2", 3, 1, 1, 0) },
        E { from: Some("s1"), from_ch: Some([0, 3]), to: Some("s2"), step: 2, ..e("keep", K::Identity) },
        E { from: Some("s1"), from_ch: Some([3, 6]), ..conv("u2.pw1", 3, 1, 1, 0) },
        E { to: Some("s2"), offset: 1, step: 2, ..conv("u2.pw2", 3, 1, 1, 0) },
        E { from: Some("s2"), ..gap("gap") },
        e("fc", K::Dense { out: 3, bias: true, norm: false }),
    ];
    check_every_mode("shufflenet-like", &entries, map(3, 9, 8));
}

/// A 1-D CNN on a 2-channel signal of 23 samples (a 2 x 1 x 23 map):
/// strided, dilated and grouped convs stored as 1-D convs (rank 3), with
/// 1 x k pools between them.
#[test]
fn one_dimensional_convs() {
    let c1 = |name, cout, groups, k, s, p, d| {
        let kind = K::Conv { cout, groups, k: [1, k], s: [1, s], p: [0, p], d: [1, d], bias: true, norm: true };
        E { rank3: true, ..e(name, kind) }
    };
    let pool = |name, op, k, s, p, ceil| {
        e(name, K::Pool { op, k: [1, k], s: [1, s], p: [0, p], include_pad: true, ceil, out: [0, 0] })
    };
    let entries = vec![
        c1("c1", 6, 1, 5, 2, 2, 1),
        pool("p1", "max", 3, 2, 1, false),
        c1("c2", 6, 3, 3, 1, 2, 2),
        pool("p2", "avg", 2, 2, 0, true),
        c1("c3", 4, 2, 1, 1, 0, 1),
        e("fc", K::Dense { out: 3, bias: true, norm: false }),
    ];
    check_every_mode("1-d", &entries, map(2, 1, 23));
}

/// Adaptive average pools to larger grids: by whole factors (nearest
/// upsampling, as torch_to_spec writes `nn.Upsample`), and by others
/// (windows of one or two inputs, overlapping).
#[test]
fn upsampling_adaptive_pools() {
    let ada = |name, out| {
        e(name, K::Pool { op: "adaptive_avg", k: [1, 1], s: [1, 1], p: [0, 0], include_pad: true, ceil: false, out })
    };
    let entries = vec![
        conv("c1", 3, 3, 2, 1),
        ada("up", [8, 9]),
        E { from: Some("c1"), ..ada("up_odd", [7, 5]) },
        conv("c2", 2, 3, 1, 1),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("upsampling", &entries, map(2, 7, 5));
}

/// An encoder-decoder: strided convs down, transposed convs back up
/// (stride 2 with padding and output_padding, grouped and dilated, a 1x3
/// kernel), with BatchNorms folded into them (per output channel: the
/// adjoint conv's input channels), and a skip added to the decoder.
#[test]
fn transposed_convs() {
    let up = |name, cout, groups, k: [usize; 2], s: [usize; 2], p: [usize; 2], d: [usize; 2], op: [usize; 2]| E {
        transposed: Some(op),
        ..e(name, K::Conv { cout, groups, k, s, p, d, bias: true, norm: true })
    };
    let entries = vec![
        conv("down1", 4, 3, 2, 1),
        conv("down2", 6, 3, 2, 1),
        E { to: Some("dec"), ..up("up1", 4, 2, [3, 3], [2, 2], [1, 1], [1, 1], [0, 1]) },
        E { from: Some("down1"), to: Some("dec"), ..e("skip", K::Identity) },
        up("up2", 3, 1, [1, 3], [2, 1], [0, 2], [1, 2], [1, 0]),
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("transposed", &entries, map(2, 9, 7));
}

/// Interpolations (`nn.Upsample`, `F.interpolate`), as a segmentation
/// decoder or a feature pyramid resamples: bilinear up by a fraction and
/// with corners aligned, bicubic up and down (negative coefficients,
/// clamped edges), nearest by a fraction, nearest-exact, a `scale_factor`
/// that places outputs apart from `in / out`, and a bilinear resize of a
/// 1 x 1 map (ASPP's image pooling branch) added to a conv's output.
#[test]
fn interpolations() {
    let resize = |name, mode, out: [usize; 2], align, factor| e(name, K::Interpolate { mode, out, align, factor });
    let entries = vec![
        conv("c1", 3, 3, 2, 1),
        resize("bl", "bilinear", [9, 11], false, None),
        E { from: Some("c1"), ..resize("bl_ac", "bilinear", [7, 4], true, None) },
        E { from: Some("c1"), ..resize("bc_up", "bicubic", [8, 13], false, None) },
        E { from: Some("c1"), ..resize("bc_down", "bicubic", [2, 3], true, None) },
        E { from: Some("c1"), ..resize("nn", "nearest", [7, 5], false, None) },
        E { from: Some("c1"), ..resize("nx", "nearest-exact", [6, 10], false, None) },
        E { from: Some("c1"), ..resize("sf", "bilinear", [7, 7], false, Some([1.5, 1.75])) },
        E { from: Some("c1"), ..resize("sf_nn", "nearest", [7, 7], false, Some([1.5, 1.75])) },
        E { from: Some("bl"), ..conv("c2", 3, 3, 1, 1) },
        E { from: Some("c1"), ..gap("pooled") },
        E { from: Some("pooled"), to: Some("c2"), ..resize("broadcast", "bilinear", [9, 11], false, None) },
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("interpolations", &entries, map(2, 9, 7));
}

/// Pads as U-Nets and image-to-image generators use them: zeros (also
/// cropping, by negative counts) before a concatenation, and the
/// reflection, replication and circular pads a conv of such a
/// `padding_mode` reads, each on a different side.
#[test]
fn pads() {
    let pad = |name, pad, mode| e(name, K::Pad { pad, mode });
    let entries = vec![
        conv("c1", 3, 3, 2, 1),
        E { to: Some("cat"), ..pad("zeros", [0, 1, 2, 0], "constant") },
        E { from: Some("c1"), to: Some("cat"), offset: 3, ..pad("crop", [1, 0, -1, 3], "constant") },
        E { from: Some("cat"), ..pad("reflect", [2, 1, 1, 3], "reflect") },
        conv("c2", 2, 3, 1, 0),
        E { from: Some("c1"), ..pad("replicate", [0, 4, 3, 1], "replicate") },
        E { from: Some("c1"), ..pad("circular", [4, 2, 0, 1], "circular") },
        conv("c3", 2, 3, 2, 0),
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("pads", &entries, map(2, 9, 7));
}

/// TensorFlow's and Keras' `padding="same"`, whose odd cell of padding
/// goes after the input (`padding_after`): a stride-2 conv, an even kernel,
/// a dilated depthwise conv, a conv padded after only; max and average
/// pools padded so (Xception's), one counting its padding; and transposed
/// convs cropped so (Keras' `Conv2DTranspose`), one with torch's
/// `output_padding` besides.
#[test]
fn same_paddings() {
    let same = |name, cout, groups, k: [usize; 2], s: [usize; 2], p: [usize; 2], d: [usize; 2], after| E {
        pad_after: Some(after),
        ..e(name, K::Conv { cout, groups, k, s, p, d, bias: true, norm: true })
    };
    let pool = |name, op, k, s, p, include_pad, after| E {
        pad_after: Some(after),
        ..e(name, K::Pool { op, k, s, p, include_pad, ceil: false, out: [0, 0] })
    };
    let up = |name, k: [usize; 2], s: [usize; 2], p: [usize; 2], op, after| E {
        transposed: Some(op),
        ..same(name, 3, 1, k, s, p, [1, 1], after)
    };
    let entries = vec![
        same("s2", 4, 1, [3, 3], [2, 2], [0, 0], [1, 1], [1, 0]),
        same("even", 4, 1, [4, 2], [1, 1], [1, 0], [1, 1], [2, 1]),
        same("dw", 4, 4, [3, 3], [2, 1], [1, 2], [1, 2], [2, 2]),
        E { from: Some("s2"), ..same("after", 3, 1, [2, 3], [1, 2], [0, 0], [1, 1], [1, 2]) },
        E { from: Some("s2"), ..pool("max", "max", [3, 3], [2, 2], [0, 0], false, [1, 1]) },
        E { from: Some("s2"), ..pool("avg", "avg", [3, 2], [2, 2], [0, 1], false, [1, 0]) },
        E { from: Some("s2"), ..pool("avg_pad", "avg", [3, 3], [2, 2], [1, 0], true, [0, 1]) },
        E { from: Some("s2"), ..up("up", [3, 3], [2, 2], [0, 0], [0, 0], [1, 1]) },
        up("up_op", [3, 2], [2, 2], [1, 0], [1, 1], [0, 1]),
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("same paddings", &entries, map(2, 9, 7));
}

/// Views (`view`): ECA's channel attention reads the pooled channels
/// (`[C, 1, 1]`) as one row (`[1, 1, C]`) with a `Conv1d` across them; a
/// row read back as channels by a 1x1 conv; a map's channel range read as
/// one tall column by a `k x 1` conv.
#[test]
fn views() {
    let across = |name, cout, k: usize| E {
        rank3: true,
        ..e(name, K::Conv { cout, groups: 1, k: [1, k], s: [1, 1], p: [0, k / 2], d: [1, 1], bias: false, norm: false })
    };
    let entries = vec![
        conv("c1", 6, 3, 2, 1),
        gap("pool"),
        E { view: Some([1, 1, 6]), ..across("eca", 1, 3) },
        E { view: Some([6, 1, 1]), ..conv("back", 2, 1, 1, 0) },
        E {
            from: Some("c1"),
            from_ch: Some([1, 4]),
            view: Some([1, 60, 1]),
            ..e(
                "tall",
                K::Conv { cout: 2, groups: 1, k: [5, 1], s: [2, 1], p: [2, 0], d: [1, 1], bias: true, norm: true },
            )
        },
        E { from: Some("c1"), ..conv("c2", 3, 3, 1, 1) },
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("views", &entries, map(2, 9, 7));
    // A chain of weighted layers only, which the GPU measures in one
    // batch: the view changes no node's place in the buffers.
    let chain = vec![
        conv("c1", 2, 3, 2, 1),
        E {
            view: Some([1, 40, 1]),
            ..e(
                "tall",
                K::Conv { cout: 3, groups: 1, k: [3, 1], s: [2, 1], p: [1, 0], d: [1, 1], bias: true, norm: true },
            )
        },
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("view in a chain", &chain, map(2, 9, 7));
}

/// Pixel shuffles (`PixelShuffle`, `PixelUnshuffle`), as sub-pixel
/// upsampling (ESPCN, EDSR) and space-to-depth stems read their maps: a
/// conv reading a conv's output depth to space, one reading a channel
/// range of it as it is (r = 1), one reading the first back space to
/// depth.
#[test]
fn pixel_shuffles() {
    let entries = vec![
        conv("c1", 8, 3, 1, 1),
        E { shuffle: Some(2), ..conv("up", 3, 3, 1, 1) },
        E { from: Some("c1"), from_ch: Some([0, 4]), shuffle: Some(-1), ..conv("same", 2, 1, 1, 0) },
        E { from: Some("up"), shuffle: Some(-2), ..conv("down", 2, 1, 1, 0) },
        gap("gap"),
        e("fc", K::Dense { out: 2, bias: true, norm: false }),
    ];
    check_every_mode("pixel shuffles", &entries, map(2, 5, 4));
}

#[test]
fn ceil_mode_pools() {
    let pool = |name, op, k, s, p, include_pad| E {
        from: Some("c1"),
        ..e(name, K::Pool { op, k: [k, k], s: [s, s], p: [p, p], include_pad, ceil: true, out: [0, 0] })
    };
    let head = |name| E { to: Some("out"), ..e(name, K::Dense { out: 4, bias: true, norm: false }) };
    let entries = vec![
        conv("c1", 3, 3, 1, 1),
        pool("mp", "max", 3, 2, 0, false),
        head("h1"),
        pool("ap", "avg", 3, 2, 1, true),
        head("h2"),
        pool("ax", "avg", 2, 2, 1, false),
        head("h3"),
    ];
    for layout in [Layout::Torch, Layout::Keras] {
        check(&format!("ceil-mode pools {layout}"), &entries, map(2, 10, 9), layout, BnMode::Fold);
    }
}

#[test]
fn concatenation_read_by_channel_ranges() {
    for layout in [Layout::Torch, Layout::Keras] {
        check(&format!("densenet-like {layout}"), &densenet_like(), map(2, 7, 6), layout, BnMode::Fold);
        check(&format!("densenet-like {layout} bn=layer"), &densenet_like(), map(2, 7, 6), layout, BnMode::Layer);
    }
}

/// Two dense branches of one vector concatenated, then a residual add of
/// two dense layers into one set.
#[test]
fn dense_branches_concatenate_and_add() {
    let d = |name, out| e(name, K::Dense { out, bias: true, norm: false });
    let entries = vec![
        E { to: Some("cat"), ..d("left", 3) },
        E { from: Some("input"), to: Some("cat"), offset: 3, ..d("right", 4) },
        E { from: Some("cat"), ..d("h1", 5) },
        E { from: Some("cat"), to: Some("h1"), ..d("h1b", 5) },
        d("out", 2),
    ];
    check("dense branches", &entries, S { c: 6, h: 1, w: 1, flat: true }, Layout::Torch, BnMode::Fold);
}

/// Kernels larger than the CPU engine's decoding block (4096 values), with
/// runs (taps, or output channels in keras) that do not divide it.
#[test]
fn large_kernels_cross_decoding_blocks() {
    let big = |name, cout, k: [usize; 2]| {
        e(name, K::Conv { cout, groups: 1, k, s: [1, 2], p: [2, 1], d: [1, 1], bias: true, norm: true })
    };
    let entries =
        vec![big("wide", 20, [3, 3]), big("big", 23, [5, 3]), e("fc", K::Dense { out: 3, bias: false, norm: false })];
    for layout in [Layout::Torch, Layout::Keras] {
        check(&format!("large kernels {layout}"), &entries, map(3, 11, 9), layout, BnMode::Fold);
    }
}

/// Two convs, the second's kernel (128 x 171 x 5 x 5) above the CPU
/// engine's 512K weights: measured in blocks on several threads (K and Q
/// partial sums merged), BatchNorm folded.
fn parallel_convs() -> Vec<E> {
    vec![
        e("a", K::Conv { cout: 128, groups: 1, k: [3, 3], s: [1, 1], p: [1, 1], d: [1, 1], bias: true, norm: false }),
        e("big", K::Conv { cout: 171, groups: 1, k: [5, 5], s: [2, 1], p: [2, 1], d: [1, 1], bias: false, norm: true }),
    ]
}

#[test]
fn kernels_measured_in_parallel_blocks() {
    let entries = parallel_convs();
    for layout in [Layout::Torch, Layout::Keras] {
        check(&format!("parallel blocks {layout}"), &entries, map(3, 7, 6), layout, BnMode::Fold);
    }
}

/// Results do not depend on the thread count: the blocks and their merge
/// order are fixed by the sizes alone.
#[test]
fn results_do_not_depend_on_threads() {
    let mut entries = parallel_convs();
    entries.push(e("fc", K::Dense { out: 1500, bias: true, norm: false }));
    let Written(_dir, ck, net, ..) = written("threads", &entries, map(3, 7, 6), Layout::Torch, BnMode::Fold);
    let opts = AnalysisOptions { keep_values: true, bins: 9 };
    let one = format!("{:?}", CpuEngine::new(1).analyze(&net, &ck, &opts).unwrap());
    for threads in [2, 3, 8] {
        assert!(
            one == format!("{:?}", CpuEngine::new(threads).analyze(&net, &ck, &opts).unwrap()),
            "{threads} threads"
        );
    }
}

#[test]
fn misfits_are_errors_naming_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    let w = |name: &'static str, shape: &[usize]| T::f32(name, shape, values(shape.iter().product(), 1));
    write_st(
        &path,
        &[
            w("a.weight", &[4, 3, 3, 3]),
            w("b.weight", &[4, 4, 3, 3]),
            w("c.weight", &[6, 4, 1, 1]),
            w("fc.weight", &[2, 64]),
            w("bn.weight", &[5]),
            w("bn.running_mean", &[5]),
            w("bn.running_var", &[5]),
        ],
        &[],
    );
    let ck = Checkpoint::open(&path).unwrap();
    let head = "input = [3, 4, 4]\n[[layers]]\nweight = \"a.weight\"\npadding = 1\n";
    let cases = [
        ("[[layers]]\nweight = \"b.weight\"\nfrom = \"nowhere\"\n", "`nowhere`, which is no earlier entry"),
        ("[[layers]]\nweight = \"b.weight\"\nstride = 2\n[[layers]]\nidentity = true\nfrom = \"a\"\nto = \"b\"\n", "shapes do not add"),
        ("[[layers]]\nweight = \"b.weight\"\npadding = 1\n[[layers]]\nidentity = true\nfrom = \"input\"\nto = \"a\"\n", "after entry `b` read all of it"),
        ("[[layers]]\nweight = \"b.weight\"\npadding = 1\nto = \"cat\"\noffset = 2\n", "channel 0 of node set `cat` is written by no entry"),
        ("[[layers]]\nweight = \"b.weight\"\npadding = 1\nnorm = \"bn\"\n", "BatchNorm `bn`: tensor `bn.weight` has shape [5]"),
        ("[[layers]]\nweight = \"b.weight\"\nnorm = \"nobn\"\n", "no running statistics"),
        ("[[layers]]\nname = \"p\"\npool = \"max\"\nkernel = 7\n", "larger than its padded 4x4 input"),
        ("[[layers]]\nname = \"a\"\npool = \"max\"\nkernel = 2\n", "the name `a` is used twice"),
        ("[[layers]]\nweight = \"fc.weight\"\n[[layers]]\nweight = \"b.weight\"\n", "reads a feature map"),
        ("[[layers]]\nname = \"g\"\npool = \"global_avg\"\nceil_mode = true\n", "`ceil_mode` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\nceil_mode = true\n", "`ceil_mode` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\nper_pixel = true\n", "`per_pixel` needs a dense weight"),
        ("[[layers]]\nweight = \"fc.weight\"\nper_pixel = true\n", "takes 64 channels per pixel but its input has 4"),
        ("[[layers]]\nweight = \"fc.weight\"\nper_pixel = true\nstride = 2\n", "`stride` does not apply to a `per_pixel`"),
        ("[[layers]]\nname = \"p\"\npool = \"max\"\nkernel = 2\nscale = \"bn.weight\"\n", "`scale` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\nscale = \"bn.weight\"\n", "scale `bn.weight` has shape [5]; the layer has 4 channels"),
        ("[[layers]]\nweight = \"b.weight\"\nscale = \"b.weight\"\n", "scale `b.weight` has shape [4, 4, 3, 3]"),
        ("[[layers]]\nweight = \"b.weight\"\nscale = nan\n", "scale NaN is not a finite number"),
        ("[[layers]]\nweight = \"b.weight\"\nchannel_step = 2\n", "`offset` and `channel_step` need a `to`"),
        ("[[layers]]\nweight = \"b.weight\"\noutput_padding = 1\n", "`output_padding` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\npadding = 1000000000\n", "grid is beyond the limit of 1048576 a side"),
        ("[[layers]]\nname = \"p\"\npool = \"avg\"\nkernel = 18446744073709551615\npadding = 9223372036854775807\n", "larger than its padded 4x4 input"),
        ("[[layers]]\nweight = \"fc.weight\"\ntransposed = true\n", "`transposed` needs a conv weight"),
        ("[[layers]]\nweight = \"b.weight\"\ntransposed = true\nstride = 2\noutput_padding = 2\n", "no output grid"),
        ("[[layers]]\nweight = \"b.weight\"\nto = \"s\"\nchannel_step = 9223372036854775807\n", "write past any channel count"),
        ("[[layers]]\nweight = \"b.weight\"\nto = \"s\"\noffset = 18446744073709551615\n", "write past any channel count"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\n", "needs `output = [h, w]` or `scale_factor`"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"nearest\"\noutput = 8\nalign_corners = true\n", "`align_corners` does not apply"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bicubic\"\noutput = 8\nkernel = 2\n", "`kernel` does not apply"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\nscale_factor = 0.0\n", "scale_factor must be positive"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\nscale_factor = 0.1\n", "takes the 4x4 input to a 0x0 grid"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\nscale_factor = 1e300\n", "takes the 4x4 input to a"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\nscale_factor = 2.5\noutput = 9\n", "output 9x9 is not the 4x4 input times scale_factor (10x10)"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\noutput = 2000000\n", "grid is beyond the limit"),
        ("[[layers]]\nname = \"up\"\ninterpolate = \"bilinear\"\npool = \"max\"\nkernel = 2\n", "one entry, one layer"),
        ("[[layers]]\nweight = \"fc.weight\"\n[[layers]]\nname = \"up\"\ninterpolate = \"nearest\"\noutput = 2\n", "an interpolation reads a feature map"),
        ("[[layers]]\nweight = \"b.weight\"\nalign_corners = true\n", "`align_corners` does not apply"),
        ("[[layers]]\nname = \"p\"\npad = [1, 1, 1, 1]\npad_mode = \"reflect\"\n[[layers]]\nname = \"q\"\npad = [6, 0, 0, 0]\npad_mode = \"reflect\"\n", "each count must be 0 or more and at most 5 for the 6x6 input"),
        ("[[layers]]\nname = \"p\"\npad = [0, 0, -1, 0]\npad_mode = \"replicate\"\n", "each count must be 0 or more for the 4x4 input"),
        ("[[layers]]\nname = \"p\"\npad = [5, 0, 0, 0]\npad_mode = \"circular\"\n", "at most 4"),
        ("[[layers]]\nname = \"p\"\npad = [-2, -2, 0, 0]\n", "leaves the 4x4 input no grid"),
        ("[[layers]]\nname = \"p\"\npad = [9223372036854775807, 1, 0, 0]\n", "leaves the 4x4 input no grid"),
        ("[[layers]]\nname = \"p\"\npad = [0, 0, 0, 0]\nkernel = 2\n", "`kernel` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\npad_mode = \"reflect\"\n", "`pad_mode` does not apply"),
        ("[[layers]]\nweight = \"b.weight\"\nview = [4, 2, 4]\n", "view [4, 2, 4] of its 4x4x4 input: a view must keep the 64 nodes"),
        ("[[layers]]\nweight = \"b.weight\"\nview = [0, 0, 0]\n", "a view must keep the 64 nodes"),
        ("[[layers]]\nweight = \"b.weight\"\npixel_shuffle = 3\n", "pixel_shuffle = 3 of its 4x4x4 input: it needs a feature map of channels a multiple of r²"),
        ("[[layers]]\nweight = \"b.weight\"\npixel_unshuffle = 3\n", "it needs a feature map of a grid of multiples of r"),
        ("[[layers]]\nweight = \"b.weight\"\npixel_shuffle = 4294967296\n", "it needs a feature map"),
        ("[[layers]]\nweight = \"b.weight\"\npixel_shuffle = 0\n", "must be positive"),
        ("[[layers]]\nweight = \"b.weight\"\npixel_shuffle = 2\nview = [1, 8, 8]\n", "an entry reads one way"),
        ("[[layers]]\nweight = \"b.weight\"\nview = [4294967296, 4294967296, 1]\n", "a view must keep the 64 nodes"),
        ("[[layers]]\nname = \"p\"\npad = [1, 1, 1, 1]\nidentity = true\n", "one entry, one layer"),
        ("[[layers]]\nweight = \"b.weight\"\nto = \"s\"\nchannel_step = 2\n[[layers]]\nweight = \"c.weight\"\n",
         "reads channel 1 of `s` before any entry writes it"),
    ];
    for (tail, want) in cases {
        let text = format!("{head}{tail}");
        let err = Spec::parse(&text, std::path::Path::new("s.toml"))
            .and_then(|spec| Network::build(&ck, &GraphOptions { spec: Some(spec), ..Default::default() }))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{tail:?}: {err}");
        assert!(err.contains("line "), "{tail:?}: names no line: {err}");
    }
}

/// Every spec shipped in `examples/specs/` (torch_to_spec's output for
/// torchvision models, the Small CNN Zoo's by hand) parses, and the ceil-mode
/// pools of SqueezeNet and GoogLeNet are read as such.
#[test]
fn shipped_specs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs");
    let mut ceil = 0;
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let spec = Spec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ceil += spec.layers.iter().filter(|l| l.ceil_mode == Some(true)).count();
            seen += 1;
        }
    }
    assert!(seen >= 17, "{seen} specs");
    assert!(ceil >= 3, "{ceil} ceil-mode pools");
}
