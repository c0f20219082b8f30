"""Fast input gradients of a frozen model: `fused_copy` and the convolutions it swaps in on the CPU
(`StemConv2d` for few-channel stems, `engine.kernels.spectral.SpectralConv2d` for large kernels on small maps).

`StemConv2d` is a convolution whose backward is one GEMM plus col2im (input; col2im as one strided add per
kernel offset) / im2col plus one GEMM (weights).

Input-gradient attacks (PGD, DAP: one backward w.r.t. the pixels per step) spend most of a step's backward in
the first convolution when it has one or three input channels: oneDNN's transposed convolution into a
1-channel output is several times slower than the forward convolution of the same FLOPs (profiled on the MNIST
ConvNet, 1→40 k5: 63 ms backward vs 13 ms forward per 250 images on one CPU core). The gradient of a
convolution w.r.t. its input is `fold(Wᵀ g)`: the column matrix of the transposed weight times the output
gradient, summed back onto the image grid. Written that way it is one well-shaped matrix product (rows = batch ×
output positions) and kh·kw whole-batch strided adds (ATen's col2im loops over the images one at a time: 2×
slower here); same numbers up to float rounding.

`ReluAvgPool2d` is ReLU followed by a non-overlapping average pooling, with the backward of the pair as one
element-wise pass: `∂/∂z = [z > 0] · upsample(g) / k²`. Separately, eager PyTorch runs `avg_pool2d_backward`
(slow on channels_last: profiled at 16 ms per 250 images for the ConvNet stem's 40×24×24 map, plus a layout copy)
and then `threshold_backward` over the same 23 MB; fused, the pair is a single read of z and one write.

`fused_copy` (the frozen copy `poisonbench.engine.kernels.inference_copy` makes in mode `auto`) swaps both in for the
frozen surrogates of input-gradient attacks and HINT's I_pert. The weight
gradient (`patchesᵀ g`, one GEMM) makes it usable in training too, where the gain measured on this CPU was within
noise, so the training models keep `nn.Conv2d`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models import has_hooks
from .moment_bn import MomentConv2d
from .spectral import swap_spectral

MAX_STEM_CHANNELS = 3  # wider convolutions keep oneDNN's backward, which is efficient there


def _col2im_by_offsets(cols, input_shape, kernel, stride, padding, dilation, out_size):
    """`F.fold` of `cols` (batch, C·kh·kw, out_h·out_w) onto the input grid, as kh·kw strided adds of whole-batch
    planes (one per kernel offset; see the module doc)."""
    batch, channels, in_h, in_w = input_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_size
    cols = cols.view(batch, channels, kh, kw, oh, ow)
    grid = cols.new_zeros(batch, channels, in_h + 2 * ph, in_w + 2 * pw)
    for i in range(kh):
        for j in range(kw):
            grid[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return grid[:, :, ph:ph + in_h, pw:pw + in_w]


class _StemConv(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation):
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        batch, out_channels, height, width = grad_out.shape
        kernel = weight.shape[-2:]
        # rows = (image, output position) × output channel: every product below is one GEMM for the whole batch
        rows = grad_out.permute(0, 2, 3, 1).reshape(batch * height * width, out_channels)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] and torch.compiler.is_compiling():  # traced: 25 slice-adds compile for minutes
            cols = (rows @ weight.reshape(out_channels, -1)).reshape(batch, height * width, weight[0].numel())
            cols = cols.transpose(1, 2)
            grad_x = F.fold(cols, x.shape[-2:], kernel, dilation=dilation, padding=padding, stride=stride)
        elif ctx.needs_input_grad[0]:
            grad_x = _col2im_by_offsets(weight.reshape(out_channels, -1).T @ rows.view(batch, height * width,
                                                                                     out_channels).transpose(1, 2),
                                        x.shape, kernel, stride, padding, dilation, (height, width))
        if ctx.needs_input_grad[1]:
            patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
            grad_w = (rows.T @ patches.transpose(1, 2).reshape(len(rows), weight[0].numel())).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class StemConv2d(nn.Conv2d):
    """`nn.Conv2d` (groups = 1) whose backward is the GEMM + col2im / im2col + GEMM of `_StemConv`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StemConv.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> StemConv2d:
        stem = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, 1, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        stem.load_state_dict(conv.state_dict())
        return stem.requires_grad_(conv.weight.requires_grad)


