"""verl 0.9.1's learning rate at every step under an exported `overrides.txt`:
called by `tests/export.rs` as `verl_schedule.py OVERRIDES.txt...`.

For each file, composes verl's own `ppo_trainer` config with Hydra and the
file's overrides (as `python -m verl.trainer.main_ppo` does), injects
`trainer.total_training_steps` into the actor's optimizer as verl's
`RayPPOTrainer` does, builds the optimizer config dataclass and the
scheduler with verl's FSDP engine's own `_build_lr_scheduler`, and steps it
as the actor does (one scheduler step per training step). Prints one JSON
line per file: the optimizer's class name, betas, clip, weight decay and
the learning rate of steps 1..T.
"""

import json
import os
import sys
import types

import torch


def compose_config(path):
    """verl's `ppo_trainer` config composed with Hydra and the overrides of
    `path`, as `python -m verl.trainer.main_ppo` composes it."""
    from hydra import compose, initialize_config_dir

    import verl

    overrides = [
        line.strip()
        for line in open(path)
        if line.strip() and not line.startswith("#") and not line.startswith("+ray_kwargs")
    ]
    # The registered names of the package are plain strings to Hydra.
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def schedule(path):
    from omegaconf import open_dict

    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    cfg = compose_config(path)
    total = cfg.trainer.total_training_steps
    with open_dict(cfg):
        cfg.actor_rollout_ref.actor.optim.total_training_steps = total
    optim = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.optim)
    weight = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([weight], lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas))
    engine = types.SimpleNamespace(optimizer_config=optim, rank=1)
    sched = FSDPEngine._build_lr_scheduler(engine, opt)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {
        "optimizer": optim.optimizer,
        "betas": list(optim.betas),
        "clip_grad": optim.clip_grad,
        "weight_decay": optim.weight_decay,
        "total": total,
        "lr": lrs,
        "train_batch_size": cfg.data.train_batch_size,
        "ppo_mini_batch_size": cfg.actor_rollout_ref.actor.ppo_mini_batch_size,
        "ppo_micro_batch_size_per_gpu": cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu,
        "n": cfg.actor_rollout_ref.rollout.n,
    }


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(schedule(p)))
