"""A training whose epoch ends with a non-finite mean loss stops there (`engine.training.refuse_non_finite`): a NaN
model would otherwise be saved, cached and measured as a model at chance accuracy."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.checkpoints import Checkpoint
from poisonbench.engine.hooks import Defense
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import TrainingDiverged, refuse_non_finite, train

CPU = torch.device("cpu")
EPOCHS, BATCH = 3, 32  # tiny_npz's 400 train rows: 12 full batches and a last one of 16


class SpoilLastBatch(Defense):
    """Sets the inputs of the last batch of epoch `at` (0-based) to `value`: only that step's loss goes
    non-finite at first, so the epoch's mean is the one place the check can see it."""

    name = "spoil-last-batch"
    at, value = 0, math.nan

    def batch(self, ctx, x, y, idx):
        steps = math.ceil(len(ctx.train_y) / ctx.recipe.batch_size)
        self.calls = getattr(self, "calls", 0) + 1
        if ctx.epoch == self.at and self.calls == (self.at + 1) * steps:
            x = torch.full_like(x, self.value)
        return x, y


def expected_message(epoch: int, loss: str, lr: float) -> str:
    return (f"training diverged: epoch {epoch}'s mean train loss is {loss} (lr {lr:g}), so the weights are not "
            "finite; nothing of this epoch is saved. A compiled model on a CPU told to dispatch below its own "
            "instruction set (ATEN_CPU_CAPABILITY) needs TORCHINDUCTOR_CPP_MARCH to match it (docs/install.md, "
            "'Another CPU kind'); else lower the learning rate, or train with --compile off to rule out compiled "
            "kernels")


@pytest.mark.parametrize("at", [0, 1, EPOCHS - 1])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_epoch_stops_the_training_before_its_checkpoint_and_history(tiny_npz, tmp_path, at, value):
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=EPOCHS, lr=0.05, batch_size=BATCH)
    assert len(data.train) % BATCH != 0  # the spoiled batch is the short last one
    defense = SpoilLastBatch("mnist", recipe)
    defense.at, defense.value = at, value
    seen = []
    checkpoint = Checkpoint(tmp_path / "partial" / "r.safetensors", 0.0)  # saved after every epoch but the last
    with pytest.raises(TrainingDiverged) as caught:
        train(build_model("convnet", data, seed=0), to_float(data.train.x, CPU), data.train.y,
              to_float(data.val.x, CPU), data.val.y, recipe, seed=0, device=CPU, num_classes=10, defense=defense,
              compile="off", on_epoch=lambda epoch, row: seen.append(epoch), checkpoint=checkpoint)
    assert isinstance(caught.value, PoisonbenchError)  # the CLI's one-line error
    text = str(caught.value)
    loss = re.search(r"mean train loss is (\S+) ", text).group(1)
    assert loss in ("nan", "inf")
    assert text == expected_message(at + 1, loss, 0.05)
    assert seen == list(range(at))  # the diverged epoch never reached the history
    saved = checkpoint.load()
    if at == 0:
        assert saved is None
    else:  # the last checkpoint is the epoch before: its weights are finite, resuming from it is possible
        tensors, state = saved
        assert state["epochs_done"] == at
        assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_a_finite_training_is_untouched(tiny_npz):
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=2, lr=0.05, batch_size=BATCH)
    defense = SpoilLastBatch("mnist", recipe)
    defense.at = 99  # never
    result = train(build_model("convnet", data, seed=0), to_float(data.train.x, CPU), data.train.y,
                   to_float(data.val.x, CPU), data.val.y, recipe, seed=0, device=CPU, num_classes=10,
                   defense=defense, compile="off")
    assert [row["epoch"] for row in result.history] == [1, 2]


@pytest.mark.parametrize("loss", [0.0, -0.0, 5e-324, sys.float_info.max, -sys.float_info.max])
def test_finite_losses_at_the_limits_pass(loss):
    refuse_non_finite({"epoch": 1, "lr": 0.1, "train_loss": loss})


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(1, 10_000))
@example(math.inf, 1)
@example(-math.inf, 1)
@example(math.nan, 1)
@example(sys.float_info.max, 1)
def test_the_check_refuses_exactly_the_non_finite_losses(loss, epoch):
    row = {"epoch": epoch, "lr": 0.1, "train_loss": loss}
    if math.isfinite(loss):
        refuse_non_finite(row)
    else:
        with pytest.raises(TrainingDiverged) as caught:
            refuse_non_finite(row)
        assert str(caught.value) == expected_message(epoch, str(loss), 0.1)
