"""Execution settings: where the work runs (`resolve_device`, `configure_device`, `to_float`), whether a step
is `torch.compile`d (`COMPILE_MODES`) and whether CUDA pins deterministic algorithms (`DETERMINISTIC_MODES`). They
change speed, float rounding and (the last) repeatability, never what is computed, so none is part of a run id or a
poison id; records name them (`env.device`, `compiled`, `env.deterministic`). The CPU kernels' switch, another such
setting, lives with the kernels (`poisonbench.engine.kernels`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .compile_watch import raise_recompile_limit
from .errors import PoisonbenchError, unknown_choice

COMPILE_MODES = ("auto", "on", "off")
DETERMINISTIC_MODES = ("on", "off")

# The deterministic mode the process was last configured with (`configure_device`): torch's algorithm flags are
# process-wide, so the mode is too. A call that names none (the engine training a surrogate for a craft, a craft
# inside `defend`) keeps it; "on" until someone asks for "off".
_deterministic = "on"

# `compile="auto"`: compile only when epochs × n is at least this many images. Measured on the 2-core CPU: a
# 30-epoch mnist-5k run (117,000 images) took 147 CPU-seconds compiled (compile included) vs 205 eager.
COMPILE_MIN_IMAGES = 100_000


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` → first CUDA device if present, else CPU; `cpu`; `cuda` / `cuda:N` (always with its index).
    Only resolves: the engine and the crafting entry point configure the device (`configure_device`)."""
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise PoisonbenchError(f"device {spec!r} requested but CUDA is not available; valid choices: auto, cpu")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise PoisonbenchError(f"device {spec!r} does not exist; {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise PoisonbenchError(f"unknown device {spec!r}; valid choices: auto, cpu, cuda, cuda:N")


def configure_device(device: torch.device, deterministic: str | None = None) -> torch.device:
    """Make `device` the current CUDA device (so nothing lands on GPU 0 by default) and set torch's algorithm
    choice for it; called by the engine and the crafting entry point, so library callers get it too.

    `deterministic` "on" (the default) makes CUDA runs reproducible, as the CPU's are (untested here: no GPU).
    cuDNN's autotuned convolution backward and cuBLAS's split-K sum in a run-dependent order, so it pins
    deterministic algorithms, a fixed cuBLAS workspace and Inductor without autotuning. An op that has no
    deterministic CUDA kernel (e.g. `grid_sample`'s, `adaptive_avg_pool2d`'s or `upsample_bilinear2d`'s backward)
    then raises RuntimeError (`warn_only=False`): a run that says "deterministic" is so, or fails. The training
    and crafting paths use none of them (a mean over H×W for the global pool, matrix products for resizes and the
    crafting shifts). "off" gives the fast choices instead: cuDNN autotuning (`benchmark`, as airbench trains), no
    deterministic pins; the same seed may then give other numbers. None keeps the mode the process was last
    configured with (`deterministic_mode`): the flags are process-wide. The CPU's algorithms are deterministic
    either way, so on the CPU only the mode is remembered. TF32 convolutions stay at torch's default (on, as in the
    official code); the record's `env.cudnn_tf32` says so."""
    global _deterministic
    if deterministic is not None:
        check_deterministic_mode(deterministic)
        _deterministic = deterministic
    if device.type != "cuda":
        return device
    on = _deterministic == "on"
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.use_deterministic_algorithms(on, warn_only=False)  # on: raise, never only warn; off: torch's default
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "deterministic"):  # Inductor's deterministic mode is torch 2.10's; older: unset
        inductor_config.deterministic = on
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


def deterministic_mode() -> str:
    """The deterministic mode the process is configured with (`configure_device`): "on" until set otherwise."""
    return _deterministic


def check_deterministic_mode(mode: str) -> None:
    if mode not in DETERMINISTIC_MODES:
        raise unknown_choice("deterministic mode", mode, DETERMINISTIC_MODES)


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N×C×H×W → float32 in [0, 1] on `device` (floats are moved as they are)."""
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise unknown_choice("compile mode", mode, COMPILE_MODES)


def should_compile(mode: str, n: int, epochs: int, minimum: int = COMPILE_MIN_IMAGES) -> bool:
    """`auto`: compile when the work (n rows × epochs or steps) reaches `minimum`, so compiling pays."""
    if mode == "auto":
        return n * epochs >= minimum
    return mode == "on"


def compile_static(fn):
    """`torch.compile(fn, dynamic=False)`: static shapes, so callers keep every batch the same size.

    A CUDA build of torch on a GPU-less machine warns "No CUDA runtime is found" at every compile; noise for a
    CPU run, so it is silenced (real compile errors are raised, not logged). Dynamo's per-function graph limit is
    raised first (core.compile_watch: past it a function silently runs eagerly).
    """
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    raise_recompile_limit()  # every model variant a process meets is one more graph of the same forward
    return torch.compile(fn, dynamic=False)


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads, and the BLAS and OpenMP pools of NumPy, SciPy and scikit-learn (threadpoolctl), set
    to `threads` for the block, then restored (None: left as they are). The pools as a worker of `sweep run
    --workers` has them (its `OMP_NUM_THREADS`): until 2026-12-01 `--task-id --threads 1` limited torch alone, and
    the filters' SVDs (activation clustering, spectral signatures) ran on every core in OpenBLAS beside the node's
    other steps: on 2 cores with two one-thread steps at once, activation clustering's filter took 58 s a run with
    OpenBLAS's two threads against 2.2 s with one (full Fashion-MNIST, 2026-12-01)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)
