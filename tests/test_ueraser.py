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


def kornia_trivial_ops() -> dict:
    """kornia's own TrivialAugment operations (its default policy), by the names of ue.TRIVIAL_OPS, in its order."""
    from kornia.augmentation.auto import TrivialAugment

    ops = [m for m in TrivialAugment().modules() if type(m).__module__.endswith("operations.ops")]
    assert len(ops) == len(ue.TRIVIAL_OPS)
    return dict(zip(ue.TRIVIAL_OPS, ops, strict=True))


@pytest.mark.parametrize("name", ue.TRIVIAL_OPS)
@pytest.mark.parametrize("shape", [(6, 3, 12, 16), (6, 1, 16, 10)])
def test_each_trivial_operation_equals_kornias_own_operation_at_the_same_magnitudes(monkeypatch, name, shape):
    """Differential: kornia's TrivialAugment operation (its augmentation class, its magnitude mapping, its parameter
    generator's centre) and ours on the same per-row magnitudes, the range's ends among them, give the same images
    (so the ranges' use, the ×180 and radian conversions, the centre, align_corners and clip_output are kornia's);
    and ours asks for kornia's magnitude range (a symmetric one as its upper end, the sign drawn per row)."""
    op = kornia_trivial_ops()[name]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(11))
    asked: list[tuple] = []
    magnitude = None
    if op.magnitude_range is not None:
        low, high = (float(v) for v in op.magnitude_range)
        magnitude = low + (high - low) * torch.rand(shape[0], generator=torch.Generator().manual_seed(12))
        magnitude[0], magnitude[1] = low, high
        magnitude[2] = high * 0.999 if not op.symmetric_megnitude else magnitude[2]
    with torch.random.fork_rng():
        torch.manual_seed(13)
        # kornia's translate generator draws the fraction times the width / height (a mag override skips that)
        pixels = {"translate_x": shape[-1], "translate_y": shape[-2]}.get(name, 1)
        params = op.forward_parameters(torch.Size(shape), mag=None if magnitude is None else magnitude * pixels)
    params["batch_prob"] = torch.ones(shape[0])
    expected = op(x, params)

    def uniform(g, rows, lo, hi):
        asked.append(("uniform", lo, hi))
        return magnitude.to(rows.dtype)

    def signed(g, rows, hi):
        asked.append(("signed", 0.0, hi))
        return torch.sign(params[op._factor_name]) * magnitude

    monkeypatch.setattr(ue, "_uniform", uniform)
    monkeypatch.setattr(ue, "_signed", signed)
    out = ue.trivial_op(name, torch.Generator().manual_seed(0), x)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    if magnitude is None:
        assert asked == []
    else:
        kind = "signed" if op.symmetric_megnitude else "uniform"
        assert [(k, pytest.approx(lo), pytest.approx(hi)) for k, lo, hi in asked] == [(kind, low, high)]
        assert not torch.allclose(out[0], out[1])  # the magnitude matters: the two ends differ


