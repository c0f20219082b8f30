"""Table V: execution time of the defenses and the ratio to no defense."""

from __future__ import annotations

import pandas as pd

from .. import paper
from .cells import Block, Cell, Options, Table, setting_data, setting_notes
from .constants import CAPTIONS, DASH, HINT_PAPER, R_GRID, SENSITIVITY_RHO
from .labels import method_label, rho_text, value_text
from .parameters import left_out_note, primary
from .selection import methods_of, mix_note, untargeted
from .settings import in_setting, settings
from .stats import close, num, stat
from .table4 import sensitivity_note, sensitivity_rows


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
