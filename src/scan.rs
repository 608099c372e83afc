//! Measuring collections: workers open and analyse checkpoints in parallel
//! (in batches, for the GPU), format each finished checkpoint's record
//! (result or error) into a buffer of their own and append it to a journal
//! every fraction of a second, then write the records whose turn has come
//! to the tables, in input order (or, when that cannot be done, the tables
//! are rendered from the journal at the end). So memory does not grow with
//! the collection, a failing checkpoint never stops the rest, an
//! interrupted scan keeps what it finished (`resume` does only the rest),
//! and shards of one collection run anywhere and merge into exactly the
//! tables one run would give.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::collection::{checkpoint_id, Collection};
use crate::engine::{Analysis, AnalysisOptions, Engine};
use crate::error::{Error, Result};
use crate::graph::{GraphOptions, Network};
use crate::manifest::{shard_text, CollectionId, DirLock, Manifest, MANIFEST};
use crate::output::{self, atomic_write, AtomicFile, Columns, RowWriter};

/// Name of the journal file inside a scan's output directory.
pub const JOURNAL: &str = "scan.journal";

/// Validated settings of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// How to read each checkpoint as a graph.
    pub graph: GraphOptions,
    /// What to measure.
    pub analysis: AnalysisOptions,
    /// Checkpoints analysed at once.
    pub jobs: usize,
    /// Keep the journal of an earlier run and analyse only what it lacks.
    pub resume: bool,
    /// Report progress on standard error (only shown on a terminal).
    pub progress: bool,
    /// Stop at the first failing checkpoint.
    pub strict: bool,
    /// Only checkpoints `i` with `i % n == k`: `Some((k, n))`.
    pub shard: Option<(usize, usize)>,
    /// Metadata for checkpoints whose files carry none (or to override).
    pub metadata: Option<MetadataTable>,
    /// Metadata read from each checkpoint's path (filling what the file
    /// lacks).
    pub name_pattern: Option<crate::layouts::NamePattern>,
    /// Progress and a stop for another thread (the Python binding's).
    pub control: Option<std::sync::Arc<ScanControl>>,
}

/// A running scan seen from another thread: how far it is, and a way to
/// stop it (Ctrl-C in Python). Stopped, the scan finishes the checkpoints
/// in hand, keeps all it measured in its journal, publishes no table and
/// returns [`Error::Interrupted`]; `resume` then measures only the rest.
#[derive(Debug, Default)]
pub struct ScanControl {
    stop: AtomicBool,
    done: AtomicUsize,
    total: AtomicUsize,
}

impl ScanControl {
    /// Asks the scan to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Checkpoints measured so far, and to measure in all, by this run.
    pub fn progress(&self) -> (usize, usize) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl ScanOptions {
    /// A plain scan: default analysis, fresh output, progress on a
    /// terminal, every checkpoint, no metadata table.
    pub fn new(graph: GraphOptions, jobs: usize) -> Self {
        ScanOptions {
            graph,
            analysis: AnalysisOptions::default(),
            jobs,
            resume: false,
            progress: true,
            strict: false,
            shard: None,
            metadata: None,
            name_pattern: None,
            control: None,
        }
    }

    /// Every setting that shapes the tables, by name, as the manifest
    /// records them (`--resume` and `merge` compare them): the graph
    /// options in full (a spec by its contents, not its path), bins,
    /// metadata table (by digest) and name pattern (the scan adds the
    /// engine). Jobs and progress shape no byte of the tables and are not
    /// recorded.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let g = &self.graph;
        let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
        let spec = g.spec.as_ref().map(|spec| {
            // Where the file is and which line each entry is on are no
            // part of what it says.
            let content = crate::spec::Spec { path: PathBuf::new(), lines: Vec::new(), ..spec.clone() };
            format!("{:016x}", crate::manifest::digest(show(&content).as_bytes()))
        });
        let mut out = BTreeMap::from([
            ("bins".to_string(), self.analysis.bins.to_string()),
            ("spec".to_string(), spec.unwrap_or_else(|| "none".into())),
            ("input".to_string(), show(&g.input)),
            ("layout".to_string(), show(&g.layout)),
            ("bias".to_string(), show(&g.bias)),
            ("bn".to_string(), show(&g.bn)),
            ("metadata".to_string(), self.metadata.as_ref().map_or("none".into(), |t| format!("{:016x}", t.digest))),
            ("name_pattern".to_string(), self.name_pattern.as_ref().map_or("none".into(), |p| p.as_str().to_string())),
        ]);
        // Whatever graph option is added later is recorded too.
        let graph = GraphOptions { spec: None, ..g.clone() };
        out.insert("graph".into(), show(&graph));
        out
    }
}

/// Metadata columns from a CSV table keyed by checkpoint path (a `path` or
/// `checkpoint` column); its values override the files' own.
#[derive(Debug, Clone, Default)]
pub struct MetadataTable {
    rows: HashMap<PathBuf, BTreeMap<String, String>>,
    /// Digest of the file's bytes (the scan's manifest records it).
    digest: u64,
}

impl MetadataTable {
    /// Reads the table; paths are matched as given and after
    /// canonicalisation.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Spec { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let digest = crate::manifest::digest(&bytes);
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let header: Vec<String> = reader.headers().map_err(|e| err(e.to_string()))?.iter().map(String::from).collect();
        let key = header
            .iter()
            .position(|h| h == "path" || h == "checkpoint")
            .ok_or_else(|| err("the metadata table needs a `path` or `checkpoint` column".into()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rows = HashMap::new();
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| err(format!("row {}: {e}", line + 2)))?;
            let values: BTreeMap<String, String> = header
                .iter()
                .zip(record.iter())
                .enumerate()
                .filter(|&(i, _)| i != key)
                .map(|(_, (h, v))| (h.clone(), v.to_string()))
                .collect();
            let p = PathBuf::from(&record[key]);
            let resolved = if p.is_relative() && !p.exists() { base.join(&p) } else { p.clone() };
            if let Ok(canonical) = resolved.canonicalize() {
                rows.insert(canonical, values.clone());
            }
            rows.insert(p, values);
        }
        Ok(MetadataTable { rows, digest })
    }

    /// The row for a checkpoint, if the table has one.
    pub fn get(&self, checkpoint: &Path) -> Option<&BTreeMap<String, String>> {
        self.rows.get(checkpoint).or_else(|| checkpoint.canonicalize().ok().and_then(|c| self.rows.get(&c)))
    }
}

/// How a scan went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Checkpoints analysed.
    pub analysed: usize,
    /// Checkpoints that failed (listed in `errors.csv`).
    pub failed: usize,
    /// Checkpoints analysed that hold NaN or infinite weights or biases
    /// (counted per layer and node set in the `non_finite` columns).
    pub non_finite: usize,
    /// What graph building assumed (distinct notes, at most
    /// [`Notes::MAX`]) and what the scan repaired, for the user to see.
    pub notes: Vec<String>,
    /// Checkpoints whose records an earlier run (`--resume`) had kept.
    pub kept: usize,
    /// Shards merged (by `merge`).
    pub shards: usize,
    /// The most bytes of one checkpoint's table rows held at once: all of
    /// them for a record held encoded, a piece for one written in pieces.
    pub largest_rows: usize,
}

/// What a scan has to say beyond its tables: the distinct notes of the
/// networks it built, the files it opened that may be linked under
/// another name, and checkpoints that measure exactly as an earlier one.
#[derive(Debug, Default)]
pub struct Notes {
    graph: std::sync::Mutex<Vec<String>>,
    /// (file identity, order) of files that may have other names.
    linked: std::sync::Mutex<Vec<((u64, u64), usize)>>,
    copies: std::sync::Mutex<Copies>,
}

/// The fingerprints of recently measured checkpoints ([`Copies::RECENT`] of
/// them: a copy sits in its original's folder, as `last.ckpt` beside the
/// epoch it copies), and the checkpoints found to measure as one of them.
#[derive(Debug, Default)]
struct Copies {
    /// Fingerprint -> order of its first checkpoint.
    recent: HashMap<u64, usize>,
    /// The fingerprints in `recent`, oldest first.
    queue: std::collections::VecDeque<u64>,
    /// Identities of the linked files measured: a second name of one is
    /// said as such, never as a copy.
    files: HashSet<(u64, u64)>,
    /// (copy, original) orders, the first few.
    shown: Vec<(usize, usize)>,
    /// How many copies in all.
    count: usize,
}

impl Copies {
    const RECENT: usize = 4096;
}

