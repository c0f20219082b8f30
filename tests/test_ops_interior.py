"""OPS inside the first layer's view (issue 67): with its default margin, OPS never picks a pixel that the first
convolution of the family's default model covers partially (fewer than k² of its k×k windows, wholly inside the
image), on grey and on colour images whose constant border the official search would pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench.attacks import ATTACKS
from poisonbench.data import load_dataset
from poisonbench.engine.models import DEFAULT_MODEL, build_model
from poisonbench.poisons import craft_spec

from .conftest import class_images, files_under, one_line_error


def framed(root, channels: int):
    """16×16 class-band images with a black frame 2 pixels wide on every image: its |white − x| has std 0, the
    largest score there is, so the official search (margin 0) puts each class's pixel on it."""
    x, y = class_images(240, 16, channels=channels, classes=6)
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 0, 0, 0, 0
    path = root / f"framed{channels}.npz"
    np.savez(path, x=x, y=y)
    return load_dataset(str(path))


KERNELS: dict[str, int] = {}


def first_kernel(data) -> int:
    """k of the first nn.Conv2d of the family's default model (k × k), built once per family."""
    if data.family not in KERNELS:
        model = build_model(DEFAULT_MODEL[data.family], data)
        KERNELS[data.family] = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).kernel_size[0]
    return KERNELS[data.family]


def windows_covering(position: int, h: int, w: int, k: int) -> int:
    """How many k×k windows wholly inside the H×W image (no padding) hold the pixel `position` (row-major)."""
    onehot = torch.zeros(1, 1, h * w)
    onehot[0, 0, position] = 1
    return int(F.conv2d(onehot.view(1, 1, h, w), torch.ones(1, 1, k, k)).sum())


def chosen_positions(data, eps: int, **params) -> set[int]:
    attack = ATTACKS.get("ops")(data.family, **params)
    positions, _ = attack.search(data, eps, torch.device("cpu"))
    return set(positions.flatten().tolist())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("eps", [1, 16])
def test_ops_never_picks_a_pixel_the_first_layer_covers_partially(tmp_path, channels, eps):
    data = framed(tmp_path, channels)
    c, h, w = data.shape
    k = first_kernel(data)  # 5 (ConvNet, grey), 3 (ResNet-18, colour)
    assert data.family == ("mnist" if channels == 1 else "cifar10")
    official = chosen_positions(data, eps, margin=0)
    assert any(windows_covering(p, h, w, k) < k * k for p in official)  # the data tempts the search to the frame
    picked = chosen_positions(data, eps)
    assert len(picked) >= eps
    assert all(windows_covering(p, h, w, k) == k * k for p in picked), sorted(picked)


def test_the_default_margin_is_k_minus_1_of_the_default_models_first_convolution(tmp_path):
    for channels in (1, 3):
        data = framed(tmp_path, channels)
        assert ATTACKS.get("ops")(data.family).params["margin"] == first_kernel(data) - 1


def test_the_margin_is_recorded_in_the_poison_id(tmp_path):
    data = framed(tmp_path, 1)
    spec, official = craft_spec(data, "ops"), craft_spec(data, "ops", margin=0)
    assert spec.params == {"margin": 4} and spec.poison_id != official.poison_id


@pytest.mark.parametrize("args,needle", [(["--margin", "8"], "leaves no pixel position"),
                                         (["--eps", "65"], "at least 4 from the border"),
                                         (["--margin", "-1"], "--margin")])
def test_a_margin_that_leaves_too_few_pixels_is_a_one_line_error(cli, tiny_npz, tmp_path, args, needle):
    results = tmp_path / "r"
    code, _, err = cli("craft", "--attack", "ops", *args, "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, needle)
    assert files_under(results) == []
