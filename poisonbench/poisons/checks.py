"""`poisonbench poisons validate`: re-check an artifact against its dataset, check by check."""

from __future__ import annotations

import torch

from ..attacks.base import EPS_TOLERANCE, budget_count, delta_norms, within_eps
from ..core.errors import PoisonbenchError
from .store import TENSOR_FILE, labels_hash, load, read_manifest


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
    norm = norm_of(manifest.get("attack"))
    size = delta_norms(poison.delta, norm).max().item() if len(idx) else 0.0
    shown = {"linf": f"‖δ‖∞ = {size:.6f} ≤ ε = {eps:.6f}", "l2": f"max ‖δ_i‖₂ = {size:.6f} ≤ ε = {eps:.6f}",
             "l0": f"max pixel positions changed per image = {size:g} ≤ ε = {eps:g}"}[norm]
    checks.append(("eps-ball", within_eps(size, eps, norm), shown))
    x = dataset.train.x[idx].float() / 255
    xp = x + poison.delta
    lo, hi = (xp.min().item(), xp.max().item()) if len(idx) else (0.0, 1.0)
    checks.append(("pixel range", lo >= -EPS_TOLERANCE and hi <= 1 + EPS_TOLERANCE,
                   f"x+δ in [{lo:.6f}, {hi:.6f}] ⊆ [0, 1]"))
    target = manifest.get("target")
    if target is not None:  # targeted: the target is a test image of its class, every base of the intended class
        index, intended = target["index"], target["intended_class"]
        test_ok = 0 <= index < len(dataset.test) and int(dataset.test.y[index]) == target["true_class"]
        bases_ok = bool((dataset.train.y[idx] == intended).all())
        checks.append(("target", test_ok and bases_ok, f"test image {index} of class {target['true_class']}: "
                                                      f"{test_ok}; every base of the intended class {intended}: "
                                                      f"{bases_ok}"))
    labels = labels_hash(idx, dataset.train.y)
    recorded = manifest.get("labels_sha256")
    checks.append(("labels", recorded == labels, "clean-label: no labels stored; y[indices] matches the labels "
                                                 "at crafting time" if recorded == labels else
                   "y[indices] differs from the labels recorded at crafting time"))
    return checks


def norm_of(attack: str | None) -> str:
    """The norm a stored PoisonSet's ε bounds: its attack's (`Attack.norm`); L∞ for an imported set, whose label
    names no registered attack or a targeted (L∞) one."""
    from ..attacks import ATTACKS

    return ATTACKS.get(attack).norm if attack in ATTACKS.names() else "linf"
