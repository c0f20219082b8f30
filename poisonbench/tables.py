"""The HINT paper's Tables II–V rebuilt from run records (pandas), beside the paper's numbers.

Every number a table shows is defined in docs/metrics.md, "Report and tables". In short: a cell is the mean and
sample std (ddof=1) over the trials of one configuration; `(n=k)` marks a cell with another number of trials
than asked (`--trials`); `–` an empty cell. A table is a list of blocks (one per setting = dataset · model ·
recipe), each a grid of `Cell`s; `render` turns it into rich / md / latex / csv / json, and `missing_commands`
lists the `poisonbench defend` runs that would complete it.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field

import pandas as pd

from . import paper
from .errors import PoisonbenchError, unknown_choice
from .hashing import canonical_json, short_hash

TABLES = ("2", "3", "4", "5")
ROMAN = {"2": "II", "3": "III", "4": "IV", "5": "V"}
FORMATS = ("rich", "md", "latex", "csv", "json")
RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_METHODS = ("none", "hint", "atda", "friends", "epic")
R_GRID = (0.25, 0.5, 0.75, 1.0)
BETA_GRID = (0.031, 0.062, 0.125, 0.251)
HINT_PAPER = {"ratio": 0.5, "beta": 0.062}  # Table II's HINT (paper §VI-A3)
ATTACKS = ("gm", "mp", "bp", "fc")
SENSITIVITY_RHO = 0.6  # Table IV; also Table V's default
TOL = 1e-3  # parameter matching: 16/255 = 0.0627 counts as β = 0.062; grid values are ≥ 0.03 apart
DASH = "–"
DEFAULT_ATTACK_MIX = "pgd,dap,durp,deepconfuse"
CAPTIONS = {
    "2": "Test accuracy (%) defending against the untargeted mix (PGD+DAP+DURP+DC) at poison ratio ρ; HINT r = 0.5, "
         "β = 0.062",
    "3": "Attack success (k/n trials) and test accuracy (%) against targeted attacks",
    "4": "Sensitivity of HINT to r (β = 0.062) and β (r = 0.5) under the untargeted mix, test accuracy (%)",
    "5": "Execution time of the defenses (s): training incl. the defense's own work, and the ratio to no defense",
}


# ----------------------------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # sample std (ddof=1); NaN for one trial
    lo: float  # 95% t-interval; NaN for one trial
    hi: float


def t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def stat(values) -> Stat | None:
    v = [float(x) for x in values if x is not None and not pd.isna(x)]
    if not v:
        return None
    n = len(v)
    mean = sum(v) / n
    if n == 1:
        return Stat(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a success rate k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def close(a, b: float, tol: float = TOL):
    return (a - b).abs() <= tol if isinstance(a, pd.Series) else abs(a - b) <= tol


def num(x: float, digits: int = 4):
    return None if x is None or pd.isna(x) else round(float(x), digits)


# ----------------------------------------------------------------------------------------------- records

def has_default_params(method: str, params: dict, dataset: str, recipe: dict) -> bool:
    """Whether a run used its defense's defaults for its dataset family and recipe, apart from the parameters the
    tables vary (HINT's r and β). False when that cannot be decided (unknown family or defense)."""
    from .defenses import DEFENSES
    from .recipes import Recipe

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
        "attack": str(poison.get("attack", "")).lower() if kind == "targeted" else "",
        "method": method, "params_json": canonical_json(params),
        "finished_at": str(r.get("finished_at") or ""),
        "default_params": has_default_params(method, params, c["dataset"], recipe),
        "poisons_json": canonical_json({"eps": poison.get("eps"), "ids": poison.get("poison_ids"),
                                        "rows": poison.get("row_stream")}) if kind == "untargeted"
        else canonical_json({k: v for k, v in poison.items() if k not in TARGETED_TRIAL_KEYS}) if kind == "targeted"
        else "",
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


SEEDED_SCENARIOS = ("clean", "untargeted")  # where the seed alone decides the training


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
    from .recipes import RECIPES

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


# ----------------------------------------------------------------------------------------------- table model

@dataclass
class Cell:
    text: str = DASH
    value: float | None = None  # compared for "best" (already rounded as displayed)
    best: bool = False
    label: bool = False  # a row-label cell (left-aligned)


@dataclass
class Block:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)  # row indices preceded by a horizontal rule
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    number: str
    caption: str
    blocks: list[Block]
    data: list[dict]  # tidy rows (csv / json)
    notes: list[str] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)  # run ids behind the cells (for notes on the runs shown)

    @property
    def empty(self) -> bool:
        return not self.blocks

    @property
    def title(self) -> str:
        return f"Table {ROMAN.get(self.number, self.number)}"


@dataclass
class Options:
    trials: int = 5
    paper: bool = False
    diff: bool = False
    ci: bool = False
    wilson: bool = False
    rho: float | None = None  # II: only this row; IV/V: the ρ of the runs (default 0.6)
    paired: bool = False  # II: add each defense's per-trial difference to `none` (same seed, poisons, order)


def acc_cell(st: Stat | None, opts: Options, signed: bool = False) -> Cell:
    """Mean ± std (± the t-interval with --ci) in percent; `signed` for differences (no value: never bold)."""
    if st is None:
        return Cell()
    fmt = "+.2f" if signed else ".2f"

    def show(value: float) -> str:  # a value that rounds to zero prints as +0.00 (signed) or 0.00, never -0.00
        text = f"{100 * value:{fmt}}"
        return ("+0.00" if signed else "0.00") if text == "-0.00" else text

    text = show(st.mean)
    if st.n > 1:
        text += f" ± {100 * st.std:.2f}"
        if opts.ci:
            text += f" [{show(st.lo)}, {show(st.hi)}]"
    if st.n != opts.trials:  # fewer trials than asked, or several mixes pooled (--attacks any)
        text += f" (n={st.n})"
    return Cell(text) if signed else Cell(text, round(100 * st.mean, 2))


