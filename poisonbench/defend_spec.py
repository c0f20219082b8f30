"""What one `defend` call asks for (`DefendSpec`), and the checks that need no data (`validate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .accel import check_accel_mode
from .attacks.base import check_seed
from .checkpoints import CHECKPOINT_EVERY
from .defenses import DEFENSES
from .device import check_compile_mode, resolve_device
from .errors import PoisonbenchError
from .models import MODELS
from .recipes import Recipe, default_recipe, resolve_recipe
from .scenarios import scenario_for
from .scenarios.targeted import Targeted
from .targets import check_setup_index

# The most trials one `defend` call (or one grid's `trials`) may ask for. Every trial is a full training run and
# `defend` resolves all of them (their plans and run ids) before the first trains, so a mistyped count such as
# `--trials 1000000000` must be refused up front rather than fill the memory; the paper uses 5.
MAX_TRIALS = 1000


class Reporter(Protocol):
    """Progress display the runner drives (the CLI passes a rich one; None is silent)."""

    def start(self, description: str, epochs: int) -> None: ...
    def batch(self, epoch: int, step: int, steps: int) -> None: ...
    def epoch(self, epoch: int, row: dict) -> None: ...
    def stop(self) -> None: ...


@dataclass
class DefendSpec:
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    download: bool = False
    npz_split: tuple[float, float] | None = None  # an .npz's val / test fractions (None: 0.02 / 0.18)
    model: str | None = None  # None: the dataset family's default (paper Table I)
    recipe: str | None = None  # None: `recipes.default_recipe` (forest's for targeted runs on the MNIST family)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    scenario: str | None = None  # None: inferred from the poison options (poisonbench.scenarios.scenario_for)
    poison_ratio: float = 0.0  # ρ of Table II: fraction of the train split poisoned by the untargeted mix
    attacks: list[str] | None = None  # None: the paper's four (PGD, DAP, DURP, DeepConfuse)
    poison_sets: dict[str, str] | None = None  # attack -> existing PoisonSet to use instead of the default one
    poison_set: str | None = None  # train on exactly this PoisonSet (all its rows) instead of the mix
    attack: str | None = None  # a targeted attack (Table III): each trial crafts (or reuses) its own PoisonSet
    attack_params: dict[str, Any] = field(default_factory=dict)  # that attack's options (its defaults otherwise)
    eps: float | None = None  # targeted: ε (None: the attack's default, 16/255)
    budget: float | None = None  # targeted: fraction of the train split poisoned (None: the attack's, 1 %)
    target: int | None = None  # targeted: the target test image (None: drawn per trial from the seed)
    intended: int | None = None  # targeted: the class it should be taken for (None: drawn per trial)
    setup: str | None = None  # targeted: a setup file (the benchmark's setup schema); trial t takes setup i + t
    setup_index: int = 0
    method: str = "none"
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    same_init: bool = False  # the victim starts from the attacker model's initialisation and seed (forest's
    # --retrain_from_init); recorded as config.same_init, reported apart
    threat: str | None = None  # transfer only: gray (the default: the attacker's own extractor) | white (the victim's)
    head_bn: str | None = None  # transfer only: the frozen extractor's BatchNorm while the head trains: train (the
    # default, HINT's code) | eval
    trials: int = 1
    trial: int | None = None  # run only this trial (a sweep's unit of work) instead of 0..trials-1
    device: str = "auto"
    compile: str = "auto"
    accel: str = "auto"  # the CPU kernels' switch (poisonbench.accel); execution only, recorded in env
    results: str | None = None
    force: bool = False
    checkpoint_every: float = CHECKPOINT_EVERY  # seconds between epoch checkpoints (0: after every epoch)


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
    """Checks that need no data: fail before anything is loaded or written."""
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
    if not 0.0 <= spec.poison_ratio <= 1.0:
        raise PoisonbenchError(f"poison ratio must be in [0, 1], got {spec.poison_ratio}")
    if spec.model is not None:
        MODELS.get(spec.model)
    DEFENSES.get(spec.method)
    check_setup_index(spec.setup, spec.setup_index)  # every scenario: --setup-index without --setup is refused
    scenario = scenario_for(spec)
    scenario.validate(spec)
    if spec.same_init:
        scenario.check_same_init(spec)
    check_transfer_options(spec, scenario)
    if not isinstance(scenario, Targeted):
        targeted_only = [flag for flag, value in (("--attack", spec.attack), ("--target", spec.target),
                                                  ("--intended", spec.intended), ("--setup", spec.setup),
                                                  ("--eps", spec.eps), ("--budget", spec.budget)) if value is not None]
        if targeted_only:
            raise PoisonbenchError(f"{targeted_only[0]} belongs to the targeted scenarios (scratch, transfer); "
                                   f"scenario {scenario.name!r} takes none")
    check_compile_mode(spec.compile)
    check_accel_mode(spec.accel)
    if not spec.checkpoint_every >= 0:
        raise PoisonbenchError(f"--checkpoint-every must be >= 0 seconds, got {spec.checkpoint_every}")
    epochs = spec.recipe_overrides.get("epochs")
    if epochs is not None and epochs <= 0:
        raise PoisonbenchError(f"epochs must be a positive integer, got {epochs}")
    resolve_device(spec.device)
