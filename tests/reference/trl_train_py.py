"""The exported `train.py` of a TRL package, run as a user runs it: called by
`tests/export.rs` as `trl_train_py.py PACKAGE_DIR`.

Builds the tiny random Llama and character tokenizer of `trl_run.py`, saves
them with a JSONL of arithmetic prompts, and runs `train.py`'s own `main`
with the flags `MODEL DATA --output-dir DIR --max-steps 2` on the CPU
(every other setting is the recipe's default of its flags). The trainer
class is wrapped to record, at each optimizer step, the learning rate the
step used; the GRPOConfig it was given is recorded once. Prints one JSON
line: the config's fields, the learning rates, the global step, and the
reward of a few completions under `train.reward` (the exact final answer).
"""

import importlib
import json
import os
import sys

import torch


def main(pkg_dir):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    sys.path.insert(0, pkg_dir)
    from trl_run import tiny_llama

    torch.manual_seed(0)
    _, path = tiny_llama(pkg_dir)
    data = os.path.join(pkg_dir, "data.jsonl")
    with open(data, "w") as f:
        for a in range(4):
            for b in range(4):
                f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")

    train = importlib.import_module("train")
    seen = {"lr": []}

    class Recorded(train.KeelGRPOTrainer):
        def training_step(self, *args, **kwargs):
            if "args" not in seen:
                seen["args"] = self.args.to_dict()
            seen["lr"].append(self.optimizer.param_groups[0]["lr"])
            return super().training_step(*args, **kwargs)

    train.KeelGRPOTrainer = Recorded
    out = os.path.join(pkg_dir, "out")
    train.main([path, data, "--output-dir", out, "--max-steps", "2", "--cpu"])
    keys = [
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "max_grad_norm",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "steps_per_generation",
        "num_iterations",
        "temperature",
        "top_p",
        "max_completion_length",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "optim",
        "use_cpu",
        "bf16",
    ]
    args = {k: seen["args"][k] for k in keys}
    completions = ["1+1=2|2", "answer: 14", "114", "the answer is 14.", "\\boxed{14} or 15"]
    rewards = train.reward(completions, ["2", "14", "14", "14", "14"])
    print(json.dumps({"args": args, "lr": seen["lr"], "rewards": rewards}))


if __name__ == "__main__":
    main(*sys.argv[1:])
