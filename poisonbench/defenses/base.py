"""The defense interface (design.md §3): a defense implements only the hooks it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import inapplicable_option
from ..hashing import like_default

if TYPE_CHECKING:
    from ..recipes import Recipe
    from ..training import TrainContext


class Defense:
    """Base class; the default hooks do nothing, so `Defense` itself is plain training (`--method none`).

    Subclasses list their parameters in `defaults(family, recipe)` (the paper's values, possibly depending on
    the dataset family and the recipe, e.g. a schedule scaled to the epochs). The resolved parameters are part
    of the run id.
    """

    name = "none"

    def __init__(self, family: str, recipe: Recipe, **params: Any):
        defaults = self.defaults(family, recipe)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise inapplicable_option(f"--{unknown[0].replace('_', '-')}", "method", self.name,
                                      [f"--{k.replace('_', '-')}" for k in defaults])
        self.family, self.recipe = family, recipe
        self.params = {**defaults, **{k: like_default(v, defaults[k]) for k, v in params.items()}}
        self.validate()

    @classmethod
    def defaults(cls, family: str, recipe: Recipe) -> dict[str, Any]:
        return {}

    def validate(self) -> None:
        """Raise PoisonbenchError for parameter values out of range."""

    def config(self) -> dict:
        """Everything that identifies this defense in a run id (name and resolved parameters)."""
        return {"method": self.name, **self.params}

    def prepare(self, ctx: TrainContext) -> torch.Tensor | None:
        """Before training. A filtering defense returns the indices of training examples to keep."""
        return None

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        """Before each epoch (0-based): e.g. HINT's noise updates, EPIC's drops."""

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

    def summary(self) -> dict:
        """Defense-specific figures for the run record (e.g. the noise actually applied)."""
        return {}
