"""Image Shortcut Squeezing (ISS; Liu, Zhao & Larson, "Image Shortcut Squeezing: Countering Perturbative
Availability Poisons with Compression", ICML 2023; official code liuzrcc/ImageShortcutSqueezing, augmentations.py
`aug_train`): compress the training images once, before training, so that a small perturbation shortcut no longer
separates the classes. `--squeeze`:

    gray    grayscale, kept as 3 equal channels: torchvision `transforms.Grayscale(3)` in the official code, i.e.
            Pillow's ITU-R 601-2 luma L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 on uint8 pixels; on 1-channel
            images (MNIST) the identity (the summary says so: `identity`);
    jpeg    a JPEG round trip at quality `--jpeg-quality` (official: Pillow, `image.save(buf, "JPEG",
            quality=10)`, README "JPEG-10", train.sh `--jpeg 10`), through Pillow as the official code;
    bdr     bit-depth reduction to `--bdr-bits` bits per channel (official: torchvision `RandomPosterize(bits, p=1)`;
            2 bits in the README's BDR command and APBench's util.py `aug_train`), via torchvision's `posterize`.

The default is jpeg for every attack: in the official README table (CIFAR-10, ResNet-18) JPEG-10 restores more
accuracy than grayscale on average over the poisons of each norm (ℓ∞, ℓ2 and ℓ0), and grayscale is the identity on
MNIST (docs/fidelity.md, "ISS").

Every squeeze works on uint8 pixels, as the official pipeline does (poisons stored as PNG files, squeezed as PIL
images): the rows are quantised to round(255·x) first, so any squeeze also rounds a float perturbation to the
1/255 grid. ISS squeezes `ctx.train_x`'s rows in use in place, in `prepare` (the official code applies the same
deterministic squeeze in every epoch's transform, before crop and flip: the same images); a resumed run squeezes
the unsqueezed rows again, to the same result. Grayscale and BDR are batched on the run's device; JPEG runs on the
CPU, one Pillow encode/decode per image (an encoder takes one image; the official code does the same).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..core.params import Param
from ..engine.hooks import Defense

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

SQUEEZES = ("gray", "jpeg", "bdr")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 pixels round(255·x) (exact for images loaded from uint8)."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def grayscale(pixels: torch.Tensor) -> torch.Tensor:
    """Pillow's `convert("L")` (ITU-R 601-2 luma, fixed point, rounded), repeated over the 3 channels as
    `transforms.Grayscale(3)`; 1-channel images are returned as they are."""
    if pixels.shape[1] == 1:
        return pixels
    r, g, b = pixels.to(torch.int32).unbind(1)
    luma = (19595 * r + 38470 * g + 7471 * b + (1 << 15)) >> 16
    return luma.to(torch.uint8)[:, None].expand_as(pixels).contiguous()


def jpeg(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """The Pillow JPEG round trip of each uint8 image (N, C, H, W), C = 1 (mode L) or 3 (RGB, Pillow's default
    4:2:0 chroma subsampling), at `quality`; returned on `pixels`' device."""
    images = pixels.permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer)).reshape(image.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(pixels.device)


def bit_depth(pixels: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the `bits` high bits of each uint8 pixel (torchvision `posterize`, as `RandomPosterize(bits, p=1)`)."""
    # imported here: torchvision's import (its models, ~2 s) was most of every `poisonbench` process's start-up,
    # each sweep step's included, and only this squeeze needs it
    from torchvision.transforms.v2 import functional as TF

    return TF.posterize(pixels, bits)


def squeeze(x: torch.Tensor, how: str, quality: int, bits: int) -> torch.Tensor:
    """The squeezed float images of `x` (N, C, H, W in [0, 1]): quantised to uint8, squeezed, back to [0, 1]."""
    pixels = to_uint8(x)
    if how == "gray":
        pixels = grayscale(pixels)
    elif how == "jpeg":
        pixels = jpeg(pixels, quality)
    else:
        pixels = bit_depth(pixels, bits)
    return pixels.to(x.dtype) / 255


class Iss(Defense):
    name = "iss"
    summary_text = "Image Shortcut Squeezing: grayscale, JPEG or bit-depth reduction of the training images, once"
    PARAMS = (
        Param("squeeze", str, "jpeg", "gray | jpeg | bdr: the compression applied once to the training images "
              "(jpeg: at --jpeg-quality; bdr: to --bdr-bits bits). Default jpeg against every attack.",
              "ISS paper / official README: JPEG-10 and grayscale (table), BDR (README --BDR 2); jpeg: the best on "
              "average per norm in the README table (docs/fidelity.md)", choices=SQUEEZES),
        Param("jpeg_quality", int, 10, "JPEG quality factor of --squeeze jpeg (Pillow, 1-95 useful).",
              "ISS official README 'JPEG-10', train.sh --jpeg 10; APBench util.py JPEGcompression rate=10",
              minimum=1, maximum=100),
        Param("bdr_bits", int, 2, "Bits kept per channel by --squeeze bdr.",
              "ISS official README --BDR 2; APBench util.py RandomPosterize(bits=2)", minimum=1, maximum=8),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.figures: dict = {}
        self.change: torch.Tensor | None = None  # mean |Δ| per train row (CPU), 0 for rows not in use

    def prepare(self, ctx: TrainContext) -> None:
        rows = ctx.rows_in_use()
        before = ctx.train_x[rows]
        after = squeeze(before, self.params["squeeze"], self.params["jpeg_quality"], self.params["bdr_bits"])
        ctx.train_x[rows] = after
        per_row = (after - before).abs().flatten(1).mean(1)
        self.change = torch.zeros(len(ctx.train_x)).index_copy_(0, rows.cpu(), per_row.float().cpu())
        how = self.params["squeeze"]
        self.figures = {"squeeze": how, "rows": len(rows),
                        "mean_abs_change": round(float(per_row.mean()) if len(rows) else 0.0, 6)}
        if how == "jpeg":
            self.figures["jpeg_quality"] = self.params["jpeg_quality"]
        elif how == "bdr":
            self.figures["bdr_bits"] = self.params["bdr_bits"]
        else:
            self.figures["identity"] = ctx.train_x.shape[1] == 1  # 1 channel: only the uint8 quantisation
        return None

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        """What was applied: the squeeze and its setting, the rows squeezed, the mean |change| per pixel (over all
        rows, and over the poisoned and the clean ones when the mask is known)."""
        out = dict(self.figures)
        if poisoned is not None and self.change is not None and len(poisoned) == len(self.change):
            mask = poisoned.bool().cpu()
            for key, part in (("poisoned", mask), ("clean", ~mask)):
                out[f"mean_abs_change_{key}"] = round(float(self.change[part].mean()), 6) if part.any() else None
        return out
