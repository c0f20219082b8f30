"""`load_dataset`: a registry name or an `.npz` path, with its fixed stratified, fingerprinted splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PoisonbenchError, PoisonbenchWarning
from .catalog import DATASETS, dataset_names
from .npz import NPZ_TEST_FRACTION, NPZ_VAL_FRACTION, read_npz, split_percent
from .splits import SPLIT_SEED, fingerprint, stratified_split
from .types import Dataset, DatasetSpec, Split


def record_name(name: str) -> str:
    """The dataset name run records carry: a registry name as is, an `.npz` path by its file name."""
    return Path(name).name if name.endswith(".npz") else name


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, :, :, None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 val_fraction: float = NPZ_VAL_FRACTION, test_fraction: float = NPZ_TEST_FRACTION,
                 npz_split: tuple[float, float] | None = None) -> Dataset:
    """Load `name` (a registry name or an `.npz` path) with its fixed stratified splits; `npz_split` (from
    `parse_npz_split`), when given, sets an .npz's validation and test fractions."""
    if npz_split is not None:
        val_fraction, test_fraction = npz_split
    if (data_dir or download) and (name.endswith(".npz") or (name in DATASETS and not DATASETS.get(name).reads_folder)):
        given = " and ".join(o for o, v in (("--data-dir", data_dir), ("--download", download)) if v)
        warnings.warn(f"{given} ignored: {name} is read from {'its file' if name.endswith('.npz') else 'its package'}",
                      PoisonbenchWarning, stacklevel=2)
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise PoisonbenchError(f"dataset file {name!r} does not exist")
        arrays, source = read_npz(path, val_fraction, test_fraction)
        n = len(arrays["y"])
        val_size, test_size = round(val_fraction * n), round(test_fraction * n)
        channels = 1 if arrays["x"].ndim == 3 else arrays["x"].shape[-1]
        spec = DatasetSpec(record_name(name), "user .npz", "mnist" if channels == 1 else "cifar10",
                           int(arrays["y"].max()) + 1, (0.0,) * channels, (1.0,) * channels,
                           split_percent(val_fraction, test_fraction), lambda *_: (arrays, source), val_size,
                           test_size)
    elif name in DATASETS:
        spec = DATASETS.get(name)
        arrays, source = spec.load(Path(data_dir) if data_dir else None, download)
    else:
        raise PoisonbenchError(f"unknown dataset {name!r}; valid choices: {', '.join(dataset_names())}")

    if "test_x" in arrays:  # official train/test: val is held out of train, test is the official test set
        pool_x, pool_y = arrays["train_x"], arrays["train_y"]
        train_idx, val_idx = stratified_split(pool_y, [spec.val_size])
        test_x, test_y, test_idx = arrays["test_x"], arrays["test_y"], np.arange(len(arrays["test_y"]))
    else:
        pool_x, pool_y = arrays["x"], arrays["y"]
        train_idx, val_idx, test_idx = stratified_split(pool_y, [spec.val_size, spec.test_size])
        test_x, test_y = pool_x[test_idx], pool_y[test_idx]

    if not (len(train_idx) and len(val_idx) and len(test_y)):
        raise PoisonbenchError(f"{spec.name}: too few images to split ({len(train_idx)} train / {len(val_idx)} val / "
                               f"{len(test_y)} test); every split needs at least one image")

    def make(split: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        return Split(_to_nchw(x), torch.from_numpy(y.astype(np.int64)), idx,
                     fingerprint(f"{spec.name}:{SPLIT_SEED}", split, x, y))

    return Dataset(
        name=spec.name, family=spec.family, num_classes=max(spec.num_classes, int(pool_y.max()) + 1),
        mean=spec.mean, std=spec.std,
        train=make("train", pool_x[train_idx], pool_y[train_idx], train_idx),
        val=make("val", pool_x[val_idx], pool_y[val_idx], val_idx),
        test=make("test", test_x, test_y, test_idx),
        source=source,
    )
