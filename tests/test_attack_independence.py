"""Attacker and victim are independent (issue 54; docs/engine.md, "Attacks"): the models trained for crafting take seeds
no victim trial shares, `--same-init` (forest's `--retrain_from_init`) is an explicit option that the record keeps and
the report keeps apart, the victim's whole recipe and model train the surrogate and the extractor and name the
PoisonSet, crafting augmentation follows the victim's, and the `forest` recipe is forest's."""

from __future__ import annotations

import pytest
import torch

from poisonbench.attacks.base import check_seed
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.defend import defend, run_config
from poisonbench.experiment.scenarios import scenario_for
from poisonbench.experiment.spec import DefendSpec
from poisonbench.report import tables

from .conftest import one_line_error, targeted_spec, write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("independence")
    path = write_npz(root, n=400)
    return str(path), load_dataset(str(path))


def spec_of(path: str, **given):
    return targeted_spec(path, "gm", **given)


def capture_inits(monkeypatch) -> dict[str, list]:
    """Record (seed, initial weights) of every model the surrogate training (`trained_models`) and the scratch
    victim (`scenarios.base`) build, and the seed each training run (the engine) takes."""
    import poisonbench.engine.model_cache as trained_models
    import poisonbench.engine.training as training
    import poisonbench.experiment.one_run as run_execution
    import poisonbench.experiment.scenarios.base as scenario_base

    seen: dict[str, list] = {"attacker": [], "victim": [], "train": []}

    def builder(kind, original):
        def build(name, dataset, seed=None):
            model = original(name, dataset, seed=seed)
            seen[kind].append((seed, {k: v.detach().clone() for k, v in model.state_dict().items()}))
            return model
        return build

    def trainer(original):
        def train(*args, seed, **kwargs):
            seen["train"].append(seed)
            return original(*args, seed=seed, **kwargs)
        return train

    monkeypatch.setattr(trained_models, "build_model", builder("attacker", trained_models.build_model))
    monkeypatch.setattr(scenario_base, "build_model", builder("victim", scenario_base.build_model))
    monkeypatch.setattr(training, "train", trainer(training.train))  # the surrogate's (imported when it trains)
    monkeypatch.setattr(run_execution, "train", trainer(run_execution.train))  # the victim's
    return seen


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_gm(path: str, results, **given) -> tuple[dict, dict]:
    """Trial 0 of GM from scratch: (its record, the inits and seeds captured while it ran)."""
    with pytest.MonkeyPatch.context() as mp:
        seen = capture_inits(mp)
        (outcome,) = defend(spec_of(path, results=str(results), **given))
    return outcome.record, seen


@pytest.fixture(scope="module")
def gm_apart(tiny, tmp_path_factory):
    """Trial 0 of GM from scratch as `defend` runs it by default: (record, captured inits, results root)."""
    path, _ = tiny
    results = tmp_path_factory.mktemp("gm-results")
    return (*run_gm(path, results), results)


@pytest.fixture(scope="module")
def gm_runs(tiny, gm_apart):
    """The default run and its `--same-init` twin on the same surrogate: ({"apart" | "same": (record, captured
    inits)}, results root)."""
    path, _ = tiny
    record, seen, results = gm_apart
    return {"apart": (record, seen), "same": run_gm(path, results, same_init=True)}, results


def test_trial_0s_victim_does_not_start_from_the_surrogates_weights_or_seed(gm_apart, one_thread):
    """The bug of issue 54: the surrogate trained with seed 0 and trial 0's victim with seed 0 (same initial
    weights, same batch order), so GM "succeeded" on trial 0 only."""
    record, seen, _ = gm_apart
    assert record["config"]["seed"] == 0 and "same_init" not in record["config"]
    (surrogate_seed, surrogate_init), = seen["attacker"]
    (victim_seed, victim_init), = seen["victim"]
    assert victim_seed == 0
    assert surrogate_seed != victim_seed and surrogate_seed % 2 ** 32 != victim_seed % 2 ** 32  # CPU streams too
    assert not same_weights(surrogate_init, victim_init)
    assert seen["train"] == [surrogate_seed, victim_seed]  # batch order and augmentation apart as well
    from poisonbench.core.seeds import is_attacker_seed

    assert is_attacker_seed(surrogate_seed)


def test_same_init_gives_the_victim_the_surrogates_initialisation_and_is_recorded(gm_runs, one_thread):
    from poisonbench.poisons import read_manifest

    runs, results = gm_runs
    apart, (record, seen) = runs["apart"][0], runs["same"]
    assert seen["attacker"] == []  # the surrogate of the first run, loaded from the cache
    (_, surrogate_init), = runs["apart"][1]["attacker"]
    surrogate_seed = runs["apart"][1]["train"][0]
    (victim_seed, victim_init), = seen["victim"]
    assert victim_seed == surrogate_seed and same_weights(victim_init, surrogate_init)
    assert seen["train"] == [surrogate_seed]
    config = record["config"]
    poison = config["poison"]
    assert poison["poison_id"] == apart["config"]["poison"]["poison_id"]  # the same PoisonSet
    surrogate = read_manifest(results, poison["poison_id"])["surrogate"]
    assert config["same_init"] == {"model": f"surrogate {surrogate}", "seed": surrogate_seed}
    assert config["seed"] == 0  # the trial's seed stays what it is (the target, the bases)
    assert record["run_id"] != apart["run_id"]


