//! PyTorch Distributed Checkpoint folders (`torch.distributed.checkpoint
//! .save`: what FSDP's sharded state dicts, torchtitan, Lightning's FSDP
//! strategy and Accelerate's sharded saves write): `.metadata`, a pickle of
//! the checkpoint's plan (each entry's size and chunks, where each chunk
//! is stored, the nested keys of the state dict saved), and
//! `__R_I.distcp` files holding each chunk as a `torch.save` archive at an
//! offset. The plan is read by the unpickler that executes nothing, each
//! chunk's archive as a torch file is (in place); a tensor saved in
//! several chunks (sharded over ranks) is put back together, once, after
//! its chunks are checked to tile it exactly. The nested state dict is then
//! searched as a `torch.save` dict is ([`crate::torch::state_dict`]: its
//! `model` entry, `--key`, scalars as columns), so an optimizer's state
//! saved beside the model is left out. Lightning's FSDP strategy keeps the
//! rest of its checkpoint in `meta.pt` beside them: its scalars (epoch,
//! global step, hyperparameters, the monitored score) are columns.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use safetensors::tensor::TensorInfo;

use crate::checkpoint::Aligned;
use crate::pickle::{self, dtype_size, get, Storage, TensorRef, Value};
use crate::torch::{Lone, Place};

/// The file of a distributed checkpoint that holds its plan.
pub(crate) const METADATA: &str = ".metadata";

/// The file beside a distributed checkpoint in which Lightning's FSDP
/// strategy keeps the rest of its checkpoint (`torch.save` of a dict).
pub(crate) const LIGHTNING_META: &str = "meta.pt";

/// The largest `.metadata` read (a large model's plan is a few MB).
pub(crate) const MAX_METADATA: u64 = 1 << 30;

/// The most chunks one tensor may be saved in.
const MAX_CHUNKS: usize = 1 << 16;

/// True when `dir` is a distributed checkpoint: its plan and data files.
pub(crate) fn is_dcp_dir(dir: &Path) -> bool {
    dir.join(METADATA).is_file()
        && std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".distcp"))
}

/// Where a stored item is: its data file (an index into [`Plan::files`])
/// and its bytes there.
#[derive(Debug, Clone, Copy)]
struct Stored {
    file: usize,
    start: usize,
    end: usize,
}

/// A chunk of a tensor: its offsets and sizes in the whole, and where it is.
#[derive(Debug)]
struct Chunk {
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    stored: Stored,
}

/// An entry of the saved state dict: its keys there, and its chunks (a
/// tensor) or where its pickled value is (anything else).
#[derive(Debug)]
struct Item {
    keys: Vec<Value>,
    size: Option<Vec<usize>>,
    /// The dtype the plan records for a tensor.
    dtype: safetensors::Dtype,
    chunks: Vec<Chunk>,
    value: Option<Stored>,
}

/// A distributed checkpoint's plan: its entries and the data files they
/// are in (names inside the folder).
#[derive(Debug)]
pub(crate) struct Plan {
    items: Vec<(String, Item)>,
    pub(crate) files: Vec<String>,
}

/// A distributed checkpoint's model: each tensor where it lies (a data
/// file, or the buffer of tensors put back together) and the columns.
pub(crate) struct DcpCheckpoint {
    pub(crate) tensors: Vec<(String, TensorInfo, DcpPlace)>,
    /// The tensors put back together, each 8-byte aligned.
    pub(crate) gathered: Aligned,
    pub(crate) metadata: BTreeMap<String, String>,
}

/// Where a tensor's bytes are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DcpPlace {
    /// Data file `i`, `start..end`.
    File(usize, usize, usize),
    /// `start..end` of the buffer of tensors put back together.
    Gathered(usize, usize),
}

/// The state of a pickled dataclass (`NEWOBJ` then `BUILD` of its dict).
fn state(v: &Value) -> Option<Vec<(Value, Value)>> {
    let Value::Object(o) = v else { return None };
    match &*o.state.borrow() {
        Some(Value::Dict(d)) => Some(d.borrow().clone()),
        _ => None,
    }
}

