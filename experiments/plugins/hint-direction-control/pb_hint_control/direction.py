"""HINT with its noise's direction replaced by a random sign: the control that tells whether the influence-guided
direction of HINT's healthy noise does the work, or any noise of that size on the same rows would
(experiments/table3_powered.md, issue 80).

Everything of HINT (poisonbench.defenses.hint: Algorithm 1's schedule, Algorithm 2's selection of the ⌈r·n⌉ rows
of largest |I_up,loss|, Algorithm 3's projection onto the β-ball and [0, 1]) is kept but the sign of each pixel's
step: at the selection, a sign s ∈ {−1, +1} is drawn for every pixel of every selected row, once, and each update
moves the pixel by γ·|step|·s instead of γ·step (step = sign(I_pert) with `--sign`, else I_pert). Fixed, not
redrawn per update, so the noise accumulates to β like a consistent influence direction does (a fresh sign per
update would mostly cancel and test a smaller noise). With `--sign` the noise is then exactly HINT's in size (|δ| =
min(k·γ, β) after k updates, before the [0, 1] clip) and random in direction.

The signs come from a stream of their own, seeded from the run's seed (never the training order's, nor HINT's
LiSSA sampler's), and are drawn again identically on a resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from poisonbench.defenses.hint import Hint

if TYPE_CHECKING:
    from poisonbench.engine.hooks import TrainContext

SIGN_STREAM = 6  # HINT's LiSSA sampler is seed·1,000,003 + 4; this control's signs use + 6


class HintRandomSign(Hint):
    name = "hint-random-sign"
    summary_text = ("Control for HINT: its rows, schedule and step sizes, with a random sign per pixel (fixed at "
                    "the selection) in place of the influence's direction")

    def _reset(self) -> None:
        super()._reset()
        self.random_sign: torch.Tensor | None = None
        self.agreement: list[float] = []

    def _draw_signs(self, ctx: TrainContext) -> None:
        generator = torch.Generator(device=ctx.device).manual_seed((ctx.seed * 1_000_003 + SIGN_STREAM) % 2 ** 63)
        bits = torch.randint(0, 2, self.x0.shape, generator=generator, device=ctx.device)
        self.random_sign = (bits * 2 - 1).to(self.x0.dtype)

    def _select(self, ctx: TrainContext, epoch: int) -> None:
        super()._select(ctx, epoch)
        self._draw_signs(ctx)

    def load_state(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], state: dict) -> None:
        super().load_state(ctx, tensors, state)
        self.agreement = list(state.get("agreement", []))
        if self.selected is not None:
            self._draw_signs(ctx)

    def state(self, ctx: TrainContext) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, state = super().state(ctx)
        return tensors, {**state, "agreement": self.agreement}

    def _step(self, i_pert: torch.Tensor) -> torch.Tensor:
        influence = super()._step(i_pert)
        step = influence.abs() * self.random_sign
        moved = influence != 0
        # how often the random direction happens to be HINT's (about one half): once per update, not per batch
        self.agreement.append(((step == influence) & moved).sum().item() / max(int(moved.sum()), 1))
        return step

    def summary(self, poisoned: torch.Tensor | None = None) -> dict:
        return {**super().summary(poisoned),
                "direction": {"kind": "random sign per pixel, fixed at the selection",
                              "agreement_with_influence_sign": self.agreement}}
