"""Train-mode BatchNorm after a small-patch convolution, from the input's patch moments (CPU training).

A convolution is linear in its input patches: the output of channel c at position p is `y = w_c · u_p + b_c`,
with `u_p` the input patch (C_in·kh·kw values) under the kernel. So the batch statistics that a following
`nn.BatchNorm2d` computes in train mode over all images and positions are functions of the patches' first two
moments `m = E[u]` and `Σ = Cov[u]`:

    μ_c = w_c · m + b_c,   σ²_c = w_cᵀ Σ w_c,

and BatchNorm's output `γ_c (y − μ_c) / √(σ²_c + ε) + β_c` is the same convolution with the folded kernel
`w'_c = s_c w_c` and bias `b'_c = β_c + s_c (b_c − μ_c)`, `s_c = γ_c / √(σ²_c + ε)` (Ioffe & Szegedy 2015,
Algorithm 1, with the statistics taken through the linear map). This is the same function of the input and of
every parameter, so autograd's gradients through `w'`, `b'` are BatchNorm's own backward through its batch
statistics; the running statistics are updated as `nn.BatchNorm2d` does (momentum or cumulative average,
unbiased variance). Nothing is approximated; float rounding differs.

What it saves: BatchNorm's two passes over the convolution's output map in the forward and its two reductions
and one pass in the backward. For the MNIST ConvNet's stem (1→40, 5×5, on 28×28 images) that map is 40×24×24
per image, 23 times the image; the moments come from one GEMM over the images (`Xᵀ X`, 784×784) and a gather of
its 25×25 patch entries. `pays_off` takes a pair when that GEMM costs at most 1.5 times the convolution's own
multiply-adds, which in our models is the ConvNet's stem only (ratio 1.07; ResNet-18's 3-channel stem: 6.8).

A one-channel input also runs as two channels, the second all zero: oneDNN treats a 1-channel input as NCHW
(its strides are also channels_last's) and converted the channels_last gradient of the 40-channel map back
every step (2.3 ms of a 29 ms step, profiled). The zero channel contributes nothing to the output.

Measured with the engine's compiled step on mnist-5k (experiments/speed.md): 4,270 → 5,400 img/s. The engine swaps
these in on the CPU only (`swap_moment_batchnorm`, through `poisonbench.engine.kernels.training_kernels`), like
`poisonbench.engine.kernels.spectral`; a GPU keeps cuDNN's BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import conv_sharing, has_hooks
from .spectral import input_sizes

MAX_GRAM_COST = 1.5  # moments' GEMM over the convolution's multiply-adds


def patch_index(channels: int, size: tuple[int, int], kernel: tuple[int, int], device) -> torch.Tensor:
    """`[C·kh·kw, out_h·out_w]`: the flat index (into one C×H×W image) of each patch entry at each output
    position of a stride-1, undilated convolution."""
    (height, width), (kh, kw) = size, kernel
    oh, ow = height - kh + 1, width - kw + 1
    arange = lambda n: torch.arange(n, device=device)  # noqa: E731
    c, i, j = arange(channels).view(-1, 1, 1, 1, 1), arange(kh).view(1, -1, 1, 1, 1), arange(kw).view(1, 1, -1, 1, 1)
    r, s = arange(oh).view(1, 1, 1, -1, 1), arange(ow).view(1, 1, 1, 1, -1)
    return (c * height * width + (i + r) * width + (j + s)).reshape(channels * kh * kw, oh * ow)


def patch_moments(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[P]` and covariance `[P, P]` (biased, as BatchNorm normalises) of the patches `x.flatten(1)[:,
    index]` over every image and output position, without forming the patches. Centred on the per-pixel batch
    mean first, so no large moments cancel:
    `Cov = E_p[E_n[(x_n − x̄)(x_n − x̄)ᵀ] at the patch entries] + Cov_p[x̄ at the patch entries]`."""
    batch, positions = x.shape[0], index.shape[1]
    flat = x.reshape(batch, -1)
    mean_image = flat.mean(0)
    centred = flat - mean_image
    gram = centred.T @ centred  # [D, D], D = C·H·W
    within = gram[index[:, None, :], index[None, :, :]].sum(-1) / (batch * positions)
    mean_patches = mean_image[index]  # [P, L]
    mean = mean_patches.mean(1)
    spread = mean_patches - mean[:, None]
    return mean, within + spread @ spread.T / positions