/// A `torch.Size` (or a tuple) of sizes.
fn sizes(v: &Value) -> Option<Vec<usize>> {
    let tuple = match v {
        Value::Object(o) if &*o.class == "torch.Size" => o.args.first()?,
        _ => v,
    };
    pickle::ints(tuple, "sizes").ok()
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<usize> {
    pickle::int(v?, "an offset or length").ok()
}

/// Reads the plan (`.metadata`'s bytes).
pub(crate) fn plan(meta: &[u8]) -> Result<Plan, String> {
    let root = pickle::load(meta)?;
    let top = state(&root).ok_or("`.metadata` holds no checkpoint plan")?;
    let entries = match get(&top, "state_dict_metadata") {
        Some(Value::Dict(d)) => d.borrow().clone(),
        _ => return Err("`.metadata` has no `state_dict_metadata`".into()),
    };
    let storage = match get(&top, "storage_data") {
        Some(Value::Dict(d)) => d.borrow().clone(),
        _ => return Err("`.metadata` has no `storage_data` (written by another storage writer)".into()),
    };
    let keys_of: HashMap<String, Vec<Value>> = match get(&top, "planner_data") {
        Some(Value::Dict(d)) => d
            .borrow()
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tuple(t)) => Some((k.to_string(), t.to_vec())),
                _ => None,
            })
            .collect(),
        _ => HashMap::new(),
    };
    // Where each chunk is: by its entry's name and offsets.
    let mut files: Vec<String> = Vec::new();
    let mut stored: HashMap<(String, Option<Vec<usize>>), Stored> = HashMap::new();
    for (index, info) in &storage {
        let (Some(index), Some(info)) = (state(index), state(info)) else {
            return Err("a `storage_data` entry that is not a (MetadataIndex, _StorageInfo) pair".into());
        };
        let fqn = text(get(&index, "fqn")).ok_or("a stored item without its name")?;
        let offsets = get(&index, "offset").and_then(sizes);
        let path = text(get(&info, "relative_path")).ok_or_else(|| format!("`{fqn}`: no data file"))?;
        if path.is_empty() || path.contains(['/', '\\']) || path == "." || path == ".." {
            return Err(format!("`{fqn}`: data file `{path}` is not a file of the folder"));
        }
        if matches!(get(&info, "transform_descriptors"), Some(Value::List(l)) if !l.borrow().is_empty()) {
            return Err(format!("`{fqn}`: stored transformed (compressed), which is not read"));
        }
        let (Some(start), Some(len)) = (int(get(&info, "offset")), int(get(&info, "length"))) else {
            return Err(format!("`{fqn}`: no offset and length in `{path}`"));
        };
        let end = start.checked_add(len).ok_or_else(|| format!("`{fqn}`: offset and length overflow"))?;
        let file = match files.iter().position(|f| *f == path) {
            Some(i) => i,
            None => {
                files.push(path);
                files.len() - 1
            }
        };
        stored.insert((fqn, offsets), Stored { file, start, end });
    }
    let mut items = Vec::with_capacity(entries.len());
    for (name, meta) in &entries {
        let Value::Str(name) = name else { return Err("an entry whose name is not text".into()) };
        let name = name.to_string();
        let keys = keys_of.get(&name).cloned().unwrap_or_else(|| vec![Value::Str(name.as_str().into())]);
        let class = match meta {
            Value::Object(o) => o.class.to_string(),
            _ => String::new(),
        };
        let item = if class.ends_with("TensorStorageMetadata") {
            let s = state(meta).ok_or_else(|| format!("`{name}`: no tensor metadata"))?;
            let size = get(&s, "size").and_then(sizes).ok_or_else(|| format!("`{name}`: no size"))?;
            let list = match get(&s, "chunks") {
                Some(Value::List(l)) => l.borrow().clone(),
                _ => return Err(format!("`{name}`: no chunks")),
            };
            if list.len() > MAX_CHUNKS {
                return Err(format!("`{name}`: {} chunks", list.len()));
            }
            let mut chunks = Vec::with_capacity(list.len());
            for c in &list {
                let c = state(c).ok_or_else(|| format!("`{name}`: a chunk without its offsets and sizes"))?;
                let (Some(offsets), Some(sizes)) =
                    (get(&c, "offsets").and_then(sizes), get(&c, "sizes").and_then(sizes))
                else {
                    return Err(format!("`{name}`: a chunk without its offsets and sizes"));
                };
                let at = stored
                    .get(&(name.clone(), Some(offsets.clone())))
                    .copied()
                    .ok_or_else(|| format!("`{name}`: the chunk at {offsets:?} is stored nowhere"))?;
                chunks.push(Chunk { offsets, sizes, stored: at });
            }
            // `TensorProperties`' state: (dtype, layout, ...).
            let properties = get(&s, "properties").and_then(|p| match p {
                Value::Object(o) => o.state.borrow().clone(),
                _ => None,
            });
            let dtype = match &properties {
                Some(Value::Tuple(t)) => match t.first() {
                    Some(Value::Global(pickle::Global::TorchDtype(d))) => *d,
                    _ => return Err(format!("`{name}`: no dtype")),
                },
                _ => return Err(format!("`{name}`: no dtype")),
            };
            Item { keys, size: Some(size), dtype, chunks, value: None }
        } else {
            let at = stored.get(&(name.clone(), None)).copied();
            Item { keys, size: None, dtype: safetensors::Dtype::U8, chunks: Vec::new(), value: at }
        };
        items.push((name, item));
    }
    Ok(Plan { items, files })
}

