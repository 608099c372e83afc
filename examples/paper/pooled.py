#!/usr/bin/env python3
"""The replication's pooled table: for each population study (one
architecture and size, all initialisers, grouped by accuracy as the paper
groups them), the best link-weight, strength and fluctuation summary by
|Spearman's rho| against accuracy, and the largest Jensen-Shannon
divergence between the least and the most accurate group per measure.
Only groups of at least `--min-n` networks (default 10) count as extremes:
a group of one or two networks has a narrow density that diverges from
everything, so it would measure its own size, not accuracy.

    python3 examples/paper/pooled.py [--min-n 10] study-fc-small study-fc-medium ...
"""

import argparse
import csv
import math
import os
from collections import defaultdict


def kind(feature):
    if "link-weight" in feature:
        return "link"
    return "fluct" if "fluctuation" in feature else "strength"


def lower_edge(group):
    return float(group.strip("[(").split(",")[0])


def main(studies, min_n):
    print("| population (all 5 inits) | accuracy | best link-weight summary, rho | best strength summary, rho "
          f"| best fluctuation, rho | extreme groups of n >= {min_n} | JS of the extreme groups: link weights / "
          "strength / fluctuation |")
    print("|---|---|---|---|---|---|---|")
    for study in studies:
        best = {}
        with open(os.path.join(study, "separation.csv"), newline="") as f:
            for r in csv.DictReader(f):
                k, rho = kind(r["feature"]), float(r["spearman"])
                if not math.isnan(rho) and (k not in best or abs(rho) > abs(float(best[k]["spearman"]))):
                    best[k] = r
        with open(os.path.join(study, "divergence.csv"), newline="") as f:
            div = list(csv.DictReader(f))
        size = {r["group_a"]: int(r["n_a"]) for r in div if r["measure"] == "fluctuation"}
        groups = sorted((g for g, n in size.items() if n >= min_n), key=lower_edge)
        js = defaultdict(float)
        for r in div:
            if (r["group_a"], r["group_b"]) == (groups[0], groups[-1]):
                js[r["measure"]] = max(js[r["measure"]], float(r["jensen_shannon"]))
        accuracy = {}
        with open(os.path.join(study, "scan", "nodes.csv"), newline="") as f:
            for r in csv.DictReader(f):
                accuracy[r["checkpoint"]] = float(r["accuracy"])

        def cell(k):
            return f"{best[k]['feature']}: {float(best[k]['spearman']):+.2f}"

        name = os.path.basename(os.path.normpath(study)).removeprefix("study-")
        print(f"| {name} | {min(accuracy.values()):.2f}-{max(accuracy.values()):.2f} | {cell('link')} "
              f"| {cell('strength')} | {cell('fluct')} "
              f"| {groups[0]} (n = {size[groups[0]]}), {groups[-1]} (n = {size[groups[-1]]}) "
              f"| {js['link_weight']:.2f} / {js['strength']:.2f} / {js['fluctuation']:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--min-n", type=int, default=10, help="smallest group counted as an extreme (default 10)")
    args = ap.parse_args()
    main(args.studies, args.min_n)
