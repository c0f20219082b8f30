"""DP-SGD's per-example gradients by layer hooks (`dpsgd.layer_gradients`) against two references: each example's
gradient by plain autograd one example at a time, and `torch.func`'s `vmap(grad)` (`dpsgd.vmap_gradients`). Every
layer kind the hooks read (Conv2d with stride / padding / dilation / no bias, Linear on 2-d and 3-d inputs,
GroupNorm, BatchNorm in eval mode with the batch's statistics), a layer called twice, an unused parameter, frozen
parameters, and each reason to fall back to the vmap (a grouped or 'same'-padded convolution, a parameter of
another layer kind, a parameter shared by two layers, a BatchNorm without running statistics, an output changed
in place), with the method the record names."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench.data import load_dataset
from poisonbench.defenses import build_defense, dpsgd
from poisonbench.defenses.dpsgd import (
    HOOKS_METHOD,
    VMAP_METHOD,
    NotHookable,
    batch_forward,
    chunk_gradients,
    hookable,
    layer_gradients,
    trainable,
    vmap_gradients,
)
from poisonbench.engine.hooks import TrainContext
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = resolve_recipe("mnist", "quick", epochs=1, batch_size=7, lr=0.05)


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stats: dict) -> dict[str, torch.Tensor]:
    """{name: [rows, *shape]} by autograd on one example at a time, training-mode BatchNorms normalising with the
    batch's `stats` (eval mode with the buffers swapped in): the definition the hooks must meet."""
    batchnorms = dpsgd.training_batchnorms(model)
    params = trainable(model)
    rows = []
    for m in batchnorms.values():
        m.training = False
    try:
        for i in range(len(y)):
            out = torch.func.functional_call(model, stats, (x[i:i + 1],)) if stats else model(x[i:i + 1])
            rows.append(torch.autograd.grad(F.cross_entropy(out, y[i:i + 1]), list(params.values()),
                                            allow_unused=True))
    finally:
        for m in batchnorms.values():
            m.training = True
    return {name: torch.stack([r[k] if r[k] is not None else torch.zeros_like(p) for r in rows])
            for k, (name, p) in enumerate(params.items())}


def assert_same(grads: dict, reference: dict, what: str) -> None:
    assert list(grads) == list(reference), what
    for name in reference:
        assert grads[name].shape == reference[name].shape, (what, name)
        torch.testing.assert_close(grads[name], reference[name], atol=1e-5, rtol=1e-4, msg=f"{what}: {name}")


