"""A sweep's plan: the grid's runs resolved into steps, each with its identity on disk.

Two kinds of step, in this order, each a `DefendSpec` built from the grid's values (poisonbench.experiment.options)
and run by the library (poisonbench.sweeps.worker); its `defend` arguments are rendered only to be shown
(`--print-commands`):
- `prepare`: craft one PoisonSet that runs share (`experiment.defend.prepare`, `defend --prepare-only`, with the
  options of the first run that needs it, reduced to that PoisonSet: `--method none`, and for the untargeted mix
  `--attacks A --poison-ratio 1`), which trains the shared pre-trained models on the way (a surrogate, the transfer
  extractor). Done when the PoisonSet is on disk.
- `run`: one trial of one `defend` configuration (`--trial T`). Done when its record exists.

A step's index in the plan is stable while the grid, the data and poisonbench's run identities are (the plan lists
every step, done or not): `sweep run --task-id I` runs step I, as an `sbatch --array` task does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.device import resolve_device
from ..core.errors import PoisonbenchError
from ..core.io import try_exclusive
from ..experiment.options import method_options, spec_from_values
from ..experiment.packed_records import GridSelection
from ..experiment.records import RunStore
from ..experiment.spec import DefendSpec
from .grid import Grid, Run, load_grid, option_names, to_argv


@dataclass(frozen=True)
class Execution:
    """Where and how every step executes: the `defend` options a sweep passes on, never part of a grid."""

    results: str | None = None
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    compile: str = "auto"
    accel: str = "auto"
    deterministic: str = "on"

    def values(self) -> dict:
        """The execution's `defend` option values (poisonbench.experiment.options), for a step's spec."""
        return {"results": self.results, "data_dir": self.data_dir, "download": self.download, "device": self.device,
                "compile": self.compile, "accel": self.accel, "deterministic": self.deterministic}

    def argv(self) -> list[str]:
        out = []
        if self.results:
            out += ["--results", str(self.results)]
        if self.data_dir:
            out += ["--data-dir", str(self.data_dir)]
        if self.download:
            out.append("--download")
        for flag, value in (("--device", self.device), ("--compile", self.compile), ("--accel", self.accel)):
            if value != "auto":
                out += [flag, value]
        if self.deterministic != "on":
            out += ["--deterministic", self.deterministic]
        return out


@dataclass
class Step:
    index: int
    kind: str  # "prepare" | "run"
    spec: DefendSpec  # what the step runs: `defend` (run) or `prepare` (prepare) of poisonbench.experiment.defend
    argv: list[str]  # the same as `defend` arguments, without the execution options (shown, never parsed)
    key: str  # run id, or poison id (prepare)
    label: str
    cell: tuple = ()  # a run's grid options without the trial: one cell of the sweep's table
    trial: int | None = None
    needs: tuple[str, ...] = ()  # poison ids of the prepare steps that must be done first
    config: dict = field(default_factory=dict)

    def command(self, execution: Execution) -> list[str]:
        """The `poisonbench defend ...` arguments (without the program name) that run the same step: what `sweep plan
        --print-commands` prints (tests/test_sweep.py parses them back into this step's spec)."""
        extra = ["--prepare-only"] if self.kind == "prepare" else []
        return ["defend", *self.argv, *extra, *execution.argv()]

    @property
    def failure_key(self) -> str:
        from ..experiment.defend import craft_key

        return craft_key(self.key) if self.kind == "prepare" else self.key


@dataclass
class Plan:
    grid: Grid
    execution: Execution
    steps: list[Step]

    @property
    def runs(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "run"]

    def state(self, step: Step, store: RunStore | None = None, manifests: dict | None = None) -> str:
        """done | failed | running | missing. A run whose record trained on another craft than the PoisonSets on
        disk is not done (`defend` refuses it, naming both crafts: docs/engine.md, "One run id, one craft");
        `manifests` caches the PoisonSets' tensor hashes across steps."""
        from ..experiment.craft_check import clash_with_disk

        store = store or RunStore(self.execution.results)
        if step.kind == "run":
            record = store.get(step.key)
            done = record is not None and not clash_with_disk(record, store.root, manifests)
        else:
            from ..poisons import exists

            done = exists(store.root, step.key)
        if done:
            return "done"
        if store.failure(step.failure_key) is not None:
            return "failed"
        return "running" if held(store, step) else "missing"

    def states(self) -> dict[int, str]:
        store, manifests = RunStore(self.execution.results), {}
        return {s.index: self.state(s, store, manifests) for s in self.steps}


def held(store: RunStore, step: Step) -> bool:
    """Whether another process holds the step's claim now (a run's claim; a PoisonSet's craft lock)."""
    from ..experiment.defend import run_lock
    from ..poisons.store import craft_lock

    lock = run_lock(store, step.key) if step.kind == "run" else craft_lock(store.root, step.key)
    if not lock.exists():
        return False
    with try_exclusive(lock) as free:
        return not free


class DataCache:
    """Each dataset loaded once per plan (a run's identity includes the data's fingerprint)."""

    def __init__(self):
        self._data: dict[tuple, Any] = {}

    def get(self, spec):
        from ..data import load_dataset

        key = (spec.dataset, spec.data_dir, spec.download, spec.npz_split)
        if key not in self._data:
            self._data[key] = load_dataset(spec.dataset, spec.data_dir, spec.download, npz_split=spec.npz_split)
        return self._data[key]


def make_plan(grid: Grid, execution: Execution) -> Plan:
    """Resolve every run of `grid` (as `defend` would: the same spec, checks and run ids) into steps; bad options in
    the grid fail here, naming the run, before anything executes."""
    from ..experiment.checks import validate
    from ..experiment.defend import run_config
    from ..experiment.records import run_id
    from ..experiment.scenarios import scenario_for

    resolve_device(execution.device)  # every step's: checked once, here (the runs' other values by `validate`)
    names = option_names()
    data = DataCache()
    prepares: dict[str, Step] = {}
    runs: list[Step] = []
    seen: set[str] = set()
    for run in grid.runs:
        argv = [*to_argv(run.options, names), "--trial", str(run.trial)]
        try:
            spec = step_spec(run.options, run.trial, execution)
            validate(spec)
            dataset = data.get(spec)
            scenario = scenario_for(spec)
            plan = scenario.plan(spec, dataset, run.trial)
            config = run_config(spec, dataset, run.trial, plan, scenario)
        except PoisonbenchError as exc:
            raise PoisonbenchError(f"grid {grid.name}, run `defend {' '.join(argv)}`: {exc}") from None
        rid = run_id(config)
        if rid in seen:  # two options that resolve to one run (a default given explicitly)
            continue
        seen.add(rid)
        crafts = dict(getattr(plan, "crafts", {}) or {})
        for pid, attack in crafts.items():
            if pid not in prepares:
                prepares[pid] = prepare_step(run, pid, attack, execution, names, data)
        runs.append(Step(0, "run", spec, argv, rid, run_label(run), cell=run.options, trial=run.trial,
                         needs=tuple(crafts), config=config))
    steps = list(prepares.values()) + runs
    for i, step in enumerate(steps):
        step.index = i
    return Plan(grid, execution, steps)


def step_spec(options: tuple[tuple[str, Any], ...], trial: int, execution: Execution) -> DefendSpec:
    """The spec of one grid row's trial, executed as `execution` says."""
    return spec_from_values({**dict(options), "trial": trial, **execution.values()})


def prepare_step(run: Run, pid: str, attack: str, execution: Execution, names: dict, data: DataCache) -> Step:
    """The step that crafts PoisonSet `pid`: the run's data, recipe and poison options with `--method none`; for
    the untargeted mix only that attack's share (`--attacks A --poison-ratio 1`: the mix's PoisonSets are crafted
    over the whole train split whatever ρ, so this is the same PoisonSet). Checked: its plan crafts exactly `pid`."""
    from ..experiment.scenarios import scenario_for

    own = set(names) - {o.python_name for o in method_options()}
    whole = [(k, v) for k, v in run.options if k in own and k != "method"]  # the run's own poisons, no defense
    untargeted = dict(run.options).get("attack") is None and dict(run.options).get("poison_set") is None
    candidates = [whole]
    if untargeted:
        reduced = [(k, v) for k, v in whole if k not in ("attacks", "poison_ratio", "poisons")]
        candidates.insert(0, reduced + [("attacks", attack), ("poison_ratio", 1.0)])
    for options in candidates:  # the reduced step when it crafts exactly this PoisonSet, else the run's own poisons
        spec = step_spec(tuple(options), run.trial, execution)
        plan = scenario_for(spec).plan(spec, data.get(spec), run.trial)
        crafts = set(plan.crafts) if plan is not None else set()
        if crafts == {pid} or (options is whole and pid in crafts):
            argv = [*to_argv(tuple(options), names), "--trial", str(run.trial)]
            return Step(0, "prepare", spec, argv, pid, f"craft {attack} PoisonSet {pid}", needs=())
    raise PoisonbenchError(f"internal: no prepare step crafts PoisonSet {pid} ({attack}) of run {run_label(run)}")


def run_label(run: Run) -> str:
    o = dict(run.options)
    parts = [str(o.get("dataset", "mnist-5k")), str(o.get("method", "none"))]
    if o.get("attack"):
        parts.append(f"attack {o['attack']}")
    elif o.get("poison_ratio") is not None:
        parts.append(f"ρ {o['poison_ratio']:g}")
    own = {"dataset", "method", "attack", "poison_ratio"}
    parts += [f"{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
              for k, v in run.options if k not in own]
    return " · ".join(parts) + f" · trial {run.trial}"


def grid_selection(grid: str, directory: str | Path, data_dir: str | None = None) -> GridSelection:
    """The run ids of `grid`'s runs (a builtin grid's name or a TOML file), resolved by the sweep planner against
    the workspace `directory` (`make_plan`: the grid's datasets are loaded, from `data_dir` where given, because a
    run id hashes the data's fingerprint; nothing is written)."""
    plan = make_plan(load_grid(grid), Execution(results=str(directory), data_dir=data_dir))
    return GridSelection(plan.grid.name, [step.key for step in plan.runs])
