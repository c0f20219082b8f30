"""The HINT paper's Tables II–V rebuilt from run records (pandas), beside the paper's numbers.

Every number a table shows is defined in docs/metrics.md, "Report and tables". In short: a cell is the mean and
sample std (ddof=1) over the trials of one configuration; `(n=k)` marks a cell with another number of trials
than asked (`--trials`); `–` an empty cell. A table is a list of blocks (one per setting = dataset · model ·
recipe), each a grid of `Cell`s; `render` turns it into rich / md / latex / csv / json, and `missing_commands`
lists the `poisonbench defend` runs that would complete it.

Modules, in pipeline order: `layout` (table numbers, grids, captions, labels and the table model: `Options`,
`Cell`, `Block`, `Table`), `stats` (cell statistics: mean ± std, t-interval, Wilson), `records` (run records
flattened into one frame, the one reader of a record's fields, also behind the plain report and the figures; which
runs a cell shows; the settings; which parameter set a table shows), `builders` (the cell formatting the tables
share, Tables II–V, `build`), `render` (rich / md / latex / csv / json) and `missing` (the `defend` commands that
would complete a table).
"""

from __future__ import annotations

from .builders import acc_cell, build, check_table, table2
from .layout import (
    ATTACKS,
    BETA_GRID,
    FORMATS,
    HINT_PAPER,
    MATRIX,
    PAPER_METHODS,
    PAPER_MIX,
    R_GRID,
    RHOS,
    ROMAN,
    TABLES,
    TOL,
    Block,
    Cell,
    Options,
    Table,
    method_label,
    rho_text,
)
from .missing import available_methods, missing_commands, recipe_flags
from .records import (
    Setting,
    apply_filters,
    assert_records,
    cell_records,
    craft_notes,
    frame,
    in_setting,
    methods_of,
    poison_sets_text,
    primary,
    record_row,
    settings,
    superseded_runs,
    untargeted,
)
from .render import render, render_latex, render_rich
from .stats import close, stat, wilson

__all__ = [
    "ATTACKS",
    "BETA_GRID",
    "Block",
    "Cell",
    "FORMATS",
    "HINT_PAPER",
    "MATRIX",
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
