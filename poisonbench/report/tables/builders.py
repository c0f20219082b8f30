"""The builders of Tables II–V and `build`, which selects a table's records and calls its builder.

First the cell formatting every table shares (mean ± std cells, the paper's column and ours − paper, the best of a
row in bold, the paired difference to W/o Defense, the tidy rows of csv / json, the notes on a setting); then one
section per table: II (accuracy against the untargeted mix at each ρ), III (attack success and accuracy against
the targeted attacks), IV (HINT's sensitivity to r and β), V (execution time).
"""

from __future__ import annotations

import json

import pandas as pd

from ...core.errors import PoisonbenchError, unknown_choice
from .. import paper
from . import provenance
from .layout import (
    ATTACKS,
    BETA_GRID,
    CAPTIONS,
    DASH,
    HINT_PAPER,
    MATRIX,
    PAPER_MIX,
    R_GRID,
    RHOS,
    ROMAN,
    SENSITIVITY_RHO,
    TABLES,
    Block,
    Cell,
    Options,
    Table,
    method_label,
    rho_text,
    upper_bound,
    value_text,
)
from .power import detectable_note
from .privacy import privacy_notes
from .records import (
    Setting,
    apply_filters,
    budget_row_labels,
    cell_records,
    choose_parameters,
    craft_notes,
    frame,
    in_setting,
    left_out_note,
    methods_of,
    mix_note,
    primary,
    row_budget,
    settings,
    split_budget_key,
    untargeted,
    with_budget_rows,
)
from .stats import PairedSuccess, Stat, close, num, paired_success, stat, wilson

# --- cell formatting shared by every table --------------------------------------------------------------------

def acc_cell(st: Stat | None, opts: Options, signed: bool = False) -> Cell:
    """Mean ± std (± the t-interval with --ci) in percent; `signed` for differences (no value: never bold)."""
    if st is None:
        return Cell()
    fmt = "+.2f" if signed else ".2f"

    def show(value: float) -> str:  # a value that rounds to zero prints as +0.00 (signed) or 0.00, never -0.00
        text = f"{100 * value:{fmt}}"
        return ("+0.00" if signed else "0.00") if text == "-0.00" else text

    text = show(st.mean)
    if st.n > 1:
        text += f" ± {100 * st.std:.2f}"
        if opts.ci:
            text += f" [{show(st.lo)}, {show(st.hi)}]"
    if st.n != opts.trials:  # fewer trials than asked, or several mixes pooled (--attacks any)
        text += f" (n={st.n})"
    return Cell(text) if signed else Cell(text, round(100 * st.mean, 2))


PAIR_KEYS = ["trial", "seed", "mix", "poisons_json"]  # same seed and same poisons: the runs saw the same rows


def run_pairs(rows: pd.DataFrame, baseline: pd.DataFrame, column: str) -> list[tuple]:
    """(`column` of a run, the baseline's) for each run and baseline run that share trial, seed, attack mix and
    PoisonSets (ids and, where the records name them, tensors): those saw the same poisoned rows (or target),
    initialisation and batch order. Runs without such a partner stay out. In the order of an inner join of `rows`
    with `baseline` on those keys (pandas' `merge`: the runs in their order, each with its partners in theirs).

    A dictionary join, not `DataFrame.merge`: a table asks for one join per cell, of a few runs each, where a merge's
    fixed cost was a third of Table II's time (tests/test_builders_contracts.py checks it against `merge`)."""
    columns = [*PAIR_KEYS, "poison_tensors_json", column]
    partners: dict[tuple, list[tuple]] = {}
    for *key, craft, value in baseline[columns].itertuples(index=False, name=None):
        partners.setdefault(tuple(key), []).append((craft, value))
    # the same poison ids crafted into other tensors are other poisons; a record that does not name its tensors
    # (written before 2026-11-23, commit a76ea46) cannot tell and is paired as before
    return [(value, base) for *key, craft, value in rows[columns].itertuples(index=False, name=None)
            for base_craft, base in partners.get(tuple(key), ())
            if craft == base_craft or craft == "" or base_craft == ""]


