"""The model-free shortcut attacks (LSP, OPS) and the norm contract they need (docs/engine.md, "Norms")."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext, check_eps, project
from poisonbench.attacks.ops import class_scores
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.poisons import craft_spec

from .conftest import class_images, write_mnist_dir, write_npz


def npz(root, x, y, name="data.npz"):
    path = root / name
    np.savez(path, x=x.astype(np.uint8), y=np.asarray(y, dtype=np.int64))
    return load_dataset(str(path))


def craft(data, name, budget=1.0, seed=0, eps=None, **params):
    spec = craft_spec(data, name, eps=eps, budget=budget, seed=seed, **params)
    attack = ATTACKS.get(name)(data.family, **spec.params)
    ctx = AttackContext(data, attack.choose_rows(data, budget, seed), spec.eps, budget, seed, torch.device("cpu"))
    return attack, ctx, attack.craft(ctx)


def changed_positions(delta):
    """(K, H·W) bool: the pixel positions where some channel of δ is non-zero."""
    return (delta != 0).any(1).flatten(1)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """Mid-grey 16×16 images (pixels in [64, 192)), 4 classes: LSP's δ is never clamped on them."""
    rng = np.random.default_rng(0)
    return npz(tmp_path_factory.mktemp("grey"), rng.integers(64, 192, (200, 16, 16)), np.arange(200) % 4)


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ten")
    return load_dataset(str(write_npz(root, n=400, classes=10)))


# --- the norm contract ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps, norm", [(0, "linf"), (1, "linf"), (0, "l2"), (-1, "l2"), (float("inf"), "l2"),
                                       (float("nan"), "l2"), (0, "l0"), (0.5, "l0"), (1.5, "l0"), (-2, "l0")])
def test_check_eps_refuses_each_norms_out_of_range_bounds(eps, norm):
    with pytest.raises(PoisonbenchError, match=f"eps must be .*got {eps}") as info:
        check_eps(eps, norm)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("eps, norm", [(0.3, "linf"), (0.5, "l2"), (40.0, "l2"), (1, "l0"), (3.0, "l0")])
def test_check_eps_accepts_each_norms_bounds(eps, norm):
    check_eps(eps, norm)


def test_l2_projection_scales_rows_over_the_radius_and_clamps_into_the_box():
    x = torch.full((3, 1, 2, 2), 0.5)
    delta = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.3, 0.4, 0, 0], [0.6, 0.6, 0.6, 0.6]]).view(3, 1, 2, 2)
    out = project(x, delta, 0.25, "l2")
    norms = out.flatten(1).norm(dim=1)
    assert torch.allclose(out[0], delta[0])  # inside the ball: kept
    assert norms[1] == pytest.approx(0.25, rel=1e-6) and torch.allclose(out[1], delta[1] * 0.5)  # scaled onto it
    clamped = project(torch.full((1, 1, 2, 2), 0.95), delta[2:], 0.25, "l2")  # 0.95 + 0.125 clamps to 1
    assert torch.allclose(clamped, torch.full((1, 1, 2, 2), 0.05), atol=1e-6)
    assert clamped.flatten(1).norm(dim=1).item() < 0.25


def test_l0_projection_refuses_a_row_over_the_bound_and_clamps_the_box():
    x = torch.full((2, 3, 4, 4), 0.5)
    delta = torch.zeros_like(x)
    delta[0, :, 0, 0] = 0.7  # one position, every channel: within ε = 1
    out = project(x, delta.clone(), 1, "l0")
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5)) and changed_positions(out).sum(1).tolist() == [1, 0]
    delta[1, 0, 1, 1] = delta[1, 2, 3, 3] = 0.1  # two positions
    with pytest.raises(RuntimeError, match="more than ε = 1 pixel positions in rows \\[1\\]"):
        project(x, delta, 1, "l0")


