"""The backdoor scenario (issue 85; docs/engine.md, "Scenarios"; the metric: docs/metrics.md, "Attack success
rate"): `defend --attack badnets` (blend, sig, lc, sleeper-agent), or `--poison-set ID` of a backdoor PoisonSet.

Per trial t (seed s = base seed + t) the attack crafts (or reuses) its PoisonSet with seed s: its rows drawn from s,
its trigger from its parameters. `apply` writes the triggered images into their rows and `relabel` gives the
poisoned rows their new labels (dirty label; clean label keeps every label); the victim trains from scratch on the
whole split. The record adds, beside the clean test accuracy, the attack success rate: the share of the test images
whose class is not the target that the final model classifies as the target once the trigger is stamped on them
(BackdoorBench's `bd_test`), with its counts (`asr_hits` of `asr_n`) so that the report can give a Wilson interval,
and the same share without the trigger (`clean_target_rate`: how often the model says "target" anyway). An attack
with a source class (Sleeper Agent's `source_class`, in `config.poison.source_class`) counts that class's test
images only, as its authors measure it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...attacks import ATTACKS, backdoor_attacks
from ...attacks.backdoor import is_backdoor
from ...core.errors import PoisonbenchError
from ...engine.threat import Threat
from .base import AttackerModel, Scenario, attacker_model_of, reporter_progress


@dataclass
class BackdoorPlan:
    """One trial's backdoor: the PoisonSet `spec` (crafted by `apply` if missing, or an existing one by id)."""

    dataset: object
    spec: object  # poisons.CraftSpec
    config: dict
    poison_set: str | None = None  # an existing PoisonSet (`--poison-set`): loaded, never crafted
    indices: torch.Tensor | None = None  # known once `apply` has the PoisonSet
    labels: torch.Tensor | None = None  # the poisoned rows' new labels (dirty label), once applied
    trigger: object = None  # attacks.backdoor.Trigger, once applied
    tensor_sha256: dict = field(default_factory=dict)
    crafted: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)

    @property
    def target_class(self) -> int:
        return int(self.config["target_class"])

    @property
    def crafts(self) -> dict[str, str]:
        return {} if self.poison_set is not None else {self.spec.poison_id: self.spec.attack}

    def mask(self, n: int, device=None) -> torch.Tensor:
        if self.indices is None:
            raise RuntimeError("BackdoorPlan.mask before apply")
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.indices] = True
        return mask.to(device) if device is not None else mask

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor:
        from ... import poisons

        if self.poison_set is not None:
            poison = poisons.load(results_root, self.poison_set, self.dataset)
        else:
            progress, finish = reporter_progress(reporter)
            try:
                poison, cached = poisons.craft(self.spec, self.dataset, results_root, device or train_x.device,
                                               progress, compile=compile, accel=accel)
                self.crafted[self.spec.poison_id] = not cached
            finally:
                finish()
        if poison.trigger is None:
            raise PoisonbenchError(f"poison set {poison.poison_id} carries no trigger (not a backdoor PoisonSet)")
        indices, n = poison.indices, len(train_x)
        if len(indices) and (indices.min() < 0 or indices.max() >= n or len(torch.unique(indices)) != len(indices)):
            raise PoisonbenchError(f"poison set {poison.poison_id}: its rows are not distinct rows of the train split")
        self.indices, self.labels, self.trigger = indices, poison.labels, poison.trigger
        self.tensor_sha256[self.spec.attack] = poison.manifest["tensor_sha256"]
        self.manifests[self.spec.attack] = poison.manifest
        rows = indices.to(train_x.device)
        train_x[rows] = (train_x[rows] + poison.delta.to(train_x.device, train_x.dtype)).clamp_(0, 1)
        if (poison.manifest.get("backdoor") or {}).get("train_trigger"):  # LC: the trigger after δ, T(x + δ)
            train_x[rows] = poison.trigger.apply(train_x[rows])
        return train_x

    def relabel(self, train_y: torch.Tensor) -> torch.Tensor:
        """The train labels the victim sees: `train_y` with the poisoned rows' new labels (a copy; unchanged for a
        clean-label backdoor)."""
        if self.labels is None:
            return train_y
        out = train_y.clone()
        out[self.indices.to(out.device)] = self.labels.to(out.device, out.dtype)
        return out


def backdoor_config(spec, n: int, count: int, poison_set: str | None = None) -> dict:
    """`config.poison` of a backdoor run (docs/metrics.md): what the backdoor table and the matrix read."""
    target = int(spec.params.get("target_class", 0))
    source = spec.params.get("source_class")  # an attack with a source class: ASR over that class's images only
    return {
        "kind": "backdoor",
        "attack": spec.attack,
        "eps": spec.eps,
        "ratio": count / n,
        "poisoned": count,
        "params": dict(spec.params),
        "target_class": target,
        **({"source_class": int(source)} if source is not None else {}),
        "poison_id": spec.poison_id,
        **({"poison_set": poison_set} if poison_set else {}),
        "label": (f"{spec.attack} → class {target}" + (f" from class {int(source)}" if source is not None else "")
                  + f" ({count} of {n} rows)"),
    }


