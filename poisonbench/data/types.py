"""What a loaded dataset is (docs/datasets.md): its splits, and the registry entry that loads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# The dataset families: MNIST-like (28×28 grey) and CIFAR-like (32×32 colour). A family picks the default model
# (paper Table I), the recipes and every attack's and defense's family-dependent defaults.
FAMILIES = ("mnist", "cifar10")


@dataclass(frozen=True)
class Split:
    """One split: images uint8 (N, C, H, W), labels int64 (N,), indices into the source pool, fingerprint."""

    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    family: str  # "mnist" (MNIST-like 28×28 grey) or "cifar10" (32×32 colour): picks recipes and attack defaults
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split
    source: str
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def fingerprint(self) -> str:
        return "-".join(s.fingerprint[:8] for s in (self.train, self.val, self.test))

    def summary(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "shape": list(self.shape),
            "classes": self.num_classes,
            "splits": {
                split: {"size": len(s), "fingerprint": s.fingerprint,
                        "class_counts": torch.bincount(s.y, minlength=self.num_classes).tolist()}
                for split, s in (("train", self.train), ("val", self.val), ("test", self.test))
            },
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    family: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_sizes: tuple[int, int, int]  # train / val / test rows (an .npz: percent), for `data list`
    load: Callable[[Path | None, bool], tuple[dict[str, np.ndarray], str]]
    val_size: int = 0  # held out of the official train set (or pool)
    test_size: int = 0  # held out of the pool when there is no official test set
    reads_folder: bool = True  # False: embedded data, so --data-dir / --download do not apply