def paired_stat(rows: pd.DataFrame | None, baseline: pd.DataFrame | None) -> Stat | None:
    """Mean ± sample std of `test_acc` − the baseline's over the paired runs (`run_pairs`): the difference cancels
    what the two runs share."""
    if rows is None or baseline is None:
        return None
    return stat(None if pd.isna(acc) or pd.isna(base) else acc - base
                for acc, base in run_pairs(rows, baseline, "test_acc"))


def paired_data(st: Stat | None) -> dict:
    if st is None:
        return {"paired_n": 0, "paired_mean": None, "paired_std": None, "paired_ci_low": None,
                "paired_ci_high": None}
    return {"paired_n": st.n, "paired_mean": num(100 * st.mean), "paired_std": num(100 * st.std),
            "paired_ci_low": num(100 * st.lo), "paired_ci_high": num(100 * st.hi)}


def paper_cell(p) -> Cell:
    return Cell() if p is None else Cell(f"{p[0]:.2f} ± {p[1]:.2f}")


def diff_cell(st: Stat | None, p) -> Cell:
    return Cell() if st is None or p is None else Cell(f"{100 * st.mean - p[0]:+.2f}")


def mark_best(cells: list[Cell], higher: bool = True) -> None:
    """Mark the best of the ranked cells (an upper bound's cells, `ranked` False, are never best nor compared)."""
    ranked = [c for c in cells if c.ranked]
    values = [c.value for c in ranked if c.value is not None]
    for c in cells:
        c.best = False
    if len(values) < 2:
        return
    best = max(values) if higher else min(values)
    for c in ranked:
        c.best = c.value is not None and c.value == best


def acc_data(st: Stat | None, p=None) -> dict:
    if st is None:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None,
                "paper_mean": p[0] if p else None, "paper_std": p[1] if p else None, "diff": None}
    return {"n": st.n, "mean": num(100 * st.mean), "std": num(100 * st.std), "ci_low": num(100 * st.lo),
            "ci_high": num(100 * st.hi), "paper_mean": p[0] if p else None, "paper_std": p[1] if p else None,
            "diff": num(100 * st.mean - p[0]) if p else None}


def setting_data(s: Setting) -> dict:
    return {"dataset": s.dataset, "model": s.model, "recipe": s.recipe, "epochs": s.epochs,
            "setting": s.label, "reduced_scale": bool(s.reduced)}


def setting_notes(s: Setting, table: str, opts: Options, paper_ok: bool = True) -> list[str]:
    """Notes on a setting: reduced scale, and where the paper column comes from (`paper_ok` False: the table gives
    no paper numbers for these runs and says why elsewhere)."""
    notes = []
    if s.reduced:
        notes.append("reduced scale, not the paper's setting: " + "; ".join(s.reduced))
    if (opts.paper or opts.diff) and paper_ok:
        key = paper.paper_key(table, s.dataset)
        if key is None:
            notes.append(f"the paper has no results for {s.dataset}: no paper column")
        elif key != s.dataset:
            notes.append(f"paper column: the paper's {paper.PAPER_LABEL[key]} numbers (our data: {s.dataset})")
    return notes


# --- Table II: test accuracy against the untargeted mix at each poison ratio ρ --------------------------------

def paper_mix_only(sdf: pd.DataFrame, notes: list) -> bool:
    """Whether the paper's Table II / IV numbers apply to these runs: all on the paper's four-attack mix (any
    PoisonSets of it); otherwise a note says why the paper columns stay empty."""
    mixes = {m for m in sdf.mix.unique() if m} if len(sdf) else set()  # clean runs (ρ = 0) have no mix
    if mixes and mixes != {PAPER_MIX}:
        notes.append("no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC, these runs are on "
                     + " | ".join(sorted(mixes)))
        return False
    return True


