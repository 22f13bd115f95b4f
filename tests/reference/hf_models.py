"""Tiny random Hugging Face checkpoints and their golden logits, for the
runtime's checkpoint loader (`runtime/model/src/hf.rs`, tested by
its unit tests).

A developer's one-time step, not CI's: the checkpoints and goldens are
committed under `tests/fixtures/hf/`, so the Rust tests need no Python.

    .venv/bin/python tests/reference/hf_models.py tests/fixtures/hf

Each fixture is a directory written by transformers' own `save_pretrained`
(config.json, model.safetensors, generation_config.json) plus
`golden.safetensors`: `tokens` [2, 16] (i64) and `logits` [2, 16, V] (f32),
computed by `AutoModelForCausalLM.from_pretrained(dir, dtype=float32)` on
the saved files, so that what is compared is what a user's loader sees.
(Casting a live module to bf16 and back would round rotary `inv_freq`;
loading from disk does not.)

The families and the features each one exercises:
  llama          untied head, GQA 4/2, rope_theta 500000, rms_norm_eps 1e-5
  llama_tied     tied embeddings, rope_scaling type llama3, one kv head
  qwen2          q/k/v biases, GQA 4/2
  qwen3          per-head q/k RMSNorm, head_dim 16 with hidden 32 and 4 heads
  qwen3_bf16     the qwen3 shape stored as bfloat16
  llama_v4       the llama shape with a transformers 4.x config.json
                 (`rope_theta`, `rope_scaling`, `torch_dtype`)
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
TOKENS = [
    [1, 17, 33, 5, 90, 62, 8, 8, 41, 77, 2, 54, 30, 19, 88, 3],
    [1, 4, 4, 4, 95, 0, 12, 71, 66, 23, 9, 50, 47, 81, 36, 11],
]


def common(**kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
    )
    base.update(kw)
    return base


def fixtures():
    yield "llama", LlamaConfig(
        **common(rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    ), torch.float32
    yield "llama_tied", LlamaConfig(
        **common(
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    ), torch.float32
    yield "qwen2", Qwen2Config(
        **common(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 use_sliding_window=False)
    ), torch.float32
    q3 = dict(head_dim=16, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
              use_sliding_window=False)
    yield "qwen3", Qwen3Config(**common(**q3)), torch.float32
    yield "qwen3_bf16", Qwen3Config(**common(**q3)), torch.bfloat16
    yield "llama_v4", LlamaConfig(
        **common(rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    ), torch.float32


def to_v4(path):
    """Rewrite config.json in the form transformers 4.x and the Hub write."""
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rp.get("rope_theta", 10000.0)
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    cfg["rope_scaling"] = None if scaling.get("rope_type") in (None, "default") else scaling
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.46.0"
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def main(out):
    torch.manual_seed(0)
    for name, cfg, dtype in fixtures():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        model = AutoModelForCausalLM.from_config(cfg)
        # Random norm gains and biases too, so that a loader that skips them fails.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif pname.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
        model = model.to(dtype)
        model.save_pretrained(d, safe_serialization=True)
        if name == "llama_v4":
            to_v4(os.path.join(d, "config.json"))
        loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        loaded.eval()
        tokens = torch.tensor(TOKENS, dtype=torch.long)
        with torch.no_grad():
            logits = loaded(input_ids=tokens).logits.float().contiguous()
        save_file(
            {"tokens": tokens.contiguous(), "logits": logits},
            os.path.join(d, "golden.safetensors"),
        )
        print(name, tuple(logits.shape), float(logits.abs().max()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf")
