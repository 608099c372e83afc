#!/usr/bin/env bash
# Submits a sharded scan of ZOO into OUT as a Slurm job array of SHARDS
# tasks, and the merge after it (whatever the tasks' outcome: the merge
# itself refuses, naming them, while a shard is missing or unfinished).
#
#   examples/slurm/submit.sh /data/zoo /shared/scan 16 [extra sbatch options]
set -euo pipefail
usage="usage: submit.sh ZOO_DIR OUT_DIR SHARDS [SBATCH_OPTIONS...]"
zoo=${1:?$usage}
out=${2:?$usage}
shards=${3:?$usage}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable "$@" --array="0-$((shards - 1))" "$here/scan_array.sh" "$zoo" "$out" "$shards")
array=${array%%;*}
merge=$(sbatch --parsable "$@" --dependency="afterany:$array" "$here/merge.sh" "$out" "$shards")
echo "scan array $array ($shards tasks), merge $merge -> $out/all"
echo "rerun failed tasks: sbatch --array=I,J $here/scan_array.sh $zoo $out $shards; then: sbatch $here/merge.sh $out $shards"
