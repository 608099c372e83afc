#!/usr/bin/env bash
# The NumPy benchmark of BENCHMARKS.md: torchvision's resnet18 and
# mobilenet_v2 state_dicts (random weights, float arrays only) saved by
# `np.savez` (stored entries, read in place) and `np.savez_compressed`
# (deflated entries, inflated), scanned by cntscope (no spec: discovery)
# against `cat` of the file (the read floor), `unzip -p` of it (reading
# and inflating every entry on one core, in C) and against numpy loading
# every array (`np.load`, each array read and summed; numpy's import
# excluded), in one run, best of 7.
#
#   pip install torch torchvision numpy      # benchmark machine only
#   bash benches/npz_bench.sh [DIR] [PYTHON]   # DIR: /tmp/cntscope-npz
default_dir=/tmp/cntscope-npz
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY'
import os, sys, numpy as np, torch, torchvision
torch.manual_seed(0)
for name in ("resnet18", "mobilenet_v2"):
    if os.path.exists(os.path.join(sys.argv[1], f"{name}-compressed.npz")):
        continue
    sd = {k: v.numpy() for k, v in getattr(torchvision.models, name)().state_dict().items() if v.is_floating_point()}
    np.savez(os.path.join(sys.argv[1], f"{name}.npz"), **sd)
    np.savez_compressed(os.path.join(sys.argv[1], f"{name}-compressed.npz"), **sd)
PY
best() { "$py" benches/best.py 7 "$dir" "$@"; }
load='import sys, numpy as np; z = np.load(sys.argv[1]); [z[k].sum() for k in z.files]'
t_imp=$(best "$py" -c "import numpy")
echo "| file | MB | read (cat) | unzip -p | numpy load (import $t_imp s excluded) | cntscope cpu | vs numpy | vs read | vs unzip |"
echo "|---|---|---|---|---|---|---|---|---|"
for f in resnet18 resnet18-compressed mobilenet_v2 mobilenet_v2-compressed; do
    p="$dir/$f.npz"
    cat "$p" > /dev/null
    mb=$(du -m "$p" | cut -f1)
    t_read=$(best sh -c "cat $p > /dev/null")
    t_unz=$(best sh -c "unzip -p $p > /dev/null")
    t_np=$(best "$py" -c "$load" "$p")
    t_cpu=$(best "$bin" scan "$p" --device cpu -o OUT)
    "$py" -c "import sys; r,u,n,i,c=map(float,sys.argv[1:6]); n-=i; print(f'| $f.npz | $mb | {r:.4f} s | {u:.4f} s | {n:.4f} s | {c:.4f} s | {n/c:.1f}x faster | {c/r:.1f}x | {c/u:.2f}x |')" "$t_read" "$t_unz" "$t_np" "$t_imp" "$t_cpu"
done
