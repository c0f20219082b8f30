"""The table model (Cell, Block, Table, Options) and the cell formatting shared by every table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .. import paper
from .constants import DASH, ROMAN
from .settings import Setting
from .stats import Stat, num, stat


@dataclass
class Cell:
    text: str = DASH
    value: float | None = None  # compared for "best" (already rounded as displayed)
    best: bool = False
    label: bool = False  # a row-label cell (left-aligned)


@dataclass
class Block:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)  # row indices preceded by a horizontal rule
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    number: str
    caption: str
    blocks: list[Block]
    data: list[dict]  # tidy rows (csv / json)
    notes: list[str] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)  # run ids behind the cells (for notes on the runs shown)

    @property
    def empty(self) -> bool:
        return not self.blocks

    @property
    def title(self) -> str:
        return f"Table {ROMAN.get(self.number, self.number)}"


@dataclass
class Options:
    trials: int = 5
    paper: bool = False
    diff: bool = False
    ci: bool = False
    wilson: bool = True  # III: each k/n with its 95 % Wilson interval (`report --no-wilson`: k/n alone)
    rho: float | None = None  # II: only this row; IV/V: the ρ of the runs (default 0.6)
    paired: bool = False  # II: add each defense's per-trial difference to `none` (same seed, poisons, order)


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


def paired_stat(rows: pd.DataFrame | None, baseline: pd.DataFrame | None) -> Stat | None:
    """Mean ± sample std of `test_acc` − the baseline's over the runs that share trial, seed, attack mix and
    PoisonSets (ids and, where the records name them, tensors): those saw the same poisoned rows, initialisation
    and batch order, so the difference cancels what they share. Runs without such a partner stay out."""
    if rows is None or baseline is None:
        return None
    columns = [*PAIR_KEYS, "poison_tensors_json", "test_acc"]
    pairs = rows[columns].merge(baseline[columns], on=PAIR_KEYS, suffixes=("", "_base"))
    # the same poison ids crafted into other tensors are other poisons; a record that does not name its tensors
    # (before session 12) cannot tell and is paired as before
    craft, base_craft = pairs.poison_tensors_json, pairs.poison_tensors_json_base
    pairs = pairs[(craft == base_craft) | (craft == "") | (base_craft == "")]
    return stat(pairs.test_acc - pairs.test_acc_base)


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
    values = [c.value for c in cells if c.value is not None]
    if len(values) < 2:
        return
    best = max(values) if higher else min(values)
    for c in cells:
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
