"""Random filter (filter paper §4.3.4), the experimental control: remove a random ⌈ε·n⌉ of the n train rows in
use, whatever they are. ε = `--drop`; default the budget's share of the rows trained on (as the L2 filter's, §5.1),
resolved when the run starts and recorded. The paper calibrates it to 1 % (feature collision) and 10 % (convex
polytope). The draw comes from the filter's own generator, seeded from the run's seed (stream "random-filter"), so
the engine's order and augmentation stay those of `--method none`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.hashing import derived_seed
from .filtering import DROP_PARAM, Filter, fraction_count

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

RANDOM_FILTER_STREAM = "random-filter"


def random_remove(n: int, drop: float, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of ⌈drop·n⌉ rows drawn without replacement (on the generator's device)."""
    removed = torch.zeros(n, dtype=torch.bool, device=generator.device)
    removed[torch.randperm(n, generator=generator, device=generator.device)[:fraction_count(drop, n)]] = True
    return removed


class RandomFilter(Filter):
    name = "random"
    summary_text = "random filter (control): drop a random ε share of the training rows"
    uses_features = False
    uses_drop = True
    PARAMS = (DROP_PARAM,)

    def decide(self, ctx: TrainContext, features: None, labels: torch.Tensor) -> torch.Tensor:
        drop, source = self.drop_fraction(len(labels))
        self.figures.update(drop=drop, drop_source=source)
        generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, RANDOM_FILTER_STREAM))
        return random_remove(len(labels), drop, generator)
