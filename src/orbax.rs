//! Orbax checkpoints: the directories that `orbax.checkpoint` writes (and
//! `flax.training.checkpoints.save_checkpoint`, by default). The tree's
//! arrays are Zarr arrays (v2, or v3 with `use_zarr3`, its chunks shards
//! of inner chunks) in a tensorstore OCDBT database: a manifest
//! (`manifest.ocdbt`) names the root of a B+tree whose keys are the arrays'
//! metadata and chunks (`params.Conv_0.kernel/.zarray`,
//! `params.Conv_0.kernel/0.0.0.0`), each value inline in a leaf or a range
//! of a data file (`d/...`, `ocdbt.process_0/d/...`), nodes and chunks
//! compressed with zstd. Saved without OCDBT (`use_ocdbt=False`), the keys
//! are the folder's files themselves. The format is tensorstore's
//! (`kvstore/ocdbt/index.rst`), read here as data by a bounded decoder:
//! every length and offset is checked before it is used, every manifest,
//! node and shard index's CRC-32C verified, every decompression (zstd's
//! own library, as tensorstore uses) bounded by the size it must have;
//! nothing is executed. The tree is then a Flax tree
//! (the Flax reader's `model`): `params` with `batch_stats`, scalars as
//! metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorInfo};

use crate::checkpoint::{Aligned, Bytes};
use crate::cursor::{crc32c, Reader};
use crate::flax::{FlaxCheckpoint, Leaf};

/// Magic numbers of the encoded manifest and B+tree nodes.
const MANIFEST_MAGIC: u32 = 0x0cdb_3a2a;
const BTREE_MAGIC: u32 = 0x0cdb_20de;

/// Bounds on what a manifest or node may declare. A node decompresses to
/// at most [`MAX_NODE_BYTES`]; the arrays together are bounded by their
/// stored bytes ([`crate::fill::beyond_ratio`]: a zstd bomb stops there).
const MAX_NODE_BYTES: usize = 64 << 20;
const MAX_HEIGHT: u8 = 32;
const MAX_ENTRIES: u64 = 1 << 20;
const MAX_KEY: usize = 1 << 16;

/// What one walk of a B+tree may visit in all: entries, and node bytes
/// decompressed. A node may be reached by several paths, so a hostile
/// tree of a few nodes could otherwise fan out to more visits than ever
/// end; Orbax's trees are thousands of times smaller.
const MAX_WALK_ENTRIES: usize = 1 << 22;
const MAX_WALK_NODE_BYTES: usize = 1 << 30;

/// The arrays of an Orbax checkpoint, decompressed into one aligned
/// buffer (each array at a multiple of 8 bytes), and the tree they make
/// (its ranges are of the buffer).
pub(crate) struct OrbaxCheckpoint {
    pub(crate) buffer: Aligned,
    pub(crate) tree: FlaxCheckpoint,
}

/// Whether `dir` is an Orbax checkpoint: the `_CHECKPOINT_METADATA` of a
/// saved step, or the `_METADATA` of a tree beside its OCDBT manifest or
/// its Zarr arrays' folders.
pub(crate) fn is_orbax_dir(dir: &Path) -> bool {
    if dir.join("_CHECKPOINT_METADATA").is_file() {
        return true;
    }
    dir.join("_METADATA").is_file()
        && (dir.join("manifest.ocdbt").is_file()
            || std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
                let p = e.path();
                p.join(".zarray").is_file() || p.join("zarr.json").is_file()
            }))
}

