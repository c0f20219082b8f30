"""L2 centroid filter (filter paper §4.3.1; no official code, issue
neeharperi/DeepKNNDefense#2): per class l
of size s_l, the centroid c_l = (1/s_l)·Σ φ(x) of its penultimate features; remove the ⌈ε·s_l⌉ rows of the class
farthest (L2) from c_l.

ε = `--drop`; default the budget's share of the rows trained on (§5.1: "ε = 0.01, the proportion of the training
data that are poisons"), resolved when the run starts as budget / rows in use and recorded. Vectorised over
classes: centroids by `index_add_`, the rank of each row within its class by two stable sorts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .filtering import DROP_PARAM, FEATURES_PARAM, Filter, fraction_count

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext


@torch.no_grad()
def l2_remove(features: torch.Tensor, labels: torch.Tensor, eps: float, num_classes: int) -> torch.Tensor:
    """Bool mask of the rows removed: the ⌈eps·s_l⌉ farthest from their class centroid in each class l (an exact
    tie in distance goes to the lower row index)."""
    n = len(labels)
    counts = torch.bincount(labels, minlength=num_classes)
    centroids = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    centroids.index_add_(0, labels, features)
    centroids /= counts.clamp(min=1).to(features.dtype)[:, None]
    distance = (features - centroids[labels]).norm(dim=1)
    by_distance = torch.argsort(distance, descending=True, stable=True)
    grouped = by_distance[torch.argsort(labels[by_distance], stable=True)]  # by class, each farthest first
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long, device=labels.device)
    rank[grouped] = torch.arange(n, device=labels.device) - class_start[labels[grouped]]
    quota = torch.tensor([fraction_count(eps, s) for s in counts.tolist()], device=labels.device)
    return rank < quota[labels]


class L2Filter(Filter):
    name = "l2"
    summary_text = "L2 centroid filter: drop the ε share of each class farthest from its feature centroid"
    uses_drop = True
    PARAMS = (DROP_PARAM, FEATURES_PARAM)

    def decide(self, ctx: TrainContext, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        eps, source = self.drop_fraction(len(labels))
        self.figures.update(drop=eps, drop_source=source)
        return l2_remove(features, labels, eps, ctx.num_classes)
