"""The defenses and filters: the registry `defend`, the sweeps and the tests read.

Adding a defense is one module here and one entry below; a defense class names itself (`name`)."""

from __future__ import annotations

from ..core.params import subclass_with_params
from ..core.registry import PluginGroup, Registry
from ..engine.hooks import Defense
from ..engine.threat import Threat
from .activation_clustering import ActivationClustering
from .atda import Atda
from .dpsgd import DpSgd
from .epic import Epic
from .friends import Friends
from .hint import Hint
from .iss import Iss
from .knn import DeepKnn
from .l2_filter import L2Filter
from .ocsvm import OneClassSvmFilter
from .oracle import Oracle
from .random_filter import RandomFilter
from .spectral import SpectralSignatures
from .ueraser import UEraser

# Defense itself is `none` (plain training); then the paper's Table III order, then the clean-label filters, then
# the defenses of issue 53: the feature-space filters of the backdoor literature, then the training-time defenses
# (ISS, UEraser, gradient shaping by DP-SGD); last the oracle (an upper bound that sees the poison mask, never
# ranked: engine/hooks.py)
DEFENSES: Registry[type[Defense]] = Registry.of(
    "method", (Defense, Hint, Friends, Atda, Epic, DeepKnn, L2Filter, OneClassSvmFilter, RandomFilter,
               SpectralSignatures, ActivationClustering, Iss, UEraser, DpSgd, Oracle),
    PluginGroup("poisonbench.defenses", subclass_with_params(Defense, texts=("summary_text",)),
                "a subclass of poisonbench.engine.hooks.Defense with PARAMS (a tuple of Param) and summary_text "
                "(a str)"))


def build_defense(name: str, family: str, recipe, threat: Threat | None = None, **params) -> Defense:
    """Instantiate defense `name` with the paper's defaults for `family`/`recipe`/`threat`, overridden by
    `params`."""
    return DEFENSES.get(name)(family, recipe, threat, **params)


__all__ = ["DEFENSES", "Defense", "Threat", "build_defense"]
