"""The notes' numbers, recomputed from the packed records: each claim of experiments/claims.toml names a note, a
snippet of it holding a number, and a query over a packed file of experiments/records/ (or a sweep grid) that gives
that number. A test per claim recomputes the value and checks that the note still says it, so editing a number in a
note, or a record in a pack, fails here with both values. The query language is written down in the table's header
comment; docs/testing.md says how to add a claim."""

from __future__ import annotations

import math
import re
import statistics
from functools import cache
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "experiments" / "claims.toml"
RECORDS = ROOT / "experiments" / "records"

KEYS = {"id", "note", "text", "value", "pack", "grid", "of", "where", "aggregate", "field", "scale", "digits", "n"}
REQUIRED = ("id", "note", "text", "value", "aggregate")
AGGREGATES = ("count", "successes", "mean", "mean_std")
NEEDS_FIELD = ("mean", "mean_std")


def load_claims() -> list[dict]:
    return tomllib.loads(TABLE.read_text())["claim"]


CLAIMS = load_claims()


# ----------------------------------------------------------------------------------------------- the query

@cache
def pack(name: str) -> tuple[list[dict], list[dict]]:
    """(run records, PoisonSet manifests) of experiments/records/NAME, decompressed once per test process."""
    from poisonbench.experiment.packed_records import read_pack

    contents = read_pack(RECORDS / name)
    return [r for _, r in contents.runs], [m for _, m in contents.manifests]


@cache
def grid_run_count(path: str) -> int:
    from poisonbench.sweeps.grid import load_grid

    return len(load_grid(str(ROOT / path)).runs)


def lookup(obj, path: str):
    """The value at a dotted path (`config.defense.method`); None where a key is absent or null."""
    for key in path.split("."):
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj


def same(value, wanted) -> bool:
    if wanted == "null":
        return value is None
    if isinstance(wanted, bool) or isinstance(value, bool):
        return value is wanted
    if isinstance(wanted, int | float) and isinstance(value, int | float):
        return math.isclose(value, wanted, rel_tol=1e-4, abs_tol=1e-12)
    return value == wanted


def matches(record: dict, where: dict) -> bool:
    """Every filter holds: the field equals the value, or one of the values where the value is an array."""
    return all(any(same(lookup(record, path), w) for w in (wanted if isinstance(wanted, list) else [wanted]))
               for path, wanted in where.items())


def number(obj: dict, field: str) -> float:
    """The field's number; a list of numbers reads as its smallest (a brew's `attack_info.restart_losses`: its best
    restart's loss)."""
    value = lookup(obj, field)
    value = min(value) if isinstance(value, list) and value else value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AssertionError(f"{field} is {value!r} in a matched record: not a number")
    return value


def evaluate(claim: dict) -> tuple[str, int]:
    """(the value as the note prints it, how many records or runs the query matched)."""
    aggregate = claim["aggregate"]
    if "grid" in claim:
        n = grid_run_count(claim["grid"])
        return str(n), n
    runs, manifests = pack(claim["pack"])
    matched = [obj for obj in (manifests if claim.get("of", "runs") == "manifests" else runs)
               if matches(obj, claim.get("where", {}))]
    n = len(matched)
    if aggregate == "count":
        return str(n), n
    assert matched, f"claim {claim['id']!r}: its query matches no record of {claim['pack']}"
    if aggregate == "successes":
        return f"{sum(bool(lookup(r, 'metrics.attack_success')) for r in matched)}/{n}", n
    values = [number(obj, claim["field"]) * claim.get("scale", 1) for obj in matched]
    digits = claim.get("digits", 2)
    mean = f"{statistics.mean(values):.{digits}f}"
    if aggregate == "mean":
        return mean, n
    return f"{mean} ± {statistics.stdev(values):.{digits}f}", n  # mean_std: the sample std, as `report` prints it


# ----------------------------------------------------------------------------------------------- the note

@cache
def note_text(note: str) -> str:
    return (ROOT / note).read_text()


def what_the_note_says(claim: dict) -> str | None:
    """The note's number where the claim's snippet stands with another number in place of `value`: the text around
    the value's last occurrence in the snippet, matched with anything between (None without text before it)."""
    text, value = claim["text"], claim["value"]
    at = text.rfind(value)
    before, after = text[:at], text[at + len(value):]
    if not before:
        return None
    middle = r"(.+?)" if after else r"([^\s|*()]+)"
    found = re.search(re.escape(before) + middle + re.escape(after), note_text(claim["note"]))
    return found.group(1) if found else None


# ----------------------------------------------------------------------------------------------- the tests

def test_the_claims_table_is_well_formed():
    ids = [c.get("id") for c in CLAIMS]
    assert len(ids) == len(set(ids)), f"claim ids twice: {sorted({i for i in ids if ids.count(i) > 1})}"
    for c in CLAIMS:
        where = f"claim {c.get('id')!r}"
        assert not set(c) - KEYS, f"{where}: unknown keys {sorted(set(c) - KEYS)}; valid: {sorted(KEYS)}"
        assert all(k in c for k in REQUIRED), f"{where}: needs {', '.join(REQUIRED)}"
        assert ("pack" in c) != ("grid" in c), f"{where}: names a pack or a grid, one of them"
        assert c["aggregate"] in AGGREGATES, f"{where}: aggregate {c['aggregate']!r}; valid: {AGGREGATES}"
        assert "grid" not in c or c["aggregate"] == "count", f"{where}: a grid has only a run count"
        assert (c["aggregate"] in NEEDS_FIELD) == ("field" in c), f"{where}: field goes with {NEEDS_FIELD} only"
        assert c.get("of", "runs") in ("runs", "manifests"), f"{where}: of is runs or manifests"
        assert c["value"] in c["text"], f"{where}: its text {c['text']!r} does not hold its value {c['value']!r}"
        assert (ROOT / c["note"]).is_file(), f"{where}: no note {c['note']}"


@pytest.mark.parametrize("claim", CLAIMS, ids=[c["id"] for c in CLAIMS])
def test_the_records_give_the_number(claim):
    got, n = evaluate(claim)
    source = claim.get("pack") or claim.get("grid")
    assert got == claim["value"], (f"{claim['note']}, claim {claim['id']!r}: the records give {got} ({source}, "
                                   f"{n} matched), the note and the claims table say {claim['value']}")
    if "n" in claim:
        assert n == claim["n"], (f"{claim['note']}, claim {claim['id']!r}: the query matches {n} records of "
                                 f"{source}, the claim expects {claim['n']}")


@pytest.mark.parametrize("claim", CLAIMS, ids=[c["id"] for c in CLAIMS])
def test_the_note_says_the_number(claim):
    if claim["text"] in note_text(claim["note"]):
        return
    says = what_the_note_says(claim)
    if says is not None:
        pytest.fail(f"{claim['note']}, claim {claim['id']!r}: the note says {says} where the records give "
                    f"{claim['value']} (experiments/claims.toml: {claim['text']!r})")
    pytest.fail(f"{claim['note']}, claim {claim['id']!r}: the note no longer holds {claim['text']!r} (the records "
                f"give {claim['value']}); edit the claim's text in experiments/claims.toml if only the words moved")
