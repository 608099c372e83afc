//! PyTorch checkpoints as `torch.save` writes them (the zip format of
//! torch 1.6 and later): the pickle `*/data.pkl` read by the restricted unpickler
//! ([`crate::pickle`]), each storage `*/data/<key>` read in place from the
//! archive's stored entries. A contiguous tensor is a range of its storage
//! (zero-copy, shared storages shared); a strided view is gathered into a
//! buffer of its own. The state_dict is found in the usual wrappings
//! (`{"state_dict": ...}`, `{"model": ...}`, Lightning's `model.` prefix;
//! DataParallel's `module.` is taken off by [`crate::checkpoint`] for every
//! format); a wrapper's scalar entries (`epoch`, `step`,
//! ...) become metadata.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorInfo};

use crate::pickle::{self, StorageType, TensorRef, Value};
use crate::zip;

/// Where a tensor's bytes are: in the archive, or in the gathered buffer.
pub(crate) enum Place {
    /// `start..end` of the archive.
    Archive(usize, usize),
    /// `start..end` of the gathered buffer.
    Gathered(usize, usize),
}

/// A torch archive's tensors (name, dtype, shape, where), the bytes of its
/// strided views, and the wrapper's scalar entries.
pub(crate) struct TorchCheckpoint {
    pub(crate) tensors: Vec<(String, TensorInfo, Place)>,
    pub(crate) gathered: Vec<u8>,
    pub(crate) metadata: BTreeMap<String, String>,
}

/// The first bytes of the legacy (torch < 1.6) format: a pickled magic number.
pub(crate) fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8])
}

fn dtype(s: StorageType) -> Dtype {
    match s {
        StorageType::F32 => Dtype::F32,
        StorageType::F16 => Dtype::F16,
        StorageType::BF16 => Dtype::BF16,
        StorageType::F64 => Dtype::F64,
        StorageType::I64 => Dtype::I64,
        StorageType::I32 => Dtype::I32,
        StorageType::I16 => Dtype::I16,
        StorageType::I8 => Dtype::I8,
        StorageType::U8 => Dtype::U8,
        StorageType::Bool => Dtype::BOOL,
    }
}

/// Reads a torch zip archive.
pub(crate) fn read(bytes: &[u8], key: Option<&str>) -> Result<TorchCheckpoint, String> {
    let entries = zip::stored(bytes)?;
    let pkl: Vec<&zip::ZipEntry> = entries.iter().filter(|e| e.name.ends_with("data.pkl")).collect();
    let [pkl] = pkl[..] else {
        return Err(format!("a zip archive with {} `data.pkl` entries: not a torch.save checkpoint", pkl.len()));
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    let storages: HashMap<&str, &zip::ZipEntry> =
        entries.iter().filter_map(|e| Some((e.name.strip_prefix(prefix)?.strip_prefix("data/")?, e))).collect();
    let root = pickle::load(&bytes[pkl.start..pkl.start + pkl.len])?;
    let (found, metadata) = state_dict(&root, key)?;
    let mut out = TorchCheckpoint { tensors: Vec::with_capacity(found.len()), gathered: Vec::new(), metadata };
    for (name, t) in found {
        let place = |what: String| format!("tensor `{name}`: {what}");
        let s = &t.storage;
        let entry =
            storages.get(s.key.as_str()).ok_or_else(|| place(format!("storage `{}` is not in the archive", s.key)))?;
        let size = s.dtype.size();
        if s.numel.checked_mul(size) != Some(entry.len) {
            return Err(place(format!(
                "storage `{}` declares {} elements of {size} bytes but holds {} bytes",
                s.key, s.numel, entry.len
            )));
        }
        let numel =
            t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| place("size overflows".into()))?;
        // The last element the view reaches must lie in the storage.
        let reach = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &st)| {
            if d == 0 {
                Some(a)
            } else {
                a.checked_add((d - 1).checked_mul(st)?)
            }
        });
        if numel > 0 && reach.is_none_or(|r| r >= s.numel) {
            return Err(place(format!(
                "its view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
                t.offset, t.shape, t.stride, s.numel
            )));
        }
        let info = |start: usize| TensorInfo {
            dtype: dtype(s.dtype),
            shape: t.shape.clone(),
            data_offsets: (start, start + numel * size),
        };
        if is_contiguous(&t) {
            let start = entry.start + t.offset * size;
            out.tensors.push((name, info(0), Place::Archive(start, start + numel * size)));
        } else {
            let start = out.gathered.len();
            gather(&bytes[entry.start..entry.start + entry.len], &t, size, &mut out.gathered);
            out.tensors.push((name, info(0), Place::Gathered(start, out.gathered.len())));
        }
    }
    Ok(out)
}

