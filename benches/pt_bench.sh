#!/usr/bin/env bash
# The PyTorch-format benchmark of BENCHMARKS.md: the collections of
# benches/scan_bench.sh (5000 small checkpoints, one 528 MB checkpoint)
# saved again with torch.save, scanned by cntscope as .pt and as
# safetensors, against torch.load + the numpy-style computation
# (benches/torch_scan.py) and `cat`, in one run.
#
#   pip install torch numpy safetensors           # benchmark machine only
#   bash benches/pt_bench.sh [DIR] [PYTHON]       # DIR: /tmp/cntscope-bench
default_dir=/tmp/cntscope-bench
source "$(dirname "$0")/setup.sh"
"$py" benches/make_collections.py "$dir" >/dev/null
"$py" - "$dir" <<'PY'
import os, sys, torch
from pathlib import Path
from safetensors.torch import load_file
base = Path(sys.argv[1])
for name in ["small", "large"]:
    out = base / f"{name}-pt"
    if out.exists():
        continue
    for f in sorted((base / name).rglob("*.safetensors")):
        dst = out / f.relative_to(base / name).with_suffix(".pt")
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(load_file(str(f)), dst)
PY
best() { "$py" benches/best.py 3 "$dir" "$@"; }  # best of 3; OUT becomes a fresh directory
echo "| collection | read .pt (cat) | torch.load script | cntscope .pt | cntscope safetensors | .pt vs safetensors | .pt vs torch |"
echo "|---|---|---|---|---|---|---|"
for name in small large; do
    pt="$dir/$name-pt"
    find "$pt" -type f -exec cat {} + > /dev/null
    t_read=$(best sh -c "find $pt -type f -exec cat {} + > /dev/null")
    t_torch=$(best "$py" benches/torch_scan.py "$dir/torch-$name.csv" "$pt")
    t_pt=$(best "$bin" scan "$pt" --device cpu -o OUT)
    t_st=$(best "$bin" scan "$dir/$name" --device cpu -o OUT)
    "$py" -c "import sys; r,t,p,s=map(float,sys.argv[1:5]); print(f'| $name | {r:.3f} s | {t:.3f} s | {p:.3f} s | {s:.3f} s | {p/s:.2f}x | {t/p:.1f}x faster |')" "$t_read" "$t_torch" "$t_pt" "$t_st"
done
