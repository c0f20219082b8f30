"""Fast input gradients of a frozen model: `inference_copy` and the convolutions it swaps in on the CPU
(`StemConv2d` for few-channel stems, `SpectralConv2d` for large kernels on small maps).

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

MAX_STEM_CHANNELS = 3  # wider convolutions keep oneDNN's backward, which is efficient there
MIN_SPECTRAL_KERNEL_AREA = 25  # SpectralConv2d only for kernels of 5×5 and more (see SpectralConv2d.pays_off)

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
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
             for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(sample[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
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


class SpectralConv2d(nn.Module):
    """A frozen `nn.Conv2d` (stride 1, dilation 1, groups 1) for one input size, computed as three real matrix
    products through the 2-D DFT: a valid cross-correlation is the crop of a circular one of the padded input
    size N (no wrap-around reaches a valid output), and a circular cross-correlation is a per-frequency product
    `X̂(k) · conj(Ŵ(k))` summed over input channels (the correlation theorem). With the DFT and its cropped
    inverse written as dense matrices (built once from `torch.fft`, in float64), the layer is

        x̂ = D x (each image channel),  ŷ(k) = Σ_c x̂_c(k) · conj(ŵ_oc(k)) (one batched GEMM per real/imag part),
        y = E ŷ + b (each output channel),

    every step a GEMM over the whole batch, and autograd's input gradient is the same three products
    transposed. For a 5×5 kernel on a small map (the MNIST ConvNet's 40→100 layer: 12×12 in, 8×8 out) this is
    about half the multiply-adds of the direct convolution; `pays_off` decides per layer. Same numbers up to
    float rounding (a DFT of size N sums N² terms per frequency). Parameters are frozen buffers: for inference
    copies only. Another input size falls back to `F.conv2d` (correct, just not faster).
    """

    def __init__(self, conv: nn.Conv2d, in_size: tuple[int, int]):
        super().__init__()
        self.padding = tuple(conv.padding)
        self.in_size = tuple(in_size)
        nh, nw = in_size[0] + 2 * self.padding[0], in_size[1] + 2 * self.padding[1]
        kh, kw = conv.kernel_size
        self.out_size = (nh - kh + 1, nw - kw + 1)
        self.freqs = nh * (nw // 2 + 1)
        weight = conv.weight.detach()
        dtype, device = weight.dtype, weight.device
        w64 = weight.to(torch.float64)
        basis = torch.eye(nh * nw, dtype=torch.float64, device=device).view(-1, nh, nw)
        dft = torch.fft.rfft2(basis).reshape(nh * nw, self.freqs)  # x_flat @ dft = x̂ (complex)
        unit = torch.eye(self.freqs, dtype=torch.complex128, device=device).view(-1, nh, nw // 2 + 1)
        crop = (slice(None), slice(0, self.out_size[0]), slice(0, self.out_size[1]))
        inv_re = torch.fft.irfft2(unit, s=(nh, nw))[crop].reshape(self.freqs, -1)
        inv_im = torch.fft.irfft2(unit * 1j, s=(nh, nw))[crop].reshape(self.freqs, -1)
        w_hat = torch.fft.rfft2(w64, s=(nh, nw)).conj().reshape(*weight.shape[:2], self.freqs).permute(2, 1, 0)
        self.register_buffer("dft", torch.cat([dft.real, dft.imag], 1).T.to(dtype).contiguous())  # [2F, N²]
        self.register_buffer("inverse", torch.cat([inv_re, inv_im], 0).T.to(dtype).contiguous())  # [O², 2F]
        self.register_buffer("w_re", w_hat.real.to(dtype).contiguous())  # [F, C_in, C_out]
        self.register_buffer("w_im", w_hat.imag.to(dtype).contiguous())
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    @staticmethod
    def pays_off(conv: nn.Module, in_size: tuple[int, int]) -> bool:
        """True when `conv` qualifies (stride 1, dilation 1, groups 1, a kernel of at least 5×5) and the three
        products need at most 60 % of the direct convolution's multiply-adds (the margin covers the smaller,
        less efficient GEMMs). 3×3 kernels stay direct: on ResNet-18's 8×8 stage the rule's 55 % measured no
        faster than oneDNN (docs/fidelity.md)."""
        if not (type(conv) is nn.Conv2d and conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
                and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                and conv.kernel_size[0] * conv.kernel_size[1] >= MIN_SPECTRAL_KERNEL_AREA):
            return False
        nh, nw = in_size[0] + 2 * conv.padding[0], in_size[1] + 2 * conv.padding[1]
        (kh, kw), cin, cout = conv.kernel_size, conv.in_channels, conv.out_channels
        outs = (nh - kh + 1) * (nw - kw + 1)
        if outs <= 0:
            return False
        freqs2 = 2 * nh * (nw // 2 + 1)
        spectral = freqs2 * nh * nw * cin + 2 * freqs2 * cin * cout + freqs2 * outs * cout
        return spectral <= 0.6 * outs * kh * kw * cin * cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            return F.conv2d(x, self.weight, self.bias, padding=self.padding)
        if any(self.padding):
            x = F.pad(x, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        batch, cin = x.shape[:2]
        cout = self.w_re.shape[2]
        x_hat = (self.dft @ x.permute(2, 3, 0, 1).reshape(-1, batch * cin)).view(2, self.freqs, batch, cin)
        re, im = x_hat[0], x_hat[1]
        y_re = torch.baddbmm(torch.bmm(re, self.w_re), im, self.w_im, alpha=-1)  # Re(x̂ · conj ŵ)
        y_im = torch.baddbmm(torch.bmm(re, self.w_im), im, self.w_re)  # Im(x̂ · conj ŵ)
        y_hat = torch.stack([y_re, y_im]).view(2 * self.freqs, batch * cout)
        y = (self.inverse @ y_hat).view(*self.out_size, batch, cout).permute(2, 3, 0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last)


def swap_spectral(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """Replace, in place, every frozen `nn.Conv2d` of `model` for which `SpectralConv2d.pays_off` on the input
    size it sees when `model` runs on `sample` (probed on one row, no gradients)."""
    seen: dict[nn.Module, tuple[int, int]] = {}

    def note_size(module: nn.Module, args: tuple) -> None:
        seen.setdefault(module, tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(note_size) for m in model.modules() if type(m) is nn.Conv2d]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in hooks:
            h.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in seen and SpectralConv2d.pays_off(child, seen[child]):
                setattr(parent, name, SpectralConv2d(child, seen[child]))
    return model


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
