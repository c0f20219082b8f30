"""HINT: Healthy Influential-Noise based Training (paper Algorithms 1-3; official code: HINT:train_utils.py,
influence_functions.py, hessian_functions.py, dataset.py).

Algorithm 1 on the engine's hooks: the model trains normally (pre-training) until the first scheduled epoch;
there, `on_epoch_start` selects D_s, the ⌈r·n⌉ training examples of largest |I_up,loss| (Algorithm 2, once),
and at every scheduled epoch each selected example's noise is updated (Algorithm 3)

    δ ← Π_β(δ − γ·I_pert,loss(x + δ)),    x̂ = clip(x + δ, 0, 1),    δ := x̂ − x  (Alg. 3 line 2)

and written into `ctx.train_x`, so training continues on D̂_s ∪ D_u. Influence is head-only and batched
(`poisonbench.defenses.influence`); the model is in eval mode while influence is computed.

Schedule convention: an entry `e` is a 0-based epoch index; the update runs before training epoch `e`, i.e.
after `e` completed epochs (the official `for e in range(epochs): if e in hin_schedule`). The paper's MNIST
schedule 5, 15 of 30 epochs and CIFAR-10 5, 15, 40 of 80 are scaled to the recipe's epochs E as
`min(E − 1, max(1, round(e · E / E_paper)))`, de-duplicated (E = 1 gives [0]). Every quirk decision
(official bugs B1-B5, quirks Q1-Q6) is listed in docs/fidelity.md, "HINT (issue 4)".
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import PoisonbenchError
from ..core.params import Param
from ..engine.hooks import Defense
from ..engine.threat import Threat
from . import influence as inf
from .hint_record import figure_examples, poison_statistics

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext
    from ..engine.recipes import Recipe

PAPER_EPOCHS = {"mnist": 30, "cifar10": 80}  # paper §VI-A1
PAPER_SCHEDULE = {"mnist": (5, 15), "cifar10": (5, 15, 40)}  # paper §VI-A3 "HINT"
GRAD_SPACES = ("pixel", "normalized")
HESSIAN_DATA = ("all", "selected")
AT_BETA_TOL = 1e-6


def scale_schedule(family: str, epochs: int) -> list[int]:
    """The paper's schedule for `family`, scaled to `epochs` (see the module docstring)."""
    if epochs <= 1:
        return [0]
    paper = PAPER_EPOCHS.get(family, 30)
    return sorted({min(epochs - 1, max(1, round(e * epochs / paper))) for e in PAPER_SCHEDULE.get(family, (5, 15))})


def parse_schedule(value: Any) -> list[int]:
    """`--schedule 5,15` (or an int, or a list) → the sorted distinct epochs."""
    return sorted(set(_schedule_items(value)))


def _schedule_items(value: Any) -> list[int]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise PoisonbenchError(f"--schedule must be comma-separated epoch numbers, got {value!r}") from None
    if isinstance(value, int):
        return [value]
    return [int(e) for e in value]


def _paper_schedule(family: str, recipe: Recipe) -> list[int]:
    return scale_schedule(family, recipe.epochs)


