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

use safetensors::tensor::TensorInfo;

use std::rc::Rc;

use crate::pickle::{self, dtype_size, get, TensorRef, Value};
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

/// Reads a torch zip archive.
pub(crate) fn read(bytes: &[u8], key: Option<&str>) -> Result<TorchCheckpoint, String> {
    let (root, storages) = archive(bytes)?;
    let Found { tensors: found, mut metadata, scalars } = state_dict(&root, key)?;
    scalar_columns(bytes, &storages, scalars, &mut metadata);
    let mut out = TorchCheckpoint { tensors: Vec::with_capacity(found.len()), gathered: Vec::new(), metadata };
    for (name, t) in found {
        let (info, place) = place_tensor(bytes, &storages, &name, &t, &mut out.gathered)?;
        out.tensors.push((name, info, place));
    }
    Ok(out)
}

/// The values of one-element tensors (a wrapper's `best_acc1`, a
/// monitored score) as columns, where their storages hold them.
fn scalar_columns(
    bytes: &[u8],
    storages: &HashMap<String, zip::ZipEntry>,
    scalars: Vec<(String, TensorRef)>,
    metadata: &mut BTreeMap<String, String>,
) {
    for (name, t) in scalars {
        let value = storages
            .get(t.storage.key.as_str())
            .filter(|e| e.stored().is_ok())
            .and_then(|e| scalar_value(bytes, e, &t));
        if let Some(value) = value {
            metadata.entry(name).or_insert(value);
        }
    }
}

/// The columns of a `torch.save` archive of a checkpoint's state other
/// than its tensors (Lightning's FSDP `meta.pt`: `epoch`, `global_step`,
/// `hyper_parameters`, the monitored score), read as a wrapper's scalars
/// are.
pub(crate) fn columns(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let (root, storages) = archive(bytes)?;
    let mut metadata = BTreeMap::new();
    if let Value::Dict(top) = &root {
        let top = top.borrow();
        scalars(&top, &mut metadata);
        let mut tensors = monitored_scores(&top);
        tensors.extend(one_element_tensors(&top));
        scalar_columns(bytes, &storages, tensors, &mut metadata);
    }
    Ok(metadata)
}

/// A torch zip archive's unpickled `data.pkl` and its storage entries by
/// key (`data/<key>`). Only the entries read must be stored: a TorchScript
/// archive (`torch.jit.save`) compresses its code, which is never read.
fn archive(bytes: &[u8]) -> Result<(Value, HashMap<String, zip::ZipEntry>), String> {
    let entries = zip::entries(bytes)?;
    let pkl: Vec<&zip::ZipEntry> = entries.iter().filter(|e| e.name.ends_with("data.pkl")).collect();
    let [pkl] = pkl[..] else {
        return Err(format!("a zip archive with {} `data.pkl` entries: not a torch.save checkpoint", pkl.len()));
    };
    pkl.stored()?;
    let root = pickle::load(&bytes[pkl.start..pkl.start + pkl.len])?;
    let prefix = format!("{}data/", &pkl.name[..pkl.name.len() - "data.pkl".len()]);
    let storages =
        entries.into_iter().filter_map(|e| Some((e.name.strip_prefix(prefix.as_str())?.to_string(), e))).collect();
    Ok((root, storages))
}

/// What a `torch.save` archive of one object holds (a distributed
/// checkpoint's items): a tensor, where its elements are, or another value.
pub(crate) enum Lone {
    /// A tensor: its dtype and shape, and its bytes (in the archive, or in
    /// `gathered` when strided).
    Tensor(TensorInfo, Place, Vec<u8>),
    /// Any other value (an int, a float, a string), as data.
    Value(Value),
}

/// Reads a `torch.save` archive of one object (`torch.save(tensor)`).
pub(crate) fn read_lone(bytes: &[u8]) -> Result<Lone, String> {
    let (root, storages) = archive(bytes)?;
    match &root {
        Value::Tensor(t) => {
            let mut gathered = Vec::new();
            let (info, place) = place_tensor(bytes, &storages, "", t, &mut gathered)?;
            Ok(Lone::Tensor(info, place, gathered))
        }
        _ => Ok(Lone::Value(root.clone())),
    }
}

