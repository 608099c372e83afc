# Sourced by the benchmark scripts, after they set `default_dir`: runs
# from the repository root, with `dir` the script's first argument (else
# $default_dir; made if missing) and `py` its second (else python3), and
# the release binary built as `bin`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-$default_dir}"
py="${2:-python3}"
mkdir -p "$dir"
cargo build --release --quiet
bin=target/release/cntscope
