"""The targeted scenarios of Table III (design.md §4, paper §VI-A2): `scratch` (GM, MP) and `transfer` (BP, FC).

Per trial t (seed s = base seed + t) the plan names a target test image, its class, an intended class and the
poisons' base rows (poisonbench.targets: drawn from s, fixed by `--target I --intended C`, or setup `i + t` of a
`--setup` file), and the PoisonSet the attack crafts for them (its id hashes all of it). `apply` crafts it once
(concurrent jobs wait for the one writer) and writes x + δ into the base rows.

- `scratch`: the victim trains from scratch on the whole poisoned train split.
- `transfer`: the victim is the pre-trained model of `poisonbench.pretrained` (trained on the clean 90 % of the
  split, cached, shared by every trial, attack and defense) with its feature extractor frozen (BatchNorm in eval
  mode: the engine keeps frozen modules in eval mode) and its head re-initialised and trained on the transfer set
  (the other 10 %) with the poisons. A setup file's base images outside the transfer set join it.

The record gets the attack's success: the final model's prediction on the target, its softmax, and `success`
(prediction == intended class). `defend --poison-set ID` on a targeted PoisonSet (crafted, or imported from another
toolkit with `poisons import`) runs the scenario its spec names on that one PoisonSet in every trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attacks import ATTACKS
from ..attacks.base import Target
from ..defenses.threat import Threat
from ..errors import PoisonbenchError
from ..models import build_model
from .base import ModelRequest, Scenario, reporter_progress

TARGETED_SCENARIOS = ("scratch", "transfer")


@dataclass
class TargetedPlan:
    """One trial's targeted poisons: the PoisonSet `spec` (crafted by `apply` if missing) and its `target`."""

    dataset: object
    spec: object  # poisons.CraftSpec
    target: Target
    config: dict
    tensor_sha256: dict = field(default_factory=dict)
    crafted: dict = field(default_factory=dict)  # poison id -> whether `apply` crafted it (False: it was on disk)

    @property
    def crafts(self) -> dict[str, str]:
        """{poison id: attack} of the PoisonSets `apply` uses, crafting them when missing (a sweep's prepare step)."""
        return {self.spec.poison_id: self.spec.attack}

    @property
    def rows(self) -> torch.Tensor:
        return torch.tensor(sorted(self.target.rows), dtype=torch.long)

    def mask(self, n: int, device=None) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.rows] = True
        return mask.to(device) if device is not None else mask

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor:
        from .. import poisons

        progress, finish = reporter_progress(reporter)
        try:
            poison, cached = poisons.craft(self.spec, self.dataset, results_root, device or train_x.device, progress,
                                           compile=compile, accel=accel)
            self.crafted[self.spec.poison_id] = not cached
        finally:
            finish()
        self.tensor_sha256[self.spec.attack] = poison.manifest["tensor_sha256"]
        rows = self.rows
        delta = poison.rows_for(rows).to(train_x.device, train_x.dtype)
        rows = rows.to(train_x.device)
        train_x[rows] = (train_x[rows] + delta).clamp_(0, 1)
        return train_x


def target_config(attack: str, spec, target: Target, n: int, extra: dict | None = None) -> dict:
    """`config.poison` of a targeted run (docs/metrics.md): what Table III and Figs. 3–4 read."""
    params = {k: v for k, v in spec.params.items() if k not in ("surrogate_recipe", "surrogate_epochs")}
    imported = {}
    if "file_sha256" in params:  # poisons made elsewhere: each trial's file has its own hash and measured ‖δ‖∞
        imported = {"file_sha256": params.pop("file_sha256"), "eps_measured": spec.eps}
    return {
        "kind": "targeted",
        "attack": attack,
        **({"eps": spec.eps} if not imported else imported),
        "ratio": len(target.rows) / n,  # the fraction of the train split poisoned
        "poisoned": len(target.rows),
        "params": params,
        "target_index": target.index,
        "target_class": target.true_class,
        "intended_class": target.intended_class,
        "poison_id": spec.poison_id,
        "label": f"{attack} target {target.index} ({target.true_class}→{target.intended_class})",
        **(extra or {}),
    }


def victim_recipe(spec) -> tuple[str, int | None]:
    """The recipe the run trains with (name, epochs override): the surrogate / extractor is trained with it too."""
    return spec.recipe, spec.recipe_overrides.get("epochs")