/// Where tensor `t` (named `name`) of an archive (`bytes`, its storage
/// entries) lies: in place when contiguous, else gathered into `gathered`;
/// its storage and view checked against the archive.
fn place_tensor(
    bytes: &[u8],
    storages: &HashMap<String, zip::ZipEntry>,
    name: &str,
    t: &TensorRef,
    gathered: &mut Vec<u8>,
) -> Result<(TensorInfo, Place), String> {
    let place = |what: String| format!("tensor `{name}`: {what}");
    let s = &t.storage;
    let entry =
        storages.get(s.key.as_str()).ok_or_else(|| place(format!("storage `{}` is not in the archive", s.key)))?;
    entry.stored().map_err(place)?;
    if s.bytes() != Some(entry.len) {
        return Err(place(format!(
            "storage `{}` declares {} elements of {} bytes but holds {} bytes",
            s.key,
            s.numel,
            s.dtype.map_or(1, dtype_size),
            entry.len
        )));
    }
    let size = dtype_size(t.dtype);
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
    let end = reach.and_then(|r| r.checked_add(1)?.checked_mul(size));
    if numel > 0 && end.is_none_or(|e| e > entry.len) {
        return Err(place(format!(
            "its view (offset {}, size {:?}, stride {:?}) of {size}-byte elements reaches past its storage of {} \
             bytes",
            t.offset, t.shape, t.stride, entry.len
        )));
    }
    let info = TensorInfo { dtype: t.dtype, shape: t.shape.clone(), data_offsets: (0, numel * size) };
    if is_contiguous(t) {
        let start = entry.start + t.offset * size;
        Ok((info, Place::Archive(start, start + numel * size)))
    } else {
        let start = gathered.len();
        gather(&bytes[entry.start..entry.start + entry.len], t, size, gathered);
        Ok((info, Place::Gathered(start, gathered.len())))
    }
}

