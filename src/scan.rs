//! Measuring collections: workers open and analyse checkpoints in parallel
//! (in batches, for the GPU), format each finished checkpoint's record
//! (result or error) into a buffer of their own and append it to a journal
//! every fraction of a second; the tables are rendered from the journal at
//! the end, record by record in input order. So memory does not grow with
//! the collection, a failing checkpoint never stops the rest, an
//! interrupted scan keeps what it finished (`resume` does only the rest),
//! and shards of one collection run anywhere and merge into exactly the
//! tables one run would give.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::engine::{Analysis, AnalysisOptions, Engine};
use crate::error::{Error, Result};
use crate::graph::{GraphOptions, Network};
use crate::output::{self, atomic_write, AtomicFile, RowWriter};

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
        }
    }
}

/// Metadata columns from a CSV table keyed by checkpoint path (a `path` or
/// `checkpoint` column); its values override the files' own.
#[derive(Debug, Clone, Default)]
pub struct MetadataTable {
    rows: HashMap<PathBuf, BTreeMap<String, String>>,
}

impl MetadataTable {
    /// Reads the table; paths are matched as given and after
    /// canonicalisation.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Spec { path: path.to_path_buf(), reason };
        let mut reader = csv::Reader::from_path(path).map_err(|e| err(e.to_string()))?;
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
        Ok(MetadataTable { rows })
    }

    /// The row for a checkpoint, if the table has one.
    pub fn get(&self, checkpoint: &Path) -> Option<&BTreeMap<String, String>> {
        self.rows.get(checkpoint).or_else(|| checkpoint.canonicalize().ok().and_then(|c| self.rows.get(&c)))
    }
}

/// How a scan went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    /// Checkpoints analysed.
    pub analysed: usize,
    /// Checkpoints that failed (listed in `errors.csv`).
    pub failed: usize,
    /// Checkpoints analysed that hold NaN or infinite weights or biases
    /// (counted per layer and node set in the `non_finite` columns).
    pub non_finite: usize,
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
    let ck = Checkpoint::open(path)?;
    let network = Network::build(&ck, graph)?;
    let analysis = engine.analyze(&network, &ck, opts)?;
    Ok(Measured { metadata: ck.metadata().clone(), network, analysis })
}

/// How long a worker keeps finished records before appending them to the
/// journal (so a kill loses at most this much work), and how many bytes.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
const FLUSH_BYTES: usize = 1 << 20;

/// The layout of a journal record's rows. Records of another layout (from
/// an older build) are ignored: `--resume` measures those checkpoints again
/// rather than mixing row layouts in one table.
const FORMAT: u32 = 2;

