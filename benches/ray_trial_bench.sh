#!/usr/bin/env bash
# A Ray Tune trial whose result.json has grown large: 3000 reported
# iterations (2.8 MB, 20 metrics and a config per line) and a checkpoint
# every 50 (60 `checkpoint_<N>/checkpoints` files, the example zoo's first
# MLP). `cntscope scan` of the trial against `cat` of its files (the read
# floor, page cache warm), best of 11.
#
#   bash benches/ray_trial_bench.sh [DIR] [BIN]     # DIR: /tmp/cntscope-ray
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/cntscope-ray}"
bin="${2:-target/release/cntscope}"
trial="$dir/trial"
if [ ! -f "$trial/result.json" ]; then
    mkdir -p "$trial"
    python3 - "$trial" <<'PY'
import json, os, shutil, sys
trial = sys.argv[1]
zoo = "examples/zoo/mlp"
src = os.path.join(zoo, sorted(os.listdir(zoo))[0])
with open(os.path.join(trial, "result.json"), "w") as f:
    for it in range(1, 3001):
        line = {"training_iteration": it, "accuracy": 0.5 + it / 10000, "loss": 1.0 / it,
                "config": {"lr": 0.1, "seed": 1, "note": "x" * 400}}
        line.update({f"metric_{k}": k * it for k in range(20)})
        f.write(json.dumps(line) + "\n")
with open(os.path.join(trial, "params.json"), "w") as f:
    json.dump({"lr": 0.1, "seed": 1}, f)
for it in range(50, 3001, 50):
    os.makedirs(os.path.join(trial, f"checkpoint_{it:06d}"), exist_ok=True)
    shutil.copy(src, os.path.join(trial, f"checkpoint_{it:06d}", "checkpoints"))
PY
fi
cat "$trial"/*.json "$trial"/checkpoint_*/checkpoints > /dev/null
echo "read (cat): $(python3 benches/best.py 11 "$dir" sh -c "cat $trial/*.json $trial/checkpoint_*/checkpoints > /dev/null") s"
echo "cntscope scan: $(python3 benches/best.py 11 "$dir" "$bin" scan "$trial" -o OUT) s"
