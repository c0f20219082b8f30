"""The seeds of the models an attacker trains, kept apart from every victim's (docs/engine.md, "Attacks"; issue 54).

A victim trial trains with seed `--seed + t`, checked into [0, 2^63) (`attacks.base.check_seed`); the defender's own
streams are `hashing.derived_seed` values, also below 2^63. Every model trained for crafting (the untargeted and
targeted surrogates, the transfer extractor, DeepConfuse's classifier and generator) takes
`attacker_seed(domain, inputs)`: 64 bits of a sha256 of a domain tag ("surrogate", "extractor", ...) and the
canonical JSON of what identifies the model, with bits 63 and 31 set. So an attacker's seed is a function of its
own inputs only, never of a run's seed, and it cannot be a victim's:

- as a 64-bit number it is at least 2^63, above every victim and defender seed, so a generator that takes the whole
  seed (CUDA's Philox: a GPU run's batch order and augmentation) never gives the two the same stream;
- torch's CPU generator (mt19937), which draws every model's initialisation (models are built on the CPU) and a CPU
  run's batch order, keeps only the seed's low 32 bits (`manual_seed(2**32)` is `manual_seed(0)`). Bit 31 set puts
  those at 2^31 or more, so no victim seed below 2^31 (the default base 0 plus any number of trials, or any base
  seed below 2,147,483,648 minus the trials) shares a CPU stream with an attacker; for larger seeds `check_apart`
  refuses a run whose low 32 bits equal those of the model its poisons were crafted against (odds 2^-31).

A hash that merely lands somewhere in 63 bits would leave the CPU streams to chance; separate ranges make the
disjointness a property of the construction. Forest draws its victims' keys afresh (`np.random.randint(0, 2**32 -
1)`, forest/victims/victim_single.py `initialize`) and reuses the surrogate's only on request
(`--retrain_from_init`); `defend --same-init` is ours, recorded in the run's config.
"""

from __future__ import annotations

import hashlib

from .errors import PoisonbenchError
from .hashing import canonical_json

ATTACKER_BITS = (1 << 63) | (1 << 31)  # see the module docstring: above every victim seed, in 64 and in 32 bits
LOW32 = 0xFFFF_FFFF


def attacker_seed(domain: str, inputs: dict) -> int:
    """The seed of an attacker's model named by `domain` and identified by `inputs` (everything that determines
    it but the seed): in [2^63, 2^64), its low 32 bits in [2^31, 2^32)."""
    digest = hashlib.sha256(f"attacker:{domain}:{canonical_json(inputs)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") | ATTACKER_BITS


def is_attacker_seed(seed: int) -> bool:
    return isinstance(seed, int) and seed & ATTACKER_BITS == ATTACKER_BITS and seed < 1 << 64


def check_apart(victim_seed: int, attacker: int, what: str) -> None:
    """Refuse (one line) a victim seed that would give a CPU generator the attacker model's stream."""
    if victim_seed & LOW32 == attacker & LOW32:
        raise PoisonbenchError(f"seed {victim_seed} shares its low 32 bits with the seed of {what} (torch's CPU "
                               "generator uses only those): the victim would start from the attacker's "
                               "initialisation; choose another --seed (or ask for it with --same-init)")
