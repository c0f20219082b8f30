"""EPIC: Effective Poison Identification (Yang et al., "Not all poisons are created equal", ICML 2022;
the official code: EPIC:train_poison_epic.py, utils/coreset.py).

Poisons end up isolated in the gradient space of their (target) class, so EPIC repeatedly drops the examples that
form a cluster of their own. At each drop epoch (`drop_epochs`), before training that epoch:

1. gradient proxy of every train row, dropped ones included (`EPIC:train_poison_epic.py:L527-575`: the official
   code computes over all N): g = softmax(logits) − onehot(y), the cross-entropy's gradient w.r.t. the logits, from
   one no-grad pass of the model in eval mode;
2. per-class budgets b_c = ⌈n_c·B/N⌉ with B = ⌊subset·N⌋; the surplus Σb_c − B is taken one each from distinct
   random classes (`EPIC:utils/coreset.py:L80-90`);
3. per class, the b_c medoids maximising the facility location Σ_i max_{j∈S} exp(−‖g_i − g_j‖₂ / d)
   (poisonbench.defenses.facility_location; d = the number of classes);
4. every example joins its nearest medoid; the examples of clusters with at most `cluster_threshold` members are
   dropped for good: the rows in use become (rows in use) ∩ (rows in larger clusters)
   (`EPIC:train_poison_epic.py:L413-414, L568-571`).

Schedule (`EPIC:train_poison_epic.py:L407`): a 0-based epoch e drops iff e % T == 0, e ≥ K,
e < stop_after and e ≤ the recipe's last learning-rate milestone (no bound when the recipe has none). The paper's
T and K (HINT paper §VI-A3: T = 2, K = 5 of 30 MNIST epochs; T = 4, K = 10 of 80 CIFAR-10 epochs) are scaled to the
recipe's E epochs as T' = max(1, round(T·E/E_paper)) and K' = max(1, round(K·E/E_paper)) (at least one warm-up
epoch, as the official default `drop_after` 1: the proxy of an untrained model says nothing). EPIC is off when
subset = 1 (the official `subset_size < 1` guard: every point would be its own singleton cluster).

Deliberate deviations (docs/fidelity.md, "EPIC"): cluster ids are local to each class, so the drop is exactly
"the members of small clusters" with unequal class budgets too (official bug E1, §3.6: ids offset by c·b_c while
sizes are concatenated with cumulative offsets); the proxy uses the model's real softmax, bias included (official
bug E2: `--omit-bias` restores the bias-free one); budgets use exact integer ceilings; the random surplus classes
come from the run's own `epic` stream instead of `np.random`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..core.params import Param
from ..engine.hooks import Defense
from . import facility_location as fl
from .hint import PAPER_EPOCHS
from .influence import head_inputs, residuals
from .removal import removal_statistics

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext
    from ..engine.recipes import Recipe

PAPER_INTERVAL = {"mnist": 2, "cifar10": 4}  # T, HINT paper §VI-A3 "EPIC"
PAPER_WARMUP = {"mnist": 5, "cifar10": 10}  # K, same place
RANDOM_STREAM = "epic"


def _scaled(paper: dict[str, int], family: str, recipe: Recipe) -> int:
    epochs = PAPER_EPOCHS.get(family, PAPER_EPOCHS["mnist"])
    return max(1, round(paper.get(family, paper["mnist"]) * recipe.epochs / epochs))


def paper_interval(family: str, recipe: Recipe) -> int:
    """T' = max(1, round(T·E/E_paper)): the paper's drop interval scaled to the recipe's epochs."""
    return _scaled(PAPER_INTERVAL, family, recipe)


def paper_warmup(family: str, recipe: Recipe) -> int:
    """K' = max(1, round(K·E/E_paper)): the paper's warm-up scaled to the recipe's epochs."""
    return _scaled(PAPER_WARMUP, family, recipe)


def drop_epochs(epochs: int, interval: int, warmup: int, stop_after: int | None,
                milestones: tuple[int, ...] = ()) -> list[int]:
    """The 0-based epochs at whose start EPIC drops (the official condition, see the module docstring)."""
    last = max(milestones) if milestones else epochs
    return [e for e in range(epochs) if e % interval == 0 and e >= warmup
            and (stop_after is None or e < stop_after) and e <= last]


