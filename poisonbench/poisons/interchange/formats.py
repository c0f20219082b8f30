"""Reading the targeted formats of other toolkits (forest, the Toxic benchmark, `.npz`) into arrays of our splits;
see `poisonbench.poisons.interchange`."""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...core.errors import PoisonbenchError
from ...core.hashing import sha256_file
from ...data.catalog import FOREST_MEAN, FOREST_STD  # forest's normalisation (GM:forest/consts.py), per family
from .unpickle import PickledImage, load_pickle, load_torch_or_pickle

FORMATS = ("forest", "toxic", "npz")
BACKDOOR_FORMATS = ("backdoorbench",)  # backdoor PoisonSets (interchange/backdoorbench.py): indicator + trigger
DEFAULT_LABEL = {"forest": "gm", "toxic": "bp", "npz": "imported"}  # the Table III column, when --attack is not given
TRANSFER_LABELS = ("bp", "fc")  # paper §VI-A2: BP and FC are evaluated in transfer learning, the others from scratch
TOXIC_FILES = ("poisons.pickle", "base_indices.pickle", "target.pickle")
# a torch.save file's `data.pkl` (its tensors live in other members): forest's is a few kB; only its first 16 MB are
# inflated to look for forest's keys
MAX_TORCH_PICKLE_BYTES = 16_000_000
PICKLE_SUFFIXES = (".pkl", ".pickle")  # a forest export with one of these is a plain pickle (HINT's `pickle.load`)
BOX_TOLERANCE = 1e-4  # float noise of forest's box constraint in normalised space; clipped, larger is refused
TARGET_TOLERANCE = 1.0 / 255 + 1e-4  # a target image written through PIL (ToPILImage truncates) vs the test image




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
    """The benchmark's three pickles (PB:how_to.md), PIL images decoded as data (numpy arrays accepted too)."""
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
    """`x` uint8 poisoned images, `idx` source train indices, `target` source test index, `intended` class.

    Read through `NpzReader`: the declared shapes and dtypes are checked against the dataset (images of its shape,
    at most as many as its train pool has rows, one index per image, one target and one class) before anything is
    inflated, so a small file that declares a huge array is refused without filling the memory."""
    from ...data.npz import NpzReader

    label = repr(str(path))
    path = Path(path)
    if not path.is_file():
        raise PoisonbenchError(f"{label} does not exist" if not path.exists() else f"{label} is not a file")
    with NpzReader(path, label) as npz:
        npz.require("x", "idx", "target", "intended", holds="an .npz of poisons holds x, idx, target, intended")
        headers = npz.headers
        check_npz_poison_headers(headers, data, label)
        arrays = {k: npz.array(k) for k in ("x", "idx", "target", "intended")}
    images = uint8_images(arrays["x"], data.shape, f"{label}: x")
    ids = as_ints(arrays["idx"], f"{label}: idx")
    if len(ids) != len(images):
        raise PoisonbenchError(f"{label}: {len(ids)} indices in idx for {len(images)} images in x")
    return Foreign(label, ids, {path.name: sha256_file(path)}, images=images,
                   target_index=as_int(arrays["target"], f"{label}: target"),
                   intended=as_int(arrays["intended"], f"{label}: intended"))


