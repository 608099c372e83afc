#!/usr/bin/env python3
"""Train small MLPs on scikit-learn's bundled digits data set (8x8 images,
no download) and save them as safetensors checkpoints with PyTorch
state_dict naming (an nn.Sequential of Linear/ReLU: layers.0, layers.2, ...).

Each network is a 64-32-16-10 MLP trained by scikit-learn's MLPClassifier
(Adam, ReLU). Seeds and training lengths vary, so the population spans
under-trained to accurate networks. Every file carries `accuracy` (test),
`epoch`, `seed` and `init` in its `__metadata__`.

    pip install numpy scikit-learn safetensors
    python3 examples/make_digits_mlps.py examples/digits-mlp
"""

import sys
import warnings
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HIDDEN = (32, 16)
SEEDS = range(4)
EPOCHS = (1, 3, 10, 40)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    classes = np.unique(y)
    warnings.simplefilter("ignore", ConvergenceWarning)
    for seed in SEEDS:
        net = MLPClassifier(hidden_layer_sizes=HIDDEN, learning_rate_init=1e-3, batch_size=64, random_state=seed)
        epoch = 0
        for target in EPOCHS:
            while epoch < target:
                net.partial_fit(x_tr, y_tr, classes=classes)
                epoch += 1
            acc = float(net.score(x_te, y_te))
            tensors = {}
            for i, (w, b) in enumerate(zip(net.coefs_, net.intercepts_)):
                # scikit-learn stores [in, out]; torch's Linear stores [out, in].
                tensors[f"layers.{2 * i}.weight"] = np.ascontiguousarray(w.T, dtype=np.float32)
                tensors[f"layers.{2 * i}.bias"] = b.astype(np.float32)
            meta = {"accuracy": f"{acc:.4f}", "epoch": str(epoch), "seed": str(seed), "init": "glorot"}
            save_file(tensors, str(out / f"mlp_seed{seed}_epoch{epoch:02d}.safetensors"), metadata=meta)
            print(f"seed {seed} epoch {epoch:2d}: test accuracy {acc:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/digits-mlp"))
