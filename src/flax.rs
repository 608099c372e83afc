//! Flax checkpoints: the msgpack that `flax.serialization.to_bytes` writes
//! (also `flax.training.checkpoints.save_checkpoint` without Orbax, and
//! Hugging Face's `flax_model.msgpack`). The file is a tree of dicts whose
//! leaves are numpy arrays (msgpack extension 1: `(shape, dtype name,
//! bytes)`), numpy scalars (extension 3: `(dtype name, bytes)`) and plain
//! scalars. It is decoded as data by a small parser: declared lengths are
//! checked against the bytes left before anything is allocated, nesting is
//! bounded, and each array is a range of the file, read in place.
//!
//! A model's variables (`model.init`, or a `TrainState`) keep the weights
//! in the `params` collection and BatchNorm's running statistics in
//! `batch_stats`: both are read, under their module names without the
//! collection (`Conv_0/kernel`, `BatchNorm_0/mean`), and the other
//! collections (`opt_state`, `ema_params`, ...) are left out. A file
//! without a `params` entry (Hugging Face's) is the parameter tree itself.
//!
//! Flax NNX's state (`nnx.split(model)` or `nnx.state(model)`, saved as
//! its checkpointing guide saves it) has no collections: each variable's
//! array is its `value` (`conv1/kernel/value`), read as `conv1/kernel`;
//! the RNG streams' state (`rngs/...`) and an optimizer's (`opt_state/...`)
//! are left out, and a variable of one value (`step`) is a column.
//!
//! Orbax's checkpoint directories (what `orbax.checkpoint` and, by
//! default, `save_checkpoint` write) are read by [`crate::orbax`] into the
//! same tree.

use std::collections::BTreeMap;
use std::ops::Range;

use safetensors::tensor::TensorInfo;

use crate::torch::Place;

/// A Flax file's tensors (name, dtype, shape, where) and its scalars.
pub(crate) struct FlaxCheckpoint {
    pub(crate) tensors: Vec<(String, TensorInfo, Place)>,
    /// The bytes of arrays stored in chunks, each put back together.
    pub(crate) gathered: Vec<u8>,
    pub(crate) metadata: BTreeMap<String, String>,
}

/// How deep dicts may nest (a model's variables are a few levels deep).
const MAX_DEPTH: usize = 64;

/// Flax's extension types.
const EXT_NDARRAY: i8 = 1;
const EXT_NPSCALAR: i8 = 3;

/// The key of the map in which Flax stores an array in chunks (past 2^30
/// bytes).
const CHUNKED: &str = "__msgpack_chunked_array__";

/// True when the bytes start like Flax's msgpack: a dict, not empty (an
/// empty one, 0x80, is also how a pickle starts), and not like a
/// safetensors file, whose first byte is its header's length, then `{`.
pub(crate) fn is_msgpack(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x81..=0x8f | 0xde | 0xdf)) && bytes.get(8) != Some(&b'{')
}

/// A decoded msgpack value; strings, bytes and extension data as ranges of
/// the file.
enum Item {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Range<usize>),
    Bin(Range<usize>),
    Array(Vec<Item>),
    Map(Vec<(Item, Item)>),
    Ext(i8, Range<usize>),
}

/// Reads msgpack values from `b[at..end]`.
struct Decoder<'a> {
    b: &'a [u8],
    at: usize,
    end: usize,
}

