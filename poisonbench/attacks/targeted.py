"""What the targeted clean-label attacks (GM, BP, FC) share: their victim scenario, the model they craft against,
ε and budget defaults, and the rows they poison (forest: GM:forest/options.py and forest/witchcoven/; PB; the keys:
docs/fidelity.md, "Sources and citation keys").

- `scenario`: `scratch` crafts against a surrogate trained from scratch on the clean train split (forest's
  Witches' Brew; the victim trains from scratch too); `transfer` crafts against the transfer scenario's pre-trained
  model (engine.pretrained): under `threat` gray (the paper's, the default) an extractor of the attacker's own,
  pre-trained like the victim's with another seed; under white the very extractor the victim freezes (the "Just
  How Toxic" benchmark's white-box test). Defaults follow the paper: GM → scratch, BP and FC → transfer.
- The surrogate or extractor is trained through the one engine with the victim's whole resolved recipe and model
  (`surrogate_recipe` and the `surrogate_*` overrides, `surrogate_model`: `defend` passes the victim's, as forest
  trains its surrogate with its victim's strategy), seeded apart from every victim (`core.seeds`), and cached
  by the hash of its inputs; the overrides are kept canonical (only the fields that differ from the named recipe,
  the model only when it is not the family's default), so two spellings of one recipe are one PoisonSet.
- Crafting augmentation (the brew's `augment`) follows the surrogate's recipe when not given: on when the victim
  augments, off when it does not (forest crafts with its victim's transform, kettle.py); the value is in the params.
- ε defaults to 16/255 and the budget to 1 % of the train split (forest's defaults, paper §VI-A2).
- The poisoned rows are the target's `rows`, drawn by `poisonbench.attacks.targets` from the intended class (`bases`
  random, the default), or (`bases` nearest) the intended class's rows nearest the target in the features of the
  model crafted against, chosen when the attack crafts (`aim` drops the drawn rows from the planned target).
"""

from __future__ import annotations

from typing import ClassVar

from ..core.errors import PoisonbenchError
from ..core.params import MAX_BATCH_SIZE, MAX_EPOCHS, Param
from ..engine.recipes import AUGMENTATIONS, TARGETED_RECIPE, Recipe, recipe_names, resolve_recipe
from .base import Attack, AttackContext, Target
from .targets import SCENARIOS

TARGETED_EPS = 16 / 255  # forest `--eps 16` (GM:forest/options.py); paper §VI-A2
TARGETED_BUDGET = 0.01  # forest `--budget 0.01`: 490 of CIFAR-10's 49,000 train images (paper §VI-A2)
THREATS = ("gray", "white")
THREAT_SOURCE = ("paper §VI-A2: the attacker does not know the victim's weights; HINT trains the victim's extractor "
                 "itself (train_with_HIN_cifar10.py L76-89)")
BASES = ("random", "nearest")  # the `bases` rules (poisonbench.attacks.targets)
BASES_SOURCE = ("random: forest kettle.py `_choose_poisons_randomly` (paper §VI-A2); nearest: Bullseye Polytope "
                "`--nearest` (utils.py `fetch_poison_bases`), the Poison Frogs and ART examples (issue 54)")
TRAINED_BY_VICTIM = "forest: the surrogate is trained with the victim's strategy (defend passes the victim's)"


