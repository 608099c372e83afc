#!/usr/bin/env bash
# The resampling layers of BENCHMARKS.md (interpolations, pads, views): the
# fixtures' U-Net, segmenter and ECA network (tests/fixtures/torch/
# make_fixtures.py: bilinear and transposed-conv upsampling joined by
# F.pad, reflection / replication / circular pads; LR-ASPP and ASPP heads,
# bicubic, nearest, area; a Conv1d across pooled channels) at large inputs,
# where their node sets, not their few weights, are the work: `cntscope
# scan --spec` against computing the same strengths with torch
# (benches/torch_strengths.py), in one run.
#
#   pip install torch torchvision safetensors      # benchmark machine only
#   bash benches/resampling_bench.sh [DIR] [PYTHON] [SIZE]   # DIR: /tmp/cntscope-resampling, SIZE: 512
default_dir=/tmp/cntscope-resampling
source "$(dirname "$0")/setup.sh"
size="${3:-512}"
"$py" - "$dir" "$size" <<'PY'
import os, sys, warnings
import torch
from safetensors.torch import save_file
sys.path.insert(0, "tests/fixtures/torch")
sys.path.insert(0, "python")
import make_fixtures as mf
from cntscope.torch_to_spec import spec_from_module
out, size = sys.argv[1], int(sys.argv[2])
for name, factory, *_ in mf.NETWORKS:
    if name not in ("unet_tiny", "segmenter_tiny", "eca_tiny"):
        continue
    torch.manual_seed(0)
    m = factory().eval()
    mf.randomise(m, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open(os.path.join(out, f"{name}.toml"), "w").write(spec_from_module(m, (3, size, size)))
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, os.path.join(out, f"{name}.safetensors"))
PY
best() { local n=$1; shift; "$py" benches/best.py "$n" "$dir" "$@"; }
t_imp=$(best 3 "$py" -c "import torch, tomllib; from safetensors.torch import load_file")
echo "| network at 3x${size}x${size} | nodes | torch (imports $t_imp s excluded) | cntscope cpu | vs torch |"
echo "|---|---:|---:|---:|---:|"
for name in unet_tiny segmenter_tiny eca_tiny; do
    f="$dir/$name.safetensors"
    spec="$dir/$name.toml"
    nodes=$("$bin" inspect "$f" --spec "$spec" 2>/dev/null | awk '/^  V[0-9]+ / {s += $(NF-1)} END {print s}')
    t_torch=$(best 3 "$py" benches/torch_strengths.py "$f" "$spec")
    t_cpu=$(best 7 "$bin" scan "$f" --spec "$spec" --device cpu -o OUT)
    "$py" -c "import sys; t,i,c=map(float,sys.argv[1:4]); t-=i; print(f'| $name | $nodes | {t:.3f} s | {c:.4f} s | {t/c:.0f}x |')" "$t_torch" "$t_imp" "$t_cpu"
done
