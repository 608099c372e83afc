#!/usr/bin/env bash
# Merges the N shards in OUT/shard-0..N-1 into OUT/all: the tables one
# run would give. Refuses (exit 2, naming them) while a shard is missing,
# unfinished or inconsistent: rerun those array tasks, then this again.
# Exit 0 means merged; failed checkpoints are rows of OUT/all/errors.csv.
#SBATCH --job-name=cntscope-merge
#SBATCH --time=00:30:00
#SBATCH --output=cntscope-merge-%j.log
set -euo pipefail
usage="usage: merge.sh OUT_DIR SHARDS"
out=${1:?$usage}
shards=${2:?$usage}
cntscope=${CNTSCOPE:-cntscope}
dirs=()
for ((i = 0; i < shards; i++)); do
    dirs+=("$out/shard-$i")
done
"$cntscope" merge "${dirs[@]}" -o "$out/all"