class Targeted(Scenario):
    """Shared by `scratch` and `transfer`: plans, attack success. Subclasses set `name` and the model."""

    def validate(self, spec) -> None:
        if spec.poison_ratio > 0 or spec.attacks is not None or spec.poison_sets:
            raise PoisonbenchError(f"scenario {self.name!r} is targeted: it takes --attack (gm, bp, fc) or "
                                   "--poison-set, not the untargeted mix's --poison-ratio, --attacks or --poisons")
        if spec.attack is None and spec.poison_set is None:
            raise PoisonbenchError(f"scenario {self.name!r} needs --attack NAME (a targeted attack: "
                                   f"{', '.join(targeted_attacks())}) or --poison-set ID")
        if spec.attack is not None:
            if spec.poison_set is not None:
                raise PoisonbenchError("give --attack (craft each trial's poisons) or --poison-set (one existing "
                                       "PoisonSet), not both")
            cls = ATTACKS.get(spec.attack)
            if not cls.targeted:
                raise PoisonbenchError(f"--attack {spec.attack!r} is untargeted; the targeted attacks are "
                                       f"{', '.join(targeted_attacks())} (the untargeted mix: --poison-ratio)")
        if (spec.target is None) != (spec.intended is None):
            raise PoisonbenchError("--target and --intended go together (the test image and the class it should be "
                                   "taken for)")
        if spec.setup is not None and spec.target is not None:
            raise PoisonbenchError("give --setup FILE or --target/--intended, not both")
        from ..targets import check_setup_index

        check_setup_index(spec.setup, spec.setup_index)
        if spec.budget is not None:
            from ..attacks.base import check_budget

            check_budget(spec.budget)
        if spec.eps is not None:
            from ..attacks.base import check_eps

            check_eps(spec.eps)

    def plan(self, spec, data, trial: int) -> TargetedPlan:
        if spec.poison_set is not None:
            return self._plan_poison_set(spec, data)
        from ..poisons import craft_spec
        from ..targets import draw_target, setup_target

        seed = spec.seed + trial
        cls = ATTACKS.get(spec.attack)
        budget = cls.default_budget() if spec.budget is None else spec.budget
        extra = {}
        if spec.setup is not None:
            target = setup_target(data, spec.setup, spec.setup_index + trial)
            extra["setup"] = {"file": str(spec.setup), "index": spec.setup_index + trial}
            budget = len(target.rows) / len(data.train)
        else:
            # the default budget in transfer, 1 %, is the intended class's whole share of a balanced transfer set
            # (paper §VI-A2); where a class is smaller (full MNIST's 5s) the default takes that share, never more
            capped = spec.budget is None and self.name == "transfer"
            target = draw_target(data, seed, self.name, budget, spec.target, spec.intended, cap=capped)
            budget = len(target.rows) / len(data.train) if capped else budget
        recipe, epochs = victim_recipe(spec)
        params = {"scenario": self.name, "surrogate_recipe": recipe, "surrogate_epochs": epochs,
                  **spec.attack_params}
        cspec = craft_spec(data, spec.attack, eps=spec.eps, budget=budget, seed=seed, target=target, **params)
        return TargetedPlan(data, cspec, target, target_config(spec.attack, cspec, target, len(data.train), extra))

    def _plan_poison_set(self, spec, data) -> TargetedPlan:
        from ..poisons import spec_of

        cspec, _ = spec_of(spec.results, spec.poison_set, data)
        if cspec.target is None:
            raise PoisonbenchError(f"poison set {spec.poison_set} is untargeted; scenario {self.name!r} trains on a "
                                   "targeted one")
        target = Target.from_dict(cspec.target)
        if target.rows is None:
            raise PoisonbenchError(f"poison set {spec.poison_set} does not name its poisoned rows")
        return TargetedPlan(data, cspec, target, target_config(cspec.attack, cspec, target, len(data.train),
                                                               {"poison_set": spec.poison_set}))

    def threat(self, data, plan) -> Threat:
        """A targeted attack whose budget (its number of poisons) the defender knows, as in the filter paper."""
        if plan is None:
            return Threat("clean")
        return Threat("targeted", len(plan.target.rows), len(data.train), extractor=self.name == "transfer")

    def metrics(self, model, tensors, plan) -> dict:
        """Attack success (paper §VI-A2, "Metrics"): the final model's prediction on the target test image."""
        if plan is None:
            return {}
        image = tensors["test"][0][plan.target.index:plan.target.index + 1]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model(image).float(), 1)[0].cpu()
        model.train(was_training)
        pred = int(probs.argmax())
        return {"target_prediction": pred, "target_probs": [round(float(p), 6) for p in probs],
                "target_intended_prob": round(float(probs[plan.target.intended_class]), 6),
                "attack_success": pred == plan.target.intended_class}


class Scratch(Targeted):
    name = "scratch"
    summary = "targeted (Table III: GM, MP): poisons in the train split, the victim trained from scratch"


class Transfer(Targeted):
    name = "transfer"
    summary = ("targeted (Table III: BP, FC): a pre-trained extractor frozen, its head re-initialised and trained on "
               "the 10 % transfer set with the poisons")

    def __init__(self):
        self.recipe: tuple[str, int | None] = ("paper", None)

    def plan(self, spec, data, trial: int) -> TargetedPlan:
        from ..pretrained import transfer_split

        transfer_split(data)  # a pre-training split too small fails before anything is crafted
        self.recipe = victim_recipe(spec)
        return super().plan(spec, data, trial)

    def train_rows(self, data, trial: int, plan) -> torch.Tensor:
        from ..pretrained import transfer_split

        rows = transfer_split(data)[1]
        if plan is not None:
            rows = torch.unique(torch.cat([rows, plan.rows]))  # sorted; a setup's bases outside it join it
        return rows

    def build_model(self, request: ModelRequest):
        from ..pretrained import load_or_train_extractor

        name, epochs = self.recipe
        progress, finish = reporter_progress(request.reporter)
        try:
            model, self.extractor_info = load_or_train_extractor(
                request.dataset, request.device, model_name=request.model, recipe=name,
                overrides={"epochs": epochs} if epochs is not None else None, results_root=request.results_root,
                progress=progress, accel=request.accel)
        finally:
            finish()
        model.requires_grad_(False)
        fresh = build_model(request.model, request.dataset, seed=request.seed)
        model.head = fresh.head.to(request.device)  # re-initialised from the run's seed, trainable
        return model


def targeted_attacks() -> list[str]:
    return [n for n in ATTACKS.names() if ATTACKS.get(n).targeted]
