"""FRIENDS on tiny data: the friendly noise stays within ±β, keeps the trained model's predictions, grows well past
its random start, does not depend on the generation pass size, is generated once at its epoch; the random noise is
exactly ±eps (Bernoulli), fresh every batch, unclamped; seeds reproduce; bad options are one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.core.errors import PoisonbenchError
from poisonbench.defenses import DEFENSES, build_defense
from poisonbench.defenses.friends import INIT_EPS, Friends, scale_begin
from poisonbench.engine.recipes import Recipe, resolve_recipe
from poisonbench.engine.training import TrainContext, make_optimizer, train

from .toys import SmallConvNet

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
RECIPE = Recipe("tiny", epochs=4, batch_size=32, lr=0.05, momentum=0.9)
BETA = 0.062


Small = SmallConvNet


def data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n + 12,), generator=g)
    x = (torch.rand(n + 12, 1, 8, 8, generator=g) * 0.4 + y[:, None, None, None] * 0.25).clamp(0, 1)
    x[:4] = 1.0  # saturated rows: x̂ must stay in [0, 1]
    return x[:n], y[:n], x[n:], y[n:]


def run(seed=0, **params):
    """Three epochs of plain training, the friendly noise generated before epoch 3, one more epoch."""
    x, y, vx, vy = data()
    torch.manual_seed(seed)
    model = Small()
    defense = Friends("mnist", RECIPE, **{"friendly_begin": 3, **params})
    result = train(model, x.clone(), y, vx, vy, RECIPE, seed=seed, device=CPU, num_classes=3, defense=defense,
                   compile="off")
    return defense, result, x


@pytest.fixture(scope="module")
def trained():
    return run()


def trained_context(seed=0):
    """A model trained three epochs and a context on its data, for calling the hooks directly."""
    x, y, vx, vy = data()
    torch.manual_seed(seed)
    model = Small()
    train(model, x.clone(), y, vx, vy, Recipe("tiny", epochs=3, batch_size=32, lr=0.05, momentum=0.9), seed=seed,
          device=CPU, num_classes=3, compile="off")
    optimizer, _ = make_optimizer(model, RECIPE)
    return TrainContext(model, optimizer, RECIPE, CPU, torch.Generator().manual_seed(0), x.clone(), y, vx, vy, 3,
                        seed), x


def test_registered_and_defaults():
    assert "friends" in DEFENSES.names()
    d = build_defense("friends", "mnist", resolve_recipe("mnist", "paper"))
    assert d.params["friendly_begin"] == 5 and d.params["beta"] == 0.062 and d.params["noise"] == "bernoulli"
    assert d.params["noise_eps"] == 8 / 255 and d.params["friendly_steps"] == 30 and d.params["friendly_lr"] == 100
    assert build_defense("friends", "cifar10", resolve_recipe("cifar10", "paper")).params["friendly_begin"] == 5
    assert scale_begin("mnist", 10) == 2 and scale_begin("cifar10", 40) == 2 and scale_begin("cifar10", 10) == 1
    assert scale_begin("mnist", 1) == 0 and scale_begin("mnist", 2) == 0


def test_friendly_noise_is_bounded_large_and_keeps_predictions(trained):
    defense, result, x0 = trained
    g = defense.generation
    assert g["epoch"] == 3 and g["rows"] == len(x0)
    x_hat = result.context.train_x
    delta = x_hat - x0
    assert delta.abs().max() <= BETA + 1e-6 and x_hat.min() >= 0 and x_hat.max() <= 1
    assert g["prediction_unchanged_fraction"] >= 0.9
    # the magnitude term drives the noise well past its U(±8/255) start (mean |ε0| = 4/255) towards ±β
    assert g["delta_abs_mean"] > 2 * (INIT_EPS / 2) and g["noise_at_beta_fraction"] > 0.3
    assert g["delta_abs_mean"] == pytest.approx(delta.abs().mean().item(), rel=1e-5)
    assert (delta[:4] <= 0).all()  # saturated rows: clipping at 1 keeps only the negative noise
    summary = defense.summary(torch.arange(len(x0)) % 3 == 0)
    assert summary["poisoned_delta_abs_mean"] > 0 and summary["clean_delta_abs_mean"] > 0
    assert summary["generation"] is g and summary["noise"] == {"kind": "bernoulli", "eps": 8 / 255}


def test_noise_is_generated_once_before_its_epoch():
    ctx, x0 = trained_context()
    defense = Friends("mnist", RECIPE, friendly_begin=2, friendly_steps=3)
    defense.prepare(ctx)
    changed = []
    for epoch in range(RECIPE.epochs):
        before = ctx.train_x.clone()
        defense.on_epoch_start(ctx, epoch)
        changed.append(not torch.equal(ctx.train_x, before))
    assert changed == [False, False, True, False]
    assert ctx.model.training  # eval mode only while generating


def generate(noise_batch, seed=0, **params):
    ctx, x0 = trained_context()
    ctx.seed = seed
    defense = Friends("mnist", RECIPE, friendly_begin=0, noise_batch=noise_batch, **params)
    defense.prepare(ctx)
    defense.on_epoch_start(ctx, 0)
    return ctx.train_x - x0, defense


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_the_pass_size_does_not_change_the_noise(loss):
    """Each example weighted by 1/|its official batch of 128| (300 rows: 128, 128, 44): passes of 128 rows and one
    pass of 384 give the official batch-128 noise."""
    small, d = generate(128, friendly_loss=loss)
    large, _ = generate(384, friendly_loss=loss)
    assert d.generation["pass_rows"] == 128
    assert small.abs().mean() > 0.01
    torch.testing.assert_close(small, large, atol=1e-5, rtol=0)


def test_one_block_matches_a_plain_official_batch_loop():
    """The first 128 rows against the official per-batch loop written out: torch.optim.SGD (Nesterov) on the mean
    KL minus μ·mean(e²), the same initial noise."""
    ctx, x0 = trained_context()
    defense = Friends("mnist", RECIPE, friendly_begin=0, friendly_steps=5, noise_batch=128)
    init = Friends._initial_noise(torch.Generator().manual_seed(7), x0[:128])
    eps = init.clone().requires_grad_(True)
    model = ctx.model.eval()
    opt = torch.optim.SGD([eps], lr=100, momentum=0.9, nesterov=True)
    target = torch.log_softmax(model(x0[:128]), 1).detach()
    for _ in range(5):
        e = eps.clamp(-BETA, BETA)
        out = torch.log_softmax(model((x0[:128] + e).clamp(0, 1)), 1)
        loss = nn.KLDivLoss(reduction="batchmean", log_target=True)(out, target) - e.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weight = Friends._official_weights(0, 128, 300, x0)
    _, noise = defense._optimise(model, x0[:128], init.clone(), weight)
    torch.testing.assert_close(noise, eps.detach().clamp(-BETA, BETA), atol=1e-5, rtol=0)


def test_same_seed_same_noise_other_seed_other_noise():
    a, _ = generate(128, friendly_steps=3)
    b, _ = generate(128, friendly_steps=3)
    c, _ = generate(128, seed=1, friendly_steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def raw_batches(kind, seed=0, batches=3, eps=8 / 255):
    """The noise of `batches` batch_raw calls on a batch of zeros (so x + noise − x is exact) but for row 0, at 1."""
    x = torch.zeros(16, 1, 8, 8)
    x[0] = 1.0
    ctx, _ = trained_context()
    ctx.seed = seed
    defense = Friends("mnist", RECIPE, noise=kind, noise_eps=eps)
    defense.prepare(ctx)
    return [defense.batch_raw(ctx, x, torch.zeros(16, dtype=torch.long), torch.arange(16))[0] - x
            for _ in range(batches)]


def test_bernoulli_noise_is_exactly_plus_minus_eps_fresh_each_batch_and_unclamped():
    first, second, _ = raw_batches("bernoulli")
    eps = torch.tensor(8 / 255)
    assert ((first[1:] == eps) | (first[1:] == -eps)).all()
    assert 0.3 < (first > 0).float().mean() < 0.7
    assert not torch.equal(first, second)
    assert (first[0] > 0).any() and (first[1:] < 0).any()  # 1 + eps and 0 − eps: not clamped (official)
    assert [torch.equal(a, b) for a, b in zip(raw_batches("bernoulli"), raw_batches("bernoulli"), strict=True)] \
        == [True] * 3
    uniform, gaussian = raw_batches("uniform")[0], raw_batches("gaussian", eps=0.1)[0]
    assert uniform.abs().max() <= 8 / 255 + 1e-7 and len(uniform.unique()) > 100
    assert 0.05 < gaussian.std() < 0.15
    assert all(torch.equal(n, torch.zeros_like(n)) for n in raw_batches("none"))


def test_a_resumed_defense_restores_the_noisy_rows_and_the_noise_stream(trained):
    defense, result, x0 = trained
    ctx = result.context
    tensors, state = defense.state(ctx)
    fresh = Friends("mnist", RECIPE, friendly_begin=3)
    ctx2 = TrainContext(ctx.model, ctx.optimizer, RECIPE, CPU, torch.Generator(), x0.clone(), ctx.train_y,
                        ctx.val_x, ctx.val_y, 3, 0)
    fresh.prepare(ctx2)
    fresh.load_state(ctx2, tensors, state)
    assert torch.equal(ctx2.train_x, ctx.train_x) and fresh.generation == defense.generation
    x = torch.zeros(4, 1, 8, 8)
    y, idx = torch.zeros(4, dtype=torch.long), torch.arange(4)
    assert torch.equal(fresh.batch_raw(ctx2, x, y, idx)[0], defense.batch_raw(ctx, x, y, idx)[0])


@pytest.mark.parametrize("params, message", [
    ({"beta": 0}, "--beta of method 'friends' must be in (0, 1]"),
    ({"beta": -0.1}, "--beta of method 'friends' must be in (0, 1]"),
    ({"noise": "salt"}, "unknown --noise value of method 'friends' 'salt'; valid choices: bernoulli, uniform"),
    ({"friendly_loss": "l1"}, "valid choices: kl, mse"),
    ({"friendly_begin": 4}, "--friendly-begin 4 is outside [0, 3]"),
    ({"friendly_steps": 0}, "--friendly-steps of method 'friends' must be in [1, 1000]"),
    ({"noise_batch": 100}, "--noise-batch must be 0 (auto) or a multiple of 128"),
])
def test_bad_options_are_one_line_errors(params, message):
    with pytest.raises(PoisonbenchError) as err:
        Friends("mnist", RECIPE, **params)
    assert message in str(err.value) and "\n" not in str(err.value)
