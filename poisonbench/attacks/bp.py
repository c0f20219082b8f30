"""`bp`: Bullseye Polytope (Aghakhani et al., EuroS&P'21), in two implementations: forest's recipe and the "Just How
Toxic" benchmark's (the keys GM, PB, BPo: docs/fidelity.md, "Sources and citation keys").

- `--impl forest` (default; what HINT ran, HINT README "Crafting poisoning data"): forest's `bullseye` recipe
  (GM:forest/witchcoven/witch_bullseye.py), crafted by forest's brew (`forest.Brew`: signed Adam, 250 iterations,
  8 restarts, augmentation). Loss `mean_j((mean_i φ(aug(x_i+δ_i)) − φ(x_t))_j²)`, φ the surrogate's penultimate
  features: the squared distance of the poison batch's mean feature to the target's, averaged over feature
  dimensions, without ‖φ(t)‖ normalisation.
- `--impl toxic`: the "Just How Toxic" benchmark's (PB:poison_crafting/craft_poisons_bp.py, Bullseye/trainer.py
  `loss_from_center`, mode "mean"): loss ‖mean_i φ(x_i+δ_i) − φ(x_t)‖₂ / ‖φ(x_t)‖₂ (the mean is the polytope's
  equal convex coefficients), Adam (β 0.9, 0.999) with lr 0.04 in PB's normalised space, 1,200 iterations, δ = 0
  at the start (the base images), no augmentation, projection onto the ε-ball and [0, 1] after every step. Adam's
  direction is scale-free but for its ε, so it is fed the normalised-space gradient σ_c·∇δ and δ steps lr·σ_c
  pixels: PB's iteration exactly, in pixel units.
"""

from __future__ import annotations

import torch

from .base import AttackContext, project
from .forest import (
    FOREST_DEFAULTS,
    Adam,
    ForestOrToxic,
    brew_params,
    channel_std,
    feature_model,
    impl_param,
    poison_tensors,
)
from .paper_iterations import settle_iterations, with_iterations_param
from .targeted import common_params

BP_PAPER_ITERATIONS = 4000  # paper §VI-A2 (forest impl under the paper recipe; attacks.paper_iterations)
TOXIC_BP = {"iterations": 1200, "lr": 0.04}  # PB craft_poisons_bp.py --crafting_iters 1200, --lr 0.04 (Adam)


def bullseye_loss(poison_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Forest's `bullseye`: mean over feature dimensions of (mean poison feature − target feature)²."""
    return (poison_features.mean(0) - target_features[0]).pow(2).mean()


def toxic_bp_loss(poison_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """PB's BP (mode "mean"): ‖mean poison feature − target feature‖₂ / ‖target feature‖₂."""
    return (poison_features.mean(0) - target_features[0]).norm() / target_features[0].norm()


def toxic_bp(ctx: AttackContext, model, x: torch.Tensor, target_features: torch.Tensor, iterations: int,
             lr: float, description: str) -> tuple[torch.Tensor, float]:
    """PB's BP: (δ after `iterations` Adam steps from δ = 0, each projected, on the CPU; the last loss)."""
    sigma = channel_std(ctx.dataset, x)
    delta = torch.zeros_like(x)
    adam = Adam(delta)
    loss = float("nan")
    for i in range(iterations):
        rows = delta.detach().requires_grad_(True)
        batch_loss = toxic_bp_loss(model.features(x + rows), target_features)
        (grad,) = torch.autograd.grad(batch_loss, rows)
        loss = float(batch_loss.detach())
        with torch.no_grad():
            delta = project(x, delta - adam.direction(grad * sigma).mul_(sigma * lr), ctx.eps)
        ctx.report(description, i + 1, iterations)
    return delta.cpu(), loss


class BP(ForestOrToxic):
    name = "bp"
    summary = "Bullseye Polytope (forest's bullseye recipe, or --impl toxic; targeted, clean-label)"
    default_scenario = "transfer"
    IMPL_DEFAULTS = {"forest": FOREST_DEFAULTS, "toxic": TOXIC_BP}
    PARAMS = with_iterations_param((
        *common_params("transfer"),
        impl_param("BP: Adam 0.04, 1,200 iterations, normalised feature distance"),
        *brew_params(IMPL_DEFAULTS, {"iterations": "PB craft_poisons_bp.py --crafting_iters 1200",
                                     "lr": "PB craft_poisons_bp.py --lr 0.04 (Adam, normalised space)"}),
    ), BP_PAPER_ITERATIONS, "BP", "1200 (PB --crafting_iters 1200)")

    def __init__(self, family: str, **params):
        super().__init__(family, **params)
        settle_iterations(self, params, BP_PAPER_ITERATIONS)

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        x, _, target = poison_tensors(ctx)
        model = feature_model(ctx, x[:1])
        with torch.no_grad():
            target_features = model.features(target)
        if p["impl"] == "toxic":
            delta, loss = toxic_bp(ctx, model, x, target_features, p["iterations"], p["lr"],
                                   f"{self.name} · {ctx.dataset.name}")
            self.training_summary = {"impl": "toxic", "final_loss": loss}
            return delta

        def objective(inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return bullseye_loss(model.features(inputs), target_features)

        delta, info = self.brew().run(ctx, self.name, x, objective)
        self.training_summary = {"impl": "forest", **info}
        return delta

