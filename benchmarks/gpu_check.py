"""One command that measures poisonbench's GPU path (issue 55): one JSON line per figure, on stdout and `--out`.

    python benchmarks/gpu_check.py [--device auto] [--out gpu.jsonl] [--budget 360] [--data-dir DIR]
                                   [--compile on|off] [--tiny]

Why: the paper's tables are GPU work (CIFAR-10, ResNet-18, 80 epochs), and the CPU machines this project is built on
cannot say what a GPU sweep costs. This script says it in one run, well under 8 minutes on one H100, without any
download: the data are seeded synthetic CIFAR-shaped images (throughput and crafting time do not depend on the
pixels), except the last figure, which trains on real Fashion-MNIST when `--data-dir` holds its IDX files.

The figures, in the order printed (each line's `figure`; every line also names the device, the device's name and
the torch version, and `check_seconds`, the wall time the figure took):

- `setup`: the sizes, torch's CUDA and cuDNN versions, the version check (`torch_note`).
- `train_throughput` (one line per workload and precision): images/s of poisonbench's engine (`engine.training.
  train`: data on the device, index-permutation batches, the recipe's augmentation, `torch.compile` per
  `--compile`) at the paper recipe's batch size, best and mean over the timed epochs after one warm-up epoch
  (compilation included in `warmup_seconds`), and the peak memory (`torch.cuda.max_memory_allocated`; on a CPU the
  process's peak RSS, which never goes down). Workloads: `cifar10-scratch` (ResNet-18, fp32 and bf16),
  `cifar10-transfer` (ResNet-18 with a frozen extractor and a trainable head: Table III's BP / FC victims) and
  `mnist-scratch` (the ConvNet on 28×28 grey images: Table II's MNIST half).
  Each at `--deterministic off` (the fast mode: cuDNN autotuning) and `on` (the default: deterministic algorithms,
  raising on a nondeterministic kernel) for ResNet-18; every line names its switches and `fp32_math` (TF32
  convolutions, cuDNN's default, are named as such) and `compile_seconds` (the warm-up epoch less a timed one).
- `official_loop` (one line per mode) and `engine_over_official`: the same training steps the way the official HINT
  code trains (a `DataLoader` over a
  `TensorDataset` on the CPU, `.to(device)` per batch, an eager model, a plain loop; no augmentation, which favours
  it), measured before the engine sets its deterministic-algorithm switches, and `engine_over_official`, the
  engine's fp32 images/s over it (best epochs of both).
- `craft` (gm, then bp/fc): seconds per brew iteration of GM's gradient matching (490 poisons, 1 % of CIFAR-10's
  49,000, against ResNet-18) and of BP's / FC's feature matching (49 poisons, 1 % of the transfer set), timed over
  a few iterations after a warm-up one, and extrapolated to a restart and to a PoisonSet at the attack's default
  iterations and restarts (GM 250 × 8). The surrogate is untrained: the cost of an iteration does not depend on
  the weights.
- `defense_overhead` (one line per defense): the wall time of `train` with each registered defense over `none`,
  on the same rows and epochs (benchmarks/defense_overhead.py's `timed_training`; the paper recipe shortened to a
  few epochs, its schedules scaled; compiled as `--compile` says, after one untimed epoch that compiles; under
  `--deterministic on`, so a defense that meets a nondeterministic kernel fails in its own line), and
  `paper_scale_ratio_to_none`: the same at the paper recipe's 80
  epochs, where the work a defense does at scheduled epochs (HINT's noise updates, FRIENDS' friendly noise, EPIC's
  drops: its `defense_epoch` cost) is counted per event and multiplied by the paper schedule's events, a filter's
  one-off work before training counts once (but the model it trains for its features, with the recipe, scales),
  and everything else scales with the epochs (`paper_scale_seconds`).
- `concurrency` (one line per K = 1, 2, 4, 8, 16): the aggregate images/s of K engine trainings of ResNet-18 at
  once on the device, behind a barrier after each one's warm-up epoch, each with ⌊cores / K⌋ threads, and the
  speed-up over K = 1; a K whose peaks would not fit in 90 % of the card is a line saying so
  (benchmarks/gpu_concurrency.py).
- `graphs`: the engine's images/s with its forward compiled in torch.compile's default mode and in
  `reduce-overhead` (CUDA graphs), side by side; on a CPU or with `--compile off`, a line saying there is nothing to
  capture.
- `grid_estimate` (table2, table3): the GPU-hours of the builtin grid at paper scale from the figures above
  (poisonbench.sweeps.estimate, as `sweep plan --estimate` computes them); the
  line states its formula and what it leaves out.
- `fashion_mnist_e2e`: a small targeted run end to end on the device (GM crafted against a surrogate, a victim
  trained on the poisoned set, `experiment.defend`): its attack success and test accuracy; or, without
  `--data-dir` or its files, why it was skipped.
- `done`: the total time, the figures that failed (a failed figure prints an `error` line and the rest go on; the
  exit status is then 1), those the budget skipped, and torch.compile's counts.

Every measured line carries `compile_counts` (core.compile_watch: graphs, graph breaks, eager fallbacks at Dynamo's
recompile limit); a fallback makes its figure an error (Dynamo is told to fail rather than fall back), so the check
never times eager code as compiled. `--budget SECONDS` (default 360: one H100 by design; 0: none): the figures run
most useful first, and each whose estimate (`ESTIMATES`, H100 seconds) no longer fits gets a `skipped` line.

`--write-throughput PATH`: after the run, this device's figures go into the JSON table at PATH (its entry replaced,
the other devices' kept), with the setup line's provenance; `--write-throughput poisonbench/sweeps/throughput.json`
refreshes the table `poisonbench sweep plan GRID --estimate` reads (docs/sweeps.md, "What a grid will cost").

`--tiny`: the same code path at toy sizes (16×16 images, the ConvNet, a few rows, one timed epoch and iteration) so
that tests/test_gpu_check.py runs it on a CPU in seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F
from defense_overhead import paper_ratios, timed_training  # a sibling script: benchmarks/ is on sys.path
from gpu_concurrency import concurrency_figures, graph_figures
from torch.utils.data import DataLoader, TensorDataset

from poisonbench import __version__
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext
from poisonbench.attacks.bp import bullseye_loss
from poisonbench.attacks.forest import Brew
from poisonbench.attacks.gm import GradientMatching
from poisonbench.core.compile_watch import CompileWatch
from poisonbench.core.device import configure_device, deterministic_mode, resolve_device, to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.provenance import cpu_model, git_commit, peak_memory, torch_version_note
from poisonbench.data import Dataset, Split, load_dataset
from poisonbench.data.catalog import CIFAR_MEAN_STD, MNIST_MEAN_STD
from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.engine.kernels import inference_copy
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import Recipe, resolve_recipe
from poisonbench.engine.training import TrainResult, make_optimizer, train
from poisonbench.sweeps.estimate import Figures, estimate, figures_from_lines, write_table
from poisonbench.sweeps.grid import load_grid

SEED = 0
EPS = 16 / 255
GRIDS = ("table2", "table3")
PAPER_BATCH = 128  # the paper recipe's batch size (both families)


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is. `FULL` fits one H100 in well under 8 minutes; `TINY` is the same code path on a
    CPU in seconds (tests/test_gpu_check.py)."""

    model: str  # the CIFAR-shaped workloads' model (the paper's ResNet-18; the tiny mode's ConvNet)
    image: int  # side of the CIFAR-shaped images
    mnist_image: int  # side of the MNIST-shaped images
    batch: int  # batch size of every training measured
    rows: int  # train rows per throughput epoch (a multiple of `batch`: one compiled shape)
    epochs: int  # timed epochs per throughput figure, after one warm-up epoch
    loader_workers: int  # the official loop's DataLoader workers
    gm_poisons: int
    transfer_poisons: int
    craft_iterations: int  # timed brew iterations, after one warm-up iteration
    overhead_rows: int
    overhead_epochs: int
    val_rows: int
    e2e_epochs: int
    e2e_iterations: int
    e2e_trials: int
    defense_params: tuple = ()  # (method, {param: value}): what the overhead figure changes from the defaults
    concurrency: tuple = (1, 2, 4, 8, 16)  # the K of the concurrency figure (runs at once on the device)


