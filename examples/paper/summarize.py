#!/usr/bin/env python3
"""The replication's numbers, from `cntscope ensemble ... --within init,size`:
for each setting, the best feature of each kind (link weights, node
strength, layer fluctuation) by |Spearman's rho| against accuracy, with its
AUROC, as a Markdown table; and an independent check of the tool's rho for
every feature shown, computed here from the scan's tables with NumPy
(average ranks, Pearson correlation of the ranks).

    python3 examples/paper/summarize.py STUDY_DIR [--accuracy accuracy]

STUDY_DIR is the ensemble's output (with scan/ inside, as `cntscope
ensemble CHECKPOINTS -o STUDY_DIR` writes it, or give --scan).
"""

import argparse
import csv
import math
import os
from collections import defaultdict

import numpy as np


def kind(feature):
    if "link-weight" in feature:
        return "link weights"
    if "fluctuation" in feature:
        return "fluctuation"
    return "strength"


def ranks(x):
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    # Average ranks of ties.
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def spearman(x, y):
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = ranks(x[ok]), ranks(y[ok])
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def per_checkpoint(scan, accuracy, settings):
    """{checkpoint: {feature: value}} for every feature the tool ranks
    (node sets' strength summaries and fluctuation, layers' link-weight
    moments), named as the tool names them; plus setting and accuracy."""
    values = defaultdict(dict)
    meta = {}
    with open(os.path.join(scan, "nodes.csv"), newline="") as f:
        for r in csv.DictReader(f):
            ck = r["checkpoint"]
            for col in ("fluctuation", "strength_mean", "strength_skewness", "strength_kurtosis", "s_in_mean", "s_out_mean"):
                values[ck][f"V{r['node_layer']} {r['node_set']} {col}"] = float(r[col])
            meta[ck] = (tuple(r[s] for s in settings), float(r[accuracy]))
    with open(os.path.join(scan, "links.csv"), newline="") as f:
        for r in csv.DictReader(f):
            ck = r["checkpoint"]
            for col in ("mean", "std", "skewness", "kurtosis"):
                values[ck][f"L{r['layer']} {r['name']} link-weight {col}"] = float(r[col])
    return values, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--scan")
    ap.add_argument("--accuracy", default="accuracy")
    args = ap.parse_args()
    scan = args.scan or os.path.join(args.study, "scan")
    with open(os.path.join(args.study, "separation_within.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    settings = [c for c in rows[0] if c not in ("rank", "feature", "n", "spearman", "auroc", "direction")]
    best = {}
    for r in rows:
        key = (tuple(r[s] for s in settings), kind(r["feature"]))
        rho = float(r["spearman"])
        if not math.isnan(rho) and (key not in best or abs(rho) > abs(float(best[key]["spearman"]))):
            best[key] = r
    values, meta = per_checkpoint(scan, args.accuracy, settings)
    kinds = ["link weights", "strength", "fluctuation"]
    print("| " + " | ".join(settings) + " | n | " + " | ".join(f"best {k}: feature, rho, AUROC" for k in kinds) + " |")
    print("|" + "---|" * (len(settings) + 1 + len(kinds)))
    worst = 0.0
    for setting in sorted({k[0] for k in best}):
        cells, n = [], ""
        for k in kinds:
            r = best.get((setting, k))
            if r is None:
                cells.append("-")
                continue
            n = r["n"]
            cells.append(f"{r['feature']}: {float(r['spearman']):+.2f}, {float(r['auroc']):.2f}")
            cks = [c for c, (s, _) in meta.items() if s == setting and r["feature"] in values[c]]
            if cks:
                x = np.array([values[c][r["feature"]] for c in cks])
                y = np.array([meta[c][1] for c in cks])
                worst = max(worst, abs(spearman(x, y) - float(r["spearman"])))
        print("| " + " | ".join(setting) + f" | {n} | " + " | ".join(cells) + " |")
    print(f"\nindependent Spearman check (NumPy, from the scan's tables): largest difference {worst:.1e}")
    divergences(args.study)


def divergences(study):
    """The paper's figures in numbers: Jensen-Shannon divergence between
    the least and the most accurate group, and its mean over neighbouring
    groups, per measure and layer (from divergence.csv)."""
    with open(os.path.join(study, "divergence.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    groups = []
    for r in rows:
        if r["group_a"] not in groups:
            groups.append(r["group_a"])
    order = sorted(groups, key=lambda g: float(g.strip("[(").split(",")[0]) if g[0] in "[(" else g)
    pos = {g: i for i, g in enumerate(order)}
    table = defaultdict(dict)
    for r in rows:
        table[(r["measure"], r["index"], r["name"])][(r["group_a"], r["group_b"])] = float(r["jensen_shannon"])
    print(f"\n| measure | set or layer | JS {order[0]} vs {order[-1]} | mean JS of neighbouring groups |")
    print("|---|---|---:|---:|")
    for (measure, index, name), js in table.items():
        ends = js.get((order[0], order[-1]), float("nan"))
        near = [v for (a, b), v in js.items() if pos[b] - pos[a] == 1]
        print(f"| {measure} | {index} {name} | {ends:.3f} | {np.mean(near):.3f} |")


if __name__ == "__main__":
    main()