def test_report_keeps_same_init_runs_apart(gm_runs):
    runs, _ = gm_runs
    records = [runs["apart"][0], runs["same"][0]]
    table = tables.build("3", records, tables.Options(trials=1))
    labels = [b.title for b in table.blocks]
    assert len(labels) == 2 and sum("--same-init" in t for t in labels) == 1, labels
    rows = [d for d in table.data if d["attack"] == "gm" and d["method"] == "none"]
    assert sorted(d["trials"] for d in rows) == [1, 1]  # one run per cell: never pooled
    frame = tables.frame(records)
    assert sorted(frame.init) == ["", "surrogate"]
    assert sorted(label.endswith("[--same-init]") for label in frame.poison_label) == [False, True]  # plain report
    assert frame.configuration.nunique() == 2


@pytest.mark.parametrize("change", [{"recipe_overrides": {"epochs": 1, "lr": 0.05}},
                                    {"recipe_overrides": {"epochs": 1, "augment": "crop-flip"}},
                                    {"model": "resnet18"}], ids=["lr", "augment", "model"])
def test_the_victims_recipe_and_model_name_the_surrogate_the_extractor_and_the_poison_set(tiny, change):
    path, data = tiny
    for attack in ("gm", "bp"):  # gm: the scratch surrogate; bp: the transfer extractor
        plain, changed = spec_of(path, attack=attack), spec_of(path, attack=attack, **change)
        a = scenario_for(plain).plan(plain, data, 0).spec
        b = scenario_for(changed).plan(changed, data, 0).spec
        assert a.surrogate != b.surrogate, (attack, change)
        assert a.surrogate.startswith("extractor:") == b.surrogate.startswith("extractor:") == (attack == "bp")
        assert a.poison_id != b.poison_id
        assert a.target == b.target  # the same target and bases: only the model crafted against differs


def test_one_recipe_in_two_spellings_is_one_poison_set(tiny):
    path, data = tiny
    plain = spec_of(path)
    spelled = spec_of(path, model="convnet", recipe_overrides={"epochs": 1, "lr": 0.01, "augment": "none"})
    a = scenario_for(plain).plan(plain, data, 0).spec
    b = scenario_for(spelled).plan(spelled, data, 0).spec
    assert (a.surrogate, a.poison_id) == (b.surrogate, b.poison_id)
    from poisonbench.attacks import ATTACKS

    longer = spec_of(path, recipe_overrides={"epochs": 3, "milestones": [2], "lr": 0.05})
    for spec in (a, scenario_for(longer).plan(longer, data, 0).spec):  # crafting rebuilds the attack from its params
        assert ATTACKS.get("gm")(data.family, **spec.params).params == spec.params


def test_crafting_augmentation_follows_the_victims_and_is_recorded(tiny):
    path, data = tiny
    params = {}
    for augment in ("none", "shift"):
        spec = spec_of(path, recipe_overrides={"epochs": 1, "augment": augment})
        params[augment] = scenario_for(spec).plan(spec, data, 0).spec.params
    assert params["none"]["augment"] is False and params["shift"]["augment"] is True
    forced = spec_of(path, attack_params={"iterations": 1, "restarts": 1, "augment": True})
    assert scenario_for(forced).plan(forced, data, 0).spec.params["augment"] is True  # overridable


def test_attacker_seeds_cannot_be_victim_seeds(tiny):
    from poisonbench.attacks.surrogate import surrogate_spec
    from poisonbench.core.seeds import attacker_seed, check_apart, is_attacker_seed
    from poisonbench.engine.pretrained import extractor_spec

    _, data = tiny
    seeds = [surrogate_spec(data)["seed"], surrogate_spec(data, recipe="quick")["seed"],
             extractor_spec(data)["seed"], attacker_seed("deepconfuse", {"seed": 0})]
    assert len(set(seeds)) == len(seeds) and all(is_attacker_seed(s) for s in seeds)
    for s in seeds:
        assert s >= 2 ** 63 and s % 2 ** 32 >= 2 ** 31  # above every victim seed, in 64 and in 32 bits
        with pytest.raises(PoisonbenchError):
            check_seed(s)  # no --seed can name it
        for victim in (0, 1, 999, 2 ** 31 - 1, 2 ** 63 - 1):
            check_apart(victim, s, "x")  # nothing to refuse below 2^31, and here
        with pytest.raises(PoisonbenchError, match="low 32 bits"):
            check_apart(s % 2 ** 32 + 2 ** 32, s, "the surrogate")
    assert surrogate_spec(data)["seed"] == surrogate_spec(data)["seed"]  # a function of its inputs


