"""`poisonbench craft`: craft (or find in the cache) one PoisonSet under results/poisons/<poison_id>/."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..attacks import ATTACKS
from ..experiment.craft import attack_options as library_attack_options
from ..experiment.craft import craft as run_craft
from . import options
from .generated import entry_help_parameter, typer_parameters, with_options
from .progress import stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["craft"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module


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
    attack: str = typer.Option(..., "--attack", help="Attack to craft."),
    dataset: str = options.Dataset,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    npz_split: str = options.NpzSplit,
    budget: float = typer.Option(None, "--budget", help="Fraction of the train split to poison, in [0, 1]; "
                                                        "⌊budget·n⌋ rows drawn from --seed. Default: 1.0 (every "
                                                        "row) for untargeted attacks, 0.01 of the intended class's "
                                                        "rows for targeted ones."),
    eps: float = typer.Option(None, "--eps", help="Bound on δ in the attack's norm: L∞ in pixel units, in (0, 1); "
                                                  "default per dataset family: 0.3 (MNIST), 8/255 (CIFAR-10) "
                                                  "untargeted; 16/255 targeted, as in the paper. lsp: the ℓ2 radius "
                                                  "per image (> 0; default 6/255·√(C·H·W)); ops: the pixel "
                                                  "positions an image may change (an integer >= 1; default 1)."),
    seed: int = typer.Option(0, "--seed", help="Crafting seed (rows, random starts, generator init)."),
    target: int = options.Target,
    intended: int = options.Intended,
    setup: str = options.Setup,
    setup_index: int = options.SetupIndex,
    device: str = options.Device,
    compile: str = typer.Option("auto", "--compile", help="torch.compile the attack's inner step where it has one: "
                                                          "auto (long crafts on a GPU; the eager CPU step is as "
                                                          "fast) | on | off. Execution only: not in the poison id."),
    accel: str = options.Accel,
    deterministic: str = options.Deterministic,
    results: str = options.Results,
    force: bool = typer.Option(False, "--force", help="Craft again even if the artifact exists."),
    as_json: bool = options.Json,
    **attack_options,
) -> None:
    """Craft (or find in the cache) one PoisonSet (poisonbench.experiment.craft)."""
    bar = _Bar()
    try:
        out = run_craft(attack, dataset=dataset, data_dir=data_dir, download=download, npz_split=npz_split,
                        budget=budget, eps=eps, seed=seed, target=target, intended=intended, setup=setup,
                        setup_index=setup_index, device=device, compile=compile, accel=accel,
                        deterministic=deterministic, results=results, force=force, progress=bar,
                        **attack_options).summary
    finally:
        bar.stop()
    if as_json:
        print(json.dumps(out))
        return
    stdout_console().print(f"{out['status']} {attack} poison set [bold]{out['poison_id']}[/] ({out['count']} rows, "
                           f"ε={out['eps']:.4g}) → {out['path']}")


def attack_option_list():
    """The attack options, one per flag across the ATTACKS registry (read when the command is built)."""
    return library_attack_options()


def command():
    """`craft` with one option per attack parameter of the registry as it is now (poisonbench.cli.generated)."""
    attacks = ", ".join(f"{n} ({ATTACKS.get(n).summary})" for n in ATTACKS)
    listed = {"attack": typer.Option(..., "--attack", help=f"Attack to craft: {attacks}.")}
    generated_options = attack_option_list()
    help_attack = entry_help_parameter("--help-attack", "attack", {n: ATTACKS.get(n).summary for n in ATTACKS},
                                       generated_options)
    return with_options(craft, [help_attack] + typer_parameters(generated_options), listed)
