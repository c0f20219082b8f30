"""The attacks (docs/engine.md "Attacks"): the registry `defend`, `craft`, the sweeps and the tests read.

Adding an attack is one module here and one entry below; an attack class names itself (`name`)."""

from __future__ import annotations

from ..core.params import subclass_with_params
from ..core.registry import PluginGroup, Registry
from .backdoor import SIG, BadNets, Blend, LabelConsistent
from .base import Attack
from .bp import BP
from .dap import DAP
from .deepconfuse import DeepConfuse
from .durp import DURP
from .em import EM
from .fc import FC
from .gm import GM
from .lsp import LSP
from .ops import OPS
from .pgd import PGD
from .rem import REM
from .sleeper_agent import SleeperAgent

# the paper's Table II order (untargeted), the availability poisons beyond it (error-minimising EM and REM, the
# model-free shortcuts LSP and OPS), then Table III's (targeted), then the backdoors (issue 85: dirty-label BadNets
# and Blend, clean-label SIG, Label-Consistent and Sleeper Agent's hidden trigger) (then a plugin's,
# poisonbench.core.registry)
ATTACKS: Registry[type[Attack]] = Registry.of(
    "attack", (PGD, DAP, DURP, DeepConfuse, EM, REM, LSP, OPS, GM, BP, FC,
               BadNets, Blend, SIG, LabelConsistent, SleeperAgent),
    PluginGroup("poisonbench.attacks", subclass_with_params(Attack, texts=("summary",)),
                "a subclass of poisonbench.attacks.base.Attack with PARAMS (a tuple of Param) and summary (a str)"))

__all__ = ["ATTACKS", "backdoor_attacks"]


def backdoor_attacks() -> list[str]:
    """The registered attacks of the backdoor family (issue 85), in registry order (plugins included). Here, not
    in attacks/backdoor.py: the registry's module imports that one."""
    from .backdoor import is_backdoor

    return [n for n in ATTACKS.names() if is_backdoor(ATTACKS.get(n))]
