"""A Python API for notebooks and scripts (docs/api.md): `craft`, `defend`, `report` and `plan` (a sweep's plan) as
functions with the CLI's option names and defaults, returning Python objects instead of printing.

Each is the library call its command makes (the CLI being a thin layer over the same calls):

- `craft` → `experiment.craft.craft`: a `Crafted` (`.poison_set`, `.poison_id`, `.path`, `.summary` as `craft
  --json`);
- `defend` → `experiment.options.spec_from_values` + `experiment.defend.defend`: a `DefendResult` (`.records`, the
  run records; `.frame()`, one row per run as `defend --json`);
- `report` → `report.selection` + `report.aggregate` (or `report.tables`): a pandas DataFrame with the rows of
  `report --format json` (`report table N --format json`'s "rows" with `table=N`);
- `plan` → `sweeps.make_plan`: a DataFrame with the steps of `sweep plan GRID --json`.

Bad input raises `PoisonbenchError` with the message the CLI prints after `Error: `; nothing calls `sys.exit`.
Options that take comma-separated text on the command line (`attacks`, `milestones`, `poisons`, `attack_params`,
`npz_split`) also take a list or a dict here. A defense's own options (HINT's `ratio`, ...) and an attack's (PGD's
`steps`, ...) are keyword arguments by their Python names, as `defend --help` / `craft --help` list their flags.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .core.errors import PoisonbenchError, PoisonbenchWarning
from .experiment.craft import Crafted
from .experiment.options import OPTIONS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Crafted", "DefendResult", "PoisonbenchError", "craft", "defend", "plan", "report"]


def checked(func: Callable) -> Callable:
    """`func` (an API function) with its arguments checked against its signature before it runs: an argument it
    does not take, one missing or given twice, or a value not of the annotated type (`dataset=5`, `results=5`,
    `grid=None`) is a `PoisonbenchError` naming it, as every other bad input of the API is; never a TypeError or an
    AttributeError from deep inside. A `pathlib.Path` given for a str is passed on as its text. Values passed on
    through `**kwargs` (an attack's or a defense's own options) are checked where they are read, as the CLI's are."""
    signature = inspect.signature(func)
    hints = {name: eval(p.annotation, func.__globals__) if isinstance(p.annotation, str) else p.annotation
             for name, p in signature.parameters.items()
             if p.annotation is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    named = [n for n, p in signature.parameters.items() if p.kind is not p.VAR_KEYWORD]

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PoisonbenchError(f"{func.__name__}(): {exc}; its arguments: {', '.join(named)}") from None
        for name, value in bound.arguments.items():
            if name in hints and not _fits(value, hints[name]):
                raise PoisonbenchError(f"{func.__name__}(): {name} takes {_type_text(hints[name])}, got {value!r} "
                                       f"({type(value).__name__})")
            if isinstance(value, os.PathLike):  # a pathlib.Path where the API takes a path's text
                bound.arguments[name] = os.fspath(value)
        return func(*bound.args, **bound.kwargs)

    return call


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type `hint` (the forms the API's annotations use); an int is a float, a
    bool is neither, a list or a tuple stands for a list, a `pathlib.Path` for a str."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:  # a path may be a pathlib.Path, as before
        return isinstance(value, (str, os.PathLike))
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            return False
        return all(_fits(v, a) for v, a in zip(value, args if origin is tuple else [args[0]] * len(value),
                                               strict=True))
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) and _fits(v, args[1])
                                                  for k, v in value.items())
    if origin is Callable or hint is Callable:
        return callable(value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_text(hint: Any) -> str:
    """`str | list[str] | None`: an annotation as the message names it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if hint is type(None) or hint is None:
        return "None"
    if origin is Callable:
        return "a callable"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def _default(name: str) -> Any:
    """`defend`'s default for option `name` (experiment.options.DEFEND_OPTIONS): the one source of the defaults."""
    return OPTIONS[name].default


def _from_env(name: str, value: Any) -> Any:
    """A value left out (None) of an option with an environment variable takes it, as the CLI's option does."""
    envvar = OPTIONS[name].envvar
    if value is None and envvar:
        return os.environ.get(envvar) or None
    return value


@checked
def craft(attack: str, *, dataset: str | None = None, data_dir: str | None = _default("data_dir"),
          download: bool = _default("download"), npz_split: str | tuple[float, float] | None = None,
          budget: float | None = None, eps: float | None = None, seed: int = 0, target: int | None = None,
          intended: int | None = None, setup: str | None = None, setup_index: int = _default("setup_index"),
          device: str = _default("device"), compile: str = "auto", accel: str = _default("accel"),
          deterministic: str = _default("deterministic"), results: str | None = None, force: bool = False,
          progress: bool | Callable[[str, int, int], None] = False, **attack_params: Any) -> Crafted:
    """`poisonbench craft`: craft (or find in the cache) one PoisonSet. `dataset` and `results` left out take
    $POISONBENCH_DATASET (else mnist-5k) and $POISONBENCH_RESULTS (else ./results), as the CLI's do; `progress`:
    True for the CLI's progress bars (on stderr), or a callable `(stage, completed, total)`."""
    from .data import DEFAULT_DATASET
    from .experiment.craft import craft as run_craft

    bar = None
    if progress is True:
        from .cli.craft import _Bar

        bar = _Bar()
    try:
        return run_craft(attack, dataset=_from_env("dataset", dataset) or DEFAULT_DATASET, data_dir=data_dir,
                         download=download, npz_split=_text("npz_split", npz_split), budget=budget, eps=eps, seed=seed,
                         target=target, intended=intended, setup=setup, setup_index=setup_index, device=device,
                         compile=compile, accel=accel, deterministic=deterministic,
                         results=_from_env("results", results), force=force,
                         progress=bar or (progress if callable(progress) else None), **attack_params)
    finally:
        if bar is not None:
            bar.stop()


@dataclass
class DefendResult:
    """What one `defend` call did: one outcome per trial (`experiment.defend.RunOutcome`: its record and whether it
    ran or was skipped as done), or, with `prepare_only`, the PoisonSets it prepared (`prepared`)."""

    outcomes: list = field(default_factory=list)
    prepared: list[dict] = field(default_factory=list)
    results: str | None = None

    @property
    def records(self) -> list[dict]:
        """The run records (as written under results/runs/), one per trial."""
        return [o.record for o in self.outcomes]

    def summary(self) -> list[dict]:
        """One dict per run: the objects `defend --json` prints."""
        from .experiment.defend import outcome_summary
        from .experiment.records import RunStore

        store = RunStore(self.results)
        return [outcome_summary(o, store) for o in self.outcomes]

    def frame(self) -> pd.DataFrame:
        """`summary()` as a pandas DataFrame, one row per run."""
        import pandas as pd

        return pd.DataFrame(self.summary())


@checked
def defend(method: str = _default("method"), *,
           dataset: str | None = None,
           data_dir: str | None = _default("data_dir"),
           download: bool = _default("download"),
           npz_split: str | tuple[float, float] | None = _default("npz_split"),
           model: str | None = _default("model"),
           recipe: str | None = _default("recipe"),
           epochs: int | None = _default("epochs"),
           lr: float | None = _default("lr"),
           batch_size: int | None = _default("batch_size"),
           momentum: float | None = _default("momentum"),
           nesterov: bool | None = _default("nesterov"),
           weight_decay: float | None = _default("weight_decay"),
           milestones: str | list[int] | None = _default("milestones"),
           augment: str | None = _default("augment"),
           scenario: str | None = _default("scenario"),
           poison_ratio: float = _default("poison_ratio"),
           attacks: str | list[str] | None = _default("attacks"),
           poisons: str | dict[str, str] | None = _default("poisons"),
           poison_set: str | None = _default("poison_set"),
           attack: str | None = _default("attack"),
           eps: float | None = _default("eps"),
           budget: float | None = _default("budget"),
           target: int | None = _default("target"),
           intended: int | None = _default("intended"),
           setup: str | None = _default("setup"),
           setup_index: int = _default("setup_index"),
           attack_params: str | dict[str, Any] | None = _default("attack_params"),
           trials: int = _default("trials"),
           trial: int | None = _default("trial"),
           seed: int = _default("seed"),
           same_init: bool = _default("same_init"),
           threat: str | None = _default("threat"),
           head_bn: str | None = _default("head_bn"),
           precision: str = _default("precision"),
           device: str = _default("device"),
           compile: str = _default("compile"),
           accel: str = _default("accel"),
           deterministic: str = _default("deterministic"),
           results: str | None = None,
           force: bool = _default("force"),
           checkpoint_every: float = _default("checkpoint_every"),
           prepare_only: bool = False,
           progress: bool = False,
           **method_params: Any) -> DefendResult:
    """`poisonbench defend`: train with `method` (a defense, or none) on the (optionally poisoned) train split, one
    record per trial under results/runs/ (a trial already done is skipped, as by the CLI). Every argument is the
    CLI option of the same name (`poisonbench defend --help`); `method_params` are the defense's own options.
    `dataset` and `results` left out take $POISONBENCH_DATASET (else mnist-5k) and $POISONBENCH_RESULTS (else
    ./results). `prepare_only`: only craft the PoisonSets and pre-trained models the runs need (`--prepare-only`).
    `progress`: show the CLI's progress display (on stderr)."""
    values = {name: value for name, value in locals().items() if name in OPTIONS}  # the arguments, first of all
    from .experiment.defend import defend as run_defend
    from .experiment.defend import prepare as run_prepare
    from .experiment.options import spec_from_values

    values = {**values, **method_params, "dataset": _from_env("dataset", dataset),
              "results": _from_env("results", results)}
    spec = spec_from_values(values)
    reporter = None
    if progress:
        from .cli.progress import RichReporter

        reporter = RichReporter()
    if prepare_only:
        return DefendResult(prepared=run_prepare(spec, reporter), results=spec.results)
    return DefendResult(outcomes=run_defend(spec, reporter), results=spec.results)


@checked
def report(results: str | None = None, *, table: str | int | None = None, dataset: str | None = None,
           method: str | list[str] | None = None, recipe: str | None = None, model: str | None = None,
           epochs: int | None = None, attacks: str | list[str] | None = None,
           poisons: str | dict[str, str] | None = None, trials: int = 5, paper: bool = False, diff: bool = False,
           ci: bool = False, paired: bool = False, wilson: bool | None = None, rho: float | None = None,
           poison_ratio: float | None = None, versus: str | None = None) -> pd.DataFrame:
    """`poisonbench report` as a DataFrame: test accuracy mean and sample std per configuration, in percent as the
    CLI shows them (`test_acc_mean_pct`, `test_acc_std_pct`: 100 × the `test_acc_mean` / `test_acc_std` fractions of
    `report --format json`; a std of one trial is NaN where the JSON has null), the other columns as the JSON's keys.
    With `table` (2 | 3 | 4 | 5 | II–V | matrix): the rows of `report table N --format json` (its numbers in percent
    already), with its caption and notes in `attrs`. In both, `params` is the defense's parameters as a dict (the
    record's `config.defense` less `method`; `{}` for none), not the JSON text the CLI prints; a table's row that no
    run fills has None. The filters and views are `report`'s options of the same name (`results` may name a packed
    records file). The notes the CLI prints on stderr are in `attrs["notes"]`; a record file that cannot be trusted
    is skipped with a `PoisonbenchWarning`."""
    import pandas as pd

    from .cli.report import check_arguments, is_matrix, not_shown_note
    from .experiment.packed_records import open_store
    from .report import selection, tables

    table = None if table is None else str(table)
    method, attacks, poisons = (_text("method", method), _text("attacks", attacks), _text("poisons", poisons))
    results = _from_env("results", results)
    methods, attacks, chosen = check_arguments(
        table=table, figure=None, fmt="json", missing=False, per_trial=False, poisons=poisons, trials=trials,
        paper=paper, diff=diff, ci=ci, wilson=wilson, paired=paired, rho=rho, out=None, run=None, trial=None,
        dataset=dataset, method=method, recipe=recipe, model=model, epochs=epochs, attacks=attacks,
        poison_ratio=poison_ratio, versus=versus)
    matrix = is_matrix(table)
    store = open_store(results)
    filters = selection.record_filters(dataset=dataset, model=model, recipe=recipe, epochs=epochs, methods=methods,
                                       attacks=attacks, chosen=chosen, matrix=matrix)
    records = store.all()
    for line in [*store.skipped_lines(), *([store.skipped_note()] if store.skipped_note() else [])]:
        warnings.warn(line, PoisonbenchWarning, stacklevel=2)
    tables.assert_records(records, store.runs, len(store.skipped))
    if table is not None:
        columns = tuple(attacks.split(",")) if matrix and attacks and attacks != "any" else ()
        opts = tables.Options(trials=trials, paper=paper, diff=diff, ci=ci, wilson=wilson is not False, rho=rho,
                              paired=paired, poison_ratio=poison_ratio, attacks=columns, versus=versus)
        result = tables.build(tables.check_table(table), records, opts, **filters)
        out = pd.DataFrame(result.data)
        if "params" in out:
            out["params"] = out["params"].map(_params)
        out.attrs.update(table=tables.ROMAN.get(result.number, result.number), caption=result.caption,
                         notes=[*result.notes, *(n for b in result.blocks for n in b.notes)], mixed=result.mixed)
        return out
    summary = selection.plain_summary(records, filters, attacks)
    notes = []
    if summary.attrs.get("not_shown"):
        notes.append(not_shown_note(summary.attrs["not_shown"]))
    notes += summary.attrs.get("craft_notes", [])
    summary.attrs["notes"] = notes
    if summary.empty:
        return summary.reset_index(drop=True)
    summary["params"] = summary["params"].map(lambda text: {} if text == "-" else _params(text))
    summary = summary.rename(columns=_PERCENT)
    for column in _PERCENT.values():
        summary[column] = 100 * summary[column]
    return summary.reset_index(drop=True)


_PERCENT = {"test_acc_mean": "test_acc_mean_pct", "test_acc_std": "test_acc_std_pct"}  # report(): fraction → percent


def _params(text: str | None) -> dict | None:
    """A defense's parameters, as the reports print them (canonical JSON text), as a dict; None where no run fills a
    table's row (the JSON's "" or null, or a row without the key)."""
    import json

    return json.loads(text) if isinstance(text, str) and text else None


@checked
def plan(grid: str, *, data_dir: str | None = _default("data_dir"), download: bool = _default("download"),
         device: str = _default("device"), compile: str = _default("compile"), accel: str = _default("accel"),
         deterministic: str = _default("deterministic"), results: str | None = None) -> pd.DataFrame:
    """`poisonbench sweep plan GRID --json` as a DataFrame: one row per step (crafting first, then runs) with its
    index, kind (prepare | run), key, label, state (done | missing | failed | running) and the `poisonbench defend`
    command that runs it (a list of arguments). `grid`: a builtin grid's name or a TOML file's path."""
    import pandas as pd

    from .cli.sweep import checked_grid, execution
    from .sweeps import make_plan

    p = make_plan(checked_grid(grid), execution(_from_env("results", results), data_dir, download, device, compile,
                                                accel, deterministic))
    states = p.states()
    out = pd.DataFrame([{"index": s.index, "kind": s.kind, "key": s.key, "label": s.label, "state": states[s.index],
                         "command": ["poisonbench", *s.command(p.execution)]} for s in p.steps],
                       columns=["index", "kind", "key", "label", "state", "command"])
    out.attrs["grid"] = p.grid.name
    return out


def _text(name: str, value: Any) -> Any:
    """A list, tuple or dict as the CLI's comma-separated text (experiment.options.as_text); else as given."""
    from .experiment.options import as_text

    return as_text(value) if isinstance(value, (list, tuple, dict)) else value
