"""Backdoor PoisonSets in and out in BackdoorBench's form (issue 85): `poisons import --format backdoorbench` and
`poisons export --poison-set ID --format backdoorbench` (docs/commands.md, "Backdoors made elsewhere").

What BackdoorBench (BB, `SCLBD/BackdoorBench` v2.2) writes per attack run, under `record/<name>/`:

- `train_poison_index_list.pickle`: `torch.save` of the train set's *poison indicator*, a float 0/1 numpy array
  with one entry per train image in torchvision's order (BB `attack/badnet.py`, `utils/backdoor_generate_poison_
  index.py`: ⌊pratio·n⌉ rows drawn from every class, all-to-one; from the target class only for the clean-label
  attacks, SIG and LC). Read with `torch.load(weights_only=True)` and numpy's array machinery admitted.
- `info.pickle`: `torch.save(args.__dict__)`, the run's arguments: `attack` (badnet, blended, sig, …),
  `attack_target`, `attack_label_trans` (all2one), `pratio`, `patch_mask_path` / `attack_trigger_img_path` and
  `attack_train_blended_alpha` (BB `config/attack/<name>/default.yaml`). Read the same way; a `.json` of the same
  keys (what the export writes, `info.json`) is read too.
- `attack_result.pt`: `torch.save` of the model's state dict and `bd_train` / `bd_test`, each the dataset's state
  (`utils/save_load_attack.py`, `utils/bd_dataset_v2.py`): `poison_indicator` and `original_index_array` (numpy),
  and `bd_data_container.data_dict`, {train index: (PIL image, backdoor label, original label)}, or, as every
  attack script runs it (`save_folder_path` set), {train index: {path of a PNG under `bd_train_dataset/<label>/`,
  other_info [backdoor label, original label]}}. Read with `weights_only=True` (numpy admitted): its
  `bd_train.poison_indicator` is used, and the backdoor labels are checked against the label mode. A file that
  holds PIL images itself needs a full unpickler and is refused in one line; the poisoned PNGs are not read (the
  trigger makes the same images, up to BB's uint8 rounding).
- The trigger is not in the record: BadNets' is `resource/badnet/trigger_image.png` (a 32×32 RGB image, zero
  except a 3×3 white square at rows/cols 29-31; pixels where it is non-zero replace the image's, per channel: BB
  `utils/bd_img_transform/patch.py` `AddMaskPatchTrigger`), Blend's `resource/blended/hello_kitty.jpeg` mixed as
  (1 − α)·x + α·t (`utils/bd_img_transform/blended.py`). BB resizes them to the dataset's size; here the trigger
  must already have it (`--trigger FILE`, a PNG/JPEG or an `.npy` on the 0-255 scale, H×W×C, H×W or C×H×W).

The import reads one directory (a BB record or an export of ours) or its files, and makes a backdoor PoisonSet
(format 2: rows, labels for dirty label, the trigger as T(x) = clamp((1 − m)·x + a, 0, 1)) that `defend
--poison-set` trains on and whose ASR it measures with the same trigger (docs/metrics.md). Trigger kinds:

- patch (BB badnet): m = 1 and a = t/255 where t > 0, m = a = 0 elsewhere;
- blend (BB blended; `--alpha`, or the info's `attack_train_blended_alpha`): m = α, a = α·t/255;
- additive (BB's `SimpleAdditiveTrigger`, and what SIG is): m = 0, a = t/255, t signed (an `.npy` only); BB's sig
  record without a trigger file: its signal from `sig_delta`, `sig_f` (attacks.backdoor.SIG, the same formula).

The export writes a directory: `poison_indicator.npy` (float64 0/1 over the source train set, BB's array),
`trigger.npy` (float64 H×W×C on the 0-255 scale: exact), `trigger.png` (uint8, BB's file form; not for an additive
trigger) and `info.json` (BB's argument names). Export then import gives the same rows, labels, trigger and ASR.
LC (a PGD perturbation under its trigger) and Sleeper Agent (a patch placed at random per image) have no such form
and are refused in one line.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...core import bounded
from ...core.bounded import Refused, check_size, open_regular
from ...core.errors import PoisonbenchError
from ...core.hashing import sha256_file
from ...data.splits import split_positions
from .formats import (
    INDEX_NAMES,
    INDICATOR_NAMES,
    RECORD_NAME,
    as_array,
    as_ints,
    check_output_directory,
    combined_sha,
)

FORMAT = "backdoorbench"
KINDS = ("patch", "blend", "additive")
LABEL_MODES = ("dirty", "clean")
TRIGGER_NAMES = ("trigger.npy", "trigger.png")  # ours first: trigger.npy is exact, the PNG rounded
INFO_NAMES = ("info.json", "info.pickle")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_TRIGGER_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
BB_ATTACKS = {"badnet": "badnets", "blended": "blend", "sig": "sig"}  # BB's names → ours (the default label)
OUR_TO_BB = {v: k for k, v in BB_ATTACKS.items()}
CLEAN_LABEL_BB = ("sig", "lc")  # BB's clean-label attacks (their scripts pass clean_label=True)
KIND_OF_BB = {"badnet": "patch", "blended": "blend", "sig": "additive"}


@dataclass
class BackdoorOptions:
    """What the command line says (`--trigger`, `--alpha`, `--target-class`, `--label-mode`); each must agree with
    what the files say, and fills in what they do not."""

    trigger: str | None = None
    alpha: float | None = None
    target_class: int | None = None
    label_mode: str | None = None


@dataclass
class Files:
    indicator: Path | None = None  # a 0/1 array over the source train set
    index: Path | None = None  # a list of source train indices
    record: Path | None = None  # BB's attack_result.pt
    trigger: Path | None = None
    info: Path | None = None
    shas: dict = field(default_factory=dict)


def _err(msg: str) -> PoisonbenchError:
    return PoisonbenchError(msg)


# ---------------------------------------------------------------------------------------------------- reading

def read_npy(path: Path, label: str, max_count: int) -> np.ndarray:
    """A numeric `.npy` (no pickled objects), its header checked before the data is read: at most `max_count`
    values, a regular file of `MAX_TRIGGER_BYTES` or the bound the values need."""
    try:
        with open_regular(path, label) as f:
            check_size(f, max(MAX_TRIGGER_BYTES, 8 * max_count + 4096), label)
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            except (ValueError, OSError, SyntaxError) as e:
                raise _err(f"{label} is not an .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
                    from None
            if dtype.hasobject or dtype.kind not in "biuf":
                raise _err(f"{label}: a {dtype} array where an array of numbers belongs")
            if math.prod(shape) > max_count:
                raise _err(f"{label} declares {math.prod(shape)} values, more than the {max_count} it can hold here")
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except Refused as e:
        raise _err(f"{label}: {e.why}") from None
    except PoisonbenchError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise _err(f"{label} is not a readable .npy file ({type(e).__name__})") from None


def read_torch(path: Path, label: str):
    from .unpickle import load_torch_or_pickle

    return load_torch_or_pickle(path, label)


def read_info(path: Path) -> dict:
    label = repr(str(path))
    if path.suffix == ".json":
        try:
            obj = bounded.read_json_file(path, label=label)
        except Refused as e:
            raise _err(f"{label}: {e.why}") from None
    else:
        obj = read_torch(path, label)
    if not isinstance(obj, dict):
        raise _err(f"{label} holds a {type(obj).__name__}, not BackdoorBench's dict of the run's arguments")
    return obj


def read_trigger_array(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The trigger image t as float64 C×H×W on the 0-255 scale: a PNG/JPEG (L or RGB; a grey dataset takes an RGB
    image whose channels agree) or an `.npy` (H×W×C, H×W or C×H×W, 0-255 scale), of the dataset's size exactly."""
    label = repr(str(path))
    c, h, w = shape
    if path.suffix.lower() in IMAGE_SUFFIXES:
        arr = _read_image(path, label)
    elif path.suffix.lower() == ".npy":
        arr = read_npy(path, label, 4 * c * h * w).astype(np.float64)
    else:
        raise _err(f"{label}: a trigger is a .png, .jpg or .npy file")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape != (c, h, w):
        arr = arr.transpose(2, 0, 1)
    if arr.ndim == 3 and c == 1 and arr.shape == (3, h, w) and np.array_equal(arr[0], arr[1]) \
            and np.array_equal(arr[0], arr[2]):
        arr = arr[:1]  # an RGB file of a grey trigger
    if arr.shape != (c, h, w):
        raise _err(f"{label}: a trigger of shape {tuple(arr.shape)} does not fit this dataset's images {shape} "
                   f"(H×W×C {h}×{w}×{c}; BackdoorBench resizes its trigger to the dataset's size, resize it first)")
    if not np.all(np.isfinite(arr)):
        raise _err(f"{label}: the trigger is not finite")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _read_image(path: Path, label: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise _err(f"{label}: reading an image trigger needs pillow; give an .npy") from None
    try:
        raw = bounded.read_bytes(path, MAX_TRIGGER_BYTES, label)
    except Refused as e:
        raise _err(f"{label}: {e.why}") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise _err(f"{label}: an image of {im.width}×{im.height} pixels is too large for a trigger")
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.float64)
    except PoisonbenchError:
        raise
    except Exception as e:
        raise _err(f"{label} is not a readable image ({type(e).__name__})") from None


