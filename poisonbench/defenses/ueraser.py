"""UEraser: adversarial augmentation against unlearnable examples (Qin et al., 2023, "Learning the Unlearnable:
Adversarial Augmentations Suppress Unlearnable Example Attacks", arXiv:2303.15127, §3; official code
`lafeat/ueraser` `ueraser.py`, `LSP/cifar_train.py`, README; APBench `lafeat/apbench` `defense/ueraser.py`,
`train.py`).

Per batch (after the engine's crop/flip, as the official loaders crop and flip before the policy), K candidates
are drawn from the authors' augmentation policy, each row's loss is measured on every candidate, and the model
trains on each row's candidate of highest loss: the official loss is the mean over rows of the per-row max over
the K repeats (`ueraser.py` `adversarial_augmentation_loss`: `losses.view(repeat, -1).max(0)`, then the mean;
the same in `LSP/cifar_train.py` `--mode standard` and APBench `train.py`). That holds for the first `share` of
the epochs; afterwards each batch trains on one draw of the policy (K = 1, "UEraser-Lite"): README
`r = repeat if e < aa_epochs else 1`, and `repeat == 1` applies the policy once. The batch is never left untouched.

The policy (`ueraser.py` `UEraser`, APBench `defense/ueraser.py` `UEraser`), kornia's, in this order:
RandomPlasmaBrightness(roughness (0.3, 0.7), intensity (0.5, 1.0), p 0.5), RandomPlasmaContrast(roughness
(0.3, 0.7), p 0.5), RandomChannelShuffle(p 0.5), TrivialAugment() with kornia's default list of 12 operations
(kornia `augmentation/auto/trivial_augment/trivial_augment.py` `default_policy`: one operation per call for the
whole batch, its magnitude drawn per row). Each repeat is one call of the policy (the official scripts call
`UEraser(images)` once per repeat), so each repeat has its own TrivialAugment operation. A 1-channel image (the
MNIST family) has one channel order: channel shuffle is then the identity; the rest applies as on CIFAR-10.

How it is computed here: kornia's `AugmentationSequential` draws from torch's global generator and makes the host
wait for the device (tensors made from host data, boolean-mask indexing of the rows to augment), so the policy is
rebuilt from kornia's functional kernels (`kornia.contrib.diamond_square`, `kornia.enhance`, `kornia.geometry`)
with the formulas of kornia's augmentation classes, whole-batch, each row's coin a `torch.where`. Every draw comes
from one seed per batch, `derived_seed(run seed, "ueraser:<epoch>:<step>")`: the device draws from a generator
seeded with it, the TrivialAugment operation of each repeat (a host-side choice, as kornia's) from a Python
`random.Random` seeded with it. The engine's generator and torch's global one are untouched, two runs with the same
seed are identical, and a resumed run needs no state (the seed depends on the epoch and the batch only).

Selection: the K candidates are forwarded one repeat at a time (B rows each, the shape the engine trains with, so
a compiled forward is reused), without gradients, in train mode: each candidate's loss is computed with its own
repeat's BatchNorm batch statistics, as in the official scripts, which call the model once per repeat in train
mode. The BatchNorm running statistics (all model buffers) are put back after the selection forwards, and the engine
then trains on the chosen rows. The gradient is the official one (the gradient of the mean of per-row maxima is the
gradient of the mean loss of the chosen candidates) apart from BatchNorm: officially a chosen row is normalised with
its repeat's batch statistics and the gradient also reaches the rows not chosen through them, and the running
statistics are updated K times per step; here the chosen rows are normalised together and update the running
statistics once (docs/fidelity.md, "ueraser").
"""

from __future__ import annotations

import functools
import math
import random
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..core.hashing import derived_seed
from ..core.optional import require
from ..core.params import MAX_DRAWS, Param
from ..engine.hooks import Defense
from ..engine.training import compiles_size

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

UERASER_STREAM = "ueraser"
# ueraser.py `UEraser` (= APBench defense/ueraser.py `UEraser`)
PLASMA_ROUGHNESS, PLASMA_INTENSITY, STAGE_P = (0.3, 0.7), (0.5, 1.0), 0.5
# kornia trivial_augment.py `default_policy` (the magnitude ranges; "identity" and "color" are commented out there)
TRIVIAL_OPS = ("auto_contrast", "equalize", "rotate", "posterize", "solarize", "contrast", "brightness", "sharpness",
               "shear_x", "shear_y", "translate_x", "translate_y")
ROTATE_DEG, POSTERIZE_BITS, FACTOR_RANGE, SHEAR_MAG, TRANSLATE_MAG = 30.0, (0.0, 4.0), (0.1, 1.9), 0.3, 0.5
DEFAULT_REPEATS = 5  # README `repeat = 5`; LSP/cifar_train.py `--repeats` 5; APBench train.py `range(5)`
DEFAULT_SHARE = 0.25  # LSP/cifar_train.py `epoch < 50` of `--epoch` 200; APBench train.py "50 for UEraser" of 200


