"""Spectral signatures (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018, Algorithm 1;
official `MadryLab/backdoor_data_poisoning` compute_corr.py; Geiping's re-implementation
`JonasGeiping/data-poisoning` forest/filtering_defenses.py `_SpectralSignaturesDefense`; ART
`spectral_signature_defense.py`): per class y with rows R_1..R_n of penultimate features,

    M = [R_i − R̂]_i  (centred, R̂ the class mean),   v = top right singular vector of M,   τ_i = ((R_i − R̂)·v)²,

and the ⌈1.5·ε·n⌉ rows of the class with the largest outlier score τ are removed (Algorithm 1 "remove the examples
with the top 1.5ε scores"; 1.5 = `--spectral-factor`).

ε (`--spectral-eps`) is the expected share of each class's rows that are poisons, an upper bound (the paper's ε).
Default, with a targeted attack's budget B known: B / rows in use, the budget's share (as the L2 filter's `--drop`),
resolved when the run starts and recorded; required where the budget is unknown (clean and untargeted runs). A
targeted attack's poisons all carry one label, so this default removes about 1.5·B/C rows of the poisoned class
(C classes); Geiping's rule removes ⌈1.5·B⌉ rows of every class, i.e. `--spectral-eps` = B / n_y — not the default
here, as it empties every class where the budget's share exceeds 2/(3C) (the transfer set: docs/fidelity.md).

The scores are computed on the run's device in float64 (one SVD of an n_y × d matrix per class, C of them); the
ranking within each class is vectorised (two stable sorts: an exact tie in score goes to the lower row index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.errors import PoisonbenchError
from ..core.params import Param
from .filtering import FEATURES_PARAM, Filter, fraction_count

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

EPS_PARAM = Param(
    "spectral_eps", float, None,
    "ε, the expected (upper bound on the) share of each class's rows that are poisons; spectral removes "
    "⌈factor·ε·n⌉ rows of each class of n. When not given: a targeted attack's budget as a share of the rows "
    "trained on (budget / rows in use, resolved when the run starts); required where the budget is unknown (clean "
    "and untargeted runs).",
    "Tran et al. Algorithm 1 (ε, an upper bound on the poisons); ART ub_pct_poison; the filter paper §5.1 "
    '"ε = the proportion of the training data that are poisons"',
    minimum=0, maximum=1, below_maximum=True)

FACTOR_PARAM = Param(
    "spectral_factor", float, 1.5,
    "The over-removal factor: the ⌈factor·ε·n⌉ highest-scoring rows of each class are removed.",
    'Tran et al. Algorithm 1 "remove the examples with the top 1.5ε scores"; Geiping overestimation_factor=1.5; '
    "ART eps_multiplier=1.5", positive=True)


@torch.no_grad()
def spectral_scores(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, list]:
    """(τ of every row, the top singular value of each class): τ_i = ((R_i − R̂_y)·v_y)², v_y the top right
    singular vector of the class's centred features (float64). A class with fewer than two rows scores 0."""
    x = features.double()
    scores = torch.zeros(len(labels), dtype=torch.float64, device=features.device)
    top = []
    for c in range(num_classes):  # one SVD per class, never per row
        members = torch.nonzero(labels == c).squeeze(1)
        if len(members) < 2:
            top.append(None)
            continue
        centred = x[members] - x[members].mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        scores[members] = (centred @ vh[0]).square()
        top.append(float(s[0]))
    return scores, top


def rank_within_class(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each row's 0-based rank by descending score among its class's rows (a tie: the lower row index first)."""
    n = len(labels)
    counts = torch.bincount(labels, minlength=num_classes)
    by_score = torch.argsort(scores, descending=True, stable=True)
    grouped = by_score[torch.argsort(labels[by_score], stable=True)]  # by class, each highest score first
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long, device=labels.device)
    rank[grouped] = torch.arange(n, device=labels.device) - class_start[labels[grouped]]
    return rank


def spectral_quota(counts: list[int], factor: float, eps: float) -> list[int]:
    """Rows removed per class: ⌈factor·ε·n_y⌉, at most n_y."""
    return [fraction_count(min(factor * eps, 1.0), n) for n in counts]


@torch.no_grad()
def spectral_remove(features: torch.Tensor, labels: torch.Tensor, quota: list[int],
                    num_classes: int) -> tuple[torch.Tensor, dict]:
    """(bool mask of the removed rows: the `quota[y]` highest τ of each class y, figures: each class's score
    threshold — the lowest removed τ, None where nothing is removed — and top singular value)."""
    scores, top = spectral_scores(features, labels, num_classes)
    rank = rank_within_class(scores, labels, num_classes)
    removed = rank < torch.tensor(quota, device=labels.device)[labels]
    lowest = torch.full((num_classes,), float("inf"), dtype=torch.float64, device=scores.device)
    lowest.scatter_reduce_(0, labels[removed], scores[removed], "amin")
    thresholds = [None if q == 0 else v for q, v in zip(quota, lowest.tolist(), strict=True)]
    return removed, {"score_threshold": thresholds, "top_singular_value": top}


class SpectralSignatures(Filter):
    name = "spectral"
    summary_text = ("spectral signatures: drop the ⌈1.5·ε·n⌉ rows of each class most aligned with the top singular "
                    "vector of its centred features")
    PARAMS = (EPS_PARAM, FACTOR_PARAM, FEATURES_PARAM)

    def validate(self) -> None:
        if self.params["spectral_eps"] is None and self.threat.budget is None:
            raise PoisonbenchError(f"method {self.name!r} needs --spectral-eps (a fraction in [0, 1)): its default, "
                                   f"the attack's budget share, is unknown in {self.threat.kind_phrase}")
        super().validate()

    def decide(self, ctx: TrainContext, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        factor = self.params["spectral_factor"]
        if self.params["spectral_eps"] is not None:
            eps, source = self.params["spectral_eps"], "given"
        else:
            eps, source = min(self.threat.budget / max(len(labels), 1), 1.0), "budget share"
        quota = spectral_quota(torch.bincount(labels, minlength=ctx.num_classes).tolist(), factor, eps)
        removed, figures = spectral_remove(features, labels, quota, ctx.num_classes)
        self.figures.update(spectral_eps=eps, eps_source=source, spectral_factor=factor, quota_per_class=quota,
                            **figures)
        return removed
