"""The clean surrogate every surrogate-based attack shares (design.md §2).

Trained once per (dataset fingerprint, model, recipe, seed) with the dataset family's paper recipe on the clean
train split through the one engine, and cached as safetensors (never pickle) under `<results>/surrogates/`.
Its id is the hash of those inputs, so a poison id can name its surrogate before anything is trained.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..checkpoints import CHECKPOINT_EVERY, Checkpoint
from ..errors import PoisonbenchError
from ..hashing import canonical_json, short_hash
from ..io import atomic_write_bytes, exclusive
from ..models import DEFAULT_MODEL, build_model
from ..recipes import resolve_recipe
from ..records import results_dir

SURROGATE_SEED = 0  # one surrogate per dataset, independent of the attack seed, so all attacks share it
SURROGATE_RECIPE = "paper"
SURROGATE_CHECKPOINT_EVERY = CHECKPOINT_EVERY


def surrogate_spec(dataset, model_name: str | None = None) -> dict:
    """The canonical inputs that identify a surrogate."""
    model_name = model_name or DEFAULT_MODEL[dataset.family]
    recipe = resolve_recipe(dataset.family, SURROGATE_RECIPE)
    return {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "model": model_name,
            "recipe": recipe.to_dict(), "seed": SURROGATE_SEED}


def surrogate_id(dataset, model_name: str | None = None) -> str:
    return short_hash(surrogate_spec(dataset, model_name))


def surrogate_path(results_root, sid: str) -> Path:
    return results_dir(results_root) / "surrogates" / f"{sid}.safetensors"


def load_or_train_surrogate(dataset, results_root, device: torch.device, model_name: str | None = None,
                            progress=None) -> tuple[torch.nn.Module, dict]:
    """The cached surrogate (on `device`), training and caching it first if absent."""
    spec = surrogate_spec(dataset, model_name)
    sid = short_hash(spec)
    path = surrogate_path(results_root, sid)
    if path.exists():
        return _load(path, spec, sid, dataset, device)

    def waiting() -> None:
        if progress is not None:
            progress(f"surrogate · waiting for another process training {sid}", 0, 1)

    # concurrent jobs sharing a results directory train it once: the others wait here, then load it
    with exclusive(results_dir(results_root) / "locks" / f"surrogate-{sid}.lock", on_wait=waiting):
        if path.exists():
            return _load(path, spec, sid, dataset, device)
        return _train(path, spec, sid, dataset, device, progress)


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name): names the exact weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load(path: Path, spec: dict, sid: str, dataset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    model = build_model(spec["model"], dataset, seed=SURROGATE_SEED)
    try:
        raw = path.read_bytes()
        state = st_load(raw)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        model.load_state_dict(state)
    except Exception as exc:  # truncated / not safetensors / wrong keys
        raise PoisonbenchError(f"surrogate file {str(path)!r} is unreadable ({type(exc).__name__}); "
                               f"delete it to retrain") from None
    if meta.get("spec") != canonical_json(spec):
        raise PoisonbenchError(f"surrogate file {str(path)!r} was made for other inputs; delete it to retrain")
    saved = json.loads(meta.get("info", "{}"))
    sha = weights_sha256(state)
    if saved.get("weights_sha256", sha) != sha:  # files written before the hash existed have none to check
        raise PoisonbenchError(f"surrogate file {str(path)!r} fails its weights sha256 check (edited?); "
                               f"delete it to retrain")
    info = {"id": sid, "path": str(path), "trained": False, **saved, "weights_sha256": sha}
    return model.to(device), info


def _train(path: Path, spec: dict, sid: str, dataset, device: torch.device,
           progress) -> tuple[torch.nn.Module, dict]:
    from ..training import to_float, train

    model = build_model(spec["model"], dataset, seed=SURROGATE_SEED)
    recipe = resolve_recipe(dataset.family, SURROGATE_RECIPE)
    tx, ty = to_float(dataset.train.x, device), dataset.train.y.to(device)
    vx, vy = to_float(dataset.val.x, device), dataset.val.y.to(device)
    steps_per_epoch = (len(ty) + recipe.batch_size - 1) // recipe.batch_size
    total = steps_per_epoch * recipe.epochs
    description = f"surrogate {spec['model']} · {dataset.name}"

    def on_batch(epoch: int, step: int, steps: int) -> None:
        if progress is not None:
            progress(description, epoch * steps + step, total)

    # epoch checkpoints as `defend`'s (an 80-epoch ResNet-18 surrogate is hours on a CPU): a killed craft resumes
    # the surrogate where it stopped, with the weights an uninterrupted training gives
    checkpoint = Checkpoint(path.parent.parent / "partial" / "surrogates" / path.name, SURROGATE_CHECKPOINT_EVERY)
    start = time.perf_counter()
    result = train(model, tx, ty, vx, vy, recipe, seed=SURROGATE_SEED, device=device,
                   num_classes=dataset.num_classes, eval_sets={"val": (vx, vy)}, on_batch=on_batch,
                   checkpoint=checkpoint)
    last = result.history[-1]
    info = {"val_acc": last.get("val_acc"), "train_acc": last["train_acc"],
            "seconds": round(time.perf_counter() - start + result.prior_seconds, 2),
            "resumed_from_epoch": result.resumed_from}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info["weights_sha256"] = weights_sha256(state)
    atomic_write_bytes(path, st_save(state, metadata={"spec": canonical_json(spec), "info": json.dumps(info)}))
    checkpoint.clear()
    return model, {"id": sid, "path": str(path), "trained": True, **info}
