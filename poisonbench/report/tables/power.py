"""The smallest paired effect a Table III cell can detect (its minimum detectable effect, MDE).

Table III's `vs W/o` row compares a defense with W/o Defense on the same n targets: a defense *separates* from W/o
Defense where Newcombe's 95 % interval of ASR(defense) − ASR(W/o Defense) excludes 0 and McNemar's exact p < 0.05
(`stats.newcombe_paired`, `stats.mcnemar_exact`). Here that rule's power is computed exactly, by enumerating every
outcome of the n paired targets, under the alternative most favourable to the defense: it saves targets (the attack
hit without it and missed with it) and makes none new. References: Newcombe, R. G. (1998), "Improved confidence
intervals for the difference between binomial proportions based on paired data", Stat. Med. 17:2635-2650 (method
10); McNemar, Q. (1947), Psychometrika 12:153-157, in its exact (binomial) form."""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from scipy.special import gammaln, xlogy

from .stats import mcnemar_exact, newcombe_paired

STEPS = 10_000  # detectable_effect's grid: multiples of 1 / STEPS (1e-4), in probability units
WINDOW = 10  # targets_needed: n counts once every n' in n .. n + WINDOW reaches the power


@cache
def _mcnemar_saved(saved: int) -> float:
    """McNemar's exact p with `saved` discordant targets, all saved, none new: 2 · 0.5^saved, capped at 1."""
    return mcnemar_exact(0, saved)