PAIR_KEYS = ["trial", "seed", "mix", "poisons_json"]  # same seed and same poisons: the runs saw the same rows


def paired_stat(rows: pd.DataFrame | None, baseline: pd.DataFrame | None) -> Stat | None:
    """Mean ± sample std of `test_acc` − the baseline's over the runs that share trial, seed, attack mix and
    PoisonSets: those saw the same poisoned rows, initialisation and batch order, so the difference cancels what
    they share. Runs without such a partner stay out."""
    if rows is None or baseline is None:
        return None
    pairs = rows[[*PAIR_KEYS, "test_acc"]].merge(baseline[[*PAIR_KEYS, "test_acc"]], on=PAIR_KEYS,
                                                  suffixes=("", "_base"))
    return stat(pairs.test_acc - pairs.test_acc_base)


def paired_data(st: Stat | None) -> dict:
    if st is None:
        return {"paired_n": 0, "paired_mean": None, "paired_std": None, "paired_ci_low": None,
                "paired_ci_high": None}
    return {"paired_n": st.n, "paired_mean": num(100 * st.mean), "paired_std": num(100 * st.std),
            "paired_ci_low": num(100 * st.lo), "paired_ci_high": num(100 * st.hi)}


def paper_cell(p) -> Cell:
    return Cell() if p is None else Cell(f"{p[0]:.2f} ± {p[1]:.2f}")


def diff_cell(st: Stat | None, p) -> Cell:
    return Cell() if st is None or p is None else Cell(f"{100 * st.mean - p[0]:+.2f}")


def mark_best(cells: list[Cell], higher: bool = True) -> None:
    values = [c.value for c in cells if c.value is not None]
    if len(values) < 2:
        return
    best = max(values) if higher else min(values)
    for c in cells:
        c.best = c.value is not None and c.value == best


def acc_data(st: Stat | None, p=None) -> dict:
    if st is None:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None,
                "paper_mean": p[0] if p else None, "paper_std": p[1] if p else None, "diff": None}
    return {"n": st.n, "mean": num(100 * st.mean), "std": num(100 * st.std), "ci_low": num(100 * st.lo),
            "ci_high": num(100 * st.hi), "paper_mean": p[0] if p else None, "paper_std": p[1] if p else None,
            "diff": num(100 * st.mean - p[0]) if p else None}


def setting_data(s: Setting) -> dict:
    return {"dataset": s.dataset, "model": s.model, "recipe": s.recipe, "epochs": s.epochs,
            "setting": s.label, "reduced_scale": bool(s.reduced)}


def setting_notes(s: Setting, table: str, opts: Options, paper_ok: bool = True) -> list[str]:
    """Notes on a setting: reduced scale, and where the paper column comes from (`paper_ok` False: the table gives
    no paper numbers for these runs and says why elsewhere)."""
    notes = []
    if s.reduced:
        notes.append("reduced scale, not the paper's setting: " + "; ".join(s.reduced))
    if (opts.paper or opts.diff) and paper_ok:
        key = paper.paper_key(table, s.dataset)
        if key is None:
            notes.append(f"the paper has no results for {s.dataset}: no paper column")
        elif key != s.dataset:
            notes.append(f"paper column: the paper's {paper.PAPER_LABEL[key]} numbers (our data: {s.dataset})")
    return notes


def rho_text(rho: float) -> str:
    return f"{rho:.1f}" if abs(rho * 10 - round(rho * 10)) < 1e-9 else f"{rho:g}"


def value_text(v: float) -> str:
    """A parameter value as the paper prints it: 0.25, 0.5, 1.0, 0.031."""
    text = f"{v:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def method_label(m: str) -> str:
    return paper.METHOD_LABEL.get(m, m)


def methods_of(df: pd.DataFrame) -> list[str]:
    return list(PAPER_METHODS) + sorted(set(df.method) - set(PAPER_METHODS))


def untargeted(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.kind.isin(["clean", "untargeted"])]


def mix_note(df: pd.DataFrame) -> str | None:
    mixes = sorted(m for m in df.mix.unique() if m)
    return f"warning: runs with different attack mixes are pooled: {' | '.join(mixes)}" if len(mixes) > 1 else None


# ----------------------------------------------------------------------------------------------- Table II

def paper_mix_only(sdf: pd.DataFrame, notes: list) -> bool:
    """Whether the paper's Table II / IV numbers apply to these runs: all on the paper's four-attack mix (any
    PoisonSets of it); otherwise a note says why the paper columns stay empty."""
    mixes = {m for m in sdf.mix.unique() if m} if len(sdf) else set()  # clean runs (ρ = 0) have no mix
    if mixes and mixes != {PAPER_MIX}:
        notes.append("no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC, these runs are on "
                     + " | ".join(sorted(mixes)))
        return False
    return True