def test_lsp_and_ops_defaults(grey):
    assert (ATTACKS.get("lsp").norm, ATTACKS.get("ops").norm, ATTACKS.get("pgd").norm) == ("l2", "l0", "linf")
    assert ATTACKS.get("lsp").default_eps("mnist", (1, 28, 28)) == pytest.approx(6 / 255 * 28)
    assert ATTACKS.get("lsp").default_eps("cifar10", (3, 32, 32)) == pytest.approx(6 / 255 * np.sqrt(3072))
    assert ATTACKS.get("ops").default_eps("cifar10", (3, 32, 32)) == 1
    assert ATTACKS.get("lsp")("mnist").params["patch_size"] == 7 and ATTACKS.get("lsp")("cifar10").params[
        "patch_size"] == 8
    assert "norm" not in craft_spec(grey, "lsp", patch_size=4).inputs()  # the poison id hashes what it did before


# --- LSP ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classwise", [False, True])
def test_lsp_perturbations_are_linearly_separable_by_class(ten_classes, classwise):
    """A linear probe fit on δ alone (in units of ε) classifies its rows (Yu et al.'s claim: the perturbations are
    linearly separable); with the labels shuffled (a draw that ignores the class) it does not."""
    from sklearn.linear_model import LogisticRegression

    data = ten_classes
    _, ctx, poison = craft(data, "lsp", patch_size=4, classwise=classwise)
    features = poison.delta.flatten(1).numpy() / ctx.eps
    labels = data.train.y[poison.indices].numpy()
    half = len(labels) // 2  # fit on half the rows, scored on the other half
    probe = LogisticRegression(C=100, max_iter=5000).fit(features[:half], labels[:half])
    assert probe.score(features[half:], labels[half:]) >= 0.97
    shuffled = np.random.default_rng(0).permutation(labels)
    probe = LogisticRegression(C=100, max_iter=5000).fit(features[:half], shuffled[:half])
    assert probe.score(features[half:], shuffled[half:]) < 0.3


def test_lsp_delta_has_l2_norm_eps_where_nothing_was_clamped(grey, tmp_path):
    attack, ctx, poison = craft(grey, "lsp", patch_size=4)
    eps = ctx.eps
    assert eps == pytest.approx(6 / 255 * 16)
    norms = poison.delta.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, eps), rtol=1e-5)  # mid-grey: no clamp anywhere
    # a black band on every third image: the clamp acts on some rows, exactly ε where it did not, below where it did
    rng = np.random.default_rng(1)
    images = rng.integers(64, 192, (200, 16, 16))
    images[::3, :4] = 0
    data = npz(tmp_path, images, np.arange(200) % 4)
    attack, ctx, poison = craft(data, "lsp", patch_size=4)
    raw = attack.perturb(ctx)
    assert torch.allclose(raw.flatten(1).norm(dim=1), torch.full((len(raw),), ctx.eps), rtol=1e-5)
    x = data.train.x[poison.indices].float() / 255
    inside = ((x + raw) >= 0).flatten(1).all(1) & ((x + raw) <= 1).flatten(1).all(1)
    norms = poison.delta.flatten(1).norm(dim=1)
    assert 0 < inside.sum() < len(inside)
    assert torch.allclose(norms[inside], torch.full_like(norms[inside], ctx.eps), rtol=1e-5)
    assert (norms[~inside] < ctx.eps * (1 - 1e-4)).all()


def test_lsp_is_patches_of_one_draw_per_image_or_per_class(grey):
    y = grey.train.y
    _, _, poison = craft(grey, "lsp", patch_size=4)
    blocks = poison.delta.view(len(y), 1, 4, 4, 4, 4)  # (grid row, patch row, grid column, patch column)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))  # constant on each 4×4 patch
    first = [(y == c).nonzero().flatten()[:2] for c in range(4)]
    assert all(not torch.allclose(poison.delta[a], poison.delta[b]) for a, b in first)  # one point per image
    _, _, classwise = craft(grey, "lsp", patch_size=4, classwise=True)
    for c in range(4):  # the same δ for every image of a class, another for each class
        rows = classwise.delta[y == c]
        assert torch.allclose(rows, rows[:1].expand_as(rows), atol=1e-7)
    assert len({tuple(classwise.delta[(y == c).nonzero()[0, 0]].flatten()[:3].tolist()) for c in range(4)}) == 4