impl Notes {
    /// Notes kept; later ones are counted in a last line.
    pub const MAX: usize = 20;

    /// Records a network's notes (and the reason for a per-layer analysis).
    pub fn add(&self, net: &Network) {
        let per_layer = net.per_layer_note();
        if net.notes.is_empty() && per_layer.is_none() {
            return;
        }
        let mut v = self.graph.lock().expect("notes lock");
        for n in net.notes.iter().chain(&per_layer) {
            if v.len() < Self::MAX && !v.contains(n) {
                v.push(n.clone());
            }
        }
    }

    /// Records that checkpoint `order` of the collection is the file `id`,
    /// which may be in it under another name too.
    fn linked(&self, id: (u64, u64), order: usize) {
        self.linked.lock().expect("notes lock").push((id, order));
    }

    /// Records checkpoint `order`'s measures by their fingerprint
    /// ([`Analysis::fingerprint`]); `file` is its identity when it may be
    /// linked (one file under two names is said as such, not as a copy).
    fn measured(&self, fingerprint: u64, order: usize, file: Option<(u64, u64)>) {
        let mut c = self.copies.lock().expect("notes lock");
        if file.is_some_and(|f| !c.files.insert(f)) {
            return;
        }
        match c.recent.get(&fingerprint) {
            Some(&first) => {
                c.count += 1;
                if c.shown.len() < 5 {
                    // Checkpoints are measured side by side: the later in
                    // the collection is the copy.
                    c.shown.push((order.max(first), order.min(first)));
                }
            }
            None => {
                if c.queue.len() == Copies::RECENT {
                    let old = c.queue.pop_front().expect("full");
                    c.recent.remove(&old);
                }
                c.queue.push_back(fingerprint);
                c.recent.insert(fingerprint, order);
            }
        }
    }

    /// The notes, with those about the collection: checkpoints that are
    /// one file under several names, checkpoints that measure exactly as
    /// another (each is measured, so a study counts them as often), and
    /// the training-state files left out.
    fn take(self, collection: &Collection) -> Vec<String> {
        let mut notes = self.graph.into_inner().expect("notes lock");
        let name = |i: usize| format!("`{}`", collection.paths[i].display());
        notes.extend(links_note(self.linked.into_inner().expect("notes lock"), &name));
        notes.extend(copies_note(self.copies.into_inner().expect("notes lock"), &name));
        notes.extend(training_state_note(collection));
        notes
    }
}

/// The note naming the files measured under several names (at most five,
/// by three of their names), from the (identity, order) of each linked
/// file measured.
fn links_note(mut linked: Vec<((u64, u64), usize)>, name: &dyn Fn(usize) -> String) -> Option<String> {
    linked.sort_unstable();
    let mut groups: Vec<Vec<usize>> = linked
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
        .map(|run| run.iter().map(|&(_, order)| order).collect())
        .collect();
    if groups.is_empty() {
        return None;
    }
    groups.sort_unstable();
    let group = |g: &Vec<usize>| {
        let names: Vec<String> = g.iter().take(3).map(|&i| name(i)).collect();
        match g.len() {
            n @ 4.. => format!("{} = ... ({n} names)", names.join(" = ")),
            _ => names.join(" = "),
        }
    };
    let shown: Vec<String> = groups.iter().take(5).map(group).collect();
    let more = groups.len().saturating_sub(5);
    Some(format!(
        "{} in the collection under more than one name (hard links or symlinks, such as timm's \
         `last.pth.tar` and `model_best.pth.tar` or Lightning's `last.ckpt`): {}{}; each is measured \
         under every name, so a study counts it once per name: leave the links out to count it once",
        match groups.len() {
            1 => "1 file is".to_string(),
            n => format!("{n} files are"),
        },
        shown.join(", "),
        if more > 0 { format!(", and {more} more") } else { String::new() }
    ))
}

/// The note naming checkpoints that measure exactly as an earlier one.
fn copies_note(copies: Copies, name: &dyn Fn(usize) -> String) -> Option<String> {
    if copies.count == 0 {
        return None;
    }
    let mut shown = copies.shown;
    shown.sort_unstable();
    let pairs: Vec<String> = shown.iter().map(|&(copy, first)| format!("{} = {}", name(copy), name(first))).collect();
    Some(format!(
        "{} exactly as an earlier one (every node set's and layer's moments equal to the bit: the same \
         weights, as a copy such as Lightning's `last.ckpt` saved with `save_last=True`, or runs from one \
         initialisation before their first step): {}{}; each is measured, so a study counts that network \
         once per checkpoint",
        match copies.count {
            1 => "1 checkpoint measures".to_string(),
            n => format!("{n} checkpoints measure"),
        },
        pairs.join(", "),
        if copies.count > pairs.len() { ", ..." } else { "" }
    ))
}

/// The note on the training-state files the collection left out.
fn training_state_note(collection: &Collection) -> Option<String> {
    let (n @ 1.., examples) = &collection.training_state else { return None };
    let shown: Vec<String> = examples.iter().map(|p| format!("`{}`", p.display())).collect();
    Some(format!(
        "{n} file{} named as a training run's state (an optimizer's, scheduler's, sampler's, loss scaler's or \
         random generators' state, or the Trainer's arguments: `optimizer.pt`, `scheduler.bin`, \
         `rng_state.pth`, `training_args.bin`, ...) not read, none being a network: {}{}; name one on the \
         command line to read it anyway",
        if *n == 1 { "" } else { "s" },
        shown.join(", "),
        if *n > shown.len() { ", ..." } else { "" }
    ))
}

/// A checkpoint and its measures.
pub struct Measured {
    /// The checkpoint's `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// The graph it was read as.
    pub network: Network,
    /// The measures.
    pub analysis: Analysis,
}

/// Opens, reads as a graph and measures one checkpoint.
pub fn measure(path: &Path, graph: &GraphOptions, engine: &dyn Engine, opts: &AnalysisOptions) -> Result<Measured> {
    let ck = Checkpoint::open_as(path, graph.key.as_deref())?;
    let measured = Network::build(&ck, graph).and_then(|network| {
        let analysis = engine.analyze(&network, &ck, opts)?;
        Ok(Measured { metadata: ck.metadata().clone(), network, analysis })
    });
    ck.unless_changed(measured)
}

/// How long a worker keeps finished records before appending them to the
/// journal (so a kill loses at most this much work), and how many bytes.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
const FLUSH_BYTES: usize = 1 << 20;

/// A worker's buffer of records: room for [`FLUSH_BYTES`] and the record
/// that crosses it, so it is allocated (and its pages touched) once.
fn record_buffer() -> Vec<u8> {
    Vec::with_capacity(FLUSH_BYTES + FLUSH_BYTES / 4)
}

/// The layout of a journal record (checksum, head, rows). The manifest
/// records it: `--resume` and `merge` refuse a journal of another layout,
/// and a record of another layout inside a journal counts as damage.
const FORMAT: u32 = 4;

/// How often the journal is synced in the background while it grows.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The head of one journal record: a JSON line, followed by the record's
/// table rows, CSV-encoded (so rendering the tables copies bytes and never
/// formats a number twice). The format is self-delimiting: journals
/// concatenate into a journal.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Head {
    /// [`FORMAT`] of the rows (absent, 0, before it was recorded).
    #[serde(default)]
    format: u32,
    checkpoint: String,
    /// Position in the whole (unsharded) input list: the tables' order.
    order: usize,
    /// Bytes of tensor data (for progress).
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// `[kind, tensor, message]` when the checkpoint failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<[String; 3]>,
    /// True when some weight or bias is NaN or infinite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    non_finite: bool,
    /// Byte length of each `nodes.csv` row that follows (metadata cells
    /// are appended to each row when rendering).
    #[serde(default)]
    nodes: Vec<u32>,
    /// Byte length of each `links.csv` row after those.
    #[serde(default)]
    links: Vec<u32>,
    /// Byte length of the `histograms.csv` rows after those.
    #[serde(default)]
    histograms: usize,
}

impl Head {
    fn rows_len(&self) -> usize {
        let sum = |v: &[u32]| v.iter().map(|&n| n as usize).sum::<usize>();
        sum(&self.nodes) + sum(&self.links) + self.histograms
    }
}

/// Bytes before a record's head: its checksum as 16 hex digits, a space.
const SUM_LEN: usize = 17;

/// Longest head line read from a journal (a damaged journal may hold no
/// line break for gigabytes).
const MAX_HEAD_BYTES: u64 = 64 << 20;