def table2(df: pd.DataFrame, opts: Options) -> Table:
    df = untargeted(df)
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        mix_notes: list[str] = []
        mix_ok = paper_mix_only(sdf, mix_notes)
        notes = setting_notes(s, "2", opts, paper_ok=mix_ok) + mix_notes
        chosen = choose_parameters(sdf, notes)
        notes.append(mix_note(sdf))
        methods = methods_of(sdf)
        key = paper.paper_key("2", s.dataset) if mix_ok else None
        plabel = paper.paper_label("2", s.dataset)
        show_paper, show_diff = opts.paper and key, opts.diff and key
        has_runs = {m for m, rows in chosen.items() if rows is not None and len(rows)}
        paired = opts.paired and "none" in has_runs
        if opts.paired and not paired:
            notes.append("no paired column: this setting has no W/o Defense runs to pair with")
        columns = ["ρ"]
        for m in methods:
            columns.append(method_label(m))
            if show_paper:
                columns.append(f"{method_label(m)} ({plabel})")
            if show_diff:
                columns.append(f"{method_label(m)} Δ")
            if paired and m != "none" and m in has_runs:
                columns.append(f"{method_label(m)} − {method_label('none')} (paired)")
        if paired:
            notes.append("paired: the defense's test accuracy minus W/o Defense's, per pair of runs with the same "
                         "trial, seed, attack mix and PoisonSets (same poisoned rows and batch order); mean ± std "
                         "in points over the pairs")
        found = {round(r, 6) for m in chosen.values() for r in m.rho}
        rhos = [opts.rho] if opts.rho is not None else sorted(set(RHOS) | found)
        block = Block(s.label, columns, notes=[n for n in notes if n])
        unpaired: dict[str, int] = {}
        for rho in rhos:
            row, ours = [Cell(rho_text(rho), label=True)], []
            for m in methods:
                rows = chosen.get(m)
                st = stat(rows[close(rows.rho, rho)].test_acc) if rows is not None else None
                shown |= set(rows[close(rows.rho, rho)].run_id) if rows is not None else set()
                p = paper.table2(key, rho, m) if key else None
                cell = acc_cell(st, opts)
                row.append(cell)
                ours.append(cell)
                if show_paper:
                    row.append(paper_cell(p))
                if show_diff:
                    row.append(diff_cell(st, p))
                baseline = chosen.get("none")
                pst = None
                if paired and m != "none" and m in has_runs:
                    at_rho = rows[close(rows.rho, rho)]
                    pst = paired_stat(at_rho, baseline[close(baseline.rho, rho)])
                    row.append(acc_cell(pst, opts, signed=True))
                    missing = len(at_rho) - (pst.n if pst is not None else 0)
                    if missing:
                        unpaired[m] = unpaired.get(m, 0) + missing
                params = rows.params_json.iloc[0] if rows is not None and len(rows) else ""
                data.append({"table": "II", **setting_data(s), "rho": rho, "method": m, "params": params,
                             **acc_data(st, p), **paired_data(pst)})
            mark_best(ours)
            block.rows.append(row)
        block.notes += [f"paired: {k} {method_label(m)} run(s) have no W/o Defense run of the same trial and seed "
                        "among those shown (not run yet, or re-run with another --seed) and stay out of the "
                        "paired column" for m, k in unpaired.items()]
        blocks.append(block)
    return Table("2", table2_caption(df), blocks, data, shown=shown)


ATTACK_LABELS = {"pgd": "PGD", "dap": "DAP", "durp": "DURP", "deepconfuse": "DC"}


def table2_caption(df: pd.DataFrame) -> str:
    """Table II's caption, naming the attacks when the rows are not the paper's mix and any chosen PoisonSets."""
    caption = CAPTIONS["2"]
    mixes = sorted(m for m in df.mix.unique() if m) if len(df) else []
    if len(mixes) == 1 and mixes[0] != PAPER_MIX:
        attacks = mixes[0].split(",")
        label = "+".join(ATTACK_LABELS.get(a, a) for a in attacks)
        caption = caption.replace("the untargeted mix (PGD+DAP+DURP+DC)",
                                  f"the untargeted {'mix' if len(attacks) > 1 else 'attack'} ({label})")
    chosen = sorted(c for c in df.poison_sets.unique() if c) if len(df) else []
    if chosen:
        caption += f"; PoisonSets chosen with --poisons: {' | '.join(chosen)}"
    return caption


# ----------------------------------------------------------------------------------------------- Table III

def targeted_pooling_notes(chosen: dict[str, pd.DataFrame]) -> list[str]:
    """Warnings for Table III cells that pool targeted runs of different poison budgets or scenarios."""
    notes = []
    for m, rows in chosen.items():
        if rows is None:
            continue
        for a, cell in rows.groupby("attack"):
            budgets = sorted({rho_text(r) for r in cell.rho if not pd.isna(r)})
            scenarios = sorted({str(x) for x in cell.scenario})
            if len(budgets) > 1 or len(scenarios) > 1:
                notes.append(f"warning: {method_label(m)} / {paper.ATTACK_LABEL.get(a, a)} pools runs of "
                             f"poison budgets {', '.join(budgets)} and scenarios {', '.join(scenarios)}")
    return notes


def newest_poison_kinds(chosen: dict[str, pd.DataFrame | None], notes: list) -> dict[str, str]:
    """Per attack column of Table III, the one poison kind (ε and attack parameters; each trial has its own target
    and PoisonSet) that every method's cell shows, so the column compares like with like: that of the column's
    most recently finished run. A note counts the runs left out."""
    rows = [r for r in chosen.values() if r is not None and len(r)]
    if not rows:
        return {}
    kinds = {}
    for a, column in pd.concat(rows).groupby("attack"):
        if column.poisons_json.nunique() < 2:
            continue
        kinds[a] = column.sort_values(["finished_at", "run_id"]).poisons_json.iloc[-1]
        left = int((column.poisons_json != kinds[a]).sum())
        notes.append(f"not shown: {left} {paper.ATTACK_LABEL.get(a, a)} run(s) whose poisons differ in ε, budget or "
                     "attack parameters from the column's newest run (a column shows one kind)")
    return kinds


