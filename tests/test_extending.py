"""docs/extending.md's worked examples, executed: each code block runs as a module, its entry is registered for the
test, and a tiny run uses it. Also: every table keyed by dataset family covers every family (a new family cannot be
half added)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import types
from pathlib import Path

import pytest

import poisonbench
from poisonbench.attacks import ATTACKS
from poisonbench.data.catalog import DATASETS
from poisonbench.data.types import FAMILIES
from poisonbench.defenses import DEFENSES
from poisonbench.experiment.defend import defend
from poisonbench.experiment.scenarios import SCENARIOS
from poisonbench.experiment.spec import DefendSpec

from .toys import registered

DOC = Path(__file__).parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n# poisonbench example: (\w+)\n(.*?)```", re.S)


def examples() -> dict[str, types.ModuleType]:
    """{kind: the module its code block defines}, each block run as its own module."""
    out = {}
    for kind, code in BLOCK.findall(DOC.read_text()):
        module = types.ModuleType(f"poisonbench_example_{kind}")
        sys.modules[module.__name__] = module  # so inspect and dataclasses can find the classes' module
        exec(compile(code, f"{DOC}:{kind}", "exec"), module.__dict__)
        out[kind] = module
    return out


@pytest.fixture(scope="module")
def example():
    found = examples()
    yield found
    for module in found.values():
        sys.modules.pop(module.__name__, None)


def test_the_guide_has_every_kind_of_example(example):
    assert set(example) == {"defense", "filter", "attack", "targeted", "scenario", "dataset"}


def spec(tiny_npz, tmp_path, **kw) -> DefendSpec:
    return DefendSpec(dataset=str(tiny_npz), recipe="quick", recipe_overrides={"epochs": 1},
                      results=str(tmp_path / "results"), **kw)


def test_the_defense_example_trains_with_its_noise(example, tiny_npz, tmp_path):
    cls = example["defense"].GaussianNoise
    with registered(DEFENSES, cls.name, cls):
        (outcome,) = defend(spec(tiny_npz, tmp_path, method="gauss-noise", method_params={"sigma": 0.2}))
    assert outcome.record["config"]["defense"] == {"method": "gauss-noise", "sigma": 0.2}
    assert outcome.record["defense"] == {"sigma": 0.2} and outcome.record["metrics"]["test_acc"] > 0


def test_the_filter_example_removes_its_share_of_each_class(example, tiny_npz, tmp_path):
    cls = example["filter"].NormFilter
    with registered(DEFENSES, cls.name, cls):
        (outcome,) = defend(spec(tiny_npz, tmp_path, method="norm", method_params={"drop": 0.1}))
    removal = outcome.record["defense"]["removal"]
    assert removal["removed"] == 40  # 10 % of each of the 10 classes of the 400 train rows


def test_the_attack_example_poisons_within_eps(example, tiny_npz, tmp_path):
    cls = example["attack"].SignNoise
    with registered(ATTACKS, cls.name, cls):
        (outcome,) = defend(spec(tiny_npz, tmp_path, poison_ratio=0.5, attacks=["sign-noise"]))
    poison = outcome.record["config"]["poison"]
    assert poison["attacks"] == ["sign-noise"] and outcome.record["poison_tensors"].keys() == {"sign-noise"}


def test_the_targeted_example_crafts_and_reports_success(example, tiny_npz, tmp_path):
    cls = example["targeted"].Nudge
    with registered(ATTACKS, cls.name, cls):
        (outcome,) = defend(spec(tiny_npz, tmp_path, attack="nudge", eps=16 / 255, budget=0.02))
    assert outcome.record["config"]["poison"]["attack"] == "nudge"
    assert isinstance(outcome.record["metrics"]["attack_success"], bool)


def test_the_scenario_example_trains_on_half(example, tiny_npz, tmp_path):
    cls = example["scenario"].HalfData
    with registered(SCENARIOS, cls.name, cls):
        (outcome,) = defend(spec(tiny_npz, tmp_path, scenario="half-data"))
    assert outcome.record["config"]["scenario"] == "half-data"
    assert outcome.record["metrics"]["rows_trained_on"] == 200


def test_the_dataset_example_loads_and_trains(example, tmp_path):
    from poisonbench.data import load_dataset

    entry = example["dataset"].SKLEARN_DIGITS
    with registered(DATASETS, entry.name, entry):
        data = load_dataset("sklearn-digits")
        assert (len(data.train), len(data.val), len(data.test)) == entry.split_sizes
        assert data.train.x.shape[1:] == (1, 16, 16) and data.family == "mnist"
        (outcome,) = defend(DefendSpec(dataset="sklearn-digits", recipe="quick", recipe_overrides={"epochs": 1},
                                       results=str(tmp_path / "results")))
    assert outcome.record["config"]["dataset"] == "sklearn-digits"


# ------------------------------------------------------------------------------------------------ the families

def family_tables() -> dict[str, dict]:
    """{where: table} of every module-level dict keyed by dataset families, and every Param default given per
    family, across the package."""
    found = {}
    for info in pkgutil.walk_packages(poisonbench.__path__, "poisonbench."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, dict) and value and set(value) & set(FAMILIES) and not attr.startswith("__"):
                if set(value) <= set(FAMILIES) or attr in FAMILY_TABLES_WITH_MORE_KEYS:
                    found[f"{info.name}.{attr}"] = value
    for registry in (ATTACKS, DEFENSES):
        for name in registry:
            for param in registry.get(name).PARAMS:
                if isinstance(param.default, dict):
                    found[f"{registry.kind} {name}: {param.name}"] = param.default
    return found


# tables keyed by family that also hold other keys (none today): named here so the check still reads them
FAMILY_TABLES_WITH_MORE_KEYS: set[str] = set()


def test_every_table_keyed_by_family_covers_every_family():
    tables = family_tables()
    assert "poisonbench.engine.models.DEFAULT_MODEL" in tables and "poisonbench.engine.recipes.RECIPES" in tables
    assert any(where.startswith("attack pgd:") for where in tables)
    lacking = sorted(where for where, table in tables.items() if not set(FAMILIES) <= set(table))
    assert lacking == []


def test_a_family_added_to_families_alone_is_caught(monkeypatch):
    """The check itself: with a third family in FAMILIES and no table extended, every table is named."""
    monkeypatch.setattr(sys.modules[__name__], "FAMILIES", (*FAMILIES, "imagenet64"))
    tables = family_tables()
    lacking = {where for where, table in tables.items() if "imagenet64" not in table}
    assert "poisonbench.engine.models.DEFAULT_MODEL" in lacking and len(lacking) == len(tables)
