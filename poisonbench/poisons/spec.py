"""What determines a PoisonSet (`CraftSpec`, whose hash is the poison id) and how it is resolved and checked."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..attacks import ATTACKS
from ..attacks.base import Target, check_budget, check_eps, check_seed
from ..core.errors import PoisonbenchError
from ..core.hashing import short_hash


@dataclass(frozen=True)
class CraftSpec:
    """Everything that determines a PoisonSet. `inputs()` is what the poison id hashes."""

    attack: str
    params: dict
    eps: float
    budget: float
    seed: int
    dataset: str
    dataset_fingerprint: str
    surrogate: str | None  # surrogate id (hash of its inputs) for surrogate-based attacks
    target: dict | None = None  # a targeted attack's `Target.to_dict()` (None: untargeted)

    def inputs(self) -> dict:
        inputs = {"attack": self.attack, "params": self.params, "eps": self.eps, "budget": self.budget,
                  "seed": self.seed, "dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint,
                  "surrogate": self.surrogate}
        if self.target is not None:  # only then: the poison ids of untargeted PoisonSets stay as they were
            inputs["target"] = self.target
        return inputs

    @property
    def poison_id(self) -> str:
        return short_hash(self.inputs())


SPEC_FIELDS = tuple(f.name for f in fields(CraftSpec))  # the manifest keys the poison id hashes
OPTIONAL_SPEC_FIELDS = ("target",)  # absent from untargeted manifests


def craft_spec(dataset, attack: str, eps: float | None = None, budget: float = 1.0, seed: int = 0,
               target: Target | None = None, **params) -> CraftSpec:
    """Validate the inputs (before anything is written) and resolve every default for the dataset family. A
    targeted attack needs a `target` (a test image and the class it should be taken for); an untargeted one takes
    none."""
    cls = ATTACKS.get(attack)
    check_budget(budget)
    check_seed(seed)
    instance = cls(dataset.family, **params)
    if eps is None:  # a backdoor's ε is its trigger's own bound, which its parameters set (attacks.backdoor)
        own = getattr(instance, "trigger_eps", None)
        eps = own(tuple(dataset.shape)) if own is not None else cls.default_eps(dataset.family, tuple(dataset.shape))
    eps = float(eps)
    check_eps(eps, cls.norm)
    check_target(dataset, cls, target)
    instance.check_data(dataset, eps)
    surrogate = instance.surrogate_ref(dataset)
    return CraftSpec(attack, instance.params, eps, float(budget), int(seed), dataset.name, dataset.fingerprint,
                     surrogate, target.to_dict() if target is not None else None)


def test_label(dataset, index: int) -> int:
    """The class of test image `index` (a target), refused in one line outside the test split."""
    if not 0 <= index < len(dataset.test):
        raise PoisonbenchError(f"target index {index} is outside the test split [0, {len(dataset.test)})")
    return int(dataset.test.y[index])


def check_target(dataset, attack_cls, target: Target | None) -> None:
    """A targeted attack has a target inside the test split, whose true class is its label and whose intended
    class is another valid class; fixed rows are distinct train rows. An untargeted attack has none."""
    name = attack_cls.name
    if target is None:
        if attack_cls.targeted:
            raise PoisonbenchError(f"attack {name!r} is targeted: give a target (--target I --intended C, or a "
                                   "setup file)")
        return
    if not attack_cls.targeted:
        raise PoisonbenchError(f"attack {name!r} is untargeted: it takes no target")
    classes = dataset.num_classes
    label = test_label(dataset, target.index)
    if target.true_class != label:
        raise PoisonbenchError(f"target {target.index} is of class {label}, not {target.true_class}")
    if not 0 <= target.intended_class < classes or target.intended_class == label:
        raise PoisonbenchError(f"intended class {target.intended_class} must be a class in [0, {classes}) other "
                               f"than the target's own ({label})")
    if target.rows is not None:
        n = len(dataset.train)
        if len(set(target.rows)) != len(target.rows) or not all(0 <= r < n for r in target.rows):
            raise PoisonbenchError(f"the target's poisoned rows must be distinct train rows in [0, {n})")
