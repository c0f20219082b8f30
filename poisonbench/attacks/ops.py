"""`ops`: Wu et al.'s One-Pixel Shortcut (ICLR 2023; official code `OPS:perturb.py` `pixel_search`). No model.

Per class (in class order), every pair (pixel position p, binary colour c ∈ {0, 1}^C) is scored over the class's
images of the train split by mean(|c − x_p|) / std(|c − x_p|), the mean and standard deviation (population, as
numpy's) taken over the images and channels together; the class takes its best pair, a pair another class took
being excluded (pairs are unique across classes, as in the official code: two classes may share a position with
different colours). The poison sets that position, all channels, to the colour exactly: δ = c − x_p there, 0
elsewhere, so `norm = "l0"` and ε (default 1) counts the pixel positions an image may change. The colours are the
2^C corners of the colour cube: 8 on RGB images, 2 (black, white) on one-channel images such as MNIST.

The statistics are exact: integer sums of the 0–255 pixel values, so a position whose |c − x| is the same on every
image (MNIST's always-black corners) has std exactly 0. Score = mean / (std + 1e-6): finite everywhere (the official
divides by the std, which gives inf or 0/0 = NaN there and ranks NaN first); ties go to the lowest position index
(row-major, h·W + w), then the lowest colour index (channel 0 as the most significant bit, as the official code).

Two rules beyond the official code: a pair is admissible only if it changes every image of the class (no image
whose pixel already equals the colour on every channel: otherwise that image would carry no shortcut); a class with
no admissible pair is refused in one line naming it (checked by `craft_spec`, before anything is written). With
ε > 1 (the official `sparsity`) a class takes its ε best admissible pairs at ε distinct positions, so every poisoned
image changes exactly ε positions. The pairs depend only on the train split (not on the budget or the seed).

A third (issue 67): the search is restricted to the *interior*, the positions at least `margin` pixels from every
border. On MNIST the border is black in every image, so the tie-break among std-0 pixels put class c's pixel at
(0, c); the MNIST family's ConvNet starts with a 5×5 convolution without padding, whose windows reach a border pixel
1–5 times against 25 for an interior one, so the shortcut was barely visible to the victim. A position at least
k − 1 from every border lies in k² windows of a k×k first layer, each wholly inside the image (no padding).
The rule does not read the victim: `margin` is a number per family, k − 1 of the family's default model's first
convolution (4: the ConvNet's 5×5, no padding; 2: ResNet-18's 3×3, padding 1, whose border windows hang over the
zero padding), recorded in the parameters (the poison id); `--margin 0` is the official search over every position.
"""

from __future__ import annotations

import torch

from ..core.errors import PoisonbenchError
from ..core.params import Param
from .base import Attack, AttackContext

STD_FLOOR = 1e-6  # score = mean / (std + STD_FLOOR): no inf or NaN where std = 0
# k − 1 of the first convolution (k × k) of the family's default model (engine.models.DEFAULT_MODEL): the ConvNet's
# nn.Conv2d(C, 40, 5) (HINT's MNIST network), ResNet-18's stem nn.Conv2d(C, 64, 3, 1, 1)
MARGIN = {"mnist": 4, "cifar10": 2}


def interior(h: int, w: int, margin: int) -> torch.Tensor:
    """(H·W,) bool, row-major: the positions at least `margin` pixels from every border."""
    rows = (torch.arange(h) >= margin) & (torch.arange(h) < h - margin)
    cols = (torch.arange(w) >= margin) & (torch.arange(w) < w - margin)
    return (rows[:, None] & cols[None, :]).flatten()


def colour_bits(channels: int) -> torch.Tensor:
    """(2^C, C) int64: colour k's value (0 or 1) per channel, channel 0 the most significant bit."""
    k = torch.arange(2 ** channels).unsqueeze(1)
    return (k >> torch.arange(channels - 1, -1, -1)) & 1


