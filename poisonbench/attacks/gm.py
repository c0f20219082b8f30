"""`gm`: Witches' Brew gradient matching (Geiping et al., ICLR'21), forest's recipe (reference/attacks.md §6;
GM:forest/witchcoven/witch_matching.py `_passenger_loss`, witch_base.py `_initialize_brew`).

The loss is 1 − the cosine similarity of two gradients with respect to all of the surrogate's parameters
(flattened and concatenated): the target's, ∇θ CE(f(x_t), intended class), computed once on the un-augmented
target, and the poison batch's, ∇θ mean CE(f(aug(x+δ)), y), built with `create_graph` so that the loss can be
differentiated with respect to δ (double backprop). The surrogate stays in eval mode (BatchNorm frozen, as forest's
`victim.eval()` during brewing); its parameters are frozen by `ctx.surrogate()`, so the gradients are taken on a
private copy whose parameters require grad. δ is optimised by forest's brew (`forest.Brew`: signed Adam, lr 0.1
in forest's normalised units = 0.1·σ_c pixels, ×0.1 at 3/8, 5/8 and 7/8 of 250 iterations, 8 restarts, randn
init, differentiable augmentation), batched over all poisons of a batch (`pbatch` 512).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import ATTACKS
from .base import AttackContext
from .forest import Brew, brew_params, poison_tensors
from .targeted import TargetedAttack, common_params


def parameter_gradient(model, params, inputs, labels, create_graph: bool) -> list[torch.Tensor]:
    """∇θ mean CE(model(inputs), labels) for the tensors `params`."""
    loss = F.cross_entropy(model(inputs), labels)
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def matching_loss(poison_grad: list[torch.Tensor], target_grad: list[torch.Tensor],
                  target_norm: torch.Tensor) -> torch.Tensor:
    """1 − ⟨g_t, g_p⟩ / (‖g_t‖·‖g_p‖) over all parameter tensors (forest's `similarity` loss)."""
    dot = sum((p * t).sum() for p, t in zip(poison_grad, target_grad, strict=True))
    poison_norm = torch.sqrt(sum(p.pow(2).sum() for p in poison_grad))
    return 1 - dot / (target_norm * poison_norm)


class GradientMatching:
    """The objective for one target: its parameter gradient once, then `loss(inputs, labels)` per poison batch."""

    def __init__(self, surrogate: torch.nn.Module, target: torch.Tensor, intended: int):
        self.model = copy.deepcopy(surrogate).eval().requires_grad_(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        label = torch.tensor([intended], device=target.device)
        self.target_grad = [g.detach() for g in parameter_gradient(self.model, self.params, target, label, False)]
        self.target_norm = torch.sqrt(sum(g.pow(2).sum() for g in self.target_grad))

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grads = parameter_gradient(self.model, self.params, inputs, labels, create_graph=True)
        return matching_loss(grads, self.target_grad, self.target_norm)


@ATTACKS.register("gm")
class GM(TargetedAttack):
    name = "gm"
    summary = "Witches' Brew gradient matching (forest recipe; targeted, clean-label)"
    default_scenario = "scratch"
    PARAMS = (*common_params("scratch"), *brew_params())

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        x, y, target = poison_tensors(ctx)
        matching = GradientMatching(ctx.surrogate(), target, ctx.target.intended_class)

        def objective(inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return matching.loss(inputs, y[start:stop])

        brew = Brew(p["iterations"], p["restarts"], p["lr"], p["pbatch"], p["augment"])
        delta, self.training_summary = brew.run(ctx, self.name, x, objective)
        return delta