def of_kinds(rows: pd.DataFrame | None, kinds: dict[str, str]) -> pd.DataFrame | None:
    """The rows of the poison kind each attack column shows (`newest_poison_kinds`; other attacks: all)."""
    if rows is None:
        return None
    wanted = rows.attack.map(kinds)
    return rows[wanted.isna() | (rows.poisons_json == wanted)]


def table3(df: pd.DataFrame, opts: Options) -> Table:
    df = df[df.kind == "targeted"]
    blocks, data, shown = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes = setting_notes(s, "3", opts)
        chosen = choose_parameters(sdf, notes)
        attacks = list(ATTACKS) + sorted(set(sdf.attack) - set(ATTACKS))
        methods = methods_of(sdf)
        show_paper, show_diff = opts.paper, opts.diff  # the paper's Table III is CIFAR-10 only
        columns = ["method", "metric"]
        for a in attacks:
            columns.append(paper.ATTACK_LABEL.get(a, a))
            if show_paper:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} (paper CIFAR-10)")
            if show_diff:
                columns.append(f"{paper.ATTACK_LABEL.get(a, a)} Δ")
        block = Block(s.label, columns, notes=[n for n in notes if n])
        kinds = newest_poison_kinds(chosen, block.notes)
        asr_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        acc_cols: dict[str, list[Cell]] = {a: [] for a in attacks}
        for i, m in enumerate(methods):
            asr_row = [Cell(method_label(m), label=True), Cell("ASR", label=True)]
            acc_row = [Cell("", label=True), Cell("test acc.", label=True)]
            for a in attacks:
                rows = chosen.get(m)
                rows = rows[rows.attack == a] if rows is not None else None
                rows = of_kinds(rows, kinds)
                shown |= set(rows.run_id) if rows is not None else set()
                succ = [bool(x) for x in rows.success if x is not None and not pd.isna(x)] if rows is not None else []
                k, n = sum(succ), len(succ)
                st = stat(rows.test_acc) if rows is not None else None
                p = paper.table3(m, a)
                asr = Cell()
                if n:
                    asr = Cell(f"{k}/{n}", round(k / n, 4))
                    if opts.wilson:
                        lo, hi = wilson(k, n)
                        asr.text += f" [{100 * lo:.0f}–{100 * hi:.0f}%]"
                acc = acc_cell(st, opts)
                asr_cols[a].append(asr)
                acc_cols[a].append(acc)
                asr_row.append(asr)
                acc_row.append(acc)
                if show_paper:
                    asr_row.append(Cell(f"{p['success'][0]}/{p['success'][1]}") if p else Cell())
                    acc_row.append(paper_cell(p["acc"] if p else None))
                if show_diff:
                    asr_row.append(Cell(f"{100 * (k / n - p['success'][0] / p['success'][1]):+.0f} pp")
                                   if p and n else Cell())
                    acc_row.append(diff_cell(st, p["acc"] if p else None))
                lo, hi = wilson(k, n)
                params = rows.params_json.iloc[0] if rows is not None and len(rows) else ""
                data.append({"table": "III", **setting_data(s), "attack": a, "method": m, "params": params,
                             "successes": k, "trials": n, "asr": num(100 * k / n) if n else None,
                             "asr_wilson_low": num(100 * lo), "asr_wilson_high": num(100 * hi),
                             "paper_successes": p["success"][0] if p else None,
                             "paper_trials": p["success"][1] if p else None,
                             **{f"acc_{k_}": v for k_, v in acc_data(st, p["acc"] if p else None).items()}})
            if i:
                block.rules.add(len(block.rows))
            block.rows += [asr_row, acc_row]
        for a in attacks:
            mark_best(asr_cols[a], higher=False)
            mark_best(acc_cols[a])
        block.notes += targeted_pooling_notes({m: of_kinds(rows, kinds) for m, rows in chosen.items()})
        blocks.append(block)
    return Table("3", CAPTIONS["3"], blocks, data, shown=shown)


# ----------------------------------------------------------------------------------------------- Table IV

def sensitivity_rows(sdf: pd.DataFrame, param: str, value: float) -> pd.DataFrame:
    """The HINT runs of the cell `param` = `value` (the other of r, β at the paper's value): one parameter set,
    chosen as a Table II column's (`primary`), so runs that differ in γ, schedule, sign, ... are not averaged in."""
    return primary(sdf, "hint", {**HINT_PAPER, param: value})[0]


def sensitivity_note(sdf: pd.DataFrame, shown: list[pd.DataFrame], see: str) -> str | None:
    """Counts the HINT runs of `sdf` in none of the `shown` cells and names how their parameters differ from
    the paper cell's (r = 0.5, β = 0.062; the first non-empty cell if that one is empty)."""
    hint = sdf[sdf.method == "hint"]
    shown_ids = {rid for rows in shown for rid in rows.run_id}
    reference = sensitivity_rows(sdf, "ratio", HINT_PAPER["ratio"])
    if reference.empty:
        reference = next((rows for rows in shown if len(rows)), reference)
    return left_out_note("hint", reference, hint[~hint.run_id.isin(shown_ids)], see)


