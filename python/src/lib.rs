//! The Python binding, `cntscope._native`: a thin layer over the cntscope
//! library and its command line, which it compiles in as it is (so the
//! package's `cntscope` command is the binary's, and every option of a
//! scan is parsed and checked by the command line's own parser). Nothing is
//! measured here: this file moves arguments in and columns out.

#[allow(dead_code)]
#[path = "../../src/main.rs"]
mod cli_main;
mod tables;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use cntscope::checkpoint::{Checkpoint, MemoryTensor};
use cntscope::engine::{select_engine, AnalysisOptions, Device, Engine};
use cntscope::graph::{GraphOptions, Network};
use cntscope::scan::{network_columns, ScanControl, ScanOptions};

use cli_main::cli::{Cli, Command};
use tables::Table;

pyo3::create_exception!(
    cntscope,
    CntscopeError,
    PyException,
    "A checkpoint, spec or scan directory that cannot be used as asked. Its `kind` is the `kind` column of \
     errors.csv (`malformed`, `graph`, `missing_tensor`, ...), `path` the file or directory and `tensor` the \
     tensor concerned (None where there is none)."
);

/// A library error as a `CntscopeError` with its kind, path and tensor;
/// anything else (a bad option) as a `ValueError`.
fn to_py(e: anyhow::Error) -> PyErr {
    let message = format!("{e:#}");
    let Some(found) = e.chain().find_map(|c| c.downcast_ref::<cntscope::Error>()) else {
        return PyValueError::new_err(message);
    };
    let err = CntscopeError::new_err(message);
    Python::attach(|py| {
        let value = err.value(py);
        let path = found.path().map(|p| p.display().to_string());
        // Setting attributes on a fresh exception cannot fail.
        let _ = value.setattr("kind", found.kind());
        let _ = value.setattr("path", path);
        let _ = value.setattr("tensor", found.tensor());
    });
    err
}

fn lib_err(e: cntscope::Error) -> PyErr {
    to_py(e.into())
}

/// The settings of one kind of scan, parsed once from the command line's
/// `scan` flags (`args`, as the Python layer spells its keyword
/// arguments): the same names, defaults and checks as `cntscope scan`.
#[pyclass(frozen, module = "cntscope._native")]
struct Options {
    graph: GraphOptions,
    scan: ScanOptions,
    device: Device,
    adapter: Option<String>,
    /// The engine of `analyze` and `nodes`, made on first use.
    engine: OnceLock<Box<dyn Engine>>,
}

#[pymethods]
impl Options {
    #[new]
    fn new(args: Vec<String>) -> PyResult<Self> {
        let argv = ["cntscope", "scan", ".", "--output", "."].into_iter().map(String::from).chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| PyValueError::new_err(e.render().to_string()))?;
        let Command::Scan { graph, device, scan, resume, shard, .. } = cli.command else {
            unreachable!("parsed as scan")
        };
        let graph = graph.options().map_err(to_py)?;
        let scan = ScanOptions {
            resume,
            shard: shard.as_deref().map(cli_main::cli::parse_shard).transpose().map_err(to_py)?,
            progress: false,
            ..scan.options(graph.clone(), cli_main::cores()).map_err(to_py)?
        };
        Ok(Options { graph, scan, device: device.device(), adapter: device.adapter, engine: OnceLock::new() })
    }

    /// Scans `paths` into the scan directory `out` (as `cntscope scan`):
    /// returns the summary; the tables are in `out`. Ctrl-C stops it
    /// (KeyboardInterrupt; what was measured stays in the journal for
    /// `resume`); `progress(done, total)` is called while it runs, and
    /// `bar` shows the command line's progress bar on a terminal.
    #[pyo3(signature = (paths, out, progress=None, bar=false))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        out: PathBuf,
        progress: Option<Py<PyAny>>,
        bar: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let collection = py.detach(|| cli_main::found_checkpoints(&paths)).map_err(to_py)?;
        let control = Arc::new(ScanControl::default());
        let opts = ScanOptions { control: Some(control.clone()), progress: bar, ..self.scan.clone() };
        // Few checkpoints: parallelism goes inside the layers instead.
        let threads = (opts.jobs / collection.paths.len()).max(1);
        let engine = select_engine(self.device, self.adapter.as_deref(), threads).map_err(lib_err)?;
        let mut raised: Option<PyErr> = None;
        let outcome = py.detach(|| {
            std::thread::scope(|s| {
                let (done, finished) = mpsc::channel::<()>();
                let worker = s.spawn(|| {
                    let summary = cntscope::scan::scan(&collection, &out, engine.as_ref(), &opts);
                    drop(done);
                    summary
                });
                // Signals and progress are Python's business, on this thread.
                while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_millis(100)) {
                    if raised.is_some() {
                        continue;
                    }
                    let polled = Python::attach(|py| -> PyResult<()> {
                        py.check_signals()?;
                        if let Some(callback) = &progress {
                            callback.call1(py, control.progress())?;
                        }
                        Ok(())
                    });
                    if let Err(e) = polled {
                        control.stop();
                        raised = Some(e);
                    }
                }
                worker.join().expect("scan thread panicked")
            })
        });
        let summary = match (outcome, raised) {
            // Ctrl-C (or the callback's exception) is raised even when the
            // scan had finished by then; the tables are complete in `out`.
            (Ok(_) | Err(cntscope::Error::Interrupted { .. }), Some(e)) => return Err(e),
            (outcome, None) => outcome.map_err(lib_err)?,
            (Err(e), Some(_)) => return Err(lib_err(e)),
        };
        if let Some(callback) = &progress {
            callback.call1(py, control.progress())?;
        }
        let d = PyDict::new(py);
        d.set_item("analysed", summary.analysed)?;
        d.set_item("failed", summary.failed)?;
        d.set_item("kept", summary.kept)?;
        d.set_item("non_finite", summary.non_finite)?;
        d.set_item("notes", summary.notes)?;
        d.set_item("engine", engine.name())?;
        Ok(d)
    }

    /// The four tables of one network in memory: `tensors` as `(name,
    /// dtype, shape, buffer)`, each buffer C-contiguous and read in place.
    /// Returns `(tables, notes)`.
    fn analyze(
        &self,
        py: Python<'_>,
        name: String,
        tensors: Vec<(String, String, Vec<usize>, Bound<'_, PyAny>)>,
        metadata: BTreeMap<String, String>,
    ) -> PyResult<(Vec<Table>, Vec<String>)> {
        let mut held = Vec::with_capacity(tensors.len());
        for (tensor, dtype, shape, obj) in tensors {
            let buffer = PyUntypedBuffer::get(&obj)?;
            if !buffer.is_c_contiguous() {
                return Err(PyValueError::new_err(format!("tensor `{tensor}`: its buffer is not C-contiguous")));
            }
            held.push(MemoryTensor { name: tensor, dtype, shape, data: Box::new(Held(buffer)) });
        }
        let ck = Checkpoint::from_memory(&name, held, metadata).map_err(lib_err)?;
        let engine = self.engine()?;
        let opts = &self.scan.analysis;
        // The buffers are released (with the interpreter held) when `ck`
        // drops, after the work.
        let measured = py.detach(|| -> cntscope::Result<_> {
            let net = Network::build(&ck, &self.graph)?;
            let analysis = engine.analyze(&net, &ck, opts)?;
            Ok((network_columns(&name, &analysis, ck.metadata()), cli_main::notes(&net)))
        });
        let (columns, notes) = measured.map_err(lib_err)?;
        drop(ck);
        Ok((columns.into_iter().map(Table).collect(), notes))
    }

    /// Per-node strengths of one checkpoint file (as `cntscope nodes`):
    /// `(table, notes)`, the table's columns `node_layer`, `node`, `s_in`,
    /// `s_out`, `strength`.
    fn nodes(&self, py: Python<'_>, checkpoint: PathBuf) -> PyResult<(Table, Vec<String>)> {
        let engine = self.engine()?;
        let opts = AnalysisOptions { keep_values: true, ..self.scan.analysis };
        let m = py.detach(|| cntscope::scan::measure(&checkpoint, &self.graph, engine, &opts)).map_err(lib_err)?;
        Ok((tables::node_values(&m.analysis), cli_main::notes(&m.network)))
    }
}