/// A record's checksum: of its head's JSON and its rows.
fn record_sum(head: &[u8], rows: &[u8]) -> u64 {
    let mut sum = record_check(head);
    sum.update(rows);
    sum.finish().finish()
}

/// [`record_sum`] of a record with this head, its rows still to come (fed
/// in pieces: the rows of a huge record are never held whole).
fn record_check(head: &[u8]) -> crate::manifest::StreamDigest {
    let mut d = crate::manifest::Digest::default();
    d.update(head);
    d.stream()
}

/// A record's head line (its line break included): checksum and head, or
/// `None` when it is not one.
fn parse_head(line: &[u8]) -> Option<(u64, &[u8], Head)> {
    let line = line.strip_suffix(b"\n")?;
    let (sum, json) = (line.get(..SUM_LEN - 1)?, line.get(SUM_LEN..)?);
    if line[SUM_LEN - 1] != b' ' {
        return None;
    }
    let sum = u64::from_str_radix(std::str::from_utf8(sum).ok()?, 16).ok()?;
    let head: Head = serde_json::from_slice(json).ok()?;
    (head.format == FORMAT).then_some((sum, json, head))
}

/// What measuring one checkpoint gave.
type Outcome = std::result::Result<(Checkpoint, Analysis), [String; 3]>;

fn failure(e: &Error) -> [String; 3] {
    [e.kind().to_string(), e.tensor().unwrap_or("").to_string(), e.to_string()]
}

/// Measures a batch of checkpoints (indices into `paths`) with one
/// `analyze_batch`; every checkpoint gets an outcome, whatever fails. A
/// panic (a bug) is recorded against the batch's checkpoints instead of
/// ending the scan.
fn measure_batch(
    batch: &[usize],
    collection: &Collection,
    graph: &GraphOptions,
    engine: &dyn Engine,
    opts: &AnalysisOptions,
    notes: &Notes,
) -> Vec<Outcome> {
    let paths = &collection.paths;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let open = |path: &Path| match collection.problem(path) {
            Some(why) => Err(Error::Io { path: path.to_path_buf(), error: std::io::Error::other(why) }),
            None => Checkpoint::open_as(path, graph.key.as_deref()).and_then(|ck| {
                let net = ck.unless_changed(Network::build(&ck, graph))?;
                Ok((ck, net))
            }),
        };
        let opened: Vec<Result<(Checkpoint, Network)>> = batch.iter().map(|&i| open(&paths[i])).collect();
        let linked: Vec<Option<(u64, u64)>> = batch
            .iter()
            .zip(&opened)
            .map(|(&i, o)| {
                let file = o.as_ref().ok()?.0.identity().filter(|f| collection.may_be_linked(f))?;
                notes.linked(file.id, i);
                Some(file.id)
            })
            .collect();
        for (_, net) in opened.iter().flatten() {
            notes.add(net);
        }
        let items: Vec<(&Network, &Checkpoint)> = opened.iter().flatten().map(|(ck, net)| (net, ck)).collect();
        let mut results = engine.analyze_batch(&items, opts).into_iter();
        drop(items);
        opened
            .into_iter()
            .zip(batch.iter().zip(linked))
            .map(|(o, (&i, file))| {
                let (ck, _) = o.map_err(|e| failure(&e))?;
                let analysis = results.next().expect("one result per network");
                let analysis = ck.unless_changed(analysis).map_err(|e| failure(&e))?;
                notes.measured(analysis.fingerprint(), i, file);
                Ok((ck, analysis))
            })
            .collect::<Vec<_>>()
    }));
    run.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or(panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        let message = |i: usize| format!("{}: internal error (please report): {what}", paths[i].display());
        batch.iter().map(|&i| Err(["internal".into(), String::new(), message(i)])).collect()
    })
}

/// Where one record lies in a journal, and what rendering needs before
/// reading it whole.
struct Entry {
    order: usize,
    checkpoint: String,
    file: usize,
    offset: u64,
    len: usize,
    /// Byte length of its `histograms.csv` rows (the record's last bytes).
    histograms: usize,
    failed: bool,
    non_finite: bool,
    /// The record's checksum ([`record_sum`]).
    sum: u64,
}

impl Entry {
    /// The entry of the record with `head`, `len` bytes at `offset` of
    /// journal `file`.
    fn new(head: &Head, file: usize, offset: u64, len: usize, sum: u64) -> Self {
        Entry {
            sum,
            order: head.order,
            checkpoint: head.checkpoint.clone(),
            file,
            offset,
            len,
            histograms: head.histograms,
            failed: head.error.is_some(),
            non_finite: head.non_finite,
        }
    }
}

/// A worker's finished records, encoded, not yet in the journal; entry
/// offsets are relative to `buf`.
struct Pending {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// The records again, with what writing their rows needs, when the
    /// tables are streamed.
    staged: Option<Vec<Staged>>,
    keys: BTreeSet<String>,
    bytes: u64,
    since: std::time::Instant,
    rows: RowWriter,
    /// Records too large to hold encoded (more than [`huge_rows`] rows):
    /// their measures, encoded straight into the journal when flushed.
    huge: Vec<Huge>,
    /// The most bytes of one record's rows held ([`ScanSummary::largest_rows`]).
    largest_rows: usize,
}

/// A record whose rows are written into the journal a piece at a time.
struct Huge {
    head: Head,
    analysis: Analysis,
}

/// Rows above which a checkpoint's record is never held encoded: its rows
/// go to the journal in pieces, and the tables are rendered from the
/// journal. (`CNTSCOPE_TEST_HUGE_ROWS` lowers it in tests.)
fn huge_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| std::env::var("CNTSCOPE_TEST_HUGE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000))
}

/// A record waiting for its turn in the [`TableStream`].
struct Staged {
    /// Position among the checkpoints this scan measures.
    pos: usize,
    /// Where its rows start in the buffer that holds it.
    rows: usize,
    head: Head,
}

impl Pending {
    fn new(stream: bool) -> Self {
        Pending {
            buf: record_buffer(),
            entries: Vec::new(),
            staged: stream.then(Vec::new),
            keys: BTreeSet::new(),
            bytes: 0,
            since: std::time::Instant::now(),
            rows: RowWriter::default(),
            huge: Vec::new(),
            largest_rows: 0,
        }
    }

