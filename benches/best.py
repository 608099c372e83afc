"""Best of N wall-clock seconds of a command, for the benchmark scripts. An
argument OUT becomes a fresh directory under DIR for each run (as a new
scan would write into), removed and synced before the next.

    python3 benches/best.py N DIR COMMAND...
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

n, base, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
best = float("inf")
for _ in range(n):
    out = tempfile.mkdtemp(dir=base)
    os.sync()
    t = time.perf_counter()
    subprocess.run([out if a == "OUT" else a for a in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best = min(best, time.perf_counter() - t)
    shutil.rmtree(out)
print(f"{best:.4f}")
