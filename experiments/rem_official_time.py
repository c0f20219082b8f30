"""Time a prefix of REM's official schedule on mnist-5k and extrapolate (issue 67; experiments/availability.md).

Runs `rem.perturb` with the official inner steps and draws (`--schedule official`, the default), stops after N
training steps, and prints seconds per step and the estimate for 5000 steps plus the final noise (one batch of
final noise is about one training step's cost). Run from the repository root:

    nice -n 5 python experiments/rem_official_time.py 2
"""

import json
import sys
import time

import torch

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext
from poisonbench.data import load_dataset


class Stop(Exception):
    pass


def main(steps: int) -> dict:
    data = load_dataset("mnist-5k")
    attack = ATTACKS.get("rem")("mnist")
    ctx = AttackContext(data, attack.choose_rows(data, 1.0, 0), 8 / 255, 1.0, 0, torch.device("cpu"))
    stamps = []

    def progress(description, done, total):
        stamps.append(time.perf_counter())
        if done == steps:
            raise Stop

    ctx.progress = progress
    start = time.perf_counter()
    try:
        attack.perturb(ctx)
    except Stop:
        pass
    per_step = (stamps[-1] - start) / steps
    batches = -(-len(ctx.indices) // attack.params["batch_size"])
    estimate = per_step * (attack.params["train_steps"] + batches)
    return {"threads": torch.get_num_threads(), "steps_timed": steps, "s_per_step": round(per_step, 1),
            "final_noise_batches": batches, "estimate_s": round(estimate), "estimate_h": round(estimate / 3600, 1),
            "schedule": {k: attack.params[k] for k in ("train_steps", "lr_decay_every", "u_steps", "a_steps",
                                                        "samples")}}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)))