    /// Encodes one checkpoint's record; `pos` is its position among the
    /// checkpoints this scan measures.
    fn push(
        &mut self,
        id: &str,
        order: usize,
        pos: usize,
        outcome: Outcome,
        extra: Option<&BTreeMap<String, String>>,
        named: Option<BTreeMap<String, String>>,
    ) {
        let mut head = Head { format: FORMAT, checkpoint: id.to_string(), order, ..Head::default() };
        self.rows.clear();
        let mut huge = None;
        match outcome {
            Ok((mut ck, a)) => {
                head.non_finite = a.layers.iter().any(|l| l.non_finite > 0);
                let lengths = if 2 * (a.node_sets.len() + a.layers.len()) > huge_rows() {
                    // Lengths only: the rows are encoded again, a piece at
                    // a time, into the journal.
                    let lengths = output::stream_rows(id, &a, &mut |_| Ok(())).expect("counting cannot fail");
                    huge = Some(a);
                    lengths
                } else {
                    let lengths = output::rows(&mut self.rows, id, &a);
                    self.largest_rows = self.largest_rows.max(self.rows.bytes().len());
                    // The measures are not held beyond their rows.
                    drop(a);
                    lengths
                };
                (head.nodes, head.links, head.histograms) = (lengths.nodes, lengths.links, lengths.histograms);
                head.bytes = ck.data_bytes();
                head.metadata = ck.take_metadata();
                // A Ray Tune trial's params and results, a Trainer's state,
                // and the groups of --name-pattern, fill in what the file
                // lacks.
                let beside = crate::layouts::beside(ck.path(), &head.metadata);
                for (k, v) in beside.into_iter().chain(named.into_iter().flatten()) {
                    head.metadata.entry(k).or_insert(v);
                }
                // The step: a checkpoint's own `global_step` (Lightning's),
                // else its path's.
                if !head.metadata.contains_key("step") {
                    let global = head.metadata.get("global_step").filter(|s| s.parse::<u64>().is_ok()).cloned();
                    let step = global.or_else(|| crate::checkpoint::step_from_path(ck.path()).map(|s| s.to_string()));
                    if let Some(step) = step {
                        head.metadata.insert("step".into(), step);
                    }
                }
            }
            Err(error) => head.error = Some(error),
        }
        if let Some(extra) = extra {
            head.metadata.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for k in head.metadata.keys() {
            if !self.keys.contains(k) {
                self.keys.insert(k.clone());
            }
        }
        if let Some(analysis) = huge {
            self.bytes += head.bytes;
            self.huge.push(Huge { head, analysis });
            return;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&[b' '; SUM_LEN]);
        serde_json::to_writer(&mut self.buf, &head).expect("records serialise");
        self.buf.push(b'\n');
        let rows = self.buf.len();
        self.buf.reserve_exact(self.rows.bytes().len());
        self.buf.extend_from_slice(self.rows.bytes());
        let sum = record_sum(&self.buf[start + SUM_LEN..rows - 1], &self.buf[rows..]);
        write!(&mut self.buf[start..start + SUM_LEN], "{sum:016x} ").expect("16 hex digits and a space");
        if self.rows.bytes().len() > FLUSH_BYTES {
            // A huge record's row buffer is not kept for the next.
            self.rows = RowWriter::default();
        }
        self.bytes += head.bytes;
        self.entries.push(Entry::new(&head, 0, start as u64, self.buf.len() - start, sum));
        if let Some(staged) = &mut self.staged {
            staged.push(Staged { pos, rows, head });
        }
    }

    fn due(&self) -> bool {
        self.buf.len() >= FLUSH_BYTES || self.since.elapsed() >= FLUSH_INTERVAL || !self.huge.is_empty()
    }

    /// Records held, encoded or not.
    fn records(&self) -> usize {
        self.entries.len() + self.huge.len()
    }
}

/// The journal being appended to, with the index of what it holds.
struct Journal {
    file: File,
    len: u64,
    entries: Vec<Entry>,
    keys: BTreeSet<String>,
    /// The largest piece of rows of a record written in pieces.
    largest_piece: usize,
}

impl Journal {
    /// Appends a worker's pending records in one write (leaving its
    /// buffer and staged records to the caller).
    fn append(&mut self, pending: &mut Pending) -> std::io::Result<()> {
        self.file.write_all(&pending.buf)?;
        for mut e in pending.entries.drain(..) {
            e.offset += self.len;
            self.entries.push(e);
        }
        self.len += pending.buf.len() as u64;
        for h in pending.huge.drain(..) {
            self.append_huge(&h)?;
        }
        self.keys.append(&mut pending.keys);
        pending.bytes = 0;
        pending.since = std::time::Instant::now();
        Ok(())
    }

    /// Appends a record too large to hold encoded: its rows are encoded
    /// twice, a megabyte at a time, once for the checksum (which leads the
    /// record) and once into the file. A crash midway leaves a torn record,
    /// which `--resume` cuts off like any other.
    fn append_huge(&mut self, h: &Huge) -> std::io::Result<()> {
        let json = serde_json::to_vec(&h.head).expect("records serialise");
        let mut rows = record_check(&json);
        output::stream_rows(&h.head.checkpoint, &h.analysis, &mut |piece| {
            rows.update(piece);
            Ok(())
        })?;
        let sum = rows.finish().finish();
        let mut line = format!("{sum:016x} ").into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        self.file.write_all(&line)?;
        let (file, largest) = (&mut self.file, &mut self.largest_piece);
        output::stream_rows(&h.head.checkpoint, &h.analysis, &mut |piece| {
            *largest = (*largest).max(piece.len());
            file.write_all(piece)
        })?;
        let len = line.len() + h.head.rows_len();
        self.entries.push(Entry::new(&h.head, 0, self.len, len, sum));
        self.len += len as u64;
        Ok(())
    }
}

/// Bytes of records a [`TableStream`] may hold while they wait for an
/// earlier one (a slow checkpoint); beyond it the stream gives up.
const STREAM_HOLD_BYTES: usize = 32 << 20;

/// The tables of a fresh scan, written while it runs: workers hand over
/// their encoded records and each is written as soon as every record before
/// it has been, so the tables are complete when the last checkpoint is
/// measured. The metadata columns are those of the first record; when a
/// later one brings another column, or the records waiting for a slow one
/// would hold more than [`STREAM_HOLD_BYTES`], the stream gives up and the
/// tables are rendered from the journal at the end instead (the same
/// bytes).
struct TableStream {
    out_dir: PathBuf,
    /// Created with the first record (its metadata keys are the columns);
    /// `None` after giving up.
    tables: Option<Tables>,
    keys: Vec<String>,
    /// Position of the record to write next.
    next: usize,
    /// Handed-over buffers with their records not yet written, in order.
    waiting: Vec<(Vec<u8>, std::collections::VecDeque<Staged>)>,
    /// Written-out buffers, for the workers to fill again.
    spare: Vec<Vec<u8>>,
    line_end: LineEnd,
    gave_up: bool,
    /// [`STREAM_HOLD_BYTES`] (smaller in tests).
    hold_limit: usize,
}

impl TableStream {
    fn new(out_dir: &Path) -> Self {
        TableStream {
            out_dir: out_dir.to_path_buf(),
            tables: None,
            keys: Vec::new(),
            next: 0,
            waiting: Vec::new(),
            spare: Vec::new(),
            line_end: LineEnd::default(),
            gave_up: false,
            hold_limit: STREAM_HOLD_BYTES,
        }
    }

    /// Takes a worker's buffer of records (`staged` in increasing
    /// position), writes every record whose turn has come, and returns an
    /// empty buffer for the worker to fill.
    fn feed(&mut self, buf: Vec<u8>, staged: Vec<Staged>) -> Vec<u8> {
        if !self.gave_up && !staged.is_empty() {
            self.waiting.push((buf, staged.into()));
            // A table that cannot be written is left to the rendering from
            // the journal, which reports the error.
            if self.write_ready().is_err() || self.held() > self.hold_limit {
                self.give_up();
            }
        } else {
            self.recycle(buf);
        }
        self.spare.pop().unwrap_or_else(record_buffer)
    }

    /// Writes records while the next one is at the front of a buffer.
    fn write_ready(&mut self) -> Result<()> {
        while let Some(i) = self.waiting.iter().position(|(_, s)| s.front().is_some_and(|r| r.pos == self.next)) {
            let (buf, mut staged) = self.waiting.swap_remove(i);
            while staged.front().is_some_and(|r| r.pos == self.next) {
                let record = staged.pop_front().expect("checked");
                if !self.write(&buf, &record)? {
                    return Ok(());
                }
                self.next += 1;
            }
            if staged.is_empty() {
                self.recycle(buf);
            } else {
                self.waiting.push((buf, staged));
            }
        }
        Ok(())
    }

    /// Writes one record's rows; false (having given up) when it brings a
    /// metadata column the tables lack.
    fn write(&mut self, buf: &[u8], record: &Staged) -> Result<bool> {
        let head = &record.head;
        if self.tables.is_none() {
            self.keys = head.metadata.keys().cloned().collect();
            self.tables = Some(Tables::create(&self.out_dir, &self.keys)?);
        }
        if !head.metadata.keys().all(|k| self.keys.binary_search(k).is_ok()) {
            self.give_up();
            return Ok(false);
        }
        let tables = self.tables.as_mut().expect("created above");
        let err = |e: std::io::Error| Error::output(&self.out_dir, e);
        let rows = &buf[record.rows..record.rows + head.rows_len()];
        let line_end = self.line_end.of(&self.keys, &head.metadata);
        node_and_link_rows(tables.nodes.writer(), tables.links.writer(), head, rows, line_end).map_err(err)?;
        if let Some(error) = &head.error {
            error_row(tables.errors.writer(), &head.checkpoint, error).map_err(err)?;
        }
        tables.histograms.writer().write_all(&rows[rows.len() - head.histograms..]).map_err(err)?;
        Ok(true)
    }

