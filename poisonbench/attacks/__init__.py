"""Attack registry (design.md §2). Populated by the attack modules."""

from __future__ import annotations

from ..registry import Registry

ATTACKS: Registry = Registry("attack")

from . import dap, deepconfuse, durp, pgd  # noqa: E402,F401  (registration)
