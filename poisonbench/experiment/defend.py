"""`defend`: resolve a spec into one config per trial, skip the done ones, train the rest, write their records.

This is the library behind `poisonbench defend`; the CLI only parses options and shows progress. The pieces:
`checks` (what is asked, checked before anything loads), the scenario (what is poisoned and trained;
poisonbench.experiment.scenarios), `one_run` (one run and its record), `records` (the store).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.device import configure_device, resolve_device, to_float
from ..core.errors import PoisonbenchError
from ..core.io import exclusive, try_exclusive
from ..core.optional import require
from ..core.provenance import git_state
from ..core.seeds import check_apart
from ..data import NPZ_TEST_FRACTION, NPZ_VAL_FRACTION, Dataset, load_dataset
from ..defenses import DEFENSES, build_defense
from ..engine.checkpoints import Checkpoint, checkpoint_path
from ..engine.hooks import Defense
from ..engine.models import check_fits
from ..engine.recipes import Recipe
from ..engine.termination import deferred, stop_if_requested
from ..poisons import craft_directories
from .checks import resolved_recipe, trial_numbers, validate
from .craft_check import CraftIndex, clash_message, clash_with_disk, warn_other_crafts
from .one_run import execute, training_seed
from .records import SCHEMA_VERSION, RunStore, run_id
from .scenarios import PoisonPlan, Scenario, scenario_for
from .spec import DefendSpec, Reporter
from .victims import victim_model

__all__ = ["RunOutcome", "ResolvedTrial", "defend", "outcome_summary", "prepare", "resolve_trial", "run_config",
           "run_id", "targeted_fields"]


@dataclass
class RunOutcome:
    record: dict
    status: str  # "ran" | "skipped"


@dataclass
class ResolvedTrial:
    """One trial of a spec, resolved once: its poison plan, recipe, defense and config (the run's identity,
    `run_id`). `defend` keys the record by it and trains with the very same recipe and defense."""

    trial: int
    plan: PoisonPlan | None
    recipe: Recipe
    defense: Defense
    config: dict

    @property
    def run_id(self) -> str:
        return run_id(self.config)


def outcome_summary(outcome: RunOutcome, store: RunStore) -> dict:
    """One run's outcome as `defend --json` (and a sweep's step) prints it: the line a script reads."""
    r = outcome.record
    return {
        "run_id": r["run_id"], "status": outcome.status, "dataset": r["config"]["dataset"],
        "method": r["config"]["defense"]["method"], "trial": r["config"]["trial"],
        "seed": r["config"]["seed"], "test_acc": r["metrics"]["test_acc"],
        "val_acc": r["metrics"]["val_acc"], "seconds": r["cost"]["seconds"],
        "resumed_from_epoch": r.get("resumed_from_epoch", 0),
        "path": str(store.path(r["run_id"])),
        **targeted_fields(r),
    }


def targeted_fields(record: dict) -> dict:
    """A targeted run's target, intended class, final prediction and success; a backdoor run's target class and
    attack success rate ({} for other runs)."""
    poison, metrics = record["config"].get("poison") or {}, record["metrics"]
    if poison.get("kind") == "backdoor":  # its target class, ASR and counts (docs/metrics.md)
        return {"attack": poison["attack"], "target_class": poison["target_class"],
                **{k: metrics.get(k) for k in ("asr", "asr_hits", "asr_n", "clean_target_rate")}}
    if poison.get("kind") != "targeted":
        return {}
    return {"attack": poison["attack"], "target_index": poison["target_index"],
            "target_class": poison["target_class"], "intended_class": poison["intended_class"],
            "target_prediction": metrics.get("target_prediction"), "attack_success": metrics.get("attack_success")}


def run_config(spec: DefendSpec, data: Dataset, trial: int, plan: PoisonPlan | None = None,
               scenario: Scenario | None = None) -> dict:
    """The run's identity: `run_id` is the hash of this dict (docs/engine.md, "Run records and resume")."""
    return resolve_trial(spec, data, trial, plan, scenario).config


