"""The Python package against the command line it binds: the same tables,
the same errors, in memory and from files. Run with `pytest` after
`pip install .` (the README's test command does both)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cntscope

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "examples" / "zoo"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The package's own `cntscope` command (the Rust binary's main)."""
    run = subprocess.run([sys.executable, "-m", "cntscope._cli", *args], capture_output=True, text=True)
    if check and run.returncode not in (0, 1):
        raise AssertionError(f"cntscope {' '.join(args)} exited {run.returncode}: {run.stderr}")
    return run


def read_csv(path: Path) -> pd.DataFrame:
    # Before pandas 3 the default float parser was not correctly rounded.
    exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
    return pd.read_csv(path, **exact)


def assert_same_table(ours: pd.DataFrame, csv: pd.DataFrame, what: str) -> None:
    assert list(ours.columns) == list(csv.columns), what
    assert len(ours) == len(csv), what
    if len(csv) == 0:
        return
    for column in csv.columns:
        a, b = ours[column], csv[column]
        assert a.dtype == b.dtype, f"{what}.{column}: {a.dtype} vs {b.dtype}"
        if a.dtype.kind == "f":
            # Bit for bit, NaN where NaN.
            same = (a.to_numpy() == b.to_numpy()) | (np.isnan(a.to_numpy()) & np.isnan(b.to_numpy()))
            bad = np.flatnonzero(~same)
            assert bad.size == 0, f"{what}.{column} row {bad[:1]}: {a.iloc[bad[0]]!r} vs {b.iloc[bad[0]]!r}"
        else:
            pd.testing.assert_series_equal(a, b, check_names=False, obj=f"{what}.{column}")


# ---------------------------------------------------------------- scan


@pytest.mark.parametrize("zoo, flags", [("mlp", []), ("cnn", ["--spec", str(ZOO / "cnn.toml")])])
def test_scan_frames_equal_the_cli_csvs(tmp_path, zoo, flags):
    out = tmp_path / "cli"
    cli("scan", str(ZOO / zoo), "-o", str(out), *flags)
    options = {"spec": ZOO / "cnn.toml"} if flags else {}
    tables = cntscope.scan(ZOO / zoo, **options)
    assert tables.summary["analysed"] == len(list((ZOO / zoo).glob("*.safetensors")))
    for name in cntscope.TABLE_NAMES:
        assert_same_table(tables.frame(name), read_csv(out / f"{name}.csv"), name)
    # Numbers are numbers, metadata as the CSV reads it.
    nodes = tables.nodes
    assert nodes["strength_mean"].dtype == np.float64 and nodes["nodes"].dtype == np.int64
    assert nodes["accuracy"].dtype == np.float64 and pd.api.types.is_string_dtype(nodes["arch"])


def test_scan_keeps_its_directory_for_resume_and_merge(tmp_path):
    out = tmp_path / "scan"
    first = cntscope.scan(ZOO / "mlp", out=out)
    assert (out / "scan.manifest").is_file() and (out / "nodes.csv").is_file()
    again = cntscope.scan(ZOO / "mlp", out=out, resume=True)
    assert again.summary["kept"] == first.summary["analysed"]
    assert_same_table(again.nodes, first.nodes, "nodes")
    assert_same_table(cntscope.read_scan(out).links, first.links, "links")


def test_a_malformed_file_is_a_row_of_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes((ZOO / "mlp" / "mlp-he-s0-e01.safetensors").read_bytes())
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    tables = cntscope.scan(tmp_path)
    assert tables.summary == {**tables.summary, "analysed": 1, "failed": 1}
    errors = tables.errors
    assert list(errors["kind"]) == ["malformed"]
    assert errors["checkpoint"].iloc[0].endswith("bad.safetensors")
    assert set(tables.nodes["checkpoint"]) == {str(good)}


def test_scan_options_are_the_cli_flags(tmp_path):
    with pytest.raises(ValueError, match="bins"):
        cntscope.scan(ZOO / "mlp", bins=0)
    with pytest.raises(ValueError, match="no_such_flag|no-such-flag"):
        cntscope.scan(ZOO / "mlp", no_such_flag=3)
    h = cntscope.scan(ZOO / "mlp", bins=7).histograms
    assert set(h["bins"]) == {7}


