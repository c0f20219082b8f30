"""moment_bn: a convolution whose train-mode BatchNorm statistics come from the input's patch moments is the same
function as Conv2d → BatchNorm2d (outputs, input and parameter gradients, running statistics, eval mode,
state_dict); it is swapped in only where it pays off (the ConvNet's stem), the engine uses it on the CPU and
hands the caller its own modules back, and an inference copy made mid-training (HINT) is unaffected."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from poisonbench.core.device import to_float
from poisonbench.data import load_dataset
from poisonbench.engine.kernels import inference_copy
from poisonbench.engine.kernels.input_grad import StemConv2d
from poisonbench.engine.kernels.moment_bn import (
    MomentBatchNorm2d,
    MomentConv2d,
    moment_names,
    patch_index,
    patch_moments,
    restore_modules,
    swap_moment_batchnorm,
)
from poisonbench.engine.models import build_model


def _pair(cin: int, padding: int, momentum: float | None, dtype=torch.float64, eps: float = 1e-5,
          bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    pair = nn.Sequential(nn.Conv2d(cin, 40, 5, padding=padding, bias=bias),
                         nn.BatchNorm2d(40, eps=eps, momentum=momentum), nn.ReLU())
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        pair[1].weight.uniform_(0.5, 2)
        pair[1].bias.uniform_(-1, 1)
        pair[1].running_mean.uniform_(-1, 1)
        pair[1].running_var.uniform_(0.5, 2)
    return pair.to(dtype)


def test_patch_moments_equal_the_moments_of_the_unfolded_patches():
    x = torch.rand(5, 2, 9, 8, dtype=torch.float64) * 3 - 1
    index = patch_index(2, (9, 8), (3, 4), x.device)
    patches = nn.functional.unfold(x, (3, 4)).transpose(1, 2).reshape(-1, 2 * 3 * 4)  # [B·L, P], channel-major
    mean, cov = patch_moments(x, index)
    torch.testing.assert_close(mean, patches.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, torch.cov(patches.T, correction=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin,padding,momentum,eps,bias,frozen_bn", [
    (1, 0, 0.1, 1e-5, True, False), (2, 1, None, 1e-5, True, False), (3, 2, 0.3, 1e-5, True, False),
    (1, 0, 0.1, 0.5, False, False),  # a non-default ε, no convolution bias
    (1, 1, 0.1, 1e-5, True, True),  # BatchNorm frozen in eval mode while the convolution trains
])
def test_moment_pair_is_conv_then_batchnorm(cin, padding, momentum, eps, bias, frozen_bn):
    reference = _pair(cin, padding, momentum, eps=eps, bias=bias)
    moment = copy.deepcopy(reference)
    swapped = swap_moment_batchnorm(moment, torch.rand(1, cin, 10, 10, dtype=torch.float64))
    assert [type(m) for m in moment] == [MomentConv2d, MomentBatchNorm2d, nn.ReLU] and len(swapped) == 2
    if frozen_bn:
        reference[1].eval()
        moment[1].eval()
    for step in range(3):  # three batches: the running statistics compound, the cumulative average counts
        x = torch.rand(6, cin, 10, 10, dtype=torch.float64) * (step + 1) - step
        results = []
        for module in (reference, moment):
            xi = x.clone().requires_grad_(True)
            module.zero_grad()
            out = module(xi)
            upstream = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out).sin()
            (out * upstream).sum().backward()
            results.append((out, xi.grad, [p.grad for p in module.parameters()]))
        (out_r, gx_r, gp_r), (out_m, gx_m, gp_m) = results
        torch.testing.assert_close(out_m, out_r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gx_m, gx_r, rtol=1e-10, atol=1e-10)
        for a, b in zip(gp_m, gp_r, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for name, value in reference.state_dict().items():  # same keys, same running statistics and batch count
        torch.testing.assert_close(moment.state_dict()[name], value, rtol=1e-12, atol=1e-12)
    assert list(moment.state_dict()) == list(reference.state_dict())
    reference.eval()
    moment.eval()
    x = torch.rand(4, cin, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(moment(x), reference(x), rtol=1e-12, atol=1e-12)


def test_float32_moments_are_as_accurate_as_batchnorm():
    """On the ConvNet stem with real digits: both float32 paths against a float64 reference."""
    data = load_dataset("mnist-5k")
    model = build_model("convnet", data, seed=0)
    x = model.normalize(to_float(data.train.x[:128], torch.device("cpu")))
    reference = nn.Sequential(model.conv[0], model.conv[1]).double()
    exact = reference(x.double())
    errors = {}
    for name in ("batchnorm", "moments"):
        pair = copy.deepcopy(reference).float()
        if name == "moments":
            swap_moment_batchnorm(pair, x[:1])
            assert isinstance(pair[0], MomentConv2d)
        errors[name] = (pair(x).double() - exact).abs().max().item()
    assert errors["moments"] < 1e-5 and errors["moments"] < 10 * errors["batchnorm"] + 1e-6, errors


def test_swap_only_where_the_moments_pay_off():
    mnist = load_dataset("mnist-5k")
    convnet = build_model("convnet", mnist, seed=0)
    sample = to_float(mnist.train.x[:1], torch.device("cpu"))
    swapped = swap_moment_batchnorm(convnet, sample)
    assert moment_names(convnet) == ["conv.0"]  # the stem; the 40→100 layer's 1,000-entry patches do not pay
    assert type(convnet.conv[4]) is nn.Conv2d and type(convnet.conv[5]) is nn.BatchNorm2d
    restore_modules(swapped)
    assert type(convnet.conv[0]) is nn.Conv2d and type(convnet.conv[1]) is nn.BatchNorm2d

    class Colour:  # ResNet-18 on 32×32 colour images: its 3-channel stem's moments cost 6.8× the convolution
        shape, num_classes, mean, std = (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3

    resnet = build_model("resnet18", Colour(), seed=0)
    assert swap_moment_batchnorm(resnet, torch.rand(1, 3, 32, 32)) == []

    def pair(**bn):
        return nn.Sequential(nn.Conv2d(1, 40, 5), nn.BatchNorm2d(40, **bn))

    assert MomentConv2d.pays_off(*pair(), (28, 28))
    assert not MomentConv2d.pays_off(*pair(affine=False), (28, 28))
    for conv in (nn.Conv2d(1, 40, 5, padding=2, padding_mode="reflect"), nn.Conv2d(1, 40, 5, dilation=2),
                 nn.Conv2d(2, 40, 5, groups=2), nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 40, 5)),
                 nn.Conv2d(1, 40, 5).half()):
        assert not MomentConv2d.pays_off(conv, nn.BatchNorm2d(40), (28, 28)), conv
    hooked_conv = pair()
    hooked_conv[0].register_forward_pre_hook(lambda *_: None)
    assert not MomentConv2d.pays_off(*hooked_conv, (28, 28))
    assert not MomentConv2d.pays_off(*pair(track_running_stats=False), (28, 28))
    hooked = pair()
    hooked[1].register_forward_hook(lambda *_: None)
    assert not MomentConv2d.pays_off(*hooked, (28, 28))
    strided = nn.Sequential(nn.Conv2d(1, 40, 5, stride=2), nn.BatchNorm2d(40))
    assert not MomentConv2d.pays_off(*strided, (28, 28))
    assert not MomentConv2d.pays_off(nn.Conv2d(1, 40, 5), nn.ReLU(), (28, 28))


def test_swapped_pair_shares_parameters_and_statistics():
    pair = _pair(1, 0, 0.1, torch.float32)
    conv, bn = pair[0], pair[1]
    swap_moment_batchnorm(pair, torch.rand(1, 1, 10, 10))
    before = bn.running_mean.clone()
    optimizer = torch.optim.SGD(pair.parameters(), lr=0.1)
    pair(torch.rand(8, 1, 10, 10)).square().mean().backward()
    optimizer.step()
    assert pair[0].weight is conv.weight and pair[1].weight is bn.weight and conv.weight.grad is not None
    assert not torch.equal(bn.running_mean, before) and bn.num_batches_tracked.item() == 1


def test_engine_uses_the_moment_layer_on_the_cpu_and_matches_batchnorm(monkeypatch):
    import poisonbench.engine.kernels.moment_bn as moment_module
    import poisonbench.engine.training as training
    from poisonbench.engine.recipes import resolve_recipe

    data = load_dataset("mnist-5k")
    rows = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:512]
    x, y = to_float(data.train.x[rows], torch.device("cpu")), data.train.y[rows]
    recipe = replace(resolve_recipe(data.family, "paper"), epochs=2)
    calls = []
    original_forward = MomentConv2d.forward
    monkeypatch.setattr(moment_module.MomentConv2d, "forward",
                        lambda self, t: calls.append((self._bn[0].training, t.shape[0])) or original_forward(self, t))
    results = {}
    for mode in ("moments", "batchnorm"):
        if mode == "batchnorm":
            monkeypatch.setattr(moment_module, "swap_moment_batchnorm", lambda model, sample: [])
        model = build_model("convnet", data, seed=0)
        out = training.train(model, x, y, x[:64], y[:64], recipe, seed=0, device=torch.device("cpu"),
                             num_classes=10, compile="off")
        assert type(model.conv[0]) is nn.Conv2d and type(model.conv[1]) is nn.BatchNorm2d  # handed back
        results[mode] = (out.history, model.state_dict())
    assert sum(rows for training_mode, rows in calls if training_mode) == 2 * 512  # every row, both epochs
    (h_m, sd_m), (h_b, sd_b) = results["moments"], results["batchnorm"]
    assert sd_m["conv.1.num_batches_tracked"].item() == sd_b["conv.1.num_batches_tracked"].item() == 8
    for a, b in zip(h_m, h_b, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    for k in sd_b:
        torch.testing.assert_close(sd_m[k].float(), sd_b[k].float(), rtol=1e-3, atol=1e-4)


def test_inference_copy_of_a_model_mid_training_is_the_plain_models():
    """HINT copies the model while the engine has swapped the stem: the copy must fold and swap as usual."""
    data = load_dataset("mnist-5k")
    x = to_float(data.train.x[:32], torch.device("cpu"))
    plain = build_model("convnet", data, seed=0)
    plain.train()(x)  # non-trivial running statistics
    swapped = copy.deepcopy(plain)
    swap_moment_batchnorm(swapped, x[:1])
    frozen_plain, frozen_swapped = inference_copy(plain, x[:1]), inference_copy(swapped, x[:1])
    assert isinstance(frozen_swapped.conv[0], StemConv2d)
    assert not any(isinstance(m, MomentConv2d | MomentBatchNorm2d) for m in frozen_swapped.modules())
    torch.testing.assert_close(frozen_swapped(x), frozen_plain(x), rtol=1e-5, atol=1e-5)
    assert isinstance(swapped.conv[0], MomentConv2d) and swapped.training  # the original is left as it was


def test_restore_hands_back_the_live_statistics_and_mode():
    """A `.double()` while swapped replaces buffer tensors only in the modules it reaches; an exception in eval
    mode must not bring the stem's BatchNorm back in train mode."""
    pair = _pair(1, 0, 0.1, torch.float32)
    conv, bn = pair[0], pair[1]
    swapped = swap_moment_batchnorm(pair, torch.rand(1, 1, 10, 10))
    pair.double()
    pair(torch.rand(8, 1, 10, 10, dtype=torch.float64))
    live_mean = pair[1].running_mean.clone()
    pair.eval()
    restore_modules(swapped)
    assert pair[0] is conv and pair[1] is bn and not bn.training and not conv.training
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert bn.running_mean.dtype == torch.float64 and torch.equal(bn.running_mean, live_mean)
    assert conv.weight.dtype == torch.float64 and bn.num_batches_tracked.item() == 1


