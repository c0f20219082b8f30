"""FRIENDS: friendly noise + random noise (Liu et al., NeurIPS 2022; FRIENDS:friendly_noise.py, main.py; HINT paper
§V-B and §VI-A3 "FRIENDS+Bernoulli, β = 0.062").

Friendly noise, generated once before epoch `friendly_begin` with the model in eval mode (`TrainContext.eval_forward`),
for every training row in use (`FRIENDS:friendly_noise.py:L6-88`): from ε ~ U(±8/255), 30 steps of SGD (lr 100,
momentum 0.9, Nesterov; the official MultiStepLR is never stepped, so the lr stays constant) minimise

    KL(p(x) ‖ p(x')) − μ·mean(e²),    e = clamp(ε, ±β),    x' = clamp(x + e, 0, 1)

(`--friendly-loss mse`: the MSE of the raw logits instead of the KL). The stored noise is clamp(ε, ±β) and
training continues on x̂ = clamp(x + δ, 0, 1), written into `ctx.train_x` (as HINT's healthy noise).

Random noise is added to every batch before augmentation from epoch 0 on (`FRIENDS:dataset/poison.py:L72-98`): Bernoulli
±eps per pixel (default), U(±eps) or N(0, eps²), eps = 8/255, NOT clamped to [0, 1] afterwards (the official clamp is
dead code after a `return`: we follow the code that runs).

Batching: both official loss terms are means over a batch of 128, so each example's gradient carries a factor
1/|its batch|. We generate over larger chunks and weight each example by 1/|its official batch| (consecutive
blocks of 128 rows in use, the last one shorter, as the official unshuffled loader makes them): the same update for
every example as the official batch-128 run, whatever the chunk (eval-mode BatchNorm keeps examples independent).
The initial noise is drawn block by block for the same reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..core.params import MAX_STEPS, Param
from ..engine.chunking import chunk_rows
from ..engine.hooks import Defense
from .hint import PAPER_EPOCHS

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext
    from ..engine.recipes import Recipe

OFFICIAL_BATCH = 128  # FRIENDS main.py:L80 / L329-334: the noise generator's loader batch
INIT_EPS = 8 / 255  # FRIENDS friendly_noise.py:L40, hard-coded
MOMENTUM = 0.9  # FRIENDS friendly_noise.py:L13, L42 (Nesterov)
PAPER_BEGIN = 5  # FRIENDS README: --friendly_begin_epoch 5
AUTO_BATCH_CAP = 512
# --noise-batch at most: every CIFAR-10 train row in one pass (50,000, rounded up to a multiple of 128)
MAX_NOISE_BATCH = 50_048
NOISES = ("bernoulli", "uniform", "gaussian", "none")
LOSSES = ("kl", "mse")
AT_BETA_TOL = 1e-6


def scale_begin(family: str, epochs: int) -> int:
    """The README's begin epoch 5, at the paper recipe's epochs for `family`, scaled to `epochs` (E = 1 → 0)."""
    return min(epochs - 1, round(PAPER_BEGIN * epochs / PAPER_EPOCHS.get(family, 30))) if epochs > 1 else 0


def _default_begin(family: str, recipe: Recipe) -> int:
    return scale_begin(family, recipe.epochs)


class Friends(Defense):
    name = "friends"
    summary_text = "FRIENDS: friendly noise (once) + Bernoulli noise (every batch)"
    PARAMS = (
        Param("beta", float, 0.062, "β, L∞ bound of the friendly noise (pixel units).",
              "HINT paper §VI-A3; FRIENDS main.py:L117 friendly_clamp 16 (/255)", positive=True, maximum=1),
        Param("friendly_begin", int, _default_begin,
              "0-based epoch before which the friendly noise is generated (once); the default is the README's 5 at "
              "the paper recipe's epochs (30 MNIST, 80 CIFAR-10), scaled to the recipe's epochs.",
              "FRIENDS README (main.py:L113 default 0); scaling as HINT's schedule", minimum=0),
        Param("friendly_steps", int, 30, "Optimisation steps of the friendly noise.",
              "FRIENDS main.py:L114 friendly_epochs", minimum=1, maximum=MAX_STEPS),
        Param("friendly_lr", float, 100.0, "Learning rate of the noise's SGD (constant: the official scheduler is "
              "never stepped).", "FRIENDS main.py:L115; friendly_noise.py:L44-46", positive=True),
        Param("friendly_mu", float, 1.0, "μ, weight of the noise-magnitude term.", "FRIENDS main.py:L116",
              minimum=0),
        Param("friendly_loss", str, "kl", "kl (KL of the softmax outputs) | mse (of the raw logits).",
              "FRIENDS main.py:L118; friendly_noise.py:L22-23", choices=LOSSES),
        Param("noise", str, "bernoulli", "Random noise added to every batch before augmentation: bernoulli (±eps "
              "per pixel) | uniform U(±eps) | gaussian N(0, eps²) | none. Not clamped to [0, 1] (official).",
              "HINT paper §VI-A3 FRIENDS+Bernoulli; FRIENDS friendly_noise.py:L96-125", choices=NOISES),
        Param("noise_eps", float, 8 / 255, "eps of the random noise (pixel units).", "FRIENDS main.py:L111 "
              "noise_eps 8 (/255)", minimum=0),
        Param("noise_batch", int, 0, "Rows per friendly-noise generation pass, a multiple of 128; 0: auto (memory "
              "only: every example gets the official batch-128 update whatever the pass size).",
              "ours; the official generator's losses are batch means (FRIENDS:friendly_noise.py:L55-70), so each "
              "row's update is the batch-128 one only if every row gets it in a batch of 128", minimum=0,
              maximum=MAX_NOISE_BATCH),
    )

    def __init__(self, family: str, recipe: Recipe, threat=None, **params: Any):
        super().__init__(family, recipe, threat, **params)
        self._reset()

    def validate(self) -> None:
        p, epochs = self.params, self.recipe.epochs
        if p["friendly_begin"] >= epochs:
            raise PoisonbenchError(f"--friendly-begin {p['friendly_begin']} is outside [0, {epochs - 1}] (0-based "
                                   f"epochs of a {epochs}-epoch recipe)")
        if p["noise_batch"] % OFFICIAL_BATCH:
            raise PoisonbenchError(f"--noise-batch must be 0 (auto) or a multiple of {OFFICIAL_BATCH}, got "
                                   f"{p['noise_batch']}")

    def _reset(self) -> None:
        self.rows: torch.Tensor | None = None  # the train rows that carry friendly noise
        self.row_abs_mean: torch.Tensor | None = None  # mean |δ| per such row (for the summary's poison split)
        self.generation: dict | None = None
        self._generator: torch.Generator | None = None

    def prepare(self, ctx: TrainContext) -> None:
        self._reset()
        # own streams: the engine's order/augmentation stream stays identical to `--method none`
        self._generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, "friends-noise"))
        return None

    # --- friendly noise ------------------------------------------------------------------------------------------

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if epoch != self.params["friendly_begin"] or self.rows is not None:
            return
        if self._generator is None:  # hooks called without prepare (direct use)
            self.prepare(ctx)
        with ctx.timed("friends_generate"):
            self._generate(ctx, epoch)

    def pass_rows(self, ctx: TrainContext, sample: torch.Tensor) -> int:
        """Rows per generation pass: `noise_batch`, or the largest multiple of 128 near `chunk_rows`' choice."""
        if self.params["noise_batch"]:
            return self.params["noise_batch"]
        rows = chunk_rows(ctx.model, sample, AUTO_BATCH_CAP)
        return max(OFFICIAL_BATCH, round(rows / OFFICIAL_BATCH) * OFFICIAL_BATCH)

    def _generate(self, ctx: TrainContext, epoch: int) -> None:
        start = time.perf_counter()
        rows = ctx.rows_in_use()
        n = len(rows)
        step = self.pass_rows(ctx, ctx.train_x[:1])
        init_generator = torch.Generator(device=ctx.device).manual_seed(derived_seed(ctx.seed, "friends-init"))
        row_abs_mean = torch.zeros(n, device=ctx.device)
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # Σ|δ|, noise pixels at β, unchanged
        max_abs = torch.zeros((), device=ctx.device, dtype=ctx.train_x.dtype)
        with ctx.eval_forward(ctx.train_x[:1]) as forward:
            for a in range(0, n, step):
                chunk = rows[a:a + step]
                x0 = ctx.train_x[chunk]
                eps = self._initial_noise(init_generator, x0)
                weight = self._official_weights(a, len(chunk), n, x0)
                logits0, noise = self._optimise(forward, x0, eps, weight)
                x_hat = (x0 + noise).clamp_(0, 1)
                with torch.no_grad():
                    unchanged = (forward(x_hat).argmax(1) == logits0.argmax(1)).sum()
                ctx.train_x[chunk] = x_hat
                delta = (x_hat - x0).abs().flatten(1)
                row_abs_mean[a:a + len(chunk)] = delta.mean(1)
                at_beta = (noise.abs() >= self.params["beta"] * (1 - AT_BETA_TOL)).sum()
                totals += torch.stack([delta.sum().double(), at_beta.double(), unchanged.double()])
                max_abs = torch.maximum(max_abs, delta.max())
        total_abs, at_beta, unchanged = totals.tolist()
        pixels = n * ctx.train_x[0].numel()
        self.rows, self.row_abs_mean = rows.clone(), row_abs_mean
        self.generation = {
            "epoch": epoch, "rows": n, "pass_rows": step, "steps": self.params["friendly_steps"],
            "delta_abs_mean": total_abs / pixels if pixels else 0.0, "delta_abs_max": max_abs.item(),
            "noise_at_beta_fraction": at_beta / pixels if pixels else 0.0,
            "prediction_unchanged_fraction": unchanged / n if n else 1.0,
            "seconds": round(time.perf_counter() - start, 4),
        }

    @staticmethod
    def _initial_noise(generator: torch.Generator, x0: torch.Tensor) -> torch.Tensor:
        """U(±8/255), drawn block by block of 128 rows: the same values whatever the pass size."""
        blocks = [torch.rand((min(OFFICIAL_BATCH, len(x0) - b), *x0.shape[1:]), generator=generator,
                             device=x0.device, dtype=x0.dtype) for b in range(0, len(x0), OFFICIAL_BATCH)]
        return (torch.cat(blocks) - 0.5) * 2 * INIT_EPS

    @staticmethod
    def _official_weights(first: int, count: int, n: int, x0: torch.Tensor) -> torch.Tensor:
        """1 / |official batch| of rows first..first+count−1 of n (batches of 128 in order, the last shorter)."""
        position = torch.arange(first, first + count, device=x0.device)
        size = (n - position // OFFICIAL_BATCH * OFFICIAL_BATCH).clamp(max=OFFICIAL_BATCH)
        return 1.0 / size.to(x0.dtype)

    def _optimise(self, forward, x0: torch.Tensor, eps: torch.Tensor, weight: torch.Tensor):
        """The official per-batch loop, each example weighted by 1/|its batch|; returns (clean logits,
        clamp(ε, ±β))."""
        p = self.params
        beta, lr, mu, kl = p["beta"], p["friendly_lr"], p["friendly_mu"], p["friendly_loss"] == "kl"
        pixels = x0[0].numel()
        with torch.no_grad():
            logits0 = forward(x0)
            target = F.log_softmax(logits0, 1) if kl else logits0
        momentum = torch.zeros_like(eps)
        for _ in range(p["friendly_steps"]):
            eps.requires_grad_(True)
            with torch.enable_grad():
                e = eps.clamp(-beta, beta)
                out = forward((x0 + e).clamp(0, 1))
                if kl:  # KL(p_orig ‖ p_pert) per example (KLDivLoss with log_target)
                    fit = F.kl_div(F.log_softmax(out, 1), target, reduction="none", log_target=True).sum(1)
                else:
                    fit = (out - target).square().mean(1)
                loss = (weight * (fit - mu * e.square().flatten(1).sum(1) / pixels)).sum()
            (grad,) = torch.autograd.grad(loss, eps)
            with torch.no_grad():  # torch.optim.SGD(momentum=0.9, nesterov=True), dampening 0, no weight decay
                eps = eps.detach()
                momentum.mul_(MOMENTUM).add_(grad)
                eps.sub_(lr * (grad + MOMENTUM * momentum))
        return logits0, eps.detach().clamp_(-beta, beta)

    # --- random noise --------------------------------------------------------------------------------------------

    def batch_raw(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        kind, eps = self.params["noise"], self.params["noise_eps"]
        if kind == "none":
            return x, y
        if self._generator is None:
            self.prepare(ctx)
        g = self._generator
        if kind == "bernoulli":
            sign = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) > 0.5).to(x.dtype) * 2 - 1
            return x + eps * sign, y
        if kind == "uniform":
            return x + (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps, y
        return x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * eps, y

    # --- checkpoints and record ----------------------------------------------------------------------------------

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        """The noise stream and, once generated, the noisy rows x̂ (x0 is re-read from the rebuilt train set)."""
        tensors = {"noise_generator": self._generator.get_state()}
        if self.rows is not None:
            tensors.update(rows=self.rows, x_hat=ctx.train_x[self.rows], row_abs_mean=self.row_abs_mean)
        return tensors, {"generation": self.generation}

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self._generator.set_state(tensors["noise_generator"])
        self.generation = state["generation"]
        if "rows" in tensors:
            self.rows = tensors["rows"].to(ctx.device)
            self.row_abs_mean = tensors["row_abs_mean"].to(ctx.device)
            ctx.train_x[self.rows] = tensors["x_hat"].to(ctx.device)

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        p = self.params
        out: dict[str, Any] = {"method": self.name, "friendly_begin": p["friendly_begin"], "beta": p["beta"],
                               "noise": {"kind": p["noise"], "eps": p["noise_eps"]}, "generation": self.generation}
        if poisoned is not None and self.rows is not None:
            mask = poisoned.to(self.rows.device)[self.rows]
            for name, rows in (("poisoned", mask), ("clean", ~mask)):
                out[f"{name}_delta_abs_mean"] = self.row_abs_mean[rows].mean().item() if rows.any() else None
        return out
