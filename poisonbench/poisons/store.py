"""The PoisonSet store: `<results>/poisons/<poison_id>/{delta.safetensors, manifest.json}`, written atomically, loaded
verified."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import __version__
from ..attacks.base import PoisonSet
from ..core.bounded import Refused, read_json_file, read_tensor_file
from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.io import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable,
    fsync_directory,
    os_error_in_one_line,
    remove_dead_writers_temps,
    umask,
    writer_tag,
)
from ..core.workspace import workspace_dir, workspace_subdir
from .spec import OPTIONAL_SPEC_FIELDS, SPEC_FIELDS, CraftSpec

TENSOR_FILE = "delta.safetensors"
# format 1 (no `format` key): delta and indices. Format 2 (a backdoor's, issue 85) adds `labels` (K, int64: the
# poisoned rows' train labels, where the attack changes them) and `trigger_scale` / `trigger_add` (C×H×W: the test
# trigger T(x) = clamp((1 − scale)·x + add, 0, 1), attacks.backdoor.Trigger); the manifest's `backdoor` names them.
FORMAT = 2
MANIFEST_FILE = "manifest.json"


def poison_dir(results_root, poison_id: str) -> Path:
    return workspace_subdir(results_root, "poisons") / poison_id


def craft_lock(results_root, poison_id: str) -> Path:
    """`locks/poison-<id>.lock`: held while PoisonSet `poison_id` is crafted (concurrent jobs craft it once) or
    unpacked."""
    return workspace_dir(results_root, "locks") / f"poison-{poison_id}.lock"


def craft_directories(results_root) -> dict[str, Path]:
    """{what it holds: directory} of everything a craft writes; a file where one of them belongs is refused in one
    line, and nothing is created."""
    return {what: workspace_dir(results_root, name)
            for name, what in (("poisons", "PoisonSets"), ("partial", "an interrupted craft's state"),
                               ("locks", "lock files"))}


def check_writable(results_root) -> None:
    """Before crafting: the PoisonSet, an interrupted craft's state and the craft's lock can be written (a
    read-only workspace, or a file where one of their directories belongs, fails here in one line instead of after
    the crafting)."""
    for what, directory in craft_directories(results_root).items():  # every one checked before one is created
        ensure_writable(directory, what)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(poison: PoisonSet, spec: CraftSpec, results_root, extra: dict | None = None, replace: bool = False) -> Path:
    """Write the artifact atomically (temporary directory + rename); returns its directory. `replace` (`craft
    --force`): an existing PoisonSet of this id is swapped out only once the new one is complete.

    The temporary directory names its writer (`io.writer_tag`), so the leftovers of killed writers of this
    PoisonSet on this host are removed first, never a live writer's (flock is node-local on some cluster
    filesystems, so another host may be writing the same id). An OS error (a full disk, a read-only workspace)
    is a one-line `PoisonbenchError` with its reason, and the temporary directory is removed (an existing PoisonSet
    of this id is moved aside only once the new one is written)."""
    check_poison_id(spec.poison_id)
    final = workspace_dir(results_root, "poisons", spec.poison_id)  # never written through a symbolic link
    with os_error_in_one_line("PoisonSet", final):
        return _save(poison, spec, final, extra, replace)


def _save(poison: PoisonSet, spec: CraftSpec, final: Path, extra: dict | None, replace: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_temps(final.parent, f".{spec.poison_id}.")
    tensors = {"delta": poison.delta.float().contiguous(), "indices": poison.indices.long().contiguous()}
    extended = poison.labels is not None or poison.trigger is not None
    if poison.labels is not None:  # format 2 (a backdoor's): the poisoned rows' new train labels
        tensors["labels"] = poison.labels.long().contiguous()
    if poison.trigger is not None:  # format 2: the trigger `defend` stamps on the test split
        tensors.update(poison.trigger.tensors())
    blob = st_save(tensors)
    if not replace and manifest_only(final):
        return _restore_tensors(poison, spec.poison_id, final, blob, (extra or {}).get("env"))
    manifest = {
        **({"format": FORMAT} if extended else {}),
        "poison_id": spec.poison_id,
        **spec.inputs(),
        "count": len(poison.indices),
        "shape": list(poison.delta.shape),
        "labels_sha256": labels_hash(poison.indices, None),
        "tensor_sha256": _sha256(blob),
        "poisonbench": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    manifest.update(poison.manifest)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{spec.poison_id}.{writer_tag()}."))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp creates 0700; results are shared (clusters): honour the umask
    try:
        with open(tmp / TENSOR_FILE, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        if final.is_dir() and (replace or not (final / MANIFEST_FILE).exists()):
            # the PoisonSet being replaced, or a directory without a manifest (an interrupted copy, a hand-deleted
            # file): moved aside first (so the id never names a half-deleted directory), then deleted
            aside = final.parent / f".{spec.poison_id}.orphan-{os.getpid()}-{time.time_ns()}"
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, final)
            fsync_directory(final.parent)
        except OSError:
            if not (final / MANIFEST_FILE).exists():  # another writer finished first: keep theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    poison.manifest, poison.path = manifest, final
    return final


def manifest_only(directory: Path) -> bool:
    """A PoisonSet directory holding its manifest but not its tensors: what `records unpack` leaves (a pack carries
    manifests, not tensors)."""
    return os.path.lexists(directory / MANIFEST_FILE) and not os.path.lexists(directory / TENSOR_FILE)


def _restore_tensors(poison: PoisonSet, poison_id: str, final: Path, blob: bytes, env: dict | None = None) -> Path:
    """Put a re-crafted PoisonSet's tensors beside the manifest a pack left, if they are the tensors it pins (its
    `tensor_sha256`): the packed manifest stays, so the records that trained on it keep pairing with it. Other
    tensors (another platform or code version rounds an optimised craft differently) are refused, and nothing is
    written: replacing the manifest would unpair those records. The refusal names what of the pinned craft's `env`
    differs from this craft's (`env`), and how to dispatch to the pinned craft's instruction set."""
    manifest = read_manifest(final.parent.parent, poison_id)
    pinned, crafted = manifest.get("tensor_sha256"), _sha256(blob)
    if crafted != pinned:
        raise PoisonbenchError(
            f"poison set {poison_id}: the craft's tensors (sha256 {crafted[:12]}) are not those its manifest pins "
            f"({str(pinned)[:12]}), which came without tensors (from a records pack); nothing written. Put the "
            f"PoisonSet's files back from where it was crafted, or craft with --force to replace the manifest (the "
            f"runs recorded on the old tensors then no longer pair with new ones)"
            + _env_differences(manifest.get("env"), env))
    atomic_write_bytes(final / TENSOR_FILE, blob)
    poison.manifest, poison.path = manifest, final
    return final


# What of a craft's `env` (core/provenance.py `environment`) decides its float rounding, in the order named.
ROUNDING_ENV = ("device", "cpu", "cpu_capability", "gpu", "threads", "torch", "code")
# The instruction sets ATen dispatches to on x86 (`torch.backends.cpu.get_cpu_capability()`), lowest first: a CPU
# that dispatches to one can be made to dispatch to any lower one by ATEN_CPU_CAPABILITY, never to a higher one.
X86_CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")


def _env_differences(pinned: dict | None, now: dict | None) -> str:
    """The refusal's last sentence: each `ROUNDING_ENV` key whose value differs between the pinned craft's env and
    this craft's, and, where the pinned craft dispatched to a lower x86 instruction set than this process, the
    environment variables that dispatch to it (ATEN_CPU_CAPABILITY also steers torch.compile's C++ kernels; on
    2026-12-01 the three below re-crafted 60 AVX2 FC PoisonSets bit for bit on an AVX-512 CPU). "" when either env
    is missing (a manifest older than env) or none of those keys differs."""
    if not isinstance(pinned, dict) or not isinstance(now, dict):
        return ""
    differing = [key for key in ROUNDING_ENV if pinned.get(key) != now.get(key)]
    if not differing:
        return ""
    text = ". The pinned craft's env differs from this one's in " + ", ".join(
        f"{key} {pinned.get(key)!r} (now {now.get(key)!r})" for key in differing)
    was, now_cap = pinned.get("cpu_capability"), now.get("cpu_capability")
    if "cpu_capability" in differing and was in X86_CAPABILITIES and now_cap in X86_CAPABILITIES:
        if X86_CAPABILITIES.index(was) < X86_CAPABILITIES.index(now_cap):
            text += f": to dispatch as it did, set ATEN_CPU_CAPABILITY={was.lower()}"
            if was == "AVX2":
                text += " ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
        else:
            text += f": craft where ATen dispatches to {was} (ATEN_CPU_CAPABILITY={was.lower()} on a CPU that has it)"
    return text


def labels_hash(indices: torch.Tensor, labels: torch.Tensor | None) -> str | None:
    if labels is None:
        return None
    return _sha256(labels[indices].long().numpy().tobytes())


def check_poison_id(poison_id: str, prefix: str = "") -> None:
    """A poison id is 16 lowercase hex digits (`short_hash`); anything else (a path, `../x`) is refused."""
    if not (isinstance(poison_id, str) and re.fullmatch(r"[0-9a-f]{16}", poison_id)):
        raise PoisonbenchError(f"{prefix}{poison_id!r} is not a poison id (16 hex digits; see `poisonbench poisons "
                               "list`)")


def read_manifest(results_root, poison_id: str) -> dict:
    check_poison_id(poison_id)
    path = poison_dir(results_root, poison_id) / MANIFEST_FILE
    if not os.path.lexists(path):  # a link to nowhere is there, and refused below as no regular file
        known = ", ".join(list_ids(results_root)[:10]) or "none"
        raise PoisonbenchError(f"no poison set {poison_id!r} under {str(path.parent.parent)!r}; known: {known}")
    try:  # a regular file of MAX_JSON_FILE_BYTES at most, nested MAX_DEPTH deep at most (core/bounded.py)
        manifest = read_json_file(path, label=f"poison set {poison_id}: manifest.json")
    except Refused as e:
        raise PoisonbenchError(f"poison set {poison_id}: manifest.json: {e.why}") from None
    required = [k for k in SPEC_FIELDS if k not in OPTIONAL_SPEC_FIELDS]
    missing = [k for k in (*required, "poison_id", "count", "tensor_sha256")
               if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise PoisonbenchError(f"poison set {poison_id}: manifest.json is not a PoisonSet manifest (lacks "
                               f"{', '.join(missing[:4])}); delete {str(path.parent)!r} and craft again")
    return manifest


def spec_of(results_root, poison_id: str, dataset=None) -> tuple[CraftSpec, dict]:
    """The crafting inputs of an existing PoisonSet and its manifest, checked: the manifest must hash to the id
    and (if `dataset` is given) be for that dataset's fingerprint."""
    manifest = read_manifest(results_root, poison_id)
    spec = CraftSpec(**{name: manifest.get(name) for name in SPEC_FIELDS})
    if manifest.get("poison_id") != poison_id or spec.poison_id != poison_id:
        raise PoisonbenchError(f"poison set {poison_id}: its manifest describes other crafting inputs (poison id "
                               f"{manifest.get('poison_id')!r}, inputs hash {spec.poison_id}); moved or edited? "
                               f"delete {str(poison_dir(results_root, poison_id))!r} and craft again")
    if dataset is not None and manifest.get("dataset_fingerprint") != dataset.fingerprint:
        raise PoisonbenchError(f"poison set {poison_id} was crafted for dataset {manifest.get('dataset')!r} "
                               f"(fingerprint {manifest.get('dataset_fingerprint')}), not {dataset.name!r} "
                               f"(fingerprint {dataset.fingerprint})")
    return spec, manifest


