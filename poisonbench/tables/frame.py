"""Run records as one pandas frame, and the rules that pick which runs a cell shows (one poison
generation, the newest run per trial, filters, settings, parameter choice)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from .. import paper
from ..hashing import canonical_json, short_hash
from .constants import HINT_PAPER, PAPER_METHODS
from .labels import method_label
from .stats import close


def has_default_params(method: str, params: dict, dataset: str, recipe: dict) -> bool:
    """Whether a run used its defense's defaults for its dataset family and recipe, apart from the parameters the
    tables vary (HINT's r and β). False when that cannot be decided (unknown family or defense)."""
    from ..defenses import DEFENSES
    from ..recipes import Recipe

    family = paper.family_of(dataset)
    try:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}
        cls, rec = DEFENSES.get(method), Recipe(**fields)
    except Exception:  # a record from another version: no opinion
        return False
    for fam in [family] if family else ["mnist", "cifar10"]:  # an .npz dataset: either family's defaults
        defaults = cls.defaults(fam, rec)
        if all(canonical_json(params.get(k)) == canonical_json(v) for k, v in defaults.items()
               if k not in ("ratio", "beta")):
            return True
    return False


def poison_sets_text(chosen: dict | None) -> str:
    """`defend --poisons` as one canonical string ("deepconfuse=ID,pgd=ID"; "" for the default artifacts)."""
    return ",".join(f"{a}={i}" for a, i in sorted((chosen or {}).items()))


def trained_on(row, poison_sets: str) -> bool:
    """Whether an untargeted run used the PoisonSets `poison_sets` ("attack=id,…", as `defend --poisons`) and the
    mix's defaults for the other attacks. Naming a default PoisonSet selects the runs on it, as `defend` treats
    such a choice as no choice."""
    pairs = lambda text: set(filter(None, text.split(",")))  # noqa: E731
    given = pairs(poison_sets)
    return given <= pairs(row.poison_ids) and pairs(row.poison_sets) <= given


def record_row(r: dict) -> dict:
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
    defense_time = cost.get("defense_prepare", 0.0) + cost.get("defense_epoch", 0.0)
    time = cost.get("train", 0.0) + defense_time if "train" in cost else cost.get("seconds")
    success = metrics.get("attack_success")
    return {
        "run_id": r["run_id"], "dataset": c["dataset"], "dataset_fingerprint": c.get("dataset_fingerprint") or "",
        "model": c["model"], "recipe": recipe["name"],
        "epochs": recipe["epochs"], "recipe_json": canonical_json(recipe), "kind": kind,
        "scenario": c.get("scenario"), "rho": rho,
        "mix": ",".join(str(a) for a in poison.get("attacks") or []) if kind == "untargeted" else "",
        "poison_sets": poison_sets_text(poison.get("poison_sets")) if kind == "untargeted" else "",
        "poison_ids": poison_sets_text(poison.get("poison_ids")) if kind == "untargeted" else "",
        "attack": str(poison.get("attack", "")).lower() if kind in ("targeted", "poison-set") else "",
        "method": method, "params_json": canonical_json(params),
        "finished_at": str(r.get("finished_at") or ""),
        "default_params": has_default_params(method, params, c["dataset"], recipe),
        "poisons_json": canonical_json({"eps": poison.get("eps"), "ids": poison.get("poison_ids"),
                                        "rows": poison.get("row_stream")}) if kind == "untargeted"
        else canonical_json({k: v for k, v in poison.items() if k not in TARGETED_TRIAL_KEYS}) if kind == "targeted"
        else canonical_json({"id": poison.get("poison_id")}) if kind == "poison-set" else "",
        "ratio": float(params["ratio"]) if isinstance(params.get("ratio"), int | float) else math.nan,
        "beta": float(params["beta"]) if isinstance(params.get("beta"), int | float) else math.nan,
        "trial": c["trial"], "seed": c["seed"], "test_acc": metrics.get("test_acc"),
        "success": None if success is None else bool(success),
        "time": time, "defense_time": defense_time, "seconds": cost.get("seconds"),
        "compiled": bool(r.get("compiled")),
        "code": str((r.get("env") or {}).get("code") or ""),
        "npz_split": ",".join(f"{v:g}" for v in c.get("npz_split") or []),
    }


# what differs from trial to trial of one targeted configuration (each trial has its own target and PoisonSet);
# the rest of a targeted run's poison description (ε, attack parameters) must match for runs to share a cell
TARGETED_TRIAL_KEYS = {"target_index", "target_class", "intended_class", "label", "poison_id", "poison_ids",
                       "indices_fingerprint", "counts", "base_indices"}

COLUMNS = list(record_row({"run_id": "", "config": {"dataset": "", "model": "", "recipe": {"name": "", "epochs": 0},
                                                     "defense": {"method": ""}, "trial": 0, "seed": 0}}))


def frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([record_row(r) for r in records], columns=COLUMNS)


PAPER_MIX = "pgd,dap,durp,deepconfuse"  # Table II's untargeted mix (paper §VI-A2), the default `--attacks`


