"""The privacy note under a table's DP-SGD cells (poisonbench/report/tables/privacy.py), each case a whole note: the
21 survivors of its 2026-11-29 mutmut re-run (docs/testing.md) triaged. Each test names the mutants it kills; the
equivalent ones are listed in docs/testing.md with the reason. Records are `tests.report_records.make_record`'s,
their accounting the real `DpSgd.accounting` where the accountant can write it, built by hand where only another
writer (an older poisonbench, a plugin's accountant) could."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from poisonbench.defenses import build_defense
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.report.tables.privacy import accounting_of, caveat, compact, privacy_notes
from poisonbench.report.tables.records import frame
from tests.report_records import make_record

from .test_dpsgd import context, mlp, toy_batch

HEAD = "dpsgd (clip 1, noise_multiplier {}, sampling {}): ε = "
RULE = "at δ = min(1e-5, n^-1.1) = 1e-05 (RDP, dp-accounting; q 0.25"
SHUFFLED = "shuffled batches: the Poisson figure, not a proven bound (Chua et al. 2024)"
HOLDS = "Poisson-sampled batches: the RDP bound holds"


def accounting(sampling: str, sigma: float, steps: int) -> dict:
    """What `DpSgd.accounting` writes for 40 rows in batches of 10 (q 0.25) after `steps` steps."""
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=10)
    x, y = toy_batch(40)
    defense = build_defense("dpsgd", "mnist", recipe, sampling=sampling, noise_multiplier=sigma)
    defense.prepare(context(mlp(), x, y, 7, recipe))
    return defense.accounting(steps)


def run(acc: dict | None, trial: int = 0, method: str = "dpsgd", **params) -> dict:
    record = make_record(method=method, acc=0.5, trial=trial, params=None if method != "dpsgd" else {
        "clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson", "delta": None, **params})
    if acc is not None:
        record["defense"] = {"accounting": acc}
    return record


@pytest.fixture(scope="module")
def sigma1() -> dict:
    return accounting("poisson", 1.0, 4)


def sigma1_note(acc: dict, sampling: str = "poisson", tail: str = HOLDS) -> str:
    return (HEAD.format(1, sampling) + f"{acc['epsilon']:.3g} {RULE}, σ 1, 4 steps; PLD ε = "
            f"{acc['epsilon_pld']:.3g}) — {tail}")


# --- the PLD part at σ = 0 (ε is ∞ there, not "not computed") --------------------------------------------------

def test_at_sigma_0_both_epsilons_are_infinite_and_the_note_says_so():
    """σ 0 adds no noise: the accountant writes ε and the PLD ε null (∞), and the note says ∞ for both; it said
    "PLD ε not computed (σ < 0.3)", which was not so (4055bbf computes it below 0.3; at 0 it is ∞)."""
    acc = accounting("poisson", 0.0, 4)
    assert (acc["epsilon"], acc["epsilon_pld"], acc["epsilon_pld_note"]) == (None, None, None)
    assert privacy_notes(frame([run(acc, noise_multiplier=0.0)])) == [
        HEAD.format(0, "poisson") + f"∞ {RULE}, σ 0, 4 steps; PLD ε = ∞) — σ = 0: no noise"]


def test_the_pld_part_of_older_records_says_why_it_is_missing():
    """A record of 4b9e8a0 … 4055bbf at σ < 0.3 holds no PLD ε (its note says so): "not computed (σ < 0.3)"; one from
    since, computed at the coarse interval, shows its figure; in one setting with both, the figure and how many
    runs have none, and likewise a record from before the PLD accountant beside one with it."""
    now = accounting("poisson", 0.01, 4)
    assert now["epsilon_pld"] is not None and now["epsilon_pld_note"].startswith("PLD discretised")
    then = {**now, "epsilon_pld": None, "epsilon_pld_note": "PLD not computed: σ 0.01 < 0.3 (slow; the RDP ε "
            "already shows no useful privacy)"}
    head = HEAD.format(0.01, "poisson") + f"{now['epsilon']:.3g} {RULE}, σ 0.01, 4 steps; PLD ε "
    assert privacy_notes(frame([run(then, noise_multiplier=0.01)])) == [
        head + f"not computed (σ < 0.3)) — {HOLDS}"]
    assert privacy_notes(frame([run(now, noise_multiplier=0.01)])) == [
        head + f"= {now['epsilon_pld']:.3g}) — {HOLDS}"]
    assert privacy_notes(frame([run(then, 0, noise_multiplier=0.01), run(now, 1, noise_multiplier=0.01)])) == [
        head + f"= {now['epsilon_pld']:.3g}, not computed for 1 run (σ < 0.3)) — {HOLDS}"]
    infinite = {**now, "epsilon_pld": None}  # the coarse PLD at ∞ (its note names the interval): ∞, not "missing"
    assert privacy_notes(frame([run(infinite, noise_multiplier=0.01)])) == [head + f"= ∞) — {HOLDS}"]
    acc = accounting("poisson", 1.0, 4)
    before = {k: v for k, v in acc.items() if k not in ("epsilon_pld", "epsilon_pld_note")}
    assert privacy_notes(frame([run(acc, 0), run(before, 1)])) == [
        sigma1_note(acc).replace(f"PLD ε = {acc['epsilon_pld']:.3g}", f"PLD ε = {acc['epsilon_pld']:.3g}, not "
                                 "computed for 1 run (recorded before the PLD accountant)")]


# --- caveat ------------------------------------------------------------------------------------------------------

def test_a_record_that_is_no_guarantee_and_names_no_reason_says_not_a_guarantee(sigma1):
    """Poisson batches, no BatchNorm, σ 1, ε finite, and yet `guarantee` false (another accountant's record: one
    that does not claim the bound): the caveat is the fallback, whole. (Kills caveat mutmut_50, _51.)"""
    doubtful = {**sigma1, "guarantee": False}
    assert caveat(doubtful) == "not a guarantee"
    assert privacy_notes(frame([run(doubtful)])) == [sigma1_note(sigma1, tail="not a guarantee")]


def test_epsilon_infinite_at_a_nonzero_sigma_is_not_called_no_noise(sigma1):
    """ε null (∞) at σ 0.5 (an accountant that overflows; dp-accounting's RDP stays finite down to σ 1e-140) is
    not "σ = 0: no noise": that caveat needs both ε ∞ and σ 0. (Kills caveat mutmut_34, `or` for `and`.)"""
    overflowed = {**sigma1, "sampling": "shuffle", "noise_multiplier": 0.5, "epsilon": None, "epsilon_pld": None,
                  "guarantee": False}
    assert caveat(overflowed) == SHUFFLED
    assert privacy_notes(frame([run(overflowed, noise_multiplier=0.5, sampling="shuffle")])) == [
        HEAD.format(0.5, "shuffle") + f"∞ {RULE}, σ 0.5, 4 steps; PLD ε = ∞) — {SHUFFLED}"]


def test_no_step_at_sigma_0_spends_nothing_and_is_not_called_no_noise():
    """σ 0 and no step (the accountant's ε 0: nothing was released) is not the σ = 0 caveat, which explains an
    infinite ε: it needs ε null as well as σ 0. (Kills caveat mutmut_34, _35, _36, _37: the ε key misread.)"""
    acc = accounting("shuffle", 0.0, 0)
    assert (acc["epsilon"], acc["epsilon_pld"], acc["guarantee"]) == (0.0, 0.0, False)
    assert caveat(acc) == SHUFFLED
    assert privacy_notes(frame([run(acc, noise_multiplier=0.0, sampling="shuffle")])) == [
        HEAD.format(0, "shuffle") + f"0 {RULE}, σ 0, 0 steps; PLD ε = 0) — {SHUFFLED}"]


# --- privacy_notes: which rows, which groups ---------------------------------------------------------------------

def test_no_rows_or_no_accounting_column_is_no_note(sigma1):
    """None, an empty frame, and rows without the `accounting_json` column give no note (and no error). (Kills
    privacy_notes mutmut_2, _3.)"""
    rows = frame([run(sigma1)])
    assert privacy_notes(None) == []
    assert privacy_notes(rows.iloc[:0]) == []
    assert privacy_notes(rows.drop(columns=["accounting_json"])) == []


def test_a_run_without_accounting_before_one_with_it_leaves_its_note(sigma1):
    """The rows of a block in any order: a run without accounting (`none`) first does not end the notes. (Kills
    privacy_notes mutmut_13, `break` for the first `continue`.)"""
    assert privacy_notes(frame([run(None, method="none"), run(sigma1)])) == [sigma1_note(sigma1)]


def test_a_non_text_accounting_cell_reads_as_none(sigma1):
    """A cell pandas leaves NaN (a frame joined with one that has no such column) is no accounting, not an error.
    (Kills accounting_of mutmut_3, _4.)"""
    rows = frame([run(None, method="none"), run(sigma1)])
    rows["accounting_json"] = rows["accounting_json"].astype(object)
    rows.loc[rows.index[0], "accounting_json"] = math.nan
    assert accounting_of(next(rows.itertuples())) == {}
    assert privacy_notes(rows) == [sigma1_note(sigma1)]


def test_a_pre_accountant_setting_before_another_leaves_its_note(sigma1):
    """Two settings, the first recorded before the accountant (no δ): both notes, the first saying why it has no
    ε. (Kills privacy_notes mutmut_45, `break` for the second `continue`.)"""
    old = {"sampling": "shuffle", "noise_multiplier": 2.0}
    assert privacy_notes(frame([run(old, noise_multiplier=2.0), run(sigma1)])) == [
        "dpsgd (clip 1, noise_multiplier 2, sampling poisson): ε not computed (run recorded before poisonbench had "
        "a privacy accountant)", sigma1_note(sigma1)]


def test_runs_of_one_setting_whose_records_differ_in_sampling_get_a_note_each(sigma1):
    """Two runs of the same parameters whose records name different samplings (the default changed between
    versions: the parameters do not name it) are two notes, each with its own caveat, not one with the first's.
    (Kills privacy_notes mutmut_15, _16, _17: the sampling left out of the group's key.)"""
    shuffled = {**sigma1, "sampling": "shuffle", "guarantee": False}
    rows = frame([run(sigma1, 0), run(shuffled, 1)])
    assert rows["params_json"].nunique() == 1  # one parameter set for both
    assert privacy_notes(rows) == [sigma1_note(sigma1), sigma1_note(sigma1, tail=SHUFFLED)]


# --- compact -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params_json", "text"), [
    ("{not json", ""),  # mutmut_5: unreadable parameters are left out, not shown as junk
    ("{}", ""),  # mutmut_14: nothing set
    ('{"clip": null, "delta": null}', ""),  # mutmut_14: nothing set but nulls
    ("", ""),  # mutmut_3 is equivalent: json.loads("") raises ValueError, whose branch gives "" too
    ('{"clip": 1.0, "delta": null, "sampling": "poisson"}', "(clip 1, sampling poisson)"),
])
def test_compact_shows_the_parameters_set_or_nothing(params_json, text):
    assert compact(params_json) == text


def test_the_frame_keeps_the_columns_these_notes_read():
    """The notes read `method`, `params_json` and `accounting_json` from `frame`'s rows (an empty frame too)."""
    assert {"method", "params_json", "accounting_json"} <= set(frame([]).columns)
    assert isinstance(frame([]), pd.DataFrame)


def test_table_ii_notes_the_epsilon_of_its_dpsgd_runs_whole(sigma1):
    """Table II's block ends with the privacy note of the DP-SGD runs it shows (issue 82: builders.py's mutmut run
    found no test of Table II's note; the matrix and Table III had theirs)."""
    from poisonbench.report import tables

    recs = [run(sigma1, trial=t) for t in (0, 1)] + [run(None, trial=0, method="none")]
    (block,) = tables.build("2", recs, tables.Options(trials=2), mix="any").blocks
    assert block.notes[-1] == sigma1_note(sigma1)
    assert sum("dpsgd (clip" in n for n in block.notes) == 1