def table2(df: pd.DataFrame, opts: Options) -> Table:
    df = untargeted(df)
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        mix_notes: list[str] = []
        mix_ok = paper_mix_only(sdf, mix_notes)
        notes = setting_notes(s, "2", opts, paper_ok=mix_ok) + mix_notes
        chosen = choose_parameters(sdf, notes)
        notes.append(mix_note(sdf))
        methods = methods_of(sdf, every_paper_method=opts.paper)
        key = paper.paper_key("2", s.dataset) if mix_ok else None
        plabel = paper.paper_label("2", s.dataset)
        show_paper, show_diff = opts.paper and key, opts.diff and key
        has_runs = {m for m, rows in chosen.items() if rows is not None and len(rows)}
        paired = opts.paired and "none" in has_runs
        if opts.paired and not paired:
            notes.append("no paired column: this setting has no W/o Defense runs to pair with")
        columns = ["ρ"]
        for m in methods:
            columns.append(method_label(m))
            if show_paper:
                columns.append(f"{method_label(m)} ({plabel})")
            if show_diff:
                columns.append(f"{method_label(m)} Δ")
            if paired and m != "none" and m in has_runs:
                columns.append(f"{method_label(m)} − {method_label('none')} (paired)")
        if paired:
            notes.append("paired: the defense's test accuracy minus W/o Defense's, per pair of runs with the same "
                         "trial, seed, attack mix and PoisonSets (same poisoned rows and batch order, and the same "
                         "craft where the records name it); mean ± std in points over the pairs")
        found = {round(r, 6) for r in sdf.rho}  # every ρ run, also by parameter sets the columns leave out
        # the paper's six ρ rows with --paper (its numbers fill them); otherwise the ρ that were run
        rhos = [opts.rho] if opts.rho is not None else sorted(set(RHOS if opts.paper else ()) | found)
        block = Block(s.label, columns, notes=[n for n in notes if n])
        unpaired: dict[str, int] = {}
        for rho in rhos:
            row, ours = [Cell(rho_text(rho), label=True)], []
            for m in methods:
                rows = chosen.get(m)
                st = stat(rows[close(rows.rho, rho)].test_acc) if rows is not None else None
                shown |= set(rows[close(rows.rho, rho)].run_id) if rows is not None else set()
                p = paper.table2(key, rho, m) if key else None
                cell = acc_cell(st, opts)
                cell.ranked = not upper_bound(m)
                row.append(cell)
                ours.append(cell)
                if show_paper:
                    row.append(paper_cell(p))
                if show_diff:
                    row.append(diff_cell(st, p))
                baseline = chosen.get("none")
                pst = None
                if paired and m != "none" and m in has_runs:
                    at_rho = rows[close(rows.rho, rho)]
                    pst = paired_stat(at_rho, baseline[close(baseline.rho, rho)])
                    row.append(acc_cell(pst, opts, signed=True))
                    missing = len(at_rho) - (pst.n if pst is not None else 0)
                    if missing:
                        unpaired[m] = unpaired.get(m, 0) + missing
                params = rows.params_json.iloc[0] if rows is not None and len(rows) else ""
                data.append({"table": "II", **setting_data(s), "rho": rho, "method": m, "params": params,
                             **acc_data(st, p), **paired_data(pst)})
            mark_best(ours)
            block.rows.append(row)
        for m in methods:  # the ε of the DP-SGD runs shown
            rows = chosen.get(m)
            if rows is not None:
                block.notes += privacy_notes(rows[rows.run_id.isin(shown)])
        block.notes += [f"paired: {k} {method_label(m)} run(s) have no W/o Defense run of the same trial and seed "
                        "on the same craft of the PoisonSets among those shown (not run yet, re-run with another "
                        "--seed, or trained on another craft) and stay out of the paired column"
                        for m, k in unpaired.items()]
        blocks.append(block)
    return Table("2", table2_caption(df), blocks, data, shown=shown)


ATTACK_LABELS = {"pgd": "PGD", "dap": "DAP", "durp": "DURP", "deepconfuse": "DC"}


def table2_caption(df: pd.DataFrame) -> str:
    """Table II's caption, naming the attacks when the rows are not the paper's mix and any chosen PoisonSets."""
    caption = CAPTIONS["2"]
    mixes = sorted(m for m in df.mix.unique() if m) if len(df) else []
    if len(mixes) == 1 and mixes[0] != PAPER_MIX:
        attacks = mixes[0].split(",")
        label = "+".join(ATTACK_LABELS.get(a, a) for a in attacks)
        caption = caption.replace("the untargeted mix (PGD+DAP+DURP+DC)",
                                  f"the untargeted {'mix' if len(attacks) > 1 else 'attack'} ({label})")
    chosen = sorted(c for c in df.poison_sets.unique() if c) if len(df) else []
    if chosen:
        caption += f"; PoisonSets chosen with --poisons: {' | '.join(chosen)}"
    return caption


# --- Table III: attack success and test accuracy against the targeted attacks ---------------------------------

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


