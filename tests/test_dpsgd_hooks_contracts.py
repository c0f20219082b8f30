"""The per-example gradient hooks of DP-SGD (`dpsgd.layer_gradients`, `dpsgd.chunk_gradients`), contracts the layer
kinds of tests/test_dpsgd_hooks.py left open (issue 82, the mutation runs of 2026-11-29): a normalisation on a 2-d
input `[rows, C]` (BatchNorm1d with running statistics, GroupNorm), whose affine gradients have no spatial dimension
to sum, and `chunk_gradients` normalising a training-mode BatchNorm by the statistics it is given, not the running
ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.defenses.dpsgd import (
    HOOKS_METHOD,
    batch_forward,
    chunk_gradients,
    hookable,
    layer_gradients,
    trainable,
)

from .test_dpsgd_hooks import assert_same, batch, loop_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


class Flat(nn.Module):
    """A Linear, then a normalisation of its `[rows, 6]` output (no spatial dimensions), then the head."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.body, self.norm, self.head = nn.Linear(5, 6), norm, nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.body(x))))


def _flat(kind: str) -> nn.Module:
    torch.manual_seed(5)
    # eps 0.1, not the default 1e-5: the hooks' normalised input must use the layer's own
    model = Flat(nn.BatchNorm1d(6, eps=0.1) if kind == "batchnorm1d" else nn.GroupNorm(2, 6, eps=0.1)).train()
    with torch.no_grad():  # an affine map far from the identity, and running statistics that are not the batch's
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.uniform_(-1.0, 1.0)
        if kind == "batchnorm1d":
            model.norm.running_mean.uniform_(-1.0, 1.0)
            model.norm.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("kind", ["batchnorm1d", "groupnorm"])
def test_a_normalisation_on_a_2d_input_gives_each_examples_own_affine_gradient(kind):
    """γ's per-example gradient is g·x̂ and β's is g, row by row (nothing to sum), equal to autograd one example at a
    time (BatchNorm1d: with the batch's statistics, also for a chunk of the batch), at a batch of 5."""
    model = _flat(kind)
    x, y = batch(5, (5,), 3, seed=2)
    params = {n: p.detach() for n, p in trainable(model).items()}
    assert hookable(model, params)
    _, stats = batch_forward(model, x)
    assert bool(stats) == (kind == "batchnorm1d")
    logits, grads = layer_gradients(model, params, stats, x, y)
    assert grads["norm.weight"].shape == grads["norm.bias"].shape == (5, 6)
    assert_same(grads, loop_gradients(model, x, y, stats), kind)
    _, part = layer_gradients(model, params, stats, x[1:4], y[1:4])  # a chunk: still the whole batch's statistics
    assert_same(part, {k: v[1:4] for k, v in grads.items()}, f"{kind}, rows 1-3 as a chunk")


def test_chunk_gradients_normalise_a_training_batchnorm_by_the_statistics_given():
    """The hooks' path of `chunk_gradients` (its method named) with the batch's statistics equals the loop with
    them, and differs from the running statistics' gradients: the statistics reach the forward."""
    model = _flat("batchnorm1d")
    x, y = batch(6, (5,), 3, seed=3)
    params = {n: p.detach() for n, p in trainable(model).items()}
    logits, stats = batch_forward(model, x)
    hooked_logits, grads, method = chunk_gradients(model, params, stats, x, y)
    assert method == HOOKS_METHOD
    torch.testing.assert_close(hooked_logits, logits, atol=1e-5, rtol=1e-4)
    assert_same(grads, loop_gradients(model, x, y, stats), "chunk with the batch's statistics")
    running = loop_gradients(model, x, y, {})
    assert not torch.allclose(grads["body.weight"], running["body.weight"], atol=1e-3)
