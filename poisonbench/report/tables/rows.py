"""Run records flattened into rows: `record_row` is the one place the report reads a record's fields, and
`frame` the one table of runs that the paper's tables, the figures and the plain report select from."""

from __future__ import annotations

import math

import pandas as pd

from ...core.hashing import canonical_json, short_hash
from ...data.types import FAMILIES
from .. import paper


def has_default_params(method: str, params: dict, dataset: str, recipe: dict, config: dict | None = None) -> bool:
    """Whether a run used its defense's defaults for its dataset family, recipe and threat (read from `config`),
    apart from the parameters the tables vary (HINT's r and β). False when that cannot be decided (unknown family or
    defense)."""
    from ...defenses import DEFENSES
    from ...engine.recipes import Recipe
    from ...engine.threat import threat_of_config

    family = paper.family_of(dataset)
    try:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}
        cls, rec = DEFENSES.get(method), Recipe(**fields)
        threat = threat_of_config(config or {})
    except Exception:  # a record from another version: no opinion
        return False
    for fam in [family] if family else FAMILIES:  # an .npz dataset: either family's defaults
        defaults = cls.defaults(fam, rec, threat)
        if all(canonical_json(params.get(k)) == canonical_json(v) for k, v in defaults.items()
               if k not in ("ratio", "beta")):
            return True
    return False


def poison_sets_text(chosen: dict | None) -> str:
    """`defend --poisons` as one canonical string ("deepconfuse=ID,pgd=ID"; "" for the default artifacts)."""
    return ",".join(f"{a}={i}" for a, i in sorted((chosen or {}).items()))


def experiment(config: dict) -> dict:
    """`config` without what varies from trial to trial (trial, seed, the poisoned rows drawn from the seed)."""
    out = {k: v for k, v in config.items() if k not in ("trial", "seed")}
    if out.get("poison"):
        out["poison"] = {k: v for k, v in out["poison"].items() if k != "indices_fingerprint"}
    return out


def poison_label(poison: dict) -> str:
    """The plain report's poison column: the scenario's label, plus the PoisonSets chosen with `defend --poisons`
    (two runs that differ only there must not look alike)."""
    if not poison:
        return "-"
    label = str(poison.get("label", "-"))
    chosen = poison.get("poison_sets")
    return f"{label} [--poisons {poison_sets_text(chosen)}]" if chosen else label


# what differs from trial to trial of one targeted configuration (each trial has its own target and PoisonSet);
# the rest of a targeted run's poison description (ε, attack parameters) must match for runs to share a cell
TARGETED_TRIAL_KEYS = {"target_index", "target_class", "intended_class", "label", "poison_id", "poison_ids",
                       "indices_fingerprint", "counts", "base_indices", "setup", "poison_set", "poisoned",
                       "file_sha256", "eps_measured"}


