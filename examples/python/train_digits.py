"""Individual analysis during training, from Python: a small PyTorch MLP on
scikit-learn's digits, measured by `cntscope.analyze(model.state_dict())`
at the end of every epoch (nothing written to disk), then the layer
fluctuation plotted against the epoch. The second half does the ensemble
study of the shipped zoo from `cntscope.scan`.

    pip install .  torch scikit-learn matplotlib
    python examples/python/train_digits.py [OUT_DIR]

Runs in a few seconds on a laptop CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

import cntscope

ROOT = Path(__file__).resolve().parents[2]


def train(epochs: int = 15, seed: int = 0) -> pd.DataFrame:
    """Trains a 64-24-16-10 MLP; returns nodes.csv rows of every epoch."""
    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    train_x, test_x, train_y, test_y = x[:1400], x[1400:], y[:1400], y[1400:]
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 24), torch.nn.ReLU(),
        torch.nn.Linear(24, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = []
    measured = 0.0
    for epoch in range(epochs + 1):
        if epoch > 0:
            for i in torch.randperm(len(train_x)).split(16):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(train_x[i]), train_y[i]).backward()
                opt.step()
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        start = time.perf_counter()
        tables = cntscope.analyze(model.state_dict(), name=f"epoch-{epoch}",
                                  metadata={"epoch": epoch, "accuracy": round(accuracy, 4)})
        measured += time.perf_counter() - start
        rows.append(tables.nodes)
    print(f"analyze: {1e6 * measured / (epochs + 1):.0f} us per epoch (the training itself took the rest)")
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/python-example")
    out.mkdir(parents=True, exist_ok=True)

    nodes = train()
    nodes.to_csv(out / "training_nodes.csv", index=False)
    # Node sets in network order (V0 = input first).
    sets = nodes.drop_duplicates("node_set").sort_values("node_layer")["node_set"]
    fluct = nodes.pivot(index="epoch", columns="node_set", values="fluctuation")[list(sets)]
    accuracy = nodes.groupby("epoch")["accuracy"].first()
    print(pd.concat([fluct, accuracy], axis=1).round(3).to_string())

    # The same kind of study from files: the shipped zoo, grouped by accuracy.
    zoo = cntscope.scan(ROOT / "examples" / "zoo" / "mlp")
    last = zoo.nodes[zoo.nodes["epoch"] == zoo.nodes["epoch"].max()]
    by_init = last.groupby(["init", "node_set"])[["fluctuation", "accuracy"]].mean().round(3)
    print(f"\nzoo: {zoo.summary['analysed']} checkpoints; final epoch, by init scale:")
    print(by_init.to_string())

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in fluct.columns:
        ax.plot(fluct.index, fluct[column], marker="o", label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer fluctuation (std of node strength)")
    ax.legend(title="node set", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fluctuation.png", dpi=120)
    print(f"figure: {out / 'fluctuation.png'}")


if __name__ == "__main__":
    main()