    /// Bytes of the buffers waiting for an earlier record.
    fn held(&self) -> usize {
        self.waiting.iter().map(|(buf, _)| buf.len()).sum()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 8 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Stops streaming: the tables written so far are removed.
    fn give_up(&mut self) {
        self.gave_up = true;
        self.tables = None;
        self.waiting.clear();
    }

    /// Publishes the tables when all `total` records were written; false
    /// when the tables must be rendered from the journal.
    fn finish(self, total: usize) -> Result<bool> {
        match self.tables {
            Some(tables) if !self.gave_up && self.next == total => tables.publish().map(|_| true),
            _ => Ok(false),
        }
    }
}

/// A journal's intact records.
#[derive(Default)]
struct JournalIndex {
    entries: Vec<Entry>,
    /// `(offset, length)` when bytes that are no intact record (a torn
    /// record, what a power cut leaves, bytes altered or inserted) follow
    /// the intact ones at `offset`.
    damaged: Option<(u64, u64)>,
}

/// Indexes a journal's records up to the first that is torn or damaged
/// (each record's checksum is verified); with `repair`, what follows is cut
/// off so appends continue cleanly (those checkpoints are measured again).
/// Metadata keys seen are added to `keys`. No journal is an empty one.
fn index_journal(path: &Path, file: usize, repair: bool, keys: &mut BTreeSet<String>) -> Result<JournalIndex> {
    let io =
        |e: std::io::Error| Error::ScanDir { path: path.to_path_buf(), reason: format!("reading the journal: {e}") };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalIndex::default()),
        Err(e) => return Err(io(e)),
    };
    let total = f.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(f);
    let (mut entries, mut offset, mut line, mut rows) = (Vec::new(), 0u64, Vec::new(), Vec::new());
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_HEAD_BYTES).read_until(b'\n', &mut line).map_err(io)?;
        let Some((sum, json, head)) = parse_head(&line) else { break };
        let len = n + head.rows_len();
        if offset + len as u64 > total {
            break;
        }
        // The rows are checked a piece at a time (a record can be larger
        // than what is worth holding).
        let mut check = record_check(json);
        let mut left = head.rows_len();
        while left > 0 {
            let n = left.min(1 << 20);
            rows.resize(n, 0);
            reader.read_exact(&mut rows).map_err(io)?;
            check.update(&rows);
            left -= n;
        }
        if check.finish().finish() != sum {
            break;
        }
        entries.push(Entry::new(&head, file, offset, len, sum));
        keys.extend(head.metadata.into_keys());
        offset += len as u64;
    }
    if repair && offset < total {
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(offset)).map_err(io)?;
    }
    Ok(JournalIndex { entries, damaged: (offset < total).then_some((offset, total)) })
}

/// Scans a collection into `out_dir`: `nodes.csv`, `links.csv`,
/// `histograms.csv`, `errors.csv`, the journal they are rendered from and
/// the manifest that says what the directory holds. The directory is
/// locked for the scan; an earlier scan's tables are removed when it
/// starts, and the new ones published together at the end, the manifest
/// marked complete last. `--resume` continues only a scan of the same
/// collection with the same settings (else [`Error::ScanDir`] says what
/// differs); with no scan there yet, it simply starts.
pub fn scan(collection: &Collection, out_dir: &Path, engine: &dyn Engine, opts: &ScanOptions) -> Result<ScanSummary> {
    let out_err = |e: std::io::Error| Error::output(out_dir, e);
    let _lock = open_scan_dir(out_dir)?;
    let checkpoints = &collection.paths;
    let ids: Vec<String> = checkpoints.iter().map(|p| checkpoint_id(p)).collect();
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    let manifest = Manifest {
        format: FORMAT,
        version: env!("CARGO_PKG_VERSION").into(),
        settings: {
            // The engine shapes the last digits (the GPU sums in f32), so
            // one directory holds one engine's numbers.
            let mut settings = opts.settings();
            let engine = engine.name();
            settings.insert("engine".into(), engine.split(':').next().unwrap_or(&engine).to_string());
            settings
        },
        shard: [shard, shards],
        collection: CollectionId::of(collection),
        complete: false,
        tables: BTreeMap::new(),
    };
    let journal_path = out_dir.join(JOURNAL);
    // The journal's index (what rendering needs), kept as records are
    // appended, so the tables are written without parsing it twice.
    let mut keys = BTreeSet::new();
    let mut notes = Vec::new();
    let earlier = if opts.resume { Manifest::read(out_dir)? } else { None };
    let mut entries = match earlier {
        Some(earlier) => {
            resumable(out_dir, &earlier, &manifest)?;
            let index = index_journal(&journal_path, 0, true, &mut keys)?;
            if let Some((at, len)) = index.damaged {
                notes.push(format!(
                    "{}: bytes {at}..{len} were no intact record (a torn or damaged record): cut off, their \
                     checkpoints measured again",
                    journal_path.display()
                ));
            }
            check_records(&journal_path, &index.entries, &ids, [shard, shards])?;
            index.entries
        }
        None => {
            if opts.resume && std::fs::metadata(&journal_path).is_ok_and(|m| m.len() > 0) {
                return Err(Error::ScanDir {
                    path: out_dir.to_path_buf(),
                    reason: format!(
                        "{JOURNAL} without a {MANIFEST}: an older cntscope's scan (or not a scan), which --resume \
                         cannot check; scan again without --resume, or into another directory"
                    ),
                });
            }
            // A fresh scan: no earlier scan's journal, manifest or tables
            // stays beside it.
            remove_if_present(&out_dir.join(MANIFEST))?;
            File::create(&journal_path).map_err(out_err)?;
            Vec::new()
        }
    };
    // The directory says it holds this scan, unfinished, once this
    // manifest is in place: written now, synced and renamed into place
    // while the workers measure (in a fresh directory that first sync
    // commits the directory's creation, and cost as much as measuring a
    // small network). No table of an earlier run stays beside it; a crash
    // before the manifest is in place leaves at most an earlier manifest
    // whose tables are gone, which the study commands refuse and
    // `--resume` finishes.
    let unfinished = manifest.stage(out_dir)?;
    remove_tables(out_dir)?;
    let kept = entries.len();
    let done: BTreeSet<&str> = entries.iter().map(|e| e.checkpoint.as_str()).collect();
    let todo: Vec<usize> =
        (0..checkpoints.len()).filter(|&i| i % shards == shard && !done.contains(ids[i].as_str())).collect();
    drop(done);
    let file = OpenOptions::new().append(true).open(&journal_path).map_err(out_err)?;
    let len = file.metadata().map_err(out_err)?.len();
    let background = file.try_clone().map_err(out_err)?;
    // A fresh journal: the tables are written as the records come.
    let stream = (entries.is_empty() && !todo.is_empty()).then(|| std::sync::Mutex::new(TableStream::new(out_dir)));
    entries.reserve(todo.len());
    let journal = std::sync::Mutex::new(Journal { file, len, entries, keys, largest_piece: 0 });

    // Workers claim batches, measure and encode them, append their records
    // to the journal themselves every FLUSH_INTERVAL and hand them to the
    // table stream: no writer thread, no queue, memory bounded by the
    // workers' buffers and the stream's hold.
    let next = AtomicUsize::new(0);
    let largest_rows = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let batch = engine.batch_size().max(1);
    let workers = opts.jobs.clamp(1, todo.len().div_ceil(batch).max(1));
    let progress = Progress::new(opts.progress, todo.len());
    let control = opts.control.as_deref();
    if let Some(c) = control {
        c.total.store(todo.len(), Ordering::Relaxed);
    }
    let stopped = || control.is_some_and(ScanControl::stopped);
    let graph_notes = Notes::default();
    std::thread::scope(|s| -> Result<()> {
        let work = || -> Result<()> {
            let mut pending = Pending::new(stream.is_some());
            let flush = |pending: &mut Pending| -> Result<()> {
                let (count, bytes) = (pending.records(), pending.bytes);
                if let (Some(stream), false) = (&stream, pending.huge.is_empty()) {
                    // A record not held encoded cannot be streamed: the
                    // tables are rendered from the journal.
                    stream.lock().expect("stream lock").give_up();
                }
                if let Err(e) = journal.lock().expect("journal lock").append(pending) {
                    // Nothing more can be kept: stop every worker.
                    stop.store(true, Ordering::Relaxed);
                    return Err(out_err(e));
                }
                if let (Some(stream), Some(staged)) = (&stream, &mut pending.staged) {
                    let staged = std::mem::replace(staged, Vec::with_capacity(staged.len()));
                    let buf = std::mem::take(&mut pending.buf);
                    pending.buf = stream.lock().expect("stream lock").feed(buf, staged);
                }
                pending.buf.clear();
                progress.record(count, bytes);
                if let Some(c) = control {
                    c.done.fetch_add(count, Ordering::Relaxed);
                }
                Ok(())
            };
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed).min(todo.len());
                let chunk = &todo[start..(start + batch).min(todo.len())];
                if chunk.is_empty() || stop.load(Ordering::Relaxed) || stopped() {
                    break;
                }
                let outcomes = measure_batch(chunk, collection, &opts.graph, engine, &opts.analysis, &graph_notes);
                for ((pos, &i), outcome) in (start..).zip(chunk).zip(outcomes) {
                    if opts.strict && outcome.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let extra = opts.metadata.as_ref().and_then(|t| t.get(&checkpoints[i]));
                    let named = opts.name_pattern.as_ref().map(|p| p.metadata(&ids[i]));
                    pending.push(&ids[i], i, pos, outcome, extra, named);
                }
                if pending.due() {
                    flush(&mut pending)?;
                }
            }
            largest_rows.fetch_max(pending.largest_rows, Ordering::Relaxed);
            flush(&mut pending)
        };
        // The journal is synced in the background as it grows, so the disk
        // keeps up with the workers and the last sync has little left.
        let (finished, ticks) = mpsc::channel::<()>();
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = ticks.recv_timeout(SYNC_INTERVAL) {
                let _ = background.sync_data();
            }
        });
        let landed = s.spawn(|| unfinished.commit());
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        let result = handles.into_iter().try_for_each(|h| h.join().expect("scan worker panicked"));
        drop(finished);
        result.and(landed.join().expect("manifest thread panicked"))
    })?;
    progress.finish();
    let Journal { file, entries, keys, largest_piece, .. } = journal.into_inner().expect("journal lock");
    let largest_rows = largest_rows.into_inner().max(largest_piece);
    if entries.len() < kept + todo.len() && stopped() {
        // What was measured is kept; the tables (and a complete
        // manifest) wait for the rest.
        file.sync_all().map_err(out_err)?;
        return Err(Error::Interrupted { path: out_dir.to_path_buf() });
    }
    let stream = stream.map(|s| s.into_inner().expect("stream lock"));
    let summary = match stream.map(|s| s.finish(todo.len())).transpose()? {
        Some(true) => tally(&entries),
        // Not streamed whole: rendered from the journal.
        _ => write_tables(std::slice::from_ref(&journal_path), entries, keys, out_dir)?,
    };
    mark_complete(out_dir, manifest, || file.sync_all().map_err(out_err))?;
    notes.extend(graph_notes.take(collection));
    Ok(ScanSummary { notes, kept, largest_rows, ..summary })
}

