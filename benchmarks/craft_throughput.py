"""Poisons per second for each attack on mnist-5k (budget 1.0, batched crafting; issue 3).

    python benchmarks/craft_throughput.py [--json] [--attacks pgd,dap,durp,deepconfuse] [--device cpu]
                                          [--compile auto | on,off] [--batch-size N]

The shared surrogate is trained (or loaded from the cache) before timing, so its one-off cost is reported
separately and not counted in any attack's rate. Each attack is crafted into a temporary workspace (no cache
hit). DeepConfuse's time includes training its generator with the budget schedule. `--compile on,off` crafts
each attack once per mode, side by side in one process (the compiled time includes compiling), and reports the
fraction of δ entries on which the two modes differ (float rounding flips a few signs of near-zero gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.surrogate import load_or_train_surrogate
from poisonbench.core.device import resolve_device
from poisonbench.core.workspace import results_dir
from poisonbench.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--attacks", default=",".join(ATTACKS.names()), help="comma-separated attacks")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto", help="comma-separated compile modes (auto, on, off)")
    parser.add_argument("--batch-size", type=int, default=None, help="pgd/dap crafting batch (default per family)")
    parser.add_argument("--results", default=None,
                        help="workspace whose surrogates/ cache is reused (default $POISONBENCH_RESULTS/./results)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    start = time.perf_counter()
    _, info = load_or_train_surrogate(data, args.results, device)
    surrogate_seconds = time.perf_counter() - start
    rows = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        (Path(tmp) / "surrogates").mkdir()
        src = Path(info["path"])
        shutil.copy(src, Path(tmp) / "surrogates" / src.name)
        for name in args.attacks.split(","):
            extra = {"batch_size": args.batch_size} if args.batch_size and name in ("pgd", "dap") else {}
            spec = poisons.craft_spec(data, name, budget=1.0, seed=0, **extra)
            deltas = {}
            for mode in args.compile.split(","):
                t0 = time.perf_counter()
                poison, _ = poisons.craft(spec, data, tmp, device, force=True, compile=mode)
                seconds = time.perf_counter() - t0
                deltas[mode] = poison.delta
                rows.append({"attack": name, "compile": mode, "compiled": poison.manifest["compiled"],
                             "poisons": len(poison), "seconds": round(seconds, 2),
                             "poisons_per_second": round(len(poison) / seconds, 1), "params": spec.params})
                print(f"{name:12s} {mode:4s} {len(poison):6d} poisons {seconds:8.1f} s "
                      f"{len(poison) / seconds:9.1f} /s", file=sys.stderr, flush=True)
            if len(deltas) > 1:
                first, *others = deltas.values()
                rows[-1]["delta_differs_fraction"] = max((first != d).float().mean().item() for d in others)
    result = {"dataset": data.name, "device": str(device), "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0],
              "surrogate": {**info, "seconds_here": round(surrogate_seconds, 2)},
              "results_root": str(results_dir(args.results)), "attacks": rows}
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
