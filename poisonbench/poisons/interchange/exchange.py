"""`poisons import` / `poisons export` of targeted PoisonSets: the target resolved, the PoisonSet built and saved,
and ours written in each format; see `poisonbench.poisons.interchange`."""

from __future__ import annotations

import io
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...attacks.base import PoisonSet, Target
from ...attacks.targets import SCENARIOS, check_index, check_intended, read_setups
from ...core.errors import PoisonbenchError
from ...core.io import atomic_write_bytes, ensure_writable, why_not_written
from ...core.workspace import workspace_dir
from ...data.splits import split_positions
from .formats import (
    BOX_TOLERANCE,
    DEFAULT_LABEL,
    PICKLE_SUFFIXES,
    TARGET_TOLERANCE,
    TOXIC_FILES,
    TRANSFER_LABELS,
    Foreign,
    check_format,
    check_output_directory,
    combined_sha,
    forest_constants,
    read_foreign,
)

IMPORT_THREATS = ("white", "gray", "unknown")  # `poisons import --threat`: whose model imported poisons were made on
DEFAULT_IMPORT_THREAT = "unknown"  # another toolkit's poisons: whose model they were brewed on is not known here


@dataclass
class Named:
    """The target named on the command line: `--target I --intended C` (I: a position in our test split) or
    `--setup FILE --setup-index i` (the benchmark's schema; source indices)."""

    index: int | None = None
    intended: int | None = None
    setup: str | None = None
    setup_index: int = 0


def _test_position(data, source_index: int, what: str) -> int:
    pos = int(split_positions(data.test.indices, np.array([source_index]))[0])
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
    from ...attacks import ATTACKS

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


def import_targeted(fmt: str, paths, data, results_root=None, label: str | None = None, victim: str | None = None,
                    named: Named | None = None, forest_std: tuple[float, ...] | None = None,
                    force: bool = False, threat: str | None = None) -> tuple[PoisonSet, bool]:
    """A targeted PoisonSet of `data` from another toolkit's poisons (module docstring). Checks before anything is
    written: the target, clean labels (the file's labels are the bases' and the intended class's; every base is of
    the intended class), distinct rows, x + δ in [0, 1]. `threat` (white | gray | unknown, default unknown): whose
    model the poisons were made on, as the importer declares it (`IMPORT_THREATS`): part of the PoisonSet's
    parameters, so of its id, and the `config.threat` of the transfer runs on it. Returns (set, cached)."""
    from ... import poisons

    threat = DEFAULT_IMPORT_THREAT if threat is None else threat
    if threat not in IMPORT_THREATS:
        raise PoisonbenchError(f"unknown --threat {threat!r}; valid choices: {', '.join(IMPORT_THREATS)}")
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
    train_pos, val_pos = split_positions(data.train.indices, ids), split_positions(data.val.indices, ids)
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
    sha = combined_sha(foreign.files)
    params = {"format": fmt, "file_sha256": sha, "scenario": victim, "threat": threat, **foreign.params}
    spec = poisons.CraftSpec(label, params, math.ceil(linf * 1e6) / 1e6, len(rows) / n, 0, data.name,
                             data.fingerprint, None, target.to_dict())
    if poisons.exists(results_root, spec.poison_id) and not force:
        return poisons.load(results_root, spec.poison_id, data), True
    ensure_writable(workspace_dir(results_root, "poisons"), "PoisonSets")  # never through a symbolic link
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

def check_export_out(fmt: str, out, force: bool = False, inputs=()) -> Path:
    """`--out`: a file for forest and npz, a directory (created) for toxic; checked before anything is read. A file
    it would write that exists is replaced only with `force`, and never one the command reads (`inputs`: the
    workspace's runs/ and poisons/, the dataset; core.io.check_output)."""
    from .hint_file import check_export_path

    check_format(fmt)
    out = Path(out)
    if fmt != "toxic":
        return check_export_path(out, force, inputs)
    return check_output_directory(out, TOXIC_FILES, "toxic", force, inputs)


def _pil_or_array(image: np.ndarray):
    """A PIL image (the benchmark's loader expects them) when PIL is installed, else the uint8 array."""
    try:
        from PIL import Image
    except ImportError:
        return image
    return Image.fromarray(image)


def export_targeted(results_root, poison_id: str, data, fmt: str, out, force: bool = False, inputs=()) -> dict:
    """Write a targeted PoisonSet (ours or imported) in `fmt` at `out`, atomically per file (an existing file only
    with `force`, never one of `inputs`: `check_export_out`); returns a summary."""
    from ... import poisons

    out = check_export_out(fmt, out, force, inputs)
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

