//! Finding the checkpoints of a collection: command-line paths expanded
//! into checkpoint files (and sharded directories) in a stable order, each
//! directory followed once, and every entry that cannot be a checkpoint (a
//! FIFO, a device, an unreadable directory, a symlink loop) kept as a
//! problem to report rather than opened or followed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::checkpoint::{SHARD_INDEX, TORCH_SHARD_INDEX, TRAINER_STATE};
use crate::error::{Error, Result};
use crate::natsort::sort_natural_by;

/// What the paths given to a scan hold.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    /// The checkpoints, and in their place each entry that cannot be one
    /// (see [`Collection::problem`]), in scan order.
    pub paths: Vec<PathBuf>,
    /// Why an entry of `paths` is not read (it becomes an `errors.csv` row).
    problems: HashMap<PathBuf, String>,
    /// The paths it was collected from, as given.
    pub roots: Vec<PathBuf>,
    /// (device, inode) of each file a symlink in a walked directory points
    /// to: opened under another name too, it is measured twice
    /// ([`Collection::may_be_linked`]).
    linked: HashSet<(u64, u64)>,
    /// Files of a training run's state met in walked directories (an
    /// optimizer's, scheduler's, sampler's, loss scaler's or random
    /// generators' state, the Trainer's arguments: named so, not read): how
    /// many, and the first few.
    pub training_state: (usize, Vec<PathBuf>),
}

impl Collection {
    /// A collection of exactly these paths, nothing looked at.
    pub fn of(paths: Vec<PathBuf>) -> Self {
        Collection { roots: paths.clone(), paths, ..Collection::default() }
    }

    /// Whether a file may be in the collection under another name too: a
    /// hard link (timm's `model_best.pth.tar`), or the target of a symlink
    /// walked (Lightning's `last.ckpt`).
    pub fn may_be_linked(&self, file: &crate::checkpoint::FileIdentity) -> bool {
        file.links > 1 || self.linked.contains(&file.id)
    }

    /// Why `path` is not read as a checkpoint, if it is not.
    pub fn problem(&self, path: &Path) -> Option<&str> {
        self.problems.get(path).map(String::as_str)
    }

    /// The entries that are not read, with why, in scan order.
    pub fn problems(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.paths.iter().filter_map(|p| self.problem(p).map(|why| (p.as_path(), why)))
    }

    /// How many entries are checkpoints to read.
    pub fn readable(&self) -> usize {
        self.paths.len() - self.problems.len()
    }
}

/// Expands command-line paths into the checkpoints they hold: files as
/// given, sharded directories as one checkpoint, other directories
/// recursively (checkpoint files by name and sharded subdirectories), and
/// glob patterns. Order: arguments in order, each directory's entries in
/// natural order; duplicates removed. Each directory is followed once (by
/// device and inode), so a symlink loop or a second link to a directory is
/// a problem entry, as are unreadable directories and FIFOs, sockets and
/// devices (never opened). A path that does not exist is an error.
pub fn collect(args: &[PathBuf]) -> Result<Collection> {
    let mut walk = Walk::default();
    // Overlapping arguments (a folder and a file in it) or a glob matching
    // a folder and files inside it can name a checkpoint twice.
    let mut may_repeat = args.len() > 1;
    for arg in args {
        let text = arg.to_string_lossy();
        if std::fs::symlink_metadata(arg).is_err() && text.contains(['*', '?', '[']) {
            may_repeat = true;
            let paths = glob::glob(&text)
                .map_err(|e| Error::Io { path: arg.clone(), error: std::io::Error::other(e.to_string()) })?;
            let mut matched: Vec<(String, PathBuf)> =
                paths.filter_map(|p| p.ok()).map(|p| (p.to_string_lossy().into_owned(), p)).collect();
            sort_natural_by(&mut matched, |(text, _)| text);
            for (_, p) in matched {
                walk.explicit(&p);
            }
        } else if std::fs::symlink_metadata(arg).is_ok() {
            walk.explicit(arg);
        } else if crate::flat::split(arg).is_some_and(|(matrix, _)| matrix.is_file()) {
            // One row of a flat-matrix zoo, named as a scan names it.
            walk.out.push(arg.clone());
        } else if let Some(index) = crate::tf::index_of_prefix(arg) {
            // A TensorFlow checkpoint named by its prefix: its index.
            walk.explicit(&index);
        } else {
            return Err(Error::Io { path: arg.clone(), error: std::io::Error::other("no such file or directory") });
        }
    }
    let Walk { mut out, problems, linked, training_state, .. } = walk;
    if may_repeat {
        let mut seen = HashSet::new();
        out.retain(|p| seen.insert(p.clone()));
    }
    Ok(Collection { paths: out, problems, roots: args.to_vec(), linked, training_state })
}