def classify(paths: list[Path], trigger: str | None) -> Files:
    """The files of an import: one directory (a BB record, or an export of ours), or the files themselves, told
    apart by name: `*indicator*` or `train_poison_index_list.*` an indicator, `attack_result.pt` BB's record,
    `trigger.*` or an image the trigger, `info.*` the arguments, any other `.npy` a list of indices."""
    files = Files()
    if len(paths) == 1 and paths[0].is_dir():
        d = paths[0]
        files.indicator = next((d / n for n in INDICATOR_NAMES if (d / n).is_file()), None)
        files.index = next((d / n for n in INDEX_NAMES if (d / n).is_file()), None)
        files.record = d / RECORD_NAME if (d / RECORD_NAME).is_file() else None
        files.trigger = next((d / n for n in TRIGGER_NAMES if (d / n).is_file()), None)
        files.info = next((d / n for n in INFO_NAMES if (d / n).is_file()), None)
        if files.indicator is not None:
            files.index = files.record = None  # the indicator file is BB's own copy of bd_train's indicator
        elif files.index is not None:
            files.record = None
        if files.indicator is None and files.index is None and files.record is None:
            raise _err(f"{str(d)!r} holds none of {', '.join((*INDICATOR_NAMES, *INDEX_NAMES, RECORD_NAME))} "
                       "(BackdoorBench's record directory, or an export of poisonbench's)")
    else:
        for p in paths:
            if not p.exists():
                raise _err(f"{str(p)!r} does not exist")
            name = p.name.lower()
            slot = ("trigger" if name.startswith("trigger") or p.suffix.lower() in IMAGE_SUFFIXES
                    else "info" if name.startswith("info.") or p.suffix.lower() == ".json"
                    else "record" if name == RECORD_NAME
                    else "indicator" if "indicator" in name or name.startswith("train_poison_index_list")
                    else "index")
            if getattr(files, slot) is not None:
                raise _err(f"--format {FORMAT}: two {slot} files ({getattr(files, slot).name}, {p.name})")
            setattr(files, slot, p)
        given = [s for s in ("indicator", "index", "record") if getattr(files, s) is not None]
        if len(given) != 1:
            raise _err(f"--format {FORMAT} reads one poison index: a 0/1 indicator (poison_indicator.npy, "
                       f"train_poison_index_list.pickle), an index list (.npy) or {RECORD_NAME}; got "
                       f"{', '.join(given) or 'none'}")
    if trigger is not None:
        files.trigger = Path(trigger)
    for p in (files.indicator, files.index, files.record, files.trigger, files.info):
        if p is not None:
            if not p.is_file():
                raise _err(f"{str(p)!r} does not exist" if not p.exists() else f"{str(p)!r} is not a file")
            files.shas[p.name] = sha256_file(p)
    return files


