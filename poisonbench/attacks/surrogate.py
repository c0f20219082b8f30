"""The clean surrogate every surrogate-based attack shares (docs/engine.md, "PoisonSets, surrogates and caching").

Trained once per (dataset fingerprint, model, resolved recipe) on the clean train split through the one engine, and
cached as safetensors (never pickle) under `<results>/surrogates/` (poisonbench.engine.model_cache). The untargeted
attacks share the family's paper recipe on its default model; a targeted attack trains its own with the victim's
resolved recipe and model (poisonbench.attacks.targeted). Its seed is an attacker seed derived from those inputs
(`poisonbench.core.seeds`: no victim trial can share it). Its id is the hash of the inputs and the seed, so a poison id
can name its surrogate before anything is trained.

Ensembles (GM's `ensemble N`, forest's `--ensemble`): member i > 0 is the same training with the attacker seed of
`{..., "member": i}`; member 0 is the surrogate above, so an ensemble of one is today's surrogate.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.hashing import short_hash
from ..core.seeds import attacker_seed
from ..engine.checkpoints import CHECKPOINT_EVERY
from ..engine.model_cache import load_or_train, model_path
from ..engine.models import DEFAULT_MODEL
from ..engine.recipes import resolve_recipe

SEED_DOMAIN = "surrogate"  # its seed: attacker_seed(SEED_DOMAIN, its other inputs), never the attack's or a run's
SURROGATE_RECIPE = "paper"
SURROGATE_CHECKPOINT_EVERY = CHECKPOINT_EVERY
KIND = "surrogates"  # the workspace folder


def surrogate_spec(dataset, model_name: str | None = None, recipe: str | None = None,
                   overrides: dict | None = None, member: int = 0) -> dict:
    """The canonical inputs that identify a surrogate (the untargeted attacks' is the paper recipe's; a targeted
    attack trains its own with the victim's), its seed derived from the others (`core.seeds`); `member` i > 0:
    the i-th other member of an ensemble (its own seed)."""
    model_name = model_name or DEFAULT_MODEL[dataset.family]
    recipe = resolve_recipe(dataset.family, recipe or SURROGATE_RECIPE, **(overrides or {}))
    inputs = {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "model": model_name,
              "recipe": recipe.to_dict()}
    if member:
        inputs["member"] = member
    return {**inputs, "seed": attacker_seed(SEED_DOMAIN, inputs)}


def surrogate_id(dataset, model_name: str | None = None, recipe: str | None = None,
                 overrides: dict | None = None) -> str:
    return short_hash(surrogate_spec(dataset, model_name, recipe, overrides))


def surrogate_path(results_root, sid: str) -> Path:
    return model_path(results_root, KIND, sid)


def load_or_train_surrogate(dataset, results_root, device: torch.device, model_name: str | None = None,
                            progress=None, accel: str = "auto", recipe: str | None = None,
                            overrides: dict | None = None, member: int = 0) -> tuple[torch.nn.Module, dict]:
    """The cached surrogate (on `device`), training and caching it first if absent (with the CPU kernels' switch
    `accel`; like the device, an execution setting: a cached surrogate serves either mode, its info names the
    one it was trained with)."""
    spec = surrogate_spec(dataset, model_name, recipe, overrides, member)
    return load_or_train(KIND, spec, dataset, device, results_root=results_root, recipe=recipe or SURROGATE_RECIPE,
                         recipe_overrides=overrides, seed=spec["seed"], progress=progress, accel=accel,
                         checkpoint_every=SURROGATE_CHECKPOINT_EVERY)