def paired_targets(rows: pd.DataFrame | None, baseline: pd.DataFrame | None) -> PairedSuccess | None:
    """A defense's attack success against W/o Defense's on the same targets: runs that share trial, seed and
    PoisonSets (ids and, where the records name them, tensors) saw the same target and poisons, so each target
    counts once as a pair of outcomes (Newcombe's interval and McNemar's test, `stats.paired_success`)."""
    if rows is None or baseline is None:
        return None
    pairs = [(bool(hit), bool(base)) for hit, base in run_pairs(rows, baseline, "success")
             if not pd.isna(hit) and not pd.isna(base)]
    return paired_success([hit for hit, _ in pairs], [base for _, base in pairs])


def paired_success_cell(ps: PairedSuccess | None) -> tuple[Cell, dict]:
    """`Δ −50 pp [−71, −22] · 11 saved, 1 new of 20 · p 0.006`: the defense's ASR minus W/o Defense's on the same
    targets with Newcombe's 95 % interval, the discordant targets, McNemar's exact p."""
    if ps is None:
        return Cell(), {"paired_targets": 0, "paired_saved": None, "paired_new": None, "paired_diff": None,
                        "paired_low": None, "paired_high": None, "paired_p": None}

    def pp(x: float) -> str:
        text = f"{100 * x:+.0f}"
        return "+0" if text == "-0" else text

    text = (f"Δ {pp(ps.diff)} pp [{pp(ps.lo)}, {pp(ps.hi)}] · {ps.second_only} saved, {ps.first_only} new of "
            f"{ps.n} · p {ps.p:.2g}")
    return Cell(text), {"paired_targets": ps.n, "paired_saved": ps.second_only, "paired_new": ps.first_only,
                        "paired_diff": num(100 * ps.diff), "paired_low": num(100 * ps.lo),
                        "paired_high": num(100 * ps.hi), "paired_p": num(ps.p, 6)}


def budget_note(sdf: pd.DataFrame) -> str:
    """Which budget a row's β is, beside the attack's ε: a defense at the paper's β (chosen for 16/255 attacks)
    against a larger ε is a defense at a fraction of the attack's budget (issue 80)."""
    eps = sorted({json.loads(p).get("eps") for p in sdf.poisons_json if p} - {None})
    against = f"; the attacks' ε here: {', '.join(f'{e:g}' for e in eps)}" if eps else ""
    return ("β: the defense's own perturbation budget (L∞, pixel units; HINT's and FRIENDS' noise bound, ATDA's "
            f"adversary), one row per β run; the paper's is 0.062, chosen for 16/255 attacks{against}")


