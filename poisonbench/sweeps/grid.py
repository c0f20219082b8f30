"""Sweep grids (docs/sweeps.md): a TOML file that lists the `defend` runs of an experiment as products of option
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

A grid means exactly what it says, or it is refused in one line naming the key and the value (`sweep plan` and
`sweep run` both load grids here, so both refuse it before anything runs):
- an empty list (`method = []`) is an axis of no values: it would silently drop its block's runs, so it is an error;
- true / false only set an on/off option (`nesterov = false` is `--no-nesterov`); a bool for an option that takes a
  value (`recipe = false`) is an error, never "the default" or a bare flag; a flag given anything else is one too;
- `report` is parsed by `poisonbench report`'s own parser and its values checked by report's own checks
  (`--table 9`, an unknown option) when `sweep plan` or `sweep run` loads the grid (poisonbench.cli.sweep), so a
  typo fails at plan time, not after every run has trained;
- at most MAX_TRIALS (1,000) trials, the limit `defend --trials` has, and at most MAX_RUNS (10,000) runs per grid,
  counted before anything is expanded (per block: the product of its axes' lengths times its trials, summed over
  the blocks). Planning resolves every run (about 0.05 s each: some 8 minutes at the limit) and each run trains a
  model; the paper's largest table is 300 runs. A bigger experiment is several grids.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.bounded import MAX_GRID_BYTES, loads_toml, read_text
from ..core.errors import PoisonbenchError
from ..experiment.options import DefendOption, all_options, as_text

TOP_KEYS = ("description", "report", "defaults", "runs")
MAX_RUNS = 10_000  # runs per grid (before duplicates are dropped); see the module docstring
# `defend` options that are the sweep's (where and how runs execute), never a grid's
EXECUTION_KEYS = ("results", "data_dir", "download", "device", "compile", "accel", "deterministic", "force",
                  "checkpoint_every", "as_json", "trial", "prepare_only", "trials")


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
    if name not in builtin_grids():  # only the listed names: `../x` must not reach a file beside the builtins
        raise PoisonbenchError(f"unknown grid {name!r}; valid choices: {', '.join(builtin_grids())} (builtin), or "
                               "the path of a .toml file")
    return name, builtin


def option_names() -> dict[str, DefendOption]:
    """{python name: option} of `defend`'s options that a grid may set (poisonbench.experiment.options)."""
    return {name: o for name, o in all_options().items() if name not in EXECUTION_KEYS}


def load_grid(name: str) -> Grid:
    """The grid `name` (builtin) or at a path, checked key by key and expanded into its runs."""
    grid_name, path = locate(name)
    where = f"grid {path}"
    # a regular file of MAX_GRID_BYTES at most, nested MAX_DEPTH deep at most (core/bounded.py); else one line
    data = loads_toml(read_text(path, MAX_GRID_BYTES, where), where)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise PoisonbenchError(f"{where}: unknown key {unknown[0]!r}; valid top-level keys: {', '.join(TOP_KEYS)}")
    report = data.get("report", [])
    if not isinstance(report, list) or not all(isinstance(a, str) for a in report):
        raise PoisonbenchError(f"{where}: report must be a list of `poisonbench report` arguments (strings), got "
                               f"{report!r}")
    defaults = data.get("defaults", {})
    blocks = data.get("runs")
    if not isinstance(defaults, dict):
        raise PoisonbenchError(f"{where}: [defaults] must be a table of options")
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise PoisonbenchError(f"{where}: needs at least one [[runs]] block of options")
    names = option_names()
    checked_defaults = check_block(defaults, names, f"{where} [defaults]")
    merged = [{**checked_defaults, **check_block(b, names, f"{where} [[runs]] block {i + 1}")}
              for i, b in enumerate(blocks)]
    check_size(merged, where)
    runs = trial_major([expand_block(block) for block in merged])
    builtin = path.parent == builtin_dir().resolve()
    return Grid(grid_name, name if builtin else str(path), str(data.get("description", "")), report, runs)


