"""`report table backdoor`: the backdoor family's table of its own (issue 85; docs/metrics.md, "Backdoors").

One block per setting (dataset · model · recipe), one row per (backdoor, defense): the mean attack success rate
over trials with its 95 % t interval (clipped to [0, 100]) and n, the Wilson interval of the ASR pooled over every
triggered test image of the cell's runs, the mean clean test accuracy, and each defense's difference from
W/o Defense *paired by trial* (the same trial of a backdoor trains on the same PoisonSet: seed + trial), mean over
the trials both ran [95 % t interval]. Per cell, one parameter set of the defense is shown (`primary`, as the
matrix); a backdoor's rows show one kind of PoisonSet (attack parameters, ε, budget): that of its newest run.
"""

from __future__ import annotations

import pandas as pd

from .layout import Block, Cell, Options, Table, method_label
from .matrix import attack_order, column_rows, newest_kind, row_methods
from .records import (
    budget_row_labels,
    choose_parameters,
    in_setting,
    row_budget,
    settings,
    split_budget_key,
    with_budget_rows,
)
from .stats import num, stat, wilson

BACKDOOR = "backdoor"
CAPTION = ("The backdoors: attack success rate (ASR %: triggered test images of the other classes classified as the "
           "target class), mean over trials [95 % t interval] (n), its Wilson interval pooled over the triggered "
           "images, and clean test accuracy (%); Δ: the defense minus W/o Defense on the same trials (paired)")
COLUMNS = ["attack", "defense", "ASR (%)", "ASR Wilson (pooled)", "clean acc (%)", "Δ ASR (paired)",
           "Δ acc (paired)"]


BUDGET_NOTE = ("β: the defense's own perturbation budget (L∞, pixel units; HINT's and FRIENDS' noise bound, ATDA's "
               "adversary), one row per β and update step run; the paper's is 0.062")


def bounded(value: float) -> float:
    """A t interval's end of a rate (ASR, accuracy), clipped to [0, 1]: the interval of a mean of a few rates far
    apart (BadNets' 7 %, 20 %, 47 %) reaches past them, and no rate lies there."""
    return min(1.0, max(0.0, value))


def mean_text(st, scale: float = 100.0) -> str:
    if st is None:
        return "–"
    text = f"{scale * st.mean:.2f}"
    if st.n > 1:
        text += f" [{scale * bounded(st.lo):.2f}, {scale * bounded(st.hi):.2f}]"
    return text + f" (n={st.n})"


def paired(chosen: pd.DataFrame, base: pd.DataFrame, column: str):
    """The per-trial differences chosen − base of `column` on the trials both ran, as a Stat (None: none shared)."""
    a = chosen.drop_duplicates("trial").set_index("trial")[column]
    b = base.drop_duplicates("trial").set_index("trial")[column]
    both = a.index.intersection(b.index)
    return stat((a[both] - b[both]).astype(float).tolist()) if len(both) else None


def backdoor_table(df: pd.DataFrame, opts: Options) -> Table:
    wanted = list(opts.attacks) if opts.attacks else None
    df = df[df.kind == BACKDOOR]
    if wanted:
        df = df[df.attack.isin(wanted)]
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes: list[str] = []
        block = Block(s.label, list(COLUMNS))
        for attack in attack_order(set(sdf.attack), wanted):
            rows = newest_kind(column_rows(sdf, BACKDOOR, attack, 0.0), attack, notes)
            if not len(rows):
                continue
            # a defense's runs at another β or update step get rows of their own, as in Table III ("HINT (β 0.3,
            # signed)" beside "HINT (β 0.062)"); other parameter sets are left out with a note
            every = choose_parameters(rows, notes, budgets=True, see=f"backdoor {attack}; see plain `report`")
            base = every.get("none", rows.iloc[0:0])  # W/o Defense's runs: what every row is paired with
            methods = with_budget_rows(row_methods(set(rows.method)), every)
            labels = budget_row_labels(methods, every)
            if labels:
                notes.append(BUDGET_NOTE)
            for m in methods:
                # a method with no run here (W/o Defense, which every block lists) has no key in `every`
                chosen, (method, beta) = every.get(m, rows.iloc[0:0]), split_budget_key(m)
                label = labels.get(m, method_label(m))
                if not len(chosen):
                    block.rows.append([Cell(attack, label=True), Cell(label, label=True),
                                       *[Cell() for _ in COLUMNS[2:]]])
                    continue
                shown |= set(chosen.run_id)
                asr, acc = stat(chosen.asr.dropna()), stat(chosen.test_acc)
                hits, n = int(chosen.asr_hits.sum()), int(chosen.asr_n.sum())
                lo, hi = wilson(hits, n) if n else (float("nan"), float("nan"))
                d_asr = paired(chosen, base, "asr") if m != "none" and len(base) else None
                d_acc = paired(chosen, base, "test_acc") if m != "none" and len(base) else None
                block.rows.append([
                    Cell(attack, label=True), Cell(label, label=True),
                    Cell(mean_text(asr), round(100 * asr.mean, 2) if asr else None),
                    Cell(f"{hits}/{n} [{100 * lo:.2f}, {100 * hi:.2f}]" if n else "–"),
                    Cell(mean_text(acc), round(100 * acc.mean, 2) if acc else None),
                    Cell(f"{100 * d_asr.mean:+.2f}" + (f" [{100 * d_asr.lo:+.2f}, {100 * d_asr.hi:+.2f}]"
                                                        if d_asr.n > 1 else "") + f" (n={d_asr.n})"
                         if d_asr else "–"),
                    Cell(f"{100 * d_acc.mean:+.2f} (n={d_acc.n})" if d_acc else "–"),
                ])
                data.append({"table": BACKDOOR, "dataset": s.dataset, "model": s.model, "recipe": s.recipe,
                             "epochs": s.epochs, "setting": s.label, "attack": attack, "method": method,
                             "row": label, "beta": beta if beta is not None else row_budget(chosen),
                             "params": chosen.params_json.iloc[0], "n": asr.n if asr else 0,
                             "asr": num(100 * asr.mean) if asr else None,
                             "asr_lo": num(100 * bounded(asr.lo)) if asr and asr.n > 1 else None,
                             "asr_hi": num(100 * bounded(asr.hi)) if asr and asr.n > 1 else None,
                             "asr_hits": hits, "asr_n": n, "asr_wilson_low": num(100 * lo) if n else None,
                             "asr_wilson_high": num(100 * hi) if n else None,
                             "clean_acc": num(100 * acc.mean) if acc else None,
                             "asr_delta_vs_none": num(100 * d_asr.mean) if d_asr else None,
                             "acc_delta_vs_none": num(100 * d_acc.mean) if d_acc else None,
                             "paired_trials": d_asr.n if d_asr else 0})
        if block.rows:
            block.notes = list(dict.fromkeys(n for n in notes if n))
            blocks.append(block)
    return Table(BACKDOOR, CAPTION, blocks, data, shown=shown)
