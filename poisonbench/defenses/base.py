"""The defense interface (design.md §3): a defense implements only the hooks it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..training import TrainContext


class Defense:
    """Base class; the default hooks do nothing, so `Defense()` is plain training (`--method none`)."""

    name = "none"

    def __init__(self, **params: Any):
        self.params = params

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

    def summary(self) -> dict:
        """Defense-specific figures for the run record (e.g. the noise actually applied)."""
        return {}