def train_pool(data) -> np.ndarray:
    """The source indices of the train set an indicator covers, in the source's order: our train and val splits
    (torchvision's train set for MNIST and CIFAR-10, where position k is train image k; an .npz's train and val
    rows in file order)."""
    return np.sort(np.concatenate([np.asarray(data.train.indices), np.asarray(data.val.indices)]).astype(np.int64))


def indicator_to_ids(arr, label: str, pool: int) -> np.ndarray:
    """The source train indices an indicator marks: 1-D, one entry per image of the source train set, 0 or 1."""

    arr = as_array(arr, label)
    if arr.ndim != 1:
        raise _err(f"{label}: an indicator of shape {tuple(arr.shape)}; one 0/1 entry per train image expected")
    if len(arr) != pool:
        raise _err(f"{label}: an indicator of {len(arr)} entries for a train set of {pool} images (one 0/1 entry "
                   "per train image, in the source's order)")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise _err(f"{label}: indicator entry {k} is {arr[k].item()!r}; an indicator holds 0 (clean) or 1 (poisoned)")
    ids = np.flatnonzero(arr == 1).astype(np.int64)
    if len(ids) == 0:
        raise _err(f"{label}: the indicator marks no image as poisoned")
    return ids


def index_to_ids(arr, label: str, pool: int) -> np.ndarray:

    ids = as_ints(arr, label)
    if len(ids) == 0:
        raise _err(f"{label}: no poisoned index")
    if len(ids) > pool or ids.min() < 0 or ids.max() >= pool:
        raise _err(f"{label}: indices outside the train set's [0, {pool}) (or more indices than its {pool} images)")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise _err(f"{label}: index {int(uniq[counts > 1][0])} is listed twice (a 0/1 indicator? name it "
                   "poison_indicator.npy)")
    return np.sort(ids)