/// Marks the scan in `dir` complete, last of all: its tables are in place
/// (renamed, the directory not yet synced). The directory, the complete
/// manifest (with each table's size) and whatever `also` syncs (the
/// journal) are synced side by side, then the manifest is renamed into
/// place: one wait for the disk, not three in a row.
fn mark_complete(dir: &Path, manifest: Manifest, also: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    let mut complete = Manifest { complete: true, tables: table_sizes(dir)?, ..manifest }.stage(dir)?;
    std::thread::scope(|s| {
        let others = [s.spawn(also), s.spawn(|| sync_dir(dir))];
        let ours = complete.sync();
        others.into_iter().try_for_each(|h| h.join().expect("sync thread panicked")).and(ours)
    })?;
    complete.publish()
}

/// Waits for the disk to hold `dir`'s entries (files created, renamed).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::output(dir, e))
}

/// The size of each published table in `dir`.
fn table_sizes(dir: &Path) -> Result<BTreeMap<String, u64>> {
    TABLES
        .iter()
        .map(|t| {
            let path = dir.join(t);
            std::fs::metadata(&path).map(|m| (t.to_string(), m.len())).map_err(|e| Error::output(&path, e))
        })
        .collect()
}

/// Makes `dir` a directory this process alone writes (created if need be);
/// the lock is held while the value lives.
fn open_scan_dir(dir: &Path) -> Result<DirLock> {
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::ScanDir {
            path: dir.to_path_buf(),
            reason: "is a file, not a directory: the output is a directory of tables (give a new or a scan's \
                     directory)"
                .into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    DirLock::exclusive(dir)
}

/// Removes the tables of an earlier run from `dir`, published or left
/// half-written by a killed one.
fn remove_tables(dir: &Path) -> Result<()> {
    for table in TABLES {
        remove_if_present(&dir.join(table))?;
    }
    output::remove_stale(dir, &TABLES);
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::output(path, e)),
        _ => Ok(()),
    }
}

/// Whether the scan recorded as `earlier` can be continued as `now`: the
/// same settings, shard and collection, or a refusal that says what
/// differs and how to go on.
fn resumable(dir: &Path, earlier: &Manifest, now: &Manifest) -> Result<()> {
    let how = "run it as before, or scan afresh (without --resume, or into another directory)";
    let mut differences = earlier.setting_differences(now);
    if earlier.shard != now.shard {
        differences.push(format!("shard: {} -> {}", shard_text(earlier.shard), shard_text(now.shard)));
    }
    if !differences.is_empty() {
        return Err(Error::ScanDir {
            path: dir.to_path_buf(),
            reason: format!(
                "cannot resume: the scan here was made with other settings ({}); {how}",
                differences.join("; ")
            ),
        });
    }
    if let Some(d) = earlier.collection.difference(&now.collection, true) {
        return Err(Error::ScanDir {
            path: dir.to_path_buf(),
            reason: format!("cannot resume: this is not the collection the scan here is of: {d}; {how}"),
        });
    }
    Ok(())
}

/// Checks that a journal's records are of the checkpoints of `shard` of
/// the collection named `ids`, each once at its place.
fn check_records(journal: &Path, entries: &[Entry], ids: &[String], [shard, shards]: [usize; 2]) -> Result<()> {
    let mut seen = vec![false; ids.len()];
    for e in entries {
        let fits = e.order < ids.len() && ids[e.order] == e.checkpoint && e.order % shards == shard;
        if !fits || std::mem::replace(&mut seen[e.order], true) {
            return Err(Error::ScanDir {
                path: journal.to_path_buf(),
                reason: format!(
                    "holds a record of `{}` (position {}) that is not {} of this collection's shard {}: the \
                     journal is another scan's or damaged; scan afresh",
                    e.checkpoint,
                    e.order,
                    if fits { "once" } else { "a checkpoint" },
                    shard_text([shard, shards])
                ),
            });
        }
    }
    Ok(())
}

