"""`poisonbench report`: aggregate run records into mean ± std over trials per configuration."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .. import report as lib
from ..errors import unknown_choice
from ..records import RunStore
from . import options

HELP = "Aggregate the run records: test accuracy mean ± sample std over trials, per configuration."


def report(
    dataset: str = typer.Option(None, "--dataset", help="Only records of this dataset."),
    method: str = typer.Option(None, "--method", help="Only records of this method."),
    fmt: str = typer.Option("rich", "--format", help="rich | md | csv | json."),
    results: str = options.Results,
) -> None:
    if fmt not in lib.FORMATS:
        raise unknown_choice("format", fmt, lib.FORMATS)
    summary = lib.load_summary(RunStore(results).all(), dataset=dataset, method=method)
    if summary.empty:
        Console(stderr=True).print("no records match the filters")
        return
    if fmt != "rich":
        print(lib.render(summary, fmt))
        return
    rows = lib.display_rows(summary)
    table = Table(title="poisonbench report")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*map(str, r.values()))
    Console().print(table)
