"""`defend`'s own loop, called directly on a tiny dataset (one epoch): what it refuses before training, what it hands
each run, what it writes when a run or its record fails, and how it claims runs. Issue 64: the fast mutation
selection of experiment/defend.py left these to the slow CLI, sweep and crafting tests (docs/testing.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import poisonbench.experiment.defend as defend_module
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.checkpoints import checkpoint_path
from poisonbench.experiment.defend import defend, resolve_trial, run_lock
from poisonbench.experiment.records import SCHEMA_VERSION, RunStore
from poisonbench.experiment.scenarios import scenario_for
from poisonbench.experiment.spec import DefendSpec


@pytest.fixture
def spec(tiny_npz, tmp_path):
    return DefendSpec(dataset=str(tiny_npz), method="none", recipe="quick", recipe_overrides={"epochs": 1},
                      trials=2, seed=3, checkpoint_every=7, results=str(tmp_path / "res"))


def run_ids(spec: DefendSpec) -> list[str]:
    data = load_dataset(spec.dataset)
    scenario = scenario_for(spec)
    return [resolve_trial(spec, data, t, scenario.plan(spec, data, t), scenario).run_id for t in range(spec.trials)]


class Spy:
    """Stands in for a function of defend.py: keeps each call's arguments, then calls the original."""

    def __init__(self, monkeypatch, name: str, result=None):
        self.calls, self.original, self.result = [], getattr(defend_module, name), result
        monkeypatch.setattr(defend_module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if self.result else self.original(*args, **kwargs)


def test_a_record_of_another_schema_is_refused_before_any_run_and_force_replaces_it(spec, one_thread):
    first, second = run_ids(spec)
    store = RunStore(spec.results)
    store.runs.mkdir(parents=True)
    store.path(second).write_text(json.dumps({"run_id": second, "schema_version": 99}))
    with pytest.raises(PoisonbenchError) as refused:
        defend(spec)
    assert str(refused.value) == (f"the record of run {second} has schema version 99 (this poisonbench writes "
                                  f"{SCHEMA_VERSION}): another version wrote it; --force replaces it, or use another "
                                  "--results")
    assert store.get(first) is None  # refused before trial 0 trained
    spec.force = True
    outcomes = defend(spec)
    assert [o.status for o in outcomes] == ["ran", "ran"]
    assert json.loads(store.path(second).read_text())["schema_version"] == SCHEMA_VERSION


def test_force_runs_again_and_replaces_the_record(spec, monkeypatch, one_thread):
    """`--force` trains the run again and hands the store its leave to replace the record (which the store needs
    where the stored record trained on another craft of the same PoisonSets)."""
    spec.trials = 1
    put, replaced = RunStore.put, []

    def spy(self, record, replace=False):
        replaced.append(replace)
        return put(self, record, replace=replace)

    monkeypatch.setattr(RunStore, "put", spy)
    (first,) = defend(spec)
    assert defend(spec)[0].status == "skipped"
    spec.force = True
    (again,) = defend(spec)
    assert again.status == "ran" and again.record["finished_at"] >= first.record["finished_at"]
    assert RunStore(spec.results).get(first.record["run_id"]) == again.record
    assert replaced == [False, True]


def test_only_a_poisoned_run_checks_the_crafts_directories_before_anything_is_made(spec, tmp_path, one_thread):
    """A file where `poisons/` belongs: a clean run does not need the directory and trains; a poisoned one is
    refused in one line before `runs/` is made (crafting would fail there after the first run)."""
    from tests.conftest import write_npz

    root = Path(spec.results)
    root.mkdir()
    (root / "poisons").write_text("not a directory")
    spec.trials = 1
    assert [o.status for o in defend(spec)] == ["ran"]
    poisoned = DefendSpec(dataset=str(write_npz(tmp_path, n=200, size=28)), recipe="quick",
                          recipe_overrides={"epochs": 1}, poison_ratio=0.2, attacks=["ops"],
                          results=str(tmp_path / "poisoned"))
    Path(poisoned.results).mkdir()
    (Path(poisoned.results) / "poisons").write_text("not a directory")
    with pytest.raises(PoisonbenchError, match="poisons"):
        defend(poisoned)
    assert not (Path(poisoned.results) / "runs").exists()


def test_each_run_gets_its_own_checkpoint_at_the_specs_interval_and_the_reporter(spec, monkeypatch, one_thread):
    from poisonbench.engine import checkpoints

    made = []

    class Recorded(checkpoints.Checkpoint):
        def __init__(self, path, every):
            made.append((path, every))
            super().__init__(path, every)

    monkeypatch.setattr(defend_module, "Checkpoint", Recorded)
    execute = Spy(monkeypatch, "execute")
    reporter = object.__new__(type("Quiet", (), {"start": lambda *a: None, "batch": lambda *a: None,
                                                 "epoch": lambda *a: None, "stop": lambda *a: None}))
    defend(spec, reporter)
    root = Path(spec.results)
    assert made == [(checkpoint_path(root, rid), 7) for rid in run_ids(spec)]
    assert [call[0][6] for call in execute.calls] == [reporter, reporter]
    assert [call[0][8].path for call in execute.calls] == [checkpoint_path(root, rid) for rid in run_ids(spec)]


def test_a_poisoned_run_checks_its_crafts_against_the_workspace_with_its_own_run_id(spec, monkeypatch, one_thread):
    """`execute` calls `on_poisoned(plan)` once the run's poisons are in place: defend then compares the plan's
    crafts with those the workspace's records trained on, naming this run and this workspace."""
    warned = Spy(monkeypatch, "warn_other_crafts", result=lambda *args: None)

    def execute(spec_, scenario, trial, *args, on_poisoned):
        on_poisoned(f"plan of trial {trial.trial}")
        raise RuntimeError("stop here")

    monkeypatch.setattr(defend_module, "execute", execute)
    with pytest.raises(RuntimeError, match="stop here"):
        defend(spec)
    ((args, _),) = warned.calls
    assert args[1:] == ("plan of trial 0", run_ids(spec)[0], Path(spec.results))
    assert type(args[0]).__name__ == "CraftIndex"


def test_a_run_that_raises_leaves_a_failure_record_naming_it_and_a_later_run_clears_it(spec, monkeypatch,
                                                                                       one_thread):
    spec.trials = 1
    (rid,) = run_ids(spec)

    def failing(*args, **kwargs):
        raise RuntimeError("planted: training failed")

    real = defend_module.execute
    monkeypatch.setattr(defend_module, "execute", failing)
    with pytest.raises(RuntimeError, match="planted"):
        defend(spec)
    store = RunStore(spec.results)
    failure = store.failure(rid)
    assert failure is not None and "planted: training failed" in json.dumps(failure)
    assert failure["config"]["trial"] == 0 and failure["config"]["seed"] == 3 and store.get(rid) is None
    monkeypatch.setattr(defend_module, "execute", real)
    defend(spec)
    assert store.failure(rid) is None and store.get(rid) is not None


def test_a_record_that_cannot_be_written_is_printed_and_named(spec, monkeypatch, capsys, one_thread):
    spec.trials = 1
    (rid,) = run_ids(spec)

    def full_disk(self, record, replace=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunStore, "put", full_disk)
    with pytest.raises(PoisonbenchError) as refused:
        defend(spec)
    store = RunStore(spec.results)
    assert str(refused.value) == (f"could not write the record {store.path(rid)} (No space left on device); it is "
                                  "printed above; re-running after fixing this resumes from the run's last epoch "
                                  "checkpoint, if one was written")
    printed = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert printed["run_id"] == rid and printed["config"]["trial"] == 0 and "test_acc" in printed["metrics"]


def test_a_record_of_another_craft_is_refused_and_left_as_a_failure(spec, monkeypatch, one_thread):
    """A stored record whose PoisonSets are now other tensors on disk is never "done": refused with the message
    naming the run, both crafts and the workspace's poisons, and a failure record so `sweep status` names it."""
    spec.trials = 1
    (rid,) = run_ids(spec)
    defend(spec)
    clash = {"0123456789abcdef": ("aaaa", "bbbb")}
    checked = Spy(monkeypatch, "clash_with_disk", result=lambda record, root: clash if record["run_id"] == rid else {})
    with pytest.raises(PoisonbenchError) as refused:
        defend(spec)
    root = Path(spec.results)
    assert str(refused.value) == defend_module.clash_message(rid, clash, root / "poisons")
    assert [args[1] for args, _ in checked.calls] == [root]  # the record against this workspace's PoisonSets
    failure = RunStore(spec.results).failure(rid)
    assert failure is not None and failure["config"]["trial"] == 0
    assert str(root / "poisons") in json.dumps(failure)


def test_each_trial_checks_for_a_stop_request_naming_it(spec, monkeypatch, one_thread):
    stops = Spy(monkeypatch, "stop_if_requested", result=lambda where: None)
    defend(spec)
    first, second = run_ids(spec)
    assert [call[0] for call in stops.calls] == [(f"before trial 0 (run {first})",),
                                                 (f"before trial 1 (run {second})",)]


def test_a_run_held_by_another_process_is_waited_for_after_the_others(spec, monkeypatch, one_thread):
    """Trial 0's claim is taken elsewhere: trial 1 trains first, then defend waits on trial 0's own lock file."""
    from contextlib import contextmanager

    first, second = run_ids(spec)
    store_root = Path(spec.results)
    order = []

    @contextmanager
    def try_exclusive(path):
        order.append(("try", Path(path).name))
        yield Path(path).name != f"run-{first}.lock"

    @contextmanager
    def exclusive(path):
        order.append(("wait", Path(path)))
        yield

    monkeypatch.setattr(defend_module, "try_exclusive", try_exclusive)
    monkeypatch.setattr(defend_module, "exclusive", exclusive)
    stops = Spy(monkeypatch, "stop_if_requested", result=lambda where: None)
    outcomes = defend(spec)
    assert order == [("try", f"run-{first}.lock"), ("try", f"run-{second}.lock"),
                     ("wait", run_lock(RunStore(store_root), first))]
    assert run_lock(RunStore(store_root), first) == store_root / "locks" / f"run-{first}.lock"
    assert [o.record["run_id"] for o in outcomes] == [first, second]  # in trial order all the same
    assert stops.calls[-1][0] == (f"before trial 0 (run {first})",)


def test_the_defense_is_built_for_the_datasets_family_the_scenarios_threat_and_the_methods_parameters(
        tmp_path, monkeypatch):
    """FRIENDS against FC in the transfer scenario, gray-box: the defense is built for the family of the data (its
    recipe's defaults), against the threat the scenario names for this trial's plan, with the parameters given."""
    from tests.conftest import write_npz

    path = write_npz(tmp_path, n=200, size=28)
    spec = DefendSpec(dataset=str(path), method="friends", method_params={"friendly_steps": 3}, recipe="quick",
                      attack="fc", threat="gray", results=str(tmp_path / "res"))
    data = load_dataset(spec.dataset)
    scenario = scenario_for(spec)
    plan = scenario.plan(spec, data, 0)
    built = Spy(monkeypatch, "build_defense")
    resolved = resolve_trial(spec, data, 0, plan, scenario)
    (((method, family, recipe, threat), params),) = built.calls
    assert (method, family, params) == ("friends", data.family, {"friendly_steps": 3})
    assert threat == scenario.threat(data, plan) and threat is not None and threat != scenario.threat(data, None)
    assert resolved.config["defense"]["friendly_steps"] == 3


def test_a_trials_config_names_the_datasets_fingerprint_and_a_non_default_precision_only(spec):
    """The run id hashes the config: it names the data's fingerprint, and `precision` only when it is not fp32 (so
    every fp32 run id stays as it was before the option)."""
    data = load_dataset(spec.dataset)
    scenario = scenario_for(spec)
    fp32 = resolve_trial(spec, data, 0, None, scenario)
    assert fp32.config["dataset_fingerprint"] == data.fingerprint and "precision" not in fp32.config
    spec.precision = "bf16"
    bf16 = resolve_trial(spec, data, 0, None, scenario)
    assert bf16.config["precision"] == "bf16" and bf16.run_id != fp32.run_id
    assert {k: v for k, v in bf16.config.items() if k != "precision"} == fp32.config


def test_resolve_trial_checks_the_model_fits_and_asks_the_scenario_with_the_trials_plan(spec, monkeypatch):
    """The victim's model is checked against the data, and the scenario is asked for the victim's config and the
    attacker's model with this spec and this trial's plan; an attacker model of the victim's seed is refused,
    naming it."""
    from types import SimpleNamespace

    data = load_dataset(spec.dataset)
    scenario = scenario_for(spec)
    fits = Spy(monkeypatch, "check_fits")
    asked = []
    plan = SimpleNamespace(config={"kind": "made-up plan"})

    def victim_config(spec_, plan_):
        asked.append(("victim", spec_, plan_))
        return {}

    def attacker_model(spec_, data_, plan_):
        asked.append(("attacker", spec_, data_, plan_))
        return SimpleNamespace(seed=spec.seed + 1, label="surrogate ResNet")

    monkeypatch.setattr(scenario, "victim_config", victim_config)
    monkeypatch.setattr(scenario, "attacker_model", attacker_model)
    monkeypatch.setattr(scenario, "threat", lambda data_, plan_: None)
    with pytest.raises(PoisonbenchError, match="surrogate ResNet the poisons are crafted against"):
        resolve_trial(spec, data, 1, plan, scenario)  # trial 1: the victim's seed is spec.seed + 1
    assert [args for args, _ in fits.calls] == [("convnet", data)]
    assert asked == [("victim", spec, plan), ("attacker", spec, data, plan)]
