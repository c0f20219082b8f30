"""PoisonSets (docs/engine.md, "PoisonSets, surrogates and caching"), the store
`<results>/poisons/<poison_id>/{delta.safetensors, manifest.json}`.

`poison_id` is the short hash of the canonical crafting inputs (attack, every resolved parameter, ε, budget,
seed, dataset name + fingerprint, surrogate id), so it is known before crafting, the same inputs are a cache
hit, and any changed input crafts anew. An artifact is written into a temporary directory and renamed into
place, so a killed craft leaves nothing half-written. Loading verifies the sha256 of the tensor file and the
dataset fingerprint and refuses anything else.
"""

from .checks import validate
from .crafting import craft, prepare_partial
from .spec import OPTIONAL_SPEC_FIELDS, SPEC_FIELDS, CraftSpec, check_target, craft_spec
from .store import (
    MANIFEST_FILE,
    TENSOR_FILE,
    check_poison_id,
    check_writable,
    craft_directories,
    craft_lock,
    exists,
    labels_hash,
    list_ids,
    list_manifests,
    load,
    poison_dir,
    read_manifest,
    save,
    spec_of,
)

__all__ = [
    "MANIFEST_FILE", "OPTIONAL_SPEC_FIELDS", "SPEC_FIELDS", "TENSOR_FILE", "CraftSpec", "check_poison_id",
    "check_target", "check_writable", "craft", "craft_directories", "craft_lock", "craft_spec", "exists",
    "labels_hash", "list_ids", "list_manifests", "load", "poison_dir", "prepare_partial", "read_manifest", "save",
    "spec_of", "validate",
]
