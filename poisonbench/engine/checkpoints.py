"""Epoch checkpoints: a killed `defend` resumes from its last saved epoch and ends with the same numbers.

A run's record is written only when it finishes (docs/engine.md, "Run records and resume"), so without checkpoints a run
killed after 50 of its 55 minutes (a preempted cluster job, a closed laptop) starts again from zero. The engine
therefore saves, at the end of an epoch and at most every `every` seconds, everything the remaining epochs depend on:
model parameters and buffers (BatchNorm statistics), optimizer state, the epoch counter of the learning-rate schedule,
the seeded generator that draws batch orders and augmentation, the history and stage costs so far, and the defense's own
state (`Defense.state`). Resuming restores all of it, so on the same device, torch version and compile mode the resumed
run gives bit-identical numbers (tests/test_checkpoints.py).

One file per run, `<results>/partial/runs/<run_id>.safetensors`: tensors in safetensors (never pickle), the rest
as JSON in the file's metadata; written atomically; removed once the record exists. A checkpoint written under
other code (poisonbench's sources, torch's version), on another device type, CPU or thread count, in another
compile mode or from other poison tensors is ignored (the run starts over), because its numbers would not be
those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from .. import __version__
from ..core.bounded import loads_json, loads_tensors, read_tensor_file, tensors_metadata
from ..core.errors import PoisonbenchWarning
from ..core.hashing import code_fingerprint
from ..core.io import atomic_write_bytes, remove_stale_temps
from ..core.provenance import cpu_model
from ..core.workspace import workspace_dir

code_fingerprint()  # read the sources now, at start-up: the checkout may move on while a long run trains

CHECKPOINT_EVERY = 120.0  # seconds between checkpoints: ≤ 2 minutes of lost work, a few writes per long run
META_KEY = "poisonbench_checkpoint"


def checkpoint_path(results_root: Path, rid: str) -> Path:
    return workspace_dir(results_root, "partial", "runs") / f"{rid}.safetensors"


def write_state(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """One safetensors file (tensors + string metadata), written atomically."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), st_save(data, metadata=metadata))


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a `write_state` file, read through the bounded reader (a regular file of
    `MAX_TENSOR_FILE_BYTES` at most, within the memory; its header's JSON bounded): else `Refused`."""
    raw = read_tensor_file(path)
    where = repr(str(path))
    return loads_tensors(raw, where), tensors_metadata(raw, where)


def execution_identity(device: torch.device) -> dict:
    """What saved state must share with the process resuming from it for the result to equal an uninterrupted
    run's: the code (poisonbench's sources, torch's version) and what decides float rounding on the device (CPU:
    the thread count, as oneDNN splits its reductions by it, and the instruction set ATen and oneDNN dispatch to,
    with the CPU model for oneDNN's per-model kernels — a job moved to another node type of a cluster starts over;
    CUDA: GPU model, cuDNN version, TF32)."""
    identity = {"poisonbench": __version__, "code": code_fingerprint(), "torch": torch.__version__,
                "device": device.type}
    if device.type == "cpu":
        identity.update(threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                        cpu=cpu_model(), onednn_isa=os.environ.get("ONEDNN_MAX_CPU_ISA",
                                                                     os.environ.get("DNNL_MAX_CPU_ISA", "")))
    elif device.type == "cuda":
        identity.update(gpu=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                        cudnn_tf32=torch.backends.cudnn.allow_tf32)
    return identity


def identity_differences(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key=saved (now current)` for each key of either execution identity whose values differ: what a warning
    about state that is not resumed names."""
    return [f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(saved) | set(now))
            if k not in ignore and saved.get(k) != now.get(k)]


class Checkpoint:
    """The checkpoint file of one run. `identity` names what must match for a resume to be exact."""

    def __init__(self, path: Path, every: float = CHECKPOINT_EVERY, identity: dict | None = None):
        self.path = Path(path)
        self.every = every
        self.identity = {"poisonbench": __version__, "torch": torch.__version__, **(identity or {})}

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, state) of the last checkpoint, or None when there is none or it does not match."""
        if not self.path.exists():
            return None
        try:
            tensors, metadata = read_state(self.path)
            state = loads_json(metadata[META_KEY], repr(str(self.path)))
        except Exception:  # unreadable or foreign (writes are atomic, so not half-written): start over
            return None
        saved = state.get("identity") or {}
        if saved != self.identity:
            differ = identity_differences(saved, self.identity)
            warnings.warn(f"checkpoint {self.path} not resumed (an exact resume needs the same execution): "
                          f"{', '.join(differ)}; training starts over", PoisonbenchWarning, stacklevel=2)
            return None
        return tensors, state

    def save(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> bool:
        """Write the checkpoint; a failed write (a full disk) is reported and training goes on without it
        (a checkpoint is insurance; the run's record, a few KB, may still fit). Returns whether it was saved."""
        try:
            write_state(self.path, tensors, {META_KEY: json.dumps({**state, "identity": self.identity})})
        except OSError as e:
            warnings.warn(f"checkpoint {self.path} not saved ({e.strerror or e}); training goes on without it",
                          PoisonbenchWarning, stacklevel=2)
            return False
        return True

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        remove_stale_temps(self.path)  # a save killed mid-write (the run was then resumed and finished)


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `tensors` under `prefix.`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's `state_dict()` as tensors (per-parameter buffers) and JSON (param groups, scalars)."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of `split_optimizer_state`: a `state_dict` for `optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}