def load(results_root, poison_id: str, dataset=None) -> PoisonSet:
    """Load and verify: sha256 of the tensor file, shapes, and (if given) the dataset fingerprint."""
    _, manifest = spec_of(results_root, poison_id, dataset)
    directory = poison_dir(results_root, poison_id)
    tensor_file = directory / TENSOR_FILE
    if not os.path.lexists(tensor_file):
        raise PoisonbenchError(f"poison set {poison_id}: {TENSOR_FILE} is missing (a records pack carries manifests "
                               f"only: `sweep run`, or `craft` with its settings, crafts it again and keeps it if it "
                               f"is the one the manifest pins)")
    try:  # a regular file of MAX_TENSOR_FILE_BYTES at most, its loading within the memory (core/bounded.py)
        blob = read_tensor_file(tensor_file, label=f"poison set {poison_id}: {TENSOR_FILE}")
    except Refused as e:
        raise PoisonbenchError(f"poison set {poison_id}: {TENSOR_FILE}: {e.why}") from None
    if _sha256(blob) != manifest.get("tensor_sha256"):
        raise PoisonbenchError(f"poison set {poison_id}: {TENSOR_FILE} fails its sha256 check (tampered or "
                               f"truncated); delete {str(directory)!r} and craft again")
    try:
        tensors = st_load(blob)
        delta, indices = tensors["delta"], tensors["indices"]
    except Exception as exc:
        raise PoisonbenchError(f"poison set {poison_id}: {TENSOR_FILE} is unreadable ({type(exc).__name__})") from None
    if delta.ndim != 4 or indices.ndim != 1 or len(delta) != len(indices) or len(indices) != manifest.get("count"):
        raise PoisonbenchError(f"poison set {poison_id}: delta {tuple(delta.shape)} and indices "
                               f"{tuple(indices.shape)} do not match the manifest count {manifest.get('count')}")
    if manifest.get("shape") != list(delta.shape):
        raise PoisonbenchError(f"poison set {poison_id}: manifest.json gives shape {manifest.get('shape')}, its "
                               f"{TENSOR_FILE} holds delta {list(delta.shape)}; the artifact is damaged or was "
                               f"edited: delete {str(directory)!r} and craft again")
    labels, trigger = extended_tensors(poison_id, manifest, tensors, delta)
    return PoisonSet(delta=delta, indices=indices, manifest=manifest, path=directory, labels=labels, trigger=trigger)


