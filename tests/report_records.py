"""Synthetic run records for the report tests (schema_version 1, shaped like runner.execute's output).

Fixed values, no randomness: the golden files under tests/golden/ are rendered from exactly these.
"""

from __future__ import annotations

import json
from pathlib import Path

from poisonbench.core.hashing import short_hash
from poisonbench.engine.recipes import resolve_recipe

MIX = ["pgd", "dap", "durp", "deepconfuse"]


def hint_params(ratio: float = 0.5, beta: float = 0.062) -> dict:
    return {"ratio": ratio, "beta": beta, "gamma": 0.1, "schedule": [1, 5], "ihvp": "exact", "sign": True}


def make_record(dataset="mnist-5k", family="mnist", recipe="quick", epochs=None, method="none", params=None,
                rho=0.0, trial=0, acc=0.9, seconds=10.0, defense_seconds=0.0, targeted=None, model=None,
                sample=None, examples=None, base_seed=0) -> dict:
    overrides = {"epochs": epochs} if epochs else {}
    poison = None
    scenario = "clean"
    if targeted:
        scenario = "transfer" if targeted["attack"] in ("bp", "fc") else "scratch"
        poison = {"kind": "targeted", "attack": targeted["attack"], "ratio": 0.01,
                  "target_index": targeted["target_index"], "target_class": targeted["target_class"],
                  "intended_class": targeted["intended_class"], "label": f"{targeted['attack']}-t{trial}"}
    elif rho > 0:
        scenario = "untargeted"
        poison = {"kind": "untargeted", "ratio": rho, "attacks": MIX, "poison_ids": {}, "counts": {},
                  "indices_fingerprint": "x", "label": f"mix@{rho}"}
    config = {
        "dataset": dataset, "dataset_fingerprint": "fp", "model": model or
        ("convnet" if family == "mnist" else "resnet18"),
        "recipe": resolve_recipe(family, recipe, **overrides).to_dict(), "scenario": scenario, "poison": poison,
        "defense": {"method": method, **(params or {})}, "trial": trial, "seed": base_seed + trial,
    }
    metrics = {"test_acc": acc, "val_acc": acc, "train_acc": 0.99, "train_loss": 0.05,
               "test_mean_confidence": 0.9}
    if targeted:
        c = 10
        probs = [0.02] * c
        pred = targeted["intended_class"] if targeted["success"] else targeted["target_class"]
        probs[pred] = 1 - 0.02 * (c - 1)
        metrics.update({"attack_success": targeted["success"], "target_prediction": pred,
                        "target_probs": probs})
    if sample:
        metrics["sample_predictions"] = sample
    train = seconds - defense_seconds - 1.0
    return {
        "schema_version": 1, "run_id": short_hash(config), "finished_at": "2025-01-01T00:00:00+00:00",
        "compiled": False, "env": {}, "config": config, "metrics": metrics,
        "history": [{"epoch": 1, "lr": 0.01, "train_loss": 0.05, "train_acc": 0.99}],
        "cost": {"seconds": seconds + 0.5, "train": train, "eval": 0.5, "data_load": 0.5,
                 "defense_prepare": defense_seconds / 2, "defense_epoch": defense_seconds / 2},
        "defense": {"examples": examples} if examples else {},
    }


def sample_predictions(method_bonus: int) -> dict:
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    pred = [y if (y + method_bonus) % 3 else (y + 1) % 10 for y in labels]
    return {"test_indices": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90], "labels": labels, "pred": pred,
            "prob": [0.5 + 0.04 * i for i in range(10)], "probs": None}


def healthy_noise_examples() -> list[dict]:
    """Four 28×28 examples (two clean, two poisoned) shaped like HINT's `record.defense.examples`."""
    import numpy as np

    yy, xx = np.mgrid[0:28, 0:28]
    out = []
    for i in range(4):
        ring = np.exp(-((np.hypot(yy - 14, xx - 14) - 6 - i) ** 2) / 4.0)
        noise = 0.062 * np.sin((xx + 3 * i) / 3.0) * np.cos(yy / 4.0)
        out.append({"index": 100 + i, "label": i, "poisoned": i >= 2, "i_up": -0.1 * i, "shape": [1, 28, 28],
                    "x": ring.flatten().round(4).tolist(), "delta": noise.flatten().round(5).tolist(),
                    "pred_original": (i + 1) % 10 if i >= 2 else i, "prob_original": 0.55 + 0.1 * i,
                    "pred_perturbed": i, "prob_perturbed": 0.9 + 0.02 * i})
    return out


