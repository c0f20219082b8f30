"""The clean surrogate every surrogate-based attack shares (design.md §2).

Trained once per (dataset fingerprint, model, recipe, seed) with the dataset family's paper recipe on the clean
train split through the one engine, and cached as safetensors (never pickle) under `<results>/surrogates/`
(poisonbench.trained_models). Its id is the hash of those inputs, so a poison id can name its surrogate before
anything is trained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import CHECKPOINT_EVERY
from ..hashing import short_hash
from ..models import DEFAULT_MODEL
from ..recipes import resolve_recipe
from ..trained_models import load_or_train, model_path

SURROGATE_SEED = 0  # one surrogate per dataset, independent of the attack seed, so all attacks share it
SURROGATE_RECIPE = "paper"
SURROGATE_CHECKPOINT_EVERY = CHECKPOINT_EVERY
KIND = "surrogates"  # the workspace folder


def surrogate_spec(dataset, model_name: str | None = None, recipe: str | None = None,
                   overrides: dict | None = None) -> dict:
    """The canonical inputs that identify a surrogate (the untargeted attacks' is the paper recipe's; a targeted
    attack may train its own with another recipe, e.g. the victim's)."""
    model_name = model_name or DEFAULT_MODEL[dataset.family]
    recipe = resolve_recipe(dataset.family, recipe or SURROGATE_RECIPE, **(overrides or {}))
    return {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "model": model_name,
            "recipe": recipe.to_dict(), "seed": SURROGATE_SEED}


def surrogate_id(dataset, model_name: str | None = None, recipe: str | None = None,
                 overrides: dict | None = None) -> str:
    return short_hash(surrogate_spec(dataset, model_name, recipe, overrides))


def surrogate_path(results_root, sid: str) -> Path:
    return model_path(results_root, KIND, sid)


def load_or_train_surrogate(dataset, results_root, device: torch.device, model_name: str | None = None,
                            progress=None, accel: str = "auto", recipe: str | None = None,
                            overrides: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The cached surrogate (on `device`), training and caching it first if absent (with the CPU kernels' switch
    `accel`; like the device, an execution setting: a cached surrogate serves either mode, its info names the
    one it was trained with)."""
    return load_or_train(KIND, surrogate_spec(dataset, model_name, recipe, overrides), dataset, device,
                         results_root=results_root, recipe=recipe or SURROGATE_RECIPE, recipe_overrides=overrides,
                         seed=SURROGATE_SEED, progress=progress, accel=accel,
                         checkpoint_every=SURROGATE_CHECKPOINT_EVERY)
