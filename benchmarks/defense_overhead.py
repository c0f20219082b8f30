"""Defense overhead (the paper's Table V): the wall time of training with each registered defense over plain
training (`none`), on the same data and recipe, measured side by side in one process; and EPIC's facility location
(the batched lazy greedy) against a per-element sequential greedy.

    python benchmarks/defense_overhead.py [--json] [--dataset mnist-5k] [--epochs 30] [--rows N] [--repeats 3]
                                          [--methods none,hint,...] [--budget 0.01] [--compile off]
                                          [--model convnet-gn] [--fl-rows 2000] [--fl-budget 0.1] [--fl-repeats 3]
                                          [--threads N]
                                          [--device auto]

Training: `poisonbench.engine.training.train` on the first `--rows` train rows of `--dataset` (default all of mnist-5k's
3,900), the paper recipe of its family with `--epochs` (default 30, the paper's MNIST length; milestones scaled),
the family's paper model (or `--model`), seed 0, no evaluation. Every defense is built with its defaults for that
recipe and a targeted threat whose budget is `--budget` of the rows (the clean-label filters' k and drop fraction
depend on it; the same for all). Clean data: the cost of a defense does not depend on which rows are poisoned. The
runs are interleaved: each repeat trains every method once, in an order rotated by one per repeat, after one untimed
1-epoch warm-up of `none`. Per method: `seconds`, the median wall time of the whole `train` call (prepare, drops,
per-batch hooks, every epoch); `defense_seconds`, the median of the engine's own count of the defense's hooks
(cost defense_prepare + defense_epoch + defense_batch, what Table V adds to training); `ratio_to_none`, the
quotient of the medians; `params`, the defense's resolved parameters as a run's config holds them, those that
depend on the threat included (ATDA's: ℓ∞ β = 0.062 against this targeted threat, not the ℓ2 0.25 of untargeted and
clean runs). `paper_ratio_to_none`: Table V (CIFAR-10, ResNet-18, 80 epochs on a GPU; HINT at r = 0.5): the shape to
compare with, not the numbers.

Facility location: the gradient-proxy-like rows of one class (softmax of random logits minus the one-hot of
class 0, `--fl-rows` rows, 10 classes, seeded), similarity s_ij = exp(−‖g_i − g_j‖/10), budget `--fl-budget` of
the rows. `lazy_s`: `facility_location.lazy_greedy` (EPIC's default); `naive_s`: every candidate's gain at every
step as one tensor op; `loop_s`: the same greedy written the straightforward way, a Python loop over the candidates
at each step, each gain one vector op over the rows; `stochastic_s` and its objective for information. Each keeps
its fastest of `--fl-repeats` (the loop: one run). `same_medoids`: the loop, the naive and the lazy greedy choose
the same rows in the same order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from poisonbench.core.device import resolve_device, to_float
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.defenses import facility_location as fl
from poisonbench.engine.hooks import hand_poison_mask
from poisonbench.engine.models import DEFAULT_MODEL, build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train
from poisonbench.report import paper

SEED = 0
DEFENSE_COSTS = ("defense_prepare", "defense_epoch", "defense_batch")
PAPER_HINT_RATIO = 0.5  # the r of the HINT row that Table V's comparison uses


def paper_ratios() -> dict[str, float]:
    """Table V's execution time of each defense over `none` (HINT at r = 0.5)."""
    none = paper.table5("none")
    out = {}
    for method in ("hint", "friends", "atda", "epic"):
        seconds = paper.table5(method, PAPER_HINT_RATIO if method == "hint" else None)
        if seconds is not None:
            out[method] = round(seconds / none, 2)
    return out


def method_order(methods: list[str], repeat: int) -> list[str]:
    """`methods` rotated by `repeat` (each method is timed at every position of the round once in a while)."""
    shift = repeat % len(methods)
    return methods[shift:] + methods[:shift]


def benchmark_defense(method: str, setup: dict, recipe=None):
    """`method`'s defense as the benchmark trains it: its defaults for the recipe and the threat, or the parameters
    `setup["params"][method]` names (where a caller such as benchmarks/gpu_check.py --tiny sets some)."""
    return build_defense(method, setup["data"].family, recipe or setup["recipe"], setup["threat"],
                         **setup.get("params", {}).get(method, {}))


