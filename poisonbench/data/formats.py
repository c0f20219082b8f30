"""Readers for the on-disk formats the datasets ship in (IDX for MNIST-family, pickled batches for CIFAR-10).

We read the files ourselves instead of through torchvision's dataset classes so that any directory holding
the standard files works (torchvision's `MNIST/raw/` layout, a flat directory such as Debian's
`/usr/share/datasets/fashion-mnist/`, gzipped or not). torchvision is still what downloads them.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.bounded import Refused, open_regular
from ..core.errors import PoisonbenchError
from .cifar_pickle import load_batch

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic = 0x0000, dtype code, number of dims; big-endian sizes.

    Through the bounded reader (core/bounded.py): a regular file only; the header is read (inflated) first and the
    size it declares checked before anything more is inflated or read: `MAX_IDX_BYTES` at most, within the memory
    available (`IDX_BYTES_PER_BYTE`), and for a .gz no more than `MAX_IDX_INFLATION` × the file above
    `IDX_INFLATION_FLOOR` (a decompression bomb); the data are then inflated up to the declared size + 1 byte."""
    gz = str(path).endswith(".gz")
    where = repr(str(path))
    try:
        with open_regular(path, where) as file:
            on_disk = os.fstat(file.fileno()).st_size
            with gzip.GzipFile(fileobj=file, mode="rb") if gz else contextlib.nullcontext(file) as f:
                head = f.read(4)
                if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                    raise PoisonbenchError(f"{path} is not an IDX file (bad magic number)")
                ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
                sizes = f.read(4 * ndim)
                if len(sizes) < 4 * ndim:
                    raise PoisonbenchError(f"{path} is truncated or corrupt: its header is cut")
                dims = struct.unpack(f">{ndim}I", sizes)
                expected = math.prod(dims) * dtype.itemsize
                _check_idx_size(where, expected, on_disk, gz)
                if not gz and on_disk != 4 + 4 * ndim + expected:
                    body_bytes = on_disk - 4 - 4 * ndim
                    raise PoisonbenchError(f"{path} is truncated or corrupt: {body_bytes} data bytes, expected "
                                           f"{expected}")
                body = f.read(expected + 1)  # never more: a stream that runs on is refused below
    except Refused as exc:
        raise PoisonbenchError(str(exc)) from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise PoisonbenchError(f"{path} cannot be read ({type(exc).__name__}: {exc}); an interrupted download? "
                               "delete it and fetch it again") from None
    if len(body) != expected:
        shown = f"more than {expected}" if len(body) > expected else str(len(body))
        raise PoisonbenchError(f"{path} is truncated or corrupt: {shown} data bytes, expected {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _check_idx_size(where: str, declared: int, on_disk: int, gz: bool) -> None:
    """Refuse (`Refused`, naming `where`), before its data are inflated or read, an IDX file whose header declares
    more than `MAX_IDX_BYTES`, a .gz declaring more than `MAX_IDX_INFLATION` × its own size (above
    `IDX_INFLATION_FLOOR`), or one whose loading would take more than the memory available."""
    from ..core import bounded

    what = f"its header declares {bounded.size_text(declared)} of data"
    if declared > bounded.MAX_IDX_BYTES:
        raise Refused(where, f"{what}, more than the limit of {bounded.size_text(bounded.MAX_IDX_BYTES)} for an IDX "
                      "file; refused uninflated")
    if gz and declared > bounded.IDX_INFLATION_FLOOR and declared > bounded.MAX_IDX_INFLATION * on_disk:
        raise Refused(where, f"{what} from {bounded.size_text(on_disk)} compressed, more than "
                      f"{bounded.MAX_IDX_INFLATION}× the file (a decompression bomb?); refused uninflated")
    bounded.check_memory(bounded.IDX_BYTES_PER_BYTE * declared, where, f"loading the {bounded.size_text(declared)} "
                         "its header declares")


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
