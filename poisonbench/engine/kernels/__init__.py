"""The CPU kernels, behind one entry point and one switch (docs/engine.md, "CPU kernels (accel)").

Each kernel computes what a plain PyTorch module computes (the same function of the input and the parameters;
float rounding differs) in a way that is faster on this CPU:

- `spectral.SpectralConv2d`: a large-kernel convolution on a small map as DFT-domain matrix products (training
  and frozen copies);
- `moment_bn.MomentConv2d` with `MomentBatchNorm2d`: a small-patch convolution's train-mode BatchNorm from the
  input's patch moments (training);
- `input_grad.StemConv2d`, `input_grad.ReluAvgPool2d` and BatchNorm folding: the input gradients of a frozen
  model (an attack's surrogate, HINT's I_pert).

The rest of the package calls this module only:

- `training_kernels(model, sample, mode)`: the engine swaps the training kernels in for one training; `restore()`
  (or leaving a `with` block) gives the caller its own modules back, and `identity` names the swapped layers for
  the checkpoint's execution identity (a checkpoint is resumed only by the same kernels);
- `inference_copy(model, sample, mode)`: a frozen eval-mode copy for input gradients.

The switch, one of `ACCEL_MODES` (`--accel` on the command line, `env.accel` in records and manifests):

- `auto`: each kernel where it pays off (its `pays_off` rule): the training kernels on a CPU device only; in a
  frozen copy, BatchNorm folding and the fused ReLU + pooling on any device, the stem and DFT convolutions on
  the CPU. This is the behaviour from before the switch existed, so numbers on this CPU are unchanged;
- `off`: plain PyTorch modules everywhere (what a GPU trains with): training swaps nothing, and a frozen copy is
  a deep copy of the model in eval mode with frozen parameters.

How the switch reaches deep callers: `training_kernels` makes its mode the current one until `restore()`, and
crafting sets it around an attack (`use_mode`); a call with `mode=None` takes the current mode (`auto` when none
is set). So the influence code that a defense's hooks reach during training (HINT's `influence.head_inputs`,
`influence.influence_pert`) follows the run's switch without passing it along, while a caller that holds the
value (an attack's `ctx.accel`) passes it explicitly. The current mode is a `contextvars.ContextVar`: per thread.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from ...core.errors import unknown_choice
from . import input_grad, moment_bn, spectral

ACCEL_MODES = ("auto", "off")
_CURRENT: ContextVar[str] = ContextVar("poisonbench_accel", default="auto")


def check_accel_mode(mode: str) -> None:
    if mode not in ACCEL_MODES:
        raise unknown_choice("accel mode", mode, ACCEL_MODES)


def current_mode() -> str:
    """The mode that calls with `mode=None` use: set by a live `training_kernels` or `use_mode`, else `auto`."""
    return _CURRENT.get()


def _resolve(mode: str | None) -> str:
    if mode is None:
        return _CURRENT.get()
    check_accel_mode(mode)
    return mode


@contextmanager
def use_mode(mode: str) -> Iterator[None]:
    """Make `mode` the current mode inside the block (for the calls with `mode=None` it reaches)."""
    check_accel_mode(mode)
    token = _CURRENT.set(mode)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


class TrainingKernels:
    """The training kernels swapped into one model, in place and sharing its parameters and buffers (see
    `training_kernels`). `identity`: the mode and the names of the swapped layers."""

    def __init__(self, model: nn.Module, sample: torch.Tensor, mode: str):
        self._moments: list = []
        self._spectral: list = []
        if mode == "auto" and _on_cpu(model):
            # moment BatchNorm first: the DFT rule then sees the stem as already taken (the order today's numbers
            # were measured with)
            self._moments = moment_bn.swap_moment_batchnorm(model, sample)
            try:
                self._spectral = spectral.swap_spectral(model, sample)
            except BaseException:
                moment_bn.restore_modules(self._moments)  # all or nothing
                raise
        self.identity = {"accel": mode, "spectral": spectral.swapped_names(model),
                         "moment_bn": moment_bn.moment_names(model)}
        self._token = _CURRENT.set(mode)

    def restore(self) -> None:
        """Put the caller's modules back (with the trained parameters and statistics) and the previous mode.
        Idempotent."""
        if self._token is None:
            return
        spectral.restore_convs(self._spectral)  # in the reverse order of the swaps
        moment_bn.restore_modules(self._moments)
        self._spectral, self._moments = [], []
        _CURRENT.reset(self._token)
        self._token = None

    def __enter__(self) -> TrainingKernels:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def training_kernels(model: nn.Module, sample: torch.Tensor, mode: str | None = None) -> TrainingKernels:
    """Swap, in place, the training kernels into `model` (already on its device, in its training memory format)
    where they pay off at the input sizes it sees on `sample` (one row is enough), and make `mode` the current
    mode until `restore()`. `auto` on the CPU: a small-patch convolution's BatchNorm from patch moments (the
    ConvNet's stem) and large kernels on small maps as DFT-domain products; `off`, or a model on a GPU: nothing.
    The swapped modules share the parameters, so an optimizer built after the swap trains the caller's."""
    return TrainingKernels(model, sample, _resolve(mode))


def inference_copy(model: nn.Module, sample: torch.Tensor | None = None, mode: str | None = None) -> nn.Module:
    """A frozen eval-mode copy of `model` for input gradients (`model` is untouched), channels_last.

    `auto`: `input_grad.fused_copy`: BatchNorm folded into the convolutions, ReLU + tiling average pooling fused,
    and on the CPU few-channel stems as `StemConv2d` and, given a `sample` of the input, the convolutions for which
    the DFT form pays off as `SpectralConv2d`. `off`: the model's own modules. Same outputs and input gradients
    up to float rounding.
    """
    if _resolve(mode) == "auto":
        return input_grad.fused_copy(model, sample)
    return copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=torch.channels_last)
