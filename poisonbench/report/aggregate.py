"""Aggregate run records with pandas: mean ± sample std over trials per configuration (docs/metrics.md)."""

from __future__ import annotations

import json
import math

import pandas as pd

from ..core.errors import PoisonbenchError, unknown_choice
from ..core.hashing import canonical_json
from ..core.printable import printable_json
from .tables import FORMATS, Block, Cell, Table, apply_filters, craft_notes, frame, render_latex, superseded_runs
from .tables.provenance import mixed_crafts
from .tables.render import csv_frame, md_escape

GROUP_KEYS = ["dataset", "model", "recipe", "epochs", "scenario", "poison", "method", "params", "configuration"]

# the plain report's columns, taken from the tables' flat rows (`tables.record_row`, the one reader of a record)
PLAIN_COLUMNS = {"run_id": "run_id", "dataset": "dataset", "model": "model", "recipe": "recipe", "epochs": "epochs",
                 "scenario": "scenario", "poison_label": "poison", "method": "method", "params_json": "params",
                 "configuration": "configuration", "trial": "trial", "seed": "seed", "finished_at": "finished_at",
                 "test_acc": "test_acc", "val_acc": "val_acc", "seconds": "seconds"}


def plain_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The plain report's view of `tables.frame` rows: one row per run; a defense without parameters shows "-"."""
    out = rows[list(PLAIN_COLUMNS)].rename(columns=PLAIN_COLUMNS)
    out["params"] = out["params"].where(out["params"] != canonical_json({}), "-")
    return out


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run, the plain report's columns."""
    return plain_rows(frame(records))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; the paper says only "average and standard deviation") of test accuracy and
    seconds per configuration, over distinct trials: of several runs of one configuration with the same trial id
    (e.g. re-run with another `--seed`) or the same seed, the most recently finished one counts, as in the tables;
    `attrs["not_shown"]` counts the others and `attrs["shown"]` holds the index of the runs counted."""
    older = superseded_runs(runs, [*GROUP_KEYS, "trial"])
    grouped = runs.drop(older.index).groupby(GROUP_KEYS, dropna=False, sort=True)
    out = grouped.agg(
        n=("trial", "count"),
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", "std"),
        seconds_mean=("seconds", "mean"),
    ).reset_index()
    out.attrs["not_shown"] = len(older)
    out.attrs["shown"] = list(runs.index.difference(older.index))
    return out


def render(summary: pd.DataFrame, fmt: str) -> str:
    """md / csv / json text of a summary (percentages with two decimals in md); the records' control characters
    shown escaped (core.printable) in every format."""
    if fmt == "csv":
        return csv_frame(summary)
    if fmt == "json":
        rows = [{k: json_value(v) for k, v in r.items()} for r in summary.to_dict(orient="records")]
        return printable_json(json.dumps(rows, indent=2, default=str, allow_nan=False))
    if fmt == "md":
        rows = display_rows(summary)
        header = list(rows[0])
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(md_escape(r[h]) for h in header) + " |" for r in rows]
        return "\n".join(lines)
    if fmt == "latex":
        rows = display_rows(summary)
        block = Block("all configurations", list(rows[0]),
                      [[Cell(str(v), label=i < 6) for i, v in enumerate(r.values())] for r in rows])
        table = Table("runs", "Test accuracy (%), mean ± sample std over trials, per configuration", [block], [])
        return render_latex(table).replace("Table runs", "Runs")
    raise unknown_choice("format", fmt, FORMATS)


def json_value(v):
    """NaN (e.g. the std of a single trial) as null: JSON has no NaN."""
    return None if isinstance(v, float) and math.isnan(v) else v


def pm(mean: float, std: float, scale: float = 100.0) -> str:
    """`mean ± std` in percent; a single trial has no std and shows only the mean."""
    if pd.isna(std):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def display_rows(summary: pd.DataFrame) -> list[dict]:
    rows = []
    for r in summary.to_dict(orient="records"):
        rows.append({
            "dataset": r["dataset"], "model": r["model"], "recipe": f"{r['recipe']} ({r['epochs']} ep)",
            "poison": r["poison"], "method": r["method"], "params": r["params"], "n": r["n"],
            "test acc (%)": pm(r["test_acc_mean"], r["test_acc_std"]), "seconds": f"{r['seconds_mean']:.1f}",
        })
    return rows


def load_summary(records: list[dict], **filters) -> pd.DataFrame:
    """The summary of the records that pass `filters`: the tables' filters (`tables.apply_filters`: dataset,
    model, recipe, epochs, methods, mix; mix None or "any" keeps every mix)."""
    if not records:
        raise PoisonbenchError("no run records found; run `poisonbench defend` first or pass --results DIR")
    rows = apply_filters(frame(records), **filters)
    selected = plain_rows(rows)
    if not len(selected):
        return selected
    summary = summarize(selected)
    shown = rows.loc[summary.attrs["shown"]]
    mixed = mixed_crafts(shown)  # what `report --strict` fails on, as under the tables
    summary.attrs["craft_notes"], summary.attrs["mixed"] = craft_notes(shown) + mixed, mixed
    return summary
