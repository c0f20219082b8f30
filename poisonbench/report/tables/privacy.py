"""The privacy a DP-SGD cell bought, as a note under the table: ε at δ from the runs' records (the accountant's,
poisonbench/defenses/privacy.py), with the caveat every ε carries (shuffled batches: the Poisson figure, not a
proven bound; a BatchNorm model: no guarantee)."""

from __future__ import annotations

import json

import pandas as pd

from .layout import method_label


def accounting_of(row) -> dict:
    """A run's `record["defense"]["accounting"]` as `record_row` kept it (empty for a run without one)."""
    text = row.accounting_json if isinstance(row.accounting_json, str) else ""
    return json.loads(text) if text else {}


def epsilon_text(values: list) -> str:
    """"5.45e+06", "∞", or "1.2–1.3 (3 runs)" when the runs differ."""
    finite = sorted(v for v in values if v is not None)
    if not finite:
        return "∞"
    low, high = f"{finite[0]:.3g}", f"{finite[-1]:.3g}"
    text = low if low == high else f"{low}–{high} ({len(values)} runs)"
    return text + (" or ∞" if len(finite) < len(values) else "")


def caveat(acc: dict) -> str:
    if acc.get("guarantee"):
        return "Poisson-sampled batches: the RDP bound holds"
    parts = []
    if acc.get("sampling") != "poisson":
        parts.append("shuffled batches: the Poisson figure, not a proven bound (Chua et al. 2024)")
    if "BatchNorm" in str(acc.get("epsilon_note", "")):
        parts.append("BatchNorm statistics not privatised: no guarantee")
    if acc.get("epsilon") is None and acc.get("noise_multiplier") == 0:
        parts.append("σ = 0: no noise")
    return "; ".join(parts) or "not a guarantee"


def privacy_notes(rows: pd.DataFrame, where: str = "") -> list[str]:
    """One note per method and accounting setting among `rows` (the runs a block shows) whose records carry
    privacy accounting: ε at δ, the accountant's inputs and the caveat; `where` names the column."""
    if rows is None or not len(rows) or "accounting_json" not in rows:
        return []
    groups: dict[tuple, list[dict]] = {}
    for row in rows.itertuples():
        acc = accounting_of(row)
        if not acc:
            continue
        key = (row.method, row.params_json, acc.get("sampling"), acc.get("sample_rate"), acc.get("steps"),
               acc.get("delta_rule"))
        groups.setdefault(key, []).append(acc)
    notes = []
    for (method, params, _, q, steps, rule), accs in groups.items():
        first = accs[0]
        head = f"{method_label(method)} {compact(params)}{f', {where}' if where else ''}"
        if "delta" not in first:  # a record from before the accountant
            notes.append(f"{head}: ε not computed (run recorded before poisonbench had a privacy accountant)")
            continue
        deltas = sorted({a["delta"] for a in accs})
        delta = f"{deltas[0]:.3g}" if len(deltas) == 1 else f"{deltas[0]:.3g}–{deltas[-1]:.3g}"
        notes.append(f"{head}: ε = {epsilon_text([a.get('epsilon') for a in accs])} at δ = "
                     f"{f'{rule} = ' if rule and rule != 'given' else ''}{delta} (RDP, dp-accounting; q {q:.4g}, "
                     f"σ {first.get('noise_multiplier'):g}, {steps} steps{pld_text(accs)}) — {caveat(first)}")
    return notes


def pld_not_computed(acc: dict) -> str | None:
    """Why a record holds no PLD ε, or None where it holds one (a null one is ∞, as the RDP ε: σ = 0 adds no
    noise). Records from before the PLD accountant (2026-11-28, commit 4b9e8a0) have none; those from before commit
    4055bbf computed none below σ 0.3 (their `epsilon_pld_note` says so; since then it is computed there with a
    coarser interval and the note says that)."""
    from ...defenses.privacy import PLD_MIN_SIGMA

    if "epsilon_pld" not in acc:
        return "recorded before the PLD accountant"
    sigma = acc.get("noise_multiplier")
    if acc["epsilon_pld"] is None and isinstance(sigma, int | float) and 0 < sigma < PLD_MIN_SIGMA \
            and not str(acc.get("epsilon_pld_note") or "").startswith("PLD discretised"):
        return f"σ < {PLD_MIN_SIGMA:g}"
    return None


def pld_text(accs: list[dict]) -> str:
    """The note's PLD part: "; PLD ε = 2.82", "; PLD ε = ∞" (σ = 0), "; PLD ε not computed (σ < 0.3)", or "; PLD
    ε = 2.82, not computed for 1 run (σ < 0.3)" in a setting whose runs differ; nothing where no record has one."""
    if not any("epsilon_pld" in a for a in accs):
        return ""
    reasons = [pld_not_computed(a) for a in accs]
    why = "; ".join(sorted({r for r in reasons if r is not None}))
    shown = [a.get("epsilon_pld") for a, r in zip(accs, reasons, strict=True) if r is None]
    if not shown:
        return f"; PLD ε not computed ({why})"
    skipped = len(accs) - len(shown)
    return f"; PLD ε = {epsilon_text(shown)}" + (
        f", not computed for {skipped} run{'s' * (skipped != 1)} ({why})" if skipped else "")


def compact(params_json: str) -> str:
    """`(clip 1, noise_multiplier 0.01, sampling shuffle)`: the run's defense parameters, those set."""
    try:
        params = json.loads(params_json) if params_json else {}
    except ValueError:
        return ""
    shown = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items() if v is not None]
    return f"({', '.join(shown)})" if shown else ""