# ---------------------------------------------------------------- analyze


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def save_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """A safetensors file as the format defines it: `tensors` maps names to
    (dtype, array whose bytes are stored)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, (dtype, shape, arr) in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def mlp(seed: int = 0, sizes=(64, 24, 16, 10)) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        out[f"net.{2 * i}.weight"] = rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32)
        out[f"net.{2 * i}.bias"] = rng.normal(0, 0.1, b).astype(np.float32)
    return out


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_analyze_equals_scan_of_the_same_tensors(tmp_path, dtype):
    weights = mlp(1)
    stored, arrays = {}, {}
    for name, w in weights.items():
        if dtype == "F32":
            arr = w
        elif dtype == "F64":
            arr = w.astype(np.float64)
        elif dtype == "F16":
            arr = w.astype(np.float16)
        else:
            arr = bf16_bits(w)
        stored[name] = (dtype, w.shape, arr)
        arrays[name] = arr
    path = tmp_path / f"net-{dtype}.safetensors"
    save_safetensors(path, stored, {"epoch": "3", "arch": "mlp"})
    from_file = cntscope.scan(path)

    if dtype == "BF16":
        # bfloat16 in memory: ml_dtypes' dtype, as JAX and torch-to-numpy hand it over.
        ml_dtypes = pytest.importorskip("ml_dtypes")
        arrays = {k: v.view(ml_dtypes.bfloat16) for k, v in arrays.items()}
    in_memory = cntscope.analyze(arrays, name=str(path), metadata={"epoch": 3, "arch": "mlp"})
    assert len(in_memory.nodes) == 4
    for name in cntscope.TABLE_NAMES:
        assert_same_table(in_memory.frame(name), from_file.frame(name), name)


def test_analyze_reads_any_memory_order_and_integer_buffers():
    weights = mlp(2)
    base = cntscope.analyze(weights)
    fortran = {k: np.asfortranarray(v) for k, v in weights.items()}
    assert not fortran["net.0.weight"].flags.c_contiguous
    strided = {k: np.repeat(v, 2, axis=-1)[..., ::2] for k, v in weights.items()}
    with_buffers = {**weights, "steps": np.array(10, dtype=np.int64), "none": np.zeros((0, 3), np.float32)}
    class OnlyDLPack:
        """An array known only by DLPack (as some GPU libraries hand them)."""

        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    dlpack = {k: OnlyDLPack(v) for k, v in weights.items()}
    for other in (fortran, strided, with_buffers, dlpack):
        assert_same_table(cntscope.analyze(other).nodes, base.nodes, "nodes")
    cols = base.columns("nodes")
    assert cols["strength_mean"].dtype == np.float64 and len(cols["node_layer"]) == 4


def test_analyze_metadata_and_name_fill_their_columns():
    t = cntscope.analyze(mlp(3), name="epoch-7", metadata={"epoch": 7, "run": "a"})
    assert set(t.nodes["checkpoint"]) == {"epoch-7"}
    assert list(t.nodes["epoch"]) == [7] * 4 and list(t.links["run"]) == ["a"] * 3


def test_text_cells_survive_quoting(tmp_path):
    odd = 'a,b "c"\nd\r\n'
    t = cntscope.analyze(mlp(3), name='net,"1"', metadata={"note": odd, "empty": ""})
    assert set(t.nodes["note"]) == {odd} and set(t.links["checkpoint"]) == {'net,"1"'}
    assert t.nodes["empty"].isna().all()


def test_analyze_refuses_bad_input_clearly(tmp_path):
    weights = mlp(4)
    with pytest.raises(TypeError, match="`net.0.weight`: dtype object"):
        cntscope.analyze({**weights, "net.0.weight": np.array([object()] * 4)})
    with pytest.raises(TypeError, match="complex"):
        cntscope.analyze({**weights, "net.0.weight": weights["net.0.weight"].astype(np.complex64)})
    spec = tmp_path / "spec.toml"
    spec.write_text('[[layers]]\nweight = "net.0.weight"\n[[layers]]\nweight = "net.9.weight"\n')
    with pytest.raises(cntscope.CntscopeError) as absent:
        cntscope.analyze(weights, spec=spec)
    assert absent.value.kind == "graph" and "`net.9.weight` not found" in str(absent.value)
    spec.write_text("".join(f'[[layers]]\nweight = "net.{i}.weight"\nbias = "net.{i}.bias"\n' for i in (0, 2, 4)))
    without_bias = {k: v for k, v in weights.items() if k != "net.2.bias"}
    with pytest.raises(cntscope.CntscopeError) as missing:
        cntscope.analyze(without_bias, spec=spec)
    assert missing.value.kind == "missing_tensor" and missing.value.tensor == "net.2.bias"
    broken = {**weights, "net.2.weight": np.zeros((16, 23), np.float32)}
    with pytest.raises(cntscope.CntscopeError) as graph:
        cntscope.analyze(broken, name="broken", spec=spec)
    assert graph.value.kind == "graph" and graph.value.path == "broken" and "`net.2` (line 4): takes 23 inputs but `net.0` gives 24" in str(graph.value)
    # Without a spec, such a network is read layer by layer, and says so.
    with pytest.warns(cntscope.CntscopeNote, match="layer by layer"):
        assert set(cntscope.analyze(broken).nodes["chain"]) == {False}
    with pytest.raises(cntscope.CntscopeError) as dtype:
        cntscope.analyze({**weights, "net.0.weight": weights["net.0.weight"].astype(np.int32)})
    assert dtype.value.kind == "unsupported_dtype"


# ---------------------------------------------------------------- nodes, studies, command


def test_nodes_equal_the_cli(tmp_path):
    ck = ZOO / "mlp" / "mlp-he-s0-e08.safetensors"
    out = tmp_path / "nodes.csv"
    cli("nodes", str(ck), "-o", str(out))
    assert_same_table(cntscope.nodes(ck), read_csv(out), "nodes")


def test_report_returns_its_tables(tmp_path):
    done = cntscope.report(ZOO / "mlp", tmp_path / "r")
    assert Path(done["report"]).is_file() and done["exit_code"] == 0
    assert "separation" in done and len(done["separation"]) > 0
    assert_same_table(done["separation"], read_csv(tmp_path / "r" / "separation.csv"), "separation")


def test_a_studys_notes_are_warnings_and_returned(tmp_path):
    # Two runs as Lightning wrote them: no `run` or `accuracy` column.
    logs = ROOT / "tests" / "fixtures" / "pt" / "lightning_logs"
    with pytest.warns(cntscope.CntscopeNote, match="runs are the checkpoints' folders"):
        done = cntscope.dynamics(logs, tmp_path / "d")
    assert any("`val_acc` is the accuracy" in n for n in done["notes"]), done["notes"]
    assert sorted(done["dynamics"]["run"].unique()) == ["version_0", "version_1"]
    assert (tmp_path / "d" / "notes.txt").read_text().splitlines() == done["notes"]


def test_the_package_command_is_the_cli():
    run = cli("--version")
    assert run.returncode == 0 and run.stdout.startswith("cntscope ")
    bad = cli("scan", check=False)
    assert bad.returncode == 2 and "--output" in bad.stderr


# ---------------------------------------------------------------- Ctrl-C


def many_checkpoints(tmp_path: Path, n: int) -> Path:
    """`n` checkpoints (hard links of one small file): a scan long enough
    to interrupt."""
    d = tmp_path / "many"
    d.mkdir()
    src = ZOO / "mlp" / "mlp-he-s0-e01.safetensors"
    first = d / "c00000.safetensors"
    first.write_bytes(src.read_bytes())
    for i in range(1, n):
        os.link(first, d / f"c{i:05d}.safetensors")
    return d


def test_ctrl_c_stops_a_scan_with_nothing_half_written(tmp_path):
    zoo = many_checkpoints(tmp_path, 20000)
    out = tmp_path / "scan"
    calls = []

    def interrupt(done, total):
        # A real SIGINT, as Ctrl-C in a terminal or a notebook's interrupt
        # sends, once some checkpoints are measured (on a busy machine the
        # first call can come before any is).
        calls.append(done)
        if done > 0 and len([c for c in calls if c > 0]) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        cntscope.scan(zoo, out=out, jobs=1, progress=interrupt)
    assert not (out / "nodes.csv").exists(), "no table published"
    with pytest.raises(cntscope.CntscopeError, match="resume") as unfinished:
        cntscope.read_scan(out)
    assert unfinished.value.kind == "scan_dir"
    manifest = json.loads((out / "scan.manifest").read_text())
    assert manifest["complete"] is False
    assert calls[-1] < 20000
    rest = cntscope.scan(zoo, out=out, jobs=1, resume=True, progress=False)
    assert rest.summary["kept"] > 0 and rest.summary["kept"] + rest.summary["analysed"] >= 20000
    assert len(rest.nodes) == 4 * 20000 and rest.nodes["checkpoint"].is_monotonic_increasing


def test_the_pytorch_tracer_ships_in_the_package():
    # Found without being imported: it needs torch, which CI does not have.
    import importlib.util

    assert importlib.util.find_spec("cntscope.torch_to_spec") is not None


# ---------------------------------------------------------------- torch (where installed)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_torch_state_dicts_are_read_as_their_arrays(dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    model = model.to(getattr(torch, dtype))
    # state_dict() (detached) and named_parameters() (requiring grad) alike.
    sd = model.state_dict()
    params = dict(model.named_parameters())
    bits = {k: v.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else v.numpy() for k, v in sd.items()}
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        bits = {k: v.view(ml_dtypes.bfloat16) for k, v in bits.items()}
    want = cntscope.analyze(bits).nodes
    assert_same_table(cntscope.analyze(sd).nodes, want, "state_dict")
    assert_same_table(cntscope.analyze(params).nodes, want, "parameters")
    # A transposed (non-contiguous) view is copied, not misread.
    t = {k: (v.t().contiguous().t() if v.ndim == 2 else v) for k, v in sd.items()}
    assert_same_table(cntscope.analyze(t).nodes, want, "strided")


def test_progress_goes_to_tqdm_where_a_person_looks(monkeypatch):
    import types

    bars = []

    class FakeBar:
        def __init__(self, total, unit):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = FakeBar
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)

    class Terminal:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Terminal())
    cntscope.scan(ZOO / "mlp")
    assert len(bars) == 1 and bars[0].total == 96 and bars[0].n == 96 and bars[0].closed
    # Nobody looking: no bar.
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    cntscope.scan(ZOO / "mlp")
    assert len(bars) == 1


def test_orbax_folders_are_read_by_the_same_library(tmp_path):
    # Orbax's own folders (tests/fixtures/flax/orbax, written by Orbax):
    # each one checkpoint, its arrays decompressed from the OCDBT database,
    # measured as their safetensors twins are.
    fixtures = ROOT / "tests" / "fixtures" / "flax"
    orbax = cntscope.scan(fixtures / "orbax" / "wide")
    twin = cntscope.scan(fixtures / "twin" / "wide.safetensors")
    cols = ["node_layer", "nodes", "strength_mean", "fluctuation"]
    assert orbax.nodes[cols].equals(twin.nodes[cols])
    assert orbax.errors.empty


def test_tensorflow_and_compressed_numpy_files_are_read_by_the_same_library():
    # TensorFlow's own checkpoint (its index named by the prefix, as
    # TensorFlow names it), np.savez_compressed's archive, a SavedModel and
    # a distributed checkpoint, each measured as its twin is.
    cols = ["node_layer", "nodes", "strength_mean", "fluctuation"]
    fixtures = ROOT / "tests" / "fixtures"
    for path, twin in [
        (fixtures / "tf" / "good" / "run" / "cp-0002.ckpt", fixtures / "tf" / "twin" / "cp-0002.safetensors"),
        (fixtures / "numpy" / "good" / "compressed.npz", fixtures / "numpy" / "twin" / "compressed.safetensors"),
        # A Keras 2 SavedModel folder: its graph from keras_metadata.pb,
        # as the same model's .h5 gives it from its config.
        (fixtures / "tf" / "keras_saved" / "model", fixtures / "tf" / "keras_saved" / "model.h5"),
        # A PyTorch distributed checkpoint sharded over two ranks.
        (fixtures / "dcp" / "sharded", fixtures / "dcp" / "twin.safetensors"),
    ]:
        got, want = cntscope.scan(path), cntscope.scan(twin)
        assert got.errors.empty, got.errors
        assert len(got.nodes) > 0 and got.nodes[cols].equals(want.nodes[cols])
