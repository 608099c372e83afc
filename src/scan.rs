//! Measuring collections: workers analyse checkpoints in parallel, every
//! finished checkpoint (result or error) is appended to a journal at once,
//! and the tables are rendered from the journal at the end. So a failing
//! checkpoint never stops the rest, an interrupted scan keeps what it
//! finished (`resume` does only the rest), and the final tables are in
//! input order whatever the timing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::engine::{Analysis, AnalysisOptions, Engine};
use crate::error::{Error, Result};
use crate::graph::{GraphOptions, Network};
use crate::output::{self, atomic_write, write_csv};

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
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    nodes: Vec<Vec<String>>,
    #[serde(default)]
    links: Vec<Vec<String>>,
    #[serde(default)]
    histograms: Vec<Vec<String>>,
    /// `[kind, tensor, message]` when the checkpoint failed.
    #[serde(default)]
    error: Option<[String; 3]>,
}

impl Record {
    fn new(id: &str) -> Self {
        Record {
            checkpoint: id.to_string(),
            metadata: BTreeMap::new(),
            nodes: vec![],
            links: vec![],
            histograms: vec![],
            error: None,
        }
    }

    fn measured(id: &str, metadata: BTreeMap<String, String>, a: &Analysis) -> Self {
        Record {
            nodes: output::node_rows(id, a),
            links: output::link_rows(id, a),
            histograms: output::histogram_rows(id, a),
            metadata,
            ..Record::new(id)
        }
    }

    fn failed(id: &str, e: &Error) -> Self {
        Record {
            error: Some([e.kind().to_string(), e.tensor().unwrap_or("").to_string(), e.to_string()]),
            ..Record::new(id)
        }
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
                Err(e) => Record::failed(&ids[i], e),
                Ok((ck, _)) => match results.next().expect("one result per network") {
                    Ok(a) => Record::measured(&ids[i], ck.metadata().clone(), &a),
                    Err(e) => Record::failed(&ids[i], &e),
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
                ..Record::new(&ids[i])
            })
            .collect()
    })
}

/// Reads the journal's complete records; a torn last line (from a killed
/// run) is cut off so appends continue cleanly.
fn load_journal(path: &Path) -> Result<Vec<Record>> {
    let io = |e: std::io::Error| Error::Output { path: path.to_path_buf(), reason: e.to_string() };
    let Ok(file) = File::open(path) else {
        return Ok(vec![]);
    };
    let mut reader = BufReader::new(file);
    let (mut records, mut good_len, mut line) = (Vec::new(), 0u64, String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
        good_len += n as u64;
    }
    OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(good_len)).map_err(io)?;
    Ok(records)
}

/// Scans checkpoints into `out_dir`: `nodes.csv`, `links.csv`,
/// `histograms.csv`, `errors.csv` (and the journal they are rendered from).
pub fn scan(checkpoints: &[PathBuf], out_dir: &Path, engine: &dyn Engine, opts: &ScanOptions) -> Result<ScanSummary> {
    let out_err = |e: std::io::Error| Error::Output { path: out_dir.to_path_buf(), reason: e.to_string() };
    std::fs::create_dir_all(out_dir).map_err(out_err)?;
    let journal_path = out_dir.join(JOURNAL);
    let ids: Vec<String> = checkpoints.iter().map(|p| p.display().to_string()).collect();
    let done: BTreeSet<String> = if opts.resume {
        load_journal(&journal_path)?.into_iter().map(|r| r.checkpoint).collect()
    } else {
        File::create(&journal_path).map_err(out_err)?;
        BTreeSet::new()
    };
    let todo: Vec<usize> = (0..checkpoints.len()).filter(|&i| !done.contains(&ids[i])).collect();
    let mut journal = OpenOptions::new().append(true).open(&journal_path).map_err(out_err)?;

    let next = AtomicUsize::new(0);
    let batch = engine.batch_size().max(1);
    let workers = opts.jobs.clamp(1, todo.len().div_ceil(batch).max(1));
    let show = opts.progress && std::io::stderr().is_terminal();
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Record>(workers * batch * 2);
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, todo, ids) = (&next, &todo, &ids);
            s.spawn(move || loop {
                let start = next.fetch_add(batch, Ordering::Relaxed).min(todo.len());
                let chunk = &todo[start..(start + batch).min(todo.len())];
                if chunk.is_empty() {
                    break;
                }
                for rec in batch_records(chunk, ids, checkpoints, &opts.graph, engine, &opts.analysis) {
                    if tx.send(rec).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (k, rec) in rx.into_iter().enumerate() {
            let mut line = serde_json::to_string(&rec).expect("records serialise");
            line.push('\n');
            journal.write_all(line.as_bytes()).map_err(out_err)?;
            if show {
                let rate = (k + 1) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprint!("\r{}/{} checkpoints, {rate:.1}/s   ", k + 1, todo.len());
            }
        }
        if show {
            eprintln!();
        }
        Ok(())
    })?;
    journal.sync_all().map_err(out_err)?;
    render(&journal_path, &ids, out_dir)
}

/// Renders the tables from the journal, in input order, with the union of
/// all checkpoints' metadata keys as trailing columns.
fn render(journal_path: &Path, ids: &[String], out_dir: &Path) -> Result<ScanSummary> {
    let mut by_id: HashMap<String, Record> =
        load_journal(journal_path)?.into_iter().map(|r| (r.checkpoint.clone(), r)).collect();
    let ordered: Vec<Record> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    let keys: BTreeSet<&str> = ordered.iter().flat_map(|r| r.metadata.keys().map(String::as_str)).collect();
    let taken: BTreeSet<&str> = output::NODES_HEADER.iter().chain(&output::LINKS_HEADER).copied().collect();
    let meta_cols: Vec<String> =
        keys.iter().map(|k| if taken.contains(k) { format!("meta_{k}") } else { k.to_string() }).collect();
    let header = |base: &[&'static str]| -> Vec<String> {
        base.iter().map(|s| s.to_string()).chain(meta_cols.iter().cloned()).collect()
    };
    let with_meta = |rows: &[Vec<String>], r: &Record| -> Vec<Vec<String>> {
        rows.iter()
            .map(|row| {
                row.iter()
                    .cloned()
                    .chain(keys.iter().map(|k| r.metadata.get(*k).cloned().unwrap_or_default()))
                    .collect()
            })
            .collect()
    };
    let nodes_header = header(&output::NODES_HEADER);
    let links_header = header(&output::LINKS_HEADER);
    atomic_write(&out_dir.join("nodes.csv"), |w| {
        write_csv(w, &nodes_header, ordered.iter().flat_map(|r| with_meta(&r.nodes, r)))
    })?;
    atomic_write(&out_dir.join("links.csv"), |w| {
        write_csv(w, &links_header, ordered.iter().flat_map(|r| with_meta(&r.links, r)))
    })?;
    atomic_write(&out_dir.join("histograms.csv"), |w| {
        write_csv(w, &output::HISTOGRAMS_HEADER, ordered.iter().flat_map(|r| r.histograms.iter().cloned()))
    })?;
    let errors = ordered.iter().filter_map(|r| {
        r.error
            .as_ref()
            .map(|[kind, tensor, msg]| vec![r.checkpoint.clone(), kind.clone(), tensor.clone(), msg.clone()])
    });
    atomic_write(&out_dir.join("errors.csv"), |w| write_csv(w, &output::ERRORS_HEADER, errors))?;
    let failed = ordered.iter().filter(|r| r.error.is_some()).count();
    Ok(ScanSummary { analysed: ordered.len() - failed, failed })
}
