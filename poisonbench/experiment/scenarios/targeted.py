"""The targeted scenarios of Table III (docs/engine.md, "Targeted scenarios"; paper §VI-A2): `scratch` (GM, MP) and
`transfer` (BP, FC).

Per trial t (seed s = base seed + t) the plan names a target test image, its class, an intended class and the
poisons' base rows (poisonbench.attacks.targets: drawn from s, fixed by `--target I --intended C`, or setup `i + t` of a
`--setup` file), and the PoisonSet the attack crafts for them (its id hashes all of it). `apply` crafts it once
(concurrent jobs wait for the one writer) and writes x + δ into the base rows.

- `scratch`: the victim trains from scratch on the whole poisoned train split, seeded apart from the surrogate
  (`poisonbench.core.seeds`), or with `--same-init` from the surrogate's initialisation and seed (forest's
  `--retrain_from_init`), recorded as `config.same_init`.
- `transfer`: the victim is the pre-trained model of `poisonbench.engine.pretrained` (trained on the clean 90 % of the
  split, cached, shared by every trial, attack and defense) with its feature extractor frozen and its head
  re-initialised and trained on the transfer set (the other 10 %) with the poisons. A setup file's base images
  outside the transfer set join it. `--head-bn train` (the default, HINT's code) keeps the frozen extractor's
  BatchNorm layers in train mode while the head trains (batch statistics, running statistics updated); `eval`
  freezes them (`model.frozen_bn`, read by `hooks.set_train_mode`). `--threat gray` (the default, the
  paper's) crafts the poisons on the attacker's own extractor (pre-trained like the victim's, another seed);
  `white` on the victim's. Both are recorded as `config.threat` and `config.head_bn` of transfer runs only.

The model the poisons are crafted against is trained with the victim's resolved recipe and model (`surrogate_params`:
every recipe field, so `--lr`, `--augment`, `--model`, ... change the surrogate, the extractor and the poison id).
The record gets the attack's success: the final model's prediction on the target, its softmax, and `success`
(prediction == intended class). `defend --poison-set ID` on a targeted PoisonSet (crafted, or imported from another
toolkit with `poisons import`) runs the scenario its spec names on that one PoisonSet in every trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...attacks import ATTACKS
from ...attacks.base import Target
from ...attacks.targeted import SURROGATE_PARAMS
from ...core.errors import PoisonbenchError
from ...engine.models import DEFAULT_MODEL, build_model
from ...engine.recipes import default_recipe
from ...engine.threat import Threat
from ..victims import DEFAULT_HEAD_BN, victim_head_bn
from .base import AttackerModel, ModelRequest, Scenario, attacker_model_of, reporter_progress

THREATS = ("gray", "white")  # attacks.targeted.THREATS: whose extractor a transfer attack crafts on
DEFAULT_THREAT = "gray"  # paper §VI-A2: the attacker does not know the victim's weights (docs/fidelity.md)
HEAD_BN_MODES = ("train", "eval")


@dataclass
class TargetedPlan:
    """One trial's targeted poisons: the PoisonSet `spec` (crafted by `apply` if missing) and its `target`."""

    dataset: object
    spec: object  # poisons.CraftSpec
    target: Target
    config: dict
    tensor_sha256: dict = field(default_factory=dict)
    crafted: dict = field(default_factory=dict)  # poison id -> whether `apply` crafted it (False: it was on disk)
    manifests: dict = field(default_factory=dict)  # attack -> the manifest of the PoisonSet `apply` used

    @property
    def crafts(self) -> dict[str, str]:
        """{poison id: attack} of the PoisonSets `apply` uses, crafting them when missing (a sweep's prepare step)."""
        return {self.spec.poison_id: self.spec.attack}

    @property
    def rows(self) -> torch.Tensor:
        return torch.tensor(sorted(self.target.rows), dtype=torch.long)  # `apply` fills rows an attack chose

    def mask(self, n: int, device=None) -> torch.Tensor:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.rows] = True
        return mask.to(device) if device is not None else mask

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor:
        from ... import poisons

        progress, finish = reporter_progress(reporter)
        try:
            poison, cached = poisons.craft(self.spec, self.dataset, results_root, device or train_x.device, progress,
                                           compile=compile, accel=accel)
            self.crafted[self.spec.poison_id] = not cached
        finally:
            finish()
        if self.target.rows is None:  # rows the attack chose when it crafted (bases=nearest)
            self.target = Target(self.target.index, self.target.true_class, self.target.intended_class,
                                 tuple(int(r) for r in poison.indices))
        self.tensor_sha256[self.spec.attack] = poison.manifest["tensor_sha256"]
        self.manifests[self.spec.attack] = poison.manifest
        rows = self.rows
        delta = poison.rows_for(rows).to(train_x.device, train_x.dtype)
        rows = rows.to(train_x.device)
        train_x[rows] = (train_x[rows] + delta).clamp_(0, 1)
        return train_x


