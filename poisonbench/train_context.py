"""What the engine's defense hooks see (docs/engine.md, "Defense hooks"): `TrainContext`, and how their cost is counted.

The context gives the model and the forward the engine trains with (compiled or not), an eval-mode view of that
forward (defenses that attack the model mid-training, ATDA), the (poisoned) train tensors, the clean val split,
the recipe, a helper that trains a fresh model first (filters that need trained features, Deep k-NN), and a place
to record cost. It never holds the ground-truth poison mask: only `Defense.summary` gets that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .hashing import derived_seed
from .recipes import Recipe

PRETRAIN_STREAM = "defense-pretrain"  # the seed of `TrainContext.train_model`'s model: derived_seed(run seed, this)


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
    accel: str = "auto"  # the CPU-kernel switch of the run (poisonbench.accel)
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
        input-gradient kernels and BatchNorm folded (`accel.inference_copy` in the run's accel mode, as HINT's and
        EPIC's input gradients use); `sample` is one batch of inputs of the right shape. The same function up to
        float rounding; measured on this CPU (MNIST ConvNet, batch 128, 10 PGD steps): 0.70 s with the copy,
        1.43 s eager, 1.49 s compiled."""
        from .accel import inference_copy

        compiled = self.forward is not None and self.forward is not self.model
        if compiled and self.device.type != "cpu":
            with self.eval_mode() as forward:
                yield forward
        else:
            yield inference_copy(self.model, sample[:1], self.accel)

    def train_model(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                    recipe: Recipe | None = None, seed: int | None = None) -> nn.Module:
        """A fresh model of the run's architecture trained by this engine (no defense) on `x, y` (default: the
        train rows in use), returned in eval mode with frozen parameters: the trained features a filter needs
        (Deep k-NN from scratch). Its seed is derived from the run's, so it is reproducible and differs from the
        run's own model."""
        from .training import train

        if self.model_factory is None:
            raise RuntimeError("TrainContext.train_model needs the engine's model_factory")
        if x is None:
            rows = self.active
            x, y = (self.train_x, self.train_y) if rows is None else (self.train_x[rows], self.train_y[rows])
        seed = derived_seed(self.seed, PRETRAIN_STREAM) if seed is None else seed
        model = self.model_factory(seed)
        train(model, x, y, self.val_x, self.val_y, recipe or self.recipe, seed=seed, device=self.device,
              num_classes=self.num_classes, accel=self.accel)
        return model.eval().requires_grad_(False)
