"""What a grid will cost before it runs (issue 81): its device-hours per device kind, from measured throughput.

    hours = (Σ_runs epochs × train_rows / images_per_s[workload] × ratio_to_none[method]
             + Σ_pretrained epochs × rows / images_per_s[family-scratch]
             + Σ_poison_sets restarts × iterations × seconds_per_iteration[attack] × poisons / measured_poisons) / 3600

Nothing is loaded: the rows are the dataset catalog's split sizes, the epochs the recipes', the iterations, restarts
and budgets the attacks' defaults. The figures come from two places:

- `throughput.json` beside this module: one entry per device kind, written by `benchmarks/gpu_check.py
  --write-throughput` from the lines it measured (`figures_from_lines`); each entry names its provenance.
- this CPU, measured on the spot (`measure_cpu`: a warm-up and a timed training step of each family's paper model);
  it has no defense-overhead or crafting figures of its own, so those are the reference GPU's, scaled, and said so.

`sweep plan GRID --estimate` (poisonbench.cli.sweep) prints `estimate(...)`; docs/sweeps.md, "What a grid will cost".
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..core.bounded import read_json_file
from ..core.errors import PoisonbenchError
from .grid import Grid

TABLE = Path(__file__).with_name("throughput.json")
CPU_KIND = "this CPU (measured now)"
WORKLOADS = ("cifar10-scratch", "cifar10-transfer", "mnist-scratch")

FORMULA = (
    "hours = (Σ_runs epochs × train_rows / images_per_s[workload] × ratio_to_none[method] "
    "+ Σ_pretrained epochs × rows / images_per_s[family-scratch] "
    "+ Σ_poison_sets restarts × iterations × seconds_per_iteration[attack] × poisons / measured_poisons) / 3600; "
    "workload: family-scratch (train_rows = the train split) or family-transfer (the 10 % transfer set, "
    "BP / FC); images_per_s: the engine's fp32 train_throughput lines; pretrained: a targeted attack's surrogate "
    "(scratch) or the transfer victim's and the gray-box attacker's extractors (90 % of the split), once per "
    "dataset, and the untargeted mix's surrogate")

EXCLUDES = ["evaluation", "process start-up and data loading", "checkpoints"]
ASSUMES = ["the ResNet-18 paper-scale defense-overhead ratios for every workload, measured on a part of the rows "
           "(costs linear in the rows: OCSVM's fit and EPIC's per-class similarities grow faster)",
           "one device per run, fp32, runs one after another",
           "each attack's default iterations, restarts and budget (a grid's attack_params are not read)"]


@dataclass(frozen=True)
class Figures:
    """One device kind's measured figures: images/s per workload, each defense's paper-scale wall time over `none`'s,
    and each attack's crafting seconds per iteration at `poisons` poisons."""

    kind: str
    images_per_s: dict[str, float]
    ratio_to_none: dict[str, float]
    crafting: dict[str, dict]  # attack -> {"seconds_per_iteration": s, "poisons": n}
    source: dict = field(default_factory=dict)  # provenance: file, commit, torch, date
    assumes: tuple[str, ...] = ()  # what these figures take from elsewhere (the CPU's: the GPU's ratios)


# ---- the figures ---------------------------------------------------------------------------------------------------

def packaged_figures(path: str | Path = TABLE) -> list[Figures]:
    """Every device kind of the figures table (`throughput.json` in the package unless `path`), read through the
    bounded reader (core/bounded.py: a regular file, `MAX_JSON_FILE_BYTES`, `MAX_DEPTH`; else `Refused`)."""
    table = read_json_file(path)
    return [Figures(kind, e["images_per_s"], e["ratio_to_none"], e["crafting"], e.get("source", {}))
            for kind, e in table["devices"].items()]


