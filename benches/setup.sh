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

# One row of a file format's table (benches/keras_bench.sh,
# benches/flax_bench.sh): LABEL, the files `cat` reads (the read floor),
# BASELINE (a Python script reading the files it is given, timed as
# `"$py" -c BASELINE FILES`) and its files, cntscope's paths and their
# safetensors twins' paths, then the options of both scans. Each is timed
# by the script's `best`.
twin_row() {
    local label=$1 cat_files=$2 baseline=$3 base_files=$4 ck=$5 st=$6
    shift 6
    cat $cat_files > /dev/null
    mb=$(du -cm $cat_files | tail -1 | cut -f1)
    t_read=$(best sh -c "cat $cat_files > /dev/null")
    t_base=$(best "$py" -c "$baseline" $base_files)
    t_ck=$(best "$bin" scan $ck --device cpu -o OUT "$@")
    t_st=$(best "$bin" scan $st --device cpu -o OUT "$@")
    "$py" -c "import sys; r,b,c,s=map(float,sys.argv[1:5]); print(f'| $label | $mb | {r:.4f} s | {b:.4f} s | {c:.4f} s | {s:.4f} s | {c/s:.2f}x | {c/r:.1f}x | {b/c:.1f}x faster |')" "$t_read" "$t_base" "$t_ck" "$t_st"
}
