"""The defense × attack matrix (`report --table matrix`) as a heatmap PNG per setting: defenses down, attacks
across. Left panel: test accuracy (%) of the clean and untargeted columns, each cell annotated with the mean and,
below it, the difference to W/o Defense in points; right panel (only where there are targeted runs): attack
success rate k/n on its own colour scale. A cell without runs is grey and shows `–`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.hashing import short_hash
from .. import tables
from .panels import literal_text, plt, safe_slug, save, setting_slug

MISSING = "#d9d9d9"


def grid(rows: list[dict], methods: list[str], columns: list[str], value: str) -> np.ndarray:
    out = np.full((len(methods), len(columns)), np.nan)
    for r in rows:
        if r["n"] and r.get(value) is not None:
            out[methods.index(r["method"]), columns.index(r["column"])] = r[value]
    return out


def panel(ax, values: np.ndarray, labels: list[list[str]], methods: list[str], columns: list[str], cmap: str,
          vmin: float, vmax: float, title: str, colorbar: str, fig) -> None:
    colours = plt.get_cmap(cmap).with_extremes(bad=MISSING)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), [tables.method_label(m) for m in methods], fontsize=8)
    ax.set_title(title, fontsize=9)
    for i in range(len(methods)):
        for j in range(len(columns)):
            v = values[i, j]
            dark = not np.isnan(v) and (v - vmin) / (vmax - vmin or 1) < 0.5
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7,
                    color="white" if dark and cmap == "viridis" else "black")
    fig.colorbar(image, ax=ax, shrink=0.8, label=colorbar)


@literal_text
def figure_matrix(table, out: Path) -> list[Path]:
    """One PNG per block of the matrix `table` (tables.matrix), from its tidy rows; returns the paths."""
    paths = []
    for block in table.blocks:
        rows = [r for r in table.data if r["setting"] == block.title]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        acc_cols = list(dict.fromkeys(r["column"] for r in rows if r["kind"] in ("clean", "untargeted")))
        hit_cols = list(dict.fromkeys(r["column"] for r in rows if r["kind"] == "targeted"))
        asr_cols = list(dict.fromkeys(r["column"] for r in rows if r["kind"] == "backdoor"))
        panels = [c for c in (acc_cols, hit_cols, asr_cols) if c]
        width = sum(1.1 * len(c) + 2.2 for c in panels)
        fig, axes = plt.subplots(1, len(panels), figsize=(max(width, 5.0), 0.45 * len(methods) + 2.2),
                                 squeeze=False, layout="constrained",
                                 gridspec_kw={"width_ratios": [len(c) + 1.5 for c in panels]})
        axes = list(axes[0])
        if acc_cols:
            acc = [r for r in rows if r["kind"] in ("clean", "untargeted")]
            values = grid(acc, methods, acc_cols, "mean")
            labels = [["–"] * len(acc_cols) for _ in methods]
            for r in acc:
                if r["n"]:
                    delta = r.get("delta_vs_none")
                    labels[methods.index(r["method"])][acc_cols.index(r["column"])] = (
                        f"{r['mean']:.1f}" + (f"\n{delta:+.1f}" if delta is not None else ""))
            panel(axes.pop(0), values, labels, methods, acc_cols, "viridis", 0.0, 100.0,
                  f"test accuracy (%), ρ = {tables.rho_text(acc_rho(acc))}; below: Δ vs W/o Defense",
                  "test accuracy (%)", fig)
        if hit_cols:
            hits = [r for r in rows if r["kind"] == "targeted"]
            values = grid(hits, methods, hit_cols, "success_rate")
            labels = [["–"] * len(hit_cols) for _ in methods]
            for r in hits:
                if r["n"]:
                    labels[methods.index(r["method"])][hit_cols.index(r["column"])] = f"{r['successes']}/{r['n']}"
            panel(axes.pop(0), values, labels, methods, hit_cols, "Reds", 0.0, 1.0,
                  "targeted: attack success k/n", "attack success rate", fig)
        if asr_cols:  # the backdoors (issue 85): mean ASR over trials, its Δ vs W/o Defense below
            bds = [r for r in rows if r["kind"] == "backdoor"]
            values = grid(bds, methods, asr_cols, "asr")
            labels = [["–"] * len(asr_cols) for _ in methods]
            for r in bds:
                if r["n"]:
                    delta = r.get("delta_vs_none")
                    labels[methods.index(r["method"])][asr_cols.index(r["column"])] = (
                        f"{r['asr']:.1f}" + (f"\n{delta:+.1f}" if delta is not None else ""))
            panel(axes.pop(0), values, labels, methods, asr_cols, "Reds", 0.0, 100.0,
                  "backdoor: attack success rate (%); below: Δ vs W/o Defense", "ASR (%)", fig)
        fig.suptitle(f"Defense × attack matrix\n{block.title}", fontsize=9)
        first = rows[0]  # a name altered by the slug (`a b.npz`, `a_b.npz`) adds a hash: one file per setting
        name = setting_slug(f"matrix_{first['dataset']}_{first['model']}_{first['recipe']}{first['epochs']}",
                            (first["dataset"], first["model"], first["recipe"]))
        if sum(1 for b in table.blocks if b.title.split(" · ")[:3] == block.title.split(" · ")[:3]) > 1:
            name = safe_slug(f"{name}_{short_hash(block.title, 8)}")  # settings alike but for overrides or modes
        paths.append(save(fig, out / f"{name}.png"))
    return paths


def acc_rho(rows: list[dict]) -> float:
    rhos = [r["rho"] for r in rows if r["kind"] == "untargeted"]
    return rhos[0] if rhos else 0.0
