#!/usr/bin/env bash
# The quickstart on a GPU machine (no Rust there), CUDA backend then the CPU
# backend of the same machine. The binary is built here with
#   scripts/tracel-llvm-shim.sh
#   CARGO_TARGET_DIR=target/cuda cargo build --release -p keel-cli --features cuda
#   strip -o /tmp/keel target/cuda/release/keel && xz -c /tmp/keel > target/gpu/keel.xz
# and carried to the machine. Results land in $OUT (default ./gpu-out).
# Usage: bench/gpu_quickstart.sh [CUDA_TIMEOUT_S] [CPU_TIMEOUT_S]
set -u
CUDA_T=${1:-300}
CPU_T=${2:-120}
. "$(dirname "$0")/gpu_env.sh"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/card.txt"
run() {
    local dev=$1 t=$2
    rm -rf "$OUT/run-$dev"
    local start=$(date +%s.%N)
    KEEL_DEVICE=$dev KEEL_CACHE="$OUT/cache-$dev" timeout "$t" "$KEEL" run examples/quickstart.recipe \
        --out "$OUT/run-$dev" > "$OUT/log-$dev.txt" 2>&1
    local code=$?
    echo "$dev exit=$code wall_s=$(python3 -c "import time;print(round(time.time()-$start,1))")" | tee -a "$OUT/summary.txt"
    tail -4 "$OUT/log-$dev.txt" | tee -a "$OUT/summary.txt"
    cp "$OUT/run-$dev/metrics.jsonl" "$OUT/metrics-$dev.jsonl" 2>/dev/null
    rm -rf "$OUT/run-$dev" "$OUT/cache-$dev"
}
run cuda "$CUDA_T"
run cpu "$CPU_T"
