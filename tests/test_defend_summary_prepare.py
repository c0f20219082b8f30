"""`outcome_summary` (the line `defend --json` and a sweep's step print) and `prepare` (`defend --prepare-only`, a
sweep's prepare step), called directly (issue 64: before these tests only the CLI and sweep tests reached them, so
the mutation selection of experiment/defend.py left them untested)."""

from __future__ import annotations

import pytest

import poisonbench.experiment.defend as defend_module
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.defend import RunOutcome, craft_key, defend, outcome_summary, prepare, run_config
from poisonbench.experiment.one_run import training_seed
from poisonbench.experiment.records import RunStore
from poisonbench.experiment.scenarios import scenario_for
from poisonbench.experiment.spec import DefendSpec

from .conftest import targeted_spec, write_npz


class Events:
    """A Reporter that keeps what it was told, in order."""

    def __init__(self):
        self.seen = []

    def start(self, description, epochs):
        self.seen.append(("start", description, epochs))

    def batch(self, epoch, step, steps):
        self.seen.append(("batch", epoch, step, steps))

    def epoch(self, epoch, row):
        self.seen.append(("epoch", epoch))

    def stop(self):
        self.seen.append(("stop",))


def record_of(**extra) -> dict:
    """The fields of a record `outcome_summary` reads, with values no default could produce."""
    return {"run_id": "0123456789abcdef",
            "config": {"dataset": "tiny.npz", "defense": {"method": "friends"}, "trial": 3, "seed": 10,
                       "poison": extra.pop("poison", None)},
            "metrics": {"test_acc": 0.625, "val_acc": 0.375, **extra.pop("metrics", {})},
            "cost": {"seconds": 12.5}, **extra}


def test_the_summary_of_a_run_is_its_record_and_its_path(tmp_path):
    store = RunStore(tmp_path / "res")
    summary = outcome_summary(RunOutcome(record_of(), "ran"), store)
    assert summary == {"run_id": "0123456789abcdef", "status": "ran", "dataset": "tiny.npz", "method": "friends",
                       "trial": 3, "seed": 10, "test_acc": 0.625, "val_acc": 0.375, "seconds": 12.5,
                       "resumed_from_epoch": 0, "path": str(tmp_path / "res" / "runs" / "0123456789abcdef.json")}
    assert list(summary) == ["run_id", "status", "dataset", "method", "trial", "seed", "test_acc", "val_acc",
                             "seconds", "resumed_from_epoch", "path"]


def test_the_summary_of_a_resumed_targeted_run_names_its_epoch_and_target(tmp_path):
    poison = {"kind": "targeted", "attack": "gm", "target_index": 7, "target_class": 2, "intended_class": 1}
    record = record_of(resumed_from_epoch=3, poison=poison,
                       metrics={"target_prediction": 1, "attack_success": True})
    summary = outcome_summary(RunOutcome(record, "skipped"), RunStore(tmp_path))
    assert summary == {"run_id": "0123456789abcdef", "status": "skipped", "dataset": "tiny.npz",
                       "method": "friends", "trial": 3, "seed": 10, "test_acc": 0.625, "val_acc": 0.375,
                       "seconds": 12.5, "resumed_from_epoch": 3,
                       "path": str(tmp_path / "runs" / "0123456789abcdef.json"),
                       "attack": "gm", "target_index": 7, "target_class": 2, "intended_class": 1,
                       "target_prediction": 1, "attack_success": True}


def test_the_summary_of_real_runs_ran_then_skipped(tiny_npz, tmp_path, one_thread):
    spec = DefendSpec(dataset=str(tiny_npz), method="none", recipe="quick", recipe_overrides={"epochs": 1},
                      seed=4, results=str(tmp_path / "res"))
    store = RunStore(spec.results)
    (first,) = defend(spec)
    ran = outcome_summary(first, store)
    record = store.get(ran["run_id"])
    assert ran == {"run_id": record["run_id"], "status": "ran", "dataset": "tiny.npz", "method": "none",
                   "trial": 0, "seed": 4, "test_acc": record["metrics"]["test_acc"],
                   "val_acc": record["metrics"]["val_acc"], "seconds": record["cost"]["seconds"],
                   "resumed_from_epoch": 0, "path": str(store.path(record["run_id"]))}
    assert ran["seconds"] > 0 and 0 <= ran["test_acc"] <= 1
    (second,) = defend(spec)
    assert outcome_summary(second, store) == {**ran, "status": "skipped"}