def record_ids(path: Path, pool: int) -> tuple[np.ndarray, np.ndarray | None]:
    """BB's attack_result.pt: (source ids from `bd_train.poison_indicator`, their backdoor labels or None)."""
    label = repr(str(path))
    obj = read_torch(path, label)
    bd = obj.get("bd_train") if isinstance(obj, dict) else None
    if not isinstance(bd, dict) or "poison_indicator" not in bd:
        raise _err(f"{label} is not BackdoorBench's attack_result.pt (no bd_train.poison_indicator); "
                   "give its train_poison_index_list.pickle")
    ids = indicator_to_ids(bd["poison_indicator"], f"{label}: bd_train.poison_indicator", pool)
    container = bd.get("bd_data_container")
    table = container.get("data_dict") if isinstance(container, dict) else None
    if not isinstance(table, dict):
        return ids, None
    labels = []
    for i in ids:
        entry = table.get(int(i))
        if isinstance(entry, dict):
            entry = entry.get("other_info")
        elif isinstance(entry, (list, tuple)):
            entry = entry[1:]
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 1):
            return ids, None
        from .formats import as_int

        labels.append(as_int(entry[0], f"{label}: backdoor label of train image {int(i)}"))
    return ids, np.array(labels, dtype=np.int64)


def _agree(what: str, values: list[tuple[str, object]]):
    """The one value that the sources giving one agree on (None when none gives it)."""
    given = [(w, v) for w, v in values if v is not None]
    for w, v in given[1:]:
        if v != given[0][1]:
            raise _err(f"{what}: {given[0][0]} says {given[0][1]!r}, {w} says {v!r}")
    return given[0][1] if given else None


@dataclass
class Backdoor:
    """What the files and the options say, checked against the dataset."""

    label: str  # for messages
    ids: np.ndarray  # source train indices
    target_class: int
    label_mode: str
    kind: str
    alpha: float | None
    scale: torch.Tensor  # C×H×W float32
    add: torch.Tensor
    attack: str | None  # BB's attack name, if given
    files: dict
    file_labels: np.ndarray | None = None