def test_lsp_follows_the_seed_and_not_the_budget(grey):
    _, _, full = craft(grey, "lsp", patch_size=4, seed=1)
    _, _, half = craft(grey, "lsp", patch_size=4, seed=1, budget=0.5)
    assert torch.equal(half.delta, full.rows_for(half.indices))
    _, _, other = craft(grey, "lsp", patch_size=4, seed=2)
    assert not torch.allclose(full.delta, other.delta)


# --- OPS ---------------------------------------------------------------------------------------------------------


def ops_pairs(data, poison):
    """{class: (position, colour tuple)} read off the poisoned images, checking each class has one pair."""
    c = data.shape[0]
    x = data.train.x[poison.indices].float() / 255
    xp = (x + poison.delta).flatten(2)
    moved = changed_positions(poison.delta)
    pairs = {}
    for cls in range(data.num_classes):
        rows = (data.train.y[poison.indices] == cls).nonzero().flatten()
        positions = {int(moved[r].nonzero()[0, 0]) for r in rows}
        assert len(positions) == 1, (cls, positions)
        (p,) = positions
        colour = xp[rows][:, :, p]
        assert torch.allclose(colour, colour.round(), atol=1e-6) and torch.allclose(colour, colour[:1].expand_as(
            colour), atol=1e-6)  # the same corner of the colour cube on every image of the class
        pairs[cls] = (p, tuple(colour[0].round().int().tolist()))
        assert c == len(pairs[cls][1])
    return pairs


@pytest.mark.parametrize("channels", [1, 3])
def test_ops_changes_one_pixel_per_image_the_same_pair_per_class_distinct_across_classes(tmp_path, channels):
    x, y = class_images(240, 16, channels=channels, classes=6)
    data = npz(tmp_path, x, y)
    _, ctx, poison = craft(data, "ops")
    assert ctx.eps == 1
    assert (changed_positions(poison.delta).sum(1) == 1).all()  # exactly one position, every image
    pairs = ops_pairs(data, poison)
    assert len(set(pairs.values())) == data.num_classes
    _, _, again = craft(data, "ops", seed=5)  # no randomness: the seed changes nothing
    assert torch.equal(poison.delta, again.delta)


def test_ops_with_eps_2_changes_two_positions_per_image(tmp_path):
    x, y = class_images(200, 16, channels=3, classes=4)
    data = npz(tmp_path, x, y)
    _, _, poison = craft(data, "ops", eps=2, margin=0)
    assert (changed_positions(poison.delta).sum(1) == 2).all()


def test_ops_on_black_corners_with_zero_std_picks_them_in_position_order(tmp_path):
    """MNIST-like: a black border on every image, so |white − x| = 1 with std 0 there. The score stays finite and
    the ties go to the lowest position: the official search (`--margin 0`) gives class c border pixel c (row 0),
    white."""
    x, y = class_images(200, 16, classes=4)
    x[:, 0, :] = x[:, -1, :] = x[:, :, 0] = x[:, :, -1] = 0
    data = npz(tmp_path, x, y)
    scores, admissible = class_scores(data.train.x[data.train.y == 0])
    assert torch.isfinite(scores).all() and not admissible[0, 0] and admissible[0, 1]
    _, _, poison = craft(data, "ops", margin=0)
    assert ops_pairs(data, poison) == {c: (c, (1,)) for c in range(4)}


