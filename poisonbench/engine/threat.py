"""What a defense may assume about the attack it faces (`Threat`): the scenario's kind and, for a targeted attack,
its budget. Some defaults depend on it: ATDA's β (paper §VI-A3: 0.25 against untargeted attacks, 0.062 against
targeted ones) and the clean-label filters' k and drop fraction (the filter paper, §4.2: k = 2·budget + 1 with the
budget known to the defender). The threat never names the poisoned rows: only `Defense.summary` sees those."""

from __future__ import annotations

from dataclasses import dataclass

THREAT_KINDS = ("clean", "untargeted", "targeted", "backdoor")


@dataclass(frozen=True)
class Threat:
    """`kind`: clean | untargeted | targeted | backdoor. `budget`: the number of poisoned rows a targeted attack or
    a backdoor may place (its budget, known to the defender as in the filter paper and as spectral signatures' ε),
    None when not known (clean and untargeted runs).
    `train_size`: the rows of the train split the attack's budget is a fraction of (None: unknown). `extractor`: the
    scenario trains on a clean pre-trained feature extractor (transfer learning), whose features a filter may use."""

    kind: str = "clean"
    budget: int | None = None
    train_size: int | None = None
    extractor: bool = False

    def __post_init__(self):
        if self.kind not in THREAT_KINDS:
            raise ValueError(f"threat kind {self.kind!r} is not one of {THREAT_KINDS}")

    @property
    def targeted(self) -> bool:
        return self.kind == "targeted"

    @property
    def kind_phrase(self) -> str:
        """"a clean run", "an untargeted run", "a targeted run": for messages."""
        return f"{'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind} run"

    @property
    def budget_fraction(self) -> float | None:
        """The budget as a fraction of the train split (None when either is unknown)."""
        if self.budget is None or not self.train_size:
            return None
        return self.budget / self.train_size


def threat_of_config(config: dict) -> Threat:
    """The threat a run faced, read back from its record's `config` (for the report's default-parameter check)."""
    poison = config.get("poison") or {}
    kind = poison.get("kind") or ("untargeted" if poison else "clean")
    if kind == "targeted":
        poisoned = poison.get("poisoned")
        ratio = poison.get("ratio")
        size = round(poisoned / ratio) if poisoned and ratio else None
        return Threat("targeted", poisoned, size, extractor=config.get("scenario") == "transfer")
    if kind == "backdoor":
        poisoned, ratio = poison.get("poisoned"), poison.get("ratio")
        return Threat("backdoor", poisoned, round(poisoned / ratio) if poisoned and ratio else None)
    return Threat("untargeted" if kind in ("untargeted", "poison-set") else "clean")