def figures_from_lines(lines: list[dict]) -> tuple[str, dict]:
    """(device kind, table entry) from benchmarks/gpu_check.py's JSON lines: the fp32 `--deterministic off` training
    throughput per workload, the `paper_scale_ratio_to_none` per defense, seconds per iteration per attack; the
    provenance from the `setup` line."""
    setup = next((x for x in lines if x.get("figure") == "setup"), {})
    measured = [x for x in lines if "error" not in x and "skipped" not in x]
    images = {x["workload"]: x["images_per_s"] for x in measured if x.get("figure") == "train_throughput"
              and x.get("precision") == "fp32" and x.get("deterministic") == "off"}
    ratios = {x["method"]: x["paper_scale_ratio_to_none"] for x in measured if x.get("figure") == "defense_overhead"
              and x.get("paper_scale_ratio_to_none") is not None}
    crafting = {x["attack"]: {"seconds_per_iteration": x["seconds_per_iteration"], "poisons": x["poisons"]}
                for x in measured if x.get("figure") == "craft"}
    kind = setup.get("device_name") or next((x["device_name"] for x in lines if "device_name" in x), "unknown")
    source = {"by": "benchmarks/gpu_check.py", "git_commit": setup.get("git_commit"), "torch": setup.get("torch"),
              "date": setup.get("date"), "compile": setup.get("compile"), "precision": "fp32",
              "throughput": "--deterministic off, paper batch 128; overheads under --deterministic on"}
    return kind, {"source": source, "images_per_s": images, "ratio_to_none": ratios, "crafting": crafting}


def write_table(path: str | Path, kind: str, entry: dict) -> None:
    """Put `kind`'s entry into the figures table at `path` (the other kinds kept; a new table if none)."""
    path = Path(path)
    table = read_json_file(path) if path.exists() else {"devices": {}}  # the bounded reader, as packaged_figures
    table["devices"][kind] = entry
    path.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")


CPU_BATCH = {"cifar10": 16, "mnist": 128}  # rows per timed step: ResNet-18's below the paper's 128 (see measure_cpu)


def measure_cpu(batch: dict[str, int] = CPU_BATCH) -> dict[str, float]:
    """This CPU's images/s per workload, with the process's threads: one warm-up and one timed SGD step of each
    family's paper model (ResNet-18 on 32×32 colour, the transfer victim's trainable head over its frozen
    extractor, the ConvNet on 28×28 grey) on `batch[family]` random rows. A few seconds on an idle CPU; the global
    RNG is restored. ResNet-18's batch is below the paper's 128 because one step at 128 takes seconds on a small
    CPU, whose images/s depend little on the batch (a GPU's do: its figures are at 128)."""
    import torch
    import torch.nn.functional as F

    from ..data.catalog import CIFAR_MEAN_STD, MNIST_MEAN_STD
    from ..engine.models import DEFAULT_MODEL, build_model

    shapes = {"cifar10": ((3, 32, 32), CIFAR_MEAN_STD), "mnist": ((1, 28, 28), MNIST_MEAN_STD)}
    out = {}
    with torch.random.fork_rng(devices=[]):  # build_model seeds the global generator: leave the caller's as it was
        for workload in WORKLOADS:
            family, kind = workload.split("-")
            shape, (mean, std) = shapes[family]
            data = SimpleNamespace(name=family, shape=shape, num_classes=10, mean=mean, std=std)  # no data loaded
            model = build_model(DEFAULT_MODEL[family], data, seed=0)
            if kind == "transfer":  # the BP / FC victim: only the head trains (engine_throughput's frozen set-up)
                model.requires_grad_(False)
                model.head.requires_grad_(True)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
            rows = batch[family]
            x, y = torch.rand(rows, *shape), torch.randint(0, 10, (rows,))
            seconds = 0.0
            for _ in range(2):  # the first step warms the allocator and oneDNN's kernels up: not counted
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                seconds = time.perf_counter() - start
            out[workload] = round(rows / seconds, 1)
    return out