def table3(df: pd.DataFrame, opts: Options) -> Table:
    df = df[df.kind == "targeted"]
    blocks, data, shown = [], [], set()
    found_versus, row_names = False, set()  # --versus: whether any block has the row, and every row's label
    for s in settings(df):
        sdf = in_setting(df, s)
        notes = setting_notes(s, "3", opts)
        chosen = choose_parameters(sdf, notes, budgets=True)
        attacks = list(ATTACKS) + sorted(set(sdf.attack) - set(ATTACKS))
        methods = with_budget_rows(methods_of(sdf, every_paper_method=opts.paper), chosen)
        labels = budget_row_labels(methods, chosen)
        if len(labels):
            notes.append(budget_note(sdf))
        row_names |= {labels.get(m, method_label(m)) for m in methods
                      if chosen.get(m) is not None and len(chosen[m])}
        show_paper, show_diff = opts.paper, opts.diff  # the paper's Table III is CIFAR-10 only
        columns = ["method", "metric"]
        for a in attacks:
            columns.append(paper.ATTACK_LABEL.get(a, a))
            if show_paper:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} (paper CIFAR-10)")
            if show_diff:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} Δ")
        has_runs = {m for m, rows in chosen.items() if rows is not None and len(rows)}
        base_key = "none" if opts.versus is None else versus_row(opts.versus, methods, labels)
        # the row's label as shown ("W/o Defense" for none); a name no row of this block has, as given
        base_label = labels.get(base_key, method_label(base_key)) if base_key is not None else opts.versus
        if base_key is not None and base_key in has_runs:
            found_versus = True
        paired = (opts.paired or opts.versus is not None) and base_key in has_runs
        if (opts.paired or opts.versus is not None) and not paired:
            notes.append("no paired row: this setting has no W/o Defense runs to pair with" if opts.versus is None
                         else f"no paired row: this setting has no {base_label} runs to pair with")
        if paired:
            notes.append(paired_note(base_key, base_label))
        block = Block(s.label, columns, notes=[n for n in notes if n])
        kinds = newest_poison_kinds(chosen, block.notes)
        asr_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        acc_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        for i, m in enumerate(methods):
            base_method, row_beta = split_budget_key(m)
            asr_row = [Cell(labels.get(m, method_label(m)), label=True), Cell("ASR", label=True)]
            acc_row = [Cell("", label=True), Cell("test acc.", label=True)]
            removal_row, removes = [Cell("", label=True), Cell("removed", label=True)], False
            paired_row = [Cell("", label=True), Cell("vs W/o" if base_key == "none" else f"vs {base_label}",
                                                        label=True)]
            for a in attacks:
                rows = chosen.get(m)
                rows = rows[rows.attack == a] if rows is not None else None
                rows = of_kinds(rows, kinds)
                shown |= set(rows.run_id) if rows is not None else set()
                succ = [bool(x) for x in rows.success if x is not None and not pd.isna(x)] if rows is not None else []
                k, n = sum(succ), len(succ)
                st = stat(rows.test_acc) if rows is not None else None
                p = paper.table3(m, a)  # a budget row ("hint@beta=0.3") has no paper number
                asr = Cell()
                if n:
                    asr = Cell(f"{k}/{n}", round(k / n, 4))
                    if opts.wilson:
                        lo, hi = wilson(k, n)
                        asr.text += f" [{100 * lo:.0f}–{100 * hi:.0f}%]"
                acc = acc_cell(st, opts)
                asr.ranked = acc.ranked = not upper_bound(m)
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
                pairing = None
                if paired and m != base_key and rows is not None and len(rows):
                    base = of_kinds(chosen[base_key], kinds)
                    pairing = paired_targets(rows, base[base.attack == a])
                pcell, pdata = paired_success_cell(pairing)
                paired_row.append(pcell)
                if show_paper:
                    paired_row.append(Cell())
                if show_diff:
                    paired_row.append(Cell())
                lo, hi = wilson(k, n)
                params = rows.params_json.iloc[0] if rows is not None and len(rows) else ""
                beta = row_beta if row_beta is not None else row_budget(rows)
                data.append({"table": "III", **setting_data(s), "attack": a, "method": base_method,
                             "beta": beta, "params": params,
                             "successes": k, "trials": n, "asr": num(100 * k / n) if n else None,
                             "asr_wilson_low": num(100 * lo), "asr_wilson_high": num(100 * hi),
                             "paper_successes": p["success"][0] if p else None,
                             "paper_trials": p["success"][1] if p else None,
                             **{f"acc_{k_}": v for k_, v in acc_data(st, p["acc"] if p else None).items()},
                             **removal, **pdata,
                             "paired_with": base_label if paired else None})
            if i:
                block.rules.add(len(block.rows))
            block.rows += [asr_row, acc_row]
            if paired and m != base_key and any(c.text != DASH for c in paired_row[2:]):
                block.rows.append(paired_row)
            if removes:  # a removing defense: what it took out, per attack
                block.rows.append(removal_row)
        for a in attacks:
            mark_best(asr_cols[a], higher=False)
            mark_best(acc_cols[a])
        block.notes += targeted_pooling_notes({m: of_kinds(rows, kinds) for m, rows in chosen.items()})
        if paired:
            block.notes += detectable_notes(of_kinds(chosen[base_key], kinds), attacks, base_label)
        blocks.append(block)
    if opts.versus is not None and blocks and not found_versus:
        raise PoisonbenchError(f"--versus {opts.versus!r}: no row of Table III with runs is named that; rows: "
                               f"{', '.join(sorted(row_names))}")
    return Table("3", CAPTIONS["3"], blocks, data, shown=shown)


def normal_row_name(name: str) -> str:
    """A row's name as `--versus` compares it: case, spaces and β / beta alike."""
    return " ".join(name.replace("β", "beta").lower().split())