# --- prepare ---------------------------------------------------------------------------------------------------


@pytest.fixture
def mix(tmp_path):
    """A 28×28 dataset (LSP's 7-pixel patches divide it) and a two-trial spec of the untargeted mix of OPS and
    LSP (no surrogate: crafted in a second), in its own workspace."""
    path = write_npz(tmp_path, n=200, size=28)
    spec = DefendSpec(dataset=str(path), recipe="quick", recipe_overrides={"epochs": 1}, poison_ratio=0.2,
                      attacks=["ops", "lsp"], trials=2, results=str(tmp_path / "res"))
    return spec


def wanted(spec: DefendSpec) -> dict[str, str]:
    """{poison id: attack} of every PoisonSet the spec's trials use, from the scenario's own plans."""
    data = load_dataset(spec.dataset, npz_split=spec.npz_split)
    scenario = scenario_for(spec)
    out = {}
    for t in range(spec.trials):
        out.update(scenario.plan(spec, data, t).crafts)
    return out


def test_prepare_crafts_each_missing_poison_set_once_and_trains_no_run(mix, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # a store or craft that ignored --results would land in ./results
    ids = wanted(mix)
    assert sorted(ids.values()) == ["lsp", "ops"]
    reporter = Events()
    prepared = prepare(mix, reporter)
    # one entry per PoisonSet, in the mix's order, though both trials use both: crafted by the first trial, found
    # on disk by the second, reported as crafted
    assert prepared == [{"poison_id": pid, "attack": attack, "status": "crafted"}
                        for pid, attack in sorted(ids.items(), key=lambda kv: ["ops", "lsp"].index(kv[1]))]
    root = tmp_path / "res"
    assert sorted(p.name for p in (root / "poisons").iterdir()) == sorted(ids)
    assert not list((root / "runs").glob("*")) and not (root / "failures").exists()
    assert not (tmp_path / "results").exists()
    # the crafting progress, one bar per craft
    starts = [e for e in reporter.seen if e[0] == "start"]
    assert starts == [("start", "craft ops · tiny.npz", 1), ("start", "craft lsp · tiny.npz", 1)]
    assert reporter.seen.count(("stop",)) == 2 and any(e[0] == "batch" for e in reporter.seen)
    # idempotent: a second call crafts nothing
    again = Events()
    assert prepare(mix, again) == [{**entry, "status": "on disk"} for entry in prepared]
    assert not any(e[0] == "start" for e in again.seen)
    # exactly the missing one is crafted again
    lsp = next(pid for pid, attack in ids.items() if attack == "lsp")
    import shutil

    shutil.rmtree(root / "poisons" / lsp)
    assert prepare(mix) == [{**prepared[0], "status": "on disk"}, {**prepared[1], "status": "crafted"}]
    assert not list((root / "runs").glob("*"))


def test_prepare_hands_the_specs_settings_to_each_craft_and_model(mix, tmp_path, monkeypatch, one_thread):
    """Each trial's plan is applied with the spec's workspace, device, reporter, compile and accelerator modes, on
    a copy of the float train split, and the model each trial shares is built as its run will be (its model, the
    run's training seed, the same settings); a non-default `.npz` split is the one loaded."""
    import torch

    from poisonbench.experiment.scenarios.untargeted import Untargeted, UntargetedPlan

    mix.npz_split, mix.compile, mix.accel, mix.seed = (0.05, 0.1), "off", "off", 7
    applied, built = [], []
    apply, build = UntargetedPlan.apply, Untargeted.build_model

    def spy_apply(self, train_x, **kwargs):
        applied.append((self.config, train_x.clone(), kwargs))
        return apply(self, train_x, **kwargs)

    def spy_build(self, request):
        built.append(request)
        return build(self, request)

    monkeypatch.setattr(UntargetedPlan, "apply", spy_apply)
    monkeypatch.setattr(Untargeted, "build_model", spy_build)
    reporter = Events()
    prepared = prepare(mix, reporter)
    data = load_dataset(mix.dataset, npz_split=mix.npz_split)
    assert len(data.val) == 10 and len(data.test) == 20  # the split asked for, not the default
    assert {e["poison_id"] for e in prepared} == set(wanted(mix))
    scenario = scenario_for(mix)
    plans = [scenario.plan(mix, data, t) for t in range(2)]
    assert [a[0] for a in applied] == [p.config for p in plans]
    for _, train_x, kwargs in applied:
        assert torch.equal(train_x, data.train.x.float() / 255)  # the clean split each time: applied on a copy
        assert kwargs == {"results_root": mix.results, "device": torch.device("cpu"), "reporter": reporter,
                          "compile": "off", "accel": "off"}
    assert len(built) == 2
    for t, (request, plan) in enumerate(zip(built, plans, strict=True)):
        config = run_config(mix, data, t, plan, scenario)
        assert config["trial"] == t and config["poison"] == plan.config
        assert (request.model, request.dataset.fingerprint, request.seed, request.device, request.results_root,
                request.reporter, request.compile, request.accel) == (
            "convnet", data.fingerprint, training_seed(config), torch.device("cpu"), mix.results, reporter,
            "off", "off")
    assert built[0].seed != built[1].seed


def test_a_craft_that_raises_leaves_a_failure_record_per_poison_set_and_a_later_craft_clears_it(
        mix, tmp_path, monkeypatch, one_thread):
    from poisonbench import poisons

    ids = wanted(mix)
    real = poisons.craft

    def failing(spec, *args, **kwargs):
        if spec.attack == "lsp":
            raise RuntimeError("planted: the craft failed")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(poisons, "craft", failing)
    with pytest.raises(RuntimeError, match="planted"):
        prepare(mix)
    store = RunStore(mix.results)
    data = load_dataset(mix.dataset)
    config = scenario_for(mix).plan(mix, data, 0).config
    for pid in ids:  # every PoisonSet of the failing trial's plan, under `craft-<poison id>`
        assert craft_key(pid) == f"craft-{pid}"
        failure = store.failure(f"craft-{pid}")
        assert failure is not None, pid
        assert failure["run_id"] == f"craft-{pid}" and failure["config"] == config
        assert failure["error"] == "RuntimeError: planted: the craft failed"
    assert not list(store.runs.glob("*"))
    monkeypatch.setattr(poisons, "craft", real)
    statuses = {e["poison_id"]: e["status"] for e in prepare(mix)}
    assert statuses == {pid: "on disk" if attack == "ops" else "crafted" for pid, attack in ids.items()}
    assert not (tmp_path / "res" / "failures").exists() or not list((tmp_path / "res" / "failures").iterdir())


def test_a_failure_record_that_cannot_be_written_leaves_the_crafts_error(mix, tmp_path, monkeypatch, one_thread):
    from poisonbench import poisons

    def failing(*args, **kwargs):
        raise RuntimeError("planted")

    def unwritable(self, *args):
        raise OSError("read-only")

    monkeypatch.setattr(poisons, "craft", failing)
    monkeypatch.setattr(RunStore, "put_failure", unwritable)
    with pytest.raises(RuntimeError, match="planted"):
        prepare(mix)


def test_prepare_of_a_run_without_poisons_prepares_nothing(tmp_path, monkeypatch, one_thread):
    """A clean spec has no PoisonSet and no shared model: nothing crafted, nothing built, and the crafts'
    directories are not even checked (a file where `poisons/` belongs is no error)."""
    from poisonbench.experiment.scenarios.untargeted import Clean

    path = write_npz(tmp_path, n=200)
    root = tmp_path / "res"
    root.mkdir()
    (root / "poisons").write_text("not a directory")
    monkeypatch.setattr(Clean, "build_model", lambda self, request: pytest.fail("a model was built"))
    spec = DefendSpec(dataset=str(path), recipe="quick", trials=2, results=str(root))
    assert prepare(spec) == []
    assert (root / "runs").is_dir() and not list((root / "runs").iterdir())
    # a poisoned spec checks them before crafting
    poisoned = DefendSpec(dataset=str(path), recipe="quick", poison_ratio=0.2, attacks=["ops"], results=str(root))
    with pytest.raises(PoisonbenchError, match="poisons"):
        prepare(poisoned)
    assert not (root / "failures").exists()  # refused before any craft (a craft that raises leaves a record)


def test_prepare_refuses_a_bad_spec_before_loading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(defend_module, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    spec = DefendSpec(dataset=str(tmp_path / "absent.npz"), poison_ratio=-1.0, results=str(tmp_path / "res"))
    with pytest.raises(PoisonbenchError):
        prepare(spec)
    assert not (tmp_path / "res").exists()


def test_prepare_of_transfer_trains_the_victims_extractor_too(tmp_path, monkeypatch, one_thread):
    """Transfer: the PoisonSet of each trial and the pre-trained extractor the victims share; the runs then train
    no extractor."""
    from poisonbench.engine import pretrained

    path = write_npz(tmp_path, n=400)
    spec = targeted_spec(str(path), "bp", results=str(tmp_path / "res"))
    data = load_dataset(str(path))
    scenario = scenario_for(spec)
    plan = scenario.plan(spec, data, 0)
    victim = pretrained.extractor_id(data, "convnet", *scenario.recipe)
    reporter = Events()
    assert prepare(spec, reporter) == [{"poison_id": plan.spec.poison_id, "attack": "bp", "status": "crafted"}]
    extractors = tmp_path / "res" / "extractors"
    assert f"{victim}.safetensors" in {p.name for p in extractors.iterdir()}
    assert ("start", "craft extractor convnet · tiny.npz", 1) in reporter.seen
    before = sorted(p.name for p in extractors.iterdir())
    assert prepare(spec) == [{"poison_id": plan.spec.poison_id, "attack": "bp", "status": "on disk"}]
    assert sorted(p.name for p in extractors.iterdir()) == before


def watch_loader(monkeypatch) -> list:
    """Replace defend's `load_dataset` by one that records (name, data_dir, download, other keywords) of each call
    and loads the dataset by name (the tiny `.npz` needs neither directory nor download); returns the list."""
    seen = []
    real = defend_module.load_dataset

    def watched(name, data_dir=None, download=False, **kwargs):
        seen.append((name, data_dir, download, kwargs))
        return real(name, **kwargs)

    monkeypatch.setattr(defend_module, "load_dataset", watched)
    return seen


def test_prepare_loads_the_dataset_as_the_spec_names_it(mix, tmp_path, monkeypatch, one_thread):
    """The data directory, the download switch and the split are handed to the loader (a named dataset such as
    mnist-5k is found or fetched by them; the tiny `.npz` here ignores the first two, so the loader is watched)."""
    seen = watch_loader(monkeypatch)
    mix.data_dir, mix.download, mix.npz_split = str(tmp_path / "data"), True, (0.05, 0.1)
    prepare(mix)
    assert seen == [(mix.dataset, str(tmp_path / "data"), True, {"npz_split": (0.05, 0.1)})]


def test_prepare_configures_the_deterministic_mode_asked_for(mix, one_thread):
    """On the CPU the mode is only remembered (`deterministic_mode`): the crafts that follow read it."""
    import torch

    from poisonbench.core.device import configure_device, deterministic_mode

    configure_device(torch.device("cpu"), "on")
    try:
        mix.deterministic = "off"
        prepare(mix)
        assert deterministic_mode() == "off"
    finally:
        configure_device(torch.device("cpu"), "on")


def test_a_trial_without_poisons_does_not_stop_the_next_ones(mix, monkeypatch, one_thread):
    """A scenario may have no plan for some trials (a plugin's): prepare goes on with the others."""
    from poisonbench.experiment.scenarios.untargeted import Untargeted

    real = Untargeted.plan
    monkeypatch.setattr(Untargeted, "plan", lambda self, spec, data, t: None if t == 0 else real(self, spec, data, t))
    mix.attacks = ["ops"]
    (entry,) = prepare(mix)
    assert entry["attack"] == "ops" and entry["status"] == "crafted"


def test_a_same_init_victim_is_built_from_the_surrogates_seed(tmp_path, monkeypatch, one_thread):
    """`--same-init`: the model prepare builds for a trial takes the seed the run will (the surrogate's, in the
    config resolved with the trial's plan), not the trial's own."""
    from poisonbench.experiment.scenarios.targeted import Targeted

    built = []
    real = Targeted.build_model
    monkeypatch.setattr(Targeted, "build_model", lambda self, request: built.append(request) or real(self, request))
    path = write_npz(tmp_path, n=400)
    spec = targeted_spec(str(path), "gm", same_init=True, seed=3, results=str(tmp_path / "res"))
    (entry,) = prepare(spec)
    assert entry["attack"] == "gm" and entry["status"] == "crafted"
    data = load_dataset(str(path))
    scenario = scenario_for(spec)
    config = run_config(spec, data, 0, scenario.plan(spec, data, 0), scenario)
    assert [r.seed for r in built] == [config["same_init"]["seed"]] and config["same_init"]["seed"] != 3


# --- defend's own setup (survivors of the mutation run, in `defend` and `run_lock`) ------------------------------


def test_defend_checks_the_methods_optional_packages_before_loading_anything(tiny_npz, tmp_path, monkeypatch):
    from poisonbench.defenses import DEFENSES

    asked = []

    def missing(name):
        asked.append(name)
        raise PoisonbenchError(f"no {name} here")

    monkeypatch.setattr(DEFENSES.get("none"), "requires", ("kornia", "dp_accounting"))
    monkeypatch.setattr(defend_module, "require", missing)
    monkeypatch.setattr(defend_module, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    with pytest.raises(PoisonbenchError, match="no kornia here"):
        defend(DefendSpec(dataset=str(tiny_npz), recipe="quick", results=str(tmp_path / "res")))
    assert asked == ["kornia"]


def test_defend_loads_configures_times_and_claims_as_the_spec_says(tiny_npz, tmp_path, monkeypatch, one_thread):
    """The loader gets the spec's data directory, download switch and split; the deterministic mode asked for is
    configured; the record's `cost.data_load` is the load's duration; the run is claimed under `locks/`."""
    import time

    import torch

    from poisonbench.core.device import configure_device, deterministic_mode

    seen = watch_loader(monkeypatch)
    spec = DefendSpec(dataset=str(tiny_npz), recipe="quick", recipe_overrides={"epochs": 1}, npz_split=(0.05, 0.1),
                      data_dir=str(tmp_path / "data"), download=True, deterministic="off",
                      results=str(tmp_path / "res"))
    configure_device(torch.device("cpu"), "on")
    try:
        start = time.perf_counter()
        (outcome,) = defend(spec)
        took = time.perf_counter() - start
        assert deterministic_mode() == "off"
    finally:
        configure_device(torch.device("cpu"), "on")
    assert seen == [(str(tiny_npz), str(tmp_path / "data"), True, {"npz_split": (0.05, 0.1)})]
    record = outcome.record
    assert record["config"]["npz_split"] == [0.05, 0.1]
    assert 0 <= record["cost"]["data_load"] <= took
    assert [p.name for p in (tmp_path / "res" / "locks").iterdir()] == [f"run-{record['run_id']}.lock"]


def test_defends_crafts_on_the_way_follow_the_deterministic_mode_asked_for(mix, monkeypatch, one_thread):
    """`defend` configures the mode before anything else, so that a PoisonSet crafted on the way (before the
    victim's training configures it again) is crafted under it."""
    import torch

    from poisonbench import poisons
    from poisonbench.core.device import configure_device, deterministic_mode

    modes = []
    real = poisons.craft

    def watched(*args, **kwargs):
        modes.append(deterministic_mode())
        return real(*args, **kwargs)

    monkeypatch.setattr(poisons, "craft", watched)
    mix.trials, mix.attacks, mix.deterministic = 1, ["ops"], "off"
    configure_device(torch.device("cpu"), "on")
    try:
        (outcome,) = defend(mix)
    finally:
        configure_device(torch.device("cpu"), "on")
    assert modes == ["off"] and outcome.status == "ran"


def test_a_same_init_victim_of_another_architecture_is_refused_in_one_whole_line(tmp_path):
    """`--same-init` needs a surrogate of the victim's architecture (the CLI test of
    tests/test_attack_independence.py checks the other refusal, a run with no surrogate)."""
    path = write_npz(tmp_path, n=400)
    data = load_dataset(str(path))

    def refusal(spec):
        scenario = scenario_for(spec)
        with pytest.raises(PoisonbenchError) as caught:
            run_config(spec, data, 0, scenario.plan(spec, data, 0), scenario)
        return str(caught.value)

    mix = DefendSpec(dataset=str(path), poison_ratio=0.1, attacks=["pgd", "durp"], same_init=True, model="resnet18")
    from poisonbench.experiment.scenarios.base import untargeted_surrogate

    surrogate = untargeted_surrogate(data)
    assert refusal(mix) == (f"--same-init: the victim's model (resnet18) is not the surrogate {surrogate.id}'s "
                            "(convnet); it cannot start from its initialisation")


def test_a_same_init_run_without_a_surrogate_is_refused_in_one_whole_line(tmp_path, toy):
    """`resolve_trial`'s own refusal (the scenarios' checks in `validate` refuse the known cases first: here the
    config is resolved directly)."""
    path = write_npz(tmp_path, n=400)
    data = load_dataset(str(path))
    spec = targeted_spec(str(path), toy, same_init=True, attack_params={})
    scenario = scenario_for(spec)
    with pytest.raises(PoisonbenchError) as caught:
        run_config(spec, data, 0, scenario.plan(spec, data, 0), scenario)
    assert str(caught.value) == "--same-init: this scratch run has no surrogate to start the victim from"
