"""The one training engine (docs/engine.md, "The training engine"). Every defense plugs in through hooks; nothing here
knows any specific defense.

Fast by construction: the train set lives on the device as one float tensor; batches are slices of a seeded
index permutation; augmentation is whole-batch tensor ops; the model may be `torch.compile`d with static
shapes (dynamic=False: two training graphs, full and last batch, plus one eval-mode graph per evaluation
chunk shape). All randomness (init, order, augmentation)
comes from the seed, so the same seed gives the same numbers on the same device. With a `Checkpoint`, the
state after an epoch is saved from time to time and a killed run resumes from it with the same numbers
(`resume`, `checkpoints`); a SIGTERM lets the epoch in progress finish and saves it (`termination`).

The loop reads top to bottom in `train`: set-up, resume, the defense's `prepare`, then per epoch `EpochStep`
(the SGD pass with the defense's hooks), evaluation, a periodic checkpoint, and the SIGTERM check.

`precision` (`PRECISIONS`): fp32 (the default, the paper's) or bf16, mixed precision: the SGD step's forward and
loss run under `torch.autocast` in bfloat16 (weights, gradients and the optimizer stay float32; no loss scaling:
bfloat16 has float32's exponent range). It changes the numbers beyond float rounding, so it is part of the run's
identity (`config.precision`, absent for fp32). Evaluation (`predict`, `accuracy`) stays float32 under either: the
metrics measure the trained weights, not the arithmetic they were trained with.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import compile_static, configure_device, should_compile
from ..core.errors import PoisonbenchError, unknown_choice
from ..core.hashing import derived_seed
from . import augment, termination
from .checkpoints import Checkpoint
from .chunking import chunk_rows
from .hooks import PRETRAIN_STREAM, Defense, HookClock, TrainContext, set_train_mode, sync
from .kernels import training_kernels
from .recipes import Recipe
from .resume import Resume

# `--precision`: the autocast dtype of the SGD step's forward and loss (None: no autocast at all, plain float32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def check_precision(precision: str) -> None:
    """`defend`'s check of `--precision` (`experiment.checks.validate`, before anything loads or is written)."""
    if precision not in PRECISIONS:
        raise unknown_choice("precision", precision, PRECISIONS)


