"""The oracle (perfect filter): removes exactly the poisoned rows, then trains on the rest. It is no defense but an
upper bound for the removing ones (the filters, EPIC): what a filter that knew the poisons would reach. The filter
paper calls it the "oracle" defense of its comparison (Peri et al., §5, Table 1: training without the poisons).

It is the one method that sees the ground-truth poison mask before training, the explicit exception to the engine's
contract (`engine/hooks.py`, docs/engine.md "Defense hooks"): its class sets `sees_poison_mask`, and the run
executor hands it the mask through `receive_poison_mask` (`engine.hooks.hand_poison_mask`). Everywhere it is
labelled an upper bound (`summary_text`, the record's `upper_bound`, "(upper bound)" in the reports) and no report
ranks it: its cells are never marked best (report/tables).

Removal counts come from the `Filter` base (poisonbench/defenses/removal.py): 100 % of the poisons, 0 clean rows.
A clean run has nothing to remove and is refused before anything is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.errors import PoisonbenchError
from .filtering import Filter

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext


class Oracle(Filter):
    name = "oracle"
    summary_text = "oracle, an upper bound and no defense: removes exactly the poisoned rows (it is told which)"
    uses_features = False
    sees_poison_mask = True
    PARAMS = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.poisoned: torch.Tensor | None = None

    def validate(self) -> None:
        super().validate()
        if self.threat.kind == "clean":
            raise PoisonbenchError(f"method {self.name!r} removes exactly the poisoned rows, and "
                                   f"{self.threat.kind_phrase} has none: nothing to remove (run it against poisons)")

    def receive_poison_mask(self, poisoned: torch.Tensor) -> None:
        self.poisoned = poisoned.bool()

    def decide(self, ctx: TrainContext, features: None, labels: torch.Tensor) -> torch.Tensor:
        if self.poisoned is None:
            raise PoisonbenchError(f"method {self.name!r}: no poison mask was handed over before training "
                                   "(engine.hooks.hand_poison_mask)")
        if len(self.poisoned) != len(ctx.train_y):
            raise PoisonbenchError(f"method {self.name!r}: the poison mask covers {len(self.poisoned)} rows, the "
                                   f"train split {len(ctx.train_y)}")
        removed = self.poisoned.to(ctx.device)[ctx.rows_in_use()]
        if len(removed) and bool(removed.all()):
            raise PoisonbenchError(f"method {self.name!r}: every train row in use is poisoned, so removing the poisons "
                                   "leaves nothing to train on (a poison ratio below 1)")
        return removed

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        return {**super().summary(poisoned), "upper_bound": True}
