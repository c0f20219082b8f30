"""Sweep grids (design.md §7): a TOML file that lists the `defend` runs of an experiment as products of option
values.

    description = "what the grid is for"
    report = ["--table", "2"]      # the `report` arguments that render it, after `sweep run` (optional)

    [defaults]                     # options shared by every [[runs]] block (optional)
    dataset = "mnist-5k"
    recipe = "quick"
    trials = 5                     # trials 0..4 of every run; each trial is one run of the sweep

    [[runs]]                       # one block: the product of its values
    poison_ratio = [0, 0.2, 1.0]   # a list is an axis of the product
    method = ["none", "friends"]

    [[runs]]
    poison_ratio = [0, 0.2, 1.0]
    method = "hint"
    ratio = [0.25, 0.5]            # a method's own options are keys like any other
    attacks = [["pgd"], ["pgd", "dap"]]   # an option that takes a list: a list of lists (joined with commas)

A key is any `poisonbench defend` option, with `_` or `-` (`poison_ratio`, `poison-ratio`), except the options that
say where and how to execute (`--results`, `--data-dir`, `--device`, ...: given to `sweep` itself) and `--trial`
(`trials` sets the count). An unknown key is an error, never ignored. Runs are ordered trial-major (every run's
trial 0, then every run's trial 1, ...), so an interrupted sweep leaves whole tables of fewer trials; a run that two
blocks both list is kept once.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PoisonbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = ("description", "report", "defaults", "runs")
# `defend` options that are the sweep's (where and how runs execute), never a grid's
EXECUTION_KEYS = ("results", "data_dir", "download", "device", "compile", "accel", "force", "checkpoint_every",
                  "as_json", "trial", "prepare_only", "trials")


@dataclass(frozen=True)
class Run:
    """One run of a grid: `defend` options ({python name: value}, in the grid's key order) and its trial."""

    options: tuple[tuple[str, Any], ...]
    trial: int

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass
class Grid:
    name: str
    source: str  # the builtin name or the file's path, as a sweep on another machine would find it
    description: str = ""
    report: list[str] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


def builtin_dir() -> Path:
    return Path(str(resources.files("poisonbench.sweeps") / "grids"))


def builtin_grids() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def locate(name: str) -> tuple[str, Path]:
    """(grid name, file) of a builtin grid's name or a TOML file's path."""
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():  # a folder named like a builtin grid does not hide it
        if not path.is_file():
            raise PoisonbenchError(f"grid file {name} does not exist; builtin grids: {', '.join(builtin_grids())}")
        return path.stem, path.resolve()
    builtin = builtin_dir() / f"{name}.toml"
    if not builtin.is_file():
        raise PoisonbenchError(f"unknown grid {name!r}; valid choices: {', '.join(builtin_grids())} (builtin), or "
                               "the path of a .toml file")
    return name, builtin


def option_names() -> dict[str, Any]:
    """{python name: click parameter} of `defend`'s options that a grid may set."""
    from ..cli.defend import click_command

    return {p.name: p for p in click_command().params if p.name not in EXECUTION_KEYS}


def load_grid(name: str) -> Grid:
    """The grid `name` (builtin) or at a path, checked key by key and expanded into its runs."""
    grid_name, path = locate(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PoisonbenchError(f"grid {path}: malformed TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoisonbenchError(f"grid {path}: cannot be read ({exc})") from None
    where = f"grid {path}"
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise PoisonbenchError(f"{where}: unknown key {unknown[0]!r}; valid top-level keys: {', '.join(TOP_KEYS)}")
    report = data.get("report", [])
    if not isinstance(report, list) or not all(isinstance(a, str) for a in report):
        raise PoisonbenchError(f"{where}: report must be a list of `poisonbench report` arguments (strings), got "
                               f"{report!r}")
    check_report_args(report, where)
    defaults = data.get("defaults", {})
    blocks = data.get("runs")
    if not isinstance(defaults, dict):
        raise PoisonbenchError(f"{where}: [defaults] must be a table of options")
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise PoisonbenchError(f"{where}: needs at least one [[runs]] block of options")
    names = option_names()
    checked_defaults = check_block(defaults, names, f"{where} [defaults]")
    expanded = [expand_block({**checked_defaults, **check_block(b, names, f"{where} [[runs]] block {i + 1}")})
                for i, b in enumerate(blocks)]
    runs = trial_major(expanded)
    builtin = path.parent == builtin_dir().resolve()
    return Grid(grid_name, name if builtin else str(path), str(data.get("description", "")), report, runs)


def check_report_args(args: list[str], where: str) -> None:
    """A grid's `report` arguments parse as `poisonbench report`'s (no results option: the sweep gives it)."""
    if not args:
        return
    import typer
    import typer.main

    from ..cli import report as report_cmd

    if any(a == "--results" or a.startswith("--results=") for a in args):
        raise PoisonbenchError(f"{where}: report gives no --results (the sweep's own is used)")
    app = typer.Typer(add_completion=False)
    app.command("report")(report_cmd.report)
    try:
        typer.main.get_command(app).make_context("report", list(args))
    except Exception as exc:  # click's usage errors
        if hasattr(exc, "format_message"):
            raise PoisonbenchError(f"{where}: report {' '.join(args)}: {exc.format_message()}") from None
        raise


def check_block(block: dict, names: dict[str, Any], where: str) -> dict[str, Any]:
    """The block's keys in python form; an unknown key is refused with the valid ones."""
    out = {}
    for key, value in block.items():
        name = key.replace("-", "_")
        if name == "trials":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PoisonbenchError(f"{where}: trials must be a positive integer, got {value!r}")
        elif name not in names:
            valid = ", ".join(sorted(k.replace("_", "-") for k in names))
            hint = " (given to `sweep`, not set by a grid)" if name in EXECUTION_KEYS else ""
            raise PoisonbenchError(f"{where}: unknown key {key!r}{hint}; valid keys: trials, {valid}")
        if isinstance(value, dict) and name not in ("attack_params", "poisons"):
            raise PoisonbenchError(f"{where}: {key} must be a value or a list of values, got a table")
        out[name] = value
    return out


def expand_block(block: dict[str, Any]) -> list[tuple[tuple[tuple[str, Any], ...], int]]:
    """The product of a block's axes: [(options, trials)]."""
    trials = block.pop("trials", 1)
    keys = list(block)
    axes = [v if isinstance(v, list) else [v] for v in block.values()]
    return [(tuple(zip(keys, combo, strict=True)), trials) for combo in itertools.product(*axes)]


def trial_major(blocks: list[list[tuple[tuple, int]]]) -> list[Run]:
    runs, seen = [], set()
    most = max((t for block in blocks for _, t in block), default=1)
    for trial in range(most):
        for block in blocks:
            for options, trials in block:
                run = Run(options, trial)
                key = (tuple(sorted((k, repr(v)) for k, v in options)), trial)
                if trial < trials and key not in seen:
                    seen.add(key)
                    runs.append(run)
    return runs


def to_argv(options: tuple[tuple[str, Any], ...], names: dict[str, Any]) -> list[str]:
    """`defend` arguments for grid options: a bool flag as its on/off form, a list as comma-separated values, a
    table (attack_params, poisons) as NAME=VALUE pairs."""
    argv = []
    for name, value in options:
        param = names[name]
        if getattr(param, "is_flag", False) or isinstance(value, bool):
            if value:
                argv.append(param.opts[0])
            elif param.secondary_opts:
                argv.append(param.secondary_opts[0])
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={_text(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ",".join(_text(v) for v in value)
        argv += [param.opts[0], _text(value)]
    return argv


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
