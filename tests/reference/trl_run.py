"""A real run of an exported Keel loss in TRL: called by `tests/export.rs`
as `trl_run.py PACKAGE_DIR PACKAGE OUT.safetensors`.

Builds a tiny random Llama (transformers' `LlamaConfig`) and a character
tokenizer (the `tokenizers` library) in memory, nothing downloaded, and
trains it on the CPU for 2 steps with the package's `KeelGRPOTrainer` on
arithmetic prompts, rewarding completions that contain the answer. Writes
what the first call of `_compute_loss` saw (Keel's inputs) and returned,
and the rewards and groups the credit was computed from, for the Rust test
to compare with `keel loss`; prints one JSON line with the losses of the
steps.
"""

import importlib
import json
import sys

import torch


def tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list("0123456789+= ")
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_llama(where):
    """A tiny random Llama (2 layers, d = 32, GQA 4/2 heads) and the character
    tokenizer, saved to WHERE/tiny-llama (TRL loads the model, and its
    reference model, by path, as a user's checkpoint); (tokenizer, path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
    )
    path = f"{where}/tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok, path


def main(pkg_dir, pkg_name, out_path):
    from datasets import Dataset
    from safetensors.torch import save_file
    from trl import GRPOConfig

    torch.manual_seed(0)
    sys.path.insert(0, pkg_dir)
    pkg = importlib.import_module(pkg_name)
    tok, path = tiny_llama(pkg_dir)
    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    data = Dataset.from_dict({"prompt": prompts, "answer": [str(int(p[0]) + int(p[2])) for p in prompts]})

    def reward(completions, answer, **kwargs):
        return [float(str(a) in c) + 0.1 * len(c) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=f"{pkg_dir}/trl-out",
        num_generations=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        beta=getattr(pkg.trainer, "READS_REF", False) and 1e-3 or 0.0,
        seed=0,
        temperature=1.0,
    )
    seen = []

    class Recorded(pkg.KeelGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if not seen:
                per_func = self._keel_rewards
                r = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
                seen.append({"reward": r.detach().clone(), "advantages_given": out["advantages"].detach().clone()})
            return out

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            inp, value = self.keel_last
            if len(seen) == 1:
                rec = {k: v.detach().to(torch.float64).contiguous() for k, v in inp.items()}
                rec["expect.loss"] = value.to(torch.float64).reshape(())
                # The gradient TRL's backward sends into the log-probs.
                (g,) = torch.autograd.grad(loss, inp["logp"], retain_graph=True)
                accum = self.current_gradient_accumulation_steps
                rec["expect.d_logp"] = (g * accum * inp["mask"]).detach().to(torch.float64).contiguous()
                seen.append(rec)
            return loss

    trainer = Recorded(model=path, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    first, rec = seen[0], seen[1]
    b = rec["mask"].shape[0]
    rec["reward"] = first["reward"][:b].to(torch.float64).contiguous()
    rec["group"] = (torch.arange(b) // 4).to(torch.int64)
    rec["expect.advantages"] = first["advantages_given"][:b].to(torch.float64).contiguous()
    save_file(rec, out_path)
    print(json.dumps({"steps": len(losses), "losses": losses, "global_step": trainer.state.global_step}))


if __name__ == "__main__":
    main(*sys.argv[1:])
