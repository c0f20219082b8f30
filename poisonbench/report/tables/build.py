"""Builds a numbered table from run records: the records' selection, the builder, the version note."""

from __future__ import annotations

from ...core.errors import unknown_choice
from .cells import Options, Table
from .constants import ROMAN, TABLES
from .rows import frame
from .selection import apply_filters, cell_records, craft_notes
from .table2 import table2
from .table3 import table3
from .table4 import table4
from .table5 import table5

BUILDERS = {"2": table2, "3": table3, "4": table4, "5": table5}


def check_table(number: str) -> str:
    """`number` as one of TABLES ("2".."5", or II..V in any case); an unknown one is refused as given."""
    name = str(number).strip().upper()
    name = {v: k for k, v in ROMAN.items()}.get(name, name)
    if name not in TABLES:
        raise unknown_choice("table", number, TABLES)
    return name


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
    table.notes += craft_notes(shown)
    return table