/// The bytes of `s` in `files`, checked against the file's length.
fn bytes_of<'a>(files: &[&'a [u8]], s: Stored, name: &str) -> Result<&'a [u8], String> {
    files
        .get(s.file)
        .and_then(|f| f.get(s.start..s.end))
        .ok_or_else(|| format!("`{name}`: bytes {}..{} lie past the end of its data file (cut short?)", s.start, s.end))
}

/// Row-major strides (in elements) of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Checks that `chunks` tile a tensor of `size` exactly: each inside it,
/// no two overlapping, their elements as many as the tensor's.
fn check_tiling(name: &str, size: &[usize], chunks: &[Chunk]) -> Result<(), String> {
    let total =
        size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("`{name}`: size overflows"))?;
    let mut sum = 0usize;
    for c in chunks {
        let inside = c.offsets.len() == size.len()
            && c.sizes.len() == size.len()
            && c.offsets.iter().zip(&c.sizes).zip(size).all(|((&o, &s), &n)| o.checked_add(s).is_some_and(|e| e <= n));
        if !inside {
            return Err(format!(
                "`{name}`: a chunk at {:?} of {:?} lies outside its size {size:?}",
                c.offsets, c.sizes
            ));
        }
        sum = sum.saturating_add(c.sizes.iter().product());
    }
    let overlap = |a: &Chunk, b: &Chunk| {
        a.offsets
            .iter()
            .zip(&a.sizes)
            .zip(b.offsets.iter().zip(&b.sizes))
            .all(|((&ao, &as_), (&bo, &bs))| ao < bo + bs && bo < ao + as_)
    };
    let empty = |c: &Chunk| c.sizes.contains(&0);
    for (i, a) in chunks.iter().enumerate() {
        if let Some(b) = chunks[i + 1..].iter().find(|b| !empty(a) && !empty(b) && overlap(a, b)) {
            return Err(format!("`{name}`: chunks at {:?} and {:?} overlap", a.offsets, b.offsets));
        }
    }
    if sum != total {
        return Err(format!("`{name}`: its chunks hold {sum} of its {total} elements"));
    }
    Ok(())
}

/// A chunk's tensor: dtype, shape and its row-major bytes.
fn chunk_tensor<'a>(files: &[&'a [u8]], name: &str, c: &Chunk) -> Result<(TensorInfo, ChunkBytes<'a>), String> {
    let archive = bytes_of(files, c.stored, name)?;
    if !archive.starts_with(b"PK") {
        return safetensors_chunk(files, name, c);
    }
    match crate::torch::read_lone(archive).map_err(|e| format!("`{name}`: {e}"))? {
        Lone::Tensor(info, place, gathered) => {
            if info.shape != c.sizes {
                return Err(format!("`{name}`: a chunk of shape {:?} where the plan says {:?}", info.shape, c.sizes));
            }
            let bytes = match place {
                Place::Archive(s, e) => {
                    ChunkBytes::InFile(c.stored.file, c.stored.start + s, c.stored.start + e, &archive[s..e])
                }
                Place::Gathered(s, e) => ChunkBytes::Copied(gathered[s..e].to_vec()),
            };
            Ok((info, bytes))
        }
        Lone::Value(_) => Err(format!("`{name}`: a chunk that holds no tensor")),
    }
}

