"""Resuming a killed training with the same numbers: what an epoch checkpoint holds (`snapshot`), putting it back
(`restore`), and when the loop saves one (`Resume`: every `checkpoint.every` seconds, and on SIGTERM).

The loop (`training.train`) calls `Resume.load` before the defense prepares, `Resume.restore` after, and
`Resume.after_epoch` / `Resume.stop` after each epoch; nothing else of it knows about checkpoints.
"""

from __future__ import annotations

import time

from .checkpoints import Checkpoint, execution_identity, join_optimizer_state, split_optimizer_state, split_prefixed
from .hooks import Defense, TrainContext


class Resume:
    """The checkpoint side of one `train` call (a no-op without a checkpoint)."""

    def __init__(self, checkpoint: Checkpoint | None, ctx: TrainContext, defense: Defense, scheduler,
                 history: list[dict], wall_start: float, cpu_start: float):
        self.checkpoint, self.ctx, self.defense, self.scheduler, self.history = (
            checkpoint, ctx, defense, scheduler, history)
        self.wall_start, self.cpu_start = wall_start, cpu_start
        self.prior_seconds, self.prior_cpu = 0.0, 0.0
        self.last_save, self.saved_epochs = time.perf_counter(), -1

    def load(self, compiled: bool, kernel_identity: dict):
        """The saved (tensors, state) this run may resume from, or None. The accel mode and the layers trained as
        DFT-domain products or with moment BatchNorm are part of the identity: a checkpoint of the plain path is not
        resumed on these (float rounding differs)."""
        if self.checkpoint is None:
            return None
        self.checkpoint.identity.update(execution_identity(self.ctx.device), compiled=compiled, **kernel_identity)
        return self.checkpoint.load()

    def restore(self, saved) -> int:
        """Put `saved` back (after the defense's `prepare`); the epoch to start from. The periodic saves count from
        here."""
        start_epoch = 0
        if saved is not None:
            start_epoch, self.prior_seconds, self.prior_cpu = restore(*saved, self.ctx, self.scheduler, self.defense,
                                                                      self.history)
        self.last_save = time.perf_counter()
        return start_epoch

    def save(self, epochs_done: int) -> bool:
        """Checkpoint the state after `epochs_done` epochs; whether it is on disk."""
        with self.ctx.timed("checkpoint"):
            seconds = self.prior_seconds + time.perf_counter() - self.wall_start
            cpu = None if self.prior_cpu is None else self.prior_cpu + time.process_time() - self.cpu_start
            written = self.checkpoint.save(*snapshot(self.ctx, self.defense, self.history, epochs_done, seconds, cpu))
        self.last_save = time.perf_counter()
        if written:
            self.saved_epochs = epochs_done
        return written

    def after_epoch(self, epochs_done: int, last: bool) -> None:
        """Save when `checkpoint.every` seconds have passed since the last save (never after the last epoch)."""
        if self.checkpoint is not None and not last and time.perf_counter() - self.last_save >= self.checkpoint.every:
            self.save(epochs_done)

    def stop(self, epochs_done: int, epochs: int) -> str:
        """On SIGTERM after `epochs_done` epochs: save (unless just saved) and say what was kept."""
        written = self.checkpoint is not None and (self.saved_epochs == epochs_done or self.save(epochs_done))
        return stopped(epochs_done, epochs, self.checkpoint, written)


def stopped(epochs_done: int, epochs: int, checkpoint: Checkpoint | None, written: bool) -> str:
    """What a training stopped by SIGTERM after `epochs_done` epochs kept."""
    text = f"training stopped by SIGTERM after epoch {epochs_done} of {epochs}"
    if checkpoint is None:
        return text + " (this training keeps no checkpoint)"
    if not written:
        return text + f"; checkpoint {checkpoint.path} not saved (see the warning)"
    return text + f"; checkpoint saved: {checkpoint.path} (running the same command again resumes from it)"


def snapshot(ctx: TrainContext, defense: Defense, history: list[dict], epochs_done: int, seconds: float,
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


def restore(tensors: dict, state: dict, ctx: TrainContext, scheduler, defense: Defense,
             history: list[dict]) -> tuple[int, float, float | None]:
    """Put a `snapshot` back; returns (epochs done, wall and CPU seconds spent before; CPU None if unknown)."""
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
