"""Tables IV and V and the paired helpers of `report/tables/builders.py`, stated whole (issue 82).

The full mutmut run of builders.py (2026-11-29) found Table IV's and V's notes, columns and JSON rows pinned
nowhere but in the golden files' one workspace: an empty Table IV, a paper column, a note's wording, the times'
rounding, a W/o Defense under one second, a second setting's runs. Expected values are computed here from the
records' numbers (mean, sample std, Student's t from scipy) and the paper module's figures, not read back.
"""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats

from poisonbench.report import paper, tables
from poisonbench.report.tables import builders

from .report_records import hint_params, make_record

SETTING = "mnist-5k · convnet · quick recipe, 10 ep"
REDUCED = ("reduced scale, not the paper's setting: mnist-5k (5,000 digits, not the full MNIST); quick recipe; 10 "
           "epochs (paper: 30)")


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values)


def t_half(values):
    return stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


# ---- Table II, paired -----------------------------------------------------------------------------------------

PAIRED_NOTE = ("paired: the defense's test accuracy minus W/o Defense's, per pair of runs with the same trial, seed, "
               "attack mix and PoisonSets (same poisoned rows and batch order, and the same craft where the records "
               "name it); mean ± std in points over the pairs")


def test_table2_paired_with_the_paper_whole_its_columns_notes_and_the_row_run():
    recs = [make_record(method="none", rho=0.4, trial=t, acc=a) for t, a in ((0, 0.5), (1, 0.6))]
    recs += [make_record(method="hint", rho=0.4, trial=t, acc=a, params=hint_params())
             for t, a in ((0, 0.7), (1, 0.9), (2, 0.8))]
    recs += [make_record(method="friends", rho=0.4, trial=0, acc=0.55, params={"beta": 0.062})]
    table = tables.build("2", recs, tables.Options(trials=2, paired=True, paper=True, diff=True), mix="any")
    (block,) = table.blocks
    columns = ["ρ"]
    for label, paired in (("W/o Defense", False), ("HINT", True), ("ATDA", False), ("FRIENDS", True),
                          ("EPIC", False)):
        columns += [label, f"{label} (paper MNIST)", f"{label} Δ"]
        columns += [f"{label} − W/o Defense (paired)"] if paired else []
    assert block.columns == columns
    assert block.notes == [
        REDUCED, "paper column: the paper's MNIST numbers (our data: mnist-5k)",
        'FRIENDS is shown with parameters other than its defaults (or from a version whose defaults this one cannot '
        'check): {"beta":0.062}',
        'HINT is shown with parameters other than its defaults (or from a version whose defaults this one cannot '
        'check): {"beta":0.062,"gamma":0.1,"ihvp":"exact","ratio":0.5,"schedule":[1,5],"sign":true}',
        PAIRED_NOTE,
        "paired: 1 HINT run(s) have no W/o Defense run of the same trial and seed on the same craft of the "
        "PoisonSets among those shown (not run yet, re-run with another --seed, or trained on another craft) and "
        "stay out of the paired column"]
    assert [row[0].text for row in block.rows] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]  # --paper: its six ρ

    def p(m):
        return paper.table2("mnist", 0.4, m)

    def both(m, mean):
        return [f"{p(m)[0]:.2f} ± {p(m)[1]:.2f}", f"{mean - p(m)[0]:+.2f}" if mean is not None else "–"]

    none_m, none_s = mean_std([50.0, 60.0])
    hint_m, hint_s = mean_std([70.0, 90.0, 80.0])
    d_m, d_s = mean_std([20.0, 30.0])  # HINT − W/o Defense on trials 0 and 1
    assert [c.text for c in block.rows[2]] == [
        "0.4", f"{none_m:.2f} ± {none_s:.2f}", *both("none", none_m),
        f"{hint_m:.2f} ± {hint_s:.2f} (n=3)", *both("hint", hint_m), f"{d_m:+.2f} ± {d_s:.2f}",
        "–", *both("atda", None), "55.00 (n=1)", *both("friends", 55.0), "+5.00 (n=1)", "–", *both("epic", None)]
    hint = next(d for d in table.data if d["rho"] == 0.4 and d["method"] == "hint")
    assert {k: v for k, v in hint.items() if k.startswith("paired")} == {
        "paired_n": 2, "paired_mean": round(d_m, 4), "paired_std": round(d_s, 4),
        "paired_ci_low": round(d_m - t_half([20.0, 30.0]), 4), "paired_ci_high": round(d_m + t_half([20.0, 30.0]), 4)}


def test_table2_paired_without_w_o_defense_runs_has_no_paired_column_and_says_why():
    recs = [make_record(method="hint", rho=0.4, trial=0, acc=0.7, params=hint_params())]
    (block,) = tables.build("2", recs, tables.Options(trials=1, paired=True), mix="any").blocks
    assert block.columns == ["ρ", "HINT"]
    assert block.notes[-1] == "no paired column: this setting has no W/o Defense runs to pair with"
    assert PAIRED_NOTE not in block.notes


def test_table2_paired_gives_no_paired_column_to_a_method_whose_runs_are_all_left_out():
    """HINT's only run is off the paper's parameters (r 0.25): its Table II column is empty and left-out noted, and
    it gets no paired column (nothing of it is shown to pair)."""
    recs = [make_record(method="none", rho=0.4, trial=0, acc=0.5),
            make_record(method="hint", rho=0.4, trial=0, acc=0.7, params=hint_params(ratio=0.25))]
    (block,) = tables.build("2", recs, tables.Options(trials=1, paired=True), mix="any").blocks
    assert block.columns == ["ρ", "W/o Defense", "HINT"]
    assert [c.text for c in block.rows[0]] == ["0.4", "50.00", "–"]


def test_table2_rows_are_the_rho_asked_or_every_rho_run_float_noise_kept_in_one_row():
    """`--rho` shows that row only; otherwise one row per ρ run, a ρ stored with float noise (0.3 + 4e-7) in the
    same row as 0.3, and ρ 0.2 in a row of its own."""
    recs = [make_record(method="none", rho=rho, trial=t, acc=0.5 + t / 10)
            for t, rho in ((0, 0.3), (1, 0.3 + 4e-7), (2, 0.2))]
    (block,) = tables.build("2", recs, tables.Options(trials=2), mix="any").blocks
    assert [[c.text for c in row] for row in block.rows] == [["0.2", "70.00 (n=1)"], ["0.3", "55.00 ± 7.07"]]
    (block,) = tables.build("2", recs, tables.Options(trials=1, rho=0.2), mix="any").blocks
    assert [[c.text for c in row] for row in block.rows] == [["0.2", "70.00"]]


def test_table2_on_another_mix_has_no_paper_column_note_and_warns_of_pooled_mixes():
    """Runs on mixes other than the paper's: no paper column and no "paper column: ..." note even with --paper, one
    note saying why, and a warning that two mixes are pooled in the setting's cells."""
    from poisonbench.core.hashing import short_hash

    recs = []
    for trial, mix in ((0, ["pgd"]), (1, ["pgd", "dap"])):
        r = make_record(method="none", rho=0.4, trial=trial, acc=0.5)
        r["config"]["poison"]["attacks"] = mix
        r["run_id"] = short_hash(r["config"])
        recs.append(r)
    (block,) = tables.build("2", recs, tables.Options(trials=1, paper=True), mix="any").blocks
    assert block.columns == ["ρ", "W/o Defense", "HINT", "ATDA", "FRIENDS", "EPIC"]
    assert block.notes == [
        REDUCED, "no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC, these runs are on pgd | pgd,dap",
        "warning: runs with different attack mixes are pooled: pgd | pgd,dap"]


# ---- Table IV ------------------------------------------------------------------------------------------------

def table4_records():
    recs = [make_record(method="hint", rho=0.6, trial=t, acc=a, params=hint_params(ratio=0.5))
            for t, a in ((0, 0.9), (1, 0.92))]
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.8, params=hint_params(ratio=0.25))]
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.85, params=hint_params(beta=0.125))]
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.5, params={**hint_params(), "gamma": 0.2})]
    recs += [make_record(method="none", rho=0.6, trial=0, acc=0.7)]  # not HINT: not in Table IV
    return recs


