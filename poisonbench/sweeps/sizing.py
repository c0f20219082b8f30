"""`sweep run --workers auto`: how many runs a sweep trains at once on each device (issue 81; docs/sweeps.md,
"Several runs on one device").

One ResNet-18 run leaves a large card mostly idle (about 4 % of an H200's bf16 peak, 3.9 GiB of its 139 GiB:
experiments/gpu.md), so a sweep puts several `defend` processes on each card: per-device worker slots, slot s on
device s % D (the pool's round-robin), K slots per device, K × D workers in all. Processes rather than threads or
CUDA streams in one process: each run keeps its own process, lock, checkpoint, log, SIGTERM handling and failure
record exactly as with one worker, and a run that crashes or runs out of memory takes no other run with it.

The rule (`per_device`, pure so that it can be tested with any card, peak and core count):

    K = min(⌊MEMORY_SHARE × free memory / (ALLOCATOR_SLACK × peak + CONTEXT_MIB)⌋, ⌊cores / D⌋, MAX_PER_DEVICE),
    at least 1; threads per worker ⌊cores / (K × D)⌋, at least 1.

`peak` is the largest `cost.peak_cuda_mib` among the workspace's records of runs on a GPU (the grid's own runs
first: they are the ones about to train), else `DEFAULT_PEAK_MIB`, the ResNet-18 CIFAR-10 figure measured on an H200.
`free memory` is the smallest free memory of the devices, read in a child process (a CUDA context in the sweep's own
process would hold memory on the card for the whole sweep). Without a GPU auto is one worker with all the cores:
`sweep run`'s default, and the thread count a run's floats on the CPU depend on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.errors import PoisonbenchError

AUTO = "auto"
MAX_PER_DEVICE = 16  # runs at once on one device at most (benchmarks/gpu_concurrency.py measures K up to 16)
MEMORY_SHARE = 0.9  # of a device's free memory that K runs may fill (as benchmarks/gpu_concurrency.py)
CONTEXT_MIB = 512.0  # a process's CUDA context and kernels: on the card, but not in `peak_cuda_mib` (tensors only)
ALLOCATOR_SLACK = 1.2  # torch's caching allocator reserves more than the tensors' peak (blocks, fragmentation)
# ResNet-18 on CIFAR-10, batch 128, fp32, compiled, on an H200: torch.cuda.max_memory_allocated (the figure a
# record's cost.peak_cuda_mib holds) of experiments/gpu/gpu_check2.jsonl's train_throughput line
DEFAULT_PEAK_MIB = 3859.4
DEFAULT_PEAK_SOURCE = "the packaged ResNet-18 CIFAR-10 figure (experiments/gpu/gpu_check2.jsonl)"
QUERY_TIMEOUT_S = 120.0


def parse_workers(value: str, limit: int) -> int | None:
    """`--workers`: an integer in 1..limit, or `auto` (None: sized by `size`). PoisonbenchError otherwise."""
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    try:
        workers = int(text)
    except ValueError:
        raise PoisonbenchError(f"--workers must be an integer in 1..{limit} or auto, got {value!r}") from None
    if not 1 <= workers <= limit:
        raise PoisonbenchError(f"--workers must be in 1..{limit}, got {workers}")
    return workers


def run_footprint_mib(peak_mib: float) -> float:
    """What one run holds on its device: its tensors' peak with the allocator's slack, and its CUDA context."""
    return ALLOCATOR_SLACK * peak_mib + CONTEXT_MIB


def fitting(memory_mib: float, peak_mib: float) -> int:
    """The most runs of `peak_mib` whose footprints fit in MEMORY_SHARE of `memory_mib` (0 where not one does):
    the largest k with k × footprint <= share × memory, exactly at the limit (no float floor off by one).

    k × footprint is Python's int × float, as a caller would write it. The quotient's floor is a first guess;
    the answer is then bracketed by strides that double and bisected, so the steps grow with the logarithm of
    the distance from the guess (a step or two for any real card; some thousand for 1e300 MiB, where floats
    no longer tell k from k + 1), never with k itself. Infinite or NaN memory or peak answers 0 (no reading)."""
    usable, each = MEMORY_SHARE * memory_mib, run_footprint_mib(peak_mib)
    if not (usable > 0 and each > 0) or not (math.isfinite(usable) and math.isfinite(each)):
        return 0

    def fits(k: int) -> bool:  # monotone in k: int → float and the product both round monotonically
        try:
            return k * each <= usable
        except OverflowError:  # k beyond the float range: so is its product
            return False

    guess = usable / each  # overflows to inf only where each is tiny: start from 0 then
    lo = math.floor(guess) if math.isfinite(guess) else 0
    hi, stride = lo + 1, 1
    while not fits(lo):  # the guess is too high (fits(0) holds: 0 <= usable)
        hi, lo, stride = lo, max(0, lo - stride), 2 * stride
    stride = 1
    while fits(hi):  # too low
        lo, hi, stride = hi, hi + stride, 2 * stride
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def per_device(memory_mib: float, peak_mib: float, cores: int, devices: int,
               cap: int = MAX_PER_DEVICE) -> int:
    """K, runs at once on each of `devices` devices: as many as fit in its memory (`fitting`), no more than the
    cores give each worker one thread, no more than `cap`; at least 1 (a run that does not fit alone still runs,
    one at a time, as with `--workers 1`)."""
    return max(1, min(fitting(memory_mib, peak_mib), cores // max(1, devices), cap))


def threads_each(workers: int, cores: int) -> int:
    """Intra-op CPU threads of each of `workers` workers: the cores split between them, at least one."""
    return max(1, cores // max(1, workers))


@dataclass(frozen=True)
class Sizing:
    per_device: int
    devices: int  # 0: no GPU
    threads: int
    source: str  # where K came from, in words

    @property
    def workers(self) -> int:
        return self.per_device * max(1, self.devices)

    def line(self) -> str:
        """The line `sweep run --workers auto` prints at its start."""
        n, t = self.workers, self.threads
        workers, threads = f"{n} worker{'s' * (n != 1)}", f"{t} thread{'s' * (t != 1)} each"
        if not self.devices:
            return f"{workers}: no GPU, {threads}, from {self.source}"
        return (f"{workers}: {self.per_device} per device × {self.devices} device{'s' * (self.devices != 1)}, "
                f"{threads}, from {self.source}")


def size(memory_mib: float | None, peak_mib: float, peak_source: str, cores: int, devices: int,
         cap: int = MAX_PER_DEVICE) -> Sizing:
    """`--workers auto` from what was measured (pure: `auto_sizing` gathers the figures)."""
    cores = max(1, cores)
    if devices < 1:
        plural = "s" * (cores != 1)
        return Sizing(1, 0, cores, f"{cores} core{plural}: one run at a time with all of them (the default)")
    if memory_mib is None:
        k = 1
        source = "the GPU's free memory, which could not be read (one run per device)"
    else:
        k = per_device(memory_mib, peak_mib, cores, devices, cap)
        fit = fitting(memory_mib, peak_mib)
        limits = {"memory": fit, "the cores": cores // devices, f"the cap of {cap}": cap}
        bound = min(limits, key=limits.get) if fit else "memory (not even one run fits: one at a time)"
        source = (f"{memory_mib:.0f} MiB free per device, {peak_mib:.0f} MiB peak per run ({peak_source}), "
                  f"{cores} cores: bound by {bound}")
    return Sizing(k, devices, threads_each(k * devices, cores), source)


def record_peaks(records: Iterable[dict], prefer: set[str] = frozenset()) -> tuple[float, str] | None:
    """The largest `cost.peak_cuda_mib` among records of runs on a GPU, those whose run id is in `prefer` (the
    grid's) first; with where it came from; None when no record holds one."""
    mine, others = [], []
    for record in records:
        cost = record.get("cost") if isinstance(record, dict) else None
        peak = cost.get("peak_cuda_mib") if isinstance(cost, dict) else None
        if isinstance(peak, int | float) and not isinstance(peak, bool) and math.isfinite(peak) and peak > 0:
            (mine if record.get("run_id") in prefer else others).append(float(peak))
    if mine:
        return max(mine), f"the largest of {len(mine)} record(s) of this grid"
    if others:
        return max(others), f"the largest of {len(others)} record(s) in the workspace"
    return None


def free_memory_mib(timeout: float = QUERY_TIMEOUT_S) -> list[float] | None:
    """Each visible device's free memory in MiB, read in a child process (no CUDA context in the sweep's own);
    None where it cannot be read."""
    code = ("import json, torch\n"
            "print(json.dumps([torch.cuda.mem_get_info(i)[0] / 2**20 for i in range(torch.cuda.device_count())]))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        values = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return [float(v) for v in values] if isinstance(values, list) and values else None


def cores_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_sizing(devices: int, records: Iterable[dict], grid_run_ids: set[str], cores: int | None = None,
                memory: list[float] | None = None, max_workers: int | None = None) -> Sizing:
    """`--workers auto` on this machine: `devices` GPUs the pool uses (0: none), the workspace's `records`;
    `max_workers`, the most workers a pool takes (the cap per device shrinks to keep K × D within it)."""
    cores = cores_available() if cores is None else cores
    cap = MAX_PER_DEVICE if max_workers is None else max(1, min(MAX_PER_DEVICE, max_workers // max(1, devices)))
    if devices < 1:
        return size(None, DEFAULT_PEAK_MIB, DEFAULT_PEAK_SOURCE, cores, 0)
    found = record_peaks(records, grid_run_ids)
    peak, source = found if found else (DEFAULT_PEAK_MIB, DEFAULT_PEAK_SOURCE)
    memory = free_memory_mib() if memory is None else memory
    return size(min(memory[:devices]) if memory else None, peak, source, cores, devices, cap)
