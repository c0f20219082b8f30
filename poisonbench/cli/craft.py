"""`poisonbench craft`: craft (or find in the cache) one PoisonSet under results/poisons/<poison_id>/."""

from __future__ import annotations

import inspect
import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..attacks import ATTACKS
from ..attacks.targets import check_setup_index, check_target_choice
from ..core.device import check_compile_mode, check_deterministic_mode, resolve_device
from ..core.errors import PoisonbenchError
from ..core.params import chosen_values, collect_options
from ..data import load_dataset, parse_npz_split
from . import options
from .generated import typer_parameters, with_options
from .progress import stdout_console

HELP = ("Craft a PoisonSet with one attack on the train split; a repeat with the same inputs is a cache hit. Attack "
        "options default to the paper's / official values per dataset.")


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
    """Craft (or find in the cache) one PoisonSet."""
    from .. import poisons
    from ..attacks.base import check_budget, check_eps
    from ..engine.kernels import check_accel_mode

    cls = ATTACKS.get(attack)
    params = chosen_values(attack_option_list(), attack_options, "attack", attack, cls.PARAMS)
    budget = cls.default_budget() if budget is None else budget
    check_budget(budget)
    check_compile_mode(compile)
    check_accel_mode(accel)
    check_deterministic_mode(deterministic)
    if eps is not None:
        check_eps(eps, cls.norm)
    check_target_choice(target, intended, setup)
    if (setup is not None or target is not None) and not cls.targeted:
        raise PoisonbenchError(f"attack {attack!r} is untargeted: it takes no --target, --intended or --setup")
    check_setup_index(setup, setup_index)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir, download, npz_split=parse_npz_split(npz_split, dataset))
    aim = None
    if cls.targeted:  # the targeted context (poisonbench.attacks.targets): a setup, or drawn from --seed
        from ..attacks.targets import draw_target, setup_target

        instance = cls(data.family, **params)
        if setup is not None:
            aim = instance.aim(setup_target(data, setup, setup_index), fixed=True)
            budget = len(aim.rows) / len(data.train)
        else:
            victim = instance.params.get("scenario", "scratch")
            aim = instance.aim(draw_target(data, seed, victim, budget, target, intended))  # bases=nearest: no rows
    files = {p.name: p for p in cls.PARAMS if p.from_file is not None and p.name in params}
    if files:  # every other input is checked before an import writes into the workspace
        placeholders = {name: p.file_placeholder for name, p in files.items()}
        poisons.craft_spec(data, attack, eps=eps, budget=budget, seed=seed, target=aim, **{**params, **placeholders})
        for name, p in files.items():
            params[name] = p.from_file(params[name], data.family, results)
    spec = poisons.craft_spec(data, attack, eps=eps, budget=budget, seed=seed, target=aim, **params)
    bar = _Bar()
    try:
        poison, cached = poisons.craft(spec, data, results, dev, progress=bar, force=force, compile=compile,
                                       accel=accel, deterministic=deterministic)
    finally:
        bar.stop()
    m = poison.manifest
    out = {"poison_id": spec.poison_id, "path": str(poisons.poison_dir(results, spec.poison_id)),
           "status": "cached" if cached else "crafted", "attack": attack, "dataset": data.name,
           "count": m["count"], "eps": m["eps"], "budget": m["budget"], "seed": m["seed"],
           "craft_seconds": m.get("craft_seconds"), "compiled": m.get("compiled")}
    if aim is not None:
        out["target"] = aim.to_dict()
    if as_json:
        print(json.dumps(out))
        return
    stdout_console().print(f"{out['status']} {attack} poison set [bold]{spec.poison_id}[/] ({out['count']} rows, "
                           f"ε={out['eps']:.4g}) → {out['path']}")


def attack_option_list():
    """The attack options, one per flag across the ATTACKS registry (read when the command is built)."""
    return collect_options(ATTACKS, inspect.signature(craft).parameters)


def command():
    """`craft` with one option per attack parameter of the registry as it is now (poisonbench.cli.generated)."""
    attacks = ", ".join(f"{n} ({ATTACKS.get(n).summary})" for n in ATTACKS)
    listed = {"attack": typer.Option(..., "--attack", help=f"Attack to craft: {attacks}.")}
    return with_options(craft, typer_parameters(attack_option_list()), listed)
