//! TensorFlow checkpoints (the tensor bundle that `tf.train.Checkpoint`,
//! Keras 2's `save_weights` in TensorFlow's format and `ModelCheckpoint`
//! with `save_weights_only=True` write): `PREFIX.index`, a table of
//! LevelDB's format (uncompressed, as TensorFlow writes it) whose blocks'
//! CRC-32Cs are checked, mapping each tensor's key to a `BundleEntryProto`
//! (dtype, shape, data file, offset, size); the tensors are read in place
//! from `PREFIX.data-NNNNN-of-MMMMM`. Read as data by a bounded parser:
//! every varint, length and offset checked before use.
//!
//! Keys name each variable by its object path (`layer_with_weights-0/kernel
//! /.ATTRIBUTES/VARIABLE_VALUE`, read as `layer_with_weights-0/kernel`, the
//! keras layout's names); the optimizer's state (`optimizer/...`, slots
//! under `.OPTIMIZER_SLOT`), a SavedModel's metrics, the object graph and
//! other strings are not weights and are left out; top-level scalars
//! (`save_counter`, a tracked `step` or `epoch`) become metadata columns.
//! The object graph's place is kept for a SavedModel's Keras names
//! ([`crate::saved_model`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;

use crate::cursor::{crc32c, fields, Field, Reader};

/// The table format's magic number, at the end of its footer.
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// The footer: two block handles (varints, padded to 40 bytes) and the magic.
const FOOTER: usize = 48;
/// The suffix of an object-based checkpoint's variable keys.
const VARIABLE: &str = "/.ATTRIBUTES/VARIABLE_VALUE";
/// A table's `(key, value)` entries.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// The key of an object-based checkpoint's object graph (a
/// `TrackableObjectGraph`, stored as a string tensor).
const OBJECT_GRAPH: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
/// Bounds on what an index may declare.
const MAX_ENTRIES: usize = 1 << 20;
const MAX_KEY: usize = 1 << 16;
const MAX_SHARDS: u64 = 1 << 16;
const MAX_RANK: usize = 32;

/// True when `bytes` end with a table's footer (a `.index` file).
pub(crate) fn is_index(bytes: &[u8]) -> bool {
    bytes.len() >= FOOTER && bytes[bytes.len() - 8..] == TABLE_MAGIC.to_le_bytes()
}

/// The index of the TensorFlow checkpoint named by `prefix` (`cp.ckpt` for
/// `cp.ckpt.index`), as TensorFlow's own functions name checkpoints, when
/// that file exists.
pub(crate) fn index_of_prefix(prefix: &Path) -> Option<PathBuf> {
    let mut index = prefix.as_os_str().to_owned();
    index.push(".index");
    Some(PathBuf::from(index)).filter(|i| i.is_file())
}

/// The prefix of a data file's name (`cp.ckpt` of
/// `cp.ckpt.data-00000-of-00001`).
pub(crate) fn data_prefix(name: &str) -> Option<&str> {
    let (prefix, shard) = name.rsplit_once(".data-")?;
    let (a, b) = shard.split_once("-of-")?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    (digits(a) && digits(b)).then_some(prefix)
}

/// True when the regular file at `path` ends with a table's footer magic
/// (its last 8 bytes, read alone).
pub(crate) fn has_footer(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut magic = [0u8; 8];
    let len = f.metadata().map_or(0, |m| m.len());
    len >= FOOTER as u64
        && f.seek(SeekFrom::Start(len - 8)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && magic == TABLE_MAGIC.to_le_bytes()
}

/// One tensor of the bundle: its name as read, dtype, shape, and where its
/// bytes are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BundleTensor {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    /// The data file it is in.
    pub(crate) shard: usize,
    /// Its bytes in that file.
    pub(crate) range: (usize, usize),
}

/// What an index holds: the data files' paths, the tensors read as
/// weights, and the scalars that become columns (read from the data once
/// the files are open).
#[derive(Debug)]
pub(crate) struct Bundle {
    pub(crate) data_files: Vec<PathBuf>,
    pub(crate) tensors: Vec<BundleTensor>,
    /// Top-level scalars: name and the tensor holding the value.
    pub(crate) scalars: Vec<BundleTensor>,
    /// Where the object graph's string tensor is: its data file and bytes.
    pub(crate) object_graph: Option<(usize, (usize, usize))>,
}