/// The value of a one-element tensor of a float or integer storage, as
/// text (`71.5`), when its element lies in the storage's entry.
fn scalar_value(bytes: &[u8], entry: &zip::ZipEntry, t: &TensorRef) -> Option<String> {
    let size = dtype_size(t.dtype);
    let at = entry.start.checked_add(t.offset.checked_mul(size)?)?;
    let end = at.checked_add(size)?;
    if end > entry.start.checked_add(entry.len)? {
        return None;
    }
    pickle::scalar_text(t.dtype, bytes.get(at..end)?)
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
pub(crate) type Named = Vec<(String, TensorRef)>;

/// Keys under which wrappers keep the model's weights, in preference order.
const STATE_KEYS: [&str; 7] = ["state_dict", "model_state_dict", "model", "module", "net", "network", "weights"];

/// How deep a search for tensors goes into nested dicts and modules (a
/// transformer's names are a few levels deep).
const MAX_DEPTH: usize = 64;

/// Entries a search for tensors visits at most: a pickle's memo can make a
/// dict hold itself many times over, which a walk would follow for ever.
const MAX_VISITS: usize = 1 << 22;

/// The tensors a search found, by name, and the entries it visited.
#[derive(Default)]
struct Search {
    found: Named,
    visits: usize,
}

impl Search {
    /// Counts one entry visited; an error past [`MAX_VISITS`].
    fn visit(&mut self) -> Result<(), String> {
        self.visits += 1;
        match self.visits > MAX_VISITS {
            true => Err(format!(
                "more than {MAX_VISITS} entries to search for tensors (a dict or module that holds itself?)"
            )),
            false => Ok(()),
        }
    }
}

/// Tensors of a dict (nested dicts flattened with `.`) or of a pickled
/// `nn.Module` ([`module_tensors`]), by name. A value of a class from
/// torch that is not a tensor this reader rebuilds (a sharded or
/// distributed tensor) is an error naming it: left out, its layer would be
/// missing without a word.
fn tensors_of(v: &Value, prefix: &str, depth: usize, out: &mut Search) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let name = |key: &Value| -> Option<String> {
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return None,
        };
        Some(if prefix.is_empty() { key } else { format!("{prefix}.{key}") })
    };
    if let Some(module) = module_state(v) {
        return module_tensors(&module, prefix, depth, out);
    }
    let entries = match (v, scripted_state(v)) {
        (_, Some(attributes)) => attributes.borrow().clone(),
        (Value::Dict(d), _) => d.borrow().clone(),
        // A dict subclass (Lightning's AttributeDict).
        (Value::Object(o), _) => o.items.borrow().clone(),
        _ => return Ok(()),
    };
    for (k, v) in &entries {
        out.visit()?;
        let Some(name) = name(k) else { continue };
        match v {
            Value::Tensor(t) => out.found.push((name, (**t).clone())),
            Value::Dict(_) | Value::Object(_) => {
                not_a_torch_tensor(&name, v)?;
                tensors_of(v, &name, depth + 1, out)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// An error when `v` is an object of torch's own that is not a module: a
/// tensor of a kind not read, under `name`.
fn not_a_torch_tensor(name: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Object(o)
            if o.class.starts_with("torch.") && !o.class.starts_with("torch.nn.") && module_state(v).is_none() =>
        {
            Err(format!("`{name}` is a `{}`, not a tensor this reader rebuilds", o.class))
        }
        _ => Ok(()),
    }
}

/// A pickled `nn.Module`'s state (its `__dict__`, set by `BUILD`), when `v`
/// is one: a dict with `_parameters` and `_modules`.
fn module_state(v: &Value) -> Option<Entries> {
    let Value::Object(o) = v else { return None };
    let state = o.state.borrow();
    let Some(Value::Dict(d)) = &*state else { return None };
    let is_module = {
        let entries = d.borrow();
        get(&entries, "_parameters").is_some() && get(&entries, "_modules").is_some()
    };
    is_module.then(|| d.clone())
}

/// A TorchScript module's attributes (`torch.jit.save`: an object of a
/// `__torch__.` class whose state is a dict of its parameters, buffers,
/// submodules and other attributes by name), when `v` is one.
fn scripted_state(v: &Value) -> Option<Entries> {
    let Value::Object(o) = v else { return None };
    let state = o.state.borrow();
    match &*state {
        Some(Value::Dict(d)) if o.class.starts_with("__torch__.") => Some(d.clone()),
        _ => None,
    }
}

/// A dict's entries, shared.
type Entries = Rc<std::cell::RefCell<Vec<(Value, Value)>>>;

/// The strings of a list (others left out).
fn strings(list: &[Value]) -> Vec<Rc<str>> {
    list.iter().filter_map(|v| if let Value::Str(s) = v { Some(s.clone()) } else { None }).collect()
}

/// A pickled `nn.Module`'s tensors as its `state_dict()` names them: its
/// `_parameters` (those not `None`), its `_buffers` but those named in
/// `_non_persistent_buffers_set`, then each child of `_modules` under its
/// name, read as data (nothing of the module's code runs: a module that
/// overrides `state_dict` is read as `nn.Module` defines it).
fn module_tensors(state: &Entries, prefix: &str, depth: usize, out: &mut Search) -> Result<(), String> {
    let state = state.borrow();
    let name = |key: &str| if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
    let pairs = |key: &str| -> Vec<(Rc<str>, Value)> {
        let entries = match get(&state, key) {
            Some(Value::Dict(d)) => d.borrow().clone(),
            Some(Value::Object(o)) => o.items.borrow().clone(),
            _ => Vec::new(),
        };
        entries
            .iter()
            .filter_map(|(k, v)| if let Value::Str(k) = k { Some((k.clone(), v.clone())) } else { None })
            .collect()
    };
    // The set is pickled as `set(list)` (protocol 2) or as a set (4).
    let transient = match get(&state, "_non_persistent_buffers_set") {
        Some(Value::Object(set)) => match set.args.first() {
            Some(Value::List(l)) => strings(&l.borrow()),
            _ => Vec::new(),
        },
        Some(Value::List(l)) => strings(&l.borrow()),
        _ => Vec::new(),
    };
    for (key, v) in
        pairs("_parameters").into_iter().chain(pairs("_buffers").into_iter().filter(|(k, _)| !transient.contains(k)))
    {
        out.visit()?;
        match &v {
            Value::Tensor(t) => out.found.push((name(&key), (**t).clone())),
            other => not_a_torch_tensor(&name(&key), other)?,
        }
    }
    for (key, child) in pairs("_modules") {
        out.visit()?;
        if let Some(child) = module_state(&child).filter(|_| depth < MAX_DEPTH) {
            module_tensors(&child, &name(&key), depth + 1, out)?;
        }
    }
    Ok(())
}

/// The entry under which Lightning keeps the arguments a module saved
/// with `save_hyperparameters()`.
const HYPER_PARAMETERS: &str = "hyper_parameters";

/// A wrapper's scalar entries (`epoch`, `global_step`, ...), as metadata,
/// and Lightning's hyperparameters (`hyper_parameters.lr`, nested dicts
/// joined with `.`): what a run was trained with, to group runs by.
fn scalars(top: &[(Value, Value)], metadata: &mut BTreeMap<String, String>) {
    scalars_under("", top, 0, metadata);
}

fn scalars_under(prefix: &str, entries: &[(Value, Value)], depth: usize, metadata: &mut BTreeMap<String, String>) {
    for (k, v) in entries {
        let Value::Str(k) = k else { continue };
        let key = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        // Lightning's hyperparameters (a dict, or its AttributeDict), and
        // the dicts in them.
        let nested = depth < 4 && (depth > 0 || &**k == HYPER_PARAMETERS);
        let text = match v {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Dict(d) if nested => {
                scalars_under(&key, &d.borrow(), depth + 1, metadata);
                continue;
            }
            Value::Object(o) if nested => {
                scalars_under(&key, &o.items.borrow(), depth + 1, metadata);
                continue;
            }
            _ => continue,
        };
        metadata.insert(key, text);
    }
}

/// What a wrapper's entries hold that is read as inert data (for an error
/// that finds no tensors): `; entries read as data, never run: `w` (a
/// posix.system)`.
fn objects_in(top: &[(Value, Value)]) -> String {
    let found: Vec<String> = top
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Object(o)) => Some(format!("`{k}` (a `{}`)", o.class)),
            _ => None,
        })
        .collect();
    match found.is_empty() {
        true => String::new(),
        false => format!("; entries read as inert data, nothing of them run: {}", found.join(", ")),
    }
}

