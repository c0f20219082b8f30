"""Fast input gradients of a frozen model: `inference_copy` and the convolutions it swaps in on the CPU
(`StemConv2d` for few-channel stems, `poisonbench.spectral.SpectralConv2d` for large kernels on small maps).

`StemConv2d` is a convolution whose backward is one GEMM plus col2im (input) / im2col plus one GEMM (weights).

Input-gradient attacks (PGD, DAP: one backward w.r.t. the pixels per step) spend most of a step's backward in
the first convolution when it has one or three input channels: oneDNN's transposed convolution into a
1-channel output is several times slower than the forward convolution of the same FLOPs (profiled on the MNIST
ConvNet, 1→40 k5: 63 ms backward vs 13 ms forward per 250 images on one CPU core). The gradient of a
convolution w.r.t. its input is `fold(Wᵀ g)`: the column matrix of the transposed weight times the output
gradient, summed back onto the image grid. Written that way it is one well-shaped matrix product (rows = batch ×
output positions) and one col2im; same numbers up to float rounding.

`inference_copy` swaps it in for the frozen surrogates of input-gradient attacks. The weight
gradient (`patchesᵀ g`, one GEMM) makes it usable in training too, where the gain measured on this CPU was within
noise, so the training models keep `nn.Conv2d`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .models import probe
from .spectral import swap_spectral

MAX_STEM_CHANNELS = 3  # wider convolutions keep oneDNN's backward, which is efficient there

# On the CPU, keep every activation of a chunk under this many bytes. glibc serves blocks above its mmap
# threshold (at most 32 MiB) with fresh mmaps, so each such tensor costs one page fault per 4 KiB on every
# allocation; below it, freed blocks are reused. Measured on the MNIST ConvNet stem (1→40 k5, one core): 159 ms
# per 1,000 rows at batch 1,000 (45k page faults per call) vs 42 ms at batch 250 (none).
CPU_ACTIVATION_BYTES = 24 * 2**20


class _StemConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        batch, out_channels, height, width = grad_out.shape
        kernel = weight.shape[-2:]
        # rows = (image, output position) × output channel: every product below is one GEMM for the whole batch
        rows = grad_out.permute(0, 2, 3, 1).reshape(batch * height * width, out_channels)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            cols = (rows @ weight.reshape(out_channels, -1)).reshape(batch, height * width, -1).transpose(1, 2)
            grad_x = F.fold(cols, x.shape[-2:], kernel, dilation=dilation, padding=padding, stride=stride)
        if ctx.needs_input_grad[1]:
            patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
            grad_w = (rows.T @ patches.transpose(1, 2).reshape(batch * height * width, -1)).view_as(weight)
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


def largest_activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes per row of the largest output of any leaf module of `model` on one row of `sample` (probed in eval
    mode, so BatchNorm statistics are untouched; the mode is restored)."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: probe the eager module (no recompile)
    sizes = [sample[:1].numel() * sample.element_size()]
    probe(model, sample, [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
                          for m in model.modules() if not list(m.children())])
    return max(sizes)


def chunk_rows(model: nn.Module, sample: torch.Tensor, rows: int) -> int:
    """Rows per chunk for processing a batch of `rows` on `sample`'s device: all of them on a GPU (its caching
    allocator reuses memory); on the CPU, an equal split of the batch whose largest activation stays under
    `CPU_ACTIVATION_BYTES`. Chunking changes only speed: every objective chunked this way is per example."""
    if sample.device.type != "cpu" or rows <= 1:
        return max(rows, 1)
    most = max(1, CPU_ACTIVATION_BYTES // largest_activation_bytes(model, sample))
    pieces = -(-rows // most)
    return -(-rows // pieces)


def inference_copy(model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
    """A frozen eval-mode copy for input gradients (PGD/DAP steps, HINT's I_pert).

    Every Conv2d→BatchNorm2d pair inside an nn.Sequential is folded into one conv (exact up to float rounding);
    on the CPU, few-channel stem convolutions become `StemConv2d` (oneDNN's backward is the slow one there) and,
    given a `sample` of the input, convolutions for which the DFT form pays off become `SpectralConv2d`; the
    memory format is channels_last. Same outputs and gradients up to float rounding; the speed is measured in
    `benchmarks/craft_throughput.py`.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                a, b = module._modules[first], module._modules[second]
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    module._modules[first] = fuse_conv_bn_eval(a, b)
                    module._modules[second] = nn.Identity()
    model.requires_grad_(False)
    if all(p.device.type == "cpu" for p in model.parameters()):  # cuDNN's own algorithms are efficient already
        if sample is not None:
            swap_spectral(model, sample)
        swap_stems(model)
    return model.to(memory_format=torch.channels_last)
