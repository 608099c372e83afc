//! Measuring collections: workers open and analyse checkpoints in parallel
//! (in batches, for the GPU), a bounded queue carries their records to one
//! writer that appends each finished checkpoint (result or error) to a
//! journal at once, and the tables are rendered from the journal at the end
//! by streaming it in input order. So memory does not grow with the
//! collection, a failing checkpoint never stops the rest, an interrupted
//! scan keeps what it finished (`resume` does only the rest), and shards of
//! one collection run anywhere and merge into exactly the tables one run
//! would give.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::engine::{Analysis, AnalysisOptions, Engine};
use crate::error::{Error, Result};
use crate::graph::{GraphOptions, Network};
use crate::output::{self, atomic_write, AtomicFile};

/// Name of the journal file inside a scan's output directory.
pub const JOURNAL: &str = "journal.jsonl";

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

/// One finished checkpoint, as a journal line.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    checkpoint: String,
    /// Position in the whole (unsharded) input list: the tables' order.
    order: usize,
    /// Bytes of tensor data (for progress).
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    links: Vec<String>,
    #[serde(default)]
    histograms: Vec<String>,
    /// `[kind, tensor, message]` when the checkpoint failed.
    #[serde(default)]
    error: Option<[String; 3]>,
}

impl Record {
    fn new(id: &str, order: usize) -> Self {
        Record {
            checkpoint: id.to_string(),
            order,
            bytes: 0,
            metadata: BTreeMap::new(),
            nodes: vec![],
            links: vec![],
            histograms: vec![],
            error: None,
        }
    }

    fn measured(id: &str, order: usize, ck: &Checkpoint, a: &Analysis) -> Self {
        let mut metadata = ck.metadata().clone();
        if !metadata.contains_key("step") {
            if let Some(step) = crate::checkpoint::step_from_path(ck.path()) {
                metadata.insert("step".into(), step.to_string());
            }
        }
        Record {
            nodes: output::node_rows(id, a).iter().map(output::csv_line).collect(),
            links: output::link_rows(id, a).iter().map(output::csv_line).collect(),
            histograms: output::histogram_rows(id, a).iter().map(output::csv_line).collect(),
            metadata,
            bytes: ck.data_bytes(),
            ..Record::new(id, order)
        }
    }

    fn failed(id: &str, order: usize, e: &Error) -> Self {
        let error = [e.kind().to_string(), e.tensor().unwrap_or("").to_string(), e.to_string()];
        Record { error: Some(error), ..Record::new(id, order) }
    }
}

/// Measures a batch of checkpoints (indices into `paths`) with one
/// `analyze_batch`; every checkpoint gets a record, whatever fails. A panic
/// (a bug) is recorded against the batch's checkpoints instead of ending
/// the scan.
fn batch_records(
    batch: &[usize],
    ids: &[String],
    paths: &[PathBuf],
    graph: &GraphOptions,
    engine: &dyn Engine,
    opts: &AnalysisOptions,
) -> Vec<Record> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let opened: Vec<Result<(Checkpoint, Network)>> = batch
            .iter()
            .map(|&i| Checkpoint::open(&paths[i]).and_then(|ck| Network::build(&ck, graph).map(|net| (ck, net))))
            .collect();
        let items: Vec<(&Network, &Checkpoint)> = opened.iter().flatten().map(|(ck, net)| (net, ck)).collect();
        let mut results = engine.analyze_batch(&items, opts).into_iter();
        batch
            .iter()
            .zip(&opened)
            .map(|(&i, o)| match o {
                Err(e) => Record::failed(&ids[i], i, e),
                Ok((ck, _)) => match results.next().expect("one result per network") {
                    Ok(a) => Record::measured(&ids[i], i, ck, &a),
                    Err(e) => Record::failed(&ids[i], i, &e),
                },
            })
            .collect::<Vec<_>>()
    }));
    run.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or(panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        batch
            .iter()
            .map(|&i| Record {
                error: Some([
                    "internal".into(),
                    String::new(),
                    format!("{}: internal error (please report): {what}", paths[i].display()),
                ]),
                ..Record::new(&ids[i], i)
            })
            .collect()
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
    failed: bool,
}

