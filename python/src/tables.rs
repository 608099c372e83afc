//! Tables as typed columns for pandas: each CSV column becomes int64,
//! float64, bool or text as `pandas.read_csv` would read it (numbers
//! bit-exact, as `float_precision="round_trip"` reads them), handed over
//! as raw little-endian arrays (numbers) or lists (text).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use cntscope::engine::Analysis;

/// One column's values.
pub enum Data {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    /// `None` for an empty cell (NaN in pandas, as `read_csv` reads it).
    Text(Vec<Option<String>>),
}

/// A table: named columns of equal length, in order.
pub struct Table(pub Vec<(String, Data)>);

/// Reads a CSV table (header first) into typed columns.
pub fn parse(csv: &[u8]) -> anyhow::Result<Table> {
    let text = std::str::from_utf8(csv)?;
    let mut rows = Records { rest: text, line: 1 };
    let names = rows.next().transpose()?.unwrap_or_default();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    while let Some(row) = rows.next() {
        let row = row?;
        anyhow::ensure!(
            row.len() == names.len(),
            "line {}: {} cells under {} columns",
            rows.line - 1,
            row.len(),
            names.len()
        );
        for (column, cell) in cells.iter_mut().zip(row) {
            column.push(cell);
        }
    }
    Ok(Table(names.into_iter().zip(cells).map(|(n, c)| (n, infer(c))).collect()))
}

/// The rows of CSV text as `RowWriter` writes it (RFC 4180: a cell is
/// quoted when it holds a comma, quote or line break, quotes doubled; rows
/// end in `\n`). The `csv` crate reads the same, but building its reader
/// costs more than a small table's whole parse, and `analyze` parses four
/// tables per call.
struct Records<'a> {
    rest: &'a str,
    line: usize,
}

impl Iterator for Records<'_> {
    type Item = anyhow::Result<Vec<String>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut row = Vec::new();
        let mut s = self.rest;
        loop {
            let (cell, after) = if let Some(quoted) = s.strip_prefix('"') {
                let mut cell = String::new();
                let mut q = quoted;
                loop {
                    let Some(end) = q.find('"') else {
                        return Some(Err(anyhow::anyhow!("line {}: a quoted cell is not closed", self.line)));
                    };
                    cell.push_str(&q[..end]);
                    if q[end + 1..].starts_with('"') {
                        cell.push('"');
                        q = &q[end + 2..];
                    } else {
                        break (cell, &q[end + 1..]);
                    }
                }
            } else {
                let end = s.find([',', '\n']).unwrap_or(s.len());
                (s[..end].strip_suffix('\r').unwrap_or(&s[..end]).to_string(), &s[end..])
            };
            self.line += cell.matches('\n').count();
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
                Some(_) => return Some(Err(anyhow::anyhow!("line {}: text after a quoted cell", self.line))),
            }
        }
        self.line += 1;
        Some(Ok(row))
    }
}

/// The column's type as pandas infers it: integers when every cell is one,
/// booleans when every cell is `true`/`false` (any case pandas accepts),
/// floats when every cell is a number or empty, text otherwise.
fn infer(cells: Vec<String>) -> Data {
    if !cells.is_empty() {
        if let Ok(v) = cells.iter().map(|c| c.parse::<i64>()).collect::<Result<Vec<_>, _>>() {
            return Data::I64(v);
        }
        let truth = |c: &str| match c {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => None,
        };
        if let Some(v) = cells.iter().map(|c| truth(c)).collect::<Option<Vec<_>>>() {
            return Data::Bool(v);
        }
    }
    let float = |c: &str| if c.is_empty() { Some(f64::NAN) } else { c.parse::<f64>().ok() };
    if let Some(v) = cells.iter().map(|c| float(c)).collect::<Option<Vec<_>>>() {
        return Data::F64(v);
    }
    Data::Text(cells.into_iter().map(|c| (!c.is_empty()).then_some(c)).collect())
}

/// `cntscope nodes`' table, straight from the measures.
pub fn node_values(a: &Analysis) -> Table {
    let (mut layer, mut node, mut s_in, mut s_out, mut strength) = (vec![], vec![], vec![], vec![], vec![]);
    for (k, set) in a.node_sets.iter().enumerate() {
        let v = set.values.as_ref().expect("values were asked for");
        layer.extend(std::iter::repeat_n(k as i64, v.strength.len()));
        node.extend(0..v.strength.len() as i64);
        s_in.extend_from_slice(&v.s_in);
        s_out.extend_from_slice(&v.s_out);
        strength.extend_from_slice(&v.strength);
    }
    let columns = [Data::I64(layer), Data::I64(node), Data::F64(s_in), Data::F64(s_out), Data::F64(strength)];
    Table(cntscope::output::NODE_VALUES_HEADER.iter().map(|s| s.to_string()).zip(columns).collect())
}

/// Bytes of fixed-size little-endian values.
fn raw<'py, const N: usize, T: Copy>(py: Python<'py>, v: &[T], le: fn(T) -> [u8; N]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, v.len() * N, |b| {
        for (out, &x) in b.chunks_exact_mut(N).zip(v) {
            out.copy_from_slice(&le(x));
        }
        Ok(())
    })
}

impl<'py> IntoPyObject<'py> for Table {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    /// `[(name, kind, values)]`: kind `f8`, `i8` or `bool` with values as
    /// bytes, or `str` with a list.
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let columns = PyList::empty(py);
        for (name, data) in self.0 {
            let (kind, values): (&str, Bound<'py, PyAny>) = match &data {
                Data::F64(v) => ("f8", raw(py, v, f64::to_le_bytes)?.into_any()),
                Data::I64(v) => ("i8", raw(py, v, i64::to_le_bytes)?.into_any()),
                Data::Bool(v) => ("bool", raw(py, v, |b| [b as u8])?.into_any()),
                Data::Text(v) => ("str", PyList::new(py, v)?.into_any()),
            };
            columns.append(PyTuple::new(
                py,
                [name.into_pyobject(py)?.into_any(), kind.into_pyobject(py)?.into_any(), values],
            )?)?;
        }
        Ok(columns)
    }
}
