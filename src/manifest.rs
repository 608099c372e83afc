//! What a scan directory holds, and who writes it: the manifest (the
//! settings that shape the tables, the shard, the collection's identity,
//! whether the tables are complete), checksums of journal records, and the
//! lock that keeps one writer per directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collection::{checkpoint_id, Collection};
use crate::error::{Error, Result};
use crate::output::{atomic_stage, AtomicFile};

/// Name of the manifest inside a scan directory.
pub const MANIFEST: &str = "scan.manifest";

/// Name of the lock file inside a scan directory.
pub const LOCK: &str = ".cntscope.lock";

/// A 64-bit FNV-1a digest over 8-byte words (then the tail bytes): fast,
/// stable across platforms and builds; it detects damage, not forgery.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut d = Digest::default();
    d.update(bytes);
    d.finish()
}

/// An incremental [`digest`]: over each update's bytes and length, in
/// order (one update of some bytes is their [`digest`]).
#[derive(Debug, Clone, Copy)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        for &b in words.remainder() {
            self.mix(u64::from(b));
        }
        // The length too, so a zero tail is not invisible.
        self.mix(bytes.len() as u64);
    }

    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::PRIME);
    }

    /// One update fed in pieces (bytes too many to hold at once): see
    /// [`StreamDigest`].
    pub fn stream(self) -> StreamDigest {
        StreamDigest { digest: self, carry: [0; 8], held: 0, len: 0 }
    }

    /// The digest so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// A [`Digest::update`] whose bytes come in pieces: when finished, the
/// same digest as one update of all the pieces together, however they
/// were cut (a record of a checkpoint with 10^5 layers is written and
/// checked a megabyte at a time).
#[derive(Debug, Clone, Copy)]
pub struct StreamDigest {
    digest: Digest,
    /// Bytes of an unfinished word.
    carry: [u8; 8],
    held: usize,
    len: u64,
}

impl StreamDigest {
    /// Adds the next piece.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.held > 0 {
            let take = (8 - self.held).min(bytes.len());
            self.carry[self.held..self.held + take].copy_from_slice(&bytes[..take]);
            self.held += take;
            bytes = &bytes[take..];
            if self.held < 8 {
                return;
            }
            self.digest.mix(u64::from_le_bytes(self.carry));
            self.held = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.digest.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.held = rest.len();
    }

    /// The digest, as if all pieces had been one update.
    pub fn finish(mut self) -> Digest {
        for i in 0..self.held {
            self.digest.mix(u64::from(self.carry[i]));
        }
        self.digest.mix(self.len);
        self.digest
    }
}

/// Which checkpoints a scan is of: every entry of the whole (unsharded)
/// collection by name, size and modification time, and where the paths
/// given resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionId {
    /// Entries (checkpoints and unreadable entries) in the whole collection.
    pub entries: usize,
    /// Digest of each entry's name, size and modification time, in order.
    pub digest: String,
    /// The first entry's name (to show how names were spelt).
    pub first: Option<String>,
    /// The paths given, resolved (canonical).
    pub roots: Vec<String>,
}

impl CollectionId {
    /// The identity of `collection`.
    pub fn of(collection: &Collection) -> Self {
        // Each entry's name, size and modification time, stat'ed on all
        // cores (a collection can hold 10^5 files), digested in order.
        let item = |path: &PathBuf| {
            let (size, mtime) = std::fs::metadata(crate::flat::file_of(path)).map_or((u64::MAX, 0), |m| {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |t| t.as_nanos());
                (m.len(), mtime)
            });
            let mut item = checkpoint_id(path).into_bytes();
            item.extend_from_slice(&size.to_le_bytes());
            item.extend_from_slice(&mtime.to_le_bytes());
            item
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = collection.paths.len().div_ceil(threads).max(1024);
        let items: Vec<Vec<Vec<u8>>> = if collection.paths.len() <= chunk {
            // One part: no thread to start.
            vec![collection.paths.iter().map(item).collect()]
        } else {
            std::thread::scope(|s| {
                let parts: Vec<_> = collection
                    .paths
                    .chunks(chunk)
                    .map(|part| s.spawn(move || part.iter().map(item).collect()))
                    .collect();
                parts.into_iter().map(|p| p.join().expect("stat thread panicked")).collect()
            })
        };
        let mut d = Digest::default();
        for item in items.iter().flatten() {
            d.update(item);
        }
        CollectionId {
            entries: collection.paths.len(),
            digest: format!("{:016x}", d.finish()),
            first: collection.paths.first().map(|p| checkpoint_id(p)),
            roots: collection
                .roots
                .iter()
                .map(|r| checkpoint_id(&r.canonicalize().unwrap_or_else(|_| r.to_path_buf())))
                .collect(),
        }
    }

