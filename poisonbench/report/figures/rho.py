"""Test accuracy vs the poison ratio ρ: Table II as curves, one plot per setting, with the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import tables
from ..paper import paper_label
from .panels import literal_text, plt, reduced_suffix, save, slug


@literal_text
def figure_rho(df: pd.DataFrame, out: Path, paper: bool = False) -> list[Path]:
    paths = []
    for s in tables.settings(tables.untargeted(df)):
        # Table II of this setting alone: settings that differ only in recipe overrides or data never share a plot
        d = pd.DataFrame(tables.table2(tables.in_setting(df, s), tables.Options(paper=True)).data)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        cmap = plt.get_cmap("tab10")
        drawn = 0
        for i, m in enumerate(dict.fromkeys(d.method)):
            md = d[d.method == m].sort_values("rho")
            ours = md[md.n > 0]
            color = cmap(i % 10)
            if len(ours):
                ax.errorbar(ours.rho, ours["mean"], yerr=ours["std"].fillna(0), marker="o", capsize=3,
                            color=color, label=tables.method_label(m))
                drawn += 1
            theirs = md[md.paper_mean.notna()]
            if paper and len(theirs):
                ax.errorbar(theirs.rho, theirs.paper_mean, yerr=theirs.paper_std, marker="x", linestyle="--",
                            capsize=2, color=color, alpha=0.6,
                            label=f"{tables.method_label(m)} ({paper_label('2', s.dataset)})")
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("poison ratio ρ")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xticks(tables.RHOS)
        ax.grid(alpha=0.3)
        ax.set_title(f"Test accuracy vs ρ (mean ± std over trials)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        paths.append(save(fig, out / f"rho_{slug(s)}.png"))
    return paths