/// The data file `shard` of `count` beside index `index` (`PREFIX.index`).
fn data_file(index: &Path, shard: u64, count: u64) -> PathBuf {
    let prefix = index.to_string_lossy();
    let prefix = prefix.strip_suffix(".index").unwrap_or(&prefix);
    PathBuf::from(format!("{prefix}.data-{shard:05}-of-{count:05}"))
}

/// The bundle index at `path` (its bytes `b`).
pub(crate) fn read_index(path: &Path, b: &[u8]) -> Result<Bundle, String> {
    let mut shards = None;
    let mut out = Bundle { data_files: Vec::new(), tensors: Vec::new(), scalars: Vec::new(), object_graph: None };
    for (key, value) in table_entries(b)? {
        if key.is_empty() {
            let (count, big_endian) = header(&value)?;
            if big_endian {
                return Err("a big-endian bundle: not read".into());
            }
            shards = Some(count);
            continue;
        }
        let key = String::from_utf8(key).map_err(|_| "a key that is not UTF-8".to_string())?;
        if key == OBJECT_GRAPH {
            let Place { code, shard, range, .. } = place(&key, &value)?;
            if code == STRING {
                out.object_graph = Some((shard, range));
            }
            continue;
        }
        let Some(name) = weight_name(&key) else { continue };
        let Some(t) = entry(&key, name, &value)? else { continue };
        // A top-level scalar (`save_counter`, a tracked `step`) is a column.
        if t.shape.is_empty() && !name.contains('/') {
            out.scalars.push(t);
        } else {
            out.tensors.push(t);
        }
    }
    let count = shards.ok_or("no bundle header (the table's empty key)")?;
    if let Some(t) = out.tensors.iter().chain(&out.scalars).find(|t| t.shard as u64 >= count) {
        return Err(format!("tensor `{}` is in data file {} of {count}", t.name, t.shard));
    }
    if out.object_graph.is_some_and(|(shard, _)| shard as u64 >= count) {
        return Err(format!("the object graph is in a data file past the {count}"));
    }
    out.data_files = (0..count).map(|i| data_file(path, i, count)).collect();
    Ok(out)
}

/// The name a key's variable is read by, or None for what is not a
/// weight: the optimizer's state, a SavedModel's metrics
/// (`keras_api/metrics/...`), the object graph, an object's attributes
/// other than its value.
pub(crate) fn weight_name(key: &str) -> Option<&str> {
    if key.contains("/.OPTIMIZER_SLOT/")
        || key.starts_with("optimizer/")
        || key.starts_with("keras_api/")
        || key.starts_with('_')
    {
        return None;
    }
    match key.strip_suffix(VARIABLE) {
        Some(name) => Some(name),
        // Other attributes of an object (its config as JSON, ...).
        None if key.contains("/.ATTRIBUTES/") => None,
        // A name-based checkpoint (TF1's Saver): the variable's name.
        None => Some(key),
    }
}

/// The bundle header's shard count and whether it is big-endian.
fn header(value: &[u8]) -> Result<(u64, bool), String> {
    let (mut count, mut big) = (1, false);
    for field in fields(value, "bundle header")? {
        match field {
            (1, Field::Varint(v)) => count = v,
            (2, Field::Varint(v)) => big = v == 1,
            _ => {}
        }
    }
    if count == 0 || count > MAX_SHARDS {
        return Err(format!("a bundle of {count} data files"));
    }
    Ok((count, big))
}

/// TensorFlow's code for a string (`DT_STRING`).
const STRING: u64 = 7;

/// What a `BundleEntryProto` says: dtype code, shape, data file and bytes.
struct Place {
    code: u64,
    shape: Vec<usize>,
    shard: usize,
    range: (usize, usize),
}

/// The `BundleEntryProto` of `key`: where its bytes are, the range checked
/// for overflow (not yet against the data file).
fn place(key: &str, value: &[u8]) -> Result<Place, String> {
    let bad = |what: String| format!("tensor `{key}`: {what}");
    let (mut code, mut shape, mut shard, mut offset, mut size) = (0, None, 0, 0, 0);
    for field in fields(value, "bundle entry").map_err(bad)? {
        match field {
            (1, Field::Varint(v)) => code = v,
            (2, Field::Bytes(s)) => shape = Some(tensor_shape(s).map_err(bad)?),
            (3, Field::Varint(v)) => shard = v,
            (4, Field::Varint(v)) => offset = v,
            (5, Field::Varint(v)) => size = v,
            (7, Field::Bytes(_)) => return Err(bad("a partitioned variable (saved in slices): not read".into())),
            _ => {}
        }
    }
    let start = usize::try_from(offset).ok();
    let end = start.zip(usize::try_from(size).ok()).and_then(|(s, n)| s.checked_add(n));
    let (Some(start), Some(end)) = (start, end) else { return Err(bad("offset or size overflows".into())) };
    let shard = usize::try_from(shard).map_err(|_| bad(format!("data file {shard}")))?;
    Ok(Place { code, shape: shape.unwrap_or_default(), shard, range: (start, end) })
}