@lru_cache(maxsize=32)
def _separated(n: int, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every outcome (both, saved, neither) of n paired targets with none new that the project's rule declares
    separated, as arrays of the counts and of the log multinomial coefficient n! / (both! saved! neither!). The
    decision depends on the counts only, not on the probabilities, hence the cache. McNemar's p with none new falls
    as `saved` grows, so `saved` below the first count with p < alpha fails the rule whatever the rest; Newcombe's
    interval is computed for each remaining cell."""
    first = next((s for s in range(1, n + 1) if _mcnemar_saved(s) < alpha), None)
    both, saved = [], []
    if first is not None:
        for s in range(first, n + 1):
            for b in range(n - s + 1):
                lo, hi = newcombe_paired(b, 0, s, n - s - b)
                if hi < 0 or lo > 0:
                    both.append(b)
                    saved.append(s)
    b = np.asarray(both, dtype=np.int64)
    s = np.asarray(saved, dtype=np.int64)
    m = n - b - s
    log_coef = gammaln(n + 1) - gammaln(b + 1) - gammaln(s + 1) - gammaln(m + 1)
    return b, s, m, log_coef


def _check(n: int, p0: float, alpha: float) -> None:
    if n < 0:
        raise ValueError(f"n must be a count of targets, got {n}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must be a probability, got {p0}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def separation_power(n: int, p0: float, effect: float, alpha: float = 0.05) -> float:
    """The probability that a defense separates from W/o Defense on n paired targets (Newcombe's 95 % interval of
    the ASR difference excludes 0 and McNemar's exact p < alpha), exactly, by enumerating the multinomial outcomes
    (both, saved, neither) of the n targets under the alternative "the defense saves targets and makes none new":
    per target, P(hit without, hit with) = p0 − effect, P(hit without, missed with) = effect, P(missed without,
    hit with) = 0, P(missed both) = 1 − p0; 0 ≤ effect ≤ p0. p0 is W/o Defense's ASR, effect the drop in ASR.
    alpha is McNemar's level; Newcombe's interval is the table's 95 % one whatever alpha.

    At alpha = 0.05 the rule comes down to "at least 6 targets saved": with none new McNemar's p is 2 · 0.5^saved
    (0.0625 at 5, 0.031 at 6), and Newcombe's interval with none new excludes 0 wherever 6 or more are saved
    (checked for every table up to n = 400; with 5 saved it can fail from n = 117 on), so the power is
    P(Binomial(n, effect) ≥ 6), whatever p0 ≥ effect. At a larger alpha Newcombe's interval binds too."""
    _check(n, p0, alpha)
    if not -1e-12 <= effect <= p0 + 1e-12:
        raise ValueError(f"effect must be in [0, p0] = [0, {p0}], got {effect}")
    effect = min(max(effect, 0.0), p0)
    b, s, m, log_coef = _separated(n, alpha)
    if not len(b):
        return 0.0
    log_p = log_coef + xlogy(b, p0 - effect) + xlogy(s, effect) + xlogy(m, 1.0 - p0)
    return float(min(1.0, np.exp(log_p).sum()))


def detectable_effect(n: int, p0: float, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """The minimum detectable effect: the smallest drop in ASR (probability units, on a grid of 1e-4, with p0 itself
    as the last point) at which a defense separates from W/o Defense with probability ≥ `power` on n paired
    targets whose W/o Defense ASR is p0 (`separation_power`); None where even effect = p0, a defense that saves
    every hit, does not reach that power (or where p0 = 0: nothing to save).

    The alternative, "saves targets and makes none new", is the most favourable to the defense: for the same drop
    in ASR, new hits (targets the attack hits only with the defense) add discordant pairs against the drop, which
    only raise McNemar's p and widen Newcombe's interval. So the result is a lower bound on what a cell can detect:
    a smaller effect cannot be seen with that power even in the best case, and a non-separation is not evidence of
    no effect.

    Power is non-decreasing in effect here: couple the targets (one uniform draw each, "both" below p0 − effect,
    "saved" up to p0); a larger effect only turns "both" targets into "saved" ones, and the rule's separated region
    is closed under that move (tests/test_power.py checks it cell by cell), so bisection over the grid is exact.
    References: Newcombe (1998, Stat. Med. 17:2635, method 10); McNemar's exact test (the discordant pairs as a
    Binomial(·, ½) draw)."""
    _check(n, p0, alpha)
    if not 0.0 < power <= 1.0:
        raise ValueError(f"power must be in (0, 1], got {power}")
    if p0 == 0.0 or separation_power(n, p0, p0, alpha) < power:
        return None
    top = math.floor(p0 * STEPS + 1e-9)
    grid = [k / STEPS for k in range(top + 1)]
    if grid[-1] < p0 - 1e-12:
        grid.append(p0)
    else:
        grid[-1] = p0
    lo, hi = 0, len(grid) - 1  # power(grid[lo]) < power (grid[0] = 0: no save, no separation) ≤ power(grid[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if separation_power(n, p0, grid[mid], alpha) >= power:
            hi = mid
        else:
            lo = mid
    return grid[hi]


def targets_needed(p0: float, effect: float, power: float = 0.8, alpha: float = 0.05,
                   max_n: int = 400) -> int | None:
    """The number of paired targets a Table III cell needs for a defense that lowers the ASR from p0 by `effect`
    (saving targets, making none new: `separation_power`) to separate with probability ≥ `power`. An exact test's
    power need not be monotone in n (it can saw up and down as Newcombe's discrete thresholds move; at alpha = 0.05
    it is not, there being the power of "≥ 6 saved", `separation_power`), so the rule: the smallest n ≤ max_n such
    that n and every count up to n + 10 reach the power; None where there is none (or effect = 0, or effect > p0).
    Costs O(n³) calls of Newcombe's interval in all, seconds for a few hundred targets."""
    _check(max_n, p0, alpha)
    if not 0.0 < power <= 1.0:
        raise ValueError(f"power must be in (0, 1], got {power}")
    if effect <= 0.0 or effect > p0 + 1e-12:
        return None
    start, run = 0, 0
    for n in range(1, max_n + WINDOW + 1):
        if separation_power(n, p0, min(effect, p0), alpha) < power:
            run = 0
            continue
        if run == 0:
            if n > max_n:
                return None
            start = n
        run += 1
        if run == WINDOW + 1:
            return start
    return None


@lru_cache(maxsize=1024)
def detectable_note(n: int, k0: int, baseline: str = "W/o Defense") -> str:
    """One line for under Table III, for a cell whose baseline row (W/o Defense, or the row of `report table 3
    --versus`, named by `baseline`) has k0 hits out of n paired targets: the smallest drop in ASR (pp, rounded up)
    a row separates with 80 % power (`detectable_effect`), and the targets that 80 % power for a 20 pp drop needs
    (`targets_needed`). The power is the same against any baseline row: only its hits can be saved. Cached: a
    function of its three arguments alone, and its search over n (`targets_needed`) took a tenth of a Table III
    build; `report html` and a sweep's report build the table more than once."""
    if n < 1 or not 0 <= k0 <= n:
        raise ValueError(f"need 0 ≤ k0 ≤ n and n ≥ 1, got k0 = {k0}, n = {n}")
    head = f"detectable: with {n} targets and {baseline} at {k0}/{n} ({100 * k0 / n:.0f} %)"
    if k0 == 0:
        without = "without a defense" if baseline == "W/o Defense" else f"with {baseline}"
        return f"{head}, no hits {without}: no drop in ASR can be detected (there is nothing to save)"
    p0 = k0 / n
    mde = detectable_effect(n, p0)
    if mde is None:
        text = (f"{head}, no defense separates with 80 % power, not even one that saves every hit "
                f"({_pp(p0)} pp) and makes none new (a non-separation is not evidence of no effect)")
    else:
        text = (f"{head}, a defense that saves hits and makes none new separates with 80 % power only if it lowers "
                f"the ASR by ≥ {_pp(mde)} pp (a smaller effect, or one with new hits, can go unseen: a "
                "non-separation is not evidence of no effect)")
    if p0 >= 0.2:
        need = targets_needed(p0, 0.2)
        text += (f"; 80 % power for a 20 pp effect needs ≥ {need} targets" if need is not None else
                 "; 80 % power for a 20 pp effect needs more than 400 targets")
    return text


def _pp(x: float) -> int:
    """A probability in percentage points, rounded up (a detectable effect is a bound from below)."""
    return math.ceil(100 * x - 1e-9)
