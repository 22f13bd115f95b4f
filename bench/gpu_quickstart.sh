#!/usr/bin/env bash
# Run on a GPU machine (no Rust there): the quickstart on the CUDA backend and
# on the CPU backend of the same machine, with the binary built here by
#   cargo build --release -p keel-cli --features cuda
# Usage: bench/gpu_quickstart.sh PATH/TO/keel [STEPS]
set -u
KEEL=${1:-./keel}
STEPS=${2:-300}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
# cubecl loads libcuda (driver) and libnvrtc at run time; PyTorch's wheels carry nvrtc.
NVRTC=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for p in glob.glob(os.path.join(d, "nvidia", "*", "lib")):
        print(p)
PY
)
export LD_LIBRARY_PATH="$(echo $NVRTC | tr ' ' ':'):${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
for dev in cuda cpu; do
  rm -rf "$OUT/run-$dev"
  start=$(date +%s.%N)
  KEEL_DEVICE=$dev KEEL_CACHE="$OUT/cache-$dev" timeout 280 "$KEEL" run examples/quickstart.recipe \
      --out "$OUT/run-$dev" --set optimizer.steps="$STEPS" > "$OUT/log-$dev.txt" 2>&1
  echo "$dev exit=$? wall_s=$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/log-$dev.txt" | tee -a "$OUT/summary.txt"
  cp "$OUT/run-$dev/metrics.jsonl" "$OUT/metrics-$dev.jsonl" 2>/dev/null
done