def target_config(attack: str, spec, target: Target, n: int, extra: dict | None = None,
                  shown: frozenset = frozenset()) -> dict:
    """`config.poison` of a targeted run (docs/metrics.md): what Table III and Figs. 3–4 read. The surrogate's
    recipe and model are the run's own (`config.recipe`, `config.model`) and stay out of its params, but for those in
    `shown` (given with `--attack-params`: a surrogate trained otherwise than the victim)."""
    params = {k: v for k, v in spec.params.items() if k not in SURROGATE_PARAMS or k in shown}
    from ...attacks.targets import poisoned_count

    count = poisoned_count(target, spec.budget, n)
    imported = {}
    if "file_sha256" in params:  # poisons made elsewhere: each trial's file has its own hash and measured ‖δ‖∞
        imported = {"file_sha256": params.pop("file_sha256"), "eps_measured": spec.eps}
    return {
        "kind": "targeted",
        "attack": attack,
        **({"eps": spec.eps} if not imported else imported),
        "ratio": count / n,  # the fraction of the train split poisoned
        "poisoned": count,
        "params": params,
        "target_index": target.index,
        "target_class": target.true_class,
        "intended_class": target.intended_class,
        "poison_id": spec.poison_id,
        # the model crafted against (id of its inputs and attacker seed): one per setting, so runs crafted against
        # another one (another recipe given to the attack, or before issue 54 gave it its own seed) never share a
        # Table III column with these
        **({"surrogate": spec.surrogate} if spec.surrogate else {}),
        "label": f"{attack} target {target.index} ({target.true_class}→{target.intended_class})",
        **(extra or {}),
    }


def victim_recipe(spec, data) -> tuple[str, dict]:
    """The recipe the run trains with: (name, its non-None overrides); a targeted run's default is the family's
    targeted recipe (`recipes.default_recipe`, as `checks.recipe_name` resolves it)."""
    overrides = {k: v for k, v in spec.recipe_overrides.items() if v is not None}
    return spec.recipe or default_recipe(data.family, targeted=True), overrides