class MomentBatchNorm2d(nn.BatchNorm2d):
    """The `nn.BatchNorm2d` after a `MomentConv2d`, sharing its parameters and buffers: in train mode the
    convolution already normalised its output, so this passes it through; in eval mode it is BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.training else super().forward(x)


class MomentConv2d(nn.Conv2d):
    """`nn.Conv2d` (stride 1, dilation 1, groups 1, zero padding) followed by its `MomentBatchNorm2d` `bn`: in
    train mode (the BatchNorm's) it returns the batch-normalised output, computed from the input's patch
    moments (module doc); in eval mode the plain convolution. Shares its parameters with the `nn.Conv2d` it was
    made from, so the Sequential's `state_dict` keeps its keys and values."""

    @classmethod
    def from_pair(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[MomentConv2d, MomentBatchNorm2d]:
        folded = MomentBatchNorm2d(bn.num_features, bn.eps, bn.momentum, device="meta")
        folded.weight, folded.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            folded._buffers[name] = bn._buffers[name]  # the same tensors: statistics land in the original
        folded.train(bn.training)
        moment = conv_sharing(cls, conv)
        moment._bn = (folded,)  # a tuple: not a submodule, so no second set of state_dict keys
        return moment, folded

    def plain(self) -> nn.Conv2d:
        """An `nn.Conv2d` sharing this layer's parameters (for `fuse_conv_bn_eval` and the inference copies)."""
        return conv_sharing(nn.Conv2d, self)

    @staticmethod
    def pays_off(conv: nn.Module, bn: nn.Module, in_size: tuple[int, int]) -> bool:
        """A plain `nn.Conv2d` (stride 1, dilation 1, groups 1, zero padding, float weight, no hooks) directly
        followed by a plain affine `nn.BatchNorm2d` that tracks running statistics, where the moments' GEMM
        (D² per image, D = C_in·H·W after padding) costs at most `MAX_GRAM_COST` times the convolution."""
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and conv.groups == 1
                and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple) and bn.affine and bn.track_running_stats
                and bn.num_features == conv.out_channels):
            return False
        if (not isinstance(conv.weight, nn.Parameter) or conv.weight.dtype not in (torch.float32, torch.float64)
                or has_hooks(conv) or has_hooks(bn) or getattr(conv, "parametrizations", None)):
            return False
        height, width = in_size[0] + 2 * conv.padding[0], in_size[1] + 2 * conv.padding[1]
        (kh, kw), cin, cout = conv.kernel_size, conv.in_channels, conv.out_channels
        positions = (height - kh + 1) * (width - kw + 1)
        pixels = cin * height * width
        return positions > 0 and pixels**2 <= MAX_GRAM_COST * positions * kh * kw * cin * cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self._bn[0]
        if not bn.training:
            return super().forward(x)
        if any(self.padding):
            x = F.pad(x, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        cout, (height, width) = self.out_channels, x.shape[-2:]
        # built at every call on purpose: compiled, Inductor computes these indices inside the gather kernel; a
        # cached index buffer made it read them from memory instead, and the step measured 4-5 % slower
        index = patch_index(self.in_channels, (height, width), self.kernel_size, x.device)
        mean_patch, cov = patch_moments(x, index)
        weight = self.weight.reshape(cout, -1)
        bias = self.bias if self.bias is not None else weight.new_zeros(cout)
        mean = weight @ mean_patch + bias
        var = ((weight @ cov) * weight).sum(1).clamp_min(0)  # w_cᵀ Σ w_c; Σ is PSD up to rounding
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        folded_weight = self.weight * scale.view(-1, 1, 1, 1)
        folded_bias = bn.bias + scale * (bias - mean)
        self._update_running_stats(bn, mean, var, x.shape[0] * index.shape[1])
        if self.in_channels == 1:  # see the module doc: a second, zero channel keeps oneDNN in channels_last
            x = torch.cat([x, torch.zeros_like(x)], 1).contiguous(memory_format=torch.channels_last)
            folded_weight = torch.cat([folded_weight, torch.zeros_like(folded_weight)], 1)
            folded_weight = folded_weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, folded_weight, folded_bias)

    @staticmethod
    def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """As `nn.BatchNorm2d` in train mode: count the batch, then blend in the batch mean and the unbiased
        variance with `momentum` (None: the cumulative average, factor 1 / batches seen)."""
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            # a tensor for the cumulative average, so a compiled step does not read the count back to Python
            factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(mean.dtype)
            bn.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
            # n / (n − 1) as BatchNorm's unbiased estimate; `pays_off` layers have many positions per image, so
            # n = 1 (where nn.BatchNorm2d raises) does not arise; the guard only avoids a division by zero
            bn.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1)) * factor)


def swap_moment_batchnorm(model: nn.Module, sample: torch.Tensor) -> list[tuple[nn.Sequential, str, nn.Module]]:
    """Replace, in place, every adjacent `nn.Conv2d` → `nn.BatchNorm2d` pair inside an `nn.Sequential` of
    `model` for which `MomentConv2d.pays_off` at the input size the convolution sees on `sample`. Returns what
    `restore_modules` needs to put the originals back."""
    sizes = input_sizes(model, sample)
    swapped: list[tuple[nn.Sequential, str, nn.Module]] = []
    try:
        for module in list(model.modules()):
            if not isinstance(module, nn.Sequential):
                continue
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                conv, bn = module._modules[first], module._modules[second]
                if conv in sizes and MomentConv2d.pays_off(conv, bn, sizes[conv]):
                    moment, folded = MomentConv2d.from_pair(conv, bn)
                    swapped += [(module, first, conv), (module, second, bn)]
                    module._modules[first], module._modules[second] = moment, folded
    except BaseException:
        restore_modules(swapped)  # all or nothing
        raise
    return swapped


def restore_modules(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Undo `swap_moment_batchnorm`: the original modules go back, in the swapped ones' mode and with their
    parameter and buffer tensors. These are shared, but a `Module.to` / `.double()` while swapped replaces buffer
    tensors only in the modules it reaches, so the live ones are carried over rather than assumed."""
    for parent, name, original in reversed(swapped):
        current = parent._modules[name]
        if current is not original:  # the original's own entries only
            original._parameters.update({k: current._parameters[k] for k in original._parameters})
            original._buffers.update({k: current._buffers[k] for k in original._buffers})
            original.train(current.training)
        parent._modules[name] = original


def moment_names(model: nn.Module) -> list[str]:
    """Names of the `MomentConv2d` layers of `model` (recorded in training checkpoints' execution identity)."""
    return [name for name, m in model.named_modules() if isinstance(m, MomentConv2d)]
