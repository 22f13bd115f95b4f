"""A verl reward function as a Keel judge.

    keel run R --judge 'python3 python/keel_verl_judge.py path/to/reward.py [--name compute_score]'

Loads the function as verl's `custom_reward_function.path` and `.name` do
(the file is imported as a module, the function looked up by name) and
answers Keel's judge protocol (docs/runtime.md): for each JSON request
line it calls `compute_score(data_source=..., solution_str=response,
ground_truth=answer, extra_info=...)` and writes the score, a float or the
`score` of a dict, as one line. An exception ends the program with its
traceback on stderr, which Keel quotes (E0711).
"""

import argparse
import importlib.util
import json
import sys


def load(path, name):
    spec = importlib.util.spec_from_file_location("keel_verl_reward", path)
    if spec is None or spec.loader is None:
        sys.exit(f"keel_verl_judge: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        sys.exit(f"keel_verl_judge: {path} has no function `{name}`")
    return getattr(module, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reward_file")
    ap.add_argument("--name", default="compute_score")
    args = ap.parse_args()
    compute_score = load(args.reward_file, args.name)
    for line in sys.stdin:
        request = json.loads(line)
        out = compute_score(
            data_source=request.get("data_source"),
            solution_str=request["response"],
            ground_truth=request.get("answer"),
            extra_info=request.get("extra_info"),
        )
        score = out["score"] if isinstance(out, dict) else out
        print(json.dumps({"score": float(score)}), flush=True)


if __name__ == "__main__":
    main()
