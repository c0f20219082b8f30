"""`gm`: Witches' Brew gradient matching (Geiping et al., ICLR'21), forest's recipe
(GM:forest/witchcoven/witch_matching.py `_passenger_loss`, witch_base.py `_initialize_brew`).

The loss is 1 − the cosine similarity of two gradients with respect to all of the surrogate's parameters
(flattened and concatenated): the target's, ∇θ CE(f(x_t), intended class), computed once on the un-augmented
target, and the poison batch's, ∇θ mean CE(f(aug(x+δ)), y), built with `create_graph` so that the loss can be
differentiated with respect to δ (double backprop). The surrogate stays in eval mode (BatchNorm frozen, as forest's
`victim.eval()` during brewing); its parameters are frozen by `ctx.surrogate()`, so the gradients are taken on a
private copy whose parameters require grad. δ is optimised by forest's brew (`forest.Brew`: signed Adam, lr 0.1
in forest's normalised units = 0.1·σ_c pixels with forest's σ, ×0.1 at 3/8, 5/8 and 7/8 of 250 iterations, 8
restarts, randn init, differentiable augmentation), batched over all poisons of a batch (`pbatch` 512).

Ensembles (`ensemble N`, forest's `--ensemble`; scratch only): N surrogates trained alike with their own attacker
seeds (member 0 is the single surrogate, poisonbench.attacks.surrogate). Forest evaluates the closure on each model
in turn, each `passenger_loss.backward()` adding its gradient to δ's (GM:forest/victims/victim_ensemble.py
`compute`; witch_matching.py `_define_objective`), reports the mean of the N losses, and divides the step by N
(witch_base.py `_initialize_brew`, rule 2: `tau0 = tau·(pbatch/512)/ensemble`). Ours: the objective is the mean of
the N matching losses (each against its own model's target gradient), whose gradient has the sign of forest's sum,
so signed Adam takes the same step; the brew's lr is `lr/N`. The N models are evaluated in a loop over the members
(each on the whole poison batch, one graph, one backward): N is small (forest's runs use 1–8) and the double
backprop through BatchNorm'd ConvNets does not vmap over stacked parameters without rewriting the matching with
torch.func.grad; a loop costs N launches per batch, the FLOPs are the same.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..core.errors import PoisonbenchError
from ..core.params import MAX_DRAWS, Param
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


class EnsembleMatching:
    """Forest's ensemble objective: the mean over the members of each one's `GradientMatching` loss (one member:
    exactly its loss)."""

    def __init__(self, surrogates: list[torch.nn.Module], target: torch.Tensor, intended: int):
        self.members = [GradientMatching(m, target, intended) for m in surrogates]

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = [m.loss(inputs, labels) for m in self.members]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


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


class GM(TargetedAttack):
    name = "gm"
    summary = "Witches' Brew gradient matching (forest recipe; targeted, clean-label)"
    default_scenario = "scratch"
    PARAMS = (*common_params("scratch"), *brew_params(),
              Param("ensemble", int, 1, "Surrogates the poison gradient is matched against (each trained alike "
                    "with its own attacker seed; member 0 is the single surrogate); the step is lr/N, as forest's.",
                    "forest --ensemble 1 (witch_base.py rule 2, victim_ensemble.py)", minimum=1,
                    maximum=MAX_DRAWS))

    def validate(self) -> None:
        super().validate()
        if self.params["ensemble"] > 1 and self.params["scenario"] != "scratch":
            raise PoisonbenchError("gm: ensemble > 1 trains surrogates from scratch; it applies to --victim scratch")

    def member_specs(self, dataset) -> list[dict]:
        """The specs of the ensemble's surrogates (member 0: `model_spec`'s)."""
        from .surrogate import surrogate_spec

        recipe, overrides, model = self.surrogate_training()
        return [self.model_spec(dataset)[1], *(surrogate_spec(dataset, model, recipe, overrides, member=i)
                                               for i in range(1, self.params["ensemble"]))]

    def surrogate_ref(self, dataset) -> str | None:
        """Member 0's id (an ensemble of one is today's), or the hash of all members' specs."""
        if self.params["ensemble"] == 1:
            return super().surrogate_ref(dataset)
        from ..core.hashing import short_hash

        return f"ensemble{self.params['ensemble']}:" + short_hash(self.member_specs(dataset))

    def surrogates(self, ctx: AttackContext) -> list[torch.nn.Module]:
        """The ensemble's models, eval mode, frozen: `ctx.surrogate()` and members 1..N−1 (trained if absent)."""
        from .surrogate import load_or_train_surrogate

        recipe, overrides, model = self.surrogate_training()
        models, self.member_info = [ctx.surrogate()], []
        for i in range(1, self.params["ensemble"]):
            member, info = load_or_train_surrogate(ctx.dataset, ctx.results_root, ctx.device, model_name=model,
                                                   progress=ctx.progress, accel=ctx.accel, recipe=recipe,
                                                   overrides=overrides, member=i)
            models.append(member.eval().requires_grad_(False))
            self.member_info.append(info)
        return models

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        p = self.params
        x, y, target = poison_tensors(ctx)
        matching = EnsembleMatching(self.surrogates(ctx), target, ctx.target.intended_class)

        def objective(inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return matching.loss(inputs, y[start:stop])

        brew = Brew(p["iterations"], p["restarts"], p["lr"] / p["ensemble"], p["pbatch"], p["augment"],
                    p["lr_space"])
        delta, self.training_summary = brew.run(ctx, self.name, x, objective)
        if self.member_info:
            self.training_summary["ensemble_info"] = self.member_info
        return delta
