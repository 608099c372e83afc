"""Cold reads for the graph benchmark: each file dropped from the page
cache (`echo 3 > /proc/sys/vm/drop_caches`: root only) before `cat` reads it
and before `cntscope scan` measures it, the binary and the spec read in
again first (they are not what is measured). Prints a Markdown table:
median and best of N rounds, scan against cat.

    python3 benches/cold.py BIN DIR N NAME...
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

binary, base, rounds, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
warm_up = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "zoo", "bncnn",
                       "bncnn-he-s0-e01.safetensors")


def cold(cmd, spec):
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    out = tempfile.mkdtemp(dir=base)
    subprocess.run([binary, "scan", warm_up, "-o", out + "/warm"], check=True, capture_output=True)
    subprocess.run(["cat", spec], check=True, capture_output=True)
    t = time.perf_counter()
    subprocess.run([out if a == "OUT" else a for a in cmd], check=True, capture_output=True)
    return time.perf_counter() - t


print("| network (cold) | read (cat) | cntscope cpu | cpu vs read |")
print("|---|---|---|---|")
for name in names:
    f, spec = os.path.join(base, f"{name}.safetensors"), f"examples/specs/{name}.toml"
    cat, scan = [], []
    for _ in range(rounds):
        cat.append(cold(["sh", "-c", f"cat {f} > /dev/null"], spec))
        scan.append(cold([binary, "scan", f, "--spec", spec, "--device", "cpu", "-o", "OUT"], spec))
    c, s = statistics.median(cat), statistics.median(scan)
    print(f"| {name} | {c:.4f} s (best {min(cat):.4f}) | {s:.4f} s (best {min(scan):.4f}) | {s / c:.1f}x |")
