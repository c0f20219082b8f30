"""`report --table/--figure/--missing` (issue 5): golden tables, paper numbers, missing runs, figures, bad input.

Golden files: tests/golden/table{N}.{md,tex,csv} (plain) and table{N}_paper.md (--paper --diff --ci --wilson),
rendered from tests/report_records.synthetic_records(). Regenerate after an intended change with
`POISONBENCH_UPDATE_GOLDEN=1 pytest tests/test_report_tables.py` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonbench.core.hashing import short_hash
from poisonbench.report import figures, paper, tables
from poisonbench.report.figures import noise, panels
from tests.report_records import hint_params, make_record, synthetic_records, write_records

GOLDEN = Path(__file__).parent / "golden"
PAPER_TEXT = Path(__file__).parent / "data" / "hint_paper_tables.txt"  # verbatim excerpt: the paper's Tables II–V
UPDATE = os.environ.get("POISONBENCH_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"golden file {name} missing; run with POISONBENCH_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.fixture(scope="module")
def records():
    return synthetic_records()


# ----------------------------------------------------------------------------------------------- golden tables

@pytest.mark.parametrize("number", tables.TABLES)
@pytest.mark.parametrize("fmt,ext", [("md", "md"), ("latex", "tex"), ("csv", "csv")])
def test_golden_plain(records, number, fmt, ext):
    table = tables.build(number, records, tables.Options(trials=5))
    check_golden(f"table{number}.{ext}", tables.render(table, fmt))


@pytest.mark.parametrize("number", tables.TABLES)
def test_golden_with_paper(records, number):
    opts = tables.Options(trials=5, paper=True, diff=True, ci=True, wilson=True)
    check_golden(f"table{number}_paper.md", tables.render(tables.build(number, records, opts), "md"))


def test_markers_in_golden_tables(records):
    """The goldens contain what the issue asks for: bold best, (n=k) partial cells, – empty cells, booktabs."""
    md2 = tables.render(tables.build("2", records, tables.Options()), "md")
    assert "**" in md2 and "(n=3)" in md2 and "(n=1)" in md2 and "| – |" in md2
    assert "reduced scale" in md2 and "not shown: " in md2
    tex3 = tables.render(tables.build("3", records, tables.Options()), "latex")
    assert r"\toprule" in tex3 and r"\midrule" in tex3 and r"\bottomrule" in tex3 and r"\textbf{0/5 [0--43\%]}" in tex3
    md4 = tables.render(tables.build("4", records, tables.Options()), "md")
    assert "**93.70 ± 0.27**" in md4  # best r (0.25) bold


def test_json_and_filters(records):
    import json

    t = tables.build("2", records, tables.Options(), dataset="cifar10")
    data = json.loads(tables.render(t, "json"))
    assert data["table"] == "II" and {r["dataset"] for r in data["rows"]} == {"cifar10"}
    none0 = next(r for r in data["rows"] if r["method"] == "none" and r["rho"] == 0.0)
    assert none0["n"] == 2 and none0["paper_mean"] == 93.86 and none0["mean"] == pytest.approx(93.1)
    assert tables.build("2", records, tables.Options(), dataset="mnist").empty


def test_paper_numbers_only_for_the_paper_mix_and_rho_and_a_paired_request_that_cannot_apply_is_noted():
    """The paper's Table II / IV numbers are for the four-attack mix (IV: at ρ = 0.6): runs of one attack or at
    another ρ get no paper value and no Δ (in every format), and a note says why."""
    import json

    pgd_only = [make_record(method=m, params=hint_params() if m == "hint" else None, rho=1.0, trial=t, acc=0.5)
                for m in ("none", "hint") for t in range(2)]
    for r in pgd_only:
        r["config"]["poison"]["attacks"] = ["pgd"]
    opts = tables.Options(paper=True, diff=True)
    t = tables.build("2", pgd_only, opts, mix="pgd")
    rows = json.loads(tables.render(t, "json"))["rows"]
    assert rows and all(r["paper_mean"] is None and r["diff"] is None for r in rows)
    assert "no paper numbers: the paper's are for the mix PGD+DAP+DURP+DC" in tables.render(t, "md")
    mix = [make_record(method="hint", params=hint_params(), rho=rho, trial=t, acc=0.9) for rho in (0.6, 1.0)
           for t in range(2)]
    at_06 = json.loads(tables.render(tables.build("4", mix, opts), "json"))["rows"]
    assert any(r["paper_mean"] is not None for r in at_06)
    at_1 = tables.build("4", mix, tables.Options(paper=True, diff=True, rho=1.0))
    assert all(r["paper_mean"] is None for r in json.loads(tables.render(at_1, "json"))["rows"])
    assert "no paper numbers" in tables.render(at_1, "md")
    hint_only = tables.build("2", mix, tables.Options(paired=True))
    assert "no paired column: this setting has no W/o Defense runs" in tables.render(hint_only, "md")


def test_runs_without_a_pairing_partner_are_counted_in_a_note():
    runs = [make_record(method=m, params=hint_params() if m == "hint" else None, rho=0.6, trial=t)
            for m in ("none", "hint") for t in range(3)]
    text = tables.render(tables.build("2", runs, tables.Options(paired=True)), "md")
    assert "no W/o Defense run of the same trial and seed" not in text
    runs = [r for r in runs if not (r["config"]["defense"]["method"] == "none" and r["config"]["trial"] == 2)]
    text = tables.render(tables.build("2", runs, tables.Options(paired=True)), "md")
    assert "paired: 1 HINT run(s) have no W/o Defense run of the same trial and seed" in text


def test_a_cell_of_non_default_parameters_says_so():
    runs = [make_record(method="hint", params={**hint_params(), "gamma": 10.0}, rho=0.6, trial=t) for t in range(2)]
    text = tables.render(tables.build("2", runs, tables.Options()), "md")
    assert "HINT is shown with parameters other than its defaults" in text and '"gamma":10.0' in text
    from poisonbench.defenses import DEFENSES
    from poisonbench.engine.recipes import resolve_recipe

    defaults = DEFENSES.get("hint").defaults("mnist", resolve_recipe("mnist", "quick"))
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    runs = [make_record(method="hint", params=defaults, rho=0.6, trial=t) for t in range(2)]
    assert "other than its defaults" not in tables.render(tables.build("2", runs, tables.Options()), "md")


def test_a_table_says_when_its_runs_come_from_several_code_versions():
    runs = [make_record(method="none", rho=0.6, trial=t) for t in range(2)]
    assert "versions of the code" not in tables.render(tables.build("2", runs, tables.Options()), "md")
    runs[1]["env"] = {"code": "b" * 16}
    runs[0]["env"] = {"code": "a" * 16}
    assert "made by 2 versions of the code" in tables.render(tables.build("2", runs, tables.Options()), "md")
    runs[1]["env"] = {"code": "a" * 16}
    other = make_record(method="hint", params={**hint_params(), "gamma": 10.0}, rho=0.6, trial=0)
    other["env"] = {"code": "c" * 16}  # a run the table leaves out (non-default γ beside default-like runs)
    hint = [make_record(method="hint", params=hint_params(), rho=0.6, trial=t) for t in range(2)]
    for r in hint:
        r["env"] = {"code": "a" * 16}
    text = tables.render(tables.build("2", [*runs, *hint, other], tables.Options()), "md")
    assert "versions of the code" not in text and "not shown: 1 run(s) of hint" in text


def test_table5_warns_when_times_mix_compiled_and_eager_runs():
    runs = [make_record(method="none", rho=0.6, trial=t, seconds=100.0) for t in range(2)]
    runs += [make_record(method="hint", params=hint_params(), rho=0.6, trial=t, seconds=60.0, defense_seconds=5.0)
             for t in range(2)]
    plain = tables.render(tables.build("5", runs, tables.Options()), "md")
    assert "compiled" not in plain
    for r in runs[2:]:
        r["compiled"] = True
    mixed = tables.render(tables.build("5", runs, tables.Options()), "md")
    assert "times mix 2 compiled and 2 eager run(s)" in mixed


def test_a_difference_that_rounds_to_zero_prints_as_plus_zero():
    st = tables.stat([0.00001, -0.00003, 0.00001])
    assert tables.acc_cell(st, tables.Options(ci=True, trials=3), signed=True).text.startswith("+0.00 ± ")
    assert "-0.00" not in tables.acc_cell(st, tables.Options(ci=True, trials=3), signed=True).text


def test_statistics():
    st = tables.stat([0.9, 0.92, 0.94])
    assert st.std == pytest.approx(0.02)  # sample std, ddof = 1
    assert (st.hi - st.mean) == pytest.approx(4.302652729911275 * 0.02 / 3 ** 0.5)  # t(0.975, 2)
    lo, hi = tables.wilson(0, 5)
    assert lo == 0 and hi == pytest.approx(0.4345, abs=1e-4)
    lo, hi = tables.wilson(5, 5)
    assert hi == 1 and lo == pytest.approx(0.5655, abs=1e-4)
    # a missing value (None, or pandas' NaN for it) is left out, never averaged in (mutation stats.x_stat__mutmut_3)
    for missing in (None, float("nan"), np.nan):
        assert tables.stat([0.9, missing, 0.92, 0.94]) == tables.stat([0.9, 0.92, 0.94])
    assert tables.stat([None, float("nan")]) is None
    # parameter matching (`close`) includes its tolerance's bound, for a number and a column alike
    tol = tables.stats.TOL
    assert tables.stats.close(0.0, tol) and not tables.stats.close(0.0, 2 * tol)
    assert tables.stats.close(pd.Series([0.0, 2 * tol]), tol).tolist() == [True, True]
    assert tables.stats.close(pd.Series([0.0, 3 * tol]), 0.0).tolist() == [True, False]


def test_wilson_intervals_stay_in_0_1_and_table3_never_prints_minus_0_or_above_100():
    """The interval's ends are clamped to [0, 1]: unclamped, k = 0 of n = 21 gives a lower end just below 0
    (printed "[-0–15%]") and k = n = 16 an upper end just above 1. Every k of every n up to 60 (the ends hold k / n
    up to rounding: at k = 0 the lower end may be 1e-17), then Table III's cells."""
    for n in range(1, 61):
        for k in range(n + 1):
            lo, hi = tables.wilson(k, n)
            assert 0.0 <= lo <= hi <= 1.0 and lo - 1e-12 <= k / n <= hi + 1e-12, (k, n, lo, hi)
        assert f"{100 * tables.wilson(0, n)[0]:.0f}" == "0" and f"{100 * tables.wilson(n, n)[1]:.0f}" == "100", n

    def runs(attack: str, n: int, success: bool) -> list[dict]:
        return [make_record(dataset="cifar10", family="cifar10", recipe="paper", trial=t,
                            targeted={"attack": attack, "target_index": t, "target_class": 5, "intended_class": 1,
                                      "success": success}) for t in range(n)]

    table = tables.build("3", runs("gm", 21, False) + runs("bp", 16, True), tables.Options(trials=21))
    text = tables.render(table, "md")
    assert "| 0/21 [0–15%] |" in text and "| 16/16 [81–100%] |" in text, text
    assert "[-" not in text and "-0" not in text
    cells = {d["attack"]: (d["asr_wilson_low"], d["asr_wilson_high"]) for d in table.data if d["trials"]}
    assert cells["gm"][0] == 0.0 and cells["bp"][1] == 100.0 and all(0 <= v <= 100 for c in cells.values() for v in c)


