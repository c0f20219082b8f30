"""Cell statistics: mean ± sample std, the 95 % t-interval, Wilson intervals for success counts; the tolerance
parameters are matched with and the rounding of the numbers in csv / json."""

from __future__ import annotations

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


def t975(df: int) -> float:
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


def close(a, b: float, tol: float = TOL):
    return (a - b).abs() <= tol if isinstance(a, pd.Series) else abs(a - b) <= tol


def num(x: float, digits: int = 4):
    return None if x is None or pd.isna(x) else round(float(x), digits)
