//! Output tables: the CSV headers and rows of `nodes`, `links`,
//! `histograms` and `errors`, and atomic file writes (temporary file, then
//! rename, so a reader never sees half a table).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::engine::Analysis;
use crate::error::{Error, Result};
use crate::stats::Histogram;

/// Header of `cntscope nodes` output.
pub const NODE_VALUES_HEADER: [&str; 5] = ["node_layer", "node", "s_in", "s_out", "strength"];

/// Columns of `nodes.csv` before the metadata columns.
pub const NODES_HEADER: [&str; 16] = [
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
    "non_finite",
    "graph",
];

/// Columns of `links.csv` before the metadata columns.
pub const LINKS_HEADER: [&str; 18] = [
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
    "non_finite",
];

/// Columns of `histograms.csv`: one row per histogram, `bins` equal bins
/// over `[lo, hi]` (last bin closed), `counts` space-separated.
pub const HISTOGRAMS_HEADER: [&str; 8] = ["checkpoint", "measure", "index", "name", "lo", "hi", "bins", "counts"];

/// Columns of `errors.csv`.
pub const ERRORS_HEADER: [&str; 4] = ["checkpoint", "kind", "tensor", "message"];

/// Formats a number for CSV: shortest text that reads back to the same f64.
pub fn num(x: f64) -> String {
    zmij::Buffer::new().format(x).to_string()
}

/// CSV rows written into memory with reused buffers: the hot path of a
/// scan formats every row here, so no cell allocates. A cell is quoted
/// only when it holds a comma, a quote or a line break (RFC 4180, as the
/// `csv` crate writes); rows end in `\n`.
#[derive(Default)]
pub struct RowWriter {
    buf: Vec<u8>,
    /// Where the current row starts in `buf`.
    row_start: usize,
    /// Cells written in the current row.
    cells: usize,
}

impl RowWriter {
    /// Starts a cell: the separator after the row's first.
    fn cell(&mut self) {
        if self.cells > 0 {
            self.buf.push(b',');
        }
        self.cells += 1;
    }

    /// A text cell.
    pub fn text(&mut self, s: impl AsRef<[u8]>) -> &mut Self {
        let s = s.as_ref();
        self.cell();
        if s.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
            self.buf.push(b'"');
            for part in s.split_inclusive(|&b| b == b'"') {
                self.buf.extend_from_slice(part);
                if part.last() == Some(&b'"') {
                    self.buf.push(b'"');
                }
            }
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(s);
        }
        self
    }

    /// A cell already CSV-encoded, or needing no quoting (digits, signs,
    /// letters): written as it is.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.cell();
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    /// A number cell: the shortest text that reads back to the same f64
    /// (`NaN`, `inf` and `-inf` as Rust and numpy spell them).
    pub fn num(&mut self, x: f64) -> &mut Self {
        self.raw(zmij::Buffer::new().format(x))
    }

    /// A cell of `x`'s `Display` text, which must need no quoting.
    pub fn display(&mut self, x: impl std::fmt::Display) -> &mut Self {
        self.cell();
        write!(self.buf, "{x}").expect("writing to memory");
        self
    }

    /// An integer cell.
    pub fn int(&mut self, n: impl Into<u64>) -> &mut Self {
        self.raw(itoa::Buffer::new().format(n.into()))
    }

    /// A cell of space-separated integers.
    pub fn ints(&mut self, values: &[u64]) -> &mut Self {
        self.cell();
        let mut digits = itoa::Buffer::new();
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push(b' ');
            }
            // Histogram counts are mostly single digits, in the tails.
            match u8::try_from(v) {
                Ok(d) if d < 10 => self.buf.push(b'0' + d),
                _ => self.buf.extend_from_slice(digits.format(v).as_bytes()),
            }
        }
        self
    }

    /// Ends the row; returns its length in bytes, line terminator included.
    pub fn end(&mut self) -> u32 {
        self.buf.push(b'\n');
        self.cells = 0;
        let len = self.buf.len() - self.row_start;
        self.row_start = self.buf.len();
        u32::try_from(len).expect("a CSV row under 4 GiB")
    }

    /// The rows written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the rows written so far (keeping the buffers).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.row_start = 0;
        self.cells = 0;
    }

    /// One row of `cells`, as text without its line terminator.
    pub fn line<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(cells: I) -> String {
        let mut w = RowWriter::default();
        for c in cells {
            w.text(c);
        }
        String::from_utf8(w.buf).expect("CSV of UTF-8 cells is UTF-8")
    }
}