def cpu_figures(images_per_s: dict[str, float], reference: Figures, measured: bool = True) -> Figures:
    """The CPU's figures: its measured images/s; the defense ratios `reference`'s as they are, and its crafting
    seconds scaled by how much slower this CPU trains ResNet-18 (a crafting iteration is ResNet-18 gradient work)."""
    slower = reference.images_per_s.get("cifar10-scratch", 0) / images_per_s.get("cifar10-scratch", math.inf)
    crafting = {a: {**c, "seconds_per_iteration": c["seconds_per_iteration"] * slower}
                for a, c in reference.crafting.items()} if slower else {}
    timed = (f"images/s: one timed training step per workload on this CPU with {_threads()} threads, now "
             f"(batch {CPU_BATCH['cifar10']} for ResNet-18, {CPU_BATCH['mnist']} for the ConvNet)") if measured \
        else "images/s: given by the caller, not measured"
    assumes = (timed,
               f"defense-overhead ratios: the {reference.kind}'s (no CPU figure; a defense's own work may weigh "
               "differently on a CPU)",
               f"crafting s/iteration: the {reference.kind}'s × its cifar10-scratch images/s over this CPU's "
               f"({slower:.3g}×)" if slower else
               f"crafting s/iteration: none (a cifar10-scratch images/s is missing on the {reference.kind} or on "
               "this CPU, so there is nothing to scale by)")
    return Figures(CPU_KIND, dict(images_per_s), dict(reference.ratio_to_none), crafting,
                   {"by": "poisonbench.sweeps.estimate.measure_cpu", "cpu": _cpu_model()}, assumes)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cpu_model() -> str:
    from ..core.provenance import cpu_model

    return cpu_model()


# ---- the grid's work, independent of the device ----------------------------------------------------------------

@dataclass
class Item:
    """One piece of a grid's work: a run's training, a pre-trained model or a PoisonSet's crafting."""

    part: str  # "runs" | "pretrained" | "crafting"
    key: tuple
    workload: str = ""  # what images_per_s it trains at (runs, pretrained)
    images: float = 0.0  # epochs × rows
    method: str = "none"  # a run's defense
    attack: str = ""  # crafting: the attack, its iterations × restarts × poisons
    iteration_poisons: float = 0.0
    users: set[int] = field(default_factory=set)  # positions in grid.runs that need it


@dataclass
class Work:
    grid: str
    runs: int
    items: list[Item]
    excludes: list[str]
    unknown: list[str]  # what has no size without loading data (named under `missing`)