@pytest.mark.parametrize("with_paper", [False, True])
def test_table4_whole_its_columns_notes_cells_json_rows_and_runs_shown(with_paper):
    recs = table4_records()
    opts = tables.Options(trials=2, paper=with_paper, diff=with_paper)
    table = tables.build("4", recs, opts, mix="any")
    assert table.number == "4" and table.caption.split(". Crafts: ")[0] == (
        "Sensitivity of HINT to r (β = 0.062) and β (r = 0.5) under the untargeted mix, test accuracy (%)")
    (block,) = table.blocks
    assert block.title == "HINT at ρ = 0.6"
    assert block.columns == ["parameter", "value", SETTING] + (["paper MNIST", "mnist-5k Δ"] if with_paper else [])
    assert block.notes == [
        "runs at ρ = 0.6 (the paper's)", f"{SETTING}: {REDUCED}",
        *([f"{SETTING}: paper column: the paper's MNIST numbers (our data: mnist-5k)"] if with_paper else []),
        f"{SETTING}: not shown: 1 run(s) of hint with other parameters (gamma=0.2); see the plain `report`"]
    m, s = mean_std([90.0, 92.0])
    ours = {("ratio", 0.25): [80.0], ("ratio", 0.5): [90.0, 92.0], ("beta", 0.062): [90.0, 92.0],
            ("beta", 0.125): [85.0]}
    expected_rows, expected_data = [], []
    for param, grid, sym in (("ratio", (0.25, 0.5, 0.75, 1.0), "r"), ("beta", (0.031, 0.062, 0.125, 0.251), "β")):
        for j, value in enumerate(grid):
            values = ours.get((param, value), [])
            text = ("–" if not values else f"{values[0]:.2f} (n=1)" if len(values) == 1 else f"{m:.2f} ± {s:.2f}")
            row = [sym if j == 0 else "", f"{value:g}" if f"{value:g}" != "1" else "1.0", text]
            p = paper.table4("mnist", param, value)
            mean = statistics.mean(values) if values else None
            if with_paper:
                row += [f"{p[0]:.2f} ± {p[1]:.2f}", f"{mean - p[0]:+.2f}" if values else "–"]
            expected_rows.append(row)
            n = len(values)
            expected_data.append({
                "table": "IV", "dataset": "mnist-5k", "model": "convnet", "recipe": "quick", "epochs": 10,
                "setting": SETTING, "reduced_scale": True, "rho": 0.6, "parameter": param, "value": value, "n": n,
                "mean": round(mean, 4) if n else None, "std": round(s, 4) if n == 2 else None,
                "ci_low": round(m - t_half(values), 4) if n == 2 else None,
                "ci_high": round(m + t_half(values), 4) if n == 2 else None,
                # the JSON rows carry the paper's numbers with or without --paper (the columns follow the option)
                "paper_mean": p[0], "paper_std": p[1], "diff": round(mean - p[0], 4) if n else None})
    assert [[c.text for c in row] for row in block.rows] == expected_rows
    assert block.rules == {4}  # the rule between r's rows and β's
    assert table.data == expected_data
    assert table.shown == {r["run_id"] for r in recs[:4]}


def test_table4_names_what_a_left_out_run_changes_against_the_first_cell_shown_when_the_papers_is_empty():
    """No run at the paper's cell (r 0.5, β 0.062): the left-out run is described against the first cell shown
    (r 0.25), so only what differs from it is named (γ), not every parameter."""
    recs = [make_record(method="hint", rho=0.6, trial=0, acc=0.8, params=hint_params(ratio=0.25)),
            make_record(method="hint", rho=0.6, trial=0, acc=0.5, params={**hint_params(ratio=0.25), "gamma": 0.2})]
    (block,) = tables.build("4", recs, tables.Options(trials=1), mix="any").blocks
    assert block.notes[-1] == (f"{SETTING}: not shown: 1 run(s) of hint with other parameters (gamma=0.2); see the "
                               "plain `report`")


def test_table4_without_hint_runs_at_its_rho_is_the_empty_table_iv():
    recs = table4_records()
    table = tables.build("4", recs, tables.Options(trials=2, rho=0.4), mix="any")
    assert (table.number, table.blocks, table.data, table.shown) == ("4", [], [], set())
    assert table.caption == ("Sensitivity of HINT to r (β = 0.062) and β (r = 0.5) under the untargeted mix, test "
                             "accuracy (%)")
    assert table.empty


def test_table4_at_another_rho_says_so_and_gives_no_paper_numbers():
    recs = [make_record(method="hint", rho=0.4, trial=0, acc=0.9, params=hint_params())]
    table = tables.build("4", recs, tables.Options(trials=1, rho=0.4, paper=True, diff=True), mix="any")
    (block,) = table.blocks
    assert block.title == "HINT at ρ = 0.4" and block.columns == ["parameter", "value", SETTING]
    assert block.notes == ["runs at ρ = 0.4 (the paper's Table IV is at ρ = 0.6: no paper numbers)",
                           f"{SETTING}: {REDUCED}"]
    assert all(d["paper_mean"] is None and d["diff"] is None for d in table.data)


# ---- Table V -------------------------------------------------------------------------------------------------

def table5_records():
    # make_record: time = cost.train + defense_prepare + defense_epoch = seconds − 1
    recs = [make_record(method="none", rho=0.6, trial=t, acc=0.9, seconds=s) for t, s in ((0, 11.0), (1, 13.013))]
    recs += [make_record(method="hint", rho=0.6, trial=t, acc=0.9, seconds=s, defense_seconds=d,
                         params=hint_params()) for t, s, d in ((0, 31.0, 20.0), (1, 35.0, 22.0))]
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.9, seconds=21.0, defense_seconds=8.0,
                         params=hint_params(ratio=0.25))]
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.9, seconds=21.0, defense_seconds=8.0,
                         params=hint_params(beta=0.125))]  # another β: Table IV's, neither shown nor noted
    recs += [make_record(method="hint", rho=0.6, trial=0, acc=0.9, seconds=21.0, defense_seconds=8.0,
                         params={**hint_params(), "gamma": 0.2})]
    recs += [make_record(method="friends", rho=0.6, trial=0, acc=0.9, seconds=25.0, defense_seconds=5.0125,
                         params={"beta": 0.062})]  # a third decimal: the JSON rounds to two
    recs += [make_record(method="friends", rho=0.6, trial=0, acc=0.9, seconds=25.0, defense_seconds=5.0,
                         params={"beta": 0.1})]
    recs += [make_record(method="knn", rho=0.6, trial=0, acc=0.9, seconds=16.0, defense_seconds=2.0)]
    recs[1]["compiled"] = True
    return recs


