"""Whether a run record can be trusted (docs/metrics.md, "Run records"): the fields the report reads have the types and
ranges a run writes. A record that fails is never averaged: `RunStore.all()` skips it and the report names the file and
the first field at fault (a NaN or null accuracy would leave n = 3 over a mean of 2, an accuracy of 5.0 would average in
as 500 %, a string would break the arithmetic, an epoch count "30" would split a configuration in two).

One schema for the check and the reports (issue 82): every field a table, the plain report or `missing` reads is
checked here, types included, so that a record the check admits is one every report can show. Those fields place a
run in a cell (the PoisonSets, the attack mix, ε, the dataset fingerprint, the modes) or are what a table computes
with (the cost stages, a filter's removal counts, DP-SGD's accounting), or they are the objects a run always writes
(`env`, `defense`): a record with another type there was not written by a run as it stands, and its numbers cannot
be placed or added. The payloads that only one figure draws are not: `metrics.sample_predictions` (Fig. 2),
`defense.examples` and `defense.noise` (Fig. 1), `metrics.target_prediction` and `target_probs` (Figs. 3–4). A run
without them is a valid run, so a malformed one is drawn as absent (`sample_predictions_problem`,
`examples_problem`: the figure warns, naming the run and the field) and the run's numbers still count in every
table."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def _count(value: Any) -> bool:
    return _integer(value) and value >= 0


def _seconds(value: Any) -> bool:
    return _number(value) and value >= 0


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _id_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _at(record: dict, path: str) -> tuple[bool, Any]:
    """(whether `path`, dotted, is present in `record`, its value)."""
    node: Any = record
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


OBJECT, STRING, COUNT, SECONDS = "an object", "a string", "an integer >= 0", "a number >= 0"
IDS = "an object of strings (attack → PoisonSet id)"
# the optional fields the reports read, each checked where present and not null: (path, test, what it must be)
TYPED: list[tuple[str, Any, str]] = [
    ("env", lambda v: isinstance(v, dict), OBJECT),
    ("defense", lambda v: isinstance(v, dict), OBJECT),
    ("defense.removal", lambda v: isinstance(v, dict), OBJECT),
    *[(f"defense.removal.{k}", _count, COUNT) for k in ("poisons_removed", "poisons", "clean_removed", "clean")],
    ("defense.accounting", lambda v: isinstance(v, dict), OBJECT),
    ("defense.accounting.epsilon", lambda v: _seconds(v) or v == math.inf, SECONDS),  # inf: σ = 0
    ("defense.accounting.epsilon_pld", _seconds, SECONDS),
    ("defense.accounting.sample_rate", _seconds, SECONDS),
    ("defense.accounting.noise_multiplier", _seconds, SECONDS),
    ("defense.accounting.steps", _count, COUNT),
    ("defense.accounting.sampling", lambda v: isinstance(v, str), STRING),
    ("defense.accounting.delta_rule", lambda v: isinstance(v, str), STRING),
    ("config.dataset_fingerprint", lambda v: isinstance(v, str), STRING),
    ("config.npz_split", lambda v: isinstance(v, list) and all(_number(x) for x in v), "a list of numbers"),
    ("config.precision", lambda v: isinstance(v, str), STRING),
    ("config.threat", lambda v: isinstance(v, str), STRING),
    ("config.head_bn", lambda v: isinstance(v, str), STRING),
    ("config.recipe.milestones", lambda v: isinstance(v, list) and all(_integer(x) for x in v),
     "a list of integers"),
    ("config.poison.kind", lambda v: isinstance(v, str), STRING),
    ("config.poison.attacks", _strings, "a list of strings"),
    ("config.poison.attack", lambda v: isinstance(v, str), STRING),
    ("config.poison.poison_ids", _id_map, IDS),
    ("config.poison.poison_sets", _id_map, IDS),
    ("config.poison.poison_id", lambda v: isinstance(v, str), STRING),
    *[(f"config.poison.{k}", _count, COUNT) for k in ("target_index", "target_class", "intended_class")],
    ("inputs", lambda v: isinstance(v, dict), OBJECT),
    ("inputs.poisons", lambda v: isinstance(v, list), "a list"),
]
# the cost stages a table adds up (Table V's time, a defense's seconds): present, never null
ADDED_COSTS = ("train", "defense_prepare", "defense_epoch", "defense_batch")


def typed_problems(record: dict) -> list[tuple[str, Any, bool, str]]:
    """(field, value, whether it is as the reports read it, what it must be) for the optional fields they read."""
    checks = []
    for path, test, wanted in TYPED:
        present, value = _at(record, path)
        if present and value is not None:
            checks.append((path, value, bool(test(value)), wanted))
    accounting = _at(record, "defense.accounting")[1]
    if isinstance(accounting, dict) and "delta" in accounting:  # the accountant's: ε at δ, from q, σ and steps
        checks += [(f"defense.accounting.{k}", accounting.get(k), _seconds(accounting.get(k)), SECONDS)
                   for k in ("delta", "sample_rate", "noise_multiplier")]
    poison = _at(record, "config.poison")[1]
    if isinstance(poison, dict) and poison.get("eps") is not None:  # the mix's: one ε, or one per attack
        eps = poison["eps"]
        mixed = poison.get("kind", "untargeted") == "untargeted" and isinstance(eps, dict)
        ok = all(_seconds(e) for e in eps.values()) if mixed else _seconds(eps)
        checks.append(("config.poison.eps", eps, ok, SECONDS))
    inputs = record.get("inputs")
    entries = inputs.get("poisons") if isinstance(inputs, dict) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and entry.get("attack") is not None:
            checks.append((f"inputs.poisons[{i}].attack", entry["attack"], isinstance(entry["attack"], str), STRING))
    return checks


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
    for key, value in cost.items():  # wall seconds per stage; null only for a stage no table adds up
        if key != "seconds":
            ok = _seconds(value) or (value is None and key not in ADDED_COSTS)
            checks.append((f"cost.{key}", value, ok, SECONDS))
    for key, value in config["defense"].items():
        if isinstance(value, float) and not math.isfinite(value):
            checks.append((f"config.defense.{key}", value, False, "a finite number"))
    poison = config.get("poison")
    if poison is not None and not isinstance(poison, dict):
        return f"config.poison: {_shown(poison)} is not an object"
    if poison and poison.get("ratio") is not None:
        checks.append(("config.poison.ratio", poison["ratio"], _fraction(poison["ratio"]), "a number in [0, 1]"))
    checks += typed_problems(record)
    for field, value, ok, wanted in checks:
        if not ok:
            return f"{field} is {_shown(value)}, not {wanted}"
    return None


# --- the payloads only a figure draws: tolerated by the check, drawn as absent where malformed -----------------------

def _list_of(value: Any, test, length: int | None = None) -> bool:
    return isinstance(value, list) and (length is None or len(value) == length) and all(test(v) for v in value)


def sample_predictions_problem(samples: Any) -> str | None:
    """Why Fig. 2 cannot draw `metrics.sample_predictions` (prediction_samples.sample_predictions), as "field is
    value, not what it must be", or None: an object whose `test_indices` (a non-empty list of integers >= 0), `pred`
    (integers) and `prob` (numbers) are lists of one length, and `labels`, unless absent or null, too (integers,
    null for a label not known). `probs` is not drawn."""
    field = "metrics.sample_predictions"
    if not isinstance(samples, dict):
        return f"{field} is {_shown(samples)}, not an object"
    indices = samples.get("test_indices")
    if not (_list_of(indices, _count) and indices):
        return f"{field}.test_indices is {_shown(indices)}, not a non-empty list of integers >= 0"
    n = len(indices)
    checks = [("pred", samples.get("pred"), _integer, "integers"), ("prob", samples.get("prob"), _number, "numbers")]
    if samples.get("labels") is not None:
        checks.append(("labels", samples["labels"], lambda v: v is None or _integer(v), "integers or nulls"))
    for key, value, test, what in checks:
        if not _list_of(value, test, n):
            return f"{field}.{key} is {_shown(value)}, not a list of {n} {what} (one per test index)"
    return None


def examples_problem(examples: Any) -> str | None:
    """Why Fig. 1 cannot draw `defense.examples` (HINT's healthy-noise examples, defenses/hint.py), as "field is
    value, not what it must be", or None: a list of objects, each with `shape` [C, H, W] (C 1 or 3, H and W
    >= 1), flat `x` and `delta` of C·H·W numbers each, and the numbers `prob_original` and `prob_perturbed`."""
    field = "defense.examples"
    if not isinstance(examples, list):
        return f"{field} is {_shown(examples)}, not a list"
    for i, ex in enumerate(examples):
        where = f"{field}[{i}]"
        if not isinstance(ex, dict):
            return f"{where} is {_shown(ex)}, not an object"
        shape = ex.get("shape")
        if not (_list_of(shape, _integer, 3) and shape[0] in (1, 3) and min(shape) >= 1):
            return f"{where}.shape is {_shown(shape)}, not [C, H, W] (C 1 or 3)"
        size = math.prod(shape)
        for key in ("x", "delta"):
            if not _list_of(ex.get(key), _number, size):
                return f"{where}.{key} is {_shown(ex.get(key))}, not a list of {size} numbers (C·H·W)"
        for key in ("prob_original", "prob_perturbed"):
            if not _number(ex.get(key)):
                return f"{where}.{key} is {_shown(ex.get(key))}, not a number"
    return None