class Hint(Defense):
    name = "hint"
    summary_text = "Healthy Influential-Noise based Training (the paper's defense)"
    PARAMS = (
        Param("ratio", float, 0.5, "r, the fraction of training examples selected for healthy noise.",
              'paper Table II caption "r = 0.5"; official MNIST README', positive=True, maximum=1),
        Param("beta", float, 0.062, "β, L∞ bound of the healthy noise (pixel units).",
              "paper §VI-A3; official eps 16/255 = 0.0627", positive=True, maximum=1),
        Param("gamma", float, 0.1, "γ, noise step scale.",
              "paper §VI-A3; official README (the argparse default is 0.01)", positive=True),
        Param("schedule", list, _paper_schedule,
              "Noise-update epochs, comma-separated, 0-based (the update runs before that epoch), taken as given; "
              "the default is the paper's (5,15 of 30 epochs on MNIST; 5,15,40 of 80 on CIFAR-10) scaled to the "
              "recipe's epochs.", "paper §VI-A3", parse=parse_schedule),
        Param("ihvp", str, "cg", "Inverse-Hessian-vector solver: exact (Cholesky) | cg | lissa (the official one).",
              "ours: CG solves (H + λI)s = v exactly; exact is O(D³), D = 16,010 on MNIST", choices=inf.SOLVERS),
        Param("damping", float, inf.DEFAULT_DAMPING, "λ in (H + λI)⁻¹ (official LiSSA damp 0.01 × scale 50).",
              "official LiSSA damp 0.01, scale 50", positive=True),
        Param("sign", bool, False, "Signed noise update δ ← Π_β(δ − γ·sign(I_pert)) (official --sign).",
              "official --sign"),
        Param("grad_space", str, "pixel", "pixel (paper) | normalized (official CIFAR quirk Q2: gradient w.r.t. "
              "the normalised input).", "docs/fidelity.md, HINT quirk Q2", choices=GRAD_SPACES),
        Param("quantize", bool, False, "Truncate noisy images to uint8 after each update (official quirk Q3).",
              "docs/fidelity.md, HINT quirk Q3"),
        Param("gamma_decay_epoch", int, None, "γ/10 from this 0-based epoch on (official quirk Q1: 40).",
              "docs/fidelity.md, HINT quirk Q1", minimum=0),
        Param("hessian_data", str, "all", "Hessian of later updates over all (default) | selected (official "
              "quirk Q4) training examples.", "docs/fidelity.md, HINT quirk Q4", choices=HESSIAN_DATA),
    )

    def __init__(self, family: str, recipe: Recipe, threat: Threat | None = None, **params: Any):
        super().__init__(family, recipe, threat, **params)
        self._reset()

    def validate(self) -> None:
        p, epochs = self.params, self.recipe.epochs
        if p["quantize"] and p["beta"] < 1 / 255:  # the uint8 grid cannot hold x̂ within β of an off-grid x0
            raise PoisonbenchError(f"--quantize needs --beta >= 1/255 (one uint8 step), got {p['beta']}")
        if p["ihvp"] == "lissa" and p["damping"] >= 2 * inf.LISSA_SCALE:
            raise PoisonbenchError(f"--damping {p['damping']:g} with --ihvp lissa: the recursion diverges unless "
                                   f"λ < 2·scale = {2 * inf.LISSA_SCALE:g} (use --ihvp cg or exact)")
        if not p["schedule"]:
            raise PoisonbenchError("--schedule is empty; give at least one epoch in [0, "
                                   f"{epochs - 1}]")
        bad = [e for e in p["schedule"] if not 0 <= e < epochs]
        if bad:
            raise PoisonbenchError(f"--schedule epoch {bad[0]} is outside [0, {epochs - 1}] (0-based epochs of a "
                                   f"{epochs}-epoch recipe)")

    # ------------------------------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.selected: torch.Tensor | None = None  # sorted ascending
        self.pool: torch.Tensor | None = None  # the train rows in use when D_s was selected
        self.rank_order: torch.Tensor | None = None  # selected indices by descending |I_up|
        self.x0: torch.Tensor | None = None  # original rows of the selected examples
        self.delta: torch.Tensor | None = None
        self.i_up: torch.Tensor | None = None
        self.selection: dict = {}
        self.updates: list[dict] = []
        self._s: inf.InfluenceVector | None = None
        self._s_epoch: int | None = None
        self.context: TrainContext | None = None
        self._generator: torch.Generator | None = None

    def prepare(self, ctx: TrainContext) -> None:
        if ctx.val_x is None or len(ctx.val_y) == 0:
            raise PoisonbenchError("--method hint needs a validation split (the defender's trusted clean data); "
                                   "the dataset has none")
        if self.params["grad_space"] == "normalized" and getattr(getattr(ctx.model, "normalize", None), "std",
                                                                 None) is None:
            raise PoisonbenchError(f"--grad-space normalized needs a model that normalises its input itself "
                                   f"(a `normalize.std`); {type(ctx.model).__name__} has none")
        self._reset()
        self.context = ctx
        # own stream for LiSSA sampling: training order/augmentation stay identical to `--method none`
        self._generator = torch.Generator(device=ctx.device).manual_seed((ctx.seed * 1_000_003 + 4) % 2 ** 63)
        return None

    def _pool(self, ctx: TrainContext) -> torch.Tensor:
        return torch.arange(len(ctx.train_y), device=ctx.device) if ctx.active is None else ctx.active

    def _pool_rows(self, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool's (x, y); the whole train tensor itself when every row is active (no 600 MB copy on CIFAR)."""
        if ctx.active is None:
            return ctx.train_x, ctx.train_y
        return ctx.train_x[ctx.active], ctx.train_y[ctx.active]

    def _solve(self, ctx: TrainContext, epoch: int, hx: torch.Tensor, hy: torch.Tensor, inputs=None):
        p = self.params
        self._s = inf.influence_vector(ctx.model, hx, hy, ctx.val_x, ctx.val_y, p["ihvp"], p["damping"],
                                       self._generator, train_inputs=inputs)
        self._s_epoch = epoch
        return self._s

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if epoch not in self.params["schedule"]:
            return
        if self.context is None:  # hooks called without prepare (direct use)
            self.prepare(ctx)
        if self.selected is None:
            with ctx.timed("hint_select"):
                self._select(ctx, epoch)
        with ctx.timed("hint_update"):
            self._update(ctx, epoch)

    def _select(self, ctx: TrainContext, epoch: int) -> None:
        """Algorithm 2: I_up,loss for every training example in one batched pass, keep the top ⌈r·n⌉ by |I|."""
        start = time.perf_counter()
        pool = self._pool(ctx)
        x, y = self._pool_rows(ctx)
        h, logits = inf.head_inputs(ctx.model, x)
        s = self._solve(ctx, epoch, x, y, inputs=(h, logits))
        i_up = inf.influence_up(h, logits, y, s.s)
        top = inf.top_abs(i_up, self.params["ratio"])
        self.pool = pool
        self.rank_order = pool[top]
        self.selected = torch.sort(self.rank_order).values
        self.i_up = torch.zeros(len(ctx.train_y), dtype=i_up.dtype, device=ctx.device)
        self.i_up[pool] = i_up
        self.x0 = ctx.train_x[self.selected].clone()
        self.delta = torch.zeros_like(self.x0)
        k = len(self.selected)
        sel_abs = i_up[top].abs()
        self.selection = {
            "epoch": epoch, "n_pool": len(pool), "selected": k,
            "i_up_abs_mean": i_up.abs().mean().item(), "i_up_abs_max": i_up.abs().max().item(),
            "i_up_abs_threshold": sel_abs.min().item() if k else None,
            "i_up_positive_selected": int((i_up[top] > 0).sum()),
            "ihvp": s.stats(), "seconds": round(time.perf_counter() - start, 4),
        }

    def _gamma(self, epoch: int) -> float:
        g, decay = self.params["gamma"], self.params["gamma_decay_epoch"]
        return g / 10 if decay is not None and epoch >= decay else g

    def _step(self, i_pert: torch.Tensor) -> torch.Tensor:
        """The update's direction per pixel before γ: sign(I_pert) with `--sign` (official), else I_pert itself
        (Alg. 3). One method, so that a control can keep everything else of the update (the noise-direction
        control of experiments/plugins/hint-direction-control replaces the sign only)."""
        return i_pert.sign() if self.params["sign"] else i_pert

    def _update(self, ctx: TrainContext, epoch: int) -> None:
        """Algorithm 3 for every selected example at once."""
        p = self.params
        start = time.perf_counter()
        sel = self.selected
        y = ctx.train_y[sel]
        x_hat = ctx.train_x[sel]
        self.delta = x_hat - self.x0  # Alg. 3 line 2 (the effective, clipped noise)
        solves = self._s_epoch != epoch  # the first update reuses the selection's s (same epoch, same θ)
        if solves:  # the model moved since the last solve: recompute s with the current θ
            if p["hessian_data"] == "selected":
                self._solve(ctx, epoch, x_hat, y)
            else:
                self._solve(ctx, epoch, *self._pool_rows(ctx))
        s = self._s
        std = ctx.model.normalize.std.flatten() if p["grad_space"] == "normalized" else None  # checked in prepare
        i_pert = inf.influence_pert(ctx.model, x_hat, y, s.s, input_std=std)
        gamma = self._gamma(epoch)
        step = self._step(i_pert)
        delta = (self.delta - gamma * step).clamp_(-p["beta"], p["beta"])
        x_new = (self.x0 + delta).clamp_(0, 1)
        if p["quantize"]:  # official `(img*255).to(uint8)` truncation, kept inside the β-ball: flooring x0 − β
            # lands one grid step below it when β (0.062 < 16/255) or x0 (a poisoned row) is off the 1/255 grid
            x_new = torch.maximum(torch.floor(x_new * 255 + 1e-4),
                                  torch.ceil((self.x0 - p["beta"]).clamp_(min=0) * 255 - 1e-4)) / 255
        self.delta = x_new - self.x0
        ctx.train_x[sel] = x_new
        stats = self._noise_stats()
        self.updates.append({
            "epoch": epoch, "gamma": gamma, "ihvp": s.stats() if solves else None,
            "i_pert_abs_mean": i_pert.abs().mean().item(), "i_pert_abs_max": i_pert.abs().max().item(),
            "step_abs_mean": (gamma * step).abs().mean().item(),
            **stats, "seconds": round(time.perf_counter() - start, 4),
        })

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """The selection, its influence values and the noisy rows x̂ (x0 is re-read from the poisoned train set,
        which a resumed run rebuilds identically), plus the LiSSA sampler's stream."""
        tensors = {"lissa_generator": self._generator.get_state()}
        if self.selected is not None:
            tensors.update(selected=self.selected, rank_order=self.rank_order, i_up=self.i_up,
                           x_hat=ctx.train_x[self.selected], pool=self.pool)
        return tensors, {"selection": self.selection, "updates": self.updates}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self._generator.set_state(tensors["lissa_generator"])
        self.selection, self.updates = state["selection"], state["updates"]
        if "selected" not in tensors:
            return
        self.selected = tensors["selected"].to(ctx.device)
        self.rank_order = tensors["rank_order"].to(ctx.device)
        self.i_up = tensors["i_up"].to(ctx.device)
        self.pool = tensors["pool"].to(ctx.device)
        self.x0 = ctx.train_x[self.selected].clone()
        x_hat = tensors["x_hat"].to(ctx.device)
        ctx.train_x[self.selected] = x_hat
        self.delta = x_hat - self.x0  # as after an update: the next one starts from the same bits
        self._s_epoch = None  # s is recomputed at the next scheduled epoch, as it would be without the resume

    def _noise_stats(self) -> dict:
        d = self.delta.abs().flatten(1)
        beta = self.params["beta"]
        # at β: no further step fits. On the uint8 grid (--quantize) that is within one step of β: from an on-grid
        # x0, β = 0.062 allows 15/255 = 0.0588 at most
        at = (d > beta - 1 / 255 + 1e-6) if self.params["quantize"] else (d >= beta * (1 - AT_BETA_TOL))
        per_example = at.any(1) if d.numel() else at.new_zeros(0)
        return {
            "delta_abs_mean": d.mean().item() if d.numel() else 0.0,
            "delta_abs_max": d.max(1).values.max().item() if d.numel() else 0.0,
            "reached_beta": int(per_example.sum()),
            "pixels_at_beta_fraction": at.float().mean().item() if d.numel() else 0.0,
            "changed": int((d > 0).any(1).sum()) if d.numel() else 0,
        }

    # ------------------------------------------------------------------------------------------------------------

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        out: dict[str, Any] = {"method": self.name, "schedule": self.params["schedule"],
                               "selection": self.selection, "updates": self.updates}
        if self.selected is None:
            return out
        if poisoned is not None:
            out["selection"] = {**self.selection, **poison_statistics(self, poisoned.to(self.selected.device))}
        k = len(self.selected)
        out["selected"] = k
        out["noise"] = {**self._noise_stats(), "beta": self.params["beta"], "selected": k}
        if poisoned is not None:
            out["selected_poisoned"] = out["selection"]["selected_poisoned"]
        out["examples"] = figure_examples(self, poisoned)
        return out
