"""Attack registry (docs/engine.md, "Attacks"). Populated by the attack modules."""

from __future__ import annotations

import importlib

from ..registry import Registry

ATTACKS: Registry = Registry("attack")

# registration order: the paper's Table II order (untargeted), then Table III's (targeted)
for _module in ("pgd", "dap", "durp", "deepconfuse", "gm", "bp", "fc"):
    importlib.import_module(f".{_module}", __name__)
