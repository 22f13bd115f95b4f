"""Generate tests/golden/gkd__beta{0,05,1}.safetensors: a randomized batch
(B=6, T=10, V=48, variable lengths) of student and teacher logits, and what
TRL 1.16's `GKDTrainer.generalized_jsd_loss` (its own function, float64 on
CPU torch) gives for beta in {0, 0.5, 1} at temperature 0.9: the loss
(`batchmean` over the unmasked tokens) and d(loss)/d(student logits) by
torch autograd.

Each file holds `logits`, `teacher_logits` (f32 [B, T, V]), `tokens`,
`mask`, and `expect.loss` [1], `expect.d_logits` [B, T, V] in f64, plus the
`beta` and `temperature` it was computed with. Usage:
`python3 tests/reference/trl_gkd.py` (needs trl==1.16.0 and torch).
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file

from trl.experimental.gkd.gkd_trainer import GKDTrainer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden")
B, T, V = 6, 10, 48
TEMPERATURE = 0.9


def main():
    rng = np.random.default_rng(4242)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    student = rng.normal(0.0, 2.0, size=(B, T, V)).astype(np.float32)
    # A teacher near the student, with a few confident rows.
    teacher = (student + rng.normal(0.0, 1.5, size=(B, T, V))).astype(np.float32)
    teacher[:, :, 3] += 6.0 * (rng.random((B, T)) < 0.3)
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int64)
    labels = torch.as_tensor(np.where(mask > 0, tokens, -100))
    for beta, tag in ((0.0, "0"), (0.5, "05"), (1.0, "1")):
        z = torch.tensor(student, dtype=torch.float64, requires_grad=True)
        zt = torch.tensor(teacher, dtype=torch.float64)
        loss = GKDTrainer.generalized_jsd_loss(
            z, zt, labels=labels, beta=beta, temperature=TEMPERATURE, reduction="batchmean"
        )
        loss.backward()
        out = {
            "logits": student,
            "teacher_logits": teacher,
            "tokens": tokens,
            "mask": mask,
            "expect.loss": np.array([loss.item()], dtype=np.float64),
            "expect.d_logits": z.grad.numpy() * mask[:, :, None],
            "expect.beta": np.array([beta], dtype=np.float64),
            "expect.temperature": np.array([TEMPERATURE], dtype=np.float64),
        }
        path = os.path.join(OUT, f"gkd__beta{tag}.safetensors")
        save_file(out, path, metadata={"reference": "trl 1.16.0 GKDTrainer.generalized_jsd_loss"})
        print(f"{path}: loss {loss.item():.12f}")


if __name__ == "__main__":
    main()
