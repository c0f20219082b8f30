"""The shared base of the clean-label filters of "Strong Baseline Defenses against Clean-Label Poisoning Attacks"
(Peri et al., the filter paper §4.2-4.3; official Deep k-NN: DeepKNN:dataLoader.py; keys and papers in
docs/fidelity.md): Deep k-NN (`knn.py`), L2 centroid (`l2_filter.py`), one-class SVM (`ocsvm.py`) and random
(`random_filter.py`).

A filter runs once, in `prepare`, before training: it decides which of the train rows in use to remove and returns
the sorted indices of the others, which the engine then trains on alone. The feature-space filters look at the
penultimate features φ(x) (paper §4.1), taken from (`--features`):

    extractor   the transfer scenario's clean, frozen, pre-trained extractor (`ctx.model.features`), as the
                official code does with its pre-trained checkpoints (DeepKNN:extractFeatures.py);
    trained     a model of the run's architecture trained first by the engine on the (poisoned) rows in use
                (`engine.training.train_fresh`), as a from-scratch victim has no clean extractor; its training is the
                defense's own cost;
    auto        extractor where the scenario has one (`Threat.extractor`), else trained.

`summary` records the removal counts (poisonbench/defenses/removal.py) and the filter's own figures; the seconds of
each stage are under the key `seconds` (also in the run's cost as `<method>_feature_model`, `<method>_features`,
`<method>_filter`, inside `defense_prepare`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.errors import PoisonbenchError
from ..core.params import Param
from ..engine.chunking import chunk_rows
from ..engine.hooks import Defense
from ..engine.training import train_fresh
from .removal import removal_statistics

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

FEATURE_SOURCES = ("auto", "trained", "extractor")

FEATURES_PARAM = Param(
    "features", str, "auto",
    "Where the filter's penultimate features come from: auto (the transfer scenario's clean frozen extractor where "
    "there is one, else trained) | trained (a model of the run's architecture trained first on the rows in use; "
    "one extra training run) | extractor (transfer only).",
    "filter paper §4.1 (φ = penultimate layer); official: a pre-trained clean network "
    "(DeepKNN:extractFeatures.py)", choices=FEATURE_SOURCES)

DROP_PARAM = Param(
    "drop", float, None,
    "ε, the fraction removed (l2: of each class; random: of all rows). When not given: a targeted attack's budget "
    "as a share of the rows trained on (budget / rows in use, resolved when the run starts); required where the "
    "budget is unknown (clean and untargeted runs).",
    'filter paper §5.1 "ε = 0.01, the proportion of the training data that are poisons"; §4.3.4',
    minimum=0, maximum=1, below_maximum=True)


def fraction_count(fraction: float, size: int) -> int:
    """⌈fraction·size⌉ (paper §4.3.1), robust to float rounding: 0.1·30 = 3.0000000000000004 counts 3, not 4."""
    return max(0, math.ceil(fraction * size - 1e-9 * max(size, 1)))


FEATURE_BATCH = 1024  # rows per forward on a GPU (as influence.head_inputs); fewer on the CPU (chunk_rows)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`model.features` (penultimate layer, flattened, float32) of `x[rows]`, in batches of `FEATURE_BATCH` rows
    (fewer on the CPU: `poisonbench.engine.chunking.chunk_rows`). The caller puts the model in eval mode."""
    n = len(rows)
    if n == 0:
        return x.new_zeros((0, 0))
    chunk = chunk_rows(model, x[:1], min(n, FEATURE_BATCH))
    return torch.cat([model.features(x[rows[i:i + chunk]]).flatten(1).float() for i in range(0, n, chunk)])


