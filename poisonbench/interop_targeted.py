"""Targeted poisons made by other toolkits, in and out: `poisons import --format forest|toxic|npz` and `poisons
export --poison-set ID --format forest|toxic|npz` (reference/attacks.md §1.2, §1.3, §10.2, §12).

- **forest** (Witches' Brew's `forest`, with which the paper crafted GM, BP and FC, §1.1): stock `--save packed`
  writes `torch.save([poison_delta, poison_ids])` (`GM:forest/data/kettle.py` `export_poison`); HINT read a patched
  export, a pickle of `{poison_ids, poison_delta, poison_setup: {poison_class, target_class, intended_class: [c],
  …}, target_images: [(image, label, test index)]}` (`HINT:train_utils.py` `load_cifar10_targeted`). forest keeps δ
  in its normalised space, so δ_pixel = poison_delta · σ_forest per channel, with forest's own σ
  (`GM:forest/consts.py`: CIFAR-10 (0.2470, 0.2435, 0.2616), MNIST (0.3081,)), not HINT's (§1.2).
- **toxic** (the "Just How Toxic" benchmark's submission, §10.2): `poisons.pickle` (a list of (PIL image, label)),
  `base_indices.pickle` (the bases' train indices) and `target.pickle` ((PIL image, label)). The target's test
  index is not in them: it comes from `--setup FILE --setup-index i` or `--target I --intended C`.
- **npz**: `x` (uint8 poisoned images, K×H×W or K×H×W×C), `idx` (train indices), `target` (test index), `intended`.

Indices in a file are the source's (torchvision's train and test order for MNIST and CIFAR-10; an .npz dataset's
rows): they are mapped to our splits with `data.train.indices` / `data.test.indices`. A poisoned image that lies in
our val split is left out of the import and counted in the manifest, as `interop.import_hint_file` does (our
val split holds out 1,000 images that the source's train set has).

Pickles are read by `ArraysOnlyUnpickler`, which admits numpy's array machinery, torch tensors (their storage
read back with `torch.load(weights_only=True)`) and PIL images decoded as data (a stand-in keeps only mode, size
and bytes): any other global a pickle asks for (`posix.system`, `builtins.eval`, a class) is refused before it is
called, in one line naming it.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .attacks.base import PoisonSet, Target
from .data.cifar_pickle import _ALLOWED as NUMPY_GLOBALS
from .errors import PoisonbenchError
from .hashing import sha256_file
from .io import atomic_write_bytes, ensure_writable, file_in_the_way, torch_load_tensors, why_not_written
from .targets import SCENARIOS, check_index, check_intended, read_setups

FORMATS = ("forest", "toxic", "npz")
DEFAULT_LABEL = {"forest": "gm", "toxic": "bp", "npz": "imported"}  # the Table III column, when --attack is not given
TRANSFER_LABELS = ("bp", "fc")  # paper §VI-A2: BP and FC are evaluated in transfer learning, the others from scratch
TOXIC_FILES = ("poisons.pickle", "base_indices.pickle", "target.pickle")
PICKLE_SUFFIXES = (".pkl", ".pickle")  # a forest export with one of these is a plain pickle (HINT's `pickle.load`)
# forest's normalisation (GM:forest/consts.py), per dataset family
FOREST_MEAN = {"cifar10": (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
               "mnist": (0.13066373765468597,)}
FOREST_STD = {"cifar10": (0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
              "mnist": (0.30810782313346863,)}
BOX_TOLERANCE = 1e-4  # float noise of forest's box constraint in normalised space; clipped, larger is refused
TARGET_TOLERANCE = 1.0 / 255 + 1e-4  # a target image written through PIL (ToPILImage truncates) vs the test image


# ---------------------------------------------------------------------------------------------------- unpickling

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
    """The object in the pickle at `path`, read by `ArraysOnlyUnpickler`."""
    label = label or repr(str(path))
    try:
        with open(path, "rb") as f:
            return ArraysOnlyUnpickler(f, label).load()
    except PoisonbenchError:
        raise
    except FileNotFoundError:
        raise PoisonbenchError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise PoisonbenchError(f"{label} is a directory, not a pickle file") from None
    except Exception as exc:
        raise PoisonbenchError(f"{label} is not a readable pickle ({type(exc).__name__})") from None


def _numpy_safe_globals() -> list:
    """What a `torch.save` file of forest's needs beyond tensors: numpy scalars (its `poison_setup` holds
    `np.random.choice` results), arrays and their dtype classes, under numpy 1's and numpy 2's module names."""
    admitted = [(f, f"{module}.{name}") for (module, name), f in NUMPY_GLOBALS.items() if module.startswith("numpy")]
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD"}
    return [*admitted, np.ndarray, np.dtype, *dtypes]


def load_torch_or_pickle(path: Path, label: str | None = None):
    """A `torch.save` file (zip, or the legacy format) read with `torch.load(weights_only=True)` (tensors, plain
    containers, numpy arrays and scalars), or a plain pickle read by `ArraysOnlyUnpickler`."""
    label = label or repr(str(path))
    path = Path(path)
    if not path.is_file():
        raise PoisonbenchError(f"{label} does not exist" if not path.exists() else f"{label} is not a file")
    if not zipfile.is_zipfile(path):
        obj = load_pickle(path, label)
        if not (isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER):
            return obj  # a plain pickle; else the first record of torch's legacy format
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch_load_tensors(path)
    except Exception as exc:
        raise PoisonbenchError(f"{label} is not a torch file of tensors, lists, dicts and numbers "
                               f"({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------------------- conversions

def as_array(obj, what: str) -> np.ndarray:
    """A numeric numpy array from an array, a tensor, a decoded PIL image or a (nested) list of numbers."""
    if isinstance(obj, PickledImage):
        return obj.array(what)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, (np.ndarray, np.generic, list, tuple, int, float)) and not isinstance(obj, bool):
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError):
            arr = np.asarray(None)
        if arr.dtype.kind in "biuf":
            return arr
    raise PoisonbenchError(f"{what}: a {type(obj).__name__} where an array of numbers belongs")


def as_ints(obj, what: str) -> np.ndarray:
    """A 1-D int64 array (integral floats accepted, as a setup saved from Python floats)."""
    arr = as_array(obj, what).reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise PoisonbenchError(f"{what}: indices that are not integers")
    return arr.astype(np.int64)


def as_int(obj, what: str) -> int:
    """One integer from an int, a numpy scalar or a one-element array (Keras labels are shape (1,))."""
    arr = as_ints(obj, what)
    if len(arr) != 1:
        raise PoisonbenchError(f"{what}: {len(arr)} values where one integer belongs")
    return int(arr[0])


def images_nchw(arr: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """A stack of images (K×H×W, K×H×W×C or K×C×H×W) as K×C×H×W, checked against the dataset's image shape."""
    c, h, w = shape
    if arr.ndim == 3 and c == 1:
        arr = arr[:, None]
    elif arr.ndim == 4 and tuple(arr.shape[1:]) != shape and tuple(arr.shape[1:]) == (h, w, c):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
        raise PoisonbenchError(f"{what}: images of shape {tuple(arr.shape)} do not fit this dataset's {shape} "
                               "(K×H×W, K×H×W×C or K×C×H×W)")
    return np.ascontiguousarray(arr)