@functools.cache
def kornia_kernels() -> SimpleNamespace:
    """kornia's functional kernels the policy uses, imported on first use: kornia is optional (only UEraser needs it,
    poisonbench/core/optional.py), and without it this is the one-line error naming it."""
    require("kornia")
    from kornia.contrib import diamond_square
    from kornia.enhance import (
        adjust_brightness,
        adjust_contrast,
        equalize,
        normalize_min_max,
        posterize,
        sharpness,
        solarize,
    )
    from kornia.geometry.transform import get_shear_matrix2d, rotate, translate, warp_affine

    return SimpleNamespace(
        diamond_square=diamond_square, adjust_brightness=adjust_brightness, adjust_contrast=adjust_contrast,
        equalize=equalize, normalize_min_max=normalize_min_max, posterize=posterize, sharpness=sharpness,
        solarize=solarize, get_shear_matrix2d=get_shear_matrix2d, rotate=rotate, translate=translate,
        warp_affine=warp_affine)


def _uniform(g: torch.Generator, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype)


def _signed(g: torch.Generator, x: torch.Tensor, high: float) -> torch.Tensor:
    """kornia's symmetric magnitude: U(0, high), then a random sign per row (auto/operations/base.py)."""
    magnitude = _uniform(g, x, 0.0, high)
    sign = torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype) < 0.5
    return torch.where(sign, -magnitude, magnitude)