def step_autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context the SGD step's forward and loss run in: `torch.autocast` for a reduced precision,
    `contextlib.nullcontext` for fp32, so fp32 runs exactly the code it ran before the option existed."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


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
    """SGD over the trainable parameters (frozen ones stay out) and the recipe's step decay."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=recipe.lr_decay)
    return opt, sched


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
    accel: str = "auto",
    precision: str = "fp32",
    deterministic: str | None = None,
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    eval_every: int = 0,
    on_batch: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoint: Checkpoint | None = None,
    model_factory: Callable[[int], nn.Module] | None = None,
) -> TrainResult:
    """Train `model` in place on float tensors already on `device`.

    `on_batch(epoch, step, steps)` and `on_epoch(epoch, row)` feed a progress display. `eval_sets` are
    evaluated every `eval_every` epochs (0: only after the last epoch) and land in the history.
    `checkpoint`: resume from it if it holds a matching state, and save to it after an epoch when
    `checkpoint.every` seconds have passed since the last save (the caller removes it once the result is safe).
    After `termination.install()`, a SIGTERM ends the epoch in progress, saves it to `checkpoint` (if any, and unless
    it was the last epoch: then training just finishes) and raises `termination.Terminated`.
    `accel` (auto | off): the CPU kernels' switch (poisonbench.engine.kernels), also the current mode for the frozen
    copies the hooks make; `ctx.accel` tells the defense.
    `precision` (fp32 | bf16, `PRECISIONS`): the SGD step's arithmetic (module docstring); `ctx.precision` tells
    the defense, and `train_fresh` trains with it. `deterministic` (on | off | None: as the process is configured):
    CUDA's algorithm choice (`core.device.configure_device`).
    `model_factory(seed)` builds a fresh model of the run's kind, for defenses that train one first.
    Modules whose parameters are all frozen stay out of the optimizer and in eval mode (a pre-trained extractor;
    in train mode where the model's `frozen_bn` is "train": `defend --head-bn train`).
    """
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    autocast = step_autocast(device, precision)  # a library caller's unknown precision: a KeyError, up front
    defense = defense or Defense("none", recipe)
    # channels_last for the convolutions while training (same math, other summation order): on this CPU eager
    # ConvNet training went from about 1,250 to 1,650 img/s (compiled: within noise); the weights are returned
    # in the default layout (safetensors stores contiguous tensors only).
    configure_device(device, deterministic)
    set_train_mode(model.to(device, memory_format=torch.channels_last))
    # accel auto, on the CPU: a small-patch convolution's BatchNorm takes its batch statistics from the input's
    # patch moments (the ConvNet's stem) and 5×5 convolutions on small maps train as DFT-domain products; both
    # exact up to float rounding, sharing the parameters; the caller gets its own modules back
    # a defense that computes the gradient itself (`Defense.gradient`: DP-SGD's per-example gradients through
    # torch.func) trains the plain modules: the CPU kernels compute batch statistics inside fused layers
    kernels = training_kernels(model, train_x[:1], "off" if defense.overrides_hook("gradient") else accel)
    try:
        generator = torch.Generator(device=device).manual_seed(seed)
        optimizer, scheduler = make_optimizer(model, recipe)
        compiled = should_compile(compile, len(train_y), recipe.epochs)
        forward = compile_static(model) if compiled else model
        ctx = TrainContext(model, optimizer, recipe, device, generator, train_x, train_y, val_x, val_y,
                           num_classes, seed, forward=forward, model_factory=model_factory, accel=accel,
                           precision=precision)
        history: list[dict] = []
        resume = Resume(checkpoint, ctx, defense, scheduler, history, wall_start, cpu_start)
        saved = resume.load(compiled, kernels.identity)
        ctx.resuming = saved is not None  # a filter need not decide again: its decision comes back with the state
        with ctx.timed("defense_prepare"):
            kept = defense.prepare(ctx)
        if kept is not None:
            ctx.active = kept.to(device)
        start_epoch = resume.restore(saved)
        one_epoch = EpochStep(ctx, defense, scheduler, compiled, on_batch, autocast)

        with termination.deferred():  # a SIGTERM now stops after the epoch in progress (`termination`)
            for epoch in range(start_epoch, recipe.epochs):
                row = one_epoch(epoch)
                refuse_non_finite(row)  # before the epoch's checkpoint: a diverged state is never saved
                last = epoch + 1 == recipe.epochs
                if eval_sets and (last or (eval_every and (epoch + 1) % eval_every == 0)):
                    with ctx.timed("eval"):
                        for name, (ex, ey) in eval_sets.items():
                            row[f"{name}_acc"] = accuracy(forward, ex, ey)
                history.append(row)
                resume.after_epoch(epoch + 1, last)
                if on_epoch:
                    on_epoch(epoch, row)
                if termination.requested() and not last:  # SIGTERM (after the periodic save: once per epoch)
                    raise termination.Terminated(resume.stop(epoch + 1, recipe.epochs))
        model.to(memory_format=torch.contiguous_format)
        return TrainResult(history=history, cost=ctx.cost, compiled=compiled, context=ctx, resumed_from=start_epoch,
                           prior_seconds=resume.prior_seconds, prior_cpu_seconds=resume.prior_cpu)
    finally:
        kernels.restore()


class EpochStep:
    """One epoch of SGD over the rows in use, with the defense's epoch and per-batch hooks; returns its history row
    (epoch, lr, train loss and accuracy) and adds its seconds to `ctx.cost` (`train`; `defense_batch`, the per-batch
    hooks' own share, Table V). `autocast()` (`step_autocast`) is the context of each step's forward and loss; the
    hooks run outside it, in float32. A defense that overrides `gradient` computes the step's loss, logits and
    `.grad` itself (given `autocast` for its forward passes); all others take the plain step, unchanged."""

    def __init__(self, ctx: TrainContext, defense: Defense, scheduler, compiled: bool,
                 on_batch: Callable[[int, int, int], None] | None,
                 autocast: Callable[[], contextlib.AbstractContextManager]):
        self.ctx, self.defense, self.scheduler = ctx, defense, scheduler
        self.compiled, self.on_batch = compiled, on_batch
        self.hook_clock = HookClock(ctx.device)
        self.raw_hook, self.batch_hook = defense.overrides_hook("batch_raw"), defense.overrides_hook("batch")
        self.gradient_hook = defense.overrides_hook("gradient")  # the defense computes the step's gradient
        self.batches_hook = defense.overrides_hook("epoch_batches")  # the defense draws the epoch's batches
        self.autocast = autocast  # step_autocast: the forward and loss's context (fp32: a nullcontext)

    def __call__(self, epoch: int) -> dict:
        ctx, defense, recipe, device = self.ctx, self.defense, self.ctx.recipe, self.ctx.device
        model, optimizer, generator, forward = ctx.model, ctx.optimizer, ctx.generator, ctx.forward
        ctx.epoch = epoch
        with ctx.timed("defense_epoch"):
            defense.on_epoch_start(ctx, epoch)
        sync(device)
        start = time.perf_counter()
        n = len(ctx.train_y) if ctx.active is None else len(ctx.active)
        order = torch.randperm(n, device=device, generator=generator)
        if ctx.active is not None:
            order = ctx.active[order]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        batches = None
        if self.batches_hook:
            with self.hook_clock.timing():
                batches = defense.epoch_batches(ctx, epoch)
        if batches is None:  # the shuffled partition
            batches = [order[start:start + recipe.batch_size] for start in range(0, n, recipe.batch_size)]
        steps = len(batches)
        set_train_mode(model)
        for step, idx in enumerate(batches):
            x, y = ctx.train_x[idx], ctx.train_y[idx]
            if self.raw_hook:
                with self.hook_clock.timing():
                    x, y = defense.batch_raw(ctx, x, y, idx)
            x = augment.apply(recipe.augment, x, generator)
            if self.batch_hook:
                with self.hook_clock.timing():
                    x, y = defense.batch(ctx, x, y, idx)
            if self.gradient_hook:
                optimizer.zero_grad(set_to_none=True)
                with self.hook_clock.timing():
                    loss, logits = defense.gradient(ctx, x, y, self.autocast)
            else:
                with self.autocast():
                    logits = (forward if compiles_size(self.compiled, len(y), recipe.batch_size, len(ctx.train_y))
                              else model)(x)
                    loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            if self.on_batch:
                self.on_batch(epoch, step + 1, steps)
        seen = max(1, sum(len(idx) for idx in batches))  # n, but for a defense's own batches (Poisson samples)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}
        self.scheduler.step()
        sync(device)
        ctx.cost["train"] = ctx.cost.get("train", 0.0) + time.perf_counter() - start
        # part of `train`; the defense's cost (Table V)
        if self.raw_hook or self.batch_hook or self.gradient_hook or self.batches_hook:
            ctx.cost["defense_batch"] = ctx.cost.get("defense_batch", 0.0) + self.hook_clock.collect()
        return row


class TrainingDiverged(PoisonbenchError):
    """An epoch's mean train loss came out NaN or infinite: its weights are not finite from then on."""


def refuse_non_finite(row: dict) -> None:
    """Raise `TrainingDiverged` when the epoch's mean train loss (`EpochStep`'s row) is not finite.

    A model whose weights went NaN still "predicts" (the argmax of NaN logits: class 0), so without this check it
    would be saved, cached and evaluated as a model at chance accuracy, and an attack crafted on it, or a defense's
    row measured with it, would look like a result. The loss is already on the host (the row's one sync per epoch),
    so the check costs nothing per batch. A cause seen in practice (2026-12-02, torch 2.14.1, gcc 12.2, an AMD
    EPYC with AVX-512 told to dispatch as AVX2): `torch.compile`'s C++ kernels built for AVX2 under gcc's
    `-march=native` trained to NaN within the first epoch, and `TORCHINDUCTOR_CPP_MARCH=x86-64-v3` fixed it
    (docs/install.md, "Another CPU kind")."""
    loss = row["train_loss"]
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: epoch {row['epoch']}'s mean train loss is {loss} (lr {row['lr']:g}), so the weights "
            "are not finite; nothing of this epoch is saved. A compiled model on a CPU told to dispatch below its own "
            "instruction set (ATEN_CPU_CAPABILITY) needs TORCHINDUCTOR_CPP_MARCH to match it (docs/install.md, "
            "'Another CPU kind'); else lower the learning rate, or train with --compile off to rule out compiled "
            "kernels")


def train_fresh(ctx: TrainContext, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                recipe: Recipe | None = None, seed: int | None = None) -> nn.Module:
    """A fresh model of the run's architecture trained by this engine (no defense) on `x, y` (default: the train
    rows in use), returned in eval mode with frozen parameters: the trained features a filter needs (Deep k-NN from
    scratch). Its seed is derived from the run's (`PRETRAIN_STREAM`), so it is reproducible and differs from the
    run's own model. It trains in the run's precision: it is part of the run's training (and of its cost)."""
    if ctx.model_factory is None:
        raise RuntimeError("train_fresh needs the engine's model_factory (train(..., model_factory=...))")
    if x is None:
        rows = ctx.active
        x, y = (ctx.train_x, ctx.train_y) if rows is None else (ctx.train_x[rows], ctx.train_y[rows])
    seed = derived_seed(ctx.seed, PRETRAIN_STREAM) if seed is None else seed
    model = ctx.model_factory(seed)
    train(model, x, y, ctx.val_x, ctx.val_y, recipe or ctx.recipe, seed=seed, device=ctx.device,
          num_classes=ctx.num_classes, accel=ctx.accel, precision=ctx.precision)
    return model.eval().requires_grad_(False)


def compiles_size(compiled: bool, size: int, batch_size: int, rows: int) -> bool:
    """Whether a batch of `size` rows goes through the compiled forward: the full batch and the last batch of all
    `rows` only. A defense that trains on fewer rows (a filter, EPIC's drops) makes other last-batch sizes, which
    run eagerly instead of recompiling the static-shape graph at every drop (the same function up to float
    rounding); the rule depends on nothing but these numbers, so a resumed run makes the same choices."""
    return compiled and size in (batch_size, rows % batch_size or batch_size)