def test_newcombe_paired_interval_matches_the_worked_example_and_covers_at_its_level():
    """Newcombe (1998) method 10: Altman et al. (2000, Statistics with Confidence, Table 6.2) work the table
    [[14, 5], [0, 22]] to D = 0.122 in [0.011, 0.226]. Swapping the two outcomes negates the interval, and over
    simulated 20-target tables (strongly correlated, independent, anti-correlated pairs) it covers the true
    difference at about 95 % (Newcombe's method is a little conservative where the pairs agree): a sign slip in φ or
    a dropped φ moves the correlated cases far off."""
    lo, hi = tables.stats.newcombe_paired(14, 5, 0, 22)
    assert (round(lo, 3), round(hi, 3)) == (0.011, 0.226)
    for table in [(3, 1, 11, 5), (0, 0, 0, 20), (20, 0, 0, 0), (2, 9, 2, 7)]:
        lo, hi = tables.stats.newcombe_paired(*table)
        swapped = tables.stats.newcombe_paired(table[0], table[2], table[1], table[3])
        assert swapped == pytest.approx((-hi, -lo)) and -1 <= lo <= (table[1] - table[2]) / 20 <= hi <= 1
    rng = np.random.default_rng(0)
    for probs in [(0.45, 0.05, 0.05, 0.45), (0.4, 0.02, 0.28, 0.3), (0.1, 0.3, 0.5, 0.1)]:
        truth = probs[1] - probs[2]
        intervals = [tables.stats.newcombe_paired(*t) for t in rng.multinomial(20, probs, size=2000)]
        covered = np.mean([lo <= truth <= hi for lo, hi in intervals])
        width = np.mean([hi - lo for lo, hi in intervals])
        if probs[1] == probs[2]:  # pairs that agree on 18 of 20: the correlation narrows the interval (φ = 0: 0.56)
            assert covered >= 0.95 and width < 0.4, (probs, covered, width)
        else:  # φ with its sign flipped: 0.998 and 0.684
            assert 0.92 <= covered <= 0.975, (probs, covered, width)


# Newcombe (1998, Stat. Med. 17:2635), Table III, the method-10 rows (cells e, f, g, h = both, first only, second
# only, neither), printed to 4 decimals with z = 1.96: every branch of φ's shrinkage is among them (ad − bc < 0 in
# (36, 12, 2, 0); 0 ≤ ad − bc ≤ n/2 in (1, 98, 0, 1); > n/2 in (53, 0, 0, 1); a zero margin in (0, 30, 0, 0)).
NEWCOMBE_1998_TABLE_III = {
    (36, 12, 2, 0): (0.0569, 0.3404), (20, 12, 2, 16): (0.0562, 0.3292), (18, 12, 2, 18): (0.0562, 0.3290),
    (36, 14, 0, 0): (0.1528, 0.4167), (35, 14, 0, 1): (0.1461, 0.4175), (18, 14, 0, 18): (0.1441, 0.3963),
    (2, 97, 1, 0): (0.8721, 0.9854), (1, 97, 1, 1): (0.8736, 0.9850), (0, 29, 1, 0): (0.6666, 0.9882),
    (2, 98, 0, 0): (0.9178, 0.9945), (1, 98, 0, 1): (0.9171, 0.9916), (0, 30, 0, 0): (0.8395, 1.0),
    (54, 0, 0, 0): (-0.0664, 0.0664), (53, 0, 0, 1): (-0.0729, 0.0729), (30, 0, 0, 24): (-0.0358, 0.0358),
    (29, 0, 0, 25): (-0.0354, 0.0354), (28, 0, 0, 26): (-0.0352, 0.0352), (27, 0, 0, 27): (-0.0351, 0.0351),
}


@pytest.mark.parametrize("cells", sorted(NEWCOMBE_1998_TABLE_III))
def test_newcombe_paired_interval_reproduces_newcombe_1998_table_iii(cells):
    """Each method-10 row of the paper's Table III to its printed 4 decimals (1e-4: the paper's z is 1.96, ours
    1.95996...)."""
    lo, hi = tables.stats.newcombe_paired(*cells)
    published = NEWCOMBE_1998_TABLE_III[cells]
    assert lo == pytest.approx(published[0], abs=1e-4) and hi == pytest.approx(published[1], abs=1e-4), (lo, hi)