def versus_row(versus: str, methods: list[str], labels: dict[str, str]) -> str | None:
    """The row key `report table 3 --versus` names in this block: a method's plain row by its name ("hint",
    "none"), or any row by its label as the table shows it ("HINT (β 0.3, signed)", "W/o Defense"; β may be written
    "beta"); None where the block has no such row."""
    wanted = normal_row_name(versus)
    for m in methods:
        if wanted in (normal_row_name(m), normal_row_name(labels.get(m, method_label(m)))):
            return m
    return None


def paired_note(base_key: str, base_label: str) -> str:
    """The note under a paired Table III: what `vs W/o` (or `vs <row>`, with `--versus`) holds and when a row
    separates."""
    if base_key == "none":
        return ("vs W/o: the defense's ASR minus W/o Defense's on the same targets (runs of the same trial, seed and "
                "PoisonSets), with Newcombe's 95 % interval for paired proportions; saved: targets the attack hit "
                "without the defense and missed with it, new: the reverse; p: McNemar's exact test. A defense "
                "separates from W/o Defense where the interval excludes 0 and p < 0.05 (on a few targets the "
                "interval, an asymptotic one, can exclude 0 where the exact test does not)")
    return (f"vs {base_label}: the row's ASR minus {base_label}'s on the same targets (runs of the same trial, seed "
            "and PoisonSets), with Newcombe's 95 % interval for paired proportions; saved: targets the attack hit "
            f"with {base_label} and missed with the row, new: the reverse; p: McNemar's exact test. A row separates "
            f"from {base_label} where the interval excludes 0 and p < 0.05 (on a few targets the interval, an "
            "asymptotic one, can exclude 0 where the exact test does not)")


def detectable_notes(baseline: pd.DataFrame, attacks: list[str], name: str = "W/o Defense") -> list[str]:
    """Per attack column with runs of the baseline row (W/o Defense, or `--versus`'s row, named `name`), the
    smallest paired effect its n targets can detect (`power.detectable_note`, docs/metrics.md): what a
    non-separation in that column can and cannot say."""
    notes = []
    for a in attacks:
        succ = [bool(x) for x in baseline[baseline.attack == a].success if x is not None and not pd.isna(x)]
        if succ:
            notes.append(f"{paper.ATTACK_LABEL.get(a, a)}: {detectable_note(len(succ), sum(succ), name)}")
    return notes


# --- Table IV: HINT's sensitivity to r and β under the untargeted mix -----------------------------------------

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


# --- Table V: execution time of the defenses and the ratio to no defense --------------------------------------

def table5(df: pd.DataFrame, opts: Options) -> Table:
    rho = SENSITIVITY_RHO if opts.rho is None else opts.rho
    df = untargeted(df)
    df = df[close(df.rho, rho)]
    blocks, data, ids = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes = [f"runs at ρ = {rho_text(rho)}; time = training + the defense's own work (cost.train + "
                 "defense_prepare + defense_epoch); × none = mean time / mean time of W/o Defense"]
        notes += setting_notes(s, "5", opts)
        notes.append(mix_note(sdf))
        entries: list[tuple[str, str, float | None, pd.DataFrame]] = []
        for m in methods_of(sdf, every_paper_method=opts.paper):
            if m == "hint":
                hint = [sensitivity_rows(sdf, "ratio", r) for r in R_GRID]
                entries += [(f"HINT (r = {value_text(r)})", m, r, rows) for r, rows in zip(R_GRID, hint, strict=True)]
                at_paper_beta = sdf[close(sdf.beta, HINT_PAPER["beta"])]  # other β: Table IV's rows, not V's
                notes.append(sensitivity_note(at_paper_beta, hint, "see Table IV / plain `report`"))
                continue
            rows, left = primary(sdf, m)
            notes.append(left_out_note(m, rows, left))
            entries.append((method_label(m), m, None, rows))
        shown = pd.concat([rows for *_, rows in entries])
        ids |= set(shown.run_id)
        if shown.compiled.nunique() > 1:
            notes.append(f"times mix {int(shown.compiled.sum())} compiled and {int((~shown.compiled).sum())} eager "
                         "run(s) (torch.compile); compare times only within one mode (`--compile on|off`)")
        none_time = stat(entries[0][3].time)
        pnone = paper.table5("none")
        columns = ["method", "time (s)", "defense (s)", "× none"]
        if opts.paper:
            columns += ["paper CIFAR-10 time (s)", "paper × none"]
        if opts.diff:
            columns += ["Δ × none"]
        block = Block(s.label, columns, notes=[n for n in notes if n])
        for label, m, r, rows in entries:
            t, d = stat(rows.time), stat(rows.defense_time)
            ratio = t.mean / none_time.mean if t and none_time and none_time.mean > 0 else None
            p = paper.table5(m, r)
            pratio = p / pnone if p is not None else None
            row = [Cell(label, label=True)]
            if t is None:
                row += [Cell(), Cell(), Cell()]
            else:
                text = f"{t.mean:.1f}" + (f" ± {t.std:.1f}" if t.n > 1 else "")
                if opts.ci and t.n > 1:
                    text += f" [{t.lo:.1f}, {t.hi:.1f}]"
                text += f" (n={t.n})" if t.n != opts.trials else ""
                row += [Cell(text), Cell(f"{d.mean:.1f}"), Cell(f"{ratio:.2f}×" if ratio is not None else DASH)]
            if opts.paper:
                row += [Cell(f"{p:.0f}" if p is not None else DASH), Cell(f"{pratio:.2f}×" if pratio else DASH)]
            if opts.diff:
                row += [Cell(f"{ratio - pratio:+.2f}" if ratio is not None and pratio is not None else DASH)]
            block.rows.append(row)
            data.append({"table": "V", **setting_data(s), "rho": rho, "method": m, "ratio": r,
                         "n": t.n if t else 0, "time_mean": num(t.mean, 2) if t else None,
                         "time_std": num(t.std, 2) if t else None, "defense_mean": num(d.mean, 2) if d else None,
                         "x_none": num(ratio), "paper_time": p, "paper_x_none": num(pratio),
                         "diff_x_none": num(ratio - pratio) if ratio is not None and pratio is not None else None})
        blocks.append(block)
    return Table("5", CAPTIONS["5"], blocks, data, shown=ids)


