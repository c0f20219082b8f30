"""Cell statistics: mean ± sample std, the 95 % t-interval, Wilson intervals for success counts, the paired
difference of two success rates on the same targets (Newcombe's interval, McNemar's exact test); the tolerance
parameters are matched with and the rounding of the numbers in csv / json."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pandas as pd

from .layout import TOL


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # sample std (ddof=1); NaN for one trial
    lo: float  # 95% t-interval; NaN for one trial
    hi: float


@functools.cache  # a table asks for the same few degrees of freedom in every cell; scipy's ppf costs ~0.1 ms a call
def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95 % t-interval's factor)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def stat(values) -> Stat | None:
    v = [float(x) for x in values if x is not None and not pd.isna(x)]
    if not v:
        return None
    n = len(v)
    mean = sum(v) / n
    if n == 1:
        return Stat(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a success rate k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class PairedSuccess:
    """Two success outcomes on the same n targets (a defense's runs and W/o Defense's): `first_only` targets the
    attack hit only in the first, `second_only` only in the second; `diff` = first's rate − second's, in [lo, hi]
    (Newcombe's method 10), `p` McNemar's exact two-sided p-value."""
    n: int
    both: int
    first_only: int
    second_only: int
    neither: int
    diff: float
    lo: float
    hi: float
    p: float


def newcombe_paired(both: int, first_only: int, second_only: int, neither: int,
                    z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % interval of p1 − p2 for paired binary outcomes, p1 = (both + first_only) / n and p2 = (both +
    second_only) / n: Newcombe (1998, Stat. Med. 17:2635, method 10). Each marginal's Wilson interval (l_i, u_i),
    combined square-and-add with the correlation φ of the 2×2 table, whose numerator ad − bc is shrunk by n / 2
    towards 0 when positive (0 when 0 ≤ ad − bc ≤ n / 2) and left as it is when negative:
    L = D − √((p1 − l1)² − 2φ(p1 − l1)(u2 − p2) + (u2 − p2)²), U = D + √((p2 − l2)² − 2φ(p2 − l2)(u1 − p1) +
    (u1 − p1)²)."""
    n = both + first_only + second_only + neither
    if n == 0:
        return math.nan, math.nan
    k1, k2 = both + first_only, both + second_only
    p1, p2 = k1 / n, k2 / n
    (l1, u1), (l2, u2) = wilson(k1, n, z), wilson(k2, n, z)
    margins = k1 * (n - k1) * k2 * (n - k2)
    cross = both * neither - first_only * second_only
    shrunk = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = shrunk / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """McNemar's exact two-sided p-value: the discordant pairs as a Binomial(first_only + second_only, ½) draw
    (scipy's binomtest); 1 when no pair is discordant."""
    discordant = first_only + second_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(first_only, discordant, 0.5).pvalue)


def paired_success(first: list[bool], second: list[bool]) -> PairedSuccess | None:
    """The paired comparison of two success lists over the same targets, in the same order."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes need one per target in both lists, got {len(first)} and {len(second)}")
    if not first:
        return None
    both = sum(a and b for a, b in zip(first, second, strict=True))
    first_only = sum(a and not b for a, b in zip(first, second, strict=True))
    second_only = sum(b and not a for a, b in zip(first, second, strict=True))
    neither = len(first) - both - first_only - second_only
    lo, hi = newcombe_paired(both, first_only, second_only, neither)
    return PairedSuccess(len(first), both, first_only, second_only, neither, (first_only - second_only) / len(first),
                         lo, hi, mcnemar_exact(first_only, second_only))


def close(a, b: float, tol: float = TOL):
    return (a - b).abs() <= tol if isinstance(a, pd.Series) else abs(a - b) <= tol


def num(x: float, digits: int = 4):
    return None if x is None or pd.isna(x) else round(float(x), digits)