def table4(df: pd.DataFrame, opts: Options) -> Table:
    rho = SENSITIVITY_RHO if opts.rho is None else opts.rho
    df = untargeted(df)
    df = df[(df.method == "hint") & close(df.rho, rho)]
    ss = settings(df)
    if not ss:
        return Table("4", CAPTIONS["4"], [], [])
    columns = ["parameter", "value"]
    comparable = close(rho, SENSITIVITY_RHO)
    elsewhere = f" (the paper's Table IV is at ρ = {SENSITIVITY_RHO}: no paper numbers)"
    notes = [f"runs at ρ = {rho_text(rho)}" + (" (the paper's)" if comparable else elsewhere)]
    paper_ok_of: dict[Setting, bool] = {}
    for s in ss:
        columns.append(s.label)
        mix_notes: list[str] = []
        paper_ok = comparable and paper_mix_only(in_setting(df, s), mix_notes)
        key = paper.paper_key("4", s.dataset) if paper_ok else None
        notes += [f"{s.label}: {n}" for n in mix_notes]
        if opts.paper and key:
            columns.append(f"{paper.paper_label('4', s.dataset)}")
        if opts.diff and key:
            columns.append(f"{s.dataset} Δ")
        notes += [f"{s.label}: {n}" for n in setting_notes(s, "4", opts, paper_ok=paper_ok)]
        paper_ok_of[s] = paper_ok
        mixed = mix_note(in_setting(df, s))
        notes += [f"{s.label}: {mixed}"] if mixed else []
    block = Block(f"HINT at ρ = {rho_text(rho)}", columns)
    data = []
    shown: dict[Setting, list[pd.DataFrame]] = {s: [] for s in ss}
    for param, grid, sym in (("ratio", R_GRID, "r"), ("beta", BETA_GRID, "β")):
        if param == "beta":
            block.rules.add(len(block.rows))
        ours: dict[Setting, list[Cell]] = {s: [] for s in ss}
        for j, value in enumerate(grid):
            row = [Cell(sym if j == 0 else "", label=True), Cell(value_text(value), label=True)]
            for s in ss:
                rows = sensitivity_rows(in_setting(df, s), param, value)
                shown[s].append(rows)
                st = stat(rows.test_acc)
                key = paper.paper_key("4", s.dataset) if paper_ok_of[s] else None
                p = paper.table4(key, param, value) if key else None
                cell = acc_cell(st, opts)
                ours[s].append(cell)
                row.append(cell)
                if opts.paper and key:
                    row.append(paper_cell(p))
                if opts.diff and key:
                    row.append(diff_cell(st, p))
                data.append({"table": "IV", **setting_data(s), "rho": rho, "parameter": param, "value": value,
                             **acc_data(st, p)})
            block.rows.append(row)
        for cells in ours.values():
            mark_best(cells)
    for s in ss:
        note = sensitivity_note(in_setting(df, s), shown[s], "see the plain `report`")
        notes += [f"{s.label}: {note}"] if note else []
    block.notes = notes
    ids = {i for frames in shown.values() for rows in frames for i in rows.run_id}
    return Table("4", CAPTIONS["4"], [block], data, shown=ids)


# ----------------------------------------------------------------------------------------------- Table V

def table5(df: pd.DataFrame, opts: Options) -> Table:
    rho = SENSITIVITY_RHO if opts.rho is None else opts.rho
    df = untargeted(df)
    df = df[close(df.rho, rho)]
    blocks, data, ids = [], [], set()
    for s in settings(df):
        sdf = in_setting(df, s)
        notes = [f"runs at ρ = {rho_text(rho)}; time = training + the defense's own work (cost.train + "
                 "defense_prepare + defense_epoch); × none = mean time / mean time of W/o Defense"]
        notes += setting_notes(s, "5", opts)
        notes.append(mix_note(sdf))
        entries: list[tuple[str, str, float | None, pd.DataFrame]] = []
        for m in methods_of(sdf):
            if m == "hint":
                hint = [sensitivity_rows(sdf, "ratio", r) for r in R_GRID]
                entries += [(f"HINT (r = {value_text(r)})", m, r, rows) for r, rows in zip(R_GRID, hint, strict=True)]
                at_paper_beta = sdf[close(sdf.beta, HINT_PAPER["beta"])]  # other β: Table IV's rows, not V's
                notes.append(sensitivity_note(at_paper_beta, hint, "see Table IV / plain `report`"))
                continue
            rows, left = primary(sdf, m)
            notes.append(left_out_note(m, rows, left))
            entries.append((method_label(m), m, None, rows))
        shown = pd.concat([rows for *_, rows in entries])
        ids |= set(shown.run_id)
        if shown.compiled.nunique() > 1:
            notes.append(f"times mix {int(shown.compiled.sum())} compiled and {int((~shown.compiled).sum())} eager "
                         "run(s) (torch.compile); compare times only within one mode (`--compile on|off`)")
        none_time = stat(entries[0][3].time)
        pnone = paper.table5("none")
        columns = ["method", "time (s)", "defense (s)", "× none"]
        if opts.paper:
            columns += ["paper CIFAR-10 time (s)", "paper × none"]
        if opts.diff:
            columns += ["Δ × none"]
        block = Block(s.label, columns, notes=[n for n in notes if n])
        for label, m, r, rows in entries:
            t, d = stat(rows.time), stat(rows.defense_time)
            ratio = t.mean / none_time.mean if t and none_time and none_time.mean > 0 else None
            p = paper.table5(m, r)
            pratio = p / pnone if p is not None else None
            row = [Cell(label, label=True)]
            if t is None:
                row += [Cell(), Cell(), Cell()]
            else:
                text = f"{t.mean:.1f}" + (f" ± {t.std:.1f}" if t.n > 1 else "")
                if opts.ci and t.n > 1:
                    text += f" [{t.lo:.1f}, {t.hi:.1f}]"
                text += f" (n={t.n})" if t.n != opts.trials else ""
                row += [Cell(text), Cell(f"{d.mean:.1f}"), Cell(f"{ratio:.2f}×" if ratio is not None else DASH)]
            if opts.paper:
                row += [Cell(f"{p:.0f}" if p is not None else DASH), Cell(f"{pratio:.2f}×" if pratio else DASH)]
            if opts.diff:
                row += [Cell(f"{ratio - pratio:+.2f}" if ratio is not None and pratio is not None else DASH)]
            block.rows.append(row)
            data.append({"table": "V", **setting_data(s), "rho": rho, "method": m, "ratio": r,
                         "n": t.n if t else 0, "time_mean": num(t.mean, 2) if t else None,
                         "time_std": num(t.std, 2) if t else None, "defense_mean": num(d.mean, 2) if d else None,
                         "x_none": num(ratio), "paper_time": p, "paper_x_none": num(pratio),
                         "diff_x_none": num(ratio - pratio) if ratio is not None and pratio is not None else None})
        blocks.append(block)
    return Table("5", CAPTIONS["5"], blocks, data, shown=ids)


