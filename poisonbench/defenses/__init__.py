"""Defense registry. Adding a defense = one module here + one `DEFENSES.add` line."""

from __future__ import annotations

from ..core.registry import Registry
from ..engine.hooks import Defense
from ..engine.threat import Threat
from .atda import Atda
from .epic import Epic
from .friends import Friends
from .hint import Hint
from .knn import DeepKnn
from .l2_filter import L2Filter
from .ocsvm import OneClassSvmFilter
from .random_filter import RandomFilter

DEFENSES: Registry[type[Defense]] = Registry("method")
DEFENSES.add("none", Defense)
DEFENSES.add("hint", Hint)
DEFENSES.add("friends", Friends)
DEFENSES.add("atda", Atda)
DEFENSES.add("epic", Epic)
DEFENSES.add("knn", DeepKnn)
DEFENSES.add("l2", L2Filter)
DEFENSES.add("ocsvm", OneClassSvmFilter)
DEFENSES.add("random", RandomFilter)


def build_defense(name: str, family: str, recipe, threat: Threat | None = None, **params) -> Defense:
    """Instantiate defense `name` with the paper's defaults for `family`/`recipe`/`threat`, overridden by
    `params`."""
    return DEFENSES.get(name)(family, recipe, threat, **params)


__all__ = ["DEFENSES", "Defense", "Threat", "build_defense"]