def surrogate_params(spec, data) -> dict:
    """The attack parameters that train the surrogate / extractor as the victim: the run's recipe (name and every
    override) and model."""
    name, overrides = victim_recipe(spec, data)
    return {"surrogate_recipe": name, "surrogate_model": spec.model or DEFAULT_MODEL[data.family],
            **{f"surrogate_{k}": list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}


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
        from ...attacks.targets import check_target_choice

        check_target_choice(spec.target, spec.intended, spec.setup)  # --setup-index: checks.validate, every scenario
        if spec.budget is not None:
            from ...attacks.base import check_budget

            check_budget(spec.budget)
        if spec.eps is not None:
            from ...attacks.base import check_eps

            check_eps(spec.eps, ATTACKS.get(spec.attack).norm if spec.attack is not None else "linf")

    def plan(self, spec, data, trial: int) -> TargetedPlan:
        if spec.poison_set is not None:
            return self._plan_poison_set(spec, data)
        from ...attacks.targets import draw_target, setup_target
        from ...poisons import craft_spec

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
        threat = {"threat": spec.threat or DEFAULT_THREAT} if self.name == "transfer" else {}
        params = {"scenario": self.name, **surrogate_params(spec, data), **threat, **spec.attack_params}
        target = cls(data.family, **params).aim(target, fixed=spec.setup is not None)  # bases=nearest: rows later
        cspec = craft_spec(data, spec.attack, eps=spec.eps, budget=budget, seed=seed, target=target, **params)
        shown = frozenset(k for k in spec.attack_params if k in SURROGATE_PARAMS)
        return TargetedPlan(data, cspec, target, target_config(spec.attack, cspec, target, len(data.train), extra,
                                                               shown))

    def _plan_poison_set(self, spec, data) -> TargetedPlan:
        from ...poisons import spec_of

        cspec, _ = spec_of(spec.results, spec.poison_set, data)
        if cspec.target is None:
            raise PoisonbenchError(f"poison set {spec.poison_set} is untargeted; scenario {self.name!r} trains on a "
                                   "targeted one")
        target = Target.from_dict(cspec.target)  # no rows (bases=nearest): `apply` takes the PoisonSet's
        return TargetedPlan(data, cspec, target, target_config(cspec.attack, cspec, target, len(data.train),
                                                               {"poison_set": spec.poison_set}))

    def attacker_model(self, spec, data, plan) -> AttackerModel | None:
        """The surrogate / extractor the trial's PoisonSet was crafted against (None: an attack that trains none,
        or a `--poison-set` whose attack is not registered here)."""
        if plan is None or plan.spec.attack not in ATTACKS:
            return None
        cls = ATTACKS.get(plan.spec.attack)
        if not cls.uses_surrogate:
            return None
        try:
            return attacker_model_of(cls(data.family, **plan.spec.params), data)
        except PoisonbenchError:  # a PoisonSet crafted by another version of the attack: nothing to check against
            return None

    def check_same_init(self, spec) -> None:
        if spec.attack is None:
            raise PoisonbenchError("--same-init needs --attack (the attack's surrogate is the victim's start); a "
                                   "--poison-set does not say how its surrogate was seeded")
        if not ATTACKS.get(spec.attack).uses_surrogate:
            raise PoisonbenchError(f"--same-init: attack {spec.attack!r} trains no surrogate to start the victim "
                                   "from")

    def threat(self, data, plan) -> Threat:
        """A targeted attack whose budget (its number of poisons) the defender knows, as in the filter paper."""
        if plan is None:
            return Threat("clean")
        from ...attacks.targets import poisoned_count

        return Threat("targeted", poisoned_count(plan.target, plan.spec.budget, len(data.train)), len(data.train),
                      extractor=self.name == "transfer")

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
        self.recipe: tuple[str, dict] = ("paper", {})
        self.head_bn = DEFAULT_HEAD_BN  # until `plan` knows the method

    def check_same_init(self, spec) -> None:
        raise PoisonbenchError("--same-init: the transfer victim freezes a pre-trained extractor and trains a new "
                               "head; the option applies to scratch, untargeted and clean runs")

    def plan(self, spec, data, trial: int) -> TargetedPlan:
        from ...engine.pretrained import transfer_split

        transfer_split(data)  # a pre-training split too small fails before anything is crafted
        self.recipe = victim_recipe(spec, data)
        self.head_bn = victim_head_bn(spec.head_bn, spec.method)
        return super().plan(spec, data, trial)

    def victim_config(self, spec, plan) -> dict:
        """`config.threat` (whose extractor the poisons were crafted on: the PoisonSet's; a PoisonSet crafted before
        `--threat` was white-box, one imported without `poisons import --threat` is `unknown`) and `config.head_bn`
        (the victim's BatchNorm mode while the head trains)."""
        threat = plan.spec.params.get("threat") if plan is not None else None
        if threat is None and plan is not None and "file_sha256" in plan.spec.params:
            from ..run_inputs import DEFAULT_IMPORT_THREAT

            threat = DEFAULT_IMPORT_THREAT  # imported before `poisons import --threat`: nobody declared it
        return {"threat": threat or "white", "head_bn": victim_head_bn(spec.head_bn, spec.method)}

    def train_rows(self, data, trial: int, plan) -> torch.Tensor:
        from ...engine.pretrained import transfer_split

        rows = transfer_split(data)[1]
        if plan is not None:
            rows = torch.unique(torch.cat([rows, plan.rows]))  # sorted; a setup's bases outside it join it
        return rows

    def build_model(self, request: ModelRequest):
        from ...engine.pretrained import load_or_train_extractor

        name, overrides = self.recipe
        progress, finish = reporter_progress(request.reporter)
        try:
            model, self.extractor_info = load_or_train_extractor(
                request.dataset, request.device, model_name=request.model, recipe=name, overrides=overrides,
                results_root=request.results_root, progress=progress, accel=request.accel)
        finally:
            finish()
        model.requires_grad_(False)
        fresh = build_model(request.model, request.dataset, seed=request.seed)
        model.head = fresh.head.to(request.device)  # re-initialised from the run's seed, trainable
        model.frozen_bn = self.head_bn  # train: the frozen extractor's BatchNorm in train mode (set_train_mode)
        return model

    def victim_ref(self, model, request: ModelRequest) -> dict:
        """The frozen extractor the victim trains a new head on (kind, id, weights sha256; the record's
        `inputs.victim`), and the head's seed."""
        from ...engine.pretrained import EXTRACTOR_KIND
        from ..run_inputs import model_ref

        return {**model_ref(self.extractor_info, EXTRACTOR_KIND), "model": request.model, "head_seed": request.seed}


def targeted_attacks() -> list[str]:
    return [n for n in ATTACKS.names() if ATTACKS.get(n).targeted]
