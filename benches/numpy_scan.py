#!/usr/bin/env python3
"""The numpy baseline of the scan benchmark: what a researcher's script does
for each checkpoint of a collection of dense networks (torch layout): load
the file, take the `.weight` / `.bias` pairs in natural order, node
strengths (column sums, row sums + bias), and each node set's fluctuation
(population std) and mean. Writes `checkpoint,node_layer,fluctuation` CSV
so the benchmark can compare the numbers with cntscope's.

    python3 benches/numpy_scan.py OUT.csv FILE_OR_DIR...
"""

import csv
import re
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def natural(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def strengths(tensors):
    names = sorted((n for n in tensors if n.endswith(".weight")), key=natural)
    ws = [tensors[n].astype(np.float64) for n in names]
    bs = [tensors.get(n[: -len("weight")] + "bias") for n in names]
    sets = [np.zeros(ws[0].shape[1])] + [np.zeros(w.shape[0]) for w in ws]
    for k, (w, b) in enumerate(zip(ws, bs)):
        sets[k] += w.sum(axis=0)
        sets[k + 1] += w.sum(axis=1) + (b if b is not None else 0.0)
    return sets


def main(out, paths):
    files = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.safetensors"), key=lambda f: natural(str(f))) if p.is_dir() else [p]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "node_layer", "strength_mean", "fluctuation"])
        for path in files:
            for k, s in enumerate(strengths(load_file(str(path)))):
                w.writerow([str(path), k, repr(float(s.mean())), repr(float(s.std()))])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
