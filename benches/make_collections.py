#!/usr/bin/env python3
"""Build the collections of the scan benchmark (BENCHMARKS.md):

- small/: 5000 checkpoints of a 64-24-16-10 MLP (torch naming, f32, biases,
  `accuracy` and `seed` metadata), like a seed sweep of a model zoo;
- large/model.safetensors: one dense 4096-8192-8192-4096-1000 network,
  f32 with biases, about 553 MB.

    pip install numpy safetensors
    python3 benches/make_collections.py /tmp/cntscope-bench
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def mlp(rng, sizes, scale=None):
    tensors = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        s = scale or 1.0 / np.sqrt(n_in)
        tensors[f"layers.{2 * i}.weight"] = (rng.standard_normal((n_out, n_in), dtype=np.float32) * s).astype(np.float32)
        tensors[f"layers.{2 * i}.bias"] = (rng.standard_normal(n_out, dtype=np.float32) * s).astype(np.float32)
    return tensors


def main(out: Path, small: int = 5000):
    rng = np.random.default_rng(0)
    (out / "small").mkdir(parents=True, exist_ok=True)
    for i in range(small):
        path = out / "small" / f"mlp_{i:05d}.safetensors"
        if not path.exists():
            meta = {"accuracy": f"{rng.random():.4f}", "seed": str(i)}
            save_file(mlp(rng, [64, 24, 16, 10]), str(path), metadata=meta)
    (out / "large").mkdir(parents=True, exist_ok=True)
    path = out / "large" / "model.safetensors"
    if not path.exists():
        save_file(mlp(rng, [4096, 8192, 8192, 4096, 1000]), str(path), metadata={"accuracy": "0.5"})
    print(f"collections in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cntscope-bench"))
