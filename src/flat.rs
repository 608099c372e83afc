//! Flat-matrix zoos: one NumPy matrix holding one network's flattened
//! parameters per row, a layout table mapping column ranges to tensors, and
//! a metrics table with one row per network, as the Small CNN Zoo
//! (Unterthiner et al. 2020) ships them:
//!
//! - `weights.npy`: an `[N, P]` C-order matrix (f32, f16 or f64);
//! - `layout.csv`: `varname,start_idx,end_idx,size,shape`, one row per
//!   tensor (`sequential/conv2d/kernel:0,16,160,144,"(3, 3, 1, 16)"`): the
//!   tensor is columns `start_idx..end_idx` of a row, reshaped (C order);
//! - `metrics.csv.gz` or `metrics.csv` (optional): row `i` describes
//!   matrix row `i` (`test_accuracy`, `step`, `config.*`, ...).
//!
//! A checkpoint is a row, named `DIR/weights.npy#row=I`; its tensors are
//! read in place from the mapped matrix, its metrics row is its metadata.
//! Each zoo's matrix map, layout and metrics are loaded once per process.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::mapped::Map;

/// The matrix of a flat-matrix zoo.
pub const MATRIX: &str = "weights.npy";
/// Its layout table.
pub const LAYOUT: &str = "layout.csv";
/// Its metrics tables, in the order looked for.
pub const METRICS: [&str; 2] = ["metrics.csv.gz", "metrics.csv"];

/// What follows the matrix's path in a row's checkpoint name.
const ROW: &str = "#row=";

/// True when `dir` holds a flat-matrix zoo (a matrix and its layout).
pub fn is_zoo(dir: &Path) -> bool {
    dir.join(MATRIX).is_file() && dir.join(LAYOUT).is_file()
}

/// The checkpoint name of row `i` of the zoo in `dir`.
pub fn row_path(dir: &Path, i: usize) -> PathBuf {
    let mut name = dir.join(MATRIX).into_os_string();
    name.push(format!("{ROW}{i}"));
    PathBuf::from(name)
}

/// The matrix and row a row's checkpoint name stands for.
pub fn split(path: &Path) -> Option<(PathBuf, usize)> {
    let text = path.to_str()?;
    let (file, row) = text.rsplit_once(ROW)?;
    let row = row.parse().ok().filter(|_| !row.starts_with('+'))?;
    Path::new(file).file_name().is_some_and(|n| n == MATRIX).then(|| (PathBuf::from(file), row))
}

/// The file that holds a checkpoint (the matrix, for a row).
pub fn file_of(path: &Path) -> std::borrow::Cow<'_, Path> {
    match split(path) {
        Some((file, _)) => file.into(),
        None => path.into(),
    }
}

/// The rows of the zoo in `dir`, as checkpoint names. The zoo is loaded
/// afresh (a process that scans again, a Python session, sees the files
/// as they are now); its rows are then opened from that load.
pub fn rows(dir: &Path) -> Result<Vec<PathBuf>> {
    let zoo = Zoo::load_shared(&dir.join(MATRIX), true)?;
    Ok((0..zoo.rows).map(|i| row_path(dir, i)).collect())
}

/// For the matrix of a zoo opened as a checkpoint: why it is not one (what
/// is wrong with the zoo, or that its rows are the checkpoints).
pub(crate) fn matrix_error(path: &Path) -> Option<Error> {
    let dir = path.parent()?;
    if path.file_name()? != MATRIX || !is_zoo(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
        return None;
    }
    Some(Zoo::load_shared(path, true).err().unwrap_or_else(|| {
        Error::FlatZoo {
            path: path.to_path_buf(),
            reason: "this is the matrix; its rows are the checkpoints (scan the directory, or name one row as \
                 weights.npy#row=N)"
                .into(),
        }
    }))
}

/// One tensor of a row.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    pub(crate) name: String,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) shape: Vec<usize>,
}

/// A loaded zoo: the mapped matrix, its layout and metrics.
pub(crate) struct Zoo {
    map: Map,
    pub(crate) dtype: Dtype,
    /// Byte offset of row 0.
    data: usize,
    pub(crate) rows: usize,
    /// Elements per row.
    cols: usize,
    pub(crate) layout: Vec<Var>,
    metrics: Option<Metrics>,
}

/// The metrics table: its header and each row's line.
struct Metrics {
    path: PathBuf,
    header: Vec<String>,
    text: String,
    /// Byte range of each data row in `text`.
    lines: Vec<(usize, usize)>,
}

impl Zoo {
    /// The zoo of `matrix`, loaded on first use.
    pub(crate) fn get(matrix: &Path) -> Result<Arc<Zoo>> {
        Self::load_shared(matrix, false)
    }

