"""Table IV: HINT's sensitivity to r and β under the untargeted mix."""

from __future__ import annotations

import pandas as pd

from .. import paper
from .cells import (
    Block,
    Cell,
    Options,
    Table,
    acc_cell,
    acc_data,
    diff_cell,
    mark_best,
    paper_cell,
    setting_data,
    setting_notes,
)
from .constants import BETA_GRID, CAPTIONS, HINT_PAPER, R_GRID, SENSITIVITY_RHO
from .labels import rho_text, value_text
from .parameters import left_out_note, primary
from .selection import mix_note, untargeted
from .settings import Setting, in_setting, settings
from .stats import close, stat
from .table2 import paper_mix_only


def sensitivity_rows(sdf: pd.DataFrame, param: str, value: float) -> pd.DataFrame:
    """The HINT runs of the cell `param` = `value` (the other of r, β at the paper's value): one parameter set,
    chosen as a Table II column's (`primary`), so runs that differ in γ, schedule, sign, ... are not averaged in."""
    return primary(sdf, "hint", {**HINT_PAPER, param: value})[0]


def sensitivity_note(sdf: pd.DataFrame, shown: list[pd.DataFrame], see: str) -> str | None:
    """Counts the HINT runs of `sdf` in none of the `shown` cells and names how their parameters differ from
    the paper cell's (r = 0.5, β = 0.062; the first non-empty cell if that one is empty)."""
    hint = sdf[sdf.method == "hint"]
    shown_ids = {rid for rows in shown for rid in rows.run_id}
    reference = sensitivity_rows(sdf, "ratio", HINT_PAPER["ratio"])
    if reference.empty:
        reference = next((rows for rows in shown if len(rows)), reference)
    return left_out_note("hint", reference, hint[~hint.run_id.isin(shown_ids)], see)


def table4(df: pd.DataFrame, opts: Options) -> Table:
    rho = SENSITIVITY_RHO if opts.rho is None else opts.rho
    df = untargeted(df)
    df = df[(df.method == "hint") & close(df.rho, rho)]
    ss = settings(df)
    if not ss:
        return Table("4", CAPTIONS["4"], [], [])
    columns = ["parameter", "value"]
    comparable = close(rho, SENSITIVITY_RHO)
    elsewhere = f" (the paper's Table IV is at ρ = {SENSITIVITY_RHO}: no paper numbers)"
    notes = [f"runs at ρ = {rho_text(rho)}" + (" (the paper's)" if comparable else elsewhere)]
    paper_ok_of: dict[Setting, bool] = {}
    for s in ss:
        columns.append(s.label)
        mix_notes: list[str] = []
        paper_ok = comparable and paper_mix_only(in_setting(df, s), mix_notes)
        key = paper.paper_key("4", s.dataset) if paper_ok else None
        notes += [f"{s.label}: {n}" for n in mix_notes]
        if opts.paper and key:
            columns.append(f"{paper.paper_label('4', s.dataset)}")
        if opts.diff and key:
            columns.append(f"{s.dataset} Δ")
        notes += [f"{s.label}: {n}" for n in setting_notes(s, "4", opts, paper_ok=paper_ok)]
        paper_ok_of[s] = paper_ok
        mixed = mix_note(in_setting(df, s))
        notes += [f"{s.label}: {mixed}"] if mixed else []
    block = Block(f"HINT at ρ = {rho_text(rho)}", columns)
    data = []
    shown: dict[Setting, list[pd.DataFrame]] = {s: [] for s in ss}
    for param, grid, sym in (("ratio", R_GRID, "r"), ("beta", BETA_GRID, "β")):
        if param == "beta":
            block.rules.add(len(block.rows))
        ours: dict[Setting, list[Cell]] = {s: [] for s in ss}
        for j, value in enumerate(grid):
            row = [Cell(sym if j == 0 else "", label=True), Cell(value_text(value), label=True)]
            for s in ss:
                rows = sensitivity_rows(in_setting(df, s), param, value)
                shown[s].append(rows)
                st = stat(rows.test_acc)
                key = paper.paper_key("4", s.dataset) if paper_ok_of[s] else None
                p = paper.table4(key, param, value) if key else None
                cell = acc_cell(st, opts)
                ours[s].append(cell)
                row.append(cell)
                if opts.paper and key:
                    row.append(paper_cell(p))
                if opts.diff and key:
                    row.append(diff_cell(st, p))
                data.append({"table": "IV", **setting_data(s), "rho": rho, "parameter": param, "value": value,
                             **acc_data(st, p)})
            block.rows.append(row)
        for cells in ours.values():
            mark_best(cells)
    for s in ss:
        note = sensitivity_note(in_setting(df, s), shown[s], "see the plain `report`")
        notes += [f"{s.label}: {note}"] if note else []
    block.notes = notes
    ids = {i for frames in shown.values() for rows in frames for i in rows.run_id}
    return Table("4", CAPTIONS["4"], [block], data, shown=ids)
