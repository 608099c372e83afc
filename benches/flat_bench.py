#!/usr/bin/env python3
"""The flat-matrix zoo benchmark of BENCHMARKS.md: N networks of the Small
CNN Zoo's architecture (4970 f32 parameters each) as one zoo (weights.npy +
layout.csv + metrics.csv) and as N safetensors files of the same tensors;
`cntscope scan` of each (best of 5, fresh output directory each run)
against the read floor (`cat` of the bytes, page cache warm).

    python3 benches/flat_bench.py DIR [N] [BIN]
"""

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "fixtures" / "flat"))
from make_flat_zoo import SHAPES, save_safetensors  # noqa: E402

base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cntscope-flat")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
binary = sys.argv[3] if len(sys.argv) > 3 else "target/release/cntscope"
spec = str(HERE.parent / "examples" / "specs" / "small_cnn_zoo.toml")
zoo, files = base / "zoo", base / "files"
if not (zoo / "weights.npy").exists():
    zoo.mkdir(parents=True)
    files.mkdir(parents=True)
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.2, (n, 4970)).astype(np.float32)
    np.save(zoo / "weights.npy", m)
    layout, at = [], 0
    with open(zoo / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        for name, shape in SHAPES:
            size = int(np.prod(shape))
            w.writerow([name, at, at + size, size, str(shape)])
            layout.append((name, at, at + size, shape))
            at += size
    with open(zoo / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_accuracy", "step"])
        for i in range(n):
            w.writerow([f"{rng.random():.4f}", i % 9])
    for i in range(n):
        save_safetensors(files / f"net{i:05d}.safetensors", {nm: m[i, s:e].reshape(sh) for nm, s, e, sh in layout})


def best(cmd, runs=5):
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, str(HERE / "best.py"), "1", str(base)] + cmd, capture_output=True, text=True)
        times.append(float(out.stdout))
    return min(times)


subprocess.run(f"cat {zoo}/weights.npy {files}/*.safetensors > /dev/null", shell=True, check=True)
read_zoo = best(["sh", "-c", f"cat {zoo}/weights.npy > /dev/null"])
read_files = best(["sh", "-c", f"cat {files}/*.safetensors > /dev/null"])
scan_zoo = best([binary, "scan", str(zoo), "--spec", spec, "--device", "cpu", "-o", "OUT"])
scan_files = best([binary, "scan", str(files), "--spec", spec, "--device", "cpu", "-o", "OUT"])
print("| collection | read floor | cntscope scan | vs read floor |")
print("|---|---:|---:|---:|")
print(f"| flat zoo, {n} rows ({(zoo / 'weights.npy').stat().st_size >> 20} MB) | {read_zoo:.3f} s | {scan_zoo:.3f} s | {scan_zoo / read_zoo:.1f}x |")
print(f"| the same as {n} safetensors files | {read_files:.3f} s | {scan_files:.3f} s | {scan_files / read_files:.1f}x |")
print(f"\nflat rows against files: {scan_zoo / scan_files:.2f}x the time")