/// Where table rows go, cell by cell: CSV text ([`RowWriter`]) or typed
/// columns ([`Columns`]). The tables' rows are written once, against this.
pub trait Cells {
    /// A text cell.
    fn text(&mut self, s: &str) -> &mut Self;
    /// A number cell.
    fn num(&mut self, x: f64) -> &mut Self;
    /// An integer cell.
    fn int(&mut self, n: u64) -> &mut Self;
    /// A cell of space-separated integers (histogram counts).
    fn ints(&mut self, values: &[u64]) -> &mut Self;
    /// `true` or `false`.
    fn flag(&mut self, b: bool) -> &mut Self;
    /// An empty cell (a value that does not exist, NaN when read).
    fn empty(&mut self) -> &mut Self;
    /// Ends the row; returns its length in bytes where it has one.
    fn end(&mut self) -> u32;
}

impl Cells for RowWriter {
    fn text(&mut self, s: &str) -> &mut Self {
        RowWriter::text(self, s)
    }
    fn num(&mut self, x: f64) -> &mut Self {
        RowWriter::num(self, x)
    }
    fn int(&mut self, n: u64) -> &mut Self {
        RowWriter::int(self, n)
    }
    fn ints(&mut self, values: &[u64]) -> &mut Self {
        RowWriter::ints(self, values)
    }
    fn flag(&mut self, b: bool) -> &mut Self {
        self.raw(if b { "true" } else { "false" })
    }
    fn empty(&mut self) -> &mut Self {
        self.raw("")
    }
    fn end(&mut self) -> u32 {
        RowWriter::end(self)
    }
}

/// Byte lengths of one checkpoint's rows, as [`rows`] wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowLengths {
    /// Each `nodes.csv` row, line terminator included.
    pub nodes: Vec<u32>,
    /// Each `links.csv` row.
    pub links: Vec<u32>,
    /// All `histograms.csv` rows together.
    pub histograms: usize,
}

/// One checkpoint's table rows, in this order: `nodes.csv` (without
/// metadata columns), `links.csv` (likewise) and `histograms.csv`.
pub fn rows(w: &mut RowWriter, checkpoint: &str, a: &Analysis) -> RowLengths {
    RowLengths {
        nodes: node_rows(w, checkpoint, a),
        links: link_rows(w, checkpoint, a),
        histograms: histogram_rows(w, checkpoint, a).iter().map(|&n| n as usize).sum(),
    }
}

/// `nodes.csv` rows (without metadata cells): one per node set.
pub fn node_rows<W: Cells>(w: &mut W, checkpoint: &str, a: &Analysis) -> Vec<u32> {
    a.node_sets
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let m = &s.strength;
            let (mean, min, max) = m.location();
            w.text(checkpoint).int(k as u64).int(m.n).num(mean).num(m.std()).num(min).num(max);
            w.num(m.skewness()).num(m.kurtosis()).num(s.s_in_mean).num(s.s_out_mean);
            w.text(&s.name).text(&s.shape.to_string()).flag(a.not_chain.is_none()).int(s.non_finite);
            w.text(a.source.name()).end()
        })
        .collect()
}