/// A `BundleEntryProto` read as the tensor named `name` (None for a
/// string, which is no weight).
fn entry(key: &str, name: &str, value: &[u8]) -> Result<Option<BundleTensor>, String> {
    let bad = |what: String| format!("tensor `{key}`: {what}");
    let Place { code, shape, shard, range } = place(key, value)?;
    let dtype = match code {
        1 => Dtype::F32,
        2 => Dtype::F64,
        3 => Dtype::I32,
        4 => Dtype::U8,
        5 => Dtype::I16,
        6 => Dtype::I8,
        STRING => return Ok(None),
        9 => Dtype::I64,
        10 => Dtype::BOOL,
        14 => Dtype::BF16,
        17 => Dtype::U16,
        19 => Dtype::F16,
        22 => Dtype::U32,
        23 => Dtype::U64,
        c => return Err(bad(format!("TensorFlow dtype {c} (types.proto), which is not read"))),
    };
    let bytes = shape.iter().try_fold(dtype.bitsize() / 8, |a, &d| a.checked_mul(d));
    if bytes != Some(range.1 - range.0) {
        let needs = bytes.map_or("more bytes than a usize holds".into(), |n| format!("{n} bytes"));
        return Err(bad(format!("shape {shape:?} of {dtype} needs {needs}, the entry says {}", range.1 - range.0)));
    }
    Ok(Some(BundleTensor { name: name.to_string(), dtype, shape, shard, range }))
}

/// A CRC-32C as LevelDB and TensorFlow store it, unmasked.
fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(0xa282_ead8).rotate_left(15)
}

/// The value of a scalar string tensor in a data file (`bytes`, its
/// range): its length as a varint, the length's CRC-32C (masked, over the
/// length as 4 little-endian bytes, as TensorFlow writes it), the string.
pub(crate) fn string_value(bytes: &[u8]) -> Result<&[u8], String> {
    let mut r = Reader::new(bytes, "string tensor");
    let n = r.length(bytes.len())?;
    let masked = u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes"));
    let crc = unmask(masked);
    let len = u32::try_from(n).map_err(|_| format!("a string of {n} bytes"))?;
    if crc32c(&len.to_le_bytes()) != crc {
        return Err("a string tensor whose length's CRC-32C does not match (a damaged file)".into());
    }
    r.bytes(n)
}

/// A `TensorShapeProto`'s dimensions.
fn tensor_shape(b: &[u8]) -> Result<Vec<usize>, String> {
    let mut dims = Vec::new();
    for field in fields(b, "tensor shape")? {
        match field {
            (2, Field::Bytes(dim)) => {
                let mut size = 0;
                for f in fields(dim, "tensor shape")? {
                    if let (1, Field::Varint(v)) = f {
                        size = v;
                    }
                }
                let size = usize::try_from(size).map_err(|_| format!("a dimension of {} (unknown?)", size as i64))?;
                dims.push(size);
                if dims.len() > MAX_RANK {
                    return Err(format!("a shape of more than {MAX_RANK} dimensions"));
                }
            }
            (3, Field::Varint(1)) => return Err("a shape of unknown rank".into()),
            _ => {}
        }
    }
    Ok(dims)
}

/// A block handle: offset and size of a block of the table.
fn handle(r: &mut Reader<'_>) -> Result<(usize, usize), String> {
    let (offset, size) = (r.varint()?, r.varint()?);
    match (usize::try_from(offset), usize::try_from(size)) {
        (Ok(o), Ok(s)) => Ok((o, s)),
        _ => Err(format!("a block at {offset} of {size} bytes")),
    }
}

/// The contents of the block at `(offset, size)`: inside the file, stored
/// uncompressed, its CRC-32C (masked, over the contents and the type
/// byte) as recorded.
fn block(b: &[u8], (offset, size): (usize, usize)) -> Result<&[u8], String> {
    let end = offset.checked_add(size).and_then(|e| e.checked_add(5)).filter(|&e| e <= b.len() - FOOTER);
    let end = end.ok_or_else(|| format!("a block at {offset} of {size} bytes lies past the table's end"))?;
    let (contents, trailer) = (&b[offset..offset + size], &b[end - 5..end]);
    if trailer[0] != 0 {
        return Err(format!("a block compressed with method {} (TensorFlow writes none): not read", trailer[0]));
    }
    let masked = u32::from_le_bytes(trailer[1..5].try_into().expect("4 bytes"));
    let crc = unmask(masked);
    if crc32c(&b[offset..end - 4]) != crc {
        return Err(format!("the block at {offset} has a CRC-32C that does not match (a damaged file)"));
    }
    Ok(contents)
}

