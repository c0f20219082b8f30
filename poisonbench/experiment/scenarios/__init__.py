"""The scenarios (docs/engine.md "Scenarios"). Adding a scenario is one module here and one entry below; a scenario
class names itself (`name`).

`defend` picks the scenario named by `--scenario`, or infers it from the poison options: `--poison-set` →
poison-set, `--poison-ratio` > 0 → untargeted, else clean.
"""

from __future__ import annotations

from ...core.registry import PluginGroup, Registry
from .backdoor import Backdoor, BackdoorPlan
from .base import ModelRequest, PoisonPlan, Scenario, reporter_progress
from .poison_set import PoisonSetPlan, PoisonSetScenario, plan_poison_set
from .targeted import Scratch, TargetedPlan, Transfer, targeted_attacks
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

SCENARIOS: Registry[type[Scenario]] = Registry.of(
    "scenario", (Clean, Untargeted, PoisonSetScenario, Scratch, Transfer, Backdoor),
    PluginGroup("poisonbench.scenarios", lambda e: isinstance(e, type) and issubclass(e, Scenario),
                "a subclass of poisonbench.experiment.scenarios.base.Scenario"))


def scenario_for(spec) -> Scenario:
    """The scenario of a DefendSpec: `spec.scenario` if given, else inferred from its poison options: `--attack`
    → the attack's default victim (the paper's: gm → scratch, bp / fc → transfer); `--poison-set` → the scenario a
    targeted PoisonSet was made for, backdoor for a backdoor's, else poison-set; `--poison-ratio` > 0 → untargeted;
    else clean."""
    name = spec.scenario
    if name is None:
        if spec.attack is not None:
            name = attack_scenario(spec.attack)
        elif spec.poison_set is not None:
            name = poison_set_scenario(spec.results, spec.poison_set)
        else:
            name = "untargeted" if spec.poison_ratio > 0 else "clean"
    return SCENARIOS.get(name)()


def attack_scenario(attack: str) -> str:
    """The default scenario of `defend --attack NAME`: the targeted attack's own (`TargetedAttack.default_scenario`),
    `backdoor` for a backdoor (attacks.backdoor)."""
    from ...attacks import ATTACKS
    from ...core.errors import PoisonbenchError

    cls = ATTACKS.get(attack)
    if getattr(cls, "backdoor", False):
        return cls.default_scenario  # "backdoor"
    if not cls.targeted:
        raise PoisonbenchError(f"--attack {attack!r} is untargeted; the targeted attacks are "
                               f"{', '.join(targeted_attacks())} (the untargeted mix: --poison-ratio, --attacks)")
    return cls.default_scenario


def poison_set_scenario(results_root, poison_id: str) -> str:
    """`scratch` / `transfer` for a targeted PoisonSet (its spec names it), else `poison-set` (also when the set
    cannot be read: that scenario's checks then name the problem)."""
    from ...core.errors import PoisonbenchError
    from ...poisons import check_poison_id, spec_of

    try:
        check_poison_id(poison_id, "--poison-set ")
        spec, manifest = spec_of(results_root, poison_id)
    except (PoisonbenchError, OSError, ValueError):
        return "poison-set"
    if spec.target is None:
        return "backdoor" if isinstance(manifest, dict) and "backdoor" in manifest else "poison-set"
    return spec.params.get("scenario", "scratch") if isinstance(spec.params, dict) else "scratch"


__all__ = [
    "Backdoor", "BackdoorPlan", "CRAFT_SEED", "ROW_STREAM", "SCENARIOS", "UNTARGETED_ATTACKS", "Clean",
    "ModelRequest", "PoisonPlan",
    "PoisonSetPlan", "PoisonSetScenario", "Scenario", "Scratch", "TargetedPlan", "Transfer", "attack_scenario",
    "poison_set_scenario", "targeted_attacks", "Untargeted", "UntargetedPlan", "check_attacks",
    "check_poison_sets", "chosen_spec", "parse_poison_sets", "plan_poison_set", "plan_untargeted",
    "reporter_progress", "scenario_for", "split_counts",
]