impl Options {
    fn engine(&self) -> PyResult<&dyn Engine> {
        if let Some(e) = self.engine.get() {
            return Ok(e.as_ref());
        }
        let made = select_engine(self.device, self.adapter.as_deref(), self.scan.jobs).map_err(lib_err)?;
        Ok(self.engine.get_or_init(|| made).as_ref())
    }
}

/// A Python buffer's bytes, held (and released) with the buffer.
struct Held(PyUntypedBuffer);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        if self.0.len_bytes() == 0 {
            return &[];
        }
        // SAFETY: the buffer stays acquired (its exporter keeps the memory
        // alive and in place) while `Held` lives; it was checked to be
        // C-contiguous, so its `len_bytes` bytes are one run from `buf_ptr`.
        unsafe { std::slice::from_raw_parts(self.0.buf_ptr().cast::<u8>(), self.0.len_bytes()) }
    }
}

/// Tables of a scan directory (or any CSV the study commands write), as
/// typed columns: read and parsed on every core, the interpreter released.
#[pyfunction]
fn read_tables(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Vec<Table>> {
    let read = |path: &PathBuf| -> cntscope::Result<Table> {
        let bytes = std::fs::read(path).map_err(|error| cntscope::Error::Io { path: path.clone(), error })?;
        let columns = cntscope::output::read_table(&bytes)
            .map_err(|reason| cntscope::Error::Study { path: path.clone(), reason })?;
        Ok(Table(columns))
    };
    py.detach(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = paths.iter().map(|p| s.spawn(move || read(p))).collect();
            handles.into_iter().map(|h| h.join().expect("table reader panicked")).collect::<cntscope::Result<Vec<_>>>()
        })
    })
    .map_err(lib_err)
}

/// Refuses a directory that holds no finished scan (an unfinished,
/// interrupted or damaged one), as the study commands do.
#[pyfunction]
fn require_complete(py: Python<'_>, dir: PathBuf) -> PyResult<()> {
    py.detach(|| cntscope::manifest::Manifest::require_complete(&dir)).map(|_| ()).map_err(lib_err)
}

/// A table's CSV bytes (as `read_tables` reads them from a file) parsed
/// into typed columns, the interpreter released.
#[pyfunction]
fn parse_table(py: Python<'_>, csv: pyo3::pybacked::PyBackedBytes) -> PyResult<Table> {
    let columns = py.detach(|| cntscope::output::read_table(&csv));
    columns.map(Table).map_err(PyValueError::new_err)
}

/// Runs the command line on `args` (without the program name) as a study
/// function does: an error raises, the exit code is returned.
#[pyfunction]
fn run(py: Python<'_>, args: Vec<String>) -> PyResult<u8> {
    let argv = std::iter::once("cntscope".to_string()).chain(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| PyValueError::new_err(e.render().to_string()))?;
    py.detach(|| cli_main::run(cli)).map_err(to_py)
}

/// The `cntscope` command, as the binary: `argv` with the program name
/// first; returns the exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(|| cli_main::run_args(argv))
}

/// cntscope's native module (use the `cntscope` package).
#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{main, parse_table, read_tables, require_complete, run, CntscopeError, Options};
}