def grid_work(grid: Grid) -> Work:
    """The grid's work in images trained and poison-iterations crafted, from the catalog's split sizes and the
    recipes' and attacks' defaults (what `defend` would use); no data are loaded.

    Per attack family: the untargeted mix (`attacks`, no `attack`) trains on the whole split with the paper
    recipe's surrogate and its crafting is not timed; a targeted attack (`scenario` scratch: a surrogate at the
    victim's recipe; transfer: the extractors) crafts restarts × iterations × ⌊budget·rows⌋ poison-iterations; a
    backdoor trains its victim on the whole split at the paper recipe (`defend`'s default for a run that is not
    targeted) and crafts restarts × (iterations or PGD steps) × ⌊budget·n⌋ when it optimises (Label-Consistent:
    against the untargeted surrogate; Sleeper Agent: against a surrogate at its `surrogate_recipe`, retrained
    from scratch at every `retrain_iter`-th iteration, those retrainings counted under `pretrained`), nothing when
    it only stamps its trigger (BadNets, Blend, SIG)."""
    from ..attacks import ATTACKS
    from ..attacks.backdoor import is_backdoor
    from ..attacks.surrogate import SURROGATE_RECIPE
    from ..data import DATASETS, DEFAULT_DATASET
    from ..engine.pretrained import TRANSFER_FRACTION
    from ..engine.recipes import default_recipe, resolve_recipe

    def surrogate(family: str, dataset: str, recipe) -> Item:  # one model per dataset and recipe (its id hashes both)
        return Item("pretrained", ("surrogate", dataset, recipe.name, recipe.epochs), f"{family}-scratch",
                    recipe.epochs * DATASETS.get(dataset).split_sizes[0])

    items: dict[tuple, Item] = {}
    unknown, untargeted, stamped = set(), False, set()
    for position, run in enumerate(grid.runs):
        o = dict(run.options)
        name = o.get("dataset") or DEFAULT_DATASET
        if name not in DATASETS:  # an .npz path: its rows are known only once loaded
            unknown.add(f"dataset {name} (not in the catalog: its rows are known only once loaded)")
            continue
        spec = DATASETS.get(name)
        family, n = spec.family, spec.split_sizes[0]
        attack = o.get("attack")
        cls = ATTACKS.get(attack) if attack is not None else None
        targeted = cls is not None and bool(cls.targeted)
        recipe = resolve_recipe(family, o.get("recipe") or default_recipe(family, targeted), epochs=o.get("epochs"))
        workload = f"{family}-scratch"
        rows, shared = n, []
        if cls is None:
            untargeted = True
            shared.append(surrogate(family, spec.name, resolve_recipe(family, SURROGATE_RECIPE)))
        else:
            params = cls(family).params
            if targeted and (o.get("scenario") or params["scenario"]) == "transfer":
                rows, workload = round(TRANSFER_FRACTION * n), f"{family}-transfer"
                gray = (o.get("threat") or params.get("threat") or "gray") == "gray"
                for role in ("victim", "attacker") if gray else ("victim",):  # a gray-box attacker trains its own
                    shared.append(Item("pretrained", ("extractor", role, spec.name), f"{family}-scratch",
                                       recipe.epochs * (n - rows)))
            elif targeted:  # scratch: a surrogate trained with the victim's recipe
                shared.append(surrogate(family, spec.name, recipe))
            elif is_backdoor(cls) and cls.uses_surrogate:  # LC: the untargeted surrogate; SA: its own recipe's
                shared.append(surrogate(family, spec.name,
                                        resolve_recipe(family, params.get("surrogate_recipe") or SURROGATE_RECIPE)))
            poisons = math.floor((o.get("budget") or cls.default_budget()) * rows)
            iterations = params.get("iterations") or params.get("steps")
            if iterations:
                shared.append(Item("crafting", (attack, spec.name, run.trial), attack=attack,
                                   iteration_poisons=params.get("restarts", 1) * iterations * poisons))
            else:
                stamped.add(attack)
            if params.get("retrain_iter"):  # Sleeper Agent: retrained from scratch on the poisoned split
                from ..attacks.sleeper_agent import retrain_due

                again = resolve_recipe(family, params["surrogate_recipe"])
                epochs = min(params.get("retrain_epochs") or again.epochs, again.epochs)
                count = sum(retrain_due(i, iterations, params["retrain_iter"]) for i in range(iterations))
                shared.append(Item("pretrained", ("retrain", attack, spec.name, run.trial), f"{family}-scratch",
                                   params.get("restarts", 1) * count * epochs * n))
        shared.append(Item("runs", ("run", position), workload, recipe.epochs * rows, o.get("method", "none")))
        for item in shared:
            items.setdefault(item.key, item).users.add(position)
    excludes = (["crafting the untargeted mix (PGD, DAP, DURP, DeepConfuse): not timed "
                 "(benchmarks/craft_throughput.py times it per poison)"] if untargeted else []) + \
        ([f"crafting {', '.join(sorted(stamped))}: a trigger stamped on the rows, no optimisation"]
         if stamped else []) + EXCLUDES
    return Work(grid.name, len(grid.runs), list(items.values()), excludes, sorted(unknown))


# ---- hours ---------------------------------------------------------------------------------------------------------

def item_seconds(item: Item, figures: Figures) -> tuple[float | None, str | None]:
    """(seconds, None) of `item` on `figures`' device, or (None, the missing figure's name)."""
    if item.part == "crafting":
        measured = figures.crafting.get(item.attack)
        if measured is None:
            return None, f"crafting {item.attack}"
        return item.iteration_poisons * measured["seconds_per_iteration"] / measured["poisons"], None
    rate = figures.images_per_s.get(item.workload)
    if not rate:
        return None, f"images/s {item.workload}"
    ratio = 1.0 if item.part == "pretrained" else figures.ratio_to_none.get(item.method)
    if ratio is None:
        return None, f"overhead {item.method}"
    return item.images / rate * ratio, None


