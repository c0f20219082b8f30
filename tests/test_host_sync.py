"""Nothing in the per-batch training path makes the host wait for the device, for every registered defense.

On a GPU the host launches work and runs ahead; anything that needs a device value on the host (a scalar read,
an output whose shape depends on the data, a copy to or from host memory) makes it wait until the device has
caught up, which leaves the device idle while the host launches the next batch. There is no GPU here, so the check
is a CUDA-free stand-in (`SyncCounter`): torch's dispatcher and `__torch_function__` show, on the CPU, every
operation that would make that wait on CUDA:

- a scalar read: `aten._local_scalar_dense` (`.item()`, `bool(t)`, `if t:`, `int(t)`, `float(t)`), `is_nonzero`,
  `equal`;
- an output shaped by the data, whose size the host must read: `nonzero` (`torch.where(cond)`), `masked_select`,
  indexing with a boolean mask (`index`, `index_put_`), `unique`, `bincount`, `repeat_interleave` without
  `output_size`;
- a copy to the host: `.cpu()`, `.tolist()` (`.numpy()` needs `.cpu()` first on a GPU), a copy between devices
  unless it goes without blocking into page-locked memory;
- a tensor from host data (`torch.tensor`, `as_tensor`, `asarray`, `new_tensor` of a list or number): a blocking
  host-to-device copy on CUDA (`torch.full` and friends fill on the device instead);
- the engine's explicit `hooks.sync` (`torch.cuda.synchronize` on CUDA; `TrainContext.timed` calls it).

Where each is allowed: anywhere per run or per epoch (`prepare`, `on_epoch_start`, the epoch's history row, which
reads its loss and accuracy with one `.item()` each, evaluation, checkpoints, `summary`); never per batch. The
window counted is an epoch's batches: from the return of the defense's `on_epoch_start` to the last batch's
`on_batch` (so it also holds the epoch's set-up before the first batch: the batch order, and the engine's two
`sync`s that end the timing of `on_epoch_start` and start the batches'). Each epoch's window must hold those two
syncs and nothing else, with 2 and with 4 batches per epoch: nothing per batch.

What the CPU cannot show: a `.to(device)` (the device is the CPU itself) and `torch.from_numpy` (not a torch
function); both are host-to-device copies that a GPU run would make.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from poisonbench.core.device import to_float
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES, Threat, atda, build_defense
from poisonbench.engine import hooks, kernels, training
from poisonbench.engine.hooks import Defense, hand_poison_mask
from poisonbench.engine.kernels import input_grad, spectral
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

from .conftest import FEWER_STEPS

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

# as tests/test_checkpoints.py: momentum, a milestone, crop-flip; epochs enough for every defense's schedule (HINT's
# updates, FRIENDS' noise, EPIC's drops)
RECIPE = dict(epochs=6, lr=0.05, momentum=0.9, milestones=(3,), augment="crop-flip")
BATCHES = (2, 4)  # per epoch, on all the train rows
ENGINE_SYNC = "sync"
REAL_SYNC = hooks.sync
# in the window, before the first batch: the end of `on_epoch_start`'s timing (`ctx.timed`), the start of the batches'
EPOCH_SYNCS = 2

SCALAR_READS = {"_local_scalar_dense", "is_nonzero", "equal"}
DATA_SHAPED = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
               "unique_dim_consecutive", "bincount"}
MASK_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}
TO_HOST = {torch.Tensor.cpu, torch.Tensor.tolist}
FROM_HOST = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}


def _blocking_cross_device(op: str, args, kwargs) -> bool:
    if op == "_to_copy":
        device = kwargs.get("device")
        return device is not None and torch.device(device) != args[0].device
    if op == "copy_":
        dst, src = args[0], args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return dst.device != src.device and not (non_blocking and dst.device.type == "cpu" and dst.is_pinned())
    return False


def dispatch_kind(func, args, kwargs) -> str | None:
    """The host-sync kind of one dispatched operation (None: the device goes on without the host)."""
    op = func._schema.name.split("::")[1]
    if op in SCALAR_READS:
        return "scalar read"
    if op in DATA_SHAPED or (op == "repeat_interleave" and func._overloadname == "Tensor"
                             and kwargs.get("output_size") is None):
        return "data-shaped output"
    if op in MASK_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean-mask index"
    if _blocking_cross_device(op, args, kwargs):
        return "copy between devices"
    return None


def function_kind(func, args) -> str | None:
    if func in TO_HOST:
        return "copy to host"
    data = args[1:2] if func is torch.Tensor.new_tensor else args[:1]
    if func in FROM_HOST and data and not isinstance(data[0], torch.Tensor):
        return "tensor from host data"
    return None


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.counter.see(dispatch_kind(func, args, kwargs), func)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.counter.see(function_kind(func, args), None)
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts, while `on`, the operations that would make a CUDA host wait for the device (the module doc), by
    kind, with the number of dispatched operations (`ops`: the window is not empty)."""

    def __init__(self):
        self.on = False
        self.hits: Counter[str] = Counter()
        self.ops = 0

    def see(self, kind: str | None, dispatched) -> None:
        if self.on:
            self.ops += dispatched is not None
            if kind:
                self.hits[kind] += 1

    def __enter__(self) -> SyncCounter:
        self._modes = (_Function(self), _Dispatch(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def batch_windows(data, defense: Defense, recipe, monkeypatch, accel: str = "off") -> list[dict]:
    """Train with `defense`, counting in each epoch's batch window (the module doc): per epoch, the hits by kind,
    the batches and the dispatched operations. `accel` off: the plain modules a GPU trains with (`auto` adds CPU-only
    kernels on the CPU; `gpu_kernels` gives the ones it keeps on a GPU)."""
    counter, epochs = SyncCounter(), []
    real_start = defense.on_epoch_start
    # the GPU's choice: ATDA's compacted FAT loop reads how many examples are left, and is taken on the CPU only
    monkeypatch.setattr(atda, "compacts", lambda device: False)

    def counted_sync(device):
        counter.see(ENGINE_SYNC, None)
        REAL_SYNC(device)

    def start(ctx, epoch):  # the instance's hook: the class's, which `overrides_hook` reads, is untouched
        real_start(ctx, epoch)
        counter.hits, counter.ops, counter.on = Counter(), 0, True

    def on_batch(epoch, step, steps):
        if step == steps:
            counter.on = False
            epochs.append({"hits": dict(counter.hits), "batches": steps, "ops": counter.ops})

    monkeypatch.setattr(hooks, "sync", counted_sync)
    monkeypatch.setattr(training, "sync", counted_sync)
    monkeypatch.setattr(defense, "on_epoch_start", start)
    model = build_model("convnet", data, seed=4)
    with counter:
        train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y, recipe, seed=4,
              device=CPU, num_classes=10, defense=defense, compile="off", accel=accel, on_batch=on_batch,
              model_factory=lambda s: build_model("convnet", data, seed=s))
    return epochs


def recipe_for(batches: int, rows: int):
    return resolve_recipe("mnist", "quick", batch_size=math.ceil(rows / batches), **RECIPE)


def threat_for(rows: int) -> Threat:
    # a targeted threat with a known budget, as tests/test_checkpoints.py: the filters' defaults need it
    return Threat("targeted", budget=rows // 20, train_size=rows)


def gpu_kernels(monkeypatch) -> None:
    """Make `accel` auto on the CPU what it is on a GPU: no training kernels; in a frozen copy (ATDA's per-batch
    `eval_forward`), BatchNorm folded and ReLU + pooling fused, without the CPU's stem and DFT convolutions."""
    monkeypatch.setattr(kernels, "_on_cpu", lambda model: False)
    monkeypatch.setattr(input_grad, "swap_spectral", lambda model, sample: [])
    monkeypatch.setattr(input_grad, "swap_stems", lambda model: model)


@pytest.mark.parametrize("method", DEFENSES.names())
def test_no_host_sync_per_batch(tiny_npz, monkeypatch, method):
    data = load_dataset(str(tiny_npz))
    rows = len(data.train)
    for batches in BATCHES:
        recipe = recipe_for(batches, rows)
        defense = build_defense(method, "mnist", recipe, threat_for(rows), **FEWER_STEPS.get(method, {}))
        hand_poison_mask(defense, torch.arange(rows) % 20 == 0)  # only the oracle takes it (5 %: the budget)
        epochs = batch_windows(data, defense, recipe, monkeypatch)
        assert len(epochs) == recipe.epochs
        assert epochs[0]["batches"] == batches and all(e["ops"] > 50 * e["batches"] for e in epochs)
        for epoch, e in enumerate(epochs):
            assert e["hits"] == {ENGINE_SYNC: EPOCH_SYNCS}, (method, batches, epoch, e)


def test_atdas_frozen_copy_with_a_gpus_kernels_syncs_nothing_per_batch(tiny_npz, monkeypatch):
    data = load_dataset(str(tiny_npz))
    rows = len(data.train)
    gpu_kernels(monkeypatch)
    copies, real_copy = [], kernels.inference_copy

    def spy(model, sample=None, mode=None):
        copies.append(real_copy(model, sample, mode))
        return copies[-1]

    monkeypatch.setattr(kernels, "inference_copy", spy)
    recipe = resolve_recipe("mnist", "quick", batch_size=math.ceil(rows / 2), epochs=2, lr=0.05)
    epochs = batch_windows(data, build_defense("atda", "mnist", recipe), recipe, monkeypatch, accel="auto")
    assert [e["hits"] for e in epochs] == [{ENGINE_SYNC: EPOCH_SYNCS}] * 2
    kinds = {type(m) for m in copies[-1].modules()}
    assert len(copies) == 4 and input_grad.ReluAvgPool2d in kinds and torch.nn.BatchNorm2d not in kinds
    assert not kinds & {input_grad.StemConv2d, spectral.SpectralConv2d}


class SyncingDefense(Defense):
    """A defense whose batch hook makes the host wait in one way (`how`): the check above must see it."""

    name = "syncing"
    how = ""

    def batch(self, ctx, x, y, idx):
        if self.how == "item":
            x = x * (1 + 0 * y.float().mean().item())
        elif self.how == "if":
            if (x > 2).any():
                x = x.clamp(0, 1)
        elif self.how == "mask":
            y = y.clone()
            y[y > 100] = 0
        elif self.how == "tensor":
            x = x + torch.tensor(0.0, device=x.device)
        elif self.how == "tolist":
            idx.tolist()
        elif self.how == "timed":
            with ctx.timed("syncing"):
                x = x + 0
        return x, y


@pytest.mark.parametrize("how, kind", [("item", "scalar read"), ("if", "scalar read"),
                                       ("mask", "boolean-mask index"), ("tensor", "tensor from host data"),
                                       ("tolist", "copy to host"), ("timed", ENGINE_SYNC)])
def test_a_sync_in_a_batch_hook_is_counted_once_per_batch(tiny_npz, monkeypatch, how, kind):
    """The mechanism check of the test above: one sync added to a batch hook shows in every batch."""
    data = load_dataset(str(tiny_npz))
    rows = len(data.train)
    monkeypatch.setattr(SyncingDefense, "how", how)
    for batches in BATCHES:
        recipe = resolve_recipe("mnist", "quick", batch_size=math.ceil(rows / batches), epochs=1, lr=0.05)
        (epoch,) = batch_windows(data, SyncingDefense("mnist", recipe), recipe, monkeypatch)
        expected = batches * (2 if kind == ENGINE_SYNC else 1)  # ctx.timed syncs on entry and on exit
        assert epoch["hits"].get(kind, 0) - EPOCH_SYNCS * (kind == ENGINE_SYNC) == expected, epoch


def test_the_counter_tells_syncing_operations_from_device_only_ones():
    env = {"torch": torch, "x": torch.rand(6, 3), "idx": torch.arange(3)}
    env["mask"] = env["x"][:, 0] > 0.5
    syncing = {
        "scalar read": ["x.sum().item()", "bool(mask.any())", "int(idx[0])", "float(x[0, 0])", "torch.equal(x, x)"],
        "data-shaped output": ["mask.nonzero()", "torch.where(mask)", "x.masked_select(x > 0.5)", "idx.unique()",
                               "torch.bincount(idx)", "torch.repeat_interleave(idx)"],
        "boolean-mask index": ["x[mask]", "x.clone().__setitem__(mask, 0.0)"],
        "copy to host": ["x.cpu()", "idx.tolist()"],
        "tensor from host data": ["torch.tensor(1.0)", "torch.as_tensor([1, 2])", "x.new_tensor([1.0])"],
    }
    device_only = ["x[idx]", "x.index_select(0, idx)", "torch.where(mask[:, None], x, 0.0)",
                   "x.masked_fill(x > 0.5, 0)", "torch.full((), 3.0)", "x.argmax(1) == idx.sum()", "torch.randperm(6)",
                   "torch.as_tensor(x)", "len(x)", "x.numpy()", "torch.repeat_interleave(idx, 2)",
                   "torch.repeat_interleave(idx, idx, output_size=3)"]
    counter = SyncCounter()
    counter.on = True
    with counter:
        for kind, calls in syncing.items():
            for code in calls:
                counter.hits.clear()
                eval(code, env)
                assert counter.hits == {kind: 1}, (code, counter.hits)
        for code in device_only:
            counter.hits.clear()
            eval(code, env)
            assert not counter.hits, (code, counter.hits)
