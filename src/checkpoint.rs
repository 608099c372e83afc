//! Reading checkpoints: safetensors files through a memory map (zero-copy),
//! sharded Hugging Face directories, and collections of many checkpoints.
//!
//! The header is parsed in one pass into the `safetensors` crate's types and
//! validated here (header length, UTF-8 JSON, contiguous in-range offsets,
//! sizes matching shape x dtype, all with checked arithmetic), so every
//! error names the file and the tensor; this module also decodes the float
//! dtypes the analysis reads.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::error::{Error, Result};
use crate::keras::ModelConfig;
use crate::mapped::{Map, Stamp};
use crate::natsort::sort_natural_by;

/// Name of the index file of a sharded Hugging Face checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The same for shards written by `torch.save` (`save_pretrained` with
/// `safe_serialization=False`).
pub const TORCH_SHARD_INDEX: &str = "pytorch_model.bin.index.json";

/// The file that makes a directory a Hugging Face Trainer checkpoint
/// (`checkpoint-500/`): the model's weights beside the Trainer's own state
/// (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `training_args.bin`),
/// read as one checkpoint, the model, with this file's step and logs
/// ([`crate::layouts::trainer_metadata`]).
pub const TRAINER_STATE: &str = "trainer_state.json";

/// The floating-point storage types the analysis reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE double precision.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// Files smaller than this are read into memory; larger ones are mapped
/// (for a small file, one read costs less than mapping and unmapping).
const MAP_MIN_BYTES: u64 = 1 << 20;

/// Files are first read this far, in one call: a checkpoint of a model zoo
/// fits, and a read of a regular file that returns less than it asked for
/// has reached the end, so the file's size is never asked for.
const FIRST_READ_BYTES: usize = 64 << 10;

/// A mapped file up to this size that is not in the page cache is read in
/// by a thread of its own as soon as it is mapped (`MADV_POPULATE_READ`):
/// one stream from disk while the file is measured, rather than a fault
/// and a short read at a time. Larger files are read on first touch (read
/// all at once, their first pages could be evicted before use).
#[cfg(target_os = "linux")]
const POPULATE_MAX_BYTES: u64 = 1 << 30;

/// A file's bytes: mapped (zero-copy) or, for small files, read; or an
/// in-memory tensor's, held by their owner (a Python array).
pub(crate) enum Bytes {
    /// Shared with the thread that populates it, which may outlive the
    /// checkpoint by a little.
    Mapped(std::sync::Arc<Map>),
    Read(ReadBuf),
    Held(Box<dyn AsRef<[u8]> + Send + Sync>),
    /// A row of a flat-matrix zoo's mapped matrix.
    Row(crate::flat::RowBytes),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => &m[..],
            Bytes::Read(r) => &r.buf[..r.len],
            Bytes::Held(h) => (**h).as_ref(),
            Bytes::Row(r) => r.bytes(),
        }
    }
}

impl Bytes {
    /// Whether the file under these bytes changed since they were mapped
    /// (read bytes are checked as they are read, held ones are their
    /// owner's).
    pub(crate) fn changed(&self) -> bool {
        match self {
            Bytes::Mapped(m) => m.changed(),
            Bytes::Read(_) | Bytes::Held(_) => false,
            Bytes::Row(r) => r.zoo.changed(),
        }
    }
}

thread_local! {
    /// The buffer the thread's last small file was read into.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A small file's bytes, read into its thread's spare buffer, which it
/// gives back when dropped: a scan of thousands of small files reads them
/// into one allocation per thread, zeroed once.
pub(crate) struct ReadBuf {
    /// At least `len` bytes, all initialised.
    buf: Vec<u8>,
    len: usize,
}

impl ReadBuf {
    /// Reads up to `max` bytes of `file` in one call.
    fn read_some(mut file: &File, max: usize) -> std::io::Result<Self> {
        let mut buf = SPARE.take();
        if buf.len() < max {
            buf.resize(max, 0);
        }
        loop {
            match std::io::Read::read(&mut file, &mut buf[..max]) {
                Ok(len) => return Ok(ReadBuf { buf, len }),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads on to `len` bytes in all, the file's size when it was opened:
    /// a file that ends before (or began longer) was cut short or rewritten
    /// meanwhile ([`crate::mapped::changed`]).
    fn read_to(mut self, mut file: &File, len: usize) -> std::io::Result<Self> {
        if len < self.len {
            return Err(crate::mapped::changed());
        }
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        match std::io::Read::read_exact(&mut file, &mut self.buf[self.len..len]) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(crate::mapped::changed()),
            other => other?,
        }
        self.len = len;
        Ok(self)
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let _ = SPARE.try_with(|spare| spare.set(buf));
    }
}

/// A tensor in memory, for [`Checkpoint::from_memory`].
pub struct MemoryTensor {
    /// Its name (as in a state dict).
    pub name: String,
    /// Its dtype as safetensors names it: `F32`, `F16`, `BF16`, `F64`, or
    /// an integer or bool type (read as a buffer, never as weights).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes, C order, little-endian, held by their owner.
    pub data: Box<dyn AsRef<[u8]> + Send + Sync>,
}

/// One safetensors file.
struct Shard {
    path: PathBuf,
    map: Bytes,
    /// Offset of the data section (8 + header length).
    data_start: usize,
}

/// Where one tensor lives.
struct Entry {
    shard: usize,
    info: TensorInfo,
    /// Where the tensor comes in the writer's order, for formats whose
    /// names do not give it (Keras' HDF5); 0 in every other format, whose
    /// tensors come in natural order of names.
    rank: usize,
    /// An aligned copy of an f32 or f64 tensor stored unaligned (Flax's
    /// msgpack, most `.npz` entries), made when it is first read: the
    /// engines read aligned values in place, and would otherwise decode
    /// them a block at a time, two to three times slower.
    aligned: std::sync::OnceLock<Aligned>,
}

/// An aligned copy of a tensor's bytes: words on the heap, or, from a
/// megabyte up, an anonymous map in 2 MB pages where the kernel gives them
/// (a copy into fresh 4 KB pages costs a page fault per 4 KB, three times
/// the copy itself).
pub(crate) enum Aligned {
    Words(Box<[u64]>, usize),
    Pages(memmap2::MmapMut),
}

impl Aligned {
    /// `len` zero bytes, 8-byte aligned: heap words when small, else an
    /// anonymous map advised to 2 MB pages (a fraction of the faults).
    pub(crate) fn zeroed(len: usize) -> std::io::Result<Self> {
        if len < MAP_MIN_BYTES as usize {
            return Ok(Aligned::Words(vec![0u64; len.div_ceil(8)].into_boxed_slice(), len));
        }
        let map = memmap2::MmapMut::map_anon(len)?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Aligned::Pages(map))
    }

    fn of(bytes: &[u8]) -> std::io::Result<Self> {
        let mut aligned = Self::zeroed(bytes.len())?;
        aligned.bytes_mut().copy_from_slice(bytes);
        Ok(aligned)
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Aligned::Words(words, len) => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
            Aligned::Pages(map) => map,
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Aligned::Words(words, len) => &mut bytemuck::cast_slice_mut::<u64, u8>(words)[..*len],
            Aligned::Pages(map) => map,
        }
    }
}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Entry {
    fn new(shard: usize, info: TensorInfo) -> Self {
        Entry { shard, info, rank: 0, aligned: std::sync::OnceLock::new() }
    }
}

/// An opened checkpoint: one safetensors file, or the shards of a sharded
/// directory, with its tensors and `__metadata__` map.
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
    metadata: BTreeMap<String, String>,
    /// True when the reader already took `--key`'s entry (a PyTorch
    /// checkpoint's nested dict).
    keyed: bool,
    /// The wrappers' prefix taken off every name ([`WRAPPERS`]), or "".
    wrapper: String,
    /// The model's own description of its layers, where the file keeps one
    /// (a Keras model's config).
    model_config: Option<ModelConfig>,
    /// The file's identity, for one file where the platform has one.
    identity: Option<FileIdentity>,
    /// The BatchNorm epsilon the file's framework defaults to, where its
    /// format tells the framework and the layout's default would be
    /// wrong (Flax: 1e-5, in Keras' layout).
    norm_eps: Option<f64>,
    /// The weights computed from a reparametrization's parts (weight
    /// norm, spectral norm), each added under its module's weight name.
    reparametrized: Vec<crate::reparam::Reparametrized>,
    /// What opening the file could not read that a reader should know of
    /// (a SavedModel's damaged Keras metadata).
    opening_notes: Vec<String>,
    /// The layout the file's format fixes, whatever its names: TensorFlow
    /// stores conv kernels `[kh, kw, in, out]` and dense ones `[in, out]`
    /// (a TF-slim checkpoint's `conv1/weights` too).
    native_layout: Option<crate::spec::Layout>,
}

