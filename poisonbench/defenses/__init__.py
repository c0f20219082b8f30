"""Defense registry. Adding a defense = one module here + one `DEFENSES.add` line."""

from __future__ import annotations

from ..registry import Registry
from .base import Defense
from .hint import Hint
from .threat import Threat

DEFENSES: Registry[type[Defense]] = Registry("method")
DEFENSES.add("none", Defense)
DEFENSES.add("hint", Hint)


def build_defense(name: str, family: str, recipe, threat: Threat | None = None, **params) -> Defense:
    """Instantiate defense `name` with the paper's defaults for `family`/`recipe`/`threat`, overridden by
    `params`."""
    return DEFENSES.get(name)(family, recipe, threat, **params)


__all__ = ["DEFENSES", "Defense", "Threat", "build_defense"]