@pytest.mark.parametrize("with_paper", [False, True])
def test_table5_whole_its_columns_notes_cells_json_rows_and_runs_shown(with_paper):
    recs = table5_records()
    opts = tables.Options(trials=2, paper=with_paper, diff=with_paper, ci=with_paper)
    table = tables.build("5", recs, opts, mix="any")
    (block,) = table.blocks
    assert block.title == SETTING
    assert block.columns == ["method", "time (s)", "defense (s)", "× none"] + (
        ["paper CIFAR-10 time (s)", "paper × none", "Δ × none"] if with_paper else [])
    assert block.notes == [
        "runs at ρ = 0.6; time = training + the defense's own work (cost.train + defense_prepare + defense_epoch); "
        "× none = mean time / mean time of W/o Defense", REDUCED,
        *(["paper column: the paper's CIFAR-10 numbers (our data: mnist-5k)"] if with_paper else []),
        "not shown: 1 run(s) of hint with other parameters (gamma=0.2); see Table IV / plain `report`",
        "not shown: 1 run(s) of friends with other parameters (beta=0.1); see Table IV / plain `report`",
        "times mix 1 compiled and 6 eager run(s) (torch.compile); compare times only within one mode "
        "(`--compile on|off`)"]
    times = {("none", None): ([10.0, 12.013], [0.0, 0.0]), ("hint", 0.25): ([20.0], [8.0]),
             ("hint", 0.5): ([30.0, 34.0], [20.0, 22.0]), ("hint", 0.75): ([], []), ("hint", 1.0): ([], []),
             ("friends", None): ([24.0], [5.0125]), ("knn", None): ([15.0], [2.0])}
    order = [("none", None), ("hint", 0.25), ("hint", 0.5), ("hint", 0.75), ("hint", 1.0)]
    order += [("atda", None)] if with_paper else []  # --paper lists every method of the paper's table
    order += [("friends", None)] + ([("epic", None)] if with_paper else []) + [("knn", None)]
    labels = {"none": "W/o Defense", "atda": "ATDA", "friends": "FRIENDS", "epic": "EPIC", "knn": "knn"}
    none_mean = statistics.mean(times[("none", None)][0])
    rows, data = [], []
    for m, r in order:
        t, d = times.get((m, r), ([], []))
        label = f"HINT (r = {r:g})" if m == "hint" and r != 1.0 else "HINT (r = 1.0)" if m == "hint" else labels[m]
        p = paper.table5(m, r)
        pratio = p / paper.table5("none") if p is not None else None
        ratio = statistics.mean(t) / none_mean if t else None
        if t:
            text = f"{statistics.mean(t):.1f}"
            if len(t) > 1:
                text += f" ± {statistics.stdev(t):.1f}"
                if with_paper:
                    text += f" [{statistics.mean(t) - t_half(t):.1f}, {statistics.mean(t) + t_half(t):.1f}]"
            text += " (n=1)" if len(t) == 1 else ""
            row = [label, text, f"{statistics.mean(d):.1f}", f"{ratio:.2f}×"]
        else:
            row = [label, "–", "–", "–"]  # an empty cell
        if with_paper:
            row += [f"{p:.0f}" if p is not None else "–", f"{pratio:.2f}×" if pratio else "–",
                    f"{ratio - pratio:+.2f}" if ratio is not None and pratio is not None else "–"]
        rows.append(row)
        data.append({"table": "V", "dataset": "mnist-5k", "model": "convnet", "recipe": "quick", "epochs": 10,
                     "setting": SETTING, "reduced_scale": True, "rho": 0.6, "method": m, "ratio": r, "n": len(t),
                     "time_mean": round(statistics.mean(t), 2) if t else None,
                     "time_std": round(statistics.stdev(t), 2) if len(t) > 1 else None,
                     "defense_mean": round(statistics.mean(d), 2) if d else None,
                     "x_none": round(ratio, 4) if ratio is not None else None, "paper_time": p,
                     "paper_x_none": round(pratio, 4) if pratio is not None else None,
                     "diff_x_none": round(ratio - pratio, 4) if ratio is not None and pratio is not None else None})
    assert [[c.text for c in row] for row in block.rows] == rows
    assert table.data == data
    assert table.shown == {r["run_id"] for i, r in enumerate(recs) if i not in (5, 6, 8)}


@pytest.mark.parametrize("none_seconds, ratio_text", [(1.5, "6.00×"), (1.0, "–")])
def test_table5_divides_by_a_w_o_defense_under_a_second_and_never_by_zero(none_seconds, ratio_text):
    """× none for a W/o Defense of 0.5 s (a tiny run) is 3.0 / 0.5; of 0 s it is '–', not a division by zero."""
    recs = [make_record(method="none", rho=0.6, trial=0, acc=0.9, seconds=none_seconds),
            make_record(method="knn", rho=0.6, trial=0, acc=0.9, seconds=4.0, defense_seconds=1.0)]
    table = tables.build("5", recs, tables.Options(trials=1), mix="any")
    assert [c.text for c in table.blocks[0].rows[1]] == ["knn", "3.0", "1.0", ratio_text]
    assert table.data[1]["x_none"] == (None if ratio_text == "–" else 6.0)


def test_table5_at_a_rho_asked_and_over_two_settings_shows_the_runs_of_both():
    recs = [make_record(method="none", rho=0.4, trial=0, acc=0.9, seconds=11.0),
            make_record(method="none", rho=0.6, trial=0, acc=0.9, seconds=11.0),
            make_record(dataset="fashion-mnist", method="none", rho=0.4, trial=0, acc=0.8, seconds=21.0)]
    table = tables.build("5", recs, tables.Options(trials=1, rho=0.4), mix="any")
    assert [b.title.split(" · ")[0] for b in table.blocks] == ["fashion-mnist", "mnist-5k"]
    assert [b.notes[0].split(";")[0] for b in table.blocks] == ["runs at ρ = 0.4"] * 2
    assert [[c.text for c in b.rows[0]] for b in table.blocks] == [["W/o Defense", "20.0", "0.0", "1.00×"],
                                                                  ["W/o Defense", "10.0", "0.0", "1.00×"]]
    assert table.shown == {recs[0]["run_id"], recs[2]["run_id"]}


# ---- the paired helpers --------------------------------------------------------------------------------------

def test_paired_data_is_every_field_in_points_and_empty_without_pairs():
    st = tables.stat([0.01, 0.03, 0.08])
    m, s = mean_std([1.0, 3.0, 8.0])
    half = t_half([1.0, 3.0, 8.0])
    assert builders.paired_data(st) == {"paired_n": 3, "paired_mean": round(m, 4), "paired_std": round(s, 4),
                                        "paired_ci_low": round(m - half, 4), "paired_ci_high": round(m + half, 4)}
    assert builders.paired_data(None) == {"paired_n": 0, "paired_mean": None, "paired_std": None,
                                          "paired_ci_low": None, "paired_ci_high": None}


@pytest.mark.parametrize("given", ["HINT (β 0.3, signed)", "hint (beta 0.3, signed)", "  HINT  (BETA 0.3,   signed) "])
def test_versus_names_a_row_by_its_label_whatever_its_case_spacing_or_beta(given):
    labels = {"hint@0.3": "HINT (β 0.3, signed)"}
    assert builders.normal_row_name(given) == "hint (beta 0.3, signed)"
    assert builders.versus_row(given, ["none", "hint@0.3"], labels) == "hint@0.3"
    assert builders.versus_row("hint (beta 0.3 signed)", ["none", "hint@0.3"], labels) is None


def test_the_budget_note_names_every_attack_eps_in_order_or_none():
    import pandas as pd

    frame = pd.DataFrame({"poisons_json": ['{"eps": 0.3}', '{"eps": 0.0627}', "", '{"eps": 0.3}', "{}"]})
    head = ("β: the defense's own perturbation budget (L∞, pixel units; HINT's and FRIENDS' noise bound, ATDA's "
            "adversary), one row per β run; the paper's is 0.062, chosen for 16/255 attacks")
    assert builders.budget_note(frame) == head + "; the attacks' ε here: 0.0627, 0.3"
    assert builders.budget_note(frame.iloc[[2, 4]]) == head


def paired_frame(successes, tensors=None, accs=None):
    import pandas as pd

    n = len(successes)
    return pd.DataFrame({"trial": range(n), "seed": range(n), "mix": [""] * n, "poisons_json": ["p"] * n,
                         "poison_tensors_json": tensors or [""] * n, "success": successes,
                         "test_acc": accs or [0.5] * n})


def test_paired_targets_and_stat_need_both_sides_and_count_only_known_outcomes():
    rows = paired_frame([True, False, None, True])
    base = paired_frame([True, True, True, None])
    assert builders.paired_targets(rows, None) is None and builders.paired_targets(None, base) is None
    assert builders.paired_stat(rows, None) is None and builders.paired_stat(None, base) is None
    ps = builders.paired_targets(rows, base)
    assert (ps.n, ps.second_only, ps.first_only) == (2, 1, 0)  # trials 0 and 1: the others lack an outcome


