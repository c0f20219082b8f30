"""poisonbench.report.tables.power: the exact power of Table III's separation rule (Newcombe's 95 % interval of the
paired ASR difference excludes 0 and McNemar's exact p < alpha) against a defense that saves targets and makes none
new, the minimum detectable effect, the targets needed, and the line under the table.

The references here are independent of the module: Monte Carlo draws of the paired 2×2 tables (numpy), decided with
statsmodels' exact McNemar test and with Newcombe's method 10 written below from the paper (Wilson limits from
statsmodels); an exhaustive enumeration of every 2×2 table for small n with scipy's multinomial pmf; and the closed
form that the rule reduces to at alpha = 0.05, P(Binomial(n, effect) ≥ 6)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import binom, multinomial
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from poisonbench.report.tables import power as power_module
from poisonbench.report.tables.power import detectable_effect, detectable_note, separation_power, targets_needed


def newcombe10(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe (1998, Stat. Med. 17:2635), method 10, in the paper's notation: a 2×2 table of n paired outcomes,
    a = both, b = first only, c = second only, d = neither; θ = (b − c) / n = A − B with A = (a + b) / n and
    B = (a + c) / n; (l2, u2), (l3, u3) the Wilson limits of A and B; φ = (ad − bc) / √(efgh) over the margins
    e..h (0 when one is 0), with ad − bc replaced by max(ad − bc − n/2, 0) when ad > bc; δ = √((A − l2)² −
    2φ(A − l2)(u3 − B) + (u3 − B)²), ε = √((u2 − A)² − 2φ(u2 − A)(B − l3) + (B − l3)²); interval (θ − δ, θ + ε)."""
    n = a + b + c + d
    big_a, big_b = (a + b) / n, (a + c) / n
    l2, u2 = proportion_confint(a + b, n, alpha=0.05, method="wilson")
    l3, u3 = proportion_confint(a + c, n, alpha=0.05, method="wilson")
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    phi = 0.0 if margins == 0 else (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins)
    theta = (b - c) / n
    delta = math.sqrt(max(0.0, (big_a - l2) ** 2 - 2 * phi * (big_a - l2) * (u3 - big_b) + (u3 - big_b) ** 2))
    eps = math.sqrt(max(0.0, (u2 - big_a) ** 2 - 2 * phi * (u2 - big_a) * (big_b - l3) + (big_b - l3) ** 2))
    return theta - delta, theta + eps


def separates(both: int, new: int, saved: int, neither: int, alpha: float) -> bool:
    """Table III's rule, independently: the defense's outcome first (new = hit only with the defense), W/o
    Defense's second (saved = hit only without it)."""
    lo, hi = newcombe10(both, new, saved, neither)
    p = mcnemar(np.array([[both, new], [saved, neither]]), exact=True).pvalue
    return (lo > 0 or hi < 0) and p < alpha


def exhaustive_power(n: int, p0: float, effect: float, alpha: float) -> float:
    """Every 2×2 table of n targets (new hits included, at probability 0), its multinomial probability, its
    independent decision."""
    probs = [p0 - effect, 0.0, effect, 1.0 - p0]  # both, new, saved, neither
    total = 0.0
    for a, b, c in itertools.product(range(n + 1), repeat=3):
        d = n - a - b - c
        if d < 0:
            continue
        pr = multinomial.pmf([a, b, c, d], n, probs)
        if pr > 0 and separates(a, b, c, d, alpha):
            total += pr
    return total


# ---- separation_power -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, p0, effect, alpha, seed", [
    (23, 0.7, 0.3, 0.05, 1),
    (57, 0.35, 0.1, 0.05, 2),
    (57, 0.7, 0.0, 0.05, 3),  # no effect: nothing saved, never separated
    (23, 0.35, 0.35, 0.05, 4),  # effect = p0: every hit saved
    (20, 0.45, 0.2, 0.25, 5),  # here Newcombe's interval binds: McNemar alone would give P(Bin(20, 0.2) ≥ 4) = 0.59
    (31, 0.6, 0.15, 0.1, 6),
])
def test_separation_power_agrees_with_an_independent_monte_carlo(n, p0, effect, alpha, seed):
    draws = 20_000
    rng = np.random.default_rng(seed)
    tables = rng.multinomial(n, [p0 - effect, 0.0, effect, 1.0 - p0], size=draws)  # both, new, saved, neither
    unique, counts = np.unique(tables, axis=0, return_counts=True)
    hits = sum(int(k) for t, k in zip(unique, counts, strict=True) if separates(*map(int, t), alpha))
    simulated = hits / draws
    exact = separation_power(n, p0, effect, alpha)
    se = math.sqrt(max(exact * (1 - exact), 1 / draws) / draws)
    assert abs(simulated - exact) <= 3 * se, (simulated, exact, se)
    if effect == 0:
        assert exact == 0.0 and simulated == 0.0 and exact <= alpha