    /// The zoo of `matrix` from the process's cache, or loaded (`fresh`:
    /// loaded again in any case, replacing what the cache held).
    fn load_shared(matrix: &Path, fresh: bool) -> Result<Arc<Zoo>> {
        static ZOOS: OnceLock<Mutex<HashMap<PathBuf, Arc<Zoo>>>> = OnceLock::new();
        let zoos = ZOOS.get_or_init(Default::default);
        if !fresh {
            if let Some(z) = zoos.lock().expect("zoo cache").get(matrix) {
                return Ok(z.clone());
            }
        }
        // Loaded outside the lock (a 300000-row metrics table takes a
        // while); with two loaders at once, the last one's stays.
        let zoo = Arc::new(Zoo::load(matrix)?);
        zoos.lock().expect("zoo cache").insert(matrix.to_path_buf(), zoo.clone());
        Ok(zoo)
    }

    fn load(matrix: &Path) -> Result<Zoo> {
        let dir = matrix.parent().unwrap_or(Path::new("."));
        let bad = |path: &Path, reason: String| Error::FlatZoo { path: path.to_path_buf(), reason };
        let io = |path: &Path, error| Error::Io { path: path.to_path_buf(), error };
        let file = std::fs::File::open(matrix).map_err(|e| io(matrix, e))?;
        let meta = file.metadata().map_err(|e| io(matrix, e))?;
        let map = Map::new(file, &meta).map_err(|e| io(matrix, e))?;
        let h = crate::numpy::matrix_header(&map).map_err(|r| bad(matrix, r))?;
        let &[rows, cols] = h.shape.as_slice() else {
            return Err(bad(matrix, format!("shape {:?}: the matrix of a zoo has one row per network", h.shape)));
        };
        if h.fortran {
            return Err(bad(matrix, "Fortran-ordered: a network's parameters are not one row in the file".into()));
        }
        let item = h.dtype.bitsize() / 8;
        if !matches!(h.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(bad(matrix, format!("dtype {:?}: a zoo's parameters are floats", h.dtype)));
        }
        let size = rows.checked_mul(cols).and_then(|n| n.checked_mul(item)).and_then(|n| n.checked_add(h.data));
        if size.is_none_or(|s| s > map.len()) {
            return Err(bad(
                matrix,
                format!("{rows} x {cols} {:?} elements need more bytes than the file's {}", h.dtype, map.len()),
            ));
        }
        let layout_path = dir.join(LAYOUT);
        let text = std::fs::read(&layout_path).map_err(|e| io(&layout_path, e))?;
        let layout = parse_layout(&text, cols).map_err(|r| bad(&layout_path, r))?;
        let metrics =
            METRICS.iter().map(|m| dir.join(m)).find(|p| p.is_file()).map(|p| Metrics::load(&p, rows)).transpose()?;
        Ok(Zoo { map, dtype: h.dtype, data: h.data, rows, cols, layout, metrics })
    }

    /// Whether the matrix file changed since it was mapped.
    pub(crate) fn changed(&self) -> bool {
        self.map.changed()
    }

    /// Row `i`'s bytes.
    pub(crate) fn row(&self, i: usize) -> &[u8] {
        let len = self.cols * (self.dtype.bitsize() / 8);
        &self.map[self.data + i * len..self.data + (i + 1) * len]
    }

    /// Row `i`'s metrics, by column (with `row` = i).
    pub(crate) fn metadata(&self, i: usize) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::from([("row".to_string(), i.to_string())]);
        if let Some(m) = &self.metrics {
            let (s, e) = m.lines[i];
            let cells = crate::output::read_row(&m.text[s..e])
                .map_err(|r| Error::FlatZoo { path: m.path.clone(), reason: format!("row {}: {r}", i + 1) })?;
            if cells.len() != m.header.len() {
                return Err(Error::FlatZoo {
                    path: m.path.clone(),
                    reason: format!("row {}: {} cells under {} columns", i + 1, cells.len(), m.header.len()),
                });
            }
            // Pandas' index column, written by `to_csv` without index=False.
            for (k, v) in m.header.iter().zip(cells).filter(|(k, _)| !k.is_empty()) {
                out.insert(k.clone(), v);
            }
        }
        Ok(out)
    }
}

/// A row's bytes, held by the zoo (for [`crate::checkpoint::Checkpoint`]).
pub(crate) struct RowBytes {
    pub(crate) zoo: Arc<Zoo>,
    pub(crate) row: usize,
}

impl RowBytes {
    /// The row's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.zoo.row(self.row)
    }
}