/// A chunk saved with `serialization_format=SAFETENSORS`: each rank's
/// tensors are one safetensors file appended to its data file, where the
/// plan's offset points; the chunk is its tensor named as the entry.
fn safetensors_chunk<'a>(files: &[&'a [u8]], name: &str, c: &Chunk) -> Result<(TensorInfo, ChunkBytes<'a>), String> {
    let file = files.get(c.stored.file).copied().unwrap_or_default();
    let blob = file.get(c.stored.start..).unwrap_or_default();
    let (n, header) = safetensors::SafeTensors::read_metadata(blob)
        .map_err(|e| format!("`{name}`: neither a torch.save archive nor a safetensors file ({e:?})"))?;
    let info = header.info(name).ok_or_else(|| format!("`{name}`: not in the safetensors file of its data file"))?;
    let data = c.stored.start + 8 + n;
    let (start, end) = (data + info.data_offsets.0, data + info.data_offsets.1);
    let bytes = file.get(start..end).ok_or_else(|| format!("`{name}`: its bytes lie past the end of its data file"))?;
    if info.shape != c.sizes || bytes.len() != c.sizes.iter().product::<usize>() * dtype_size(info.dtype) {
        return Err(format!("`{name}`: a chunk of shape {:?} where the plan says {:?}", info.shape, c.sizes));
    }
    Ok((info.clone(), ChunkBytes::InFile(c.stored.file, start, end, bytes)))
}

/// A chunk's bytes: in place in a data file (its index and range), or a
/// copy (a strided view).
enum ChunkBytes<'a> {
    InFile(usize, usize, usize, &'a [u8]),
    Copied(Vec<u8>),
}

impl ChunkBytes<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::InFile(.., b) => b,
            ChunkBytes::Copied(b) => b,
        }
    }
}

/// Values stored apart (not tensors) read for the columns: larger ones (a
/// dataloader's state) are not.
const MAX_VALUE: usize = 1 << 20;

/// Reads the model of a distributed checkpoint whose plan is `plan`, its
/// data files' bytes `files` (in the plan's order): the state dict the
/// plan describes, searched as a `torch.save` dict is (`key` as `--key`);
/// only the tensors found are read (not an optimizer's state beside them).
pub(crate) fn read(plan: Plan, files: &[&[u8]], key: Option<&str>) -> Result<DcpCheckpoint, String> {
    // The state dict as a tree whose tensors stand for the plan's entries
    // (each storage's key the entry's number).
    let root = Value::Dict(Rc::new(RefCell::new(Vec::new())));
    for (i, (name, item)) in plan.items.iter().enumerate() {
        let leaf = match (&item.size, item.value) {
            (Some(size), _) => {
                let numel = size.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let numel = numel.ok_or_else(|| format!("`{name}`: size overflows"))?;
                let storage = Rc::new(Storage { key: i.to_string(), dtype: Some(item.dtype), numel });
                let shape = size.clone();
                Value::Tensor(Rc::new(TensorRef {
                    storage,
                    dtype: item.dtype,
                    offset: 0,
                    stride: strides(&shape),
                    shape,
                }))
            }
            (None, Some(at)) if at.end - at.start <= MAX_VALUE => {
                match crate::torch::read_lone(bytes_of(files, at, name)?) {
                    Ok(Lone::Value(v)) => v,
                    _ => Value::None,
                }
            }
            (None, _) => Value::None,
        };
        insert(&root, &item.keys, leaf)?;
    }
    let found = crate::torch::state_dict(&root, key)?;
    let entry = |t: &TensorRef| t.storage.key.parse::<usize>().ok().and_then(|i| plan.items.get(i));
    // Every chunk of the tensors found, read (in place); those saved in
    // chunks are then put back together in one buffer, sized once.
    let wanted =
        found.scalars.iter().map(|(n, t)| (n, t, true)).chain(found.tensors.iter().map(|(n, t)| (n, t, false)));
    let mut read = Vec::with_capacity(found.tensors.len() + found.scalars.len());
    let mut total = 0usize;
    for (name, t, scalar) in wanted {
        let Some((entry_name, item)) = entry(t) else { continue };
        let (info, parts) = chunks(files, entry_name, item)?;
        let place = match &parts[..] {
            // Saved whole: read in place.
            [(_, ChunkBytes::InFile(file, start, end, _))] => DcpPlace::File(*file, *start, *end),
            _ => {
                let at = total.next_multiple_of(8);
                total = at + (info.data_offsets.1 - info.data_offsets.0);
                DcpPlace::Gathered(at, total)
            }
        };
        read.push((name.clone(), scalar, info, parts, place));
    }
    let mut gathered = Aligned::zeroed(total).map_err(|e| format!("{total} bytes for the sharded tensors: {e}"))?;
    let mut tensors = Vec::with_capacity(found.tensors.len());
    let mut metadata = found.metadata;
    for (name, scalar, info, parts, place) in read {
        if let DcpPlace::Gathered(start, end) = place {
            assemble(&info.shape, dtype_size(info.dtype), &parts, &mut gathered.bytes_mut()[start..end]);
        }
        if scalar {
            let bytes = match place {
                DcpPlace::File(f, s, e) => files.get(f).and_then(|b| b.get(s..e)),
                DcpPlace::Gathered(s, e) => gathered.as_ref().get(s..e),
            };
            if let Some(v) = bytes.and_then(|b| pickle::scalar_text(info.dtype, b)) {
                metadata.entry(name).or_insert(v);
            }
        } else {
            tensors.push((name, info, place));
        }
    }
    Ok(DcpCheckpoint { tensors, gathered, metadata })
}

