"""Table II: test accuracy against the untargeted mix at each poison ratio ρ."""

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
    paired_data,
    paired_stat,
    paper_cell,
    setting_data,
    setting_notes,
)
from .constants import CAPTIONS, PAPER_MIX, RHOS
from .labels import method_label, rho_text
from .parameters import choose_parameters
from .selection import methods_of, mix_note, untargeted
from .settings import in_setting, settings
from .stats import close, stat


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
