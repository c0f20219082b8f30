"""`fc`: Feature Collision / Poison Frogs (Shafahi et al., NeurIPS'18), in two implementations:
forest's recipe and the "Just How Toxic" benchmark's (the keys GM, PB: docs/fidelity.md, "Sources and citation keys").

- `--impl forest` (default; what HINT ran, HINT README "Crafting poisoning data"): forest's `poison-frogs` recipe
  (GM:forest/witchcoven/witch_poison_frogs.py), crafted by forest's brew (`forest.Brew`). Loss
  `mean((mean_i φ(aug(x_i+δ_i)) − φ(x_t))²)` with the poisons' mean kept as a 1×D row (`keepdim`), φ the
  surrogate's penultimate features. For one target this is numerically the loss of forest's `bullseye` (`bp`'s
  default): forest's "poison frogs" is mean-feature matching, not a per-poison collision (witch_poison_frogs.py
  and witch_bullseye.py compute the same loss). It is kept as its own objective, as forest keeps it.
- `--impl toxic`: the "Just How Toxic" benchmark's (PB:poison_crafting/craft_poisons_fc.py), batched over the
  poisons (its objective is separable; PB crafts them one after another). Per poison: start from the watermark
  x = 0.3·t + 0.7·b (projected onto the ε-ball around b and [0, 1] here; PB projects only after the first step);
  objective ‖φ(x) − φ(t)‖²; forward step x̂ = x − lr·∇ with lr 0.001 in pixel space; backward step = projection
  onto the ε-ball around b and [0, 1]; if the objective at x exceeds the one at the previous accepted point, lr×0.2
  and the step is rejected; stop when ‖x − x_new‖/‖x‖ < 1e-5 on an accepted step, or after 120 iterations.
  PB compares the objective of the current point, which a rejection leaves in place, so once a poison's objective
  has risen every later iteration rejects again and the poison stays where it is (PB's behaviour, kept); we stop
  such a poison at once, which gives the same result without its idle passes. Per-poison step sizes and masks
  replace PB's loop; tests/test_targeted_attacks.py checks the result against a per-poison sequential run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.params import Param
from .base import AttackContext, project
from .forest import FOREST_DEFAULTS, ForestOrToxic, brew_params, feature_model, impl_param, poison_tensors
from .paper_iterations import settle_iterations, with_iterations_param
from .targeted import common_params

FC_PAPER_ITERATIONS = 1000  # paper §VI-A2 (forest impl under the paper recipe; attacks.paper_iterations)
TOXIC_FC = {"iterations": 120, "lr": 0.001, "watermark": 0.3}  # PB craft_poisons_fc.py defaults
PB_START_OBJECTIVE = 10e8  # PB's `objective_vals = [10e8]`
PB_DECAY = 0.2
PB_TOLERANCE = 1e-5


def poison_frogs_loss(poison_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """Forest's `poison-frogs`: mean of (mean poison feature, kept 1×D − target features)² (= `bp.bullseye_loss`
    for one target)."""
    return (poison_features.mean(0, keepdim=True) - target_features).pow(2).mean()


def feature_collision(model, base: torch.Tensor, target: torch.Tensor, eps: float, step_size: float,
                      iterations: int, watermark: float,
                      progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, dict]:
    """PB's feature collision for every poison at once: (δ = x − base, info). `base` K×C×H×W and `target`
    1×C×H×W in [0, 1]; `model.features` gives the penultimate features."""
    with torch.no_grad():
        target_features = model.features(target)
    x = base + project(base, watermark * target + (1 - watermark) * base - base, eps)
    k = len(base)
    lr = torch.full((k,), step_size, dtype=base.dtype, device=base.device)
    last = torch.full((k,), PB_START_OBJECTIVE, dtype=base.dtype, device=base.device)
    active = torch.ones(k, dtype=torch.bool, device=base.device)
    converged, stalled = torch.zeros_like(active), torch.zeros_like(active)
    ran = passes = 0
    for i in range(iterations):
        rows = active.nonzero().flatten()
        if len(rows) == 0:
            break
        ran, passes = i + 1, passes + len(rows)
        xa = x[rows].requires_grad_(True)
        objective = (model.features(xa) - target_features).pow(2).sum(1)  # separable: one term per poison
        (grad,) = torch.autograd.grad(objective.sum(), xa)
        with torch.no_grad():
            b = base[rows]
            x_hat = xa - lr[rows].view(-1, 1, 1, 1) * grad
            x_new = (b + (x_hat - b).clamp(-eps, eps)).clamp(0, 1)
            objective = objective.detach()
            rejected = objective > last[rows]
            lr[rows[rejected]] *= PB_DECAY
            stalled[rows[rejected]] = True
            active[rows[rejected]] = False  # PB stays at x from now on (see the module docstring)
            keep = ~rejected
            accepted = rows[keep]
            old, new = xa[keep].detach(), x_new[keep]
            change = (old - new).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1)
            stop = change < PB_TOLERANCE
            converged[accepted[stop]] = True
            active[accepted[stop]] = False
            x[accepted] = new
            last[accepted] = objective[keep]
        if progress is not None:
            progress(i + 1, iterations)
    info = {"iterations_run": ran, "poison_iterations": passes, "converged": int(converged.sum()),
            "stalled": int(stalled.sum())}
    return (x - base).detach(), info


# The two objectives `fc` implements, by `--impl`: (the objective's name in records, the report column). A reader
# must never see them under one name: forest's matches the poisons' mean feature to the target's (what HINT ran),
# toxic's pulls each poison onto the target (Shafahi et al. Eq. 1, ART, the Toxic benchmark).
OBJECTIVES = {"forest": ("mean-feature", "fc"), "toxic": ("per-poison", "fc-pp")}


def objective_of(params: dict) -> tuple[str, str]:
    """(objective, report column) of a PoisonSet's params (`OBJECTIVES`): forest's where `impl` is unset (records
    from before the option); an impl this version does not know keeps a column of its own, never pooled."""
    params = params or {}
    impl = params.get("impl")
    if impl is None:  # a record that names the objective only (a `--poison-set` run's inputs), or none at all
        impl = next((i for i, (objective, _) in OBJECTIVES.items() if objective == params.get("objective")), "forest")
    return OBJECTIVES.get(impl, (str(impl), f"fc-{impl}"))


class FC(ForestOrToxic):
    name = "fc"
    summary = "Feature Collision (forest's poison-frogs recipe, or --impl toxic; targeted, clean-label)"
    default_scenario = "transfer"
    IMPL_DEFAULTS = {"forest": FOREST_DEFAULTS, "toxic": TOXIC_FC}
    PARAMS = with_iterations_param((
        *common_params("transfer"),
        impl_param("FC: watermark start, forward-backward splitting per poison"),
        *brew_params(IMPL_DEFAULTS, {"iterations": "PB craft_poisons_fc.py --crafting_iters 120",
                                     "lr": "PB craft_poisons_fc.py --step_size 0.001 (pixel space)"}),
        Param("watermark", float, None, "Toxic FC: start from watermark·target + (1 − watermark)·base. "
              "Unset (off): the --impl's default, toxic 0.3.", "PB craft_poisons_fc.py --watermark_coeff 0.3",
              minimum=0, maximum=1),
    ), FC_PAPER_ITERATIONS, "FC", "120 (PB --crafting_iters 120)")

    def __init__(self, family: str, **params):
        super().__init__(family, **params)
        settle_iterations(self, params, FC_PAPER_ITERATIONS)

    @classmethod
    def objective(cls, params: dict) -> str:
        """`mean-feature` (--impl forest, and records from before `impl` existed) or `per-poison` (--impl toxic)."""
        return objective_of(params)[0]

    @classmethod
    def report_column(cls, params: dict) -> str:
        """`fc` (FC-mean: forest's mean-feature objective, the paper's column) or `fc-pp` (FC-per-poison)."""
        return objective_of(params)[1]

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        x, _, target = poison_tensors(ctx)
        model = feature_model(ctx, x[:1])
        if p["impl"] == "toxic":
            description = f"{self.name} · {ctx.dataset.name}"
            delta, info = feature_collision(model, x, target, ctx.eps, p["lr"], p["iterations"], p["watermark"],
                                            lambda done, total: ctx.report(description, done, total))
            self.training_summary = {"impl": "toxic", "objective": OBJECTIVES["toxic"][0], **info}
            return delta.cpu()
        with torch.no_grad():
            target_features = model.features(target)

        def objective(inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return poison_frogs_loss(model.features(inputs), target_features)

        delta, info = self.brew().run(ctx, self.name, x, objective)
        self.training_summary = {"impl": "forest", "objective": OBJECTIVES["forest"][0], **info}
        return delta
