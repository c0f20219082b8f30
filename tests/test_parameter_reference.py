"""docs/parameters.md is the registries' parameter table (poisonbench.report.parameters): a default, bound, choice,
help text or source changed in code shows up as a diff of the user's reference page, or fails here."""

from __future__ import annotations

from pathlib import Path

from poisonbench.attacks import ATTACKS
from poisonbench.core.params import Param
from poisonbench.defenses import DEFENSES
from poisonbench.report.parameters import accepted_text, default_text, parameter_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"


def test_the_parameter_reference_is_the_registries_own():
    assert PAGE.read_text(encoding="utf-8") == parameter_reference(), (
        "docs/parameters.md is stale: python -m poisonbench.report.parameters > docs/parameters.md; review the diff")


def test_every_built_in_option_has_a_row_with_its_flag_and_source():
    page = parameter_reference()
    for registry in (ATTACKS, DEFENSES):
        for name, entry in registry.builtins().items():
            section = page.split(f"`{name}`\n", 1)[1].split("\n### ")[0]
            for param in entry.PARAMS:
                row = next(line for line in section.splitlines() if line.startswith(f"| `{param.flag}` |"))
                assert param.source.replace("|", "\\|") in row, (name, param.name)


def test_defaults_per_family_bounds_and_choices_are_spelled_out():
    assert default_text(Param("k", int, {"mnist": 40, "cifar10": 10}, "")) == "40 (mnist) / 10 (cifar10)"
    assert default_text(Param("k", int, 7, "")) == "7"
    assert default_text(Param("k", int, None, "")) == "off"
    assert default_text(Param("k", float, lambda family, recipe: recipe.epochs, "")) == "set by the recipe"
    assert accepted_text(Param("k", int, 1, "", minimum=1, maximum=1000)) == "≥ 1, ≤ 1000"
    assert accepted_text(Param("k", float, 0.1, "", minimum=0, maximum=1, below_maximum=True)) == "≥ 0, < 1"
    assert accepted_text(Param("k", float, 0.1, "", positive=True)) == "> 0"
    assert accepted_text(Param("k", str, "a", "", choices=("a", "b"))) == "a \\| b"
