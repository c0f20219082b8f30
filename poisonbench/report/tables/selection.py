"""Which runs a table cell shows: the filters of `report`, one PoisonSet generation per mix, the newest run per
trial and seed (docs/metrics.md, "Report and tables")."""

from __future__ import annotations

import json

import pandas as pd

from .constants import PAPER_METHODS, PAPER_MIX


def trained_on(row, poison_sets: str) -> bool:
    """Whether an untargeted run used the PoisonSets `poison_sets` ("attack=id,…", as `defend --poisons`) and the
    mix's defaults for the other attacks. Naming a default PoisonSet selects the runs on it, as `defend` treats
    such a choice as no choice."""
    pairs = lambda text: set(filter(None, text.split(",")))  # noqa: E731
    given = pairs(poison_sets)
    return given <= pairs(row.poison_ids) and pairs(row.poison_sets) <= given


def one_poison_generation(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Never pool runs trained on different PoisonSets of the same mix (e.g. after an attack's default changed):
    per dataset / model / recipe / mix keep the newest generation of poison ids (and ε): the one of the most
    recently finished run, i.e. the current defaults once any run has used them; a note counts the rest."""
    keep = pd.Series(True, index=df.index)
    notes = []
    untargeted_rows = df[df.kind == "untargeted"]
    by = ["dataset", "dataset_fingerprint", "model", "recipe_json", "init", "mix"]
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


def craft_notes(shown: pd.DataFrame) -> list[str]:
    """Notes when the untargeted runs shown trained on several crafts of the same PoisonSets, or beside runs whose
    record names no craft: the poison ids hash the crafting inputs only, and other code, another CPU kind or torch
    may round a craft differently (the records' `poison_tensors`, written from session 12 on). The crafts are the
    same attack, so cells pool them as they pool code versions; `--paired` pairs only runs on the same craft, and a
    run that names none with any (`cells.paired_stat`)."""
    notes = []
    untargeted_rows = shown[shown.kind == "untargeted"]
    for (dataset, mix, _), group in untargeted_rows.groupby(["dataset", "mix", "poisons_json"]):
        named = group[group.poison_tensors_json != ""]
        crafts = [json.loads(t) for t in named.poison_tensors_json.unique()]
        if len(crafts) > 1:
            differ = sorted({a for c in crafts for a in c if len({d.get(a) for d in crafts}) > 1})
            notes.append(f"{len(named)} {dataset} run(s) shown of the mix {mix} trained on {len(crafts)} crafts of "
                         f"the same PoisonSets: same poison ids, other tensors ({', '.join(differ)} differ; the "
                         "records' poison_tensors), e.g. crafted by other code, on another CPU kind or torch; "
                         "cells pool them, paired columns pair only runs on the same craft")
        if crafts and len(named) < len(group):
            notes.append(f"{len(group) - len(named)} {dataset} run(s) shown of the mix {mix} name no craft of their "
                         f"PoisonSets (records before session 12), beside {len(named)} that do: they may have "
                         "trained on another craft of the same poison ids, and paired columns pair them as if not")
    return notes


# what makes two runs the same configuration (one cell) apart from the trial; `trial` last
CONFIGURATION = ["dataset", "dataset_fingerprint", "model", "recipe_json", "init", "threat", "head_bn", "kind",
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
