"""Which records a report shows: its filters checked (a filter naming something that cannot exist is a typo, not an
empty selection), put in normal form, and turned into the tables' filters (`tables.apply_filters`); and the plain
summary of the records they select. The library behind `poisonbench report`'s filters and `poisonbench.api.report`.
"""

from __future__ import annotations

import pandas as pd

from ..core.errors import PoisonbenchError, unknown_choice

__all__ = ["check_filters", "check_not_empty", "normal_selection", "plain_summary", "record_filters"]


def check_not_empty(**flags: str | None) -> None:
    """{flag: value}: an empty filter would silently select everything; refuse it."""
    empty = [flag for flag, v in flags.items() if v is not None and not v.strip()]
    if empty:
        raise PoisonbenchError(f"{empty[0]} is empty; omit it to keep every value")


def check_filters(dataset: str | None, methods: list[str] | None, recipe: str | None, model: str | None,
                  epochs: int | None, attacks: str | None) -> None:
    """A filter naming something that cannot exist is a typo, not an empty selection: refuse it."""
    from ..data import DATASETS, dataset_names
    from ..defenses import DEFENSES
    from ..engine.models import MODELS
    from ..engine.recipes import recipe_names
    from ..experiment.scenarios import check_attacks
    from .tables import PAPER_METHODS

    if dataset is not None and dataset not in DATASETS and not dataset.endswith(".npz"):
        raise unknown_choice("dataset", dataset, dataset_names())
    known_methods = sorted(set(DEFENSES.names()) | set(PAPER_METHODS))
    for m in methods or []:
        if m not in known_methods:
            raise unknown_choice("method", m, known_methods)
    if recipe is not None and recipe not in recipe_names():
        raise unknown_choice("recipe", recipe, recipe_names())
    if model is not None:
        MODELS.get(model)
    if epochs is not None and epochs <= 0:
        raise PoisonbenchError(f"--epochs must be a positive integer, got {epochs}")
    if attacks and attacks != "any":
        check_attacks(attacks.split(","))  # the check `defend --attacks` gets


def normal_selection(*, dataset: str | None, method: str | None, recipe: str | None, model: str | None,
                     epochs: int | None, attacks: str | None,
                     poisons: str | None) -> tuple[list[str] | None, str | None, str | None]:
    """The filters checked (`check_filters`) and in normal form: (methods, the attack mix, the PoisonSet choice)."""
    from ..experiment.scenarios import check_poison_sets, parse_poison_sets
    from . import tables

    methods = [m.strip() for m in method.split(",") if m.strip()] if method else None
    attacks = ",".join(a.strip() for a in attacks.split(",")) if attacks else attacks  # "pgd, dap" = "pgd,dap"
    check_filters(dataset, methods, recipe, model, epochs, attacks)
    chosen = poisons
    if poisons not in (None, "any"):
        pairs = parse_poison_sets(poisons)
        if attacks != "any":  # --missing would print commands that `defend` refuses
            check_poison_sets(pairs, (attacks or tables.PAPER_MIX).split(","))
        chosen = tables.poison_sets_text(pairs)
    return methods, attacks, chosen


def record_filters(*, dataset: str | None, model: str | None, recipe: str | None, epochs: int | None,
                   methods: list[str] | None, attacks: str | None, chosen: str | None, matrix: bool = False,
                   run: str | None = None) -> dict:
    """The tables' filters (`tables.apply_filters`) of a normal selection (`normal_selection`). A table keeps the
    paper's mix and each mix's default PoisonSets unless told otherwise; the matrix reads every mix (its cells:
    single attacks; its --attacks picks the columns); --run names one record, which no default may hide."""
    from ..data import record_name
    from . import tables

    return {"dataset": record_name(dataset) if dataset else None,
            "model": model, "recipe": recipe, "epochs": epochs, "methods": methods,
            "mix": "any" if matrix else attacks or ("any" if run is not None else tables.PAPER_MIX),
            "poison_sets": ("any" if run is not None else "") if chosen is None else chosen}


def plain_summary(records: list[dict], filters: dict, attacks: str | None) -> pd.DataFrame:
    """The plain report (`poisonbench report`): test accuracy mean ± sample std per configuration
    (`aggregate.load_summary`); unlike the tables, every attack mix and PoisonSet choice unless --attacks /
    --poisons name one. Its `attrs` hold `not_shown` and `craft_notes` (aggregate.summarize, load_summary)."""
    from .aggregate import load_summary

    return load_summary(records, **{**filters, "mix": attacks or "any", "poison_sets": filters["poison_sets"]
                                    or "any"})
