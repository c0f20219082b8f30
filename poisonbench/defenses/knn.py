"""Deep k-NN (filter paper §4.2, Algorithm 1; DeepKNN:dataLoader.py:L14-113): keep a train row
iff its label is in the mode of the labels of its k nearest neighbours in feature space (Euclidean), i.e. its own
label's count equals the largest count (a tie keeps it: "l ∈ mode").

Self-vote (`--knn-self`, default on): the official code (DeepKNN:dataLoader.py:L74-95) fits scikit-learn's
`KNeighborsClassifier(algorithm="brute")` and predicts on the same points, so each point is its own nearest neighbour
and votes: here the point itself plus its k − 1 nearest others. `--no-knn-self` excludes it (Geiping's
re-implementation, JonasGeiping/data-poisoning forest/filtering_defenses.py `_DeepKNN`): its k nearest others.
Deviations from both: a plurality tie keeps the row (Algorithm 1; scikit-learn's vote gives a tie to the smallest label,
Geiping keeps iff same-label ≥ other-label votes); an exact tie in distance goes to whichever row `topk` picks.

k defaults to 2·budget + 1 (paper §4.2: "if there are p poisons, then by setting k = 2p + 1"); it is clamped at run
time to the rows available (n, or n − 1 without the self-vote) and the k used is recorded.

Implementation (ours, for memory): blocks of query rows against all rows with `torch.cdist` + `topk`, never an N×N
matrix (block × N distances within `DISTANCE_BLOCK_FLOATS`), and one vectorised vote per block (`scatter_add_` of
the neighbours' labels into per-class counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import PoisonbenchError
from ..core.params import Param
from ..engine.chunking import CPU_ACTIVATION_BYTES
from .filtering import FEATURES_PARAM, Filter

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext
    from ..engine.recipes import Recipe
    from ..engine.threat import Threat

DISTANCE_BLOCK_FLOATS = 2 ** 24  # 64 MiB of float32 distances per block of query rows on a GPU
CPU_DISTANCE_BLOCK_FLOATS = CPU_ACTIVATION_BYTES // 4  # on the CPU: under glibc's mmap threshold (chunking.py)


def effective_k(k: int, n: int, include_self: bool) -> int:
    """k clamped to the neighbours there are: n rows with the self-vote, n − 1 without."""
    return max(0, min(k, n if include_self else n - 1))


def block_rows(n: int, max_floats: int) -> int:
    """Query rows per block so that a block's `rows × n` distances stay within `max_floats` (at least one row)."""
    return max(1, min(n, max_floats // max(n, 1)))


@torch.no_grad()
def knn_keep(features: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, *, include_self: bool = True,
             max_floats: int | None = None) -> torch.Tensor:
    """Bool mask of the rows Algorithm 1 keeps: own label in the mode of the k nearest neighbours' labels.

    With `include_self` the row itself is one of the k (its distance is set below every other, so a duplicate
    point cannot displace it), else it is excluded. k is clamped by `effective_k`; k = 0 keeps every row."""
    n = len(labels)
    k = effective_k(k, n, include_self)
    keep = torch.ones(n, dtype=torch.bool, device=labels.device)
    if k == 0:
        return keep
    if max_floats is None:
        max_floats = CPU_DISTANCE_BLOCK_FLOATS if features.device.type == "cpu" else DISTANCE_BLOCK_FLOATS
    block = block_rows(n, max_floats)
    own_distance = -1.0 if include_self else float("inf")
    for start in range(0, n, block):
        stop = min(start + block, n)
        distances = torch.cdist(features[start:stop], features)
        local = torch.arange(stop - start, device=features.device)
        distances[local, start + local] = own_distance
        neighbours = distances.topk(k, dim=1, largest=False, sorted=False).indices
        neighbour_labels = labels[neighbours]
        votes = torch.zeros(stop - start, num_classes, dtype=torch.long, device=labels.device)
        votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
        own = votes.gather(1, labels[start:stop, None]).squeeze(1)
        keep[start:stop] = own == votes.max(1).values
    return keep


class DeepKnn(Filter):
    name = "knn"
    summary_text = "Deep k-NN filter: drop rows whose label is not a plurality among their k feature-space neighbours"
    PARAMS = (
        Param("k", int, None,
              "Neighbours that vote, k. When not given: 2·budget + 1 with a targeted attack's budget (its number "
              "of poisons); required where the budget is unknown (clean and untargeted runs).",
              'filter paper §4.2 "k = 2p + 1"; official K=101 (DeepKNN:trainPoison.py:L156)', minimum=1),
        Param("knn_self", bool, True,
              "Each row votes for itself as its own nearest neighbour (official Peri code: fit and predict on the "
              "same points); --no-knn-self excludes it (Geiping's re-implementation).",
              "DeepKNN:dataLoader.py:L74-95; Geiping's forest/filtering_defenses.py `_DeepKNN`"),
        FEATURES_PARAM,
    )

    @classmethod
    def threat_defaults(cls, family: str, recipe: Recipe, threat: Threat) -> dict[str, Any]:
        return {"k": 2 * threat.budget + 1} if threat.budget is not None else {}

    def validate(self) -> None:
        if self.params["k"] is None:
            raise PoisonbenchError(f"method 'knn' needs --k (an integer >= 1): its default 2·budget + 1 needs the "
                                   f"attack's budget, unknown in {self.threat.kind_phrase}")
        super().validate()

    def decide(self, ctx: TrainContext, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        include_self = self.params["knn_self"]
        self.figures.update(k=self.params["k"], k_used=effective_k(self.params["k"], len(labels), include_self),
                            self_vote=include_self)
        return ~knn_keep(features, labels, self.params["k"], ctx.num_classes, include_self=include_self)
