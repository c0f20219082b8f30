"""Which parameter set of a method a table shows (HINT at the paper's r and β, else the defense's defaults, else
the set with the most runs), and the notes on the runs of other parameter sets."""

from __future__ import annotations

import json

import pandas as pd

from .constants import HINT_PAPER
from .labels import method_label
from .stats import close


def variant_text(chosen: str, other: str) -> str:
    a, b = json.loads(chosen), json.loads(other)
    diffs = [f"{k}={b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "same parameters"


def primary(df: pd.DataFrame, method: str, fixed: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `method` in its table setting (params matching `fixed`, e.g. HINT r = 0.5, β = 0.062; among
    the remaining runs those at the defense's defaults, else the parameter set with the most runs) and the rows
    left out. Preferring the defaults keeps a cell from switching to a sensitivity run that has more trials. The
    defaults may differ from run to run where they depend on the threat (Deep k-NN's k = 2·budget + 1, one per
    attack column of Table III), so every run at its defaults is kept, whatever their values."""
    rows = df[df.method == method]
    keep = rows
    for key, value in (fixed or {}).items():
        keep = keep[close(keep[key], value)]
    if keep.empty:
        return keep, rows
    defaults = keep[keep.default_params.astype(bool)]
    if not defaults.empty:  # every run at its defaults, which may differ by threat (a budget's k, ATDA's β)
        return defaults, rows.drop(defaults.index)
    counts = keep.groupby("params_json").size()
    chosen = sorted(counts.index, key=lambda p: (-counts[p], p))[0]
    return rows[rows.params_json == chosen], rows[rows.params_json != chosen]


def choose_parameters(sdf: pd.DataFrame, notes: list) -> dict[str, pd.DataFrame]:
    """Per method, the rows of its table parameter set (`primary`); a note for every run left out."""
    chosen = {}
    for m in sorted(set(sdf.method)):
        chosen[m], left = primary(sdf, m, HINT_PAPER if m == "hint" else None)
        if len(chosen[m]) and not chosen[m].default_params.any():
            notes.append(f"{method_label(m)} is shown with parameters other than its defaults (or from a version "
                         f"whose defaults this one cannot check): {chosen[m].params_json.iloc[0]}")
        notes.append(left_out_note(m, chosen[m], left))
    return chosen


def left_out_note(method: str, chosen: pd.DataFrame, left: pd.DataFrame,
                  see: str = "see Table IV / plain `report`") -> str | None:
    if left.empty:
        return None
    ref = chosen.params_json.iloc[0] if len(chosen) else "{}"
    variants = "; ".join(sorted(variant_text(ref, p) for p in left.params_json.unique()))
    return f"not shown: {len(left)} run(s) of {method} with other parameters ({variants}); {see}"
