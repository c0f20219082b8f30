"""UEraser (poisonbench/defenses/ueraser.py): each row trains on its highest-loss draw of the policy during the
authors' share of the epochs, on one draw afterwards; every draw comes from the run's seed; bad options are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench.defenses import DEFENSES, build_defense
from poisonbench.defenses import ueraser as ue
from poisonbench.defenses.ueraser import UEraser, candidates, channel_shuffle, selection_losses
from poisonbench.engine.recipes import Recipe
from poisonbench.engine.training import TrainContext, make_optimizer, train

from .conftest import files_under, one_line_error
from .toys import SmallConvNet

CPU = torch.device("cpu")
RECIPE = Recipe("tiny", epochs=8, batch_size=16, lr=0.05, momentum=0.9)
pytestmark = pytest.mark.usefixtures("one_thread")


class MeanLoss(nn.Module):
    """Logits (0, 4·mean(x)) per row: with label 0 the loss softplus(4·mean(x)) grows with the image's mean, so the
    highest-loss candidate of a row is the one of largest mean. Counts its forwards."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        m = x.flatten(1).mean(1) * 4 * self.w
        return torch.stack([torch.zeros_like(m), m], 1)


def context(model: nn.Module, n: int = 16, side: int = 8, seed: int = 0) -> TrainContext:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, side, side, generator=g), torch.zeros(n, dtype=torch.long)
    optimizer, _ = make_optimizer(model, RECIPE)
    return TrainContext(model, optimizer, RECIPE, CPU, torch.Generator().manual_seed(seed), x, y, x[:2], y[:2], 2,
                        seed, forward=model)


def known_candidates(monkeypatch, values: torch.Tensor, asked: list[int]):
    """Replace the policy's sampler: candidate k of row i is the constant image values[k, i]."""

    def fake(x, repeats, seed):
        asked.append(repeats)
        return values[:repeats].view(repeats, -1, 1, 1, 1).expand(repeats, *x.shape).clone()

    monkeypatch.setattr(ue, "candidates", fake)


def test_registered_with_the_authors_defaults():
    assert DEFENSES.get("ueraser") is UEraser
    defense = build_defense("ueraser", "cifar10", Recipe("paper", epochs=200, batch_size=128, lr=0.1))
    assert defense.params == {"repeats": 5, "share": 0.25}
    assert defense.adversarial_epochs == 50  # LSP/cifar_train.py: epoch < 50 of 200


@pytest.mark.parametrize("share, epochs, adversarial", [(0.25, 200, 50), (0.3, 200, 60), (1.0, 200, 200),
                                                        (0.25, 8, 2), (0.25, 2, 1), (0.01, 10, 1)])
def test_the_share_of_epochs_scales_to_the_recipe(share, epochs, adversarial):
    recipe = Recipe("r", epochs=epochs, batch_size=16, lr=0.1)
    assert UEraser("mnist", recipe, share=share).adversarial_epochs == adversarial


@pytest.mark.parametrize("share, epochs, adversarial", [(0.26, 30, 8), (0.24, 30, 7), (0.3, 27, 8), (0.1, 15, 2)])
def test_the_adversarial_epochs_are_rounded_to_the_nearest_not_truncated_nor_ceiled(share, epochs, adversarial):
    """share · epochs = 7.8 → 8 (truncation: 7), 7.2 → 7 (ceiling: 8), 8.1 → 8, 1.5 → 2; and the K draws stop exactly
    there: `repeats(epoch)` is K up to epoch adversarial − 1, then 1."""
    recipe = Recipe("r", epochs=epochs, batch_size=16, lr=0.1)
    defense = UEraser("mnist", recipe, repeats=5, share=share)
    assert defense.adversarial_epochs == adversarial
    assert [defense.repeats(e) for e in range(epochs)] == [5] * adversarial + [1] * (epochs - adversarial)
    assert defense.summary()["adversarial_epochs"] == adversarial


