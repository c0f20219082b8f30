"""Pickles read as data only (the benchmark's submission, PB:how_to.md, and forest's): `ArraysOnlyUnpickler` admits
numpy's array machinery, torch tensors (their storage read back with `torch.load(weights_only=True)`) and PIL images
decoded as data (a stand-in keeps only mode, size and bytes); any other global a pickle asks for (`posix.system`,
`builtins.eval`, a class) is refused before it is called, in one line naming it."""

from __future__ import annotations

import _codecs
import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ...core import bounded
from ...core.bounded import check_size, open_regular
from ...core.bounded_pickle import read_pickle
from ...core.errors import PoisonbenchError
from ...core.io import torch_load_tensors
from ...core.provenance import version_tuple
from ...data.cifar_pickle import _ALLOWED as NUMPY_GLOBALS


class PickledImage:
    """A PIL image as its pickle describes it: `Image.__getstate__` gives [info, mode, size, palette, bytes] (an
    `ImageFile` appends its filename). Only mode, size and the raw bytes are kept; no PIL code runs."""

    mode: str = ""
    size: tuple = ()
    data: bytes = b""

    def __setstate__(self, state) -> None:
        if not (isinstance(state, (list, tuple)) and len(state) >= 5):
            raise pickle.UnpicklingError("a PIL image whose state is not [info, mode, size, palette, data]")
        _, mode, size, _, data = state[:5]
        self.mode, self.size = mode, tuple(size)
        self.data = data.encode("latin-1") if isinstance(data, str) else bytes(data)

    def array(self, what: str) -> np.ndarray:
        """uint8 H×W (mode L) or H×W×3 (mode RGB)."""
        channels = {"L": 1, "RGB": 3}.get(self.mode)
        if channels is None:
            raise PoisonbenchError(f"{what}: a PIL image of mode {self.mode!r}; L (grey) or RGB images expected")
        w, h = (int(v) for v in self.size)
        if len(self.data) != w * h * channels:
            raise PoisonbenchError(f"{what}: a {self.mode} image of size {w}×{h} holds {len(self.data)} bytes")
        arr = np.frombuffer(self.data, dtype=np.uint8).reshape(h, w, channels).copy()
        return arr[..., 0] if channels == 1 else arr


class _Object:
    """Stands in for `builtins.object`, the base class protocol-0/1 pickles name for `copyreg._reconstructor`."""


def _reconstructor(cls, base, state):
    """`copyreg._reconstructor` as protocol-0/1 pickles of a PIL image call it, and for nothing else."""
    if cls is not PickledImage or base is not _Object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor for something other than a PIL image")
    return PickledImage()