def test_uniform_and_signed_draw_kornias_magnitudes_from_the_generator():
    """_uniform: low + (high − low)·U(0, 1) per row, from the given generator, in x's dtype; _signed: U(0, high), then
    one more draw per row for the sign (negative below ½): symmetric, both signs, each row's magnitude kept."""
    x = torch.zeros(64, 3, 2, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(21)
    u = ue._uniform(g, x, 2.0, 5.0)
    replay = torch.Generator().manual_seed(21)
    assert u.dtype == torch.float64 and u.shape == (64,)
    assert torch.equal(u, 2.0 + 3.0 * torch.rand(64, generator=replay, dtype=torch.float64))
    assert 2.0 <= u.min() and u.max() <= 5.0 and u.max() - u.min() > 2.5
    s = ue._signed(g, x, 0.3)
    magnitude = 0.3 * torch.rand(64, generator=replay, dtype=torch.float64)
    negative = torch.rand(64, generator=replay, dtype=torch.float64) < 0.5
    assert torch.equal(s, torch.where(negative, -magnitude, magnitude))
    assert (s < 0).any() and (s > 0).any() and s.abs().max() <= 0.3 and s.abs().min() < 0.05
    assert torch.equal(g.get_state(), replay.get_state())  # nothing else drawn


def test_the_affine_centre_is_kornias_pixel_centre():
    from kornia.geometry.transform.affwarp import _compute_tensor_center  # what RandomRotation uses

    x = torch.zeros(3, 2, 12, 17)
    centre = ue._affine_center(x)
    assert torch.equal(centre, torch.tensor([[8.0, 5.5]] * 3))  # ((w − 1)/2, (h − 1)/2): x first
    assert torch.allclose(centre, _compute_tensor_center(x).expand(3, 2))
    assert centre.dtype == x.dtype


def test_plasma_stages_are_kornias_apply_transform_on_the_same_map(monkeypatch):
    """Differential: kornia's RandomPlasmaBrightness / RandomPlasmaContrast `apply_transform` given the plasma map
    and intensity our stage drew; the roughness and intensity ranges are UEraser's."""
    from kornia.augmentation import RandomPlasmaBrightness, RandomPlasmaContrast

    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(22))
    asked: list[tuple] = []
    real = ue._uniform

    def spy(g, rows, low, high):
        asked.append((low, high))
        return real(g, rows, low, high)

    monkeypatch.setattr(ue, "_uniform", spy)
    g = torch.Generator().manual_seed(23)
    start = g.get_state()
    out = ue.plasma_brightness(g, x)
    assert asked == [ue.PLASMA_ROUGHNESS, ue.PLASMA_INTENSITY] == [(0.3, 0.7), (0.5, 1.0)]
    g.set_state(start)
    plasma = ue._plasma(g, x)
    intensity = ue._uniform(g, x, 0.5, 1.0)
    assert plasma.shape == x.shape and not torch.equal(plasma[:, 0], plasma[:, 1])  # a map per channel
    brightness = RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0), p=1.0)
    expected = brightness.apply_transform(x, {"plasma": plasma, "intensity": intensity}, brightness.flags)
    assert torch.allclose(out, expected, atol=1e-6) and not torch.allclose(out, x, atol=0.05)
    assert out.min() == 0 and out.max() == 1  # clamped: the intensity pushes past both ends somewhere
    asked.clear()
    start = g.get_state()
    out = ue.plasma_contrast(g, x)
    assert asked == [(0.3, 0.7)]
    g.set_state(start)
    contrast = RandomPlasmaContrast(roughness=(0.3, 0.7), p=1.0)
    expected = contrast.apply_transform(x, {"plasma": ue._plasma(g, x)}, contrast.flags)
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_plasma_map_is_diamond_square_with_a_roughness_per_row(monkeypatch):
    calls = []

    def fake(shape, roughness, random_fn, device, dtype):
        calls.append((shape, roughness.clone(), device, dtype))
        return torch.zeros(shape, dtype=dtype, device=device)

    monkeypatch.setattr(ue, "kornia_kernels", lambda: __import__("types").SimpleNamespace(diamond_square=fake))
    x = torch.zeros(5, 2, 4, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(24)
    ue._plasma(g, x)
    replay = torch.Generator().manual_seed(24)
    (shape, roughness, device, dtype), = calls
    assert shape == (5, 2, 4, 6) and device == x.device and dtype == torch.float64
    assert torch.allclose(roughness, 0.3 + 0.4 * torch.rand(5, generator=replay, dtype=torch.float64))


def test_selection_losses_use_the_compiled_forward_only_for_the_compiled_batch_sizes():
    """A compiled forward (ctx.forward, not the model itself) serves the full batch and the last batch; another
    size runs the model eagerly; the losses are each row's cross-entropy per repeat, (K, B)."""
    model = MeanLoss()
    ctx = context(model, n=40)  # batch 16: compiled sizes 16 and 40 % 16 = 8
    used = []

    def compiled(x):
        used.append(len(x))
        return model(x)

    ctx.forward = compiled
    y = torch.zeros(16, dtype=torch.long)
    drawn = torch.rand(3, 16, 1, 4, 4, generator=torch.Generator().manual_seed(25))
    losses = selection_losses(ctx, drawn, y)
    assert used == [16, 16, 16] and losses.shape == (3, 16)
    expected = F.softplus(4 * drawn.flatten(2).mean(2))  # MeanLoss: label 0, logits (0, 4·mean)
    assert torch.allclose(losses, expected, atol=1e-6)
    assert torch.equal(losses.argmax(0), expected.argmax(0))
    selection_losses(ctx, drawn[:, :8], y[:8])
    assert used == [16, 16, 16, 8, 8, 8]
    calls = model.calls
    selection_losses(ctx, drawn[:, :5], y[:5])  # neither 16 nor 8: eager
    assert used == [16] * 3 + [8] * 3 and model.calls == calls + 3
    ctx.forward = None  # no compiled forward at all: the model
    selection_losses(ctx, drawn, y)
    assert model.calls == calls + 6


def test_batch_seeds_follow_the_epoch_and_the_batch_and_survive_a_resume():
    from poisonbench.core.hashing import derived_seed

    model = SmallConvNet()
    ctx = context(model, seed=9)
    defense = UEraser("mnist", RECIPE)
    seeds = {}
    for epoch in (0, 0, 0, 1, 1, 3):
        ctx.epoch = epoch
        seeds.setdefault(epoch, []).append(defense.batch_seed(ctx))
    assert seeds == {e: [derived_seed(9, f"ueraser:{e}:{i}") for i in range(len(s))] for e, s in seeds.items()}
    assert len({s for v in seeds.values() for s in v}) == 6
    resumed = UEraser("mnist", RECIPE)  # a fresh defense at epoch 1 (a resumed run): the same seeds
    ctx.epoch = 1
    assert [resumed.batch_seed(ctx), resumed.batch_seed(ctx)] == seeds[1]
    resumed.prepare(ctx)
    assert resumed.batch_seed(ctx) == seeds[1][0]


def test_the_summary_is_the_whole_configuration():
    recipe = Recipe("r", epochs=30, batch_size=16, lr=0.1)
    defense = UEraser("cifar10", recipe, repeats=3, share=0.5)
    assert defense.summary() == {"method": "ueraser", "repeats": 3, "share": 0.5, "adversarial_epochs": 15,
                                 "epochs": 30}
    assert defense.family == "cifar10"


@pytest.mark.parametrize("name", ue.TRIVIAL_OPS)
def test_each_trivial_operation_draws_from_the_given_generator_only(name):
    """The magnitudes come from the batch's generator: the same seed gives the same image, torch's global generator
    does not move (a draw from it would make the run depend on other code's draws)."""
    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(26))
    global_rng = torch.get_rng_state()
    a = ue.trivial_op(name, torch.Generator().manual_seed(5), x)
    assert torch.equal(torch.get_rng_state(), global_rng)
    assert torch.equal(a, ue.trivial_op(name, torch.Generator().manual_seed(5), x))
    if name not in ("auto_contrast", "equalize"):
        assert not torch.equal(a, ue.trivial_op(name, torch.Generator().manual_seed(6), x))


def test_an_unknown_operation_is_refused_by_name():
    with pytest.raises(ValueError, match="^cutout$"):
        ue.trivial_op("cutout", torch.Generator(), torch.zeros(1, 1, 4, 4))


def test_the_threat_model_is_kept():
    from poisonbench.engine.threat import Threat

    threat = Threat()
    assert UEraser("mnist", RECIPE, threat).threat is threat
