"""Pieces more than one test module builds the same way (found by `duplicates --change`): a stub model for the
backdoor ASR tests and a workspace with a DP-SGD run among the untargeted mix's."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Lookup(nn.Module):
    """Classifies an image it was given (`x`) as its class in `y` and anything else (a triggered or patched image)
    as `other`: logits over 4 classes, 10 on the chosen one."""

    def __init__(self, x, y, other):
        super().__init__()
        self.known = {tuple(r.flatten().tolist()): int(c) for r, c in zip(x, y, strict=True)}
        self.other = other

    def forward(self, batch):
        cls = torch.tensor([self.known.get(tuple(r.flatten().tolist()), self.other) for r in batch])
        return nn.functional.one_hot(cls, 4).float() * 10


def dpsgd_mix_workspace(root: Path) -> None:
    """A results workspace at `root` holding two `none` runs on craft "a", two `hint` runs on craft "b" (one
    PoisonSet in two crafts among the runs shown) and one DP-SGD run (σ 1.1, Poisson, ε 2.5 at δ 1e-5) on craft
    "a": the notes under Table II carry DP-SGD's ε and the mixed crafts (tests.test_run_identity's records)."""
    from poisonbench.core.hashing import short_hash

    from .test_run_identity import craft, mix_record, workspace

    dp = mix_record(0, craft("a"), method="dpsgd")
    dp["config"]["defense"].update(clip=1.0, noise_multiplier=1.1, sampling="poisson")
    dp["defense"] = {"accounting": {"delta": 1e-5, "delta_rule": "1/n", "epsilon": 2.5, "guarantee": True,
                                    "noise_multiplier": 1.1, "sample_rate": 0.01, "sampling": "poisson",
                                    "steps": 100, "epsilon_note": "x"}}
    dp["run_id"] = short_hash(dp["config"])
    workspace(root, [mix_record(t, craft("a"), method="none") for t in range(2)]
              + [mix_record(t, craft("b"), method="hint") for t in range(2)] + [dp])


def npz_dataset(root: Path, name: str, side: int, channels: int, seed: int, n: int = 400, classes: int = 4):
    """`n` learnable `side`×`side` images of `classes` classes saved as `root/name.npz` (train 320 / val 8 /
    test 72 at 400) and loaded: (the dataset, its path)."""
    import numpy as np

    from poisonbench.data import load_dataset

    from .conftest import class_images

    x, y = class_images(n, side, channels=channels, classes=classes, seed=seed)
    path = root / f"{name}.npz"
    np.savez(path, x=x, y=y)
    return load_dataset(str(path)), path