/// The state of a walk: what was found, and the directories entered.
#[derive(Default)]
struct Walk {
    out: Vec<PathBuf>,
    problems: HashMap<PathBuf, String>,
    /// (device, inode) of each directory entered, with its path.
    entered: HashMap<(u64, u64), PathBuf>,
    /// See [`Collection::linked`].
    linked: HashSet<(u64, u64)>,
    /// See [`Collection::training_state`].
    training_state: (usize, Vec<PathBuf>),
}

impl Walk {
    /// A path named on the command line: a file is taken whatever its
    /// name, a directory is walked.
    fn explicit(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => self.dir(path, &m),
            Ok(m) => match special(&m.file_type()) {
                Some(what) => self.problem(path, format!("{what}, not a checkpoint file: not opened")),
                // A zoo's matrix named itself: its rows.
                None if path.file_name().is_some_and(|n| n == crate::flat::MATRIX)
                    && crate::flat::is_zoo(path.parent().unwrap_or(Path::new("."))) =>
                {
                    self.zoo(path.parent().unwrap_or(Path::new(".")))
                }
                None => self.out.push(path.to_path_buf()),
            },
            // A dangling symlink, or one in a loop: opening says which.
            Err(e) => self.problem(path, e.to_string()),
        }
    }

    /// A flat-matrix zoo: one checkpoint per row of its matrix.
    fn zoo(&mut self, dir: &Path) {
        match crate::flat::rows(dir) {
            Ok(rows) => self.out.extend(rows),
            // Opening the matrix says what is wrong (an error row of its
            // own kind).
            Err(_) => self.out.push(dir.join(crate::flat::MATRIX)),
        }
    }

    fn problem(&mut self, path: &Path, why: String) {
        self.out.push(path.to_path_buf());
        self.problems.insert(path.to_path_buf(), why);
    }

    /// A directory: itself if sharded, else its entries (file types from
    /// the listing, so a plain file costs no `stat`).
    fn dir(&mut self, path: &Path, meta: &std::fs::Metadata) {
        if let Some(key) = identity(meta) {
            if let Some(first) = self.entered.get(&key) {
                let why = if path.starts_with(first) {
                    format!("a symlink loop: the directory {} again, not followed", first.display())
                } else {
                    format!("the directory {} again (by a link), not followed", first.display())
                };
                return self.problem(path, why);
            }
            self.entered.insert(key, path.to_path_buf());
        }
        // A sharded model, or a Hugging Face Trainer checkpoint (the model
        // beside the Trainer's own state): one checkpoint.
        // An Orbax checkpoint or a PyTorch distributed checkpoint too.
        if [SHARD_INDEX, TORCH_SHARD_INDEX, TRAINER_STATE].iter().any(|f| path.join(f).is_file())
            || crate::orbax::is_orbax_dir(path)
            || crate::dcp::is_dcp_dir(path)
        {
            self.out.push(path.to_path_buf());
            return;
        }
        if crate::flat::is_zoo(path) {
            return self.zoo(path);
        }
        let listing = match std::fs::read_dir(path) {
            Ok(listing) => listing,
            Err(e) => return self.problem(path, format!("directory cannot be read: {e}")),
        };
        // Sorted by file name (the directory is common to all), each
        // converted to text once (not once per comparison); paths are built
        // afterwards (from the name as it is, where it is not UTF-8).
        let mut entries: Vec<(String, std::ffi::OsString, Option<std::fs::FileType>)> = Vec::new();
        for entry in listing {
            match entry {
                Ok(e) => {
                    let name = e.file_name();
                    entries.push((name.to_string_lossy().into_owned(), name, e.file_type().ok()));
                }
                Err(e) => return self.problem(path, format!("directory cannot be listed: {e}")),
            }
        }
        sort_natural_by(&mut entries, |(text, ..)| text);
        // A `.index` is a TensorFlow checkpoint when it has data files here
        // or ends as TensorFlow's indexes do; any other (a FAISS index) is
        // not a checkpoint.
        let tf_prefixes: HashSet<String> =
            entries.iter().filter_map(|(text, ..)| crate::tf::data_prefix(text).map(str::to_string)).collect();
        let not_tf = |text: &str, file: &Path| {
            text.strip_suffix(".index").is_some_and(|p| !tf_prefixes.contains(p) && !crate::tf::has_footer(file))
        };
        for (text, name, kind) in entries {
            let file = path.join(&name);
            match kind {
                Some(t) if t.is_dir() => self.dir_entry(&file),
                Some(t) if t.is_symlink() => match std::fs::metadata(&file) {
                    Ok(m) if m.is_dir() => self.dir(&file, &m),
                    Ok(m) if is_checkpoint_name(&text) => match special(&m.file_type()) {
                        Some(what) => self.problem(&file, format!("a symlink to {what}: not opened")),
                        None if not_tf(&text, &file) => {}
                        None => {
                            self.linked.extend(identity(&m));
                            self.out.push(file)
                        }
                    },
                    Ok(_) => {}
                    Err(e) if is_checkpoint_name(&text) => self.problem(&file, format!("a broken symlink: {e}")),
                    Err(_) => {}
                },
                Some(_) if is_checkpoint_name(&text) && is_training_state(&text) => {
                    self.training_state.0 += 1;
                    if self.training_state.1.len() < 3 {
                        self.training_state.1.push(file);
                    }
                }
                Some(t) if is_checkpoint_name(&text) => match special(&t) {
                    Some(what) => self.problem(&file, format!("{what}, not a checkpoint file: not opened")),
                    None if not_tf(&text, &file) => {}
                    None => self.out.push(file),
                },
                None if is_checkpoint_name(&text) => self.out.push(file),
                _ => {}
            }
        }
    }

    fn dir_entry(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) => self.dir(path, &m),
            Err(e) => self.problem(path, format!("directory cannot be read: {e}")),
        }
    }
}

