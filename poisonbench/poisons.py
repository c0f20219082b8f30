"""The PoisonSet store (design.md §2): `<results>/poisons/<poison_id>/{delta.safetensors, manifest.json}`.

`poison_id` is the short hash of the canonical crafting inputs (attack, every resolved parameter, ε, budget,
seed, dataset name + fingerprint, surrogate id), so it is known before crafting, the same inputs are a cache
hit, and any changed input crafts anew. An artifact is written into a temporary directory and renamed into
place, so a killed craft leaves nothing half-written. Loading verifies the sha256 of the tensor file and the
dataset fingerprint and refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .accel import check_accel_mode, use_mode
from .attacks import ATTACKS
from .attacks.base import (
    DEFAULT_EPS,
    EPS_TOLERANCE,
    AttackContext,
    PoisonSet,
    ProgressFn,
    Target,
    budget_count,
    check_budget,
    check_eps,
    check_seed,
)
from .checkpoints import execution_identity
from .errors import PoisonbenchError
from .hashing import short_hash
from .io import (
    atomic_write_json,
    ensure_writable,
    exclusive,
    fsync_directory,
    remove_dead_writers_temps,
    umask,
    writer_tag,
)
from .records import environment, peak_memory, results_dir, workspace_subdir

TENSOR_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class CraftSpec:
    """Everything that determines a PoisonSet. `inputs()` is what the poison id hashes."""

    attack: str
    params: dict
    eps: float
    budget: float
    seed: int
    dataset: str
    dataset_fingerprint: str
    surrogate: str | None  # surrogate id (hash of its inputs) for surrogate-based attacks
    target: dict | None = None  # a targeted attack's `Target.to_dict()` (None: untargeted)

    def inputs(self) -> dict:
        inputs = {"attack": self.attack, "params": self.params, "eps": self.eps, "budget": self.budget,
                  "seed": self.seed, "dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint,
                  "surrogate": self.surrogate}
        if self.target is not None:  # only then: the poison ids of untargeted PoisonSets stay as they were
            inputs["target"] = self.target
        return inputs

    @property
    def poison_id(self) -> str:
        return short_hash(self.inputs())


SPEC_FIELDS = tuple(f.name for f in fields(CraftSpec))  # the manifest keys the poison id hashes
OPTIONAL_SPEC_FIELDS = ("target",)  # absent from untargeted manifests


def craft_spec(dataset, attack: str, eps: float | None = None, budget: float = 1.0, seed: int = 0,
               target: Target | None = None, **params) -> CraftSpec:
    """Validate the inputs (before anything is written) and resolve every default for the dataset family. A
    targeted attack needs a `target` (a test image and the class it should be taken for); an untargeted one takes
    none."""
    cls = ATTACKS.get(attack)
    check_budget(budget)
    check_seed(seed)
    eps = DEFAULT_EPS[dataset.family] if eps is None else float(eps)
    check_eps(eps)
    check_target(dataset, cls, target)
    instance = cls(dataset.family, **params)
    surrogate = None
    if cls.uses_surrogate:
        from .attacks.surrogate import surrogate_id

        surrogate = surrogate_id(dataset)
    return CraftSpec(attack, instance.params, eps, float(budget), int(seed), dataset.name, dataset.fingerprint,
                     surrogate, target.to_dict() if target is not None else None)


def check_target(dataset, attack_cls, target: Target | None) -> None:
    """A targeted attack has a target inside the test split, whose true class is its label and whose intended
    class is another valid class; fixed rows are distinct train rows. An untargeted attack has none."""
    name = attack_cls.name
    if target is None:
        if attack_cls.targeted:
            raise PoisonbenchError(f"attack {name!r} is targeted: give a target (--target I --intended C, or a "
                                   "setup file)")
        return
    if not attack_cls.targeted:
        raise PoisonbenchError(f"attack {name!r} is untargeted: it takes no target")
    n_test, classes = len(dataset.test), dataset.num_classes
    if not 0 <= target.index < n_test:
        raise PoisonbenchError(f"target index {target.index} is outside the test split [0, {n_test})")
    label = int(dataset.test.y[target.index])
    if target.true_class != label:
        raise PoisonbenchError(f"target {target.index} is of class {label}, not {target.true_class}")
    if not 0 <= target.intended_class < classes or target.intended_class == label:
        raise PoisonbenchError(f"intended class {target.intended_class} must be a class in [0, {classes}) other "
                               f"than the target's own ({label})")
    if target.rows is not None:
        n = len(dataset.train)
        if len(set(target.rows)) != len(target.rows) or not all(0 <= r < n for r in target.rows):
            raise PoisonbenchError(f"the target's poisoned rows must be distinct train rows in [0, {n})")


def poison_dir(results_root, poison_id: str) -> Path:
    return workspace_subdir(results_root, "poisons") / poison_id


def check_writable(results_root) -> None:
    """Before crafting: the PoisonSet, an interrupted craft's state and the craft's lock can be written (a
    read-only workspace, or a file where one of their directories belongs, fails here in one line instead of after
    the crafting)."""
    needed = {what: workspace_subdir(results_root, name)  # every directory checked before one is created
              for name, what in (("poisons", "PoisonSets"), ("partial", "an interrupted craft's state"),
                                 ("locks", "lock files"))}
    for what, directory in needed.items():
        ensure_writable(directory, what)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(poison: PoisonSet, spec: CraftSpec, results_root, extra: dict | None = None, replace: bool = False) -> Path:
    """Write the artifact atomically (temporary directory + rename); returns its directory. `replace` (`craft
    --force`): an existing PoisonSet of this id is swapped out only once the new one is complete.

    The temporary directory names its writer (`io.writer_tag`), so the leftovers of killed writers of this
    PoisonSet on this host are removed first, never a live writer's (flock is node-local on some cluster
    filesystems, so another host may be writing the same id)."""
    final = poison_dir(results_root, spec.poison_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_temps(final.parent, f".{spec.poison_id}.")
    blob = st_save({"delta": poison.delta.float().contiguous(), "indices": poison.indices.long().contiguous()})
    manifest = {
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
    if not path.exists():
        known = ", ".join(list_ids(results_root)[:10]) or "none"
        raise PoisonbenchError(f"no poison set {poison_id!r} under {str(path.parent.parent)!r}; known: {known}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise PoisonbenchError(f"poison set {poison_id}: manifest.json is not valid JSON") from None
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
    try:
        blob = (directory / TENSOR_FILE).read_bytes()
    except OSError:
        raise PoisonbenchError(f"poison set {poison_id}: {TENSOR_FILE} is missing") from None
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
    return PoisonSet(delta=delta, indices=indices, manifest=manifest, path=directory)


def exists(results_root, poison_id: str) -> bool:
    return (poison_dir(results_root, poison_id) / MANIFEST_FILE).exists()


def list_ids(results_root) -> list[str]:
    root = workspace_subdir(results_root, "poisons")
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).exists())


def list_manifests(results_root) -> list[dict]:
    out = []
    for pid in list_ids(results_root):
        try:
            out.append(read_manifest(results_root, pid))
        except PoisonbenchError:
            continue
    return out


def craft(spec: CraftSpec, dataset, results_root=None, device: torch.device | None = None,
          progress: ProgressFn | None = None, force: bool = False, compile: str = "auto",
          accel: str = "auto") -> tuple[PoisonSet, bool]:
    """The PoisonSet for `spec`: loaded (verified) if it exists, else crafted and saved. Returns (set, cached).

    `compile` (auto | on | off) and `accel` (auto | off, the CPU kernels' switch: poisonbench.accel) are execution
    options like `device`: not part of the poison id (they change δ only by float rounding); the manifest records
    whether the attack ran compiled and, in its `env`, the accel mode.
    """
    from .device import check_compile_mode

    check_compile_mode(compile)
    check_accel_mode(accel)
    if dataset.fingerprint != spec.dataset_fingerprint:
        raise PoisonbenchError(f"craft spec is for dataset fingerprint {spec.dataset_fingerprint}, "
                               f"got {dataset.fingerprint}")
    pid = spec.poison_id
    if exists(results_root, pid) and not force:
        return load(results_root, pid, dataset), True

    def waiting() -> None:
        if progress is not None:
            progress(f"{spec.attack} · waiting for another process crafting {pid}", 0, 1)

    check_writable(results_root)
    # concurrent jobs of a sweep craft each PoisonSet once: the others wait here, then load it
    with exclusive(results_dir(results_root) / "locks" / f"poison-{pid}.lock", on_wait=waiting):
        if exists(results_root, pid) and not force:
            return load(results_root, pid, dataset), True
        return _craft_and_save(spec, dataset, results_root, device, progress, force, compile, accel)


def _craft_and_save(spec: CraftSpec, dataset, results_root, device, progress, force: bool,
                    compile: str, accel: str) -> tuple[PoisonSet, bool]:
    pid = spec.poison_id
    partial = results_dir(results_root) / "partial" / pid  # finished batches of an interrupted craft
    from .device import configure_device

    device = configure_device(device or torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prepare_partial(partial, device, force, accel)  # the existing PoisonSet stays until the new one is saved
    attack = ATTACKS.get(spec.attack)(dataset.family, **spec.params)
    target = Target.from_dict(spec.target) if spec.target is not None else None
    indices = attack.choose_rows(dataset, spec.budget, spec.seed, target)
    ctx = AttackContext(dataset, indices, spec.eps, spec.budget, spec.seed, device, results_root=results_root,
                        progress=progress, compile=compile, accel=accel, partial_dir=partial, target=target)
    env = environment(device, accel=accel)  # read before crafting: the checkout may move on during a long craft
    start = time.perf_counter()
    with use_mode(accel):  # for the frozen copies an attack makes without passing ctx.accel
        poison = attack.craft(ctx)
    seconds = time.perf_counter() - start
    extra = {"craft_seconds": round(seconds, 3), "device": str(device), "compiled": ctx.compiled, "env": env,
             "labels_sha256": labels_hash(indices, dataset.train.y), **peak_memory(device)}
    if ctx.surrogate_info is not None:
        extra["surrogate_info"] = ctx.surrogate_info
    if getattr(attack, "training_summary", None):
        extra["attack_info"] = attack.training_summary
    if ctx.resumed_rows:
        extra["resumed_rows"] = ctx.resumed_rows  # craft_seconds covers only this (last) session
    save(poison, spec, results_root, extra, replace=force)
    shutil.rmtree(partial, ignore_errors=True)
    return poison, False


def prepare_partial(partial: Path, device: torch.device, force: bool, accel: str = "auto") -> None:
    """Keep `partial` (an interrupted craft's state) only if it was saved under this execution identity and accel
    mode (the same rule as training checkpoints) and, for `force`, by a forced craft too: `craft --force` starts
    anew, but the same `craft --force` run again after a kill resumes it. Otherwise start it empty. Either way it
    then records the identity of the craft that writes into it (`forced`: whether a forced craft started it)."""
    path = partial / "identity.json"
    identity = {**execution_identity(device), "accel": accel}
    try:
        saved = json.loads(path.read_text())
        same = {k: v for k, v in saved.items() if k != "forced"} == identity
        keep = same and (not force or saved.get("forced") is True)
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable
        keep = False
    if not keep:
        shutil.rmtree(partial, ignore_errors=True)
        atomic_write_json(path, {**identity, "forced": force})


def validate(results_root, poison_id: str, dataset) -> list[tuple[str, bool, str]]:
    """Re-check an artifact against its dataset: (check, passed, detail) rows. Raises only if unreadable."""
    checks: list[tuple[str, bool, str]] = []
    manifest = read_manifest(results_root, poison_id)
    try:
        poison = load(results_root, poison_id)  # poison id, sha256, shapes
        checks.append(("poison id", True, f"the manifest's crafting inputs hash to {poison_id}"))
        checks.append(("sha256", True, f"{TENSOR_FILE} matches {manifest['tensor_sha256'][:16]}…"))
    except PoisonbenchError as exc:
        return [("poison id / sha256 / readable", False, str(exc))]
    fp_ok = manifest.get("dataset_fingerprint") == dataset.fingerprint
    checks.append(("dataset", fp_ok, f"manifest {manifest.get('dataset_fingerprint')} vs {dataset.name} "
                                     f"{dataset.fingerprint}"))
    if not fp_ok:
        return checks
    n = len(dataset.train)
    idx = poison.indices
    in_range = bool(len(idx) == 0 or (idx.min() >= 0 and idx.max() < n))
    unique = len(torch.unique(idx)) == len(idx)
    checks.append(("indices", in_range and unique, f"{len(idx)} unique={unique} in [0, {n})={in_range}"))
    fixed = (manifest.get("target") or {}).get("rows")
    if fixed is not None:  # a setup file's rows
        checks.append(("budget", sorted(idx.tolist()) == sorted(fixed), f"{len(idx)} rows = the target's "
                                                                         f"{len(fixed)} fixed rows"))
    else:
        want = budget_count(manifest["budget"], n)
        checks.append(("budget", len(idx) == want, f"{len(idx)} rows = ⌊{manifest['budget']}·{n}⌋ = {want}"))
    shape_ok = tuple(poison.delta.shape[1:]) == tuple(dataset.shape)
    checks.append(("shape", shape_ok, f"delta {tuple(poison.delta.shape)} vs images {tuple(dataset.shape)}"))
    if not (in_range and shape_ok):
        return checks
    eps = manifest["eps"]
    linf = poison.delta.abs().max().item() if len(idx) else 0.0
    checks.append(("eps-ball", linf <= eps + EPS_TOLERANCE, f"‖δ‖∞ = {linf:.6f} ≤ ε = {eps:.6f}"))
    x = dataset.train.x[idx].float() / 255
    xp = x + poison.delta
    lo, hi = (xp.min().item(), xp.max().item()) if len(idx) else (0.0, 1.0)
    checks.append(("pixel range", lo >= -EPS_TOLERANCE and hi <= 1 + EPS_TOLERANCE,
                   f"x+δ in [{lo:.6f}, {hi:.6f}] ⊆ [0, 1]"))
    labels = labels_hash(idx, dataset.train.y)
    recorded = manifest.get("labels_sha256")
    checks.append(("labels", recorded == labels, "clean-label: no labels stored; y[indices] matches the labels "
                                                 "at crafting time" if recorded == labels else
                   "y[indices] differs from the labels recorded at crafting time"))
    return checks