def acc_of(base: float, rho: float, trial: int) -> float:
    """Deterministic accuracies with a non-zero spread over trials."""
    return round(base - 0.05 * rho + 0.002 * ((trial * 7) % 5) - 0.001 * trial, 6)


def synthetic_records() -> list[dict]:
    """Two untargeted settings (mnist-5k quick, cifar10 paper), HINT sensitivity runs, targeted runs.

    Deliberately incomplete: missing cells, under-sampled cells (n < 5), a single-trial cell, a method with a
    non-paper parameter set, so every marker of the tables is exercised.
    """
    recs = []
    # --- mnist-5k, quick recipe (10 epochs): Table II / IV / V ---
    for rho in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        for t in range(5 if rho < 1.0 else 3):  # ρ = 1.0: three trials only → (n=3)
            recs.append(make_record(rho=rho, trial=t, acc=acc_of(0.95, rho, t), seconds=10.0 + t * 0.1,
                                    sample=sample_predictions(0) if t == 0 else None))
    for rho, trials in ((0.0, 5), (0.2, 5), (0.4, 1), (0.6, 5)):  # ρ = 0.8, 1.0 missing; 0.4 single trial
        for t in range(trials):
            recs.append(make_record(method="hint", params=hint_params(), rho=rho, trial=t,
                                    acc=acc_of(0.96, rho, t), seconds=14.0 + t * 0.1, defense_seconds=3.0,
                                    sample=sample_predictions(1) if t == 0 else None))
    recs.append(make_record(method="hint", params=hint_params(), rho=0.8, trial=0, acc=0.92, seconds=14.0,
                            defense_seconds=3.0, examples=healthy_noise_examples()))
    for t in range(2):  # FRIENDS at ρ = 0.6 only, two trials; ties HINT's mean nowhere
        recs.append(make_record(method="friends", params={"beta": 0.062}, rho=0.6, trial=t,
                                acc=acc_of(0.94, 0.6, t), seconds=13.0, defense_seconds=2.0))
    # Table IV sensitivity at ρ = 0.6: r = 0.25 (5), 0.75 (2), β = 0.031 (5), 0.251 (1); 1.0 / 0.125 missing
    for (r, b, trials, base) in ((0.25, 0.062, 5, 0.965), (0.75, 0.062, 2, 0.955), (0.5, 0.031, 5, 0.958),
                                 (0.5, 0.251, 1, 0.95)):
        for t in range(trials):
            recs.append(make_record(method="hint", params=hint_params(r, b), rho=0.6, trial=t,
                                    acc=acc_of(base, 0.6, t), seconds=12.0 + 8 * r, defense_seconds=6 * r))
    # --- cifar10, paper recipe (80 epochs): the full-scale setting, two clean trials of `none` ---
    for t in range(2):
        recs.append(make_record(dataset="cifar10", family="cifar10", recipe="paper", rho=0.0, trial=t,
                                acc=0.93 + 0.002 * t, seconds=1500.0 + 10 * t))
    # --- targeted (cifar10 paper): GM / MP / BP for none and hint; FC missing ---
    targets = [(3, 5, 1), (12, 0, 2), (25, 8, 9), (31, 1, 7), (47, 6, 4)]  # (index, class, intended)
    for attack, k_none, k_hint in (("gm", 5, 0), ("mp", 4, 1), ("bp", 3, 1)):
        for method, k, params, trials in (("none", k_none, None, 5), ("hint", k_hint, hint_params(), 5),
                                          ("epic", 2, {"interval": 4}, 3 if attack != "gm" else 0)):
            for t in range(trials):
                idx, cls, intended = targets[t]
                offset = {"none": 0.0, "hint": 0.01, "epic": -0.005}[method]
                offset += {"gm": 0.0, "mp": -0.05, "bp": 0.01}[attack]
                recs.append(make_record(dataset="cifar10", family="cifar10", recipe="paper", method=method,
                                        params=params, trial=t, acc=round(0.90 + offset + 0.004 * t, 4),
                                        targeted={"attack": attack, "target_index": idx, "target_class": cls,
                                                  "intended_class": intended, "success": t < k}))
    return recs


def write_records(root: Path, records: list[dict]) -> Path:
    runs = Path(root) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for r in records:
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    return Path(root)
