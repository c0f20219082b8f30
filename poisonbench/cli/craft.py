"""`poisonbench craft`: craft (or find in the cache) one PoisonSet under results/poisons/<poison_id>/."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..attacks import ATTACKS
from ..data import load_dataset, parse_npz_split
from ..errors import PoisonbenchError
from ..training import check_compile_mode, resolve_device
from . import options
from .progress import stdout_console

HELP = ("Craft a PoisonSet with one attack (pgd, dap, durp, deepconfuse) on the train split; a repeat with the "
        "same inputs is a cache hit. Attack options default to the paper's / official values per dataset.")


class _Bar:
    """One rich progress bar per crafting stage, on stderr."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.tasks: dict[str, int] = {}

    def __call__(self, description: str, completed: int, total: int) -> None:
        if not self.tasks:
            self.progress.start()
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[description], completed=completed, total=total)

    def stop(self) -> None:
        if self.tasks:
            self.progress.stop()


def craft(
    attack: str = typer.Option(..., "--attack", help=f"Attack to craft: {', '.join(ATTACKS.names())}."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    budget: float = typer.Option(1.0, "--budget", help="Fraction of the train split to poison, in [0, 1]; "
                                                       "⌊budget·n⌋ rows drawn from --seed (1.0: every row)."),
    eps: float = typer.Option(None, "--eps", help="L∞ bound in pixel units, in (0, 1]; default per dataset "
                                                  "family: 0.3 (MNIST), 8/255 (CIFAR-10), as in the paper."),
    seed: int = typer.Option(0, "--seed", help="Crafting seed (rows, random starts, generator init)."),
    steps: int = typer.Option(None, "--steps", help="pgd/dap: PGD steps (default pgd 40 MNIST / 10 CIFAR; dap 100)."),
    step_size: float = typer.Option(None, "--step-size", help="pgd: signed step in pixel units "
                                                              "(default 0.01 MNIST / 2/255 CIFAR)."),
    step_fraction: float = typer.Option(None, "--step-fraction", help="dap: step as a fraction of ε (default 0.2)."),
    random_start: bool = typer.Option(None, "--random-start/--no-random-start",
                                      help="pgd/dap: start from a uniform point of the ε-ball "
                                           "(default: on for pgd, off for dap)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Crafting / generator-training batch "
                                                              "(pgd/dap 1000 MNIST, 500 CIFAR; deepconfuse 64 / 256)."),
    outer_epochs: int = typer.Option(None, "--outer-epochs", help="deepconfuse: outer epochs (budget default; "
                                                                  "official 1000)."),
    inner_epochs: int = typer.Option(None, "--inner-epochs", help="deepconfuse: classifier epochs per outer epoch "
                                                                  "(official 1 MNIST / 20 CIFAR)."),
    gen_lr: float = typer.Option(None, "--gen-lr", help="deepconfuse: generator Adam lr (official 1e-4)."),
    cls_lr: float = typer.Option(None, "--cls-lr", help="deepconfuse: classifier SGD lr (official 0.01)."),
    official_schedule: bool = typer.Option(None, "--official-schedule/--budget-schedule",
                                           help="deepconfuse: DC's official schedule (1000 outer epochs, days of "
                                                "GPU) instead of the short budget default (about 10 minutes on "
                                                "mnist-5k on a 2-core CPU; much longer on full MNIST or CIFAR-10)."),
    generator_weights: str = typer.Option(None, "--generator-weights", metavar="FILE",
                                          help="deepconfuse: use this trained generator (a state dict: DC's "
                                               "MNIST/pretrained/atkmnist_best.pt, or .safetensors) instead of "
                                               "training one; imported into the workspace, named by its sha256."),
    device: str = options.Device,
    compile: str = typer.Option("auto", "--compile", help="pgd/dap: torch.compile the PGD step: auto (long crafts "
                                                          "on a GPU; the eager CPU step is as fast) | on | off. "
                                                          "Execution only: not in the poison id."),
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Craft again even if the artifact exists."),
    as_json: bool = options.Json,
) -> None:
    from .. import poisons

    params = {"steps": steps, "step_size": step_size, "step_fraction": step_fraction, "random_start": random_start,
              "batch_size": batch_size, "outer_epochs": outer_epochs, "inner_epochs": inner_epochs,
              "gen_lr": gen_lr, "cls_lr": cls_lr, "official_schedule": official_schedule}
    ATTACKS.get(attack)
    from ..attacks.base import check_budget, check_eps

    check_budget(budget)
    check_compile_mode(compile)
    if eps is not None:
        check_eps(eps)
    if generator_weights is not None and attack != "deepconfuse":
        raise PoisonbenchError(f"--generator-weights applies to attack 'deepconfuse' only, not {attack!r}")
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    if generator_weights is not None:
        from ..attacks.deepconfuse import import_generator

        # every other input is checked before the import writes into the workspace
        poisons.craft_spec(data, attack, eps=eps, budget=budget, seed=seed, **params, generator="sha256:" + "0" * 64)
        params["generator"] = import_generator(generator_weights, data.family, results)
    spec = poisons.craft_spec(data, attack, eps=eps, budget=budget, seed=seed, **params)
    bar = _Bar()
    try:
        poison, cached = poisons.craft(spec, data, results, dev, progress=bar, force=force, compile=compile)
    finally:
        bar.stop()
    m = poison.manifest
    out = {"poison_id": spec.poison_id, "path": str(poisons.poison_dir(results, spec.poison_id)),
           "status": "cached" if cached else "crafted", "attack": attack, "dataset": data.name,
           "count": m["count"], "eps": m["eps"], "budget": m["budget"], "seed": m["seed"],
           "craft_seconds": m.get("craft_seconds"), "compiled": m.get("compiled")}
    if as_json:
        print(json.dumps(out))
        return
    stdout_console().print(f"{out['status']} {attack} poison set [bold]{spec.poison_id}[/] ({out['count']} rows, "
                    f"ε={out['eps']:.4g}) → {out['path']}")