/// The folder of `dir` that holds the tree: `dir` itself, or the item
/// folder of a `CheckpointManager` step (`default/`, or its only one).
pub(crate) fn tree_dir(dir: &Path) -> Result<PathBuf, String> {
    if dir.join("_METADATA").is_file() || dir.join("manifest.ocdbt").is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut items: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list the folder: {e}"))?
        .flatten()
        .filter(|e| e.path().join("manifest.ocdbt").is_file() || e.path().join("_METADATA").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    items.sort();
    match &items[..] {
        [only] => Ok(dir.join(only)),
        _ if items.iter().any(|i| i == "default") => Ok(dir.join("default")),
        [] => Err("a checkpoint step with no item folder holding a tree (_METADATA, manifest.ocdbt)".into()),
        _ => Err(format!(
            "a CheckpointManager step of several items ({}): name one, as the folder to scan",
            items.join(", ")
        )),
    }
}

/// Why an Orbax checkpoint was not read.
pub(crate) enum ReadError {
    /// What in it is malformed, or not read.
    Format(String),
    /// A file of it changed while it was read.
    Changed,
}

/// Reads the Orbax checkpoint in `dir` (or its tree folder, [`tree_dir`]):
/// the model's `params` and `batch_stats` (or, with `key`, the tree under
/// it), and the scalars outside them. Its files are mapped (large) or
/// read (small) as checkpoint files are, and checked for changes once
/// their arrays are decompressed.
pub(crate) fn read(dir: &Path, key: Option<&str>) -> Result<OrbaxCheckpoint, ReadError> {
    let root = tree_dir(dir).map_err(ReadError::Format)?;
    let mut db = Db::new(root);
    let read = (|| {
        let mut values = BTreeMap::new();
        if db.root.join("manifest.ocdbt").is_file() {
            let (table, root_ref, height) = manifest_root(db.file("manifest.ocdbt")?)?;
            db.btree(&table[root_ref.file], root_ref, height, Vec::new(), &mut values, 0)?;
        } else {
            // Saved without OCDBT (`use_ocdbt=False`, Orbax's older
            // default): each key a file of the folder.
            folder_values(&db.root, &mut values)?;
        }
        arrays(&mut db, &values, key)
    })();
    if db.changed || db.files.values().any(Bytes::changed) {
        return Err(ReadError::Changed);
    }
    let mut read = read.map_err(ReadError::Format)?;
    for (k, v) in step_metadata(dir) {
        read.tree.metadata.entry(k).or_insert(v);
    }
    Ok(read)
}

/// A saved step's number (a `CheckpointManager` names its folders by
/// it), metrics (its `metrics/metrics`, and `_CHECKPOINT_METADATA`'s
/// `metrics`) and `custom_metadata`: the checkpoint's accuracy and the
/// like, as columns (a nested value's key joined by `.`). Files that are
/// not there, too large or not JSON objects add nothing.
fn step_metadata(dir: &Path) -> BTreeMap<String, String> {
    const MAX_JSON: u64 = 1 << 20;
    let object = |path: PathBuf| -> Option<serde_json::Map<String, serde_json::Value>> {
        // A regular file only (a FIFO in its place never hangs the scan).
        let text = crate::layouts::sidecar(&path, MAX_JSON)?;
        match serde_json::from_slice(&text).ok()? {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        }
    };
    let mut out = BTreeMap::new();
    let mut add = |m: &serde_json::Map<String, serde_json::Value>| {
        for (k, v) in m {
            let nested = v.as_object().map(|o| o.iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2)).collect());
            for (k, v) in nested.unwrap_or_else(|| vec![(k.clone(), v)]) {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                out.entry(k).or_insert(text);
            }
        }
    };
    if let Some(m) = object(dir.join("metrics").join("metrics")) {
        add(&m);
    }
    if let Some(m) = object(dir.join("_CHECKPOINT_METADATA")) {
        for part in ["metrics", "custom_metadata"] {
            if let Some(inner) = m.get(part).and_then(serde_json::Value::as_object) {
                add(inner);
            }
        }
        let number = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = number {
            out.entry("step".into()).or_insert(step.to_string());
        }
    }
    out
}