/// The state_dict: a whole pickled module's (`torch.save(model)`), else
/// the first of [`STATE_KEYS`] holding tensors, else the top dict when its
/// values are tensors, else the only nested entry that holds some; with a
/// `model.` prefix common to every name removed. Also the wrapper's scalar
/// entries, as metadata.
pub(crate) fn state_dict(root: &Value, key: Option<&str>) -> Result<Found, String> {
    let module = module_state(root).is_some() || scripted_state(root).is_some();
    let top = match root {
        Value::Dict(top) => top.borrow().clone(),
        _ if module => Vec::new(),
        Value::Object(o) => {
            return Err(format!(
                "the pickle holds a `{}`, neither a dict of tensors nor a module (read as data: nothing of it is run)",
                o.class
            ))
        }
        _ => return Err("the pickle holds no dict of tensors".into()),
    };
    let direct = top.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let mut metadata = BTreeMap::new();
    scalars(&top, &mut metadata);
    let mut wrapper_scalars = Vec::new();
    let mut found = match key {
        Some(key) => {
            // `--key`: the entry asked for, through the nested dicts.
            let all = tensors_in(root)?;
            let prefix = format!("{key}.");
            let found: Named =
                all.iter().filter_map(|(n, t)| Some((n.strip_prefix(&prefix)?.to_string(), t.clone()))).collect();
            if found.is_empty() {
                let mut tops: Vec<&str> = all.iter().map(|(n, _)| n.split('.').next().unwrap_or(n)).collect();
                tops.dedup();
                return Err(format!(
                    "--key {key}: no tensors under `{key}` (entries holding tensors: {})",
                    tops.join(", ")
                ));
            }
            found
        }
        None if module => tensors_in(root)?,
        // A wrapper's state_dict entry first: a wrapper may hold tensors of
        // its own beside it (the ImageNet example's `best_acc1`).
        None => match state_entry(&top)? {
            Some(t) => {
                wrapper_scalars = one_element_tensors(&top);
                wrapper_scalars.extend(monitored_scores(&top));
                t
            }
            None if direct => tensors_in(root)?,
            None => only_entry(&top)?,
        },
    };
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
    Ok(Found { tensors: found, metadata, scalars: wrapper_scalars })
}