def test_compiled_moment_pair_trains_and_evaluates_like_batchnorm():
    reference = _pair(1, 0, None, torch.float32)
    moment = copy.deepcopy(reference)
    swap_moment_batchnorm(moment, torch.rand(1, 1, 10, 10))
    compiled = torch.compile(moment, dynamic=False)
    for step in range(2):
        x = torch.rand(8, 1, 10, 10) + step
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(moment[1]._buffers[name], reference[1]._buffers[name], rtol=1e-5, atol=1e-6)
    reference.eval()
    moment.eval()
    x = torch.rand(4, 1, 10, 10)
    torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)
    assert moment[1].num_batches_tracked.item() == 2  # eval leaves the statistics alone


def test_other_input_sizes_build_their_own_patch_index():
    """Swapped for one input size, the pair still computes BatchNorm on others (the patch index follows the input,
    also for a transposed size with as many positions)."""
    reference = _pair(1, 0, 0.1)
    moment = copy.deepcopy(reference)
    swap_moment_batchnorm(moment, torch.rand(1, 1, 12, 9, dtype=torch.float64))
    for size in ((12, 9), (9, 12), (11, 11)):
        x = torch.rand(4, 1, *size, dtype=torch.float64)
        torch.testing.assert_close(moment(x), reference(x), rtol=1e-10, atol=1e-10)
