"""From run records to the runs a table cell shows.

`record_row` is the one place the report reads a record's fields, and `frame` the one table of runs that the
paper's tables, the figures and the plain report select from. Then which runs a cell shows: the filters of
`report`, one PoisonSet generation per mix, the newest run per trial and seed (docs/metrics.md, "Report and
tables"); the settings a table has one block for (`Setting`: dataset · model · recipe, and the modes that keep runs
apart); and which parameter set of a method a table shows (`primary`), with notes on the runs of the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from ...core.errors import PoisonbenchError
from ...core.hashing import canonical_json, short_hash
from ...data.types import FAMILIES
from ...experiment.run_inputs import record_crafts_or_unknown
from .. import paper
from .layout import HINT_PAPER, PAPER_METHODS, PAPER_MIX, method_label
from .stats import close

# --- run records flattened into rows --------------------------------------------------------------------------

def has_default_params(method: str, params: dict, dataset: str, recipe: dict, config: dict | None = None) -> bool:
    """Whether a run used its defense's defaults for its dataset family, recipe and threat (read from `config`),
    apart from the parameters the tables vary (HINT's r and β: Table IV's grid, and `HINT_PAPER` pins them). Any
    other defense's β counts like its other parameters: FRIENDS or ATDA at β = ε is not at its defaults, so Table
    III shows it as a budget row instead of pooling it with the runs at the default β. False when that cannot be
    decided (unknown family or defense)."""
    from ...defenses import DEFENSES
    from ...engine.recipes import Recipe
    from ...engine.threat import threat_of_config

    if not method:  # no defense named (the import-time row of COLUMNS: it must not load the plugins)
        return False
    family = paper.family_of(dataset)
    try:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}
        cls, rec = DEFENSES.get(method), Recipe(**fields)
        threat = threat_of_config(config or {})
    except Exception:  # a record from another version: no opinion
        return False
    for fam in [family] if family else FAMILIES:  # an .npz dataset: either family's defaults
        defaults = cls.defaults(fam, rec, threat)
        varied = ("ratio", "beta") if method == "hint" else ()
        if all(canonical_json(params.get(k)) == canonical_json(v) for k, v in defaults.items() if k not in varied):
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


def poison_label(poison: dict, schedules: str = "") -> str:
    """The plain report's poison column: the scenario's label, plus the PoisonSets chosen with `defend --poisons`
    (two runs that differ only there must not look alike) and the attacks crafted other than by their official
    procedure (`schedules`: a schedule other than the official one, or a departure, `other_schedules`)."""
    if not poison:
        return "-"
    label = str(poison.get("label", "-"))
    chosen = poison.get("poison_sets")
    label = f"{label} [--poisons {poison_sets_text(chosen)}]" if chosen else label
    return f"{label} [adapted {schedules}]" if schedules else label


# the schedule of an attack's PoisonSets crafted before it had one (issue 67): REM's only default then, on every
# family, was today's budget schedule (`--schedule budget`); its records name no schedule
SCHEDULE_BEFORE_ISSUE_67 = {"rem": "budget"}
# the departures of an attack's PoisonSets crafted before records named them (`inputs.poisons[*].adapted`, issue
# 83): every REM craft until then clipped its source model's gradient norm at 5 (`--grad-clip`)
ADAPTED_BEFORE_ISSUE_83 = {"rem": "grad_clip=5"}


def entry_label(schedule: object, adapted: object) -> str:
    """One PoisonSet's label: its schedule where that is not the official one, or where a departure follows it
    (`official+grad_clip=5`), then its departures; "" for the official procedure."""
    adapted = adapted if isinstance(adapted, str) else ""
    schedule = schedule if isinstance(schedule, str) and (schedule != "official" or adapted) else ""
    return "+".join(part for part in (schedule, adapted) if part)


def other_schedules(record: dict) -> str:
    """"rem=budget+grad_clip=5": the PoisonSets of a run crafted other than by their attack's official procedure,
    on another schedule (the record's `inputs.poisons[*].schedule`, issue 67) or with a departure
    (`inputs.poisons[*].adapted`, issue 83: `em=class_batch=41`, `ops=margin=4`), "" when none is. A record that
    names no schedule for a REM PoisonSet (written before issue 67, with or without `inputs`) ran on the budget
    schedule, REM's default then; one that names no departure for it, with REM's gradient clip at 5."""
    inputs = record.get("inputs")
    entries = [p for p in (inputs.get("poisons") if isinstance(inputs, dict) else None) or [] if isinstance(p, dict)]
    before, clipped = SCHEDULE_BEFORE_ISSUE_67, ADAPTED_BEFORE_ISSUE_83
    labels = set()
    for p in entries:
        attack = p.get("attack")
        schedule = p.get("schedule") if p.get("schedule") is not None else before.get(attack)
        adapted = p["adapted"] if "adapted" in p else clipped.get(attack)
        label = entry_label(schedule, adapted)
        if label:
            labels.add(f"{attack}={label}")
    named = {p.get("attack") for p in entries}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    poison = config.get("poison") if isinstance(config.get("poison"), dict) else {}
    attacks = poison.get("attacks") if isinstance(poison.get("attacks"), list) else [poison.get("attack")]
    labels |= {f"{a}={entry_label(before.get(a), clipped.get(a))}" for a in attacks
               if a in before and a not in named}
    return ",".join(sorted(labels))


# what differs from trial to trial of one targeted configuration (each trial has its own target and PoisonSet);
# the rest of a targeted run's poison description (ε, attack parameters) must match for runs to share a cell
def _number(value) -> float:
    """A metric as a float, NaN where the record has none."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


TARGETED_TRIAL_KEYS = {"target_index", "target_class", "intended_class", "label", "poison_id", "poison_ids",
                       "indices_fingerprint", "counts", "base_indices", "setup", "poison_set", "poisoned",
                       "file_sha256", "eps_measured"}


def attack_column(poison: dict, inputs: object = None) -> str:
    """A targeted or PoisonSet run's attack column: the attack's name, or one per objective where the attack has two
    (`Attack.report_column`: FC's `fc` and `fc-pp`), read from the record's attack parameters (so records written
    before the objective was named get the right column too) or, for a `--poison-set` run, whose config names no
    parameters, from the PoisonSet's `objective` in the record's `inputs`."""
    attack = str(poison.get("attack", "")).lower()
    from ...attacks import ATTACKS

    if attack not in ATTACKS:
        return attack
    params = poison.get("params")
    if not isinstance(params, dict):
        entries = inputs.get("poisons") if isinstance(inputs, dict) else None
        named = [p.get("objective") for p in entries or [] if isinstance(p, dict) and p.get("attack") == attack]
        params = {"objective": named[0]} if named and isinstance(named[0], str) else {}
    return ATTACKS.get(attack).report_column(params)


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
    accounting = (r.get("defense") or {}).get("accounting") or {}  # DP-SGD's privacy accounting (ε at δ)
    return {
        "run_id": r["run_id"], "dataset": c["dataset"], "dataset_fingerprint": c.get("dataset_fingerprint") or "",
        "model": c["model"], "recipe": recipe["name"],
        "epochs": recipe["epochs"], "recipe_json": canonical_json(recipe), "kind": kind,
        "scenario": c.get("scenario"), "rho": rho,
        "mix": ",".join(str(a) for a in poison.get("attacks") or []) if kind == "untargeted" else "",
        "poison_sets": poison_sets_text(poison.get("poison_sets")) if kind == "untargeted" else "",
        "poison_ids": poison_sets_text(poison.get("poison_ids")) if kind == "untargeted" else "",
        # "rem=budget+grad_clip=5": PoisonSets not crafted by their attack's official procedure (issues 67, 83)
        "schedules": other_schedules(r),
        "poison_label": poison_label(poison, other_schedules(r)) + (" [--same-init]" if c.get("same_init") else "")
        + (f" [--precision {c['precision']}]" if c.get("precision") else ""),
        "attack": attack_column(poison, r.get("inputs")) if kind in ("targeted", "poison-set")
        else str(poison.get("attack") or "") if kind == "backdoor" else "",
        "method": method, "params_json": canonical_json(params),
        # everything that defines the experiment except the trial (seed, poisoned rows): recipe overrides,
        # dataset fingerprint, PoisonSet ids, ... so two configurations that display alike are never pooled
        "configuration": short_hash(experiment(c))[:8],
        "finished_at": str(r.get("finished_at") or ""),
        "default_params": has_default_params(method, params, c["dataset"], recipe, c),
        "poisons_json": canonical_json({"eps": poison.get("eps"), "ids": poison.get("poison_ids"),
                                        "rows": poison.get("row_stream")}) if kind == "untargeted"
        else canonical_json({k: v for k, v in poison.items() if k not in TARGETED_TRIAL_KEYS})
        if kind in ("targeted", "backdoor")
        else canonical_json({"id": poison.get("poison_id")}) if kind == "poison-set" else "",
        # the sha256 of the PoisonSet files trained on: one set of poison ids may be crafted into other floats
        # (another device, CPU or torch); "" where the record does not say (records written before 2026-11-23,
        # commit a76ea46)
        "poison_tensors_json": canonical_json(r["poison_tensors"]) if kind == "untargeted"
        and r.get("poison_tensors") else "",
        # {poison id: tensor sha256 or "unknown"} of every PoisonSet trained on, any kind: which craft each run
        # used, for the tables' provenance and their mixed-craft cells (tables.provenance)
        "crafts_json": canonical_json(record_crafts_or_unknown(r)),
        "ratio": float(params["ratio"]) if isinstance(params.get("ratio"), int | float) else math.nan,
        "beta": float(params["beta"]) if isinstance(params.get("beta"), int | float) else math.nan,
        # "surrogate" for a victim that started from the attacker model's initialisation (`defend --same-init`):
        # another setting, never pooled with the runs seeded apart (tables.settings)
        "init": "surrogate" if c.get("same_init") else "",
        # the SGD step's arithmetic when not fp32 (`defend --precision bf16`): another setting, never pooled with
        # fp32 runs; "" for fp32 (the config names no precision)
        "precision": str(c.get("precision") or ""),
        # transfer runs: whose extractor the poisons were crafted on and the head's BatchNorm mode (`defend --threat`,
        # `--head-bn`); a record from before those options was white-box with BatchNorm in eval mode
        "threat": (c.get("threat") or "white") if c.get("scenario") == "transfer" else "",
        "head_bn": (c.get("head_bn") or "eval") if c.get("scenario") == "transfer" else "",
        "trial": c["trial"], "seed": c["seed"], "test_acc": metrics.get("test_acc"),
        "val_acc": metrics.get("val_acc"), "success": None if success is None else bool(success),
        # a backdoor's attack success rate and its counts (docs/metrics.md, "Backdoors"); NaN for other runs
        "asr": _number(metrics.get("asr")), "asr_hits": _number(metrics.get("asr_hits")),
        "asr_n": _number(metrics.get("asr_n")),
        "time": time, "defense_time": defense_time, "seconds": cost.get("seconds"),
        "compiled": bool(r.get("compiled")),
        "code": str((r.get("env") or {}).get("code") or ""),
        "npz_split": ",".join(f"{v:g}" for v in c.get("npz_split") or []),
        "poisons_removed": removal.get("poisons_removed"), "poisons": removal.get("poisons"),
        "clean_removed": removal.get("clean_removed"), "clean": removal.get("clean"),
        # the privacy a DP-SGD run bought, for the tables' notes (tables.privacy); "" for every other run
        "accounting_json": canonical_json(accounting) if accounting else "",
    }


COLUMNS = list(record_row({"run_id": "", "config": {"dataset": "", "model": "", "recipe": {"name": "", "epochs": 0},
                                                     "defense": {"method": ""}, "trial": 0, "seed": 0}}))


def frame(records: list[dict]) -> pd.DataFrame:
    """One `record_row` per run, with every column even when there is no run.

    Text columns are kept as NumPy objects, as pandas 2 infers them, not as pandas 3's `str` dtype: a `str` column
    is a block of its own, so each of a report's thousands of row selections took every column separately (28 of
    the 49), and the object columns share one block. Every report built faster by about a third (the 14 records of
    every kind, every table in every format: 1.34 → 0.93 s); the tables and notes are the same (tests/)."""
    df = pd.DataFrame([record_row(r) for r in records], columns=COLUMNS)
    text = {column: object for column, dtype in df.dtypes.items() if dtype == "str"}
    return df.astype(text).copy() if text else df  # copy(): one block for the object columns


# --- which runs a cell shows: the filters, one PoisonSet generation per mix, one run per trial and seed -------

def trained_on(row, poison_sets: str) -> bool:
    """Whether an untargeted run used the PoisonSets `poison_sets` ("attack=id,…", as `defend --poisons`) and the
    mix's defaults for the other attacks. Naming a default PoisonSet selects the runs on it, as `defend` treats
    such a choice as no choice."""
    pairs = lambda text: set(filter(None, text.split(",")))  # noqa: E731
    given = pairs(poison_sets)
    return given <= pairs(row.poison_ids) and pairs(row.poison_sets) <= given


def several_generations(rows: pd.DataFrame, by: list[str]) -> bool:
    """Whether two of `rows` agree in every column of `by` and differ in `poisons_json`: the only case in which
    `one_poison_generation` leaves a run out. A key with a missing value (None, NaN) may count as agreeing where the
    group-by, which drops such keys, would not: that errs towards the full check, never past it. One pass over the
    rows instead of a group-by over eight columns (`cell_records` on the 14 records of every kind: 10.8 → 6.2 ms,
    measured 2026-11-30). Without a second generation `one_poison_generation` returns its frame itself, not a copy:
    its one caller, `cell_records`, only drops rows from it (a new frame)."""
    seen: dict[tuple, str] = {}
    for *key, poisons in zip(*(rows[c] for c in by), rows.poisons_json, strict=True):
        if seen.setdefault(tuple(key), poisons) != poisons:
            return True
    return False


def one_poison_generation(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Never pool runs trained on different PoisonSets of the same mix (e.g. after an attack's default changed):
    per dataset / model / recipe / mix keep the newest generation of poison ids (and ε): the one of the most
    recently finished run, i.e. the current defaults once any run has used them; a note counts the rest. Runs on a
    schedule other than the official one (`schedules`: REM's budget) are a mix of their own, shown apart."""
    keep = pd.Series(True, index=df.index)
    notes = []
    untargeted_rows = df[df.kind == "untargeted"]
    by = ["dataset", "dataset_fingerprint", "model", "recipe_json", "init", "precision", "schedules", "mix"]
    if not several_generations(untargeted_rows, by):
        return df, notes  # the usual case: the per-mix group-by below would keep every run
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
                     f"({', '.join(changed)} differ from the newest PoisonSets', which {int(counts[chosen])} "
                     "run(s) used)")
    return df[keep], notes


def craft_notes(shown: pd.DataFrame) -> list[str]:
    """A note when untargeted runs shown name no craft of their PoisonSets beside runs that do: the poison ids hash
    the crafting inputs only, and other code, another CPU kind or torch may round a craft differently (the records'
    `poison_tensors`, written from 2026-11-23, commit a76ea46, on); `--paired` pairs a run that names none with
    any (`cells.paired_stat`). Cells whose runs name two crafts: `provenance.mixed_cells`."""
    notes = []
    untargeted_rows = shown[shown.kind == "untargeted"]
    for (dataset, mix, _), group in untargeted_rows.groupby(["dataset", "mix", "poisons_json"]):
        named = group[group.poison_tensors_json != ""]
        crafts = named.poison_tensors_json.unique()
        if len(crafts) and len(named) < len(group):
            notes.append(f"{len(group) - len(named)} {dataset} run(s) shown of the mix {mix} name no craft of their "
                         f"PoisonSets (records written before 2026-11-23, commit a76ea46), beside {len(named)} "
                         "that do: they may have trained on another craft of the same poison ids, and paired columns "
                         "pair them as if not")
    return notes


# what makes two runs the same configuration (one cell) apart from the trial; `trial` last
CONFIGURATION = ["dataset", "dataset_fingerprint", "model", "recipe_json", "init", "precision", "threat", "head_bn",
                 "kind",
                 "scenario", "rho", "mix", "attack", "method", "params_json", "poisons_json", "trial"]


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


def untargeted(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.kind.isin(["clean", "untargeted"])]


def methods_of(df: pd.DataFrame, every_paper_method: bool = True) -> list[str]:
    """The methods in row order: the paper's, then the others alphabetically. Without `every_paper_method`, only
    those with records (a table without --paper shows what was run; with it, the paper's whole layout)."""
    present = set(df.method)
    paper = [m for m in PAPER_METHODS if every_paper_method or m in present]
    return paper + sorted(present - set(PAPER_METHODS))


def mix_note(df: pd.DataFrame) -> str | None:
    mixes = sorted(m for m in df.mix.unique() if m)
    return f"warning: runs with different attack mixes are pooled: {' | '.join(mixes)}" if len(mixes) > 1 else None


# --- settings: one block per dataset · model · recipe (and the modes that keep runs apart) --------------------
#
# The settings a table has one block for: dataset (name, fingerprint, split), model, resolved recipe, whether the
# victims started from the attacker's initialisation (`defend --same-init`, a setting of its own), the training
# precision (`defend --precision bf16`, a setting of its own: fp32 numbers are never pooled with bf16 ones), the
# transfer victims' threat model and head BatchNorm mode (`defend --threat`, `--head-bn`): transfer runs of another
# threat or BN mode make a block of their own, and the runs of other scenarios (scratch: no such mode) join every
# block of their dataset, model and recipe, so a Table III block holds GM from scratch beside BP and FC in one
# transfer mode.

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
    init: str = ""  # "surrogate": victims started from the attacker model's initialisation (`--same-init`)
    precision: str = ""  # config.precision where not fp32 (`--precision bf16`), "" for fp32
    threat: str = ""  # transfer runs': config.threat (gray | white), "" where the block has none
    head_bn: str = ""  # transfer runs': config.head_bn (train | eval), "" where the block has none

    @property
    def label(self) -> str:
        same = " · victim from the surrogate's init (--same-init)" if self.init else ""
        same += f" · {self.precision} training (--precision {self.precision})" if self.precision else ""
        box = "threat unknown" if self.threat == "unknown" else f"{self.threat}-box"
        transfer = f" · transfer: {box}, head BN {self.head_bn}" if self.threat else ""
        return f"{self.dataset} · {self.model} · {self.recipe} recipe, {self.epochs} ep{self.tag}{same}{transfer}"

    @property
    def reduced(self) -> list[str]:
        return paper.reduced_scale(self.dataset, self.recipe, self.epochs, guess_family(self))


def settings(df: pd.DataFrame) -> list[Setting]:
    named = ["dataset", "model", "recipe", "epochs"]
    keys = df[[*named, "recipe_json", "dataset_fingerprint", "npz_split", "init", "precision"]].drop_duplicates(
        [*named, "recipe_json", "dataset_fingerprint", "init", "precision"])  # the fingerprint covers the split
    keys = keys.sort_values([*named, "recipe_json", "dataset_fingerprint", "init", "precision"])
    recipes = keys.groupby(named).recipe_json.nunique()
    data = keys.groupby(named).dataset_fingerprint.nunique()
    out = []
    for k in keys.itertuples(index=False):
        name = (k.dataset, k.model, k.recipe, k.epochs)
        tag = f" #{short_hash(k.recipe_json, 6)}" if recipes[name] > 1 else ""
        tag += f" · data {k.dataset_fingerprint or 'without fingerprint'}" if data[name] > 1 else ""
        for threat, head_bn in transfer_modes(df, k):
            out.append(Setting(k.dataset, k.model, k.recipe, int(k.epochs), k.recipe_json,
                               fingerprint=k.dataset_fingerprint, npz_split=k.npz_split, tag=tag, init=k.init,
                               precision=k.precision, threat=threat, head_bn=head_bn))
    return out


def transfer_modes(df: pd.DataFrame, k) -> list[tuple[str, str]]:
    """The (threat, head BN) modes of the transfer runs of one setting's key, sorted ([("", "")] for none)."""
    if "threat" not in df:
        return [("", "")]
    rows = df[(df.dataset == k.dataset) & (df.dataset_fingerprint == k.dataset_fingerprint) & (df.model == k.model)
              & (df.recipe_json == k.recipe_json) & (df.init == k.init) & (df.precision == k.precision)
              & (df.threat != "")]
    return sorted(set(zip(rows.threat, rows.head_bn, strict=True))) or [("", "")]


def in_setting(df: pd.DataFrame, s: Setting) -> pd.DataFrame:
    keep = ((df.dataset == s.dataset) & (df.dataset_fingerprint == s.fingerprint) & (df.model == s.model)
            & (df.recipe_json == s.recipe_json) & (df.init == s.init) & (df.precision == s.precision))
    if "threat" in df:  # transfer runs of this block's mode, and every run without one (scratch, untargeted)
        keep &= (df.threat == "") | ((df.threat == s.threat) & (df.head_bn == s.head_bn))
    return df[keep]


def guess_family(s: Setting) -> str | None:
    family = paper.family_of(s.dataset)
    if family or not s.recipe_json:
        return family
    from ...engine.recipes import RECIPES

    rec = json.loads(s.recipe_json)
    best = None
    for fam, recipes in RECIPES.items():
        if s.recipe in recipes:
            diff = sum(rec.get(k) != v for k, v in recipes[s.recipe].to_dict().items() if k != "epochs")
            if best is None or diff < best[0]:
                best = (diff, fam)
    return best[1] if best else None


# --- which parameter set of a method a table shows ------------------------------------------------------------
#
# HINT at the paper's r and β, else the defense's defaults, else the set with the most runs; and the notes on the
# runs of other parameter sets.

def variant_text(chosen: str, other: str) -> str:
    a, b = json.loads(chosen), json.loads(other)
    diffs = [f"{k}={b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "same parameters"


def primary(df: pd.DataFrame, method: str, fixed: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `method` in its table setting (params matching `fixed`, e.g. HINT r = 0.5, β = 0.062; among
    the remaining runs those at the defense's defaults, else the parameter set with the most runs) and the rows
    left out. Preferring the defaults keeps a cell from switching to a sensitivity run that has more trials. The
    defaults may differ from run to run where they depend on the threat (Deep k-NN's k = 2·budget + 1, one per
    attack column of Table III), so every run at its defaults is kept, whatever their values."""
    rows = df[df.method == method]
    keep = rows
    for key, value in (fixed or {}).items():
        keep = keep[close(keep[key], value)]
    if keep.empty:
        return keep, rows
    defaults = keep[keep.default_params.astype(bool)]
    if not defaults.empty:  # every run at its defaults, which may differ by threat (a budget's k, ATDA's β)
        return defaults, rows.drop(defaults.index)
    counts = keep.groupby("params_json").size()
    chosen = sorted(counts.index, key=lambda p: (-counts[p], p))[0]
    return rows[rows.params_json == chosen], rows[rows.params_json != chosen]


BUDGET_PARAM = "beta"  # the defender's budget of the perturbation defenses (HINT, FRIENDS, ATDA): β, pixel units
BUDGET_MARK = "@beta="  # a budget row's key in `choose_parameters`: "hint@beta=0.3"
STEP_MARK = "@step="  # a step variant's part of a budget row's key: "hint@beta=0.3@step=signed"
# The parameters of a defense's update rule that set how much of its budget its noise uses (issue 80: HINT's
# unsigned step γ·I_pert never reached β 0.062 on the Fashion-MNIST setting; the official code's signed update
# moves every selected pixel by γ). A run that differs from the table's set in these (and β) gets a row of its own.
STEP_PARAMS = {"hint": ("sign", "gamma")}


def budget_key(method: str, beta: float, step: str = "") -> str:
    return f"{method}{BUDGET_MARK}{beta:g}" + (f"{STEP_MARK}{step}" if step else "")


def split_budget_key(key: str) -> tuple[str, float | None]:
    """("hint", 0.3) for "hint@beta=0.3" (and for "hint@beta=0.3@step=signed"); (key, None) for a plain method."""
    method, mark, rest = key.partition(BUDGET_MARK)
    return (method, float(rest.partition(STEP_MARK)[0])) if mark else (key, None)


def budget_step(key: str) -> str:
    """The step variant a budget row's key names ("signed", "γ 1", "signed, γ 1"); "" for none."""
    return key.partition(STEP_MARK)[2]


def only_budget_differs(chosen_json: str, other_json: str) -> float | None:
    """The other parameter set's β when it differs from the chosen one in β alone (a budget row), else None."""
    a, b = json.loads(chosen_json), json.loads(other_json)
    beta = b.get(BUDGET_PARAM)
    if not isinstance(beta, int | float) or close(beta, a.get(BUDGET_PARAM, math.nan)):
        return None
    rest = {k for k in set(a) | set(b) if k != BUDGET_PARAM}
    return float(beta) if all(a.get(k) == b.get(k) for k in rest) else None


def step_variant(method: str, chosen_json: str, other_json: str) -> tuple[float, str] | None:
    """(β, step text) where the other parameter set differs from the chosen one only in `STEP_PARAMS[method]` (at
    least one of them) and possibly β: a row of its own, "HINT (β 0.3, signed)". None for any other difference,
    for no difference in the step, or for a set without a numeric β."""
    step_params = STEP_PARAMS.get(method, ())
    a, b = json.loads(chosen_json), json.loads(other_json)
    beta = b.get(BUDGET_PARAM)
    if not step_params or not isinstance(beta, int | float) or isinstance(beta, bool):
        return None
    rest = {k for k in set(a) | set(b) if k != BUDGET_PARAM and k not in step_params}
    if any(a.get(k) != b.get(k) for k in rest):
        return None
    parts = []
    for k in step_params:
        if a.get(k) == b.get(k):
            continue
        if isinstance(b.get(k), bool):
            parts.append("signed" if b[k] else "unsigned")
        else:
            parts.append(f"γ {b.get(k):g}" if isinstance(b.get(k), int | float) else f"{k} {b.get(k)}")
    return (float(beta), ", ".join(parts)) if parts else None


def step_off_defaults(method: str, params_json: str) -> str:
    """The step variant ("signed", "γ 1") a parameter set runs against its defense's own declared defaults of
    `STEP_PARAMS` (its `Param` defaults); "" where it runs them, for a parameter the set does not record, or for a
    defense without step parameters. Names a row whose block has no run at the table's step (a gray-box cell run
    with signed HINT only) by the step it ran, not as if it were the table's."""
    names = STEP_PARAMS.get(method, ())
    if not names:
        return ""
    from ...defenses import DEFENSES

    try:
        declared = {p.name: p.default for p in DEFENSES.get(method).PARAMS}
        params = json.loads(params_json)
    except Exception:  # a defense this version does not have, or parameters it cannot read: no opinion
        return ""
    base = dict(params) | {k: declared[k] for k in names if k in params and k in declared
                           and isinstance(declared[k], bool | int | float)}
    variant = step_variant(method, json.dumps(base), params_json)
    return variant[1] if variant else ""


def choose_parameters(sdf: pd.DataFrame, notes: list, budgets: bool = False,
                      see: str = "see Table IV / plain `report`") -> dict[str, pd.DataFrame]:
    """Per method, the rows of its table parameter set (`primary`); a note for every run left out. With `budgets`
    (Table III), the runs of a method that differ from its chosen set in β alone get rows of their own, keyed
    `budget_key(method, β)` and placed after the method's (`with_budget_rows`): a defense at the attack's budget
    beside the paper's (issue 80); so do runs that differ in the update rule's `STEP_PARAMS` (and possibly β),
    keyed `budget_key(method, β, step)`."""
    chosen = {}
    for m in sorted(set(sdf.method)):
        fixed = HINT_PAPER if m == "hint" else None
        chosen[m], left = primary(sdf, m, fixed)
        anchored_off_paper = False
        if budgets and not len(chosen[m]) and fixed and BUDGET_PARAM in fixed:
            # no run at the paper's β: the set at the paper's other values (r) anchors the rows, shown by its β
            chosen[m], left = primary(sdf, m, {k: v for k, v in fixed.items() if k != BUDGET_PARAM})
            anchored_off_paper = len(chosen[m]) > 0
        if len(chosen[m]) and not chosen[m].default_params.any() and not anchored_off_paper:
            params = chosen[m].params_json.iloc[0]
            notes.append(f"{method_label(m)} is shown from records that name none of its parameters (a version "
                         "whose defaults this one cannot check)" if params == "{}" else
                         f"{method_label(m)} is shown with parameters other than its defaults (or from a version "
                         f"whose defaults this one cannot check): {params}")
        if budgets and len(chosen[m]) and chosen[m].params_json.nunique() == 1:
            for params_json, rows in sorted(left.groupby("params_json"), key=lambda g: g[0]):
                beta = only_budget_differs(chosen[m].params_json.iloc[0], params_json)
                variant = (beta, "") if beta is not None else step_variant(m, chosen[m].params_json.iloc[0],
                                                                           params_json)
                if variant is not None:
                    chosen[budget_key(m, *variant)] = rows
                    left = left.drop(rows.index)
        notes.append(left_out_note(m, chosen[m], left, see))
        betas = chosen[m].beta.dropna().unique() if budgets and len(chosen[m]) else []
        if anchored_off_paper and len(betas) == 1:  # a budget row of its own; the paper's row stays empty
            step = step_off_defaults(m, chosen[m].params_json.iloc[0])
            chosen[budget_key(m, float(betas[0]), step)], chosen[m] = chosen[m], chosen[m].iloc[0:0]
    return chosen


def with_budget_rows(methods: list[str], chosen: dict) -> list[str]:
    """`methods` with each method's budget rows (`choose_parameters(budgets=True)`) after it, by β."""
    out = []
    for m in methods:
        extra = [k for k in chosen if split_budget_key(k)[0] == m and split_budget_key(k)[1] is not None]
        rows = chosen.get(m)
        if not extra or (rows is not None and len(rows)):  # a method shown only at another β has no plain row
            out.append(m)
        out += sorted(extra, key=lambda k: (split_budget_key(k)[1], budget_step(k)))
    return out


def budget_row_labels(methods: list[str], chosen: dict) -> dict[str, str]:
    """Row labels where a method has budget rows (`records.choose_parameters(budgets=True)`): every row of that
    method names its β ("HINT (β 0.062)", "HINT (β 0.3)"), so a reader sees which budget each row used."""
    bases = {split_budget_key(m)[0] for m in methods if split_budget_key(m)[1] is not None}
    labels = {}
    for m in methods:
        base, beta = split_budget_key(m)
        if base not in bases:
            continue
        beta = beta if beta is not None else row_budget(chosen.get(m))
        step = budget_step(m)
        labels[m] = (f"{method_label(base)} (β {beta:g}{', ' + step if step else ''})" if beta is not None
                     else method_label(base))
    return labels


def row_budget(rows: pd.DataFrame | None) -> float | None:
    """The β of a cell's runs where they share one (a defense with a budget), else None."""
    if rows is None or "beta" not in rows or not len(rows):
        return None
    betas = rows.beta.dropna().unique()
    return float(betas[0]) if len(betas) == 1 else None


def left_out_note(method: str, chosen: pd.DataFrame, left: pd.DataFrame,
                  see: str = "see Table IV / plain `report`") -> str | None:
    if left.empty:
        return None
    ref = chosen.params_json.iloc[0] if len(chosen) else "{}"
    variants = "; ".join(sorted(variant_text(ref, p) for p in left.params_json.unique()))
    return f"not shown: {len(left)} run(s) of {method} with other parameters ({variants}); {see}"


# --- a report without a single record -------------------------------------------------------------------------

def assert_records(records: list[dict], runs, skipped: int = 0) -> None:
    """Refuse (exit 2) a report without a single record to show; `runs`: where the records were read (a
    workspace's runs/ or a packed file); `skipped`: the record files `RunStore.all()` skipped (named on stderr
    before this error)."""
    if records:
        return
    if skipped:
        raise PoisonbenchError(f"no usable run records under {runs}: all {skipped} record file(s) there "
                               "were skipped (each is named above, with why)")
    raise PoisonbenchError(f"no run records found under {runs}; run `poisonbench defend` first "
                           "or pass --results DIR")
