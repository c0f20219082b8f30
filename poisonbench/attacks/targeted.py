"""What the targeted clean-label attacks (GM, BP, FC) share: their victim scenario, the model they craft against,
ε and budget defaults, and the rows they poison (reference/attacks.md §6–8, §15).

- `scenario`: `scratch` crafts against a surrogate trained from scratch on the clean train split (forest's
  Witches' Brew; the victim trains from scratch too); `transfer` crafts against the transfer scenario's pre-trained
  model (poisonbench.pretrained), the very extractor the victim freezes (a white-box transfer attack, as in the
  "Just How Toxic" benchmark's white-box test). Defaults follow the paper: GM → scratch, BP and FC → transfer.
- The surrogate or extractor is trained through the one engine with `surrogate_recipe` (default the paper's;
  `defend` passes the victim's own recipe, so the model crafted against is trained as the victim is, as forest
  does) and cached by the hash of its inputs.
- ε defaults to 16/255 and the budget to 1 % of the train split (forest's defaults, paper §VI-A2).
- The poisoned rows are the target's `rows`, drawn by `poisonbench.targets` from the intended class.
"""

from __future__ import annotations

from typing import ClassVar

from ..params import Param
from ..recipes import recipe_names
from .base import Attack, AttackContext, Target

TARGETED_EPS = 16 / 255  # forest `--eps 16` (reference/attacks.md §6, §15); paper §VI-A2
TARGETED_BUDGET = 0.01  # forest `--budget 0.01`: 490 of CIFAR-10's 49,000 train images (paper §VI-A2)


def common_params(default_scenario: str) -> tuple[Param, ...]:
    return (
        Param("scenario", str, default_scenario, "Victim the poisons are crafted for: scratch (a surrogate trained "
              "from scratch on the clean train split) or transfer (the transfer scenario's pre-trained extractor).",
              "paper §VI-A2 (GM from scratch; BP, FC in transfer)", choices=("scratch", "transfer"),
              cli_flag="--victim"),
        Param("surrogate_recipe", str, "paper", "Recipe the surrogate / pre-trained extractor is trained with "
              "(defend passes the victim's).", "forest: the surrogate is trained as the victim is",
              choices=tuple(recipe_names())),
        Param("surrogate_epochs", int, None, "Override the surrogate recipe's epochs (CPU runs, tests).",
              "poisonbench", minimum=1),
    )


class TargetedAttack(Attack):
    """Base class of GM, BP and FC: `perturb(ctx)` gets `ctx.target` (with its rows) and `ctx.surrogate()`, the
    scratch surrogate or the transfer extractor in eval mode with frozen parameters."""

    targeted = True
    uses_surrogate = True
    default_scenario: ClassVar[str] = "scratch"

    @classmethod
    def default_eps(cls, family: str) -> float:
        return TARGETED_EPS

    @classmethod
    def default_budget(cls) -> float:
        return TARGETED_BUDGET

    def recipe_overrides(self) -> dict | None:
        epochs = self.params.get("surrogate_epochs")
        return {"epochs": epochs} if epochs is not None else None

    def surrogate_ref(self, dataset) -> str | None:
        if not self.uses_surrogate:
            return None
        recipe, overrides = self.params["surrogate_recipe"], self.recipe_overrides()
        if self.params["scenario"] == "transfer":
            from ..pretrained import extractor_id

            return "extractor:" + extractor_id(dataset, None, recipe, overrides)
        from .surrogate import surrogate_id

        return surrogate_id(dataset, None, recipe, overrides)

    def load_surrogate(self, ctx: AttackContext):
        recipe, overrides = self.params["surrogate_recipe"], self.recipe_overrides()
        if self.params["scenario"] == "transfer":
            from ..pretrained import load_or_train_extractor

            return load_or_train_extractor(ctx.dataset, ctx.device, model_name=ctx.surrogate_model, recipe=recipe,
                                           overrides=overrides, results_root=ctx.results_root,
                                           progress=ctx.progress, accel=ctx.accel)
        from .surrogate import load_or_train_surrogate

        return load_or_train_surrogate(ctx.dataset, ctx.results_root, ctx.device, model_name=ctx.surrogate_model,
                                       progress=ctx.progress, accel=ctx.accel, recipe=recipe, overrides=overrides)

    def choose_rows(self, dataset, budget: float, seed: int, target: Target | None = None):
        """The target's rows, or ⌊budget·n⌋ rows of the intended class drawn from `seed` (poisonbench.targets)."""
        if target is not None and target.rows is not None:
            return super().choose_rows(dataset, budget, seed, target)
        from ..targets import draw_target

        drawn = draw_target(dataset, seed, self.params["scenario"], budget, target.index, target.intended_class)
        return super().choose_rows(dataset, budget, seed, drawn)
