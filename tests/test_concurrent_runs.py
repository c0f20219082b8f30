"""Several runs at once on one device (`sweep run --workers K`, issue 81): a run's record is the same whatever K is.
Its numbers depend on the device and, on the CPU, on the run's intra-op threads (`--threads`, in `env.threads`),
never on how many runs share the device. The grid's runs are trained once one at a time and once two at a time,
each with one thread, under `--deterministic on`, and every field of every record is compared: only the fields
that time the run may differ (`TIMED`), and a HINT run is among them (its influence stage reads many
multithreaded reductions, the first to differ where threads differ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonbench.cli.main import main

from .conftest import write_npz

GRID = ('[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\nattacks = [["durp"]]\n'
        'method = ["none", "hint"]\npoison_ratio = [0.5]\n')
# two runs (and the PoisonSet they share): `--workers 2` trains them at once; each step is a process whose start-up
# is most of its time, so the grid has no more runs than the two it needs (four, before 2026-11-30, took 70 s)
# wall-clock and memory figures, and the time a record was written: the only fields two runs of one spec may differ
# in (a prefix ending in "." covers the fields under it; HINT's per-update figures: each update's own seconds)
TIMED_PREFIXES = ("cost.",)
TIMED_FIELDS = ("finished_at", "defense.selection.seconds", "defense.selection.ihvp.seconds")
TIMED_UNDER = ("defense.updates.",)  # ... where the field's own name is "seconds"


def flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def timed(field: str) -> bool:
    return (field.startswith(TIMED_PREFIXES) or field in TIMED_FIELDS
            or field.startswith(TIMED_UNDER) and field.rsplit(".", 1)[-1] == "seconds")


def sweep(grid: Path, results: Path, *args: str) -> dict[str, dict]:
    try:
        main(["sweep", "run", str(grid), "--results", str(results), "--deterministic", "on", "--no-report", *args])
    except SystemExit as exc:
        assert not exc.code, f"sweep {args} exited {exc.code}"
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    grid = root / "grid.toml"
    grid.write_text(GRID.format(npz=write_npz(root)))
    with pytest.MonkeyPatch.context() as mp:
        # the checkout is not under test: a commit landing between the two sweeps (a shared working tree) would
        # change the records' git_commit; with no repository to read, both sweeps' steps record none
        mp.setenv("GIT_DIR", str(root / "no-git-here"))
        one = sweep(grid, root / "one", "--workers", "1", "--threads", "1")
        two = sweep(grid, root / "two", "--workers", "2", "--threads", "1")
    return one, two


def test_two_runs_at_once_give_the_records_of_one_at_a_time(both):
    one, two = both
    assert len(one) == 2 and sorted(one) == sorted(two)  # the same run ids
    assert {r["config"]["defense"]["method"] for r in one.values()} == {"none", "hint"}
    for run_id in one:
        a, b = flat(one[run_id]), flat(two[run_id])
        assert set(a) == set(b), run_id
        differ = sorted(k for k in a if a[k] != b[k])
        assert [k for k in differ if not timed(k)] == [], (run_id, differ)
        assert a["env.threads"] == b["env.threads"] == 1


def test_the_comparison_sees_a_difference_in_what_was_trained(both):
    """The check above can fail: a changed loss, accuracy, seed or run id is not a timed field."""
    one, _ = both
    record = flat(next(iter(one.values())))
    for field in ("history.0.train_loss", "metrics.test_acc", "config.seed", "run_id", "metrics.train_loss"):
        assert field in record and not timed(field)
    assert timed("cost.seconds") and timed("defense.selection.seconds") and timed("finished_at")
    assert timed("defense.updates.0.seconds") and not timed("defense.updates.0.changed")
    assert not timed("defense.selection.count") and not timed("env.threads")