/// Row-major with no gaps (dimensions of size 1 may have any stride).
fn is_contiguous(t: &TensorRef) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

/// Appends a strided view's elements in row-major order.
fn gather(storage: &[u8], t: &TensorRef, size: usize, out: &mut Vec<u8>) {
    let numel: usize = t.shape.iter().product();
    let mut index = vec![0usize; t.shape.len()];
    out.reserve(numel * size);
    for _ in 0..numel {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * size..(at + 1) * size]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < t.shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
}

/// Tensors by name.
type Named = Vec<(String, TensorRef)>;

/// Keys under which wrappers keep the model's weights, in preference order.
const STATE_KEYS: [&str; 7] = ["state_dict", "model_state_dict", "model", "module", "net", "network", "weights"];

/// Tensors of a dict (nested dicts flattened with `.`), by name, and
/// whether any value was a tensor.
fn tensors_of(d: &Value, prefix: &str, depth: usize, out: &mut Named) {
    let Value::Dict(d) = d else { return };
    if depth > 8 {
        return;
    }
    for (k, v) in d.borrow().iter() {
        let key = match k {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        match v {
            Value::Tensor(t) => out.push((name, (**t).clone())),
            Value::Dict(_) => tensors_of(v, &name, depth + 1, out),
            _ => {}
        }
    }
}

/// A wrapper's scalar entries (`epoch`, `global_step`, ...), as metadata.
fn scalars(top: &[(Value, Value)], metadata: &mut BTreeMap<String, String>) {
    for (k, v) in top.iter() {
        let Value::Str(k) = k else { continue };
        let text = match v {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        metadata.insert(k.to_string(), text);
    }
}

fn get<'a>(d: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    d.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v)
}

/// The state_dict: the top dict when its values are tensors, else the
/// first of [`STATE_KEYS`] holding tensors, else the only nested dict that
/// does; with a `module.` / `model.` prefix common to every name removed.
/// Also the wrapper's scalar entries, as metadata.
fn state_dict(root: &Value, key: Option<&str>) -> Result<(Named, BTreeMap<String, String>), String> {
    let Value::Dict(top) = root else { return Err("the pickle holds no dict of tensors".into()) };
    let top = top.borrow();
    let direct = top.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let mut found = Vec::new();
    let mut metadata = BTreeMap::new();
    if let Some(key) = key {
        // `--key`: the entry asked for, through the nested dicts.
        let mut all = Vec::new();
        tensors_of(root, "", 0, &mut all);
        let prefix = format!("{key}.");
        found = all.iter().filter_map(|(n, t)| Some((n.strip_prefix(&prefix)?.to_string(), t.clone()))).collect();
        if found.is_empty() {
            let mut tops: Vec<&str> = all.iter().map(|(n, _)| n.split('.').next().unwrap_or(n)).collect();
            tops.dedup();
            return Err(format!(
                "--key {key}: no tensors under `{key}` (entries holding tensors: {})",
                tops.join(", ")
            ));
        }
        scalars(&top, &mut metadata);
    } else if direct {
        tensors_of(root, "", 0, &mut found);
    } else {
        let chosen = STATE_KEYS.iter().find_map(|k| {
            let v = get(&top, k)?;
            let mut t = Vec::new();
            tensors_of(v, "", 0, &mut t);
            (!t.is_empty()).then_some(t)
        });
        found = match chosen {
            Some(t) => t,
            None => {
                let with: Vec<(String, Named)> = top
                    .iter()
                    .filter_map(|(k, v)| {
                        let Value::Str(k) = k else { return None };
                        let mut t = Vec::new();
                        tensors_of(v, "", 0, &mut t);
                        (!t.is_empty()).then(|| (k.to_string(), t))
                    })
                    .collect();
                match with.len() {
                    0 => return Err("no tensors in the checkpoint".into()),
                    1 => with.into_iter().next().expect("one").1,
                    _ => {
                        let keys: Vec<String> = with.iter().map(|(k, _)| format!("`{k}`")).collect();
                        return Err(format!(
                            "several entries hold tensors ({}) and none is named like a state_dict ({})",
                            keys.join(", "),
                            STATE_KEYS.join(", ")
                        ));
                    }
                }
            }
        };
        scalars(&top, &mut metadata);
    }
    // Lightning's `model.` (a training wrapper's `module.` or
    // `_orig_mod.` is taken off for every format, by the checkpoint).
    let p = "model.";
    if !found.is_empty() && found.iter().all(|(n, _)| n.starts_with(p)) {
        for (n, _) in &mut found {
            n.drain(..p.len());
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((n, _)) = found.iter().find(|(n, _)| !seen.insert(n.clone())) {
        return Err(format!("tensor `{n}` appears twice"));
    }
    Ok((found, metadata))
}
