"""ISS (Image Shortcut Squeezing, poisonbench/defenses/iss.py): each squeeze is the library's own (Pillow's JPEG round
trip at quality 10, Pillow's grayscale, Pillow's posterize), it is applied once to the rows in use, and a class-wise
shortcut that separates the classes before squeezing no longer does after."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.engine.recipes import resolve_recipe

from .conftest import files_under, one_line_error

RECIPE = resolve_recipe("cifar10", "quick")


def pil_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """What the official code does to one HWC uint8 image: Pillow save as JPEG at `quality`, open again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def natural_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (N, H, W, C): bilinear upsampling of a coarse 4×4 grid, like low-frequency content."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fine * 190 + 30).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def to_pixels(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def prepared(x: torch.Tensor, rows: torch.Tensor | None = None, family: str = "cifar10", **params):
    """ISS's `prepare` on train rows `x` (in place, as the engine calls it); returns (defense, context)."""
    defense = build_defense("iss", family, RECIPE, **params)
    ctx = SimpleNamespace(train_x=x, rows_in_use=lambda: torch.arange(len(x)) if rows is None else rows)
    assert defense.prepare(ctx) is None
    return defense, ctx


def test_registered_with_the_authors_defaults():
    assert "iss" in DEFENSES.names()
    assert DEFENSES.get("iss").defaults("cifar10", RECIPE) == {"squeeze": "jpeg", "jpeg_quality": 10, "bdr_bits": 2}
    assert DEFENSES.get("iss").defaults("mnist", resolve_recipe("mnist", "quick"), Threat("targeted", 5, 100))[
        "squeeze"] == "jpeg"


@pytest.mark.parametrize("channels", [3, 1])
def test_the_jpeg_round_trip_is_pillows_at_quality_10(channels):
    images = natural_images(6, channels)
    images = np.clip(images.astype(int) + np.random.default_rng(0).integers(-8, 9, images.shape), 0, 255)
    images = images.astype(np.uint8)
    x = to_float(images)
    defense, ctx = prepared(x)
    got = to_pixels(ctx.train_x)
    for image, out in zip(images, got, strict=True):
        expected = pil_jpeg(image[..., 0] if channels == 1 else image, 10)
        assert np.array_equal(out.reshape(expected.shape), expected)
    assert not np.array_equal(got, images)  # JPEG-10 changes the images
    s = defense.summary()
    assert s["squeeze"] == "jpeg" and s["jpeg_quality"] == 10 and s["rows"] == 6
    assert s["mean_abs_change"] == pytest.approx(np.abs(got.astype(float) - images).mean() / 255, abs=1e-6)


def test_grayscale_is_pillows_luma_on_three_channels_and_the_identity_on_one():
    images = natural_images(5, 3)
    x = to_float(images)
    defense, ctx = prepared(x, squeeze="gray")
    got = to_pixels(ctx.train_x)
    for image, out in zip(images, got, strict=True):
        luma = np.asarray(Image.fromarray(image).convert("L"))
        assert np.array_equal(out, np.repeat(luma[..., None], 3, axis=2))  # transforms.Grayscale(3)
    assert defense.summary()["identity"] is False and defense.summary()["mean_abs_change"] > 0
    mono = to_float(natural_images(5, 1))
    before = mono.clone()
    defense, ctx = prepared(mono, family="mnist", squeeze="gray")
    assert torch.equal(ctx.train_x, before) and defense.summary()["identity"] is True
    assert defense.summary()["mean_abs_change"] == 0


def test_bit_depth_reduction_is_pillows_posterize_to_2_bits():
    images = natural_images(4, 3)
    defense, ctx = prepared(to_float(images), squeeze="bdr")
    got = to_pixels(ctx.train_x)
    for image, out in zip(images, got, strict=True):
        assert np.array_equal(out, np.asarray(ImageOps.posterize(Image.fromarray(image), 2)))
    assert defense.summary()["bdr_bits"] == 2 and len(np.unique(got)) <= 4


