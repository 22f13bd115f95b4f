"""verl 0.9.1's critic settings under an exported `overrides.txt`: called by
`tests/export.rs` as `verl_critic_config.py OVERRIDES.txt`.

Composes verl's own `ppo_trainer` config with Hydra and the file's
overrides (as `python -m verl.trainer.main_ppo` does), builds the critic's
config dataclass, and prints one JSON object: the advantage estimator,
gamma and lam, whether verl builds a critic (`need_critic`), and the
critic's clip range, aggregation, learning rate, weight decay, gradient
clip and warm-up.
"""

import json
import sys

from verl_schedule import compose_config


def main(path):
    from verl.trainer.ppo.utils import need_critic

    cfg = compose_config(path)
    c = cfg.critic
    print(json.dumps({
        "adv_estimator": str(cfg.algorithm.adv_estimator),
        "gamma": float(cfg.algorithm.gamma),
        "lam": float(cfg.algorithm.lam),
        "need_critic": bool(need_critic(cfg)),
        "cliprange_value": float(c.cliprange_value),
        "loss_agg_mode": str(c.loss_agg_mode),
        "lr": float(c.optim.lr),
        "weight_decay": float(c.optim.weight_decay),
        "grad_clip": float(c.grad_clip),
        "critic_warmup": int(cfg.trainer.critic_warmup),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