def uint8_images(arr: np.ndarray, shape, what: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise PoisonbenchError(f"{what}: images of dtype {arr.dtype}; uint8 images (PIL or numpy) expected")
    return images_nchw(arr, shape, what)


def lookup(split_indices: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position in a split of each source index in `ids` (the split's `indices` hold the source's), −1 where it
    is not in the split."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(split_indices) == 0 or len(ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(split_indices, kind="stable")
    pos = np.minimum(np.searchsorted(split_indices, ids, sorter=order), len(order) - 1)
    return np.where(split_indices[order[pos]] == ids, order[pos], -1).astype(np.int64)


def forest_constants(data, std: tuple[float, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """forest's (μ, σ) for the dataset's family as C×1×1 tensors; `std` replaces σ (a fork with other constants)."""
    mean, sigma = FOREST_MEAN[data.family], std or FOREST_STD[data.family]
    if len(sigma) != data.shape[0] or not all(s > 0 for s in sigma):
        raise PoisonbenchError(f"--forest-std {','.join(f'{s:g}' for s in sigma)}: {data.shape[0]} positive values "
                               f"expected (one per channel of {data.name})")
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(sigma, dtype=torch.float64).view(-1, 1, 1)


def parse_forest_std(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PoisonbenchError(f"--forest-std {text!r}: comma-separated numbers expected (σ per channel)") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise PoisonbenchError(f"--forest-std {text!r}: every σ must be a positive number")
    return values


# ---------------------------------------------------------------------------------------------------- reading

@dataclass
class Foreign:
    """What a file holds, before it is checked against the dataset. Indices are the source's."""

    label: str  # the file (or directory) for messages
    ids: np.ndarray  # K source train indices of the poisons' bases
    files: dict[str, str]  # file name → sha256
    images: np.ndarray | None = None  # uint8 K×C×H×W poisoned images (toxic, npz)
    delta: torch.Tensor | None = None  # float64 K×C×H×W pixel δ (forest)
    labels: np.ndarray | None = None  # the file's label of each poison
    target_index: int | None = None  # source test index of the target
    target_class: list[tuple[str, int]] = field(default_factory=list)  # (where, class) the file gives the target
    intended: int | None = None
    poison_class: int | None = None
    target_image: torch.Tensor | None = None  # float C×H×W in [0, 1]
    params: dict = field(default_factory=dict)  # format-specific parameters of the PoisonSet's identity


def read_forest(path: Path, data, std: tuple[float, ...] | None = None) -> Foreign:
    """forest's packed list or HINT's patched dict (module docstring); δ back to pixel units with forest's σ."""
    label = repr(str(path))
    obj = load_torch_or_pickle(path, label)
    setup, targets = None, None
    if isinstance(obj, (list, tuple)) and len(obj) == 2:
        delta, ids = obj
    elif isinstance(obj, dict) and "poison_delta" in obj and "poison_ids" in obj:
        delta, ids = obj["poison_delta"], obj["poison_ids"]
        setup, targets = obj.get("poison_setup"), obj.get("target_images")
    else:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise PoisonbenchError(f"{label} is neither forest's packed [poison_delta, poison_ids] nor HINT's dict "
                               f"{{poison_ids, poison_delta, poison_setup, target_images}}; found {found}")
    _, sigma = forest_constants(data, std)
    delta = torch.from_numpy(np.asarray(as_array(delta, f"{label}: poison_delta"), dtype=np.float64))
    if delta.ndim != 4 or tuple(delta.shape[1:]) != data.shape:
        raise PoisonbenchError(f"{label}: poison_delta of shape {tuple(delta.shape)} does not fit this dataset's "
                               f"images (K×{'×'.join(map(str, data.shape))})")
    if not torch.isfinite(delta).all():
        raise PoisonbenchError(f"{label}: poison_delta is not finite")
    ids = as_ints(ids, f"{label}: poison_ids")
    if len(ids) != len(delta):
        raise PoisonbenchError(f"{label}: {len(ids)} poison_ids for {len(delta)} rows of poison_delta")
    out = Foreign(label, ids, {Path(path).name: sha256_file(path)}, delta=delta * sigma,
                  params={"forest_std": [float(s) for s in sigma.flatten()]})
    if setup is not None:
        if not isinstance(setup, dict):
            raise PoisonbenchError(f"{label}: poison_setup is a {type(setup).__name__}, not a dict")
        intended = setup.get("intended_class")
        if intended is not None:
            intended = as_ints(intended, f"{label}: poison_setup intended_class")
            if len(intended) != 1:
                raise PoisonbenchError(f"{label}: poison_setup names {len(intended)} intended classes; one target "
                                       "per PoisonSet")
            out.intended = int(intended[0])
        if setup.get("poison_class") is not None:
            out.poison_class = as_int(setup["poison_class"], f"{label}: poison_setup poison_class")
        if setup.get("target_class") is not None:
            out.target_class.append((f"{label} (poison_setup target_class)",
                                     as_int(setup["target_class"], f"{label}: poison_setup target_class")))
    if targets is not None and not (isinstance(targets, (list, tuple)) and len(targets) == 0):
        if not isinstance(targets, (list, tuple)):
            raise PoisonbenchError(f"{label}: target_images is a {type(targets).__name__}, not a list")
        if len(targets) != 1:
            raise PoisonbenchError(f"{label}: target_images holds {len(targets)} targets; one target per PoisonSet")
        entry = targets[0]
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise PoisonbenchError(f"{label}: target_images[0] is not (image, label, index)")
        image, tlabel, tindex = entry
        out.target_index = as_int(tindex, f"{label}: target_images index")
        out.target_class.append((f"{label} (target_images label)", as_int(tlabel, f"{label}: target_images label")))
        if image is not None:
            image = torch.from_numpy(np.asarray(as_array(image, f"{label}: target image"), dtype=np.float64))
            if tuple(image.shape) == data.shape:  # normalised with forest's own constants, whatever --forest-std says
                fmean, fstd = forest_constants(data)
                out.target_image = image * fstd + fmean.double()
    return out


def toxic_paths(paths: list[Path]) -> dict[str, Path]:
    """The three files of a submission: a directory holding them, or the three files (by name, else in the order
    poisons, base_indices, target)."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return {name: Path(paths[0]) / name for name in TOXIC_FILES}
    if len(paths) != 3:
        raise PoisonbenchError(f"--format toxic reads a directory holding {', '.join(TOXIC_FILES)}, or those three "
                               f"files; got {len(paths)} path(s)")
    named = {Path(p).name: Path(p) for p in paths}
    if set(named) == set(TOXIC_FILES):
        return named
    return dict(zip(TOXIC_FILES, map(Path, paths), strict=True))


def read_toxic(paths: list[Path], data) -> Foreign:
    """The benchmark's three pickles (reference §10.2), PIL images decoded as data (numpy arrays accepted too)."""
    files = toxic_paths(paths)
    label = repr(str(paths[0])) if len(paths) == 1 else repr(str(files["poisons.pickle"]))
    objs = {name: load_pickle(p, repr(str(p))) for name, p in files.items()}
    poisons_, bases, target = objs["poisons.pickle"], objs["base_indices.pickle"], objs["target.pickle"]
    where = repr(str(files["poisons.pickle"]))
    if not isinstance(poisons_, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) >= 2
                                                          for p in poisons_):
        raise PoisonbenchError(f"{where} is not a list of (image, label) pairs")
    if not poisons_:
        raise PoisonbenchError(f"{where} holds no poisons")
    arrays = [as_array(p[0], f"{where}: poison {k}") for k, p in enumerate(poisons_)]
    if len({a.shape for a in arrays}) != 1:
        raise PoisonbenchError(f"{where}: poisons of different shapes {sorted({a.shape for a in arrays})}")
    images = uint8_images(np.stack(arrays), data.shape, where)
    labels = np.array([as_int(p[1], f"{where}: label of poison {k}") for k, p in enumerate(poisons_)])
    ids = as_ints(bases, repr(str(files["base_indices.pickle"])))
    if len(ids) != len(images):
        raise PoisonbenchError(f"{str(files['base_indices.pickle'])!r}: {len(ids)} base indices for {len(images)} "
                               "poisons")
    where = repr(str(files["target.pickle"]))
    if not isinstance(target, (list, tuple)):
        target = (target,)  # the benchmark's first example submission pickles the image alone
    if not 1 <= len(target) <= 2:
        raise PoisonbenchError(f"{where} holds {len(target)} items, not (image, label); a backdoor trigger (patch, "
                               "location)? only triggerless poisons can be imported")
    timage = uint8_images(as_array(target[0], f"{where}: image")[None], data.shape, where)[0]
    declared = [(f"{where} (its label)", as_int(target[1], f"{where}: label"))] if len(target) == 2 else []
    shas = {name: sha256_file(p) for name, p in files.items()}
    return Foreign(label, ids, shas, images=images, labels=labels, target_class=declared,
                   target_image=torch.from_numpy(timage).double() / 255)


def read_npz_poisons(path: Path, data) -> Foreign:
    """`x` uint8 poisoned images, `idx` source train indices, `target` source test index, `intended` class."""
    label = repr(str(path))
    path = Path(path)
    if not path.is_file():
        raise PoisonbenchError(f"{label} does not exist" if not path.exists() else f"{label} is not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise PoisonbenchError(f"{label} holds an object array (a pickle), which is not an array of numbers; "
                                   "refused") from None
        raise PoisonbenchError(f"{label} is not a readable .npz ({type(exc).__name__})") from None
    except Exception as exc:
        raise PoisonbenchError(f"{label} is not a readable .npz ({type(exc).__name__})") from None
    missing = [k for k in ("x", "idx", "target", "intended") if k not in arrays]
    if missing:
        raise PoisonbenchError(f"{label} lacks {', '.join(missing)} (an .npz of poisons holds x, idx, target, "
                               f"intended; found {', '.join(sorted(arrays)) or 'nothing'})")
    images = uint8_images(arrays["x"], data.shape, f"{label}: x")
    ids = as_ints(arrays["idx"], f"{label}: idx")
    if len(ids) != len(images):
        raise PoisonbenchError(f"{label}: {len(ids)} indices in idx for {len(images)} images in x")
    return Foreign(label, ids, {path.name: sha256_file(path)}, images=images,
                   target_index=as_int(arrays["target"], f"{label}: target"),
                   intended=as_int(arrays["intended"], f"{label}: intended"))


def read_foreign(fmt: str, paths: list[Path], data, forest_std=None) -> Foreign:
    check_format(fmt)
    if fmt != "toxic" and len(paths) != 1:
        raise PoisonbenchError(f"--format {fmt} reads one file; got {len(paths)} paths")
    if fmt == "forest":
        return read_forest(paths[0], data, forest_std)
    if fmt == "toxic":
        return read_toxic(paths, data)
    return read_npz_poisons(paths[0], data)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise PoisonbenchError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")


def sniff_format(paths: list[Path], targeted_options: bool) -> str:
    """`poisons import` without `--format`: a directory or three files → toxic, an .npz → npz, a .pkl / .pickle
    pickle (HINT's patched forest export) or a torch file holding `poison_delta` → forest; any other file → hint
    (HINT's untargeted file, as before), or forest when a target is named on the command line."""
    paths = [Path(p) for p in paths]
    if len(paths) == 3 or (len(paths) == 1 and paths[0].is_dir()):
        return "toxic"
    if len(paths) == 1 and paths[0].suffix == ".npz":
        return "npz"
    if len(paths) == 1 and paths[0].is_file():
        if zipfile.is_zipfile(paths[0]) and _torch_pickle_mentions(paths[0], b"poison_delta"):
            return "forest"  # forest's keys in a torch.save file (its pickle is read as bytes, not unpickled)
        try:
            with open(paths[0], "rb") as f:
                head = f.read(64)
        except OSError:
            head = b""
        legacy_torch = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19" in head  # torch's legacy files open with MAGIC_NUMBER
        if head[:1] == b"\x80" and not legacy_torch and paths[0].suffix in PICKLE_SUFFIXES:
            return "forest"
    return "forest" if targeted_options else "hint"


def _torch_pickle_mentions(path: Path, key: bytes) -> bool:
    """Whether the pickle inside a torch.save zip (`<archive>/data.pkl`, tensors live in other members) holds
    `key`: cheap, whatever the size of the tensors."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return name is not None and key in z.read(name)
    except (OSError, zipfile.BadZipFile):
        return False


# ---------------------------------------------------------------------------------------------------- the target

@dataclass
class Named:
    """The target named on the command line: `--target I --intended C` (I: a position in our test split) or
    `--setup FILE --setup-index i` (the benchmark's schema; source indices)."""

    index: int | None = None
    intended: int | None = None
    setup: str | None = None
    setup_index: int = 0


def _test_position(data, source_index: int, what: str) -> int:
    pos = int(lookup(data.test.indices, np.array([source_index]))[0])
    if pos < 0:
        raise PoisonbenchError(f"{what}: test image {source_index} is not in {data.name}'s test split "
                               f"({len(data.test)} images)")
    return pos


def resolve_target(data, foreign: Foreign, named: Named) -> tuple[int, int, int, dict, np.ndarray | None]:
    """(test position, true class, intended class, where they came from, the setup's base indices or None). The
    file's own target wins; what the command line names must agree with it."""
    given_index, given_intended, bases, how = named.index, named.intended, None, {}
    what = "--target"
    if named.setup is not None:
        setups = read_setups(named.setup)
        if not 0 <= named.setup_index < len(setups):
            raise PoisonbenchError(f"--setup-index {named.setup_index} is outside the setup file's [0, {len(setups)})")
        s, what = setups[named.setup_index], f"setup {named.setup_index} of {Path(named.setup).name}"
        try:
            source, tclass = int(s["target_index"]), int(s["target_class"])
            given_intended, bases = int(s["base_class"]), np.array([int(b) for b in s["base_indices"]], np.int64)
        except (KeyError, TypeError, ValueError):
            raise PoisonbenchError(f"{what} lacks integer target_index, target_class, base_class or base_indices") \
                from None
        given_index = _test_position(data, source, what)
        foreign.target_class.append((what, tclass))
        how = {"setup": {"file": str(named.setup), "index": named.setup_index}}
    elif given_index is not None:
        check_index(data, given_index)
        how = {"options": {"target": given_index, "intended": given_intended}}
    file_index = None
    if foreign.target_index is not None:
        file_index = _test_position(data, foreign.target_index, f"{foreign.label}'s target")
    index = file_index if file_index is not None else given_index
    intended = foreign.intended if foreign.intended is not None else given_intended
    if index is None or intended is None:
        raise PoisonbenchError(f"{foreign.label} does not name its target: give --target I --intended C (I a test "
                               "split index), or --setup FILE --setup-index i")
    if given_index is not None and file_index is not None and given_index != file_index:
        raise PoisonbenchError(f"{foreign.label} names test image {foreign.target_index} as its target, but {what} "
                               f"names test image {int(data.test.indices[given_index])}")
    if given_intended is not None and foreign.intended is not None and given_intended != foreign.intended:
        raise PoisonbenchError(f"{foreign.label} names intended class {foreign.intended}, but {what} names "
                               f"{given_intended}")
    true_class = check_index(data, index)
    for where, c in foreign.target_class:
        if c != true_class:
            raise PoisonbenchError(f"{where}: the target, test image {int(data.test.indices[index])}, is of class "
                                   f"{true_class}, not {c}")
    check_intended(data, intended, true_class)
    if foreign.poison_class is not None and foreign.poison_class != intended:
        raise PoisonbenchError(f"{foreign.label}: poisons drawn from class {foreign.poison_class}, not the intended "
                               f"class {intended} (a clean-label PoisonSet's bases are of the intended class)")
    if foreign.target_image is not None:
        clean = data.test.x[index].double() / 255
        gap = float((foreign.target_image - clean).abs().max())
        if gap > TARGET_TOLERANCE:
            raise PoisonbenchError(f"{foreign.label}: its target image is not test image "
                                   f"{int(data.test.indices[index])} of {data.name} (they differ by up to "
                                   f"{gap * 255:.1f}/255)")
    how["target_from"] = "file" if file_index is not None else ("setup" if named.setup else "options")
    return index, true_class, intended, how, bases


# ---------------------------------------------------------------------------------------------------- import

def check_label(label: str) -> str:
    """A Table III column label: gm, bp, fc, mp or any other short name; not an untargeted attack's."""
    from .attacks import ATTACKS

    name = str(label).lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,31}", name):
        raise PoisonbenchError(f"--attack {label!r}: a short name (letters, digits, '-', '_', '.') labelling the "
                               "Table III column, e.g. gm, bp, fc, mp")
    if name in ATTACKS and not ATTACKS.get(name).targeted:
        raise PoisonbenchError(f"--attack {label!r} is an untargeted attack; imported targeted poisons take a Table "
                               "III column label (gm, bp, fc, mp, or another name)")
    return name


def victim_for(label: str, victim: str | None) -> str:
    if victim is None:
        return "transfer" if label in TRANSFER_LABELS else "scratch"
    if victim not in SCENARIOS:
        raise PoisonbenchError(f"unknown --victim {victim!r}; valid choices: {', '.join(SCENARIOS)}")
    return victim


def _combined_sha(files: dict[str, str]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(f"{n}:{s}\n" for n, s in sorted(files.items())).encode()).hexdigest()


def import_targeted(fmt: str, paths, data, results_root=None, label: str | None = None, victim: str | None = None,
                    named: Named | None = None, forest_std: tuple[float, ...] | None = None,
                    force: bool = False) -> tuple[PoisonSet, bool]:
    """A targeted PoisonSet of `data` from another toolkit's poisons (module docstring). Checks before anything is
    written: the target, clean labels (the file's labels are the bases' and the intended class's; every base is of
    the intended class), distinct rows, x + δ in [0, 1]. Returns (set, cached)."""
    from . import poisons

    check_format(fmt)
    label = check_label(label if label is not None else DEFAULT_LABEL[fmt])
    victim = victim_for(label, victim)
    paths = [Path(p) for p in paths]
    foreign = read_foreign(fmt, paths, data, forest_std)
    index, true_class, intended, how, setup_bases = resolve_target(data, foreign, named or Named())
    ids, where = foreign.ids, foreign.label
    if setup_bases is not None and set(ids.tolist()) != set(setup_bases.tolist()):
        differ = len(set(ids.tolist()) ^ set(setup_bases.tolist()))
        raise PoisonbenchError(f"{where}: its base indices are not those of setup {named.setup_index} "
                               f"({differ} differ)")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise PoisonbenchError(f"{where}: base image {int(uniq[counts > 1][0])} is poisoned twice (rows must be "
                               "distinct)")
    train_pos, val_pos = lookup(data.train.indices, ids), lookup(data.val.indices, ids)
    outside = (train_pos < 0) & (val_pos < 0)
    if outside.any():
        size = len(data.train) + len(data.val)
        raise PoisonbenchError(f"{where}: base index {int(ids[outside][0])} is not an image of {data.name}'s train "
                               f"set ({size} images: our train and val splits)")
    base_y = np.where(train_pos >= 0, data.train.y.numpy()[np.maximum(train_pos, 0)],
                      data.val.y.numpy()[np.maximum(val_pos, 0)])
    if foreign.labels is not None and (foreign.labels != base_y).any():
        k = int(np.flatnonzero(foreign.labels != base_y)[0])
        raise PoisonbenchError(f"{where}: poison {k} is labelled {int(foreign.labels[k])}, but its base image "
                               f"{int(ids[k])} is of class {int(base_y[k])} (poisons keep their base's label)")
    if (base_y != intended).any():
        k = int(np.flatnonzero(base_y != intended)[0])
        raise PoisonbenchError(f"{where}: base image {int(ids[k])} is of class {int(base_y[k])}, not the intended "
                               f"class {intended}")
    keep = np.flatnonzero(train_pos >= 0)
    if len(keep) == 0:
        raise PoisonbenchError(f"{where}: none of its {len(ids)} poisons is in {data.name}'s train split (all in "
                               "our val split)")
    keep = keep[np.argsort(train_pos[keep])]
    rows = torch.from_numpy(train_pos[keep])
    clean = data.train.x[rows].double() / 255
    if foreign.images is not None:
        delta = torch.from_numpy(foreign.images[keep]).double() / 255 - clean
    else:
        delta = foreign.delta[torch.from_numpy(keep)]
        over = float(torch.maximum((clean + delta) - 1, -(clean + delta)).max())
        if over > BOX_TOLERANCE:
            raise PoisonbenchError(f"{where}: x + δ leaves [0, 1] by up to {over:.4g} (is δ in forest's normalised "
                                   "units? a fork with other constants: --forest-std)")
        delta = (clean + delta).clamp(0, 1) - clean
    delta = delta.float()
    linf = float(delta.abs().max())
    if linf == 0:
        raise PoisonbenchError(f"{where}: the poisons equal their clean base images (no perturbation)")
    if linf > 0.5:
        raise PoisonbenchError(f"{where}: ‖δ‖∞ = {linf:.3f} against {data.name}'s images; not perturbations of "
                               "this dataset's images")
    n = len(data.train)
    target = Target(index, true_class, intended, tuple(int(r) for r in rows))
    sha = _combined_sha(foreign.files)
    params = {"format": fmt, "file_sha256": sha, "scenario": victim, **foreign.params}
    spec = poisons.CraftSpec(label, params, math.ceil(linf * 1e6) / 1e6, len(rows) / n, 0, data.name,
                             data.fingerprint, None, target.to_dict())
    if poisons.exists(results_root, spec.poison_id) and not force:
        return poisons.load(results_root, spec.poison_id, data), True
    ensure_writable(poisons.poison_dir(results_root, spec.poison_id).parent, "PoisonSets")
    imported = {"format": fmt, "file": paths[0].name, "files": foreign.files, "label": label, "scenario": victim,
                "poisons_in_file": len(ids), "in_train_split": len(rows),
                "left_out_in_val_split": int((train_pos < 0).sum()),
                "target": {"index": index, "source_index": int(data.test.indices[index]), "true_class": true_class,
                           "intended_class": intended},
                **how, **foreign.params}
    poison = PoisonSet(delta=delta.contiguous(), indices=rows.clone())
    poisons.save(poison, spec, results_root, {"imported_from": imported,
                                              "labels_sha256": poisons.labels_hash(rows, data.train.y)},
                 replace=force)
    return poison, False


# ---------------------------------------------------------------------------------------------------- export

def check_export_out(fmt: str, out) -> Path:
    """`--out`: a file for forest and npz, a directory (created) for toxic; checked before anything is read."""
    from .interop import check_export_path

    check_format(fmt)
    out = Path(out)
    if fmt != "toxic":
        return check_export_path(out)
    if out.exists() and not out.is_dir():
        raise PoisonbenchError(f"--out {str(out)!r} is a file; --format toxic writes a directory of "
                               f"{', '.join(TOXIC_FILES)}")
    blocking = file_in_the_way(out)
    if blocking is not None:
        raise PoisonbenchError(f"--out {str(out)!r}: {str(blocking)!r} is a file, not a directory")
    return out


def _pil_or_array(image: np.ndarray):
    """A PIL image (the benchmark's loader expects them) when PIL is installed, else the uint8 array."""
    try:
        from PIL import Image
    except ImportError:
        return image
    return Image.fromarray(image)


def export_targeted(results_root, poison_id: str, data, fmt: str, out) -> dict:
    """Write a targeted PoisonSet (ours or imported) in `fmt` at `out`, atomically per file; returns a summary."""
    from . import poisons

    out = check_export_out(fmt, out)
    spec, _ = poisons.spec_of(results_root, poison_id, data)
    if spec.target is None:
        raise PoisonbenchError(f"poison set {poison_id} is untargeted; --format {fmt} writes a targeted one (an "
                               "untargeted mix: --poison-ratio)")
    poison = poisons.load(results_root, poison_id, data)
    target = Target.from_dict(spec.target)
    order = torch.argsort(poison.indices)
    rows, delta = poison.indices[order], poison.delta[order].double()
    clean = data.train.x[rows].double() / 255
    ids = torch.from_numpy(np.asarray(data.train.indices)[rows.numpy()].astype(np.int64))
    source_target = int(data.test.indices[target.index])
    poisoned = ((clean + delta).clamp(0, 1) * 255).round().to(torch.uint8)  # K×C×H×W
    hwc = poisoned.permute(0, 2, 3, 1).numpy()
    if data.shape[0] == 1:
        hwc = hwc[..., 0]
    blobs: dict[Path, bytes] = {}
    if fmt == "forest":
        mean, sigma = forest_constants(data)
        image = (data.test.x[target.index].double() / 255 - mean.double()) / sigma
        obj = {"poison_setup": {"poison_budget": spec.budget, "target_num": 1, "poison_class": target.intended_class,
                                "target_class": target.true_class, "intended_class": [target.intended_class]},
               "poison_delta": (delta / sigma).float().contiguous(), "poison_ids": ids,
               "target_images": [(image.float(), target.true_class, source_target)]}
        if out.suffix in PICKLE_SUFFIXES:
            blobs[out] = pickle.dumps(obj, protocol=4)
        else:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            blobs[out] = buffer.getvalue()
    elif fmt == "toxic":
        tclean = data.test.x[target.index].permute(1, 2, 0).numpy()
        timage = tclean[..., 0] if data.shape[0] == 1 else tclean
        blobs[out / "poisons.pickle"] = pickle.dumps(
            [(_pil_or_array(np.ascontiguousarray(im)), target.intended_class) for im in hwc], protocol=4)
        blobs[out / "base_indices.pickle"] = pickle.dumps([int(i) for i in ids], protocol=4)
        blobs[out / "target.pickle"] = pickle.dumps((_pil_or_array(np.ascontiguousarray(timage)), target.true_class),
                                                    protocol=4)
    else:
        buffer = io.BytesIO()
        np.savez(buffer, x=np.ascontiguousarray(hwc), idx=ids.numpy(), target=np.int64(source_target),
                 intended=np.int64(target.intended_class))
        blobs[out] = buffer.getvalue()
    try:
        for path, blob in blobs.items():
            atomic_write_bytes(path, blob)
    except OSError as e:
        raise PoisonbenchError(f"cannot write {str(out)!r}: {why_not_written(e, out)}") from None
    return {"path": str(out), "format": fmt, "poison_id": poison_id, "attack": spec.attack, "poisons": len(rows),
            "target": {"index": target.index, "source_index": source_target, "true_class": target.true_class,
                       "intended_class": target.intended_class},
            "scenario": spec.params.get("scenario", "scratch") if isinstance(spec.params, dict) else "scratch",
            "files": [str(p) for p in blobs]}
