"""`durp`: Tao et al.'s P5 class-wise universal random perturbation (DA:poison.py `poison_p5`): one δ_c drawn
i.i.d. uniform on [−ε, ε] per class, added to every poisoned example of class c, clipped to [0, 1]. No model.
Drawn on the CPU from an explicit generator seeded with the attack seed (the official code draws on CUDA).
"""

from __future__ import annotations

import torch

from .base import Attack, AttackContext


class DURP(Attack):
    name = "durp"
    in_paper_mix = True
    summary = "Tao et al. P5: one uniform [-ε, ε] perturbation per class"
    PARAMS = ()

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        g = torch.Generator().manual_seed(ctx.seed)
        c, h, w = ctx.dataset.shape
        per_class = (torch.rand((ctx.dataset.num_classes, c, h, w), generator=g) - 0.5).mul_(2 * ctx.eps)
        return per_class[ctx.dataset.train.y[ctx.indices]]