def read_backdoor(paths, data, opts: BackdoorOptions | None = None) -> Backdoor:
    opts = opts or BackdoorOptions()
    paths = [Path(p) for p in paths]
    files = classify(paths, opts.trigger)
    pool_ids = train_pool(data)
    pool = len(pool_ids)
    label = repr(str(paths[0]))
    file_labels = None
    if files.indicator is not None:
        where = repr(str(files.indicator))
        arr = (read_npy(files.indicator, where, pool + 1) if files.indicator.suffix == ".npy"
               else read_torch(files.indicator, where))
        ids = indicator_to_ids(arr, where, pool)
    elif files.index is not None:
        where = repr(str(files.index))
        arr = (read_npy(files.index, where, pool + 1) if files.index.suffix == ".npy"
               else read_torch(files.index, where))
        ids = index_to_ids(arr, where, pool)
    else:
        ids, file_labels = record_ids(files.record, pool)
    ids = pool_ids[ids]  # positions in the train set → source indices
    info = read_info(files.info) if files.info is not None else {}
    iname = repr(str(files.info)) if files.info is not None else ""
    attack = info.get("attack")
    attack = str(attack) if attack is not None else None
    info_target = info.get("attack_target")
    if info_target is not None:
        from .formats import as_int

        info_target = as_int(info_target, f"{iname}: attack_target")
    trans = info.get("attack_label_trans")
    if trans is not None and trans != "all2one":
        raise _err(f"{iname}: attack_label_trans {trans!r}; only all-to-one backdoors (all2one) are imported")
    info_mode = None
    if "clean_label" in info:
        info_mode = "clean" if bool(info["clean_label"]) else "dirty"
    elif attack is not None:
        info_mode = "clean" if attack in CLEAN_LABEL_BB else "dirty"
    target = _agree("the target class", [("--target-class", opts.target_class), (iname, info_target)])
    if target is None:
        raise _err(f"{label}: no target class (give --target-class C, or an info file with attack_target)")
    if not 0 <= int(target) < data.num_classes:
        raise _err(f"target class {target} is not a class of {data.name!r} (classes 0..{data.num_classes - 1})")
    if opts.label_mode is not None and opts.label_mode not in LABEL_MODES:
        raise _err(f"unknown --label-mode {opts.label_mode!r}; valid choices: {', '.join(LABEL_MODES)}")
    mode = _agree("the label mode", [("--label-mode", opts.label_mode), (iname, info_mode)]) or "dirty"
    info_alpha = info.get("attack_train_blended_alpha")
    test_alpha = info.get("attack_test_blended_alpha")
    if info_alpha is not None and test_alpha is not None and float(test_alpha) != float(info_alpha):
        raise _err(f"{iname}: train α {info_alpha} and test α {test_alpha} differ; one trigger for both is imported")
    alpha = _agree("α", [("--alpha", opts.alpha), (iname, float(info_alpha) if info_alpha is not None else None)])
    kind = info.get("trigger_kind") or KIND_OF_BB.get(attack or "") or ("blend" if alpha is not None else "patch")
    if kind not in KINDS:
        raise _err(f"{iname}: trigger kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if alpha is not None and kind != "blend":
        raise _err(f"--alpha applies to a blend trigger, not a {kind} one")
    shape = tuple(data.shape)
    if files.trigger is not None:
        t = read_trigger_array(files.trigger, shape)
    elif kind == "additive" and attack == "sig":
        t = _bb_sig(info, data, iname)
    else:
        raise _err(f"{label}: no trigger (give --trigger FILE: BackdoorBench's trigger image, e.g. "
                   "resource/badnet/trigger_image.png, at the dataset's size)")
    tname = repr(str(files.trigger)) if files.trigger is not None else iname
    scale, add = trigger_maps(t, kind, alpha, tname)
    return Backdoor(label, ids, int(target), mode, kind, alpha, scale, add, attack, files.shas, file_labels)


def _bb_sig(info: dict, data, iname: str) -> np.ndarray:
    """BB's SIG signal (`utils/bd_img_transform/sig.py`, the formula of attacks.backdoor.SIG) from its
    `sig_delta` and `sig_f`, on the 0-255 scale."""
    from ...attacks import ATTACKS

    try:
        delta, f = float(info["sig_delta"]), float(info["sig_f"])
    except (KeyError, TypeError, ValueError):
        raise _err(f"{iname}: a sig run without numbers sig_delta and sig_f; give --trigger FILE") from None
    trig = ATTACKS.get("sig")(data.family, delta=delta, frequency=f).trigger(tuple(data.shape))
    return trig.add.double().numpy() * 255


def trigger_maps(t: np.ndarray, kind: str, alpha: float | None, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, a) float32 C×H×W of the trigger image t (float64, 0-255 scale) for `kind` (module docstring)."""
    if kind in ("patch", "blend") and (t.min() < 0 or t.max() > 255):
        raise _err(f"{where}: trigger values in [{t.min():g}, {t.max():g}]; a {kind} trigger image lies in [0, 255]")
    if kind == "additive" and np.abs(t).max() > 255:
        raise _err(f"{where}: additive trigger values beyond ±255")
    t64 = torch.from_numpy(t) / 255
    if kind == "patch":
        mask = t64 > 0
        if not mask.any():
            raise _err(f"{where}: the trigger image is black everywhere (BackdoorBench's patch form marks the patch "
                       "by its non-zero pixels)")
        return mask.float(), torch.where(mask, t64, 0).float()
    if kind == "blend":
        if alpha is None:
            raise _err(f"{where}: a blend trigger needs its α (--alpha, or attack_train_blended_alpha)")
        if not (math.isfinite(alpha) and 0 < alpha < 1):
            raise _err(f"α {alpha:g}: a blend ratio in (0, 1)")
        a32 = torch.tensor(alpha, dtype=torch.float32)
        return torch.full(t.shape, float(a32)), (a32.double() * t64).float()
    if not (t64 != 0).any():
        raise _err(f"{where}: the additive trigger is zero everywhere")
    return torch.zeros(t.shape), t64.float()


# ---------------------------------------------------------------------------------------------------- import

def check_backdoor_label(label: str) -> str:
    """A label for the imported backdoor's column: badnets, blend, sig, or a short name no other attack has."""
    import re

    from ...attacks import ATTACKS

    name = str(label).lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,31}", name):
        raise _err(f"--attack {label!r}: a short name (letters, digits, '-', '_', '.'), e.g. badnets, blend, sig")
    if name in ATTACKS and name not in BB_ATTACKS.values():
        raise _err(f"--attack {label!r} is poisonbench's own attack; an imported backdoor is labelled badnets, "
                   "blend, sig or a name of its own")
    return name


