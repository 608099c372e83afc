#!/usr/bin/env python3
"""numpy-style reference for BENCHMARKS.md: what a researcher's script does
for one dense layer (load the safetensors file, row and column sums, std of
the strengths, weight std). Same shapes as `benches/strengths.rs`.

    pip install numpy safetensors
    python3 benches/numpy_baseline.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def bench(fn, repeat=10):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    rng = np.random.default_rng(0)
    w = (rng.random((4096, 4096), dtype=np.float32) - 0.5).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dense.safetensors"
        save_file({"w": w}, str(path))

        def analyse():
            t = load_file(str(path))["w"]
            s_in = t.sum(axis=1, dtype=np.float64)
            s_out = t.sum(axis=0, dtype=np.float64)
            return s_in.std(), s_out.std(), t.std(dtype=np.float64)

        secs = bench(analyse)
        mb = w.nbytes / 1e6
        print(f"numpy dense 4096x4096 (load + sums + std): {secs * 1e3:.1f} ms, {mb / secs / 1e3:.2f} GB/s")


if __name__ == "__main__":
    main()
