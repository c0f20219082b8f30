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


@app.command("import", help="Import HINT's untargeted poison file (`torch.save({'poisoned_images', "
                            "'poison_targets'})`, e.g. the paper's mnist_eps_0.3_mixed_poison_….pt) as a PoisonSet; "
                            "train on it with `defend --poison-set ID`.")
def import_(
    file: str = typer.Argument(..., help="The .pt file (read with torch.load(weights_only=True): tensors only)."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Import again even if this file's PoisonSet exists."),
    as_json: bool = options.Json,
) -> None:
    from ..data import load_dataset, parse_npz_split
    from ..interop import import_hint_file
    from ..records import results_dir

    results_dir(results)  # a bad --results fails before the dataset is loaded
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    poison, cached = import_hint_file(file, data, results, force=force)
    m = poison.manifest
    out = {"poison_id": m["poison_id"], "path": str(poison.path), "status": "cached" if cached else "imported",
           "dataset": data.name, "count": m["count"], "eps": m["eps"], **m["imported_from"]}
    if as_json:
        print(json.dumps(out))
        return
    stdout_console().print(
        f"{out['status']} poison set [bold]{out['poison_id']}[/] from {escape(out['file'])} ({out['order']} order): "
        f"{out['poisoned_rows']} of {out['rows']} rows poisoned, {out['count']} in {data.name}'s train split "
        f"({out['left_out_in_val_split']} left out: in our val split), ‖δ‖∞ = {out['eps']:.4g} → {out['path']}")


@app.command("export", help="Write a Table II mix (the train split of one trial of `defend --poison-ratio RHO`) as "
                            "HINT's untargeted poison file, for the official code's --poison_path.")
def export(
    out: str = typer.Option(..., "--out", help="The .pt file to write (atomically)."),
    poison_ratio: float = typer.Option(..., "--poison-ratio", help="ρ: fraction of the train split poisoned by "
                                                                   "the mix."),
    attacks: str = typer.Option(None, "--attacks", help="Comma-separated attacks of the mix (default: pgd,dap,"
                                                        "durp,deepconfuse)."),
    poisons_: str = typer.Option(None, "--poisons", metavar="ATTACK=ID,...",
                                 help="Use these existing PoisonSets instead of the mix's default ones."),
    trial: int = typer.Option(0, "--trial", help="The trial whose poisoned rows are drawn (seed + trial)."),
    seed: int = options.Seed,
    order: str = typer.Option("hint", "--order", help="Row order: hint (HINT's split: mnist, fashion-mnist, "
                                                      "cifar10) | train (this dataset's train split)."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    device: str = options.Device,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from ..attacks.base import check_seed
    from ..data import load_dataset, parse_npz_split
    from ..device import resolve_device, to_float
    from ..errors import PoisonbenchError
    from ..interop import ORDERS, check_export_path, export_hint_file, order_rows
    from ..records import results_dir
    from ..scenarios import parse_poison_sets, plan_untargeted
    from .progress import RichReporter

    if order not in ORDERS:
        raise PoisonbenchError(f"unknown --order {order!r}; valid choices: {', '.join(ORDERS)}")
    if trial < 0:
        raise PoisonbenchError(f"--trial must be a non-negative integer, got {trial}")
    check_seed(seed + trial, "--seed plus --trial")
    check_export_path(out)
    results_dir(results)  # a bad --results fails before the dataset is loaded
    mix = [a.strip() for a in attacks.split(",")] if attacks is not None else None
    chosen = parse_poison_sets(poisons_)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    order_rows(data, order)  # refuse an order the dataset lacks before anything is crafted
    plan = plan_untargeted(data, poison_ratio, mix, seed=seed + trial, results_root=results, poison_sets=chosen)
    train_x = plan.apply(to_float(data.train.x, dev), results_root=results, device=dev, reporter=RichReporter())
    written = export_hint_file(data, train_x, out, order)
    summary = {**written, "dataset": data.name, "poison_ratio": poison_ratio, "attacks": plan.attacks,
               "counts": plan.config["counts"], "poison_ids": plan.config["poison_ids"], "trial": trial,
               "seed": seed + trial}
    if as_json:
        print(json.dumps(summary))
        return
    stdout_console().print(f"wrote {escape(written['path'])}: {written['rows']} rows in {order} order, ρ = "
                           f"{poison_ratio:g} ({', '.join(f'{a} {c}' for a, c in plan.config['counts'].items())}); "
                           f"{written['clean_outside_train_split']} rows left clean (not in {data.name}'s train "
                           "split)")
