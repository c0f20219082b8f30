"""Whether a run record can be trusted (docs/metrics.md, "Run records"): the fields the report reads have the types and
ranges a run writes. A record that fails is never averaged: `RunStore.all()` skips it and the report names the file and
the first field at fault (a NaN or null accuracy would leave n = 3 over a mean of 2, an accuracy of 5.0 would average in
as 500 %, a string would break the arithmetic, an epoch count "30" would split a configuration in two)."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def record_problem(record: dict) -> str | None:
    """The first field of `record` that a report cannot trust, as "field: what is wrong", or None."""
    config, metrics, cost = record["config"], record["metrics"], record["cost"]
    checks: list[tuple[str, Any, bool, str]] = [
        ("run_id", record["run_id"], bool(record["run_id"]), "a non-empty string"),
        ("config.dataset", config["dataset"], isinstance(config["dataset"], str) and bool(config["dataset"]),
         "a non-empty string"),
        ("config.model", config["model"], isinstance(config["model"], str), "a string"),
        ("config.scenario", config["scenario"], config["scenario"] is None or isinstance(config["scenario"], str),
         "a string"),
        ("config.trial", config["trial"], _integer(config["trial"]) and config["trial"] >= 0, "an integer >= 0"),
        ("config.seed", config["seed"], _integer(config["seed"]) and config["seed"] >= 0, "an integer >= 0"),
        ("config.defense.method", config["defense"]["method"],
         isinstance(config["defense"]["method"], str) and bool(config["defense"]["method"]), "a non-empty string"),
        ("metrics.test_acc", metrics["test_acc"], _fraction(metrics["test_acc"]), "a number in [0, 1]"),
        ("cost.seconds", cost["seconds"], _number(cost["seconds"]) and cost["seconds"] >= 0, "a number >= 0"),
    ]
    recipe = config["recipe"]
    checks += [("config.recipe.name", recipe["name"], isinstance(recipe["name"], str), "a string"),
               ("config.recipe.epochs", recipe["epochs"], _integer(recipe["epochs"]) and recipe["epochs"] >= 1,
                "an integer >= 1")]
    for key in ("batch_size",):
        if key in recipe:
            checks.append((f"config.recipe.{key}", recipe[key], _integer(recipe[key]) and recipe[key] >= 1,
                           "an integer >= 1"))
    for key in ("lr", "lr_decay", "momentum", "weight_decay"):
        if key in recipe:
            checks.append((f"config.recipe.{key}", recipe[key], _number(recipe[key]) and recipe[key] >= 0,
                           "a number >= 0"))
    if "val_acc" in metrics and metrics["val_acc"] is not None:
        checks.append(("metrics.val_acc", metrics["val_acc"], _fraction(metrics["val_acc"]), "a number in [0, 1]"))
    if metrics.get("attack_success") is not None:
        checks.append(("metrics.attack_success", metrics["attack_success"],
                       isinstance(metrics["attack_success"], bool), "true or false"))
    for key, value in cost.items():
        if key != "seconds" and not isinstance(value, dict | list | str):
            checks.append((f"cost.{key}", value, value is None or (_number(value) and value >= 0), "a number >= 0"))
    for key, value in config["defense"].items():
        if isinstance(value, float) and not math.isfinite(value):
            checks.append((f"config.defense.{key}", value, False, "a finite number"))
    poison = config.get("poison")
    if poison is not None and not isinstance(poison, dict):
        return f"config.poison: {_shown(poison)} is not an object"
    if poison and poison.get("ratio") is not None:
        checks.append(("config.poison.ratio", poison["ratio"], _fraction(poison["ratio"]), "a number in [0, 1]"))
    for field, value, ok, wanted in checks:
        if not ok:
            return f"{field} is {_shown(value)}, not {wanted}"
    return None
