"""accel.input_grad: StemConv2d gradients equal nn.Conv2d's; the fused ReLU + pooling equals the pair;
inference_copy swaps only few-channel stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.data import load_dataset
from poisonbench.engine.kernels import inference_copy
from poisonbench.engine.kernels.input_grad import ReluAvgPool2d, StemConv2d, fuse_relu_pools, swap_stems
from poisonbench.engine.models import build_model


@pytest.mark.parametrize("channels,kernel,stride,padding,size,dilation",
                         [(1, 5, 1, 0, 28, 1), (3, 3, 1, 1, 32, 1), (3, 3, 2, 1, 17, 1), (1, 4, 3, 2, 15, 1),
                          (2, 3, 2, 3, 14, 2)])
def test_input_gradient_matches_conv2d(channels, kernel, stride, padding, size, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 7, kernel, stride, padding, dilation).double().requires_grad_(False)
    stem = StemConv2d.from_conv(conv)
    x = torch.rand(5, channels, size, size, dtype=torch.float64)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xs = x.contiguous(memory_format=memory_format)
        grads = []
        for module in (conv, stem):
            xi = xs.clone().requires_grad_(True)
            out = module(xi)
            upstream = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
            (g,) = torch.autograd.grad((out * upstream).sum(), xi)
            grads.append(g)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stem(xs), conv(xs))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel,size", [(2, 24), (3, 9), (2, 7)])
def test_fused_relu_pool_matches_the_pair_exactly(memory_format, kernel, size):
    torch.manual_seed(0)
    z = torch.randn(3, 5, size, size, dtype=torch.float64)
    z[0, 0, :2, :2] = 0.0  # ReLU's kink: both give 0 there
    z = z.contiguous(memory_format=memory_format)
    results = []
    for module in (nn.Sequential(nn.ReLU(), nn.AvgPool2d(kernel)), ReluAvgPool2d(kernel)):
        zi = z.clone().requires_grad_(True)
        out = module(zi)
        upstream = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
        results.append((out, *torch.autograd.grad((out * upstream).sum(), zi)))
    assert torch.equal(results[1][0], results[0][0]) and torch.equal(results[1][1], results[0][1])  # bit-exact


def test_relu_pool_fusion_keeps_hooks_and_handles_lists_and_unbatched_input():
    pair = nn.Sequential(nn.ReLU(), nn.AvgPool2d([2, 2]))
    fuse_relu_pools(pair)
    assert isinstance(pair[0], ReluAvgPool2d) and pair[0].kernel_size == 2
    z = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)  # unbatched (C, H, W): the plain pair's rule
    (g,) = torch.autograd.grad(pair(z).sum(), z)
    torch.testing.assert_close(g, (z > 0).double() / 4)
    seen = []
    hooked = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2))
    hooked[0].register_forward_hook(lambda *_: seen.append(1))
    fuse_relu_pools(hooked)
    assert type(hooked[0]) is nn.ReLU and type(hooked[1]) is nn.AvgPool2d  # the caller's hook keeps firing
    hooked(torch.randn(1, 1, 4, 4))
    assert seen == [1]


def test_frozen_copy_supports_empty_batches_and_torch_func(tiny_npz):
    model = build_model("convnet", load_dataset(str(tiny_npz)), seed=0).double()
    copy = inference_copy(model, torch.rand(1, 1, 16, 16, dtype=torch.float64))
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    loss = lambda inp: nn.functional.cross_entropy(copy(inp), y, reduction="sum")  # noqa: E731
    xi = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(xi), xi)
    torch.testing.assert_close(torch.func.grad(loss)(x), expected, rtol=1e-12, atol=1e-12)
    stem = StemConv2d.from_conv(nn.Conv2d(1, 4, 3).double())
    empty = torch.zeros(0, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(stem(empty).sum(), [empty, stem.weight, stem.bias])
    assert grads[0].shape == empty.shape and not grads[1].any() and not grads[2].any()


def test_stems_are_swapped_only_where_few_channels_enter(tiny_npz):
    model = build_model("convnet", load_dataset(str(tiny_npz)), seed=0)
    copy = inference_copy(model)
    assert isinstance(copy.conv[0], StemConv2d)
    assert isinstance(copy.conv[2], ReluAvgPool2d) and isinstance(copy.conv[3], nn.Identity)
    assert type(copy.conv[4]) is nn.Conv2d  # 40 input channels: oneDNN's own backward
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(copy(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_weight_and_bias_gradients_match_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, 1, 1).double()
    stem = swap_stems(nn.Sequential(conv))[0]
    assert isinstance(stem, StemConv2d) and stem.weight.requires_grad
    x = torch.rand(4, 3, 9, 9, dtype=torch.float64)
    reference = torch.autograd.grad(nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1).square().sum(),
                                    [conv.weight, conv.bias])
    ours = torch.autograd.grad(stem(x).square().sum(), [stem.weight, stem.bias])
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_from_conv_keeps_float64_parameters_exactly():
    conv = nn.Conv2d(1, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(conv.weight.shape, dtype=torch.float64) / 3)  # not float32-representable
    stem = StemConv2d.from_conv(conv)
    assert stem.weight.dtype == torch.float64 and torch.equal(stem.weight, conv.weight)

