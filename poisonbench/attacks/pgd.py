"""`pgd`: error-maximising L∞ PGD on each poisoned example against the clean surrogate (Madry et al.'s
settings, MNC and C10C `config.json`: MNIST ε 0.3, 40 steps of 0.01, random start; CIFAR-10 ε 8/255, 10 steps of
2/255).

The objective is separable per example and the surrogate is in eval mode, so one backward of the summed loss
over a large batch gives every example's input gradient exactly; the surrogate's parameters are frozen, so no
weight gradients are computed, its BatchNorms are folded into the convolutions, each ReLU + average pooling pair
has one fused backward, and on the CPU its few-channel stem convolution computes the input gradient as one GEMM +
col2im and a convolution with a large kernel on a small map runs as DFT-domain matrix products (`inference_copy`,
`poisonbench.engine.kernels`; `--accel off`: the surrogate's own modules).
For long crafts on an accelerator the step (forward, input gradient, signed update, projection) is
`torch.compile`d with one static batch shape (on the CPU only with `--compile on`); that changes δ only by float
rounding, so it is an execution option (`--compile`), recorded in the manifest, not part of the poison id.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.params import MAX_BATCH_SIZE, MAX_STEPS, Param
from ..engine.chunking import chunk_rows
from ..engine.kernels import inference_copy
from .base import Attack, AttackContext, PartialBatches, batches

# `compile="auto"`: compile the PGD step when rows × steps reach this, on an accelerator only. On the CPU the
# eager step of the ConvNet's `inference_copy` (StemConv2d, ReluAvgPool2d, SpectralConv2d) is at least as fast
# as the compiled one and pays no compile: `craft --attack pgd` on mnist-5k (2 threads, paused background, warm
# Inductor cache for the compiled runs) took 39-54 s eager against 49-56 s compiled (+15-25 s on a cold cache).
# ResNet-18 on the CPU gains ≤ 5 % compiled after a 32 s compile (docs/fidelity.md): `--compile on` there.
COMPILE_MIN_ROW_STEPS = 100_000


def signed_step(model, x: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor, eps: float, step: float):
    """One L∞ PGD step: δ + step·sign(∇δ Σ CE(model(x+δ), labels)), projected onto the ε-ball and [0, 1].

    `step` > 0 ascends the loss (error-maximising), < 0 descends it (toward `labels`). The loss is a sum of
    per-example terms, so every row's gradient is its own.
    """
    delta = delta.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    with torch.no_grad():
        delta = delta + step * grad.sign()
        return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def linf_pgd(model, x: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, step_size: float,
             init: torch.Tensor | None, maximize: bool, step_fn=None) -> torch.Tensor:
    """δ after `steps` signed steps on CE(model(x+δ), labels): ascent if `maximize` else descent.

    Each step projects onto the ε-ball and the pixel box [0, 1]. `init` is the starting δ (None: zero).
    `step_fn` replaces `signed_step` (a compiled copy of it).
    """
    step_fn = step_fn or signed_step
    delta = torch.zeros_like(x) if init is None else (x + init.clamp(-eps, eps)).clamp(0, 1) - x
    step = step_size if maximize else -step_size
    for _ in range(steps):
        delta = step_fn(model, x, delta, labels, eps, step)
    return delta.detach()


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with zero rows appended up to `rows` (a compiled step has one static batch shape)."""
    if len(t) == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - len(t), *t.shape[1:]))])


class _SurrogatePGD(Attack):
    uses_surrogate = True
    maximize = True

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y

    def perturb(self, ctx: AttackContext) -> torch.Tensor:
        from ..core.device import compile_static, should_compile

        p = self.params
        x_all = ctx.dataset.train.x[ctx.indices]
        y_all = ctx.dataset.train.y[ctx.indices]
        step_size = p["step_size"] if p.get("step_size") is not None else ctx.eps * p.get("step_fraction", 0.2)
        g = torch.Generator().manual_seed(ctx.seed)
        out = torch.empty(x_all.shape, dtype=torch.float32)
        n = len(x_all)
        size = min(p["batch_size"], n)
        ctx.compiled = should_compile(ctx.compile, n, p["steps"],
                                      COMPILE_MIN_ROW_STEPS if ctx.device.type != "cpu" else math.inf)
        sample = x_all[:1].to(ctx.device).float().div_(255).contiguous(memory_format=torch.channels_last)
        model = inference_copy(ctx.surrogate(), sample, ctx.accel)
        chunk = chunk_rows(model, sample, size)  # execution only: rows of one compiled step (see chunk_rows)
        padded = -(-size // chunk) * chunk
        step_fn = None
        done = PartialBatches(ctx.partial_dir)
        for start, stop in batches(n, size):
            init = None
            if p.get("random_start"):  # drawn for the real rows only: the stream does not depend on `size`
                init = (torch.rand((stop - start, *x_all.shape[1:]), generator=g) * 2 - 1).mul_(ctx.eps)
            finished = done.get(start, stop)
            if finished is not None:  # crafted before an interruption (same poison id, same batch)
                out[start:stop] = finished
                ctx.resumed_rows += stop - start
                ctx.report(f"{self.name} · {ctx.dataset.name}", stop, n)
                continue
            if ctx.compiled and step_fn is None:
                step_fn = compile_static(signed_step)
            x = x_all[start:stop].to(ctx.device).float().div_(255).contiguous(memory_format=torch.channels_last)
            y = self.labels(y_all[start:stop], ctx.dataset.num_classes).to(ctx.device)
            init = None if init is None else init.to(ctx.device)
            if ctx.compiled:  # one static shape: zero-pad to whole chunks, drop the padding after
                x, y = pad_rows(x, padded), pad_rows(y, padded)
                init = None if init is None else pad_rows(init, padded)
            delta = torch.cat([
                linf_pgd(model, x[c:c + chunk], y[c:c + chunk], ctx.eps, p["steps"], step_size,
                         None if init is None else init[c:c + chunk], self.maximize, step_fn)
                for c in range(0, len(x), chunk)])
            out[start:stop] = delta[:stop - start].cpu()
            done.put(start, stop, out[start:stop])
            ctx.report(f"{self.name} · {ctx.dataset.name}", stop, n)
        return out


class PGD(_SurrogatePGD):
    name = "pgd"
    in_paper_mix = True
    summary = "error-maximising L∞ PGD against a clean surrogate (Madry settings)"
    PARAMS = (
        Param("steps", int, {"mnist": 40, "cifar10": 10}, "PGD steps.", "MadryLab mnist/cifar10_challenge config",
              minimum=1, maximum=MAX_STEPS),
        Param("step_size", float, {"mnist": 0.01, "cifar10": 2 / 255}, "Signed step size (pixel units).",
              "MadryLab mnist/cifar10_challenge config", positive=True),
        Param("random_start", bool, {"mnist": True, "cifar10": True}, "Start from a uniform point of the ε-ball.",
              "MadryLab config random_start"),
        Param("batch_size", int, {"mnist": 1000, "cifar10": 500},
              "Crafting batch (per-example objective: any size gives the same δ up to float rounding).",
              "poisonbench (speed)", minimum=1, maximum=MAX_BATCH_SIZE),
    )