def import_backdoor(paths, data, results_root=None, label: str | None = None, opts: BackdoorOptions | None = None,
                    force: bool = False):
    """A backdoor PoisonSet of `data` from BackdoorBench's files (module docstring). Returns (set, cached)."""
    from ... import poisons
    from ...attacks.backdoor import Trigger
    from ...attacks.base import PoisonSet, delta_norms
    from ...core.io import ensure_writable
    from ...core.workspace import workspace_dir
    from ...poisons.checks import norm_of

    bd = read_backdoor(paths, data, opts)
    name = check_backdoor_label(label if label is not None else BB_ATTACKS.get(bd.attack or "", bd.attack or
                                                                               "backdoorbench"))
    train_pos = split_positions(data.train.indices, bd.ids)
    keep = np.flatnonzero(train_pos >= 0)
    if len(keep) == 0:
        raise _err(f"{bd.label}: none of its {len(bd.ids)} poisoned images is in {data.name}'s train split")
    order = np.argsort(train_pos[keep])
    rows = torch.from_numpy(train_pos[keep][order])
    val_pos = split_positions(data.val.indices, bd.ids)
    src_y = np.where(train_pos >= 0, data.train.y.numpy()[np.maximum(train_pos, 0)],
                     data.val.y.numpy()[np.maximum(val_pos, 0)])
    if bd.label_mode == "clean" and (src_y != bd.target_class).any():
        k = int(np.flatnonzero(src_y != bd.target_class)[0])
        raise _err(f"{bd.label}: clean label, but poisoned image {int(bd.ids[k])} is of class {int(src_y[k])}, not "
                   f"the target class {bd.target_class} (a dirty-label backdoor? --label-mode dirty)")
    if bd.file_labels is not None:
        want = np.full(len(bd.ids), bd.target_class) if bd.label_mode == "dirty" else src_y
        if (bd.file_labels != want).any():
            k = int(np.flatnonzero(bd.file_labels != want)[0])
            raise _err(f"{bd.label}: train image {int(bd.ids[k])} carries backdoor label {int(bd.file_labels[k])}, "
                       f"not {int(want[k])} ({bd.label_mode} label, target class {bd.target_class})")
    trigger = Trigger(bd.scale, bd.add)
    x = data.train.x[rows].float().div_(255)
    delta = (x + (trigger.apply(x) - x)).clamp_(0, 1).sub_(x)  # as a craft projects it (attacks.base.project)
    norm = norm_of(name)
    size = float(delta_norms(delta, norm).max()) if len(delta) else 0.0
    if size == 0:
        raise _err(f"{bd.label}: the trigger leaves every poisoned image unchanged")
    eps = math.ceil(size * 1e6) / 1e6
    labels = torch.full((len(rows),), bd.target_class, dtype=torch.long) if bd.label_mode == "dirty" else None
    n = len(data.train)
    trig_spec = {"kind": bd.kind, **({"alpha": bd.alpha} if bd.alpha is not None else {})}
    params = {"format": FORMAT, "file_sha256": combined_sha(bd.files), "target_class": bd.target_class,
              "label_mode": bd.label_mode, "trigger": trig_spec}
    spec = poisons.CraftSpec(name, params, eps, len(rows) / n, 0, data.name, data.fingerprint, None, None)
    if poisons.exists(results_root, spec.poison_id) and not force:
        return poisons.load(results_root, spec.poison_id, data), True
    ensure_writable(workspace_dir(results_root, "poisons"), "PoisonSets")
    poison = PoisonSet(delta=delta.contiguous(), indices=rows.clone(), labels=labels, trigger=trigger)
    poison.manifest = {"backdoor": {"target_class": bd.target_class, "label_mode": bd.label_mode,
                                    "trigger": trig_spec}}
    imported = {"format": FORMAT, "file": Path(paths[0]).name, "files": bd.files, "label": name,
                "poisons_in_file": len(bd.ids), "in_train_split": len(rows),
                "left_out_in_val_split": int((train_pos < 0).sum()), "target_class": bd.target_class,
                "label_mode": bd.label_mode, "trigger": trig_spec, **({"bb_attack": bd.attack} if bd.attack else {})}
    # the check (`poisons validate`) compares y[indices] of the clean split, as for every imported PoisonSet; the
    # relabelled labels are the PoisonSet's own `labels`
    poisons.save(poison, spec, results_root, {"imported_from": imported,
                                              "labels_sha256": poisons.labels_hash(rows, data.train.y)},
                 replace=force)
    return poison, False


