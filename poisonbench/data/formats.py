"""Readers for the on-disk formats the datasets ship in (IDX for MNIST-family, pickled batches for CIFAR-10).

We read the files ourselves instead of through torchvision's dataset classes so that any directory holding
the standard files works (torchvision's `MNIST/raw/` layout, a flat directory such as Debian's
`/usr/share/datasets/fashion-mnist/`, gzipped or not). torchvision is still what downloads them.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import PoisonbenchError
from .cifar_pickle import load_batch

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic = 0x0000, dtype code, number of dims; big-endian sizes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise PoisonbenchError(f"{path} cannot be read ({type(exc).__name__}: {exc}); an interrupted download? "
                               "delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise PoisonbenchError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise PoisonbenchError(f"{path} is truncated or corrupt: {len(body)} data bytes, expected {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def find_file(directories: list[Path], stems: list[str], suffixes=("", ".gz")) -> Path | None:
    for d in directories:
        for stem in stems:
            for suffix in suffixes:
                candidate = d / f"{stem}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


MNIST_FILES = {
    "train_x": ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
    "train_y": ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
    "test_x": ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
    "test_y": ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
}


def read_mnist_family(directories: list[Path]) -> tuple[dict[str, np.ndarray], Path] | None:
    """Find and read the four IDX files; None if the images are not in any of `directories`."""
    train_x = find_file(directories, MNIST_FILES["train_x"])
    if train_x is None:
        return None
    # all four from the folder holding the train images: a stale file elsewhere must not be mixed in
    found = {key: find_file([train_x.parent], stems) for key, stems in MNIST_FILES.items()}
    missing = [MNIST_FILES[k][0] for k, p in found.items() if p is None]
    if missing:
        raise PoisonbenchError(f"{found['train_x'].parent} lacks {', '.join(missing)}")
    arrays = {key: read_idx(path) for key, path in found.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_x"]) != len(arrays[f"{part}_y"]):
            raise PoisonbenchError(f"{found[part + '_x']}: image and label counts differ")
    return arrays, found["train_x"].parent


def read_cifar10(directories: list[Path]) -> tuple[dict[str, np.ndarray], Path] | None:
    """Read the official python-pickle batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`) with an
    unpickler that runs nothing but numpy's array reconstruction (`cifar_pickle`)."""
    for d in directories:
        if (d / "data_batch_1").is_file():
            break
    else:
        return None

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = d / name
        if not path.is_file():
            raise PoisonbenchError(f"{d} lacks {name}")
        try:
            entry = load_batch(path)
            labels = entry.get("labels", entry.get("fine_labels"))
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(labels, dtype=np.int64)
            if labels is None or y.shape != (len(x),):
                raise ValueError("no labels for its images")
        except PoisonbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 (a damaged or foreign file, whatever the unpickler raises)
            raise PoisonbenchError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); an "
                                   "interrupted download? delete it and fetch it again") from None
        return x, y

    trains = [load(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = load("test_batch")
    arrays = {
        "train_x": np.concatenate([t[0] for t in trains]),
        "train_y": np.concatenate([t[1] for t in trains]),
        "test_x": test_x,
        "test_y": test_y,
    }
    return arrays, d
