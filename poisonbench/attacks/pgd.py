"""`pgd`: error-maximising L∞ PGD on each poisoned example against the clean surrogate (reference/attacks.md §2a,
Madry et al.'s settings: MNIST ε 0.3, 40 steps of 0.01, random start; CIFAR-10 ε 8/255, 10 steps of 2/255).

The objective is separable per example and the surrogate is in eval mode, so one backward of the summed loss
over a large batch gives every example's input gradient exactly; the surrogate's parameters are frozen, so no
weight gradients are computed, its BatchNorms are folded into the convolutions and its few-channel stem
convolution computes the input gradient as one GEMM + col2im (`inference_copy`, `poisonbench.input_grad`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..input_grad import inference_copy
from . import ATTACKS
from .base import Attack, AttackContext, Param, batches


def linf_pgd(model, x: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float,
             init: torch.Tensor | None, maximize: bool) -> torch.Tensor:
    """δ after `steps` signed steps on CE(model(x+δ), labels): ascent if `maximize` else descent.

    Each step projects onto the ε-ball and the pixel box [0, 1]. `init` is the starting δ (None: zero).
    """
    delta = torch.zeros_like(x) if init is None else (x + init.clamp(-eps, eps)).clamp(0, 1) - x
    sign = 1.0 if maximize else -1.0
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + (sign * step_size) * grad.sign()
            delta = (x + delta.clamp_(-eps, eps)).clamp_(0, 1) - x
    return delta.detach()


class _SurrogatePGD(Attack):
    uses_surrogate = True
    maximize = True

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        model = inference_copy(ctx.surrogate())
        x_all = ctx.dataset.train.x[ctx.indices]
        y_all = ctx.dataset.train.y[ctx.indices]
        step_size = p["step_size"] if p.get("step_size") is not None else ctx.eps * p.get("step_fraction", 0.2)
        g = torch.Generator().manual_seed(ctx.seed)
        out = torch.empty(x_all.shape, dtype=torch.float32)
        n, size = len(x_all), p["batch_size"]
        done = 0
        for start, stop in batches(n, size):
            x = x_all[start:stop].to(ctx.device).float().div_(255).contiguous(memory_format=torch.channels_last)
            y = self.labels(y_all[start:stop], ctx.dataset.num_classes).to(ctx.device)
            init = None
            if p.get("random_start"):
                init = (torch.rand(x.shape, generator=g) * 2 - 1).mul_(ctx.eps).to(ctx.device)
            out[start:stop] = linf_pgd(model, x, y, ctx.eps, p["steps"], step_size, init, self.maximize).cpu()
            done = stop
            ctx.report(f"{self.name} · {ctx.dataset.name}", done, n)
        return out


@ATTACKS.register("pgd")
class PGD(_SurrogatePGD):
    name = "pgd"
    summary = "error-maximising L∞ PGD against a clean surrogate (Madry settings)"
    PARAMS = (
        Param("steps", int, {"mnist": 40, "cifar10": 10}, "PGD steps.", "MadryLab mnist/cifar10_challenge config",
              minimum=1),
        Param("step_size", float, {"mnist": 0.01, "cifar10": 2 / 255}, "Signed step size (pixel units).",
              "MadryLab mnist/cifar10_challenge config", positive=True),
        Param("random_start", bool, {"mnist": True, "cifar10": True}, "Start from a uniform point of the ε-ball.",
              "MadryLab config random_start"),
        Param("batch_size", int, {"mnist": 1000, "cifar10": 500},
              "Crafting batch (per-example objective: any size gives the same δ up to float rounding).",
              "poisonbench (speed)", minimum=1),
    )
