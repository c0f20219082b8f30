"""Crafting a PoisonSet once: a cache hit, or the attack run under a lock (concurrent jobs craft it once) and saved;
an interrupted craft resumes from its finished batches."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import torch

from ..attacks import ATTACKS
from ..attacks.base import AttackContext, PoisonSet, ProgressFn, Target
from ..core.bounded import Refused, read_json_file
from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.io import atomic_write_json, exclusive, os_error_in_one_line
from ..core.provenance import environment, peak_memory
from ..core.registry import plugins_used
from ..core.workspace import workspace_dir
from ..data.catalog import DATASETS
from ..engine import termination
from ..engine.checkpoints import execution_identity, identity_differences
from ..engine.kernels import check_accel_mode, use_mode
from .spec import CraftSpec
from .store import check_writable, craft_lock, exists, labels_hash, load, save


def craft(spec: CraftSpec, dataset, results_root=None, device: torch.device | None = None,
          progress: ProgressFn | None = None, force: bool = False, compile: str = "auto",
          accel: str = "auto", deterministic: str | None = None) -> tuple[PoisonSet, bool]:
    """The PoisonSet for `spec`: loaded (verified) if it exists, else crafted and saved. Returns (set, cached).

    `compile` (auto | on | off), `accel` (auto | off, the CPU kernels' switch: engine.kernels) and `deterministic`
    (on | off: CUDA's algorithm choice, `core.device.configure_device`; None: as the process is configured, e.g. by
    the `defend` that crafts) are execution options like `device`: not part of the poison id (the first two change
    δ only by float rounding, the last its repeatability on CUDA); the manifest records whether the attack ran
    compiled and, in its `env`, the accel and deterministic modes.
    """
    from ..core.device import check_compile_mode, check_deterministic_mode

    check_compile_mode(compile)
    check_accel_mode(accel)
    if deterministic is not None:
        check_deterministic_mode(deterministic)
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
    with exclusive(craft_lock(results_root, pid), on_wait=waiting):
        if exists(results_root, pid) and not force:
            return load(results_root, pid, dataset), True
        return _craft_and_save(spec, dataset, results_root, device, progress, force, compile, accel, deterministic)


def _craft_and_save(spec: CraftSpec, dataset, results_root, device, progress, force: bool,
                    compile: str, accel: str, deterministic: str | None) -> tuple[PoisonSet, bool]:
    pid = spec.poison_id
    partial = workspace_dir(results_root, "partial", pid)  # finished batches of an interrupted craft
    from ..core.device import configure_device

    device = configure_device(device or torch.device("cpu"), deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prepare_partial(partial, device, force, accel)  # the existing PoisonSet stays until the new one is saved
    attack = ATTACKS.get(spec.attack)(dataset.family, **spec.params)
    target = Target.from_dict(spec.target) if spec.target is not None else None
    ctx = AttackContext(dataset, torch.empty(0, dtype=torch.long), spec.eps, spec.budget, spec.seed, device,
                        results_root=results_root, progress=progress, compile=compile, accel=accel,
                        partial_dir=partial, target=target, loader=attack.load_surrogate)
    # the rows before the craft; an attack whose bases are nearest the target reads its model here (ctx.surrogate())
    indices = ctx.indices = attack.rows_for(ctx)
    env = environment(device, accel=accel)  # read before crafting: the checkout may move on during a long craft
    plugins = plugins_used([(ATTACKS, spec.attack), (DATASETS, getattr(dataset, "name", None))])
    if plugins:  # {distribution: version} of a plugin's attack or dataset (poisonbench.core.registry)
        env["plugins"] = plugins
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
    # a SIGTERM the craft's own checks did not see (after its last one): the PoisonSet is whole, stop now
    termination.stop_if_requested(f"after crafting PoisonSet {pid} (saved: {poison.path})")
    return poison, False


DISCARDED = "discarded"  # partial/discarded/<poison id>: the last state of a craft not resumed (prepare_partial)


def prepare_partial(partial: Path, device: torch.device, force: bool, accel: str = "auto") -> None:
    """Keep `partial` (an interrupted craft's state) only if it was saved under this execution identity and accel
    mode (the same rule as training checkpoints) and, for `force`, by a forced craft too: `craft --force` starts
    anew, but the same `craft --force` run again after a kill resumes it. Otherwise start it empty. Either way it
    then records the identity of the craft that writes into it (`forced`: whether a forced craft started it).

    State saved under another execution is not deleted but moved to `partial/discarded/<poison id>/` (replacing an
    older one there), with a warning naming what differs and where it went: hours of a craft a user may still want
    to finish elsewhere (issue 67: `experiments/rem_truncated.py` finished two GPU states' final noise on a CPU)."""
    path = partial / "identity.json"
    identity = {**execution_identity(device), "accel": accel}
    try:
        saved = read_json_file(path)  # a regular file, bounded in size and depth (core/bounded.py)
        same = {k: v for k, v in saved.items() if k != "forced"} == identity
        keep = same and (not force or saved.get("forced") is True)
    except (Refused, AttributeError):  # none yet, or unreadable (a FIFO, too large or deep, not JSON)
        saved, same, keep = None, False, False
    if isinstance(saved, dict) and not same and any(f.name != path.name for f in partial.iterdir()):
        # hours of a craft's state are set aside: say so, why, and where (a silent restart cost a GPU call, issue 67)
        differ = identity_differences(saved, identity, ignore=("forced",))
        kept = partial.parent / DISCARDED / partial.name
        with os_error_in_one_line("an interrupted craft's state", kept):
            shutil.rmtree(kept, ignore_errors=True)
            kept.parent.mkdir(parents=True, exist_ok=True)
            partial.rename(kept)
        warnings.warn(f"the interrupted craft's state in {partial} is not resumed (an exact resume needs the same "
                      f"execution): {', '.join(differ)}; crafting starts over (the state is kept in {kept} until "
                      "another discarded state of this craft replaces it)", PoisonbenchWarning, stacklevel=2)
    if not keep:
        shutil.rmtree(partial, ignore_errors=True)
        with os_error_in_one_line("an interrupted craft's state", path):
            atomic_write_json(path, {**identity, "forced": force})