/// Combines the shards of one scan (`scan --shard I/N` into each DIR) into
/// `out_dir`: the same tables one unsharded run gives. Refused, naming the
/// directories, unless every shard `0..N` is there, complete, of the same
/// collection with the same settings, and holds exactly its checkpoints
/// (a shard given twice is taken once if both copies hold the same
/// records).
pub fn merge(dirs: &[PathBuf], out_dir: &Path) -> Result<ScanSummary> {
    let refuse = |path: &Path, reason: String| Error::ScanDir { path: path.to_path_buf(), reason };
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if dirs.iter().any(|d| canonical(d) == canonical(out_dir)) {
        return Err(refuse(
            out_dir,
            "is one of the shards: merge writes its tables into a directory of their own".into(),
        ));
    }
    if let Some(dir) = dirs.iter().find(|d| !d.is_dir()) {
        return Err(refuse(dir, "no such directory".into()));
    }
    let _read_locks = dirs.iter().map(|d| DirLock::shared(d)).collect::<Result<Vec<_>>>()?;
    let mut shards: Vec<(&PathBuf, Manifest)> = Vec::new();
    for dir in dirs {
        let m = Manifest::read(dir)?.ok_or_else(|| {
            refuse(
                dir,
                format!("no {MANIFEST}: not a scan directory, or one written by an older cntscope (scan again)"),
            )
        })?;
        if !m.complete {
            return Err(refuse(
                dir,
                format!("shard {} did not finish: run its scan again with --resume, then merge", shard_text(m.shard)),
            ));
        }
        shards.push((dir, m));
    }
    let (first_dir, first) = shards[0].clone();
    let n = first.shard[1];
    for (dir, m) in &shards[1..] {
        let differences = first.setting_differences(m);
        if !differences.is_empty() {
            return Err(refuse(
                dir,
                format!("scanned with other settings than {} ({})", first_dir.display(), differences.join("; ")),
            ));
        }
        if let Some(d) = first.collection.difference(&m.collection, false) {
            return Err(refuse(dir, format!("a scan of another collection than {}: {d}", first_dir.display())));
        }
        if m.shard[1] != n {
            return Err(refuse(
                dir,
                format!(
                    "is shard {} but {} is shard {}: all shards must come from one split",
                    shard_text(m.shard),
                    first_dir.display(),
                    shard_text(first.shard)
                ),
            ));
        }
    }
    // Each shard's journal, indexed and checked; a shard given twice is
    // taken once when both hold the same records.
    let check_shard = |dir: &Path, entries: &[Entry], shard: usize| -> Result<()> {
        let expected = (0..first.collection.entries).filter(|i| i % n == shard).count();
        let mut orders: Vec<usize> = entries.iter().map(|e| e.order).collect();
        orders.sort_unstable();
        orders.dedup();
        let fits = orders.len() == entries.len()
            && orders.len() == expected
            && orders.iter().all(|&o| o % n == shard && o < first.collection.entries);
        if fits {
            Ok(())
        } else {
            Err(refuse(
                &dir.join(JOURNAL),
                format!(
                    "holds {} records where shard {} has {expected} checkpoints (damaged, or another scan's): scan \
                     the shard again",
                    entries.len(),
                    shard_text([shard, n])
                ),
            ))
        }
    };
    let mut keys = BTreeSet::new();
    let mut taken: BTreeMap<usize, (&PathBuf, Vec<Entry>)> = BTreeMap::new();
    for (dir, m) in &shards {
        let mut shard_keys = BTreeSet::new();
        let index = index_journal(&dir.join(JOURNAL), 0, false, &mut shard_keys)?;
        if let Some((at, len)) = index.damaged {
            return Err(refuse(
                &dir.join(JOURNAL),
                format!("bytes {at}..{len} are no intact record (torn or damaged): run its scan again with --resume"),
            ));
        }
        check_shard(dir, &index.entries, m.shard[0])?;
        match taken.get(&m.shard[0]) {
            Some((other, entries)) => {
                let same = entries.len() == index.entries.len()
                    && entries.iter().zip(&index.entries).all(|(a, b)| a.order == b.order && a.sum == b.sum);
                if !same {
                    return Err(refuse(
                        dir,
                        format!(
                            "is shard {} as {} is, with other records: give one of them",
                            shard_text(m.shard),
                            other.display()
                        ),
                    ));
                }
            }
            None => {
                keys.append(&mut shard_keys);
                taken.insert(m.shard[0], (dir, index.entries));
            }
        }
    }
    let missing: Vec<String> = (0..n).filter(|i| !taken.contains_key(i)).map(|i| shard_text([i, n])).collect();
    if !missing.is_empty() {
        return Err(refuse(
            out_dir,
            format!(
                "cannot merge: shard(s) {} missing (a merge needs every shard 0..{} of the split)",
                missing.join(", "),
                n.saturating_sub(1)
            ),
        ));
    }
    let journals: Vec<PathBuf> = taken.values().map(|(dir, _)| dir.join(JOURNAL)).collect();
    let entries: Vec<Entry> = taken
        .into_values()
        .enumerate()
        .flat_map(|(file, (_, entries))| entries.into_iter().map(move |e| Entry { file, ..e }))
        .collect();

    let _lock = open_scan_dir(out_dir)?;
    remove_if_present(&out_dir.join(MANIFEST))?;
    remove_tables(out_dir)?;
    let summary = write_tables(&journals, entries, keys, out_dir)?;
    // The merged journal, so the merged directory can be merged or resumed again.
    atomic_write(&out_dir.join(JOURNAL), |w| {
        for j in &journals {
            std::io::copy(&mut File::open(j)?, w)?;
        }
        Ok(())
    })?;
    mark_complete(out_dir, Manifest { shard: [0, 1], ..first }, || Ok(()))?;
    Ok(ScanSummary { shards: n, ..summary })
}

/// The tables of a scan's output directory.
const TABLES: [&str; 4] = ["nodes.csv", "links.csv", "histograms.csv", "errors.csv"];

/// The four tables being written, headers first; each is published
/// (renamed into place) when complete.
struct Tables {
    nodes: AtomicFile,
    links: AtomicFile,
    histograms: AtomicFile,
    errors: AtomicFile,
}

impl Tables {
    /// Starts the tables in `out_dir`, with `keys` (sorted) as the trailing
    /// metadata columns of `nodes.csv` and `links.csv` (prefixed `meta_`
    /// where a key is a column name already).
    fn create(out_dir: &Path, keys: &[String]) -> Result<Self> {
        let meta_cols = metadata_columns(keys);
        let table = |name: &str, base: &[&str], meta: bool| -> Result<AtomicFile> {
            let path = out_dir.join(name);
            let mut file = AtomicFile::create(&path)?;
            let header = RowWriter::line(column_names(base, &meta_cols, meta));
            writeln!(file.writer(), "{header}").map_err(|e| Error::output(&path, e))?;
            Ok(file)
        };
        Ok(Tables {
            nodes: table(TABLES[0], &output::NODES_HEADER, true)?,
            links: table(TABLES[1], &output::LINKS_HEADER, true)?,
            histograms: table(TABLES[2], &output::HISTOGRAMS_HEADER, false)?,
            errors: table(TABLES[3], &output::ERRORS_HEADER, false)?,
        })
    }

    /// Publishes the four tables together: each is flushed as a temporary
    /// file first (a full disk fails here, before any table is in place),
    /// then all are renamed into place ([`mark_complete`] syncs the
    /// directory). The manifest is marked complete after this, with each
    /// table's size, so a reader never takes a partial set for a scan's
    /// tables. The tables are not synced one by one (that cost a
    /// 100000-checkpoint scan a quarter of its time): they are rendered
    /// from the synced journal, and after a crash that lost their bytes the
    /// sizes no longer match, the study commands refuse them and `--resume`
    /// renders them again.
    fn publish(self) -> Result<()> {
        let mut tables = [self.nodes, self.links, self.histograms, self.errors];
        for table in &mut tables {
            table.flush()?;
        }
        for table in tables {
            table.publish()?;
        }
        Ok(())
    }
}

/// One network's four tables (`nodes`, `links`, `histograms`, `errors`)
/// as typed columns, with the columns and values a scan of it alone with
/// this `metadata` would write as CSV (what Python's `analyze` returns;
/// no CSV text in between).
pub fn network_columns(
    id: &str,
    analysis: &Analysis,
    metadata: &BTreeMap<String, String>,
) -> [Vec<(String, output::Values)>; 4] {
    let keys: Vec<String> = metadata.keys().cloned().collect();
    let meta = metadata_columns(&keys);
    let names = |base: &[&str], with_meta: bool| column_names(base, &meta, with_meta);
    let suffix: Vec<String> = metadata.values().cloned().collect();
    let (mut nodes, mut links) = (Columns::with_suffix(suffix.clone()), Columns::with_suffix(suffix));
    let mut histograms = Columns::default();
    output::node_rows(&mut nodes, id, analysis);
    output::link_rows(&mut links, id, analysis);
    output::histogram_rows(&mut histograms, id, analysis);
    [
        nodes.finish(names(&output::NODES_HEADER, true)),
        links.finish(names(&output::LINKS_HEADER, true)),
        histograms.finish(names(&output::HISTOGRAMS_HEADER, false)),
        Columns::default().finish(names(&output::ERRORS_HEADER, false)),
    ]
}

/// A table's columns: its own (`base`), then the metadata columns where
/// the table has them.
fn column_names(base: &[&str], meta: &[String], with_meta: bool) -> Vec<String> {
    let extra = meta.iter().filter(|_| with_meta).cloned();
    base.iter().map(|s| s.to_string()).chain(extra).collect()
}

/// The column names of metadata `keys` (sorted): each key, prefixed
/// `meta_` as often as needed to differ from the tables' own columns and
/// from every other key's column (`checkpoint` and `meta_checkpoint`
/// become the columns `meta_meta_checkpoint` and `meta_checkpoint`).
fn metadata_columns(keys: &[String]) -> Vec<String> {
    let mut taken: BTreeSet<String> =
        output::NODES_HEADER.iter().chain(&output::LINKS_HEADER).map(|s| s.to_string()).collect();
    // Keys keep their own names where they can: only a clash is renamed.
    let own: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    keys.iter()
        .map(|k| {
            let mut name = k.clone();
            while taken.contains(&name) || (name != *k && own.contains(name.as_str())) {
                name = format!("meta_{name}");
            }
            taken.insert(name.clone());
            name
        })
        .collect()
}

/// The end of each `nodes.csv` and `links.csv` row of a record: its
/// metadata cells under the tables' keys, then the line break.
#[derive(Default)]
struct LineEnd {
    cells: RowWriter,
    bytes: Vec<u8>,
}