impl Decoder<'_> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.end);
        let end =
            end.ok_or_else(|| format!("msgpack byte {}: {n} bytes declared, {} left", self.at, self.end - self.at))?;
        let r = self.at..end;
        self.at = end;
        Ok(r)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let r = self.take(n)?;
        Ok(self.b[r].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    /// A length of `n` bytes, as a count.
    fn len(&mut self, n: usize) -> Result<usize, String> {
        usize::try_from(self.uint(n)?).map_err(|_| format!("msgpack byte {}: a length past the address space", self.at))
    }

    /// `count` items of a container, each at least `min` bytes, checked
    /// against the bytes left before anything is allocated.
    fn check_count(&self, count: usize, min: usize) -> Result<(), String> {
        match count.checked_mul(min).is_some_and(|n| n <= self.end - self.at) {
            true => Ok(()),
            false => {
                Err(format!("msgpack byte {}: {count} items declared, {} bytes left", self.at, self.end - self.at))
            }
        }
    }

    fn item(&mut self, depth: usize) -> Result<Item, String> {
        if depth > MAX_DEPTH {
            return Err(format!("msgpack byte {}: nested deeper than {MAX_DEPTH}", self.at));
        }
        let at = self.at;
        let code = self.b[self.take(1)?.start];
        let signed = |v: u64, bits: u32| i128::from(v as i64) << (64 - bits) >> (64 - bits);
        Ok(match code {
            0x00..=0x7f => Item::Int(code.into()),
            0xe0..=0xff => Item::Int(i128::from(code as i8)),
            0x80..=0x8f => self.map(usize::from(code & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(code & 0x0f), depth)?,
            0xa0..=0xbf => Item::Str(self.take(usize::from(code & 0x1f))?),
            0xc0 => Item::Nil,
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (code - 0xc4))?;
                Item::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (code - 0xc7))?;
                let kind = self.b[self.take(1)?.start] as i8;
                Item::Ext(kind, self.take(n)?)
            }
            0xca => Item::Float(f32::from_bits(self.uint(4)? as u32).into()),
            0xcb => Item::Float(f64::from_bits(self.uint(8)?)),
            0xcc..=0xcf => Item::Int(self.uint(1 << (code - 0xcc))?.into()),
            0xd0..=0xd3 => {
                let bytes = 1usize << (code - 0xd0);
                let v = self.uint(bytes)?;
                Item::Int(signed(v, 8 * bytes as u32))
            }
            0xd4..=0xd8 => {
                let kind = self.b[self.take(1)?.start] as i8;
                Item::Ext(kind, self.take(1 << (code - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (code - 0xd9))?;
                Item::Str(self.take(n)?)
            }
            0xdc | 0xdd => {
                let n = self.len(if code == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(if code == 0xde { 2 } else { 4 })?;
                self.map(n, depth)?
            }
            _ => return Err(format!("msgpack byte {at}: 0x{code:02x} is not a msgpack type")),
        })
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Item, String> {
        self.check_count(n, 1)?;
        (0..n).map(|_| self.item(depth + 1)).collect::<Result<_, _>>().map(Item::Array)
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Item, String> {
        self.check_count(n, 2)?;
        (0..n).map(|_| Ok((self.item(depth + 1)?, self.item(depth + 1)?))).collect::<Result<_, String>>().map(Item::Map)
    }
}

/// One value of the file, decoded from its whole range.
fn decode(b: &[u8], range: Range<usize>) -> Result<Item, String> {
    let mut d = Decoder { b, at: range.start, end: range.end };
    let item = d.item(0)?;
    match d.at == d.end {
        true => Ok(item),
        false => Err(format!("msgpack byte {}: {} bytes after the value", d.at, d.end - d.at)),
    }
}

/// A leaf of the tree.
pub(crate) enum Leaf {
    /// An array: its dtype and shape, and where its bytes are.
    Tensor(TensorInfo, Range<usize>),
    /// An array Flax stored in chunks (past 2^30 bytes): its dtype and
    /// shape, and where each chunk's bytes are, in order.
    Chunked(TensorInfo, Vec<Range<usize>>),
    /// A plain scalar, as text.
    Scalar(String),
}

fn text(b: &[u8], r: &Range<usize>) -> Result<String, String> {
    std::str::from_utf8(&b[r.clone()])
        .map(String::from)
        .map_err(|_| format!("msgpack byte {}: a string that is not UTF-8", r.start))
}

/// An array `(shape, dtype name, bytes)` of extension 1: its dtype and
/// shape, and where its bytes are.
fn ndarray(b: &[u8], payload: Range<usize>, name: &str) -> Result<(TensorInfo, Range<usize>), String> {
    let what = |why: &str| format!("array `{name}`: {why}");
    let Item::Array(parts) = decode(b, payload)? else { return Err(what("not (shape, dtype, bytes)")) };
    let [Item::Array(dims), Item::Str(dt), Item::Bin(data)] = &parts[..] else {
        return Err(what("not (shape, dtype, bytes)"));
    };
    let shape: Vec<usize> = dims
        .iter()
        .map(|d| match d {
            Item::Int(i) => usize::try_from(*i).map_err(|_| what(&format!("a dimension of {i}"))),
            _ => Err(what("a dimension that is not an integer")),
        })
        .collect::<Result<_, _>>()?;
    let dt = text(b, dt)?;
    let dtype = crate::pickle::dtype_named(&dt).ok_or_else(|| what(&format!("dtype `{dt}` is not read")))?;
    let size = shape.iter().try_fold(crate::pickle::dtype_size(dtype), |a, &d| a.checked_mul(d));
    if size != Some(data.len()) {
        return Err(what(&format!("shape {shape:?} of {dt} does not fit its {} bytes", data.len())));
    }
    Ok((TensorInfo { dtype, shape, data_offsets: (0, 0) }, data.clone()))
}

/// An array Flax stored in chunks: the map `{CHUNKED: true, "shape":
/// {"0": d0, ...}, "chunks": {"0": <1-d array>, ...}}` that
/// `flax.serialization` writes for an array past its `MAX_CHUNK_SIZE`,
/// each chunk a run of the flattened array. The chunks must share one
/// dtype and together hold exactly the shape's elements.
fn chunked(b: &[u8], entries: &[(Item, Item)], name: &str) -> Result<Leaf, String> {
    let what = |why: &str| format!("array `{name}` stored in chunks: {why}");
    let entry = |key: &str| {
        entries.iter().find(|(k, _)| matches!(k, Item::Str(r) if &b[r.clone()] == key.as_bytes())).map(|(_, v)| v)
    };
    // `{"0": x0, "1": x1, ...}`, in that order (as Flax writes a tuple).
    fn numbered<'a>(b: &[u8], item: Option<&'a Item>, of: &str) -> Result<Vec<&'a Item>, String> {
        let Some(Item::Map(m)) = item else { return Err(format!("no `{of}` map")) };
        m.iter()
            .enumerate()
            .map(|(i, (k, v))| match k {
                Item::Str(r) if b[r.clone()] == *i.to_string().as_bytes() => Ok(v),
                _ => Err(format!("`{of}` entry {i} is not numbered {i}")),
            })
            .collect()
    }
    let shape = numbered(b, entry("shape"), "shape")
        .map_err(|e| what(&e))?
        .into_iter()
        .map(|d| match d {
            Item::Int(i) => usize::try_from(*i).map_err(|_| what(&format!("a dimension of {i}"))),
            _ => Err(what("a dimension that is not an integer")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut dtype = None;
    let mut ranges = Vec::new();
    let mut bytes = 0usize;
    for (i, chunk) in numbered(b, entry("chunks"), "chunks").map_err(|e| what(&e))?.into_iter().enumerate() {
        let Item::Ext(EXT_NDARRAY, r) = chunk else { return Err(what(&format!("chunk {i} is not an array"))) };
        let (info, range) = ndarray(b, r.clone(), &format!("{name}/chunks/{i}"))?;
        if info.shape.len() != 1 || dtype.is_some_and(|d| d != info.dtype) {
            return Err(what(&format!("chunk {i} is not a run of the flattened array ({:?})", info.shape)));
        }
        dtype = Some(info.dtype);
        bytes = bytes.checked_add(range.len()).ok_or_else(|| what("sizes overflow"))?;
        ranges.push(range);
    }
    let dtype = dtype.ok_or_else(|| what("no chunks"))?;
    let size = shape.iter().try_fold(crate::pickle::dtype_size(dtype), |a, &d| a.checked_mul(d));
    if size != Some(bytes) {
        return Err(what(&format!("shape {shape:?} does not fit its chunks' {bytes} bytes")));
    }
    Ok(Leaf::Chunked(TensorInfo { dtype, shape, data_offsets: (0, 0) }, ranges))
}

/// A numpy scalar `(dtype name, bytes)` of extension 3, as text.
fn npscalar(b: &[u8], payload: Range<usize>) -> Option<String> {
    let Ok(Item::Array(parts)) = decode(b, payload) else { return None };
    let [Item::Str(dt), Item::Bin(data)] = &parts[..] else { return None };
    crate::pickle::scalar_text(crate::pickle::dtype_named(&text(b, dt).ok()?)?, &b[data.clone()])
}

/// The tree's leaves by `/`-joined names, in file order.
fn leaves(b: &[u8], item: &Item, name: &str, out: &mut Vec<(String, Leaf)>) -> Result<(), String> {
    let join = |key: &str| if name.is_empty() { key.to_string() } else { format!("{name}/{key}") };
    match item {
        Item::Map(entries)
            if entries.iter().any(|(k, _)| matches!(k, Item::Str(r) if &b[r.clone()] == CHUNKED.as_bytes())) =>
        {
            out.push((name.to_string(), chunked(b, entries, name)?));
        }
        Item::Map(entries) => {
            for (k, v) in entries {
                let key = match k {
                    Item::Str(r) => text(b, r)?,
                    Item::Int(i) => i.to_string(),
                    _ => return Err(format!("a key of `{name}` that is not a string")),
                };
                leaves(b, v, &join(&key), out)?;
            }
        }
        Item::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(b, v, &join(&i.to_string()), out)?;
            }
        }
        Item::Ext(EXT_NDARRAY, r) => {
            let (info, range) = ndarray(b, r.clone(), name)?;
            out.push((name.to_string(), Leaf::Tensor(info, range)));
        }
        Item::Ext(EXT_NPSCALAR, r) => out.extend(npscalar(b, r.clone()).map(|v| (name.to_string(), Leaf::Scalar(v)))),
        Item::Int(i) => out.push((name.to_string(), Leaf::Scalar(i.to_string()))),
        Item::Float(f) => out.push((name.to_string(), Leaf::Scalar(f.to_string()))),
        Item::Bool(v) => out.push((name.to_string(), Leaf::Scalar(v.to_string()))),
        Item::Str(r) => out.push((name.to_string(), Leaf::Scalar(text(b, r)?))),
        Item::Nil | Item::Bin(_) | Item::Ext(..) => {}
    }
    Ok(())
}

/// Reads a Flax msgpack file: the model's `params` and `batch_stats` (or,
/// with `key`, the tree under it), and the scalars outside them.
pub(crate) fn read(b: &[u8], key: Option<&str>) -> Result<FlaxCheckpoint, String> {
    let mut all = Vec::new();
    leaves(b, &decode(b, 0..b.len())?, "", &mut all)?;
    model(b, all, key)
}

/// A Flax tree's leaves (`/`-joined names, arrays as ranges of `b`) as a
/// checkpoint: the model's `params` and `batch_stats` (or, with `key`, the
/// tree under it), the scalars outside them as metadata. Shared by the
/// msgpack files and Orbax's directories.
pub(crate) fn model(b: &[u8], all: Vec<(String, Leaf)>, key: Option<&str>) -> Result<FlaxCheckpoint, String> {
    // Where the model's collections are: the prefix before the first
    // `params/` (at the top, or under a wrapper's entry), or `key`.
    let root = match key {
        Some(k) => Some(k.replace('.', "/")),
        None => all.iter().find_map(|(n, leaf)| {
            let (Leaf::Tensor(..) | Leaf::Chunked(..)) = leaf else { return None };
            let parts: Vec<&str> = n.split('/').collect();
            let i = parts.iter().take(3).position(|&p| p == "params").filter(|&i| i + 1 < parts.len())?;
            Some(parts[..i].join("/"))
        }),
    };
    let under = |r: &str, n: &str| -> Option<String> {
        if r.is_empty() {
            return Some(n.to_string());
        }
        n.strip_prefix(r)?.strip_prefix('/').map(String::from)
    };
    // Flax NNX's state (`nnx.split(model)`, `nnx.state(model)`, as its
    // checkpointing guide saves it): no collections, each variable's array
    // its `value`. Its RNG streams' state and an optimizer's are not the
    // model's.
    let is_array = |leaf: &Leaf| matches!(leaf, Leaf::Tensor(..) | Leaf::Chunked(..));
    let nnx = root.is_none()
        && key.is_none()
        && all.iter().any(|(_, leaf)| is_array(leaf))
        && all.iter().filter(|(_, leaf)| is_array(leaf)).all(|(n, _)| n == "value" || n.ends_with("/value"));
    let nnx_name = |n: &str| -> Option<String> {
        let name = n.strip_suffix("/value").unwrap_or(n);
        (!name.split('/').any(|part| matches!(part, "rngs" | "opt_state"))).then(|| name.to_string())
    };
    let model = |n: &str| -> Option<String> {
        match (&root, key) {
            (Some(r), Some(_)) => under(r, n),
            (Some(r), None) => {
                let rest = under(r, n)?;
                let (collection, name) = rest.split_once('/')?;
                matches!(collection, "params" | "batch_stats").then(|| name.to_string())
            }
            (None, _) => Some(n.to_string()),
        }
    };
    // The top-level entries holding arrays, for the error of a `key` that
    // holds none.
    let tops = key.map(|_| {
        let mut tops: Vec<&str> =
            all.iter().filter(|(_, leaf)| is_array(leaf)).map(|(n, _)| n.split('/').next().unwrap_or(n)).collect();
        tops.dedup();
        tops.join(", ")
    });
    let mut out = FlaxCheckpoint { tensors: Vec::new(), gathered: Vec::new(), metadata: BTreeMap::new() };
    let mut names = std::collections::HashSet::new();
    for (n, leaf) in all {
        // An NNX variable of one value (a step, a count) is a column; RNG
        // and optimizer state is nothing.
        let (n, name) = if nnx {
            match (nnx_name(&n), &leaf) {
                (None, _) => continue,
                (Some(short), Leaf::Tensor(info, _)) if info.shape.is_empty() => (short, None),
                (short, _) => (n, short),
            }
        } else {
            let name = model(&n);
            (n, name)
        };
        if let (Leaf::Tensor(..) | Leaf::Chunked(..), Some(name)) = (&leaf, &name) {
            if !names.insert(name.clone()) {
                return Err(format!("`{name}` is both a parameter and a batch statistic"));
            }
        }
        match (leaf, name) {
            (Leaf::Tensor(info, r), Some(name)) => out.tensors.push((name, info, Place::Archive(r.start, r.end))),
            // Put back together: the one copy such an array costs.
            (Leaf::Chunked(info, chunks), Some(name)) => {
                let start = out.gathered.len();
                chunks.into_iter().for_each(|r| out.gathered.extend_from_slice(&b[r]));
                out.tensors.push((name, info, Place::Gathered(start, out.gathered.len())));
            }
            // The step of a TrainState, an epoch, a metric: one value
            // outside the model.
            (Leaf::Tensor(info, r), None) if info.shape.iter().product::<usize>() == 1 && info.shape.len() <= 1 => {
                if let Some(v) = crate::pickle::scalar_text(info.dtype, &b[r]) {
                    out.metadata.insert(n, v);
                }
            }
            (Leaf::Scalar(v), None) => {
                out.metadata.insert(n, v);
            }
            _ => {}
        }
    }
    if out.tensors.is_empty() {
        return Err(match (key, tops) {
            (Some(k), Some(tops)) => format!("--key {k}: no arrays under `{k}` (entries holding arrays: {tops})"),
            _ => "no arrays in the file".to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::Dtype;

    use super::*;

    /// msgpack of `{"params": {"Dense_0": {"kernel": <f32 [2, 1]>}},
    /// "step": 3}` as Flax writes it.
    fn file(shape: &[u8], dtype: &str, data: &[u8]) -> Vec<u8> {
        let mut payload = vec![0x93, 0x90 | shape.len() as u8];
        payload.extend(shape);
        payload.push(0xa0 | dtype.len() as u8);
        payload.extend(dtype.as_bytes());
        payload.extend([0xc4, data.len() as u8]);
        payload.extend(data);
        let mut f = vec![0x82, 0xa6];
        f.extend(b"params");
        f.extend([0x81, 0xa7]);
        f.extend(b"Dense_0");
        f.extend([0x81, 0xa6]);
        f.extend(b"kernel");
        f.extend([0xc7, payload.len() as u8, 1]);
        f.extend(payload);
        f.extend([0xa4]);
        f.extend(b"step");
        f.push(3);
        f
    }

    #[test]
    fn params_are_read_in_place_and_scalars_are_metadata() {
        let data: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let f = file(&[2, 1], "float32", &data);
        assert!(is_msgpack(&f));
        let ck = read(&f, None).unwrap();
        let [(name, info, Place::Archive(s, e))] = &ck.tensors[..] else { panic!("one tensor in place") };
        assert_eq!((name.as_str(), info.dtype, &info.shape[..]), ("Dense_0/kernel", Dtype::F32, &[2, 1][..]));
        assert_eq!(&f[*s..*e], &data[..]);
        assert_eq!(ck.metadata.get("step").map(String::as_str), Some("3"));
        // With a key, the tree under it, prefix and all.
        assert_eq!(read(&f, Some("params")).unwrap().tensors[0].0, "Dense_0/kernel");
        assert_eq!(
            read(&f, Some("ema")).err().unwrap(),
            "--key ema: no arrays under `ema` (entries holding arrays: params)"
        );
    }

    #[test]
    fn misfits_are_errors_naming_the_array() {
        let data = [0u8; 8];
        let e = |f: Vec<u8>| read(&f, None).err().unwrap();
        assert!(e(file(&[3, 1], "float32", &data)).contains("array `params/Dense_0/kernel`: shape [3, 1] of float32"));
        assert!(e(file(&[2, 1], "complex128", &data)).contains("dtype `complex128` is not read"));
        // Lengths past the end, before anything is allocated.
        let mut f = file(&[2, 1], "float32", &data);
        f.truncate(f.len() - 3);
        assert!(e(f).contains("bytes declared"));
        let mut f = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
        f.extend([0; 16]);
        assert!(e(f).contains("4294967295 items declared, 16 bytes left"));
        // Nesting is bounded.
        let mut f = Vec::new();
        for _ in 0..100 {
            f.extend([0x81, 0xa1, b'a']);
        }
        f.push(0xc0);
        assert!(e(f).contains("nested deeper than 64"));
        assert!(e(vec![0x81, 0xa1, b'a', 0xc0]).contains("no arrays"));
        // A pickle's first byte is an empty msgpack dict's: not taken for one.
        assert!(!is_msgpack(b"\x80\x02}q\x00.") && is_msgpack(&[0x81, 0xa1, b'a', 0xc0]));
        assert!(e(vec![0x81, 0xc1, 0xc0]).contains("0xc1 is not a msgpack type"));
    }
}