def check_block(block: dict, names: dict[str, Any], where: str) -> dict[str, Any]:
    """The block's keys in python form; an unknown key is refused with the valid ones, and a value that would mean
    something other than what it says (an empty axis, a bool for an option that is not a flag) with the reason."""
    from ..experiment.spec import MAX_TRIALS

    out = {}
    for key, value in block.items():
        name = key.replace("-", "_")
        if name == "trials":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PoisonbenchError(f"{where}: trials must be a positive integer, got {value!r}")
            if value > MAX_TRIALS:
                raise PoisonbenchError(f"{where}: trials = {value}: at most {MAX_TRIALS} trials (the limit of "
                                       "`defend --trials`; each trial is one training run)")
        elif name not in names:
            valid = ", ".join(sorted(k.replace("_", "-") for k in names))
            hint = " (given to `sweep`, not set by a grid)" if name in EXECUTION_KEYS else ""
            raise PoisonbenchError(f"{where}: unknown key {key!r}{hint}; valid keys: trials, {valid}")
        else:
            check_values(key, value, names[name], where)
        out[name] = value
    return out


def check_values(key: str, value: Any, param: Any, where: str) -> None:
    """One key's value or axis: not an empty axis (it would drop the block's runs without a word), no table where
    the option takes none, and bools exactly for the on/off options: `to_argv` turns a bool into a flag, so a bool
    for an option that takes a value would become a bare `--recipe` (or nothing: the default) instead of an error."""
    if isinstance(value, list) and not value:
        raise PoisonbenchError(f"{where}: {key} = []: an empty list is an axis of no values and would drop every "
                               "run of the block; give at least one value, or leave the key out for defend's default")
    flag = param.type is bool
    option = param.flag
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, dict) and param.name not in ("attack_params", "poisons"):
            raise PoisonbenchError(f"{where}: {key} must be a value or a list of values, got a table")
        if isinstance(v, bool) and not flag:
            raise PoisonbenchError(f"{where}: {key} = {_toml(v)}: {option} takes a value, not true / false (only "
                                   "on/off options do); give its value, or leave the key out for defend's default")
        if flag and not isinstance(v, bool):
            off = f" (false: {param.off_flag})" if param.off_flag else " (false: leave it off)"
            raise PoisonbenchError(f"{where}: {key} = {_toml(v)}: {option} is an on/off option; give true or "
                                   f"false{off}")


def check_size(blocks: list[dict[str, Any]], where: str) -> None:
    """Refuse a grid of more than MAX_RUNS runs from its blocks' axis lengths, before anything is expanded (a
    mistyped `trials` or a long axis must not grow memory until the process is killed)."""
    counts = []
    for block in blocks:
        count = block.get("trials", 1)
        for key, value in block.items():
            if key != "trials" and isinstance(value, list):
                count *= len(value)
        counts.append(count)
    total = sum(counts)
    if total > MAX_RUNS:
        largest = max(range(len(counts)), key=counts.__getitem__)
        raise PoisonbenchError(f"{where}: {total:,} runs (axis lengths × trials, summed over the blocks; [[runs]] "
                               f"block {largest + 1} has {counts[largest]:,}); at most {MAX_RUNS:,} runs per grid: "
                               "split it into several grids")


def _toml(value: Any) -> str:
    """A value as the grid file wrote it (true, not Python's True)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


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


def to_argv(options: tuple[tuple[str, Any], ...], names: dict[str, DefendOption]) -> list[str]:
    """`defend` arguments for grid options, as `sweep plan --print-commands` and an sbatch script show them: a bool
    as its on/off flag, a list as comma-separated values, a table (attack_params, poisons) as NAME=VALUE pairs."""
    argv = []
    for name, value in options:
        option = names[name]
        if option.type is bool or isinstance(value, bool):
            if value:
                argv.append(option.flag)
            elif option.off_flag:
                argv.append(option.off_flag)
            continue
        argv += [option.flag, as_text(value)]
    return argv
