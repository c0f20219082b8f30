"""The scenario interface (docs/engine.md, "Scenarios"): what `defend` trains, on which rows, with which model, measured
how.

A scenario is a class in the `SCENARIOS` registry. For one trial it gives

- `plan(spec, data, trial)`: the poisons (a plan with `config`, `apply`, `mask`, `tensor_sha256`), or None for
  clean training. Planning is cheap and never crafts; `apply` crafts what is missing.
- `train_rows(data, trial, plan)`: the rows of the train split the model trains on (None: all of them; the
  transfer scenario trains on 10 % of the split).
- `build_model(request)`: the model, from scratch (the default) or around a cached pre-trained extractor whose
  frozen modules the engine keeps in eval mode.
- `metrics(model, tensors, plan)`: what it adds to the record's metrics (attack success, for targeted scenarios).
- `victim_ref(model, request)`: the model the run trains, by content (the record's `inputs.victim`).
- `threat(data, plan)`: what the defense may assume about the attack (poisonbench.engine.threat): the kind, and a
  targeted attack's budget.
- `attacker_model(spec, data, plan)`: the model the trial's poisons were crafted against (id, attacker seed), whose
  seed the victim's must not share (`poisonbench.core.seeds`); `init_model` the one `--same-init` starts the victim
  from, and `check_same_init(spec)` refuses that option where there is none.

A record keeps `config.scenario` (the scenario's name) apart from `config.poison.kind` (what the poisons are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from ...core.errors import PoisonbenchError
from ...engine.models import build_model
from ...engine.threat import Threat

if TYPE_CHECKING:
    from ..spec import DefendSpec


class PoisonPlan(Protocol):
    """One trial's poisons: `config` (in the run id), `apply` (crafts what is missing and writes x + δ into the
    float train tensor), `mask` (the poisoned rows, known after `apply`), `tensor_sha256` (the tensors used)."""

    config: dict
    tensor_sha256: dict
    crafted: dict  # poison id -> whether `apply` crafted it (False: it was on disk)
    manifests: dict  # attack -> the manifest of the PoisonSet `apply` used (the record's `inputs.poisons`)

    @property
    def crafts(self) -> dict[str, str]:
        """{poison id: attack} of the PoisonSets `apply` crafts when missing."""
        ...

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor: ...

    def mask(self, n: int, device=None) -> torch.Tensor: ...


@dataclass(frozen=True)
class AttackerModel:
    """A model trained for crafting (engine.model_cache): workspace kind, id, attacker seed, architecture."""

    kind: str  # "surrogates" | "extractors"
    id: str
    seed: int
    model: str

    @property
    def label(self) -> str:
        return f"{self.kind.rstrip('s')} {self.id}"


def attacker_model_of(attack, data) -> AttackerModel | None:
    """The model attack instance `attack` crafts against on `data` (None if it trains none)."""
    from ...core.hashing import short_hash

    found = attack.model_spec(data)
    if found is None:
        return None
    kind, spec = found
    return AttackerModel(kind, short_hash(spec), spec["seed"], spec["model"])


def untargeted_surrogate(data) -> AttackerModel:
    """The surrogate the untargeted attacks share (the paper recipe on the family's default model)."""
    from ...attacks.surrogate import KIND, surrogate_spec
    from ...core.hashing import short_hash

    spec = surrogate_spec(data)
    return AttackerModel(KIND, short_hash(spec), spec["seed"], spec["model"])


@dataclass
class ModelRequest:
    """What a scenario needs to build the run's model."""

    model: str  # registry name (config["model"])
    dataset: Any  # poisonbench.data.Dataset
    seed: int  # the run's seed (model initialisation)
    device: torch.device
    results_root: Any = None
    reporter: Any = None  # spec.Reporter, for a long pre-training
    compile: str = "auto"
    accel: str = "auto"


class Scenario:
    """Base class: clean training from scratch on the whole train split, no extra metrics."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def validate(self, spec: DefendSpec) -> None:
        """Checks of the spec's poison options that need no data (raise PoisonbenchError)."""

    def plan(self, spec: DefendSpec, data, trial: int) -> PoisonPlan | None:
        return None

    def train_rows(self, data, trial: int, plan: PoisonPlan | None) -> torch.Tensor | None:
        return None

    def build_model(self, request: ModelRequest) -> nn.Module:
        return build_model(request.model, request.dataset, seed=request.seed)

    def metrics(self, model: nn.Module, tensors: dict, plan: PoisonPlan | None) -> dict:
        return {}

    def victim_ref(self, model: nn.Module, request: ModelRequest) -> dict:
        """The record's `inputs.victim` (experiment.run_inputs) for `model`, just built by `build_model(request)`:
        a network from scratch, named by architecture, seed and the sha256 of its initial weights."""
        from ...engine.model_cache import weights_sha256

        return {"kind": "from-scratch", "model": request.model, "seed": request.seed,
                "init_sha256": weights_sha256(model.state_dict())}

    def threat(self, data, plan: PoisonPlan | None) -> Threat:
        """Untargeted poisons when there is a plan (the mix, a PoisonSet), none otherwise."""
        return Threat("untargeted" if plan is not None else "clean")

    def attacker_model(self, spec: DefendSpec, data, plan: PoisonPlan | None) -> AttackerModel | None:
        """The model this trial's poisons were crafted against (None: none known)."""
        return None

    def init_model(self, spec: DefendSpec, data, plan: PoisonPlan | None) -> AttackerModel | None:
        """The model whose initialisation and seed `--same-init` gives the victim (default: `attacker_model`)."""
        return self.attacker_model(spec, data, plan)

    def victim_config(self, spec: DefendSpec, plan: PoisonPlan | None) -> dict:
        """What the scenario adds to the run's config (its identity): nothing by default, so the run ids of every
        scenario that adds nothing stay as they were (transfer: `threat`, `head_bn`)."""
        return {}

    def check_same_init(self, spec: DefendSpec) -> None:
        """Refuse `--same-init` (one line, before any data is read) where there is no attacker model to start from."""
        raise PoisonbenchError(f"--same-init: scenario {self.name!r} has no surrogate to start the victim from (it "
                               "applies to scratch, untargeted and clean runs)")


def reporter_progress(reporter):
    """Adapt a spec.Reporter (start/batch/stop) to the attacks' progress(description, done, total)."""
    if reporter is None:
        return None, lambda: None
    state = {"description": None}

    def progress(description: str, completed: int, total: int) -> None:
        if description != state["description"]:
            if state["description"] is not None:
                reporter.stop()
            reporter.start(f"craft {description}", 1)
            state["description"] = description
        reporter.batch(0, completed, total)

    def finish() -> None:
        if state["description"] is not None:
            reporter.stop()
            state["description"] = None

    return progress, finish