# --- a numbered table from run records: the records' selection, the builder, the version note -----------------

def matrix(df: pd.DataFrame, opts: Options) -> Table:
    from .matrix import matrix as build_matrix

    return build_matrix(df, opts)


def backdoor(df: pd.DataFrame, opts: Options) -> Table:
    from .backdoor import backdoor_table

    return backdoor_table(df, opts)


BACKDOOR = "backdoor"  # `report table backdoor` (tables/backdoor.py, issue 85): not a paper table
BUILDERS = {"2": table2, "3": table3, "4": table4, "5": table5, MATRIX: matrix, BACKDOOR: backdoor}


def check_table(number: str) -> str:
    """`number` as one of TABLES ("2".."5", or II..V in any case), `matrix` or `backdoor`; an unknown one is refused
    as given."""
    name = str(number).strip().upper()
    name = {v: k for k, v in ROMAN.items()}.get(name, name)
    if name.lower() in (MATRIX, BACKDOOR):
        return name.lower()
    if name not in TABLES:
        raise unknown_choice("table", number, (*TABLES, MATRIX, BACKDOOR))
    return name


def build(number: str, records: list[dict], opts: Options, **filters) -> Table:
    number = check_table(number)
    methods = filters.pop("methods", None)  # after the generation choice, as `missing_commands` does
    df, notes = cell_records(apply_filters(frame(records), **filters))
    df = apply_filters(df, methods=methods, mix=None, poison_sets=None)
    table = BUILDERS[number](df, opts)
    table.notes += notes
    shown = df[df.run_id.isin(table.shown)]
    versions = sorted(c for c in shown.code.unique() if c) if len(shown) else []
    unknown = int((shown.code == "").sum()) if len(shown) else 0
    if len(versions) + (unknown > 0) > 1:
        older = f", and {unknown} run(s) older than the fingerprint" if unknown else ""
        count = f"{len(versions)} version{'' if len(versions) == 1 else 's'}"
        table.notes.append(f"the runs shown were made by {count} of the code (the records' "
                           f"env.code fingerprint){older}; on a CPU, versions that change no arithmetic give the "
                           "same numbers, others differ by float rounding (docs/fidelity.md names the changes)")
    table.notes += craft_notes(shown)
    table.mixed = provenance.mixed_crafts(shown)
    table.notes += table.mixed
    if len(shown):
        table.caption = f"{table.caption}. {provenance.caption(shown)}"
    return table