FULL = Sizes(model="resnet18", image=32, mnist_image=28, batch=PAPER_BATCH, rows=12_800, epochs=2, loader_workers=4,
             gm_poisons=490, transfer_poisons=49, craft_iterations=4, overhead_rows=5_120, overhead_epochs=3,
             val_rows=1_000, e2e_epochs=10, e2e_iterations=250, e2e_trials=2)
TINY = Sizes(model="convnet", image=16, mnist_image=16, batch=32, rows=64, epochs=1, loader_workers=0,
             gm_poisons=8, transfer_poisons=4, craft_iterations=1, overhead_rows=64, overhead_epochs=2,
             val_rows=32, e2e_epochs=1, e2e_iterations=1, e2e_trials=1,
             defense_params=(("friends", {"friendly_steps": 2}), ("atda", {"steps": 2})), concurrency=(1, 2))


def train_at_precision(precision: str, model, x, y, recipe: Recipe, device: torch.device, **kwargs) -> TrainResult:
    """`engine.training.train(model, x, y, ...)` in `precision` (fp32 | bf16: the engine's own `--precision`)."""
    return train(model, x, y, x[:1], y[:1], recipe, seed=SEED, device=device, num_classes=10, precision=precision,
                 **kwargs)


def synthetic_dataset(family: str, n_train: int, n_val: int, n_test: int, size: int, seed: int = SEED) -> Dataset:
    """A seeded dataset of uniform-noise uint8 images and uniform labels, shaped like `family`'s (CIFAR-10: 3×size²
    colour, MNIST: 1×size² grey, 10 classes, the family's normalisation): what the speed figures need, with no
    download (the GPU machine reaches no network)."""
    channels, (mean, std) = (3, CIFAR_MEAN_STD) if family == "cifar10" else (1, MNIST_MEAN_STD)
    g = torch.Generator().manual_seed(seed)

    def split(n: int, name: str) -> Split:
        x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g)
        return Split(x, y, np.arange(n), f"synthetic-{family}-{name}-{seed}")

    return Dataset(f"synthetic-{family}", family, 10, mean, std, split(n_train, "train"), split(n_val, "val"),
                   split(n_test, "test"), source="synthetic (seeded uniform noise)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> tuple[float | None, str]:
    """(peak MiB, what it measures): CUDA's peak allocated since `reset_peak`, or the process's peak RSS."""
    peak = peak_memory(device)
    if device.type == "cuda":
        return peak.get("peak_cuda_mib"), "torch.cuda.max_memory_allocated"
    return peak.get("peak_rss_mib"), "process peak RSS (never reset; includes everything before)"


def rates(n: int, seconds: list[float]) -> tuple[float, float]:
    """(best, mean) images per second over epochs of n images that took `seconds` each."""
    return n / min(seconds), n * len(seconds) / sum(seconds)


def switches() -> dict:
    """The global settings that change GPU speed, as they stand (the engine's `configure_device` sets them), and
    the fp32 arithmetic they give: TF32 is named where cuDNN's or cuBLAS's TF32 switch is on."""
    conv_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return {"deterministic": deterministic_mode(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_tf32": conv_tf32, "matmul_tf32": matmul_tf32,
            "fp32_math": (f"convolutions in {'TF32' if conv_tf32 else 'fp32'}, "
                          f"matmuls in {'TF32' if matmul_tf32 else 'fp32'}")}


def set_mode(device: torch.device, mode: str) -> None:
    """`--deterministic mode` for what follows (core.device.configure_device; process-wide)."""
    configure_device(device, mode)


# ---- training throughput ---------------------------------------------------------------------------------------

def engine_throughput(data: Dataset, model_name: str, recipe: Recipe, device: torch.device, precision: str,
                      compile_mode: str, epochs: int, frozen_features: bool = False, mode: str = "on") -> dict:
    """The engine's images/s over `epochs` timed epochs after a warm-up epoch (compilation), and its peak memory.
    `frozen_features`: the transfer victim's set-up (experiment.scenarios.targeted.Transfer.build_model): every
    parameter but the head's frozen, the extractor's BatchNorm in train mode (`--head-bn train`, the default)."""
    x, y = to_float(data.train.x, device), data.train.y.to(device)
    model = build_model(model_name, data, seed=SEED)
    if frozen_features:
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        model.frozen_bn = "train"
    stamps: list[float] = []

    def on_epoch(epoch: int, row: dict) -> None:  # after the epoch's own synchronisation (EpochStep)
        stamps.append(time.perf_counter())

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    result = train_at_precision(precision, model, x, y, replace(recipe, epochs=epochs + 1), device,
                                compile=compile_mode, on_epoch=on_epoch, deterministic=mode)
    timed = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    best, mean = rates(len(y), timed)
    peak, peak_kind = peak_mib(device)
    warmup = stamps[0] - start
    return {"model": model_name, "precision": precision, "deterministic": mode, "images_per_s": round(best, 1),
            "images_per_s_mean": round(mean, 1), "rows": len(y), "batch_size": recipe.batch_size,
            "augment": recipe.augment, "timed_epochs": epochs, "warmup_seconds": round(warmup, 2),
            "compile_seconds": round(max(0.0, warmup - sum(timed) / len(timed)), 2) if result.compiled else 0.0,
            "compiled": result.compiled, "peak_memory_mib": peak, "peak_memory": peak_kind,
            "data_mib": round(x.numel() * x.element_size() / 2**20, 1), **switches()}


def official_loop_throughput(data: Dataset, model_name: str, recipe: Recipe, device: torch.device, epochs: int,
                             workers: int, mode: str = "on") -> dict:
    """The official HINT code's way of training: a DataLoader over a TensorDataset of float images on the CPU
    (per-item indexing and collation), each batch moved with `.to(device)`, the eager model in fp32, a plain loop
    of the same SGD steps. No augmentation (the official code's is per item in the loader; leaving it out favours
    this side). It runs under the same `--deterministic mode` as the engine line it is compared with."""
    set_mode(device, mode)
    dataset = TensorDataset(data.train.x.float().div_(255), data.train.y)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(SEED))
    model = build_model(model_name, data, seed=SEED).to(device).train()
    optimizer, _ = make_optimizer(model, recipe)
    seconds = []
    reset_peak(device)
    for _ in range(epochs + 1):
        sync(device)
        start = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        seconds.append(time.perf_counter() - start)
    best, mean = rates(len(dataset), seconds[1:])
    peak, peak_kind = peak_mib(device)
    return {"model": model_name, "precision": "fp32", "deterministic": mode, "images_per_s": round(best, 1),
            "images_per_s_mean": round(mean, 1), "rows": len(dataset), "batch_size": recipe.batch_size,
            "augment": "none", "timed_epochs": epochs, "loader_workers": workers, "peak_memory_mib": peak,
            "peak_memory": peak_kind, **switches()}


# ---- crafting --------------------------------------------------------------------------------------------------

def brew_seconds_per_iteration(data: Dataset, objective, poisons: int, device: torch.device, iterations: int,
                               params: dict, name: str) -> float:
    """Seconds per iteration of the attack's brew (`attacks.forest.Brew.restart`, forest's signed Adam with its
    differentiable augmentation) on the first `poisons` train rows: one untimed iteration, then `iterations`."""
    x = to_float(data.train.x[:poisons], device)
    ctx = AttackContext(data, torch.arange(poisons), EPS, poisons / len(data.train), SEED, device)

    def brew(n: int) -> Brew:
        return Brew(n, 1, params["lr"], params["pbatch"], True, params["lr_space"])

    brew(1).restart(ctx, name, x, objective, 0)  # warm-up; a restart returns δ on the CPU, so it has synchronised
    start = time.perf_counter()
    brew(iterations).restart(ctx, name, x, objective, 0)
    return (time.perf_counter() - start) / iterations


def craft_figures(data: Dataset, model_name: str, device: torch.device, sizes: Sizes) -> list[dict]:
    """GM's seconds per iteration (gradient matching: the poison batch's parameter gradient built with create_graph,
    then its cosine to the target's, differentiated with respect to δ) and BP's / FC's (forest's feature matching
    through a frozen extractor, one backward), each extrapolated to the attack's default restart and PoisonSet."""
    surrogate = build_model(model_name, data, seed=SEED).to(device).eval().requires_grad_(False)
    target = to_float(data.test.x[:1], device)
    intended = 1
    lines = []
    gm = ATTACKS.get("gm")(data.family).params
    y = torch.full((sizes.gm_poisons,), intended, device=device)  # GM's bases are of the intended class
    matching = GradientMatching(surrogate, target, intended)
    per_it = brew_seconds_per_iteration(data, lambda inputs, a, b: matching.loss(inputs, y[a:b]), sizes.gm_poisons,
                                        device, sizes.craft_iterations, gm, "gm")
    lines.append(craft_line("gm", sizes.gm_poisons, per_it, gm, sizes.craft_iterations, "scratch"))
    features = inference_copy(surrogate, target, "auto")  # as attacks.forest.feature_model copies the extractor
    with torch.no_grad():
        target_features = features.features(target)
    per_it = brew_seconds_per_iteration(
        data, lambda inputs, a, b: bullseye_loss(features.features(inputs), target_features), sizes.transfer_poisons,
        device, sizes.craft_iterations, ATTACKS.get("bp")(data.family).params, "bp")
    for attack in ("bp", "fc"):  # forest's FC loss is BP's for one target: the same cost per iteration
        lines.append(craft_line(attack, sizes.transfer_poisons, per_it, ATTACKS.get(attack)(data.family).params,
                                sizes.craft_iterations, "transfer"))
    return lines


def craft_line(attack: str, poisons: int, per_iteration: float, params: dict, timed: int, scenario: str) -> dict:
    restart = per_iteration * params["iterations"]
    return {"attack": attack, "scenario": scenario, "poisons": poisons, "timed_iterations": timed,
            "seconds_per_iteration": float(f"{per_iteration:.5g}"), "iterations": params["iterations"],
            "restarts": params["restarts"], "seconds_per_restart": round(restart, 2),
            "seconds_per_poison_set": round(restart * params["restarts"], 1),
            "note": "extrapolated: seconds_per_iteration × iterations (× restarts); an untrained surrogate"}


# ---- defense overhead ------------------------------------------------------------------------------------------

def scheduled_epochs(defense) -> list[int]:
    """The epochs at which the defense's `on_epoch_start` does its periodic work: HINT's noise updates (its
    `schedule`), EPIC's drops (`.schedule`), FRIENDS' friendly noise (`friendly_begin`); none for the others,
    whose cost is per batch (ATDA) or before training (the filters)."""
    if isinstance(getattr(defense, "schedule", None), list | tuple):
        return list(defense.schedule)
    if "schedule" in defense.params:
        return list(defense.params["schedule"])
    if "friendly_begin" in defense.params:
        return [defense.params["friendly_begin"]]
    return []


def paper_scale_seconds(wall: float, cost: dict, epochs: int, paper_epochs: int, events: int,
                        paper_events: int) -> float:
    """A run's wall seconds at `paper_epochs` from one of `epochs`: the scheduled epochs' work (`defense_epoch`) per
    event × the paper schedule's events; the filters' one-off work before training (`defense_prepare`) once, except
    the model a filter trains for its features (`<method>_feature_model`, the recipe's epochs); the rest (the epochs
    themselves, per-batch hooks included) in proportion to the epochs."""
    scheduled, prepare = cost.get("defense_epoch", 0.0), cost.get("defense_prepare", 0.0)
    feature_model = sum(v for k, v in cost.items() if k.endswith("_feature_model"))
    per_event = scheduled / events if events else 0.0
    per_epochs = wall - scheduled - prepare + feature_model
    return per_epochs * paper_epochs / epochs + (prepare - feature_model) + per_event * paper_events


DEFENSE_ORDER = ("none", "atda", "hint", "friends", "epic")  # the paper's four first: a budget cuts the rest


def defense_overheads(data: Dataset, model_name: str, device: torch.device, sizes: Sizes, compile_mode: str = "off",
                      mode: str = "on", deadline: float | None = None) -> list[dict]:
    """Every registered defense's `train` wall time over `none`'s (benchmarks/defense_overhead.py), measured over
    `overhead_epochs` epochs and extrapolated to the paper recipe's (see the module docstring).

    `compile_mode` as paper-scale runs use it (`--compile auto` compiles them): each defense first trains one untimed
    epoch, which compiles its graphs (the model's, ATDA's eval forward, ...), so the timed run holds no compiling;
    under `--deterministic mode` (the default: on), so a defense that meets a nondeterministic CUDA kernel fails
    here, in its own line (`error`), and the others go on. Past `deadline` (a `time.perf_counter()` value) the
    remaining defenses get a `skipped` line instead."""
    rows = sizes.overhead_rows
    family = data.family
    set_mode(device, mode)
    short = resolve_recipe(family, "paper", epochs=sizes.overhead_epochs, batch_size=sizes.batch)
    paper = resolve_recipe(family, "paper", batch_size=sizes.batch)
    threat = Threat("targeted", budget=max(1, round(0.01 * rows)), train_size=rows)
    setup = {"data": data, "device": device, "recipe": short, "model": model_name, "threat": threat,
             "compile": compile_mode, "x": to_float(data.train.x[:rows], device), "y": data.train.y[:rows].to(device),
             "val_x": to_float(data.val.x, device), "val_y": data.val.y.to(device),
             "params": dict(sizes.defense_params)}
    methods = [*[m for m in DEFENSE_ORDER if m in DEFENSES], *[m for m in DEFENSES.names() if m not in DEFENSE_ORDER]]
    measured, failed = {}, {}
    for method in methods:
        if deadline is not None and time.perf_counter() > deadline and method != "none":
            failed[method] = {"skipped": "the check's --budget ran out"}
            continue
        try:
            warm_start = time.perf_counter()
            timed_training(method, setup, replace(short, epochs=1))  # untimed: compiles (or warms) its graphs
            warmup = time.perf_counter() - warm_start
            wall, cost = timed_training(method, setup)
        except Exception as exc:  # noqa: BLE001 (this defense's line says it; the others go on)
            traceback.print_exc(file=sys.stderr)
            failed[method] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        params = setup["params"].get(method, {})
        events_short = scheduled_epochs(build_defense(method, family, short, threat, **params))
        events_paper = scheduled_epochs(build_defense(method, family, paper, threat, **params))
        at_paper = paper_scale_seconds(wall, cost, short.epochs, paper.epochs, len(events_short), len(events_paper))
        measured[method] = (wall, cost, at_paper, len(events_short), len(events_paper), warmup)
        print(f"gpu_check: defense {method:8s} {wall:8.2f} s", file=sys.stderr, flush=True)
    none_wall, none_paper = measured["none"][0], measured["none"][2]
    table5 = paper_ratios()
    lines = [{"method": m, "rows": rows, "epochs": short.epochs, "seconds": round(wall, 3),
              "defense_seconds": round(sum(cost.get(k, 0.0) for k in ("defense_prepare", "defense_epoch",
                                                                        "defense_batch")), 3),
              "ratio_to_none": round(wall / none_wall, 3),
              "paper_scale_ratio_to_none": round(at_paper / none_paper, 3), "paper_epochs": paper.epochs,
              "scheduled_events": {"measured": short_events, "paper": paper_events},
              "paper_ratio_to_none": table5.get(m, 1.0 if m == "none" else None), "compile": compile_mode,
              "deterministic": mode, "warmup_seconds": round(warmup, 2), "params": setup["params"].get(m, {})}
             for m, (wall, cost, at_paper, short_events, paper_events, warmup) in measured.items()]
    return lines + [{"method": m, "rows": rows, "compile": compile_mode, "deterministic": mode, **why}
                    for m, why in failed.items()]


# ---- repeatability and compile time -------------------------------------------------------------------------------

def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's and buffer's bytes, in state-dict order: equal digests, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def repeatability(data: Dataset, model_name: str, recipe: Recipe, device: torch.device, compile_mode: str,
                  rows: int) -> list[dict]:
    """Does the same seed give the same weights? Per `--deterministic` mode, two trainings of one epoch from one
    seed on `rows` rows (the engine, as `defend` trains), compared bit for bit (`weights_digest`) and by the
    largest weight difference. `on` must repeat exactly; `off` may not (cuDNN's autotuned kernels)."""
    lines = []
    x, y = to_float(data.train.x[:rows], device), data.train.y[:rows].to(device)
    for mode in ("on", "off"):
        models = []
        for _ in range(2):
            model = build_model(model_name, data, seed=SEED)
            train(model, x, y, x[:1], y[:1], replace(recipe, epochs=1), seed=SEED, device=device, num_classes=10,
                  compile=compile_mode, deterministic=mode)
            models.append(model)
        a, b = (dict(m.state_dict()) for m in models)
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        lines.append({"deterministic": mode, "rows": rows, "epochs": 1, "compile": compile_mode,
                      "identical": weights_digest(models[0]) == weights_digest(models[1]),
                      "max_abs_weight_difference": diff, "digests": [weights_digest(m) for m in models]})
    return lines


def compile_times(data: Dataset, model_name: str, recipe: Recipe, device: torch.device, cold: dict | None) -> dict:
    """Cold and warm compile apart: `cold` is the process's first compiled training (its `compile_seconds`: the
    warm-up epoch less a timed one, with Dynamo tracing, Inductor's code generation and Triton's builds); warm is
    the same training again after `torch._dynamo.reset()`, which traces anew but finds Inductor's and Triton's
    caches filled (what every later process of a sweep on the same machine pays)."""
    import torch._dynamo

    torch._dynamo.reset()
    warm = engine_throughput(data, model_name, recipe, device, "fp32", "on", 1, mode="off")
    return {"model": model_name, "precision": "fp32", "deterministic": "off",
            "cold_seconds": cold["compile_seconds"] if cold else None, "warm_seconds": warm["compile_seconds"],
            "cold_warmup_seconds": cold["warmup_seconds"] if cold else None,
            "warm_warmup_seconds": warm["warmup_seconds"],
            "note": "compile seconds = the warm-up epoch less a timed epoch; warm: after torch._dynamo.reset(), "
                    "Inductor's FX-graph and Triton caches as the cold compile left them"}


# ---- the grids' GPU-hours --------------------------------------------------------------------------------------

def grid_line(name: str, kind: str, lines: list[dict]) -> dict:
    """The GPU-hours of builtin grid `name` at paper scale from this check's `lines` (poisonbench.sweeps.estimate:
    the figures `figures_from_lines` takes, the formula `sweep plan --estimate` uses)."""
    _, entry = figures_from_lines(lines)
    figures = Figures(kind, entry["images_per_s"], entry["ratio_to_none"], entry["crafting"])
    e = estimate(load_grid(name), [figures])
    d = e["devices"][0]
    return {"grid": name, "runs": e["runs"], "gpu_hours": round(d["hours"], 2),
            "hours_runs": round(d["hours_runs"], 2), "hours_pretrained": round(d["hours_pretrained"], 2),
            "pretrained_models": e["pretrained_models"], "hours_crafting": round(d["hours_crafting"], 2),
            "poison_sets": e["poison_sets"], "formula": e["formula"], "excludes": e["excludes"],
            "assumes": "; ".join(e["assumes"]), "missing": d["missing"]}


# ---- Fashion-MNIST end to end ----------------------------------------------------------------------------------

def fashion_mnist_e2e(data_dir: str | None, device: torch.device, sizes: Sizes, compile_mode: str) -> dict:
    """A targeted run crafted and trained on the device on real data: GM (scratch: a surrogate trained first, with
    the victim's recipe, forest's on the MNIST family, shortened to `e2e_epochs`), `e2e_trials` trials, no defense
    (`experiment.defend`, as `poisonbench defend --attack gm` runs it), in a temporary workspace."""
    if not data_dir:
        return {"skipped": "no --data-dir given (a folder holding Fashion-MNIST's four IDX files)"}
    try:
        data = load_dataset("fashion-mnist", data_dir)
    except PoisonbenchError as exc:
        return {"skipped": f"--data-dir {data_dir}: {exc}"}
    from poisonbench.experiment.defend import defend, targeted_fields
    from poisonbench.experiment.spec import DefendSpec

    with tempfile.TemporaryDirectory(prefix="pb-gpu-check-") as tmp:
        spec = DefendSpec(dataset="fashion-mnist", data_dir=data_dir, attack="gm", method="none",
                          recipe_overrides={"epochs": sizes.e2e_epochs},
                          attack_params={"iterations": sizes.e2e_iterations, "restarts": 1},
                          trials=sizes.e2e_trials, device=str(device), compile=compile_mode, results=tmp)
        outcomes = defend(spec)
    trials = [{**targeted_fields(o.record), "test_acc": o.record["metrics"]["test_acc"],
               "seconds": round(o.record["cost"]["seconds"], 2)} for o in outcomes]
    successes = sum(bool(t.get("attack_success")) for t in trials)
    return {"dataset": data.name, "train_rows": len(data.train), "attack": "gm", "method": "none",
            "recipe": outcomes[0].record["config"]["recipe"]["name"], "epochs": sizes.e2e_epochs,
            "iterations": sizes.e2e_iterations, "restarts": 1, "successes": successes, "trials": len(trials),
            "test_acc_mean": round(sum(t["test_acc"] for t in trials) / len(trials), 4), "per_trial": trials}


# ---- the command -----------------------------------------------------------------------------------------------

class Lines:
    """Prints each figure as one JSON line (stdout and `--out`), with the fields every line carries; keeps the
    `--budget` (a figure whose estimate no longer fits gets a `skipped` line) and counts torch.compile's work per
    figure (`compile_counts`: graphs, graph breaks, eager fallbacks at Dynamo's recompile limit)."""

    def __init__(self, device: torch.device, out: str | None, tiny: bool, budget: float = 0.0, scale: float = 1.0):
        self.common = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                       "tiny": tiny}
        self.file = open(out, "w") if out else None  # open for the whole run, closed by `close`
        self.errors: list[str] = []
        self.emitted: list[dict] = []  # every line so far: the grid estimates and --write-throughput read them
        self.skipped: list[str] = []
        self.started = time.perf_counter()
        self.budget, self.scale = budget, scale
        self.watch = CompileWatch()

    def emit(self, figure: str, fields: dict, seconds: float | None = None) -> dict:
        line = {"figure": figure, **fields, **self.common}
        self.emitted.append(line)
        if seconds is not None:
            line["check_seconds"] = round(seconds, 2)  # the figure's wall time (lines of one figure share it)
        text = json.dumps(line)
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()
        return line

    def left(self) -> float:
        """Seconds of the budget left (inf without one)."""
        return self.budget - (time.perf_counter() - self.started) if self.budget else math.inf

    def fits(self, figure: str, estimate: float, label: str = "") -> bool:
        """Whether a figure estimated at `estimate` seconds (at full size) fits what is left of the budget; if not,
        its `skipped` line."""
        need = estimate * self.scale
        if need <= self.left():
            return True
        name = f"{figure} {label}".strip()
        self.skipped.append(name)
        self.emit(figure, {"skipped": f"budget: {self.left():.0f} s left of {self.budget:.0f}, ~{need:.0f} s needed",
                           "what": label})
        return False

    def attempt(self, figure: str, fn):
        """(fn(), seconds it took); on an exception, one `error` line for the figure instead and (None, seconds), so
        that the other figures still run."""
        start = time.perf_counter()
        self.before = self.watch.snapshot()
        print(f"gpu_check: {figure} … ({self.left():.0f} s of the budget left)", file=sys.stderr, flush=True)
        try:
            return fn(), time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 (reported as the figure's line; the check goes on)
            traceback.print_exc(file=sys.stderr)
            self.errors.append(figure)
            self.emit(figure, {"error": f"{type(exc).__name__}: {exc}"[:2000],
                               "compile_counts": self.watch.since(self.before)}, time.perf_counter() - start)
            return None, time.perf_counter() - start

    def measure(self, figure: str, fn, *, many: bool = False, estimate: float = 0.0, label: str = ""):
        """`attempt(fn)` and emit its line (or its lines, `many`: they share the figure's wall time), each with the
        figure's compile counts; nothing but a `skipped` line where the budget has no room for `estimate`."""
        if not self.fits(figure, estimate, label):
            return None
        result, seconds = self.attempt(figure, fn)
        counts = self.watch.since(self.before)
        if result is not None and counts["recompile_limit_hits"]:
            self.errors.append(f"{figure}: eager fallback at Dynamo's recompile limit")
        for fields in (result if many and result else [result] if result is not None else []):
            self.emit(figure, {**fields, "compile_counts": counts}, seconds)
        return result

    def close(self) -> None:
        self.watch.close()
        if self.file:
            self.file.close()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def setup_fields(device: torch.device, sizes: Sizes, args) -> dict:
    return {"poisonbench": __version__, "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "torch_note": torch_version_note(), "compile": args.compile, "threads": torch.get_num_threads(),
            "data_dir": args.data_dir, "sizes": asdict(sizes), **switches()}


# Each figure's estimated seconds on one H100 at full size (cold compiles included), in the order they run: the most
# useful first, so that a tight `--budget` drops the least useful.
ESTIMATES = {"throughput_first": 75, "throughput": 35, "official_loop": 15, "repeatability": 45, "craft": 45,
             "defense_overhead": 150, "concurrency": 150, "graphs": 60, "compile_warm": 30, "fashion_mnist_e2e": 90}


def run(args) -> int:
    started = time.perf_counter()
    # the engine sets this before its first CUDA work (core.device.configure_device: deterministic cuBLAS needs it
    # before cuBLAS starts); here the official loop may run first, so it is set now
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sizes = TINY if args.tiny else FULL
    device = resolve_device(args.device)
    compile_mode = args.compile or ("off" if args.tiny else "on")
    args.compile = compile_mode
    import torch._dynamo

    # a fallback to eager fails its figure, loudly; restored afterwards (the tests run the check in-process)
    failing = torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
    failing.__enter__()
    try:
        return measure_all(args, started, device, sizes, compile_mode)
    finally:
        failing.__exit__(None, None, None)


def measure_all(args, started: float, device: torch.device, sizes: Sizes, compile_mode: str) -> int:
    lines = Lines(device, args.out, args.tiny, budget=args.budget, scale=0.0 if args.tiny else 1.0)
    lines.emit("setup", setup_fields(device, sizes, args))
    cifar = synthetic_dataset("cifar10", max(sizes.rows, sizes.overhead_rows, sizes.gm_poisons), sizes.val_rows,
                              16, sizes.image)
    mnist = synthetic_dataset("mnist", sizes.rows, sizes.val_rows, 16, sizes.mnist_image)
    cifar_recipe = resolve_recipe("cifar10", "paper", batch_size=sizes.batch)
    mnist_recipe = resolve_recipe("mnist", "paper", batch_size=sizes.batch)
    cifar_rows = replace(cifar, train=Split(cifar.train.x[:sizes.rows], cifar.train.y[:sizes.rows],
                                            cifar.train.indices[:sizes.rows], cifar.train.fingerprint))
    engine: dict = {}

    def throughput(workload, data, model, recipe, precision, mode, frozen=False, estimate=ESTIMATES["throughput"]):
        def measured() -> dict:
            return {"workload": workload, **engine_throughput(data, model, recipe, device, precision, compile_mode,
                                                              sizes.epochs, frozen, mode)}

        result = lines.measure("train_throughput", measured, estimate=estimate,
                               label=f"{workload} {precision} deterministic {mode}")
        if result is not None:
            engine[(workload, precision, mode)] = result

    def official(mode: str) -> None:
        result = lines.measure("official_loop", lambda: official_loop_throughput(
            cifar_rows, sizes.model, cifar_recipe, device, sizes.epochs, sizes.loader_workers, mode),
            estimate=ESTIMATES["official_loop"], label=f"deterministic {mode}")
        ours = engine.get(("cifar10-scratch", "fp32", mode))
        if result is not None and ours is not None:
            lines.emit("engine_over_official", {
                "deterministic": mode, "engine_images_per_s": ours["images_per_s"],
                "official_images_per_s": result["images_per_s"],
                "ratio": round(ours["images_per_s"] / result["images_per_s"], 2),
                "note": f"{sizes.model} fp32, same --deterministic mode; the engine with --compile {compile_mode} "
                        "and its augmentation, the official loop eager without any"})

    # the ResNet-18 CIFAR-10 training step, both modes, both precisions, and the official loop beside it
    throughput("cifar10-scratch", cifar_rows, sizes.model, cifar_recipe, "fp32", "off",
               estimate=ESTIMATES["throughput_first"])
    throughput("cifar10-scratch", cifar_rows, sizes.model, cifar_recipe, "fp32", "on")
    official("off")
    official("on")
    throughput("cifar10-scratch", cifar_rows, sizes.model, cifar_recipe, "bf16", "off")
    throughput("cifar10-scratch", cifar_rows, sizes.model, cifar_recipe, "bf16", "on")
    lines.measure("repeatability", lambda: repeatability(cifar_rows, sizes.model, cifar_recipe, device,
                                                         compile_mode, min(sizes.rows, 20 * sizes.batch)),
                  many=True, estimate=ESTIMATES["repeatability"])
    set_mode(device, "on")  # the default mode for the rest, as `defend` runs
    lines.measure("craft", lambda: craft_figures(cifar, sizes.model, device, sizes), many=True,
                  estimate=ESTIMATES["craft"])
    overheads = lines.measure("defense_overhead", lambda: defense_overheads(
        cifar, sizes.model, device, sizes, compile_mode, "on",
        deadline=time.perf_counter() + lines.left() - 60 if args.budget and not args.tiny else None),
        many=True, estimate=ESTIMATES["defense_overhead"]) or []
    # K runs at once on the device (sweep run --workers K), and the step with CUDA graphs (gpu_concurrency.py)
    lines.measure("concurrency", lambda: concurrency_figures(sizes.concurrency, args.tiny, device, compile_mode,
                                                             sizes.epochs), many=True,
                  estimate=ESTIMATES["concurrency"])
    lines.measure("graphs", lambda: graph_figures(cifar_rows, sizes.model, cifar_recipe, device, compile_mode,
                                                  sizes.epochs, engine_throughput), many=True,
                  estimate=ESTIMATES["graphs"])
    throughput("cifar10-transfer", cifar_rows, sizes.model, cifar_recipe, "fp32", "off", frozen=True)
    throughput("mnist-scratch", mnist, "convnet", mnist_recipe, "fp32", "off")
    if compile_mode == "on":
        cold = engine.get(("cifar10-scratch", "fp32", "off"))
        lines.measure("compile_time", lambda: compile_times(cifar_rows, sizes.model, cifar_recipe, device, cold),
                      estimate=ESTIMATES["compile_warm"])
    for grid in GRIDS:
        lines.measure("grid_estimate", lambda g=grid: grid_line(g, lines.common["device_name"], lines.emitted))
    if args.write_throughput:  # the figures `sweep plan --estimate` reads: this device's entry, the others kept
        write_table(args.write_throughput, *figures_from_lines(lines.emitted))
    lines.measure("fashion_mnist_e2e", lambda: fashion_mnist_e2e(args.data_dir, device, sizes, compile_mode),
                  estimate=ESTIMATES["fashion_mnist_e2e"] if args.data_dir else 0)
    errors = lines.errors + [f"defense_overhead {o['method']}" for o in overheads if "error" in o]
    lines.emit("done", {"errors": errors, "skipped": lines.skipped, "budget_seconds": args.budget,
                        "compile_counts": lines.watch.snapshot(), "eager_fallbacks": lines.watch.fallbacks},
               time.perf_counter() - started)
    hits = lines.watch.snapshot()["recompile_limit_hits"]
    lines.close()
    return 1 if errors or hits or lines.watch.fallbacks else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (the first CUDA device, else the CPU) | cpu | cuda:N")
    parser.add_argument("--out", default=None, help="also write the JSON lines to this file")
    parser.add_argument("--data-dir", default=None,
                        help="a folder with Fashion-MNIST's IDX files, for the end-to-end figure (else skipped)")
    parser.add_argument("--compile", default=None, choices=("on", "off"),
                        help="torch.compile in the throughput figures and the end-to-end run (default: on; "
                             "--tiny: off)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU (tests/test_gpu_check.py)")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds the check may take (default 360, sized for one H100): a figure whose estimate "
                             "no longer fits is skipped with a line saying so, the least useful first; 0: no limit")
    parser.add_argument("--write-throughput", default=None, metavar="PATH",
                        help="after the run, put this device's figures (fp32 images/s per workload, defense "
                             "ratios, crafting s/iteration) into the JSON table at PATH, other devices kept: "
                             "poisonbench/sweeps/throughput.json is the one `sweep plan --estimate` reads")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