def resolve_trial(spec: DefendSpec, data: Dataset, trial: int, plan: PoisonPlan | None = None,
                  scenario: Scenario | None = None) -> ResolvedTrial:
    """Resolve `trial` of `spec`: the recipe, the defense it faces the scenario's threat with, and the config."""
    recipe = resolved_recipe(spec, data.family)
    scenario = scenario or scenario_for(spec)
    defense = build_defense(spec.method, data.family, recipe, scenario.threat(data, plan), **spec.method_params)
    model = victim_model(spec.model, spec.method, data, transfer=scenario.name == "transfer")
    check_fits(model, data)
    given = spec.npz_split is not None and tuple(spec.npz_split) != (NPZ_VAL_FRACTION, NPZ_TEST_FRACTION)
    split = {"npz_split": list(spec.npz_split)} if given and data.name.endswith(".npz") else {}
    config = {
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint,
        **split,  # only when not the default (given or not): the run ids of the default split stay as they were
        "model": model,
        "recipe": recipe.to_dict(),
        "scenario": scenario.name,
        "poison": plan.config if plan is not None else None,
        "defense": defense.config(),
        "trial": trial,
        "seed": spec.seed + trial,
    }
    config.update(scenario.victim_config(spec, plan))  # transfer: threat, head_bn (nothing for other scenarios)
    if spec.precision != "fp32":  # only then: the run ids of every fp32 run stay as they were
        config["precision"] = spec.precision
    if spec.same_init:  # only then: the run ids of every other run stay as they were
        config["same_init"] = same_init(spec, data, plan, scenario, model)
    else:
        attacker = scenario.attacker_model(spec, data, plan)
        if attacker is not None:
            check_apart(config["seed"], attacker.seed, f"the {attacker.label} the poisons are crafted against")
    return ResolvedTrial(trial, plan, recipe, defense, config)


def same_init(spec: DefendSpec, data: Dataset, plan: PoisonPlan | None, scenario: Scenario, model: str) -> dict:
    """`config.same_init` of a `--same-init` run: the attacker model whose initialisation and seed the victim takes
    (forest's `--retrain_from_init`); it must be the victim's architecture."""
    source = scenario.init_model(spec, data, plan)
    if source is None:
        raise PoisonbenchError(f"--same-init: this {scenario.name} run has no surrogate to start the victim from")
    if source.model != model:
        raise PoisonbenchError(f"--same-init: the victim's model ({model}) is not the {source.label}'s "
                               f"({source.model}); it cannot start from its initialisation")
    return {"model": source.label, "seed": source.seed}


def defend(spec: DefendSpec, reporter: Reporter | None = None) -> list[RunOutcome]:
    """Run trials 0..trials-1, or only `spec.trial` (seed = spec.seed + trial); skip those with a record unless
    `force`. A run killed midway resumes from its epoch checkpoint (poisonbench/engine/checkpoints.py); `force` starts
    it over."""
    validate(spec)
    for package in DEFENSES.get(spec.method).requires:  # an optional package the method needs: one line, now
        require(package)
    git_state()  # the code of this process, read now: the checkout may move on while the runs train
    device = configure_device(resolve_device(spec.device), spec.deterministic)  # crafts on the way follow it too
    store = RunStore(spec.results)
    t0 = time.perf_counter()
    data = load_dataset(spec.dataset, spec.data_dir, spec.download, npz_split=spec.npz_split)
    load_seconds = time.perf_counter() - t0
    scenario = scenario_for(spec)
    trials = trial_numbers(spec)
    resolved = [resolve_trial(spec, data, t, scenario.plan(spec, data, t), scenario) for t in trials]
    if any(r.plan is not None for r in resolved):  # a file where a craft's directories belong fails before runs/ is
        craft_directories(spec.results)  # made (crafting itself checks that they are writable)
    store.ensure_writable()  # every input checked, nothing trained yet: a read-only workspace fails now
    if not spec.force:
        for r in resolved:  # before any training: a newer poisonbench's record is never overwritten silently
            version = store.foreign_schema(r.run_id)
            if version is not None:
                raise PoisonbenchError(f"the record of run {r.run_id} has schema version {version!r} (this "
                                       f"poisonbench writes {SCHEMA_VERSION}): another version wrote it; "
                                       "--force replaces it, or use another --results")
    outcomes: dict[str, RunOutcome] = {}
    tensors = crafts = None

    def check_crafts(plan: PoisonPlan, rid: str) -> None:
        nonlocal crafts
        if crafts is None:  # read once, when the first poisoned run is about to train
            crafts = CraftIndex(store)
        warn_other_crafts(crafts, plan, rid, store.root)

    def run_claimed(trial: ResolvedTrial) -> RunOutcome:
        nonlocal tensors
        rid, config = trial.run_id, trial.config
        existing = store.get(rid)  # read under the claim: a process that held it may have just finished the run
        checkpoint = Checkpoint(checkpoint_path(store.root, rid), spec.checkpoint_every)
        if existing is not None and not spec.force:
            clash = clash_with_disk(existing, store.root)
            if clash:  # the record is of another craft than the poisons a run would train on: never "done"
                error = PoisonbenchError(clash_message(rid, clash, store.root / "poisons"))
                try:
                    store.put_failure(rid, config, error)  # so `sweep status` names it
                except OSError:
                    pass
                raise error
            checkpoint.clear()  # left behind by a kill between writing the record and clearing it
            return RunOutcome(existing, "skipped")
        if spec.force:
            checkpoint.clear()
        if tensors is None:
            tensors = {name: (to_float(s.x, device), s.y.to(device))
                       for name, s in (("train", data.train), ("val", data.val), ("test", data.test))}
        try:
            record = execute(spec, scenario, trial, data, tensors, device, reporter, load_seconds, checkpoint,
                             on_poisoned=lambda p: check_crafts(p, rid))
        except Exception as error:  # a failure record beside the results (never a result); the error goes on
            try:
                store.put_failure(rid, config, error)
            except OSError:
                pass  # the error itself is what the caller must see
            raise
        with deferred():  # a SIGTERM here waits for the next run's check: the record and no stale checkpoint
            try:
                store.put(record, replace=spec.force)
            except OSError as e:  # the checkpoint stays (a re-run resumes from it); the finished record is shown
                print(json.dumps(record), file=sys.stderr)
                raise PoisonbenchError(f"could not write the record {store.path(rid)} ({e.strerror or e}); it is "
                                       "printed above; re-running after fixing this resumes from the run's last "
                                       "epoch checkpoint, if one was written") from None
            checkpoint.clear()
            store.clear_failure(rid)  # an earlier attempt's
        return RunOutcome(record, "ran")

    # A run is claimed (an flock that dies with its holder) before it trains, so two processes never train the
    # same run: a run another process holds is put off until this process's other runs are done, then waited for
    # (and skipped if its record appeared; run, resuming from its checkpoint, if its holder died first).
    held_elsewhere = []
    for trial in resolved:
        stop_if_requested(f"before trial {trial.trial} (run {trial.run_id})")  # SIGTERM in a last epoch: it finished
        with try_exclusive(run_lock(store, trial.run_id)) as claimed:
            if claimed:
                outcomes[trial.run_id] = run_claimed(trial)
            else:
                held_elsewhere.append(trial)
    for trial in held_elsewhere:
        stop_if_requested(f"before trial {trial.trial} (run {trial.run_id})")
        with exclusive(run_lock(store, trial.run_id)):
            outcomes[trial.run_id] = run_claimed(trial)
    return [outcomes[trial.run_id] for trial in resolved]