class Strided(nn.Module):
    """Every Conv2d option the unfold reads (stride, padding, dilation, a rectangular kernel, no bias), a Linear on a
    3-d input, GroupNorm, a Linear called twice, a parameter no forward uses, and a frozen layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.b = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(3, 6)
        self.tokens = nn.Linear(6, 5)  # on [rows, positions, 6]
        self.twice = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)
        self.unused = nn.Linear(2, 2)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        h = F.relu(self.norm(self.b(F.relu(self.a(x)))))
        h = self.tokens(h.flatten(2).transpose(1, 2)).mean(1)  # a Linear over every position of each example
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.head(self.frozen(h))


def batch(rows: int, shape, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *shape, generator=g), torch.randint(0, classes, (rows,), generator=g)


def test_the_hooks_give_each_examples_own_gradient_on_every_layer_kind():
    torch.manual_seed(0)
    model = Strided().train()
    x, y = batch(5, (2, 7, 6), 3)
    params = {n: p.detach() for n, p in trainable(model).items()}
    assert hookable(model, params) and "frozen.weight" not in params
    logits, grads = layer_gradients(model, params, {}, x, y)
    reference = loop_gradients(model, x, y, {})
    assert_same(grads, reference, "hooks against the loop")
    assert_same(vmap_gradients(model, params, {}, x, y), reference, "vmap against the loop")
    assert torch.equal(grads["unused.weight"], torch.zeros(5, 2, 2))
    torch.testing.assert_close(logits, model(x).detach())
    assert not logits.requires_grad


@pytest.mark.parametrize("name", ["convnet-gn", "convnet", "resnet18", "resnet18-gn"])
def test_the_hooks_equal_the_vmap_on_every_model_poisonbench_builds(name):
    """The models of the registry, the BatchNorm ones with the batch's statistics (`batch_forward`), at a batch
    that is not a power of two."""
    model = build_model(name, load_dataset("mnist-5k"), seed=3).train()
    x, y = batch(5, (1, 28, 28), 10, seed=1)
    params = {n: p.detach() for n, p in trainable(model).items()}
    assert hookable(model, params)
    logits, stats = batch_forward(model, x)
    assert bool(stats) == (name in ("convnet", "resnet18"))
    running = {k: v.clone() for k, v in model.named_buffers()}
    hooked_logits, grads = layer_gradients(model, params, stats, x, y)
    for k, v in model.named_buffers():
        assert torch.equal(v, running[k]), f"the per-example pass moved {k}"
    assert all(m.training for m in model.modules())
    torch.testing.assert_close(hooked_logits, logits, atol=1e-5, rtol=1e-4)
    assert_same(grads, vmap_gradients(model, params, stats, x, y), name)
    # a chunk of the batch (a GPU's ResNet-18 in chunks) is still normalised by the whole batch's statistics
    _, part = layer_gradients(model, params, stats, x[1:3], y[1:3])
    assert_same(part, {k: v[1:3] for k, v in grads.items()}, f"{name}, rows 1-2 as a chunk")


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, groups=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class Same(Grouped):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding="same")


class Prelu(Grouped):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 4, 3), nn.PReLU(4))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)
        self.second.weight = self.first.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.second(torch.tanh(self.first(x.flatten(1)))))


class Untracked(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8, track_running_stats=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(x.flatten(1)))


def test_a_batchnorm_without_running_statistics_is_not_read_by_the_hooks():
    """In eval mode it would still normalise by the batch: the hooks would not see each example alone."""
    model = Untracked().train()
    assert not hookable(model, {n: p.detach() for n, p in trainable(model).items()})


@pytest.mark.parametrize("kind", [Grouped, Same, Prelu, Shared])
def test_a_model_the_hooks_cannot_read_falls_back_to_the_vmap(kind):
    torch.manual_seed(1)
    model = kind().train()
    x, y = batch(3, (2, 2, 2), 3) if kind is Shared else batch(3, (2, 5, 5), 3)
    params = {n: p.detach() for n, p in trainable(model).items()}
    assert not hookable(model, params)
    logits, grads, method = chunk_gradients(model, params, {}, x, y)
    assert (logits, method) == (None, VMAP_METHOD)
    assert_same(grads, vmap_gradients(model, params, {}, x, y), kind.__name__)


class InPlace(nn.Module):
    """A Linear whose output an in-place ReLU then changes: its saved output is not the one the loss saw."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(F.relu(self.body(x.flatten(1)), inplace=True))


def test_an_output_changed_in_place_is_refused_by_the_hooks_and_falls_back():
    torch.manual_seed(2)
    model = InPlace()
    x, y = batch(4, (8,), 3)
    params = {n: p.detach() for n, p in trainable(model).items()}
    assert hookable(model, params)
    with pytest.raises(NotHookable):
        layer_gradients(model, params, {}, x, y)
    logits, grads, method = chunk_gradients(model, params, {}, x, y)
    assert (logits, method) == (None, VMAP_METHOD)
    assert_same(grads, loop_gradients(model, x, y, {}), "fallback against the loop")


def one_step(model, x, y):
    defense = build_defense("dpsgd", "mnist", RECIPE, clip=0.05, noise_multiplier=0.0)
    optimizer, _ = make_optimizer(model, RECIPE)
    ctx = TrainContext(model, optimizer, RECIPE, torch.device("cpu"), torch.Generator().manual_seed(0), x, y,
                       x[:2], y[:2], 3, 0)
    defense.prepare(ctx)
    model.zero_grad(set_to_none=True)
    loss, logits = defense.gradient(ctx, x, y, contextlib.nullcontext)
    return defense, loss, logits, {n: p.grad.clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("kind, method", [(Strided, HOOKS_METHOD), (Prelu, VMAP_METHOD), (InPlace, VMAP_METHOD)])
def test_the_step_and_the_record_are_the_same_whichever_method_computed_them(kind, method):
    """The defense's step (clipped mean, logits, loss) equals the clipped mean of the loop's gradients, and the
    record names the method that ran (for a hookable model whose forward changes an output in place, the vmap)."""
    torch.manual_seed(4)
    model = kind().train()
    x, y = batch(7, (8,), 3) if kind is InPlace else batch(7, (2, 7, 6), 3) if kind is Strided else batch(
        7, (2, 5, 5), 3)
    reference = loop_gradients(model, x, y, {})
    norms = dpsgd.joint_norms(reference)
    factors = 0.05 / norms.clamp(min=0.05)
    assert (factors < 1).any()
    defense, loss, logits, step = one_step(model, x, y)
    for name, g in reference.items():
        torch.testing.assert_close(step[name], torch.tensordot(factors, g, dims=1) / len(y), atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        plain = model(x)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, F.cross_entropy(plain, y), atol=1e-5, rtol=1e-4)
    assert defense.summary()["per_example_gradients"] == method
