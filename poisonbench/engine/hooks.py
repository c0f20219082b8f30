"""The engine's contract with the defenses (docs/engine.md "Defense hooks"): the `Defense` interface, the
`TrainContext` its hooks see, and how their cost is counted. Defenses import this module; it imports no defense and
not the training loop (`training.train_fresh` trains a model first for a defense that needs one).

A defense implements only the hooks it needs. In the order the engine (`engine/training.py`) calls them:

    prepare(ctx)                    before training; a filtering defense returns the train rows to keep
    on_epoch_start(ctx, epoch)      before each epoch (HINT's noise updates, EPIC's drops, FRIENDS' noise)
    batch_raw(ctx, x, y, idx)       per batch, before augmentation (FRIENDS' Bernoulli noise)
    batch(ctx, x, y, idx)           per batch, after augmentation (ATDA's adversarial examples)
    gradient(ctx, x, y, autocast)   per batch, in place of the plain step's forward and backward: returns
                                    (loss, logits) and leaves `.grad` on the trainable parameters (DP-SGD's
                                    clipped, noised per-example gradients); the optimizer then steps as usual
    state(ctx) / load_state(...)    what the defense carries between epochs, for checkpoints
    summary(poisoned)               figures for the record: sees the ground-truth poison mask, for statistics

The seconds spent in a defense's own hooks, per-batch ones included, are its cost (Table V). The hooks that
decide (all but `summary`) never see which rows are poisoned: `TrainContext` does not hold that mask. The one
exception is explicit and is no defense: a class that sets `sees_poison_mask` (the oracle, an upper bound that
removes exactly the poisons, `defenses/oracle.py`) is handed the mask once before training, through
`receive_poison_mask`, by the run executor (`hand_poison_mask`, called by `experiment/one_run.py`); no other class
may set it (tests/test_oracle.py keeps an allow-list), and the reports never rank such a method. The per-batch
hooks never make the host wait for the device (docs/engine.md, "No host sync per batch"; tests/test_host_sync.py).

The context gives the model and the forward the engine trains with (compiled or not), an eval-mode view of that
forward (defenses that attack the model mid-training, ATDA), the (poisoned) train tensors, the clean val split,
the recipe, the model factory (`training.train_fresh` builds a fresh model with it: filters that need trained
features, Deep k-NN), and a place to record cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import PoisonbenchError
from ..core.params import Param, resolve
from .recipes import Recipe
from .threat import Threat

PRETRAIN_STREAM = "defense-pretrain"  # the seed of `training.train_fresh`'s model: derived_seed(run seed, this)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, except modules whose parameters are all frozen (a pre-trained feature extractor in transfer
    learning), which stay in eval mode, their BatchNorm statistics fixed while the head trains; unless the model's
    `frozen_bn` is "train" (`defend --head-bn train`, HINT's code: the frozen extractor runs in train mode, its
    BatchNorm normalising with batch statistics and updating its running statistics)."""
    model.train()
    if getattr(model, "frozen_bn", "eval") == "train":
        return model
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    return model