/// The tensors of `v` ([`tensors_of`]), by name.
fn tensors_in(v: &Value) -> Result<Named, String> {
    let mut t = Search::default();
    tensors_of(v, "", 0, &mut t)?;
    Ok(t.found)
}

/// The tensors of a wrapper's first entry named like a state_dict
/// ([`STATE_KEYS`]) that holds some.
fn state_entry(top: &[(Value, Value)]) -> Result<Option<Named>, String> {
    for k in STATE_KEYS {
        if let Some(v) = get(top, k) {
            let t = tensors_in(v)?;
            if !t.is_empty() {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

/// A wrapper's one-element tensors (`best_acc1`), whose values are
/// metadata.
fn one_element_tensors(top: &[(Value, Value)]) -> Vec<(String, TensorRef)> {
    top.iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) if t.shape.iter().product::<usize>() == 1 => {
                Some((k.to_string(), (**t).clone()))
            }
            _ => None,
        })
        .collect()
}

/// The scores of Lightning's `ModelCheckpoint` callbacks, by the metric
/// each monitors: its `current_score` is the metric's value when this
/// checkpoint was saved (`val_acc` of `monitor="val_acc"`).
fn monitored_scores(top: &[(Value, Value)]) -> Vec<(String, TensorRef)> {
    let Some(Value::Dict(callbacks)) = get(top, "callbacks") else { return Vec::new() };
    let callbacks = callbacks.borrow();
    callbacks
        .iter()
        .filter_map(|(_, state)| {
            let Value::Dict(state) = state else { return None };
            let state = state.borrow();
            match (get(&state, "monitor"), get(&state, "current_score")) {
                (Some(Value::Str(metric)), Some(Value::Tensor(t))) if t.shape.iter().product::<usize>() == 1 => {
                    Some((metric.to_string(), (**t).clone()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The tensors of the only entry of a wrapper that holds any; an error
/// when none does or several do.
fn only_entry(top: &[(Value, Value)]) -> Result<Named, String> {
    let mut with: Vec<(String, Named)> = Vec::new();
    for (k, v) in top {
        let Value::Str(k) = k else { continue };
        let t = tensors_in(v)?;
        if !t.is_empty() {
            with.push((k.to_string(), t));
        }
    }
    match with.len() {
        0 => Err(format!("no tensors in the checkpoint{}", objects_in(top))),
        1 => Ok(with.into_iter().next().expect("one").1),
        _ => {
            let keys: Vec<String> = with.iter().map(|(k, _)| format!("`{k}`")).collect();
            Err(format!(
                "several entries hold tensors ({}) and none is named like a state_dict ({})",
                keys.join(", "),
                STATE_KEYS.join(", ")
            ))
        }
    }
}

/// What [`state_dict`] finds: the tensors by name, the wrapper's scalar
/// entries as metadata, and its one-element tensors (`best_acc1`), whose
/// values become metadata once read.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) tensors: Named,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) scalars: Vec<(String, TensorRef)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dict that holds itself a thousand times over (through the memo)
    /// is an error after a bounded search, not a walk of 1000^8 entries.
    #[test]
    fn a_dict_that_holds_itself_ends_the_search() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        for i in 0..1000u32 {
            let key = format!("k{i}");
            p.push(b'X');
            p.extend((key.len() as u32).to_le_bytes());
            p.extend(key.as_bytes());
            p.extend([b'h', 0]);
        }
        p.extend([b'u', b'.']);
        let root = pickle::load(&p).unwrap();
        let start = std::time::Instant::now();
        let e = state_dict(&root, None).expect_err("no tensors");
        assert!(e.contains("holds itself"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
    }
}
