#!/usr/bin/env bash
# The Flax benchmark of BENCHMARKS.md: Flax models with random weights
# saved by `flax.serialization.to_bytes` (a model's variables: `params` and
# `batch_stats`) and the same arrays as safetensors, scanned by cntscope
# against `cat` of the files (the read floor) and against msgpack reading
# every array into numpy as `flax.serialization.msgpack_restore` does (its
# extension hook, without importing jax; reading only, no measure), in one
# run, best of 5. Then the same VGG and MLP as Orbax checkpoints
# (`StandardCheckpointer`: an OCDBT database of zstd-compressed Zarr
# arrays), against `cat` of their files and against tensorstore reading
# every array as Orbax's restore does (the zarr driver over the ocdbt
# kvstore, without importing jax).
#
#   pip install flax safetensors msgpack      # benchmark machine only
#   bash benches/flax_bench.sh [DIR] [PYTHON]   # DIR: /tmp/cntscope-flax
default_dir=/tmp/cntscope-flax
source "$(dirname "$0")/setup.sh"
"$py" - "$dir" <<'PY' 2>/dev/null
import os, sys
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
from flax import serialization
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file
base = sys.argv[1]

class VGG(nn.Module):  # a VGG-style CNN with BatchNorm, 3x64x64 inputs, 512x1x1 at the end
    @nn.compact
    def __call__(self, x):
        for width in (64, 128, 256, 256, 512, 512):
            x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(width, (3, 3), padding="SAME")(x)))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(4096)(x))  # Dense_0 (modules are named as they are made)
        return nn.Dense(10)(x)

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(3):
            x = nn.relu(nn.Dense(2048)(x))
        return nn.Dense(10)(x)

def save(path, v):
    if os.path.exists(path + ".msgpack"):
        return
    rng = np.random.default_rng(0)
    v = jax.tree_util.tree_map(lambda a: rng.normal(0, 0.05, a.shape).astype(np.float32), v)
    v["batch_stats"] = jax.tree_util.tree_map(np.abs, v.get("batch_stats", {}))
    open(path + ".msgpack", "wb").write(serialization.to_bytes(v))
    flat = {"/".join(k[1:]): a for k, a in flatten_dict(v).items()}
    save_file(flat, path + ".safetensors")

save(f"{base}/vgg", VGG().init(jax.random.PRNGKey(0), jnp.ones((1, 64, 64, 3))))
save(f"{base}/mlp", MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 2048))))
import orbax.checkpoint as ocp
saver = ocp.StandardCheckpointer()
for name in ("vgg", "mlp"):
    if not os.path.exists(f"{base}/{name}-orbax"):
        v = serialization.msgpack_restore(open(f"{base}/{name}.msgpack", "rb").read())
        saver.save(f"{base}/{name}-orbax", v)
        saver.wait_until_finished()
small, twins = f"{base}/small-msgpack", f"{base}/small-st"
if not os.path.exists(twins):
    os.makedirs(small); os.makedirs(twins)
    tiny = nn.Sequential([nn.Dense(32), nn.Dense(16), nn.Dense(10)])
    for i in range(500):
        v = tiny.init(jax.random.PRNGKey(i), jnp.ones((1, 64)))
        v = jax.tree_util.tree_map(np.asarray, v)
        open(f"{small}/mlp-{i:03}.msgpack", "wb").write(serialization.to_bytes(v))
        save_file({"/".join(k[1:]): a for k, a in flatten_dict(v).items()}, f"{twins}/mlp-{i:03}.safetensors")
PY
best() { "$py" benches/best.py 5 "$dir" "$@"; }
restore='import sys, msgpack, numpy as np
def ext(code, data):  # flax.serialization._msgpack_ext_unpack, arrays only
    if code == 1:
        shape, dtype, buf = msgpack.unpackb(data)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)
    return msgpack.ExtType(code, data)
for p in sys.argv[1:]:
    with open(p, "rb") as f: msgpack.unpackb(f.read(), ext_hook=ext, raw=False)'
spec="$dir/vgg.toml"
"$py" - "$spec" <<'PY'
import sys
layers, i, bn, pools = [], 0, 0, []
for width in (64, 128, 256, 256, 512, 512):
    layers.append(f'[[layers]]\nname = "Conv_{i}"\nweight = "Conv_{i}/kernel"\nbias = "Conv_{i}/bias"\nnorm = "BatchNorm_{i}"\npadding = 1\n')
    layers.append(f'[[layers]]\nname = "pool{i}"\npool = "max"\nkernel = 2\n')
    i += 1
layers += ['[[layers]]\nname = "Dense_0"\nweight = "Dense_0/kernel"\nbias = "Dense_0/bias"\n',
           '[[layers]]\nname = "Dense_1"\nweight = "Dense_1/kernel"\nbias = "Dense_1/bias"\n']
open(sys.argv[1], "w").write('input = [3, 64, 64]\nlayout = "keras"\neps = 1e-5\n\n' + "\n".join(layers))
PY
echo "| file | MB | read (cat) | msgpack + numpy read | cntscope | cntscope safetensors | vs safetensors | vs read floor | vs msgpack |"
echo "|---|---|---|---|---|---|---|---|---|"
# label, the msgpack files (read by cat, msgpack and cntscope), their
# twins, then the options of both scans (`twin_row` of setup.sh).
row() {
    local label=$1 ck=$2
    shift 2
    twin_row "$label" "$ck" "$restore" "$ck" "$ck" "$@"
}
row "vgg.msgpack (spec)" "$dir/vgg.msgpack" "$dir/vgg.safetensors" --spec "$spec"
row "mlp.msgpack" "$dir/mlp.msgpack" "$dir/mlp.safetensors"
row "500 small .msgpack" "$dir/small-msgpack/*.msgpack" "$dir/small-st"
echo
echo "| Orbax checkpoint | MB | read (cat) | tensorstore read | cntscope | cntscope safetensors | vs safetensors | vs read floor | vs tensorstore |"
echo "|---|---|---|---|---|---|---|---|---|"
tensorstore='import sys, tensorstore as ts
for p in sys.argv[1:]:
    base = {"driver": "ocdbt", "base": {"driver": "file", "path": p + "/"}}
    for k in ts.KvStore.open(base).result().list().result():
        if k.endswith(b"/.zarray"):
            ts.open({"driver": "zarr", "kvstore": base, "path": k[:-8].decode()}).result().read().result()'
orbax_row() {
    local label=$1 ck=$2
    shift 2
    twin_row "$label" "$(find "$ck" -type f | tr '\n' ' ')" "$tensorstore" "$ck" "$ck" "$@"
}
orbax_row "vgg (spec)" "$dir/vgg-orbax" "$dir/vgg.safetensors" --spec "$spec"
orbax_row "mlp" "$dir/mlp-orbax" "$dir/mlp.safetensors"