impl LineEnd {
    fn of(&mut self, keys: &[String], metadata: &BTreeMap<String, String>) -> &[u8] {
        self.cells.clear();
        for k in keys {
            self.cells.text(metadata.get(k).map_or("", String::as_str));
        }
        self.bytes.clear();
        if !keys.is_empty() {
            self.bytes.push(b',');
        }
        self.bytes.extend_from_slice(self.cells.bytes());
        self.bytes.push(b'\n');
        &self.bytes
    }
}

/// Writes a record's `nodes.csv` and `links.csv` rows (`rows` starts with
/// them), each ended by `line_end`.
fn node_and_link_rows(
    nodes: &mut impl Write,
    links: &mut impl Write,
    head: &Head,
    mut rows: &[u8],
    line_end: &[u8],
) -> std::io::Result<()> {
    for (lens, w) in [(&head.nodes, nodes as &mut dyn Write), (&head.links, links)] {
        for &n in lens {
            let (row, rest) = rows.split_at(n as usize);
            rows = rest;
            w.write_all(row.strip_suffix(b"\n").unwrap_or(row))?;
            w.write_all(line_end)?;
        }
    }
    Ok(())
}

/// Writes a failed checkpoint's `errors.csv` row.
fn error_row(errors: &mut impl Write, checkpoint: &str, [kind, tensor, message]: &[String; 3]) -> std::io::Result<()> {
    writeln!(errors, "{}", RowWriter::line([checkpoint, kind, tensor, message]))
}

/// The counts of a scan's records.
fn tally(entries: &[Entry]) -> ScanSummary {
    let failed = entries.iter().filter(|e| e.failed).count();
    let non_finite = entries.iter().filter(|e| e.non_finite).count();
    ScanSummary { analysed: entries.len() - failed, failed, non_finite, ..ScanSummary::default() }
}

/// Renders the tables from journals, streaming the indexed records in input
/// order (one record in memory at a time), with the union of all metadata
/// keys as trailing columns. Each table is written atomically.
fn write_tables(
    journals: &[PathBuf],
    mut entries: Vec<Entry>,
    keys: BTreeSet<String>,
    out_dir: &Path,
) -> Result<ScanSummary> {
    entries.sort_by_key(|e| e.order);
    entries.dedup_by(|a, b| a.checkpoint == b.checkpoint);
    let keys: Vec<String> = keys.into_iter().collect();
    let Tables { mut nodes, mut links, mut histograms, mut errors } = Tables::create(out_dir, &keys)?;
    let write_err = |e: std::io::Error| Error::output(out_dir, e);
    // Records are read in input order, which jumps around the journals
    // (workers append in chunks): the journals are mapped, so each record is
    // a slice of the page cache, nothing is copied or held beyond it, and
    // memory stays flat however long the journal.
    let maps: Vec<Mmap> = journals
        .iter()
        .map(|j| {
            let file = File::open(j)?;
            // SAFETY: the journals are complete and nothing writes them while mapped.
            unsafe { Mmap::map(&file) }
        })
        .collect::<std::io::Result<_>>()
        .map_err(write_err)?;
    let bytes_of = |e: &Entry| -> Result<&[u8]> {
        let journal = &journals[e.file];
        usize::try_from(e.offset)
            .ok()
            .and_then(|start| maps[e.file].get(start..start.checked_add(e.len)?))
            .filter(|bytes| bytes.len() > e.histograms)
            .ok_or_else(|| Error::ScanDir {
                path: journal.clone(),
                reason: format!("record at {} lies beyond the journal", e.offset),
            })
    };
    let record = |e: &Entry| -> Result<(Head, &[u8])> {
        let bad = |reason: String| Error::ScanDir { path: journals[e.file].clone(), reason };
        let bytes = bytes_of(e)?;
        let split = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| bad("record without a head".into()))?;
        let json = bytes.get(SUM_LEN..split).ok_or_else(|| bad("record without a head".into()))?;
        let head: Head = serde_json::from_slice(json).map_err(|err| bad(err.to_string()))?;
        if head.rows_len() != bytes.len() - split - 1 {
            return Err(bad(format!("record at {} does not match its head", e.offset)));
        }
        Ok((head, &bytes[split + 1..]))
    };
    // Two threads render side by side: `nodes` and `links` rows (each with
    // the metadata cells appended), and `histograms` and `errors` rows.
    let rows_with_metadata = |nodes: &mut AtomicFile, links: &mut AtomicFile| -> Result<()> {
        let mut line_end = LineEnd::default();
        for e in &entries {
            let (head, rows) = record(e)?;
            let line_end = line_end.of(&keys, &head.metadata);
            node_and_link_rows(nodes.writer(), links.writer(), &head, rows, line_end).map_err(write_err)?;
        }
        Ok(())
    };
    let histogram_and_error_rows = |histograms: &mut AtomicFile, errors: &mut AtomicFile| -> Result<()> {
        for e in &entries {
            // Only a failure's head is read (for its error row).
            if e.failed {
                if let (Head { error: Some(error), .. }, _) = record(e)? {
                    error_row(errors.writer(), &e.checkpoint, &error).map_err(write_err)?;
                }
            }
            let bytes = bytes_of(e)?;
            histograms.writer().write_all(&bytes[bytes.len() - e.histograms..]).map_err(write_err)?;
        }
        Ok(())
    };
    std::thread::scope(|s| -> Result<()> {
        let other = s.spawn(|| histogram_and_error_rows(&mut histograms, &mut errors));
        let ours = rows_with_metadata(&mut nodes, &mut links);
        other.join().expect("render thread panicked").and(ours)
    })?;
    Tables { nodes, links, histograms, errors }.publish()?;
    Ok(tally(&entries))
}

/// Progress on standard error: checkpoints, checkpoints/s, MB/s and ETA;
/// hidden when standard error is not a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    bytes: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Progress {
    fn new(enabled: bool, total: usize) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} checkpoints  {per_sec}  {msg}  ETA {eta}",
            )
            .expect("valid template");
            bar.set_style(style);
            bar
        });
        Progress { bar, bytes: 0.into(), started: std::time::Instant::now() }
    }

    fn record(&self, checkpoints: usize, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            let mb_s = total as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{mb_s:.0} MB/s"));
            bar.inc(checkpoints as u64);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's buffer of one-row records at `positions` (each with a
    /// `nodes.csv` row naming it and metadata `{k: v}`).
    fn records(positions: &[usize]) -> (Vec<u8>, Vec<Staged>) {
        let (mut buf, mut staged) = (Vec::new(), Vec::new());
        for &pos in positions {
            buf.extend_from_slice(b"{head}\n");
            let rows = buf.len();
            let row = format!("c{pos},1\n");
            buf.extend_from_slice(row.as_bytes());
            let metadata = BTreeMap::from([("k".to_string(), format!("v{pos}"))]);
            let head =
                Head { checkpoint: format!("c{pos}"), nodes: vec![row.len() as u32], metadata, ..Head::default() };
            staged.push(Staged { pos, rows, head });
        }
        (buf, staged)
    }

    #[test]
    fn stream_writes_records_in_order_whatever_order_they_come_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = TableStream::new(dir.path());
        for positions in [&[1, 3][..], &[4, 5], &[0, 2, 6]] {
            let (buf, staged) = records(positions);
            stream.feed(buf, staged);
        }
        assert!(stream.finish(7).unwrap(), "streamed whole");
        let nodes = std::fs::read_to_string(dir.path().join("nodes.csv")).unwrap();
        let rows: Vec<&str> = nodes.lines().skip(1).collect();
        let want: Vec<String> = (0..7).map(|i| format!("c{i},1,v{i}")).collect();
        assert_eq!(rows, want);
        assert!(nodes.starts_with("checkpoint,") && nodes.lines().next().unwrap().ends_with(",k"));
    }

    #[test]
    fn stream_gives_up_beyond_its_hold_or_on_a_new_column() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = TableStream::new(dir.path());
        stream.hold_limit = 100;
        for positions in [&[0][..], &[2, 3, 4], &[5, 6, 7, 8, 9, 10], &[1]] {
            let (buf, staged) = records(positions);
            stream.feed(buf, staged);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), if stream.gave_up { 0 } else { 4 });
        }
        assert!(stream.gave_up, "records 2-10 waited for 1 beyond the hold");
        assert!(!stream.finish(11).unwrap());

        let mut stream = TableStream::new(dir.path());
        let (buf, mut staged) = records(&[0, 1]);
        staged[1].head.metadata.insert("new".into(), "x".into());
        stream.feed(buf, staged);
        assert!(!stream.finish(2).unwrap(), "a column the header lacks");
    }
}
