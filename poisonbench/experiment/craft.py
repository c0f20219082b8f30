"""`craft`: check the options of one crafting request, resolve its targeted context, and craft (or find in the cache)
its PoisonSet under results/poisons/<poison_id>/.

This is the library behind `poisonbench craft` and `poisonbench.api.craft`; the CLI only parses options and shows a
progress bar (`progress`, a callable `(description, completed, total)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PoisonbenchError
from ..core.params import GeneratedOption, chosen_values, collect_options
from ..data import DEFAULT_DATASET
from .options import OPTIONS

__all__ = ["Crafted", "attack_options", "craft"]


@dataclass
class Crafted:
    """One crafted (or cached) PoisonSet: the set itself, its spec, whether it came from the cache, and `summary`,
    the object `craft --json` prints."""

    poison_set: object  # attacks.base.PoisonSet
    spec: object  # poisons.CraftSpec
    cached: bool
    summary: dict

    @property
    def poison_id(self) -> str:
        return self.summary["poison_id"]

    @property
    def path(self) -> Path:
        return Path(self.summary["path"])

    @property
    def status(self) -> str:
        return self.summary["status"]


def craft(attack: str, *, dataset: str = DEFAULT_DATASET, data_dir: str | None = None, download: bool = False,
          npz_split: str | None = None, budget: float | None = None, eps: float | None = None, seed: int = 0,
          target: int | None = None, intended: int | None = None, setup: str | None = None,
          setup_index: int = OPTIONS["setup_index"].default, device: str = OPTIONS["device"].default,
          compile: str = "auto", accel: str = OPTIONS["accel"].default,
          deterministic: str = OPTIONS["deterministic"].default, results: str | None = None, force: bool = False,
          progress: Callable[[str, int, int], None] | None = None, **attack_params) -> Crafted:
    """Craft (or find in the cache) one PoisonSet with `attack`; `attack_params` are the attack's own options by
    their Python names (`steps=10`), checked against the attack. Raises PoisonbenchError on bad input."""
    from .. import poisons
    from ..attacks import ATTACKS
    from ..attacks.base import check_budget, check_eps
    from ..attacks.targets import check_setup_index, check_target_choice
    from ..core.device import check_compile_mode, check_deterministic_mode, resolve_device
    from ..data import load_dataset, parse_npz_split
    from ..engine.kernels import check_accel_mode

    cls = ATTACKS.get(attack)
    options = attack_options()
    unknown = sorted(set(attack_params) - {o.python_name for o in options})
    if unknown:  # a library caller's typo (the CLI's parser refuses an unknown flag itself)
        flags = [p.flag for p in cls.PARAMS]
        raise PoisonbenchError(f"unknown craft option {unknown[0]!r}; attack {attack!r} takes "
                               f"{', '.join(flags) if flags else 'no options of its own'}")
    params = chosen_values(options, attack_params, "attack", attack, cls.PARAMS)
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
    if cls.targeted:  # the targeted context (poisonbench.attacks.targets): a setup, or drawn from `seed`
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
    poison, cached = poisons.craft(spec, data, results, dev, progress=progress, force=force, compile=compile,
                                   accel=accel, deterministic=deterministic)
    m = poison.manifest
    out = {"poison_id": spec.poison_id, "path": str(poisons.poison_dir(results, spec.poison_id)),
           "status": "cached" if cached else "crafted", "attack": attack, "dataset": data.name,
           "count": m["count"], "eps": m["eps"], "budget": m["budget"], "seed": m["seed"],
           "craft_seconds": m.get("craft_seconds"), "compiled": m.get("compiled")}
    if aim is not None:
        out["target"] = aim.to_dict()
    return Crafted(poison, spec, cached, out)


# names of `craft`'s own options that no attack option may take: the library's and the CLI's (`--json`)
CLI_ONLY = ("as_json",)


def attack_options() -> list[GeneratedOption]:
    """The attack options, one per flag across the ATTACKS registry as it is now."""
    from ..attacks import ATTACKS

    own = [n for n, p in inspect.signature(craft).parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return collect_options(ATTACKS, [*own, *CLI_ONLY])
