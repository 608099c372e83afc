#!/usr/bin/env bash
# Scan a large collection as a Slurm job array: each task measures one
# deterministic shard (checkpoint i goes to shard i % N), then a dependent
# job merges the shards into the tables one run would give.
#
#   sbatch --array=0-15 examples/slurm/scan_array.sh /data/zoo /scratch/scan
#   sbatch --dependency=afterok:<array job id> --wrap \
#       "cntscope merge /scratch/scan/shard-* -o /scratch/scan/all"
#
# A shard that was cut short (time limit, preemption) is rerun with the same
# command: --resume keeps what it finished.
#SBATCH --job-name=cntscope-scan
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=cntscope-%A_%a.log
set -euo pipefail
zoo=${1:?usage: scan_array.sh ZOO_DIR OUT_DIR}
out=${2:?usage: scan_array.sh ZOO_DIR OUT_DIR}
shards=${SLURM_ARRAY_TASK_COUNT:?run as a job array (sbatch --array=0-N)}
shard=${SLURM_ARRAY_TASK_ID}
# Add --device gpu (and #SBATCH --gpus=1) on GPU nodes.
# Exit code 1 means some checkpoints failed (listed in errors.csv) and the
# rest were measured: the shard is done, so the merge may go ahead.
status=0
cntscope scan "$zoo" --shard "$shard/$shards" --jobs "${SLURM_CPUS_PER_TASK:-1}" --resume -o "$out/shard-$shard" || status=$?
[ "$status" -le 1 ]