def test_a_pair_whose_baseline_names_no_craft_is_kept_and_one_of_another_craft_is_not():
    rows = paired_frame([True, True, True], tensors=["a", "a", "a"], accs=[0.6, 0.7, 0.8])
    base = paired_frame([True, True, True], tensors=["a", "", "b"], accs=[0.5, 0.5, 0.5])
    assert builders.run_pairs(rows, base, "test_acc") == [(0.6, 0.5), (0.7, 0.5)]  # trials 0 and 1
    st = builders.paired_stat(rows, base)
    assert st.n == 2 and st.mean == pytest.approx(0.15)


def merged_pairs(rows, baseline, column):
    """The pairs as pandas' inner `merge` on the pairing keys gives them (the join `run_pairs` replaced): the
    reference the dictionary join is checked against."""
    columns = [*builders.PAIR_KEYS, "poison_tensors_json", column]
    pairs = rows[columns].merge(baseline[columns], on=builders.PAIR_KEYS, suffixes=("", "_base"))
    craft, base_craft = pairs.poison_tensors_json, pairs.poison_tensors_json_base
    pairs = pairs[(craft == base_craft) | (craft == "") | (base_craft == "")]
    return list(zip(pairs[column], pairs[column + "_base"], strict=True))


@settings(max_examples=150, deadline=None)
@given(hst.data())
def test_run_pairs_is_the_inner_merge_on_the_pairing_keys_in_its_order(data):
    """Every pair the merge makes, in its order (the runs in theirs, each run's partners in theirs), with repeated
    keys on both sides (a run paired with two baselines, two runs with one), crafts named, unnamed and other, and
    either side empty."""
    import pandas as pd

    def frame(n):
        keys = hst.tuples(hst.integers(0, 2), hst.integers(0, 1), hst.sampled_from(["", "pgd"]),
                          hst.sampled_from(["p", "q"]))
        rows = data.draw(hst.lists(hst.tuples(keys, hst.sampled_from(["", "a", "b"]), hst.floats(0, 1)), max_size=n))
        return pd.DataFrame({"trial": [k[0] for k, _, _ in rows], "seed": [k[1] for k, _, _ in rows],
                             "mix": [k[2] for k, _, _ in rows], "poisons_json": [k[3] for k, _, _ in rows],
                             "poison_tensors_json": [t for _, t, _ in rows], "test_acc": [v for _, _, v in rows]},
                            columns=[*builders.PAIR_KEYS, "poison_tensors_json", "test_acc"])

    rows, baseline = frame(8), frame(8)
    assert builders.run_pairs(rows, baseline, "test_acc") == merged_pairs(rows, baseline, "test_acc")


@settings(max_examples=80, deadline=None)
@given(hst.data())
def test_one_poison_generation_is_the_full_group_by_whatever_its_short_cut_decides(data):
    """`records.several_generations` lets `one_poison_generation` skip its per-mix group-by. On any frame (the
    kinds mixed, keys repeated, missing values in a key column, generations with other ids, ε or rows, ties in
    `finished_at`) the rows kept and the notes are those of the group-by run in full, and the short cut is False
    only where no two untargeted rows share a key and differ in PoisonSets; runs are left out, with a note, exactly
    where a mix has two generations."""
    from unittest import mock

    import pandas as pd

    from poisonbench.report.tables import records

    by = ["dataset", "dataset_fingerprint", "model", "recipe_json", "init", "precision", "schedules", "mix"]
    generations = ['{"eps": 0.3, "ids": {"pgd": "1"}, "rows": 1}', '{"eps": 0.3, "ids": {"pgd": "2"}, "rows": 1}',
                   '{"eps": 0.1, "ids": {"pgd": "1"}, "rows": 1}', '{"eps": 0.3, "ids": {"pgd": "1"}, "rows": 2}']
    row = hst.fixed_dictionaries({
        "kind": hst.sampled_from(["untargeted", "untargeted", "clean", "targeted"]),
        "dataset": hst.sampled_from(["a", "b"]), "mix": hst.sampled_from(["pgd", "dap"]),
        "model": hst.sampled_from(["m", None]), "poisons_json": hst.sampled_from(generations),
        "finished_at": hst.integers(0, 3)})
    rows = data.draw(hst.lists(row, max_size=9))
    df = pd.DataFrame([{**{c: "" for c in by}, **r} for r in rows], columns=[*by, "kind", "poisons_json",
                                                                               "finished_at"])
    kept, notes = records.one_poison_generation(df)
    with mock.patch.object(records, "several_generations", lambda *a: True):
        full_kept, full_notes = records.one_poison_generation(df)
    pd.testing.assert_frame_equal(kept, full_kept)
    assert notes == full_notes
    untargeted = df[df.kind == "untargeted"]
    clash = any(len(group.poisons_json.unique()) > 1 for _, group in untargeted.groupby(by, dropna=False))
    assert records.several_generations(untargeted, by) == clash
    # and the loop run in full leaves runs out, with a note, exactly where a mix (no key missing) has two generations
    dropped = any(len(group.poisons_json.unique()) > 1 for _, group in untargeted.groupby(by))
    assert (len(kept) < len(df)) == dropped and bool(notes) == dropped


# ---- Table II's caption --------------------------------------------------------------------------------------

CAPTION_2 = ("Test accuracy (%) defending against the untargeted mix (PGD+DAP+DURP+DC) at poison ratio ρ; HINT r = "
             "0.5, β = 0.062")


@pytest.mark.parametrize("mixes, poison_sets, caption", [
    (["pgd,dap,durp,deepconfuse", ""], ["", ""], CAPTION_2),  # the paper's mix (and clean runs, no mix)
    (["pgd"], [""], CAPTION_2.replace("mix (PGD+DAP+DURP+DC)", "attack (PGD)")),
    (["pgd,deepconfuse", "pgd,deepconfuse"], ["", ""], CAPTION_2.replace("(PGD+DAP+DURP+DC)", "(PGD+DC)")),
    (["em,durp"], [""], CAPTION_2.replace("(PGD+DAP+DURP+DC)", "(em+DURP)")),  # a name without a label kept
    (["pgd", "dap"], ["", ""], CAPTION_2),  # two mixes pooled: the caption names neither (a note warns)
    (["pgd,dap,durp,deepconfuse"] * 3, ["b1", "", "a2"],
     CAPTION_2 + "; PoisonSets chosen with --poisons: a2 | b1"),
    ([], [], CAPTION_2),
])
def test_table2s_caption_names_a_single_mix_or_attack_and_the_poisonsets_chosen(mixes, poison_sets, caption):
    import pandas as pd

    frame = pd.DataFrame({"mix": mixes, "poison_sets": poison_sets}, dtype=object)
    assert builders.table2_caption(frame) == caption


# ---- Table III's helpers: what a filter removed, pooled cells, the paper's mix --------------------------------

def test_removal_cell_sums_the_counted_trials_and_gives_the_clean_share_whole():
    import math

    import pandas as pd

    from poisonbench.report.tables.layout import Cell

    rows = pd.DataFrame({"poisons_removed": [30, 20, math.nan], "poisons": [40, 40, 40],
                         "clean_removed": [100, 23, 7], "clean": [4000, 4000, 4000],
                         "asr": [math.nan, 1.0, 1.0]})  # a gap in another column leaves a trial counted
    one_third, _ = builders.removal_cell(rows.iloc[1:2].assign(poisons_removed=1, poisons=3))
    assert one_third.value == 0.3333  # the fraction removed, to four places
    cell, data = builders.removal_cell(rows)  # the third trial counted nothing: left out of both sums
    assert cell == Cell(f"50/80 poisons, {100 * 123 / 8000:.1f} % clean", 0.625)
    assert data == {"poisons_removed": 50, "poisons": 80, "clean_removed": 123, "clean": 8000}
    cell, data = builders.removal_cell(rows.assign(poisons=0, clean=0))
    assert (cell.text, cell.value, data) == ("50/0 poisons, 0.0 % clean", None,
                                             {"poisons_removed": 50, "poisons": 0, "clean_removed": 123, "clean": 0})
    assert builders.removal_cell(rows.iloc[2:]) == (Cell(), {})  # nothing counted
    assert builders.removal_cell(rows.drop(columns="poisons_removed")) == (Cell(), {})  # not a removing defense
    assert builders.removal_cell(None) == (Cell(), {})