@pytest.mark.parametrize("n, p0, effect, alpha", [
    (8, 1.0, 0.6, 0.05),  # p0 = 1: every table has neither = 0
    (9, 0.9, 0.9, 0.05),  # every hit saved, the all-saved table has probability 0.9^9
    (12, 0.6, 0.4, 0.25),  # Newcombe's interval binds at 4 saved
    (10, 0.5, 0.4, 0.25),
    (11, 0.8, 0.5, 0.0625),  # McNemar's p at 5 saved is 0.0625 exactly: not < alpha
    (7, 0.3, 0.1, 0.5),
])
def test_separation_power_equals_the_exhaustive_sum_over_every_table(n, p0, effect, alpha):
    assert separation_power(n, p0, effect, alpha) == pytest.approx(exhaustive_power(n, p0, effect, alpha), abs=1e-12)


def test_at_alpha_005_the_rule_is_six_saved_targets_whatever_p0():
    """McNemar's exact p with s saved and none new is 2 · 0.5^s: 0.0625 at 5 (not < 0.05), 0.031 at 6; Newcombe's
    interval with none new excludes 0 wherever ≥ 6 are saved (every table up to n = 400; 5 saved suffice up to
    n = 116). So the rule is "≥ 6 saved", saved ~ Binomial(n, effect), and p0 plays no part (beyond effect ≤ p0)."""
    for n in (117, 200):  # with 5 saved Newcombe's interval no longer always excludes 0: McNemar does not either
        assert not all(newcombe10(b, 0, 5, n - 5 - b)[1] < 0 for b in range(n - 4))
    for n in (6, 13, 20, 44, 90):
        for p0 in (0.3, 0.7, 1.0):
            for effect in (0.05, 0.15, 0.3):
                assert separation_power(n, p0, effect) == pytest.approx(binom.sf(5, n, effect), abs=1e-12)
    assert separation_power(5, 1.0, 1.0) == 0.0  # 5 targets, all saved: p = 0.0625
    assert separation_power(6, 1.0, 1.0) == pytest.approx(1.0, abs=1e-15)  # 6 of 6 saved: p = 0.031


def test_mcnemar_level_is_a_strict_inequality():
    # 5 of 5 saved: McNemar's exact p is 2 · 0.5^5 = 0.0625 exactly, Newcombe's interval [−1, −0.57] excludes 0
    assert separation_power(5, 1.0, 1.0, alpha=0.0625) == 0.0
    assert separation_power(5, 1.0, 1.0, alpha=0.0626) == pytest.approx(1.0, abs=1e-15)


def test_the_separated_region_is_closed_under_saving_one_more_target():
    """Power is monotone in effect because turning a "both" target into a "saved" one never undoes a separation
    (the coupling argument of detectable_effect's docstring): checked cell by cell, then on the power itself."""
    for alpha in (0.05, 0.25):
        for n in range(1, 61):
            b, s, _, _ = power_module._separated(n, alpha)
            region = set(zip(b.tolist(), s.tolist(), strict=True))
            assert all((bb - 1, ss + 1) in region for bb, ss in region if bb > 0), (n, alpha)
    for n, p0, alpha in ((20, 0.45, 0.25), (37, 0.7, 0.05), (12, 1.0, 0.25)):
        powers = [separation_power(n, p0, e, alpha) for e in np.linspace(0, p0, 60)]
        assert all(x <= y + 1e-12 for x, y in zip(powers, powers[1:], strict=False)), (n, p0, alpha)


