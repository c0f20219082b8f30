"""Crafting speed of the targeted attacks GM, BP and FC (issue 30): seconds per GM restart and per BP / FC
iteration, our batched craft against a per-poison Python loop of the same objective, and against the Adversarial
Robustness Toolbox (ART, `pip install adversarial-robustness-toolbox`, the `bench` extra) on the same surrogate,
poisons and iteration count.

    python benchmarks/craft_targeted.py [--json] [--dataset mnist-5k] [--poisons 40] [--iterations 10]
                                        [--toxic-iterations 20] [--surrogate-epochs 3] [--repeats 2]
                                        [--art-fc-poisons 4] [--threads N] [--device auto] [--no-art]

One target and one set of poisons (all of the intended class, `poisonbench.attacks.targets.draw_target`), one surrogate
(the scratch scenario's, trained or loaded before any timing and reported apart) for every attack. Ours is the
whole `poisons.craft` (rows, surrogate from the cache, crafting, saving) into a temporary workspace, one restart.

- `speedup_vs_loop`: the same optimisation with the same settings, seeds and step rule, where the objective is
  evaluated one poison at a time in a Python loop: GM sums the poisons' per-poison parameter gradients (each with
  `create_graph`) into the batch's mean gradient before the cosine, so the loss and its δ-gradient are the
  batched ones; forest BP / FC stack the poisons' features computed one by one; toxic BP likewise; toxic FC runs
  our own per-poison algorithm on one poison at a time (PB's loop, with our stop-on-rejection, see
  `poisonbench.attacks.fc`). `loop_agreement` is the largest |δ_loop − δ_ours| (float rounding can flip the sign
  of a near-zero gradient, so a signed step may differ).
- `speedup_vs_art`: ART 1.20's GradientMatchingAttack against our GM (one trial, `max_epochs` = our iterations,
  a batch holding every poison so that both take one step per iteration; ours also augments, ART does not);
  BullseyePolytopeAttackPyTorch (Adam 0.04, `max_iter` = our toxic iterations) against our toxic BP; and
  FeatureCollisionAttack against our toxic FC, per poison-iteration (ART's loop runs up to `max_iter` iterations
  for each poison one at a time, on the first `--art-fc-poisons` poisons to keep the run short; ours stops a
  poison when PB's rule does; the iterations are counted on both sides). ART's objectives are not ours (its BP
  measures the distance to the bases' own features, its FC has no ε-ball and a soft L2 penalty; ART's issue #1594
  reports that its BP does not reproduce the paper): the figures compare the cost of an iteration, not the poisons.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext
from poisonbench.attacks.bp import bullseye_loss, toxic_bp
from poisonbench.attacks.fc import feature_collision, poison_frogs_loss
from poisonbench.attacks.forest import Brew, feature_model, poison_tensors
from poisonbench.attacks.gm import GradientMatching, matching_loss, parameter_gradient
from poisonbench.attacks.targets import draw_target
from poisonbench.core.device import resolve_device
from poisonbench.data import load_dataset

SEED = 0
EPS = 16 / 255


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def configs(args) -> dict[str, tuple[str, dict]]:
    common = {"scenario": "scratch", "surrogate_epochs": args.surrogate_epochs}
    brew = {**common, "iterations": args.iterations, "restarts": 1}
    return {"gm": ("gm", brew), "bp": ("bp", brew), "fc": ("fc", brew),
            "bp_toxic": ("bp", {**common, "impl": "toxic", "iterations": args.toxic_iterations}),
            "fc_toxic": ("fc", {**common, "impl": "toxic", "iterations": args.toxic_iterations})}


def context(data, spec, target, device) -> AttackContext:
    attack = ATTACKS.get(spec.attack)(data.family, **spec.params)
    indices = attack.choose_rows(data, spec.budget, spec.seed, target)
    ctx = AttackContext(data, indices, spec.eps, spec.budget, spec.seed, device, target=target)
    ctx.loader = attack.load_surrogate
    return ctx


def stacked_features(model):
    """`model` whose features are computed one poison at a time."""
    return SimpleNamespace(features=lambda z: torch.cat([model.features(z[i:i + 1]) for i in range(len(z))]))


def loop_craft(key: str, params: dict, ctx: AttackContext) -> torch.Tensor:
    """The per-poison-loop variant of `key` (see the module docstring): δ on the CPU."""
    x, y, target = poison_tensors(ctx)
    if key == "gm":
        matching = GradientMatching(ctx.surrogate(), target, ctx.target.intended_class)

        def objective(inputs, start, stop):
            total = None
            for i in range(stop - start):
                g = parameter_gradient(matching.model, matching.params, inputs[i:i + 1], y[start + i:start + i + 1],
                                       create_graph=True)
                total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
            return matching_loss([t / (stop - start) for t in total], matching.target_grad, matching.target_norm)

        return Brew(params["iterations"], 1, 0.1, 512, True).restart(ctx, "gm", x, objective, 0)[0]
    model = feature_model(ctx, x[:1])
    with torch.no_grad():
        target_features = model.features(target)
    looped = stacked_features(model)
    if key in ("bp", "fc"):
        loss = bullseye_loss if key == "bp" else poison_frogs_loss
        brew = Brew(params["iterations"], 1, 0.1, 512, True)
        return brew.restart(ctx, key, x, lambda inputs, s, e: loss(looped.features(inputs), target_features), 0)[0]
    if key == "bp_toxic":
        return toxic_bp(ctx, looped, x, target_features, params["iterations"], 0.04, "bp")[0]
    return torch.cat([feature_collision(model, x[i:i + 1], target, ctx.eps, 0.001, params["iterations"], 0.3)[0]
                      for i in range(len(x))]).cpu()


def art_classifier(model: nn.Module, data, device):
    """Our surrogate as an ART PyTorchClassifier: layers `features` (penultimate) and `head`."""
    from art.estimators.classification import PyTorchClassifier

    net = copy.deepcopy(model).eval().requires_grad_(True)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.features(x)

    seq = nn.Sequential(OrderedDict(features=Features(), head=net.head)).eval()
    return PyTorchClassifier(model=seq, loss=nn.CrossEntropyLoss(), input_shape=data.shape,
                             nb_classes=data.num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def art_runs(ctx: AttackContext, args, ours: dict) -> tuple[dict, dict, dict]:
    """(ART seconds, speed-ups, notes) for GM, BP and FC."""
    from art.attacks.poisoning import BullseyePolytopeAttackPyTorch, FeatureCollisionAttack, GradientMatchingAttack

    x, y, target = poison_tensors(ctx)
    xs, ys, ts = x.cpu().numpy(), y.cpu().numpy(), target.cpu().numpy()
    seconds, speedup, notes = {}, {}, {}

    def classifier():  # a fresh wrapper per attack: ART attacks register hooks and change modes on theirs
        return art_classifier(ctx.surrogate(), ctx.dataset, ctx.device)

    gm = GradientMatchingAttack(classifier(), percent_poison=1.0, epsilon=ctx.eps, max_trials=1,
                                max_epochs=args.iterations, batch_size=len(xs), verbose=0)
    _, seconds["gm"] = timed(lambda: gm.poison(ts, np.array([ctx.target.intended_class]), xs, ys))
    speedup["gm"] = seconds["gm"] / ours["gm"]
    notes["gm"] = "ART GradientMatchingAttack, 1 trial, max_epochs = iterations, one batch of all poisons"

    bp = BullseyePolytopeAttackPyTorch(classifier(), ts, "features", max_iter=args.toxic_iterations,
                                       learning_rate=0.04, epsilon=ctx.eps, net_repeat=1, endtoend=True,
                                       batch_size=len(xs), verbose=False)
    _, seconds["bp"] = timed(lambda: bp.poison(xs, ys))
    speedup["bp"] = seconds["bp"] / ours["bp_toxic"]
    notes["bp"] = ("ART BullseyePolytopeAttackPyTorch (Adam 0.04, max_iter = toxic iterations; endtoend=True: its "
                   "endtoend=False path cannot backpropagate) against our --impl toxic")

    fc = FeatureCollisionAttack(classifier(), ts, "features", max_iter=args.toxic_iterations, verbose=False)
    fc_bases = xs[:args.art_fc_poisons]
    calls = {"n": 0}
    forward_step = fc.forward_step

    def counted(poison):
        calls["n"] += 1
        return forward_step(poison)

    fc.forward_step = counted
    _, seconds["fc"] = timed(lambda: fc.poison(fc_bases))
    per_art = seconds["fc"] / max(calls["n"], 1)
    per_ours = ours["fc_toxic"] / max(ours["fc_toxic_poison_iterations"], 1)
    speedup["fc"] = per_art / per_ours
    notes["fc"] = (f"ART FeatureCollisionAttack on the first {len(fc_bases)} poisons, max_iter = toxic iterations, "
                   f"{calls['n']} poison-iterations; ours --impl toxic on all, "
                   f"{ours['fc_toxic_poison_iterations']}: seconds per poison-iteration")
    return seconds, speedup, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--poisons", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=10, help="GM and forest BP / FC iterations (1 restart)")
    parser.add_argument("--toxic-iterations", type=int, default=20, help="toxic BP / FC iterations (ART's too)")
    parser.add_argument("--surrogate-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timings of ours and of the loop (fastest kept)")
    parser.add_argument("--art-fc-poisons", type=int, default=4,
                        help="poisons ART's FC crafts (one at a time; its rate is per poison-iteration)")
    parser.add_argument("--no-art", action="store_true", help="skip ART (speedup_vs_art: null)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default torch's; 1 on a machine other jobs share: two "
                             "threads of batch-1 ops beside another job ran up to 100x slower here)")
    parser.add_argument("--results", default=None, help="workspace for the surrogate (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    budget = (args.poisons + 0.5) / len(data.train)  # ⌊budget·n⌋ = poisons
    target = draw_target(data, SEED, "scratch", budget)
    runs = configs(args)
    with tempfile.TemporaryDirectory(prefix="pb-bench-targeted-") as tmp:
        results = Path(args.results or tmp)
        specs = {key: poisons.craft_spec(data, name, eps=EPS, budget=budget, seed=SEED, target=target, **params)
                 for key, (name, params) in runs.items()}
        ctx = context(data, specs["gm"], target, device)
        ctx.results_root = results
        _, surrogate_seconds = timed(ctx.surrogate)
        ours, loops, agreement = {}, {}, {}
        for key, spec in specs.items():  # ours and the loop alternate; each keeps its fastest of `repeats`
            ctx_k = context(data, spec, target, device)
            ctx_k.results_root = results
            ctx_k.surrogate()  # loaded before timing the loop; `poisons.craft` loads it inside ours
            ours_s, loop_s = [], []
            for _ in range(args.repeats):
                (poison, _), seconds = timed(lambda spec=spec: poisons.craft(spec, data, results, device, force=True))
                ours_s.append(seconds)
                delta, seconds = timed(lambda k=key, c=ctx_k: loop_craft(k, runs[k][1], c))
                loop_s.append(seconds)
            ours[key], loops[key] = min(ours_s), min(loop_s)
            agreement[key] = float((delta.cpu() - poison.delta).abs().max())
            if key == "fc_toxic":
                ours["fc_toxic_poison_iterations"] = poison.manifest["attack_info"]["poison_iterations"]
            print(f"{key:9s} ours {ours[key]:8.2f} s  loop {loops[key]:8.2f} s", file=sys.stderr, flush=True)
        art_seconds, art_speedup, art_notes = {}, {"gm": None, "bp": None, "fc": None}, {}
        if args.no_art:
            art_notes = {k: "--no-art" for k in art_speedup}
        else:
            try:
                art_seconds, art_speedup, art_notes = art_runs(ctx, args, ours)
            except ImportError as exc:
                art_notes = {k: f"ART not installed ({exc}); pip install adversarial-robustness-toolbox"
                             for k in art_speedup}
    fc_iterations = ours["fc_toxic_poison_iterations"] / args.poisons
    result = {
        "dataset": data.name, "device": str(device), "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0], "poisons": args.poisons, "eps": EPS,
        "iterations": args.iterations, "toxic_iterations": args.toxic_iterations,
        "surrogate_epochs": args.surrogate_epochs, "surrogate_seconds": round(surrogate_seconds, 2),
        "gm_s_per_restart": round(ours["gm"], 5),
        "bp_s_per_iteration": round(ours["bp"] / args.iterations, 4),
        "fc_s_per_iteration": round(ours["fc"] / args.iterations, 4),
        "bp_toxic_s_per_iteration": round(ours["bp_toxic"] / args.toxic_iterations, 4),
        "fc_toxic_s_per_iteration": round(ours["fc_toxic"] / max(fc_iterations, 1e-9), 4),
        "ours_seconds": {k: round(v, 5) for k, v in ours.items() if k in runs},
        "loop_seconds": {k: round(v, 5) for k, v in loops.items()},
        "speedup_vs_loop": {k: round(loops[k] / ours[k], 2) for k in runs},
        "loop_agreement": agreement,
        "art_seconds": {k: round(v, 5) for k, v in art_seconds.items()},
        "speedup_vs_art": {k: (round(v, 2) if v is not None else None) for k, v in art_speedup.items()},
        "art_notes": art_notes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
