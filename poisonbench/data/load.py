"""`load_dataset`: a registry name or an `.npz` path, with its fixed stratified, fingerprinted splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.optional import first_line
from .catalog import DATASETS, dataset_names
from .npz import NPZ_TEST_FRACTION, NPZ_VAL_FRACTION, check_npz_images, read_npz, split_percent
from .splits import SPLIT_SEED, fingerprint, stratified_split
from .types import Dataset, DatasetSpec, Split


def record_name(name: str) -> str:
    """The dataset name run records carry: a registry name as is, an `.npz` path by its file name."""
    return Path(name).name if name.endswith(".npz") else name


def plugin_arrays(spec: DatasetSpec, data_dir: Path | None, download: bool) -> tuple[dict[str, np.ndarray], str]:
    """What a plugin's dataset loader returns, checked (docs/plugins.md, "Datasets"): a loader that raises, or
    returns anything but `({"x", "y"} or {"train_x", "train_y", "test_x", "test_y"}: uint8 images N×H×W or N×H×W×C
    with C 1 or 3, int labels >= 0, one per image; the source text)`, is one line naming the plugin, never a
    traceback. A `PoisonbenchError` of its own is passed on with the plugin named."""
    plugin = DATASETS.plugin(spec.name)
    who = f"dataset {spec.name!r} of plugin {plugin.dist} {plugin.version}"
    try:
        got = spec.load(data_dir, download)
    except PoisonbenchError as exc:
        raise PoisonbenchError(f"{who}: {exc}") from None
    except (Exception, SystemExit) as exc:  # a loader's sys.exit() too; Ctrl-C stays Ctrl-C
        raise PoisonbenchError(f"{who}: its loader failed: {first_line(exc)}") from None
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict) and isinstance(got[1], str)):
        raise PoisonbenchError(f"{who}: its loader returned {type(got).__name__}, not (arrays, source): a dict of "
                               "numpy arrays and a str")
    arrays, source = got
    pairs = [("train_x", "train_y"), ("test_x", "test_y")] if "test_x" in arrays else [("x", "y")]
    wanted = [k for pair in pairs for k in pair]
    missing = [k for k in wanted if not isinstance(arrays.get(k), np.ndarray)]
    if missing:
        raise PoisonbenchError(f"{who}: its loader returned no numpy array {missing[0]!r}; it returns 'x' and 'y', or "
                               "'train_x', 'train_y', 'test_x' and 'test_y'")
    for kx, ky in pairs:
        x, y = arrays[kx], arrays[ky]
        try:
            check_npz_images(x, f"{who}: {kx!r}")
        except PoisonbenchError as exc:
            raise PoisonbenchError(str(exc).replace("'x' must", "it must", 1)) from None
        if (y.ndim != 1 or len(y) != len(x) or not len(y) or not np.issubdtype(y.dtype, np.integer)
                or y.min() < 0):
            raise PoisonbenchError(f"{who}: {ky!r} must hold one int label >= 0 per image of {kx!r} ({len(x)}), got "
                                   f"{y.dtype} {y.shape}")
    if len(pairs) == 2 and arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise PoisonbenchError(f"{who}: train images {arrays['train_x'].shape[1:]} and test images "
                               f"{arrays['test_x'].shape[1:]} differ in shape")
    return {k: arrays[k].astype(np.int64) if k.endswith("y") else arrays[k] for k in wanted}, source


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
        if DATASETS.plugin(name) is None:
            arrays, source = spec.load(Path(data_dir) if data_dir else None, download)
        else:
            arrays, source = plugin_arrays(spec, Path(data_dir) if data_dir else None, download)
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