def test_separation_power_rejects_an_effect_outside_0_p0():
    with pytest.raises(ValueError):
        separation_power(20, 0.5, 0.6)
    with pytest.raises(ValueError):
        separation_power(20, 0.5, -0.1)
    with pytest.raises(ValueError):
        separation_power(20, 1.5, 0.1)


# ---- detectable_effect ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, p0, alpha", [(20, 0.7, 0.05), (57, 0.35, 0.05), (23, 0.45, 0.25), (60, 0.7, 0.05)])
def test_detectable_effect_is_the_grid_point_at_the_boundary(n, p0, alpha):
    r = detectable_effect(n, p0, alpha=alpha)
    assert r is not None and 0 < r <= p0
    assert separation_power(n, p0, r, alpha) >= 0.8
    assert separation_power(n, p0, r - 1e-3, alpha) < 0.8
    assert separation_power(n, p0, r - 1e-4, alpha) < 0.8  # the grid's step: no smaller grid point reaches 0.8
    assert round(r * 10_000) == pytest.approx(r * 10_000, abs=1e-6) or r == p0


def test_detectable_effect_at_20_targets_and_70_percent():
    """n = 20, p0 = 0.7: McNemar needs ≥ 6 saved with none new (2 · 0.5^5 = 0.0625 ≥ 0.05, 2 · 0.5^6 = 0.031),
    Newcombe's interval excludes 0 at ≥ 6 saved (at 20 targets already at 5), so power = P(Binomial(20, e) ≥ 6),
    which is 0.8 at e ≈ 0.36645: the MDE is 0.3665 on the 1e-4 grid (37 pp), well below p0 (a defense need not
    save every hit)."""
    root = brentq(lambda e: binom.sf(5, 20, e) - 0.8, 0.01, 0.99)
    assert 0.3664 < root < 0.3665
    assert detectable_effect(20, 0.7) == 0.3665
    assert detectable_effect(20, 0.7, power=0.5) < 0.3665  # less power, a smaller effect


def test_detectable_effect_does_not_grow_with_the_targets():
    # the documented behaviour at alpha = 0.05: power = P(Bin(n, e) ≥ 6) grows with n, so the MDE falls (no saw)
    for p0 in (0.7, 0.35):
        mdes = [detectable_effect(n, p0) for n in range(10, 81)]
        seen = [m for m in mdes if m is not None]
        assert seen and mdes[-1] is not None
        assert all(m is not None for m in mdes[mdes.index(seen[0]):])  # once detectable, detectable at larger n
        assert all(x >= y for x, y in zip(seen, seen[1:], strict=False)), p0
    assert detectable_effect(80, 0.7) < detectable_effect(40, 0.7) < detectable_effect(20, 0.7)


def test_detectable_effect_none_where_saving_every_hit_is_not_enough():
    assert detectable_effect(5, 0.2) is None  # at most 5 saved: McNemar's p ≥ 0.0625
    assert detectable_effect(30, 0.1) is None  # P(Bin(30, 0.1) ≥ 6) = 0.07
    assert detectable_effect(40, 0.0) is None
    # 6 targets, all hit: only saving all 6 separates, with probability e^6, 0.8 at e = 0.8^(1/6) = 0.96350
    assert detectable_effect(6, 1.0) == 0.9635 == math.ceil(0.8 ** (1 / 6) * 10_000) / 10_000


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 80).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_detectable_effect_property(n_k0):
    n, k0 = n_k0
    p0 = k0 / n
    r = detectable_effect(n, p0)
    if r is None:
        assert k0 == 0 or separation_power(n, p0, p0) < 0.8
        return
    assert 0 < r <= p0
    assert separation_power(n, p0, r) >= 0.8
    assert r - 1e-4 < 0 or separation_power(n, p0, r - 1e-4) < 0.8


# ---- targets_needed ---------------------------------------------------------------------------------------------

def test_targets_needed_for_a_20pp_drop_from_70_percent():
    needed = targets_needed(0.7, 0.2)
    assert 20 <= needed <= 80
    assert needed == 39  # P(Bin(n, 0.2) ≥ 6) first reaches 0.8 at n = 39 (0.820; 0.7996 at 38)
    assert separation_power(needed, 0.7, 0.2) >= 0.8 > separation_power(needed - 1, 0.7, 0.2)
    assert all(separation_power(m, 0.7, 0.2) >= 0.8 for m in range(needed, needed + 11))
    assert targets_needed(0.5, 0.2) == 39  # p0 plays no part at alpha = 0.05


