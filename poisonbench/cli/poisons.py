"""`poisonbench poisons list | show ID | validate ID`."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import options
from .progress import stdout_console

HELP = "List, show and validate the crafted PoisonSets under results/poisons/."
app = typer.Typer(no_args_is_help=True, help=HELP)


@app.command("list", help="List the PoisonSets in the workspace.")
def list_(results: str = options.Results, as_json: bool = options.Json) -> None:
    from .. import poisons

    rows = [{"poison_id": m["poison_id"], "attack": m.get("attack"), "dataset": m.get("dataset"),
             "eps": m.get("eps"), "budget": m.get("budget"), "seed": m.get("seed"), "count": m.get("count"),
             "craft_seconds": m.get("craft_seconds"), "created_at": m.get("created_at")}
            for m in poisons.list_manifests(results)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        Console(stderr=True).print("no poison sets in this workspace")
        return
    table = Table(title="poison sets")
    table.add_column("id", no_wrap=True)
    for col in ("attack", "dataset", "ε", "budget", "seed", "rows", "craft s", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["poison_id"], str(r["attack"]), str(r["dataset"]), f"{r['eps']:.4g}", str(r["budget"]),
                      str(r["seed"]), str(r["count"]), str(r["craft_seconds"]), str(r["created_at"])[:16])
    stdout_console().print(table)


@app.command("show", help="Print a PoisonSet's manifest (every crafting parameter, fingerprints, sha256).")
def show(poison_id: str = typer.Argument(..., help="Poison id (see `poisons list`)."),
         results: str = options.Results) -> None:
    from .. import poisons

    print(json.dumps(poisons.read_manifest(results, poison_id), indent=2, sort_keys=True))


@app.command("validate", help="Re-check a PoisonSet against its dataset: sha256, dataset fingerprint, indices, "
                              "budget, ε-ball, [0,1] pixel range of x+δ, labels. Exit 1 if a check fails.")
def validate(
    poison_id: str = typer.Argument(..., help="Poison id (see `poisons list`)."),
    dataset: str = typer.Option(None, "--dataset", help="Dataset to check against (default: the one in the "
                                                        "manifest; an .npz path for file datasets)."),
    data_dir: str = options.DataDir,
    npz_split: str = options.NpzSplit,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from .. import poisons
    from ..data import load_dataset, parse_npz_split

    manifest = poisons.read_manifest(results, poison_id)
    name = dataset or manifest["dataset"]
    data = load_dataset(name, data_dir, npz_split=parse_npz_split(npz_split, name))
    checks = poisons.validate(results, poison_id, data)
    ok = all(passed for _, passed, _ in checks)
    if as_json:
        print(json.dumps({"poison_id": poison_id, "ok": ok,
                          "checks": [{"check": c, "passed": p, "detail": d} for c, p, d in checks]}))
    else:
        table = Table(title=f"validate {poison_id}")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        for c, p, d in checks:
            table.add_row(c, "[green]ok[/]" if p else "[red]FAIL[/]", escape(d))
        stdout_console().print(table)
    if not ok:
        sys.exit(1)  # not typer.Exit: the entry point runs click with standalone_mode=False
