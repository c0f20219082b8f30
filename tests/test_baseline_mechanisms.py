"""The baselines' mechanisms, each pinned where a broken one would still pass the other tests (issue 53, item 6):
ATDA trains on the adversarial batch that its hook crafts against the current model in eval mode (BatchNorm's
running statistics untouched), gives its attack FAT's growing τ and records the τ the attack was given; the
one-class SVM is fitted per class; FRIENDS' `mse` loss gives the official per-batch loop's noise, as its `kl` one
does (tests/test_friends.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench.core.hashing import derived_seed
from poisonbench.defenses import atda, build_defense
from poisonbench.defenses.friends import Friends
from poisonbench.defenses.ocsvm import ocsvm_remove
from poisonbench.engine.training import TrainContext, make_optimizer

from .test_atda import RECIPE as ATDA_RECIPE
from .test_atda import data, engine_run, model_in_eval
from .test_filters import clusters, planted
from .test_friends import BETA, trained_context

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")

# ---------------------------------------------------------------------------------------------------------------
# ATDA


def atda_hook_context(epoch: int) -> TrainContext:
    """The engine's view at a batch of `epoch`: the model in train mode (the SGD pass holds it so), float64 (no
    rounding flips an early stop), the eval copy made of the model's own modules (`accel` off)."""
    model = model_in_eval(dtype=torch.float64).train()
    x, y = data(dtype=torch.float64)
    optimizer, _ = make_optimizer(model, ATDA_RECIPE)
    ctx = TrainContext(model, optimizer, ATDA_RECIPE, CPU, torch.Generator().manual_seed(0), x, y, x[:12], y[:12], 3,
                       seed=0, epoch=epoch, accel="off")
    return ctx


