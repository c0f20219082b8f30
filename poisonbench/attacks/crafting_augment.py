"""Forest's differentiable augmentation while crafting (forest's `--paugment`, on by
default; GM:forest/data/diff_data_augmentation.py `RandomTransform`), as separable matrix products.

Each poison of a crafting batch gets its own random sub-pixel translation, bilinear with zero padding and
`align_corners=True`, and, for colour images, a horizontal flip with probability ½; the poisons' gradients flow
through it, so δ is optimised to work under the victim's augmentation. Forest's largest shift is
`linspace(0, 1, side)[shift]` grid units with `shift` = 8 on CIFAR-10 and 4 on MNIST, i.e. ±4 px of 32 and ±2 px of
28: 1/8 of the side for the CIFAR-10 family, 1/14 for the MNIST family.

How it is computed: forest (and kornia's `translate`, which this module used before) samples the shifted image with
`grid_sample`, whose CUDA backward accumulates with atomics and has no deterministic kernel (it raises under
`--deterministic on`). A bilinear translation by (dx, dy) with zero padding is separable: along one axis,
out(i) = (1 − f)·x[i − k] + f·x[i − k − 1] with k = ⌊d⌋, f = d − k, zero where the index falls outside; a +d
moves the content right (x) / down (y), as kornia's and forest's. So each image is `A_y @ x @ A_xᵀ` with per-sample
banded H×H and W×W matrices (1 − f on one diagonal, f on the next): the same values as `grid_sample` up to float
rounding (measured against kornia's `translate` on the CPU, values and input gradients: tests/test_deterministic.py),
whole-batch, and its backward is two matrix products as well, which CUDA computes deterministically.

Deviations: no flips for the MNIST family (digits and clothes are not mirror-symmetric; forest flips MNIST
digits too), and the zero padding is black in pixel space, where forest pads with zero in its normalised space (the
dataset's mean colour). The random parameters come from a `torch.Generator` the caller passes (drawn on the CPU, so
a craft is reproducible from its seed on any device), never from the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SHIFT_FRACTION = {"cifar10": 1 / 8, "mnist": 1 / 14}  # forest: shift 8 of 32 px / 4 of 28 px, halved (see above)
FLIPS = {"cifar10": True, "mnist": False}  # forest flips every dataset; digits and clothes must not be


def shift_matrix(d: torch.Tensor, n: int) -> torch.Tensor:
    """N×n×n matrices of a bilinear shift by `d` (N, in pixels; + moves towards higher indices) with zero padding:
    row i holds 1 − f at column i − k and f at column i − k − 1 (k = ⌊d⌋, f = d − k), columns outside dropped."""
    k = d.floor().view(-1, 1, 1)
    f = (d.view(-1, 1, 1) - k)
    i = torch.arange(n, device=d.device, dtype=d.dtype).view(1, n, 1)
    j = torch.arange(n, device=d.device, dtype=d.dtype).view(1, 1, n)
    source = i - k  # integers, exact in floating point
    return (j == source) * (1 - f) + (j == source - 1) * f


@dataclass(frozen=True)
class CraftingAugment:
    """Per-sample translation by up to `max_shift` pixels in x and y, and a horizontal flip if `flip`."""

    max_shift: float
    flip: bool

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n×3 uniform draws in [0, 1) on the CPU (forest's `randgen`): x shift, y shift, flip."""
        return torch.rand((n, 3), generator=generator)

    def apply(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """`x` (N×C×H×W) translated and flipped as `draws` (N×3, from `draw`) say; differentiable in `x`."""
        draws = draws.to(device=x.device, dtype=x.dtype)
        shifts = (draws[:, :2] * 2 - 1) * self.max_shift  # (dx, dy) in pixels, uniform in ±max_shift
        rows = shift_matrix(shifts[:, 1], x.shape[-2])  # N×H×H
        cols = shift_matrix(shifts[:, 0], x.shape[-1])  # N×W×W
        out = torch.einsum("nij,ncjw->nciw", rows, x)
        out = torch.einsum("nchw,nvw->nchv", out, cols)
        if self.flip:
            flipped = (draws[:, 2] > 0.5).view(-1, 1, 1, 1)
            out = torch.where(flipped, out.flip(-1), out)
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), generator))


def crafting_augment(family: str, side: int) -> CraftingAugment:
    """Forest's crafting augmentation for a dataset `family` of `side`-pixel images."""
    return CraftingAugment(max_shift=side * MAX_SHIFT_FRACTION[family], flip=FLIPS[family])