def _rows(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _plasma(g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """kornia's plasma map (intensity/plasma.py `_generate_plasma`): one fractal per row and channel, in [0, 1]."""
    roughness = _uniform(g, x, *PLASMA_ROUGHNESS)
    draw = functools.partial(torch.rand, generator=g)
    return kornia_kernels().diamond_square(tuple(x.shape), roughness, random_fn=draw, device=x.device, dtype=x.dtype)


def plasma_brightness(g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """kornia RandomPlasmaBrightness.apply_transform: x + (2·plasma − 1)·intensity, clamped to [0, 1]."""
    plasma = _plasma(g, x)
    intensity = _uniform(g, x, *PLASMA_INTENSITY)
    return (x + (2 * plasma - 1) * _rows(intensity)).clamp(0, 1)


def plasma_contrast(g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """kornia RandomPlasmaContrast.apply_transform: (x − 0.5)·4·plasma + 0.5, clamped to [0, 1]."""
    return ((x - 0.5) * 4 * _plasma(g, x) + 0.5).clamp(0, 1)


def channel_shuffle(g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """kornia RandomChannelShuffle: a uniform random permutation of the channels per row (1 channel: identity)."""
    order = torch.rand(x.shape[:2], generator=g, device=x.device).argsort(1)
    return x.gather(1, order.view(*order.shape, 1, 1).expand_as(x))


def _affine_center(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.stack([x.new_full((len(x),), (w - 1) / 2), x.new_full((len(x),), (h - 1) / 2)], 1)


def trivial_op(name: str, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """One TrivialAugment operation on every row, its magnitude drawn per row (kornia auto/rand_augment/ops.py and
    auto/operations/ops.py; each operation's formula is its kornia augmentation class's `apply_transform`)."""
    k = kornia_kernels()
    if name == "auto_contrast":
        return k.normalize_min_max(x).clamp(0, 1)
    if name == "equalize":
        return k.equalize(x)
    if name == "rotate":  # RandomRotation: degrees, bilinear, zero padding, align_corners True
        return k.rotate(x, _signed(g, x, ROTATE_DEG), align_corners=True)
    if name == "posterize":  # Posterize._process_magnitude: bits U(0, 4) truncated to an integer
        return k.posterize(x, _uniform(g, x, *POSTERIZE_BITS).long())
    if name == "solarize":  # RandomSolarize(thresholds=(0, 1), additions=0)
        return k.solarize(x, _uniform(g, x, 0.0, 1.0))
    if name == "contrast":
        return k.adjust_contrast(x, _uniform(g, x, *FACTOR_RANGE), clip_output=True)
    if name == "brightness":  # RandomBrightness adds factor − 1
        return k.adjust_brightness(x, _uniform(g, x, *FACTOR_RANGE) - 1, clip_output=True)
    if name == "sharpness":
        return k.sharpness(x, _uniform(g, x, *FACTOR_RANGE))
    if name in ("shear_x", "shear_y"):  # ShearX/Y._process_magnitude: ×180 degrees; RandomShear: radians, centre
        radians = _signed(g, x, SHEAR_MAG) * 180 * (math.pi / 180)
        zero = torch.zeros_like(radians)
        sx, sy = (radians, zero) if name == "shear_x" else (zero, radians)
        matrix = k.get_shear_matrix2d(_affine_center(x), sx, sy)
        return k.warp_affine(x, matrix[:, :2, :], tuple(x.shape[-2:]), align_corners=True)
    if name in ("translate_x", "translate_y"):  # RandomTranslate: a fraction of the width / height, in pixels
        size = x.shape[-1] if name == "translate_x" else x.shape[-2]
        shift = _signed(g, x, TRANSLATE_MAG) * size
        zero = torch.zeros_like(shift)
        return k.translate(x, torch.stack([shift, zero] if name == "translate_x" else [zero, shift], 1),
                           align_corners=True)
    raise ValueError(name)


def policy(g: torch.Generator, x: torch.Tensor, op: str) -> torch.Tensor:
    """One call of the UEraser policy on a batch: the three p = 0.5 stages, each row's coin its own, then the
    TrivialAugment operation `op` on every row (module docstring)."""
    for stage in (plasma_brightness, plasma_contrast, channel_shuffle):
        coin = torch.rand(len(x), generator=g, device=x.device) < STAGE_P
        x = torch.where(_rows(coin), stage(g, x), x)
    return trivial_op(op, g, x)


def candidates(x: torch.Tensor, repeats: int, seed: int) -> torch.Tensor:
    """`repeats` draws of the policy on the batch `x`, (repeats, B, C, H, W), all from `seed` (module docstring)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    ops = random.Random(seed)
    return torch.stack([policy(g, x, TRIVIAL_OPS[ops.randrange(len(TRIVIAL_OPS))]) for _ in range(repeats)])


class UEraser(Defense):
    name = "ueraser"
    summary_text = "adversarial augmentation: train on the highest-loss of K draws of the UEraser policy"
    requires = ("kornia",)
    PARAMS = (
        Param("repeats", int, DEFAULT_REPEATS, "K, the policy's draws per batch during the adversarial epochs; each "
              "row trains on its draw of highest loss (1: UEraser-Lite, one draw, no selection).",
              "UEraser README repeat = 5; LSP/cifar_train.py --repeats 5; APBench train.py range(5)", minimum=1,
              maximum=MAX_DRAWS),
        Param("share", float, DEFAULT_SHARE, "the share of the epochs (the first ones) with adversarial augmentation; "
              "later epochs train on one draw of the policy (1: every epoch, UEraser-Max).",
              "LSP/cifar_train.py epoch < 50 of 200; APBench train.py --repeat_epoch 50 for UEraser, 300 for -Max",
              positive=True, maximum=1),
    )

    def _reset(self) -> None:
        self._step_epoch: int | None = None
        self._step = 0

    def __init__(self, family: str, recipe, threat=None, **params: Any):
        super().__init__(family, recipe, threat, **params)
        self._reset()

    @property
    def adversarial_epochs(self) -> int:
        """The first epochs with adversarial augmentation: `share` of the recipe's epochs, to the nearest, >= 1."""
        return max(1, round(self.params["share"] * self.recipe.epochs))

    def prepare(self, ctx: TrainContext) -> None:
        kornia_kernels()  # kornia missing: the one-line error before the first epoch, not at the first batch
        self._reset()
        return None

    def batch_seed(self, ctx: TrainContext) -> int:
        """The seed of this batch's draws: the run's seed, the epoch and the batch's place in it."""
        if self._step_epoch != ctx.epoch:
            self._step_epoch, self._step = ctx.epoch, 0
        self._step += 1
        return derived_seed(ctx.seed, f"{UERASER_STREAM}:{ctx.epoch}:{self._step - 1}")

    def repeats(self, epoch: int) -> int:
        return self.params["repeats"] if epoch < self.adversarial_epochs else 1

    def batch(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        k = self.repeats(ctx.epoch)
        drawn = candidates(x, k, self.batch_seed(ctx))
        if k == 1:
            return drawn[0], y
        choice = selection_losses(ctx, drawn, y).argmax(0)  # per row: the repeat of highest loss
        return drawn[choice, torch.arange(len(y), device=y.device)], y

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        return {"method": self.name, "repeats": self.params["repeats"], "share": self.params["share"],
                "adversarial_epochs": self.adversarial_epochs, "epochs": self.recipe.epochs}


def selection_losses(ctx: TrainContext, drawn: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, B) cross-entropy of every candidate under the current model in its training mode, one repeat per forward
    (each with its own BatchNorm batch statistics), no gradients; the model's buffers (running statistics) are put
    back afterwards, so the selection leaves the model as it found it."""
    model = ctx.model
    compiled = ctx.forward is not None and ctx.forward is not model
    forward = ctx.forward if compiles_size(compiled, len(y), ctx.recipe.batch_size, len(ctx.train_y)) else model
    buffers = list(model.buffers())
    saved = [b.clone() for b in buffers]
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(forward(candidate), y, reduction="none") for candidate in drawn])
        for b, s in zip(buffers, saved, strict=True):
            b.copy_(s)
    return losses
