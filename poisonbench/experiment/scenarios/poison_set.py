"""The poison-set scenario: `defend --poison-set ID` trains on exactly one existing PoisonSet (docs/engine.md,
"Scenarios")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.errors import PoisonbenchError
from .base import Scenario

NO_MIX_WITH_POISON_SET = ("--poison-set trains on one PoisonSet as it is; it takes no --poison-ratio, --attacks or "
                          "--poisons")


@dataclass
class PoisonSetPlan:
    """`defend --poison-set ID`: train on exactly one existing PoisonSet, every row it covers poisoned (a craft with
    `--budget` < 1, or the paper's own mix imported from HINT's file with `poisons import`). Same interface as
    UntargetedPlan: `apply`, `mask` (after `apply`), `config`, `tensor_sha256`."""

    poison_id: str
    attack: str
    config: dict
    indices: torch.Tensor | None = None  # the PoisonSet's rows, known once `apply` has loaded it
    tensor_sha256: dict = field(default_factory=dict)
    crafted: dict = field(default_factory=dict)  # never crafts: the PoisonSet exists
    manifests: dict = field(default_factory=dict)  # attack -> the manifest of the PoisonSet `apply` loaded

    @property
    def crafts(self) -> dict[str, str]:
        return {}

    def mask(self, n: int, device=None) -> torch.Tensor:
        if self.indices is None:
            raise RuntimeError("PoisonSetPlan.mask before apply")
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.indices] = True
        return mask.to(device) if device is not None else mask

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor:
        """Load the PoisonSet (verified: sha256, dataset) and write clamp(x + δ, 0, 1) into its rows of `train_x`."""
        from ... import poisons

        poison = poisons.load(results_root, self.poison_id)
        indices, n = poison.indices, len(train_x)
        if len(indices) and (indices.min() < 0 or indices.max() >= n or len(torch.unique(indices)) != len(indices)):
            raise PoisonbenchError(f"poison set {self.poison_id}: its rows are not distinct rows of the train split")
        self.indices = indices
        self.tensor_sha256[self.attack] = poison.manifest["tensor_sha256"]
        self.manifests[self.attack] = poison.manifest
        rows = indices.to(train_x.device)
        train_x[rows] = (train_x[rows] + poison.delta.to(train_x.device, train_x.dtype)).clamp_(0, 1)
        return train_x


def plan_poison_set(data, poison_id: str, results_root=None) -> PoisonSetPlan:
    """The plan of `defend --poison-set`, from the manifest alone (cheap; `apply` loads and verifies the tensors):
    the PoisonSet must exist, hash to its id and be made for `data`."""
    from ...poisons import check_poison_id, spec_of

    check_poison_id(poison_id, "--poison-set ")
    spec, manifest = spec_of(results_root, poison_id, data)
    n, count = len(data.train), int(manifest["count"])
    config = {
        "kind": "poison-set",
        "poison_id": poison_id,
        "attack": spec.attack,
        "eps": spec.eps,
        "ratio": count / n,  # the fraction of the train split poisoned (`report`'s ρ)
        "poisoned": count,
        "label": f"poison set {poison_id} ({spec.attack}, {count} of {n} rows)",
    }
    return PoisonSetPlan(poison_id, spec.attack, config)


class PoisonSetScenario(Scenario):
    """Every row one PoisonSet covers poisoned: a `craft --budget` < 1, or the paper's own mix imported with
    `poisons import` (not one of the paper's tables)."""

    name = "poison-set"
    summary = "exactly one existing PoisonSet (--poison-set ID), every row it covers poisoned"

    def validate(self, spec) -> None:
        from ...poisons import check_poison_id

        if spec.poison_set is None:
            raise PoisonbenchError("scenario 'poison-set' needs --poison-set ID")
        check_poison_id(spec.poison_set, "--poison-set ")
        if spec.poison_ratio > 0 or spec.attacks is not None or spec.poison_sets:
            raise PoisonbenchError(NO_MIX_WITH_POISON_SET)

    def plan(self, spec, data, trial: int) -> PoisonSetPlan:
        return plan_poison_set(data, spec.poison_set, spec.results)