/// `links.csv` rows (without metadata cells); layers are numbered from 1
/// (`L1..LK`).
pub fn link_rows<W: Cells>(w: &mut W, checkpoint: &str, a: &Analysis) -> Vec<u32> {
    a.layers
        .iter()
        .map(|l| {
            let m = &l.weights;
            let (mean, min, max) = m.location();
            w.text(checkpoint).int(l.index as u64).text(&l.name).text(l.kind).text(&l.weight).int(m.n);
            w.num(mean).num(m.std()).num(min).num(max).num(m.skewness()).num(m.kurtosis());
            match &l.bias {
                Some(b) => {
                    let (mean, min, max) = b.location();
                    w.int(b.n).num(mean).num(b.std()).num(min).num(max)
                }
                None => w.int(0).empty().empty().empty().empty(),
            };
            w.int(l.non_finite).end()
        })
        .collect()
}

/// `histograms.csv` rows: link weights per layer (`measure =
/// link_weight`, index = layer) and strengths per node set (`measure =
/// strength`, index = node layer).
pub fn histogram_rows<W: Cells>(w: &mut W, checkpoint: &str, a: &Analysis) -> Vec<u32> {
    let mut row = |measure: &str, index: usize, name: &str, h: &Histogram| {
        w.text(checkpoint).text(measure).int(index as u64).text(name).num(h.lo).num(h.hi);
        w.int(h.counts.len() as u64).ints(&h.counts).end()
    };
    let layers = a.layers.iter().map(|l| row("link_weight", l.index, &l.name, &l.histogram));
    let layers: Vec<u32> = layers.collect();
    let sets = a.node_sets.iter().enumerate().map(|(k, s)| row("strength", k, &s.name, &s.histogram));
    layers.into_iter().chain(sets.collect::<Vec<_>>()).collect()
}

/// CSV rows handed over in pieces of about [`Chunked::PIECE`] bytes as
/// they are written (the rows of a checkpoint with 10^5 layers are never
/// held whole).
pub struct Chunked<'a> {
    w: RowWriter,
    sink: &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    error: Option<std::io::Error>,
}

impl<'a> Chunked<'a> {
    /// Bytes gathered before a piece is handed over.
    pub const PIECE: usize = 1 << 20;

    /// Rows for `sink`.
    pub fn new(sink: &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Self {
        Chunked { w: RowWriter::default(), sink, error: None }
    }

    fn hand_over(&mut self) {
        if self.error.is_none() && !self.w.bytes().is_empty() {
            self.error = (self.sink)(self.w.bytes()).err();
        }
        self.w.clear();
    }

    /// Hands over what is left; the first error of the sink, if any.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.hand_over();
        self.error.map_or(Ok(()), Err)
    }
}

impl Cells for Chunked<'_> {
    fn text(&mut self, s: &str) -> &mut Self {
        self.w.text(s);
        self
    }
    fn num(&mut self, x: f64) -> &mut Self {
        self.w.num(x);
        self
    }
    fn int(&mut self, n: u64) -> &mut Self {
        self.w.int(n);
        self
    }
    fn ints(&mut self, values: &[u64]) -> &mut Self {
        self.w.ints(values);
        self
    }
    fn flag(&mut self, b: bool) -> &mut Self {
        Cells::flag(&mut self.w, b);
        self
    }
    fn empty(&mut self) -> &mut Self {
        self.w.raw("");
        self
    }
    fn end(&mut self) -> u32 {
        let n = self.w.end();
        if self.w.bytes().len() >= Self::PIECE {
            self.hand_over();
        }
        n
    }
}

