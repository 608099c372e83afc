#!/usr/bin/env python3
"""The Python binding's benchmark of BENCHMARKS.md, in one process:

1. `cntscope.analyze(state_dict)` on the 64-24-16-10 MLP, calls per second
   (tables as columns, and with the `nodes` DataFrame built), against the
   same sums done the numpy way in Python (benches/numpy_scan.py's
   `strengths` and a std per node set) and against the command line's
   time per checkpoint on the 5000-file collection (`--jobs 1`, so one
   core, as one analyze call uses);
2. `cntscope.scan` of the 5000-file collection against the `cntscope scan`
   binary, best of 5 each.

    pip install .   (or maturin develop --release)
    python3 benches/make_collections.py /tmp/cntscope-bench
    python3 benches/python_bench.py /tmp/cntscope-bench target/release/cntscope
"""

import os

# NumPy's BLAS threads spin after numpy calls and take a core from whatever
# runs next (on 2 cores that halved the binding's measured speed); nothing
# here needs BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
import cntscope  # noqa: E402
from numpy_scan import strengths  # noqa: E402


def per_call(f, seconds=2.0):
    """Best of 5 rounds: microseconds per call."""
    f()
    n = max(1, int(0.05 / max(1e-7, timed(f, 1))))
    while timed(f, n) < seconds / 5:
        n *= 2
    return min(timed(f, n) for _ in range(5)) / n * 1e6


def timed(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return time.perf_counter() - t


def best_of(n, f):
    out = []
    for _ in range(n):
        d = tempfile.mkdtemp(dir=BASE)
        os.sync()
        t = time.perf_counter()
        f(d)
        out.append(time.perf_counter() - t)
        shutil.rmtree(d)
    return min(out)


def numpy_way(tensors):
    sets = strengths(tensors)
    return [(s.mean(), s.std()) for s in sets]


BASE = sys.argv[1] if len(sys.argv) > 1 else "/tmp/cntscope-bench"
BIN = sys.argv[2] if len(sys.argv) > 2 else "target/release/cntscope"
small = Path(BASE) / "small"
files = sorted(small.glob("*.safetensors"))
state = load_file(str(files[0]))

opts = cntscope._options({})
items = [cntscope._tensor(k, v) for k, v in state.items()]
native = per_call(lambda: opts.analyze("<memory>", items, {}))
a_bare = per_call(lambda: cntscope.analyze(state))
a_cols = per_call(lambda: cntscope.analyze(state).columns("nodes"))
a_frame = per_call(lambda: cntscope.analyze(state).nodes)
np_way = per_call(lambda: numpy_way(state))
cli1 = best_of(3, lambda d: subprocess.run([BIN, "scan", str(small), "--device", "cpu", "--jobs", "1", "-o", d],
                                           check=True, capture_output=True))
print("| what | per network | networks/s |")
print("|---|---:|---:|")
for what, us in [
    ("the Rust call itself (`_native.Options.analyze`: buffers in, four tables' columns out)", native),
    ("`analyze(state_dict)`", a_bare),
    ("`analyze(state_dict).columns(\"nodes\")` (NumPy arrays)", a_cols),
    ("`analyze(state_dict).nodes` (DataFrame built)", a_frame),
    ("numpy in Python: strengths + mean/std per node set (no histograms, no links table)", np_way),
    (f"`cntscope scan --jobs 1`, per checkpoint of {len(files)} (file read, journal, tables)", cli1 / len(files) * 1e6),
]:
    print(f"| {what} | {us:.1f} us | {1e6 / us:,.0f} |")

cli = best_of(5, lambda d: subprocess.run([BIN, "scan", str(small), "--device", "cpu", "-o", d], check=True,
                                          capture_output=True))
py_scan = best_of(5, lambda d: cntscope.scan(small, out=d, device="cpu", progress=False))
py_frames = best_of(5, lambda d: cntscope.scan(small, out=d, device="cpu", progress=False).nodes)
print()
print("| scan of the 5000 small files, all cores | best of 5 |")
print("|---|---:|")
print(f"| `cntscope scan` (binary) | {cli:.3f} s |")
print(f"| `cntscope.scan(...)` (tables read into columns) | {py_scan:.3f} s ({py_scan / cli:.2f}x) |")
print(f"| `cntscope.scan(...).nodes` (DataFrame built) | {py_frames:.3f} s ({py_frames / cli:.2f}x) |")