def test_targeted_pooling_notes_warn_of_each_cell_of_two_budgets_or_scenarios_whole():
    import math

    import pandas as pd

    def cell(attack, rhos, scenarios):
        return pd.DataFrame({"attack": attack, "rho": rhos, "scenario": scenarios})

    chosen = {"none": pd.concat([cell("gm", [0.01, 0.02], ["scratch", "scratch"]),
                                 cell("bp", [0.01, 0.01], ["transfer", "transfer"])]),
              "hint": cell("fc", [0.01, math.nan, 0.01], ["transfer", "scratch", "transfer"]),
              "friends": None, "epic": cell("mp", [0.25, 0.25], ["scratch", "scratch"]),
              "atda": cell("myattack", [0.01, 0.03], ["scratch", "scratch"])}  # an attack without a label: its name
    assert builders.targeted_pooling_notes(chosen) == [
        "warning: W/o Defense / GM pools runs of poison budgets 0.01, 0.02 and scenarios scratch",
        "warning: HINT / FC-mean pools runs of poison budgets 0.01 and scenarios scratch, transfer",
        "warning: ATDA / myattack pools runs of poison budgets 0.01, 0.03 and scenarios scratch"]


@pytest.mark.parametrize("mixes, ok, notes", [
    ([], True, []),
    (["", ""], True, []),  # clean runs only
    (["pgd,dap,durp,deepconfuse", ""], True, []),
    (["pgd", "pgd,dap", ""], False, ["no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC, these runs are "
                                     "on pgd | pgd,dap"]),
    (["pgd,dap,durp,deepconfuse", "pgd"], False, ["no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC, "
                                                  "these runs are on pgd | pgd,dap,durp,deepconfuse"]),
])
def test_paper_mix_only_is_true_only_for_the_papers_mix_and_says_why_not(mixes, ok, notes):
    import pandas as pd

    got: list[str] = []
    assert builders.paper_mix_only(pd.DataFrame({"mix": mixes}, dtype=object), got) is ok
    assert got == notes


@pytest.mark.parametrize("diff, lo, hi, p, text", [
    (-0.5, -0.7134, -0.2249, 0.0063477, "Δ -50 pp [-71, -22] · 11 saved, 1 new of 20 · p 0.0063"),
    (0.1, -0.0449, 0.2551, 0.625, "Δ +10 pp [-4, +26] · 11 saved, 1 new of 20 · p 0.62"),
    (-0.004, -0.0049, 0.004, 1.0, "Δ +0 pp [+0, +0] · 11 saved, 1 new of 20 · p 1"),  # −0 printed +0
])
def test_a_paired_success_cell_is_its_difference_interval_discordant_targets_and_p_whole(diff, lo, hi, p, text):
    from poisonbench.report.tables.stats import PairedSuccess

    ps = PairedSuccess(n=20, both=3, first_only=1, second_only=11, neither=5, diff=diff, lo=lo, hi=hi, p=p)
    cell, data = builders.paired_success_cell(ps)
    assert cell.text == text and cell.value is None
    assert data == {"paired_targets": 20, "paired_saved": 11, "paired_new": 1, "paired_diff": round(100 * diff, 4),
                    "paired_low": round(100 * lo, 4), "paired_high": round(100 * hi, 4), "paired_p": round(p, 6)}
    cell, data = builders.paired_success_cell(None)
    assert cell.text == "–" and data == {"paired_targets": 0, "paired_saved": None, "paired_new": None,
                                        "paired_diff": None, "paired_low": None, "paired_high": None,
                                        "paired_p": None}


def targeted(method, trial, success, dataset="mnist-5k", params=None, acc=0.9, removal=None):
    """A GM run on target `trial`; `removal`: what a removing defense took out (the record's `defense.removal`)."""
    r = make_record(dataset=dataset, method=method, trial=trial, params=params, acc=acc, targeted={
        "attack": "gm", "target_index": trial, "target_class": 1, "intended_class": 2, "success": success})
    if removal:
        r["defense"] = {"removal": removal}
    return r


def test_table3_with_the_paper_says_its_column_is_cifar10s_whatever_the_data():
    """The paper's Table III is CIFAR-10 only: beside mnist-5k its column is labelled and noted as CIFAR-10's."""
    recs = [targeted("none", 0, True), targeted("none", 1, False)]
    (block,) = tables.build("3", recs, tables.Options(trials=2, paper=True), mix="any").blocks
    assert block.notes[:2] == [REDUCED, "paper column: the paper's CIFAR-10 numbers (our data: mnist-5k)"]
    assert "GM (paper CIFAR-10)" in block.columns


def test_table3_versus_a_row_no_block_has_lists_the_rows_of_every_block():
    from poisonbench.core.errors import PoisonbenchError

    recs = [targeted("none", 0, True), targeted("hint", 0, False, params=hint_params()),
            targeted("none", 0, True, dataset="fashion-mnist"),
            targeted("friends", 0, True, dataset="fashion-mnist", params={"beta": 0.062})]
    with pytest.raises(PoisonbenchError) as err:
        tables.build("3", recs, tables.Options(trials=1, paired=True, versus="atda"), mix="any")
    assert str(err.value) == ("--versus 'atda': no row of Table III with runs is named that; rows: FRIENDS, HINT, "
                              "W/o Defense")


def test_table3_names_an_attack_without_a_label_and_says_why_there_is_no_paired_row():
    """A plugin's attack has no label: its column is its name. A setting without W/o Defense runs has no paired row
    and one note saying so; the test-accuracy row's first two cells are labels."""
    recs = [make_record(method="hint", trial=t, params=hint_params(), targeted={
        "attack": "myattack", "target_index": t, "target_class": 1, "intended_class": 2, "success": t == 0})
        for t in (0, 1)]
    (block,) = tables.build("3", recs, tables.Options(trials=2, paired=True, paper=True, diff=True),
                            mix="any").blocks
    labels = ["GM", "MP", "BP", "FC-mean", "myattack"]
    assert block.columns == ["method", "metric"] + [c for a in labels for c in (a, f"{a} (paper CIFAR-10)", f"{a} Δ")]
    assert "no paired row: this setting has no W/o Defense runs to pair with" in block.notes
    hint_acc = next(i for i, r in enumerate(block.rows) if r[0].text == "HINT") + 1
    assert [(c.text, c.label) for c in block.rows[hint_acc][:2]] == [("", True), ("test acc.", True)]


def test_table2_never_ranks_the_oracle_and_counts_unpaired_runs_over_every_rho():
    """The oracle (an upper bound) is never marked best; a defense's runs without a W/o Defense partner are counted
    over all the ρ rows; a method without runs has empty parameters in the JSON rows."""
    recs = [make_record(method="none", rho=rho, trial=0, acc=0.5) for rho in (0.2, 0.4)]
    recs += [make_record(method="oracle", rho=rho, trial=0, acc=0.99) for rho in (0.2, 0.4)]
    recs += [make_record(method="knn", rho=rho, trial=t, acc=0.6) for rho in (0.2, 0.4) for t in (0, 1)]
    table = tables.build("2", recs, tables.Options(trials=1, paired=True), mix="any")
    (block,) = table.blocks
    oracle = block.columns.index("oracle (upper bound)")
    knn = block.columns.index("knn")
    assert [(r[oracle].best, r[knn].best) for r in block.rows] == [(False, True), (False, True)]
    assert block.notes[-1].startswith("paired: 2 knn run(s) have no W/o Defense run of the same trial and seed")
    with_paper = tables.build("2", recs, tables.Options(trials=1, paper=True), mix="any")  # lists every method
    assert {d["params"] for d in with_paper.data if d["method"] == "hint"} == {""}


