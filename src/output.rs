//! Output tables: the CSV headers and rows of `nodes`, `links`,
//! `histograms` and `errors`, and atomic file writes (temporary file, then
//! rename, so a reader never sees half a table).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::engine::{Analysis, NodeSetResult};
use crate::error::{Error, Result};
use crate::stats::{Histogram, Moments};

/// Header of `cntscope nodes` output.
pub const NODE_VALUES_HEADER: [&str; 5] = ["node_layer", "node", "s_in", "s_out", "strength"];

/// Columns of `nodes.csv` before the metadata columns.
pub const NODES_HEADER: [&str; 14] = [
    "checkpoint",
    "node_layer",
    "nodes",
    "strength_mean",
    "fluctuation",
    "strength_min",
    "strength_max",
    "strength_skewness",
    "strength_kurtosis",
    "s_in_mean",
    "s_out_mean",
    "node_set",
    "shape",
    "chain",
];

/// Columns of `links.csv` before the metadata columns.
pub const LINKS_HEADER: [&str; 17] = [
    "checkpoint",
    "layer",
    "name",
    "kind",
    "weight_tensor",
    "count",
    "mean",
    "std",
    "min",
    "max",
    "skewness",
    "kurtosis",
    "bias_count",
    "bias_mean",
    "bias_std",
    "bias_min",
    "bias_max",
];

/// Columns of `histograms.csv`: one row per histogram, `bins` equal bins
/// over `[lo, hi]` (last bin closed), `counts` space-separated.
pub const HISTOGRAMS_HEADER: [&str; 8] = ["checkpoint", "measure", "index", "name", "lo", "hi", "bins", "counts"];

/// Columns of `errors.csv`.
pub const ERRORS_HEADER: [&str; 4] = ["checkpoint", "kind", "tensor", "message"];

/// Formats a number for CSV: shortest text that reads back to the same f64.
pub fn num(x: f64) -> String {
    format!("{x}")
}

fn moment_cells(m: &Moments) -> [String; 5] {
    [num(m.mean), num(m.std()), num(m.min), num(m.max), m.n.to_string()]
}

/// `nodes.csv` rows of one checkpoint (without metadata columns).
pub fn node_rows(checkpoint: &str, a: &Analysis) -> Vec<Vec<String>> {
    a.node_sets.iter().enumerate().map(|(k, s)| node_row(checkpoint, k, s, a.not_chain.is_none())).collect()
}

fn node_row(checkpoint: &str, k: usize, s: &NodeSetResult, chain: bool) -> Vec<String> {
    let m = &s.strength;
    vec![
        checkpoint.to_string(),
        k.to_string(),
        m.n.to_string(),
        num(m.mean),
        num(m.std()),
        num(m.min),
        num(m.max),
        num(m.skewness()),
        num(m.kurtosis()),
        num(s.s_in_mean),
        num(s.s_out_mean),
        s.name.clone(),
        s.shape.to_string(),
        chain.to_string(),
    ]
}

/// `links.csv` rows of one checkpoint (without metadata columns); layers
/// are numbered from 1 (`L1..LK`).
pub fn link_rows(checkpoint: &str, a: &Analysis) -> Vec<Vec<String>> {
    a.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let w = &l.weights;
            let [mean, std, min, max, count] = moment_cells(w);
            let mut row = vec![
                checkpoint.to_string(),
                (i + 1).to_string(),
                l.name.clone(),
                l.kind.to_string(),
                l.weight.clone(),
                count,
                mean,
                std,
                min,
                max,
                num(w.skewness()),
                num(w.kurtosis()),
            ];
            match &l.bias {
                Some(b) => {
                    let [mean, std, min, max, count] = moment_cells(b);
                    row.extend([count, mean, std, min, max]);
                }
                None => row.extend(["0".to_string(), String::new(), String::new(), String::new(), String::new()]),
            }
            row
        })
        .collect()
}

/// `histograms.csv` rows of one checkpoint: link weights per layer
/// (`measure = link_weight`, index = layer) and strengths per node set
/// (`measure = strength`, index = node layer).
pub fn histogram_rows(checkpoint: &str, a: &Analysis) -> Vec<Vec<String>> {
    let row = |measure: &str, index: usize, name: &str, h: &Histogram| {
        let counts: Vec<String> = h.counts.iter().map(u64::to_string).collect();
        let cells = [measure, &index.to_string(), name, &num(h.lo), &num(h.hi), &h.counts.len().to_string()];
        std::iter::once(checkpoint.to_string()).chain(cells.map(String::from)).chain([counts.join(" ")]).collect()
    };
    let layers = a.layers.iter().enumerate().map(|(i, l)| row("link_weight", i + 1, &l.name, &l.histogram));
    let sets = a.node_sets.iter().enumerate().map(|(k, s)| row("strength", k, &s.name, &s.histogram));
    layers.chain(sets).collect()
}

/// A file written beside its final path and renamed over it on
/// [`AtomicFile::commit`], so readers never see half a table; dropped
/// without commit, the temporary file is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::output(path, e))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, writer: Some(BufWriter::new(file)) })
    }

    /// Where to write the contents.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("not committed")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let err = |e: std::io::Error| Error::output(&self.path, e);
        let writer = self.writer.take().expect("not committed");
        let file = writer.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&self.tmp, &self.path).map_err(err)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` atomically: `write` fills an [`AtomicFile`].
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    write(file.writer()).map_err(|e| Error::output(path, e))?;
    file.commit()
}

/// One CSV-encoded row, without its line terminator.
pub fn csv_line<I, T>(cells: I) -> String
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(cells).expect("writing to memory");
    let mut bytes = w.into_inner().expect("writing to memory");
    bytes.pop();
    String::from_utf8(bytes).expect("CSV of UTF-8 cells is UTF-8")
}

/// Writes CSV `rows` under `header` to `w`.
pub fn write_csv<W: Write, H: AsRef<[u8]>>(
    w: W,
    header: &[H],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> std::io::Result<()> {
    let mut csv = csv::Writer::from_writer(w);
    csv.write_record(header)?;
    for row in rows {
        csv.write_record(&row)?;
    }
    csv.flush()
}
