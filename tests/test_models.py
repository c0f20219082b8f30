"""Models: shapes, `features`/`head`, normalisation inside the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.data import load_dataset
from poisonbench.engine.models import MODELS, BasicBlock, ConvNet, ResNet18, build_model

from .conftest import write_cifar_dir, write_npz


def test_convnet_is_hints_mnist_network():
    model = ConvNet(1, 10, 28, (0.0,), (1.0,))
    x = torch.rand(4, 1, 28, 28)
    assert model.features(x).shape == (4, 1600)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == 1600
    assert model(x).shape == (4, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 40, (5, 5)), (40, 100, (5, 5))]
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in model.modules()) == 2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 2


def test_resnet18_cifar_layout():
    model = ResNet18(3, 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model.features(x).shape == (2, 512)
    assert model(x).shape == (2, 10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_forward_is_head_of_features_and_normalises_inside():
    model = ConvNet(1, 10, 28, (0.5,), (0.25,)).eval()
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), model.head(model.features(x)))
    plain = ConvNet(1, 10, 28, (0.0,), (1.0,)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "normalize" not in k}, strict=False)
    torch.testing.assert_close(model(x), plain((x - 0.5) / 0.25))


@pytest.mark.parametrize("name", MODELS.names())
def test_models_follow_the_dataset(tmp_path, name):
    write_cifar_dir(tmp_path / "cifar-10-batches-py", per_batch=210, n_test=10)
    data = load_dataset("cifar10", data_dir=tmp_path)
    model = build_model(name, data, seed=0).eval()
    assert model(data.test.x[:2].float() / 255).shape == (2, 10)
    grey = load_dataset(str(write_npz(tmp_path, n=200, size=28, classes=4)))  # 1 channel, 4 classes
    model = build_model(name, grey, seed=0).eval()
    assert model(grey.test.x[:2].float() / 255).shape == (2, 4)


def test_seeded_init_is_reproducible(tiny_npz):
    data = load_dataset(str(tiny_npz))
    a, b = build_model("convnet", data, seed=3), build_model("convnet", data, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.feature_dim == 100  # 16×16 input: ((16-4)/2-4)/2 = 1 → 100 features


def test_resnet18_is_kuangliu_layer_for_layer():
    """11,173,962 parameters for 3→10 (kuangliu's count: a missing shortcut BatchNorm changes it), a
    Conv-BN-ReLU stem, 1×1 stride-2 Conv+BN shortcuts where the stage downsamples, and every BasicBlock ends in a
    ReLU (its output, hence the features, is never negative)."""
    model = ResNet18(3, 10, 32, (0.5,) * 3, (0.25,) * 3).eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    for i, block in enumerate(model.layers):
        downsamples = i in (2, 4, 6)
        assert [type(m) for m in block.shortcut] == ([nn.Conv2d, nn.BatchNorm2d] if downsamples else [])
        if downsamples:
            assert block.shortcut[0].kernel_size == (1, 1) and block.shortcut[0].stride == (2, 2)
    block = BasicBlock(8, 8).eval()
    with torch.no_grad():
        assert (block(torch.randn(4, 8, 6, 6)) >= 0).all()
        assert (model.features(torch.rand(2, 3, 32, 32)) >= 0).all()


def test_convnet_layer_order():
    model = ConvNet(1, 10, 28, (0.0,), (1.0,))
    assert [type(m) for m in model.conv] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d] * 2