def run_lock(store: RunStore, rid: str) -> Path:
    """The claim of run `rid` in the workspace (beside the PoisonSets' and pre-trained models' locks; `records
    unpack` takes it too)."""
    return store.lock_path(rid)


def prepare(spec: DefendSpec, reporter: Reporter | None = None) -> list[dict]:
    """`defend --prepare-only`: craft the PoisonSets that the spec's trials need and are missing, and train the
    pre-trained model a scenario shares (the transfer extractor), then stop; nothing is trained, no record written.
    A sweep runs this once per PoisonSet before the runs that share it (poisonbench.sweeps). Returns one entry per
    PoisonSet: {poison_id, attack, status: crafted | on disk}. A craft that raises leaves a failure record under the
    key `craft-<poison id>`."""
    from .scenarios import ModelRequest

    validate(spec)
    device = configure_device(resolve_device(spec.device), spec.deterministic)
    store = RunStore(spec.results)
    data = load_dataset(spec.dataset, spec.data_dir, spec.download, npz_split=spec.npz_split)
    scenario = scenario_for(spec)
    plans = [scenario.plan(spec, data, t) for t in trial_numbers(spec)]
    if any(plan is not None for plan in plans):
        craft_directories(spec.results)
    store.ensure_writable()
    out: dict[str, dict] = {}
    train_x = None
    for trial, plan in zip(trial_numbers(spec), plans, strict=True):
        if plan is None:
            continue
        if train_x is None:
            train_x = to_float(data.train.x, device)
        try:
            plan.apply(train_x.clone(), results_root=spec.results, device=device, reporter=reporter,
                       compile=spec.compile, accel=spec.accel)
        except Exception as error:
            for pid in plan.crafts:
                try:
                    store.put_failure(craft_key(pid), plan.config, error)
                except OSError:
                    pass
            raise
        for pid, attack in plan.crafts.items():
            store.clear_failure(craft_key(pid))
            status = "crafted" if plan.crafted.get(pid) else "on disk"
            if out.get(pid, {}).get("status") != "crafted":
                out[pid] = {"poison_id": pid, "attack": attack, "status": status}
        config = run_config(spec, data, trial, plan, scenario)
        scenario.build_model(ModelRequest(config["model"], data, training_seed(config), device, spec.results,
                                          reporter, spec.compile, spec.accel))  # loads or trains what it shares
    return list(out.values())


def craft_key(poison_id: str) -> str:
    """The failure-record key of crafting PoisonSet `poison_id` (beside the runs' failure records)."""
    return f"craft-{poison_id}"
