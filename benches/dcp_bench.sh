#!/usr/bin/env bash
# The distributed-checkpoint benchmark of BENCHMARKS.md: torchvision's
# resnet18 and vgg11_bn state dicts (random weights) saved by
# `torch.distributed.checkpoint.save` from one process (every tensor
# whole) and from two gloo ranks sharding every weight of two or more
# dimensions along dim 0 (as FSDP2 does; the rest replicated), and as
# safetensors; scanned by cntscope (no spec: discovery) against `cat` of
# the folder's files (the read floor) and against torch reading them back
# (`dcp.load` into a state dict of empty tensors, in its process, after
# torch's import), best of 7.
#
#   pip install torch torchvision safetensors     # benchmark machine only
#   bash benches/dcp_bench.sh [DIR] [PYTHON]       # DIR: /tmp/cntscope-dcp
default_dir=/tmp/cntscope-dcp
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY' 2>/dev/null
import os, sys, torch, torchvision
import torch.distributed as dist, torch.distributed.checkpoint as dcp, torch.multiprocessing as mp
from safetensors.torch import save_file
base = sys.argv[1]

def state(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().state_dict()

def rank(r, name):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29534")
    dist.init_process_group("gloo", rank=r, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    sd = {k: distribute_tensor(v, mesh, [Shard(0) if v.dim() >= 2 and v.shape[0] % 2 == 0 else Replicate()])
          for k, v in state(name).items()}
    dcp.save({"model": sd}, checkpoint_id=os.path.join(base, f"{name}-sharded"))
    dist.destroy_process_group()

if __name__ == "__main__":
    for name in ("resnet18", "vgg11_bn"):
        if os.path.exists(os.path.join(base, f"{name}.safetensors")):
            continue
        sd = state(name)
        dcp.save({"model": sd}, checkpoint_id=os.path.join(base, f"{name}-whole"), no_dist=True)
        mp.start_processes(rank, args=(name,), nprocs=2, start_method="fork")
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(base, f"{name}.safetensors"))
PY
best() { "$py" benches/best.py 7 "$dir" "$@"; }
# torch's own read: dcp.load into a state dict of empty tensors, best of 7.
load='import sys, time, torch, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
md = dcp.FileSystemReader(sys.argv[1]).read_metadata()
def load():
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata) and k.startswith("model.")}
    nested = {"model": {k[len("model."):]: v for k, v in sd.items()}}
    t = time.perf_counter()
    dcp.load(nested, checkpoint_id=sys.argv[1], no_dist=True)
    return time.perf_counter() - t
print(f"{min(load() for _ in range(7)):.4f}")'
echo "| checkpoint | MB | read (cat) | torch dcp.load (in process, import excluded) | cntscope cpu | same weights as safetensors | vs safetensors | vs read | vs torch |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in resnet18 vgg11_bn; do
    for kind in whole sharded; do
        d="$dir/$name-$kind"
        cat "$d"/.metadata "$d"/*.distcp > /dev/null
        mb=$(du -cm "$d"/.metadata "$d"/*.distcp | tail -1 | cut -f1)
        t_read=$(best sh -c "cat $d/.metadata $d/*.distcp > /dev/null")
        t_torch=$("$py" -c "$load" "$d" 2>/dev/null)
        t_cpu=$(best "$bin" scan "$d" --device cpu -o OUT)
        t_st=$(best "$bin" scan "$dir/$name.safetensors" --device cpu -o OUT)
        "$py" -c "import sys; r,t,c,s=map(float,sys.argv[1:5]); print(f'| $name ($kind) | $mb | {r:.4f} s | {t:.4f} s | {c:.4f} s | {s:.4f} s | {c/s:.2f}x | {c/r:.1f}x | {t/c:.1f}x faster |')" "$t_read" "$t_torch" "$t_cpu" "$t_st"
    done
done
