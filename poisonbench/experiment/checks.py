"""The checks of a `DefendSpec` that need no data (`validate`), and what it resolves to without data: its trials and
its recipe."""

from __future__ import annotations

from ..attacks.base import check_seed
from ..attacks.targets import check_setup_index
from ..core.device import check_compile_mode, check_deterministic_mode
from ..core.errors import PoisonbenchError
from ..engine.kernels import check_accel_mode
from ..engine.models import MODELS
from ..engine.recipes import Recipe, default_recipe, resolve_recipe
from ..engine.training import check_precision
from .scenarios import scenario_for
from .scenarios.targeted import Targeted
from .scenarios.untargeted import check_poison_ratio
from .spec import MAX_TRIALS, DefendSpec


def recipe_name(spec: DefendSpec, family: str) -> str:
    """The run's recipe: `--recipe`, else the default for its scenario and dataset family."""
    return spec.recipe or default_recipe(family, isinstance(scenario_for(spec), Targeted))


def resolved_recipe(spec: DefendSpec, family: str) -> Recipe:
    """The run's resolved recipe (every field): the victim's, and for a targeted attack its surrogate's."""
    return resolve_recipe(family, recipe_name(spec, family), **spec.recipe_overrides)


def check_transfer_options(spec: DefendSpec, scenario) -> None:
    """`--threat` and `--head-bn` belong to the transfer scenario; `--threat` is the PoisonSet's own under
    `--poison-set` (it decides the extractor the poisons were crafted on)."""
    from .scenarios.targeted import HEAD_BN_MODES, THREATS

    for flag, value, choices in (("--threat", spec.threat, THREATS), ("--head-bn", spec.head_bn, HEAD_BN_MODES)):
        if value is None:
            continue
        if value not in choices:
            raise PoisonbenchError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if scenario.name != "transfer":
            raise PoisonbenchError(f"{flag} applies to the transfer scenario (a frozen pre-trained extractor), not "
                                   f"scenario {scenario.name!r}")
    if spec.threat is not None and spec.poison_set is not None:
        raise PoisonbenchError("--threat: a --poison-set was crafted on the extractor its own spec names (its "
                               "params.threat); give --threat with --attack")


def trial_numbers(spec: DefendSpec) -> list[int]:
    return [spec.trial] if spec.trial is not None else list(range(spec.trials))


def validate(spec: DefendSpec) -> None:
    """Checks that need no data: fail before anything is loaded or written. Each value is checked once on its way
    to training: here, or where it is resolved before the first write (the device by `defend`, the method and its
    options by `build_defense`, the recipe's fields by `resolve_recipe`)."""
    if spec.trials <= 0:
        raise PoisonbenchError(f"trials must be a positive integer, got {spec.trials}")
    if spec.trials > MAX_TRIALS:
        raise PoisonbenchError(f"--trials {spec.trials}: at most {MAX_TRIALS} trials per call (each trial is one "
                               "training run); run more with several calls of --trial T")
    if spec.trial is not None:
        if spec.trial < 0:
            raise PoisonbenchError(f"trial must be a non-negative integer, got {spec.trial}")
        if spec.trials != 1:
            raise PoisonbenchError(f"give either --trials N (trials 0..N-1) or --trial T (only trial T), "
                                   f"not both (got --trials {spec.trials} --trial {spec.trial})")
    check_seed(spec.seed, "--seed")
    last = spec.trial if spec.trial is not None else spec.trials - 1  # not max(trial_numbers): no list of trials
    check_seed(spec.seed + last, "--seed plus the last trial")
    check_poison_ratio(spec.poison_ratio)
    if spec.model is not None:
        MODELS.get(spec.model)
    check_setup_index(spec.setup, spec.setup_index)  # every scenario: --setup-index without --setup is refused
    scenario = scenario_for(spec)
    scenario.validate(spec)
    if spec.same_init:
        scenario.check_same_init(spec)
    check_transfer_options(spec, scenario)
    if not isinstance(scenario, Targeted) and scenario.name != "backdoor":  # backdoor: --attack, --eps, --budget
        targeted_only = [flag for flag, value in (("--attack", spec.attack), ("--target", spec.target),
                                                  ("--intended", spec.intended), ("--setup", spec.setup),
                                                  ("--eps", spec.eps), ("--budget", spec.budget)) if value is not None]
        if targeted_only:
            raise PoisonbenchError(f"{targeted_only[0]} belongs to the targeted scenarios (scratch, transfer); "
                                   f"scenario {scenario.name!r} takes none")
    check_precision(spec.precision)  # its only check: the engine only looks it up
    check_compile_mode(spec.compile)
    check_accel_mode(spec.accel)
    check_deterministic_mode(spec.deterministic)
    if not spec.checkpoint_every >= 0:
        raise PoisonbenchError(f"--checkpoint-every must be >= 0 seconds, got {spec.checkpoint_every}")
