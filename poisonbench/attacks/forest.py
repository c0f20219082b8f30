"""Forest's "brew" (Geiping et al., ICLR'21; GM:forest/witchcoven/witch_base.py `_brew`, `_run_trial`): the
optimisation loop GM, forest's BP (`bullseye`) and forest's FC (`poison-frogs`) share; only the objective differs.

Per restart: δ = randn·ε clipped to ±ε; `iterations` times: every poison batch (`pbatch` rows, in the poisons'
order) is augmented (`crafting_augment`, its draws from the restart's own generator), its objective's gradient
with respect to its rows of δ is stored, then the whole gradient's sign takes one Adam step (forest's `signAdam`)
with the learning rate ×0.1 at iterations T//2.667, T//1.6 and T//1.142 (93, 156, 218 of 250; MultiStepLR stepped
once per iteration), and δ is projected onto the ε-ball and the pixel box [0, 1]. The restart whose final loss (the
mean over the batches of its last iteration, as forest records it) is lowest is kept.

Units: forest's δ and learning rate live in its normalised space, x/σ_c, with forest's own σ for the dataset
family (GM:forest/consts.py: MNIST 0.3081, CIFAR-10 0.2470/0.2435/0.2616). Signed gradients are the same in both
spaces (σ_c > 0), so Adam's state is too, and forest's step of `lr` normalised units is `lr·σ_c` pixels: we step
δ (pixels) by `lr·σ_c` with forest's σ (`lr_space` forest, the default), exactly forest's brew in our units up to
float rounding (experiments/forest_differential.md). `lr_space` model takes σ from our model's normalisation
instead, as poisonbench did before issue 54: 1 on the MNIST family (HINT's models see raw pixels), so each step was
3.25× forest's; HINT's 0.2023/0.1994/0.2010 on CIFAR-10, 0.82× forest's.

Resume: each finished restart's δ and final loss go to `ctx.partial_dir` (one safetensors file per restart, written
atomically); a killed craft resumes from the finished restarts. Every restart draws from a generator seeded by
`derived_seed(seed, "<attack>:restart-<r>")`, so a resumed craft equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save as st_save

from ..core.bounded import read_tensors
from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..core.io import atomic_write_bytes, os_error_in_one_line
from ..core.params import MAX_BATCH_SIZE, MAX_DRAWS, MAX_ITERATIONS, Param
from .base import AttackContext, batches, project
from .crafting_augment import crafting_augment
from .targeted import TargetedAttack

MILESTONE_DIVISORS = (2.667, 1.6, 1.142)  # forest: MultiStepLR milestones attackiter // 2.667, // 1.6, // 1.142
LR_DECAY = 0.1

# (augmented poison batch x+δ, first row, end row) -> scalar loss of that batch
Objective = Callable[[torch.Tensor, int, int], torch.Tensor]


def milestones(iterations: int) -> tuple[int, ...]:
    return tuple(int(iterations // d) for d in MILESTONE_DIVISORS)


def lr_factor(iteration: int, steps: tuple[int, ...]) -> float:
    """MultiStepLR's factor at 0-based `iteration` (repeated milestones decay repeatedly, as MultiStepLR does)."""
    return LR_DECAY ** sum(m <= iteration for m in steps)


