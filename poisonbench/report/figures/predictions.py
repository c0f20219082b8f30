"""Paper Fig. 2: each method's predictions on the same test images (the records' `metrics.sample_predictions`),
untargeted mix at one ρ; red titles are correct predictions."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ...core.errors import PoisonbenchWarning
from ...experiment.record_schema import sample_predictions_problem
from .. import tables
from .panels import (
    BLACK,
    MAX_COLUMNS,
    RED,
    by_run_id,
    class_name,
    literal_text,
    plt,
    reduced_suffix,
    save,
    show,
    slug,
    test_image,
)


def drawable(record: dict) -> bool:
    """Whether Fig. 2 can draw `record`'s `metrics.sample_predictions`: a run without them is left out; one whose
    predictions are malformed (`record_schema.sample_predictions_problem`) too, with a warning naming the run and
    the field (the check admits such a record: its accuracy counts in every table)."""
    samples = (record.get("metrics") or {}).get("sample_predictions")
    if samples is None:
        return False
    problem = sample_predictions_problem(samples)
    if problem is not None:
        warnings.warn(f"run {record['run_id']}: {problem}; Figure 2 leaves the run out", PoisonbenchWarning,
                      stacklevel=2)
    return problem is None


def pick_samples(indices: list[int], labels: dict, samples: list[dict], k: int = MAX_COLUMNS) -> list[int]:
    """The `k` stored test images where the fewest methods are right (where the defenses differ, as in the
    paper's Fig. 2), shown in their stored order."""
    def correct(idx: int) -> int:
        n = 0
        for sp in samples:
            pos = dict(zip(sp["test_indices"], sp["pred"], strict=False))
            n += pos.get(idx) is not None and pos.get(idx) == labels.get(idx)
        return n

    ranked = sorted(range(len(indices)), key=lambda i: (correct(indices[i]), i))[:k]
    return [indices[i] for i in sorted(ranked)]


@literal_text
def figure_2(records: list[dict], df: pd.DataFrame, out: Path, rho: float | None = None, trial: int | None = None,
             data_dir: str | None = None) -> list[Path]:
    recs = by_run_id(records)
    df = tables.untargeted(df)
    # a boolean Series, not a list: an empty list would select no column, and the settings of no run (issue 82)
    df = df[pd.Series([drawable(recs[r]) for r in df.run_id], index=df.index, dtype=bool)]
    paths = []
    for s in tables.settings(df):
        sdf = tables.in_setting(df, s)
        at = rho if rho is not None else max(
            sorted(set(sdf.rho)), key=lambda r: (sdf[tables.close(sdf.rho, r)].method.nunique(), r))
        sdf = sdf[tables.close(sdf.rho, at)]
        rows = []
        for m in tables.methods_of(sdf):
            chosen, _ = tables.primary(sdf, m, tables.HINT_PAPER if m == "hint" else None)
            if chosen.empty:
                continue
            pick = chosen[chosen.trial == trial] if trial is not None else chosen[chosen.trial == chosen.trial.min()]
            if len(pick):
                rows.append((m, recs[pick.run_id.iloc[0]]))
        if not rows:
            continue
        first = rows[0][1]["metrics"]["sample_predictions"]
        labels = dict(zip(first["test_indices"], first.get("labels") or [None] * len(first["test_indices"]),
                          strict=False))
        indices = pick_samples(first["test_indices"], labels, [r["metrics"]["sample_predictions"] for _, r in rows])
        fig, axes = plt.subplots(len(rows), len(indices), figsize=(1.6 * len(indices), 1.9 * len(rows)),
                                 squeeze=False, layout="constrained")
        for i, (m, rec) in enumerate(rows):
            sp = rec["metrics"]["sample_predictions"]
            pos = {idx: k for k, idx in enumerate(sp["test_indices"])}
            for j, idx in enumerate(indices):
                ax = axes[i][j]
                show(ax, test_image(s, idx, data_dir))
                k = pos.get(idx)
                if k is None:
                    ax.set_title("–", fontsize=8)
                else:
                    pred, prob = sp["pred"][k], sp["prob"][k]
                    ok = labels.get(idx) is not None and pred == labels[idx]
                    ax.set_title(f"Pred: {class_name(s.dataset, pred)}\nProb: {prob:.2f}", fontsize=8,
                                 color=RED if ok else BLACK)
                if i == len(rows) - 1:
                    ax.set_xlabel(f"label {class_name(s.dataset, labels.get(idx))}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(tables.method_label(m), fontsize=9)
        fig.suptitle(f"Fig. 2 — predictions on test images, untargeted mix at ρ = {tables.rho_text(at)} "
                     f"(red: correct)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        paths.append(save(fig, out / f"fig2_untargeted_{slug(s)}.png"))
    return paths
