"""Table III: attack success and test accuracy against the targeted attacks."""

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
from .constants import ATTACKS, CAPTIONS
from .labels import method_label, rho_text
from .parameters import choose_parameters
from .selection import methods_of
from .settings import in_setting, settings
from .stats import num, stat, wilson


def targeted_pooling_notes(chosen: dict[str, pd.DataFrame]) -> list[str]:
    """Warnings for Table III cells that pool targeted runs of different poison budgets or scenarios."""
    notes = []
    for m, rows in chosen.items():
        if rows is None:
            continue
        for a, cell in rows.groupby("attack"):
            budgets = sorted({rho_text(r) for r in cell.rho if not pd.isna(r)})
            scenarios = sorted({str(x) for x in cell.scenario})
            if len(budgets) > 1 or len(scenarios) > 1:
                notes.append(f"warning: {method_label(m)} / {paper.ATTACK_LABEL.get(a, a)} pools runs of "
                             f"poison budgets {', '.join(budgets)} and scenarios {', '.join(scenarios)}")
    return notes


def newest_poison_kinds(chosen: dict[str, pd.DataFrame | None], notes: list) -> dict[str, str]:
    """Per attack column of Table III, the one poison kind (ε, attack parameters and the surrogate crafted against;
    each trial has its own target and PoisonSet) that every method's cell shows, so the column compares like with
    like: that of the column's most recently finished run. A note counts the runs left out."""
    rows = [r for r in chosen.values() if r is not None and len(r)]
    if not rows:
        return {}
    kinds = {}
    for a, column in pd.concat(rows).groupby("attack"):
        if column.poisons_json.nunique() < 2:
            continue
        kinds[a] = column.sort_values(["finished_at", "run_id"]).poisons_json.iloc[-1]
        left = int((column.poisons_json != kinds[a]).sum())
        notes.append(f"not shown: {left} {paper.ATTACK_LABEL.get(a, a)} run(s) whose poisons differ in ε, budget or "
                     "attack parameters (or the model they were crafted against) from the column's newest run (a "
                     "column shows one kind)")
    return kinds


def of_kinds(rows: pd.DataFrame | None, kinds: dict[str, str]) -> pd.DataFrame | None:
    """The rows of the poison kind each attack column shows (`newest_poison_kinds`; other attacks: all)."""
    if rows is None:
        return None
    wanted = rows.attack.map(kinds)
    return rows[wanted.isna() | (rows.poisons_json == wanted)]


def removal_cell(rows: pd.DataFrame | None) -> tuple[Cell, dict]:
    """What a removing defense (a filter, EPIC) took out, summed over the cell's trials: poisons removed / poisons
    and the percentage of clean rows removed (the filter paper's Tables 1–2). Empty for other defenses."""
    if rows is None or "poisons_removed" not in rows:
        return Cell(), {}
    counted = rows.dropna(subset=["poisons_removed", "poisons", "clean_removed", "clean"])
    if not len(counted):
        return Cell(), {}
    pr, p = int(counted.poisons_removed.sum()), int(counted.poisons.sum())
    cr, c = int(counted.clean_removed.sum()), int(counted.clean.sum())
    clean_pct = 100 * cr / c if c else 0.0
    return (Cell(f"{pr}/{p} poisons, {clean_pct:.1f} % clean", round(pr / p, 4) if p else None),
            {"poisons_removed": pr, "poisons": p, "clean_removed": cr, "clean": c})


def table3(df: pd.DataFrame, opts: Options) -> Table:
    df = df[df.kind == "targeted"]
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes = setting_notes(s, "3", opts)
        chosen = choose_parameters(sdf, notes)
        attacks = list(ATTACKS) + sorted(set(sdf.attack) - set(ATTACKS))
        methods = methods_of(sdf, every_paper_method=opts.paper)
        show_paper, show_diff = opts.paper, opts.diff  # the paper's Table III is CIFAR-10 only
        columns = ["method", "metric"]
        for a in attacks:
            columns.append(paper.ATTACK_LABEL.get(a, a))
            if show_paper:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} (paper CIFAR-10)")
            if show_diff:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} Δ")
        block = Block(s.label, columns, notes=[n for n in notes if n])
        kinds = newest_poison_kinds(chosen, block.notes)
        asr_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        acc_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        for i, m in enumerate(methods):
            asr_row = [Cell(method_label(m), label=True), Cell("ASR", label=True)]
            acc_row = [Cell("", label=True), Cell("test acc.", label=True)]
            removal_row, removes = [Cell("", label=True), Cell("removed", label=True)], False
            for a in attacks:
                rows = chosen.get(m)
                rows = rows[rows.attack == a] if rows is not None else None
                rows = of_kinds(rows, kinds)
                shown |= set(rows.run_id) if rows is not None else set()
                succ = [bool(x) for x in rows.success if x is not None and not pd.isna(x)] if rows is not None else []
                k, n = sum(succ), len(succ)
                st = stat(rows.test_acc) if rows is not None else None
                p = paper.table3(m, a)
                asr = Cell()
                if n:
                    asr = Cell(f"{k}/{n}", round(k / n, 4))
                    if opts.wilson:
                        lo, hi = wilson(k, n)
                        asr.text += f" [{100 * lo:.0f}–{100 * hi:.0f}%]"
                acc = acc_cell(st, opts)
                removed, removal = removal_cell(rows)
                removal_row.append(removed)
                removes = removes or bool(removal)
                asr_cols[a].append(asr)
                acc_cols[a].append(acc)
                asr_row.append(asr)
                acc_row.append(acc)
                if show_paper:
                    asr_row.append(Cell(f"{p['success'][0]}/{p['success'][1]}") if p else Cell())
                    acc_row.append(paper_cell(p["acc"] if p else None))
                    removal_row.append(Cell())
                if show_diff:
                    asr_row.append(Cell(f"{100 * (k / n - p['success'][0] / p['success'][1]):+.0f} pp")
                                   if p and n else Cell())
                    acc_row.append(diff_cell(st, p["acc"] if p else None))
                    removal_row.append(Cell())
                lo, hi = wilson(k, n)
                params = rows.params_json.iloc[0] if rows is not None and len(rows) else ""
                data.append({"table": "III", **setting_data(s), "attack": a, "method": m, "params": params,
                             "successes": k, "trials": n, "asr": num(100 * k / n) if n else None,
                             "asr_wilson_low": num(100 * lo), "asr_wilson_high": num(100 * hi),
                             "paper_successes": p["success"][0] if p else None,
                             "paper_trials": p["success"][1] if p else None,
                             **{f"acc_{k_}": v for k_, v in acc_data(st, p["acc"] if p else None).items()},
                             **removal})
            if i:
                block.rules.add(len(block.rows))
            block.rows += [asr_row, acc_row]
            if removes:  # a removing defense: what it took out, per attack
                block.rows.append(removal_row)
        for a in attacks:
            mark_best(asr_cols[a], higher=False)
            mark_best(acc_cols[a])
        block.notes += targeted_pooling_notes({m: of_kinds(rows, kinds) for m, rows in chosen.items()})
        blocks.append(block)
    return Table("3", CAPTIONS["3"], blocks, data, shown=shown)