def test_newcombe_paired_interval_matches_fagerland_cavo_example_and_its_edge_cases():
    """Fagerland, Lydersen & Laake (2017, Statistical Analysis of Contingency Tables, ch. 8; their R package
    contingencytables checks it) work Cavo et al. (2012) [[59, 6], [16, 80]] to −0.0621 in [−0.1186, −0.0046].
    Where 0 ≤ ad − bc ≤ n/2 φ is 0, so the interval is the unpaired square-and-add of the two Wilson intervals:
    (5, 3, 3, 3) has ad − bc = 6 between n/3 and n/2, (4, 3, 2, 3) exactly n/2. z = 0 shrinks both Wilson intervals,
    and so the difference's, to the point estimate. No pairs: no interval; one pair: a finite one. `num` keeps no
    NaN (a JSON summary cannot hold one)."""
    lo, hi = tables.stats.newcombe_paired(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    for cells in [(5, 3, 3, 3), (4, 3, 2, 3), (1, 1, 7, 12)]:
        n = sum(cells)
        k1, k2 = cells[0] + cells[1], cells[0] + cells[2]
        (l1, u1), (l2, u2) = tables.stats.wilson(k1, n), tables.stats.wilson(k2, n)
        d = (k1 - k2) / n
        unpaired = (d - np.hypot(k1 / n - l1, u2 - k2 / n), d + np.hypot(k2 / n - l2, u1 - k1 / n))
        assert tables.stats.newcombe_paired(*cells) == pytest.approx(unpaired, abs=1e-12), cells
    assert tables.stats.newcombe_paired(5, 4, 1, 3, z=0.0) == pytest.approx((3 / 13, 3 / 13), abs=1e-12)
    assert all(math.isnan(v) for v in tables.stats.newcombe_paired(0, 0, 0, 0))
    z2 = 1.959963984540054**2  # one pair, a success both times: each Wilson interval is [1/(1 + z²), 1], φ is 0
    assert tables.stats.newcombe_paired(1, 0, 0, 0) == pytest.approx((-z2 / (1 + z2), z2 / (1 + z2)), abs=1e-12)
    assert tables.stats.num(math.nan) is None and tables.stats.num(None) is None
    assert tables.stats.num(0.123456) == 0.1235


def test_mcnemar_exact_counts_only_the_discordant_targets():
    """11 targets saved and 1 new: 2 · (1 + 12) / 2¹² = 0.00635, whatever the concordant count; none discordant: 1."""
    assert tables.stats.mcnemar_exact(1, 11) == pytest.approx(2 * 13 / 4096)
    assert tables.stats.mcnemar_exact(11, 1) == pytest.approx(2 * 13 / 4096)
    assert tables.stats.mcnemar_exact(0, 0) == 1.0 and tables.stats.mcnemar_exact(3, 3) == pytest.approx(1.0)
    ps = tables.stats.paired_success([True, False, False, True], [True, True, True, False])
    assert (ps.both, ps.first_only, ps.second_only, ps.neither, ps.diff) == (1, 1, 2, 0, -0.25)
    with pytest.raises(ValueError, match="one per target"):
        tables.stats.paired_success([True], [True, False])


def test_table3_paired_row_pairs_each_target_with_the_undefended_run_of_the_same_trial():
    """`--paired` on Table III: per defense, its ASR minus W/o Defense's on the same targets. Here both hit 10 of 20,
    so the unpaired cells cannot tell them apart, but on different targets: HINT saves the 10 W/o Defense lost
    (trials 0–9) and loses the 10 others. A pairing by trial sees 10 saved and 10 new; a pairing that ignored the
    trial (or the seed) would not. A defense run without a W/o Defense partner stays out."""
    def run(method: str, trial: int, success: bool, seed: int = 0) -> dict:
        return make_record(method=method, params=hint_params() if method == "hint" else None, trial=trial,
                           base_seed=seed, targeted={"attack": "fc", "target_index": trial, "target_class": 5,
                                                     "intended_class": 1, "success": success})

    records = ([run("none", t, t < 10) for t in range(20)] + [run("hint", t, t >= 10) for t in range(20)]
               + [run("friends", t, t >= 15) for t in range(20)] + [run("friends", 0, True, seed=7)])
    table = tables.build("3", records, tables.Options(trials=20, paired=True), dataset="mnist-5k")
    cells = {d["method"]: d for d in table.data if d["attack"] == "fc"}
    assert cells["none"]["successes"] == cells["hint"]["successes"] == 10
    hint = cells["hint"]
    assert (hint["paired_targets"], hint["paired_saved"], hint["paired_new"], hint["paired_diff"]) == (20, 10, 10, 0)
    friends = cells["friends"]  # 10 saved (trials 0–9), 5 new (15–19); the seed-7 run has no partner
    assert (friends["paired_targets"], friends["paired_saved"], friends["paired_new"]) == (20, 10, 5)
    assert friends["paired_diff"] == -25.0 and friends["paired_low"] < 0 < friends["paired_high"]
    assert friends["paired_p"] == pytest.approx(tables.stats.mcnemar_exact(5, 10), abs=1e-6)
    text = tables.render(table, "md")
    assert "Δ +0 pp [" in text and "· 10 saved, 10 new of 20 · p 1" in text and "| vs W/o |" in text
    assert "Newcombe's 95 % interval" in text
    plain = tables.build("3", records, tables.Options(trials=20), dataset="mnist-5k")
    assert "vs W/o" not in tables.render(plain, "md")
    alone = tables.build("3", [r for r in records if r["config"]["defense"]["method"] != "none"],
                         tables.Options(trials=20, paired=True), dataset="mnist-5k")
    assert "no paired row: this setting has no W/o Defense runs to pair with" in tables.render(alone, "md")


# ----------------------------------------------------------------------------------------------- paper numbers

def paper_lines(start: str, stop: str) -> list[str]:
    text = PAPER_TEXT.read_text()
    body = text[text.index(start):]
    return body[:body.index(stop)].splitlines()[1:]


PM = re.compile(r"(\d+\.\d+) ± (\d+\.\d+)")


def test_paper_numbers_match_text():
    n = paper.numbers()
    # Table II: 12 rows of 5 "mean ± std" (CIFAR-10 ρ = 0..1, then MNIST), methods in the paper's order
    rows = [PM.findall(line) for line in paper_lines("TABLE II:", "TABLE III:")]
    rows = [r for r in rows if len(r) == 5]
    assert len(rows) == 12
    for i, row in enumerate(rows):
        key, rho = ("cifar10", "mnist")[i // 6], f"{(i % 6) * 0.2:.1f}"
        for method, (m, s) in zip(tables.PAPER_METHODS, row, strict=True):
            assert n["table2"][key][rho][method] == [float(m), float(s)], (key, rho, method)
    # Table III: an ASR line (4 × k/n) then a test-acc line (4 × mean ± std) per method
    lines = paper_lines("TABLE III:", "Fig. 3:")
    asr = [re.findall(r"(\d)/(\d)", ln) for ln in lines if "ASR" in ln]
    acc = [PM.findall(ln) for ln in lines if "Test acc" in ln]
    assert len(asr) == len(acc) == 5
    for method, a_row, c_row in zip(tables.PAPER_METHODS, asr, acc, strict=True):
        for attack, (k, total), (m, s) in zip(tables.ATTACKS, a_row, c_row, strict=True):
            cell = n["table3"]["cifar10"][method][attack]
            assert cell["success"] == [int(k), int(total)] and cell["acc"] == [float(m), float(s)]
    # Table IV: r rows then β rows, CIFAR-10 and MNIST columns
    rows = [(re.search(r"(\d\.\d+)\s", ln), PM.findall(ln)) for ln in paper_lines("TABLE IV:", "increase compared")]
    rows = [(float(v.group(1)), pms) for v, pms in rows if v and len(pms) == 2]
    assert [v for v, _ in rows] == list(tables.R_GRID) + list(tables.BETA_GRID)
    for i, (value, pms) in enumerate(rows):
        param = "ratio" if i < 4 else "beta"
        for key, (m, s) in zip(("cifar10", "mnist"), pms, strict=True):
            assert paper.table4(key, param, value) == (float(m), float(s))
    # Table V: "HINT $(r = R)$ <t> <Method> <t>"
    lines = paper_lines("TABLE V:", "VII. CONCLUSION")
    labels = {"W/o Defense": "none", "ATDA": "atda", "FRIENDS": "friends", "EPIC": "epic"}
    for ln in lines:
        m = re.match(r"HINT \$\(r = ([\d.]+)\)\$\s+(\d+)\s+(.+?)\s+(\d+)$", ln.strip())
        if m:
            assert paper.table5("hint", float(m.group(1))) == int(m.group(2))
            assert paper.table5(labels[m.group(3)]) == int(m.group(4))


def test_paper_row_mapping():
    assert paper.paper_key("2", "mnist-5k") == "mnist" and paper.paper_key("2", "mnist") == "mnist"
    assert paper.paper_key("4", "cifar10") == "cifar10"
    assert paper.paper_key("2", "fashion-mnist") is None and paper.paper_key("2", "x.npz") is None
    assert paper.paper_key("5", "mnist-5k") == "cifar10"  # Table V exists only for CIFAR-10
    assert paper.reduced_scale("mnist", "paper", 30) == []
    assert paper.reduced_scale("cifar10", "paper", 80) == []
    assert len(paper.reduced_scale("mnist-5k", "quick", 10)) == 3


# ----------------------------------------------------------------------------------------------- --missing

def parse_command(cmd: str) -> dict:
    args = shlex.split(cmd)
    assert args[:2] == ["poisonbench", "defend"]
    flags = dict(zip(args[2::2], args[3::2], strict=False))
    return {"dataset": flags["--dataset"], "method": flags["--method"], "rho": float(flags["--poison-ratio"]),
            "trials": int(flags["--trials"]), "recipe": flags["--recipe"],
            "epochs": int(flags["--epochs"]) if "--epochs" in flags else None,
            "ratio": float(flags["--ratio"]) if "--ratio" in flags else None,
            "beta": float(flags["--beta"]) if "--beta" in flags else None}


def simulate(cmd: dict) -> list[dict]:
    """The records `poisonbench defend` would write for `cmd` (synthetic accuracies)."""
    family = "cifar10" if cmd["dataset"] == "cifar10" else "mnist"
    params = hint_params(cmd["ratio"], cmd["beta"]) if cmd["method"] == "hint" else None
    return [make_record(dataset=cmd["dataset"], family=family, recipe=cmd["recipe"], epochs=cmd["epochs"],
                        method=cmd["method"], params=params, rho=cmd["rho"], trial=t, acc=0.9)
            for t in range(cmd["trials"])]


@pytest.mark.parametrize("number", ["2", "4", "5"])
def test_missing_commands_complete_the_table(records, monkeypatch, number):
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none", "hint"])
    opts = tables.Options(trials=5)
    recs = [r for r in records if r["config"]["dataset"] == "mnist-5k"]
    commands, notes = tables.missing_commands(number, recs, opts, dataset="mnist-5k", methods=["none", "hint"])
    assert commands and len(commands) == len(set(commands))
    assert not notes
    for c in commands:
        assert c.startswith("poisonbench defend --dataset mnist-5k --method ")
        assert "--trials 5 --recipe quick" in c
    parsed = [parse_command(c) for c in commands]
    if number == "2":  # none: ρ = 1.0 has 3 trials; hint: ρ = 0.4 (1 trial), 0.8 (1), 1.0 (0)
        assert {(p["method"], p["rho"]) for p in parsed} == {("none", 1.0), ("hint", 0.4), ("hint", 0.8),
                                                             ("hint", 1.0)}
        assert all(p["ratio"] == 0.5 and p["beta"] == 0.062 for p in parsed if p["method"] == "hint")
        one_each, _ = tables.missing_commands(number, recs, opts, dataset="mnist-5k", methods=["none", "hint"],
                                              per_trial=True)
        assert len(one_each) == 2 + 4 + 4 + 5 and all(" --trial " in c for c in one_each)
    done = {r["run_id"] for r in recs}
    for p in parsed:
        recs += [r for r in simulate(p) if r["run_id"] not in done]
    again, _ = tables.missing_commands(number, recs, opts, dataset="mnist-5k", methods=["none", "hint"])
    assert again == []
    assert tables.missing_commands(number, recs, opts, dataset="mnist-5k", methods=["none", "hint"],
                                   per_trial=True)[0] == []
    table = tables.build(number, recs, opts, dataset="mnist-5k", methods=["none", "hint"])
    assert "(n=" not in tables.render(table, "md").replace("W/o", "")  # no under-sampled cell left


def test_missing_for_a_dataset_without_records(monkeypatch):
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    commands, notes = tables.missing_commands("2", [], tables.Options(trials=3), dataset="cifar10", recipe="quick")
    assert commands == [f"poisonbench defend --dataset cifar10 --method none --poison-ratio {r:.1f} --trials 3 "
                        "--recipe quick" for r in tables.RHOS]
    assert notes and "hint" in notes[0]  # unregistered paper methods are named, not silently dropped
    with_dir, _ = tables.missing_commands("2", [], tables.Options(trials=3), dataset="cifar10", recipe="quick",
                                          data_dir="/data/my cifar")
    assert with_dir == [f"{c} --data-dir '/data/my cifar'" for c in commands]  # runnable as printed


def test_missing_for_a_new_setting_keeps_the_epochs_and_model_filters(monkeypatch):
    """`report --missing --epochs 20` on a setting with no 20-epoch runs lists commands that make 20-epoch runs
    (else a scheduler looping on `--missing` would never finish); the same for `--model`."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    runs = [make_record(recipe="paper", trial=t) for t in range(2)]  # 30-epoch runs exist
    opts = tables.Options(trials=2, rho=0.0)
    commands, _ = tables.missing_commands("2", runs, opts, dataset="mnist-5k", recipe="paper", epochs=20,
                                          methods=["none"])
    assert commands == ["poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.0 --trials 2 "
                        "--recipe paper --epochs 20"]
    commands, _ = tables.missing_commands("2", runs, opts, dataset="mnist-5k", recipe="paper", model="resnet18",
                                          methods=["none"])
    assert commands[0].endswith("--recipe paper --model resnet18")
    made = [make_record(recipe="paper", epochs=20, trial=t) for t in range(2)]
    assert tables.missing_commands("2", runs + made, opts, dataset="mnist-5k", recipe="paper", epochs=20,
                                   methods=["none"])[0] == []


@pytest.mark.parametrize("overrides", [{"lr": 0.0123456789}, {"milestones": []}, {"epochs": 7, "milestones": [2]}])
def test_recipe_flags_rebuild_the_exact_recipe(overrides):
    """The flags `--missing` prints resolve to the very recipe of the runs (full float precision; an explicit
    empty milestone list is kept)."""
    from poisonbench.engine.recipes import resolve_recipe

    recipe = resolve_recipe("cifar10", "paper", **overrides).to_dict()
    setting = tables.Setting("cifar10", "resnet18", "paper", recipe["epochs"], json.dumps(recipe, sort_keys=True))
    flags = tables.recipe_flags(setting)
    parsed = dict(zip(flags[::2], flags[1::2], strict=True))
    rebuilt = {"epochs": int(parsed["--epochs"]) if "--epochs" in parsed else None,
               "lr": float(parsed["--lr"]) if "--lr" in parsed else None,
               "milestones": [int(m) for m in parsed["--milestones"].split(",") if m] if "--milestones" in parsed
               else None}
    assert resolve_recipe("cifar10", "paper", **rebuilt).to_dict() == recipe


def test_missing_end_to_end(cli, tmp_path, monkeypatch):
    """Real runs: 1 of 2 trials done → `--missing` prints the command; running it completes the table."""
    from tests.conftest import class_images

    monkeypatch.chdir(tmp_path)
    x, y = class_images(300, 28)
    np.savez(tmp_path / "e2e.npz", x=x, y=y)
    res = str(tmp_path / "res")
    base = ["--dataset", "e2e.npz", "--recipe", "quick", "--epochs", "1", "--device", "cpu", "--results", res]
    code, _, err = cli("defend", *base, "--trials", "1", "--json")
    assert code == 0, err
    code, out, err = cli("report", "--table", "2", "--missing", "--trials", "2", "--rho", "0", "--method", "none",
                         "--results", res)
    assert code == 0, err
    assert out.strip() == ("poisonbench defend --dataset e2e.npz --method none --poison-ratio 0.0 --trials 2 "
                           f"--recipe quick --epochs 1 --results {res}")  # the lines complete *this* workspace
    code, per_trial, err = cli("report", "--table", "2", "--missing", "--per-trial", "--trials", "3", "--rho", "0",
                               "--method", "none", "--results", res)
    assert code == 0, err
    assert per_trial.splitlines() == [f"poisonbench defend --dataset e2e.npz --method none --poison-ratio 0.0 "
                                      f"--trial {t} --recipe quick --epochs 1 --results {res}" for t in (1, 2)]
    code, _, err = cli(*shlex.split(out.strip())[1:], "--device", "cpu", "--json")  # as printed
    assert code == 0, err
    code, out, err = cli("report", "--table", "2", "--missing", "--trials", "2", "--rho", "0", "--method", "none",
                         "--results", res)
    assert code == 0 and out == "" and "0 command(s)" in err
    code, out, _ = cli("report", "--table", "2", "--trials", "2", "--rho", "0", "--format", "csv", "--results", res)
    assert code == 0 and ",none,{},2," in out
    # an .npz named by its path: the records (named by file name) match, and the commands carry the path
    path = str(tmp_path / "e2e.npz")
    code, out, err = cli("report", "--table", "2", "--missing", "--trials", "3", "--rho", "0", "--method", "none",
                         "--dataset", path, "--results", res)
    assert code == 0, err
    assert out.strip() == (f"poisonbench defend --dataset {path} --method none --poison-ratio 0.0 --trials 3 "
                           f"--recipe quick --epochs 1 --results {res}")
    code, out, _ = cli("report", "--dataset", path, "--format", "csv", "--results", res)
    assert code == 0 and "e2e.npz" in out and ",2," in out


# ----------------------------------------------------------------------------------------------- figures

@pytest.mark.parametrize("number", figures.FIGURES)
def test_figures_render(records, tmp_path, monkeypatch, number):
    """Every figure at the product's resolution (the other tests draw at tests/conftest.py's `TEST_DPI`)."""
    monkeypatch.setattr(panels, "DPI", 120)
    monkeypatch.setattr(panels, "split_test_images", lambda *args: np.full((100, 1, 28, 28), 128, np.uint8))
    paths = figures.draw(number, records, tmp_path, paper=True)
    assert paths
    for p in paths:
        assert p.suffix == ".png" and p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_a_figure_is_saved_at_the_dpi_of_panels(tmp_path, monkeypatch):
    """`panels.save` rasterises at `panels.DPI` (the product's 120 unless a caller sets it): a 4 × 2 inch figure
    filled edge to edge (`bbox_inches="tight"` trims nothing and pads 0.1 inch a side) is 4.2 × 2.2 inches: 504 × 264
    pixels at 120 dpi, 168 × 88 at 40."""
    import matplotlib.pyplot as plt

    assert panels.DPI == 40  # tests/conftest.py's TEST_DPI
    sizes = {}
    for dpi in (120, 40):
        monkeypatch.setattr(panels, "DPI", dpi)
        fig = plt.figure(figsize=(4, 2))
        fig.add_axes((0, 0, 1, 1)).set_axis_off()
        fig.patches.append(plt.Rectangle((0, 0), 1, 1, transform=fig.transFigure, figure=fig))
        sizes[dpi] = png_size(panels.save(fig, tmp_path / f"f{dpi}.png").read_bytes())
    assert sizes == {120: (504, 264), 40: (168, 88)}


def test_figure_options_that_cannot_match_say_so(cli, tmp_path, records):
    res = write_records(tmp_path / "res", records)
    plain = next(r["run_id"] for r in records if r["config"]["defense"]["method"] == "none")
    code, _, err = cli("report", "--figure", "1", "--run", plain, "--results", res, "--out", tmp_path / "f")
    assert code == 2 and "keeps no healthy-noise examples" in err and not (tmp_path / "f").exists()
    code, _, err = cli("report", "--figure", "2", "--trial", "-1", "--results", res)
    assert code == 2 and "--trial must be a non-negative" in err
    code, out, err = cli("report", "--figure", "2", "--trial", "99", "--results", res, "--out", tmp_path / "f")
    assert code == 0 and out == "" and "trial 99 (the records have trials 0" in err


def test_sample_predictions_field():
    import torch

    from poisonbench.experiment.prediction_samples import sample_predictions

    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    probs = torch.eye(3)[torch.tensor([2, 1, 1, 0, 0, 1])] * 0.7 + 0.1
    sp = sample_predictions(probs, labels)
    assert sp["test_indices"] == [1, 2, 0] and sp["labels"] == [0, 1, 2]
    assert sp["pred"] == [1, 1, 2] and sp["prob"] == [0.8, 0.8, 0.8] and len(sp["probs"][0]) == 3


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_table_md(cli, tmp_path, records):
    res = write_records(tmp_path / "res", records)
    code, out, err = cli("report", "--table", "4", "--format", "md", "--results", res)
    assert code == 0, err
    assert out == tables.render(tables.build("4", records, tables.Options()), "md")
    code, out, err = cli("report", "--table", "2", "--dataset", "mnist-5k", "--paper", "--format", "md",
                         "--results", res)
    assert code == 0 and "paper MNIST" in out and "reduced scale" in out


@pytest.mark.parametrize("args,needle", [
    (["--table", "7"], "valid choices: 2, 3, 4, 5"),
    (["--figure", "9"], "valid choices: 1, 2, 3, 4, rho"),
    (["--table", "2", "--format", "xls"], "valid choices: rich, md, latex, csv, json"),
    (["--table", "2"], "no run records found"),
    (["--figure", "rho"], "no run records found"),
    (["--table", "2", "--figure", "1"], "either --table or --figure"),
    (["--paper"], "--paper applies to --table or --figure only"),  # these were silently ignored
    (["--paired", "--format", "csv"], "--paired applies to --table or --figure only"),
])
def test_cli_bad_input(cli, tmp_path, args, needle):
    code, out, err = cli("report", *args, "--results", tmp_path / "empty")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ") and needle in err, err


def test_cli_empty_table_is_reported(cli, tmp_path, records):
    res = write_records(tmp_path / "res", records)
    code, out, err = cli("report", "--table", "3", "--dataset", "mnist-5k", "--results", res)
    assert code == 0 and out == "" and "Table III: no records match (dataset=mnist-5k)" in err
    code, out, err = cli("report", "--figure", "3", "--dataset", "mnist-5k", "--results", res, "--out", tmp_path)
    assert code == 0 and "nothing to draw" in err


def test_missing_counts_only_the_cells_parameter_set(monkeypatch):
    """HINT runs at the cell's r and β but another γ are a different experiment: they do not fill the cell."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none", "hint"])
    paper_cell = [make_record(method="hint", params=hint_params(), rho=1.0, trial=t) for t in range(3)]
    other_gamma = [make_record(method="hint", params={**hint_params(), "gamma": 10.0}, rho=1.0, trial=t)
                   for t in range(2)]
    commands, _ = tables.missing_commands("2", paper_cell + other_gamma, tables.Options(trials=4, rho=1.0),
                                          dataset="mnist-5k", methods=["hint"], per_trial=True)
    assert [c.split(" --trial ")[1].split()[0] for c in commands] == ["3"]


def test_runs_on_other_poison_sets_are_not_pooled():
    """After an attack's default changes, its PoisonSets get new ids: a cell must not average old and new runs."""
    def run(trial, dc_id, acc):
        r = make_record(rho=1.0, trial=trial, acc=acc)
        r["config"]["poison"]["poison_ids"] = {"pgd": "p1", "dap": "d1", "durp": "u1", "deepconfuse": dc_id}
        return r

    old = [run(t, "old", 0.90) for t in range(3)]
    new = [run(t, "new", 0.50) for t in range(2)]
    for r in new:
        r["finished_at"] = "2025-02-01T00:00:00+00:00"  # after the old ones: the current generation
    records = old + new
    table = tables.build("2", records, tables.Options(trials=3), dataset="mnist-5k")
    (row,) = [d for d in table.data if d["method"] == "none" and d["rho"] == 1.0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(50.0)
    assert any("3 mnist-5k run(s)" in n and "deepconfuse differ" in n for n in table.notes)
    commands, _ = tables.missing_commands("2", records, tables.Options(trials=3, rho=1.0), dataset="mnist-5k",
                                          methods=["none"], per_trial=True)
    assert [c.split(" --trial ")[1].split()[0] for c in commands] == ["2"]  # the new generation lacks trial 2
    from poisonbench.report import aggregate as report

    plain = report.summarize(report.records_frame(records))  # `poisonbench report` without --table
    assert sorted(plain.n) == [2, 3]
    other_lr = [make_record(trial=t) for t in range(2)]
    for r in other_lr:
        r["config"]["recipe"]["lr"] = 0.5  # same recipe name and epochs, another learning rate
    plain = report.summarize(report.records_frame([make_record(trial=t) for t in range(3)] + other_lr))
    assert sorted(plain.n) == [2, 3]


def test_runs_with_another_row_draw_are_not_pooled():
    """Runs whose poisoned rows were drawn from the trial seed itself (before the rows had their own stream) and
    runs of the current draw are two generations: the cell shows the newest, and the note says what differs."""
    old = [make_record(rho=0.6, trial=t, acc=0.90) for t in range(3)]
    new = [make_record(rho=0.6, trial=t, acc=0.70) for t in range(2)]
    for r in new:
        r["config"]["poison"]["row_stream"] = "untargeted-rows"
        r["finished_at"] = "2025-02-01T00:00:00+00:00"
    table = tables.build("2", old + new, tables.Options(trials=3), dataset="mnist-5k")
    (row,) = [d for d in table.data if d["method"] == "none" and d["rho"] == 0.6]
    assert row["n"] == 2 and row["mean"] == pytest.approx(70.0)
    assert any("3 mnist-5k run(s)" in n and "the draw of the poisoned rows differ" in n for n in table.notes)


def test_runs_on_another_craft_of_the_same_poison_sets_are_not_paired_and_the_table_says_so():
    """The same poison ids crafted into other tensors (other code or CPU kind rounds differently) are other poisons:
    `--paired` pairs only runs on the same craft (a record that does not name its tensors, written before 2026-11-23
    (commit a76ea46), is paired as before), the cells pool both crafts, and a note names the cell and the crafts with
    their run counts (issue 63: a record naming no craft is craft `unknown`)."""
    ids = {"pgd": "1" * 16, "dap": "2" * 16, "durp": "3" * 16, "deepconfuse": "4" * 16}

    def run(method, trial, acc, dap):
        r = make_record(method=method, params=hint_params() if method == "hint" else None, rho=1.0, trial=trial,
                        acc=acc)
        r["config"]["poison"]["poison_ids"] = ids
        r["run_id"] = short_hash(r["config"])
        r["poison_tensors"] = {"pgd": "p", "dap": dap, "durp": "u", "deepconfuse": "c"} if dap else None
        return r

    records = ([run("none", t, 0.90, "first") for t in range(5)] + [run("hint", t, 0.80, "second") for t in range(3)]
               + [run("hint", 3, 0.95, "first"), run("hint", 4, 0.60, None)])
    table = tables.build("2", records, tables.Options(trials=5, rho=1.0, paired=True), dataset="mnist-5k")
    cells = {d["method"]: d for d in table.data if d["rho"] == 1.0}
    assert cells["none"]["n"] == 5 and cells["hint"]["n"] == 5 and cells["hint"]["mean"] == pytest.approx(79.0)
    assert cells["hint"]["paired_n"] == 2 and cells["hint"]["paired_mean"] == pytest.approx((5.0 - 30.0) / 2)
    text = tables.render(table, "md")
    assert "paired: 3 HINT run(s) have no W/o Defense run of the same trial and seed on the same craft" in text
    hint_cell = "mixed crafts in the cell mnist-5k · HINT · ρ = 1.0: PoisonSet 11111111 as 11111111@p (4 runs), "
    assert hint_cell in text and ("PoisonSet 22222222 as 22222222@first (1 run), 22222222@second (3 runs), "
                                  "22222222@unknown (1 run)") in text
    assert "mixed crafts in the cell mnist-5k · W/o Defense" not in text
    assert "PoisonSet 22222222 in 3 crafts among the runs shown" in text and table.mixed
    assert "1 mnist-5k run(s) shown of the mix pgd,dap,durp,deepconfuse name no craft" in text
    from poisonbench.report import aggregate as report

    plain = report.load_summary(records, mix="any", poison_sets="any")  # `poisonbench report` without --table
    assert any(hint_cell in n for n in plain.attrs["craft_notes"])
    one_craft = [r for r in records if (r["poison_tensors"] or {}).get("dap") != "second"]
    table = tables.build("2", one_craft, tables.Options(trials=5, rho=1.0, paired=True), dataset="mnist-5k")
    text = tables.render(table, "md")
    assert "22222222@second" not in text and "name no craft" in text
    (hint,) = [d for d in table.data if d["rho"] == 1.0 and d["method"] == "hint"]
    assert hint["paired_n"] == 2  # the unnamed craft pairs with any


def test_the_plain_report_counts_distinct_trials_like_the_tables():
    """A trial re-run with another --seed replaces the older run of that trial id (newest wins), in the plain
    report as in Table II, with a note; n never exceeds the number of distinct trials."""
    from poisonbench.report import aggregate as report

    records = [make_record(rho=0.6, trial=t, acc=a) for t, a in enumerate((0.90, 0.92, 0.97))]
    reseeded = make_record(rho=0.6, trial=0, acc=0.50)
    reseeded["config"]["seed"] = 100
    reseeded["run_id"] = "reseeded"
    reseeded["finished_at"] = "2099-01-01T00:00:00+00:00"
    records.append(reseeded)
    plain = report.summarize(report.records_frame(records))
    (row,) = plain.to_dict(orient="records")
    assert row["n"] == 3 and row["test_acc_mean"] == pytest.approx((0.50 + 0.92 + 0.97) / 3)
    assert plain.attrs["not_shown"] == 1
    table = tables.build("2", records, tables.Options(trials=3), dataset="mnist-5k")
    (cell,) = [d for d in table.data if d["method"] == "none" and d["rho"] == 0.6]
    assert cell["n"] == row["n"] and cell["mean"] == pytest.approx(100 * row["test_acc_mean"])


def test_a_cell_prefers_the_default_parameters_over_a_larger_sensitivity_run():
    from poisonbench.defenses import DEFENSES
    from poisonbench.engine.recipes import resolve_recipe

    defaults = DEFENSES.get("hint").defaults("mnist", resolve_recipe("mnist", "quick"))
    records = ([make_record(method="hint", params=defaults, rho=1.0, trial=t, acc=0.8) for t in range(2)]
               + [make_record(method="hint", params={**defaults, "gamma": 10.0}, rho=1.0, trial=t, acc=0.6)
                  for t in range(3)])
    table = tables.build("2", records, tables.Options(trials=5, rho=1.0), dataset="mnist-5k")
    (row,) = [d for d in table.data if d["method"] == "hint"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(80.0)
    assert any("gamma=10.0" in n for b in table.blocks for n in b.notes if n) or \
        any("gamma=10.0" in n for n in table.notes if n)


@pytest.mark.parametrize("number", ["4", "5"])
def test_tables_iv_and_v_warn_when_attack_mixes_are_pooled(number):
    """`--attacks any` pools every mix; like Table II, Tables IV and V then say so."""
    from poisonbench.defenses import DEFENSES
    from poisonbench.engine.recipes import resolve_recipe

    defaults = DEFENSES.get("hint").defaults("mnist", resolve_recipe("mnist", "quick"))
    records = []
    for mix in (None, ["pgd"]):
        for t in range(3):
            for method, params in (("none", None), ("hint", defaults)):
                r = make_record(method=method, params=params, rho=0.6, trial=t)
                if mix:
                    r["config"]["poison"]["attacks"] = mix
                    r["run_id"] = short_hash(r["config"])
                records.append(r)
    pooled = tables.build(number, records, tables.Options(trials=3), dataset="mnist-5k", mix="any")
    one = tables.build(number, records, tables.Options(trials=3), dataset="mnist-5k")
    warning = "different attack mixes are pooled"
    assert any(warning in n for b in pooled.blocks for n in b.notes if n)
    assert not any(warning in n for b in one.blocks for n in b.notes if n)


def test_missing_lists_no_table_ii_commands_for_a_setting_with_only_targeted_runs():
    targeted = [make_record(dataset="cifar10", family="cifar10", recipe="paper", trial=t,
                            targeted={"attack": "gm", "target_index": t, "target_class": 1, "intended_class": 2,
                                      "success": True}) for t in range(3)]
    clean = [make_record(method=m, rho=0.6, trial=t) for m in ("none", "hint") for t in range(5)]
    commands, _ = tables.missing_commands("2", targeted + clean, tables.Options(trials=5, rho=0.6))
    assert commands and not any("cifar10" in c for c in commands)


def gm_run(trial: int, success: bool, **poison) -> dict:
    """A CIFAR-10 GM targeted run of `trial` whose `config.poison` has the fields `poison` changed."""
    r = make_record(dataset="cifar10", family="cifar10", recipe="paper", trial=trial,
                    targeted={"attack": "gm", "target_index": trial, "target_class": 1, "intended_class": 2,
                              "success": success})
    r["config"]["poison"].update(poison)
    r["run_id"] = short_hash(r["config"])
    return r


def test_table_iii_never_pools_poison_budgets():
    """Runs of another poison budget are another kind: the column shows the newest budget's runs only, says so,
    and no longer needs a pooling warning."""
    def run(trial, ratio, success):
        return gm_run(trial, success, ratio=ratio)

    one = [run(t, 0.01, True) for t in range(3)]
    table = tables.build("3", one, tables.Options(trials=3))
    assert not any("pools runs" in n or "not shown" in n for b in table.blocks for n in b.notes if n)
    newer = [run(t, 0.1, False) for t in range(3)]
    for r in newer:
        r["finished_at"] = "2025-02-01T00:00:00+00:00"
    table = tables.build("3", one + newer, tables.Options(trials=3))
    notes = [n for b in table.blocks for n in b.notes if n]
    assert not any("pools runs" in n for n in notes)
    assert any("not shown: 3 GM run(s) whose poisons differ in ε, budget or attack parameters" in n for n in notes)
    cell = next(r for r in json.loads(tables.render(table, "json"))["rows"] if r["attack"] == "gm")
    assert (cell["successes"], cell["trials"]) == (0, 3)


def test_table_iii_never_pools_targeted_runs_of_another_eps():
    """Targeted runs of one trial made with another ε are not repeats of that trial, and not pooled with it: the
    cell keeps the newest ε (so no trial id counts twice) and a note counts the others."""
    def run(trial, eps, success):
        return gm_run(trial, success, eps=eps)

    same = [run(t, 16 / 255, True) for t in range(2)]
    table = tables.build("3", same, tables.Options(trials=2))
    assert not any("pools runs" in n for b in table.blocks for n in b.notes if n)
    mixed = same + [run(t, 4 / 255, False) for t in range(2)]
    for r in mixed[2:]:
        r["finished_at"] = "2025-02-01T00:00:00+00:00"
    table = tables.build("3", mixed, tables.Options(trials=2))
    assert any("not shown: 2 GM run(s) whose poisons differ in ε, budget" in n
               for b in table.blocks for n in b.notes if n)
    assert not any("repeating the trial id" in n for n in table.notes)
    cell = next(r for r in json.loads(tables.render(table, "json"))["rows"] if r["attack"] == "gm")
    assert (cell["successes"], cell["trials"]) == (0, 2)  # the newer ε's two trials, not four
    # a column compares like with like: another method whose own newest runs are at the older ε shows that ε's
    # runs only if the column's newest kind is it; here the column's newest is 4/255, which HINT lacks
    hint = [gm_run(t, True, eps=16 / 255) for t in range(2)]
    for r in hint:
        r["config"]["defense"] = {"method": "hint", **hint_params()}
        r["run_id"] += "-h"
    table = tables.build("3", mixed + hint, tables.Options(trials=2))
    cells = {r["method"]: r for r in json.loads(tables.render(table, "json"))["rows"] if r["attack"] == "gm"}
    assert cells["none"]["trials"] == 2 and cells["hint"]["trials"] == 0


def test_figure_1_draws_a_run_with_the_papers_parameters(tmp_path, monkeypatch):
    """A newer sensitivity run (β 0.251, γ 10) at the same ρ does not replace the paper-parameter run in Fig. 1."""
    from poisonbench.defenses import DEFENSES
    from poisonbench.engine.recipes import resolve_recipe
    from tests.report_records import healthy_noise_examples

    defaults = DEFENSES.get("hint").defaults("mnist", resolve_recipe("mnist", "quick"))
    paper_run = make_record(method="hint", params=dict(defaults), rho=1.0, examples=healthy_noise_examples())
    sweep = make_record(method="hint", params={**defaults, "beta": 0.251, "gamma": 10.0}, rho=1.0,
                        examples=healthy_noise_examples())
    sweep["finished_at"] = "2025-06-01T00:00:00+00:00"
    drawn = []
    monkeypatch.setattr(noise, "noise_figure", lambda rec, out: drawn.append(rec["run_id"]) or Path(out))
    noise.figure_1([sweep, paper_run], tmp_path)
    assert drawn == [paper_run["run_id"]]
    noise.figure_1([sweep], tmp_path)  # only a sensitivity run: still drawn
    assert drawn[-1] == sweep["run_id"]


def test_table_iii_shows_every_run_at_its_threat_dependent_defaults():
    """Deep k-NN's default k = 2·budget + 1 differs from column to column (GM 4 %, BP 1 %): every run at its
    defaults is in its column, none is left out as "other parameters"; a run at another k is."""
    def knn_run(attack, trial, poisoned, ratio, k):
        r = make_record(dataset="mnist-5k", recipe="quick", trial=trial, method="knn",
                        params={"k": k, "knn_self": True, "features": "auto"},
                        targeted={"attack": attack, "target_index": trial, "target_class": 1, "intended_class": 2,
                                  "success": False})
        r["config"]["poison"].update(poisoned=poisoned, ratio=ratio)
        r["run_id"] = short_hash(r["config"])
        return r

    runs = [knn_run("gm", t, 156, 0.04, 313) for t in range(2)] + [knn_run("bp", t, 39, 0.01, 79) for t in range(2)]
    table = tables.build("3", runs + [knn_run("bp", 2, 39, 0.01, 5)], tables.Options(trials=2))
    cells = {r["attack"]: r for r in json.loads(tables.render(table, "json"))["rows"] if r["method"] == "knn"}
    assert cells["gm"]["trials"] == 2 and cells["bp"]["trials"] == 2
    notes = [n for b in table.blocks for n in b.notes if n]
    assert any("not shown: 1 run(s) of knn with other parameters" in n and "k=5" in n for n in notes), notes


def test_missing_gives_each_setting_the_seed_and_runs_of_its_own(monkeypatch):
    """Two settings of one table (the quick and the paper recipe), each with its own base seed: every command names
    its setting's recipe and that setting's --seed, and the notes name only the setting whose runs have two base
    seeds (`missing_commands` selects a setting's runs once for all its cells)."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    quick = [make_record(recipe="quick", trial=0, base_seed=7)]
    paper = [make_record(recipe="paper", trial=0, base_seed=11), make_record(recipe="paper", trial=1, base_seed=5)]
    paper[1]["finished_at"] = "2030-01-01T00:00:00+00:00"  # the newest: its base seed 5 wins
    commands, notes = tables.missing_commands("2", quick + paper, tables.Options(trials=3, rho=0.0),
                                              dataset="mnist-5k", methods=["none"])
    assert commands == ["poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.0 --trials 3 "
                        "--recipe paper --seed 5",
                        "poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.0 --trials 3 "
                        "--recipe quick --seed 7"]
    assert len(notes) == 1 and "runs of several base seeds (5, 11)" in notes[0], notes


def test_missing_counts_each_settings_own_trials_of_a_method(monkeypatch):
    """Table II's column of a method is chosen once for its every ρ, within one setting: a setting whose trials are
    done gets no command, and one with a trial missing gets its own, whichever setting comes first."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    quick = [make_record(recipe="quick", trial=t) for t in range(2)]
    paper = [make_record(recipe="paper", trial=0)]
    for runs, incomplete in ((quick + paper, "paper"), (paper + quick, "paper")):
        commands, _ = tables.missing_commands("2", runs, tables.Options(trials=2, rho=0.0), dataset="mnist-5k",
                                              methods=["none"])
        assert commands == ["poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.0 --trials 2 "
                            f"--recipe {incomplete}"], commands
    paper.append(make_record(recipe="paper", trial=1))
    quick.pop()
    commands, _ = tables.missing_commands("2", quick + paper, tables.Options(trials=2, rho=0.0), dataset="mnist-5k",
                                          methods=["none"])
    assert commands == ["poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.0 --trials 2 "
                        "--recipe quick"], commands


def test_missing_takes_table_iis_column_choice_over_every_rho_and_the_other_tables_per_cell(monkeypatch):
    """Table II chooses a method's parameter set once for its column (the set with the most runs over every ρ), so
    a cell counts the column's set even where another set has more runs at its ρ; Table V chooses per cell."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["friends"])
    many, few = {"beta": 0.1, "friendly_steps": 3}, {"beta": 0.2, "friendly_steps": 3}  # neither the defaults
    runs = [make_record(method="friends", params=many, rho=0.0, trial=t) for t in range(2)]
    runs += [make_record(method="friends", params=many, rho=0.4, trial=0)]
    runs += [make_record(method="friends", params=few, rho=0.4, trial=t) for t in range(2)]
    need = {(n.rho, n.have) for n in tables.missing.needs("2", tables.frame(runs), tables.Options(), ["friends"])}
    assert {(0.0, 2), (0.4, 1)} <= need  # the column's set (3 runs) at ρ 0.4: 1 run, not the other set's 2
    need = tables.missing.needs("5", tables.frame(runs), tables.Options(rho=0.4), ["friends"])
    assert [(n.rho, n.have) for n in need] == [(0.4, 2)]  # per cell: the set with the most runs at ρ 0.4


def test_missing_counts_table_iis_hint_column_at_the_papers_ratio_and_beta(monkeypatch):
    """Table II's HINT column is HINT at the paper's r = 0.5, β = 0.062 (`HINT_PAPER`), even where runs at another
    r are more numerous and none of its runs is at every default: `--missing` counts the column's runs."""
    from tests.report_records import hint_params

    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["hint"])
    other_ratio = [make_record(method="hint", params=hint_params(ratio=0.3), rho=0.4, trial=t) for t in range(2)]
    paper_ratio = [make_record(method="hint", params={**hint_params(), "gamma": 0.2}, rho=0.4, trial=0)]
    need = {n.rho: n.have for n in tables.missing.needs("2", tables.frame(other_ratio + paper_ratio),
                                                        tables.Options(), ["hint"])}
    assert need[0.4] == 1  # the r = 0.5 run, not the two at r = 0.3


def test_missing_for_a_new_setting_takes_no_seed_or_mix_from_another_settings_runs(monkeypatch):
    """A setting with no runs yet (here 20 epochs, beside 30-epoch runs of base seed 7 on a mix of one attack) gets
    the default seed and mix: nothing of the other setting's runs leaks into its command."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    runs = [make_record(recipe="paper", rho=0.5, trial=t, base_seed=7) for t in range(2)]
    for r in runs:
        r["config"]["poison"]["attacks"] = ["pgd"]
    commands, notes = tables.missing_commands("2", runs, tables.Options(trials=2, rho=0.5), dataset="mnist-5k",
                                              recipe="paper", epochs=20, methods=["none"], mix="any")
    assert commands == ["poisonbench defend --dataset mnist-5k --method none --poison-ratio 0.5 --trials 2 "
                        "--recipe paper --epochs 20"], commands
    assert notes == []


def test_the_frame_keeps_text_as_objects_in_one_block_and_numbers_as_numbers():
    """`records.frame`: each text column a NumPy object column (pandas 3 infers its own `str` dtype, one block a
    column, which made every row selection of a report take them one by one) and the numbers as they were; the
    values are the records' whatever the dtype."""
    from poisonbench.report.tables import records as table_records

    recs = [make_record(method=m, rho=rho, trial=t, acc=0.5 + t / 10)
            for m in ("none", "hint") for rho in (0.0, 0.5) for t in range(3)]
    df = table_records.frame(recs)
    inferred = pd.DataFrame([table_records.record_row(r) for r in recs], columns=table_records.COLUMNS)
    text = [c for c, d in inferred.dtypes.items() if d == "str"]
    assert {"run_id", "method", "dataset", "params_json"} <= set(text)
    assert {c: str(d) for c, d in df.dtypes.items()} == {c: "object" if c in text else str(d)
                                                       for c, d in inferred.dtypes.items()}
    assert df.astype(inferred.dtypes.to_dict()).equals(inferred)  # the same values
    assert df._mgr.nblocks == df.dtypes.nunique()  # one block a dtype: the text columns in one (pandas' internals)
    assert table_records.frame([]).columns.tolist() == table_records.COLUMNS