    /// How `self` (the recorded collection) differs from `now`, if it does;
    /// `roots` compares where the paths resolve too.
    pub fn difference(&self, now: &CollectionId, roots: bool) -> Option<String> {
        if roots && self.roots != now.roots {
            return Some(format!(
                "the paths given resolve to {}, the scan was of {}",
                now.roots.join(", "),
                self.roots.join(", ")
            ));
        }
        if self.first != now.first && self.entries > 0 && now.entries > 0 {
            return Some(format!(
                "checkpoints are named as the paths are given: the scan named its first `{}`, these paths name \
                 it `{}` (give the paths as the scan did)",
                self.first.as_deref().unwrap_or(""),
                now.first.as_deref().unwrap_or("")
            ));
        }
        if self.entries != now.entries {
            return Some(format!("the scan was of {} checkpoints, these paths hold {}", self.entries, now.entries));
        }
        (self.digest != now.digest).then(|| {
            "the checkpoints changed since the scan (a file renamed, replaced, or modified: its size or \
             modification time differs)"
                .to_string()
        })
    }
}

/// What a scan directory holds: written when a scan starts (incomplete),
/// rewritten complete once the tables are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The journal's record format.
    pub format: u32,
    /// The cntscope that wrote it.
    pub version: String,
    /// Every setting that shapes the tables, by name.
    pub settings: BTreeMap<String, String>,
    /// `[I, N]`: this directory holds checkpoints `i % N == I` (`[0, 1]`:
    /// all of them).
    pub shard: [usize; 2],
    /// The collection.
    pub collection: CollectionId,
    /// True once the four tables are complete and published.
    pub complete: bool,
    /// The size in bytes of each published table (checked by readers).
    #[serde(default)]
    pub tables: BTreeMap<String, u64>,
}

impl Manifest {
    /// The manifest of `dir`, `None` when it has none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::ScanDir { path, reason: format!("unreadable manifest ({e}): not a scan's") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::ScanDir { path, reason: e.to_string() }),
        }
    }

    /// Writes it into `dir` (atomically, synced).
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.stage(dir)?.commit()
    }

    /// Writes it beside `dir`'s manifest as a temporary file (a full disk
    /// fails here); [`AtomicFile::commit`] syncs it and puts it in place.
    pub fn stage(&self, dir: &Path) -> Result<AtomicFile> {
        let text = serde_json::to_vec_pretty(self).expect("manifests serialise");
        atomic_stage(&dir.join(MANIFEST), |w| w.write_all(&text))
    }

    /// The settings (and record format) of `self` that differ from
    /// `other`'s, as `name: then -> now`; the shard is not a setting.
    pub fn setting_differences(&self, other: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        if self.format != other.format {
            out.push(format!("record format: {} -> {} (another cntscope version)", self.format, other.format));
        }
        let names: std::collections::BTreeSet<&String> = self.settings.keys().chain(other.settings.keys()).collect();
        for name in names {
            let (a, b) = (self.settings.get(name), other.settings.get(name));
            if a != b {
                let show = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| v.clone());
                out.push(format!("{name}: {} -> {}", show(a), show(b)));
            }
        }
        out
    }

    /// A directory whose tables the study commands may read: a complete
    /// manifest.
    pub fn require_complete(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        match Self::read(dir)? {
            Some(m) if m.complete => {
                for (table, &size) in &m.tables {
                    let now = std::fs::metadata(dir.join(table)).map(|t| t.len()).ok();
                    if now != Some(size) {
                        return Err(Error::ScanDir {
                            path: dir.join(table),
                            reason: format!(
                                "{} where the scan wrote {size} bytes (lost in a crash, or changed since): run the \
                                 scan again with --resume to render the tables from its journal",
                                now.map_or("missing".to_string(), |n| format!("{n} bytes"))
                            ),
                        });
                    }
                }
                Ok(m)
            }
            Some(_) => Err(Error::ScanDir {
                path: dir.to_path_buf(),
                reason: "the scan here did not finish (its tables are incomplete or missing): run it again with \
                         --resume"
                    .into(),
            }),
            None => Err(Error::ScanDir {
                path,
                reason: "no manifest: not a scan directory, or one written by an older cntscope (scan again)".into(),
            }),
        }
    }
}

