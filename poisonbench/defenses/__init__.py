"""Defense registry. Adding a defense = one module here + one `DEFENSES.add` line."""

from __future__ import annotations

from ..registry import Registry
from .base import Defense
from .hint import Hint

DEFENSES: Registry[type[Defense]] = Registry("method")
DEFENSES.add("none", Defense)
DEFENSES.add("hint", Hint)


def build_defense(name: str, family: str, recipe, **params) -> Defense:
    """Instantiate defense `name` with the paper's defaults for `family`/`recipe`, overridden by `params`."""
    return DEFENSES.get(name)(family, recipe, **params)


__all__ = ["DEFENSES", "Defense", "build_defense"]