/// [`rows`], handed to `sink` in pieces of about a megabyte.
pub fn stream_rows(
    checkpoint: &str,
    a: &Analysis,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<RowLengths> {
    let mut w = Chunked::new(sink);
    let lengths = RowLengths {
        nodes: node_rows(&mut w, checkpoint, a),
        links: link_rows(&mut w, checkpoint, a),
        histograms: histogram_rows(&mut w, checkpoint, a).iter().map(|&n| n as usize).sum(),
    };
    w.finish().map(|_| lengths)
}

/// A table as typed columns: each column int64, float64, bool or text, as
/// a reader of its CSV infers them (`pandas.read_csv`: integers when every
/// cell is one, booleans when every cell is `true`/`false`, floats when
/// every cell is a number or empty, else text). Numbers are the measured
/// f64s themselves (the CSV's shortest round-trip text reads back to the
/// same bits, so both agree).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integers.
    I64(Vec<i64>),
    /// Numbers, NaN for empty cells.
    F64(Vec<f64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// Text, `None` for empty cells.
    Text(Vec<Option<String>>),
}

impl Values {
    /// The column of these text cells, typed as a CSV reader would.
    pub fn infer<S: AsRef<str>>(cells: &[S]) -> Values {
        if cells.is_empty() {
            // As `read_csv` reads a header alone: text columns.
            return Values::Text(Vec::new());
        }
        let cells = || cells.iter().map(|c| c.as_ref());
        if let Some(v) = cells().map(|c| c.parse::<i64>().ok()).collect::<Option<Vec<_>>>() {
            return Values::I64(v);
        }
        if let Some(v) = cells().map(truth).collect::<Option<Vec<_>>>() {
            return Values::Bool(v);
        }
        let float = |c: &str| if c.is_empty() { Some(f64::NAN) } else { c.parse::<f64>().ok() };
        if let Some(v) = cells().map(float).collect::<Option<Vec<_>>>() {
            return Values::F64(v);
        }
        Values::Text(cells().map(|c| (!c.is_empty()).then(|| c.to_string())).collect())
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        match self {
            Values::I64(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    /// True when the column has no cells.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `true`/`false` as CSV readers spell them.
fn truth(c: &str) -> Option<bool> {
    match c {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// One cell as [`Columns`] keeps it until the column's type is known.
#[derive(Debug, Clone)]
enum Cell {
    Num(f64),
    Int(u64),
    Text(String),
}

/// Rows collected as typed columns (the Python binding's tables), with
/// `suffix` cells (a checkpoint's metadata) appended to every row.
#[derive(Debug, Default)]
pub struct Columns {
    cells: Vec<Vec<Cell>>,
    at: usize,
    suffix: Vec<String>,
}

impl Columns {
    /// Columns whose every row ends in these cells.
    pub fn with_suffix(suffix: Vec<String>) -> Self {
        Columns { suffix, ..Columns::default() }
    }

    fn push(&mut self, cell: Cell) -> &mut Self {
        if self.cells.len() <= self.at {
            self.cells.push(Vec::new());
        }
        self.cells[self.at].push(cell);
        self.at += 1;
        self
    }

    /// The columns under their `names` (a table without rows has every
    /// column empty, as text, as its CSV reads).
    pub fn finish(self, names: Vec<String>) -> Vec<(String, Values)> {
        let mut cells = self.cells.into_iter();
        names.into_iter().map(|n| (n, typed(cells.next().unwrap_or_default()))).collect()
    }
}

/// A column's type from its cells, as [`Values::infer`] types their CSV
/// text: a number's text never reads as an integer (it always has a point,
/// an exponent or is `NaN`/`inf`), an integer's always does.
fn typed(cells: Vec<Cell>) -> Values {
    let all = |f: fn(&Cell) -> bool| cells.iter().all(f);
    if cells.is_empty() {
        return Values::Text(Vec::new());
    }
    if all(|c| matches!(c, Cell::Int(_))) {
        return Values::I64(cells.iter().map(|c| if let Cell::Int(n) = c { *n as i64 } else { 0 }).collect());
    }
    if all(|c| matches!(c, Cell::Num(_) | Cell::Int(_)) || matches!(c, Cell::Text(t) if t.is_empty())) {
        let v = cells.iter().map(|c| match c {
            Cell::Num(x) => *x,
            Cell::Int(n) => *n as f64,
            Cell::Text(_) => f64::NAN,
        });
        return Values::F64(v.collect());
    }
    let text: Vec<String> = cells
        .into_iter()
        .map(|c| match c {
            Cell::Num(x) => num(x),
            Cell::Int(n) => n.to_string(),
            Cell::Text(t) => t,
        })
        .collect();
    Values::infer(&text)
}

impl Cells for Columns {
    fn text(&mut self, s: &str) -> &mut Self {
        self.push(Cell::Text(s.to_string()))
    }
    fn num(&mut self, x: f64) -> &mut Self {
        self.push(Cell::Num(x))
    }
    fn int(&mut self, n: u64) -> &mut Self {
        self.push(Cell::Int(n))
    }
    fn ints(&mut self, values: &[u64]) -> &mut Self {
        let mut w = RowWriter::default();
        w.ints(values);
        self.push(Cell::Text(String::from_utf8(w.buf).expect("digits")))
    }
    fn flag(&mut self, b: bool) -> &mut Self {
        self.push(Cell::Text(if b { "true" } else { "false" }.into()))
    }
    fn empty(&mut self) -> &mut Self {
        self.push(Cell::Text(String::new()))
    }
    fn end(&mut self) -> u32 {
        for k in 0..self.suffix.len() {
            let cell = Cell::Text(self.suffix[k].clone());
            self.push(cell);
        }
        self.at = 0;
        0
    }
}

/// A CSV table (header first, as this crate writes them: RFC 4180, `\n`
/// line ends) read into typed columns ([`Values::infer`]). Errors say the
/// line.
pub fn read_table(csv: &[u8]) -> std::result::Result<Vec<(String, Values)>, String> {
    let text = std::str::from_utf8(csv).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut rows = Records { rest: text, line: 1 };
    let names: Vec<String> = rows.next().transpose()?.unwrap_or_default().into_iter().map(|c| c.into_owned()).collect();
    let mut cells: Vec<Vec<std::borrow::Cow<'_, str>>> = vec![Vec::new(); names.len()];
    while let Some(row) = rows.next() {
        let row = row?;
        if row.len() != names.len() {
            return Err(format!("line {}: {} cells under {} columns", rows.line - 1, row.len(), names.len()));
        }
        for (column, cell) in cells.iter_mut().zip(row) {
            column.push(cell);
        }
    }
    Ok(names.into_iter().zip(cells).map(|(n, c)| (n, Values::infer(&c))).collect())
}

/// The rows of CSV text as text cells, the header first (as
/// [`read_table`] reads them, before typing the columns).
pub fn read_rows(text: &str) -> impl Iterator<Item = std::result::Result<Vec<std::borrow::Cow<'_, str>>, String>> {
    Records { rest: text, line: 1 }
}

/// The cells of one CSV line (as [`read_table`] reads a row).
pub fn read_row(line: &str) -> std::result::Result<Vec<String>, String> {
    let row = Records { rest: line, line: 1 }.next().transpose()?.unwrap_or_default();
    Ok(row.into_iter().map(|c| c.into_owned()).collect())
}

/// The rows of CSV text, cells borrowed where they need no unquoting. (The
/// `csv` crate reads the same, but building its reader costs more than a
/// small table's whole parse.)
struct Records<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = std::result::Result<Vec<std::borrow::Cow<'a, str>>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::borrow::Cow;
        if self.rest.is_empty() {
            return None;
        }
        let mut row = Vec::new();
        let mut s = self.rest;
        loop {
            let (cell, after): (Cow<'a, str>, &'a str) = if let Some(quoted) = s.strip_prefix('"') {
                let mut cell = String::new();
                let mut q = quoted;
                loop {
                    let Some(end) = q.find('"') else {
                        return Some(Err(format!("line {}: a quoted cell is not closed", self.line)));
                    };
                    cell.push_str(&q[..end]);
                    if q[end + 1..].starts_with('"') {
                        cell.push('"');
                        q = &q[end + 2..];
                    } else {
                        self.line += cell.matches('\n').count();
                        break (Cow::Owned(cell), &q[end + 1..]);
                    }
                }
            } else {
                let end = s.bytes().position(|b| b == b',' || b == b'\n').unwrap_or(s.len());
                (Cow::Borrowed(s[..end].strip_suffix('\r').unwrap_or(&s[..end])), &s[end..])
            };
            row.push(cell);
            match after.as_bytes().first() {
                Some(b',') => s = &after[1..],
                Some(b'\n') => {
                    self.rest = &after[1..];
                    break;
                }
                Some(b'\r') if after[1..].starts_with('\n') => {
                    self.rest = &after[2..];
                    break;
                }
                None => {
                    self.rest = "";
                    break;
                }
                Some(_) => return Some(Err(format!("line {}: text after a quoted cell", self.line))),
            }
        }
        self.line += 1;
        Some(Ok(row))
    }
}

/// A file written beside its final path and renamed over it on
/// [`AtomicFile::commit`], so readers never see half a table; dropped
/// without commit, the temporary file is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<Sink>>,
}

/// The file under an [`AtomicFile`]. For the tests of what a full disk
/// does, `CNTSCOPE_TEST_DISK_FULL=NAME:BYTES` makes writes to files named
/// NAME fail beyond BYTES, as a full disk would (`StorageFull`).
pub struct Sink {
    file: File,
    room: Option<u64>,
}

impl Sink {
    fn new(file: File, name: &str) -> Self {
        let room = std::env::var("CNTSCOPE_TEST_DISK_FULL").ok().and_then(|v| {
            let (n, bytes) = v.rsplit_once(':')?;
            (n == name).then(|| bytes.parse().ok()).flatten()
        });
        Sink { file, room }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(room) = &mut self.room {
            if buf.len() as u64 > *room {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"));
            }
            *room -= buf.len() as u64;
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl AtomicFile {
    /// Starts writing `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!("{}{}", temporary_prefix(&name), std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::output(path, e))?;
        let sink = Sink::new(file, &name);
        Ok(AtomicFile { path: path.to_path_buf(), tmp, writer: Some(BufWriter::with_capacity(1 << 18, sink)) })
    }

    /// Where to write the contents.
    pub fn writer(&mut self) -> &mut BufWriter<Sink> {
        self.writer.as_mut().expect("not committed")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        self.sync()?;
        self.publish()
    }

    /// Flushes the contents to the file (it stays temporary).
    pub fn flush(&mut self) -> Result<()> {
        let err = |e: std::io::Error| Error::output(&self.path, e);
        self.writer.as_mut().expect("not committed").flush().map_err(err)
    }

    /// Flushes the contents and waits for the disk to hold them (the file
    /// stays temporary).
    pub fn sync(&mut self) -> Result<()> {
        let err = |e: std::io::Error| Error::output(&self.path, e);
        let writer = self.writer.as_mut().expect("not committed");
        writer.flush().map_err(err)?;
        writer.get_ref().file.sync_all().map_err(err)
    }

    /// Flushes and renames the file into place (after [`AtomicFile::sync`]
    /// where the disk must hold it first).
    pub fn publish(mut self) -> Result<()> {
        let err = |e: std::io::Error| Error::output(&self.path, e);
        let writer = self.writer.take().expect("not committed");
        let sink = writer.into_inner().map_err(|e| err(e.into_error()))?;
        drop(sink);
        std::fs::rename(&self.tmp, &self.path).map_err(err)
    }
}

/// Removes from `dir` the temporary files of the `names` (as
/// [`AtomicFile`] names them) that writers killed before they finished
/// left behind.
pub fn remove_stale(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefixes: Vec<String> = names.iter().map(|n| temporary_prefix(n)).collect();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How an [`AtomicFile`]'s temporary file for `name` begins (its writer's
/// process id follows).
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp")
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` atomically: `write` fills an [`AtomicFile`].
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut BufWriter<Sink>) -> std::io::Result<()>) -> Result<()> {
    atomic_stage(path, write)?.commit()
}

/// The first half of [`atomic_write`]: `write` fills the temporary file,
/// flushed (a full disk fails here), neither synced nor in place until
/// [`AtomicFile::commit`].
pub fn atomic_stage(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<Sink>) -> std::io::Result<()>,
) -> Result<AtomicFile> {
    let mut file = AtomicFile::create(path)?;
    write(file.writer()).map_err(|e| Error::output(path, e))?;
    file.flush()?;
    Ok(file)
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