/// How often the journal is synced in the background while it grows.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

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
    paths: &[PathBuf],
    graph: &GraphOptions,
    engine: &dyn Engine,
    opts: &AnalysisOptions,
) -> Vec<Outcome> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let opened: Vec<Result<(Checkpoint, Network)>> = batch
            .iter()
            .map(|&i| Checkpoint::open(&paths[i]).and_then(|ck| Network::build(&ck, graph).map(|net| (ck, net))))
            .collect();
        let items: Vec<(&Network, &Checkpoint)> = opened.iter().flatten().map(|(ck, net)| (net, ck)).collect();
        let mut results = engine.analyze_batch(&items, opts).into_iter();
        drop(items);
        opened
            .into_iter()
            .map(|o| {
                let (ck, _) = o.map_err(|e| failure(&e))?;
                let analysis = results.next().expect("one result per network").map_err(|e| failure(&e))?;
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
}

/// A worker's finished records, encoded, not yet in the journal; entry
/// offsets are relative to `buf`.
struct Pending {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    keys: BTreeSet<String>,
    bytes: u64,
    since: std::time::Instant,
    rows: RowWriter,
}

impl Pending {
    fn new() -> Self {
        Pending {
            buf: Vec::new(),
            entries: Vec::new(),
            keys: BTreeSet::new(),
            bytes: 0,
            since: std::time::Instant::now(),
            rows: RowWriter::default(),
        }
    }

    /// Encodes one checkpoint's record.
    fn push(&mut self, id: &str, order: usize, outcome: Outcome, extra: Option<&BTreeMap<String, String>>) {
        self.rows.clear();
        let mut head = Head { format: FORMAT, checkpoint: id.to_string(), order, ..Head::default() };
        match outcome {
            Ok((ck, a)) => {
                head.non_finite = a.layers.iter().any(|l| l.non_finite > 0);
                head.nodes = output::node_rows(&mut self.rows, id, &a);
                head.links = output::link_rows(&mut self.rows, id, &a);
                head.histograms = output::histogram_rows(&mut self.rows, id, &a);
                head.bytes = ck.data_bytes();
                head.metadata = ck.metadata().clone();
                if !head.metadata.contains_key("step") {
                    if let Some(step) = crate::checkpoint::step_from_path(ck.path()) {
                        head.metadata.insert("step".into(), step.to_string());
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
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, &head).expect("records serialise");
        self.buf.push(b'\n');
        self.buf.extend_from_slice(self.rows.bytes());
        self.bytes += head.bytes;
        let (failed, non_finite, histograms) = (head.error.is_some(), head.non_finite, head.histograms);
        let (len, offset) = (self.buf.len() - start, start as u64);
        let checkpoint = head.checkpoint;
        self.entries.push(Entry { order, checkpoint, file: 0, offset, len, histograms, failed, non_finite });
    }

    fn due(&self) -> bool {
        self.buf.len() >= FLUSH_BYTES || self.since.elapsed() >= FLUSH_INTERVAL
    }
}

/// The journal being appended to, with the index of what it holds.
struct Journal {
    file: File,
    len: u64,
    entries: Vec<Entry>,
    keys: BTreeSet<String>,
}

impl Journal {
    /// Appends a worker's pending records in one write.
    fn append(&mut self, pending: &mut Pending) -> std::io::Result<()> {
        self.file.write_all(&pending.buf)?;
        for mut e in pending.entries.drain(..) {
            e.offset += self.len;
            self.entries.push(e);
        }
        self.len += pending.buf.len() as u64;
        self.keys.append(&mut pending.keys);
        pending.buf.clear();
        pending.bytes = 0;
        pending.since = std::time::Instant::now();
        Ok(())
    }
}

/// Indexes a journal's complete records; with `repair`, a torn last
/// record (from a killed run) is cut off so appends continue cleanly.
/// Returns the entries and the metadata keys seen.
fn index_journal(path: &Path, file: usize, repair: bool, keys: &mut BTreeSet<String>) -> Result<Vec<Entry>> {
    let io = |e: std::io::Error| Error::output(path, e);
    let Ok(f) = File::open(path) else { return Ok(vec![]) };
    let total = f.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(f);
    let (mut entries, mut offset, mut line) = (Vec::new(), 0u64, Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Ok(head) = serde_json::from_slice::<Head>(&line) else { break };
        let len = n + head.rows_len();
        if offset + len as u64 > total {
            break;
        }
        reader.seek_relative(head.rows_len() as i64).map_err(io)?;
        if head.format == FORMAT {
            keys.extend(head.metadata.into_keys());
            let (failed, non_finite) = (head.error.is_some(), head.non_finite);
            entries.push(Entry {
                order: head.order,
                checkpoint: head.checkpoint,
                file,
                offset,
                len,
                histograms: head.histograms,
                failed,
                non_finite,
            });
        }
        offset += len as u64;
    }
    if repair {
        OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(offset)).map_err(io)?;
    }
    Ok(entries)
}

/// Scans checkpoints into `out_dir`: `nodes.csv`, `links.csv`,
/// `histograms.csv`, `errors.csv` (and the journal they are rendered from).
pub fn scan(checkpoints: &[PathBuf], out_dir: &Path, engine: &dyn Engine, opts: &ScanOptions) -> Result<ScanSummary> {
    let out_err = |e: std::io::Error| Error::output(out_dir, e);
    std::fs::create_dir_all(out_dir).map_err(out_err)?;
    let journal_path = out_dir.join(JOURNAL);
    let ids: Vec<String> = checkpoints.iter().map(|p| p.display().to_string()).collect();
    // The journal's index (what rendering needs), kept as records are
    // appended, so the tables are written without parsing it twice.
    let mut keys = BTreeSet::new();
    let entries = if opts.resume {
        index_journal(&journal_path, 0, true, &mut keys)?
    } else {
        File::create(&journal_path).map_err(out_err)?;
        Vec::new()
    };
    let done: BTreeSet<&str> = entries.iter().map(|e| e.checkpoint.as_str()).collect();
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    let todo: Vec<usize> =
        (0..checkpoints.len()).filter(|&i| i % shards == shard && !done.contains(ids[i].as_str())).collect();
    drop(done);
    let file = OpenOptions::new().append(true).open(&journal_path).map_err(out_err)?;
    let len = file.metadata().map_err(out_err)?.len();
    let background = file.try_clone().map_err(out_err)?;
    let journal = std::sync::Mutex::new(Journal { file, len, entries, keys });

    // Workers claim batches, measure and encode them, and append their
    // records to the journal themselves every FLUSH_INTERVAL: no writer
    // thread, no queue, memory bounded by the workers' batches.
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let batch = engine.batch_size().max(1);
    let workers = opts.jobs.clamp(1, todo.len().div_ceil(batch).max(1));
    let progress = Progress::new(opts.progress, todo.len());
    std::thread::scope(|s| -> Result<()> {
        let work = || -> Result<()> {
            let mut pending = Pending::new();
            let flush = |pending: &mut Pending| -> Result<()> {
                let (count, bytes) = (pending.entries.len(), pending.bytes);
                if let Err(e) = journal.lock().expect("journal lock").append(pending) {
                    // Nothing more can be kept: stop every worker.
                    stop.store(true, Ordering::Relaxed);
                    return Err(out_err(e));
                }
                progress.record(count, bytes);
                Ok(())
            };
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed).min(todo.len());
                let chunk = &todo[start..(start + batch).min(todo.len())];
                if chunk.is_empty() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let outcomes = measure_batch(chunk, checkpoints, &opts.graph, engine, &opts.analysis);
                for (&i, outcome) in chunk.iter().zip(outcomes) {
                    if opts.strict && outcome.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let extra = opts.metadata.as_ref().and_then(|t| t.get(&checkpoints[i]));
                    pending.push(&ids[i], i, outcome, extra);
                }
                if pending.due() {
                    flush(&mut pending)?;
                }
            }
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
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        let result = handles.into_iter().try_for_each(|h| h.join().expect("scan worker panicked"));
        drop(finished);
        result
    })?;
    progress.finish();
    let Journal { file, entries, keys, .. } = journal.into_inner().expect("journal lock");
    // The journal is synced while the tables are rendered from it.
    std::thread::scope(|s| {
        let synced = s.spawn(|| file.sync_all().map_err(out_err));
        let summary = write_tables(std::slice::from_ref(&journal_path), entries, keys, out_dir);
        synced.join().expect("sync thread panicked")?;
        summary
    })
}

/// Combines the journals of shard runs (`scan --shard I/N` into each DIR)
/// into `out_dir`: the same tables one unsharded run would give.
pub fn merge(dirs: &[PathBuf], out_dir: &Path) -> Result<ScanSummary> {
    let out_err = |e: std::io::Error| Error::output(out_dir, e);
    std::fs::create_dir_all(out_dir).map_err(out_err)?;
    let journals: Vec<PathBuf> = dirs.iter().map(|d| d.join(JOURNAL)).collect();
    for j in &journals {
        if !j.is_file() {
            return Err(Error::output(j, "no scan journal here"));
        }
    }
    let mut keys = BTreeSet::new();
    let mut entries = Vec::new();
    for (i, j) in journals.iter().enumerate() {
        entries.extend(index_journal(j, i, false, &mut keys)?);
    }
    let summary = write_tables(&journals, entries, keys, out_dir)?;
    // The merged journal, so the merged directory can be merged or resumed again.
    let merged = out_dir.join(JOURNAL);
    if !journals.contains(&merged) {
        atomic_write(&merged, |w| {
            for j in &journals {
                std::io::copy(&mut File::open(j)?, w)?;
            }
            Ok(())
        })?;
    }
    Ok(summary)
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
    let taken: BTreeSet<&str> = output::NODES_HEADER.iter().chain(&output::LINKS_HEADER).copied().collect();
    let meta_cols = keys.iter().map(|k| if taken.contains(k.as_str()) { format!("meta_{k}") } else { k.clone() });
    let header = |base: &[&str], meta: bool| -> String {
        let extra = meta_cols.clone().filter(|_| meta);
        RowWriter::line(base.iter().map(|s| s.to_string()).chain(extra))
    };
    let mut tables = [
        (AtomicFile::create(&out_dir.join("nodes.csv"))?, header(&output::NODES_HEADER, true)),
        (AtomicFile::create(&out_dir.join("links.csv"))?, header(&output::LINKS_HEADER, true)),
        (AtomicFile::create(&out_dir.join("histograms.csv"))?, header(&output::HISTOGRAMS_HEADER, false)),
        (AtomicFile::create(&out_dir.join("errors.csv"))?, header(&output::ERRORS_HEADER, false)),
    ];
    let write_err = |e: std::io::Error| Error::output(out_dir, e);
    for (file, header) in tables.iter_mut() {
        writeln!(file.writer(), "{header}").map_err(write_err)?;
    }
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
        usize::try_from(e.offset)
            .ok()
            .and_then(|start| maps[e.file].get(start..start.checked_add(e.len)?))
            .filter(|bytes| bytes.len() > e.histograms)
            .ok_or_else(|| Error::output(&journals[e.file], format!("record at {} lies beyond the journal", e.offset)))
    };
    let record = |e: &Entry| -> Result<(Head, &[u8])> {
        let bad = |err: String| Error::output(&journals[e.file], err);
        let bytes = bytes_of(e)?;
        let split = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| bad("record without a head".into()))?;
        let head: Head = serde_json::from_slice(&bytes[..split]).map_err(|err| bad(err.to_string()))?;
        if head.rows_len() != bytes.len() - split - 1 {
            return Err(bad(format!("record at {} does not match its head", e.offset)));
        }
        Ok((head, &bytes[split + 1..]))
    };
    // Two threads render side by side: `nodes` and `links` rows (each with
    // the metadata cells appended), and `histograms` and `errors` rows.
    let rows_with_metadata = |nodes: &mut AtomicFile, links: &mut AtomicFile| -> Result<()> {
        // The record's metadata cells, after a separator, ending the line.
        let (mut suffix, mut line_end) = (RowWriter::default(), Vec::new());
        for e in &entries {
            let (head, mut rows) = record(e)?;
            suffix.clear();
            for k in &keys {
                suffix.text(head.metadata.get(k).map_or("", String::as_str));
            }
            line_end.clear();
            if !keys.is_empty() {
                line_end.push(b',');
            }
            line_end.extend_from_slice(suffix.bytes());
            line_end.push(b'\n');
            for (lens, file) in [(&head.nodes, &mut *nodes), (&head.links, &mut *links)] {
                let w = file.writer();
                for &n in lens {
                    let (row, rest) = rows.split_at(n as usize);
                    rows = rest;
                    let cells = row.strip_suffix(b"\n").unwrap_or(row);
                    w.write_all(cells).and_then(|_| w.write_all(&line_end)).map_err(write_err)?;
                }
            }
        }
        Ok(())
    };
    let histogram_and_error_rows = |histograms: &mut AtomicFile, errors: &mut AtomicFile| -> Result<()> {
        for e in &entries {
            // Only a failure's head is read (for its error row).
            if e.failed {
                if let (Head { error: Some([kind, tensor, msg]), .. }, _) = record(e)? {
                    writeln!(errors.writer(), "{}", RowWriter::line([&e.checkpoint, &kind, &tensor, &msg]))
                        .map_err(write_err)?;
                }
            }
            let bytes = bytes_of(e)?;
            histograms.writer().write_all(&bytes[bytes.len() - e.histograms..]).map_err(write_err)?;
        }
        Ok(())
    };
    let [mut nodes, mut links, mut histograms, mut errors] = tables.map(|(file, _)| file);
    std::thread::scope(|s| -> Result<()> {
        let other = s.spawn(|| histogram_and_error_rows(&mut histograms, &mut errors));
        let ours = rows_with_metadata(&mut nodes, &mut links);
        other.join().expect("render thread panicked").and(ours)
    })?;
    // Tables are derived from the synced journal (`--resume` renders them
    // again), so they are renamed into place without a disk flush each.
    for table in [nodes, links, histograms, errors] {
        table.publish()?;
    }
    let failed = entries.iter().filter(|e| e.failed).count();
    let non_finite = entries.iter().filter(|e| e.non_finite).count();
    Ok(ScanSummary { analysed: entries.len() - failed, failed, non_finite })
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
