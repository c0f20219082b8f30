"""`defend` resolves each trial once: the recipe, the defense and the scenario that key a run's record are the very
ones it trains with (issue 56)."""

from __future__ import annotations

import inspect

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


def test_the_option_table_declares_every_field_of_the_spec():
    """`defend`'s options and a grid's keys come from one table (experiment.options): every field of `DefendSpec`
    is set from a table option (the recipe overrides and `--poisons` under their own names, the defenses' options
    as `method_params`), and the CLI's options are the table's plus the defenses' and its own two."""
    from dataclasses import fields

    from poisonbench.cli import defend as defend_cmd
    from poisonbench.experiment.options import CLI_ONLY, OPTIONS, PARTS, RECIPE_OVERRIDES, method_options
    from poisonbench.experiment.spec import DefendSpec

    spec_field = {"poisons": "poison_sets", **{name: "recipe_overrides" for name in RECIPE_OVERRIDES}}
    assert {spec_field.get(name, name) for name in OPTIONS} | {"method_params"} == {f.name for f in fields(DefendSpec)}
    assert {o.part for o in OPTIONS.values()} == set(PARTS)
    from poisonbench.cli.generated import ENTRY_HELP

    cli = [p.name for p in inspect.signature(defend_cmd.command()).parameters.values()]
    assert cli == [*OPTIONS, *CLI_ONLY, ENTRY_HELP, *(o.python_name for o in method_options())]
