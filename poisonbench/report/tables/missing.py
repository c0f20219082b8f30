"""`report missing N` (`report --table N --missing`): the `poisonbench defend` commands that would complete a
table."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

import pandas as pd

from .. import paper
from .builders import check_table
from .layout import BETA_GRID, HINT_PAPER, PAPER_METHODS, PAPER_MIX, R_GRID, RHOS, SENSITIVITY_RHO, Options, rho_text
from .records import (
    Setting,
    apply_filters,
    cell_records,
    frame,
    guess_family,
    in_setting,
    methods_of,
    primary,
    settings,
    untargeted,
)
from .stats import close


def available_methods() -> list[str]:
    from ...defenses import DEFENSES

    return DEFENSES.names()


RECIPE_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "momentum": "--momentum",
                "weight_decay": "--weight-decay", "augment": "--augment"}


def recipe_flags(s: Setting) -> list[str]:
    """`--recipe R` plus the overrides that rebuild exactly the setting's resolved recipe."""
    flags = ["--recipe", s.recipe]
    family = guess_family(s)
    if family is None:
        return flags
    from ...engine.recipes import RECIPES, resolve_recipe

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
        from ...engine.models import DEFAULT_MODEL

        if s.model and s.model != DEFAULT_MODEL.get(family or ""):
            parts += ["--model", s.model]
        for key, value in self.params:
            parts += [f"--{key}", f"{value:g}"]
        if base_seed:
            parts += ["--seed", str(base_seed)]
        if s.init:
            parts.append("--same-init")
        if s.precision:
            parts += ["--precision", s.precision]
        if s.threat and s.threat != "gray":
            parts += ["--threat", s.threat]
        if s.head_bn and s.head_bn != "train":
            parts += ["--head-bn", s.head_bn]
        if mix and mix != PAPER_MIX and self.rho > 0:
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
        from ...engine.models import DEFAULT_MODEL
        from ...engine.recipes import RECIPES

        family = paper.family_of(dataset)
        name = recipe or "paper"
        default_epochs = RECIPES[family][name].epochs if family and name in RECIPES[family] else 0
        ss.append(Setting(dataset, model or DEFAULT_MODEL.get(family or "", ""), name, epochs or default_epochs,
                          ""))
    return ss


def cell_rows(number: str, sdf: pd.DataFrame, method: str, rho: float, params: dict,
              columns: dict | None = None) -> pd.DataFrame:
    """The runs table `number` averages in the cell of `method` (+ HINT `params`) at `rho`, chosen as the table
    chooses them (`primary`): Table II picks one parameter set per method column over all ρ; Tables IV and V
    one per cell among the runs at their ρ. Runs of another parameter set (γ, schedule, ...) do not count.
    `columns` keeps Table II's column of each (method, params) for the column's other ρ (chosen once, not per ρ)."""
    if number == "2":
        columns = {} if columns is None else columns
        key = (method, tuple(sorted(params.items())))
        if key not in columns:
            columns[key] = primary(sdf, method, params or None)[0]
        return columns[key][close(columns[key].rho, rho)]
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
        columns: dict = {}  # Table II's column of each method, for its every ρ
        for m, rho, params in grid:
            rows = cell_rows(number, sdf, m, rho, dict(params), columns)
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
    if number == "matrix":
        return [], ["the matrix: `--missing` does not list its runs; `poisonbench sweep plan matrix-quick "
                    "--print-commands` does"]
    if number == "3":
        return [], ["Table III: `--missing` does not list targeted runs; `poisonbench sweep plan table3 "
                    "--print-commands` (or table3-quick) does, or run `poisonbench defend --attack gm|bp|fc --method M "
                    "--trials 5` (done trials are skipped)"]
    from ...data import record_name

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
    setting_rows: dict = {}  # a setting's runs, selected once for all its cells (per cell: a third of the time)
    for need in needs(number, df, opts, wanted, dataset, recipe, model, epochs):
        if need.have >= opts.trials or need.method not in available:
            continue
        if need.setting not in setting_rows:
            setting_rows[need.setting] = in_setting(df, need.setting) if need.setting.recipe_json else df.iloc[0:0]
        sdf = setting_rows[need.setting]
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