def class_budgets(counts: list[int], subset: float, generator: torch.Generator) -> list[int]:
    """b_c = ⌈n_c·B/N⌉ with B = ⌊subset·N⌋, the surplus Σb_c − B removed one each from distinct random classes
    among those with b_c > 0 (`EPIC:utils/coreset.py:L80-90`). Integer ceilings: no float rounding adds a medoid."""
    n = sum(counts)
    total = int(subset * n)
    budgets = [-(-c * total // n) if n else 0 for c in counts]
    surplus = sum(budgets) - total  # < the number of non-empty classes: each ceiling adds less than one
    if surplus > 0:
        eligible = torch.tensor([c for c, b in enumerate(budgets) if b > 0])
        order = torch.randperm(len(eligible), generator=generator, device=generator.device).cpu()
        for c in eligible[order[:surplus]].tolist():
            budgets[c] -= 1
    return budgets


@torch.no_grad()
def gradient_proxy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, omit_bias: bool = False) -> torch.Tensor:
    """g = softmax(logits) − onehot(y) for every row (eval mode, on HINT's frozen copy: `influence.head_inputs`,
    `influence.residuals`; `model` is untouched). `omit_bias`: logits = φ·Wᵀ without the head's bias, as the
    official code (its bug E2: `EPIC:train_poison_epic.py:L552` leaves the bias out)."""
    h, logits = head_inputs(model, x, dtype=torch.float32)
    if omit_bias:
        logits = h[:, :-1] @ model.head.weight.float().T
    return residuals(logits, y)


def small_cluster_rows(g: torch.Tensor, y: torch.Tensor, budgets: list[int], threshold: float, greedy: str,
                       generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """(mask of the rows whose cluster has at most `threshold` members, counts): facility location medoids per
    class, every row joining its nearest medoid of its own class. A class without medoids (b_c = 0) drops nothing.
    Cluster ids never leave their class, so unequal budgets cannot mix clusters up (official bug E1)."""
    small = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    medoids, singletons = 0, 0
    for c, budget in enumerate(budgets):
        rows = (y == c).nonzero().flatten()
        if budget <= 0 or len(rows) == 0:
            continue
        sim = fl.similarity(g[rows])
        chosen = fl.maximize(sim, budget, greedy, generator)
        cluster, sizes = fl.assign(sim, chosen)
        small[rows] = sizes[cluster] <= threshold
        medoids += len(chosen)
        singletons += int((sizes <= threshold).sum())
        del sim
    return small, {"medoids": medoids, "small_clusters": singletons}


class Epic(Defense):
    name = "epic"
    summary_text = "EPIC: drop the examples isolated in gradient space (facility-location medoids per class)"
    PARAMS = (
        Param("subset", float, 0.1, "Fraction of the train rows chosen as medoids (EPIC-0.1); the clusters of "
              "size <= --cluster-threshold around them are dropped. 1 turns EPIC off (official guard).",
              'HINT paper §VI-A3 "EPIC-0.1"; official --subset_size (EPIC:examples.sh)', positive=True,
              maximum=1),
        Param("interval", int, paper_interval, "T, epochs between drops (a 0-based epoch e drops when e % T == 0); "
              "the default is the paper's T (2 of 30 epochs on MNIST, 4 of 80 on CIFAR-10) scaled to the recipe's "
              "epochs, at least 1.", 'HINT paper §VI-A3; official --subset_freq (EPIC:train_poison_epic.py:L407)',
              minimum=1),
        Param("warmup", int, paper_warmup, "K, the first epoch that may drop (warm-up epochs); the default is the "
              "paper's K (5 of 30 on MNIST, 10 of 80 on CIFAR-10) scaled to the recipe's epochs, at least 1.",
              'HINT paper §VI-A3; official --drop_after (EPIC:train_poison_epic.py:L407)', minimum=0),
        Param("stop_after", int, None, "No drop from this 0-based epoch on (default: no limit; drops also stop "
              "after the recipe's last learning-rate milestone).", "official --stop_after (EPIC:train_poison_epic.py)",
              minimum=0),
        Param("cluster_threshold", float, 1.0, "Clusters with at most this many members are dropped.",
              "official --cluster_thresh (EPIC:train_poison_epic.py)", minimum=0),
        Param("greedy", str, "lazy", "Facility-location maximiser: lazy (exactly the greedy's medoids) | "
              "stochastic (stochastic greedy, ε = 0.01) | naive (every gain every step; slow reference).",
              "official --greedy LazyGreedy | StochasticGreedy (EPIC:train_poison_epic.py)", choices=fl.GREEDY),
        Param("omit_bias", bool, False, "Gradient proxy without the head's bias (official bug E2).",
              "EPIC:train_poison_epic.py:L552 (bias left out)"),
    )

    def __init__(self, family: str, recipe: Recipe, threat=None, **params: Any):
        super().__init__(family, recipe, threat, **params)
        p = self.params
        self.schedule = (drop_epochs(recipe.epochs, p["interval"], p["warmup"], p["stop_after"], recipe.milestones)
                         if p["subset"] < 1 else [])
        self._reset()

    def validate(self) -> None:
        p, r = self.params, self.recipe
        chosen = self.explicit & {"interval", "warmup", "stop_after"}
        if p["subset"] < 1 and chosen and not drop_epochs(r.epochs, p["interval"], p["warmup"], p["stop_after"],
                                                         r.milestones):
            last = f", last LR milestone {max(r.milestones)}" if r.milestones else ""
            raise PoisonbenchError(f"EPIC would never drop: no 0-based epoch of the {r.epochs}-epoch recipe is a "
                                   f"multiple of --interval {p['interval']}, >= --warmup {p['warmup']} and below "
                                   f"--stop-after {p['stop_after']}{last}")

    def _reset(self) -> None:
        self.dropped_at: torch.Tensor | None = None  # per train row: the epoch it was dropped at, -1 = never
        self.drops: list[dict] = []
        self._generator: torch.Generator | None = None

    def prepare(self, ctx: TrainContext) -> None:
        self._reset()
        self._generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, RANDOM_STREAM))
        self.dropped_at = torch.full((len(ctx.train_y),), -1, dtype=torch.long, device=ctx.device)
        return None

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if epoch not in self.schedule:
            return
        if self._generator is None:  # hooks called without prepare (direct use)
            self.prepare(ctx)
        start = time.perf_counter()
        p = self.params
        with ctx.timed("epic_proxy"):
            g = gradient_proxy(ctx.model, ctx.train_x, ctx.train_y, p["omit_bias"])
        with ctx.timed("epic_select"):
            counts = torch.bincount(ctx.train_y, minlength=ctx.num_classes).tolist()
            budgets = class_budgets(counts, p["subset"], self._generator)
            small, info = small_cluster_rows(g, ctx.train_y, budgets, p["cluster_threshold"], p["greedy"],
                                             self._generator)
        in_use = torch.zeros(len(ctx.train_y), dtype=torch.bool, device=ctx.device)
        in_use[ctx.rows_in_use()] = True
        keep = in_use & ~small
        dropped = in_use & small
        entry = {"epoch": epoch, "rows_before": int(in_use.sum()), **info}
        if keep.any():
            self.dropped_at[dropped] = epoch
            ctx.active = keep.nonzero().flatten()
            entry.update(kept=int(keep.sum()), dropped=int(dropped.sum()))
        else:  # would leave nothing to train on: skip this drop
            entry.update(kept=entry["rows_before"], dropped=0, skipped="every row in use is in a small cluster")
        entry["seconds"] = round(time.perf_counter() - start, 4)
        self.drops.append(entry)

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """The drop log, each row's drop epoch and the `epic` stream (the rows in use are the engine's `active`)."""
        return {"generator": self._generator.get_state(), "dropped_at": self.dropped_at}, {"drops": self.drops}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self._generator.set_state(tensors["generator"])
        self.dropped_at = tensors["dropped_at"].to(ctx.device)
        self.drops = list(state["drops"])

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        out: dict[str, Any] = {"method": self.name, "drop_epochs": self.schedule, "drops": self.drops}
        if self.dropped_at is None:
            return out
        dropped_at = self.dropped_at.cpu()
        if poisoned is not None:
            poisoned = poisoned.bool().cpu()
            out["drops"] = [{**d, "poisons_dropped": int((poisoned & (dropped_at == d["epoch"])).sum())}
                            for d in self.drops]
        out["dropped"] = int((dropped_at >= 0).sum())
        out["removal"] = removal_statistics(dropped_at >= 0, poisoned)
        return out