def test_targets_needed_where_newcombe_binds():
    needed = targets_needed(0.45, 0.2, alpha=0.25)
    assert all(separation_power(m, 0.45, 0.2, 0.25) >= 0.8 for m in range(needed, needed + 11))
    assert separation_power(needed - 1, 0.45, 0.2, 0.25) < 0.8


def test_targets_needed_rule_skips_a_count_whose_neighbours_fall_back(monkeypatch):
    """The documented rule on a sawtooth power curve: n counts only if it and n + 1 .. n + 10 all reach the
    power; None where that first happens beyond max_n."""
    passing = {5, 6, 9} | set(range(12, 40))
    monkeypatch.setattr(power_module, "separation_power",
                        lambda n, p0, effect, alpha=0.05: 0.9 if n in passing else 0.5)
    assert targets_needed(0.7, 0.2) == 12
    assert targets_needed(0.7, 0.2, max_n=12) == 12
    assert targets_needed(0.7, 0.2, max_n=11) is None
    passing.discard(22)
    assert targets_needed(0.7, 0.2) == 23


def test_targets_needed_none_cases():
    assert targets_needed(0.1, 0.2) is None  # cannot lower a 10 % ASR by 20 pp
    assert targets_needed(0.7, 0.0) is None
    assert targets_needed(0.7, 0.2, max_n=38) is None


# ---- detectable_note --------------------------------------------------------------------------------------------

def test_detectable_note_whole_lines():
    # 50 targets: MDE 0.1536 (P(Bin(50, e) ≥ 6) = 0.8), rounded up to 16 pp
    assert detectable_note(50, 35) == (
        "detectable: with 50 targets and W/o Defense at 35/50 (70 %), a defense that saves hits and makes none new "
        "separates with 80 % power only if it lowers the ASR by ≥ 16 pp (a smaller effect, or one with new hits, "
        "can go unseen: a non-separation is not evidence of no effect); 80 % power for a 20 pp effect needs ≥ 39 "
        "targets")
    assert detectable_note(5, 1) == (
        "detectable: with 5 targets and W/o Defense at 1/5 (20 %), no defense separates with 80 % power, not even "
        "one that saves every hit (20 pp) and makes none new (a non-separation is not evidence of no effect); 80 % "
        "power for a 20 pp effect needs ≥ 39 targets")
    assert detectable_note(60, 3) == (  # a 5 % ASR cannot drop by 20 pp: no targets clause
        "detectable: with 60 targets and W/o Defense at 3/60 (5 %), no defense separates with 80 % power, not even "
        "one that saves every hit (5 pp) and makes none new (a non-separation is not evidence of no effect)")


def test_detectable_note_without_hits():
    assert detectable_note(60, 0) == (
        "detectable: with 60 targets and W/o Defense at 0/60 (0 %), no hits without a defense: no drop in ASR can be "
        "detected (there is nothing to save)")
    with pytest.raises(ValueError):
        detectable_note(10, 11)


def test_the_cached_note_is_the_notes_function_and_a_refusal_is_never_cached():
    """`detectable_note` is cached (a function of its arguments alone): each argument takes part in the key, and
    a refused argument is refused again on the next call."""
    from poisonbench.report.tables.power import detectable_note

    for n, k0, baseline in ((20, 12, "W/o Defense"), (20, 12, "HINT"), (20, 13, "W/o Defense"),
                            (21, 12, "W/o Defense"), (20, 0, "HINT")):
        assert detectable_note(n, k0, baseline) == detectable_note.__wrapped__(n, k0, baseline)
    assert detectable_note(20, 12, "HINT") != detectable_note(20, 12, "W/o Defense")
    assert detectable_note(20, 12) != detectable_note(20, 13) != detectable_note(21, 13)
    for _ in range(2):
        with pytest.raises(ValueError, match="need 0 ≤ k0 ≤ n and n ≥ 1, got k0 = 5, n = 4"):
            detectable_note(4, 5)