def check_npz_poison_headers(headers: dict, data, label: str) -> None:
    """What `read_npz_poisons` can tell from the `.npy` headers alone (the same rules as its checks of the arrays):
    `x` uint8 images of the dataset's shape (K×H×W, K×H×W×C or K×C×H×W), K at most the rows of the train pool (our
    train and val splits: every poison is a distinct one of them), `idx` K numbers, `target` and `intended` one
    number each."""
    x = headers["x"]
    if x.dtype != np.uint8:
        raise PoisonbenchError(f"{label}: x: images of dtype {x.dtype}; uint8 images (PIL or numpy) expected")
    c, h, w = data.shape
    fits = ((x.ndim == 3 and c == 1 and x.shape[1:] == (h, w))
            or (x.ndim == 4 and x.shape[1:] in ((c, h, w), (h, w, c))))
    if not fits:
        raise PoisonbenchError(f"{label}: x: images of shape {x.shape} do not fit this dataset's {data.shape} "
                               "(K×H×W, K×H×W×C or K×C×H×W)")
    pool = len(data.train) + len(data.val)
    if x.shape[0] > pool:
        raise PoisonbenchError(f"{label}: x holds {x.shape[0]} images, more than the {pool} images of "
                               f"{data.name}'s train set (each poison is a distinct one of them)")
    for name, size in (("idx", x.shape[0]), ("target", 1), ("intended", 1)):
        h_ = headers[name]
        if h_.dtype.kind not in "biuf":
            raise PoisonbenchError(f"{label}: {name}: a {h_.dtype} array where an array of numbers belongs")
        count = math.prod(h_.shape)
        if count != size:
            what = f"{size} indices (one per image in x)" if name == "idx" else "one integer"
            raise PoisonbenchError(f"{label}: {name} holds {count} values where {what} belong")


def read_foreign(fmt: str, paths: list[Path], data, forest_std=None) -> Foreign:
    check_format(fmt)
    if fmt != "toxic" and len(paths) != 1:
        raise PoisonbenchError(f"--format {fmt} reads one file; got {len(paths)} paths")
    if fmt == "forest":
        return read_forest(paths[0], data, forest_std)
    if fmt == "toxic":
        return read_toxic(paths, data)
    return read_npz_poisons(paths[0], data)


# BackdoorBench's files (backdoorbench.py reads them): a poison indicator in a directory, in this order; an index
# list; its whole record
INDICATOR_NAMES = ("poison_indicator.npy", "train_poison_index_list.pickle")
INDEX_NAMES = ("poison_index.npy",)
RECORD_NAME = "attack_result.pt"


def looks_like_backdoorbench(paths) -> bool:
    """`poisons import` without `--format`: a directory holding an indicator or BB's record."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        return any((paths[0] / n).is_file() for n in (*INDICATOR_NAMES, *INDEX_NAMES, RECORD_NAME))
    return any(p.name.startswith("train_poison_index_list") or "indicator" in p.name.lower() for p in paths)


def combined_sha(files: dict[str, str]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(f"{n}:{s}\n" for n, s in sorted(files.items())).encode()).hexdigest()


def check_output_directory(out, files: tuple[str, ...], fmt: str, force: bool = False, inputs=()) -> Path:
    """`--out` of an export that writes a directory of `files` (toxic's, backdoorbench's): a directory (created
    later), no file in the way on its path, none of `files` replaced without `force` or read by this command."""
    from ...core.io import check_output, file_in_the_way

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PoisonbenchError(f"--out {str(out)!r} is a file; --format {fmt} writes a directory of "
                               f"{', '.join(files)}")
    blocking = file_in_the_way(out)
    if blocking is not None:
        raise PoisonbenchError(f"--out {str(out)!r}: {str(blocking)!r} is a file, not a directory")
    for name in files:
        check_output(out / name, force, inputs, label="--out ")
    return out


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise PoisonbenchError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")


def sniff_format(paths: list[Path], targeted_options: bool) -> str:
    """`poisons import` without `--format`: a directory holding a poison indicator → backdoorbench, a directory
    or three files → toxic, an .npz → npz, a .pkl / .pickle
    pickle (HINT's patched forest export) or a torch file holding `poison_delta` → forest; any other file → hint
    (HINT's untargeted file, as before), or forest when a target is named on the command line."""
    paths = [Path(p) for p in paths]
    if looks_like_backdoorbench(paths):
        return "backdoorbench"  # a directory holding a poison indicator (BackdoorBench's record, or our export)
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
            if name is None:
                return False
            with z.open(name) as member:  # inflated up to its bound, never past it (a zip bomb)
                return key in member.read(MAX_TORCH_PICKLE_BYTES)
    except (OSError, zipfile.BadZipFile):
        return False