# ---------------------------------------------------------------------------------------------------- export

EXPORT_FILES = ("poison_indicator.npy", "trigger.npy", "trigger.png", "info.json")


def trigger_form(trigger, where: str) -> tuple[str, float | None, np.ndarray]:
    """(kind, α, t float64 C×H×W on the 0-255 scale) of a stored trigger, or a one-line refusal where BB's forms
    cannot hold it."""
    if trigger.placement_seed is not None:
        raise _err(f"{where}: its trigger is a patch placed at random per image (Sleeper Agent); BackdoorBench's "
                   "form has one fixed trigger")
    m, a = trigger.scale.double(), trigger.add.double()
    if bool(((m == 0) | (m == 1)).all()) and bool((a[m == 0] == 0).all()) and bool((m == 1).any()):
        if bool((a[m == 1] <= 0).any()):
            raise _err(f"{where}: its patch has black pixels; BackdoorBench's patch form marks the patch by its "
                       "non-zero pixels and cannot hold them")
        return "patch", None, (a * 255).numpy()
    alpha = float(m.flatten()[0])
    if bool((m == alpha).all()) and 0 < alpha < 1:
        return "blend", alpha, (a / alpha * 255).numpy()
    if bool((m == 0).all()):
        return "additive", None, (a * 255).numpy()
    raise _err(f"{where}: its trigger is not a patch, a blend or an additive one")