def _storage_from_bytes(data: bytes):
    """`torch.storage._load_from_bytes`: a tensor's storage in a plain pickle, itself read with weights_only."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("torch storage from something other than bytes")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2` on a storage, without hooks or gradients."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("a tensor rebuilt from something other than a torch storage")
    return torch._utils._rebuild_tensor_v2(storage, int(storage_offset), tuple(size), tuple(stride), False,
                                           OrderedDict())


def _empty_ordered_dict(*args):
    if args:
        raise pickle.UnpicklingError("collections.OrderedDict with arguments")
    return OrderedDict()


_ADMITTED = {
    **NUMPY_GLOBALS,  # numpy arrays, dtypes, scalars; _codecs.encode for latin-1 only (poisonbench.data.cifar_pickle)
    ("PIL.Image", "Image"): PickledImage,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,  # Python 2 names (protocols 0 and 1)
    ("builtins", "object"): _Object,
    ("__builtin__", "object"): _Object,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): _empty_ordered_dict,  # a tensor's (empty) backward hooks
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits arrays and numbers (containers, strings and numbers need no global), nothing that could run code."""

    def __init__(self, file, label: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles: numpy's raw bytes as the file holds them
        self.label = label

    def find_class(self, module: str, name: str):
        found = _ADMITTED.get((module, name))
        if found is None and module.startswith("PIL.") and re.fullmatch(r"\w*ImageFile", name):
            found = PickledImage  # an image opened from a file (PngImageFile, …): the same state plus its filename
        if found is None:
            raise PoisonbenchError(f"{self.label} holds '{module}.{name}', which is not an array or a number; refused")
        return found


def load_pickle(path: Path, label: str | None = None):
    """The object in the pickle at `path`, read by `ArraysOnlyUnpickler` through `core.bounded_pickle.read_pickle`:
    a regular file only (a FIFO is refused unread), `MAX_PICKLE_BYTES` at most, its opcodes checked (memo indices,
    declared lengths, memory per byte) before it is unpickled."""
    label = label or repr(str(path))
    if not os.path.exists(path):
        raise PoisonbenchError(f"{label} does not exist")
    if os.path.isdir(path):
        raise PoisonbenchError(f"{label} is a directory, not a pickle file")
    try:
        return read_pickle(path, bounded.MAX_PICKLE_BYTES, lambda f: ArraysOnlyUnpickler(f, label), label)
    except PoisonbenchError:
        raise
    except Exception as exc:
        raise PoisonbenchError(f"{label} is not a readable pickle ({type(exc).__name__})") from None


def _numpy_safe_globals() -> list:
    """What a `torch.save` file of forest's needs beyond tensors: numpy scalars (its `poison_setup` holds
    `np.random.choice` results), arrays and their dtype classes, under numpy 1's and numpy 2's module names."""
    admitted = [(f, f"{module}.{name}") for (module, name), f in NUMPY_GLOBALS.items() if module.startswith("numpy")]
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD"}
    return [*admitted, np.ndarray, np.dtype, *dtypes]


def torch_safe_globals(admitted: list):
    """`torch.serialization.safe_globals(admitted)` on the torch in use. Its (object, "module.name") entries, which
    admit an object under another module's name (numpy 1's `numpy.core` for numpy 2's `numpy._core`), are torch
    2.6's and the context manager torch 2.5's: on an older torch the objects are admitted under their own names
    alone (a file saved under the other numpy major's names is then refused, in one line), with `_codecs.encode`
    itself, which numpy scalars' pickles call and a newer torch admits by default, added to the process-wide list
    and taken out again afterwards."""
    if version_tuple(torch.__version__) < (2, 6):
        admitted = list(dict.fromkeys([*(a[0] if isinstance(a, tuple) else a for a in admitted), _codecs.encode]))
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped(admitted) if scoped is not None else _added_safe_globals(admitted)


@contextmanager
def _added_safe_globals(admitted: list):
    """torch 2.4's `add_safe_globals` for the duration of the block (what `safe_globals` does from 2.5 on)."""
    serialization = torch.serialization
    before = list(serialization.get_safe_globals())  # torch 2.4 hands out its own list, which add_ extends
    serialization.add_safe_globals(admitted)
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(before)


def load_torch_or_pickle(path: Path, label: str | None = None):
    """A `torch.save` file (zip, or the legacy format) read with `torch.load(weights_only=True)` (tensors, plain
    containers, numpy arrays and scalars), or a plain pickle read by `ArraysOnlyUnpickler`."""
    label = label or repr(str(path))
    path = Path(path)
    if not path.is_file():
        raise PoisonbenchError(f"{label} does not exist" if not path.exists() else f"{label} is not a file")
    with open_regular(path, label) as f:  # a FIFO or a device is refused unread, a file over the bound too
        check_size(f, bounded.MAX_PICKLE_BYTES, label)
    if not zipfile.is_zipfile(path):
        obj = load_pickle(path, label)
        if not (isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER):
            return obj  # a plain pickle; else the first record of torch's legacy format
    try:
        with torch_safe_globals(_numpy_safe_globals()):
            return torch_load_tensors(path)
    except Exception as exc:
        raise PoisonbenchError(f"{label} is not a torch file of tensors, lists, dicts and numbers "
                               f"({type(exc).__name__})") from None


