#!/usr/bin/env bash
# The graph benchmark of BENCHMARKS.md: `cntscope scan --spec` of torchvision
# networks at 3x224x224 (random weights, randomised BatchNorm statistics)
# against reading the file (`cat`, page cache warm) and against computing
# the same measures with torch (benches/torch_strengths.py), in one run.
#
#   pip install torch torchvision safetensors      # benchmark machine only
#   bash benches/graph_bench.sh [DIR] [PYTHON]     # DIR: /tmp/cntscope-graph
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/cntscope-graph}"
py="${2:-python3}"
mkdir -p "$dir"
cargo build --release --quiet
bin=target/release/cntscope
"$py" - "$dir" <<'PY'
import os, sys, torch, torchvision
from safetensors.torch import save_file
torch.manual_seed(0)
for name in ["resnet18", "vgg11_bn", "mobilenet_v2"]:
    path = os.path.join(sys.argv[1], f"{name}.safetensors")
    if os.path.exists(path):
        continue
    m = getattr(torchvision.models, name)()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.2, 2.0)
            mod.weight.data.uniform_(0.5, 1.5); mod.bias.data.uniform_(-0.3, 0.3)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)
PY
best() { "$py" benches/best.py 3 "$dir" "$@"; }  # best of 3; OUT becomes a fresh directory
# torch's own start-up (imports), reported apart from its computation.
t_imp=$(best "$py" -c "import torch, tomllib; from safetensors.torch import load_file")
echo "| network | MB | read (cat) | torch (imports $t_imp s excluded) | cntscope cpu | gpu | cpu vs torch | cpu vs read |"
echo "|---|---|---|---|---|---|---|---|"
for name in resnet18 vgg11_bn mobilenet_v2; do
    f="$dir/$name.safetensors"
    spec="examples/specs/$name.toml"
    cat "$f" > /dev/null
    mb=$(du -m "$f" | cut -f1)
    t_read=$(best sh -c "cat $f > /dev/null")
    t_torch=$(best "$py" benches/torch_strengths.py "$f" "$spec")
    t_cpu=$(best "$bin" scan "$f" --spec "$spec" --device cpu -o OUT)
    t_gpu=$(best "$bin" scan "$f" --spec "$spec" --device gpu -o OUT 2>/dev/null || echo "n/a")
    "$py" -c "import sys; r,t,i,c=map(float,sys.argv[1:5]); t-=i; print(f'| $name | $mb | {r:.3f} s | {t:.3f} s | {c:.3f} s | $t_gpu s | {t/c:.1f}x | {c/r:.1f}x |')" "$t_read" "$t_torch" "$t_imp" "$t_cpu"
done
