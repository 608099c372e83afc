#!/usr/bin/env python3
"""The torch baseline of benches/pt_bench.sh: benches/numpy_scan.py's
computation on `.pt` files, loaded with `torch.load` (weights_only, as
torch 2.6+ defaults), summed in float64.

    python3 benches/torch_scan.py OUT.csv FILE_OR_DIR...
"""

import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from numpy_scan import natural, strengths  # noqa: E402


def main(out, paths):
    files = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.pt"), key=lambda f: natural(str(f))) if p.is_dir() else [p]
    torch.set_num_threads(2)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "node_layer", "strength_mean", "fluctuation"])
        for path in files:
            sd = {k: v.numpy() for k, v in torch.load(path, weights_only=True, map_location="cpu").items()}
            for k, s in enumerate(strengths(sd)):
                w.writerow([str(path), k, repr(float(s.mean())), repr(float(s.std()))])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
