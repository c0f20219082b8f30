"""`report table 3 --versus ROW` (issue 80: a defense against its control, HINT against each baseline): every row
paired with the named row on the same targets instead of W/o Defense, the counts and the test the same as a paired
computation made here from the outcomes (saved, new, McNemar's exact p from scipy's binomial test, Newcombe's
interval from the stats module `--paired` uses); the row named by method or by label; a name that is no row, an
empty one, or another table refused in one line."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy.stats import binomtest

from poisonbench import api
from poisonbench.core.errors import PoisonbenchError
from poisonbench.experiment.records import RunStore
from poisonbench.report import tables
from poisonbench.report.tables.power import detectable_note
from poisonbench.report.tables.stats import newcombe_paired
from tests.report_records import hint_params
from tests.test_table3_budgets_objectives import EPS, friends, run

N = 14
# per method, the trials the attack hits (W/o Defense hits 0-10; FRIENDS 0-8 and 12; HINT at β = ε 7-10 and 13)
HITS = {"none": set(range(11)), "friends": set(range(9)) | {12}, "hint": {7, 8, 9, 10, 13}}


def records() -> list[dict]:
    params = {"none": None, "friends": friends(), "hint": hint_params(beta=EPS)}
    return [run(m, t, t in HITS[m], params[m]) for m in HITS for t in range(N)]


def expected(first: str, second: str) -> dict:
    """`first`'s ASR minus `second`'s on the N targets, computed here: saved = hit by `second` only."""
    both = len(HITS[first] & HITS[second])
    saved = len(HITS[second] - HITS[first])
    new = len(HITS[first] - HITS[second])
    p = binomtest(min(saved, new), saved + new, 0.5).pvalue if saved + new else 1.0
    lo, hi = newcombe_paired(both, new, saved, N - both - saved - new)
    return {"paired_targets": N, "paired_saved": saved, "paired_new": new,
            "paired_diff": round(100 * (new - saved) / N, 2), "paired_p": p, "paired_low": 100 * lo,
            "paired_high": 100 * hi}


def cells(table: tables.Table) -> dict[str, dict]:
    return {d["method"]: d for d in table.data if d["attack"] == "fc"}


@pytest.mark.parametrize("versus", ["friends", "FRIENDS", " Friends  "])
def test_every_row_is_paired_with_the_named_row_as_computed_here(versus):
    table = tables.build("3", records(), tables.Options(trials=N, versus=versus), dataset="fashion-mnist")
    got = cells(table)
    for method in ("none", "hint"):
        want = expected(method, "friends")
        row = got[method]
        assert {k: row[k] for k in ("paired_targets", "paired_saved", "paired_new")} == \
            {k: want[k] for k in ("paired_targets", "paired_saved", "paired_new")}, method
        assert row["paired_diff"] == pytest.approx(want["paired_diff"], abs=0.01)
        assert row["paired_p"] == pytest.approx(want["paired_p"], abs=1e-6)
        assert (row["paired_low"], row["paired_high"]) == (pytest.approx(want["paired_low"], abs=0.01),
                                                           pytest.approx(want["paired_high"], abs=0.01))
        assert row["paired_with"] == "FRIENDS"
    assert got["friends"]["paired_targets"] == 0 and got["friends"]["paired_with"] == "FRIENDS"
    (block,) = table.blocks
    assert [r[1].text for r in block.rows].count("vs FRIENDS") == 2  # none's and HINT's; not its own
    text = "\n".join(block.notes)
    assert ("vs FRIENDS: the row's ASR minus FRIENDS's on the same targets (runs of the same "
            "trial, seed and PoisonSets), with Newcombe's 95 % interval for paired proportions; saved: targets the "
            "attack hit with FRIENDS and missed with the row, new: the reverse; p: McNemar's exact test. "
            "A row separates from FRIENDS where the interval excludes 0 and p < 0.05 (on a few targets "
            "the interval, an asymptotic one, can exclude 0 where the exact test does not)") in text
    assert f"FC-mean: {detectable_note(N, 10, 'FRIENDS')}" in text


def test_versus_none_is_the_paired_table_and_a_row_by_its_label():
    plain = tables.build("3", records(), tables.Options(trials=N, paired=True), dataset="fashion-mnist")
    for versus in ("none", "W/o Defense", "w/o defense"):
        table = tables.build("3", records(), tables.Options(trials=N, versus=versus), dataset="fashion-mnist")
        assert tables.render(table, "md") == tables.render(plain, "md")
        assert table.data == plain.data
    assert ("vs W/o: the defense's ASR minus W/o Defense's on the same targets (runs of the same trial, seed and "
            "PoisonSets), with Newcombe's 95 % interval for paired proportions; saved: targets the attack hit without "
            "the defense and missed with it, new: the reverse; p: McNemar's exact test. A defense separates from W/o "
            "Defense where the interval excludes 0 and p < 0.05 (on a few targets the interval, an asymptotic one, "
            "can exclude 0 where the exact test does not)") in plain.blocks[0].notes
    hint = tables.build("3", records(), tables.Options(trials=N, versus="hint (beta 0.3,  SIGNED)"),
                        dataset="fashion-mnist")
    want = expected("none", "hint")
    assert (cells(hint)["none"]["paired_saved"], cells(hint)["none"]["paired_new"]) == \
        (want["paired_saved"], want["paired_new"])


def test_the_detectable_note_names_the_baseline_row_and_its_hits():
    assert detectable_note(14, 5, "HINT (β 0.3)").startswith(
        "detectable: with 14 targets and HINT (β 0.3) at 5/14 (36 %), ")
    assert detectable_note(10, 0, "HINT") == ("detectable: with 10 targets and HINT at 0/10 (0 %), no hits with "
                                              "HINT: no drop in ASR can be detected (there is nothing to save)")
    assert detectable_note(10, 0) == ("detectable: with 10 targets and W/o Defense at 0/10 (0 %), no hits without a "
                                      "defense: no drop in ASR can be detected (there is nothing to save)")


def test_a_row_that_no_block_has_is_refused_naming_the_rows():
    with pytest.raises(PoisonbenchError) as raised:
        tables.build("3", records(), tables.Options(trials=N, versus="atda"), dataset="fashion-mnist")
    assert str(raised.value) == ("--versus 'atda': no row of Table III with runs is named that; rows: FRIENDS, "
                                 "HINT (β 0.3, signed), W/o Defense")


def test_a_block_without_the_row_says_so_and_pairs_nothing():
    """Two settings (two datasets): the named row ran in one only; the other block has no paired row and a note."""
    other = [run(m, t, t in HITS[m], None) for m in ("none",) for t in range(3)]
    for r in other:
        r["config"]["dataset"] = "mnist-5k"
        r["run_id"] = r["run_id"][::-1]
    table = tables.build("3", records() + other, tables.Options(trials=N, versus="friends"))
    by_setting = {b.title: b for b in table.blocks}
    (mnist,) = [b for title, b in by_setting.items() if title.startswith("mnist-5k")]
    assert "no paired row: this setting has no friends runs to pair with" in mnist.notes
    assert not any(r[1].text.startswith("vs ") for r in mnist.rows)


@pytest.mark.parametrize(("args", "message"), [
    (["table", "3", "--versus", "atda"], "--versus 'atda': no row of Table III with runs is named that; rows: "
                                         "FRIENDS, HINT (β 0.3, signed), W/o Defense"),
    (["table", "2", "--versus", "hint"], "--versus 'hint' names a row of Table III; it applies to `report table 3` "
                                         "only"),
    (["missing", "3", "--versus", "hint"], None),  # `report missing` has no such option
    (["--versus", "hint"], "--versus 'hint' names a row of Table III; it applies to `report table 3` only"),
    (["table", "3", "--versus", "   "], "--versus needs a value, got an empty one ('   '); give ROW (leave the "
                                        "option out for its default)"),
])
def test_bad_versus_is_one_line(cli, tmp_path, args, message):
    store = RunStore(tmp_path / "w")
    for r in records():
        store.put(r)
    code, out, err = cli("report", *args, "--results", tmp_path / "w")
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    if message is not None:
        assert lines[0] == f"Error: {message}"


def test_the_cli_and_the_api_give_the_pairs_of_the_builder(cli, tmp_path):
    store = RunStore(tmp_path / "w")
    for r in records():
        store.put(r)
    code, out, err = cli("report", "table", "3", "--versus", "friends", "--format", "json", "--results", tmp_path / "w")
    assert code == 0, err
    import json

    rows = {r["method"]: r for r in json.loads(out)["rows"] if r["attack"] == "fc"}
    frame = api.report(str(tmp_path / "w"), table=3, versus="friends")
    by_method = {r["method"]: r for r in frame.to_dict("records") if r["attack"] == "fc"}
    for method in ("none", "hint"):
        want = expected(method, "friends")
        assert (rows[method]["paired_saved"], rows[method]["paired_new"]) == (want["paired_saved"], want["paired_new"])
        assert (by_method[method]["paired_saved"], by_method[method]["paired_new"]) == \
            (want["paired_saved"], want["paired_new"])
        assert rows[method]["paired_with"] == by_method[method]["paired_with"] == "FRIENDS"
    assert isinstance(frame, pd.DataFrame)
    with pytest.raises(PoisonbenchError, match=r"^--versus 'hint' names a row of Table III; it applies to "):
        api.report(str(tmp_path / "w"), table=2, versus="hint")
    with pytest.raises(PoisonbenchError) as raised:
        api.report(str(tmp_path / "w"), table=3, versus=" ")
    assert str(raised.value) == ("--versus is empty; name a row of Table III: a method (none, hint, friends, ...) or "
                                 "a row's label as the table shows it ('HINT (β 0.3, signed)')")


def test_detectable_notes_count_only_known_outcomes_per_attack_under_its_label_whole():
    """`builders.detectable_notes`: per attack column, n and hits over the targets whose outcome is known (None and
    NaN left out), the column under its table label (FC-mean, FC-per-poison; an unknown attack by its own name), a
    column without a known outcome left out, and the baseline named as given or "W/o Defense" by default (the
    survivors of the mutmut run of 2026-11-29: the default name, the None/NaN filter, the label lookup)."""
    from poisonbench.report.tables.builders import detectable_notes

    nan = float("nan")
    baseline = pd.DataFrame({
        "attack": ["fc"] * 6 + ["fc-pp"] * 4 + ["plug"] * 3 + ["gm"] * 2,
        "success": [True, False, None, True, nan, True, False, False, True, nan, True, True, False, None, nan],
    })
    attacks = ["fc", "fc-pp", "plug", "gm", "bp"]
    assert detectable_notes(baseline, attacks) == [
        f"FC-mean: {detectable_note(4, 3, 'W/o Defense')}",
        f"FC-per-poison: {detectable_note(3, 1, 'W/o Defense')}",
        f"plug: {detectable_note(3, 2, 'W/o Defense')}",
    ]
    assert detectable_notes(baseline, ["fc-pp"], "the control") == [
        f"FC-per-poison: {detectable_note(3, 1, 'the control')}"]
    assert detectable_note(3, 1, "the control") != detectable_note(3, 1, "W/o Defense")
