"""Models trained once and shared: the attacks' clean surrogate, a scenario's pre-trained feature extractor.

A model is named by the hash of its `spec` (the canonical inputs that determine it: dataset fingerprint, model,
recipe, seed, training rows), so its id is known before anything trains. It is trained through the one engine,
cached as safetensors (never pickle) under `<results>/<kind>/<id>.safetensors` with the spec and a sha256 of its
weights in the file's metadata, and checked against both when loaded. Concurrent jobs train it once: the others
wait on a lock, then load it. A long training keeps epoch checkpoints, so a killed job resumes it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..core.bounded import Refused, loads_json, read_tensor_file, tensors_metadata
from ..core.errors import PoisonbenchError
from ..core.hashing import canonical_json, short_hash
from ..core.io import atomic_write_bytes, exclusive, os_error_in_one_line
from ..core.workspace import workspace_dir
from . import termination
from .checkpoints import CHECKPOINT_EVERY, Checkpoint
from .models import build_model
from .recipes import resolve_recipe


def model_path(results_root, kind: str, model_id: str) -> Path:
    return workspace_dir(results_root, kind) / f"{model_id}.safetensors"


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name): names the exact weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_or_train(kind: str, spec: dict, dataset, device: torch.device, *, results_root=None,
                  rows: torch.Tensor | None = None, recipe: str = "paper", recipe_overrides: dict | None = None,
                  seed: int = 0, progress=None, accel: str = "auto",
                  checkpoint_every: float = CHECKPOINT_EVERY) -> tuple[torch.nn.Module, dict]:
    """The model `spec` names (on `device`), trained first on the clean train rows `rows` (None: all) with the
    family's `recipe` if it is not cached yet. `spec` must hold `model` and everything that determines the weights
    (the rows, recipe and seed included); `accel`, like the device, is an execution setting (the info names it)."""
    model_id = short_hash(spec)
    path = model_path(results_root, kind, model_id)
    if path.exists():
        return _load(path, spec, model_id, dataset, device, seed)
    what = kind.rstrip("s")

    def waiting() -> None:
        if progress is not None:
            progress(f"{what} · waiting for another process training {model_id}", 0, 1)

    with exclusive(workspace_dir(results_root, "locks") / f"{what}-{model_id}.lock", on_wait=waiting):
        if path.exists():
            return _load(path, spec, model_id, dataset, device, seed)
        training = resolve_recipe(dataset.family, recipe, **(recipe_overrides or {}))
        return _train(path, spec, model_id, dataset, device, rows, training, seed, progress, accel,
                      checkpoint_every)


def _load(path: Path, spec: dict, model_id: str, dataset, device: torch.device,
          seed: int) -> tuple[torch.nn.Module, dict]:
    model = build_model(spec["model"], dataset, seed=seed)
    where = f"model file {str(path)!r}"
    try:  # read once, through the bounded reader (a regular file, MAX_TENSOR_FILE_BYTES, memory per byte)
        raw = read_tensor_file(path, label=where)
    except Refused as e:
        raise PoisonbenchError(f"{e}; delete it to retrain") from None
    try:  # the tensors and the metadata both come from these bytes
        state, meta = st_load(raw), tensors_metadata(raw, where)
        model.load_state_dict(state)
    except Exception as exc:  # truncated / not safetensors / wrong keys
        raise PoisonbenchError(f"model file {str(path)!r} is unreadable ({type(exc).__name__}); "
                               f"delete it to retrain") from None
    if meta.get("spec") != canonical_json(spec):
        raise PoisonbenchError(f"model file {str(path)!r} was made for other inputs; delete it to retrain")
    try:
        saved = loads_json(meta.get("info", "{}"), where)
    except Refused as e:
        raise PoisonbenchError(f"{e}; delete it to retrain") from None
    if not isinstance(saved, dict):
        raise PoisonbenchError(f"{where} holds no model information; delete it to retrain")
    sha = weights_sha256(state)
    if saved.get("weights_sha256", sha) != sha:  # files written before the hash existed have none to check
        raise PoisonbenchError(f"model file {str(path)!r} fails its weights sha256 check (edited?); "
                               f"delete it to retrain")
    info = {"id": model_id, "path": str(path), "trained": False, **saved, "weights_sha256": sha}
    return model.to(device), info


def _train(path: Path, spec: dict, model_id: str, dataset, device: torch.device, rows, recipe, seed: int,
           progress, accel: str, checkpoint_every: float) -> tuple[torch.nn.Module, dict]:
    from ..core.device import to_float
    from .training import train

    model = build_model(spec["model"], dataset, seed=seed)
    tx, ty = to_float(dataset.train.x, device), dataset.train.y.to(device)
    if rows is not None:
        rows = rows.to(device)
        tx, ty = tx[rows], ty[rows]
    vx, vy = to_float(dataset.val.x, device), dataset.val.y.to(device)
    steps_per_epoch = (len(ty) + recipe.batch_size - 1) // recipe.batch_size
    total = steps_per_epoch * recipe.epochs
    description = f"{path.parent.name.rstrip('s')} {spec['model']} · {dataset.name}"

    def on_batch(epoch: int, step: int, steps: int) -> None:
        if progress is not None:
            progress(description, epoch * steps + step, total)

    # epoch checkpoints as `defend`'s (an 80-epoch ResNet-18 is hours on a CPU): a killed job resumes the training
    # where it stopped, with the weights an uninterrupted training gives
    checkpoint = Checkpoint(workspace_dir(path.parent.parent, "partial", path.parent.name) / path.name,
                            checkpoint_every)
    start = time.perf_counter()
    result = train(model, tx, ty, vx, vy, recipe, seed=seed, device=device, num_classes=dataset.num_classes,
                   eval_sets={"val": (vx, vy)}, on_batch=on_batch, checkpoint=checkpoint, accel=accel)
    last = result.history[-1]
    info = {"val_acc": last.get("val_acc"), "train_acc": last["train_acc"],
            "seconds": round(time.perf_counter() - start + result.prior_seconds, 2),
            "resumed_from_epoch": result.resumed_from, "accel": accel}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info["weights_sha256"] = weights_sha256(state)
    what = path.parent.name.rstrip("s")
    with os_error_in_one_line(f"the trained {what}", path):  # a full disk: the epoch checkpoint (if any) stays
        atomic_write_bytes(path, st_save(state, metadata={"spec": canonical_json(spec), "info": json.dumps(info)}))
    checkpoint.clear()
    # a SIGTERM in the last epoch lets the training finish (poisonbench.engine.training); the model is saved now, so the
    # caller (a craft, a transfer run) stops here instead of going on for minutes with its own work
    termination.stop_if_requested(f"after training the {what} {model_id} (saved: {path}; running the same "
                                  "command again uses it)")
    return model, {"id": model_id, "path": str(path), "trained": True, **info}