class Adam:
    """`torch.optim.Adam`'s update (β 0.9, 0.999; ε 1e-8; bias-corrected) on one tensor: `direction(grad)` is the
    step of unit learning rate, m̂ / (√v̂ + ε); the caller scales and subtracts it."""

    def __init__(self, like: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.betas, self.eps, self.t = betas, eps, 0

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        return self.m / (1 - b1 ** self.t) / denom


def channel_std(dataset, like: torch.Tensor) -> torch.Tensor:
    """σ_c of the dataset (the model's own normalisation) as 1×C×1×1 on `like`'s device."""
    return torch.tensor(dataset.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


LR_SPACES = ("forest", "model")


def step_std(dataset, like: torch.Tensor, lr_space: str) -> torch.Tensor:
    """The σ_c (1×C×1×1) that turns the brew's normalised step into pixels: forest's for the dataset's family
    (`lr_space` forest) or our model's own normalisation (`model`)."""
    if lr_space == "model":
        return channel_std(dataset, like)
    from ..data.catalog import FOREST_STD

    return torch.tensor(FOREST_STD[dataset.family], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def poison_tensors(ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(poisons' clean images, their labels, the target image 1×C×H×W), on the device, pixels in [0, 1]."""
    from ..core.device import to_float

    x = to_float(ctx.dataset.train.x[ctx.indices], ctx.device)
    y = ctx.dataset.train.y[ctx.indices].to(ctx.device)
    target = to_float(ctx.dataset.test.x[ctx.target.index:ctx.target.index + 1], ctx.device)
    return x, y, target


class RestartStore:
    """Finished restarts of an interrupted craft: `restart-<r>.safetensors` (δ and its final loss) in `directory`."""

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory is not None else None

    def _path(self, restart: int) -> Path:
        return self.directory / f"restart-{restart:04d}.safetensors"

    def get(self, restart: int) -> tuple[torch.Tensor, float] | None:
        if self.directory is None or not self._path(restart).exists():
            return None
        try:
            saved = read_tensors(self._path(restart))
            return saved["delta"], float(saved["loss"].item())
        except Exception:  # unreadable (writes are atomic, so should not happen): craft the restart again
            return None

    def put(self, restart: int, delta: torch.Tensor, loss: float) -> None:
        if self.directory is None:
            return
        state = {"delta": delta.float().contiguous().cpu(), "loss": torch.tensor([loss], dtype=torch.float64)}
        with os_error_in_one_line("an interrupted craft's state", self._path(restart)):
            atomic_write_bytes(self._path(restart), st_save(state))


@dataclass(frozen=True)
class Brew:
    """Forest's brew settings (defaults, forest/options.py: 250 iterations, 8 restarts, tau 0.1, pbatch 512,
    `--paugment` on)."""

    iterations: int
    restarts: int
    lr: float
    pbatch: int
    augment: bool
    lr_space: str = "forest"

    def run(self, ctx: AttackContext, name: str, x: torch.Tensor, objective: Objective) -> tuple[torch.Tensor, dict]:
        """(δ of the best restart on the CPU, info: every restart's final loss, the best, how many were resumed)."""
        store = RestartStore(ctx.partial_dir)
        results, resumed = [], 0
        for r in range(self.restarts):
            saved = store.get(r)
            if saved is None:
                saved = self.restart(ctx, name, x, objective, r)
                store.put(r, *saved)
            else:
                resumed += 1
                ctx.report(self.description(ctx, name, r), (r + 1) * self.iterations, self.restarts * self.iterations)
            results.append(saved)
        losses = [loss for _, loss in results]
        best = min(range(len(losses)), key=losses.__getitem__)
        return results[best][0], {"restart_losses": losses, "best_restart": best, "resumed_restarts": resumed}

    def description(self, ctx: AttackContext, name: str, restart: int) -> str:
        return f"{name} · {ctx.dataset.name} · restart {restart + 1}/{self.restarts}"

    def restart(self, ctx: AttackContext, name: str, x: torch.Tensor, objective: Objective,
                restart: int) -> tuple[torch.Tensor, float]:
        """One restart: (δ on the CPU, the mean batch loss of its last iteration)."""
        g = torch.Generator().manual_seed(derived_seed(ctx.seed, f"{name}:restart-{restart}"))
        eps = ctx.eps
        delta = (torch.randn(x.shape, generator=g) * eps).clamp_(-eps, eps).to(x.device)
        sigma = step_std(ctx.dataset, x, self.lr_space)
        augment = crafting_augment(ctx.dataset.family, x.shape[-1]) if self.augment else None
        steps, adam = milestones(self.iterations), Adam(delta)
        grad = torch.empty_like(delta)
        description, total = self.description(ctx, name, restart), self.restarts * self.iterations
        loss = float("nan")
        for i in range(self.iterations):
            draws = augment.draw(len(x), g) if augment is not None else None
            losses = []
            for start, stop in batches(len(x), self.pbatch):
                rows = delta[start:stop].detach().requires_grad_(True)
                inputs = x[start:stop] + rows
                if augment is not None:
                    inputs = augment.apply(inputs, draws[start:stop])
                batch_loss = objective(inputs, start, stop)
                (grad[start:stop],) = torch.autograd.grad(batch_loss, rows)
                losses.append(batch_loss.detach())
            loss = float(torch.stack(losses).mean())
            with torch.no_grad():
                step = adam.direction(grad.sign()).mul_(sigma * (self.lr * lr_factor(i, steps)))
                delta = project(x, delta - step, eps)
            ctx.report(description, restart * self.iterations + i + 1, total)
        return delta.cpu(), loss


FOREST_DEFAULTS = {"iterations": 250, "restarts": 8, "lr": 0.1, "pbatch": 512, "augment": True,
                   "lr_space": "forest"}
BREW_SOURCES = {"iterations": "forest --attackiter 250", "restarts": "forest --restarts 8",
                "lr": "forest --tau 0.1 (signAdam; normalised units, δ steps lr·σ_c pixels)",
                "pbatch": "forest --pbatch 512",
                "lr_space": "forest: δ and its step live in forest's normalised space (GM:forest/consts.py σ; "
                            "kettle.py `ds`); model: poisonbench before issue 54",
                "augment": "forest --paugment; its crafting transform is the victim's (kettle.py); unset: ours follows "
                           "the victim's recipe (issue 54)"}
BREW_HELP = {"iterations": "Optimisation steps (per restart).",
             "restarts": "Restarts from a random δ; the lowest final loss is kept.",
             "lr": "Learning rate (forest: signed Adam in normalised units, δ steps lr·σ_c pixels).",
             "pbatch": "Poisons per objective batch (gradients of all batches make one step).",
             "lr_space": "The space --lr is in: forest (forest's normalised space, its σ per dataset family: a step "
                         "is lr·σ pixels, as forest's) or model (our model's own normalisation: σ 1 on the MNIST "
                         "family, 3.25× forest's step; poisonbench before issue 54).",
             "augment": "Forest's differentiable augmentation while crafting (no flips for the MNIST family); unset: "
                        "on when the surrogate's recipe (the victim's, under defend) augments."}
BREW_BOUNDS = {"iterations": {"minimum": 1, "maximum": MAX_ITERATIONS},
               "restarts": {"minimum": 1, "maximum": MAX_DRAWS}, "lr": {"positive": True},
               "pbatch": {"minimum": 1, "maximum": MAX_BATCH_SIZE}, "augment": {},
               "lr_space": {"choices": LR_SPACES}}
BREW_TYPES = {"iterations": int, "restarts": int, "lr": float, "pbatch": int, "augment": bool, "lr_space": str}
FOLLOWS_RECIPE = {"augment"}  # unset by default: resolved from the surrogate's recipe (TargetedAttack.settle_surrogate)


def brew_params(impl_defaults: dict[str, dict[str, Any]] | None = None,
                sources: dict[str, str] | None = None) -> tuple[Param, ...]:
    """The brew's options. Without `impl_defaults`: forest's defaults (GM). With them (BP, FC: `{impl: {name:
    value}}`): default None, filled per `--impl` by `ForestOrToxic` (the help names each impl's default)."""
    out = []
    for name, kind in BREW_TYPES.items():
        if impl_defaults is None:
            default, text, source = FOREST_DEFAULTS[name], BREW_HELP[name], BREW_SOURCES[name]
            default = None if name in FOLLOWS_RECIPE else default
        else:
            default = None
            per_impl = [f"{impl} {'the recipe' if name in FOLLOWS_RECIPE else d[name]}"
                        for impl, d in impl_defaults.items() if name in d]
            text = f"{BREW_HELP[name]} Unset (off): the --impl's default, {', '.join(per_impl)}."
            source = "; ".join(s for s in (BREW_SOURCES[name], (sources or {}).get(name)) if s)
        out.append(Param(name, kind, default, text, source, **BREW_BOUNDS[name]))
    return tuple(out)


def impl_param(toxic: str) -> Param:
    return Param("impl", str, "forest", f"Implementation: forest (forest's recipe, what the paper ran) or toxic "
                 f"(the 'Just How Toxic' benchmark's {toxic}).",
                 "HINT README, 'Crafting poisoning data': crafted with forest", choices=("forest", "toxic"))


def feature_model(ctx: AttackContext, sample: torch.Tensor) -> torch.nn.Module:
    """A frozen eval-mode copy of the surrogate for input gradients of its features (`kernels.inference_copy`)."""
    from ..engine.kernels import inference_copy

    return inference_copy(ctx.surrogate(), sample, ctx.accel)


class ForestOrToxic(TargetedAttack):
    """An attack with two implementations (`--impl`): forest's recipe (what HINT ran, HINT README), crafted by
    the brew, or the "Just How Toxic" benchmark's. Options left unset take the chosen impl's default; an option of
    the other impl is refused."""

    IMPL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, family: str, **params: Any):
        super().__init__(family, **params)
        for key, value in self.IMPL_DEFAULTS[self.params["impl"]].items():
            if self.params.get(key) is None:
                self.params[key] = value

    def validate(self) -> None:
        impl = self.params["impl"]
        mine = set(self.IMPL_DEFAULTS[impl])
        foreign = sorted(k for d in self.IMPL_DEFAULTS.values() for k in d
                         if k not in mine and self.params.get(k) is not None)
        if foreign:
            flag = "--" + foreign[0].replace("_", "-")
            other = [i for i, d in self.IMPL_DEFAULTS.items() if foreign[0] in d]
            raise PoisonbenchError(f"{flag} of attack {self.name!r} applies to --impl {' or '.join(other)}, "
                                   f"not --impl {impl}")

    def brew(self) -> Brew:
        p = self.params
        return Brew(p["iterations"], p["restarts"], p["lr"], p["pbatch"], p["augment"], p["lr_space"])
