"""The pre-trained models a targeted experiment shares (docs/engine.md, "Targeted scenarios"): the from-scratch
surrogate an attack crafts against, and the transfer scenario's feature extractor.

Transfer learning follows paper §VI-A2: the train split is cut once, stratified by class, into a pre-training part
(90 %) and a transfer set (10 %, 4,900 images on CIFAR-10). The extractor is trained on the clean pre-training part
through the one engine with the victim's resolved recipe and model, cached by the hash of its inputs (dataset
fingerprint, model, recipe, rows, seed; the seed an attacker seed derived from the others, `poisonbench.core.seeds`, so
no victim trial shares it) and shared by every trial, attack and defense (one writer, the others wait:
`model_cache.load_or_train`). The victim freezes it and trains a re-initialised head on the transfer set with
the poisons, its BatchNorm layers in train mode (`--head-bn train`, HINT's code, the default) or eval mode
(`--head-bn eval`).

Threat model (`defend --threat`, docs/fidelity.md): under `gray` (the paper's, the default) the attacker crafts on
an extractor of its own, pre-trained like the victim's (same clean pre-training split, recipe and model) but with
another seed (`role="attacker"`: seed domain `attacker-extractor`); under `white` it crafts on the very extractor
the victim freezes (`role="victim"`, the seed domain `extractor` the victim's extractor always has).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import PoisonbenchError
from ..core.hashing import short_hash
from ..core.seeds import attacker_seed
from .models import DEFAULT_MODEL
from .recipes import resolve_recipe

TRANSFER_FRACTION = 0.1  # paper §VI-A2: the transfer set is 10 % of the train split (4,900 of 49,000 on CIFAR-10)
TRANSFER_SPLIT_SEED = 1  # fixed: one split per dataset, shared by every run (the class split uses seed 0)
EXTRACTOR_KIND = "extractors"  # the workspace folder
SEED_DOMAIN = "extractor"  # the victim's extractor's seed: attacker_seed(SEED_DOMAIN, its other inputs)
# the seed domain per role: the victim's extractor, or the gray-box attacker's own (same inputs, another seed)
SEED_DOMAINS = {"victim": SEED_DOMAIN, "attacker": "attacker-extractor"}
MIN_PRETRAIN_PER_CLASS = 10  # below this the extractor learns nothing worth freezing


def transfer_split(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-training rows, transfer rows) of the train split: sorted int64, stratified by class, 10 % transfer.

    Refused in one line when the pre-training part would leave a class with fewer than
    `MIN_PRETRAIN_PER_CLASS` images. Fresh tensors at every call (a caller may change them); the split itself is
    computed once per train labels (`_split_of`)."""
    pretrain, transfer, _ = _split_of(data)
    return torch.from_numpy(pretrain.copy()), torch.from_numpy(transfer.copy())


# The split and its pre-training rows' hash, per train-labels tensor while it lives and is not changed in place
# (torch's version counter). Planning a grid asks for them several times per step (the extractor's spec, the
# attacker's, the target's base pool): on full Fashion-MNIST each cost ~0.1 s (a stratified permutation of 59,000
# labels, the JSON of 53,100 rows), so planning Table III's 1,860 steps took 98 CPU-seconds, paid again by every
# task of a SLURM array; a plan holds one labels tensor per dataset. Bounded: a handful of datasets per process.
# A write through a NumPy view of the tensor (`labels.numpy()[i] = c`) moves no version counter and is not seen:
# nothing in the package writes labels that way, and a dataset plugin that did must hand over a new tensor.
_SPLITS: list[tuple] = []  # (weak reference to the labels tensor, its version, the class count, the split)
_MAX_SPLITS = 8


def _split_of(data) -> tuple[np.ndarray, np.ndarray, str]:
    """(pre-training rows, transfer rows, `short_hash` of the pre-training rows' list), computed once per labels
    tensor and version (a tensor without a version counter, made in inference mode, e.g. by a dataset plugin: at
    every call)."""
    import weakref

    from ..data.splits import stratified_split

    labels = data.train.y
    try:
        version = labels._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        version = None
    for ref, seen, classes, split in _SPLITS:
        if version is not None and ref() is labels and seen == version and classes == data.num_classes:
            return split
    y = labels.numpy()
    k = int(round(TRANSFER_FRACTION * len(y)))
    pretrain, transfer = stratified_split(y, [k], seed=TRANSFER_SPLIT_SEED)
    counts = np.bincount(y[pretrain], minlength=data.num_classes)
    if len(pretrain) == 0 or counts.min() < MIN_PRETRAIN_PER_CLASS:
        raise PoisonbenchError(f"--scenario transfer: the pre-training split of {data.name} is too small "
                               f"({len(pretrain)} images, {int(counts.min())} in its smallest class; at least "
                               f"{MIN_PRETRAIN_PER_CLASS} per class needed)")
    pretrain.flags.writeable = transfer.flags.writeable = False  # shared: callers get copies
    split = (pretrain, transfer, short_hash(pretrain.tolist()))
    if version is not None:
        if len(_SPLITS) >= _MAX_SPLITS:
            del _SPLITS[0]
        _SPLITS.append((weakref.ref(labels), version, data.num_classes, split))
    return split


def extractor_spec(data, model_name: str | None = None, recipe: str = "paper",
                   overrides: dict | None = None, role: str = "victim") -> dict:
    """The canonical inputs that identify the transfer scenario's pre-trained model, its seed derived from the
    others (`core.seeds`) and its role: the victim's extractor, or the gray-box attacker's own (another seed,
    so another id)."""
    if role not in SEED_DOMAINS:
        raise PoisonbenchError(f"extractor role must be one of {', '.join(SEED_DOMAINS)}, got {role!r}")
    rows = _split_of(data)[2]
    inputs = {"purpose": "transfer-extractor", "dataset": data.name, "dataset_fingerprint": data.fingerprint,
              "model": model_name or DEFAULT_MODEL[data.family],
              "recipe": resolve_recipe(data.family, recipe, **(overrides or {})).to_dict(),
              "rows": rows, "transfer_fraction": TRANSFER_FRACTION}
    return {**inputs, "seed": attacker_seed(SEED_DOMAINS[role], inputs)}


def extractor_id(data, model_name: str | None = None, recipe: str = "paper", overrides: dict | None = None,
                 role: str = "victim") -> str:
    return short_hash(extractor_spec(data, model_name, recipe, overrides, role))


def load_or_train_extractor(data, device: torch.device, *, model_name: str | None = None, recipe: str = "paper",
                            overrides: dict | None = None, results_root=None, progress=None,
                            accel: str = "auto", role: str = "victim") -> tuple[torch.nn.Module, dict]:
    """The pre-trained model (features and its own head, on `device`), trained on the clean pre-training rows
    first if it is not cached: the victim's, or (`role="attacker"`) the gray-box attacker's own."""
    from .model_cache import load_or_train

    pretrain, _ = transfer_split(data)
    spec = extractor_spec(data, model_name, recipe, overrides, role)
    return load_or_train(EXTRACTOR_KIND, spec, data, device, results_root=results_root, rows=pretrain, recipe=recipe,
                         recipe_overrides=overrides, seed=spec["seed"], progress=progress, accel=accel)
