#!/usr/bin/env bash
# The whole-object benchmark of BENCHMARKS.md: torchvision's resnet18
# (random weights, randomised BatchNorm statistics) saved as safetensors,
# as `torch.save` of its state_dict, of the whole module, of a timm-style
# training checkpoint (state_dict beside argparse arguments and numpy
# scalars) and as TorchScript (`torch.jit.save`), each scanned with the
# shipped spec, against `cat` of the file (warm), in one run, best of 21.
#
#   pip install torch torchvision safetensors      # benchmark machine only
#   bash benches/torch_objects_bench.sh [DIR] [PYTHON]   # DIR: /tmp/cntscope-objects
default_dir=/tmp/cntscope-objects
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY' 2>/dev/null
import argparse, os, sys, numpy as np, torch, torchvision
from safetensors.torch import save_file
d = sys.argv[1]
torch.manual_seed(0)
m = torchvision.models.resnet18()
for mod in m.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.2, 2.0)
sd = m.state_dict()
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "safetensors.safetensors"))
torch.save(sd, os.path.join(d, "state_dict.pt"))
torch.save(m, os.path.join(d, "whole_module.pt"))
torch.save({"epoch": 9, "state_dict": sd, "args": argparse.Namespace(lr=0.1), "metric": np.float64(71.2)},
           os.path.join(d, "timm_checkpoint.pth.tar"))
torch.jit.save(torch.jit.script(m), os.path.join(d, "torchscript.pt"))
PY
best() { "$py" benches/best.py 21 "$dir" "$@"; }
echo "| file | MB | read (cat) | cntscope cpu | vs read | vs safetensors |"
echo "|---|---:|---:|---:|---:|---:|"
t_st=""
for f in safetensors.safetensors state_dict.pt whole_module.pt timm_checkpoint.pth.tar torchscript.pt; do
    p="$dir/$f"
    cat "$p" > /dev/null
    mb=$(du -m "$p" | cut -f1)
    t_read=$(best sh -c "cat $p > /dev/null")
    t_cpu=$(best "$bin" scan "$p" --spec examples/specs/resnet18.toml --device cpu -o OUT)
    t_st=${t_st:-$t_cpu}
    "$py" -c "import sys; r,c,s=map(float,sys.argv[1:4]); print(f'| $f | $mb | {r:.4f} s | {c:.4f} s | {c/r:.1f}x | {c/s:.2f}x |')" "$t_read" "$t_cpu" "$t_st"
done
