"""Aggregate training throughput of K runs at once on one device (issue 81 items 1 and 6), and the training step
with CUDA graphs beside today's compiled step: the figures `benchmarks/gpu_check.py` prints as `concurrency` and
`graphs`.

Why: one ResNet-18 run at the paper's batch of 128 leaves an H200 mostly idle (about 4 % of its bf16 peak, under 1
GiB of its 139: experiments/gpu.md); `sweep run --workers K` puts K `defend` processes on the card. This measures
what that buys before a sweep relies on it.

`concurrency`: for each K, K processes (this file with `--worker`) each build the synthetic CIFAR-shaped data of
gpu_check, train the engine (`engine.training.train`, the paper recipe's batch, `--compile` as the check) for one
warm-up epoch (the compile), then wait at a barrier; when all K are ready the parent opens it and each times
`epochs` more epochs. `aggregate_images_per_s` = K × rows × epochs / (the last worker's end − the barrier's
opening): every image trained while all K shared the card. Each worker has ⌊cores / K⌋ intra-op threads (at least
one), as `sweep run --workers K` splits them. A K whose memory would not fit (K × the K = 1 run's peak > 90 % of the
card) is skipped with the reason; on a CPU the K lines rehearse the code (the numbers mean nothing).

`graphs`: the engine's training with its forward compiled `mode="reduce-overhead"` (CUDA graphs, static shapes)
in place of `torch.compile`'s default mode that `core.device.compile_static` uses, images/s of each side by side
(benchmark only: not an engine option until this line shows it pays and trains the same weights). On a CPU, or
with `--compile off`, there is nothing to capture and the line says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MEMORY_SHARE = 0.9  # of the card's total memory that K runs' peaks may fill
BARRIER_TIMEOUT = 600.0  # seconds a worker waits for the others (a cold compile each)


def worker_threads(k: int, cores: int | None = None) -> int:
    """⌊cores / K⌋ intra-op threads per worker, at least one: `sweeps.execute.split_threads`, the cores this process
    may run on (its affinity: a cluster job's cpuset, `taskset`), not the machine's `os.cpu_count()`."""
    if cores is None:
        from poisonbench.sweeps.execute import split_threads

        return split_threads(k)
    return max(1, cores // k)


def fits(k: int, peak_mib: float | None, total_mib: float | None) -> bool:
    """Whether K runs of `peak_mib` each fit in `MEMORY_SHARE` of `total_mib` (True where either is unknown)."""
    if not peak_mib or not total_mib:
        return True
    return k * peak_mib <= MEMORY_SHARE * total_mib


def aggregate(rows: int, epochs: int, opened: float, ends: list[float]) -> float:
    """K × rows × epochs images over the time from the barrier's opening to the last worker's end."""
    return len(ends) * rows * epochs / max(max(ends) - opened, 1e-9)


def run_worker(args) -> None:
    """One worker: warm-up epoch, barrier, `args.epochs` timed epochs; one JSON line on stdout."""
    from gpu_check import FULL, TINY, reset_peak, synthetic_dataset, train_at_precision

    from poisonbench.core.device import resolve_device, to_float
    from poisonbench.engine.models import build_model
    from poisonbench.engine.recipes import resolve_recipe

    sizes = TINY if args.tiny else FULL
    device = resolve_device(args.device)
    data = synthetic_dataset("cifar10", sizes.rows, sizes.val_rows, 16, sizes.image, seed=args.seed)
    recipe = resolve_recipe("cifar10", "paper", batch_size=sizes.batch, epochs=args.epochs + 1)
    x, y = to_float(data.train.x, device), data.train.y.to(device)
    model = build_model(sizes.model, data, seed=args.seed)
    ready, go = Path(args.ready), Path(args.go)
    stamps: list[float] = []

    def on_epoch(epoch: int, row: dict) -> None:
        if epoch == 0:
            ready.touch()
            deadline = time.time() + BARRIER_TIMEOUT
            while not go.exists():
                if time.time() > deadline:
                    raise TimeoutError("the barrier was not opened")
                time.sleep(0.005)
        stamps.append(time.time())

    reset_peak(device)
    train_at_precision("fp32", model, x, y, recipe, device, compile=args.compile, on_epoch=on_epoch,
                       deterministic="off")
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    print(json.dumps({"end": stamps[-1], "first_timed_start": stamps[0], "rows": len(y),
                      "images_per_s": round(len(y) * args.epochs / (stamps[-1] - stamps[0]), 1)
                      if len(stamps) > 1 else None, "peak_memory_mib": peak,
                      "threads": torch.get_num_threads()}))


def concurrent_throughput(k: int, tiny: bool, device: str, compile_mode: str, epochs: int) -> dict:
    """K workers at once (module docstring): the aggregate images/s, each worker's own, their peaks."""
    threads = worker_threads(k)
    with tempfile.TemporaryDirectory(prefix="pb-concurrency-") as tmp:
        go = Path(tmp) / "go"
        procs, readies = [], []
        for slot in range(k):
            ready = Path(tmp) / f"ready-{slot}"
            readies.append(ready)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            command = [sys.executable, str(HERE / "gpu_concurrency.py"), "--worker", "--ready", str(ready),
                       "--go", str(go), "--device", device, "--compile", compile_mode, "--epochs", str(epochs),
                       "--seed", str(slot)] + (["--tiny"] if tiny else [])
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=env, cwd=HERE))
        deadline = time.time() + BARRIER_TIMEOUT
        while not all(r.exists() for r in readies):
            if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
                break
            time.sleep(0.01)
        opened = time.time()
        go.touch()
        outputs = [p.communicate() for p in procs]
    failed = [(p.returncode, err.strip().splitlines()[-1:] or [""]) for p, (_, err) in zip(procs, outputs, strict=True)
              if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {k} workers failed: {failed[0][1][0]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    rows = results[0]["rows"]
    peaks = [r["peak_memory_mib"] for r in results if r["peak_memory_mib"] is not None]
    return {"k": k, "aggregate_images_per_s": round(aggregate(rows, epochs, opened, [r["end"] for r in results]), 1),
            "worker_images_per_s": [r["images_per_s"] for r in results], "threads_per_worker": threads,
            "rows": rows, "timed_epochs": epochs, "peak_memory_mib_max": round(max(peaks), 1) if peaks else None,
            "compile": compile_mode}


def concurrency_figures(ks: tuple[int, ...], tiny: bool, device: torch.device, compile_mode: str,
                        epochs: int) -> list[dict]:
    """One line per K (K = 1 first: its peak sizes the rest), each with its speed-up over K = 1; a K that would not
    fit is a line saying so."""
    total = (torch.cuda.get_device_properties(device).total_memory / 2 ** 20 if device.type == "cuda" else None)
    lines, base = [], None
    for k in ks:
        peak = base["peak_memory_mib_max"] if base else None
        if not fits(k, peak, total):
            lines.append({"k": k, "skipped": f"{k} × {peak:.0f} MiB > {MEMORY_SHARE:.0%} of {total:.0f} MiB"})
            continue
        line = concurrent_throughput(k, tiny, str(device), compile_mode, epochs)
        base = base or line
        line["speedup_over_k1"] = round(line["aggregate_images_per_s"] / base["aggregate_images_per_s"], 2)
        lines.append(line)
    return lines


def graph_figures(data, model_name: str, recipe, device: torch.device, compile_mode: str, epochs: int,
                  throughput) -> list[dict]:
    """The engine's images/s with its forward compiled in the default mode and in `reduce-overhead` (CUDA graphs),
    by `throughput(data, model_name, recipe, device, "fp32", compile_mode, epochs, mode="off")` (gpu_check's
    `engine_throughput`) with `core.device.compile_static` swapped for the graph mode's in the second."""
    from poisonbench.core.compile_watch import raise_recompile_limit
    from poisonbench.engine import training

    if compile_mode != "on" or device.type != "cuda":
        why = "--compile off" if compile_mode != "on" else "not a CUDA device"
        base = throughput(data, model_name, recipe, device, "fp32", compile_mode, epochs, mode="off")
        return [{"graphs": "default", **base}, {"graphs": "reduce-overhead", "skipped": f"{why}: no graphs"}]
    default = throughput(data, model_name, recipe, device, "fp32", "on", epochs, mode="off")
    original = training.compile_static

    def graphed(fn):
        raise_recompile_limit()
        return torch.compile(fn, dynamic=False, mode="reduce-overhead")

    training.compile_static = graphed
    try:
        graphs = throughput(data, model_name, recipe, device, "fp32", "on", epochs, mode="off")
    finally:
        training.compile_static = original
    ratio = round(graphs["images_per_s"] / default["images_per_s"], 2)
    return [{"graphs": "default", **default}, {"graphs": "reduce-overhead", **graphs, "over_default": ratio}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one worker (the parent starts these)")
    parser.add_argument("--ready", help="the file a worker creates when warmed up")
    parser.add_argument("--go", help="the file whose existence opens the barrier")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="on", choices=("on", "off"))
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the barrier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--ks", default="1,2", help="the K to measure (parent mode), e.g. 1,2,4,8,16")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    from poisonbench.core.device import resolve_device

    for line in concurrency_figures(tuple(int(k) for k in args.ks.split(",")), args.tiny,
                                    resolve_device(args.device), args.compile, args.epochs):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