def test_table4_of_hint_runs_at_no_cell_of_its_grid_notes_them_all_left_out():
    """HINT's runs at r 0.3 fall in no cell of Table IV: every cell is empty and the runs are counted in one note
    (before 2026-11-29's tests, nothing ran this: the note's reference then is the empty paper cell)."""
    recs = [make_record(method="hint", rho=0.6, trial=t, acc=0.8, params=hint_params(ratio=0.3)) for t in (0, 1)]
    (block,) = tables.build("4", recs, tables.Options(trials=2), mix="any").blocks
    assert all(row[2].text == "–" for row in block.rows)
    assert block.notes[-1].startswith(f"{SETTING}: not shown: 2 run(s) of hint with other parameters (")


def test_table3_versus_a_budget_row_labels_its_pairs_and_a_block_without_it_says_so():
    """`--versus "HINT (β 0.3)"`: the block that has the row pairs against it under its label; a block
    without it says it has no such runs to pair with, naming the row; a row that is only listed (--paper lists
    every paper method) but has no runs anywhere is refused."""
    from poisonbench.core.errors import PoisonbenchError

    signed = {**hint_params(beta=0.3), "sign": True}
    recs = [targeted("none", 0, True), targeted("hint", 0, True, params=hint_params()),
            targeted("hint", 0, False, params=signed), targeted("none", 0, True, dataset="fashion-mnist")]
    table = tables.build("3", recs, tables.Options(trials=1, versus="HINT (β 0.3)"), mix="any")
    fashion, mnist = table.blocks
    assert fashion.notes[-1] == "no paired row: this setting has no HINT (β 0.3) runs to pair with"
    assert [r[1].text for r in mnist.rows if r[1].text.startswith("vs")] == ["vs HINT (β 0.3)"] * 2
    with pytest.raises(PoisonbenchError, match=r"^--versus 'atda': no row of Table III with runs is named that"):
        tables.build("3", recs, tables.Options(trials=1, versus="atda", paper=True), mix="any")


# ---- Table III whole: a filter's removal row, the paired rows, the paper's and Δ columns, Wilson -----------------

def targeted_run(method, trial, success, params=None, removal=None):
    """`targeted` with a test accuracy of 0.8 + trial/100, so each cell's mean and std are its own."""
    return targeted(method, trial, success, params=params, acc=0.8 + trial / 100, removal=removal)


def test_table3_whole_with_a_filter_the_oracle_an_unpaired_run_the_paper_and_wilson():
    """Every row of Table III with --paired --paper --diff --wilson: W/o Defense over four targets (one outcome
    unknown: in neither k nor n, its accuracy still counted), HINT on a target W/o Defense never ran (no paired
    row), a budget row with no run of its own in most columns (its β still in the JSON), knn with its removal row
    after its paired row, the oracle never ranked. Expected numbers: Wilson from statsmodels, means and sample stds
    computed here, the paired cell from `stats.paired_success` (checked against the reference R code elsewhere)."""
    from statsmodels.stats.proportion import proportion_confint

    from poisonbench.report.tables.stats import paired_success

    recs = [targeted_run("none", t, s) for t, s in ((0, True), (1, True), (2, False), (3, None))]
    recs += [targeted_run("knn", t, s, removal={"poisons_removed": 10 + t, "poisons": 50, "clean_removed": 7,
                                                 "clean": 4950}) for t, s in ((0, False), (1, True), (2, False))]
    recs += [targeted_run("oracle", t, False) for t in (0, 1, 2)]
    recs += [targeted_run("hint", 5, True, params=hint_params()),
             targeted_run("hint", 0, False, params=hint_params(beta=0.3))]
    table = tables.build("3", recs, tables.Options(trials=3, paired=True, paper=True, diff=True, wilson=True),
                         mix="any")
    (block,) = table.blocks

    def wilson(k, n):
        lo, hi = proportion_confint(k, n, method="wilson")
        return f"{k}/{n} [{100 * lo:.0f}–{100 * hi:.0f}%]"

    def paper_asr(m, a):
        p = paper.table3(m, a)
        return f"{p['success'][0]}/{p['success'][1]}" if p else "–"

    def paper_acc(m, a):
        p = paper.table3(m, a)
        return f"{p['acc'][0]:.2f} ± {p['acc'][1]:.2f}" if p else "–"

    def d_asr(m, k, n):
        p = paper.table3(m, "gm")
        return f"{100 * (k / n - p['success'][0] / p['success'][1]):+.0f} pp" if p else "–"

    def d_acc(m, mean):
        p = paper.table3(m, "gm")
        return f"{mean - p['acc'][0]:+.2f}" if p else "–"

    def rest(m, metric):  # the MP, BP and FC columns: no runs; the paper's number where it has one
        out = []
        for a in ("mp", "bp", "fc"):
            out += ["–", paper_asr(m, a) if metric == "ASR" else paper_acc(m, a) if metric == "test acc." else "–",
                    "–"]
        return out

    def paired(rows_m, rows_none):
        ps = paired_success(rows_m, rows_none)

        def pp(x):
            text = f"{100 * x:+.0f}"
            return "+0" if text == "-0" else text
        return (f"Δ {pp(ps.diff)} pp [{pp(ps.lo)}, {pp(ps.hi)}] · {ps.second_only} saved, {ps.first_only} new of "
                f"{ps.n} · p {ps.p:.2g}")

    none_m, none_s = mean_std([80.0, 81.0, 82.0, 83.0])
    knn_m, knn_s = mean_std([80.0, 81.0, 82.0])
    expected = [
        ["W/o Defense", "ASR", wilson(2, 3), paper_asr("none", "gm"), d_asr("none", 2, 3), *rest("none", "ASR")],
        ["", "test acc.", f"{none_m:.2f} ± {none_s:.2f} (n=4)", paper_acc("none", "gm"), d_acc("none", none_m),
         *rest("none", "test acc.")],
        ["HINT (β 0.062)", "ASR", wilson(1, 1), paper_asr("hint", "gm"), d_asr("hint", 1, 1), *rest("hint", "ASR")],
        ["", "test acc.", "85.00 (n=1)", paper_acc("hint", "gm"), d_acc("hint", 85.0), *rest("hint", "test acc.")],
        ["HINT (β 0.3)", "ASR", wilson(0, 1), "–", "–", *rest("hint@beta=0.3", "ASR")],
        ["", "test acc.", "80.00 (n=1)", "–", "–", *rest("hint@beta=0.3", "test acc.")],
        ["", "vs W/o", paired([False], [True]), "–", "–", *rest("hint@beta=0.3", "vs")],
        ["ATDA", "ASR", "–", paper_asr("atda", "gm"), "–", *rest("atda", "ASR")],
        ["", "test acc.", "–", paper_acc("atda", "gm"), "–", *rest("atda", "test acc.")],
        ["FRIENDS", "ASR", "–", paper_asr("friends", "gm"), "–", *rest("friends", "ASR")],
        ["", "test acc.", "–", paper_acc("friends", "gm"), "–", *rest("friends", "test acc.")],
        ["EPIC", "ASR", "–", paper_asr("epic", "gm"), "–", *rest("epic", "ASR")],
        ["", "test acc.", "–", paper_acc("epic", "gm"), "–", *rest("epic", "test acc.")],
        ["knn", "ASR", wilson(1, 3), "–", "–", *rest("knn", "ASR")],
        ["", "test acc.", f"{knn_m:.2f} ± {knn_s:.2f}", "–", "–", *rest("knn", "test acc.")],
        ["", "vs W/o", paired([False, True, False], [True, True, False]), "–", "–", *rest("knn", "vs")],
        ["", "removed", f"33/150 poisons, {100 * 21 / 14850:.1f} % clean", "–", "–", *rest("knn", "removed")],
        ["oracle (upper bound)", "ASR", wilson(0, 3), "–", "–", *rest("oracle", "ASR")],
        ["", "test acc.", f"{knn_m:.2f} ± {knn_s:.2f}", "–", "–", *rest("oracle", "test acc.")],
        ["", "vs W/o", paired([False] * 3, [True, True, False]), "–", "–", *rest("oracle", "vs")]]
    assert [[c.text for c in row] for row in block.rows] == expected
    assert all([c.label for c in row[:2]] == [True, True] and not any(c.label for c in row[2:])
               for row in block.rows)
    assert block.rules == {2, 4, 7, 9, 11, 13, 17}  # a rule before each method's rows but the first
    gm = [(row[1].text, row[2].value, row[2].ranked, row[2].best) for row in block.rows]
    assert gm == [("ASR", 0.6667, True, False), ("test acc.", 81.5, True, False),
                  ("ASR", 1.0, True, False), ("test acc.", 85.0, True, True),
                  ("ASR", 0.0, True, True), ("test acc.", 80.0, True, False), ("vs W/o", None, True, False),
                  *[("ASR", None, True, False), ("test acc.", None, True, False)] * 3,
                  ("ASR", 0.3333, True, False), ("test acc.", 81.0, True, False), ("vs W/o", None, True, False),
                  ("removed", 0.22, True, False),
                  ("ASR", 0.0, False, False), ("test acc.", 81.0, False, False), ("vs W/o", None, True, False)]
    data = {(d["method"], d["beta"], d["attack"]): d for d in table.data}
    assert len(data) == len(table.data) == 8 * 4
    assert data[("hint", 0.3, "mp")]["trials"] == 0  # a budget row's β also where it has no run
    knn = data[("knn", None, "gm")]
    assert {k: knn[k] for k in ("successes", "trials", "asr", "poisons_removed", "poisons", "clean_removed",
                                "clean", "paired_targets", "paired_saved", "paired_new", "paired_with")} == {
        "successes": 1, "trials": 3, "asr": round(100 / 3, 4), "poisons_removed": 33, "poisons": 150,
        "clean_removed": 21, "clean": 14850, "paired_targets": 3, "paired_saved": 1, "paired_new": 0,
        "paired_with": "W/o Defense"}
    assert "poisons_removed" not in data[("none", None, "gm")]
    assert table.shown == {r["run_id"] for r in recs}