def test_untargeted_runs_check_their_seed_and_may_start_from_the_untargeted_surrogate(tiny):
    from poisonbench.attacks.surrogate import surrogate_spec
    from poisonbench.core.hashing import short_hash

    path, data = tiny
    surrogate = surrogate_spec(data)
    spec = DefendSpec(dataset=path, poison_ratio=0.1, attacks=["pgd", "durp"], same_init=True)
    config = run_config(spec, data, 0, scenario_for(spec).plan(spec, data, 0))
    assert config["same_init"] == {"model": f"surrogate {short_hash(surrogate)}", "seed": surrogate["seed"]}
    clash = DefendSpec(dataset=path, poison_ratio=0.1, attacks=["pgd", "durp"], seed=surrogate["seed"] % 2 ** 32
                       + 2 ** 32)
    with pytest.raises(PoisonbenchError, match="low 32 bits"):
        run_config(clash, data, 0, scenario_for(clash).plan(clash, data, 0))


@pytest.mark.parametrize("kind", ["untargeted", "targeted"])
def test_the_seed_apart_check_looks_at_every_trials_seed_not_only_trial_0s(cli, tiny, tmp_path, kind):
    """Trial t trains with seed --seed + t: with --seed two below a value whose low 32 bits are the attacker
    model's, trials 0 and 1 are apart and trial 2 is not. Resolving trial 2 is refused, and so is `defend --trials
    3` as a whole (one line, before anything is written); a check of trial 0's seed alone lets it through."""
    path, data = tiny
    given = {"poison_ratio": 0.1, "attacks": ["pgd", "durp"], "attack": None} if kind == "untargeted" else {}
    probe = spec_of(path, **given)
    scenario = scenario_for(probe)
    attacker = scenario.attacker_model(probe, data, scenario.plan(probe, data, 2)).seed
    clash = attacker % 2 ** 32 + 2 ** 32  # below 2^63, the attacker's low 32 bits
    spec = spec_of(path, **given, seed=clash - 2, trials=3)
    for trial in (0, 1):
        assert run_config(spec, data, trial, scenario.plan(spec, data, trial))["seed"] == clash - 2 + trial
    with pytest.raises(PoisonbenchError, match=f"seed {clash} shares its low 32 bits"):
        run_config(spec, data, 2, scenario.plan(spec, data, 2))
    args = (["--poison-ratio", "0.1", "--attacks", "pgd,durp"] if kind == "untargeted" else
            ["--attack", "gm", "--budget", "0.02", "--attack-params", "iterations=1,restarts=1"])
    code, _, err = cli("defend", "--dataset", path, "--recipe", "quick", "--epochs", "1", *args, "--seed",
                       clash - 2, "--trials", "3", "--device", "cpu", "--results", tmp_path / "r")
    one_line_error(code, err, f"seed {clash} shares its low 32 bits")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("given, message", [
    (["--attack", "bp"], "the transfer victim freezes"),
    (["--attack", "gm", "--scenario", "transfer"], "the transfer victim freezes"),
    (["--poison-set", "0123456789abcdef"], "no surrogate to start the victim from"),
])
def test_same_init_is_refused_where_there_is_nothing_to_start_from(cli, tiny, tmp_path, given, message):
    path, _ = tiny
    code, _, err = cli("defend", "--dataset", path, "--same-init", *given, "--results", tmp_path / "r")
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists()


def test_the_forest_recipe_is_forests_and_the_default_of_targeted_mnist_runs(tiny):
    from poisonbench.engine.recipes import resolve_recipe

    mnist, cifar = resolve_recipe("mnist", "forest"), resolve_recipe("cifar10", "forest")
    assert (mnist.lr, cifar.lr) == (0.01, 0.1)  # forest's lr 0.1, × 0.1 for its "brittle" ConvNet
    for r in (mnist, cifar):
        assert (r.epochs, r.batch_size, r.momentum, r.nesterov, r.weight_decay, r.milestones, r.lr_decay) == (
            40, 128, 0.9, True, 5e-4, (14, 25, 35), 0.1)
    assert (mnist.augment, cifar.augment) == ("shift", "crop-flip")
    assert resolve_recipe("mnist", "forest", epochs=10).milestones == (3, 6, 8)  # forest's epochs // 2.667, ...
    path, data = tiny
    targeted = DefendSpec(dataset=path, attack="gm", budget=0.02)
    clean = DefendSpec(dataset=path)
    assert run_config(targeted, data, 0, scenario_for(targeted).plan(targeted, data, 0))["recipe"]["name"] == "forest"
    assert run_config(clean, data, 0)["recipe"]["name"] == "paper"
    assert scenario_for(targeted).plan(targeted, data, 0).spec.params["surrogate_recipe"] == "forest"


def test_shift_moves_digits_by_at_most_two_pixels_without_flipping_them():
    from poisonbench.engine import augment

    x = torch.zeros(200, 1, 12, 12)
    x[:, :, 5, 2] = 1  # one lit pixel left of centre
    out = augment.apply("shift", x, torch.Generator().manual_seed(0))
    where = out.flatten(1).argmax(1)
    rows, cols = where // 12, where % 12
    assert (out.flatten(1).sum(1) == 1).all()  # a shift within the padding keeps the pixel
    assert set((rows - 5).tolist()) == set((cols - 2).tolist()) == {-2, -1, 0, 1, 2}  # every shift, none beyond