/// `I/N`, or `none` for a whole collection.
pub fn shard_text([i, n]: [usize; 2]) -> String {
    if n == 1 {
        "none".into()
    } else {
        format!("{i}/{n}")
    }
}

/// An advisory lock on a scan directory, held while the value lives and
/// released by the operating system if the process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` for writing (exclusive), recording this process's id;
    /// refuses at once when another process holds it.
    pub fn exclusive(dir: &Path) -> Result<Self> {
        Self::take(dir, true)
    }

    /// Locks `dir` for reading (shared with other readers, refused while a
    /// writer holds it).
    pub fn shared(dir: &Path) -> Result<Self> {
        Self::take(dir, false)
    }

    fn take(dir: &Path, exclusive: bool) -> Result<Self> {
        let path = dir.join(LOCK);
        let io = |e: std::io::Error| Error::ScanDir { path: path.clone(), reason: format!("cannot lock: {e}") };
        let mut file =
            std::fs::OpenOptions::new().read(true).write(exclusive).create(exclusive).truncate(false).open(&path);
        if !exclusive && file.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            // Never written to by a scan of this version: nobody holds it.
            file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
            if file.is_err() {
                // A read-only directory: nothing can be writing into it.
                return Ok(DirLock { _file: File::open(dir).map_err(io)? });
            }
        }
        let mut file = file.map_err(io)?;
        let taken = if exclusive { file.try_lock() } else { file.try_lock_shared() };
        match taken {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                return Err(Error::ScanDir {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "{who} is writing this scan directory (a scan, merge or study): wait for it to finish, or \
                         choose another directory"
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if exclusive {
            let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_every_byte_and_the_length() {
        assert_ne!(digest(b"abcdefgh"), digest(b"abcdefgi"));
        assert_ne!(digest(b"abc"), digest(b"abc\0"));
        assert_ne!(digest(b""), digest(b"\0\0\0\0\0\0\0\0"));
        assert_eq!(digest(b"scan"), digest(b"scan"));
    }

    #[test]
    fn a_streamed_update_is_one_update_however_cut() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut head = Digest::default();
        head.update(b"head");
        let mut whole = head;
        whole.update(&bytes);
        for cuts in [&[][..], &[1], &[7, 8, 9], &[3, 3, 3, 500], &[999], &[0, 0, 16, 17]] {
            let mut s = head.stream();
            let mut at = 0;
            for &c in cuts {
                let end = (at + c).min(bytes.len());
                s.update(&bytes[at..end]);
                at = end;
            }
            s.update(&bytes[at..]);
            assert_eq!(s.finish().finish(), whole.finish(), "cut at {cuts:?}");
        }
    }

    #[test]
    fn a_second_writer_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::exclusive(dir.path()).unwrap();
        let e = DirLock::exclusive(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("process {}", std::process::id())), "{e}");
        assert!(DirLock::shared(dir.path()).is_err());
        drop(first);
        let a = DirLock::shared(dir.path()).unwrap();
        let _b = DirLock::shared(dir.path()).unwrap();
        assert!(DirLock::exclusive(dir.path()).is_err());
        drop(a);
    }
}
