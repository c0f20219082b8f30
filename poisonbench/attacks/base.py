"""The attack contract (docs/engine.md, "Attacks"): `Attack(family, **params).craft(ctx) -> PoisonSet`.

An attack declares its options as `Param`s (poisonbench.core.params) with one default per dataset family (the paper's
or the official code's value; sources in docs/fidelity.md). `ctx` carries the clean train split, the poisoned
rows (chosen by the attack's `choose_rows` from the budget, the seed and, for a targeted attack, its `Target`),
ε in pixel units, the device, a lazily trained surrogate and a progress callback.

Each attack bounds δ in its own norm (`Attack.norm`, docs/engine.md "Norms"): "linf" (every attack of the paper:
‖δ‖∞ ≤ ε, ε in (0, 1)), "l2" (‖δ_i‖₂ ≤ ε per image, ε > 0) or "l0" (at most ε pixel positions of an image changed,
all channels of a position counting as one; ε an integer ≥ 1).

Invariants every attack keeps (checked by tests/test_attacks.py for every registered attack):
δ within its norm's ε-ball, 0 ≤ x+δ ≤ 1, labels unchanged (a PoisonSet stores no labels), exactly ⌊budget·n⌋ rows,
and the same δ for the same inputs and seed on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save as st_save
from torch import nn

from ..core.bounded import read_tensors
from ..core.errors import PoisonbenchError
from ..core.io import atomic_write_bytes, os_error_in_one_line
from ..core.params import Param, resolve
from ..data.types import FAMILIES
from ..engine import termination

ProgressFn = Callable[[str, int, int], None]
"""`progress(description, completed, total)`: one call per batch of a long step (crafting, surrogate training)."""

DEFAULT_EPS = {"mnist": 0.3, "cifar10": 8 / 255}  # paper §VI-A2 (HINT): ε = 0.3 on MNIST, 8/255 on CIFAR-10
EPS_TOLERANCE = 1e-6  # float32 rounding of x + δ − x; every check allows this much over ε and outside [0, 1]


@dataclass(frozen=True)
class Target:
    """What a targeted attack aims at (docs/engine.md, "Targets"): test image `index` of class `true_class`, to be
    classified as `intended_class`. `rows` fixes the poisoned train rows (a setup file's base images); None lets the
    attack choose them (e.g. from the intended class, as forest does)."""

    index: int
    true_class: int
    intended_class: int
    rows: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        out = {"index": self.index, "true_class": self.true_class, "intended_class": self.intended_class}
        if self.rows is not None:
            out["rows"] = list(self.rows)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        rows = d.get("rows")
        return cls(int(d["index"]), int(d["true_class"]), int(d["intended_class"]),
                   tuple(int(r) for r in rows) if rows is not None else None)


@dataclass
class PoisonSet:
    """δ (K×C×H×W float32, pixel units) for train rows `indices` (K, int64), plus the manifest (and, for a
    backdoor, the rows' new labels and its trigger)."""

    delta: torch.Tensor
    indices: torch.Tensor
    manifest: dict = field(default_factory=dict)
    path: Path | None = None
    # a backdoor's (attacks.backdoor; store format 2): the poisoned rows' train labels where it changes them (K,
    # int64; None: unchanged, clean label) and the trigger `defend` stamps on the test split (None: no trigger)
    labels: torch.Tensor | None = None
    trigger: Any = None

    @property
    def poison_id(self) -> str:
        return self.manifest.get("poison_id", "")

    def __len__(self) -> int:
        return len(self.indices)

    def rows_for(self, indices: torch.Tensor) -> torch.Tensor:
        """δ rows for the train indices `indices` (every one must be in the set)."""
        n = int(max(self.indices.max().item() if len(self.indices) else 0,
                    indices.max().item() if len(indices) else 0)) + 1
        position = torch.full((n,), -1, dtype=torch.long)
        position[self.indices] = torch.arange(len(self.indices))
        pos = position[indices.cpu()]
        if (pos < 0).any():
            missing = indices.cpu()[pos < 0][:5].tolist()
            raise PoisonbenchError(f"poison set {self.poison_id} does not cover train rows {missing}")
        return self.delta[pos]


def budget_count(budget: float, n: int) -> int:
    """⌊budget·n⌋ (with a 1e-9 guard against 0.6·3900 = 2339.9999…)."""
    return min(n, int(math.floor(budget * n + 1e-9)))


def select_indices(n: int, budget: float, seed: int) -> torch.Tensor:
    """The train rows an attack poisons: all of them for budget 1, else ⌊budget·n⌋ drawn from `seed`, sorted."""
    k = budget_count(budget, n)
    if k == n:
        return torch.arange(n, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


SEED_MAX = 2 ** 63 - 1  # torch generators take 64 bits; above 2^63 they alias the negative seeds


def check_seed(seed: int, what: str = "seed") -> None:
    if not (isinstance(seed, int) and 0 <= seed <= SEED_MAX):
        raise PoisonbenchError(f"{what} must be an integer in [0, 2^63 - 1], got {seed}")


def check_budget(budget: float) -> None:
    if not (isinstance(budget, (int, float)) and 0.0 <= budget <= 1.0):
        raise PoisonbenchError(f"budget must be a fraction in [0, 1], got {budget}")


NORMS = ("linf", "l2", "l0")


def check_eps(eps: float, norm: str = "linf") -> None:
    """ε in its norm's range, refused in one line: linf (0, 1); l2 > 0 and finite; l0 an integer ≥ 1."""
    number = isinstance(eps, (int, float)) and not isinstance(eps, bool)
    if norm == "linf":
        if not (number and 0.0 < eps < 1.0):
            raise PoisonbenchError(f"eps must be in (0, 1) (L∞, pixel units), got {eps}")
    elif norm == "l2":
        if not (number and math.isfinite(eps) and eps > 0):
            raise PoisonbenchError(f"eps must be > 0 and finite (ℓ2 radius of each image, pixel units), got {eps}")
    elif norm == "l0":
        if not (number and math.isfinite(eps) and eps >= 1 and float(eps).is_integer()):
            raise PoisonbenchError(f"eps must be an integer >= 1 (L0: the pixel positions an image may change), "
                                   f"got {eps}")
    else:
        raise PoisonbenchError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}")


def delta_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Each row's size in `norm` (K, float): ‖δ_i‖∞, ‖δ_i‖₂, or the number of pixel positions (H×W locations)
    where some channel of δ_i is non-zero."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(len(flat))
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (delta != 0).any(1).flatten(1).sum(1).to(delta.dtype)
    raise PoisonbenchError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}")


def within_eps(size: float, eps: float, norm: str) -> bool:
    """Whether a row's `delta_norms` value keeps the bound: with EPS_TOLERANCE for the float norms, exactly for L0."""
    return size <= eps if norm == "l0" else size <= eps + EPS_TOLERANCE


@dataclass
class AttackContext:
    """What an attack sees. `surrogate()` trains (or loads) the shared clean surrogate on first use."""

    dataset: Any  # poisonbench.data.Dataset
    indices: torch.Tensor  # K rows of the train split to poison (sorted, int64, CPU; from Attack.choose_rows)
    eps: float
    budget: float
    seed: int
    device: torch.device
    results_root: Path | str | None = None
    progress: ProgressFn | None = None
    surrogate_model: str | None = None  # None: the family's default model (paper Table I)
    compile: str = "auto"  # auto | on | off: may the attack torch.compile its inner step (execution only)
    accel: str = "auto"  # auto | off: the CPU kernels' switch for the surrogate and its frozen copy (engine.kernels)
    compiled: bool = False  # set by an attack that did
    partial_dir: Path | None = None  # where a row-batched attack keeps finished batches, to resume after a kill
    resumed_rows: int = 0  # rows taken from `partial_dir` instead of crafted (set by the attack)
    target: Target | None = None  # a targeted attack's target (None: untargeted)
    # (ctx) -> (model, info): how `surrogate()` gets its model (set by `Attack.craft`: the attack's `load_surrogate`)
    loader: Callable[[AttackContext], tuple[nn.Module, dict]] | None = None
    _surrogate: nn.Module | None = None
    surrogate_info: dict | None = None

    def report(self, description: str, completed: int, total: int) -> None:
        """Show progress, and stop when a SIGTERM is pending: every attack reports once per batch, iteration or
        restart, so this is where a craft notices a SIGTERM that arrived while a model trained (the engine only
        sets a flag during its epochs and lets a last epoch finish). A cheap flag check, no device sync."""
        if self.progress is not None:
            self.progress(description, completed, total)
        termination.stop_if_requested(f"while crafting ({description}, {completed} of {total}; no PoisonSet "
                                      "written, the finished batches or restarts of a resumable attack are kept)")

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole clean train split as float [0,1] / int64 on the device."""
        from ..core.device import to_float

        return to_float(self.dataset.train.x, self.device), self.dataset.train.y.to(self.device)

    def surrogate(self) -> nn.Module:
        """The clean surrogate, in eval mode with frozen parameters (attacks need only input gradients)."""
        if self._surrogate is None:
            model, info = (self.loader or clean_surrogate)(self)
            termination.stop_if_requested("after loading the model to craft against (no PoisonSet written)")
            model.eval().requires_grad_(False)
            self._surrogate, self.surrogate_info = model, info
        return self._surrogate


def clean_surrogate(ctx: AttackContext) -> tuple[nn.Module, dict]:
    """The untargeted attacks' surrogate: the family's paper recipe on the whole clean train split."""
    from .surrogate import load_or_train_surrogate

    return load_or_train_surrogate(ctx.dataset, ctx.results_root, ctx.device, model_name=ctx.surrogate_model,
                                   progress=ctx.progress, accel=ctx.accel)


class Attack:
    """Base class. Subclasses set `name`, `PARAMS`, `uses_surrogate` (and `targeted` for attacks that need a
    `Target`, `in_paper_mix` for the four of HINT's Table II mix), and implement `perturb(ctx) -> δ`; a targeted
    attack may override `choose_rows`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    uses_surrogate: ClassVar[bool] = False
    targeted: ClassVar[bool] = False
    in_paper_mix: ClassVar[bool] = False  # one of the untargeted mix of HINT's Table II (`--attacks`' default)
    norm: ClassVar[str] = "linf"  # what ε bounds (NORMS; module docstring): `project` enforces it on δ
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, family: str, **params: Any):
        if family not in FAMILIES:
            raise PoisonbenchError(f"unknown dataset family {family!r}; valid choices: {', '.join(FAMILIES)}")
        self.family = family
        self.params, self.explicit = resolve(self.PARAMS, params, family, None, "attack", self.name)
        self.validate()

    @classmethod
    def default_eps(cls, family: str, shape: tuple[int, int, int]) -> float:
        """ε when `--eps` is not given (the paper's, per dataset family), in the attack's `norm`; `shape` (C, H, W)
        is the images' shape, for a bound that depends on it (LSP's ℓ2 radius)."""
        return DEFAULT_EPS[family]

    @classmethod
    def schedule_label(cls, params: dict, family: str | None) -> str | None:
        """The schedule a PoisonSet with these (resolved) `params` was crafted on, as records and tables name it
        (issue 67): None for an attack without named schedules."""
        return None

    @classmethod
    def adaptations(cls, params: dict, family: str | None, info: dict | None = None) -> list[str] | None:
        """How a PoisonSet with these (resolved) `params` departs from its attack's official procedure, as records
        and tables name it (issue 83; docs/fidelity.md, "Departures from the official procedures"): `key=value`
        labels, [] for a craft that follows it, None for an attack that has no such departures. `info` is the
        manifest's `attack_info` (what the craft did: EM's class batch, whether it stopped), `family` its dataset's
        (None where unknown)."""
        return None

    @classmethod
    def objective(cls, params: dict) -> str | None:
        """The objective a PoisonSet with these `params` was crafted with, where one attack name covers two
        (FC: forest's `mean-feature` or the per-poison collision, `per-poison`; docs/fidelity.md), as records
        name it; None for an attack with one objective."""
        return None

    @classmethod
    def report_column(cls, params: dict) -> str:
        """The attack's column in the tables, figures and the HTML page: its name, or one name per objective
        where it has two (FC: `fc` and `fc-pp`), so that a column never pools two objectives."""
        return cls.name

    @classmethod
    def default_budget(cls) -> float:
        """`--budget` when not given: every row (the untargeted mix takes its rows from the whole split)."""
        return 1.0

    def choose_rows(self, dataset, budget: float, seed: int, target: Target | None = None) -> torch.Tensor:
        """The train rows to poison (sorted int64, CPU): a target's fixed rows, else ⌊budget·n⌋ rows drawn from
        `seed` (every row for budget 1). Targeted attacks override this to draw from the intended class."""
        if target is not None and target.rows is not None:
            return torch.tensor(sorted(target.rows), dtype=torch.long)
        return select_indices(len(dataset.train), budget, seed)

    def rows_for(self, ctx: AttackContext) -> torch.Tensor:
        """The rows `craft` poisons, chosen with the context at hand (its model included): `choose_rows` here; a
        targeted attack whose `bases` are nearest reads `ctx.surrogate()`."""
        return self.choose_rows(ctx.dataset, ctx.budget, ctx.seed, ctx.target)

    def aim(self, target: Target, fixed: bool = False) -> Target:
        """The target as this attack crafts for it, from a drawn (or, `fixed`, a setup file's) one: unchanged here;
        a targeted attack whose `bases` are `nearest` drops the drawn rows to choose its own when it crafts."""
        return target

    def validate(self) -> None:
        """Raise PoisonbenchError for parameter combinations out of range."""

    def check_data(self, dataset, eps: float) -> None:
        """Raise PoisonbenchError (one line) if this attack cannot craft on `dataset` with `eps` (e.g. a patch size
        that does not divide the images): called by `craft_spec`, before anything is written."""

    def model_spec(self, dataset) -> tuple[str, dict] | None:
        """(workspace kind, spec) of the model this attack crafts against (the spec holds its attacker seed,
        `poisonbench.core.seeds`), None if it uses none: the untargeted attacks' shared surrogate."""
        if not self.uses_surrogate:
            return None
        from .surrogate import KIND, surrogate_spec

        return KIND, surrogate_spec(dataset)

    def surrogate_ref(self, dataset) -> str | None:
        """The id of the model this attack crafts against (part of the poison id), None if it uses none."""
        if not self.uses_surrogate:
            return None
        from ..core.hashing import short_hash

        return short_hash(self.model_spec(dataset)[1])

    def load_surrogate(self, ctx: AttackContext) -> tuple[nn.Module, dict]:
        """(model, info) of the model `surrogate_ref` names, trained first if it is not cached."""
        return clean_surrogate(ctx)

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        """δ for `ctx.indices` (K×C×H×W, float32, pixel units, any device)."""
        raise NotImplementedError

    def craft(self, ctx: AttackContext) -> PoisonSet:
        """Run the attack and enforce the invariants (ε-ball, pixel box) on the result."""
        if ctx.loader is None:
            ctx.loader = self.load_surrogate
        x = ctx.dataset.train.x[ctx.indices].float().div_(255)
        if len(ctx.indices) == 0:
            delta = torch.zeros_like(x)
        else:
            delta = self.perturb(ctx).detach().float().cpu()
        if not torch.isfinite(delta).all():  # a diverged optimisation: projecting would keep the NaNs
            bad = int((~torch.isfinite(delta)).flatten(1).any(1).sum())
            raise PoisonbenchError(f"attack {self.name!r} produced a δ that is not finite in {bad} of "
                                   f"{len(delta)} rows (diverged; try a smaller step size or learning rate)")
        delta = project(x, delta, ctx.eps, self.norm)
        ctx.report(f"{self.name} · {ctx.dataset.name}", len(ctx.indices), len(ctx.indices))
        return PoisonSet(delta=delta.contiguous(), indices=ctx.indices.clone())


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Onto the `norm` ball of radius ε and the pixel box [0, 1].

    linf: δ ← clamp(x + clamp(δ, −ε, ε), 0, 1) − x. l2: each row scaled to ‖δ_i‖₂ ≤ ε (rows inside are kept), then
    x+δ clamped into the box (clamping only shrinks each |δ_ij|, so the norm stays ≤ ε; it may end below ε). l0: no
    row may change more than ε pixel positions — the attack chooses them, so a row over the bound is a bug and
    raises RuntimeError — then x+δ clamped into the box (which changes no further position)."""
    if norm == "linf":
        return (x + delta.clamp(-eps, eps)).clamp_(0, 1).sub_(x)
    if norm == "l2":
        norms = delta.flatten(1).norm(dim=1)
        scale = (eps / norms.clamp_min(1e-12)).clamp_(max=1.0)
        return (x + delta * scale.view(-1, *([1] * (delta.dim() - 1)))).clamp_(0, 1).sub_(x)
    if norm == "l0":
        changed = delta_norms(delta, "l0")
        if len(changed) and changed.max().item() > eps:
            rows = (changed > eps).nonzero().flatten()[:5].tolist()
            raise RuntimeError(f"δ changes more than ε = {eps:g} pixel positions in rows {rows} (at most "
                               f"{int(changed.max().item())}): a bug in the attack")
        return (x + delta).clamp_(0, 1).sub_(x)
    raise PoisonbenchError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}")


class PartialBatches:
    """Finished batches of a row-batched attack (PGD, DAP), one safetensors file per batch in `directory`.

    A long craft (DAP over 59,000 rows, PGD on CIFAR-10) killed midway resumes from its last finished batch: the
    directory is keyed by the poison id, so only a craft with identical inputs and batch boundaries reads it.
    Files are written atomically; the directory is removed once the PoisonSet is saved.
    """

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None

    def _path(self, start: int, stop: int) -> Path:
        return self.directory / f"rows-{start:09d}-{stop:09d}.safetensors"

    def get(self, start: int, stop: int) -> torch.Tensor | None:
        if self.directory is None or not self._path(start, stop).exists():
            return None
        try:
            return read_tensors(self._path(start, stop))["delta"]
        except Exception:  # unreadable (should not happen: writes are atomic): craft the batch again
            return None

    def put(self, start: int, stop: int, delta: torch.Tensor) -> None:
        if self.directory is None:
            return
        path = self._path(start, stop)
        with os_error_in_one_line("an interrupted craft's state", path):
            atomic_write_bytes(path, st_save({"delta": delta.float().contiguous().cpu()}))


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)
