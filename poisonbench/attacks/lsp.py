"""`lsp`: Yu et al.'s linear-separable synthetic perturbations (KDD 2022, "Availability Attacks Create Shortcuts";
official code `LSP:synthetic_perturbations/cifar_train.py`). No model.

Synthetic points are drawn with scikit-learn's `make_classification` (one Gaussian cluster per class, centroids on
the vertices of a hypercube of side 2·class_sep with class_sep = 10, every feature informative, no label noise), in
(H/p)·(W/p)·C dimensions: each point is reshaped to an (H/p)×(W/p)×C grid and upsampled (each cell repeated into a
p×p patch), so a class's perturbations are linearly separable from the others'. Each perturbation is scaled to an
exact ℓ2 norm of ε — by default the official (6/255)·√(C·H·W), the ℓ2 norm of an L∞ perturbation of 6/255 on every
pixel — hence `norm = "l2"`. p is the official 8 on 32×32 images and 7 on 28×28 ones (the same 4×4 grid).

As in the official code each poisoned image gets its own point, drawn from its class's cluster (`n_samples` = the
class count times the largest class's size, the j-th image of class c in train order taking the j-th point of
class c, so an image's δ does not depend on the budget); `--classwise` draws one point per class instead, added to
every image of the class (a variant, not in the official code). Then x+δ is clamped into [0, 1] (`project`), which
only shrinks entries of δ: a row where the clamp acted has ‖δ‖₂ below ε; elsewhere it is exactly ε (up to float
rounding). The draw is seeded from the crafting seed (`make_classification`'s `random_state`, derived from it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import PoisonbenchError
from ..core.params import Param
from .base import Attack, AttackContext

LINF_EQUIVALENT = 6 / 255  # LSP:cifar_train.py --eps 6 (/255): the ℓ2 radius is √(C·H·W)·6/255
CLASS_SEP = 10.0  # LSP:cifar_train.py make_classification(class_sep=10.)


def lsp_eps(shape: tuple[int, int, int]) -> float:
    """The official ℓ2 radius for images of `shape` (C, H, W): (6/255)·√(C·H·W) (`comput_l2norm_lim`)."""
    c, h, w = shape
    return LINF_EQUIVALENT * math.sqrt(c * h * w)


class LSP(Attack):
    name = "lsp"
    norm = "l2"
    summary = "Yu et al. LSP: linearly separable synthetic patches per class (ℓ2, model-free)"
    PARAMS = (
        Param("patch_size", int, {"mnist": 7, "cifar10": 8},
              "Side p of each synthetic patch (pixels); must divide the image height and width.",
              "LSP:cifar_train.py --patchsize 8 on 32×32; 7 on 28×28 (the same 4×4 grid)", minimum=1),
        Param("classwise", bool, {"mnist": False, "cifar10": False},
              "One synthetic point per class (the same δ for every image of a class) instead of one per image.",
              "not in the official code (one point per image)"),
    )

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        return lsp_eps(shape)

    def grid(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(grid height, grid width, features) for images of `shape`."""
        c, h, w = shape
        p = self.params["patch_size"]
        return h // p, w // p, (h // p) * (w // p) * c

    def check_data(self, dataset, eps: float) -> None:
        c, h, w = dataset.shape
        p = self.params["patch_size"]
        if h % p or w % p:
            raise PoisonbenchError(f"--patch-size {p} of attack 'lsp' must divide the images' height and width "
                                   f"({h}×{w})")
        features = self.grid(dataset.shape)[2]
        if 2 ** features < dataset.num_classes:  # make_classification: one hypercube vertex per class
            raise PoisonbenchError(f"--patch-size {p} of attack 'lsp' leaves {features} features, too few for "
                                   f"{dataset.num_classes} classes (2^features >= classes)")

    def points(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(points K×m×F, rank of each train row within its class): point `points[y, rank]` is row's."""
        from sklearn.datasets import make_classification

        y = ctx.dataset.train.y.cpu()
        classes = ctx.dataset.num_classes
        m = 1 if self.params["classwise"] else int(torch.bincount(y, minlength=classes).max())
        features = self.grid(ctx.dataset.shape)[2]
        state = int(np.random.SeedSequence(ctx.seed).generate_state(1)[0])
        data, labels = make_classification(n_samples=classes * m, n_features=features, n_informative=features,
                                           n_redundant=0, n_repeated=0, n_classes=classes,
                                           n_clusters_per_class=1, class_sep=CLASS_SEP, flip_y=0.0,
                                           random_state=state)
        order = np.argsort(labels, kind="stable")  # m points per class, class by class
        points = torch.from_numpy(data[order].astype(np.float32)).view(classes, m, features)
        if m == 1:
            return points, torch.zeros(len(y), dtype=torch.long)
        by_class = torch.argsort(y, stable=True)
        starts = torch.cumsum(torch.bincount(y, minlength=classes), 0) - torch.bincount(y, minlength=classes)
        rank = torch.empty_like(y)
        rank[by_class] = torch.arange(len(y)) - starts[y[by_class]]
        return points, rank

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        c, h, w = ctx.dataset.shape
        p = self.params["patch_size"]
        gh, gw, _ = self.grid(ctx.dataset.shape)
        points, rank = self.points(ctx)
        rows = ctx.indices.cpu()
        y = ctx.dataset.train.y.cpu()[rows]
        cells = points[y, rank[rows]].to(ctx.device).view(-1, gh, gw, c).permute(0, 3, 1, 2)
        delta = cells.repeat_interleave(p, 2).repeat_interleave(p, 3)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta * (ctx.eps / norms).view(-1, 1, 1, 1)