def record_row(r: dict) -> dict:
    """One run record as one flat row (the fields: docs/metrics.md, "Report and tables")."""
    c = r["config"]
    params = dict(c["defense"])
    method = params.pop("method")
    poison = c.get("poison") or {}
    kind = poison.get("kind") or ("untargeted" if poison else "clean")
    if kind in ("clean", "untargeted"):
        rho = float(poison.get("ratio") or 0.0)
    else:
        rho = float(poison["ratio"]) if poison.get("ratio") is not None else math.nan
    recipe = c["recipe"]
    metrics, cost = r.get("metrics") or {}, r.get("cost") or {}
    # the per-batch hooks run inside the training loop: their seconds are part of `train` and of the defense's work
    outside = cost.get("defense_prepare", 0.0) + cost.get("defense_epoch", 0.0)
    defense_time = outside + cost.get("defense_batch", 0.0)
    time = cost.get("train", 0.0) + outside if "train" in cost else cost.get("seconds")
    success = metrics.get("attack_success")
    removal = (r.get("defense") or {}).get("removal") or {}  # a removing defense's counts (filters, EPIC)
    return {
        "run_id": r["run_id"], "dataset": c["dataset"], "dataset_fingerprint": c.get("dataset_fingerprint") or "",
        "model": c["model"], "recipe": recipe["name"],
        "epochs": recipe["epochs"], "recipe_json": canonical_json(recipe), "kind": kind,
        "scenario": c.get("scenario"), "rho": rho,
        "mix": ",".join(str(a) for a in poison.get("attacks") or []) if kind == "untargeted" else "",
        "poison_sets": poison_sets_text(poison.get("poison_sets")) if kind == "untargeted" else "",
        "poison_ids": poison_sets_text(poison.get("poison_ids")) if kind == "untargeted" else "",
        "poison_label": poison_label(poison) + (" [--same-init]" if c.get("same_init") else ""),
        "attack": str(poison.get("attack", "")).lower() if kind in ("targeted", "poison-set") else "",
        "method": method, "params_json": canonical_json(params),
        # everything that defines the experiment except the trial (seed, poisoned rows): recipe overrides,
        # dataset fingerprint, PoisonSet ids, ... so two configurations that display alike are never pooled
        "configuration": short_hash(experiment(c))[:8],
        "finished_at": str(r.get("finished_at") or ""),
        "default_params": has_default_params(method, params, c["dataset"], recipe, c),
        "poisons_json": canonical_json({"eps": poison.get("eps"), "ids": poison.get("poison_ids"),
                                        "rows": poison.get("row_stream")}) if kind == "untargeted"
        else canonical_json({k: v for k, v in poison.items() if k not in TARGETED_TRIAL_KEYS}) if kind == "targeted"
        else canonical_json({"id": poison.get("poison_id")}) if kind == "poison-set" else "",
        # the sha256 of the PoisonSet files trained on: one set of poison ids may be crafted into other floats
        # (another device, CPU or torch); "" where the record does not say (records before session 12)
        "poison_tensors_json": canonical_json(r["poison_tensors"]) if kind == "untargeted"
        and r.get("poison_tensors") else "",
        "ratio": float(params["ratio"]) if isinstance(params.get("ratio"), int | float) else math.nan,
        "beta": float(params["beta"]) if isinstance(params.get("beta"), int | float) else math.nan,
        # "surrogate" for a victim that started from the attacker model's initialisation (`defend --same-init`):
        # another setting, never pooled with the runs seeded apart (tables.settings)
        "init": "surrogate" if c.get("same_init") else "",
        # transfer runs: whose extractor the poisons were crafted on and the head's BatchNorm mode (`defend --threat`,
        # `--head-bn`); a record from before those options was white-box with BatchNorm in eval mode
        "threat": (c.get("threat") or "white") if c.get("scenario") == "transfer" else "",
        "head_bn": (c.get("head_bn") or "eval") if c.get("scenario") == "transfer" else "",
        "trial": c["trial"], "seed": c["seed"], "test_acc": metrics.get("test_acc"),
        "val_acc": metrics.get("val_acc"), "success": None if success is None else bool(success),
        "time": time, "defense_time": defense_time, "seconds": cost.get("seconds"),
        "compiled": bool(r.get("compiled")),
        "code": str((r.get("env") or {}).get("code") or ""),
        "npz_split": ",".join(f"{v:g}" for v in c.get("npz_split") or []),
        "poisons_removed": removal.get("poisons_removed"), "poisons": removal.get("poisons"),
        "clean_removed": removal.get("clean_removed"), "clean": removal.get("clean"),
    }


COLUMNS = list(record_row({"run_id": "", "config": {"dataset": "", "model": "", "recipe": {"name": "", "epochs": 0},
                                                     "defense": {"method": ""}, "trial": 0, "seed": 0}}))


def frame(records: list[dict]) -> pd.DataFrame:
    """One `record_row` per run, with every column even when there is no run."""
    return pd.DataFrame([record_row(r) for r in records], columns=COLUMNS)