def test_plasma_contrast_has_kornias_strength_four_times_the_plasma_map():
    """RandomPlasmaContrast (UEraser's policy, kornia): (x − 0.5)·4·plasma + 0.5, the plasma map a fractal of mean
    about ½ and range about [0, 1]. On grey + 0.05 (never clamped) the gain (out − 0.5) / 0.05 is 4·plasma: mean about
    2, up to about 4, as kornia's own RandomPlasmaContrast on the same input and seed."""
    from kornia.augmentation import RandomPlasmaContrast

    x = torch.full((64, 3, 16, 16), 0.55)
    g = torch.Generator().manual_seed(0)
    start = g.get_state()
    gain = (ue.plasma_contrast(g, x) - 0.5) / 0.05
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = (RandomPlasmaContrast(roughness=ue.PLASMA_ROUGHNESS, p=1.0)(x) - 0.5) / 0.05
    assert gain.mean() == pytest.approx(reference.mean().item(), rel=0.05)
    assert gain.std() == pytest.approx(reference.std().item(), rel=0.1)
    assert gain.max() == pytest.approx(reference.max().item(), rel=0.1)
    assert 1.8 < gain.mean() < 2.2 and 3.5 < gain.max() <= 4.4
    g.set_state(start)
    plasma = ue._plasma(g, x)  # the same draws: the map the contrast used
    assert 0.4 < plasma.mean() < 0.6 and plasma.min() > -0.1 and plasma.max() < 1.1  # the map is about [0, 1]
    assert torch.allclose(gain, 4 * plasma, atol=1e-4)


def test_each_row_trains_on_its_highest_loss_candidate(monkeypatch):
    """The authors' rule is per row (max over the K repeats of each row's loss), not the batch's best repeat."""
    k, n = 5, 16
    values = torch.rand(k, n, generator=torch.Generator().manual_seed(1))
    asked: list[int] = []
    known_candidates(monkeypatch, values, asked)
    model = MeanLoss()
    ctx = context(model, n)
    defense = UEraser("mnist", RECIPE, repeats=k)
    defense.prepare(ctx)
    out, y = defense.batch(ctx, ctx.train_x, ctx.train_y, torch.arange(n))
    best = values.argmax(0)
    assert asked == [k] and model.calls == k  # one forward per repeat
    assert torch.equal(y, ctx.train_y)
    assert torch.equal(out[:, 0, 0, 0], values[best, torch.arange(n)])
    assert len(set(best.tolist())) > 1  # rows chose different repeats: no single repeat gives this batch
    every = torch.stack([F.cross_entropy(model(c), y, reduction="none") for c in values.view(k, n, 1, 1, 1).expand(
        k, *out.shape)])
    assert torch.allclose(F.cross_entropy(model(out), y, reduction="none"), every.max(0).values)


def test_after_the_share_one_draw_and_no_selection(monkeypatch):
    """Adversarial epochs ask K draws and forward each; the later ones train on the one draw they ask for
    (UEraser-Lite: README `r = repeat if e < aa_epochs else 1`), with no forward."""
    k, n = 3, 16
    values = torch.rand(k, n, generator=torch.Generator().manual_seed(2))
    asked: list[int] = []
    known_candidates(monkeypatch, values, asked)
    model = MeanLoss()
    ctx = context(model, n)
    defense = UEraser("mnist", RECIPE, repeats=k, share=0.25)  # 2 of 8 epochs
    defense.prepare(ctx)
    calls, outs = [], []
    for epoch in range(RECIPE.epochs):
        ctx.epoch = epoch
        before = model.calls
        out, _ = defense.batch(ctx, ctx.train_x, ctx.train_y, torch.arange(n))
        calls.append(model.calls - before)
        outs.append(out)
    assert asked == [k, k, 1, 1, 1, 1, 1, 1]
    assert calls == [k, k, 0, 0, 0, 0, 0, 0]
    assert torch.equal(outs[5][:, 0, 0, 0], values[0]) and not torch.equal(outs[0][:, 0, 0, 0], values[0])


