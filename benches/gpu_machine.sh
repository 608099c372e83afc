#!/usr/bin/env bash
# The GPU checks and figures of BENCHMARKS.md, for a GPU machine that has no
# Rust toolchain (and no network): build and pack the binaries here, carry
# the checkout with .gpu/ (and, where the machine lacks the Vulkan loader,
# Debian's libvulkan1 .deb in .gl/) to the GPU machine, run them there.
#
#   bash benches/gpu_machine.sh pack        # here: .gpu/bin.tar.xz
#   bash benches/gpu_machine.sh run [OUT]   # there: tests, verify, scans, kernel benches
#
# The run needs python3 with numpy and safetensors (the collections and the
# numpy baseline). Everything it prints is also written to OUT/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
    cargo build --release --quiet
    cargo test --no-run --quiet 2>/dev/null
    cargo bench --no-run --quiet 2>/dev/null
    rm -rf .gpu/bin && mkdir -p .gpu/bin
    newest() { ls -t "$@" | grep -v '\.d$' | head -1; }
    for t in engines malformed strengths cli; do
        strip -o ".gpu/bin/test-$t" "$(newest target/debug/deps/$t-*)"
    done
    strip -o .gpu/bin/cntscope-debug target/debug/cntscope
    strip -o .gpu/bin/cntscope target/release/cntscope
    strip -o .gpu/bin/bench-strengths "$(newest target/release/deps/strengths-*)"
    pwd > .gpu/bin/checkout  # where the test binaries look for the crate
    (cd .gpu && tar cJf bin.tar.xz bin && rm -rf bin)
    ls -l .gpu/bin.tar.xz
}

run() {
    local out=${1:-/tmp/gpu-run}
    mkdir -p "$out"
    exec > >(tee "$out/log.txt") 2>&1
    if ! ldconfig -p | grep -q libvulkan; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    (cd .gpu && tar xJf bin.tar.xz)
    local b=.gpu/bin
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    echo "$(nproc) cores"
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
    if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
        export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    fi
    # The test binaries find the crate (shaders, examples, the CLI binary)
    # at the checkout they were built in.
    local built
    built=$(cat $b/checkout)
    [ -e "$built" ] || { mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; }
    mkdir -p target/debug && cp $b/cntscope-debug target/debug/cntscope
    export CNTSCOPE_REQUIRE_GPU=1
    echo "=== tests (GPU required)"
    for t in engines malformed strengths cli; do
        (cd "$built" && timeout 300 "$PWD/$b/test-$t" 2>&1 | grep -E -A4 "test result|FAILED|panicked")
    done
    echo "=== verify: the GPU against the CPU reference"
    $b/cntscope verify examples/zoo/mlp -v 2>&1 | tail -1
    $b/cntscope verify examples/zoo/cnn --spec examples/zoo/cnn.toml -v 2>&1 | tail -1
    echo "=== GPU start-up: verify of one small checkpoint"
    for _ in 1 2 3; do (time $b/cntscope verify examples/zoo/mlp/mlp-he-s0-e01.safetensors >/dev/null 2>&1) 2>&1 | grep real; done
    echo "=== scans, best of 5, page cache warm"
    local d=/tmp/cntscope-bench
    python3 benches/make_collections.py $d >/dev/null
    best() { python3 -c '
import subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[2:]
ts = []
for _ in range(n):
    t = time.perf_counter(); subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ts.append(time.perf_counter() - t)
print(f"{min(ts):.3f} s")' "$@"; }
    for name in small large; do
        local p=$d/$name
        cat $p/*.safetensors >/dev/null
        echo "$name: read floor (cat) $(best 5 sh -c "cat $p/*.safetensors >/dev/null")"
        echo "$name: numpy $(best 3 python3 benches/numpy_scan.py $d/numpy-$name.csv $p)"
        for dev in cpu gpu; do
            echo "$name: cntscope --device $dev $(best 5 sh -c "$b/cntscope scan $p --device $dev -o \$(mktemp -d)")"
        done
    done
    echo "=== kernel benches"
    timeout 400 $b/bench-strengths --bench 2>&1 | grep -E "^(layer|node|collection)|time:|adapter"
}

case "${1:-}" in
    pack) pack ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benches/gpu_machine.sh pack | run [OUT]" >&2; exit 2 ;;
esac