def timed_training(method: str, setup: dict, epochs_recipe=None) -> tuple[float, dict]:
    """(wall seconds of `train`, cost) of one training with `method`'s defense (`benchmark_defense`) on the
    benchmark's rows."""
    recipe = epochs_recipe or setup["recipe"]
    data, device = setup["data"], setup["device"]
    defense = benchmark_defense(method, setup, recipe)
    # an upper bound that sees the poison mask (the oracle) is told the first `budget` rows are the poisons
    hand_poison_mask(defense, torch.arange(len(setup["y"]), device=device) < (setup["threat"].budget or 0))
    model = build_model(setup["model"], data, seed=SEED)
    start = time.perf_counter()
    result = train(model, setup["x"].clone(), setup["y"], setup["val_x"], setup["val_y"], recipe, seed=SEED,
                   device=device, num_classes=data.num_classes, defense=defense, compile=setup["compile"],
                   model_factory=lambda s: build_model(setup["model"], data, seed=s))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result.cost


def overhead(args, setup: dict, methods: list[str]) -> dict:
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    defense_seconds: dict[str, list[float]] = {m: [] for m in methods}
    timed_training("none", setup, resolve_recipe(setup["data"].family, "paper", epochs=1))  # warm-up, untimed
    for repeat in range(args.repeats):
        for method in method_order(methods, repeat):
            wall, cost = timed_training(method, setup)
            seconds[method].append(wall)
            defense_seconds[method].append(sum(cost.get(k, 0.0) for k in DEFENSE_COSTS))
            print(f"repeat {repeat + 1}/{args.repeats} {method:8s} {wall:9.2f} s  defense "
                  f"{defense_seconds[method][-1]:8.2f} s", file=sys.stderr, flush=True)
    none = statistics.median(seconds["none"])
    paper_ratio = paper_ratios()
    return {m: {"seconds": round(statistics.median(seconds[m]), 3),
                "defense_seconds": round(statistics.median(defense_seconds[m]), 3),
                "ratio_to_none": round(statistics.median(seconds[m]) / none, 3),
                "paper_ratio_to_none": paper_ratio.get(m, 1.0 if m == "none" else None),
                "seconds_all": [round(s, 3) for s in seconds[m]],
                "params": benchmark_defense(m, setup).params}
            for m in methods}


def sequential_greedy(sim: torch.Tensor, budget: int) -> torch.Tensor:
    """The greedy facility location the straightforward way: at each step a Python loop over the candidates,
    each one's gain Σ_i relu(s_ij − best_i) as one vector op, the first largest kept."""
    n = len(sim)
    best = sim.new_zeros(n)
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(budget):
        top_gain, top = -math.inf, -1
        for j in range(n):
            if j in taken:
                continue
            gain = float((sim[j] - best).clamp_(min=0).sum())
            if gain > top_gain:
                top_gain, top = gain, j
        chosen.append(top)
        taken.add(top)
        best = torch.maximum(best, sim[top])
    return torch.tensor(chosen, dtype=torch.long)


def fastest(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def facility_location(args, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(SEED)
    n, classes = args.fl_rows, 10
    p = torch.softmax(3 * torch.randn(n, classes, generator=generator), 1)
    g = (p - torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), classes)).to(device)
    budget = max(1, int(args.fl_budget * n))
    sim, similarity_s = fastest(lambda: fl.similarity(g), args.fl_repeats)
    lazy, lazy_s = fastest(lambda: fl.lazy_greedy(sim, budget), args.fl_repeats)
    naive, naive_s = fastest(lambda: fl.naive_greedy(sim, budget), args.fl_repeats)
    stochastic, stochastic_s = fastest(
        lambda: fl.stochastic_greedy(sim, budget, torch.Generator(device=device).manual_seed(SEED)), args.fl_repeats)
    loop, loop_s = fastest(lambda: sequential_greedy(sim, budget), 1)
    lazy, naive = lazy.cpu(), naive.cpu()
    objective = fl.objective(sim, lazy.to(device))
    return {
        "rows": n, "budget": budget, "similarity_s": round(similarity_s, 6), "lazy_s": round(lazy_s, 6),
        "naive_s": round(naive_s, 6), "stochastic_s": round(stochastic_s, 6), "loop_s": round(loop_s, 6),
        "speedup_lazy_vs_loop": round(loop_s / lazy_s, 1), "speedup_lazy_vs_naive": round(naive_s / lazy_s, 2),
        "same_medoids": bool(torch.equal(loop, lazy) and torch.equal(naive, lazy)),
        "objective": round(objective, 4), "objective_loop": round(fl.objective(sim, loop.to(device)), 4),
        "stochastic_objective_fraction": round(fl.objective(sim, stochastic) / objective, 5),
    }