/// The keys of a tree saved without OCDBT: every regular file below the
/// tree's folder (an array's `.zarray` or `zarr.json` and its chunks), by
/// its `/`-joined path, each a whole-file value. Links are not followed;
/// the walk is bounded in depth and count.
fn folder_values(root: &Path, out: &mut BTreeMap<Vec<u8>, Value>) -> Result<(), String> {
    const MAX_DEPTH: usize = 8;
    const MAX_FILES: usize = 1 << 20;
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let listing = std::fs::read_dir(&dir).map_err(|e| format!("folder `{prefix}` cannot be listed: {e}"))?;
        for entry in listing {
            let entry = entry.map_err(|e| format!("folder `{prefix}` cannot be listed: {e}"))?;
            let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
            let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            match entry.file_type() {
                Ok(t) if t.is_dir() && depth < MAX_DEPTH => stack.push((entry.path(), key, depth + 1)),
                Ok(t) if t.is_file() => {
                    let len = entry.metadata().map_err(|e| format!("file `{key}`: {e}"))?.len();
                    out.insert(key.clone().into_bytes(), Value::Stored(DataFile { path: key, base: 0 }, 0, len));
                    if out.len() > MAX_FILES {
                        return Err(format!("more than {MAX_FILES} files in the checkpoint's folder"));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A data file named by a table: its path from the database's root, and
/// the part of it (the transitive and base paths) that the nodes read from
/// it prefix to their own tables' paths.
#[derive(Clone, Debug)]
struct DataFile {
    path: String,
    base: usize,
}

/// Where an encoded node or value is: a file of the table, a byte range.
#[derive(Clone, Copy, Debug)]
struct Ref {
    file: usize,
    offset: u64,
    length: u64,
}

/// A value of the B+tree: inline bytes, or a range of a data file.
enum Value {
    Inline(Vec<u8>),
    Stored(DataFile, u64, u64),
}

/// The database's folder, its files opened so far, whether one was seen
/// changing while read, and what the B+tree walk may still visit.
struct Db {
    root: PathBuf,
    files: BTreeMap<String, Bytes>,
    changed: bool,
    walk_left: (usize, usize),
}

impl Db {
    fn new(root: PathBuf) -> Self {
        Db { root, files: BTreeMap::new(), changed: false, walk_left: (MAX_WALK_ENTRIES, MAX_WALK_NODE_BYTES) }
    }
}

impl Db {
    /// A data file's bytes (read once), by its path from the root; a path
    /// leading out of the folder is refused.
    fn file(&mut self, rel: &str) -> Result<&[u8], String> {
        let inside = Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || rel.is_empty() {
            return Err(format!("data file `{rel}` is not a path inside the checkpoint's folder"));
        }
        if !self.files.contains_key(rel) {
            let b = match crate::checkpoint::read_file(&self.root.join(rel)) {
                Ok(Some((b, _))) => b,
                Ok(None) => return Err(format!("data file `{rel}` is a folder")),
                Err(e) if crate::mapped::is_changed(&e) => {
                    self.changed = true;
                    return Err(format!("data file `{rel}` changed while read"));
                }
                Err(e) => return Err(format!("data file `{rel}`: {e}")),
            };
            self.files.insert(rel.to_string(), b);
        }
        Ok(&self.files[rel])
    }

    /// `length` bytes at `offset` of a data file, opening it if need be.
    fn range(&mut self, file: &DataFile, offset: u64, length: u64) -> Result<&[u8], String> {
        self.file(&file.path)?;
        self.opened(file, offset, length)
    }

    /// `length` bytes at `offset` of a data file already opened.
    fn opened(&self, file: &DataFile, offset: u64, length: u64) -> Result<&[u8], String> {
        let b = self.files.get(&file.path).ok_or_else(|| format!("data file `{}` not opened", file.path))?;
        let end = offset.checked_add(length).filter(|&e| e <= b.len() as u64).ok_or_else(|| {
            format!("bytes {offset}..+{length} of data file `{}` run past its end ({} bytes)", file.path, b.len())
        })?;
        Ok(&b[offset as usize..end as usize])
    }

    /// Walks the B+tree node at `at` (read from `file`), of `height`, whose
    /// keys follow `prefix`, into `out` (full key -> value).
    fn btree(
        &mut self,
        file: &DataFile,
        at: Ref,
        height: u8,
        prefix: Vec<u8>,
        out: &mut BTreeMap<Vec<u8>, Value>,
        depth: u8,
    ) -> Result<(), String> {
        if depth > MAX_HEIGHT {
            return Err("the B+tree is deeper than 32 levels".into());
        }
        let body = unwrap(self.range(file, at.offset, at.length)?, BTREE_MAGIC, "B+tree node")?;
        let mut r = Reader::new(&body, "B+tree node");
        let node_height = r.byte()?;
        if node_height != height {
            return Err(format!("a B+tree node of height {node_height} where its parent says {height}"));
        }
        let table = data_file_table(&mut r, &file.path[..file.base])?;
        let n = r.varint()?;
        if n == 0 || n > MAX_ENTRIES {
            return Err(format!("a B+tree node of {n} entries"));
        }
        let n = n as usize;
        let (entries, bytes) = self.walk_left;
        self.walk_left = match (entries.checked_sub(n), bytes.checked_sub(body.len())) {
            (Some(e), Some(b)) => (e, b),
            _ => {
                return Err(format!(
                    "a B+tree whose walk visits more than {MAX_WALK_ENTRIES} entries or {} MB of nodes (nodes \
                     reached by many paths?)",
                    MAX_WALK_NODE_BYTES >> 20
                ))
            }
        };
        let mut prefix_lens = vec![0usize; n];
        for p in prefix_lens.iter_mut().skip(1) {
            *p = r.length(MAX_KEY)?;
        }
        let suffix_lens: Vec<usize> = (0..n).map(|_| r.length(MAX_KEY)).collect::<Result<_, _>>()?;
        let common: Vec<usize> =
            if height > 0 { (0..n).map(|_| r.length(MAX_KEY)).collect::<Result<_, _>>()? } else { Vec::new() };
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
        for i in 0..n {
            let kept = prefix_lens[i];
            let before = keys.last().map_or(&[][..], Vec::as_slice);
            if kept > before.len() || kept + suffix_lens[i] > MAX_KEY {
                return Err(format!("key {i} of a B+tree node: lengths that do not fit"));
            }
            let mut key = before[..kept].to_vec();
            key.extend_from_slice(r.bytes(suffix_lens[i])?);
            keys.push(key);
        }
        if height > 0 {
            let refs = refs(&mut r, &table, n)?;
            for _ in 0..3 * n {
                r.varint()?; // the subtrees' statistics
            }
            for ((key, at), &c) in keys.iter().zip(refs).zip(&common) {
                let shared = key.get(..c).ok_or("a subtree's common prefix longer than its key")?;
                let child = [&prefix[..], shared].concat();
                self.btree(&table[at.file], at, height - 1, child, out, depth + 1)?;
            }
            return Ok(());
        }
        let lengths: Vec<u64> = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
        let kinds: Vec<u8> = (0..n).map(|_| r.byte()).collect::<Result<_, _>>()?;
        if let Some(k) = kinds.iter().find(|&&k| k > 1) {
            return Err(format!("a value kind {k} (0: inline, 1: in a data file)"));
        }
        let stored = kinds.iter().filter(|&&k| k == 1).count();
        let files: Vec<usize> = (0..stored).map(|_| r.index(table.len())).collect::<Result<_, _>>()?;
        let offsets: Vec<u64> = (0..stored).map(|_| r.varint()).collect::<Result<_, _>>()?;
        let (mut files, mut offsets) = (files.into_iter(), offsets.into_iter());
        for ((key, length), kind) in keys.into_iter().zip(lengths).zip(kinds) {
            let value = match kind {
                0 => Value::Inline(r.bytes(usize::try_from(length).map_err(|_| "an inline value too long")?)?.to_vec()),
                _ => {
                    let (f, o) = (files.next().expect("one per stored value"), offsets.next().expect("likewise"));
                    Value::Stored(table[f].clone(), o, length)
                }
            };
            out.insert([&prefix[..], &key].concat(), value);
        }
        Ok(())
    }
}

/// The manifest's data file table and the latest version's B+tree root
/// (where it is, its height).
fn manifest_root(encoded: &[u8]) -> Result<(Vec<DataFile>, Ref, u8), String> {
    let body = unwrap(encoded, MANIFEST_MAGIC, "manifest")?;
    let mut r = Reader::new(&body, "manifest");
    r.bytes(16)?; // uuid
    let kind = r.byte()?;
    if kind != 0 {
        return Err("a numbered manifest (its versions in manifest.<generation> files), which is not read".into());
    }
    r.varint()?; // max inline value bytes
    r.varint()?; // max decoded node bytes
    let arity = r.byte()?;
    if arity == 0 || arity > 16 {
        return Err(format!("a version tree arity of 2^{arity}"));
    }
    match r.varint()? {
        0 => {}
        1 => {
            r.bytes(4)?; // zstd level
        }
        c => return Err(format!("compression method {c} (0: none, 1: zstd)")),
    }
    let table = data_file_table(&mut r, "")?;
    let n = r.varint()?;
    if n == 0 || n > 1 << arity {
        return Err(format!("{n} versions inline in the manifest"));
    }
    let n = n as usize;
    for _ in 0..n {
        r.varint()?; // generation numbers
    }
    let heights: Vec<u8> = (0..n).map(|_| r.byte()).collect::<Result<_, _>>()?;
    let roots = refs(&mut r, &table, n)?;
    // The latest version is the last.
    let (root, height) = (roots[n - 1], heights[n - 1]);
    if height > MAX_HEIGHT {
        return Err(format!("a B+tree of height {height}"));
    }
    Ok((table, root, height))
}

/// `n` references, as three columns: data file ids, offsets, lengths.
fn refs(r: &mut Reader<'_>, table: &[DataFile], n: usize) -> Result<Vec<Ref>, String> {
    let files: Vec<usize> = (0..n).map(|_| r.index(table.len())).collect::<Result<_, _>>()?;
    let offsets: Vec<u64> = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
    let lengths: Vec<u64> = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
    Ok(files
        .into_iter()
        .zip(offsets)
        .zip(lengths)
        .map(|((file, offset), length)| Ref { file, offset, length })
        .collect())
}

/// A data file table: paths prefix-compressed against the one before,
/// each split into a base path (which the nodes read from it prefix to
/// theirs) and a relative path; `transitive` comes before all of them.
fn data_file_table(r: &mut Reader<'_>, transitive: &str) -> Result<Vec<DataFile>, String> {
    let n = r.varint()?;
    if n > MAX_ENTRIES {
        return Err(format!("a data file table of {n} files"));
    }
    let n = n as usize;
    let mut prefix = vec![0usize; n];
    for p in prefix.iter_mut().skip(1) {
        *p = r.length(MAX_KEY)?;
    }
    let suffix: Vec<usize> = (0..n).map(|_| r.length(MAX_KEY)).collect::<Result<_, _>>()?;
    let base: Vec<usize> = (0..n).map(|_| r.length(MAX_KEY)).collect::<Result<_, _>>()?;
    let mut paths: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let before = paths.last().map_or(&[][..], Vec::as_slice);
        if prefix[i] > before.len() || prefix[i] + suffix[i] > MAX_KEY || base[i] > prefix[i] + suffix[i] {
            return Err(format!("data file {i} of a table: lengths that do not fit"));
        }
        let mut path = before[..prefix[i]].to_vec();
        path.extend_from_slice(r.bytes(suffix[i])?);
        let text = std::str::from_utf8(&path).map_err(|_| format!("data file {i}: a path that is not UTF-8"))?;
        out.push(DataFile { path: format!("{transitive}{text}"), base: transitive.len() + base[i] });
        paths.push(path);
    }
    Ok(out)
}

/// The body of an encoded manifest or node: magic (big-endian), length,
/// version 0, compression (0: none, 1: zstd), the body, and a CRC-32C of
/// all before it, each checked.
fn unwrap(encoded: &[u8], magic: u32, what: &str) -> Result<Vec<u8>, String> {
    let n = encoded.len();
    if n < 16 {
        return Err(format!("a {what} of {n} bytes"));
    }
    let found = u32::from_be_bytes(encoded[..4].try_into().expect("4 bytes"));
    if found != magic {
        return Err(format!("a {what} that does not start with {magic:08x} (it starts with {found:08x})"));
    }
    let length = u64::from_le_bytes(encoded[4..12].try_into().expect("8 bytes"));
    if length != n as u64 {
        return Err(format!("a {what} of {n} bytes whose header says {length}"));
    }
    let crc = u32::from_le_bytes(encoded[n - 4..].try_into().expect("4 bytes"));
    if crc32c(&encoded[..n - 4]) != crc {
        return Err(format!("a {what} whose CRC-32C does not match its bytes (damaged)"));
    }
    let mut r = Reader::new(&encoded[12..n - 4], what);
    if r.varint()? != 0 {
        return Err(format!("a {what} of a format version other than 0"));
    }
    let compression = r.varint()?;
    let rest = &encoded[12 + r.position()..n - 4];
    match compression {
        0 => Ok(rest.to_vec()),
        1 => zstd_bounded(rest, MAX_NODE_BYTES).map_err(|e| format!("a {what}: {e}")),
        c => Err(format!("a {what} compressed with method {c} (0: none, 1: zstd)")),
    }
}

/// Decompresses zstd data of at most `limit` bytes: as many as its frame
/// header says, or (a streamed frame, as riegeli writes nodes, says
/// none) in room that doubles until it fits.
fn zstd_bounded(input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let declared = zstd_safe::get_frame_content_size(input).ok().flatten();
    let mut room = match declared {
        Some(n) if n > limit as u64 => return Err(format!("zstd data of {n} bytes, more than {limit}")),
        Some(n) => n as usize,
        None => input.len().saturating_mul(4).clamp(1 << 12, limit),
    };
    loop {
        let mut out = Vec::with_capacity(room);
        match zstd_safe::decompress(&mut out, input) {
            Ok(_) => return Ok(out),
            // Too little room, or damaged: more room, up to the limit.
            Err(_) if declared.is_none() && room < limit => room = room.saturating_mul(2).min(limit),
            Err(code) => return Err(format!("zstd data that does not decode ({})", zstd_safe::get_error_name(code))),
        }
    }
}

/// Decompresses `input` into exactly `out` (a chunk of known size).
fn zstd_into(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match zstd_safe::decompress(out, input) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(format!("holds {n} bytes where its array needs {}", out.len())),
        Err(code) => Err(format!(
            "does not decode to the {} bytes its array needs ({})",
            out.len(),
            zstd_safe::get_error_name(code)
        )),
    }
}

/// The `.zarray` metadata of a Zarr v2 array, as tensorstore writes it.
#[derive(serde::Deserialize)]
struct ZArray {
    shape: Vec<usize>,
    chunks: Vec<usize>,
    dtype: String,
    compressor: Option<Named>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    filters: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    dimension_separator: Option<String>,
    #[serde(default)]
    fill_value: serde_json::Value,
}

/// A Zarr v2 compressor (`id`) or v3 codec (`name`, `configuration`).
#[derive(serde::Deserialize)]
struct Named {
    #[serde(alias = "id")]
    name: String,
    #[serde(default)]
    configuration: serde_json::Value,
}

/// The `zarr.json` metadata of a Zarr v3 array (Orbax's `use_zarr3`).
#[derive(serde::Deserialize)]
struct ZarrJson {
    shape: Vec<usize>,
    data_type: String,
    chunk_grid: Named,
    #[serde(default)]
    chunk_key_encoding: Option<Named>,
    codecs: Vec<Named>,
    #[serde(default)]
    fill_value: serde_json::Value,
}

/// How an array is stored, Zarr v2 or v3 alike: its chunks (each a key,
/// C order), how each is compressed, and (Zarr v3's sharding) the inner
/// chunks a stored one holds, with an index of them at its end.
struct Layout {
    shape: Vec<usize>,
    dtype: Dtype,
    chunk: Vec<usize>,
    /// Zarr v3's `c` before the indices (`c/0/1`; `c` for a scalar), or
    /// none (v2: `0.1`; `0` for a scalar).
    prefix: Option<&'static str>,
    separator: String,
    zstd: bool,
    /// Inner chunks of each stored one: their shape, compression, and
    /// whether the index ends with a CRC-32C.
    inner: Option<(Vec<usize>, bool, bool)>,
    /// Whether a chunk not stored is zeros (else it is an error).
    zero_fill: bool,
}

/// Whether a fill value is zero (a chunk not stored is then zeros).
fn is_zero(v: &serde_json::Value) -> bool {
    v.as_f64() == Some(0.0) || *v == serde_json::json!(false)
}

/// A Zarr v2 dtype's safetensors dtype: numpy's type string (`<f4`), as
/// the NumPy reader reads it, and the two numpy does not name
/// (`bfloat16`, and unsigned integers wider than a byte).
fn zarr_dtype(d: &str) -> Option<Dtype> {
    match d {
        "bfloat16" | "<bfloat16" => Some(Dtype::BF16),
        "<u2" => Some(Dtype::U16),
        "<u4" => Some(Dtype::U32),
        "<u8" => Some(Dtype::U64),
        _ => crate::numpy::dtype(d).ok(),
    }
}

impl Layout {
    fn of_v2(m: ZArray) -> Result<Self, String> {
        let dtype = zarr_dtype(&m.dtype).ok_or_else(|| format!("dtype {} is not read", m.dtype))?;
        if m.order.as_deref().is_some_and(|o| o != "C") {
            return Err("Fortran order, which is not read".into());
        }
        if m.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err("filters, which are not read".into());
        }
        if let Some(c) = m.compressor.as_ref().filter(|c| c.name != "zstd") {
            return Err(format!("compressor {}, which is not read (zstd is)", c.name));
        }
        Ok(Layout {
            shape: m.shape,
            dtype,
            chunk: m.chunks,
            prefix: None,
            separator: m.dimension_separator.unwrap_or_else(|| ".".into()),
            zstd: m.compressor.is_some(),
            inner: None,
            zero_fill: is_zero(&m.fill_value),
        })
    }

    fn of_v3(m: ZarrJson) -> Result<Self, String> {
        let dtype =
            crate::pickle::dtype_named(&m.data_type).ok_or_else(|| format!("data type {} is not read", m.data_type))?;
        if m.chunk_grid.name != "regular" {
            return Err(format!("a {} chunk grid, which is not read", m.chunk_grid.name));
        }
        let chunk = shape_of(&m.chunk_grid.configuration["chunk_shape"])?;
        let separator = match &m.chunk_key_encoding {
            Some(e) if e.name != "default" => return Err(format!("chunk keys encoded {}, which is not read", e.name)),
            Some(e) => e.configuration["separator"].as_str().unwrap_or("/").to_string(),
            None => "/".into(),
        };
        let (zstd, inner) = match &m.codecs[..] {
            [one] if one.name == "sharding_indexed" => {
                let c = &one.configuration;
                let inner = shape_of(&c["chunk_shape"])?;
                let codecs: Vec<Named> = serde_json::from_value(c["codecs"].clone()).map_err(|e| e.to_string())?;
                let index: Vec<Named> = serde_json::from_value(c["index_codecs"].clone()).map_err(|e| e.to_string())?;
                let crc = match &index[..] {
                    [b] if b.name == "bytes" => false,
                    [b, c] if b.name == "bytes" && c.name == "crc32c" => true,
                    _ => return Err("a shard index of codecs other than bytes and crc32c".into()),
                };
                if c["index_location"].as_str().is_some_and(|l| l != "end") {
                    return Err("a shard index at its start, which is not read".into());
                }
                (false, Some((inner, codecs_zstd(&codecs)?, crc)))
            }
            codecs => (codecs_zstd(codecs)?, None),
        };
        Ok(Layout {
            shape: m.shape,
            dtype,
            chunk,
            prefix: Some("c"),
            separator,
            zstd,
            inner,
            zero_fill: is_zero(&m.fill_value),
        })
    }

    /// A chunk's key after the array's name.
    fn key(&self, at: &[usize]) -> String {
        let indices = at.iter().map(usize::to_string).collect::<Vec<_>>().join(&self.separator);
        match (self.prefix, at.is_empty()) {
            (Some(c), true) => c.to_string(),
            (Some(c), false) => format!("{c}{}{indices}", self.separator),
            (None, true) => "0".into(),
            (None, false) => indices,
        }
    }
}

/// A JSON list of sizes.
fn shape_of(v: &serde_json::Value) -> Result<Vec<usize>, String> {
    serde_json::from_value(v.clone()).map_err(|_| format!("a chunk shape {v} that is not a list of sizes"))
}

/// Whether Zarr v3 array codecs compress with zstd: `bytes`
/// (little-endian), then `zstd` or nothing.
fn codecs_zstd(codecs: &[Named]) -> Result<bool, String> {
    let little = |c: &Named| c.name == "bytes" && c.configuration["endian"].as_str().is_none_or(|e| e == "little");
    match codecs {
        [b] if little(b) => Ok(false),
        [b, z] if little(b) && z.name == "zstd" => Ok(true),
        _ => Err(format!(
            "codecs {}, which are not read (bytes, little-endian, then zstd are)",
            codecs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Every array of the database, decompressed into one aligned buffer, and
/// the Flax tree of them (names `/`-joined from Orbax's `.`-joined keys).
fn arrays(db: &mut Db, values: &BTreeMap<Vec<u8>, Value>, key: Option<&str>) -> Result<OrbaxCheckpoint, String> {
    let mut layouts = Vec::new();
    for (k, v) in values {
        let (name, v3) = match (k.strip_suffix(b"/.zarray"), k.strip_suffix(b"/zarr.json")) {
            (Some(n), _) => (n, false),
            (_, Some(n)) => (n, true),
            _ => continue,
        };
        let name = String::from_utf8(name.to_vec()).map_err(|_| "an array name that is not UTF-8".to_string())?;
        let text = match v {
            Value::Inline(b) => &b[..],
            Value::Stored(f, o, l) => db.range(f, *o, *l)?,
        };
        let bad = |e: String| format!("array `{name}`: {e}");
        let layout = if v3 {
            let m: ZarrJson = serde_json::from_slice(text).map_err(|e| bad(format!("its zarr.json: {e}")))?;
            Layout::of_v3(m)
        } else {
            let m: ZArray = serde_json::from_slice(text).map_err(|e| bad(format!("its .zarray: {e}")))?;
            Layout::of_v2(m)
        }
        .map_err(bad)?;
        let inner_fits = layout.inner.as_ref().is_none_or(|(i, ..)| i.len() == layout.shape.len() && !i.contains(&0));
        if layout.chunk.len() != layout.shape.len() || layout.chunk.contains(&0) || !inner_fits {
            return Err(bad(format!("chunks {:?} for shape {:?}", layout.chunk, layout.shape)));
        }
        layouts.push((name, layout));
    }
    if layouts.is_empty() {
        return Err("no arrays (no .zarray or zarr.json metadata) in the OCDBT database".into());
    }
    // Each array at an 8-byte boundary of the buffer.
    let mut places = Vec::with_capacity(layouts.len());
    let mut total = 0usize;
    for (name, l) in &layouts {
        let len = l
            .shape
            .iter()
            .try_fold(l.dtype.bitsize() / 8, |a, &d| a.checked_mul(d))
            .filter(|&len| len <= isize::MAX as usize / 2)
            .ok_or_else(|| format!("array `{name}`: shape {:?} overflows", l.shape))?;
        places.push((total, len));
        total = total.checked_add(len.div_ceil(8) * 8).ok_or("arrays too large")?;
    }
    let stored: usize = values
        .iter()
        .filter(|(k, _)| !k.ends_with(b"/.zarray") && !k.ends_with(b"/zarr.json"))
        .map(|(_, v)| match v {
            Value::Inline(b) => b.len(),
            Value::Stored(_, _, l) => usize::try_from(*l).unwrap_or(usize::MAX),
        })
        .fold(0usize, usize::saturating_add);
    if let Some(why) = crate::fill::beyond_ratio(total, stored) {
        return Err(format!("the arrays' shapes make {total} bytes from {stored} stored: {why}"));
    }
    // Every data file opened first: the arrays are then decompressed side
    // by side, each into its own part of the buffer.
    for v in values.values() {
        if let Value::Stored(f, ..) = v {
            db.file(&f.path)?;
        }
    }
    let mut buffer = Aligned::zeroed(total).map_err(|e| format!("{total} bytes for the arrays: {e}"))?;
    let (db, parts) = (&*db, crate::fill::split(buffer.bytes_mut(), &places));
    crate::fill::side_by_side(&layouts, parts, total, |(name, l), out| {
        fill(db, values, name, l, out).map_err(|e| format!("array `{name}`: {e}"))
    })?;
    let all = layouts
        .iter()
        .zip(&places)
        .map(|((name, l), &(start, len))| {
            let info = TensorInfo { dtype: l.dtype, shape: l.shape.clone(), data_offsets: (start, start + len) };
            (name.replace('.', "/"), Leaf::Tensor(info, start..start + len))
        })
        .collect();
    let tree = crate::flax::model(buffer.as_ref(), all, key)?;
    Ok(OrbaxCheckpoint { buffer, tree })
}

/// The index (C order) of chunk number `c` of a grid.
fn chunk_at(mut c: usize, grid: &[usize]) -> Vec<usize> {
    let mut at = vec![0usize; grid.len()];
    for (a, &g) in at.iter_mut().zip(grid).rev() {
        *a = c % g;
        c /= g;
    }
    at
}

/// Decodes a stored block (zstd, or raw) into exactly `into`.
fn decode(stored: &[u8], zstd: bool, into: &mut [u8]) -> Result<(), String> {
    match zstd {
        true => zstd_into(stored, into),
        false if stored.len() == into.len() => {
            into.copy_from_slice(stored);
            Ok(())
        }
        false => Err(format!("holds {} bytes, not {}", stored.len(), into.len())),
    }
}

/// Writes array `name`'s values (C order) into `out`, chunk by chunk; a
/// chunk not stored is zeros where that is its fill value, else an error.
fn fill(db: &Db, values: &BTreeMap<Vec<u8>, Value>, name: &str, l: &Layout, out: &mut [u8]) -> Result<(), String> {
    let item = l.dtype.bitsize() / 8;
    let grid: Vec<usize> = l.shape.iter().zip(&l.chunk).map(|(&s, &c)| s.div_ceil(c)).collect();
    let block_len = |shape: &[usize]| shape.iter().try_fold(item, |a, &d| a.checked_mul(d)).ok_or("chunks overflow");
    let chunk_len = block_len(&l.chunk)?;
    let whole = l.inner.is_none() && l.chunk == l.shape;
    let mut scratch = Vec::new();
    for c in 0..grid.iter().product::<usize>() {
        let at = chunk_at(c, &grid);
        let key = l.key(&at);
        let stored = match values.get(format!("{name}/{key}").as_bytes()) {
            Some(Value::Inline(b)) => &b[..],
            Some(Value::Stored(f, o, len)) => db.opened(f, *o, *len)?,
            None if l.zero_fill => continue, // the buffer is zeros
            None => return Err(format!("chunk {key} is missing and its fill value is not zero")),
        };
        let origin: Vec<usize> = at.iter().zip(&l.chunk).map(|(&a, &c)| a * c).collect();
        let Some((inner, inner_zstd, crc)) = &l.inner else {
            if whole {
                decode(stored, l.zstd, out).map_err(|e| format!("chunk {key} {e}"))?;
                continue;
            }
            scratch.resize(chunk_len, 0);
            decode(stored, l.zstd, &mut scratch).map_err(|e| format!("chunk {key} {e}"))?;
            copy_block(&scratch, out, &l.shape, &l.chunk, &origin, item);
            continue;
        };
        // A shard: its inner chunks, then (offset, length) of each.
        let inner_grid: Vec<usize> = l.chunk.iter().zip(inner).map(|(&s, &i)| s.div_ceil(i)).collect();
        let n = inner_grid.iter().product::<usize>();
        let index_len = n.checked_mul(16).and_then(|b| b.checked_add(if *crc { 4 } else { 0 }));
        let index_at = index_len.and_then(|len| stored.len().checked_sub(len)).ok_or_else(|| {
            format!("shard {key}: {} bytes, too few for the index of its {n} inner chunks", stored.len())
        })?;
        let index = &stored[index_at..index_at + 16 * n];
        if *crc {
            let sum = u32::from_le_bytes(stored[index_at + 16 * n..].try_into().expect("4 bytes"));
            if crc32c(index) != sum {
                return Err(format!("shard {key}: an index whose CRC-32C does not match (damaged)"));
            }
        }
        let inner_len = block_len(inner)?;
        for (i, entry) in index.chunks_exact(16).enumerate() {
            let offset = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let length = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            let inner_at = chunk_at(i, &inner_grid);
            let origin: Vec<usize> = origin.iter().zip(&inner_at).zip(inner).map(|((&o, &a), &s)| o + a * s).collect();
            if origin.iter().zip(&l.shape).any(|(&o, &s)| o >= s) {
                continue; // past the array's edge
            }
            if (offset, length) == (u64::MAX, u64::MAX) {
                if l.zero_fill {
                    continue;
                }
                return Err(format!("shard {key}: inner chunk {i} is missing and its fill value is not zero"));
            }
            let bytes = offset
                .checked_add(length)
                .filter(|&e| e <= index_at as u64)
                .map(|e| &stored[offset as usize..e as usize])
                .ok_or_else(|| format!("shard {key}: inner chunk {i} at {offset}..+{length} runs past its data"))?;
            scratch.resize(inner_len, 0);
            decode(bytes, *inner_zstd, &mut scratch).map_err(|e| format!("shard {key}, inner chunk {i} {e}"))?;
            copy_block(&scratch, out, &l.shape, inner, &origin, item);
        }
    }
    Ok(())
}

/// Copies the part of a block (of shape `block`, C order, at `origin` of
/// the array) that lies inside the array (of `shape`) to its place in
/// `out`.
fn copy_block(chunk: &[u8], out: &mut [u8], shape: &[usize], block: &[usize], origin: &[usize], item: usize) {
    let d = shape.len();
    if d == 0 {
        out.copy_from_slice(&chunk[..item]);
        return;
    }
    let extent: Vec<usize> = (0..d).map(|i| block[i].min(shape[i] - origin[i])).collect();
    let run = extent[d - 1] * item;
    let rows: usize = extent[..d - 1].iter().product();
    let mut idx = vec![0usize; d - 1];
    for _ in 0..rows {
        let (mut src, mut dst) = (0usize, 0usize);
        for i in 0..d {
            let local = if i + 1 < d { idx[i] } else { 0 };
            src = src * block[i] + local;
            dst = dst * shape[i] + origin[i] + local;
        }
        out[dst * item..dst * item + run].copy_from_slice(&chunk[src * item..src * item + run]);
        for i in (0..d - 1).rev() {
            idx[i] += 1;
            if idx[i] < extent[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_placed_in_c_order() {
        // A 3 x 5 array in chunks of 2 x 2 (edge chunks padded).
        let (shape, chunks) = ([3usize, 5], [2usize, 2]);
        let mut out = vec![0u8; 15];
        for a in 0..2 {
            for b in 0..3 {
                let chunk: Vec<u8> = (0..4).map(|k| ((a * 2 + k / 2) * 5 + b * 2 + k % 2) as u8).collect::<Vec<_>>();
                copy_block(&chunk, &mut out, &shape, &chunks, &[a * 2, b * 2], 1);
            }
        }
        assert_eq!(out, (0..15).collect::<Vec<u8>>());
    }

    /// An encoded node: magic, length, version 0, uncompressed, `body`,
    /// CRC-32C.
    fn framed(magic: u32, body: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        out.extend(((16 + 2 + body.len()) as u64).to_le_bytes());
        out.extend([0, 0]);
        out.extend(body);
        let crc = crc32c(&out);
        out.extend(crc.to_le_bytes());
        out
    }

    /// A node of `height` whose `n` entries (empty keys) all point at the
    /// node at `child` (`len` bytes) of data file `f`; a leaf of one value
    /// when `height` is 0.
    fn node(height: u8, n: usize, child: (usize, usize)) -> Vec<u8> {
        let varint = |mut v: usize| {
            let mut out = Vec::new();
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        };
        if height == 0 {
            return framed(BTREE_MAGIC, &[0, 1, 1, 0, b'f', 1, 1, b'k', 1, 0, 7]);
        }
        let mut b = vec![height, 1, 1, 0, b'f'];
        b.extend(varint(n));
        b.extend(std::iter::repeat_n(0u8, (n - 1) + n + n)); // key prefix, suffix, common lengths
        b.extend(std::iter::repeat_n(0u8, n)); // data file 0
        for v in [child.0, child.1] {
            (0..n).for_each(|_| b.extend(varint(v)));
        }
        b.extend(std::iter::repeat_n(0u8, 3 * n)); // statistics
        framed(BTREE_MAGIC, &b)
    }

    /// Two levels of nodes that each point at the one below by 3000 paths
    /// (nine million visits of one leaf) stop at the walk's bound, not
    /// after the nine million.
    #[test]
    fn a_tree_of_shared_nodes_stops_at_the_walk_bound() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = node(0, 1, (0, 0));
        let middle = node(1, 3000, (0, leaf.len()));
        let mut f = leaf.clone();
        f.extend(&middle);
        std::fs::write(dir.path().join("f"), &f).unwrap();
        let file = DataFile { path: "f".into(), base: 0 };
        let mut db = Db::new(dir.path().to_path_buf());
        let mut out = BTreeMap::new();
        // The middle node alone: its 3000 paths to the leaf are one key.
        db.btree(
            &file,
            Ref { file: 0, offset: leaf.len() as u64, length: middle.len() as u64 },
            1,
            vec![],
            &mut out,
            0,
        )
        .unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), [b"k"]);
        let top = node(2, 3000, (leaf.len(), middle.len()));
        f.extend(&top);
        std::fs::write(dir.path().join("f"), &f).unwrap();
        let mut db = Db::new(dir.path().to_path_buf());
        let at = Ref { file: 0, offset: (leaf.len() + middle.len()) as u64, length: top.len() as u64 };
        let started = std::time::Instant::now();
        let e = db.btree(&file, at, 2, vec![], &mut out, 0).unwrap_err();
        assert!(e.contains("visits more than"), "{e}");
        assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    }
}