class HookClock:
    """Seconds spent in per-batch defense hooks. On CUDA, start/end events are recorded around each call and read
    once per epoch (`collect`), so timing adds no synchronisation per batch; on the CPU, wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((start, end))
        else:
            began = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - began

    def collect(self) -> float:
        """The seconds since the last `collect` (synchronises CUDA once)."""
        if self.events:
            self.events[-1][1].synchronize()  # the last end event: every earlier one has completed too
            self.seconds += sum(start.elapsed_time(end) for start, end in self.events) / 1000
            self.events.clear()
        seconds, self.seconds = self.seconds, 0.0
        return seconds


@dataclass
class TrainContext:
    """What the hooks see. A defense may replace rows of `train_x` (HINT's healthy noise) or restrict training to
    `active` rows (a filter's `prepare`, EPIC's drops)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    device: torch.device
    generator: torch.Generator
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    seed: int
    epoch: int = 0
    active: torch.Tensor | None = None  # indices of train examples in use (None: all)
    cost: dict[str, float] = field(default_factory=dict)
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # what the engine trains with (maybe compiled)
    model_factory: Callable[[int], nn.Module] | None = None  # seed -> a fresh untrained model of the run's kind
    accel: str = "auto"  # the CPU-kernel switch of the run (poisonbench.engine.kernels)
    precision: str = "fp32"  # the SGD step's arithmetic (training.PRECISIONS): fp32 | bf16 (autocast)
    resuming: bool = False  # `prepare` runs before an epoch checkpoint's state is put back (`load_state`)

    @contextmanager
    def timed(self, stage: str):
        """Adds the wall seconds of the block to `cost[stage]` (synchronising CUDA for honest timings)."""
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.cost[stage] = self.cost.get(stage, 0.0) + time.perf_counter() - start

    @property
    def features_frozen(self) -> bool:
        """Whether the model's feature extractor is frozen (transfer learning: a pre-trained extractor, clean, that
        only the head trains on): its `features` are then the scenario's clean extractor."""
        head = {id(p) for p in getattr(self.model, "head", nn.Identity()).parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in head]
        return bool(rest) and not any(p.requires_grad for p in rest)

    def rows_in_use(self) -> torch.Tensor:
        """The indices of the train rows in use (all of them when no defense restricted `active`)."""
        return torch.arange(len(self.train_y), device=self.device) if self.active is None else self.active

    @contextmanager
    def eval_mode(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """The training forward (compiled when the engine compiles) with the model in eval mode, e.g. to craft
        adversarial examples against the current model; training mode (frozen modules in eval) is restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield self.forward if self.forward is not None else self.model
        finally:
            if was_training:
                set_train_mode(self.model)

    @contextmanager
    def eval_forward(self, sample: torch.Tensor) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """The current model's eval-mode forward for input gradients (ATDA's adversarial examples, FRIENDS's noise):
        the compiled forward of `eval_mode` when the engine compiles on a GPU, else a frozen copy with the CPU
        input-gradient kernels and BatchNorm folded (`kernels.inference_copy` in the run's accel mode, as HINT's and
        EPIC's input gradients use); `sample` is one batch of inputs of the right shape. The same function up to
        float rounding; measured on this CPU (MNIST ConvNet, batch 128, 10 PGD steps): 0.70 s with the copy,
        1.43 s eager, 1.49 s compiled."""
        from .kernels import inference_copy

        compiled = self.forward is not None and self.forward is not self.model
        if compiled and self.device.type != "cpu":
            with self.eval_mode() as forward:
                yield forward
        else:
            yield inference_copy(self.model, sample[:1], self.accel)


class Defense:
    """Base class; the default hooks do nothing, so `Defense` itself is plain training (`--method none`).

    Subclasses declare their options as `PARAMS` (poisonbench.core.params; defaults may depend on the dataset family and
    the recipe, e.g. a schedule scaled to the epochs) and, for defaults that depend on the attack faced (ATDA's β,
    the filters' k), `threat_defaults`. The resolved parameters are part of the run id.
    """

    name: ClassVar[str] = "none"
    summary_text: ClassVar[str] = "plain training, no defense"
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    # the contract's one exception (module docstring): an upper bound, not a defense, handed the poison mask before
    # training (`receive_poison_mask`); the reports label it so and leave it out of every "best" (report/tables)
    sees_poison_mask: ClassVar[bool] = False
    # the optional packages the defense imports when it trains (keys of core/optional.py OPTIONAL_PACKAGES): `defend`
    # checks them before it loads or writes anything, so a missing one is the one-line error naming it
    requires: ClassVar[tuple[str, ...]] = ()
    # whether the defense needs each example's gradient to be its own (DP-SGD's clipping): no BatchNorm may train in
    # batch mode, so `defend` gives it the family's BatchNorm-free model by default, refuses a BatchNorm one, and
    # keeps a transfer victim's frozen BatchNorm in eval mode (experiment/victims.py)
    per_example: ClassVar[bool] = False

    def __init__(self, family: str, recipe: Recipe, threat: Threat | None = None, **params: Any):
        self.family, self.recipe, self.threat = family, recipe, threat or Threat()
        given = {k: v for k, v in params.items() if v is not None}
        merged = {**self.threat_defaults(family, recipe, self.threat), **given}
        self.params, _ = resolve(self.PARAMS, merged, family, recipe, "method", self.name)
        self.explicit = frozenset(given)
        self.validate()

    @classmethod
    def threat_defaults(cls, family: str, recipe: Recipe, threat: Threat) -> dict[str, Any]:
        """Defaults that depend on the attack faced (they replace the `PARAMS` defaults; given values win)."""
        return {}

    @classmethod
    def defaults(cls, family: str, recipe: Recipe, threat: Threat | None = None) -> dict[str, Any]:
        """Every parameter's default for `family`, `recipe` and `threat` (as a run's config would hold them)."""
        merged = cls.threat_defaults(family, recipe, threat or Threat())
        return resolve(cls.PARAMS, merged, family, recipe, "method", cls.name)[0]

    @classmethod
    def overrides_hook(cls, hook: str) -> bool:
        """Whether this defense implements `hook` (the engine times and calls per-batch hooks only then)."""
        return getattr(cls, hook) is not getattr(Defense, hook)

    def validate(self) -> None:
        """Raise PoisonbenchError for parameter combinations out of range (single bounds are in `PARAMS`)."""

    def config(self) -> dict:
        """Everything that identifies this defense in a run id (name and resolved parameters)."""
        return {"method": self.name, **self.params}

    def prepare(self, ctx: TrainContext) -> torch.Tensor | None:
        """Before training. A filtering defense returns the indices of training examples to keep."""
        return None

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        """Before each epoch (0-based): e.g. HINT's noise updates, EPIC's drops."""

    def epoch_batches(self, ctx: TrainContext, epoch: int) -> list[torch.Tensor] | None:
        """The epoch's batches as row indices into `ctx.train_x`, in place of the engine's shuffled partition of the
        rows in use (DP-SGD's Poisson sampling: a batch may then be empty); None keeps the engine's. Called only
        where a defense overrides it, after the engine has drawn its own order (its stream, hence augmentation,
        advances as in every other run)."""
        return None

    def batch_raw(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Per-batch transform of the inputs before augmentation (train rows `idx`); returns (x, y)."""
        return x, y

    def batch(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """Per-batch transform of the (augmented) inputs and labels; returns (x, y)."""
        return x, y

    def gradient(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor,
                 autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per batch, the step's gradient: returns (mean loss, logits) of the batch and leaves `.grad` set on every
        trainable parameter (the engine has zeroed them; its optimizer steps next). The engine calls it only where
        a defense overrides it (`overrides_hook`), and then trains the plain modules (no CPU training kernels,
        no compiled forward); everything else takes the plain step. `autocast()` is the step's precision
        context (`training.step_autocast`). This default is the plain step itself: cross-entropy of the
        model's output, backward."""
        with autocast():
            logits = ctx.model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        return loss, logits

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """What the defense carries from one epoch to the next, as (tensors, JSON-able dict), for an epoch
        checkpoint (poisonbench/engine/checkpoints.py). A defense with such state must return it here and put it back in
        `load_state`, or a resumed run would differ from an uninterrupted one (tests/test_checkpoints.py checks
        every registered defense)."""
        return {}, {}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Restore `state(ctx)` into a freshly prepared defense (called after `prepare`, before the next epoch)."""

    def receive_poison_mask(self, poisoned: torch.Tensor) -> None:
        """Only for a class that sets `sees_poison_mask`: the ground-truth mask over the train rows the run trains
        on, handed over once before training (`hand_poison_mask`). A defense never gets it."""
        raise TypeError(f"method {self.name!r} does not set sees_poison_mask: it never sees the poison mask")

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        """Defense-specific figures for the run record (e.g. the noise actually applied). `poisoned` is the
        ground-truth mask over the train rows (None for clean training), for statistics only."""
        return {}


def hand_poison_mask(defense: Defense, poisoned: torch.Tensor | None) -> None:
    """The one place the poison mask reaches a method before training: `defense` gets `poisoned` (bool over the
    train rows it trains on) only when its class sets `sees_poison_mask` (the oracle); every other defense gets
    nothing. A method that sees the mask needs one: a clean run (`poisoned` None) is refused."""
    if not type(defense).sees_poison_mask:
        return
    if poisoned is None:
        raise PoisonbenchError(f"method {defense.name!r} removes the poisoned rows, and this run has none")
    defense.receive_poison_mask(poisoned)