def extended_tensors(poison_id: str, manifest: dict, tensors: dict, delta: torch.Tensor):
    """(labels, trigger) of a format-2 PoisonSet, checked against δ's shape; (None, None) for format 1."""
    from ..attacks.backdoor import Trigger

    version = manifest.get("format", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise PoisonbenchError(f"poison set {poison_id}: format {version!r} is not one this poisonbench reads "
                               f"(1..{FORMAT}); upgrade poisonbench")
    labels = tensors.get("labels")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(delta)):
        raise PoisonbenchError(f"poison set {poison_id}: labels {tuple(labels.shape)} do not match its "
                               f"{len(delta)} rows")
    trigger = Trigger.from_tensors(tensors)
    if trigger is not None and (tuple(trigger.scale.shape) != tuple(delta.shape[1:])
                                or trigger.add.shape != trigger.scale.shape):
        raise PoisonbenchError(f"poison set {poison_id}: its trigger {tuple(trigger.scale.shape)} does not match "
                               f"the images {tuple(delta.shape[1:])}")
    return (labels.long() if labels is not None else None), trigger


def exists(results_root, poison_id: str) -> bool:
    """The PoisonSet is whole in the workspace: its manifest and its tensors (a manifest alone, as `records unpack`
    leaves it, is crafted again: `save` then checks the tensors against it)."""
    check_poison_id(poison_id)  # an id from a record or a grid is never joined to a path unchecked
    directory = poison_dir(results_root, poison_id)
    return (directory / MANIFEST_FILE).exists() and os.path.lexists(directory / TENSOR_FILE)


def has_manifest(results_root, poison_id: str) -> bool:
    """The PoisonSet's manifest is in the workspace, with or without its tensors (what pairs records with it)."""
    check_poison_id(poison_id)
    return (poison_dir(results_root, poison_id) / MANIFEST_FILE).exists()


def list_ids(results_root) -> list[str]:
    root = workspace_subdir(results_root, "poisons")
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and os.path.lexists(p / MANIFEST_FILE))


def list_manifests(results_root) -> list[dict]:
    """The manifests of the workspace's PoisonSets, by poison id; one that cannot be read (not JSON, not a regular
    file, not a manifest, a directory name that is no poison id) is left out with a one-line `PoisonbenchWarning`
    naming it and why, never silently."""
    out = []
    for pid in list_ids(results_root):
        try:
            out.append(read_manifest(results_root, pid))
        except PoisonbenchError as exc:
            warnings.warn(f"left out: {exc}", PoisonbenchWarning, stacklevel=2)
    return out
