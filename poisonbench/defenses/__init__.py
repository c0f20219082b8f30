"""The defenses and filters: the registry `defend`, the sweeps and the tests read.

Adding a defense is one module here and one entry below; a defense class names itself (`name`)."""

from __future__ import annotations

from ..core.registry import Registry
from ..engine.hooks import Defense
from ..engine.threat import Threat
from .atda import Atda
from .dpsgd import DpSgd
from .epic import Epic
from .friends import Friends
from .hint import Hint
from .knn import DeepKnn
from .l2_filter import L2Filter
from .ocsvm import OneClassSvmFilter
from .random_filter import RandomFilter

# Defense itself is `none` (plain training); then the paper's Table III order, then the clean-label filters, then
# gradient shaping (DP-SGD)
DEFENSES: Registry[type[Defense]] = Registry.of(
    "method", (Defense, Hint, Friends, Atda, Epic, DeepKnn, L2Filter, OneClassSvmFilter, RandomFilter, DpSgd))


def build_defense(name: str, family: str, recipe, threat: Threat | None = None, **params) -> Defense:
    """Instantiate defense `name` with the paper's defaults for `family`/`recipe`/`threat`, overridden by
    `params`."""
    return DEFENSES.get(name)(family, recipe, threat, **params)


__all__ = ["DEFENSES", "Defense", "Threat", "build_defense"]