def test_table3_counts_an_unknown_outcome_none_or_nan_in_neither_k_nor_n():
    """A frame's success column may hold None or NaN for a run without an outcome (a frame built from several
    packs, a float column): either way the run is in neither the hits nor the targets."""
    from poisonbench.report.tables import records

    recs = [targeted_run("none", t, s) for t, s in ((0, True), (1, False), (2, None), (3, True))]
    df = records.frame(recs)
    df.loc[df.trial == 3, "success"] = float("nan")
    (block,) = builders.table3(df, tables.Options(trials=2, wilson=False)).blocks
    assert [c.text for c in block.rows[0][:3]] == ["W/o Defense", "ASR", "1/2"]


def test_table3_warns_of_a_cell_pooling_two_scenarios_of_the_one_poison_kind_it_shows():
    recs = [targeted_run("none", t, True) for t in (0, 1)]
    recs[1]["config"]["scenario"] = "transfer"
    recs[1]["run_id"] = "second"
    (block,) = tables.build("3", recs, tables.Options(trials=2), mix="any").blocks
    assert block.notes == [REDUCED, "warning: W/o Defense / GM pools runs of poison budgets 0.01 and scenarios "
                                    "scratch, transfer"]


def test_newest_poison_kinds_picks_each_columns_newest_kind_and_counts_the_rest_whole():
    """Per attack column with two or more poison kinds: the kind of its most recently finished run (ties: the
    larger run id), one note counting the other kind's runs, an attack without a label named as given; a column of
    one kind (sorted before the others: it must not end the search) and cells without runs add nothing."""
    import pandas as pd

    def runs(attack, kinds, finished):
        return pd.DataFrame({"attack": attack, "poisons_json": kinds, "finished_at": finished,
                             "run_id": [f"{attack}{i}" for i in range(len(kinds))]})

    chosen = {"none": pd.concat([runs("bp", ["a", "a"], ["1", "2"]), runs("gm", ["x", "y", "x"], ["1", "3", "2"])]),
              "hint": runs("myattack", ["p", "q", "q"], ["5", "5", "4"]), "knn": None, "epic": runs("gm", [], [])}
    notes: list[str] = []
    assert builders.newest_poison_kinds(chosen, notes) == {"gm": "y", "myattack": "q"}
    tail = ("run(s) whose poisons differ in ε, budget or attack parameters (or the model they were crafted against) "
            "from the column's newest run (a column shows one kind)")
    assert notes == [f"not shown: 2 GM {tail}", f"not shown: 1 myattack {tail}"]
    assert builders.newest_poison_kinds({"none": None, "hint": runs("gm", [], [])}, notes) == {}


def test_acc_cell_prints_zero_unsigned_without_a_sign_and_values_only_unsigned_cells():
    """A t-interval bound that rounds to zero prints 0.00 (+0.00 signed), never -0.00; an unsigned cell's value is
    its mean in percent to two places (what `mark_best` compares), a signed one (a difference) has none."""
    from poisonbench.report.tables.stats import Stat

    st = Stat(n=2, mean=0.0012345, std=0.00001, lo=-0.0000468, hi=0.0024)
    cell = builders.acc_cell(st, tables.Options(trials=2, ci=True))
    assert (cell.text, cell.value) == ("0.12 ± 0.00 [0.00, 0.24]", 0.12)
    cell = builders.acc_cell(st, tables.Options(trials=2, ci=True), signed=True)
    assert (cell.text, cell.value) == ("+0.12 ± 0.00 [+0.00, +0.24]", None)
    cell = builders.acc_cell(Stat(n=1, mean=0.123456, std=0.0, lo=0.0, hi=0.0), tables.Options(trials=1))
    assert (cell.text, cell.value) == ("12.35", 12.35)


def test_table3_versus_a_row_whose_runs_are_all_left_out_is_refused_as_a_row_without_runs():
    """HINT's only run is off the paper's parameters (r 0.25): its row is listed but empty, so `--versus hint` has
    no runs to pair with and is refused, naming the rows that have runs."""
    from poisonbench.core.errors import PoisonbenchError

    recs = [targeted("none", 0, True), targeted("hint", 0, False, params=hint_params(ratio=0.25))]
    with pytest.raises(PoisonbenchError) as err:
        tables.build("3", recs, tables.Options(trials=1, versus="hint"), mix="any")
    assert str(err.value) == "--versus 'hint': no row of Table III with runs is named that; rows: W/o Defense"


def test_table3s_wilson_interval_is_printed_in_whole_percent_of_both_bounds():
    """10/10 hits: the lower bound (72.2 %) is printed as 72, not rounded from a scaled value."""
    from statsmodels.stats.proportion import proportion_confint

    recs = [targeted("none", t, True) for t in range(10)]
    (block,) = tables.build("3", recs, tables.Options(trials=10), mix="any").blocks
    lo, hi = proportion_confint(10, 10, method="wilson")
    assert block.rows[0][2].text == f"10/10 [{100 * lo:.0f}–{100 * hi:.0f}%]" == "10/10 [72–100%]"


# ---- build: the table's name, its filters, the code-versions note ------------------------------------------------

@pytest.mark.parametrize("given, name", [
    ("2", "2"), ("ii", "2"), (" III ", "3"), ("iv", "4"), ("V", "5"), (5, "5"),
    ("matrix", "matrix"), (" Matrix", "matrix"), ("BACKDOOR", "backdoor")])
def test_check_table_takes_a_number_a_roman_numeral_in_any_case_matrix_or_backdoor(given, name):
    assert builders.check_table(given) == name


