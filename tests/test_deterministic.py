"""`--deterministic on` means deterministic (issue 65): an op without a deterministic CUDA kernel raises instead of
warning, and the training and crafting paths use none: the ResNet-18 head pools by a mean over H×W, the crafting
shifts are matrix products, not kornia's `translate` (`grid_sample`). docs/engine.md, "The training engine"."""

from __future__ import annotations

import ast
import inspect
import os

import pytest
import torch
import torch.nn.functional as F

import poisonbench.core.device as device_module
from poisonbench.attacks import crafting_augment as crafting_module
from poisonbench.attacks.crafting_augment import crafting_augment
from poisonbench.attacks.deepconfuse_nets import BottleneckVGG11
from poisonbench.core.device import configure_device
from poisonbench.engine.models import ResNet18

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def torch_flags(monkeypatch):
    """torch's algorithm flags are process-wide: whatever a test sets (deterministic algorithms and their
    warn_only, cuDNN's flags, Inductor's, CUBLAS_WORKSPACE_CONFIG, our remembered mode) is put back afterwards."""
    import torch._inductor.config as inductor_config

    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # not monkeypatch: its undo would hide the config entry (delattr); absent before torch 2.10 (core/device.py)
    inductor = getattr(inductor_config, "deterministic", None)
    monkeypatch.setattr(device_module, "_deterministic", device_module._deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if hasattr(inductor_config, "deterministic"):
            inductor_config.deterministic = inductor


def nondeterministic_kernel() -> None:
    """A stand-in for a CUDA kernel without a deterministic implementation (`grid_sampler_2d_backward_cuda`, ...):
    `put_` without accumulation makes the same ATen call (`alertNotDeterministic`) on every device, the CPU's too.
    (torch 2.14 has no `torch._C._alert_not_deterministic` to call directly.)"""
    torch.zeros(2).put_(torch.tensor([0]), torch.tensor([1.0]))


def test_deterministic_on_raises_on_a_nondeterministic_kernel_off_autotunes(torch_flags):
    """`cuda` without an index: `configure_device` sets torch's flags and makes no CUDA call (no `set_device`), so
    it runs on a machine without CUDA. Under "on" the stand-in raises (warn_only is off); under "off" it runs,
    and cuDNN autotunes with no deterministic pins."""
    cuda = torch.device("cuda")
    assert configure_device(cuda, "on") == cuda
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
        nondeterministic_kernel()
    configure_device(cuda)  # a nested call keeps "on"
    with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
        nondeterministic_kernel()
    configure_device(cuda, "off")
    nondeterministic_kernel()  # no error, no pins
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    if not torch.cuda.is_available():
        assert not torch.cuda.is_initialized()  # no CUDA call was made


def old_resnet_body(model: ResNet18, x: torch.Tensor) -> torch.Tensor:
    """ResNet18.body before issue 65: `F.adaptive_avg_pool2d(·, 1).flatten(1)`."""
    return F.adaptive_avg_pool2d(model.layers(model.stem(x)), 1).flatten(1)


@pytest.mark.parametrize("side", [16, 32])  # a 2×2 and a 4×4 last stage
@pytest.mark.parametrize("channels_last", [False, True])
def test_resnet_mean_pool_equals_adaptive_avg_pool_bit_for_bit(side, channels_last):
    """The head's mean over H×W gives the old `adaptive_avg_pool2d(·, 1)` features and input gradients bit for bit
    on the CPU (measured: max |difference| 0; ATen itself computes adaptive_avg_pool2d(·, 1) as this mean)."""
    torch.manual_seed(0)
    model = ResNet18(3, 10, side, [0.5] * 3, [0.25] * 3)
    x = torch.rand(4, 3, side, side)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(4, 512)
    new, old = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    features_new, features_old = model.body(new), old_resnet_body(model, old)
    assert torch.equal(features_new, features_old)
    (features_new * weights).sum().backward()
    (features_old * weights).sum().backward()
    assert torch.equal(new.grad, old.grad)


def test_deepconfuse_vgg_mean_pool_equals_adaptive_avg_pool_bit_for_bit():
    torch.manual_seed(0)
    net = BottleneckVGG11(3, 10, 32)
    x = torch.rand(2, 3, 32, 32)
    pool = net.features[-2]
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    assert torch.equal(pool(z), F.adaptive_avg_pool2d(z, 1))
    assert net(x).shape == (2, 10)


def kornia_reference(augment, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`CraftingAugment.apply` before issue 65: kornia's `translate` (grid_sample, bilinear, zero padding,
    align_corners=True), then the flips."""
    translate = pytest.importorskip("kornia.geometry.transform").translate
    shifts = (draws.to(x.dtype)[:, :2] * 2 - 1) * augment.max_shift
    out = translate(x, shifts, mode="bilinear", padding_mode="zeros", align_corners=True)
    if augment.flip:
        out = torch.where((draws[:, 2] > 0.5).view(-1, 1, 1, 1), out.flip(-1), out)
    return out


# measured max |ours − kornia's| over 512 random images and draws (values; input gradients of Σ w·out, w ∈ [0, 1)):
# float32 4.7e-6 and 5.6e-6 (kornia rounds its sampling coordinates through normalised [-1, 1] space); float64 1e-14
TOLERANCE = {torch.float32: (1e-5, 2e-5), torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family, side, channels", [("mnist", 28, 1), ("cifar10", 32, 3)])
def test_crafting_shifts_equal_kornias_translate_to_float_rounding(family, side, channels, dtype):
    """Random sub-pixel shifts in ±max_shift (both families; flips on cifar10): the banded-matrix translation
    gives kornia's `translate` values and input gradients up to float rounding."""
    augment = crafting_augment(family, side)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(512, channels, side, side, generator=g, dtype=dtype)
    weights = torch.rand(x.shape, generator=g, dtype=dtype)
    draws = augment.draw(len(x), g)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_theirs = augment.apply(ours, draws), kornia_reference(augment, theirs, draws)
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    values, grads = TOLERANCE[dtype]
    assert (out_ours - out_theirs).abs().max() <= values
    assert (ours.grad - theirs.grad).abs().max() <= grads
    assert out_ours.dtype == dtype and out_ours.abs().max() > 0


def test_crafting_shifts_move_content_as_kornia_does():
    """Integer and half-pixel shifts, both signs, against direct indexing: +dx right, +dy down, zeros outside."""
    augment = crafting_augment("mnist", 28)  # ±2 px, no flip
    x = torch.rand(1, 1, 28, 28)
    for dx, dy in ((2.0, 0.0), (-2.0, 1.0), (0.5, -0.5)):
        draws = torch.tensor([[(dx / augment.max_shift + 1) / 2, (dy / augment.max_shift + 1) / 2, 0.0]])
        out = augment.apply(x, draws)
        torch.testing.assert_close(out, kornia_reference(augment, x, draws), atol=1e-5, rtol=0)
    out = augment.apply(x, torch.tensor([[1.0, 0.25, 0.0]]))  # dx = +2, dy = -1
    torch.testing.assert_close(out[..., :-1, 2:], x[..., 1:, :-2])
    assert out[..., :, :2].abs().max() == 0 and out[..., -1, :].abs().max() == 0


def test_crafting_augment_does_not_import_kornia():
    tree = ast.parse(inspect.getsource(crafting_module))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert not [name for name in imported if name.split(".")[0] == "kornia"]


@pytest.mark.gpu
def test_training_and_crafting_backwards_run_under_deterministic_on_on_cuda(torch_flags):
    """On CUDA under "on" (warn_only off): the ResNet-18 input gradient through augmented inputs runs (no
    nondeterministic kernel raises) and repeats bit for bit."""
    cuda = torch.device("cuda", 0)
    configure_device(cuda, "on")
    torch.manual_seed(0)
    model = ResNet18(3, 10, 32, [0.5] * 3, [0.25] * 3).to(cuda)
    augment = crafting_augment("cifar10", 32)
    x = torch.rand(64, 3, 32, 32, device=cuda)
    draws = augment.draw(64, torch.Generator().manual_seed(0))
    y = torch.arange(64, device=cuda) % 10

    def input_grad():
        rows = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(augment.apply(rows, draws)), y)
        (grad,) = torch.autograd.grad(loss, rows)
        return grad

    first = input_grad()
    assert torch.equal(first, input_grad())
