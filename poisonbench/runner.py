"""`defend`: resolve a run spec into configs, skip the done ones, train the rest, write records.

This is the library behind `poisonbench defend`; the CLI only parses options and shows progress.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import torch

from .attacks.base import check_seed
from .checkpoints import CHECKPOINT_EVERY, Checkpoint, checkpoint_path
from .data import NPZ_TEST_FRACTION, NPZ_VAL_FRACTION, Dataset, load_dataset
from .defenses import DEFENSES, build_defense
from .errors import PoisonbenchError
from .models import DEFAULT_MODEL, MODELS, build_model, check_fits
from .recipes import DEFAULT_RECIPE, resolve_recipe
from .records import SCHEMA_VERSION, RunStore, environment, git_state, peak_memory, run_id
from .samples import sample_predictions
from .scenarios import check_attacks
from .training import check_compile_mode, predict, resolve_device, to_float, train


class Reporter(Protocol):
    """Progress display the runner drives (the CLI passes a rich one; None is silent)."""

    def start(self, description: str, epochs: int) -> None: ...
    def batch(self, epoch: int, step: int, steps: int) -> None: ...
    def epoch(self, epoch: int, row: dict) -> None: ...
    def stop(self) -> None: ...


@dataclass
class DefendSpec:
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    download: bool = False
    npz_split: tuple[float, float] | None = None  # an .npz's val / test fractions (None: 0.02 / 0.18)
    model: str | None = None  # None: the dataset family's default (paper Table I)
    recipe: str = DEFAULT_RECIPE
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    poison_ratio: float = 0.0  # ρ of Table II: fraction of the train split poisoned by the untargeted mix
    attacks: list[str] | None = None  # None: the paper's four (PGD, DAP, DURP, DeepConfuse)
    poison_sets: dict[str, str] | None = None  # attack -> existing PoisonSet to use instead of the default one
    poison_set: str | None = None  # train on exactly this PoisonSet (all its rows) instead of the mix
    method: str = "none"
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    trials: int = 1
    trial: int | None = None  # run only this trial (a sweep's unit of work) instead of 0..trials-1
    device: str = "auto"
    compile: str = "auto"
    results: str | None = None
    force: bool = False
    checkpoint_every: float = CHECKPOINT_EVERY  # seconds between epoch checkpoints (0: after every epoch)


@dataclass
class RunOutcome:
    record: dict
    status: str  # "ran" | "skipped"


def validate(spec: DefendSpec) -> None:
    """Checks that need no data: fail before anything is loaded or written."""
    if spec.trials <= 0:
        raise PoisonbenchError(f"trials must be a positive integer, got {spec.trials}")
    if spec.trial is not None:
        if spec.trial < 0:
            raise PoisonbenchError(f"trial must be a non-negative integer, got {spec.trial}")
        if spec.trials != 1:
            raise PoisonbenchError(f"give either --trials N (trials 0..N-1) or --trial T (only trial T), "
                                   f"not both (got --trials {spec.trials} --trial {spec.trial})")
    check_seed(spec.seed, "--seed")
    check_seed(spec.seed + max(trial_numbers(spec)), "--seed plus the last trial")
    if not 0.0 <= spec.poison_ratio <= 1.0:
        raise PoisonbenchError(f"poison ratio must be in [0, 1], got {spec.poison_ratio}")
    if spec.model is not None:
        MODELS.get(spec.model)
    DEFENSES.get(spec.method)
    check_attacks(spec.attacks)  # also at ρ = 0, where no mix is drawn: a typo should not pass silently
    if spec.poison_sets and spec.poison_ratio <= 0:
        raise PoisonbenchError("--poisons chooses PoisonSets of the mix; it needs --poison-ratio > 0")
    if spec.poison_set is not None:
        from .poisons import check_poison_id

        check_poison_id(spec.poison_set, "--poison-set ")
        if spec.poison_ratio > 0 or spec.attacks is not None or spec.poison_sets:
            raise PoisonbenchError("--poison-set trains on one PoisonSet as it is; it takes no --poison-ratio, "
                                   "--attacks or --poisons")
    check_compile_mode(spec.compile)
    if not spec.checkpoint_every >= 0:
        raise PoisonbenchError(f"--checkpoint-every must be >= 0 seconds, got {spec.checkpoint_every}")
    epochs = spec.recipe_overrides.get("epochs")
    if epochs is not None and epochs <= 0:
        raise PoisonbenchError(f"epochs must be a positive integer, got {epochs}")
    resolve_device(spec.device)


def trial_numbers(spec: DefendSpec) -> list[int]:
    return [spec.trial] if spec.trial is not None else list(range(spec.trials))


def poison_plan(spec: DefendSpec, data: Dataset, trial: int):
    """The trial's poison plan: one PoisonSet as it is (`--poison-set`), the untargeted mix (Table II scenario), or
    None for clean training (ρ = 0)."""
    if spec.poison_set is not None:
        from .scenarios import plan_poison_set

        return plan_poison_set(data, spec.poison_set, spec.results)
    if spec.poison_ratio <= 0:
        return None
    from .scenarios import plan_untargeted

    return plan_untargeted(data, spec.poison_ratio, spec.attacks, seed=spec.seed + trial, results_root=spec.results,
                           poison_sets=spec.poison_sets)


def run_config(spec: DefendSpec, data: Dataset, trial: int, plan=None) -> dict:
    recipe = resolve_recipe(data.family, spec.recipe, **spec.recipe_overrides)
    defense = build_defense(spec.method, data.family, recipe, **spec.method_params)
    check_fits(spec.model or DEFAULT_MODEL[data.family], data)
    given = spec.npz_split is not None and tuple(spec.npz_split) != (NPZ_VAL_FRACTION, NPZ_TEST_FRACTION)
    split = {"npz_split": list(spec.npz_split)} if given and data.name.endswith(".npz") else {}
    return {
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        **split,  # only when not the default (given or not): the run ids of the default split stay as they were
        "model": spec.model or DEFAULT_MODEL[data.family],
        "recipe": recipe.to_dict(),
        "scenario": plan.config["kind"] if plan is not None else "clean",
        "poison": plan.config if plan is not None else None,
        "defense": defense.config(),
        "trial": trial,
        "seed": spec.seed + trial,
    }


def defend(spec: DefendSpec, reporter: Reporter | None = None) -> list[RunOutcome]:
    """Run trials 0..trials-1, or only `spec.trial` (seed = spec.seed + trial); skip those with a record unless
    `force`. A run killed midway resumes from its epoch checkpoint (poisonbench/checkpoints.py); `force` starts
    it over."""
    validate(spec)
    git_state()  # the code of this process, read now: the checkout may move on while the runs train
    device = resolve_device(spec.device)
    store = RunStore(spec.results)
    t0 = time.perf_counter()
    data = load_dataset(spec.dataset, spec.data_dir, spec.download, npz_split=spec.npz_split)
    load_seconds = time.perf_counter() - t0
    trials = trial_numbers(spec)
    plans = [poison_plan(spec, data, t) for t in trials]
    configs = [run_config(spec, data, t, plan) for t, plan in zip(trials, plans, strict=True)]
    try:
        store.runs.mkdir(parents=True, exist_ok=True)  # fail early on an unwritable workspace
    except OSError as e:
        raise PoisonbenchError(f"cannot create the records directory {str(store.runs)!r}: "
                               f"{e.strerror or e}") from None
    if not spec.force:
        for config in configs:  # before any training: a newer poisonbench's record is never overwritten silently
            version = store.foreign_schema(run_id(config))
            if version is not None:
                raise PoisonbenchError(f"the record of run {run_id(config)} has schema version {version!r} (this "
                                       f"poisonbench writes {SCHEMA_VERSION}): another version wrote it; "
                                       "--force replaces it, or use another --results")
    outcomes = []
    tensors = None
    for config, plan in zip(configs, plans, strict=True):
        rid = run_id(config)
        existing = store.get(rid)
        checkpoint = Checkpoint(checkpoint_path(store.root, rid), spec.checkpoint_every)
        if existing is not None and not spec.force:
            checkpoint.clear()  # left behind by a kill between writing the record and clearing it
            outcomes.append(RunOutcome(existing, "skipped"))
            continue
        if spec.force:
            checkpoint.clear()
        if tensors is None:
            tensors = {name: (to_float(s.x, device), s.y.to(device))
                       for name, s in (("train", data.train), ("val", data.val), ("test", data.test))}
        record = execute(spec, config, rid, data, tensors, device, reporter, load_seconds, plan, checkpoint)
        try:
            store.put(record)
        except OSError as e:  # the checkpoint stays (a re-run resumes from it); the finished record is shown
            print(json.dumps(record), file=sys.stderr)
            raise PoisonbenchError(f"could not write the record {store.path(rid)} ({e.strerror or e}); it is "
                                   "printed above; re-running after fixing this resumes from the run's last epoch "
                                   "checkpoint, if one was written") from None
        checkpoint.clear()
        outcomes.append(RunOutcome(record, "ran"))
    return outcomes


def execute(spec: DefendSpec, config: dict, rid: str, data: Dataset, tensors: dict, device: torch.device,
            reporter: Reporter | None, load_seconds: float, plan=None, checkpoint: Checkpoint | None = None) -> dict:
    """Train one run and return its record (not yet written)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    recipe = resolve_recipe(data.family, spec.recipe, **spec.recipe_overrides)
    defense = build_defense(spec.method, data.family, recipe, **spec.method_params)
    train_x, train_y = tensors["train"]
    train_x = train_x.clone()  # poisons and defenses write into it; the clean copy serves the next trial
    poisoned = None
    if plan is not None:
        train_x = plan.apply(train_x, results_root=spec.results, device=device, reporter=reporter,
                                 compile=spec.compile)
        poisoned = plan.mask(len(train_y), device)
        if checkpoint is not None:  # never resumed on re-crafted poisons (`craft --force` after the kill)
            checkpoint.identity["poison_tensors"] = dict(plan.tensor_sha256)
    model = build_model(config["model"], data, seed=config["seed"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if reporter:
        reporter.start(f"{config['defense']['method']} · {data.name} · trial {config['trial']}", recipe.epochs)
    try:
        result = train(model, train_x, train_y, *tensors["val"], recipe, seed=config["seed"], device=device,
                       num_classes=data.num_classes, defense=defense, compile=spec.compile, poisoned=poisoned,
                       eval_sets={"val": tensors["val"], "test": tensors["test"]},
                       on_batch=reporter.batch if reporter else None,
                       on_epoch=reporter.epoch if reporter else None, checkpoint=checkpoint)
    finally:
        if reporter:
            reporter.stop()
    last = result.history[-1]
    test_probs = predict(model, tensors["test"][0])
    cost = {k: round(v, 4) for k, v in result.cost.items()}
    cost["data_load"] = round(load_seconds, 4)
    cost["seconds"] = round(time.perf_counter() - started + result.prior_seconds, 4)
    if result.prior_cpu_seconds is not None:  # unknown for a run resumed from a checkpoint older than the field
        cost["cpu_seconds"] = round(time.process_time() - cpu_started + result.prior_cpu_seconds, 4)
    cost.update(peak_memory(device))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": rid,
        "config": config,
        "metrics": {
            "test_acc": last["test_acc"],
            "val_acc": last["val_acc"],
            "train_acc": last["train_acc"],
            "train_loss": last["train_loss"],
            "test_mean_confidence": test_probs.max(1).values.mean().item(),
            "sample_predictions": sample_predictions(test_probs, tensors["test"][1]),
        },
        "history": result.history,
        "cost": cost,
        "defense": defense.summary(),
        "poison_tensors": dict(plan.tensor_sha256) if plan is not None else None,  # sha256 per attack
        "compiled": result.compiled,
        "resumed_from_epoch": result.resumed_from,
        "env": environment(device),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