def test_ops_skips_a_pair_that_would_leave_an_image_unchanged(tmp_path):
    """Position 5 is white on every image of class 0 but one, black there: (5, black) scores best, but that image
    would keep its pixel, so the class takes the best pair that changes every image."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 8, 8))
    y = np.arange(200) % 2
    x[y == 0, 0, 5] = 255
    x[np.flatnonzero(y == 0)[::10], 0, 5] = 0  # a tenth: some land in the train split
    data = npz(tmp_path, x, y)
    class0 = data.train.x[data.train.y == 0]
    scores, admissible = class_scores(class0)
    best = int(scores.flatten().argmax())
    assert divmod(best, 2) == (5, 0) and not admissible[5, 0]  # the unconstrained best: position 5, black
    _, _, poison = craft(data, "ops", margin=0)
    assert (changed_positions(poison.delta).sum(1) == 1).all()  # every image carries its class's pixel
    assert ops_pairs(data, poison)[0] != (5, (0,))


def ops_reference(data, spread=np.std):
    """OPS by its definition, from the float images: {class: (position, colour tuple)}, and per class (scores (H·W,
    2^C), admissible (H·W, 2^C)). The score of (position p, corner colour c) is mean / (spread + 1e-6) of |c − x_p|
    over the class's train images and channels (`spread`: the population standard deviation); colour k is
    `itertools.product((0, 1), repeat=C)`'s k-th, channel 0 the most significant bit; a pair is admissible when no
    image already has colour c at p on every channel. Classes in order, each its best admissible pair (the first
    maximum) that no earlier class took."""
    x = data.train.x.double().numpy() / 255
    y = data.train.y.numpy()
    c = x.shape[1]
    colours = np.array(list(itertools.product((0, 1), repeat=c)), dtype=np.float64)  # (2^C, C)
    taken, pairs, per_class = set(), {}, {}
    for cls in range(data.num_classes):
        flat = x[y == cls].reshape((y == cls).sum(), c, 1, -1)  # (n, C, 1, H·W)
        d = np.abs(colours.T[None, :, :, None] - flat)  # (n, C, 2^C, H·W)
        scores = (d.mean((0, 1)) / (spread(d, axis=(0, 1)) + 1e-6)).T  # (H·W, 2^C)
        admissible = ~(d == 0).all(1).any(0).T
        per_class[cls] = scores, admissible
        masked = np.where(admissible, scores, -np.inf)
        for p, k in taken:
            masked[p, k] = -np.inf
        p, k = divmod(int(np.argmax(masked)), len(colours))
        taken.add((p, k))
        pairs[cls] = (p, tuple(int(v) for v in colours[k]))
    return pairs, per_class


def test_ops_keeps_the_rgb_colour_code_so_no_image_already_has_its_class_pixel(tmp_path):
    """RGB: at position 0 the images of class 0 are cyan (0, 255, 255) but one in twenty is red (255, 0, 0), so
    (0, red) scores best of all pairs — but a red image would keep its pixel: the pair is not admissible, and the
    class takes the best pair that changes every image. The colour code is channel 0 first: with it reversed, the
    red image would block blue (0, 0, 1), and class 0 would take red at position 0, which that image already has.
    Every class's pair is OPS's by its definition (`ops_reference`)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 6, 6, 3))
    y = np.arange(200) % 2
    zero = np.flatnonzero(y == 0)
    x[zero, 0, 0] = (0, 255, 255)
    x[zero[::20], 0, 0] = (255, 0, 0)
    data = npz(tmp_path, x, y)
    red = 4  # (1, 0, 0): channel 0 the most significant bit
    class0 = data.train.x[data.train.y == 0]
    assert ((class0[:, :, 0, 0] == torch.tensor([255, 0, 0], dtype=torch.uint8)).all(1)).any()  # in the train split
    expected, per_class = ops_reference(data)
    scores, admissible = per_class[0]
    assert divmod(int(scores.argmax()), 8) == (0, red) and not admissible[0, red] and admissible[0, 1]
    assert expected[0] != (0, (1, 0, 0))
    _, _, poison = craft(data, "ops", margin=0)
    assert (changed_positions(poison.delta).sum(1) == 1).all()  # every image carries its class's pixel
    assert ops_pairs(data, poison) == expected
    got_scores, got_admissible = class_scores(class0)
    assert np.allclose(got_scores.numpy(), scores, rtol=1e-9) and np.array_equal(got_admissible.numpy(), admissible)


