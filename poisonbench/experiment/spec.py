"""What one `defend` call asks for (`DefendSpec`) and the progress display it drives (`Reporter`): plain data, no
checks (those are `checks.validate`'s) and no imports of the scenarios that read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine.checkpoints import CHECKPOINT_EVERY

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


def epoch_text(description: str, epoch: int, epochs: int, row: dict) -> str:
    """A finished epoch as every reporter shows it: `DESCRIPTION · epoch 2/5 · loss 0.123 · train acc 0.950`."""
    text = f"{description} · epoch {epoch + 1}/{epochs} · loss {row['train_loss']:.3f}"
    text += f" · train acc {row['train_acc']:.3f}"
    if "test_acc" in row:
        text += f" · test acc {row['test_acc']:.3f}"
    return text


@dataclass
class DefendSpec:
    """What one `defend` call asks for, in the parts of its option table (poisonbench.experiment.options.PARTS);
    built by `options.spec_from_values` (the CLI, the sweeps) or directly by a library caller."""

    # training: the victim and how it trains
    dataset: str = "mnist-5k"
    npz_split: tuple[float, float] | None = None  # an .npz's val / test fractions (None: 0.02 / 0.18)
    model: str | None = None  # None: the dataset family's default (paper Table I)
    recipe: str | None = None  # None: `recipes.default_recipe` (forest's for targeted runs on the MNIST family)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    same_init: bool = False  # the victim starts from the attacker model's initialisation and seed (forest's
    # --retrain_from_init); recorded as config.same_init, reported apart
    head_bn: str | None = None  # transfer only: the frozen extractor's BatchNorm while the head trains: train (the
    # default, HINT's code) | eval
    precision: str = "fp32"  # the SGD step's arithmetic (engine.training.PRECISIONS): fp32 | bf16 (autocast); in the
    # run id as config.precision, only when not fp32

    # threat: what is poisoned (the scenario decides which of these apply, and checks them)
    scenario: str | None = None  # None: inferred from the poison options (experiment.scenarios.scenario_for)
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
    threat: str | None = None  # transfer only: gray (the default: the attacker's own extractor) | white (the victim's)

    # defense
    method: str = "none"
    method_params: dict[str, Any] = field(default_factory=dict)

    # trials
    seed: int = 0
    trials: int = 1
    trial: int | None = None  # run only this trial (a sweep's unit of work) instead of 0..trials-1

    # execution: where and how it runs; none of it is in the run id
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    compile: str = "auto"
    accel: str = "auto"  # the CPU kernels' switch (poisonbench.engine.kernels); execution only, recorded in env
    deterministic: str = "on"  # CUDA's deterministic algorithms (core.device.configure_device); execution only,
    # recorded in env
    results: str | None = None
    force: bool = False
    checkpoint_every: float = CHECKPOINT_EVERY  # seconds between epoch checkpoints (0: after every epoch)
