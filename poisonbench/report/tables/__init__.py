"""The HINT paper's Tables II–V rebuilt from run records (pandas), beside the paper's numbers.

Every number a table shows is defined in docs/metrics.md, "Report and tables". In short: a cell is the mean and
sample std (ddof=1) over the trials of one configuration; `(n=k)` marks a cell with another number of trials
than asked (`--trials`); `–` an empty cell. A table is a list of blocks (one per setting = dataset · model ·
recipe), each a grid of `Cell`s; `render` turns it into rich / md / latex / csv / json, and `missing_commands`
lists the `poisonbench defend` runs that would complete it.

Modules: `rows` (run records flattened into one frame: the one reader of a record's fields, also behind the
plain report and the figures), `selection` (which runs a cell shows), `settings` (one block per dataset · model ·
recipe), `parameters` (which parameter set of a method a table shows), `constants` (grids, captions), `stats`
(cell statistics), `labels`, `cells` (the table model), `table2` … `table5` (the builders), `build`, `render`,
`missing`.
"""

from __future__ import annotations

from .build import build, check_table
from .cells import Block, Cell, Options, Table, acc_cell
from .constants import (
    ATTACKS,
    BETA_GRID,
    FORMATS,
    HINT_PAPER,
    PAPER_METHODS,
    PAPER_MIX,
    R_GRID,
    RHOS,
    ROMAN,
    TABLES,
    TOL,
)
from .labels import method_label, rho_text
from .missing import assert_records, available_methods, missing_commands, recipe_flags
from .parameters import primary
from .render import render, render_latex, render_rich
from .rows import frame, poison_sets_text, record_row
from .selection import apply_filters, cell_records, craft_notes, methods_of, superseded_runs, untargeted
from .settings import Setting, in_setting, settings
from .stats import close, stat, wilson
from .table2 import table2

__all__ = [
    "ATTACKS",
    "BETA_GRID",
    "Block",
    "Cell",
    "FORMATS",
    "HINT_PAPER",
    "Options",
    "PAPER_METHODS",
    "PAPER_MIX",
    "RHOS",
    "ROMAN",
    "R_GRID",
    "Setting",
    "TABLES",
    "TOL",
    "Table",
    "acc_cell",
    "apply_filters",
    "assert_records",
    "available_methods",
    "build",
    "cell_records",
    "check_table",
    "close",
    "craft_notes",
    "frame",
    "in_setting",
    "method_label",
    "methods_of",
    "missing_commands",
    "poison_sets_text",
    "primary",
    "recipe_flags",
    "record_row",
    "render",
    "render_latex",
    "render_rich",
    "rho_text",
    "settings",
    "stat",
    "superseded_runs",
    "table2",
    "untargeted",
    "wilson",
]
