"""`SpectralConv2d`: a convolution computed as DFT-domain matrix products, for large kernels on small maps (CPU).

A valid cross-correlation is the crop of a circular one over the (padded) input size N, since no wrap-around
reaches a valid output, and a circular cross-correlation is, per frequency k, `x̂(k) · conj(ŵ(k))` summed over
input channels (the correlation theorem). With the 2-D real DFT and its cropped inverse written as dense matrices
(built once per input size from `torch.fft`, in float64), the layer is

    x̂ = D x (each image channel),   ŷ(k) = Σ_c x̂_c(k) · conj(ŵ_oc(k)) (batched GEMMs over k),
    y = E_re Re ŷ + E_im Im ŷ + b,

with ŵ = K w (the DFT restricted to the kernel's support) recomputed from the weight at every call, so the layer
trains like `nn.Conv2d`; autograd's input and weight gradients are the same products transposed. Only the
frequencies that are not conjugates of others are computed (`kept_frequencies`: 74 of the real DFT's 84 at 12×12,
since x, w and y are real), the inverse counting each kept one of a conjugate pair for both. For the MNIST
ConvNet's 40→100 5×5 layer on 12×12 maps this is about half the direct convolution's multiply-adds, and each
product is one well-shaped GEMM over the whole batch. Same numbers up to float rounding (measured against a
float64 reference it is as accurate as oneDNN's direct convolution; docs/fidelity.md). `SpectralConv2d.pays_off`
decides per layer; a GPU keeps cuDNN, which has FFT algorithms of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import conv_sharing, has_hooks, probe

MIN_KERNEL_SIDE = 5  # 3×3 kernels stay direct (see SpectralConv2d.pays_off)
MAX_COST_FRACTION = 0.6  # of the direct convolution's multiply-adds


class SpectralConv2d(nn.Conv2d):
    """`nn.Conv2d` (stride 1, dilation 1, groups 1, zero padding) computed in the DFT domain for inputs of
    `in_size`; any other input size runs the direct convolution. It shares its parameters with the `nn.Conv2d`
    it was made from (`from_conv`) and its DFT matrices are non-persistent buffers (computed in float64, stored
    in the weight's dtype), so its `state_dict` is the plain convolution's."""

    in_size: tuple[int, int]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_size: tuple[int, int]) -> SpectralConv2d:
        spectral = conv_sharing(cls, conv)  # the same Parameters: an optimizer keeps working
        spectral._build(tuple(in_size))
        return spectral

    def _build(self, in_size: tuple[int, int]) -> None:
        self.in_size = in_size
        nh, nw = in_size[0] + 2 * self.padding[0], in_size[1] + 2 * self.padding[1]
        kh, kw = self.kernel_size
        self.out_size = (nh - kh + 1, nw - kw + 1)
        half = nw // 2 + 1
        dtype, device = self.weight.dtype, self.weight.device
        # the DFT of a real signal is Hermitian: in the columns the real DFT keeps whole (k2 = 0 and, for even nw,
        # k2 = nw/2), frequency (nh − k1, k2) is the conjugate of (k1, k2), so only k1 ≤ nh/2 is kept there and
        # the inverse counts each kept one for its partner too (12 % fewer frequencies at 12×12, module doc)
        kept, partner = kept_frequencies(nh, nw)
        self.freqs = len(kept)
        basis = torch.eye(nh * nw, dtype=torch.float64, device=device).view(-1, nh, nw)
        dft = torch.fft.rfft2(basis).reshape(nh, nw, nh * half)[..., kept]
        dft = torch.cat([dft.real, dft.imag], -1)  # [nh, nw, 2F]: x̂ = x_flat @ dft (real parts, then imaginary)
        unit = torch.eye(nh * half, dtype=torch.complex128, device=device).view(-1, nh, half)
        crop = (slice(None), slice(0, self.out_size[0]), slice(0, self.out_size[1]))
        inv_re = torch.fft.irfft2(unit, s=(nh, nw))[crop].reshape(nh * half, -1)
        inv_im = torch.fft.irfft2(unit * 1j, s=(nh, nw))[crop].reshape(nh * half, -1)
        # a dropped frequency's Re ŷ equals its partner's and its Im ŷ is the negative: fold its columns in
        inv_re = inv_re[kept].index_add(0, partner[:, 1], inv_re[partner[:, 0]])
        inv_im = inv_im[kept].index_add(0, partner[:, 1], -inv_im[partner[:, 0]])
        self.register_buffer("dft", dft.reshape(nh * nw, -1).T.to(dtype).contiguous(), persistent=False)
        self.register_buffer("kernel_dft", dft[:kh, :kw].reshape(kh * kw, -1).to(dtype).contiguous(),
                             persistent=False)
        self.register_buffer("inverse", torch.cat([inv_re, inv_im], 0).T.to(dtype).contiguous(), persistent=False)

    @staticmethod
    def pays_off(conv: nn.Module, in_size: tuple[int, int]) -> bool:
        """True when `conv` qualifies (a plain `nn.Conv2d` with stride 1, dilation 1, groups 1, zero padding and a
        kernel of at least 5×5) and the products need at most 60 % of the direct convolution's multiply-adds
        (the margin covers the smaller, less efficient GEMMs). 3×3 kernels stay direct: on ResNet-18's 8×8 stage
        the rule's 55 % measured no faster than oneDNN (docs/fidelity.md)."""
        if not (type(conv) is nn.Conv2d and conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
                and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                and min(conv.kernel_size) >= MIN_KERNEL_SIDE):
            return False
        # a reparametrised weight (weight_norm, pruning: a plain tensor recomputed by hooks) or hooks of the
        # caller's stay with the caller's module; half precision would round the DFT matrices too coarsely
        if (not isinstance(conv.weight, nn.Parameter) or conv.weight.dtype not in (torch.float32, torch.float64)
                or has_hooks(conv) or getattr(conv, "parametrizations", None)):
            return False
        nh, nw = in_size[0] + 2 * conv.padding[0], in_size[1] + 2 * conv.padding[1]
        (kh, kw), cin, cout = conv.kernel_size, conv.in_channels, conv.out_channels
        outs = (nh - kh + 1) * (nw - kw + 1)
        if outs <= 0:
            return False
        freqs2 = 2 * len(kept_frequencies(nh, nw)[0])
        spectral = freqs2 * nh * nw * cin + 2 * freqs2 * cin * cout + freqs2 * outs * cout
        return spectral <= MAX_COST_FRACTION * outs * kh * kw * cin * cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.in_size:
            return super().forward(x)
        if any(self.padding):
            x = F.pad(x, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        batch, cin, cout, freqs = x.shape[0], self.in_channels, self.out_channels, self.freqs
        w_hat = (self.weight.reshape(cout * cin, -1) @ self.kernel_dft).view(cout, cin, 2, freqs)
        w_hat = w_hat.permute(2, 3, 1, 0).contiguous()  # [2, F, C_in, C_out]; batched GEMMs want it dense
        w_re, w_im = w_hat[0], w_hat[1]
        x_hat = (self.dft @ x.permute(2, 3, 0, 1).reshape(self.dft.shape[1], batch * cin)).view(2, freqs, batch, cin)
        re, im = x_hat[0], x_hat[1]
        # x̂ · conj(ŵ) = (re·w_re + im·w_im) + i (im·w_re − re·w_im)
        y_re = torch.baddbmm(torch.bmm(re, w_re), im, w_im)
        y_im = torch.baddbmm(torch.bmm(im, w_re), re, w_im, alpha=-1)
        # the inverse as two accumulated products (real, then imaginary half of its columns) rather than one
        # over a stacked ŷ: no copy of ŷ either way through (+3 % on the compiled ConvNet step, experiments/speed.md)
        inv_re, inv_im = self.inverse[:, :freqs], self.inverse[:, freqs:]
        y = torch.addmm(inv_re @ y_re.view(freqs, -1), inv_im, y_im.view(freqs, -1))
        y = y.view(*self.out_size, batch, cout).permute(2, 3, 0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last)


def kept_frequencies(nh: int, nw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into the real DFT's nh·(nw//2 + 1) frequencies, row-major) of the ones `SpectralConv2d` keeps,
    and for each dropped one the pair (its index, its partner's position among the kept). In the self-conjugate
    columns (k2 = 0, and k2 = nw/2 for even nw) the frequency (k1, k2) with k1 > nh/2 is the conjugate of
    (nh − k1, k2) and is dropped; all others are kept."""
    half = nw // 2 + 1
    self_conjugate = {0} | ({nw // 2} if nw % 2 == 0 else set())
    kept, dropped = [], []
    for k1 in range(nh):
        for k2 in range(half):
            (dropped if k2 in self_conjugate and k1 > nh // 2 else kept).append((k1, k2))
    position = {f: i for i, f in enumerate(kept)}
    pairs = [(k1 * half + k2, position[((nh - k1) % nh, k2)]) for k1, k2 in dropped]
    return (torch.tensor([k1 * half + k2 for k1, k2 in kept]),
            torch.tensor(pairs, dtype=torch.long).view(-1, 2))


def input_sizes(model: nn.Module, sample: torch.Tensor) -> dict[nn.Module, tuple[int, int]]:
    """The input size every plain `nn.Conv2d` of `model` sees when `model` runs on one row of `sample` (eval
    mode, no gradients; the mode is restored, so BatchNorm statistics are untouched)."""
    seen: dict[nn.Module, tuple[int, int]] = {}

    def note_size(module: nn.Module, args: tuple) -> None:
        if args:  # a convolution called with its input as a keyword is left alone
            seen.setdefault(module, tuple(args[0].shape[-2:]))

    probe(model, sample, [m.register_forward_pre_hook(note_size) for m in model.modules() if type(m) is nn.Conv2d])
    return seen


def swap_spectral(model: nn.Module, sample: torch.Tensor) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """Replace, in place, every `nn.Conv2d` of `model` for which `SpectralConv2d.pays_off` at the input size it
    sees on `sample`, sharing its parameters. Returns what `restore_convs` needs to put the originals back."""
    sizes = input_sizes(model, sample)
    swapped: list[tuple[nn.Module, str, nn.Conv2d]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if child in sizes and SpectralConv2d.pays_off(child, sizes[child]):
                    setattr(parent, name, SpectralConv2d.from_conv(child, sizes[child]))
                    swapped.append((parent, name, child))
    except BaseException:
        restore_convs(swapped)  # all or nothing
        raise
    return swapped


def swapped_names(model: nn.Module) -> list[str]:
    """Names of the `SpectralConv2d` layers of `model` (recorded in training checkpoints' execution identity)."""
    return [name for name, m in model.named_modules() if isinstance(m, SpectralConv2d)]


def restore_convs(swapped: list[tuple[nn.Module, str, nn.Conv2d]]) -> None:
    """Undo `swap_spectral`: the original `nn.Conv2d` modules (which share the trained parameters) go back."""
    for parent, name, conv in swapped:
        setattr(parent, name, conv)