BUILDERS = {"2": table2, "3": table3, "4": table4, "5": table5}


def check_table(number: str) -> str:
    number = str(number).strip().upper()
    number = {v: k for k, v in ROMAN.items()}.get(number, number)
    if number not in TABLES:
        raise unknown_choice("table", number, TABLES)
    return number


def build(number: str, records: list[dict], opts: Options, **filters) -> Table:
    number = check_table(number)
    methods = filters.pop("methods", None)  # after the generation choice, as `missing_commands` does
    df, notes = cell_records(apply_filters(frame(records), **filters))
    df = apply_filters(df, methods=methods, mix=None, poison_sets=None)
    table = BUILDERS[number](df, opts)
    table.notes += notes
    shown = df[df.run_id.isin(table.shown)]
    versions = sorted(c for c in shown.code.unique() if c) if len(shown) else []
    unknown = int((shown.code == "").sum()) if len(shown) else 0
    if len(versions) + (unknown > 0) > 1:
        older = f", and {unknown} run(s) older than the fingerprint" if unknown else ""
        count = f"{len(versions)} version{'' if len(versions) == 1 else 's'}"
        table.notes.append(f"the runs shown were made by {count} of the code (the records' "
                           f"env.code fingerprint){older}; on a CPU, versions that change no arithmetic give the "
                           "same numbers, others differ by float rounding (docs/fidelity.md names the changes)")
    return table


# ----------------------------------------------------------------------------------------------- rendering

LATEX = {"±": r"$\pm$", "–": "--", "ρ": r"$\rho$", "β": r"$\beta$", "Δ": r"$\Delta$", "×": r"$\times$",
         "·": r"$\cdot$", "%": r"\%", "_": r"\_", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
         "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX.get(ch, ch) for ch in text)


def md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def render_md(t: Table) -> str:
    out = [f"**{t.title}.** {t.caption}", ""]
    for b in t.blocks:
        out += [f"*{b.title}*", ""]
        out.append("| " + " | ".join(md_escape(c) for c in b.columns) + " |")
        out.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(b.columns))) + "|")
        for row in b.rows:
            out.append("| " + " | ".join(f"**{md_escape(c.text)}**" if c.best else md_escape(c.text)
                                         for c in row) + " |")
        out.append("")
        out += [f"- {n}" for n in b.notes]
        if b.notes:
            out.append("")
    out += [f"- {n}" for n in t.notes]
    return "\n".join(out).rstrip() + "\n"


