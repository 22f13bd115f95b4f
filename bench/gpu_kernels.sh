#!/usr/bin/env bash
# Device-kernel checks and benchmarks on a GPU machine (no Rust there):
# parity of the CUDA kernels with the interpreter, GRPO's token-level loss at
# 16M positions and the logits kernel at V = 151,936 x 32k tokens (f32; bf16
# at 8k tokens), each beside PyTorch eager on the same GPU
# (bench/torch_eager.py, which first checks that its math equals `keel loss`
# on a small batch). Build the binary here as bench/gpu_quickstart.sh says
# (target/gpu/keel.xz) and carry target/gpu. Results land in $OUT (default
# ./gpu-out). The steps' timeouts add up to 575 s (one device command may run
# 600 s).
#
# DRY=1 runs every step at small sizes, torch on the CPU, with
# KEEL (default: the carried binary) and PYTHON (default python3): a check of
# the script itself on a machine without a GPU, e.g.
#   DRY=1 KEEL=target/release/keel PYTHON=/tmp/tv/bin/python bench/gpu_kernels.sh
# Usage: bench/gpu_kernels.sh
set -u
PY=${PYTHON:-python3}
if [ "${DRY:-0}" = 1 ]; then
    OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    KEEL=${KEEL:-target/release/keel}
    SEQS=8 TOK=65536 SMALL=16384 LT=128 BT=64 DEV=cpu
else
    . "$(dirname "$0")/gpu_env.sh"
    SEQS=64 TOK=16777216 SMALL=1048576 LT=32768 BT=8192 DEV=cuda
fi
step() {
    local name=$1 t=$2; shift 2
    local start=$(date +%s.%N)
    timeout "$t" "$@" > "$OUT/$name.txt" 2>&1
    local code=$?
    echo "$name exit=$code wall_s=$($PY -c "import time;print(round(time.time()-$start,1))")" | tee -a "$OUT/summary.txt"
    tail -12 "$OUT/$name.txt"
}
step parity 85 "$KEEL" bench parity --seqs $SEQS
step grpo 120 "$KEEL" bench loss stdlib/grpo.recipe --tokens $TOK --seq-len 1024 --vocab 0 --backend device --iters 10 --json
step grpo_small 40 "$KEEL" bench loss stdlib/grpo.recipe --tokens $SMALL --seq-len 1024 --vocab 0 --backend all --iters 3
step logits 120 "$KEEL" bench logits --device --tokens $LT --vocab 151936 --iters 5
step logits_bf16 40 "$KEEL" bench logits --device --bf16 --tokens $BT --vocab 151936 --iters 5
step eager 170 $PY bench/torch_eager.py --check "$KEEL" --device $DEV --tokens $TOK \
    --logit-tokens $LT --bf16-tokens $BT