def test_draws_come_from_the_run_seed_only():
    """Same seed, epoch and batch: the same draws; another seed or the next batch: others. Neither the engine's
    generator nor torch's global one moves."""
    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(3))

    def first_two(seed):
        model = SmallConvNet()
        ctx = context(model, seed=seed)
        defense = UEraser("mnist", RECIPE, repeats=1)
        defense.prepare(ctx)
        engine, global_rng = ctx.generator.get_state(), torch.get_rng_state()
        a, _ = defense.batch(ctx, x, ctx.train_y, torch.arange(16))
        b, _ = defense.batch(ctx, x, ctx.train_y, torch.arange(16))
        assert torch.equal(ctx.generator.get_state(), engine) and torch.equal(torch.get_rng_state(), global_rng)
        return a, b

    a, b = first_two(0)
    a2, b2 = first_two(0)
    c, _ = first_two(1)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_channel_shuffle_permutes_channels_and_is_the_identity_on_one_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 4, 4, generator=g)
    out = channel_shuffle(g, x)
    for row_in, row_out in zip(x, out, strict=True):
        assert sorted(c.sum().item() for c in row_in) == pytest.approx(sorted(c.sum().item() for c in row_out))
    assert not torch.equal(out, x)
    grey = x[:, :1]
    assert torch.equal(channel_shuffle(g, grey), grey)


def test_every_repeat_draws_its_own_augmentation():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    drawn = candidates(x, 4, seed=7)
    assert drawn.shape == (4, *x.shape)
    assert all(not torch.equal(drawn[i], drawn[j]) for i in range(4) for j in range(i))
    assert torch.equal(drawn, candidates(x, 4, seed=7))


def test_selection_forwards_in_train_mode_and_leaves_the_running_statistics():
    """Each repeat's loss uses its own BatchNorm batch statistics (train mode, one forward per repeat, as the
    official scripts), and the running statistics are those from before the selection."""
    torch.manual_seed(0)
    model = SmallConvNet().train()
    ctx = context(model, n=8)
    drawn = torch.rand(3, 8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    before = [b.clone() for b in model.buffers()]
    losses = selection_losses(ctx, drawn, ctx.train_y)
    assert all(torch.equal(b, s) for b, s in zip(model.buffers(), before, strict=True)) and model.training
    with torch.no_grad():
        expected = torch.stack([F.cross_entropy(model(d), ctx.train_y, reduction="none") for d in drawn])
    assert torch.allclose(losses, expected)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(losses[0], F.cross_entropy(model(drawn[0]), ctx.train_y, reduction="none"))


def test_training_with_ueraser_is_reproducible_and_differs_from_plain_training():
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    recipe = Recipe("tiny", epochs=2, batch_size=32, lr=0.05, momentum=0.9)

    def fit(method_defense):
        torch.manual_seed(0)
        model = SmallConvNet()
        train(model, x, y, x[:8], y[:8], recipe, seed=3, device=CPU, num_classes=3, defense=method_defense,
              compile="off", accel="off")
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = fit(UEraser("mnist", recipe, share=0.5))
    assert torch.equal(first, fit(UEraser("mnist", recipe, share=0.5)))
    assert not torch.equal(first, fit(None))


@pytest.mark.parametrize("option, value, needle", [("--repeats", "0",
                                                    "--repeats of method 'ueraser' must be in [1, 100]"),
                                                   ("--share", "0", "--share of method 'ueraser' must be in (0, 1]"),
                                                   ("--share", "1.5", "must be in (0, 1], got 1.5")])
def test_out_of_range_options_are_refused(cli, tiny_npz, tmp_path, option, value, needle):
    code, _, err = cli("defend", "--method", "ueraser", option, value, "--recipe", "quick", "--epochs", "1",
                       "--compile", "off", "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, needle, f"got {value}")
    assert files_under(tmp_path) == [tiny_npz]
