"""Table III names what each row and column ran (issue 80): a perturbation defense at another β than its chosen set
gets a row of its own that says its β, beside the paper's; FC's two objectives (forest's mean-feature match and the
per-poison collision) are two columns, two names, in records, tables and the matrix, never one pooled "FC"."""

from __future__ import annotations

import pandas as pd
import pytest

from poisonbench.attacks import ATTACKS
from poisonbench.core.hashing import short_hash
from poisonbench.experiment.run_inputs import poison_entry
from poisonbench.report import tables
from poisonbench.report.tables.matrix import columns_of
from poisonbench.report.tables.records import (
    budget_key,
    frame,
    only_budget_differs,
    record_row,
    split_budget_key,
    with_budget_rows,
)
from tests.report_records import hint_params, make_record

EPS = 0.3


def run(method: str, trial: int, success: bool, params: dict | None = None, impl: str | None = "forest",
        attack: str = "fc") -> dict:
    """A targeted transfer record of `attack` (FC by `impl`; None: a record from before `impl` existed)."""
    r = make_record(method=method, params=params, trial=trial, dataset="fashion-mnist",
                    targeted={"attack": attack, "target_index": trial, "target_class": 5, "intended_class": 1,
                              "success": success})
    poison = r["config"]["poison"]
    poison["eps"] = EPS
    poison["params"] = {"bases": "nearest"} | ({"impl": impl} if impl is not None else {})
    r["run_id"] = short_hash(r["config"])
    return r


def friends(beta: float = 0.062) -> dict:
    return {"beta": beta, "friendly_steps": 30}


def budget_records() -> list[dict]:
    """13 targets: W/o Defense hits trials 0–9; HINT at the paper's β saves trial 0, HINT at β 0.3 saves 0–5;
    FRIENDS at 0.062 and 0.3; HINT at another r (not a budget row: left out with a note)."""
    n = 13
    return ([run("none", t, t < 10) for t in range(n)]
            + [run("hint", t, 1 <= t < 10, hint_params()) for t in range(n)]
            + [run("hint", t, 6 <= t < 10, hint_params(beta=EPS)) for t in range(n)]
            + [run("friends", t, t < 10, friends()) for t in range(n)]
            + [run("friends", t, 3 <= t < 11, friends(EPS)) for t in range(n)]
            + [run("hint", t, t < 10, hint_params(ratio=0.25)) for t in range(3)])


