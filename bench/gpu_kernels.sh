#!/usr/bin/env bash
# Device-kernel checks and benchmarks on a GPU machine (no Rust there):
# parity of the CUDA kernels with the interpreter, GRPO's token-level loss at
# 16M positions and the logits kernel at V = 151,936 x 32k tokens (f32; bf16
# at 8k tokens), each beside
# PyTorch eager on the same GPU (bench/torch_eager.py). Build the binary here
# as bench/gpu_quickstart.sh says (target/gpu/keel.xz) and carry target/gpu.
# Results land in $OUT (default ./gpu-out). The steps' timeouts add up to 575 s
# (one device command may run 600 s). Usage: bench/gpu_kernels.sh
set -u
. "$(dirname "$0")/gpu_env.sh"
step() {
    local name=$1 t=$2; shift 2
    local start=$(date +%s.%N)
    timeout "$t" "$@" > "$OUT/$name.txt" 2>&1
    local code=$?
    echo "$name exit=$code wall_s=$(python3 -c "import time;print(round(time.time()-$start,1))")" | tee -a "$OUT/summary.txt"
    tail -12 "$OUT/$name.txt"
}
step parity 85 "$KEEL" bench parity --seqs 256
step grpo 120 "$KEEL" bench loss stdlib/grpo.recipe --tokens 16777216 --seq-len 1024 --vocab 0 --backend device --iters 10 --json
step grpo_small 40 "$KEEL" bench loss stdlib/grpo.recipe --tokens 1048576 --seq-len 1024 --vocab 0 --backend all --iters 3
step logits 120 "$KEEL" bench logits --device --tokens 32768 --vocab 151936 --iters 5
step logits_bf16 40 "$KEEL" bench logits --device --bf16 --tokens 8192 --vocab 151936 --iters 5
step eager 170 python3 bench/torch_eager.py --check "$KEEL"