class _ReluAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(z, k):
        return F.avg_pool2d(F.relu(z), k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, ctx.k = inputs
        ctx.save_for_backward(z)

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        k = ctx.k
        n, c, h, w = grad_out.shape
        # g/k² repeated along the window's inner axis (a small copy), then broadcast along its outer axis: the
        # element-wise pass below then runs over long contiguous rows (one output row of the map at a time)
        g = grad_out / (k * k)
        channels_last = z.is_contiguous(memory_format=torch.channels_last)
        if channels_last:  # memory (n, y, x, c)
            z_rows = z.permute(0, 2, 3, 1).view(n, h, k, w * k * c)
            g_rows = g.permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, k, c).reshape(n, h, 1, w * k * c)
        else:
            z_rows = z.contiguous().view(n, c, h, k, w * k)
            g_rows = g.unsqueeze(-1).expand(n, c, h, w, k).reshape(n, c, h, 1, w * k)
        grad = torch.ops.aten.threshold_backward(g_rows.expand_as(z_rows), z_rows, 0)  # ReLU's rule: 0 where z ≤ 0
        if channels_last:
            return grad.view(n, h * k, w * k, c).permute(0, 3, 1, 2), None
        return grad.view(n, c, h * k, w * k), None


class ReluAvgPool2d(nn.Module):
    """`avg_pool2d(relu(z), k)` for a square, non-overlapping window whose size divides the map (what it replaces
    is checked by `fuse_relu_pools`), with the pair's backward as one element-wise pass (see the module doc)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        # avg_pool2d drops the remainder rows/columns: keep its own rule (and its unbatched input). Traced by
        # torch.compile, Inductor fuses the plain pair itself (and the broadcast form below compiled 2× slower)
        if z.dim() != 4 or z.shape[-1] % k or z.shape[-2] % k or torch.compiler.is_compiling():
            return F.avg_pool2d(F.relu(z), k)
        return _ReluAvgPool.apply(z, k)


def _square_window(pool: nn.AvgPool2d) -> int | None:
    """The window size of an `nn.AvgPool2d` that tiles its input (square, stride = kernel, no padding), or None."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel, stride = pair(pool.kernel_size), pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if (kernel[0] != kernel[1] or stride != kernel or pair(pool.padding) != (0, 0) or pool.ceil_mode
            or pool.divisor_override is not None):
        return None
    return int(kernel[0])


def fuse_sequential_pairs(model: nn.Module, fuse) -> nn.Module:
    """Replace, in place, every adjacent pair (a, b) inside an `nn.Sequential` for which `fuse(a, b)` returns a
    module by that module followed by `nn.Identity`."""
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                fused = fuse(module._modules[first], module._modules[second])
                if fused is not None:
                    module._modules[first], module._modules[second] = fused, nn.Identity()
    return model


def _relu_pool(relu: nn.Module, pool: nn.Module) -> ReluAvgPool2d | None:
    if (type(relu) is nn.ReLU and type(pool) is nn.AvgPool2d and (k := _square_window(pool))
            and not has_hooks(relu) and not has_hooks(pool)):
        return ReluAvgPool2d(k)
    return None


def fuse_relu_pools(model: nn.Module) -> nn.Module:
    """Replace, in place, every `nn.ReLU` directly followed by a tiling `nn.AvgPool2d` inside an `nn.Sequential`
    by a `ReluAvgPool2d` (and the pool by `nn.Identity`): same outputs, same input gradients. A pair carrying
    hooks of the caller's is left alone (the hooks would stop firing)."""
    return fuse_sequential_pairs(model, _relu_pool)


def _conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Conv2d | None:
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
        return None
    if isinstance(conv, MomentConv2d):  # a copy of a model mid-training (HINT): fold into a plain convolution
        conv = conv.plain()
    return fuse_conv_bn_eval(conv, bn)


def is_stem(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups == 1 and module.in_channels <= MAX_STEM_CHANNELS
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple))


def swap_stems(model: nn.Module) -> nn.Module:
    """Replace, in place, every few-channel `nn.Conv2d` of `model` by a `StemConv2d` (same parameters)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_stem(child):
                setattr(parent, name, StemConv2d.from_conv(child))
    return model


def fused_copy(model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
    """A frozen eval-mode copy for input gradients (PGD/DAP steps, HINT's I_pert).

    Every Conv2d→BatchNorm2d pair inside an nn.Sequential is folded into one conv (exact up to float rounding)
    and every ReLU→tiling AvgPool2d pair becomes one `ReluAvgPool2d` (exact); on the CPU, few-channel stem
    convolutions become `StemConv2d` (oneDNN's backward is the slow one there) and, given a `sample` of the
    input, convolutions for which the DFT form pays off become `SpectralConv2d`; the memory format is
    channels_last. Same outputs and gradients up to float rounding; the speed is measured in
    `benchmarks/craft_throughput.py`.
    """
    model = fuse_sequential_pairs(copy.deepcopy(model).eval(), _conv_bn)
    model.requires_grad_(False)
    fuse_relu_pools(model)
    if all(p.device.type == "cpu" for p in model.parameters()):  # cuDNN's own algorithms are efficient already
        if sample is not None:
            swap_spectral(model, sample)
        swap_stems(model)
    return model.to(memory_format=torch.channels_last)