class Filter(Defense):
    """A defense that removes train rows once, before training. Subclasses implement `decide`.

    `uses_features`: whether `decide` needs the penultimate features (all but the random filter); such a filter
    declares `FEATURES_PARAM`. `uses_drop`: whether it declares `DROP_PARAM` (l2, random), whose default is the
    budget's share of the rows trained on."""

    uses_features: ClassVar[bool] = True
    uses_drop: ClassVar[bool] = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.removed: torch.Tensor | None = None  # bool over ctx.train_y's rows
        self.figures: dict = {}
        self.seconds: dict = {}

    def validate(self) -> None:
        if self.uses_features and self.params["features"] == "extractor" and not self.threat.extractor:
            raise PoisonbenchError(f"--features extractor of method {self.name!r}: this run has no pre-trained "
                                   "extractor (only the transfer scenario does); use --features trained or auto")
        if self.uses_drop and self.params["drop"] is None and self.threat.budget is None:
            raise PoisonbenchError(f"method {self.name!r} needs --drop (a fraction in [0, 1)): its default, the "
                                   f"attack's budget share, is unknown in {self.threat.kind_phrase}")

    # ------------------------------------------------------------------------------------------------------------

    def feature_source(self) -> str:
        """`--features` with auto resolved: extractor where the threat says the scenario has one."""
        source = self.params["features"]
        if source == "auto":
            return "extractor" if self.threat.extractor else "trained"
        return source

    def drop_fraction(self, rows_in_use: int) -> tuple[float, str]:
        """(ε, where it came from): `--drop`, else budget / rows in use (in transfer the rows trained on are the
        10 % transfer set with the poisons, so the share is larger than the budget's share of the split)."""
        if self.params["drop"] is not None:
            return self.params["drop"], "given"
        return min(self.threat.budget / max(rows_in_use, 1), 1.0), "budget share"

    @contextmanager
    def stage(self, ctx: TrainContext, name: str):
        """Times the block into `ctx.cost["<method>_<name>"]` and `self.seconds[name]`."""
        key = f"{self.name}_{name}"
        before = ctx.cost.get(key, 0.0)
        with ctx.timed(key):
            yield
        self.seconds[name] = round(ctx.cost[key] - before, 4)

    def features(self, ctx: TrainContext, rows: torch.Tensor) -> torch.Tensor:
        """The penultimate features of the rows in use (eval mode, no grad, chunked)."""
        source = self.feature_source()
        if source == "extractor":
            if not ctx.features_frozen:  # validate() checked the threat; this is the engine's model disagreeing
                raise PoisonbenchError(f"--features extractor of method {self.name!r}: the model's feature "
                                       "extractor is not frozen, so it is no clean pre-trained extractor")
            with self.stage(ctx, "features"), ctx.eval_mode():
                return extract_features(ctx.model, ctx.train_x, rows)
        with self.stage(ctx, "feature_model"):
            model = train_fresh(ctx)  # trained on the rows in use (ctx.active), returned in eval mode, frozen
        with self.stage(ctx, "features"):
            return extract_features(model, ctx.train_x, rows)

    def decide(self, ctx: TrainContext, features: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The bool mask of the rows (in `labels`' order) to remove; puts the filter's own figures in
        `self.figures`."""
        raise NotImplementedError

    def prepare(self, ctx: TrainContext) -> torch.Tensor | None:
        self.figures, self.seconds = {}, {}
        if ctx.resuming:  # the decision, the figures and `ctx.active` come back from the checkpoint: no second
            return None  # feature model is trained
        rows = ctx.rows_in_use()
        labels = ctx.train_y[rows]
        features = self.features(ctx, rows) if self.uses_features else None
        with self.stage(ctx, "filter"):
            removed = self.decide(ctx, features, labels)
        if self.uses_features:
            self.figures.update(features=self.feature_source(), feature_dim=int(features.shape[1]))
        self.figures["removed_per_class"] = torch.bincount(labels[removed], minlength=ctx.num_classes).tolist()
        self.removed = torch.zeros(len(ctx.train_y), dtype=torch.bool, device=ctx.device)
        self.removed[rows[removed]] = True
        return rows[~removed]  # rows_in_use is sorted, so the kept rows are

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """The decision (the engine restores `ctx.active` itself); kept so that a resumed run's summary describes
        the rows it trained on even if re-running `prepare` were to differ (a nondeterministic GPU kernel)."""
        if self.removed is None:
            return {}, {}
        return {"removed": self.removed}, {"figures": self.figures, "seconds": self.seconds}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        if "removed" in tensors:
            self.removed = tensors["removed"].to(ctx.device)
            self.figures, self.seconds = state["figures"], state["seconds"]

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        """Removal counts (poisons and clean rows removed, fractions), the filter's figures, its seconds."""
        if self.removed is None:
            return {}
        return {"removal": removal_statistics(self.removed, poisoned), **self.figures, "seconds": dict(self.seconds)}