def class_scores(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one class's images `u` (n×C×H×W uint8, n ≥ 1): (scores (H·W, 2^C) float64 on the CPU, admissible (H·W,
    2^C) bool: the pair changes every image). Whole-tensor, on `u`'s device."""
    n, c, h, w = u.shape
    hw, colours = h * w, 2 ** c
    bits = colour_bits(c).to(u.device)
    flat = u.reshape(n, c, hw)
    s1 = flat.sum(0, dtype=torch.int64)  # (C, HW): Σ x (x in 0..255)
    s2 = flat.to(torch.int32).square().sum(0, dtype=torch.int64)  # Σ x²
    # per channel and colour bit: Σ|255·b − x| and Σ(255·b − x)²
    a1 = torch.stack([s1, 255 * n - s1])  # (2, C, HW)
    a2 = torch.stack([s2, 255 * 255 * n - 2 * 255 * s1 + s2])
    chan = torch.arange(c, device=u.device)
    t1 = a1[bits, chan].sum(1)  # (2^C, HW): Σ over images and channels
    t2 = a2[bits, chan].sum(1)
    count = n * c
    var_scaled = (count * t2 - t1 * t1).clamp_min(0)  # (count·255)²·var, an exact integer
    dtype = torch.float32 if u.device.type == "mps" else torch.float64
    scale = count * 255.0
    mean = t1.to(dtype) / scale
    std = var_scaled.to(dtype).sqrt() / scale
    scores = (mean / (std + STD_FLOOR)).double().cpu().T.contiguous()  # (HW, 2^C)
    # a pair leaves an image unchanged if its pixel already is the colour on every channel
    binary = ((flat == 0) | (flat == 255)).all(1)  # (n, HW)
    code = ((flat == 255).long() * (2 ** torch.arange(c - 1, -1, -1, device=u.device)).view(1, c, 1)).sum(1)
    pos = torch.arange(hw, device=u.device).expand(n, hw)
    blocked = torch.zeros(hw * colours, dtype=torch.bool, device=u.device)
    blocked[(pos * colours + code)[binary]] = True
    return scores, ~blocked.view(hw, colours).cpu()


class OPS(Attack):
    name = "ops"
    norm = "l0"
    summary = "Wu et al. OPS: one pixel per class set to a corner colour (L0, model-free)"
    PARAMS = (
        Param("margin", int, MARGIN, "Search only the positions at least this many pixels from every border (k − 1 "
              "of the family's default model's k×k first convolution; 0: every position, as officially).",
              "poisonbench, issue 67: ConvNet conv1 5×5 no padding (MNIST), ResNet-18 stem 3×3 (CIFAR-10); the "
              "official pixel_search has none", minimum=0, maximum=1000),
    )

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        return 1.0  # OPS:main.py sparsity 1: one pixel

    @classmethod
    def adaptations(cls, params: dict, family: str | None, info: dict | None = None) -> list[str] | None:
        """`margin=k` for an interior search (the defaults: 4 on the MNIST family, 2 on CIFAR-10); the official
        search (`--margin 0`) is unlabelled."""
        margin = params.get("margin")
        return [f"margin={margin}"] if isinstance(margin, int) and margin > 0 else []

    def check_data(self, dataset, eps: float) -> None:
        self.search(dataset, eps, torch.device("cpu"))

    def search(self, dataset, eps: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions K×ε int64, colours K×ε×C float32) per class (−1 / 0 for a class without train images)."""
        c, h, w = dataset.shape
        k, margin = int(eps), self.params["margin"]
        inside = interior(h, w, margin)
        count = int(inside.sum())
        if count == 0:
            raise PoisonbenchError(f"--margin {margin} of attack 'ops' leaves no pixel position of the {h}×{w} "
                                   f"images (at most {(min(h, w) - 1) // 2})")
        if k > count:
            where = f"the {count} pixel positions at least {margin} from the border" if margin else \
                f"the {count} pixel positions"
            raise PoisonbenchError(f"--eps {eps:g} of attack 'ops' exceeds {where} of a {h}×{w} image")
        classes = dataset.num_classes
        bits = colour_bits(c)
        positions = torch.full((classes, k), -1, dtype=torch.long)
        colours = torch.zeros((classes, k, c))
        taken = torch.zeros((h * w, 2 ** c), dtype=torch.bool)
        y = dataset.train.y.cpu()
        for cls in range(classes):
            rows = (y == cls).nonzero().flatten()
            if len(rows) == 0:
                continue
            scores, admissible = class_scores(dataset.train.x[rows].to(device))
            allowed = admissible & ~taken & inside[:, None]
            for j in range(k):
                masked = scores.masked_fill(~allowed, float("-inf")).flatten()
                best = int(torch.argmax(masked))  # the first maximum: lowest position, then colour
                if masked[best] == float("-inf"):
                    raise PoisonbenchError(f"attack 'ops': no pixel position and colour changes every image of "
                                           f"class {cls} (some image already has each colour at each free "
                                           "position)")
                p, colour = divmod(best, 2 ** c)
                positions[cls, j], colours[cls, j] = p, bits[colour].float()
                taken[p, colour] = True
                allowed[p] = False  # the class's next pixel is at another position
        return positions, colours

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        c, h, w = ctx.dataset.shape
        positions, colours = self.search(ctx.dataset, ctx.eps, ctx.device)
        rows = ctx.indices.cpu()
        y = ctx.dataset.train.y.cpu()[rows]
        x = ctx.dataset.train.x[rows].to(ctx.device).float().div_(255).view(len(rows), c, h * w)
        where = positions[y].to(ctx.device).unsqueeze(1).expand(-1, c, -1)  # (n, C, ε)
        target = colours[y].to(ctx.device).transpose(1, 2)  # (n, C, ε)
        delta = torch.zeros_like(x).scatter_(2, where, target - x.gather(2, where))
        return delta.view(len(rows), c, h, w)
