//! Read-only maps of checkpoint files that survive the file being cut short
//! by another process, and say whether the file changed while it was read.
//!
//! Reading a mapped page past the end of a file that was truncated after it
//! was mapped raises SIGBUS, which ends the process: a scan of a training
//! run would die whenever `torch.save` overwrote a checkpoint (`last.ckpt`)
//! as it was read. With the first map, a handler is installed: a fault
//! inside a live [`Map`] puts zero pages over the rest of that map (the
//! read goes on, over zeros) and marks it cut, and [`Map::changed`] then
//! says so, so the checkpoint is reported, never measured from those zeros.
//! A fault anywhere else goes to the handler there was before (Rust's
//! stack-overflow report, Python's faulthandler, or the default: the process
//! ends, as without this module).
//!
//! A file rewritten in place without being cut short (or cut and written
//! again) is seen by its [`Stamp`] (size and modification time), taken when
//! it was mapped and compared afterwards.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use memmap2::Mmap;

/// A file's identity and last modification, as `fstat` gives them: two
/// stamps of one open file differ when it was written (or truncated) in
/// between. A change within the file system's timestamp granularity (a few
/// milliseconds) that keeps the size is not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// Device and inode where the platform has them.
    id: (u64, u64),
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub(crate) fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let id = (0, 0);
        Stamp { len: meta.len(), modified: meta.modified().ok(), id }
    }

    /// The stamp of an open file now.
    pub(crate) fn now(file: &File) -> std::io::Result<Stamp> {
        file.metadata().map(|m| Stamp::of(&m))
    }
}

/// The error of a read that saw its file change ([`is_changed`]).
#[derive(Debug)]
struct Changed;

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the file changed while it was read")
    }
}

impl std::error::Error for Changed {}

/// An I/O error saying the file changed while it was read.
pub(crate) fn changed() -> std::io::Error {
    std::io::Error::other(Changed)
}

/// Whether an I/O error is [`changed`]'s.
pub(crate) fn is_changed(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<Changed>())
}

/// A read-only map of a whole file, guarded while it lives (see the module
/// documentation).
pub(crate) struct Map {
    map: Mmap,
    /// Kept open to stamp the file the map reads, whatever is renamed over
    /// its path meanwhile.
    file: File,
    stamp: Stamp,
    /// Its entry in [`LIVE`]; `None` when all were taken (then unguarded).
    slot: Option<usize>,
}

impl Map {
    /// Maps `file`, whose metadata (taken just before) is `meta`.
    pub(crate) fn new(file: File, meta: &std::fs::Metadata) -> std::io::Result<Map> {
        let stamp = Stamp::of(meta);
        // SAFETY: the map is read-only. A truncation by another process
        // while it is mapped faults into `on_fault`, which maps zeros over
        // the rest and marks it cut (unix); Windows refuses to truncate a
        // mapped file.
        let map = unsafe { Mmap::map(&file) }?;
        let slot = guard(map.as_ptr() as usize, map.len());
        Ok(Map { map, file, stamp, slot })
    }

    /// Whether the file changed since it was mapped: cut short under the
    /// map, or written (its [`Stamp`] differs).
    pub(crate) fn changed(&self) -> bool {
        self.slot.is_some_and(|i| LIVE[i].cut.load(Ordering::Acquire))
            || Stamp::now(&self.file).map_or(true, |now| now != self.stamp)
    }

    /// Passes advice on to the kernel (best effort for the caller).
    #[cfg(unix)]
    pub(crate) fn advise(&self, advice: memmap2::Advice) -> std::io::Result<()> {
        self.map.advise(advice)
    }
}

impl std::ops::Deref for Map {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // Out of the table before the map goes (the field is dropped after).
        if let Some(i) = self.slot {
            LIVE[i].len.store(0, Ordering::Release);
            LIVE[i].start.store(0, Ordering::Release);
        }
    }
}

/// One live map: its address range, and whether it was cut. Written by
/// [`guard`] and [`Map`]'s drop, read by the signal handler (atomics only:
/// nothing there may lock or allocate).
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    cut: AtomicBool,
}

/// Maps live at once, at most (a scan holds a few per worker); past this a
/// map is unguarded, as every map was before.
const SLOTS: usize = 1024;

static LIVE: [Slot; SLOTS] =
    [const { Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), cut: AtomicBool::new(false) } }; SLOTS];

