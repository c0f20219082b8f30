"""`poisonbench data list | info NAME`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..data import DATASETS, NPZ_SPLIT_PERCENT, load_dataset, parse_npz_split
from . import options
from .progress import stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["data"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module
app = typer.Typer(no_args_is_help=True, help=HELP, context_settings=options.CONTEXT_SETTINGS)


@app.command("list", help="List the registered datasets and their splits.")
def list_(as_json: bool = options.Json) -> None:
    rows = [(n, DATASETS.get(n).description, DATASETS.get(n).split_sizes, "rows") for n in DATASETS]
    rows.append(("PATH.npz", "any .npz with x (uint8) and y (int)", NPZ_SPLIT_PERCENT, "percent"))
    if as_json:
        print(json.dumps([{"name": name, "description": description,
                           "splits": dict(zip(("train", "val", "test"), sizes, strict=True)), "unit": unit}
                          for name, description, sizes, unit in rows], indent=2))
        return
    table = Table(title="datasets")
    for col in ("name", "description", "splits (train/val/test)"):
        table.add_column(col)
    for name, description, sizes, unit in rows:
        table.add_row(name, description, " / ".join(f"{v:,}" for v in sizes) + (" %" if unit == "percent" else ""))
    stdout_console().print(table)


@app.command("info", help="Load a dataset and show its splits, class counts, fingerprints and source.")
def info(
    name: str = typer.Argument(..., help="Dataset name or .npz path."),
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    as_json: bool = options.Json,
) -> None:
    summary = load_dataset(name, data_dir, download, npz_split=parse_npz_split(npz_split, name)).summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console = stdout_console()
    console.print(f"[bold]{summary['name']}[/] ({summary['family']} family), images {summary['shape']}, "
                  f"{summary['classes']} classes")
    console.print(f"read from: {summary['source']}")
    console.print(f"fingerprint: {summary['fingerprint']}")
    table = Table()
    for col in ("split", "size", "fingerprint", "per-class counts"):
        table.add_column(col)
    for split, s in summary["splits"].items():
        table.add_row(split, str(s["size"]), s["fingerprint"], " ".join(map(str, s["class_counts"])))
    console.print(table)