impl Metrics {
    fn load(path: &Path, rows: usize) -> Result<Metrics> {
        let bad = |reason: String| Error::FlatZoo { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut out = String::new();
            // At most 64 bytes of text per byte of the compressed file and
            // 4 GB in all: a gzip bomb stops there.
            let limit = (bytes.len() as u64).saturating_mul(64).min(4 << 30);
            let mut decoder = std::io::Read::take(flate2::read::MultiGzDecoder::new(&bytes[..]), limit + 1);
            std::io::Read::read_to_string(&mut decoder, &mut out).map_err(|e| bad(format!("gzip: {e}")))?;
            if out.len() as u64 > limit {
                return Err(bad("decompresses to more than 64 times its size: refused".into()));
            }
            out
        } else {
            String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?
        };
        let mut lines = Vec::with_capacity(rows);
        let mut at = 0;
        let mut header = None;
        for line in text.split_inclusive('\n') {
            let (s, e) = (at, at + line.trim_end_matches(['\n', '\r']).len());
            at += line.len();
            if s == e {
                continue;
            }
            if header.is_none() {
                header = Some(crate::output::read_row(&text[s..e]).map_err(|r| bad(format!("header: {r}")))?);
            } else {
                lines.push((s, e));
            }
        }
        if lines.len() != rows {
            return Err(bad(format!("{} rows for the matrix's {rows}: row i must describe matrix row i", lines.len())));
        }
        Ok(Metrics { path: path.to_path_buf(), header: header.unwrap_or_default(), text, lines })
    }
}

/// The layout table: every tensor a range of the row's `cols` columns,
/// ranges in bounds, not overlapping, sized as their shapes.
fn parse_layout(text: &[u8], cols: usize) -> std::result::Result<Vec<Var>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let mut rows = crate::output::read_rows(text);
    let header = rows.next().transpose()?.unwrap_or_default();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            let have: Vec<&str> = header.iter().map(|h| h.as_ref()).collect();
            format!("no `{name}` column (columns: {}; expected varname, start_idx, end_idx, shape)", have.join(", "))
        })
    };
    let columns = [column("varname")?, column("start_idx")?, column("end_idx")?, column("shape")?];
    let mut vars = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, row) in rows.enumerate() {
        let row = row?;
        let line = i + 2;
        if row.len() != header.len() {
            return Err(format!("line {line}: {} cells under {} columns", row.len(), header.len()));
        }
        let [n, s, e, sh] = columns.map(|k| row.get(k).map_or("", |c| c.as_ref()));
        let index = |t: &str| t.parse::<usize>().map_err(|_| format!("line {line}: `{t}` is not a column index"));
        let (s, e) = (index(s)?, index(e)?);
        if s > e || e > cols {
            return Err(format!("line {line}: `{n}` spans columns {s}..{e}, outside the matrix's 0..{cols}"));
        }
        let dims = sh
            .trim()
            .trim_start_matches(['(', '['])
            .trim_end_matches([')', ']'])
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<usize>().map_err(|_| format!("line {line}: shape `{sh}` of `{n}`")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if dims.iter().try_fold(1usize, |p, &d| p.checked_mul(d)) != Some(e - s) {
            return Err(format!("line {line}: `{n}` has shape {dims:?} but spans {} columns", e - s));
        }
        if n.is_empty() || !seen.insert(n.to_string()) {
            return Err(format!("line {line}: tensor name `{n}` empty or given twice"));
        }
        vars.push(Var { name: n.to_string(), start: s, end: e, shape: dims });
    }
    let mut spans: Vec<(usize, usize, &str)> = vars.iter().map(|v| (v.start, v.end, v.name.as_str())).collect();
    spans.sort();
    if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(format!(
            "`{}` and `{}` overlap (columns {}..{} and {}..{})",
            w[0].2, w[1].2, w[0].0, w[0].1, w[1].0, w[1].1
        ));
    }
    if vars.is_empty() {
        return Err("no tensors".into());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_names_round_trip() {
        let p = row_path(Path::new("zoo/mnist"), 123);
        assert_eq!(p, Path::new("zoo/mnist/weights.npy#row=123"));
        assert_eq!(split(&p), Some((PathBuf::from("zoo/mnist/weights.npy"), 123)));
        assert_eq!(split(Path::new("zoo/other.npy#row=1")), None);
        assert_eq!(split(Path::new("zoo/weights.npy#row=+1")), None);
        assert_eq!(file_of(&p), Path::new("zoo/mnist/weights.npy"));
    }

    #[test]
    fn layouts_are_checked() {
        let ok = b"varname,start_idx,end_idx,size,shape\nb:0,0,2,2,\"(2,)\"\nk:0,2,8,6,\"(3, 2)\"\n";
        let v = parse_layout(ok, 8).unwrap();
        assert_eq!((v[1].start, v[1].end, v[1].shape.clone()), (2, 8, vec![3, 2]));
        for (text, want) in [
            (&b"varname,start_idx,end_idx,shape\nb,0,9,\"(9,)\"\n"[..], "outside the matrix"),
            (b"varname,start_idx,end_idx,shape\nb,0,4,\"(3,)\"\n", "spans 4 columns"),
            (b"varname,start_idx,end_idx,shape\nb,0,4,\"(4,)\"\nc,2,6,\"(4,)\"\n", "overlap"),
            (b"varname,start_idx,end_idx,shape\nb,0,2,\"(2,)\"\nb,2,4,\"(2,)\"\n", "given twice"),
            (b"name,start,end\nb,0,2\n", "no `varname` column"),
            (b"varname,start_idx,end_idx,shape\nb,x,2,\"(2,)\"\n", "not a column index"),
        ] {
            let e = parse_layout(text, 8).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
