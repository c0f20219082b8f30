"""Defense registry. Adding a defense = one module here + one `DEFENSES.add` line."""

from __future__ import annotations

from ..registry import Registry
from .base import Defense

DEFENSES: Registry[type[Defense]] = Registry("method")
DEFENSES.add("none", Defense)


def build_defense(name: str, **params) -> Defense:
    return DEFENSES.get(name)(**params)


__all__ = ["DEFENSES", "Defense", "build_defense"]
