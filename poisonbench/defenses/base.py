"""The defense interface (docs/engine.md, "Defense hooks"): a defense implements only the hooks it needs.

Hooks, in the order the engine (poisonbench/training.py) calls them:

    prepare(ctx)                    before training; a filtering defense returns the train rows to keep
    on_epoch_start(ctx, epoch)      before each epoch (HINT's noise updates, EPIC's drops, FRIENDS' noise)
    batch_raw(ctx, x, y, idx)       per batch, before augmentation (FRIENDS' Bernoulli noise)
    batch(ctx, x, y, idx)           per batch, after augmentation (ATDA's adversarial examples)
    state(ctx) / load_state(...)    what the defense carries between epochs, for checkpoints
    summary(poisoned)               figures for the record: the only hook that sees the ground-truth poison mask

The seconds spent in a defense's own hooks, per-batch ones included, are its cost (Table V). The hooks that
decide (all but `summary`) never see which rows are poisoned: `TrainContext` does not hold that mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..params import Param, resolve
from .threat import Threat

if TYPE_CHECKING:
    from ..recipes import Recipe
    from ..training import TrainContext


class Defense:
    """Base class; the default hooks do nothing, so `Defense` itself is plain training (`--method none`).

    Subclasses declare their options as `PARAMS` (poisonbench.params; defaults may depend on the dataset family and
    the recipe, e.g. a schedule scaled to the epochs) and, for defaults that depend on the attack faced (ATDA's β,
    the filters' k), `threat_defaults`. The resolved parameters are part of the run id.
    """

    name: ClassVar[str] = "none"
    summary_text: ClassVar[str] = "plain training, no defense"
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, family: str, recipe: Recipe, threat: Threat | None = None, **params: Any):
        self.family, self.recipe, self.threat = family, recipe, threat or Threat()
        given = {k: v for k, v in params.items() if v is not None}
        merged = {**self.threat_defaults(family, recipe, self.threat), **given}
        self.params, _ = resolve(self.PARAMS, merged, family, recipe, "method", self.name)
        self.explicit = frozenset(given)
        self.validate()

    @classmethod
    def threat_defaults(cls, family: str, recipe: Recipe, threat: Threat) -> dict[str, Any]:
        """Defaults that depend on the attack faced (they replace the `PARAMS` defaults; given values win)."""
        return {}

    @classmethod
    def defaults(cls, family: str, recipe: Recipe, threat: Threat | None = None) -> dict[str, Any]:
        """Every parameter's default for `family`, `recipe` and `threat` (as a run's config would hold them)."""
        merged = cls.threat_defaults(family, recipe, threat or Threat())
        return resolve(cls.PARAMS, merged, family, recipe, "method", cls.name)[0]

    @classmethod
    def overrides_hook(cls, hook: str) -> bool:
        """Whether this defense implements `hook` (the engine times and calls per-batch hooks only then)."""
        return getattr(cls, hook) is not getattr(Defense, hook)

    def validate(self) -> None:
        """Raise PoisonbenchError for parameter combinations out of range (single bounds are in `PARAMS`)."""

    def config(self) -> dict:
        """Everything that identifies this defense in a run id (name and resolved parameters)."""
        return {"method": self.name, **self.params}

    def prepare(self, ctx: TrainContext) -> torch.Tensor | None:
        """Before training. A filtering defense returns the indices of training examples to keep."""
        return None

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        """Before each epoch (0-based): e.g. HINT's noise updates, EPIC's drops."""

    def batch_raw(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Per-batch transform of the inputs before augmentation (train rows `idx`); returns (x, y)."""
        return x, y

    def batch(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Per-batch transform of the (augmented) inputs and labels; returns (x, y)."""
        return x, y

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """What the defense carries from one epoch to the next, as (tensors, JSON-able dict), for an epoch
        checkpoint (poisonbench/checkpoints.py). A defense with such state must return it here and put it back in
        `load_state`, or a resumed run would differ from an uninterrupted one (tests/test_checkpoints.py checks
        every registered defense)."""
        return {}, {}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Restore `state(ctx)` into a freshly prepared defense (called after `prepare`, before the next epoch)."""

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        """Defense-specific figures for the run record (e.g. the noise actually applied). `poisoned` is the
        ground-truth mask over the train rows (None for clean training), for statistics only."""
        return {}
