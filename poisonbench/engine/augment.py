"""Whole-batch augmentation on the device (never PIL, never a per-example loop).

`crop_flip` is the standard CIFAR recipe (paper §VI-A1): random crop of the zero-padded image (pad 4) and
horizontal flip with p = 0.5, sampled per example from the run's generator. It is an exact integer shift done
with one gather, which is cheaper than kornia's affine warp and draws from our seeded generator.

`shift` is the `forest` recipe's for the MNIST family: the same crop with pad 2 and no flip, an integer shift of up to
±2 px in x and y (forest's victims shift MNIST by up to ±2 px, bilinear, `RandomTransform(shift=4)` of 28 px, and
flip it too; digits and clothes are not mirror-symmetric, so we do not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFT_PAD = 2  # `shift`: forest's ±2 px on 28-px digits


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, n), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h) + shifts[0].view(n, 1)  # (n, h)
    cols = torch.arange(w, device=x.device).view(1, w) + shifts[1].view(n, 1)  # (n, w)
    if flip:
        flipped = torch.rand(n, device=x.device, generator=generator) < 0.5
        cols = torch.where(flipped.view(n, 1), cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def apply(name: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if name == "none":
        return x
    if name == "crop-flip":
        return crop_flip(x, generator)
    if name == "shift":
        return crop_flip(x, generator, pad=SHIFT_PAD, flip=False)
    raise ValueError(name)
