"""The attacks (docs/engine.md "Attacks"): the registry `defend`, `craft`, the sweeps and the tests read.

Adding an attack is one module here and one entry below; an attack class names itself (`name`)."""

from __future__ import annotations

from ..core.registry import Registry
from .bp import BP
from .dap import DAP
from .deepconfuse import DeepConfuse
from .durp import DURP
from .fc import FC
from .gm import GM
from .lsp import LSP
from .ops import OPS
from .pgd import PGD

# the paper's Table II order (untargeted), the model-free shortcut attacks beyond it (LSP, OPS), then Table III's
# (targeted)
ATTACKS: Registry = Registry.of("attack", (PGD, DAP, DURP, DeepConfuse, LSP, OPS, GM, BP, FC))

__all__ = ["ATTACKS"]
