#!/usr/bin/env bash
# The scan benchmark of BENCHMARKS.md: cntscope scan --device cpu against a
# numpy script (benches/numpy_scan.py) and against merely reading the bytes,
# on 5000 small checkpoints and one ~553 MB checkpoint. Checks that both
# give the same fluctuations, then prints the times and ratios.
#
#   pip install numpy safetensors
#   bash benches/scan_bench.sh [DIR]          # DIR defaults to /tmp/cntscope-bench
default_dir=/tmp/cntscope-bench
source "$(dirname "$0")/setup.sh"
python3 benches/make_collections.py "$dir" >/dev/null

# Best of N wall-clock seconds of a command (files stay in the page cache:
# every contender reads warm data). An argument OUT becomes a fresh
# directory for each run, as a new scan would write into (replacing an
# earlier scan's tables costs ext4 a flush of each on rename); it is removed
# after the run, and the disk synced, so no run pays for an earlier one's
# writes.
best() { local n=$1; shift; python3 benches/best.py "$n" "$dir" "$@"; }

compare() {  # numpy CSV, cntscope nodes.csv: largest relative difference of fluctuations
    python3 - "$1" "$2" <<'PY'
import csv, sys
a = {(r["checkpoint"], r["node_layer"]): float(r["fluctuation"]) for r in csv.DictReader(open(sys.argv[1]))}
b = {(r["checkpoint"], r["node_layer"]): float(r["fluctuation"]) for r in csv.DictReader(open(sys.argv[2]))}
assert a.keys() == b.keys(), "different node sets"
print(f"{max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-30) for k in a):.1e}")
PY
}

for name in small large; do
    path="$dir/$name"
    files=$(find "$path" -name '*.safetensors' | wc -l)
    mb=$(du -sm "$path" | cut -f1)
    cat "$path"/*.safetensors > /dev/null  # warm the page cache
    t_read=$(best 5 sh -c "cat $path/*.safetensors > /dev/null")
    t_numpy=$(best 5 python3 benches/numpy_scan.py "$dir/numpy-$name.csv" "$path")
    t_cpu=$(best 5 "$bin" scan "$path" --device cpu -o OUT)
    rm -rf "$dir/out-$name"
    "$bin" scan "$path" --device cpu -o "$dir/out-$name" >/dev/null 2>&1
    diff=$(compare "$dir/numpy-$name.csv" "$dir/out-$name/nodes.csv")
    python3 - "$name" "$files" "$mb" "$t_read" "$t_numpy" "$t_cpu" "$diff" <<'PY'
import sys
name, files, mb, read, numpy_, cpu, diff = sys.argv[1:]
read, numpy_, cpu = float(read), float(numpy_), float(cpu)
print(f"| {name} ({files} files, {mb} MB) | {read:.3f} s | {numpy_:.3f} s | {cpu:.3f} s "
      f"| {numpy_ / cpu:.1f}x | {cpu / read:.2f}x | {diff} |")
PY
done
