"""The paper's Figures 1–4 and an accuracy-vs-ρ plot (Table II as curves), drawn as PNGs from run records.

One module per figure: `noise` (Fig. 1, HINT's healthy noise), `predictions` (Fig. 2), `targeted` (Figs. 3 and 4),
`rho` (accuracy vs ρ); `panels` holds what they share (the records' test images, image panels, saving). The
record fields each reads are in docs/metrics.md, "Report and tables"; images come from the dataset's test split
(loaded by name; a grey placeholder when it cannot be loaded). Nothing here trains.
"""

from __future__ import annotations

from pathlib import Path

from ...core.errors import PoisonbenchError, unknown_choice
from .. import tables
from .noise import figure_1, noise_figure
from .panels import confined_to
from .predictions import figure_2
from .rho import figure_rho
from .targeted import TARGETED_FIGURE, figure_targeted

FIGURES = ("1", "2", "3", "4", "rho")

__all__ = ["FIGURES", "check_figure", "draw", "noise_figure"]


def check_figure(number: str) -> str:
    """`number` as one of FIGURES (any case, surrounding blanks ignored); an unknown one is refused as given."""
    name = str(number).strip().lower()
    if name not in FIGURES:
        raise unknown_choice("figure", number, FIGURES)
    return name


def draw(number: str, records: list[dict], out: str | Path, paper: bool = False, rho: float | None = None,
         trial: int | None = None, data_dir: str | None = None, **filters) -> list[Path]:
    """Render figure `number` (1..4 or "rho") into `out` from the runs a table cell would show (the tables'
    filters and selection); returns the PNG paths (empty: nothing to draw)."""
    number = check_figure(number)
    out = Path(out)
    df, _ = tables.cell_records(tables.apply_filters(tables.frame(records), **filters))
    keep = set(df.run_id)
    records = [r for r in records if r["run_id"] in keep]
    with confined_to(out):  # the last guard: `panels.save` writes nothing outside `out`
        if number == "rho":
            return figure_rho(df, out, paper)
        if number == "1":
            return figure_1(records, out)
        if number == "2":
            return figure_2(records, df, out, rho, trial, data_dir)
        if number in TARGETED_FIGURE:
            return figure_targeted(number, records, df, out, data_dir)
    raise PoisonbenchError(f"figure {number} is not implemented")  # unreachable: check_figure