def export_backdoor(results_root, poison_id: str, data, out, force: bool = False, inputs=()) -> dict:
    """Write a backdoor PoisonSet (ours or imported) as BackdoorBench's files in the directory `out` (module
    docstring), each atomically, an existing one only with `force`."""
    from ... import poisons
    from ...core.io import atomic_write_bytes, why_not_written

    out = check_backdoor_out(out, force, inputs)
    spec, manifest = poisons.spec_of(results_root, poison_id, data)
    where = f"poison set {poison_id}"
    backdoor = manifest.get("backdoor")
    if not isinstance(backdoor, dict):
        raise _err(f"{where} is not a backdoor's (its manifest names no trigger); --format {FORMAT} writes one")
    if backdoor.get("train_trigger"):
        raise _err(f"{where} ({spec.attack}): its poisons are a perturbation under the trigger (LC); "
                   "BackdoorBench's form is the trigger alone")
    poison = poisons.load(results_root, poison_id, data)
    if poison.trigger is None:
        raise _err(f"{where} carries no trigger")
    kind, alpha, t = trigger_form(poison.trigger, where)
    target, mode = int(backdoor["target_class"]), str(backdoor.get("label_mode", "dirty"))
    pool_ids = train_pool(data)
    ids = np.asarray(data.train.indices)[poison.indices.numpy()].astype(np.int64)
    indicator = np.zeros(len(pool_ids), dtype=np.float64)  # BB's dtype (np.zeros, then 1 at the poisoned ones)
    indicator[np.searchsorted(pool_ids, ids)] = 1
    hwc = np.ascontiguousarray(t.transpose(1, 2, 0))
    c = data.shape[0]
    blobs: dict[Path, bytes] = {}
    buf = io.BytesIO()
    np.save(buf, indicator)
    blobs[out / "poison_indicator.npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, hwc)
    blobs[out / "trigger.npy"] = buf.getvalue()
    if kind != "additive":
        from PIL import Image

        img = np.clip(np.round(hwc), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if c == 1 else img).save(buf, format="PNG")
        blobs[out / "trigger.png"] = buf.getvalue()
    bb_name = OUR_TO_BB.get(spec.attack, spec.attack)
    info = {"attack": bb_name, "attack_target": target, "attack_label_trans": "all2one",
            "clean_label": mode == "clean", "pratio": len(ids) / len(pool_ids), "p_num": len(ids), "trigger_kind": kind,
            "img_size": [int(data.shape[1]), int(data.shape[2]), int(c)], "dataset": data.name,
            **({"attack_train_blended_alpha": alpha, "attack_test_blended_alpha": alpha} if alpha is not None
               else {}),
            **({"patch_mask_path": "trigger.png"} if kind == "patch" else {}),
            **({"attack_trigger_img_path": "trigger.png"} if kind == "blend" else {}),
            "poisonbench": {"poison_id": poison_id, "attack": spec.attack}}
    blobs[out / "info.json"] = (json.dumps(info, indent=1) + "\n").encode()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, blob in blobs.items():
            atomic_write_bytes(path, blob)
    except OSError as e:
        raise _err(f"cannot write {str(out)!r}: {why_not_written(e, out)}") from None
    return {"path": str(out), "format": FORMAT, "poison_id": poison_id, "attack": spec.attack, "poisons": len(ids),
            "target_class": target, "label_mode": mode, "trigger": {"kind": kind,
                                                                    **({"alpha": alpha} if alpha else {})},
            "files": [str(p) for p in blobs]}


def check_backdoor_out(out, force: bool = False, inputs=()) -> Path:
    """`--out` of the backdoorbench export: a directory (created), none of its files replaced without `force`."""
    return check_output_directory(out, EXPORT_FILES, FORMAT, force, inputs)