@pytest.mark.parametrize("given", ["6", "vi", "", "matrices", "table 2"])
def test_check_table_refuses_anything_else_naming_it_and_every_choice(given):
    from poisonbench.core.errors import PoisonbenchError

    with pytest.raises(PoisonbenchError) as err:
        builders.check_table(given)
    assert str(err.value) == f"unknown table {given!r}; valid choices: 2, 3, 4, 5, matrix, backdoor"


@pytest.mark.parametrize("codes, note", [
    (["a", "b"], "2 versions"),
    (["a", "b", "c", "a"], "3 versions"),
    (["a", ""], "1 version of the code (the records' env.code fingerprint), and 1 run(s) older than the fingerprint"),
    (["a", "b", "", ""], "2 versions of the code (the records' env.code fingerprint), and 2 run(s) older than the "
                         "fingerprint"),
    (["a", "a"], None),
    (["", ""], None),
    (["a"], None),
])
def test_a_table_of_runs_from_several_code_versions_says_how_many_whole(codes, note):
    """The note counts the code fingerprints of the runs shown and the runs older than the fingerprint (no
    `env.code`), and appears only where the runs shown come from two or more of those."""
    recs = [make_record(method="none", rho=0.4, trial=t, acc=0.5) for t in range(len(codes))]
    for r, code in zip(recs, codes, strict=True):
        r["env"] = {"code": code} if code else {}
    table = tables.build("2", recs, tables.Options(trials=len(codes)), mix="any")
    versions = [n for n in table.notes if n.startswith("the runs shown were made by")]
    if note is None:
        assert versions == []
        return
    if "fingerprint)" not in note:
        note += " of the code (the records' env.code fingerprint)"
    assert versions == [f"the runs shown were made by {note}; on a CPU, versions that change no arithmetic give "
                        "the same numbers, others differ by float rounding (docs/fidelity.md names the changes)"]


def test_build_keeps_the_methods_asked_and_the_runs_on_the_poisonsets_asked():
    """`methods` keeps those methods' columns only; `poison_sets` keeps the runs trained on those PoisonSets (and no
    later filter drops them again as not on the default ones)."""
    recs = []
    for method in ("none", "hint"):
        r = make_record(method=method, rho=0.4, trial=0, acc=0.5, params=hint_params() if method == "hint" else None)
        r["config"]["poison"].update(poison_sets={"pgd": "b1"}, poison_ids={"pgd": "b1", "dap": "d0"})
        recs.append(r)
    table = tables.build("2", recs, tables.Options(trials=1), mix="any", poison_sets="pgd=b1", methods=["hint"])
    (block,) = table.blocks
    assert block.columns == ["ρ", "HINT"]
    assert [[c.text for c in row] for row in block.rows] == [["0.4", "50.00"]]
    assert table.shown == {recs[1]["run_id"]}


def test_a_paper_column_asked_for_a_dataset_the_paper_lacks_says_there_is_none():
    recs = [make_record(dataset="fashion-mnist", method="none", rho=0.4, trial=0, acc=0.5)]
    (block,) = tables.build("2", recs, tables.Options(trials=1, paper=True), mix="any").blocks
    assert "the paper has no results for fashion-mnist: no paper column" in block.notes
    assert block.columns == ["ρ", "W/o Defense", "HINT", "ATDA", "FRIENDS", "EPIC"]  # --paper lists its methods


def test_build_keeps_the_methods_asked_after_choosing_the_newest_poisonset_generation():
    """`methods` filters after the newest generation of PoisonSets is chosen over every method's runs (as
    `report --missing` does): W/o Defense's only run, on an older generation than HINT's, is not shown even when
    only W/o Defense is asked, and the note counts it."""
    recs = []
    for method, ids, finished in (("none", "old", "2025-01-01T00:00:00+00:00"),
                                  ("hint", "new", "2025-02-01T00:00:00+00:00")):
        r = make_record(method=method, rho=0.4, trial=0, acc=0.5, params=hint_params() if method == "hint" else None)
        r["config"]["poison"].update(poison_ids={"pgd": ids})
        r["finished_at"] = finished
        recs.append(r)
    table = tables.build("2", recs, tables.Options(trials=1), mix="any", methods=["none"])
    assert (table.blocks, table.shown) == ([], set())
    assert table.notes == ["not shown: 1 mnist-5k run(s) of the mix pgd,dap,durp,deepconfuse trained on other "
                           "PoisonSets (pgd differ from the newest PoisonSets', which 1 run(s) used)"]


def test_the_generation_note_names_every_input_that_differs_from_the_newest_poisonsets():
    """An older generation that differs in an id, in ε and in the draw of the poisoned rows is named by all three,
    in that order, with the count of runs on the newest PoisonSets; it says nothing of which runs are shown (the
    note is made before `methods` filters)."""
    recs = []
    for trial, (ids, eps, rows, finished) in enumerate((
            ({"pgd": "old", "dap": "d"}, 0.2, "a", "2025-01-01T00:00:00+00:00"),
            ({"pgd": "new", "dap": "d"}, 0.3, "b", "2025-02-01T00:00:00+00:00"),
            ({"pgd": "new", "dap": "d"}, 0.3, "b", "2025-02-02T00:00:00+00:00"))):
        r = make_record(method="none", rho=0.4, trial=trial, acc=0.5)
        r["config"]["poison"].update(poison_ids=ids, eps=eps, row_stream=rows)
        r["finished_at"] = finished
        recs.append(r)
    table = tables.build("2", recs, tables.Options(trials=1), mix="any")
    assert table.shown == {recs[1]["run_id"], recs[2]["run_id"]}
    assert [n for n in table.notes if n.startswith("not shown")] == [
        "not shown: 1 mnist-5k run(s) of the mix pgd,dap,durp,deepconfuse trained on other PoisonSets (pgd, ε, the "
        "draw of the poisoned rows differ from the newest PoisonSets', which 2 run(s) used)"]


def test_a_method_whose_records_name_no_parameter_is_said_so_not_shown_as_an_empty_object():
    """A record whose `config.defense` names the method alone (another version's) cannot be checked against the
    defaults: the note says that its records name no parameter, not "other than its defaults: {}"; a record that
    names some still gets them printed."""
    recs = [make_record(method="none", rho=0.4, trial=0, acc=0.5),
            make_record(method="friends", rho=0.4, trial=0, acc=0.55),
            make_record(method="epic", rho=0.4, trial=0, acc=0.6, params={"subset_size": 0.5})]
    assert recs[1]["config"]["defense"] == {"method": "friends"}
    (block,) = tables.build("2", recs, tables.Options(trials=1), mix="any").blocks
    notes = [n for n in block.notes if " is shown " in n]
    assert notes == [
        "EPIC is shown with parameters other than its defaults (or from a version whose defaults this one cannot "
        'check): {"subset_size":0.5}',
        "FRIENDS is shown from records that name none of its parameters (a version whose defaults this one cannot "
        "check)"]


def test_every_setting_with_two_poisonset_generations_gets_its_note_after_one_with_one():
    """The generations are chosen per dataset, model, recipe and mix: a setting with one generation (here
    fashion-mnist, first in sorted order) does not end the search before a later one (mnist-5k) with two."""
    recs = [make_record(dataset="fashion-mnist", method="none", rho=0.4, trial=0, acc=0.5)]
    for trial, (ids, finished) in enumerate((("old", "2025-01-01T00:00:00+00:00"),
                                             ("new", "2025-02-01T00:00:00+00:00"))):
        r = make_record(method="none", rho=0.4, trial=trial, acc=0.5)
        r["config"]["poison"].update(poison_ids={"pgd": ids})
        r["finished_at"] = finished
        recs.append(r)
    table = tables.build("2", recs, tables.Options(trials=1), mix="any")
    assert table.shown == {recs[0]["run_id"], recs[2]["run_id"]}
    notes = table.notes + [n for block in table.blocks for n in block.notes]
    assert [n for n in notes if n.startswith("not shown")] == [
        "not shown: 1 mnist-5k run(s) of the mix pgd,dap,durp,deepconfuse trained on other PoisonSets (pgd differ "
        "from the newest PoisonSets', which 1 run(s) used)"]
