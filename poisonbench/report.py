"""Aggregate run records with pandas: mean ± sample std over trials per configuration (docs/metrics.md)."""

from __future__ import annotations

import json
import math

import pandas as pd

from .errors import PoisonbenchError, unknown_choice
from .hashing import canonical_json, short_hash
from .tables import poison_sets_text, superseded_runs

FORMATS = ("rich", "md", "latex", "csv", "json")
GROUP_KEYS = ["dataset", "model", "recipe", "epochs", "scenario", "poison", "method", "params", "configuration"]


def experiment(config: dict) -> dict:
    """`config` without what varies from trial to trial (trial, seed, the poisoned rows drawn from the seed)."""
    out = {k: v for k, v in config.items() if k not in ("trial", "seed")}
    if out.get("poison"):
        out["poison"] = {k: v for k, v in out["poison"].items() if k != "indices_fingerprint"}
    return out


def poison_label(poison: dict) -> str:
    """The poison column: the scenario's label, plus the PoisonSets chosen with `defend --poisons` (two runs that
    differ only there must not look alike)."""
    if not poison:
        return "-"
    label = str(poison.get("label", "-"))
    chosen = poison.get("poison_sets")
    return f"{label} [--poisons {poison_sets_text(chosen)}]" if chosen else label


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run, flat columns."""
    rows = []
    for r in records:
        c = r["config"]
        defense = dict(c["defense"])
        method = defense.pop("method")
        poison = c.get("poison") or {}
        rows.append({
            "run_id": r["run_id"],
            "dataset": c["dataset"],
            "model": c["model"],
            "recipe": c["recipe"]["name"],
            "epochs": c["recipe"]["epochs"],
            "scenario": c["scenario"],
            "poison": poison_label(poison),
            "method": method,
            "params": canonical_json(defense) if defense else "-",
            # everything that defines the experiment except the trial (seed, poisoned rows): recipe overrides,
            # dataset fingerprint, PoisonSet ids, ... so two configurations that display alike are never pooled
            "configuration": short_hash(experiment(c))[:8],
            "trial": c["trial"],
            "seed": c["seed"],
            "finished_at": str(r.get("finished_at") or ""),
            "test_acc": r["metrics"]["test_acc"],
            "val_acc": r["metrics"].get("val_acc"),
            "seconds": r["cost"]["seconds"],
        })
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; the paper says only "average and standard deviation") of test accuracy and
    seconds per configuration, over distinct trials: of several runs of one configuration with the same trial id
    (e.g. re-run with another `--seed`) or the same seed, the most recently finished one counts, as in the tables;
    `attrs["not_shown"]` counts the others."""
    older = superseded_runs(frame, [*GROUP_KEYS, "trial"])
    frame = frame.drop(older.index)
    grouped = frame.groupby(GROUP_KEYS, dropna=False, sort=True)
    out = grouped.agg(
        n=("trial", "count"),
        test_acc_mean=("test_acc", "mean"),
        test_acc_std=("test_acc", "std"),
        seconds_mean=("seconds", "mean"),
    ).reset_index()
    out.attrs["not_shown"] = len(older)
    return out


def render(summary: pd.DataFrame, fmt: str) -> str:
    """md / csv / json text of a summary (percentages with two decimals in md)."""
    if fmt == "csv":
        return summary.to_csv(index=False)
    if fmt == "json":
        rows = [{k: json_value(v) for k, v in r.items()} for r in summary.to_dict(orient="records")]
        return json.dumps(rows, indent=2, default=str, allow_nan=False)
    if fmt == "md":
        rows = display_rows(summary)
        header = list(rows[0])
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
        return "\n".join(lines)
    if fmt == "latex":
        from .tables import Block, Cell, Table, render_latex

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
    from .tables import apply_filters, frame

    if not records:
        raise PoisonbenchError("no run records found; run `poisonbench defend` first or pass --results DIR")
    kept = set(apply_filters(frame(records), **filters).run_id)
    selected = records_frame([r for r in records if r["run_id"] in kept])
    return summarize(selected) if len(selected) else selected
