"""The clean and untargeted scenarios (docs/engine.md, "Scenarios"). `plan_untargeted` is the paper's Table II mix.

⌊ρ·n⌋ train rows are poisoned, split equally among the attacks (the remainder goes to the first ones), on
disjoint rows drawn from a seed derived from the trial seed (not the seed itself: see `derived_seed`). Each attack
is crafted once over the whole train split (budget 1.0, crafting seed `CRAFT_SEED`) and every run takes its rows
from that artifact, so a six-ρ × five-trial curve crafts each attack once. Planning is cheap and never crafts:
poison ids are hashes of the crafting inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ...attacks import ATTACKS
from ...attacks.base import budget_count
from ...core.errors import PoisonbenchError
from ...core.hashing import derived_seed, short_hash
from .base import AttackerModel, Scenario, reporter_progress, untargeted_surrogate

# HINT's Table II mix, in the registry's order: PGD, DAP, DURP, DeepConfuse
# built in only: read at import, before plugins load, and a plugin never changes the default mix (nor its run ids)
UNTARGETED_ATTACKS = tuple(name for name, cls in ATTACKS.builtins().items() if cls.in_paper_mix)
ROW_STREAM = "untargeted-rows"  # the poisoned rows are drawn from derived_seed(trial seed, ROW_STREAM)
CRAFT_SEED = 0  # the artifacts are shared by all trials; trials differ in which rows they poison


@dataclass
class UntargetedPlan:
    dataset: object
    ratio: float
    attacks: list[str]
    seed: int
    specs: dict  # attack -> poisons.CraftSpec (budget 1.0)
    assignment: dict  # attack -> sorted int64 CPU tensor of train rows
    config: dict
    # attack -> sha256 of the PoisonSet tensors `apply` used: the poison ids hash only the crafting inputs, and a
    # craft's floats depend on device, threads and torch version, so a record also names the tensors themselves
    tensor_sha256: dict = field(default_factory=dict)
    crafted: dict = field(default_factory=dict)  # poison id -> whether `apply` crafted it (False: it was on disk)
    manifests: dict = field(default_factory=dict)  # attack -> the manifest of the PoisonSet `apply` used

    @property
    def crafts(self) -> dict[str, str]:
        """{poison id: attack} of the PoisonSets `apply` uses, crafting them when missing (a sweep's prepare step)."""
        return {self.specs[a].poison_id: a for a in self.attacks if len(self.assignment[a])}

    def mask(self, n: int, device=None) -> torch.Tensor:
        """Bool mask over the train split, True at poisoned rows."""
        mask = torch.zeros(n, dtype=torch.bool)
        for rows in self.assignment.values():
            mask[rows] = True
        return mask.to(device) if device is not None else mask

    def apply(self, train_x: torch.Tensor, results_root=None, device=None, reporter=None,
              compile: str = "auto", accel: str = "auto") -> torch.Tensor:
        """Craft any missing PoisonSet (with progress on `reporter`), then write clamp(x + δ, 0, 1) into the
        assigned rows of the float train tensor `train_x` (in place) and return it."""
        from ... import poisons

        device = device or train_x.device
        progress, finish = reporter_progress(reporter)
        try:
            for attack in self.attacks:
                rows = self.assignment[attack]
                if len(rows) == 0:
                    continue
                poison, cached = poisons.craft(self.specs[attack], self.dataset, results_root, device, progress,
                                               compile=compile, accel=accel)
                self.crafted[self.specs[attack].poison_id] = not cached
                self.tensor_sha256[attack] = poison.manifest["tensor_sha256"]
                self.manifests[attack] = poison.manifest
                delta = poison.rows_for(rows).to(train_x.device, train_x.dtype)
                rows_dev = rows.to(train_x.device)
                train_x[rows_dev] = (train_x[rows_dev] + delta).clamp_(0, 1)
        finally:
            finish()
        return train_x


def split_counts(k: int, m: int) -> list[int]:
    """k items over m attacks as equally as possible, the remainder to the first ones."""
    return [k // m + (1 if i < k % m else 0) for i in range(m)]


def check_attacks(attacks: list[str] | None) -> list[str]:
    """The mix's attacks (None: the paper's four), each registered and listed once; an empty list is an error."""
    if attacks is None:
        return list(UNTARGETED_ATTACKS)
    attacks = list(attacks)
    if not attacks or not all(attacks):
        raise PoisonbenchError(f"--attacks has an empty entry ({','.join(attacks)!r}); valid choices: "
                               f"{', '.join(ATTACKS.names())}, comma-separated")
    for a in attacks:
        ATTACKS.get(a)
    if len(set(attacks)) != len(attacks):
        raise PoisonbenchError(f"--attacks lists an attack twice: {','.join(attacks)}")
    return attacks


def parse_poison_sets(text: str | None) -> dict[str, str] | None:
    """`--poisons deepconfuse=ID,pgd=ID` → {attack: poison id}; None when not given."""
    from ...poisons import check_poison_id

    if text is None:
        return None
    chosen = {}
    for item in (t.strip() for t in text.split(",")):
        attack, sep, pid = (p.strip() for p in item.partition("="))
        if not sep or not attack or not pid:
            raise PoisonbenchError(f"--poisons takes ATTACK=POISON_ID pairs, comma-separated; got {item!r}")
        ATTACKS.get(attack)
        check_poison_id(pid, f"--poisons {attack}: ")
        if attack in chosen:
            raise PoisonbenchError(f"--poisons names attack {attack!r} twice")
        chosen[attack] = pid
    return chosen


def check_poison_sets(poison_sets: dict[str, str] | None, attacks: list[str]) -> None:
    """Every attack `--poisons` names must be in the mix `attacks` (defend would refuse it; no run can match)."""
    outside = [a for a in poison_sets or {} if a not in attacks]
    if outside:
        raise PoisonbenchError(f"--poisons names {outside[0]!r}, which is not in the mix ({','.join(attacks)})")


def chosen_spec(data, attack: str, poison_id: str, results_root=None):
    """The CraftSpec of an existing PoisonSet chosen with `--poisons`: it must be `attack`'s, made for this dataset
    split, and cover the whole train split (budget 1, as the mix's own artifacts)."""
    from ...poisons import spec_of

    spec, _ = spec_of(results_root, poison_id, data)
    if spec.attack != attack:
        raise PoisonbenchError(f"--poisons {attack}={poison_id}: that PoisonSet was crafted by {spec.attack!r}")
    if spec.budget != 1.0:
        raise PoisonbenchError(f"--poisons {attack}={poison_id}: crafted with --budget {spec.budget:g}; the mix "
                               "takes its rows from a PoisonSet of the whole train split (--budget 1)")
    return spec


def check_poison_ratio(ratio: float) -> None:
    """ρ, checked once per call before anything loads (`experiment.checks.validate`, `poisons export`): a fraction
    of the train split in [0, 1]; `plan_untargeted` takes it as checked."""
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0 and not math.isnan(ratio)):
        raise PoisonbenchError(f"poison ratio must be in [0, 1], got {ratio}")


def plan_untargeted(data, ratio: float, attacks=None, seed: int = 0, results_root=None,
                    poison_sets: dict[str, str] | None = None) -> UntargetedPlan:
    """The Table II plan for one trial (ρ = `ratio`, checked by `check_poison_ratio`). Cheap: checks the mix, draws
    rows, hashes crafting inputs; never crafts.

    `poison_sets` ({attack: poison id}, `defend --poisons`) replaces an attack's default artifact with an existing
    PoisonSet crafted with other options (e.g. DeepConfuse from DC's own generator); the record lists those that
    differ from the defaults under `poison_sets`."""
    from ...poisons import craft_spec

    attacks = check_attacks(attacks)
    n = len(data.train)
    k = budget_count(ratio, n)
    counts = split_counts(k, len(attacks))
    # not the trial seed itself: that is the engine's, whose first-epoch order is the same randperm(n)
    g = torch.Generator().manual_seed(derived_seed(seed, ROW_STREAM))
    perm = torch.randperm(n, generator=g)[:k]
    assignment, start = {}, 0
    for attack, c in zip(attacks, counts, strict=True):
        assignment[attack] = perm[start:start + c].sort().values
        start += c
    check_poison_sets(poison_sets, attacks)
    specs = {}
    for a in attacks:
        try:
            specs[a] = craft_spec(data, a, budget=1.0, seed=CRAFT_SEED)
        except PoisonbenchError:  # defaults that do not fit this dataset (LSP's patch size): `--poisons` may
            if a not in (poison_sets or {}):  # name a set crafted with other options
                raise
    chosen = {}
    for attack, pid in (poison_sets or {}).items():
        if attack not in specs or pid != specs[attack].poison_id:  # naming the default artifact changes nothing
            specs[attack] = chosen_spec(data, attack, pid, results_root)
            chosen[attack] = pid
    eps = {specs[a].eps for a in attacks}
    config = {
        "kind": "untargeted",
        "ratio": float(ratio),
        "attacks": attacks,
        "eps": eps.pop() if len(eps) == 1 else {a: specs[a].eps for a in attacks},
        "poison_ids": {a: specs[a].poison_id for a in attacks},
        "counts": dict(zip(attacks, counts, strict=True)),
        "poisoned": k,
        "indices_fingerprint": short_hash({a: assignment[a].tolist() for a in attacks}),
        "row_stream": ROW_STREAM,  # absent in records made before the rows had their own stream
        "label": f"untargeted ρ={ratio:.2f} {'+'.join(attacks)}",
    }
    if chosen:  # only then: the run ids of runs on the default artifacts stay as they were
        config["poison_sets"] = chosen
    return UntargetedPlan(data, float(ratio), attacks, seed, specs, assignment, config)


class Clean(Scenario):
    """Training on the clean train split (ρ = 0): every defense's baseline accuracy."""

    name = "clean"
    summary = "no poisons (ρ = 0)"

    def validate(self, spec) -> None:
        check_attacks(spec.attacks)  # also at ρ = 0, where no mix is drawn: a typo should not pass silently
        if spec.poison_sets:
            raise PoisonbenchError("--poisons chooses PoisonSets of the mix; it needs --poison-ratio > 0")
        if spec.poison_ratio > 0 or spec.poison_set is not None:
            raise PoisonbenchError("scenario 'clean' trains without poisons; it takes no --poison-ratio or "
                                   "--poison-set")

    def check_same_init(self, spec) -> None:
        """A clean baseline may start from the untargeted surrogate's initialisation, to pair with the mix's runs."""

    def init_model(self, spec, data, plan) -> AttackerModel:
        return untargeted_surrogate(data)


class Untargeted(Scenario):
    """Table II: a ratio ρ of the train split poisoned by the untargeted mix, the model trained from scratch."""

    name = "untargeted"
    summary = "Table II: ρ of the train split poisoned by PGD, DAP, DURP and DeepConfuse in equal shares"

    def validate(self, spec) -> None:
        if not spec.poison_ratio > 0:
            raise PoisonbenchError("scenario 'untargeted' needs --poison-ratio > 0 (ρ = 0 is scenario 'clean')")
        if spec.poison_set is not None:
            from .poison_set import NO_MIX_WITH_POISON_SET

            raise PoisonbenchError(NO_MIX_WITH_POISON_SET)
        check_poison_sets(spec.poison_sets, check_attacks(spec.attacks))

    def check_same_init(self, spec) -> None:
        """The victim may start from the untargeted surrogate's initialisation (`init_model`)."""

    def attacker_model(self, spec, data, plan) -> AttackerModel | None:
        """The surrogate the mix's PGD and DAP craft against (None: a mix without a surrogate-based attack)."""
        if plan is None or not any(ATTACKS.get(a).uses_surrogate for a in plan.attacks):
            return None
        return untargeted_surrogate(data)

    def init_model(self, spec, data, plan) -> AttackerModel:
        return untargeted_surrogate(data)

    def plan(self, spec, data, trial: int) -> UntargetedPlan:
        return plan_untargeted(data, spec.poison_ratio, spec.attacks, seed=spec.seed + trial,
                               results_root=spec.results, poison_sets=spec.poison_sets)