def parse_milestones(value) -> list[int]:
    """`--surrogate-milestones 14,25,35` ('' for none), or a list given in code."""
    if isinstance(value, str):
        try:
            return [int(m) for m in value.split(",") if m.strip()]
        except ValueError:
            raise PoisonbenchError(f"--surrogate-milestones must be comma-separated integers, got {value!r}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(m, int) and not isinstance(m, bool) for m in value):
        return list(value)
    raise PoisonbenchError(f"--surrogate-milestones must be a list of epochs, got {value!r}")


# the recipe fields a targeted attack's surrogate takes from the victim: (field, type, Param keywords)
SURROGATE_FIELDS = (
    ("epochs", int, {"minimum": 1, "maximum": MAX_EPOCHS}),
    ("batch_size", int, {"minimum": 1, "maximum": MAX_BATCH_SIZE}),
    ("lr", float, {"positive": True}),
    ("momentum", float, {"minimum": 0, "maximum": 1, "below_maximum": True}),
    ("nesterov", bool, {}),
    ("weight_decay", float, {"minimum": 0}),
    ("milestones", list, {"parse": parse_milestones}),
    ("lr_decay", float, {"positive": True, "maximum": 1}),
    ("augment", str, {"choices": AUGMENTATIONS}),
)
SURROGATE_PARAMS = ("surrogate_recipe", "surrogate_model", *(f"surrogate_{f}" for f, _, _ in SURROGATE_FIELDS))


def common_params(default_scenario: str) -> tuple[Param, ...]:
    return (
        Param("scenario", str, default_scenario, "Victim the poisons are crafted for: scratch (a surrogate trained "
              "from scratch on the clean train split) or transfer (the transfer scenario's pre-trained extractor).",
              "paper §VI-A2 (GM from scratch; BP, FC in transfer)", choices=SCENARIOS,
              cli_flag="--victim"),
        Param("threat", str, None, "Transfer only: gray (the attacker crafts on an extractor of its own, pre-trained "
              "like the victim's but with another seed) or white (on the very extractor the victim freezes). Unset: "
              "gray for transfer, off for scratch.", THREAT_SOURCE, choices=THREATS),
        Param("bases", str, "random", "The poisons' base images: random (drawn from the intended class, forest's and "
              "the paper's) or nearest (the intended class's images nearest the target in the crafting model's "
              "penultimate feature space, Euclidean).", BASES_SOURCE, choices=BASES),
        Param("surrogate_recipe", str, TARGETED_RECIPE, "Recipe the surrogate / pre-trained extractor is trained "
              "with (defend passes the victim's; default: defend's for a targeted run).", TRAINED_BY_VICTIM,
              choices=tuple(recipe_names())),
        Param("surrogate_model", str, None, "Model of the surrogate / pre-trained extractor (defend passes the "
              "victim's; unset: the family's default, paper Table I).", TRAINED_BY_VICTIM),
        *(Param(f"surrogate_{name}", kind, None, f"Override the surrogate recipe's {name.replace('_', ' ')} "
                "(defend passes the victim's overrides).", TRAINED_BY_VICTIM, **keywords)
          for name, kind, keywords in SURROGATE_FIELDS),
    )


class TargetedAttack(Attack):
    """Base class of GM, BP and FC: `perturb(ctx)` gets `ctx.target` (with its rows) and `ctx.surrogate()`, the
    scratch surrogate or the transfer extractor in eval mode with frozen parameters."""

    targeted = True
    uses_surrogate = True
    default_scenario: ClassVar[str] = "scratch"

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        return TARGETED_EPS

    @classmethod
    def default_budget(cls) -> float:
        return TARGETED_BUDGET

    def __init__(self, family: str, **params):
        super().__init__(family, **params)
        self.settle_surrogate()

    def settle_surrogate(self) -> None:
        """Put the surrogate's recipe and model in their canonical form (each `surrogate_*` override only where the
        resolved recipe differs from the named one, the model only where it is not the family's default), and
        resolve an unset crafting augmentation from the resolved recipe (on when it augments)."""
        from ..engine.models import DEFAULT_MODEL, MODELS

        p = self.params
        model = p.get("surrogate_model")
        if model is not None:
            MODELS.get(model)  # an unknown name: one line with the valid ones
        p["surrogate_model"] = None if model in (None, DEFAULT_MODEL[self.family]) else model
        resolved = self.surrogate_recipe()
        named = resolve_recipe(self.family, p["surrogate_recipe"])
        for name, _, _ in SURROGATE_FIELDS:
            value = getattr(resolved, name)
            differs = value != getattr(named, name)
            p[f"surrogate_{name}"] = (list(value) if isinstance(value, tuple) else value) if differs else None
        if p["scenario"] == "transfer":
            p["threat"] = p.get("threat") or "gray"
        elif p.get("threat") is not None:
            raise PoisonbenchError("--threat applies to the transfer scenario (a frozen pre-trained extractor), not "
                                   f"--victim {p['scenario']}")
        if self.crafting_augment_applies() and p.get("augment") is None:
            p["augment"] = resolved.augment != "none"

    def crafting_augment_applies(self) -> bool:
        """Whether this attack (with its `--impl`) takes the brew's crafting augmentation."""
        impl_defaults = getattr(self, "IMPL_DEFAULTS", None)
        if impl_defaults:
            return "augment" in impl_defaults.get(self.params.get("impl"), {})
        return "augment" in self.params

    def recipe_overrides(self) -> dict:
        """The surrogate recipe's overrides ({field: value}, set ones only)."""
        return {name: self.params[f"surrogate_{name}"] for name, _, _ in SURROGATE_FIELDS
                if self.params.get(f"surrogate_{name}") is not None}

    def surrogate_training(self) -> tuple[str, dict, str | None]:
        """(recipe name, its overrides, model: None for the family's default) of the model crafted against."""
        return self.params["surrogate_recipe"], self.recipe_overrides(), self.params["surrogate_model"]

    def surrogate_recipe(self) -> Recipe:
        """The resolved recipe of the model this attack crafts against."""
        return resolve_recipe(self.family, self.params["surrogate_recipe"], **self.recipe_overrides())

    def model_spec(self, dataset) -> tuple[str, dict] | None:
        """(kind, spec): the scratch surrogate's or the transfer extractor's, with its attacker seed."""
        if not self.uses_surrogate:
            return None
        recipe, overrides, model = self.surrogate_training()
        if self.params["scenario"] == "transfer":
            from ..engine.pretrained import EXTRACTOR_KIND, extractor_spec

            return EXTRACTOR_KIND, extractor_spec(dataset, model, recipe, overrides, self.extractor_role())
        from .surrogate import KIND, surrogate_spec

        return KIND, surrogate_spec(dataset, model, recipe, overrides)

    def extractor_role(self) -> str:
        """Whose extractor a transfer attack crafts on: its own (gray-box) or the victim's (white-box)."""
        return "attacker" if self.params.get("threat") == "gray" else "victim"

    def surrogate_ref(self, dataset) -> str | None:
        if not self.uses_surrogate:
            return None
        from ..core.hashing import short_hash

        _, spec = self.model_spec(dataset)
        return ("extractor:" if self.params["scenario"] == "transfer" else "") + short_hash(spec)

    def load_surrogate(self, ctx: AttackContext):
        recipe, overrides, model = self.surrogate_training()
        if self.params["scenario"] == "transfer":
            from ..engine.pretrained import load_or_train_extractor

            return load_or_train_extractor(ctx.dataset, ctx.device, model_name=model, recipe=recipe,
                                           overrides=overrides, results_root=ctx.results_root,
                                           progress=ctx.progress, accel=ctx.accel, role=self.extractor_role())
        from .surrogate import load_or_train_surrogate

        return load_or_train_surrogate(ctx.dataset, ctx.results_root, ctx.device, model_name=model,
                                       progress=ctx.progress, accel=ctx.accel, recipe=recipe, overrides=overrides)

    def aim(self, target: Target, fixed: bool = False) -> Target:
        """`bases` nearest: the drawn rows dropped (the attack chooses them when it crafts, `choose_rows`); refused
        for a setup file's fixed bases."""
        if self.params["bases"] != "nearest" or target.rows is None:
            return target
        if fixed:
            raise PoisonbenchError("bases=nearest chooses the poisons' bases; a setup file fixes them (give one or "
                                   "the other)")
        return Target(target.index, target.true_class, target.intended_class)

    def choose_rows(self, dataset, budget: float, seed: int, target: Target | None = None):
        """The target's rows, or ⌊budget·n⌋ rows of the intended class drawn from `seed` (attacks.targets)."""
        if target is not None and target.rows is not None:
            return super().choose_rows(dataset, budget, seed, target)
        from .targets import draw_target

        drawn = draw_target(dataset, seed, self.params["scenario"], budget, target.index, target.intended_class)
        return super().choose_rows(dataset, budget, seed, drawn)

    def rows_for(self, ctx: AttackContext):
        """`choose_rows`; with `bases` nearest and no fixed rows, the ⌊budget·n⌋ rows of the intended class nearest
        the target in the features of the model crafted against (`ctx.surrogate()`, poisonbench.attacks.targets)."""
        target = ctx.target
        if self.params["bases"] != "nearest" or target is None or target.rows is not None:
            return super().rows_for(ctx)
        from .targets import base_pool, draw_target, nearest_rows

        drawn = draw_target(ctx.dataset, ctx.seed, self.params["scenario"], ctx.budget, target.index,
                            target.intended_class)  # its checks and its count (the pool is large enough)
        pool = base_pool(ctx.dataset, target.intended_class, self.params["scenario"])
        rows, _ = nearest_rows(ctx.surrogate(), ctx.dataset, pool, target.index, len(drawn.rows), ctx.device)
        return rows