def one_poison_generation(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Never pool runs trained on different PoisonSets of the same mix (e.g. after an attack's default changed):
    per dataset / model / recipe / mix keep the newest generation of poison ids (and ε): the one of the most
    recently finished run, i.e. the current defaults once any run has used them; a note counts the rest."""
    keep = pd.Series(True, index=df.index)
    notes = []
    untargeted_rows = df[df.kind == "untargeted"]
    by = ["dataset", "dataset_fingerprint", "model", "recipe_json", "mix"]
    for (dataset, *_, mix), group in untargeted_rows.groupby(by):
        counts = group.groupby("poisons_json").size()
        if len(counts) < 2:
            continue
        newest = group.groupby("poisons_json").finished_at.max()
        chosen = sorted(counts.index, key=lambda p: (newest[p], counts[p], p))[-1]
        left = group[group.poisons_json != chosen]
        keep[left.index] = False
        ref = json.loads(chosen)
        others = [json.loads(p) for p in left.poisons_json.unique()]
        changed = sorted({a for o in others for a, i in (o["ids"] or {}).items() if (ref["ids"] or {}).get(a) != i})
        if any(o["eps"] != ref["eps"] for o in others):
            changed.append("ε")
        if any(o.get("rows") != ref.get("rows") for o in others):
            changed.append("the draw of the poisoned rows")
        notes.append(f"not shown: {len(left)} {dataset} run(s) of the mix {mix} trained on other PoisonSets "
                     f"({', '.join(changed)} differ from the {int(counts[chosen])} run(s) shown)")
    return df[keep], notes


# what makes two runs the same configuration (one cell) apart from the trial; `trial` last
CONFIGURATION = ["dataset", "dataset_fingerprint", "model", "recipe_json", "kind", "scenario", "rho", "mix",
                 "attack", "method", "params_json", "poisons_json", "trial"]


SEEDED_SCENARIOS = ("clean", "untargeted", "poison-set")  # where the seed alone decides the training


def superseded_runs(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of `df` that repeat a more recently finished run (ties: the larger run id wins) of the same
    configuration (`keys`, ending with "trial") in its trial id, or — for clean and untargeted runs, where the
    seed alone decides the training (initialisation, batch order, poisoned rows) — in its seed: `--seed 0
    --trial 1` and `--seed 1 --trial 0` are one training, which a cell must not count twice."""
    newest_last = df.sort_values(["finished_at", "run_id"])
    older = newest_last.duplicated(keys, keep="last")
    seeded = newest_last.scenario.isin(SEEDED_SCENARIOS) & ~older
    same_seed = newest_last[seeded].duplicated([*keys[:-1], "seed"], keep="last")
    older[same_seed[same_seed].index] = True
    return newest_last[older]


def one_run_per_trial(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A cell averages distinct trials: of several runs of one configuration with the same trial id (e.g. made
    with another `--seed`) or the same seed, keep the most recently finished one; a note counts the others."""
    older = superseded_runs(df, CONFIGURATION)
    notes = [f"not shown: {int(n)} {dataset} run(s) repeating the trial id or seed of another run of the same "
             "configuration (e.g. another --seed); each cell keeps the newest run per trial and seed"
             for dataset, n in older.groupby("dataset").size().items()]
    return df.drop(older.index), notes


def cell_records(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows the tables average, and notes on the runs left out: one PoisonSet generation, one run per trial."""
    df, generation_notes = one_poison_generation(df)
    df, trial_notes = one_run_per_trial(df)
    return df, generation_notes + trial_notes


def apply_filters(df: pd.DataFrame, dataset: str | None = None, model: str | None = None,
                  recipe: str | None = None, epochs: int | None = None, methods: list[str] | None = None,
                  mix: str | None = PAPER_MIX, poison_sets: str | None = ""):
    """Keep the records of one dataset / model / recipe / epochs / methods; untargeted runs only with the attack
    mix `mix` (comma-separated, in the order given to `defend --attacks`; "any" pools every mix) and trained on
    the PoisonSets `poison_sets` (`poison_sets_text` of `defend --poisons`; "" the default artifacts; None or
    "any" every choice)."""
    if mix and mix != "any":
        df = df[(df.kind != "untargeted") | (df.mix == mix)]
    if poison_sets is not None and poison_sets != "any":
        keep = [kind != "untargeted" or trained_on(row, poison_sets) for kind, row in zip(df.kind, df.itertuples(),
                                                                                            strict=True)]
        df = df[pd.Series(keep, index=df.index, dtype=bool)]  # a bare empty list would select columns
    if dataset:
        df = df[df.dataset == dataset]
    if model:
        df = df[df.model == model]
    if recipe:
        df = df[df.recipe == recipe]
    if epochs:
        df = df[df.epochs == epochs]
    if methods:
        df = df[df.method.isin(methods)]
    return df


@dataclass(frozen=True)
class Setting:
    """What a table block holds fixed: dataset (name and fingerprint), model and the resolved recipe."""

    dataset: str
    model: str
    recipe: str
    epochs: int
    recipe_json: str
    fingerprint: str = ""  # config.dataset_fingerprint: two .npz files of one name, or a changed split, differ
    npz_split: str = ""  # config.npz_split as "VAL,TEST" (`--npz-split`), "" for the default split
    tag: str = ""  # disambiguates settings that would read alike: other recipe overrides, other data

    @property
    def label(self) -> str:
        return f"{self.dataset} · {self.model} · {self.recipe} recipe, {self.epochs} ep{self.tag}"

    @property
    def reduced(self) -> list[str]:
        return paper.reduced_scale(self.dataset, self.recipe, self.epochs, guess_family(self))


def settings(df: pd.DataFrame) -> list[Setting]:
    named = ["dataset", "model", "recipe", "epochs"]
    keys = df[[*named, "recipe_json", "dataset_fingerprint", "npz_split"]].drop_duplicates(
        [*named, "recipe_json", "dataset_fingerprint"])  # the fingerprint covers the split
    keys = keys.sort_values([*named, "recipe_json", "dataset_fingerprint"])
    recipes = keys.groupby(named).recipe_json.nunique()
    data = keys.groupby(named).dataset_fingerprint.nunique()
    out = []
    for k in keys.itertuples(index=False):
        name = (k.dataset, k.model, k.recipe, k.epochs)
        tag = f" #{short_hash(k.recipe_json, 6)}" if recipes[name] > 1 else ""
        tag += f" · data {k.dataset_fingerprint or 'without fingerprint'}" if data[name] > 1 else ""
        out.append(Setting(k.dataset, k.model, k.recipe, int(k.epochs), k.recipe_json,
                           fingerprint=k.dataset_fingerprint, npz_split=k.npz_split, tag=tag))
    return out


def in_setting(df: pd.DataFrame, s: Setting) -> pd.DataFrame:
    return df[(df.dataset == s.dataset) & (df.dataset_fingerprint == s.fingerprint) & (df.model == s.model)
              & (df.recipe_json == s.recipe_json)]


def guess_family(s: Setting) -> str | None:
    family = paper.family_of(s.dataset)
    if family or not s.recipe_json:
        return family
    from ..recipes import RECIPES

    rec = json.loads(s.recipe_json)
    best = None
    for fam, recipes in RECIPES.items():
        if s.recipe in recipes:
            diff = sum(rec.get(k) != v for k, v in recipes[s.recipe].to_dict().items() if k != "epochs")
            if best is None or diff < best[0]:
                best = (diff, fam)
    return best[1] if best else None


def variant_text(chosen: str, other: str) -> str:
    a, b = json.loads(chosen), json.loads(other)
    diffs = [f"{k}={b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "same parameters"


def primary(df: pd.DataFrame, method: str, fixed: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `method` in its table setting (params matching `fixed`, e.g. HINT r = 0.5, β = 0.062; among
    the remaining parameter sets the defense's defaults, else the one with the most runs) and the rows left
    out. Preferring the defaults keeps a cell from switching to a sensitivity run that has more trials."""
    rows = df[df.method == method]
    keep = rows
    for key, value in (fixed or {}).items():
        keep = keep[close(keep[key], value)]
    if keep.empty:
        return keep, rows
    counts = keep.groupby("params_json").size()
    default = keep.groupby("params_json").default_params.any()
    chosen = sorted(counts.index, key=lambda p: (not default[p], -counts[p], p))[0]
    return rows[rows.params_json == chosen], rows[rows.params_json != chosen]


def choose_parameters(sdf: pd.DataFrame, notes: list) -> dict[str, pd.DataFrame]:
    """Per method, the rows of its table parameter set (`primary`); a note for every run left out."""
    chosen = {}
    for m in sorted(set(sdf.method)):
        chosen[m], left = primary(sdf, m, HINT_PAPER if m == "hint" else None)
        if len(chosen[m]) and not chosen[m].default_params.any():
            notes.append(f"{method_label(m)} is shown with parameters other than its defaults (or from a version "
                         f"whose defaults this one cannot check): {chosen[m].params_json.iloc[0]}")
        notes.append(left_out_note(m, chosen[m], left))
    return chosen


def left_out_note(method: str, chosen: pd.DataFrame, left: pd.DataFrame,
                  see: str = "see Table IV / plain `report`") -> str | None:
    if left.empty:
        return None
    ref = chosen.params_json.iloc[0] if len(chosen) else "{}"
    variants = "; ".join(sorted(variant_text(ref, p) for p in left.params_json.unique()))
    return f"not shown: {len(left)} run(s) of {method} with other parameters ({variants}); {see}"




def methods_of(df: pd.DataFrame) -> list[str]:
    return list(PAPER_METHODS) + sorted(set(df.method) - set(PAPER_METHODS))


def untargeted(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.kind.isin(["clean", "untargeted"])]


def mix_note(df: pd.DataFrame) -> str | None:
    mixes = sorted(m for m in df.mix.unique() if m)
    return f"warning: runs with different attack mixes are pooled: {' | '.join(mixes)}" if len(mixes) > 1 else None