def test_a_defense_at_another_beta_gets_its_own_row_labelled_by_its_beta_and_paired_with_wo_defense():
    table = tables.build("3", budget_records(), tables.Options(trials=13, paired=True), dataset="fashion-mnist")
    (block,) = table.blocks
    labels = [row[0].text for row in block.rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", "HINT (β 0.062)", "HINT (β 0.3)", "FRIENDS (β 0.062)", "FRIENDS (β 0.3)"]
    cells = {(d["method"], d["beta"]): d for d in table.data if d["attack"] == "fc"}
    assert set(cells) == {("none", None), ("hint", 0.062), ("hint", 0.3), ("friends", 0.062), ("friends", 0.3)}
    assert {k: c["successes"] for k, c in cells.items()} == {
        ("none", None): 10, ("hint", 0.062): 9, ("hint", 0.3): 4, ("friends", 0.062): 10, ("friends", 0.3): 8}
    wide = cells[("hint", 0.3)]  # saves trials 0–5 and makes none new, of 13 targets
    assert (wide["paired_targets"], wide["paired_saved"], wide["paired_new"]) == (13, 6, 0)
    assert wide["paired_p"] == pytest.approx(tables.stats.mcnemar_exact(0, 6), abs=1e-6)
    assert cells[("hint", 0.062)]["paired_saved"] == 1
    wide_friends = cells[("friends", 0.3)]  # saves 0–2, makes trial 10 new
    assert (wide_friends["paired_saved"], wide_friends["paired_new"]) == (3, 1)
    text = tables.render(table, "md")
    assert ("β: the defense's own perturbation budget (L∞, pixel units; HINT's and FRIENDS' noise bound, ATDA's "
            "adversary), one row per β run; the paper's is 0.062, chosen for 16/255 attacks; the attacks' ε here: "
            "0.3") in text
    # a run that differs in more than β (HINT at r 0.25) is no budget row: it stays out, and a note says so
    assert "not shown: 3 run(s) of hint with other parameters (ratio=0.25); see Table IV / plain `report`" in text
    assert text.count("| vs W/o |") == 4


def test_a_method_run_at_one_beta_keeps_its_plain_label_and_no_budget_note():
    records = [run("none", t, t < 2) for t in range(3)] + [run("hint", t, t < 1, hint_params()) for t in range(3)]
    table = tables.build("3", records, tables.Options(trials=3), dataset="fashion-mnist")
    labels = [row[0].text for row in table.blocks[0].rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", "HINT"]
    assert "β: the defense's own perturbation budget" not in tables.render(table, "md")
    assert {d["beta"] for d in table.data if d["method"] == "hint" and d["attack"] == "fc"} == {0.062}


def test_only_a_difference_in_beta_alone_makes_a_budget_row():
    paper = '{"beta": 0.062, "ratio": 0.5}'
    assert only_budget_differs(paper, '{"beta": 0.3, "ratio": 0.5}') == 0.3
    assert only_budget_differs(paper, '{"beta": 0.3, "ratio": 0.25}') is None  # two things differ
    assert only_budget_differs(paper, '{"beta": 0.0625, "ratio": 0.5}') is None  # the same β within TOL
    assert only_budget_differs(paper, '{"ratio": 0.5}') is None  # no β at all
    assert only_budget_differs('{"k": 3}', '{"k": 3, "beta": 0.1}') == 0.1
    assert split_budget_key(budget_key("hint", 0.3)) == ("hint", 0.3)
    assert split_budget_key("hint") == ("hint", None)
    some, empty = pd.DataFrame({"beta": [0.062]}), pd.DataFrame({"beta": []})
    chosen = {"hint": some, budget_key("hint", 0.3): some, budget_key("hint", 0.1): some, "none": some}
    assert with_budget_rows(["none", "hint", "friends"], chosen) == [
        "none", "hint", "hint@beta=0.1", "hint@beta=0.3", "friends"]
    # a method shown only at another β (no run at the paper's): no empty plain row before its budget row
    assert with_budget_rows(["none", "hint"], chosen | {"hint": empty}) == [
        "none", "hint@beta=0.1", "hint@beta=0.3"]
    assert with_budget_rows(["none", "hint"], {"hint": empty}) == ["none", "hint"]


@pytest.mark.parametrize(("params", "objective", "column"), [
    ({"impl": "forest"}, "mean-feature", "fc"),
    ({"impl": "toxic"}, "per-poison", "fc-pp"),
    ({}, "mean-feature", "fc"),  # a record from before --impl existed: forest's, the only FC then
    ({"objective": "per-poison"}, "per-poison", "fc-pp"),  # a --poison-set run's inputs name the objective only
    ({"impl": "other"}, "other", "fc-other"),  # an impl this version does not know: never pooled with forest's
])
def test_fc_names_each_objective_and_gives_it_its_own_column(params, objective, column):
    fc = ATTACKS.get("fc")
    assert (fc.objective(params), fc.report_column(params)) == (objective, column)


def test_attacks_with_one_objective_keep_their_name_and_records_name_fcs_objective():
    gm = ATTACKS.get("gm")
    assert (gm.objective({"impl": "toxic"}), gm.report_column({})) == (None, "gm")
    manifest = {"poison_id": "p", "tensor_sha256": "s", "params": {"impl": "toxic"}}
    assert poison_entry("fc", manifest) == {
        "objective": "per-poison", "attack": "fc", "poison_id": "p", "tensors_sha256": "s", "threat": None,
        "crafted_on": None, "imported_from": None, "code": None, "git_commit": None}
    assert "objective" not in poison_entry("gm", manifest)
    assert poison_entry("fc", {"params": {}})["objective"] == "mean-feature"


def test_table3_and_the_matrix_show_fcs_two_objectives_as_two_named_columns():
    records = ([run("none", t, t < 2) for t in range(3)] + [run("none", t, t < 1, impl="toxic") for t in range(3)]
               + [run("none", 3, True, impl=None)])  # a legacy record: forest's column
    df = frame(records)
    assert sorted(df.attack) == ["fc"] * 4 + ["fc-pp"] * 3
    table = tables.build("3", records, tables.Options(trials=4), dataset="fashion-mnist")
    header = table.blocks[0].columns
    assert header == ["method", "metric", "GM", "MP", "BP", "FC-mean", "FC-per-poison"]
    asr = {d["attack"]: (d["successes"], d["trials"]) for d in table.data if d["method"] == "none"}
    # the legacy record is in FC-mean's column, but its parameters (no `impl`) make it another kind of poisons
    assert asr == {"gm": (0, 0), "mp": (0, 0), "bp": (0, 0), "fc": (2, 3), "fc-pp": (1, 3)}
    text = tables.render(table, "md")
    assert ("not shown: 1 FC-mean run(s) whose poisons differ in ε, budget or attack parameters (or the model they "
            "were crafted against) from the column's newest run (a column shows one kind)") in text
    assert [c[0] for c in columns_of(df, 1.0, None)] == ["fc-mean", "fc-per-poison"]


def test_a_poison_set_run_takes_its_column_from_the_objective_its_inputs_name():
    r = run("none", 0, True, impl="toxic")
    r["config"]["poison"] = {"kind": "poison-set", "attack": "fc", "poison_id": "p"}
    r["inputs"] = {"poisons": [{"attack": "fc", "poison_id": "p", "objective": "per-poison"}]}
    assert record_row(r)["attack"] == "fc-pp"
    r["inputs"] = {"poisons": [{"attack": "fc", "poison_id": "p"}]}  # written before objectives were named
    assert record_row(r)["attack"] == "fc"
    r["inputs"] = "not a dict"
    assert record_row(r)["attack"] == "fc"


def test_paired_table3_says_per_column_what_effect_its_targets_could_detect():
    """Under a paired Table III, one note per attack column with W/o Defense runs: `power.detectable_note` of its n
    targets and hits (here FC-mean 10 of 13, FC-per-poison 0 of 2: nothing to save); none without --paired."""
    records = budget_records() + [run("none", t, False, impl="toxic") for t in range(2)]
    text = tables.render(tables.build("3", records, tables.Options(trials=13, paired=True),
                                      dataset="fashion-mnist"), "md")
    from poisonbench.report.tables.power import detectable_note

    assert f"FC-mean: {detectable_note(13, 10)}" in text
    assert f"FC-per-poison: {detectable_note(2, 0)}" in text
    assert ("- FC-mean: detectable: with 13 targets and W/o Defense at 10/13 (77 %), a defense that saves hits and "
            "makes none new separates with 80 % power only if it lowers the ASR by ≥ 54 pp (a smaller effect, or "
            "one with new hits, can go unseen: a non-separation is not evidence of no effect); 80 % power for a "
            "20 pp effect needs ≥ 39 targets") in text.splitlines()
    assert ("- FC-per-poison: detectable: with 2 targets and W/o Defense at 0/2 (0 %), no hits without a defense: no "
            "drop in ASR can be detected (there is nothing to save)") in text.splitlines()
    plain = tables.render(tables.build("3", records, tables.Options(trials=13), dataset="fashion-mnist"), "md")
    assert "detectable" not in plain


def test_hint_run_only_at_the_attacks_budget_is_shown_as_its_budget_row_not_left_out():
    """No HINT run at the paper's β (0.062), only at β = ε: the r = 0.5 set anchors HINT's rows and is shown as
    `HINT (β 0.3)`, paired with W/o Defense; no empty `HINT` row, and no note that it was left out."""
    records = [run("none", t, t < 10) for t in range(13)] + [  # HINT's own step (unsigned: its declared default)
        run("hint", t, 6 <= t < 10, hint_params(beta=EPS) | {"sign": False}) for t in range(13)]
    table = tables.build("3", records, tables.Options(trials=13, paired=True), dataset="fashion-mnist")
    labels = [row[0].text for row in table.blocks[0].rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", "HINT (β 0.3)"]
    cells = {(d["method"], d["beta"]): d for d in table.data if d["attack"] == "fc"}
    assert set(cells) == {("none", None), ("hint", 0.3)}
    assert (cells[("hint", 0.3)]["successes"], cells[("hint", 0.3)]["paired_saved"]) == (4, 6)
    text = tables.render(table, "md")
    assert "not shown" not in text and "other than its defaults" not in text


@pytest.mark.parametrize("method", ["friends", "atda"])
def test_a_defense_at_its_full_defaults_and_at_beta_eps_is_two_rows_not_one_pooled_cell(method):
    """Real records carry every parameter, so the β = ε runs agree with the defaults in all but β: they must not be
    taken for default runs and pooled with the runs at the default β (FRIENDS' 20 + 19 runs once showed as one
    cell of 39). HINT's β is pinned by the paper's setting instead (the other test)."""
    from poisonbench.defenses import DEFENSES
    from poisonbench.engine.recipes import Recipe
    from poisonbench.engine.threat import threat_of_config
    from poisonbench.report.tables.records import has_default_params

    probe = run(method, 0, True, {})
    recipe = probe["config"]["recipe"]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}
    defaults = DEFENSES.get(method).defaults("mnist", Recipe(**fields), threat_of_config(probe["config"]))
    assert defaults["beta"] != EPS
    wide = defaults | {"beta": EPS}
    assert has_default_params(method, defaults, "fashion-mnist", recipe, probe["config"])
    assert not has_default_params(method, wide, "fashion-mnist", recipe, probe["config"])
    n = 8
    records = ([run("none", t, t < 6) for t in range(n)] + [run(method, t, t < 5, defaults) for t in range(n)]
               + [run(method, t, 2 <= t < 6, wide) for t in range(n)])
    table = tables.build("3", records, tables.Options(trials=n, paired=True), dataset="fashion-mnist")
    cells = {(d["method"], d["beta"]): d for d in table.data if d["attack"] == "fc" and d["trials"]}
    assert {k: (c["successes"], c["trials"]) for k, c in cells.items()} == {
        ("none", None): (6, n), (method, defaults["beta"]): (5, n), (method, EPS): (4, n)}
    assert (cells[(method, EPS)]["paired_saved"], cells[(method, EPS)]["paired_new"]) == (2, 0)


def test_a_hint_run_with_another_update_rule_gets_its_own_row_named_by_its_step_and_beta():
    """HINT's step (signed or not, γ) sets how much of β its noise uses (table3_powered.md: the unsigned γ 0.1 step
    never reached β 0.062): such runs are rows of their own, "HINT (β 0.3, unsigned)", never pooled with the
    table's set or left out."""
    n = 8
    unsigned = hint_params(beta=EPS) | {"sign": False}
    big_step = hint_params(beta=EPS) | {"sign": False, "gamma": 1.0}
    records = ([run("none", t, t < 6) for t in range(n)]
               + [run("hint", t, t < 6, hint_params()) for t in range(n)]
               + [run("hint", t, 1 <= t < 6, hint_params(beta=EPS)) for t in range(n)]
               + [run("hint", t, 2 <= t < 6, hint_params() | {"sign": False}) for t in range(n)]
               + [run("hint", t, 3 <= t < 6, unsigned) for t in range(n)]
               + [run("hint", t, 4 <= t < 6, big_step) for t in range(n)])
    table = tables.build("3", records, tables.Options(trials=n, paired=True), dataset="fashion-mnist")
    (block,) = table.blocks
    labels = [row[0].text for row in block.rows if row[1].text == "ASR"]
    # the table's set is the unsigned one at the paper's β (a tie of 8 runs each, broken by the parameters' text);
    # each other update rule is named against it, rows ordered by β, then by the step's name
    assert labels == ["W/o Defense", "HINT (β 0.062)", "HINT (β 0.062, signed)", "HINT (β 0.3)",
                      "HINT (β 0.3, signed)", "HINT (β 0.3, γ 1)"]
    hint = [d for d in table.data if d["method"] == "hint" and d["attack"] == "fc"]
    assert [(d["beta"], d["successes"], d["paired_saved"], d["paired_new"]) for d in hint] == [
        (0.062, 4, 2, 0), (0.062, 6, 0, 0), (0.3, 3, 3, 0), (0.3, 5, 1, 0), (0.3, 2, 4, 0)]
    assert "not shown" not in tables.render(table, "md")


def test_step_variant_names_exactly_the_step_that_differs_and_nothing_else():
    from poisonbench.report.tables.records import budget_step, step_variant

    paper = '{"beta": 0.062, "gamma": 0.1, "ratio": 0.5, "sign": false}'
    assert step_variant("hint", paper, '{"beta": 0.3, "gamma": 0.1, "ratio": 0.5, "sign": true}') == (0.3, "signed")
    assert step_variant("hint", paper, '{"beta": 0.062, "gamma": 1.0, "ratio": 0.5, "sign": false}') == (0.062,
                                                                                                          "γ 1")
    assert step_variant("hint", paper, '{"beta": 0.3, "gamma": 0.5, "ratio": 0.5, "sign": true}') == (
        0.3, "signed, γ 0.5")
    assert step_variant("hint", paper, paper) is None  # no step differs: not a variant
    assert step_variant("hint", paper, '{"beta": 0.3, "gamma": 0.1, "ratio": 0.5, "sign": false}') is None  # β only
    assert step_variant("hint", paper, '{"beta": 0.062, "gamma": 1.0, "ratio": 0.25, "sign": false}') is None
    assert step_variant("friends", '{"beta": 0.062, "sign": false}', '{"beta": 0.062, "sign": true}') is None
    assert step_variant("hint", paper, '{"gamma": 1.0, "ratio": 0.5, "sign": false}') is None  # no β
    key = budget_key("hint", 0.3, "signed, γ 0.5")
    assert (split_budget_key(key), budget_step(key)) == (("hint", 0.3), "signed, γ 0.5")
    assert budget_step(budget_key("hint", 0.3)) == ""


@pytest.mark.parametrize(("step", "label"), [
    ({"sign": True, "gamma": 0.1}, "HINT (β 0.3, signed)"),
    ({"sign": False, "gamma": 1.0}, "HINT (β 0.3, γ 1)"),
    ({"sign": True, "gamma": 1.0}, "HINT (β 0.3, signed, γ 1)"),
    ({"sign": False, "gamma": 0.1}, "HINT (β 0.3)"),
])
def test_a_block_whose_only_hint_runs_use_another_step_names_that_step(step, label):
    """A block with HINT run only at another update rule (the gray-box cell of table3-fashion-powered.toml: signed
    HINT at β = ε, no run at the table's step): its row is named by the step it ran against HINT's declared
    defaults (sign False, γ 0.1), not shown as "HINT (β 0.3)" as if it were the table's unsigned step."""
    from poisonbench.report.tables.records import step_off_defaults

    n = 6
    params = hint_params(beta=EPS) | step
    records = [run("none", t, t < 5) for t in range(n)] + [run("hint", t, t < 2, params) for t in range(n)]
    table = tables.build("3", records, tables.Options(trials=n, paired=True), dataset="fashion-mnist")
    labels = [row[0].text for row in table.blocks[0].rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", label]
    (cell,) = [d for d in table.data if d["method"] == "hint" and d["attack"] == "fc"]
    assert (cell["beta"], cell["successes"], cell["paired_saved"], cell["paired_new"]) == (EPS, 2, 3, 0)
    assert step_off_defaults("friends", '{"beta": 0.3}') == ""
    assert step_off_defaults("no-such-defense", '{"sign": true}') == step_off_defaults("hint", "{") == ""



@pytest.mark.parametrize(("step", "label"), [({"sign": False}, "HINT (β 0.3)"),
                                             ({"sign": True, "gamma": 1.0}, "HINT (β 0.3, signed, γ 1)")])
def test_a_single_hint_run_off_the_papers_beta_is_its_budget_row_too(step, label):
    """One HINT run (fewer than the tests above have), at β = ε only: it still anchors HINT's rows and gets its budget
    row, named by its step, with no note that it is off its defaults (a rule counting runs from 2 would drop it)."""
    records = [run("none", t, t < 2) for t in range(3)] + [run("hint", 0, False, hint_params(beta=EPS) | step)]
    table = tables.build("3", records, tables.Options(trials=3, paired=True), dataset="fashion-mnist")
    labels = [row[0].text for row in table.blocks[0].rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", label]
    (cell,) = [d for d in table.data if d["method"] == "hint" and d["attack"] == "fc"]
    assert (cell["beta"], cell["successes"], cell["paired_saved"], cell["paired_new"]) == (EPS, 0, 1, 0)
    assert "other than its defaults" not in tables.render(table, "md")


def test_a_single_hint_run_at_the_papers_beta_beside_one_with_another_step_makes_two_rows():
    """One run at the paper's β and one at β = ε with the official signed step (each a single run): two rows, the
    second named by its β and step, none left out."""
    records = [run("none", t, t < 2) for t in range(3)] + [
        run("hint", 0, True, hint_params() | {"sign": False}),
        run("hint", 0, False, hint_params(beta=EPS) | {"sign": True})]
    table = tables.build("3", records, tables.Options(trials=3, paired=True), dataset="fashion-mnist")
    labels = [row[0].text for row in table.blocks[0].rows if row[1].text == "ASR"]
    assert labels == ["W/o Defense", "HINT (β 0.062)", "HINT (β 0.3, signed)"]
    assert "not shown" not in tables.render(table, "md")
