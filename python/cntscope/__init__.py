"""cntscope: neural network checkpoints as Complex Network Theory graphs.

Link weights, node strength and layer fluctuation (ICTAI 2021) for one
network in memory (:func:`analyze`), one checkpoint (:func:`nodes`) or whole
collections of checkpoints (:func:`scan`), and the study commands
(:func:`report`, :func:`ensemble`, :func:`dynamics`), as pandas DataFrames.

This package is a thin binding over the Rust library, which computes every
number: the tables are the command line's CSV tables, column for column.
Keyword options are the ``cntscope scan`` flags (``bins=20`` is ``--bins
20``, ``bias=False`` is ``--no-bias``, ``input=(1, 8, 8)`` is ``--input
1,8,8``) and are checked by the same parser.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import CntscopeError

__all__ = [
    "analyze",
    "nodes",
    "scan",
    "read_scan",
    "report",
    "ensemble",
    "dynamics",
    "Tables",
    "CntscopeError",
    "CntscopeNote",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The four tables of a scan, in the order the library hands them over.
TABLE_NAMES = ("nodes", "links", "histograms", "errors")


class CntscopeNote(UserWarning):
    """What the tool assumed about a network (conv geometry, orientations,
    a network read layer by layer): shown once per message, as the command
    line prints it on standard error."""


class Tables:
    """The tables of a scan or of :func:`analyze`: ``nodes``, ``links``,
    ``histograms`` and ``errors`` as pandas DataFrames, with the CSV
    contracts' columns and dtypes. A table is parsed (and its DataFrame
    built) when first asked for, so a scan costs what the command line's
    does and a table nobody reads costs nothing.

    ``columns(name)`` gives one table as a dict of NumPy arrays without
    building a DataFrame (the cheap path inside a training loop).
    """

    __slots__ = ("_raw", "_csv", "_frames", "notes", "summary")

    def __init__(self, raw: Optional[Sequence[list]] = None, notes: Sequence[str] = (),
                 summary: Optional[dict] = None, csv: Optional[Sequence[bytes]] = None):
        self._raw = dict(zip(TABLE_NAMES, raw)) if raw is not None else {}
        self._csv = dict(zip(TABLE_NAMES, csv)) if csv is not None else {}
        self._frames: dict = {}
        #: What the graph assumed (also issued as :class:`CntscopeNote`).
        self.notes = list(notes)
        #: For a scan: counts of analysed, failed and kept checkpoints.
        self.summary = summary or {}

    def _table(self, name: str) -> list:
        if name not in self._raw:
            if name not in self._csv:
                raise KeyError(f"no table {name!r}: the tables are {', '.join(TABLE_NAMES)}")
            self._raw[name] = _native.parse_table(self._csv.pop(name))
        return self._raw[name]

    def columns(self, name: str) -> "dict[str, np.ndarray]":
        """Table ``name`` as ``{column: array}`` (numbers as float64, int64
        or bool arrays, text as object arrays with NaN for empty cells)."""
        return _columns(self._table(name))

    def frame(self, name: str):
        """Table ``name`` as a pandas DataFrame."""
        if name not in self._frames:
            import pandas as pd

            self._frames[name] = pd.DataFrame(self.columns(name))
        return self._frames[name]

    @property
    def nodes(self):
        """One row per checkpoint and node set (``nodes.csv``)."""
        return self.frame("nodes")

    @property
    def links(self):
        """One row per checkpoint and layer (``links.csv``)."""
        return self.frame("links")

    @property
    def histograms(self):
        """One row per histogram (``histograms.csv``)."""
        return self.frame("histograms")

    @property
    def errors(self):
        """One row per checkpoint that failed (``errors.csv``)."""
        return self.frame("errors")

    def __iter__(self):
        return iter(self.frame(n) for n in TABLE_NAMES)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.summary.items() if k in ("analysed", "failed"))
        return f"Tables({', '.join(TABLE_NAMES)}{'; ' + counts if counts else ''})"


def _columns(raw: list) -> "dict[str, np.ndarray]":
    out = {}
    for name, kind, values in raw:
        if kind == "str":
            arr = np.empty(len(values), dtype=object)
            arr[:] = [np.nan if v is None else v for v in values]
            out[name] = arr
        else:
            out[name] = np.frombuffer(values, dtype={"f8": "<f8", "i8": "<i8", "bool": "?"}[kind])
    return out


def _flags(options: Mapping[str, Any]) -> "list[str]":
    """Keyword options as ``cntscope scan`` flags."""
    args: list = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if key == "bias":
            if not value:
                args.append("--no-bias")
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        elif key == "shard":
            i, n = value if not isinstance(value, str) else value.split("/")
            args += [flag, f"{i}/{n}"]
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return args


_OPTIONS: dict = {}


def _options(options: Mapping[str, Any]) -> "_native.Options":
    """The parsed options, made once per distinct set (so a training loop
    calling :func:`analyze` every epoch parses them, and makes the engine,
    once). Files named by an option (a spec, a metadata table) are part of
    the key by their size and modification time, so an edited spec is read
    again."""
    flags = _flags(options)
    files = []
    for key in ("spec", "metadata"):
        if options.get(key) is not None:
            try:
                st = os.stat(options[key])
                files.append((st.st_size, st.st_mtime_ns))
            except OSError:
                files.append(None)  # the parser says what is wrong
    key = (tuple(flags), tuple(files))
    found = _OPTIONS.get(key)
    if found is None:
        if len(_OPTIONS) > 64:
            _OPTIONS.clear()
        found = _OPTIONS[key] = _native.Options(flags)
    return found


def _note(notes: Iterable[str], stacklevel: int = 3) -> None:
    for note in notes:
        warnings.warn(note, CntscopeNote, stacklevel=stacklevel)


# Dtypes as safetensors names them, by NumPy dtype (kind, itemsize).
_DTYPES = {
    ("f", 2): "F16", ("f", 4): "F32", ("f", 8): "F64",
    ("i", 1): "I8", ("i", 2): "I16", ("i", 4): "I32", ("i", 8): "I64",
    ("u", 1): "U8", ("u", 2): "U16", ("u", 4): "U32", ("u", 8): "U64",
    ("b", 1): "BOOL",
}


# The same, by NumPy dtype, for the fast path: native little-endian arrays.
_BY_DTYPE = {np.dtype(f"<{k}{n}"): v for (k, n), v in _DTYPES.items() if k != "b"}
_BY_DTYPE[np.dtype(bool)] = "BOOL"


def _tensor(name: str, value: Any):
    """``(name, dtype, shape, buffer)`` of an array-like, read in place when
    it is a C-contiguous little-endian array (NumPy, a CPU torch tensor
    through ``.numpy()``, anything else through ``__array__`` or DLPack;
    bfloat16 through its 16-bit pattern)."""
    if type(value) is np.ndarray and value.flags.c_contiguous:
        dtype = _BY_DTYPE.get(value.dtype)
        if dtype is not None:
            # (A 0-d array exports no shape through the buffer protocol.)
            return (name, dtype, value.shape, value if value.ndim else value.reshape(1))
    dtype = None
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        # A torch tensor (torch is not imported here): as NumPy, in place.
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value, dtype = value.view(sys.modules["torch"].int16), "BF16"
        value = value.numpy()
    if not hasattr(value, "__array__") and hasattr(value, "__dlpack__"):
        value = np.from_dlpack(value)  # in place where the producer allows
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":  # ml_dtypes / JAX
        arr, dtype = arr.view(np.uint16), "BF16"
    if dtype is None:
        dtype = _DTYPES.get((arr.dtype.kind, arr.dtype.itemsize))
        if dtype is None:
            raise TypeError(
                f"tensor `{name}`: dtype {arr.dtype} is not a number type a checkpoint holds "
                "(float16/32/64, bfloat16, integers, bool)"
            )
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)  # a copy only when it is not C-ordered
    return (name, dtype, arr.shape, arr if arr.ndim else arr.reshape(1))


def analyze(
    tensors: Mapping[str, Any],
    *,
    name: str = "<memory>",
    metadata: Optional[Mapping[str, Any]] = None,
    spec: Optional[PathLike] = None,
    input: Union[int, Sequence[int], None] = None,
    layout: Optional[str] = None,
    bias: bool = True,
    bn: Optional[str] = None,
    key: Optional[str] = None,
    device: str = "auto",
    bins: int = 50,
    **options: Any,
) -> Tables:
    """Measures a network held in memory: ``tensors`` maps names to arrays
    (NumPy arrays, torch tensors, anything NumPy can view), e.g.
    ``model.state_dict()``. Nothing is written to disk; contiguous arrays
    are read in place.

    ``name`` fills the ``checkpoint`` column and ``metadata`` (say
    ``{"epoch": 3}``) becomes columns as a file's metadata would.
    ``options`` are the scan flags (``spec=``, ``input=``, ``layout=``,
    ``bias=``, ``bn=``, ``bins=``, ``device=``, ...). Raises
    :class:`CntscopeError` when the tensors do not form the network.
    """
    items = [_tensor(k, v) for k, v in tensors.items()]
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    options = dict(spec=spec, input=input, layout=layout, bias=bias, bn=bn, key=key, device=device, bins=bins,
                   **options)
    raw, notes = _options(options).analyze(name, items, meta)
    _note(notes)
    return Tables(raw, notes)


def nodes(
    checkpoint: PathLike,
    *,
    spec: Optional[PathLike] = None,
    input: Union[int, Sequence[int], None] = None,
    layout: Optional[str] = None,
    bias: bool = True,
    bn: Optional[str] = None,
    key: Optional[str] = None,
    device: str = "auto",
    **options: Any,
):
    """Per-node strengths of one checkpoint (``cntscope nodes``): a
    DataFrame with ``node_layer``, ``node``, ``s_in``, ``s_out`` and
    ``strength``. Options as for :func:`scan`."""
    import pandas as pd

    options = dict(spec=spec, input=input, layout=layout, bias=bias, bn=bn, key=key, device=device, **options)
    raw, notes = _options(options).nodes(os.fspath(checkpoint))
    _note(notes)
    return pd.DataFrame(_columns(raw))


def _progress(progress) -> "tuple[Optional[Callable[[int, int], None]], bool]":
    """The progress callback, and whether the command line's own bar is
    shown instead: a callable as given; otherwise (None or True) a tqdm bar
    where a person can see one (a notebook, or a terminal), the command
    line's bar on a terminal without tqdm, nothing where nobody looks."""
    if callable(progress):
        return progress, False
    if progress is False:
        return None, False
    in_notebook = "ipykernel" in sys.modules
    terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not (in_notebook or terminal):
        return None, False
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, terminal
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="checkpoint")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update, False


