"""Greedy facility location in whole-tensor ops: EPIC's medoid selection (EPIC:utils/coreset.py, on
submodlib's `FacilityLocationFunction`).

For the points of one class with similarity matrix S, facility location is F(S_set) = Σ_i max_{j ∈ S_set} s_ij, with
submodlib's dense euclidean kernel s_ij = exp(−‖g_i − g_j‖₂ / d), d = the points' dimension
(`submodlib:cpp/utils/helper.cpp:L65-71, L199-213`). With `best_i` = max_{j ∈ S_set} s_ij (0 for the empty set; every
s_ij > 0), the marginal gain of a candidate j is Σ_i relu(s_ij − best_i); S is symmetric, so row j holds it.

Three maximisers, all continuing when gains reach zero (EPIC's `stopIfZeroGain=False`):
- `naive_greedy`: every candidate's gain at every step (O(b·n²)); the reference the others are tested against.
- `lazy_greedy` (Minoux's lazy greedy, batched): stale gains are upper bounds (submodularity); each round evaluates
  the top-m stale candidates as one tensor op and accepts when the largest bound belongs to a fresh gain. Ties are
  broken by the lowest index, as `argmax` does in the naive greedy, so both select the same points in the same
  order (up to how float sums of one row are ordered, which the tests pin on the CPU).
- `stochastic_greedy` (Mirzasoleiman et al., AAAI 2015, "Lazier than lazy greedy"): each step takes the best of a
  uniform sample of ⌈(n/b)·ln(1/ε)⌉ unselected candidates; (1 − 1/e − ε) of the optimum in expectation.
"""

from __future__ import annotations

import math

import torch

GREEDY = ("lazy", "stochastic", "naive")
STOCHASTIC_EPSILON = 0.01  # ε of the stochastic greedy (submodlib's own default is 0.1)
LAZY_BATCH = 32  # stale candidates evaluated per round of the lazy greedy (one n × m tensor op)


def similarity(g: torch.Tensor) -> torch.Tensor:
    """s_ij = exp(−‖g_i − g_j‖₂ / d) for the rows of `g` (n × d): submodlib's dense euclidean kernel, s_ii = 1.

    Distances are computed directly rather than through the ‖a‖² + ‖b‖² − 2ab expansion: exactly symmetric, exact
    zeros on the diagonal, and at EPIC's d = 10 no slower."""
    dist = torch.cdist(g, g, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.div_(-g.shape[1]).exp_()


def marginal_gains(sim: torch.Tensor, best: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i relu(s_ij − best_i) for each candidate j (all rows when `candidates` is None)."""
    rows = sim if candidates is None else sim[candidates]
    return (rows - best).clamp_(min=0).sum(1)


def objective(sim: torch.Tensor, selected: torch.Tensor) -> float:
    """F(S_set) = Σ_i max_{j ∈ S_set} s_ij (0 for the empty set)."""
    if len(selected) == 0:
        return 0.0
    return float(sim[:, selected].amax(1).sum())


def naive_greedy(sim: torch.Tensor, budget: int) -> torch.Tensor:
    """The greedy order of `budget` points: at each step the candidate of largest gain (lowest index on ties)."""
    n = len(sim)
    best = sim.new_zeros(n)
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    order = []
    for _ in range(budget):
        j = marginal_gains(sim, best).masked_fill_(taken, -math.inf).argmax()
        order.append(j)
        taken[j] = True
        best = torch.maximum(best, sim[j])
    return _stack(order, sim.device)


def lazy_greedy(sim: torch.Tensor, budget: int, batch: int = LAZY_BATCH) -> torch.Tensor:
    """The naive greedy's order, from far fewer gain evaluations (see the module docstring)."""
    n = len(sim)
    best = sim.new_zeros(n)
    bound = marginal_gains(sim, best)  # exact for the empty set
    fresh = torch.ones(n, dtype=torch.bool, device=sim.device)
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    order = []
    for step in range(budget):
        while True:
            j = bound.argmax()
            if fresh[j]:  # a fresh gain ≥ every other candidate's upper bound, and the first of any tie
                break
            candidates = bound.masked_fill(fresh, -math.inf).topk(min(batch, n - step)).indices
            bound[candidates] = marginal_gains(sim, best, candidates)
            bound.masked_fill_(taken, -math.inf)  # a short stale list can pad `candidates` with selected points
            fresh[candidates] = True
        order.append(j)
        best = torch.maximum(best, sim[j])
        taken[j] = True
        bound[j] = -math.inf
        fresh.copy_(taken)  # every gain is stale again; selected points are never candidates
    return _stack(order, sim.device)


def stochastic_greedy(sim: torch.Tensor, budget: int, generator: torch.Generator,
                      epsilon: float = STOCHASTIC_EPSILON) -> torch.Tensor:
    """Stochastic greedy: each step the best of ⌈(n/b)·ln(1/ε)⌉ unselected candidates drawn with `generator`."""
    n = len(sim)
    if budget <= 0:
        return torch.zeros(0, dtype=torch.long, device=sim.device)
    sample = math.ceil(n / budget * math.log(1 / epsilon))
    best = sim.new_zeros(n)
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    order = []
    for step in range(budget):
        keys = torch.rand(n, generator=generator, device=sim.device).masked_fill_(taken, 2.0)
        candidates = keys.topk(min(sample, n - step), largest=False).indices  # a uniform sample of the unselected
        j = candidates[marginal_gains(sim, best, candidates).argmax()]
        order.append(j)
        taken[j] = True
        best = torch.maximum(best, sim[j])
    return _stack(order, sim.device)


def maximize(sim: torch.Tensor, budget: int, greedy: str = "lazy",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The ordered medoids (local indices) chosen by the named greedy (`GREEDY`)."""
    if greedy == "lazy":
        return lazy_greedy(sim, budget)
    if greedy == "naive":
        return naive_greedy(sim, budget)
    if greedy == "stochastic":
        return stochastic_greedy(sim, budget, generator)
    raise ValueError(f"unknown greedy {greedy!r}; valid: {', '.join(GREEDY)}")


def assign(sim: torch.Tensor, medoids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster of each point, size of each cluster): every point joins its most similar medoid (first in greedy
    order on ties), clusters numbered by the medoids' greedy order (`EPIC:utils/coreset.py:L32-39`)."""
    cluster = sim[:, medoids].argmax(1)
    return cluster, torch.bincount(cluster, minlength=len(medoids))


def _stack(order: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack(order) if order else torch.zeros(0, dtype=torch.long, device=device)
