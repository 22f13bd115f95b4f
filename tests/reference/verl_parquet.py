"""Write tests/fixtures/verl/arith_train.parquet: a few rows in the layout
verl's `examples/data_preprocess/gsm8k.py` writes (a `datasets.Dataset` of
`data_source`, `prompt` as a list of `{role, content}` messages, `ability`,
`reward_model` as a struct of `style` and `ground_truth`, `extra_info` as a
struct of `split`, `index`, `answer`, `question`), saved with
`Dataset.to_parquet` (pyarrow, snappy) exactly as that script saves it.
The questions are short sums so Keel's character tokenizer reads them.
Also writes `missing_column.parquet` (no `reward_model`) for the error test.

Usage: python3 tests/reference/verl_parquet.py (needs `datasets`).
"""

import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "verl")


def row(idx, a, b):
    question = f"{a}+{b}="
    answer = str(a + b)
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": "train", "index": idx, "answer": f"#### {answer}", "question": question},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = [row(i, 3 + i, 11 + 2 * i) for i in range(12)]
    datasets.Dataset.from_list(rows).to_parquet(os.path.join(OUT, "arith_train.parquet"))
    broken = [{k: v for k, v in r.items() if k != "reward_model"} for r in rows[:3]]
    datasets.Dataset.from_list(broken).to_parquet(os.path.join(OUT, "missing_column.parquet"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