def scan(
    paths: Union[PathLike, Sequence[PathLike]],
    *,
    out: Optional[PathLike] = None,
    spec: Optional[PathLike] = None,
    input: Union[int, Sequence[int], None] = None,
    layout: Optional[str] = None,
    bias: bool = True,
    bn: Optional[str] = None,
    key: Optional[str] = None,
    device: str = "auto",
    jobs: Optional[int] = None,
    bins: int = 50,
    metadata: Optional[PathLike] = None,
    name_pattern: Optional[str] = None,
    strict: bool = False,
    resume: bool = False,
    shard: Optional[Sequence[int]] = None,
    progress: Union[bool, Callable[[int, int], None], None] = None,
    **options: Any,
) -> Tables:
    """Scans checkpoints (files, directories, globs, in every format
    cntscope reads) as ``cntscope scan`` does, and returns the four tables.

    With ``out``, the scan directory is kept there (``resume=True`` and
    ``cntscope merge`` then apply); without, it is a temporary directory.
    A checkpoint that fails is a row of ``errors``, not an exception.
    Ctrl-C stops the scan promptly with ``KeyboardInterrupt`` (nothing
    half-written; with ``out``, ``resume=True`` measures only the rest).
    ``progress``: True for a tqdm bar, a callable ``(done, total)``, or
    None for a bar only where a person can see it.

    The options are the ``cntscope scan`` flags: ``spec`` (a spec file),
    ``input`` (one sample's shape, ``(1, 28, 28)``), ``layout``
    (``"torch"``/``"keras"``), ``bias=False`` (``--no-bias``), ``bn``
    (``"fold"``/``"layer"``/``"ignore"``), ``key`` (the entry of a wrapped
    checkpoint), ``device`` (``"cpu"``/``"gpu"``/``"auto"``), ``jobs``,
    ``bins``, ``metadata`` (a CSV keyed by path), ``name_pattern``,
    ``strict``, ``resume``, ``shard=(i, n)``; any other flag of the command
    line by its name (``adapter="NVIDIA"``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    callback, bar = _progress(progress)
    options = dict(spec=spec, input=input, layout=layout, bias=bias, bn=bn, key=key, device=device, jobs=jobs,
                   bins=bins, metadata=metadata, name_pattern=name_pattern, strict=strict, resume=resume,
                   shard=shard, **options)
    opts = _options(options)
    if out is not None:
        return _scan_into(opts, paths, os.fspath(out), callback, bar)
    with tempfile.TemporaryDirectory(prefix="cntscope-") as tmp:
        return _scan_into(opts, paths, tmp, callback, bar)


def _scan_into(opts, paths, out, callback, bar) -> Tables:
    summary = opts.scan(paths, out, callback, bar)
    _note(summary["notes"])
    return Tables(notes=summary["notes"], summary=summary, csv=_read_csv(out))


def _read_csv(directory: str) -> "list[bytes]":
    csv = []
    for name in TABLE_NAMES:
        with open(os.path.join(directory, f"{name}.csv"), "rb") as f:
            csv.append(f.read())
    return csv


def read_scan(directory: PathLike) -> Tables:
    """The tables of a finished scan directory (``cntscope scan -o DIR``);
    an unfinished or damaged one raises :class:`CntscopeError`."""
    directory = os.fspath(directory)
    _native.require_complete(directory)
    return Tables(csv=_read_csv(directory))


def _study(command: str, paths, out, study: Mapping[str, Any], options: Mapping[str, Any]) -> "dict[str, Any]":
    """Scans ``paths`` into ``out/scan`` (stoppable, as :func:`scan`), then
    runs the study command on it; returns every CSV table it wrote, by
    name, as DataFrames, ``report`` the path of report.html and ``notes``
    what the study assumed or could not do (each also warned as a
    :class:`CntscopeNote`)."""
    import pandas as pd

    out = os.fspath(out)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    given_scan = len(paths) == 1 and (Path(paths[0]) / "scan.manifest").is_file()
    scan_dir = paths[0] if given_scan else os.path.join(out, "scan")
    if not given_scan:
        scan(paths, out=scan_dir, **options)
    # The study reads the graph again (for one checkpoint's divergence
    # matrix): the same options, but for those of a scan alone.
    graph = {k: v for k, v in options.items() if k not in ("resume", "shard", "progress")}
    args = [command, scan_dir, "--output", out] + _flags(study) + _flags(graph)
    code = _native.run(args)
    # What the study assumed or could not do (also in report.html).
    notes_file = Path(out) / "notes.txt"
    notes = notes_file.read_text().splitlines() if notes_file.is_file() else []
    _note(notes, stacklevel=4)
    csvs = sorted(Path(out).glob("*.csv"))
    tables = {p.stem: pd.DataFrame(_columns(t)) for p, t in zip(csvs, _native.read_tables([str(p) for p in csvs]))}
    tables["report"] = os.path.join(out, "report.html")
    tables["exit_code"] = code
    tables["notes"] = notes
    return tables


def report(paths, out: PathLike, *, by=None, width=None, outliers=None, per_group=None, within=None,
           run_by=None, order_by=None, checkpoint=None, accuracy=None, **options: Any) -> "dict[str, Any]":
    """``cntscope report``: ensemble and individual analysis of ``paths``
    (checkpoints, or one scan directory) into ``out``; returns the tables it
    wrote (``separation``, ``ensemble``, ``dynamics``, ...) as DataFrames
    and ``report``, the path of report.html."""
    study = dict(by=by, width=width, outliers=outliers, per_group=per_group, within=within, run_by=run_by,
                 order_by=order_by, checkpoint=checkpoint, accuracy=accuracy)
    return _study("report", paths, out, study, options)


def ensemble(paths, out: PathLike, *, by=None, width=None, outliers=None, per_group=None, within=None,
             accuracy=None, **options: Any) -> "dict[str, Any]":
    """``cntscope ensemble``: networks grouped by accuracy (``by``), their
    measures compared across groups; returns the tables it wrote."""
    study = dict(by=by, width=width, outliers=outliers, per_group=per_group, within=within, accuracy=accuracy)
    return _study("ensemble", paths, out, study, options)


def dynamics(paths, out: PathLike, *, run_by=None, order_by=None, checkpoint=None, accuracy=None,
             **options: Any) -> "dict[str, Any]":
    """``cntscope dynamics``: each run's measures along its training;
    returns the tables it wrote."""
    study = dict(run_by=run_by, order_by=order_by, checkpoint=checkpoint, accuracy=accuracy)
    return _study("dynamics", paths, out, study, options)