/// A tensor's chunks, each with its bytes.
type Parts<'a, 'c> = Vec<(&'c Chunk, ChunkBytes<'a>)>;

/// Entry `name`'s chunks, each read and checked against the plan (its
/// shape, the entry's dtype, the chunks tiling the entry), and the
/// entry's tensor.
fn chunks<'a, 'c>(files: &[&'a [u8]], name: &str, item: &'c Item) -> Result<(TensorInfo, Parts<'a, 'c>), String> {
    let size = item.size.as_deref().unwrap_or_default();
    check_tiling(name, size, &item.chunks)?;
    let mut parts = Vec::with_capacity(item.chunks.len());
    for c in &item.chunks {
        let (info, bytes) = chunk_tensor(files, name, c)?;
        if info.dtype != item.dtype {
            return Err(format!("`{name}`: a chunk of {} where the plan says {}", info.dtype, item.dtype));
        }
        parts.push((c, bytes));
    }
    let numel: usize = size.iter().product();
    let info =
        TensorInfo { dtype: item.dtype, shape: size.to_vec(), data_offsets: (0, numel * dtype_size(item.dtype)) };
    Ok((info, parts))
}

/// Copies each chunk into its place in `out` (the whole tensor of `size`,
/// row-major, elements of `width` bytes), a contiguous run at a time:
/// past the last axis a chunk covers only in part it spans every axis
/// whole (a shard along dim 0 is one run).
fn assemble(size: &[usize], width: usize, parts: &[(&Chunk, ChunkBytes<'_>)], out: &mut [u8]) {
    let whole = strides(size);
    for (c, bytes) in parts {
        let bytes = bytes.bytes();
        let partial = (0..size.len()).rev().find(|&d| c.sizes[d] != size[d]).unwrap_or(0);
        let run: usize = c.sizes.get(partial..).map_or(1, |s| s.iter().product());
        let row = run * width;
        let runs = bytes.len().checked_div(row).unwrap_or(0);
        let outer = strides(c.sizes.get(..partial).unwrap_or_default());
        for r in 0..runs {
            // The run's first element: its index over the outer axes, then
            // the chunk's offsets (the axes after `partial` are whole).
            let mut at = c.offsets.get(partial).map_or(0, |o| o * whole[partial]);
            let mut rest = r;
            for (d, per) in outer.iter().enumerate() {
                at += (c.offsets[d] + rest / per) * whole[d];
                rest %= per;
            }
            out[at * width..at * width + row].copy_from_slice(&bytes[r * row..(r + 1) * row]);
        }
    }
}

/// Puts `leaf` into the nested dicts of `root` under `keys` (list indices
/// as text keys, as torch's state dict search names them).
fn insert(root: &Value, keys: &[Value], leaf: Value) -> Result<(), String> {
    let key = |k: &Value| -> Result<Rc<str>, String> {
        match k {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string().into()),
            _ => Err("a state dict key that is neither text nor a number".to_string()),
        }
    };
    let Some((last, path)) = keys.split_last() else { return Err("an entry without keys".into()) };
    let mut at = root.clone();
    for k in path {
        let k = key(k)?;
        let Value::Dict(d) = &at else { return Err("an entry under a value".into()) };
        let found = get(&d.borrow(), &k).cloned();
        let next = found.unwrap_or_else(|| {
            let v = Value::Dict(Rc::new(RefCell::new(Vec::new())));
            d.borrow_mut().push((Value::Str(k), v.clone()));
            v
        });
        at = next;
    }
    let Value::Dict(d) = &at else { return Err("an entry under a value".into()) };
    d.borrow_mut().push((Value::Str(key(last)?), leaf));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offsets: &[usize], sizes: &[usize]) -> Chunk {
        Chunk { offsets: offsets.to_vec(), sizes: sizes.to_vec(), stored: Stored { file: 0, start: 0, end: 0 } }
    }

    /// Chunks must tile their tensor exactly: none outside it, none
    /// overlapping another, none missing.
    #[test]
    fn chunks_tile_their_tensor_exactly() {
        let size = [4, 6];
        let halves = [chunk(&[0, 0], &[2, 6]), chunk(&[2, 0], &[2, 6])];
        assert!(check_tiling("w", &size, &halves).is_ok());
        let columns = [chunk(&[0, 0], &[4, 3]), chunk(&[0, 3], &[4, 3])];
        assert!(check_tiling("w", &size, &columns).is_ok());
        let overlapping = [chunk(&[0, 0], &[3, 6]), chunk(&[2, 0], &[2, 6])];
        assert!(check_tiling("w", &size, &overlapping).unwrap_err().contains("overlap"));
        let missing = [chunk(&[0, 0], &[2, 6])];
        assert!(check_tiling("w", &size, &missing).unwrap_err().contains("hold 12 of its 24"));
        let outside = [chunk(&[3, 0], &[2, 6]), chunk(&[0, 0], &[2, 6])];
        assert!(check_tiling("w", &size, &outside).unwrap_err().contains("outside"));
        // Same count, but one overlaps and leaves a gap.
        let shifted = [chunk(&[0, 0], &[2, 6]), chunk(&[1, 0], &[2, 6])];
        assert!(check_tiling("w", &size, &shifted).is_err());
        assert_eq!(strides(&[4, 3, 2]), [6, 2, 1]);
    }

    /// Chunks of a 3-D tensor split along each axis (and a 2 x 2 grid over
    /// two) are put back where they belong.
    #[test]
    fn chunks_are_put_back_in_place() {
        let size = [4usize, 6, 5];
        let whole: Vec<u8> = (0..120u8).collect();
        let cut = |offsets: [usize; 3], sizes: [usize; 3]| {
            let mut bytes = Vec::new();
            for i in 0..sizes[0] {
                for j in 0..sizes[1] {
                    for k in 0..sizes[2] {
                        bytes.push(whole[((offsets[0] + i) * 6 + offsets[1] + j) * 5 + offsets[2] + k]);
                    }
                }
            }
            (chunk(&offsets, &sizes), ChunkBytes::Copied(bytes))
        };
        let splits = [
            vec![cut([0, 0, 0], [2, 6, 5]), cut([2, 0, 0], [2, 6, 5])],
            vec![cut([0, 0, 0], [4, 3, 5]), cut([0, 3, 0], [4, 3, 5])],
            vec![cut([0, 0, 0], [4, 6, 2]), cut([0, 0, 2], [4, 6, 3])],
            vec![
                cut([0, 0, 0], [2, 6, 2]),
                cut([0, 0, 2], [2, 6, 3]),
                cut([2, 0, 0], [2, 6, 2]),
                cut([2, 0, 2], [2, 6, 3]),
            ],
        ];
        for parts in &splits {
            let parts: Vec<(&Chunk, ChunkBytes<'_>)> =
                parts.iter().map(|(c, b)| (c, ChunkBytes::Copied(b.bytes().to_vec()))).collect();
            let mut out = vec![0u8; 120];
            assemble(&size, 1, &parts, &mut out);
            assert_eq!(out, whole, "{:?}", parts.iter().map(|(c, _)| &c.offsets).collect::<Vec<_>>());
        }
    }
}