/// A directory's (device, inode), where the platform has them.
fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// What a file that is neither a regular file nor a directory is ("a
/// FIFO", "a socket", "a device"); `None` for regular files.
pub fn special(t: &std::fs::FileType) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    let _ = t;
    None
}

/// File names a directory scan takes as checkpoints: safetensors files,
/// PyTorch files (`.pt`, `.pth`, `.bin`, `.ckpt`, and `.pth.tar` as
/// PyTorch's ImageNet example and timm name theirs), NumPy files (`.npz`,
/// `.npy`), Keras files (`.h5`, `.hdf5`, `.keras`), Flax files
/// (`.msgpack`, `checkpoint_<step>`), TensorFlow checkpoints (their
/// `.index`, beside which their data files are read; a `.index` with
/// neither data files nor TensorFlow's footer, such as a FAISS index, is
/// passed over) and the extensionless
/// `checkpoints` of Ray Tune trials. What each holds is decided by its
/// bytes when opened.
fn is_checkpoint_name(name: &str) -> bool {
    let ext = |e: &str| name.len() > e.len() && name.ends_with(e);
    ext(".safetensors")
        || ext(".pt")
        || ext(".pth")
        || ext(".bin")
        || ext(".ckpt")
        || ext(".pth.tar")
        || ext(".pt.tar")
        || ext(".npz")
        || ext(".npy")
        || ext(".h5")
        || ext(".hdf5")
        || ext(".keras")
        || ext(".msgpack")
        || ext(".index")
        || name == "checkpoints"
        || is_flax_checkpoint_name(name)
}