def device_hours(work: Work, figures: Figures, done: set[int] = frozenset(), crafted: set[tuple] = frozenset()) -> dict:
    """`work`'s hours on `figures`' device, per part, in all and still to do: a run is done when its position is in
    `done`; a pre-trained model or a PoisonSet when every run that needs it is done (a PoisonSet also when its key,
    (attack, dataset, trial), is in `crafted`)."""
    total = dict.fromkeys(("runs", "pretrained", "crafting"), 0.0)
    left = dict(total)
    missing = set(work.unknown)
    for item in work.items:
        seconds, lacking = item_seconds(item, figures)
        if seconds is None:
            missing.add(lacking)
            continue
        total[item.part] += seconds
        finished = item.users <= done or (item.part == "crafting" and item.key in crafted)
        if not finished:
            left[item.part] += seconds
    hours = lambda s: round(s / 3600, 3)  # noqa: E731
    return {"device": figures.kind, "hours": hours(sum(total.values())),
            **{f"hours_{part}": hours(s) for part, s in total.items()},
            "hours_remaining": hours(sum(left.values())),
            "remaining": {part: hours(s) for part, s in left.items()},
            "missing": sorted(missing), "images_per_s": figures.images_per_s, "assumes": list(figures.assumes),
            "source": figures.source}


def estimate(grid: Grid, devices: list[Figures], done: set[int] = frozenset(),
             crafted: set[tuple] = frozenset()) -> dict:
    """The grid's device-hours on each of `devices` (`device_hours`), with what every figure leaves out."""
    work = grid_work(grid)
    count = lambda part: sum(i.part == part for i in work.items)  # noqa: E731
    return {"grid": work.grid, "runs": work.runs, "runs_done": len(done), "pretrained_models": count("pretrained"),
            "poison_sets": count("crafting"), "formula": FORMULA, "excludes": work.excludes, "assumes": ASSUMES,
            "devices": [device_hours(work, f, done, crafted) for f in devices]}


def default_devices(cpu: dict[str, float] | None = None) -> list[Figures]:
    """The packaged kinds, then this CPU: `cpu` (images/s per workload) where given, else measured now
    (`measure_cpu`); its other figures scaled from the first packaged kind's."""
    packaged = packaged_figures()
    return [*packaged, cpu_figures(measure_cpu() if cpu is None else cpu, packaged[0], measured=cpu is None)]


# ---- what the workspace has done -----------------------------------------------------------------------------------

def done_in_workspace(grid: Grid, execution) -> tuple[set[int], set[tuple], str]:
    """(positions in grid.runs whose run is done, (attack, dataset, trial) of the PoisonSets crafted, a line saying
    where) in `execution.results`. A workspace without records or PoisonSets is answered without planning; else the
    grid is planned (`make_plan`), which loads its datasets, because a run's id hashes the data's fingerprint."""
    from ..core.workspace import results_dir
    from ..data import DATASETS
    from .plan import make_plan

    root = results_dir(execution.results)
    held = [d for d in (root / "runs", root / "poisons") if d.is_dir() and any(d.iterdir())]
    if not held:
        return set(), set(), f"nothing done yet in {root}"
    try:
        plan = make_plan(grid, execution)
    except PoisonbenchError as exc:
        raise PoisonbenchError(f"{root} holds records, and which of them are this grid's is known only from the "
                               f"grid's data (a run id hashes them): {exc}") from None
    states = plan.states()
    positions = {(run.options, run.trial): i for i, run in enumerate(grid.runs)}
    done = {positions[(s.cell, s.trial)] for s in plan.runs if states[s.index] == "done"}
    crafted = {(s.spec.attack, DATASETS.get(s.spec.dataset).name if s.spec.dataset in DATASETS else s.spec.dataset,
                s.spec.trial) for s in plan.steps if s.kind == "prepare" and states[s.index] == "done"}
    return done, crafted, f"{len(done)} of the grid's runs and {len(crafted)} PoisonSets done in {root}"


def plan_estimate(grid: Grid, execution, cpu: dict[str, float] | None = None) -> dict:
    """`sweep plan GRID --estimate`: `estimate` on every packaged device kind and this CPU (`cpu`: its images/s per
    workload, else measured now), less what `execution.results` has done."""
    done, crafted, where = done_in_workspace(grid, execution)
    return {**estimate(grid, default_devices(cpu), done, crafted), "workspace": where}
