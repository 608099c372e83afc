#!/usr/bin/env bash
# One shard of a collection scanned as a Slurm job array: array task I of N
# measures checkpoint i when i % N == I into OUT/shard-I. The shard count
# is given, never taken from Slurm's task count, so any subset of the
# tasks can be resubmitted. `submit.sh` submits the array and the merge.
#
#   examples/slurm/submit.sh ZOO OUT N            # array 0..N-1, then merge
#   sbatch --array=3,7 examples/slurm/scan_array.sh ZOO OUT N   # rerun 3 and 7
#   sbatch examples/slurm/merge.sh OUT N          # merge again
#
# Needs: `cntscope` on the jobs' PATH (or CNTSCOPE=/path/to/cntscope), and
# ZOO and OUT on a filesystem every node sees. A task that is cut short
# (time limit, preemption, node failure) is rerun with the same command:
# --resume keeps what it finished, and starts afresh where nothing was
# kept. One CPU per task by default; more with
# `sbatch --cpus-per-task=8 ...` (used as --jobs).
#SBATCH --job-name=cntscope-scan
#SBATCH --time=02:00:00
#SBATCH --output=cntscope-%A_%a.log
set -euo pipefail
usage="usage: scan_array.sh ZOO_DIR OUT_DIR SHARDS (as a job array: sbatch --array=0-\$((SHARDS-1)))"
zoo=${1:?$usage}
out=${2:?$usage}
shards=${3:?$usage}
shard=${SLURM_ARRAY_TASK_ID:?run as a job array task: $usage}
if ! [[ $shards =~ ^[1-9][0-9]*$ && $shard =~ ^[0-9]+$ ]] || ((shard >= shards)); then
    echo "scan_array.sh: array task $shard is not a shard of 0..$((shards - 1)): $usage" >&2
    exit 2
fi
cntscope=${CNTSCOPE:-cntscope}
mkdir -p "$out"
# Exit code 1 means some checkpoints failed (listed in errors.csv) and the
# rest were measured: the shard is done, so the task succeeds.
status=0
"$cntscope" scan "$zoo" --shard "$shard/$shards" --jobs "${SLURM_CPUS_PER_TASK:-1}" --resume \
    -o "$out/shard-$shard" || status=$?
[ "$status" -le 1 ]