def setup_training(args, device: torch.device) -> dict:
    data = load_dataset(args.dataset)
    rows = args.rows or len(data.train)
    if not 0 < rows <= len(data.train):
        raise SystemExit(f"--rows must be in [1, {len(data.train)}], got {rows}")
    recipe = resolve_recipe(data.family, "paper", epochs=args.epochs)
    budget = max(1, round(args.budget * rows))
    return {"data": data, "device": device, "recipe": recipe, "model": args.model or DEFAULT_MODEL[data.family],
            "threat": Threat("targeted", budget=budget, train_size=rows), "compile": args.compile,
            "x": to_float(data.train.x[:rows], device), "y": data.train.y[:rows].to(device),
            "val_x": to_float(data.val.x, device), "val_y": data.val.y.to(device), "rows": rows}


def table(result: dict) -> str:
    lines = [f"{'method':10s} {'seconds':>9s} {'defense s':>10s} {'ratio':>7s} {'paper':>7s}"]
    for method, row in result["methods"].items():
        paper_ratio = row["paper_ratio_to_none"]
        lines.append(f"{method:10s} {row['seconds']:9.2f} {row['defense_seconds']:10.2f} {row['ratio_to_none']:7.2f} "
                     f"{'' if paper_ratio is None else f'{paper_ratio:.2f}':>7s}")
    f = result["facility_location"]
    lines.append(f"facility location, {f['rows']} rows, budget {f['budget']}: lazy {f['lazy_s']:.3f} s, naive "
                 f"{f['naive_s']:.3f} s, loop {f['loop_s']:.2f} s (lazy {f['speedup_lazy_vs_loop']}x faster than "
                 f"the loop), same medoids: {f['same_medoids']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the paper recipe (default: MNIST's 30)")
    parser.add_argument("--rows", type=int, default=None, help="train rows used (default: all)")
    parser.add_argument("--model", default=None,
                        help="the victim (default: the family's paper model; e.g. convnet-gn, DP-SGD's)")
    parser.add_argument("--repeats", type=int, default=3, help="trainings per method (the median is reported)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated defenses (default: every registered one); none is always included")
    parser.add_argument("--budget", type=float, default=0.01,
                        help="the targeted threat's budget, a fraction of the rows (filters' defaults depend on it)")
    parser.add_argument("--compile", default="off", choices=("auto", "on", "off"),
                        help="torch.compile in the engine (off: no compilation time in the figures)")
    parser.add_argument("--fl-rows", type=int, default=2000, help="rows of the facility-location comparison")
    parser.add_argument("--fl-budget", type=float, default=0.1, help="medoids, as a fraction of --fl-rows")
    parser.add_argument("--fl-repeats", type=int, default=3, help="timings of each vectorised greedy (fastest)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default torch's; 1 on a machine other jobs share)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    methods = args.methods.split(",") if args.methods else DEFENSES.names()
    for method in methods:
        DEFENSES.get(method)  # an unknown name fails here, before any training
    methods = ["none", *[m for m in methods if m != "none"]]
    setup = setup_training(args, device)
    result = {
        "dataset": setup["data"].name, "rows": setup["rows"], "epochs": args.epochs, "model": setup["model"],
        "recipe": setup["recipe"].to_dict(), "threat_budget": setup["threat"].budget, "repeats": args.repeats,
        "device": str(device), "threads": torch.get_num_threads(), "compile": args.compile,
        "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
        "methods": overhead(args, setup, methods),
        "facility_location": facility_location(args, device),
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