/// The `(key, value)` entries of a block: keys stored as the bytes they
/// share with the previous key and the rest, then the restart array.
fn block_entries(contents: &[u8], out: &mut Entries) -> Result<(), String> {
    let n = contents.len();
    let restarts = n
        .checked_sub(4)
        .map(|at| u32::from_le_bytes(contents[at..].try_into().expect("4 bytes")) as usize)
        .ok_or("a block shorter than its restart count")?;
    let data_end = restarts
        .checked_mul(4)
        .and_then(|r| n.checked_sub(4 + r))
        .ok_or_else(|| format!("a block of {n} bytes with {restarts} restarts"))?;
    let mut r = Reader::new(&contents[..data_end], "table block");
    let mut key: Vec<u8> = Vec::new();
    while !r.done() {
        let shared = r.length(key.len())?;
        let rest = r.length(MAX_KEY)?;
        let value_len = r.length(data_end)?;
        key.truncate(shared);
        key.extend_from_slice(r.bytes(rest)?);
        out.push((key.clone(), r.bytes(value_len)?.to_vec()));
        if out.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
    }
    Ok(())
}

/// Every entry of the table, in key order: the index block's handles,
/// each data block's entries.
fn table_entries(b: &[u8]) -> Result<Entries, String> {
    if !is_index(b) {
        return Err("no table footer (magic number) at the end: not a TensorFlow checkpoint index".into());
    }
    let mut footer = Reader::new(&b[b.len() - FOOTER..b.len() - 8], "table footer");
    let (_metaindex, index) = (handle(&mut footer)?, handle(&mut footer)?);
    let mut handles = Vec::new();
    block_entries(block(b, index)?, &mut handles)?;
    let mut out = Vec::new();
    for (_, h) in handles {
        let mut r = Reader::new(&h, "block handle");
        block_entries(block(b, handle(&mut r)?)?, &mut out)?;
    }
    Ok(out)
}

/// A scalar's value as a column's text.
pub(crate) fn scalar_text(t: &BundleTensor, bytes: &[u8]) -> Option<String> {
    let b = bytes.get(t.range.0..t.range.1)?;
    Some(match t.dtype {
        Dtype::I64 => i64::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::I32 => i32::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::F32 => f32::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::F64 => f64::from_le_bytes(b.try_into().ok()?).to_string(),
        _ => return None,
    })
}

/// The metadata of a bundle's scalars, given its data files' bytes.
pub(crate) fn metadata(bundle: &Bundle, files: &[&[u8]]) -> BTreeMap<String, String> {
    bundle.scalars.iter().filter_map(|t| Some((t.name.clone(), scalar_text(t, files.get(t.shard)?)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_weights_and_leave_out_optimizer_state() {
        assert_eq!(
            weight_name("layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"),
            Some("layer_with_weights-0/kernel")
        );
        assert_eq!(weight_name("model/conv/bias/.ATTRIBUTES/VARIABLE_VALUE"), Some("model/conv/bias"));
        assert_eq!(weight_name("dense/kernel"), Some("dense/kernel"));
        for key in [
            "optimizer/_variables/1/.ATTRIBUTES/VARIABLE_VALUE",
            "conv/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
            "_CHECKPOINTABLE_OBJECT_GRAPH",
            "layer-0/.ATTRIBUTES/OBJECT_CONFIG_JSON",
            "keras_api/metrics/0/count/.ATTRIBUTES/VARIABLE_VALUE",
        ] {
            assert_eq!(weight_name(key), None, "{key}");
        }
    }

    #[test]
    fn data_files_are_named_as_tensorflow_names_them() {
        let p = data_file(Path::new("run/cp-0002.ckpt.index"), 1, 2);
        assert_eq!(p, Path::new("run/cp-0002.ckpt.data-00001-of-00002"));
        assert_eq!(data_prefix("cp-0002.ckpt.data-00001-of-00002"), Some("cp-0002.ckpt"));
        assert_eq!(data_prefix("cp.data-x-of-00002"), None);
        assert_eq!(data_prefix("model.safetensors"), None);
    }
}
