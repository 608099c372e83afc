"""The torch baseline of benches/graph_bench.sh: the same measures as
`cntscope scan --spec` for one checkpoint, computed with torch as a
researcher would (float32, torch's threads): load the safetensors file, per
layer the conv (or linear, pool) of an all-ones input for in-strengths and
autograd for out-strengths, BatchNorm folded, summed into the spec's node
sets (tests/fixtures/torch/make_fixtures.py's `strengths`); then per node
set mean, std, min, max, skewness, kurtosis and a 50-bin histogram, and per
weighted layer the same of its (folded) weights.

    python benches/torch_strengths.py CHECKPOINT SPEC
"""

import os
import sys
import tomllib

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch"))
from make_fixtures import strengths  # noqa: E402


def summary(x: torch.Tensor):
    x = x.double()
    m, s = x.mean(), x.std(unbiased=False)
    z = (x - m) / s
    return [float(v) for v in (m, s, x.min(), x.max(), (z**3).mean(), (z**4).mean() - 3)], torch.histc(x.float(), 50)


def main():
    ckpt, spec_path = sys.argv[1:3]
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    with torch.no_grad():
        sd = load_file(ckpt)
    rows = [summary(s) for _, s, _ in strengths(spec, sd, "fold", dtype=torch.float32, magnitudes=False)]
    for e in spec["layers"]:
        if "weight" in e:
            w = sd[e["weight"]].float()
            if "norm" in e:
                p = e["norm"]
                a = sd[f"{p}.weight"] / torch.sqrt(sd[f"{p}.running_var"] + e.get("eps", 1e-5))
                w = w * a.view([-1] + [1] * (w.dim() - 1))
            rows.append(summary(w.flatten()))
    print(len(rows), "summaries")


if __name__ == "__main__":
    main()
