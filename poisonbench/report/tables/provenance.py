"""What a table averaged: the crafts and code versions behind its runs (docs/metrics.md, "Report and tables").

A PoisonSet id hashes its crafting inputs; two crafts of one id (another machine, torch or code version) differ in
their floats, and each run record names the tensors it trained on (`inputs.poisons`, or `poison_tensors` before
it). A cell whose runs trained on two crafts of one PoisonSet pools two experiments: `mixed_cells` names each such
cell with its crafts (poison id @ tensor sha256, 8 characters each) and their run counts; `mixed_crafts` adds each
PoisonSet that the table's cells used in more than one craft. The table shows them as notes and `report ...
--strict` exits 1 on them. `caption` lists every craft and code version a table used. A record from before
`poison_tensors` names no craft: its craft is "unknown", never assumed equal to a named one.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pandas as pd

from ...experiment.run_inputs import craft_text
from .layout import method_label, rho_text

MAX_LISTED = 6  # crafts or code versions named one by one in a caption; more are counted


def cell_name(row) -> str:
    """A cell as a reader finds it in the tables: dataset · method · ρ (untargeted, clean) or attack (targeted)."""
    where = f"attack {row.attack}" if row.attack else f"ρ = {rho_text(row.rho)}"
    return f"{row.dataset} · {method_label(row.method)} · {where}"


def recrafted(shown: pd.DataFrame) -> bool:
    """Whether any PoisonSet appears in two crafts (tensor sha256) among the runs of `shown`. A cell is a subset of
    the runs, so without one no cell mixes crafts: `mixed_cells` skips its 16-column group-by (every table, format
    and `missing` on the 14 records of every kind: 0.81 → 0.71 CPU-seconds, measured 2026-11-30, docs/testing.md)."""
    seen: dict[str, str] = {}
    for text in shown.crafts_json:
        for pid, sha in json.loads(text or "{}").items():
            if seen.setdefault(pid, sha) != sha:
                return True
    return False


def mixed_cells(shown: pd.DataFrame) -> list[str]:
    """One line per cell (runs of one configuration, any trial) whose runs trained on more than one craft of a
    PoisonSet: the cell, and per such PoisonSet its crafts with how many runs each."""
    from .records import CONFIGURATION

    lines = []
    if shown.empty or not recrafted(shown):
        return []  # a cell mixes crafts only of a PoisonSet that has two among all the runs (the usual: none)
    for _, group in shown.groupby(CONFIGURATION[:-1], dropna=False, sort=True):
        per_set: dict[str, Counter] = defaultdict(Counter)
        for text in group.crafts_json:
            for pid, sha in json.loads(text or "{}").items():
                per_set[pid][sha] += 1
        mixed = {pid: shas for pid, shas in per_set.items() if len(shas) > 1}
        if not mixed:
            continue
        parts = "; ".join(f"PoisonSet {pid[:8]} as " + ", ".join(f"{craft_text(pid, sha)} ({n} run{'s' * (n > 1)})"
                                                                  for sha, n in sorted(shas.items()))
                          for pid, shas in sorted(mixed.items()))
        lines.append(f"mixed crafts in the cell {cell_name(group.iloc[0])}: {parts}; its mean pools runs "
                     "on different tensors of one poison id (re-crafts are other experiments)")
    return lines


def mixed_crafts(shown: pd.DataFrame) -> list[str]:
    """What `--strict` fails on: each cell whose runs trained on two crafts of one PoisonSet (`mixed_cells`), then
    each PoisonSet that the runs shown trained on in more than one craft across cells (the table then compares cells
    trained on other tensors of the same poison id), with its crafts, run and cell counts."""
    lines = mixed_cells(shown)
    if shown.empty:
        return lines
    from .records import CONFIGURATION

    runs: dict[str, Counter] = defaultdict(Counter)
    cells: dict[tuple[str, str], set] = defaultdict(set)
    for row in shown.itertuples(index=False):
        key = tuple(getattr(row, k) for k in CONFIGURATION[:-1])
        for pid, sha in json.loads(row.crafts_json or "{}").items():
            runs[pid][sha] += 1
            cells[pid, sha].add(key)
    for pid, shas in sorted(runs.items()):
        if len(shas) > 1:
            parts = ", ".join(f"{craft_text(pid, sha)} ({n} run{'s' * (n > 1)} in {len(cells[pid, sha])} "
                              f"cell{'s' * (len(cells[pid, sha]) > 1)})" for sha, n in sorted(shas.items()))
            lines.append(f"PoisonSet {pid[:8]} in {len(shas)} crafts among the runs shown: {parts}; cells on "
                         "different crafts compare other tensors of the same poison id")
    return lines


def caption(shown: pd.DataFrame) -> str:
    """"Crafts: …; code: …": every craft (poison id @ tensor sha256) and code version (the records' env.code)
    behind the runs shown, with run counts; counted instead of listed beyond `MAX_LISTED`."""
    if shown.empty:
        return ""
    crafts: Counter = Counter()
    for text in shown.crafts_json:
        for pid, sha in json.loads(text or "{}").items():
            crafts[pid, sha] += 1
    sets = Counter(pid for pid, _ in crafts)  # crafts per PoisonSet
    if not crafts:
        craft_part = "crafts: none named"
    elif len(crafts) <= MAX_LISTED:
        craft_part = "crafts: " + ", ".join(f"{craft_text(pid, sha)} ({n})" for (pid, sha), n in sorted(crafts.items()))
    else:
        twice = sum(n > 1 for n in sets.values())  # the PoisonSets crafted more than once
        craft_part = (f"crafts: {len(crafts)} of {len(sets)} PoisonSets"
                      + (f" ({twice} PoisonSet(s) in more than one craft)" if twice else ", one craft each"))
    codes = Counter(c[:8] if c else "unknown" for c in shown.code)
    if len(codes) <= MAX_LISTED:
        code_part = "code: " + ", ".join(f"{c} ({n})" for c, n in sorted(codes.items()))
    else:
        code_part = f"code: {len(codes)} versions"
    return f"{craft_part[0].upper()}{craft_part[1:]}; {code_part} (runs per craft and per code version in brackets)"