def render_latex(t: Table) -> str:
    out = [f"% {t.title}: {t.caption}. Needs \\usepackage{{booktabs}}."]
    out += [f"% {n}" for n in t.notes]  # runs left out of the table: for whoever reads the source
    for b in t.blocks:
        labels = sum(1 for c in b.rows[0] if c.label) if b.rows else 1
        spec = "l" * labels + "r" * (len(b.columns) - labels)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                f"\\caption{{{latex_escape(t.title)}: {latex_escape(t.caption)}. {latex_escape(b.title)}.}}",
                f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(latex_escape(c) for c in b.columns) + r" \\", r"\midrule"]
        for i, row in enumerate(b.rows):
            if i in b.rules:
                out.append(r"\midrule")
            cells = [f"\\textbf{{{latex_escape(c.text)}}}" if c.best else latex_escape(c.text) for c in row]
            out.append(" & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if b.notes:
            out.append(r"\par\smallskip\footnotesize " + r" \\ ".join(latex_escape(n) for n in b.notes))
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def render_csv(t: Table) -> str:
    return pd.DataFrame(t.data).to_csv(index=False, lineterminator="\n")


def render_json(t: Table) -> str:
    notes = [{"block": b.title, "notes": b.notes} for b in t.blocks]
    return json.dumps({"table": ROMAN[t.number], "caption": t.caption, "notes": notes, "table_notes": t.notes,
                       "rows": t.data}, indent=2, ensure_ascii=False) + "\n"


def render_rich(t: Table, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table as RichTable

    from .console import stdout_console

    console = console or stdout_console()
    console.print(f"[bold]{t.title}.[/bold] {t.caption}", highlight=False)
    for b in t.blocks:
        rt = RichTable(title=b.title, caption="\n".join(b.notes) or None, caption_justify="left")
        for i, col in enumerate(b.columns):
            rt.add_column(col, justify="left" if b.rows and b.rows[0][i].label else "right")
        for i, row in enumerate(b.rows):
            rt.add_row(*[f"[bold green]{c.text}[/]" if c.best else c.text for c in row],
                       end_section=(i + 1) in b.rules)
        console.print(rt)
    for note in t.notes:
        console.print(f"[yellow]{escape(note)}[/yellow]", highlight=False)


def render(t: Table, fmt: str) -> str:
    renderers = {"md": render_md, "latex": render_latex, "csv": render_csv, "json": render_json}
    if fmt not in renderers:
        raise unknown_choice("format", fmt, FORMATS)
    return renderers[fmt](t)


# ----------------------------------------------------------------------------------------------- --missing

def available_methods() -> list[str]:
    from .defenses import DEFENSES

    return DEFENSES.names()


RECIPE_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "momentum": "--momentum",
                "weight_decay": "--weight-decay", "augment": "--augment"}


def recipe_flags(s: Setting) -> list[str]:
    """`--recipe R` plus the overrides that rebuild exactly the setting's resolved recipe."""
    flags = ["--recipe", s.recipe]
    family = guess_family(s)
    if family is None:
        return flags
    from .recipes import RECIPES, resolve_recipe

    if s.recipe not in RECIPES[family]:
        return flags
    if not s.recipe_json:  # a setting with no runs yet: only what the user filtered on
        return flags + (["--epochs", str(s.epochs)] if s.epochs and s.epochs != RECIPES[family][s.recipe].epochs
                        else [])
    rec = json.loads(s.recipe_json)
    if rec["epochs"] != RECIPES[family][s.recipe].epochs:
        flags += ["--epochs", str(rec["epochs"])]
    expected = resolve_recipe(family, s.recipe, epochs=rec["epochs"]).to_dict()
    for key, flag in RECIPE_FLAGS.items():
        if rec.get(key) != expected.get(key):
            flags += [flag, repr(rec[key]) if isinstance(rec[key], float) else str(rec[key])]
    if rec.get("nesterov") != expected.get("nesterov"):
        flags.append("--nesterov" if rec["nesterov"] else "--no-nesterov")
    if list(rec.get("milestones") or []) != list(expected.get("milestones") or []):
        flags += ["--milestones", ",".join(map(str, rec["milestones"]))]  # "" = no decay
    return flags


@dataclass(frozen=True)
class Need:
    """One configuration a table needs: method (+ HINT r, β) at ρ in a setting, and how many trials exist."""

    setting: Setting
    method: str
    rho: float
    have: int
    params: tuple = ()  # (("ratio", 0.5), ("beta", 0.062)) for HINT
    done: frozenset = frozenset()  # trial numbers that have a record

    def command(self, trials: int, base_seed: int = 0, mix: str = "", trial: int | None = None,
                dataset_arg: str | None = None, data_dir: str | None = None, poison_sets: str = "",
                results: str | None = None) -> str:
        """`--trials N` (runs 0..N-1, skips the done ones), or `--trial T` for one trial. `dataset_arg` is how the
        user named the dataset (an `.npz` path, where records carry only the file name); `data_dir` is appended."""
        s = self.setting
        count = ["--trials", str(trials)] if trial is None else ["--trial", str(trial)]
        parts = ["poisonbench", "defend", "--dataset", dataset_arg or s.dataset, "--method", self.method,
                 "--poison-ratio", rho_text(self.rho), *count, *recipe_flags(s)]
        family = guess_family(s)
        from .models import DEFAULT_MODEL

        if s.model and s.model != DEFAULT_MODEL.get(family or ""):
            parts += ["--model", s.model]
        for key, value in self.params:
            parts += [f"--{key}", f"{value:g}"]
        if base_seed:
            parts += ["--seed", str(base_seed)]
        if mix and mix != DEFAULT_ATTACK_MIX and self.rho > 0:
            parts += ["--attacks", mix]
        if poison_sets and self.rho > 0:
            parts += ["--poisons", poison_sets]
        if s.npz_split:
            parts += ["--npz-split", s.npz_split]
        if data_dir:
            parts += ["--data-dir", str(data_dir)]
        if results:
            parts += ["--results", str(results)]
        return " ".join(shlex.quote(p) for p in parts)


def target_settings(df: pd.DataFrame, dataset: str | None, recipe: str | None, model: str | None = None,
                    epochs: int | None = None) -> list[Setting]:
    """The settings with runs, plus the one the filters name when it has none yet (its commands must produce
    runs that the same filters then select)."""
    ss = settings(df)
    if dataset and not any(s.dataset == dataset for s in ss):
        from .models import DEFAULT_MODEL
        from .recipes import RECIPES

        family = paper.family_of(dataset)
        name = recipe or "paper"
        default_epochs = RECIPES[family][name].epochs if family and name in RECIPES[family] else 0
        ss.append(Setting(dataset, model or DEFAULT_MODEL.get(family or "", ""), name, epochs or default_epochs,
                          ""))
    return ss


def cell_rows(number: str, sdf: pd.DataFrame, method: str, rho: float, params: dict) -> pd.DataFrame:
    """The runs table `number` averages in the cell of `method` (+ HINT `params`) at `rho`, chosen as the table
    chooses them (`primary`): Table II picks one parameter set per method column over all ρ; Tables IV and V
    one per cell among the runs at their ρ. Runs of another parameter set (γ, schedule, ...) do not count."""
    if number == "2":
        column = primary(sdf, method, params or None)[0]
        return column[close(column.rho, rho)]
    return primary(sdf[close(sdf.rho, rho)], method, params or None)[0]


def needs(number: str, df: pd.DataFrame, opts: Options, methods: list[str], dataset: str | None = None,
          recipe: str | None = None, model: str | None = None, epochs: int | None = None) -> list[Need]:
    """Every configuration of table `number` in each setting, with the trials found."""
    out = []
    base = untargeted(df)
    for s in target_settings(base, dataset, recipe, model, epochs):  # settings with only targeted runs are Table III's
        sdf = in_setting(base, s) if s.recipe_json else base.iloc[0:0]
        wanted = [m for m in methods_of(sdf) if m in methods or m in set(sdf.method)]
        rho6 = SENSITIVITY_RHO if opts.rho is None else opts.rho
        grid: list[tuple[str, float, tuple]] = []
        if number == "2":
            rhos = [opts.rho] if opts.rho is not None else list(RHOS)
            for m in wanted:
                grid += [(m, r, tuple(HINT_PAPER.items()) if m == "hint" else ()) for r in rhos]
        else:
            hint_grid = [(("ratio", r), ("beta", HINT_PAPER["beta"])) for r in R_GRID]
            if number == "4":
                hint_grid += [(("ratio", HINT_PAPER["ratio"]), ("beta", b)) for b in BETA_GRID
                              if b != HINT_PAPER["beta"]]
                grid += [("hint", rho6, p) for p in hint_grid] if "hint" in wanted else []
            else:
                for m in wanted:
                    grid += [("hint", rho6, p) for p in hint_grid] if m == "hint" else [(m, rho6, ())]
        for m, rho, params in grid:
            rows = cell_rows(number, sdf, m, rho, dict(params))
            out.append(Need(s, m, rho, len(rows), params, frozenset(int(t) for t in rows.trial)))
    return out


def missing_commands(number: str, records: list[dict], opts: Options, dataset: str | None = None,
                     recipe: str | None = None, model: str | None = None, epochs: int | None = None,
                     methods: list[str] | None = None, mix: str | None = PAPER_MIX,
                     per_trial: bool = False, data_dir: str | None = None,
                     poison_sets: str | None = "", results: str | None = None) -> tuple[list[str], list[str]]:
    """(commands, notes): one `poisonbench defend` line per incomplete configuration (it runs trials
    0..N-1 and skips the done ones), or with `per_trial` one `--trial T` line per missing trial (one job per
    line for a scheduler), and notes for what cannot be listed. An `.npz` `dataset` given by path selects the
    records of that file name and keeps the path in the commands; `data_dir` and `results` are passed on to every
    command (lines that wrote elsewhere would never complete the table asked about)."""
    number = check_table(number)
    notes = []
    if number == "3":
        return [], ["Table III: targeted runs cannot be listed yet (`defend` has no targeted scenario)"]
    from .data import record_name

    dataset_arg, dataset = dataset, record_name(dataset) if dataset else dataset
    df, _ = cell_records(apply_filters(frame(records), dataset, model, recipe, epochs, mix=mix,
                                       poison_sets=poison_sets))
    available = available_methods()
    wanted = [m for m in (methods or PAPER_METHODS)]
    unavailable = [m for m in wanted if m not in available]
    if unavailable:
        notes.append(f"not available in this build (no such --method): {', '.join(unavailable)}")
    wanted = [m for m in wanted if m in available]
    if methods:
        df = df[df.method.isin(methods)]
    commands = []
    for need in needs(number, df, opts, wanted, dataset, recipe, model, epochs):
        if need.have >= opts.trials or need.method not in available:
            continue
        sdf = in_setting(df, need.setting) if need.setting.recipe_json else df.iloc[0:0]
        bases = set((sdf.seed - sdf.trial).tolist())
        mixes = [m for m in sdf.mix.unique() if m]
        if mix and mix not in ("any", PAPER_MIX):
            need_mix = mix
        else:
            need_mix = mixes[0] if len(mixes) == 1 and mixes[0] != PAPER_MIX else ""
        if len(bases) > 1:  # the newest base seed supersedes (a re-run with another --seed): its runs win every
            # trial id and seed they share with older runs, so repeating these commands converges
            newest = sdf.sort_values(["finished_at", "run_id"]).iloc[-1]
            base_seed = int(newest.seed - newest.trial)
            notes.append(f"{need.setting.label}: runs of several base seeds ({', '.join(map(str, sorted(bases)))}); "
                         f"the commands use the newest runs' --seed {base_seed}")
        else:
            base_seed = bases.pop() if bases else 0
        where = {"dataset_arg": dataset_arg if need.setting.dataset == dataset else None, "data_dir": data_dir,
                 "poison_sets": poison_sets if poison_sets and poison_sets != "any" else "", "results": results}
        if per_trial:
            commands += [need.command(opts.trials, base_seed, need_mix, trial=t, **where)
                         for t in range(opts.trials) if t not in need.done]
        else:
            commands.append(need.command(opts.trials, base_seed, need_mix, **where))
    return list(dict.fromkeys(commands)), list(dict.fromkeys(notes))


def assert_records(records: list[dict], results) -> None:
    if not records:
        raise PoisonbenchError(f"no run records found under {results}/runs; run `poisonbench defend` first "
                               "or pass --results DIR")