def fat_reference(model: nn.Module, defense, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FAT's x̃ for the batch against `model` as given (eval or train mode), with the random start and the ω noise
    drawn as the hook draws them from its own stream (derived_seed(seed, "atda-pgd"))."""
    p = defense.params
    g = torch.Generator().manual_seed(derived_seed(ctx.seed, "atda-pgd"))
    start = atda.random_start(g, x, p["beta"], p["norm"])
    noise = p["omega"] * torch.randn((p["steps"], *x.shape), generator=g, dtype=x.dtype)
    x_adv, _, _ = atda.adversarial_examples(model, x, y, beta=p["beta"], alpha=defense.alpha, steps=p["steps"],
                                            norm=p["norm"], tau=defense.tau(ctx.epoch), start=start, noise=noise)
    return x_adv


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("epoch", [0, 2])  # τ = 0 and τ = 2 of the 3-epoch recipe's dynamic schedule
@pytest.mark.parametrize("params", [{}, {"norm": "linf", "beta": 0.062}], ids=["l2", "linf"])
@pytest.mark.parametrize("prepared", [True, False])
def test_the_hook_returns_the_attack_crafted_in_eval_mode_and_leaves_batchnorm_alone(epoch, params, prepared):
    """`batch` returns FAT's x̃ in the defense's norm (ℓ2 β 0.25 by default, ℓ∞ as asked) against the eval-mode
    model (not the clean batch, not an attack through the train-mode model, whose BatchNorm would normalise with the
    batch's statistics and update its running ones), and the model is back in train mode afterwards with its running
    statistics unchanged. Called without `prepare` (direct use), it prepares itself: the same x̃."""
    ctx = atda_hook_context(epoch)
    defense = build_defense("atda", "mnist", ATDA_RECIPE, **params)  # FAT, dynamic τ
    x, y = ctx.train_x.clone(), ctx.train_y
    buffers = batchnorm_buffers(ctx.model)
    if prepared:
        defense.prepare(ctx)
    out_x, out_y = defense.batch(ctx, x, y, torch.arange(len(y)))
    assert ctx.model.training
    assert all(torch.equal(buffers[k], v) for k, v in ctx.model.named_buffers())
    assert out_y is y and torch.equal(x, ctx.train_x)  # the input batch is not modified in place

    eval_model = copy.deepcopy(ctx.model).eval()
    torch.testing.assert_close(out_x, fat_reference(eval_model, defense, ctx, x, y), atol=1e-9, rtol=0)
    # the premise: the attack through the train-mode model is a different one
    train_model = copy.deepcopy(ctx.model).train()
    assert (fat_reference(train_model, defense, ctx, x, y) - out_x).abs().max() > 1e-3

    p = defense.params
    moved = atda.distance(out_x - x, p["norm"])
    assert (moved > 0).all() and moved.max() <= p["beta"] + 1e-9
    flat = (out_x - x).flatten(1)  # the record's figures, each example's norm computed here
    norms = flat.abs().max(dim=1).values if p["norm"] == "linf" else torch.linalg.vector_norm(flat, dim=1)
    figures = defense.summary()["last_epoch"]
    assert figures["examples"] == len(y) and figures["mean_distance"] == pytest.approx(float(norms.mean()))
    with torch.no_grad():
        clean_loss, adv_loss = (F.cross_entropy(eval_model(v), y) for v in (x, out_x))
    assert adv_loss > clean_loss


def test_the_attack_gets_fats_growing_tau_and_the_record_keeps_what_it_got(monkeypatch):
    """A spy on the attack: every batch of the 3-epoch run is crafted with FAT's dynamic τ (0, 1, 2 here: the
    schedule's 50 and 90 of 120 epochs scaled to 3), the early exit on and, on the CPU, the compacted loop; the
    record's τ per epoch is the τ the attack was given, kept, not the schedule consulted again when the record is
    read."""
    seen: list[tuple[int, bool, bool]] = []
    real = atda.adversarial_examples

    def spy(*args, **kwargs):
        seen.append((kwargs["tau"], kwargs["early_exit"], kwargs["compact"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(atda, "adversarial_examples", spy)
    defense, _, _ = engine_run()
    batches = 96 // ATDA_RECIPE.batch_size
    assert [tau for tau, _, _ in seen] == [0] * batches + [1] * batches + [2] * batches
    assert all(early is True and compact is True for _, early, compact in seen)  # the CPU: the compacted loop
    assert [e["tau"] for e in defense.summary()["epochs"]] == [0, 1, 2]
    monkeypatch.setattr(atda, "dynamic_tau", lambda epoch, epochs: 99)  # the schedule, asked again, says otherwise
    assert [e["tau"] for e in defense.summary()["epochs"]] == [0, 1, 2]

    seen.clear()
    fixed, _, _ = engine_run(tau=3)
    assert {tau for tau, _, _ in seen} == {3} and [e["tau"] for e in fixed.summary()["epochs"]] == [3, 3, 3]


# ---------------------------------------------------------------------------------------------------------------
# one-class SVM


def test_ocsvm_fits_one_svm_per_class():
    """One row of each class placed inside another class's cluster: an outlier of its own class, but inside the
    support of the rows as a whole. The per-class SVMs remove all three; one SVM fitted over all rows keeps them
    (checked: the premise)."""
    from sklearn.svm import OneClassSVM

    features, labels, centres = clusters(300, 3, dim=4, spread=1.0)
    for label, inside in ((0, 1), (1, 2), (2, 0)):
        features, labels, _ = planted(features, labels, centres, count=1, label=label, inside=inside, spread=1.0,
                                      seed=10 + label)
    misplaced = torch.arange(len(labels)) >= 900
    removed = ocsvm_remove(features, labels, nu=0.01)
    assert removed[misplaced].all()
    for label in range(3):  # ν bounds each class's share, misplaced row included
        assert removed[labels == label].float().mean() <= 0.02
    one_fit = OneClassSVM(kernel="rbf", nu=0.01, gamma="scale").fit(features.numpy()).predict(features.numpy())
    assert not (one_fit[misplaced.numpy()] == -1).any()


# ---------------------------------------------------------------------------------------------------------------
# FRIENDS


@pytest.mark.parametrize("steps", [1, 5])
def test_friends_mse_matches_a_plain_official_batch_loop(steps):
    """`--friendly-loss mse`, the first 128 rows against the official per-batch loop written out
    (FRIENDS:friendly_noise.py: `torch.nn.MSELoss()` between the raw logits of x' and of x, minus μ·mean(e²),
    torch.optim.SGD with Nesterov momentum 0.9, lr 100), from the same initial noise. One step pins the loss's
    gradient itself (no clamp at ±β hides a scale), five the momentum's course."""
    ctx, x0 = trained_context()
    defense = Friends("mnist", ctx.recipe, friendly_begin=0, friendly_steps=steps, friendly_loss="mse",
                      noise_batch=128)
    init = Friends._initial_noise(torch.Generator().manual_seed(7), x0[:128])
    eps = init.clone().requires_grad_(True)
    model = ctx.model.eval()
    opt = torch.optim.SGD([eps], lr=100, momentum=0.9, nesterov=True)
    target = model(x0[:128]).detach()
    for _ in range(steps):
        e = eps.clamp(-BETA, BETA)
        loss = nn.MSELoss()(model((x0[:128] + e).clamp(0, 1)), target) - e.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = eps.detach().clamp(-BETA, BETA)
    weight = Friends._official_weights(0, 128, 300, x0)
    _, noise = defense._optimise(model, x0[:128], init.clone(), weight)
    torch.testing.assert_close(noise, expected, atol=1e-5, rtol=0)
    # the premise: the noise moved from its start, and not every pixel is clamped at ±β (a scale would show)
    assert not torch.allclose(expected, init.clamp(-BETA, BETA), atol=1e-4)
    assert (expected.abs() < BETA * (1 - 1e-6)).float().mean() > 0.2


def test_a_checkpoint_taken_before_an_epochs_first_batch_restores_no_running_totals():
    """ATDA's state before any batch of an epoch has no running totals (`state` leaves them out); loading it gives a
    defense with none, whose summary is the saved one's, and whose next batch counts from zero."""
    ctx = atda_hook_context(0)
    saved = build_defense("atda", "mnist", ATDA_RECIPE)
    saved.prepare(ctx)
    tensors, state = saved.state(ctx)
    assert "totals" not in tensors
    restored = build_defense("atda", "mnist", ATDA_RECIPE)
    restored.prepare(ctx)
    restored.load_state(ctx, tensors, state)
    assert restored._totals is None and restored.summary() == saved.summary()
    x, y = ctx.train_x.clone(), ctx.train_y
    restored.batch(ctx, x, y, torch.arange(len(y)))
    saved.batch(ctx, x, y, torch.arange(len(y)))
    assert restored.summary() == saved.summary() and restored.summary()["last_epoch"]["examples"] == len(y)
