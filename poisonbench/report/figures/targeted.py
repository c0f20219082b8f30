"""Paper Figs. 3 and 4: the target image's prediction under MP (Fig. 3) and BP (Fig. 4), one trial per column;
red titles are trials the defense won."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ...core.errors import PoisonbenchWarning
from .. import tables
from ..paper import ATTACK_LABEL
from ..tables.builders import newest_poison_kinds, of_kinds
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

TARGETED_FIGURE = {"3": "mp", "4": "bp"}


def target_prediction(record: dict) -> tuple[int | None, float]:
    """The final model's class for the target and its probability (`metrics.target_prediction`, `target_probs`):
    the check admits any value there (only this figure reads them), so one that is not an integer, or not a list of
    numbers, is drawn as unknown (`?`, nan) with a warning naming the run and the field."""
    metrics = record["metrics"]
    pred, probs = metrics.get("target_prediction"), metrics.get("target_probs")
    bad = []
    if pred is not None and not (isinstance(pred, int) and not isinstance(pred, bool)):
        bad.append(f"metrics.target_prediction is {pred!r:.40}, not an integer")
        pred = None
    if probs is not None and not (isinstance(probs, list) and all(isinstance(p, int | float)
                                                                  and not isinstance(p, bool) for p in probs)):
        bad.append(f"metrics.target_probs is {probs!r:.40}, not a list of numbers")
        probs = None
    for text in bad:
        warnings.warn(f"run {record['run_id']}: {text}; drawn as unknown", PoisonbenchWarning, stacklevel=2)
    probs = probs or []
    return pred, float(probs[pred]) if pred is not None and 0 <= pred < len(probs) else float("nan")


@literal_text
def figure_targeted(number: str, records: list[dict], df: pd.DataFrame, out: Path,
                    data_dir: str | None = None) -> list[Path]:
    attack = TARGETED_FIGURE[number]
    recs = by_run_id(records)
    df = df[(df.kind == "targeted") & (df.attack == attack)]
    paths = []
    for s in tables.settings(df):
        sdf = tables.in_setting(df, s)
        rows = []
        picked = {m: tables.primary(sdf, m, tables.HINT_PAPER if m == "hint" else None)[0]
                  for m in tables.methods_of(sdf)}
        kinds = newest_poison_kinds(picked, [])  # one kind of poisons per figure, as Table III's column shows
        for m, chosen in picked.items():
            chosen = of_kinds(chosen, kinds)
            if len(chosen):
                rows.append((m, {int(t): recs[rid] for t, rid in zip(chosen.trial, chosen.run_id, strict=True)}))
        if not rows:
            continue
        trials = sorted({t for _, by_trial in rows for t in by_trial})[:MAX_COLUMNS]
        fig, axes = plt.subplots(len(rows), len(trials), figsize=(1.7 * len(trials), 2.0 * len(rows)),
                                 squeeze=False, layout="constrained")
        header = {}
        for _, by_trial in rows:
            for t, rec in by_trial.items():
                header.setdefault(t, rec["config"]["poison"])
        for i, (m, by_trial) in enumerate(rows):
            for j, t in enumerate(trials):
                ax = axes[i][j]
                rec = by_trial.get(t)
                if rec is None:
                    show(ax, None)
                    ax.set_title("–", fontsize=8)
                else:
                    p, met = rec["config"]["poison"], rec["metrics"]
                    show(ax, test_image(s, p.get("target_index"), data_dir))
                    pred, prob = target_prediction(rec)
                    defended = not met.get("attack_success")
                    ax.set_title(f"Pred: {class_name(s.dataset, pred)}\nProb: {prob:.2f}", fontsize=8,
                                 color=RED if defended else BLACK)
                if i == len(rows) - 1:
                    p = header[t]
                    ax.set_xlabel(f"A: {class_name(s.dataset, p.get('target_class'))}  "
                                  f"I: {class_name(s.dataset, p.get('intended_class'))}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(tables.method_label(m), fontsize=9)
        name = ATTACK_LABEL.get(attack, attack)
        fig.suptitle(f"Fig. {number} — target predictions under {name} (red: defense succeeded; "
                     f"A actual, I intended; one trial per column)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        paths.append(save(fig, out / f"fig{number}_{attack}_{slug(s)}.png"))
    return paths