@pytest.mark.parametrize("how", ["jpeg", "bdr", "gray"])
def test_x_plus_a_float_delta_is_rounded_to_the_uint8_grid_before_the_squeeze(how):
    """The official pipeline squeezes PNG files: round(255·(x + δ)), not the truncation of 255·(x + δ). A float δ off
    the 1/255 grid (here U(−8, 8) levels) would leave about half of the pixels one level low if truncated; the
    squeeze must equal Pillow's on the uint8 image rounded half to even (computed here in NumPy), pixel for pixel."""
    clean = to_float(natural_images(6, 3, seed=2))
    delta = (torch.rand(clean.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 8 / 255
    x = (clean + delta).clamp(0, 1)
    # BDR changes only where rounding crosses a multiple of 64: put a band of pixels 0.3 levels under 64, 128, 192
    x[:, :, :4] = ((64 * torch.randint(1, 4, (6, 3, 4, 32), generator=torch.Generator().manual_seed(4)) - 0.3)
                   / 255)
    scaled = x.numpy() * np.float32(255)  # the same float32 product as the defense's
    rounded = np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1)  # half to even, as torch.round
    assert (np.floor(scaled) != np.rint(scaled)).mean() > 0.4  # truncating instead would be off on ≥ 40 %
    _, ctx = prepared(x, squeeze=how)
    got = to_pixels(ctx.train_x)
    for image, out in zip(rounded, got, strict=True):
        if how == "jpeg":
            expected = pil_jpeg(image, 10)
        elif how == "bdr":
            expected = image & 0b11000000  # the 2 high bits of each uint8 pixel
            assert np.array_equal(expected, np.asarray(ImageOps.posterize(Image.fromarray(image), 2)))
        else:
            expected = np.repeat(np.asarray(Image.fromarray(image).convert("L"))[..., None], 3, axis=2)
        assert np.array_equal(out, expected), f"{(out != expected).mean():.0%} of the pixels differ"


def test_only_the_rows_in_use_are_squeezed_and_the_summary_splits_poisoned_from_clean():
    x = to_float(natural_images(6, 3))
    x[:3] = (x[:3] + 3 / 255).clamp(0, 1)
    before = x.clone()
    rows = torch.tensor([0, 1, 4])
    defense, ctx = prepared(x, rows=rows)
    changed = (ctx.train_x != before).flatten(1).any(1)
    assert changed.tolist() == [True, True, False, False, True, False]
    poisoned = torch.tensor([True, True, True, False, False, False])
    s = defense.summary(poisoned)
    assert s["rows"] == 3 and s["mean_abs_change_poisoned"] > 0 and s["mean_abs_change_clean"] >= 0


# --- a class-wise shortcut stops separating the classes ---------------------------------------------------------

CLASSES = 4


def nearest_centroid_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest-centroid accuracy (a linear classifier) fitted on the even rows, measured on the odd rows."""
    features = features.flatten(1).double()
    fit, held = slice(0, None, 2), slice(1, None, 2)
    centroids = torch.stack([features[fit][labels[fit] == c].mean(0) for c in range(CLASSES)])
    predicted = torch.cdist(features[held], centroids).argmin(1)
    return (predicted == labels[held]).double().mean().item()


def shortcut_accuracy(base: np.ndarray, delta: torch.Tensor, labels: torch.Tensor, **params) -> tuple[float, float]:
    """Nearest-centroid accuracy on the perturbation-only images (poisoned minus clean), before and after the
    squeeze: squeeze(x + δ) − squeeze(x)."""
    clean = to_float(base)
    poisoned = (clean + delta).clamp(0, 1)
    before = nearest_centroid_accuracy(poisoned - clean, labels)
    _, squeezed_poisoned = prepared(poisoned.clone(), **params)
    _, squeezed_clean = prepared(clean.clone(), **params)
    return before, nearest_centroid_accuracy(squeezed_poisoned.train_x - squeezed_clean.train_x, labels)


def test_grayscale_removes_a_class_wise_colour_shortcut():
    """A per-class colour offset (±4 to ±10 levels, each of luma under half a level) on grey images: perfectly
    separable, and gone after grayscale (ISS paper §4: grayscale squeezes colour shortcuts)."""
    n = 64
    labels = (torch.arange(n) // 2) % CLASSES  # each class in the fitted (even) and the held-out (odd) rows
    grey = natural_images(n, 1)
    base = np.repeat(grey, 3, axis=3)  # R = G = B: the luma of a grey pixel is its value exactly
    offsets = torch.tensor([[8, -4, 0], [-8, 4, 0], [4, 0, -10], [-4, 0, 10]], dtype=torch.float32) / 255
    delta = offsets[labels][:, :, None, None].expand(n, 3, 32, 32)
    before, after = shortcut_accuracy(base, delta, labels, squeeze="gray")
    assert before == 1.0
    assert after <= 1 / CLASSES + 1e-9  # every perturbation-only image is zero: nothing is left to separate


def high_frequency_delta(labels: torch.Tensor, eps: float = 8 / 255) -> torch.Tensor:
    """Per class a pattern of JPEG's highest spatial frequencies: the 8×8 DCT basis image (7, 7), (7, 6), (6, 7) or
    (6, 6) tiled over the image, scaled to ℓ∞ = ε (the same on every channel, so it lives in luma)."""
    k = torch.arange(8, dtype=torch.float64)

    def basis(u: int) -> torch.Tensor:
        return torch.cos((2 * k + 1) * u * torch.pi / 16)

    patterns = []
    for u, v in ((7, 7), (7, 6), (6, 7), (6, 6)):
        block = torch.outer(basis(u), basis(v))
        patterns.append((block / block.abs().max()).tile(4, 4) * eps)
    return torch.stack(patterns).float()[labels][:, None].expand(len(labels), 3, 32, 32)


def test_jpeg_removes_a_class_wise_high_frequency_shortcut():
    n = 64
    labels = (torch.arange(n) // 2) % CLASSES  # each class in the fitted (even) and the held-out (odd) rows
    before, after = shortcut_accuracy(natural_images(n, 3, seed=1), high_frequency_delta(labels), labels)
    assert before == 1.0
    assert after <= 1 / CLASSES + 0.2


def test_a_milder_jpeg_keeps_more_of_the_shortcut():
    """The quality matters (so a wrong one would show): at quality 95 the ±8 pattern survives the round trip."""
    n = 64
    labels = (torch.arange(n) // 2) % CLASSES  # each class in the fitted (even) and the held-out (odd) rows
    _, after = shortcut_accuracy(natural_images(n, 3, seed=1), high_frequency_delta(labels), labels,
                                 jpeg_quality=95)
    assert after == 1.0


def test_a_squeeze_that_does_not_exist_is_one_line_exit_2_and_writes_nothing(cli, tiny_npz, tmp_path):
    results = tmp_path / "r"
    code, _, err = cli("defend", "--dataset", tiny_npz, "--recipe", "quick", "--epochs", "1", "--compile", "off",
                       "--method", "iss", "--squeeze", "blur", "--results", results)
    one_line_error(code, err, "'blur'", "gray, jpeg, bdr")
    assert files_under(results) == []


def test_iss_trains_end_to_end_and_records_what_it_applied(cli, tiny_npz, tmp_path):
    results = tmp_path / "r"
    code, out, err = cli("defend", "--dataset", tiny_npz, "--recipe", "quick", "--epochs", "1", "--batch-size", "64",
                         "--compile", "off", "--method", "iss", "--results", results, "--json")
    assert code == 0, err
    record = json.loads((results / "runs" / f"{json.loads(out)['run_id']}.json").read_text())
    assert record["config"]["defense"] == {"method": "iss", "squeeze": "jpeg", "jpeg_quality": 10, "bdr_bits": 2}
    assert record["defense"]["squeeze"] == "jpeg" and record["defense"]["mean_abs_change"] > 0