/// `checkpoint_<step>`: the extensionless file of Flax's
/// `save_checkpoint` (without Orbax). Ray Tune's folders of that name are
/// walked into, not read.
fn is_flax_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("checkpoint_").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Names that training libraries give the state they save beside a model:
/// an optimizer's, a learning-rate scheduler's, a data sampler's, a loss
/// scaler's or the random generators' state, and the Trainer's pickled
/// arguments (Hugging Face's Trainer: `optimizer.pt`, `scheduler.pt`,
/// `rng_state.pth`, `scaler.pt`, `training_args.bin`; Accelerate's
/// `save_state`: `optimizer.bin`, `scheduler_1.bin`, `sampler.bin`;
/// DeepSpeed's `*_optim_states.pt`). None is a network: in a walked
/// directory they are not read, and the scan says how many it left.
fn is_training_state(name: &str) -> bool {
    if name == "training_args.bin" || name.ends_with("optim_states.pt") {
        return true;
    }
    let Some((stem, ext)) = name.rsplit_once('.') else { return false };
    let base = match stem.rsplit_once('_') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => stem,
    };
    matches!(ext, "pt" | "bin" | "pth")
        && matches!(base, "optimizer" | "scheduler" | "sampler" | "scaler" | "rng_state")
}

/// A checkpoint's name in the tables (the `checkpoint` column), losslessly:
/// the path as given where it is UTF-8 without backslashes; otherwise each
/// byte that is not UTF-8 written `\xNN` and each backslash `\\`, so two
/// paths that differ only in such bytes keep distinct names (and `--resume`
/// and `merge`, which match by name, keep both).
pub fn checkpoint_id(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if let Ok(text) = std::str::from_utf8(bytes) {
            if !text.contains('\\') {
                return text.to_string();
            }
        }
        let mut out = String::with_capacity(bytes.len() + 8);
        for chunk in bytes.utf8_chunks() {
            out.push_str(&chunk.valid().replace('\\', "\\\\"));
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        path.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn training_state_is_told_by_its_name() {
        for name in [
            "optimizer.pt",
            "optimizer.bin",
            "optimizer_1.bin",
            "scheduler.pt",
            "scheduler_12.bin",
            "sampler.bin",
            "scaler.pt",
            "rng_state.pth",
            "rng_state_3.pth",
            "training_args.bin",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        ] {
            assert!(is_training_state(name), "{name}");
        }
        for name in ["model.safetensors", "pytorch_model.bin", "optimizer_x.bin", "my_optimizer.pt", "scheduler.ckpt"] {
            assert!(!is_training_state(name), "{name}");
        }
    }

    #[test]
    fn ids_are_lossless_and_distinct() {
        use std::os::unix::ffi::OsStrExt;
        let id = |b: &[u8]| checkpoint_id(Path::new(std::ffi::OsStr::from_bytes(b)));
        assert_eq!(id(b"zoo/a.safetensors"), "zoo/a.safetensors");
        assert_eq!(id(b"zoo/\xff.pt"), "zoo/\\xff.pt");
        assert_ne!(id(b"zoo/\xff.pt"), id(b"zoo/\xfe.pt"));
        // A literal `\xff` in a valid name cannot collide with the byte.
        assert_eq!(id(b"zoo/\\xff.pt"), "zoo/\\\\xff.pt");
        assert_ne!(id(b"zoo/\\xff.pt"), id(b"zoo/\xff.pt"));
    }
}
