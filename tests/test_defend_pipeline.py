"""`defend` resolves each trial once: the recipe, the defense and the scenario that key a run's record are the very
ones it trains with (issue 56)."""

from __future__ import annotations

import poisonbench.experiment.defend as defend_module
from poisonbench.experiment.defend import defend, resolve_trial
from poisonbench.experiment.scenarios import scenario_for
from poisonbench.experiment.spec import DefendSpec


def test_each_trial_is_resolved_once_and_trains_with_what_keyed_its_record(tiny_npz, tmp_path, monkeypatch):
    calls = {"recipe": 0, "defense": 0, "scenario": 0}
    built = []

    def counting(name, function, keep=None):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            out = function(*args, **kwargs)
            if keep is not None:
                keep.append(out)
            return out
        return wrapper

    monkeypatch.setattr(defend_module, "resolved_recipe", counting("recipe", defend_module.resolved_recipe))
    monkeypatch.setattr(defend_module, "build_defense", counting("defense", defend_module.build_defense, built))
    monkeypatch.setattr(defend_module, "scenario_for", counting("scenario", defend_module.scenario_for))
    spec = DefendSpec(dataset=str(tiny_npz), method="hint", recipe="quick", recipe_overrides={"epochs": 1}, trials=3,
                      results=str(tmp_path / "results"))
    outcomes = defend(spec)
    assert calls == {"recipe": 3, "defense": 3, "scenario": 1}
    # the defense objects that were resolved are the ones that trained: each holds its run's selection
    assert [o.record["defense"]["selection"] for o in outcomes] == [d.summary()["selection"] for d in built]


def test_a_resolved_trial_is_the_run_config(tiny_npz):
    from poisonbench.data import load_dataset

    data = load_dataset(str(tiny_npz))
    spec = DefendSpec(dataset=str(tiny_npz), method="friends", recipe="quick")
    trial = resolve_trial(spec, data, 2)
    assert trial.config == defend_module.run_config(spec, data, 2, scenario=scenario_for(spec))
    assert trial.config["defense"] == trial.defense.config() and trial.config["recipe"] == trial.recipe.to_dict()
    assert trial.run_id == defend_module.run_id(trial.config) and trial.config["seed"] == 2