/// A file's identity, as opening it found it (unix): the same file under
/// two names has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// Device and inode.
    pub id: (u64, u64),
    /// Number of hard links (names) it has.
    pub links: u64,
}

/// Prefixes a training wrapper puts before every name of the model's
/// state_dict: DataParallel's and DistributedDataParallel's `module.`,
/// `torch.compile`'s `_orig_mod.` (in either order when both wrap it).
const WRAPPERS: [&str; 2] = ["module.", "_orig_mod."];

/// A borrowed view of one tensor's bytes, with its name, dtype and shape.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    /// The tensor's name in the checkpoint.
    pub name: &'a str,
    /// The file holding it.
    pub file: &'a Path,
    /// Its storage type.
    pub dtype: DType,
    /// Its shape, as stored.
    pub shape: &'a [usize],
    bytes: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw little-endian bytes (for upload to the GPU as stored).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Decodes elements `start .. start + out.len()` into `out`, widening to
    /// f64. Panics if the range is out of bounds (callers size it from
    /// [`Tensor::len`]).
    pub fn decode_into(&self, start: usize, out: &mut [f64]) {
        let size = self.dtype.size();
        let bytes = &self.bytes[start * size..(start + out.len()) * size];
        match self.dtype {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                }
            }
            DType::F64 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().expect("8-byte chunk"));
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f64();
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f64();
                }
            }
        }
    }

    /// The elements in place, when they are f32 stored aligned on a
    /// little-endian machine (as safetensors writers align them): the
    /// zero-copy path of the CPU engine.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// The elements in place, when they are f64 stored aligned (a folded
    /// copy made by [`Tensor::f64_like`], or an f64 checkpoint).
    pub fn as_f64(&self) -> Option<&'a [f64]> {
        if self.dtype != DType::F64 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// A tensor over `bytes` for the engines' unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(name: &'a str, dtype: DType, shape: &'a [usize], bytes: &'a [u8]) -> Tensor<'a> {
        Tensor { name, file: Path::new("test"), dtype, shape, bytes }
    }

    /// A view of f64 values held elsewhere (a BatchNorm-folded copy),
    /// named and shaped as `like`.
    pub fn f64_like(values: &'a [f64], like: &Tensor<'a>) -> Tensor<'a> {
        Tensor {
            name: like.name,
            file: like.file,
            dtype: DType::F64,
            shape: like.shape,
            bytes: bytemuck::cast_slice(values),
        }
    }

    /// All elements widened to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        let mut v = vec![0.0; self.len()];
        self.decode_into(0, &mut v);
        v
    }
}

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, a sharded directory (with
    /// `model.safetensors.index.json`), that index file itself, or a
    /// directory holding a single `model.safetensors`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_as(path, None)
    }

    /// A checkpoint of these parts, not yet keyed or unwrapped.
    fn of(
        path: PathBuf,
        shards: Vec<Shard>,
        tensors: HashMap<String, Entry>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Checkpoint {
            path,
            shards,
            tensors,
            metadata,
            keyed: false,
            wrapper: String::new(),
            model_config: None,
            identity: None,
            norm_eps: None,
            reparametrized: Vec::new(),
            opening_notes: Vec::new(),
            native_layout: None,
        }
    }

    /// Opens a checkpoint, taking the weights under `key` (`--key`) when
    /// given: tensors named `KEY.*`, their names without the prefix (a
    /// PyTorch checkpoint's nested dicts are named so, flattened with `.`).
    pub fn open_as(path: impl AsRef<Path>, key: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let ck = Self::open_file(path, key)?;
        let mut ck = match key {
            Some(k) if !ck.keyed => ck.select(k)?,
            _ => ck,
        };
        ck.unwrap_names();
        ck.reparametrize()?;
        Ok(ck)
    }

    /// Takes a training wrapper's prefix ([`WRAPPERS`]) off every name
    /// when every name has it: the state_dict of a model saved through
    /// DataParallel or `torch.compile` names its tensors as the model
    /// does. A name asked for with the prefix still finds its tensor.
    fn unwrap_names(&mut self) {
        while let Some(p) =
            WRAPPERS.iter().find(|p| !self.tensors.is_empty() && self.tensors.keys().all(|n| n.starts_with(*p)))
        {
            let all = std::mem::take(&mut self.tensors);
            self.tensors = all.into_iter().map(|(n, e)| (n[p.len()..].to_string(), e)).collect();
            self.wrapper.push_str(p);
        }
    }

    /// A tensor's entry by its name, with or without the wrappers' prefix.
    fn entry(&self, name: &str) -> Option<(&String, &Entry)> {
        self.tensors.get_key_value(name).or_else(|| {
            self.tensors.get_key_value(name.strip_prefix(self.wrapper.as_str()).filter(|_| !self.wrapper.is_empty())?)
        })
    }

    /// The tensors named `key.*`, renamed without the prefix.
    fn select(mut self, key: &str) -> Result<Self> {
        let prefix = format!("{key}.");
        let all = std::mem::take(&mut self.tensors);
        let mut tops: Vec<String> = all.keys().map(|n| n.split(['.', '/']).next().unwrap_or(n).to_string()).collect();
        self.tensors = all.into_iter().filter_map(|(n, e)| Some((n.strip_prefix(&prefix)?.to_string(), e))).collect();
        if self.tensors.is_empty() {
            sort_natural_by(&mut tops, |t| t);
            tops.dedup();
            return Err(Error::Graph {
                path: self.path,
                reason: format!(
                    "--key {key}: no tensors named `{prefix}*` (the tensors' first names: {})",
                    tops.join(", ")
                ),
            });
        }
        Ok(self)
    }

    fn open_file(path: &Path, key: Option<&str>) -> Result<Self> {
        if let Some((matrix, row)) = crate::flat::split(path) {
            return Self::open_row(path, &matrix, row);
        }
        if let Some(e) = crate::flat::matrix_error(path) {
            return Err(e);
        }
        if path.file_name().is_some_and(|n| n == SHARD_INDEX || n == TORCH_SHARD_INDEX) {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Self::open_sharded(dir, path);
        }
        let (bytes, identity) = match read_file(path) {
            Ok(Some(read)) => read,
            Ok(None) => return Self::open_dir(path, key),
            Err(_) if path.is_dir() => return Self::open_dir(path, key),
            // A TensorFlow checkpoint named by its prefix (`cp-0002.ckpt`,
            // as TensorFlow's own functions take it): its index.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return match crate::tf::index_of_prefix(path) {
                    Some(index) => Self::open_file(&index, key),
                    None => Err(Error::Io { path: path.to_path_buf(), error }),
                };
            }
            Err(error) if crate::mapped::is_changed(&error) => return Err(Error::Changed { path: path.to_path_buf() }),
            Err(error) => return Err(Error::Io { path: path.to_path_buf(), error }),
        };
        // A file cut short under its map reads as zeros: that, not what the
        // zeros look like, is the error.
        let mapped = match &bytes {
            Bytes::Mapped(m) => Some(std::sync::Arc::clone(m)),
            _ => None,
        };
        let mut ck = Self::open_bytes(path, bytes, key).map_err(|e| match mapped {
            Some(m) if m.changed() => Error::Changed { path: path.to_path_buf() },
            _ => e,
        })?;
        ck.identity = identity;
        Ok(ck)
    }

    /// A checkpoint file's bytes, read as the format they are in.
    fn open_bytes(path: &Path, bytes: Bytes, key: Option<&str>) -> Result<Self> {
        if crate::hdf5::is_hdf5(&bytes) || crate::keras::is_keras_zip(&bytes) {
            return Self::open_keras(path, bytes);
        }
        if crate::numpy::is_npz(&bytes) {
            let n =
                crate::numpy::read_npz(&bytes).map_err(|reason| Error::Numpy { path: path.to_path_buf(), reason })?;
            return Ok(Self::from_arrays(path, bytes, n));
        }
        if bytes.starts_with(crate::numpy::MAGIC) {
            let n =
                crate::numpy::read_npy(&bytes).map_err(|reason| Error::Numpy { path: path.to_path_buf(), reason })?;
            return Ok(Self::from_arrays(path, bytes, n));
        }
        if crate::zip::is_zip(&bytes) {
            return Self::open_torch(path, bytes, key);
        }
        if crate::torch::is_legacy(&bytes) {
            return Err(Error::Torch {
                path: path.to_path_buf(),
                reason: "the legacy format of torch < 1.6, which is read only by executing it: load it in Python \
                         and save it again with torch.save (torch >= 1.6 writes the zip format), or as safetensors"
                    .into(),
            });
        }
        if crate::flax::is_msgpack(&bytes) {
            return Self::open_flax(path, bytes, key);
        }
        if crate::tf::is_index(&bytes) && path.extension().is_some_and(|e| e == "index") {
            return Self::open_tf(path, &bytes);
        }
        // Safetensors has no magic bytes: a file that is not named as one
        // and cannot be one is in a format not read, not a broken safetensors.
        let named = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        if !named && !could_be_safetensors(&bytes) {
            return Err(Error::UnknownFormat { path: path.to_path_buf(), what: beginning(&bytes) });
        }
        let (shard, header) = parse_shard(path, bytes)?;
        let mut tensors = HashMap::new();
        let metadata = record_tensors(path, header, 0, &mut tensors)?;
        Ok(Checkpoint::of(path.to_path_buf(), vec![shard], tensors, metadata))
    }

    /// A `torch.save` zip archive: tensors read in place from the archive's
    /// stored entries, strided views from a buffer of their own.
    fn open_torch(path: &Path, bytes: Bytes, key: Option<&str>) -> Result<Self> {
        let t = crate::torch::read(&bytes, key).map_err(|reason| Error::Torch { path: path.to_path_buf(), reason })?;
        let mut ck = Self::from_parts(path, bytes, t.tensors, t.gathered, t.metadata);
        ck.keyed = key.is_some();
        Ok(ck)
    }

    /// A TensorFlow checkpoint: its index read, its data files mapped, the
    /// weights read in place from them, top-level scalars as columns.
    fn open_tf(path: &Path, index: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::TensorFlow { path: path.to_path_buf(), reason };
        let bundle = crate::tf::read_index(path, index).map_err(bad)?;
        let mut shards = Vec::with_capacity(bundle.data_files.len());
        for file in &bundle.data_files {
            let map = data_file(file, &file.display().to_string(), bad)?;
            shards.push(Shard { path: file.clone(), map, data_start: 0 });
        }
        let files: Vec<&[u8]> = shards.iter().map(|s| &s.map[..]).collect();
        if let Some(t) = bundle.tensors.iter().chain(&bundle.scalars).find(|t| t.range.1 > files[t.shard].len()) {
            return Err(bad(format!(
                "tensor `{}`: bytes {}..{} lie past the end of `{}` ({} bytes; cut short?)",
                t.name,
                t.range.0,
                t.range.1,
                bundle.data_files[t.shard].display(),
                files[t.shard].len()
            )));
        }
        let metadata = crate::tf::metadata(&bundle, &files);
        // A Keras 2 SavedModel's variables: Keras' names and the model's
        // config, from the `keras_metadata.pb` beside them.
        let mut opening_notes = Vec::new();
        let (mut names, model_config) = match crate::saved_model::metadata_beside(path) {
            None => (HashMap::new(), None),
            Some(meta) => match Self::saved_model(&meta, bundle.object_graph, &files) {
                Ok(m) => (m.names, Some(m.config)),
                Err(why) => {
                    opening_notes.push(format!(
                        "`{}` was not read ({why}): the weights keep the checkpoint's object paths as names, and \
                         the graph is discovered",
                        meta.display()
                    ));
                    (HashMap::new(), None)
                }
            },
        };
        let mut tensors = HashMap::with_capacity(bundle.tensors.len());
        for t in bundle.tensors {
            let mut shape = t.shape;
            let name = match names.remove(&t.name) {
                Some(k) if k.depthwise => crate::keras::as_grouped(&mut shape).map(|()| k.name).map_err(bad)?,
                Some(k) => k.name,
                None => t.name,
            };
            let info = TensorInfo { dtype: t.dtype, shape, data_offsets: t.range };
            if tensors.contains_key(&name) {
                return Err(bad(format!("tensor `{name}` appears twice")));
            }
            tensors.insert(name, Entry::new(t.shard, info));
        }
        let mut ck = Checkpoint::of(path.to_path_buf(), shards, tensors, metadata);
        ck.model_config = model_config;
        ck.opening_notes = opening_notes;
        ck.native_layout = Some(crate::spec::Layout::Keras);
        Ok(ck)
    }

    /// The Keras metadata at `meta` read with the checkpoint's object
    /// graph (a string tensor at `graph` in `files`).
    fn saved_model(
        meta: &Path,
        graph: Option<(usize, (usize, usize))>,
        files: &[&[u8]],
    ) -> std::result::Result<crate::saved_model::SavedModel, String> {
        let (shard, (start, end)) = graph.ok_or("the checkpoint keeps no object graph")?;
        let bytes = files.get(shard).and_then(|f| f.get(start..end));
        let graph = crate::tf::string_value(bytes.ok_or("the object graph lies past the end of its data file")?)?;
        crate::saved_model::read(meta, graph)
    }

    /// A Flax msgpack file: the model's `params` and `batch_stats` (or the
    /// tree under `key`), in place.
    fn open_flax(path: &Path, bytes: Bytes, key: Option<&str>) -> Result<Self> {
        let f = crate::flax::read(&bytes, key).map_err(|reason| Error::Flax { path: path.to_path_buf(), reason })?;
        Ok(Self::from_flax_tree(path, bytes, f, key))
    }

    /// A Flax tree's checkpoint (its tensors ranges of `bytes`): `key`
    /// already taken, Flax's BatchNorm epsilon.
    fn from_flax_tree(path: &Path, bytes: Bytes, tree: crate::flax::FlaxCheckpoint, key: Option<&str>) -> Self {
        let mut ck = Self::from_parts(path, bytes, tree.tensors, tree.gathered, tree.metadata);
        ck.keyed = key.is_some();
        ck.norm_eps = Some(crate::graph::DEFAULT_EPS);
        ck
    }

    /// An Orbax checkpoint directory: its arrays decompressed into one
    /// buffer, read as a Flax tree (`params` and `batch_stats`, or the tree
    /// under `key`).
    fn open_orbax(path: &Path, key: Option<&str>) -> Result<Self> {
        let o = crate::orbax::read(path, key).map_err(|e| match e {
            crate::orbax::ReadError::Format(reason) => Error::Orbax { path: path.to_path_buf(), reason },
            crate::orbax::ReadError::Changed => Error::Changed { path: path.to_path_buf() },
        })?;
        Ok(Self::from_flax_tree(path, Bytes::Held(Box::new(o.buffer)), o.tree, key))
    }

    /// A PyTorch distributed checkpoint folder: its plan read, its data
    /// files mapped, tensors saved whole read in place, those saved in
    /// chunks put back together into one buffer.
    fn open_dcp(path: &Path, key: Option<&str>) -> Result<Self> {
        let bad = |reason: String| Error::Torch {
            path: path.to_path_buf(),
            reason: format!("distributed checkpoint: {reason}"),
        };
        let meta = read_whole(&path.join(crate::dcp::METADATA), crate::dcp::MAX_METADATA)
            .map_err(|e| bad(format!("`{}`: {e}", crate::dcp::METADATA)))?;
        let plan = crate::dcp::plan(&meta).map_err(bad)?;
        let mut shards = Vec::with_capacity(plan.files.len() + 1);
        for name in &plan.files {
            let file = path.join(name);
            let map = data_file(&file, name, bad)?;
            shards.push(Shard { path: file, map, data_start: 0 });
        }
        let files: Vec<&[u8]> = shards.iter().map(|s| &s.map[..]).collect();
        let d = crate::dcp::read(plan, &files, key).map_err(bad)?;
        let gathered_shard = shards.len();
        let mut tensors = HashMap::with_capacity(d.tensors.len());
        for (name, mut info, place) in d.tensors {
            let (shard, range) = match place {
                crate::dcp::DcpPlace::File(f, s, e) => (f, (s, e)),
                crate::dcp::DcpPlace::Gathered(s, e) => (gathered_shard, (s, e)),
            };
            info.data_offsets = range;
            tensors.insert(name, Entry::new(shard, info));
        }
        if !AsRef::<[u8]>::as_ref(&d.gathered).is_empty() {
            shards.push(Shard { path: path.to_path_buf(), map: Bytes::Held(Box::new(d.gathered)), data_start: 0 });
        }
        // Lightning's FSDP strategy keeps the rest of its checkpoint (epoch,
        // global step, hyperparameters, the monitored score) in `meta.pt`.
        let mut metadata = d.metadata;
        let mut notes = Vec::new();
        let meta_pt = path.join(crate::dcp::LIGHTNING_META);
        if meta_pt.is_file() {
            let columns = read_file(&meta_pt).map_err(|e| e.to_string()).and_then(|read| match read {
                Some((bytes, _)) => crate::torch::columns(&bytes),
                None => Err("a folder".into()),
            });
            match columns {
                Ok(columns) => columns.into_iter().for_each(|(k, v)| {
                    metadata.entry(k).or_insert(v);
                }),
                Err(why) => notes.push(format!(
                    "`{}` was not read ({why}): the checkpoint's epoch, step and hyperparameters are not columns",
                    meta_pt.display()
                )),
            }
        }
        let mut ck = Checkpoint::of(path.to_path_buf(), shards, tensors, metadata);
        ck.keyed = key.is_some();
        ck.opening_notes = notes;
        Ok(ck)
    }

    /// A Keras weight file's tensors, in place, in the order Keras wrote
    /// them.
    fn open_keras(path: &Path, bytes: Bytes) -> Result<Self> {
        let file = crate::keras::read(&bytes).map_err(|reason| Error::Keras { path: path.to_path_buf(), reason })?;
        let weights = file.weights;
        let order: Vec<String> = weights.iter().map(|w| w.name.clone()).collect();
        let found = weights
            .into_iter()
            .map(|w| {
                let info = TensorInfo { dtype: w.dtype, shape: w.shape, data_offsets: (0, 0) };
                (w.name, info, crate::torch::Place::Archive(w.start, w.end))
            })
            .collect();
        let mut ck = Self::from_parts(path, bytes, found, Vec::new(), BTreeMap::new());
        for (rank, name) in order.iter().enumerate() {
            if let Some(e) = ck.tensors.get_mut(name) {
                e.rank = rank;
            }
        }
        ck.model_config = file.config;
        Ok(ck)
    }

    /// A NumPy file's arrays, in place or gathered likewise.
    fn from_arrays(path: &Path, bytes: Bytes, n: crate::numpy::NumpyCheckpoint) -> Self {
        let tensors = n
            .arrays
            .into_iter()
            .map(|a| (a.name, TensorInfo { dtype: a.dtype, shape: a.shape, data_offsets: (0, 0) }, a.place))
            .collect();
        Self::from_parts(path, bytes, tensors, n.gathered, BTreeMap::new())
    }

    /// A checkpoint of one file whose tensors lie in the file itself (shard
    /// 0) or in a buffer of copies (shard 1).
    fn from_parts(
        path: &Path,
        bytes: Bytes,
        found: Vec<(String, TensorInfo, crate::torch::Place)>,
        gathered: Vec<u8>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let mut tensors = HashMap::with_capacity(found.len());
        for (name, mut info, place) in found {
            let (shard, range) = match place {
                crate::torch::Place::Archive(s, e) => (0, (s, e)),
                crate::torch::Place::Gathered(s, e) => (1, (s, e)),
            };
            info.data_offsets = range;
            tensors.insert(name, Entry::new(shard, info));
        }
        let mut shards = vec![Shard { path: path.to_path_buf(), map: bytes, data_start: 0 }];
        if !gathered.is_empty() {
            // (Not for an empty buffer: a dropped ReadBuf becomes its
            // thread's spare read buffer.)
            let len = gathered.len();
            shards.push(Shard {
                path: path.to_path_buf(),
                map: Bytes::Read(ReadBuf { buf: gathered, len }),
                data_start: 0,
            });
        }
        Checkpoint::of(path.to_path_buf(), shards, tensors, metadata)
    }

    /// A checkpoint of tensors in memory (a network being trained, handed
    /// over from Python), named `path` in tables and errors. Each tensor's
    /// bytes stay where their owner keeps them (zero-copy); their length is
    /// checked against shape x dtype.
    pub fn from_memory(
        path: impl Into<PathBuf>,
        tensors: Vec<MemoryTensor>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let path = path.into();
        let mut shards = Vec::with_capacity(tensors.len());
        let mut index = HashMap::with_capacity(tensors.len());
        for t in tensors {
            let bad = |reason: String| Error::Malformed {
                path: path.clone(),
                reason: format!("tensor `{}`: {reason}", t.name),
            };
            let dtype = serde_json::from_value::<StDtype>(serde_json::Value::String(t.dtype.clone()))
                .ok()
                .filter(|d| d.bitsize() % 8 == 0)
                .ok_or_else(|| bad(format!("unknown dtype {}", t.dtype)))?;
            let want = t
                .shape
                .iter()
                .try_fold(dtype.bitsize() / 8, |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad(format!("shape {:?} is too large", t.shape)))?;
            let len = (*t.data).as_ref().len();
            if len != want {
                return Err(bad(format!("{len} bytes for shape {:?} of {}", t.shape, t.dtype)));
            }
            let info = TensorInfo { dtype, shape: t.shape, data_offsets: (0, len) };
            if index.insert(t.name.clone(), Entry::new(shards.len(), info)).is_some() {
                return Err(bad("given twice".into()));
            }
            shards.push(Shard { path: path.clone(), map: Bytes::Held(t.data), data_start: 0 });
        }
        let mut ck = Checkpoint::of(path, shards, index, metadata);
        ck.reparametrize()?;
        Ok(ck)
    }

    /// Computes each weight kept reparametrized ([`crate::reparam`]) from
    /// its parts, in f64, into one buffer of its own, and adds it under
    /// its module's weight name (`conv.weight`).
    fn reparametrize(&mut self) -> Result<()> {
        // One pass over the names, in no order, then the few found sorted.
        let mut found = crate::reparam::find(self.tensors.keys().map(String::as_str), |n| self.tensors.contains_key(n));
        if found.is_empty() {
            return Ok(());
        }
        sort_natural_by(&mut found, |r| &r.name);
        let mut values: Vec<f64> = Vec::new();
        let mut added = Vec::with_capacity(found.len());
        for r in &found {
            let parts = r
                .parts
                .iter()
                .map(|p| self.tensor(p).map(|t| (t.to_f64(), t.shape.to_vec())))
                .collect::<Result<Vec<_>>>()?;
            let weight = crate::reparam::compute(r, &parts).map_err(|reason| Error::Graph {
                path: self.path.clone(),
                reason: format!(
                    "`{}`, kept as its {} ({}): {reason}",
                    r.name,
                    r.kind.describe(),
                    crate::graph::list(&r.parts)
                ),
            })?;
            let start = values.len() * 8;
            values.extend(weight);
            let shape = parts[r.kind.shaped_like()].1.clone();
            added.push((
                r.name.clone(),
                TensorInfo { dtype: StDtype::F64, shape, data_offsets: (start, values.len() * 8) },
            ));
        }
        let mut buffer =
            Aligned::zeroed(values.len() * 8).map_err(|error| Error::Io { path: self.path.clone(), error })?;
        buffer.bytes_mut().copy_from_slice(bytemuck::cast_slice(&values));
        let shard = self.shards.len();
        self.shards.push(Shard { path: self.path.clone(), map: Bytes::Held(Box::new(buffer)), data_start: 0 });
        for (name, info) in added {
            self.tensors.insert(name, Entry::new(shard, info));
        }
        self.reparametrized = found;
        Ok(())
    }

    /// The weight computed from tensor `name` (a reparametrization's
    /// part), and how.
    pub fn part_of(&self, name: &str) -> Option<(&str, &'static str)> {
        let r = self.reparametrized.iter().find(|r| r.parts.iter().any(|p| p == name))?;
        Some((&r.name, r.kind.describe()))
    }

    /// Notes on what opening the file computed, or could not read, that a
    /// reader of its measures should know.
    pub fn notes(&self) -> Vec<String> {
        self.opening_notes.iter().cloned().chain(self.reparametrized_note()).collect()
    }

    /// A note naming the weights computed from a reparametrization, if any.
    fn reparametrized_note(&self) -> Option<String> {
        let names: Vec<String> =
            self.reparametrized.iter().map(|r| format!("`{}` ({})", r.name, r.kind.describe())).collect();
        (!names.is_empty()).then(|| {
            format!(
                "weights computed from their reparametrization as torch computes them in eval mode (weight norm: g v \
                 / ||v||; spectral norm: W / sigma, sigma = u . W v from the stored u and v; pruning: W * mask): {}",
                names.join(", ")
            )
        })
    }

    /// Row `row` of a flat-matrix zoo: its tensors in place in the mapped
    /// matrix, its metrics row as metadata.
    fn open_row(path: &Path, matrix: &Path, row: usize) -> Result<Self> {
        let zoo = crate::flat::Zoo::get(matrix)?;
        if row >= zoo.rows {
            return Err(Error::FlatZoo {
                path: matrix.to_path_buf(),
                reason: format!("row {row} asked for; the matrix has {} rows", zoo.rows),
            });
        }
        let metadata = zoo.metadata(row)?;
        let item = zoo.dtype.bitsize() / 8;
        let tensors = zoo
            .layout
            .iter()
            .map(|v| {
                let info = TensorInfo {
                    dtype: zoo.dtype,
                    shape: v.shape.clone(),
                    data_offsets: (v.start * item, v.end * item),
                };
                (v.name.clone(), Entry::new(0, info))
            })
            .collect();
        let bytes = Bytes::Row(crate::flat::RowBytes { zoo, row });
        let shard = Shard { path: path.to_path_buf(), map: bytes, data_start: 0 };
        Ok(Checkpoint::of(path.to_path_buf(), vec![shard], tensors, metadata))
    }

    fn open_dir(path: &Path, key: Option<&str>) -> Result<Self> {
        if crate::orbax::is_orbax_dir(path) {
            return Self::open_orbax(path, key);
        }
        if crate::dcp::is_dcp_dir(path) {
            return Self::open_dcp(path, key);
        }
        // Where both are (Hugging Face often writes both), the safetensors.
        for index in [SHARD_INDEX, TORCH_SHARD_INDEX].map(|i| path.join(i)) {
            if index.is_file() {
                return Self::open_sharded(path, &index);
            }
        }
        // `save_pretrained` writes one of these, unsharded.
        for single in ["model.safetensors", "pytorch_model.bin"].map(|f| path.join(f)) {
            if single.is_file() {
                let mut ck = Self::open(&single)?;
                ck.path = path.to_path_buf();
                return Ok(ck);
            }
        }
        // A TensorFlow SavedModel folder (Keras 2's `model.save("dir")`):
        // its variables, named as a scan of the folder names them.
        let variables = path.join("variables").join("variables.index");
        if variables.is_file() {
            return Self::open(&variables);
        }
        let adapter = match path.join("adapter_model.safetensors").is_file() {
            true => {
                " (it holds adapter_model.safetensors, a PEFT adapter's weights: scan that file to measure the adapter)"
            }
            false => "",
        };
        let what = format!(
            "a directory with neither {SHARD_INDEX}, {TORCH_SHARD_INDEX}, model.safetensors, pytorch_model.bin, a \
             SavedModel's variables/variables.index, a distributed checkpoint's .metadata and .distcp files nor an \
             Orbax checkpoint's _CHECKPOINT_METADATA{adapter}"
        );
        Err(Error::UnknownFormat { path: path.to_path_buf(), what })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadIndex { path: index_path.to_path_buf(), reason };
        // A FIFO or device in its place is refused, never waited on.
        let meta =
            std::fs::metadata(index_path).map_err(|error| Error::Io { path: index_path.to_path_buf(), error })?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        const MAX_INDEX_BYTES: u64 = 64 << 20;
        let text = crate::layouts::sidecar(index_path, MAX_INDEX_BYTES)
            .ok_or_else(|| bad("unreadable, or larger than 64 MB".into()))?;
        let index: ShardIndex = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let mut files: Vec<&String> = index.weight_map.values().collect();
        sort_natural_by(&mut files, |f| f);
        files.dedup();
        if files.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        let mut metadata = BTreeMap::new();
        for file in &files {
            if Path::new(file).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(bad(format!("shard path `{file}` leaves the checkpoint directory")));
            }
            // A shard is a checkpoint file of its own (safetensors, or a
            // torch.save of a dict of tensors as `pytorch_model-*.bin`).
            let path = dir.join(file);
            if Path::new(file).file_name().is_some_and(|n| n == SHARD_INDEX || n == TORCH_SHARD_INDEX) || path.is_dir()
            {
                return Err(bad(format!("shard `{file}` is an index or a directory, not a file of tensors")));
            }
            let part = Self::open_file(&path, None)?;
            let base = shards.len();
            for (name, mut entry) in part.tensors {
                entry.shard += base;
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(bad(format!("tensor `{name}` is in two shards")));
                }
            }
            for (k, v) in part.metadata {
                metadata.entry(k).or_insert(v);
            }
            shards.extend(part.shards);
        }
        for (name, file) in &index.weight_map {
            let found = tensors.get(name).map(|e| &shards[e.shard].path);
            if found.is_none_or(|p| p != &dir.join(file)) {
                return Err(bad(format!("tensor `{name}` is not in shard `{file}`")));
            }
        }
        for (k, v) in index.metadata {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            metadata.entry(k).or_insert(v);
        }
        Ok(Checkpoint::of(dir.to_path_buf(), shards, tensors, metadata))
    }

    /// The path that identifies this checkpoint (the file, or the directory
    /// of a sharded checkpoint).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's own description of its layers, where the file keeps
    /// one: a Keras model's config, which [`crate::keras_graph`] reads as
    /// a spec.
    pub fn model_config(&self) -> Option<&ModelConfig> {
        self.model_config.as_ref()
    }

    /// The merged `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Takes the `__metadata__` map out (leaving it empty).
    pub fn take_metadata(&mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.metadata)
    }

    /// Names of all tensors, in natural order (in a Keras HDF5 file, the
    /// order they were written in: its names do not give the model's).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<(&str, usize)> = self.tensors.iter().map(|(n, e)| (n.as_str(), e.rank)).collect();
        sort_natural_by(&mut v, |(n, _)| n);
        v.sort_by_key(|&(_, rank)| rank);
        v.into_iter().map(|(n, _)| n).collect()
    }

    /// Shape of a tensor, without checking its dtype.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entry(name).map(|(_, e)| e.info.shape.as_slice())
    }

    /// The dtype a tensor is stored in, as safetensors names it (`F32`,
    /// `I64`, `F8_E4M3`).
    pub fn dtype_name(&self, name: &str) -> Option<String> {
        self.entry(name).map(|(_, e)| e.info.dtype.to_string())
    }

    /// True when the tensor exists and is stored in a float dtype the
    /// analysis reads (integer buffers such as `num_batches_tracked` are not).
    pub fn is_float(&self, name: &str) -> bool {
        self.entry(name)
            .is_some_and(|(_, e)| matches!(e.info.dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16 | StDtype::F64))
    }

    /// The BatchNorm epsilon of the framework that wrote the file, where
    /// its format tells and it differs from the layout's default (Flax's
    /// 1e-5 in Keras' layout).
    pub fn norm_eps(&self) -> Option<f64> {
        self.norm_eps
    }

    /// The layout the file's format fixes, whatever its tensors' names
    /// (TensorFlow checkpoints: Keras').
    pub fn native_layout(&self) -> Option<crate::spec::Layout> {
        self.native_layout
    }

    /// The file's identity, for a checkpoint of one file (on unix).
    pub fn identity(&self) -> Option<FileIdentity> {
        self.identity
    }

    /// `result` (of reading or measuring this checkpoint), or
    /// [`Error::Changed`] when one of its files changed since it was opened
    /// (another process wrote or truncated it meanwhile): what was read may
    /// mix two versions of the file, or zeros, so nothing of it is kept.
    pub fn unless_changed<T>(&self, result: Result<T>) -> Result<T> {
        match self.shards.iter().find(|s| s.map.changed()) {
            Some(s) => Err(Error::Changed { path: s.path.clone() }),
            None => result,
        }
    }

    /// Total bytes of tensor data over all shards.
    pub fn data_bytes(&self) -> u64 {
        self.shards.iter().map(|s| (s.map.len() - s.data_start) as u64).sum()
    }

    /// A view of one tensor; errors name the tensor if it is missing or of a
    /// dtype the analysis does not read.
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>> {
        let (name, entry) =
            self.entry(name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let shard = &self.shards[entry.shard];
        let dtype = match entry.info.dtype {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::F64 => DType::F64,
            other => {
                return Err(Error::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        // Offsets were validated against the file length by `read_metadata`;
        // the checked arithmetic here keeps that guarantee local.
        let (s, e) = entry.info.data_offsets;
        let range = shard.data_start.checked_add(s).zip(shard.data_start.checked_add(e));
        let bytes = range.and_then(|(a, b)| shard.map.get(a..b)).ok_or_else(|| Error::Malformed {
            path: shard.path.clone(),
            reason: format!("tensor `{name}`: data offsets {s}..{e} out of range"),
        })?;
        let bytes = match dtype {
            DType::F32 | DType::F64 if bytes.as_ptr().align_offset(dtype.size()) != 0 => {
                if entry.aligned.get().is_none() {
                    let copy = Aligned::of(bytes).map_err(|error| Error::Io { path: shard.path.clone(), error })?;
                    let _ = entry.aligned.set(copy);
                }
                entry.aligned.get().expect("set above").bytes()
            }
            _ => bytes,
        };
        Ok(Tensor { name, file: &shard.path, dtype, shape: &entry.info.shape, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::step_from_path;
    use std::path::Path;

    #[test]
    fn steps_from_training_run_layouts() {
        assert_eq!(step_from_path(Path::new("run/checkpoint_000120/model.safetensors")), Some(120));
        assert_eq!(step_from_path(Path::new("run/checkpoint-500")), Some(500));
        assert_eq!(step_from_path(Path::new("run/ckpt12.safetensors")), Some(12));
        assert_eq!(step_from_path(Path::new("run/Epoch-3.safetensors")), Some(3));
        assert_eq!(step_from_path(Path::new("lightning_logs/version_0/checkpoints/epoch=9-step=500.ckpt")), Some(500));
        assert_eq!(step_from_path(Path::new("run/epoch=9-step=500-v1.ckpt")), Some(500));
        assert_eq!(step_from_path(Path::new("run/ckpt_/é.safetensors")), None);
        assert_eq!(step_from_path(Path::new("zoo/mlp-he-s0-e08.safetensors")), None);
        assert_eq!(step_from_path(Path::new("checkpoints/final")), None);
        assert_eq!(step_from_path(Path::new("training_1/cp-0002.ckpt.index")), Some(2));
        assert_eq!(step_from_path(Path::new("tf/ckpt-300.index")), Some(300));
        assert_eq!(step_from_path(Path::new("run/cp-0002.ckpt")), Some(2));
    }

    /// A file written or cut short between its metadata being taken (on
    /// opening) and its bytes being read is an error, whether read in one
    /// call, read in two, or mapped (then when measured); untouched, it
    /// reads back.
    #[test]
    fn a_file_written_while_read_is_changed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for len in [1000, super::FIRST_READ_BYTES + 10, super::MAP_MIN_BYTES as usize + 10] {
            for change in ["none", "append", "cut"] {
                std::fs::write(&path, vec![1u8; len]).unwrap();
                let file = std::fs::File::open(&path).unwrap();
                let meta = file.metadata().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                let other = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                match change {
                    "append" => (&other).write_all(b"more").unwrap(),
                    "cut" => other.set_len(len as u64 - 5).unwrap(),
                    _ => {}
                }
                let read = super::read_bytes(file, &meta);
                let changed = match &read {
                    Err(e) => crate::mapped::is_changed(e),
                    Ok(bytes) => bytes.changed(),
                };
                assert_eq!(changed, change != "none", "{len} bytes, {change}: {:?}", read.as_ref().err());
                if let ("none", Ok(bytes)) = (change, read) {
                    assert!(bytes.len() == len && bytes.iter().all(|&b| b == 1));
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

/// Headers larger than this are rejected before parsing (as the
/// `safetensors` crate does).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// A parsed safetensors header: the `__metadata__` map and the tensors in
/// file order.
struct Header {
    metadata: BTreeMap<String, String>,
    tensors: Vec<(String, TensorInfo)>,
}

impl<'de> serde::Deserialize<'de> for Header {
    /// One pass over the JSON object: `__metadata__` is the string map,
    /// every other key a tensor (the `safetensors` crate's own parser goes
    /// through `serde(flatten)`, which buffers every value first).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a safetensors header object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Header, A::Error> {
                let mut header = Header { metadata: BTreeMap::new(), tensors: Vec::with_capacity(16) };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        header.metadata = map.next_value()?;
                    } else {
                        header.tensors.push((key, map.next_value()?));
                    }
                }
                Ok(header)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A data file that a checkpoint's index or plan names (`shown` as its
/// errors name it: TensorFlow's data files, a distributed checkpoint's
/// `.distcp`s), mapped: a folder or a file that cannot be read is `bad`'s
/// error, a file changed while read [`Error::Changed`].
fn data_file(file: &Path, shown: &str, bad: impl Fn(String) -> Error) -> Result<Bytes> {
    match read_file(file) {
        Ok(Some((map, _))) => Ok(map),
        Ok(None) => Err(bad(format!("data file `{shown}` is a folder"))),
        Err(e) if crate::mapped::is_changed(&e) => Err(Error::Changed { path: file.to_path_buf() }),
        Err(e) => Err(bad(format!("data file `{shown}`: {e}"))),
    }
}

/// A small file beside a checkpoint read whole (a distributed
/// checkpoint's plan, a SavedModel's Keras metadata), refused past `max`
/// bytes.
pub(crate) fn read_whole(path: &Path, max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path).and_then(|f| f.take(max + 1).read_to_end(&mut bytes)).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

/// A file's bytes and its identity ([`Checkpoint::identity`]), `None` for
/// a directory. The file is opened without blocking (a FIFO would wait for
/// a writer) and a FIFO or a device is refused before any read (it could
/// block or never end).
pub(crate) fn read_file(path: &Path) -> std::io::Result<Option<(Bytes, Option<FileIdentity>)>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Ok(None);
    }
    if let Some(what) = crate::collection::special(&meta.file_type()) {
        return Err(std::io::Error::other(format!("{what}, not a checkpoint file: not read")));
    }
    #[cfg(unix)]
    let identity = {
        use std::os::unix::fs::MetadataExt;
        Some(FileIdentity { id: (meta.dev(), meta.ino()), links: meta.nlink() })
    };
    #[cfg(not(unix))]
    let identity = None;
    read_bytes(file, &meta).map(|bytes| Some((bytes, identity)))
}

/// A regular file's bytes (`meta` its metadata, taken on opening): read
/// whole when small (one call for most), else mapped ([`Map`]: a file cut
/// short while mapped reads as zeros and is reported when measured). A
/// file written while it is read is an error ([`crate::mapped::changed`]).
fn read_bytes(file: File, meta: &std::fs::Metadata) -> std::io::Result<Bytes> {
    let first = ReadBuf::read_some(&file, FIRST_READ_BYTES)?;
    if first.len < FIRST_READ_BYTES {
        return unless_written(&file, meta, first);
    }
    let len = meta.len();
    if len >= MAP_MIN_BYTES {
        let map = std::sync::Arc::new(Map::new(file, meta)?);
        // Pages read in through the map come in 2 MB folios where the file
        // system allows (ext4, xfs), which the map then holds one entry per
        // 2 MB: a tenth less time to scan vgg11_bn from disk, a fifth less
        // for mobilenet_v2 (BENCHMARKS.md). Best effort: without
        // transparent huge pages the advice is refused.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        #[cfg(target_os = "linux")]
        if len <= POPULATE_MAX_BYTES && !in_page_cache(&map) {
            let ahead = std::sync::Arc::clone(&map);
            // Best effort: a kernel before 5.14 refuses the advice, and
            // without a thread the pages are read on first touch.
            let _ = std::thread::Builder::new().name("cntscope-readahead".into()).spawn(move || {
                let _ = ahead.advise(memmap2::Advice::PopulateRead);
            });
        }
        return Ok(Bytes::Mapped(map));
    }
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let read = first.read_to(&file, len)?;
    unless_written(&file, meta, read)
}

/// Bytes read from `file`, or [`crate::mapped::changed`] when it was
/// written since `meta` was taken (they could mix two versions).
fn unless_written(file: &File, meta: &std::fs::Metadata, read: ReadBuf) -> std::io::Result<Bytes> {
    match Stamp::now(file)? == Stamp::of(meta) {
        true => Ok(Bytes::Read(read)),
        false => Err(crate::mapped::changed()),
    }
}

/// Whether a mapped file looks to be in the page cache: 16 of its pages,
/// spread over it, all resident (a cached file needs no thread to read it
/// in, which would only compete with the measuring).
#[cfg(target_os = "linux")]
fn in_page_cache(map: &[u8]) -> bool {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let pages = map.len().div_ceil(page);
    (0..16).all(|i| {
        let at = (pages - 1) * i / 15 * page;
        let mut resident = 0u8;
        // SAFETY: `at` is a page boundary inside the mapping; mincore
        // writes one byte for the one page asked about.
        let ok = unsafe { libc::mincore(map.as_ptr().add(at) as *mut libc::c_void, 1, &mut resident) };
        ok == 0 && resident & 1 == 1
    })
}

/// Whether `bytes` could be a safetensors file (a format without magic
/// bytes): a plausible header length, then the header's opening `{`.
fn could_be_safetensors(bytes: &[u8]) -> bool {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    n.is_some_and(|n| n <= MAX_HEADER_BYTES as u64) && bytes.get(8) == Some(&b'{')
}

/// How a file begins, for an error: `the file is empty`, or its first
/// bytes, escaped.
fn beginning(bytes: &[u8]) -> String {
    const SHOWN: usize = 24;
    match bytes.len() {
        0 => "the file is empty".into(),
        n => {
            let more = if n > SHOWN { " ..." } else { "" };
            format!("it begins with `{}`{more}", bytes[..n.min(SHOWN)].escape_ascii())
        }
    }
}

/// Validates a safetensors file's bytes: header length in range, UTF-8
/// JSON, each tensor's byte size equal to shape x dtype (checked
/// arithmetic), data offsets contiguous from 0 to the end of the file.
/// Returns the shard and its header, tensors in file order.
fn parse_shard(path: &Path, map: Bytes) -> Result<(Shard, Header)> {
    let bad = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
    let len = map.len() as u64;
    if len < 8 {
        return Err(bad(format!("file is {len} bytes, shorter than the 8-byte header length")));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES as u64 {
        let begins = beginning(&map);
        return Err(bad(format!("declared header length {n} is too large (over 100 MB); {begins}")));
    }
    let data_start = 8 + n as usize;
    let text = map
        .get(8..data_start)
        .ok_or_else(|| bad(format!("declared header length {n} runs past the end of the file; {}", beginning(&map))))?;
    let text = std::str::from_utf8(text).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let mut header: Header = serde_json::from_str(text).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    header.tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0;
    for (name, info) in &header.tensors {
        let (s, e) = info.data_offsets;
        if s != end || e < s {
            return Err(bad(format!("tensor `{name}`: data offsets {s}..{e} overlap, leave gaps or run backwards")));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows when multiplied out", info.shape)))?;
        if bits % 8 != 0 || e - s != bits / 8 {
            let needs = if bits % 8 == 0 { format!("{} bytes", bits / 8) } else { format!("{bits} bits") };
            return Err(bad(format!(
                "tensor `{name}`: {} bytes of data, but shape {:?} of {:?} needs {needs}",
                e - s,
                info.shape,
                info.dtype,
            )));
        }
        end = e;
    }
    if (data_start as u64).checked_add(end as u64) != Some(len) {
        return Err(bad(format!(
            "file length does not match the header: the data section is {} bytes, the tensors cover {end} \
             (truncated, or trailing bytes)",
            len - data_start as u64
        )));
    }
    Ok((Shard { path: path.to_path_buf(), map, data_start }, header))
}

/// Records one shard's tensors under shard number `index`; returns its
/// `__metadata__` map.
fn record_tensors(
    path: &Path,
    header: Header,
    index: usize,
    tensors: &mut HashMap<String, Entry>,
) -> Result<BTreeMap<String, String>> {
    tensors.reserve(header.tensors.len());
    for (name, info) in header.tensors {
        if tensors.contains_key(&name) {
            return Err(Error::Malformed {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` appears twice"),
            });
        }
        tensors.insert(name, Entry::new(index, info));
    }
    Ok(header.metadata)
}

/// The training step in a training-run layout: the number in the last path
/// component named like `checkpoint_000120`, `checkpoint-500`, `ckpt12`,
/// `step_40`, `epoch-3` or `cp-0002` (file stem or folder; a TensorFlow
/// index's stem without its `.ckpt`: TensorFlow's tutorial saves
/// `cp-{epoch:04d}.ckpt`), or after `step=` in one (Lightning's
/// `epoch=9-step=500.ckpt`).
pub fn step_from_path(path: &Path) -> Option<u64> {
    path.components().rev().find_map(|c| {
        let name = Path::new(c.as_os_str()).file_stem()?.to_str()?;
        let index = c.as_os_str().to_str().is_some_and(|n| n.ends_with(".index"));
        let name = if index { name.strip_suffix(".ckpt").unwrap_or(name) } else { name };
        if let Some((_, rest)) = name.split_once("step=") {
            let digits = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
            if let Ok(step) = digits.parse() {
                return Some(step);
            }
        }
        let rest = ["checkpoint", "ckpt", "step", "epoch", "cp"]
            .iter()
            .find_map(|p| name.get(..p.len()).filter(|head| head.eq_ignore_ascii_case(p)).map(|_| &name[p.len()..]))?;
        let digits = rest.strip_prefix(['-', '_']).unwrap_or(rest);
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
    })
}
