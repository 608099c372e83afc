//! The library's typed columns handed to Python: numbers as raw
//! little-endian arrays (`numpy.frombuffer` takes them as they are), text
//! as lists.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use cntscope::engine::Analysis;
use cntscope::output::Values;

/// A table: named columns of equal length, in order.
pub struct Table(pub Vec<(String, Values)>);

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
    let columns = [Values::I64(layer), Values::I64(node), Values::F64(s_in), Values::F64(s_out), Values::F64(strength)];
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
    /// bytes, or `str` with a list (None for an empty cell).
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let columns = PyList::empty(py);
        for (name, values) in self.0 {
            let (kind, values): (&str, Bound<'py, PyAny>) = match &values {
                Values::F64(v) => ("f8", raw(py, v, f64::to_le_bytes)?.into_any()),
                Values::I64(v) => ("i8", raw(py, v, i64::to_le_bytes)?.into_any()),
                Values::Bool(v) => ("bool", raw(py, v, |b| [b as u8])?.into_any()),
                Values::Text(v) => ("str", PyList::new(py, v)?.into_any()),
            };
            let name = name.into_pyobject(py)?.into_any();
            columns.append(PyTuple::new(py, [name, kind.into_pyobject(py)?.into_any(), values])?)?;
        }
        Ok(columns)
    }
}
