"""ATDA's FAT loop on the CPU, compacted against masked (experiments/atda_cpu_cost.md): the CPU time of training with
ATDA each way and with `none`, the steps FAT took, and whether the two loops trained the same model.

    python benchmarks/atda_compaction.py [--json] [--dataset mnist-5k] [--epochs 3] [--rows N] [--repeats 3]
                                         [--betas 0.062,0.3] [--threads 1] [--budget 0.01]

The set-up is `benchmarks/defense_overhead.py`'s (its `setup_training`): the first `--rows` train rows of `--dataset`,
the paper recipe of its family with `--epochs`, the family's paper model, seed 0, a targeted threat, so ATDA's
defaults are FAT in ℓ∞ at β 0.062; each of `--betas` is a row of its own (β 0.3 is Table III's β = ε). Per β and
repeat, in a rotated order after one untimed epoch of `none`: `none`, ATDA with the compacted loop (the CPU's,
`atda.compacts`) and ATDA with the masked loop (`atda.compacts` made to answer as on a GPU). Per row: the median
`cpu_seconds` of the whole `train` call (the process's CPU time: the figure other jobs on a shared machine disturb
least; one thread), `seconds` (wall) and `defense_seconds` (the engine's wall count of ATDA's hooks), the ratios
of the CPU times to `none` and masked / compacted; `mean_steps` per epoch (the record's); `same_steps`: both
loops' per-epoch figures equal; `max_weight_difference`: the largest |w_compacted − w_masked| over the final weights
of the first repeat (0.0: the same model, bit for bit)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defense_overhead import SEED, setup_training  # noqa: E402

from poisonbench.core.device import resolve_device  # noqa: E402
from poisonbench.defenses import atda, build_defense  # noqa: E402
from poisonbench.engine.models import build_model  # noqa: E402
from poisonbench.engine.recipes import resolve_recipe  # noqa: E402
from poisonbench.engine.training import train  # noqa: E402

VARIANTS = ("none", "compacted", "masked")


def one_training(variant: str, beta: float, setup: dict,
                 recipe=None) -> tuple[float, float, dict, dict, list | None]:
    """(CPU seconds, wall seconds, cost, final weights, ATDA's per-epoch figures) of one training; `masked` runs ATDA
    with the loop a GPU takes."""
    recipe = recipe or setup["recipe"]
    data = setup["data"]
    params = {} if variant == "none" else {"beta": beta}
    defense = build_defense("none" if variant == "none" else "atda", data.family, recipe, setup["threat"], **params)
    model = build_model(setup["model"], data, seed=SEED)
    real = atda.compacts
    if variant == "masked":
        atda.compacts = lambda device: False
    try:
        start, cpu = time.perf_counter(), time.process_time()
        result = train(model, setup["x"].clone(), setup["y"], setup["val_x"], setup["val_y"], recipe, seed=SEED,
                       device=setup["device"], num_classes=data.num_classes, defense=defense,
                       compile=setup["compile"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        atda.compacts = real
    epochs = defense.summary()["epochs"] if variant != "none" else None
    return cpu, seconds, result.cost, {k: v.detach().clone() for k, v in model.state_dict().items()}, epochs


def measure(args, setup: dict, beta: float) -> dict:
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    defense_seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    weights: dict[str, dict] = {}
    epochs: dict[str, list] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            used, wall, cost, state, figures = one_training(variant, beta, setup)
            cpu[variant].append(used)
            seconds[variant].append(wall)
            defense_seconds[variant].append(sum(cost.get(k, 0.0) for k in ("defense_prepare", "defense_epoch",
                                                                            "defense_batch")))
            weights.setdefault(variant, state)
            if figures is not None:
                epochs.setdefault(variant, figures)
            print(f"β {beta:g} repeat {repeat + 1}/{args.repeats} {variant:9s} {used:8.2f} CPU s", file=sys.stderr,
                  flush=True)
    med = {v: statistics.median(cpu[v]) for v in VARIANTS}
    dmed = {v: statistics.median(defense_seconds[v]) for v in VARIANTS}
    difference = max(float((weights["compacted"][k].double() - weights["masked"][k].double()).abs().max())
                     for k in weights["compacted"] if weights["compacted"][k].is_floating_point())
    return {"beta": beta,
            "cpu_seconds": {v: round(med[v], 3) for v in VARIANTS},
            "cpu_seconds_all": {v: [round(s, 3) for s in cpu[v]] for v in VARIANTS},
            "seconds": {v: round(statistics.median(seconds[v]), 3) for v in VARIANTS},
            "defense_seconds": {v: round(dmed[v], 3) for v in VARIANTS},
            "ratio_to_none": {v: round(med[v] / med["none"], 3) for v in ("compacted", "masked")},
            "masked_over_compacted": round(med["masked"] / med["compacted"], 3),
            "defense_masked_over_compacted": round(dmed["masked"] / dmed["compacted"], 3),
            "mean_steps": [round(e["mean_steps"], 3) for e in epochs["compacted"]],
            "same_steps": epochs["compacted"] == epochs["masked"],
            "max_weight_difference": difference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the paper recipe (FAT's τ scaled to them)")
    parser.add_argument("--rows", type=int, default=None, help="train rows used (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="trainings per variant (the median is reported)")
    parser.add_argument("--betas", default="0.062,0.3", help="comma-separated ATDA β (ℓ∞), one row each")
    parser.add_argument("--budget", type=float, default=0.01, help="the targeted threat's budget (fraction of rows)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.model, args.compile, args.device = None, "off", "cpu"
    setup = setup_training(args, resolve_device("cpu"))
    one_training("none", 0.0, setup, resolve_recipe(setup["data"].family, "paper", epochs=1))  # warm-up, untimed
    rows = [measure(args, setup, float(b)) for b in args.betas.split(",")]
    result = {"dataset": setup["data"].name, "rows": setup["rows"], "epochs": args.epochs, "model": setup["model"],
              "repeats": args.repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_1min": os.getloadavg()[0], "rows_by_beta": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            c = r["cpu_seconds"]
            print(f"β {r['beta']:g} (CPU s): none {c['none']:.1f}, compacted {c['compacted']:.1f} "
                  f"({r['ratio_to_none']['compacted']:.2f}×), masked {c['masked']:.1f} "
                  f"({r['ratio_to_none']['masked']:.2f}×); masked/compacted {r['masked_over_compacted']:.2f}; "
                  f"steps {r['mean_steps']}; same steps {r['same_steps']}; max |Δw| {r['max_weight_difference']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
