"""Scenario registry (design.md §4). Adding a scenario = one module here + one `SCENARIOS.add` line.

`defend` picks the scenario named by `--scenario`, or infers it from the poison options: `--poison-set` →
poison-set, `--poison-ratio` > 0 → untargeted, else clean.
"""

from __future__ import annotations

from ..registry import Registry
from .base import ModelRequest, PoisonPlan, Scenario, reporter_progress
from .poison_set import PoisonSetPlan, PoisonSetScenario, plan_poison_set
from .untargeted import (
    CRAFT_SEED,
    ROW_STREAM,
    UNTARGETED_ATTACKS,
    Clean,
    Untargeted,
    UntargetedPlan,
    check_attacks,
    check_poison_sets,
    chosen_spec,
    parse_poison_sets,
    plan_untargeted,
    split_counts,
)

SCENARIOS: Registry[type[Scenario]] = Registry("scenario")
SCENARIOS.add("clean", Clean)
SCENARIOS.add("untargeted", Untargeted)
SCENARIOS.add("poison-set", PoisonSetScenario)


def scenario_for(spec) -> Scenario:
    """The scenario of a DefendSpec: `spec.scenario` if given, else inferred from its poison options."""
    name = spec.scenario
    if name is None:
        name = "poison-set" if spec.poison_set is not None else ("untargeted" if spec.poison_ratio > 0 else "clean")
    return SCENARIOS.get(name)()


__all__ = [
    "CRAFT_SEED", "ROW_STREAM", "SCENARIOS", "UNTARGETED_ATTACKS", "Clean", "ModelRequest", "PoisonPlan",
    "PoisonSetPlan", "PoisonSetScenario", "Scenario", "Untargeted", "UntargetedPlan", "check_attacks",
    "check_poison_sets", "chosen_spec", "parse_poison_sets", "plan_poison_set", "plan_untargeted",
    "reporter_progress", "scenario_for", "split_counts",
]