/// The parts of a record the index needs (the rest is skipped unparsed).
#[derive(Deserialize)]
struct Head {
    checkpoint: String,
    order: usize,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// Indexes a journal's complete records; with `repair`, a torn last line
/// (from a killed run) is cut off so appends continue cleanly. Returns the
/// entries and the metadata keys seen.
fn index_journal(path: &Path, file: usize, repair: bool, keys: &mut BTreeSet<String>) -> Result<Vec<Entry>> {
    let io = |e: std::io::Error| Error::output(path, e);
    let Ok(f) = File::open(path) else { return Ok(vec![]) };
    let mut reader = BufReader::new(f);
    let (mut entries, mut offset, mut line) = (Vec::new(), 0u64, String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        let Ok(head) = serde_json::from_str::<Head>(&line) else { break };
        keys.extend(head.metadata.into_keys());
        let failed = head.error.is_some();
        entries.push(Entry { order: head.order, checkpoint: head.checkpoint, file, offset, len: n, failed });
        offset += n as u64;
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
    let mut entries = if opts.resume {
        index_journal(&journal_path, 0, true, &mut keys)?
    } else {
        File::create(&journal_path).map_err(out_err)?;
        Vec::new()
    };
    let done: BTreeSet<String> = entries.iter().map(|e| e.checkpoint.clone()).collect();
    let mut offset = std::fs::metadata(&journal_path).map_err(out_err)?.len();
    let (shard, shards) = opts.shard.unwrap_or((0, 1));
    let todo: Vec<usize> = (0..checkpoints.len()).filter(|&i| i % shards == shard && !done.contains(&ids[i])).collect();
    let mut journal = OpenOptions::new().append(true).open(&journal_path).map_err(out_err)?;

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let batch = engine.batch_size().max(1);
    let workers = opts.jobs.clamp(1, todo.len().div_ceil(batch).max(1));
    let progress = Progress::new(opts.progress, todo.len());
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Vec<Record>>(workers * 2);
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, todo, ids) = (&next, &stop, &todo, &ids);
            s.spawn(move || loop {
                let start = next.fetch_add(batch, Ordering::Relaxed).min(todo.len());
                let chunk = &todo[start..(start + batch).min(todo.len())];
                if chunk.is_empty() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut records = batch_records(chunk, ids, checkpoints, &opts.graph, engine, &opts.analysis);
                for rec in records.iter_mut() {
                    if let Some(extra) = opts.metadata.as_ref().and_then(|t| t.get(&checkpoints[rec.order])) {
                        rec.metadata.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                if tx.send(records).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut journal = std::io::BufWriter::new(&mut journal);
        'receive: for records in rx {
            for rec in records {
                let mut line = serde_json::to_string(&rec).expect("records serialise");
                line.push('\n');
                journal.write_all(line.as_bytes()).map_err(out_err)?;
                let failed = rec.error.is_some();
                keys.extend(rec.metadata.into_keys());
                entries.push(Entry {
                    order: rec.order,
                    checkpoint: rec.checkpoint,
                    file: 0,
                    offset,
                    len: line.len(),
                    failed,
                });
                offset += line.len() as u64;
                progress.record(rec.bytes);
                if opts.strict && failed {
                    stop.store(true, Ordering::Relaxed);
                    break 'receive;
                }
            }
            // A finished batch is on disk before the next is taken.
            journal.flush().map_err(out_err)?;
        }
        journal.flush().map_err(out_err)?;
        Ok(())
    })?;
    progress.finish();
    journal.sync_all().map_err(out_err)?;
    write_tables(&[journal_path], entries, keys, out_dir)
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
    let header =
        |base: &[&str]| -> Vec<String> { base.iter().map(|s| s.to_string()).chain(meta_cols.clone()).collect() };

    let plain = |base: &[&str]| -> Vec<String> { base.iter().map(|s| s.to_string()).collect() };
    let mut tables = [
        (AtomicFile::create(&out_dir.join("nodes.csv"))?, header(&output::NODES_HEADER)),
        (AtomicFile::create(&out_dir.join("links.csv"))?, header(&output::LINKS_HEADER)),
        (AtomicFile::create(&out_dir.join("histograms.csv"))?, plain(&output::HISTOGRAMS_HEADER)),
        (AtomicFile::create(&out_dir.join("errors.csv"))?, plain(&output::ERRORS_HEADER)),
    ];
    let write_err = |e: std::io::Error| Error::output(out_dir, e);
    for (file, header) in tables.iter_mut() {
        writeln!(file.writer(), "{}", output::csv_line(header.iter())).map_err(write_err)?;
    }
    let mut files: Vec<File> = journals.iter().map(File::open).collect::<std::io::Result<_>>().map_err(write_err)?;
    let mut line = Vec::new();
    for e in &entries {
        line.resize(e.len, 0);
        let f = &mut files[e.file];
        let bad = |err: String| Error::output(&journals[e.file], err);
        f.seek(SeekFrom::Start(e.offset)).and_then(|_| f.read_exact(&mut line)).map_err(|err| bad(err.to_string()))?;
        let r: Record = serde_json::from_slice(&line).map_err(|err| bad(err.to_string()))?;
        // Rows are stored CSV-encoded; the metadata cells are appended here.
        let meta = if keys.is_empty() {
            String::new()
        } else {
            format!(",{}", output::csv_line(keys.iter().map(|k| r.metadata.get(k).map_or("", String::as_str))))
        };
        let [nodes, links, histograms, errors] = &mut tables;
        for (rows, (file, _), suffix) in
            [(&r.nodes, nodes, &meta), (&r.links, links, &meta), (&r.histograms, histograms, &String::new())]
        {
            for row in rows {
                let w = file.writer();
                w.write_all(row.as_bytes())
                    .and_then(|_| w.write_all(suffix.as_bytes()))
                    .and_then(|_| w.write_all(b"\n"))
                    .map_err(write_err)?;
            }
        }
        if let Some([kind, tensor, msg]) = &r.error {
            writeln!(errors.0.writer(), "{}", output::csv_line([&r.checkpoint, kind, tensor, msg]))
                .map_err(write_err)?;
        }
    }
    for (file, _) in tables {
        file.commit()?;
    }
    let failed = entries.iter().filter(|e| e.failed).count();
    Ok(ScanSummary { analysed: entries.len() - failed, failed })
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

    fn record(&self, bytes: u64) {
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            let mb_s = total as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{mb_s:.0} MB/s"));
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