def test_ops_scores_a_pixel_by_the_standard_deviation_not_the_variance(tmp_path):
    """One channel: at position A, class 0's pixels are 0 or 15 (|white − x| = 1 or 0.94: mean 0.97, std 0.03), at
    position B 123 or 132 (|white − x| ≈ 0.52 or 0.48: mean 0.5, std 0.018). Mean / std ranks A first (≈ 33 against
    ≈ 28), mean / variance B (≈ 1100 against ≈ 1600): OPS's score (its std) takes A. The other pixels are uniform
    noise, and every class's pair is OPS's by its definition (`ops_reference`)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (200, 8, 8))
    y = np.arange(200) % 2
    zero = np.flatnonzero(y == 0)
    a, b = 9, 20  # row-major positions
    x[zero, a // 8, a % 8] = np.where(np.arange(len(zero)) % 2, 0, 15)
    x[zero, b // 8, b % 8] = np.where(np.arange(len(zero)) % 2, 123, 132)
    data = npz(tmp_path, x, y)
    expected, per_class = ops_reference(data)
    variance, _ = ops_reference(data, spread=np.var)
    assert expected[0] == (a, (1,)) and variance[0][0] == b  # the toy: the two scores rank A and B apart
    _, _, poison = craft(data, "ops", margin=0)
    assert ops_pairs(data, poison) == expected
    got_scores, _ = class_scores(data.train.x[data.train.y == 0])
    assert np.allclose(got_scores.numpy(), per_class[0][0], rtol=1e-9)


def test_ops_refuses_a_class_with_no_pair_that_changes_every_image(tmp_path):
    x, y = class_images(200, 8, classes=4)
    x[:40:2], x[1:40:2], y[:40] = 0, 255, 2  # class 2 holds all-black and all-white images
    data = npz(tmp_path, x, y)
    flat = data.train.x[data.train.y == 2].flatten(1)
    assert (flat.amax(1) == 0).any() and (flat.amin(1) == 255).any()  # both in the train split
    with pytest.raises(PoisonbenchError, match="changes every image of class 2") as info:
        craft_spec(data, "ops", margin=0)
    assert "\n" not in str(info.value)


# --- stored sets, the mix, HINT's file ------------------------------------------------------------------------


def test_validate_checks_a_stored_set_under_its_attacks_norm(grey, tmp_path):
    for name, params, needle in (("lsp", {"patch_size": 4}, "max ‖δ_i‖₂"), ("ops", {}, "pixel positions")):
        spec = craft_spec(grey, name, **params)
        poisons.craft(spec, grey, tmp_path)
        checks = {check: (ok, detail) for check, ok, detail in poisons.validate(tmp_path, spec.poison_id, grey)}
        assert all(ok for ok, _ in checks.values()), checks
        assert needle in checks["eps-ball"][1]


def test_export_a_mix_of_lsp_and_ops_to_hints_file(tmp_path, cli):
    """HINT's file holds x + δ of the train rows, whatever the norm: LSP's rows within ℓ2 ε, OPS's one pixel."""
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_mnist_dir(mnist, n_train=1200, n_test=100)
    res, out_file = tmp_path / "res", tmp_path / "mix.pt"
    code, out, err = cli("poisons", "export", "--dataset", "mnist", "--data-dir", mnist, "--poison-ratio", "1",
                         "--attacks", "lsp,ops", "--order", "train", "--out", out_file, "--results", res, "--json")
    assert code == 0, err
    written = json.loads(out)
    data = load_dataset("mnist", mnist)
    images = torch.load(out_file, weights_only=True)["poisoned_images"]
    delta = images - data.train.x[:, 0].float() / 255
    lsp = poisons.load(res, written["poison_ids"]["lsp"], data)
    ops = poisons.load(res, written["poison_ids"]["ops"], data)
    one_pixel = (delta != 0).flatten(1).sum(1) == 1
    assert int(one_pixel.sum()) == written["counts"]["ops"] and int((~one_pixel).sum()) == written["counts"]["lsp"]
    rows = torch.arange(len(data.train))
    assert torch.allclose(delta[one_pixel], ops.rows_for(rows[one_pixel])[:, 0], atol=1e-6)
    assert torch.allclose(delta[~one_pixel], lsp.rows_for(rows[~one_pixel])[:, 0], atol=1e-6)
    assert delta[~one_pixel].flatten(1).norm(dim=1).max() <= 6 / 255 * 28 + 1e-5
