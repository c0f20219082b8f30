"""`dap`: Tao et al.'s P1 delusive adversarial perturbation (DA:poison.py `poison_p1p2`): move each example toward
the label (y + 1) mod C with 100 signed steps of ε/5 against the clean surrogate, no random start; the stored
label stays y. L∞ as in HINT (ε 0.3 MNIST, 8/255 CIFAR-10).
"""

from __future__ import annotations

import torch

from ..core.params import MAX_BATCH_SIZE, MAX_STEPS, Param
from .pgd import _SurrogatePGD


class DAP(_SurrogatePGD):
    name = "dap"
    in_paper_mix = True
    summary = "Tao et al. P1: targeted PGD toward (y+1) mod C, labels kept"
    maximize = False
    PARAMS = (
        Param("steps", int, {"mnist": 100, "cifar10": 100}, "PGD steps.", "DA poison.py: num_steps = 100",
              minimum=1, maximum=MAX_STEPS),
        Param("step_fraction", float, {"mnist": 0.2, "cifar10": 0.2}, "Step size as a fraction of ε.",
              "DA poison.py: step_size = eps / 5", positive=True),
        Param("random_start", bool, {"mnist": False, "cifar10": False}, "Start from a uniform point of the ε-ball.",
              "DA poison.py: starts at x"),
        Param("batch_size", int, {"mnist": 1000, "cifar10": 500},
              "Crafting batch (DA uses 256; per-example objective, so the size does not change δ).",
              "poisonbench (speed)", minimum=1, maximum=MAX_BATCH_SIZE),
    )

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return (y + 1) % num_classes
