"""Attack registry (design.md §2). Populated by the attack modules."""

from __future__ import annotations

import importlib

from ..registry import Registry

ATTACKS: Registry = Registry("attack")

for _module in ("pgd", "dap", "durp", "deepconfuse"):  # registration order = the paper's Table II order
    importlib.import_module(f".{_module}", __name__)