/// Enters the map at `start` (`len` bytes) in [`LIVE`], installing the
/// handler first.
fn guard(start: usize, len: usize) -> Option<usize> {
    if len == 0 || !fault::install() {
        return None;
    }
    let i =
        LIVE.iter().position(|s| s.start.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
    LIVE[i].cut.store(false, Ordering::Relaxed);
    LIVE[i].len.store(len, Ordering::Release);
    Some(i)
}

#[cfg(unix)]
mod fault {
    use super::{Ordering, LIVE};
    use std::sync::atomic::AtomicUsize;
    use std::sync::OnceLock;

    /// The handler there was before, which faults outside every map go to.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
    static PAGE: AtomicUsize = AtomicUsize::new(0);

    /// Installs the SIGBUS handler once; whether it is in place.
    pub(super) fn install() -> bool {
        static DONE: OnceLock<bool> = OnceLock::new();
        *DONE.get_or_init(|| {
            // SAFETY: plain libc calls on zeroed structures of their own type.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page <= 0 {
                    return false;
                }
                PAGE.store(page as usize, Ordering::Relaxed);
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_fault as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                    return false;
                }
                let _ = PREVIOUS.set(old);
                true
            }
        })
    }

    /// The SIGBUS handler: zeros over the rest of the live map the fault is
    /// in (from its page on), or the previous handler.
    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Ordering::Relaxed);
        for slot in &LIVE {
            let start = slot.start.load(Ordering::Acquire);
            let len = slot.len.load(Ordering::Acquire);
            if start == 0 || addr < start || addr - start >= len {
                continue;
            }
            let from = addr & !(page - 1);
            let end = (start + len).div_ceil(page) * page;
            // SAFETY: [from, end) lies within the live map the fault is in,
            // whose owner is reading it now (so it is not unmapped
            // meanwhile); fresh zero pages replace its pages there.
            let zeros = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zeros != libc::MAP_FAILED {
                slot.cut.store(true, Ordering::Release);
                return;
            }
        }
        // SAFETY: the previous disposition, called as it was installed; or
        // the default, after which the faulting access faults again and
        // ends the process as it would have without this handler.
        unsafe {
            match PREVIOUS.get() {
                Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                    if p.sa_flags & libc::SA_SIGINFO != 0 {
                        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                            std::mem::transmute(p.sa_sigaction);
                        f(sig, info, context);
                    } else {
                        let f: extern "C" fn(libc::c_int) = std::mem::transmute(p.sa_sigaction);
                        f(sig);
                    }
                }
                _ => {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &default, std::ptr::null_mut());
                }
            }
        }
    }
}

#[cfg(not(unix))]
mod fault {
    /// Nothing to install: Windows refuses to truncate a mapped file.
    pub(super) fn install() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, Map) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        let file = File::open(f.path()).unwrap();
        let meta = file.metadata().unwrap();
        (f, Map::new(file, &meta).unwrap())
    }

    #[test]
    fn a_map_cut_short_reads_zeros_and_says_so() {
        let page = 4096 * 16;
        let bytes: Vec<u8> = (0..3 * page).map(|i| (i % 251) as u8 + 1).collect();
        let (f, map) = file_of(&bytes);
        assert!(!map.changed());
        assert_eq!(map[2 * page + 7], bytes[2 * page + 7]);
        // Another process truncates it (a second handle here).
        std::fs::OpenOptions::new().write(true).open(f.path()).unwrap().set_len(page as u64 / 2).unwrap();
        // Past the new end: zeros, not SIGBUS; before it, the file.
        assert_eq!(map[2 * page + 7], 0);
        assert_eq!(map[3 * page - 1], 0);
        assert_eq!(map[10], bytes[10]);
        assert!(map.changed());
        let slot = map.slot.unwrap();
        drop(map);
        assert_eq!(LIVE[slot].start.load(Ordering::Acquire), 0, "dropped maps leave the table");
    }

    #[test]
    fn a_file_written_in_place_is_changed() {
        let (f, map) = file_of(&[7u8; 8192]);
        assert!(!map.changed());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut w = std::fs::OpenOptions::new().write(true).open(f.path()).unwrap();
        w.write_all(&[9u8; 100]).unwrap();
        drop(w);
        assert!(map.changed());
    }

    #[test]
    fn a_file_renamed_over_is_not_a_change_of_the_one_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        std::fs::write(&path, [1u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let map = Map::new(file, &meta).unwrap();
        // An atomic save: a new file renamed over the path.
        std::fs::write(dir.path().join("tmp"), [2u8; 100]).unwrap();
        std::fs::rename(dir.path().join("tmp"), &path).unwrap();
        assert!(!map.changed());
        assert_eq!(map[8191], 1);
    }
}
