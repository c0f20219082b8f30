"""One registration style: every attack, defense and scenario module is registered (or declared support code),
every entry is registered under its own `name`, and the lists derived from the registries follow them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import poisonbench
from poisonbench.attacks import ATTACKS
from poisonbench.data.catalog import DATASETS
from poisonbench.defenses import DEFENSES
from poisonbench.engine.models import MODELS
from poisonbench.experiment.scenarios import SCENARIOS, UNTARGETED_ATTACKS

PACKAGE = Path(poisonbench.__file__).parent

# Modules of these folders that define no registered entry, each with what it is instead.
SUPPORT = {
    "attacks": {"base": "the Attack interface and PoisonSet", "crafting_augment": "forest's crafting augmentation",
                "deepconfuse_nets": "DeepConfuse's networks", "forest": "forest's brew, shared by GM, BP and FC",
                "paper_iterations": "the paper's iteration counts", "surrogate": "the surrogate an attack crafts on",
                "targeted": "the targeted attacks' base class", "targets": "a trial's target and bases"},
    "defenses": {"facility_location": "EPIC's coreset selection", "filtering": "the filters' base class",
                 "hint_record": "what HINT's record keeps", "influence": "HINT's influence functions",
                 "privacy": "DP-SGD's privacy accounting",
                 "removal": "the removal statistics of filters and EPIC"},
    "experiment/scenarios": {"base": "the Scenario interface"},
}
REGISTRIES = {"attacks": ATTACKS, "defenses": DEFENSES, "experiment/scenarios": SCENARIOS}


def module_names(folder: str) -> list[str]:
    return sorted(p.stem for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__")


def problems(folder: str, stems: list[str]) -> list[str]:
    """What is wrong with the registration of the modules `stems` of `folder`."""
    registry, support = REGISTRIES[folder], set(SUPPORT[folder])
    homes = {inspect.getmodule(registry.get(name)).__name__.rsplit(".", 1)[-1] for name in registry}
    found = [f"{stem}: register what it defines in {folder}/__init__.py, or declare it in SUPPORT"
             for stem in stems if stem not in homes and stem not in support]
    found += [f"{stem} is registered: strike it from SUPPORT" for stem in stems if stem in homes and stem in support]
    return found + [f"SUPPORT names {stem}, which does not exist" for stem in sorted(support - set(stems))]


@pytest.mark.parametrize("folder", sorted(REGISTRIES))
def test_every_module_is_registered_or_declared_support(folder):
    assert problems(folder, module_names(folder)) == []


def test_an_unregistered_module_is_caught():
    """The check itself: a new module in the attacks folder that registers nothing fails it."""
    assert problems("attacks", [*module_names("attacks"), "new_attack"]) == [
        "new_attack: register what it defines in attacks/__init__.py, or declare it in SUPPORT"]


@pytest.mark.parametrize("registry", [ATTACKS, DEFENSES, SCENARIOS, MODELS, DATASETS], ids=lambda r: r.kind)
def test_every_entry_is_registered_under_its_own_name(registry):
    for name in registry:
        assert registry.get(name).name == name


def test_the_paper_mix_and_the_scenario_names_come_from_the_registries():
    assert UNTARGETED_ATTACKS == ("pgd", "dap", "durp", "deepconfuse")
    assert all(not ATTACKS.get(name).targeted for name in UNTARGETED_ATTACKS)
    from poisonbench.attacks.targets import SCENARIOS as CRAFTED_FOR

    assert set(CRAFTED_FOR) <= set(SCENARIOS)
    for name in ATTACKS:
        if ATTACKS.get(name).targeted:
            (param,) = [p for p in ATTACKS.get(name).PARAMS if p.name == "scenario"]
            assert param.choices is CRAFTED_FOR