def attack_success_rate(model, x: torch.Tensor, y: torch.Tensor, trigger, target: int,
                        source: int | None = None) -> dict:
    """ASR (docs/metrics.md): of the test images whose class is not `target` (with a `source` class: whose class is
    `source`), the number the model classifies as `target` once triggered (`asr_hits` of `asr_n`), and the number it
    so classifies without the trigger."""
    from ...engine.training import predict

    keep = y != target if source is None else y == source
    n = int(keep.sum())
    if n == 0:  # no such test image (a source class the test split lacks): nothing to predict, no rate
        return {"asr": None, "asr_hits": 0, "asr_n": 0, "clean_target_rate": None, "clean_target_hits": 0}
    xs = x[keep]
    triggered = predict(model, trigger.apply(xs)).argmax(1)
    clean = predict(model, xs).argmax(1)
    hits = int((triggered == target).sum())
    base = int((clean == target).sum())
    return {"asr": hits / n, "asr_hits": hits, "asr_n": n, "clean_target_rate": base / n, "clean_target_hits": base}


class Backdoor(Scenario):
    name = "backdoor"
    summary = ("backdoor (issue 85: badnets, blend, sig, lc, sleeper-agent): triggered rows in the train split, the "
               "victim trained from scratch; the record adds the attack success rate on triggered non-target (a "
               "source class's) test images")

    def validate(self, spec) -> None:
        if spec.poison_ratio > 0 or spec.attacks is not None or spec.poison_sets:
            raise PoisonbenchError("scenario 'backdoor' takes --attack (a backdoor: "
                                   f"{', '.join(backdoor_attacks())}) or --poison-set, not the untargeted mix's "
                                   "--poison-ratio, --attacks or --poisons")
        given = [f for f, v in (("--target", spec.target), ("--intended", spec.intended), ("--setup", spec.setup))
                 if v is not None]
        if given:
            raise PoisonbenchError(f"{given[0]} belongs to the targeted scenarios (scratch, transfer); a backdoor's "
                                   "target class is its --attack-params target_class=C")
        if spec.attack is None and spec.poison_set is None:
            raise PoisonbenchError("scenario 'backdoor' needs --attack NAME (a backdoor: "
                                   f"{', '.join(backdoor_attacks())}) or --poison-set ID")
        if spec.attack is not None:
            if spec.poison_set is not None:
                raise PoisonbenchError("give --attack (craft each trial's poisons) or --poison-set (one existing "
                                       "PoisonSet), not both")
            if not is_backdoor(ATTACKS.get(spec.attack)):
                raise PoisonbenchError(f"--attack {spec.attack!r} is not a backdoor; the backdoors are "
                                       f"{', '.join(backdoor_attacks())}")
        elif spec.eps is not None or spec.budget is not None:
            raise PoisonbenchError("--eps and --budget size a craft; a --poison-set is used as it is")
        if spec.budget is not None:
            from ...attacks.base import check_budget

            check_budget(spec.budget)

    def plan(self, spec, data, trial: int) -> BackdoorPlan:
        from ...poisons import craft_spec, spec_of

        n = len(data.train)
        if spec.poison_set is not None:
            cspec, manifest = spec_of(spec.results, spec.poison_set, data)
            if "backdoor" not in manifest:
                raise PoisonbenchError(f"poison set {spec.poison_set} is not a backdoor's (its manifest names no "
                                       "trigger); scenario 'backdoor' trains on one")
            return BackdoorPlan(data, cspec, backdoor_config(cspec, n, int(manifest["count"]), spec.poison_set),
                                poison_set=spec.poison_set)
        cls = ATTACKS.get(spec.attack)
        budget = cls.default_budget() if spec.budget is None else spec.budget
        cspec = craft_spec(data, spec.attack, eps=spec.eps, budget=budget, seed=spec.seed + trial,
                           **spec.attack_params)
        attack = cls(data.family, **cspec.params)
        count = len(attack.choose_rows(data, budget, cspec.seed))  # cheap, and refuses a budget the class lacks
        return BackdoorPlan(data, cspec, backdoor_config(cspec, n, count))

    def threat(self, data, plan) -> Threat:
        """A backdoor whose budget (its number of poisoned rows) the defender knows, as spectral signatures' ε."""
        if plan is None:
            return Threat("clean")
        return Threat("backdoor", int(plan.config["poisoned"]), len(data.train))

    def metrics(self, model, tensors, plan) -> dict:
        if plan is None or plan.trigger is None:
            return {}
        x, y = tensors["test"]
        source = plan.config.get("source_class")
        return {"target_class": plan.target_class, **({"source_class": source} if source is not None else {}),
                **attack_success_rate(model, x, y, plan.trigger, plan.target_class, source)}

    def attacker_model(self, spec, data, plan) -> AttackerModel | None:
        """The surrogate an LC PoisonSet was crafted against (None for the model-free backdoors), whose seed the
        victim's must not share (`poisonbench.core.seeds`)."""
        if plan is None or plan.spec.attack not in ATTACKS or not ATTACKS.get(plan.spec.attack).uses_surrogate:
            return None
        try:
            return attacker_model_of(ATTACKS.get(plan.spec.attack)(data.family, **plan.spec.params), data)
        except PoisonbenchError:
            return None

    def check_same_init(self, spec) -> None:
        if spec.attack is None or not ATTACKS.get(spec.attack).uses_surrogate:
            raise PoisonbenchError("--same-init: this backdoor trains no surrogate to start the victim from (lc does)")
