"""The one training engine (design.md §1, §8). Every defense plugs in through hooks; nothing here knows any
specific defense.

Fast by construction: the train set lives on the device as one float tensor; batches are slices of a seeded
index permutation; augmentation is whole-batch tensor ops; the model may be `torch.compile`d with static
shapes (dynamic=False: two training graphs, full and last batch, plus one eval-mode graph per evaluation
chunk shape). All randomness (init, order, augmentation)
comes from the seed, so the same seed gives the same numbers on the same device. With a `Checkpoint`, the
state after an epoch is saved from time to time and a killed run resumes from it with the same numbers
(poisonbench/checkpoints.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import augment
from .checkpoints import (
    Checkpoint,
    execution_identity,
    join_optimizer_state,
    split_optimizer_state,
    split_prefixed,
)
from .defenses.base import Defense
from .errors import PoisonbenchError
from .input_grad import chunk_rows
from .moment_bn import moment_names, restore_modules, swap_moment_batchnorm
from .recipes import Recipe
from .spectral import restore_convs, swap_spectral, swapped_names

# `compile="auto"`: compile only when epochs × n is at least this many images. Measured on the 2-core CPU: a
# 30-epoch mnist-5k run (117,000 images) took 147 CPU-seconds compiled (compile included) vs 205 eager.
COMPILE_MIN_IMAGES = 100_000


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` → first CUDA device if present, else CPU; `cpu`; `cuda` / `cuda:N` (always with its index).
    Only resolves: the engine and the crafting entry point configure the device (`configure_device`)."""
    from .errors import PoisonbenchError

    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise PoisonbenchError(f"device {spec!r} requested but CUDA is not available; valid choices: auto, cpu")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise PoisonbenchError(f"device {spec!r} does not exist; {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise PoisonbenchError(f"unknown device {spec!r}; valid choices: auto, cpu, cuda, cuda:N")


def configure_device(device: torch.device) -> torch.device:
    """Make CUDA runs reproducible, as the CPU's are (untested here: no GPU). cuDNN's autotuned convolution
    backward and cuBLAS's split-K sum in a run-dependent order, so pin deterministic algorithms (`warn_only`:
    an op without a deterministic CUDA kernel, e.g. `grid_sample`'s or `upsample_bilinear2d`'s backward, warns
    instead of failing), a fixed cuBLAS workspace and Inductor without autotuning. Make `device` the current CUDA
    device, so nothing lands on GPU 0 by default. Called by the engine and the crafting entry point, so library
    callers get it too. TF32 convolutions stay at torch's default (on, as in the official code); the record's
    `env.cudnn_tf32` says so."""
    if device.type != "cuda":
        return device
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    import torch._inductor.config as inductor_config

    inductor_config.deterministic = True
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N×C×H×W → float32 in [0, 1] on `device` (floats are moved as they are)."""
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@dataclass
class TrainContext:
    """What the hooks see: the model, the (poisoned) train tensors, the clean val split, the recipe, and a
    place to record cost. A defense may replace rows of `train_x` (e.g. HINT's healthy noise)."""

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
    poisoned: torch.Tensor | None = None  # bool mask of poisoned train examples (for defense statistics only)
    cost: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str):
        """Adds the wall seconds of the block to `cost[stage]` (synchronising CUDA for honest timings)."""
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.cost[stage] = self.cost.get(stage, 0.0) + time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TrainResult:
    history: list[dict]  # one row per epoch: epoch, lr, train_loss, train_acc, <eval set>_acc when evaluated
    cost: dict[str, float]
    compiled: bool
    context: TrainContext
    resumed_from: int = 0  # epochs restored from a checkpoint (0: trained from the start)
    prior_seconds: float = 0.0  # wall seconds earlier, killed processes spent in train() up to that checkpoint
    prior_cpu_seconds: float | None = 0.0  # their process CPU seconds (None: a checkpoint that did not record them)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
    """Softmax probabilities for every row of `x` (model in eval mode; restores the previous mode).
    `batch_size` 0: up to 1000 rows, fewer on the CPU when activations would be large (`chunk_rows`)."""
    batch_size = batch_size or chunk_rows(model, x[:1], 1000)
    was_training = model.training
    model.eval()
    probs = torch.cat([F.softmax(model(x[i:i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return probs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()


def make_optimizer(model: nn.Module, recipe: Recipe):
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=recipe.lr_decay)
    return opt, sched


COMPILE_MODES = ("auto", "on", "off")


def should_compile(mode: str, n: int, epochs: int, minimum: int = COMPILE_MIN_IMAGES) -> bool:
    """`auto`: compile when the work (n rows × epochs or steps) reaches `minimum`, so compiling pays."""
    if mode == "auto":
        return n * epochs >= minimum
    return mode == "on"


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise PoisonbenchError(f"unknown compile mode {mode!r}; valid choices: {', '.join(COMPILE_MODES)}")


def compile_static(fn):
    """`torch.compile(fn, dynamic=False)`: static shapes, so callers keep every batch the same size.

    A CUDA build of torch on a GPU-less machine warns "No CUDA runtime is found" at every compile; noise for a
    CPU run, so it is silenced (real compile errors are raised, not logged).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(fn, dynamic=False)


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device,
    num_classes: int,
    defense: Defense | None = None,
    compile: str = "auto",
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    eval_every: int = 0,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    poisoned: torch.Tensor | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train `model` in place on float tensors already on `device`.

    `on_batch(epoch, step, steps)` and `on_epoch(epoch, row)` feed a progress display. `eval_sets` are
    evaluated every `eval_every` epochs (0: only after the last epoch) and land in the history.
    `checkpoint`: resume from it if it holds a matching state, and save to it after an epoch when
    `checkpoint.every` seconds have passed since the last save (the caller removes it once the result is safe).
    """
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    defense = defense or Defense("none", recipe)
    # channels_last for the convolutions while training (same math, other summation order): on this CPU eager
    # ConvNet training went from about 1,250 to 1,650 img/s (compiled: within noise); the weights are returned
    # in the default layout (safetensors stores contiguous tensors only).
    configure_device(device)
    model.to(device, memory_format=torch.channels_last).train()
    # on the CPU, a small-patch convolution's BatchNorm takes its batch statistics from the input's patch moments
    # (the ConvNet's stem; poisonbench.moment_bn) and 5×5 convolutions on small maps train as DFT-domain products
    # (poisonbench.spectral); both exact up to float rounding, sharing the parameters; the caller gets its
    # nn.Conv2d / nn.BatchNorm2d modules back
    moments = swap_moment_batchnorm(model, train_x[:1]) if device.type == "cpu" else []
    spectral = []
    try:
        if device.type == "cpu":
            spectral = swap_spectral(model, train_x[:1])
        generator = torch.Generator(device=device).manual_seed(seed)
        optimizer, scheduler = make_optimizer(model, recipe)
        ctx = TrainContext(model, optimizer, recipe, device, generator, train_x, train_y, val_x, val_y,
                           num_classes, seed, poisoned=poisoned)
        compiled = should_compile(compile, len(train_y), recipe.epochs)
        forward = compile_static(model) if compiled else model
        eval_sets = eval_sets or {}
        history: list[dict] = []

        with ctx.timed("defense_prepare"):
            kept = defense.prepare(ctx)
        if kept is not None:
            ctx.active = kept.to(device)
        start_epoch, prior_seconds, prior_cpu = 0, 0.0, 0.0
        if checkpoint is not None:
            # the layers trained as DFT-domain products or with moment BatchNorm: a checkpoint of the plain path is
            # not resumed on these (float rounding differs)
            checkpoint.identity.update(execution_identity(device), compiled=compiled,
                                       spectral=swapped_names(model), moment_bn=moment_names(model))
            saved = checkpoint.load()
            if saved is not None:
                start_epoch, prior_seconds, prior_cpu = _restore(*saved, ctx, scheduler, defense, history)
        last_save = time.perf_counter()

        for epoch in range(start_epoch, recipe.epochs):
            ctx.epoch = epoch
            with ctx.timed("defense_epoch"):
                defense.on_epoch_start(ctx, epoch)
            _sync(device)
            start = time.perf_counter()
            n = len(ctx.train_y) if ctx.active is None else len(ctx.active)
            order = torch.randperm(n, device=device, generator=generator)
            if ctx.active is not None:
                order = ctx.active[order]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            steps = (n + recipe.batch_size - 1) // recipe.batch_size
            model.train()
            for step in range(steps):
                idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                x = augment.apply(recipe.augment, ctx.train_x[idx], generator)
                y = ctx.train_y[idx]
                x, y = defense.batch(ctx, x, y, idx)
                logits = forward(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                if on_batch:
                    on_batch(epoch, step + 1, steps)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum.item() / n, "train_acc": correct.item() / n}
            scheduler.step()
            _sync(device)
            ctx.cost["train"] = ctx.cost.get("train", 0.0) + time.perf_counter() - start
            last = epoch + 1 == recipe.epochs
            if eval_sets and (last or (eval_every and (epoch + 1) % eval_every == 0)):
                with ctx.timed("eval"):
                    for name, (ex, ey) in eval_sets.items():
                        row[f"{name}_acc"] = accuracy(forward, ex, ey)
            history.append(row)
            if checkpoint is not None and not last and time.perf_counter() - last_save >= checkpoint.every:
                with ctx.timed("checkpoint"):
                    seconds = prior_seconds + time.perf_counter() - wall_start
                    cpu = None if prior_cpu is None else prior_cpu + time.process_time() - cpu_start
                    checkpoint.save(*_snapshot(ctx, defense, history, epoch + 1, seconds, cpu))
                last_save = time.perf_counter()
            if on_epoch:
                on_epoch(epoch, row)
        model.to(memory_format=torch.contiguous_format)
        return TrainResult(history=history, cost=ctx.cost, compiled=compiled, context=ctx, resumed_from=start_epoch,
                           prior_seconds=prior_seconds, prior_cpu_seconds=prior_cpu)
    finally:
        restore_convs(spectral)  # in the reverse order of the swaps
        restore_modules(moments)


def _snapshot(ctx: TrainContext, defense: Defense, history: list[dict], epochs_done: int, seconds: float,
              cpu_seconds: float | None):
    """(tensors, state) after `epochs_done` epochs: all that the remaining epochs depend on."""
    tensors = {f"model.{k}": v for k, v in ctx.model.state_dict().items()}
    opt_tensors, opt_state = split_optimizer_state(ctx.optimizer.state_dict())
    tensors.update({f"optimizer.{k}": v for k, v in opt_tensors.items()})
    tensors["generator"] = ctx.generator.get_state()
    if ctx.active is not None:
        tensors["active"] = ctx.active
    def_tensors, def_state = defense.state(ctx)
    tensors.update({f"defense.{k}": v for k, v in def_tensors.items()})
    state = {"epochs_done": epochs_done, "history": history, "cost": ctx.cost, "optimizer": opt_state,
             "defense": def_state, "seconds": seconds, "cpu_seconds": cpu_seconds}
    return tensors, state


def _restore(tensors: dict, state: dict, ctx: TrainContext, scheduler, defense: Defense,
             history: list[dict]) -> tuple[int, float, float | None]:
    """Put a `_snapshot` back; returns (epochs done, wall and CPU seconds spent before; CPU None if unknown)."""
    ctx.model.load_state_dict(split_prefixed(tensors, "model"))
    ctx.optimizer.load_state_dict(join_optimizer_state(split_prefixed(tensors, "optimizer"), state["optimizer"]))
    # MultiStepLR is chainable: the restored lr already carries past decays; it only needs its epoch counter
    scheduler.last_epoch = state["epochs_done"]
    ctx.generator.set_state(tensors["generator"])
    if "active" in tensors:
        ctx.active = tensors["active"].to(ctx.device)
    defense.load_state(ctx, split_prefixed(tensors, "defense"), state["defense"])
    history.extend(state["history"])
    for stage, seconds in state["cost"].items():
        ctx.cost[stage] = ctx.cost.get(stage, 0.0) + seconds
    return state["epochs_done"], state["seconds"], state.get("cpu_seconds")
