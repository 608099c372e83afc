#!/usr/bin/env bash
# The graph benchmark of BENCHMARKS.md: `cntscope scan --spec` of torchvision
# networks at their shipped specs' input (3x224x224; the segmentation models
# 3x520x520), random weights, randomised BatchNorm statistics,
# against reading the file (`cat`, page cache warm) and against computing
# the same measures with torch (benches/torch_strengths.py), in one run;
# then, as root, the same scans and reads with the files out of the page
# cache (benches/cold.py).
#
#   pip install torch torchvision safetensors      # benchmark machine only
#   bash benches/graph_bench.sh [DIR] [PYTHON]     # DIR: /tmp/cntscope-graph
#   NETS="convnext_tiny shufflenet_v2_x1_0" bash benches/graph_bench.sh ...  # some networks only
default_dir=/tmp/cntscope-graph
source "$(dirname "$0")/setup.sh"
nets="${NETS:-resnet18 vgg11_bn mobilenet_v2 convnext_tiny shufflenet_v2_x1_0}"
"$py" - "$dir" $nets <<'PY'
import os, sys, torch, torchvision
from safetensors.torch import save_file
torch.manual_seed(0)
for name in sys.argv[2:]:
    path = os.path.join(sys.argv[1], f"{name}.safetensors")
    if os.path.exists(path):
        continue
    seg = torchvision.models.segmentation
    m = getattr(seg, name)(weights_backbone=None) if hasattr(seg, name) else getattr(torchvision.models, name)()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.2, 2.0)
            mod.weight.data.uniform_(0.5, 1.5); mod.bias.data.uniform_(-0.3, 0.3)
    for pname, p in m.named_parameters():
        if pname.endswith("layer_scale"):  # ConvNeXt's, 1e-6 at init
            p.data.uniform_(-1, 1)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)
PY
# Best of N runs; OUT becomes a fresh directory. The millisecond runs (cat,
# cntscope) get 11 tries, as `cat` of a 14 MB file moves by a third
# between runs; torch's seconds get 3.
best() { local n=$1; shift; "$py" benches/best.py "$n" "$dir" "$@"; }
# torch's own start-up (imports), reported apart from its computation.
t_imp=$(best 3 "$py" -c "import torch, tomllib; from safetensors.torch import load_file")
echo "| network | MB | read (cat) | torch (imports $t_imp s excluded) | cntscope cpu | gpu | cpu vs torch | cpu vs read |"
echo "|---|---|---|---|---|---|---|---|"
for name in $nets; do
    f="$dir/$name.safetensors"
    spec="examples/specs/$name.toml"
    cat "$f" > /dev/null
    mb=$(du -m "$f" | cut -f1)
    t_read=$(best 11 sh -c "cat $f > /dev/null")
    t_torch=$(best 3 "$py" benches/torch_strengths.py "$f" "$spec")
    t_cpu=$(best 11 "$bin" scan "$f" --spec "$spec" --device cpu -o OUT)
    t_gpu=$(best 3 "$bin" scan "$f" --spec "$spec" --device gpu -o OUT 2>/dev/null || echo "n/a")
    "$py" -c "import sys; r,t,i,c=map(float,sys.argv[1:5]); t-=i; print(f'| $name | $mb | {r:.4f} s | {t:.3f} s | {c:.4f} s | $t_gpu s | {t/c:.0f}x | {c/r:.1f}x |')" "$t_read" "$t_torch" "$t_imp" "$t_cpu"
done
# The same files as collections of 8 (hard links, so the page cache holds
# one copy): a scan's fixed cost (process, disk syncs) is paid once.
echo
echo "| collection | read (cat) | cntscope cpu | per checkpoint | cpu vs read |"
echo "|---|---|---|---|---|"
for name in resnet18 mobilenet_v2; do
    [[ " $nets " == *" $name "* ]] || continue
    c="$dir/$name-x8"
    mkdir -p "$c"
    for i in 0 1 2 3 4 5 6 7; do ln -f "$dir/$name.safetensors" "$c/$name-$i.safetensors"; done
    t_read=$(best 11 sh -c "cat $c/*.safetensors > /dev/null")
    t_cpu=$(best 11 "$bin" scan "$c" --spec "examples/specs/$name.toml" --device cpu -o OUT)
    "$py" -c "import sys; r,c=map(float,sys.argv[1:3]); print(f'| $name x 8 | {r:.4f} s | {c:.4f} s | {c/8:.4f} s | {c/r:.1f}x |')" "$t_read" "$t_cpu"
done
# Cold: each file out of the page cache first (root only: drop_caches).
if [ -w /proc/sys/vm/drop_caches ]; then
    echo
    python3 benches/cold.py "$bin" "$dir" 7 $nets
fi
