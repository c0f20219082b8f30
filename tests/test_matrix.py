"""`report --table matrix` (every defense against every attack alone) and its builtin grid `matrix-quick`."""

from __future__ import annotations

import json

import pytest

from poisonbench.attacks import ATTACKS, backdoor_attacks
from poisonbench.core.hashing import short_hash
from poisonbench.defenses import DEFENSES
from poisonbench.report import tables
from poisonbench.sweeps import load_grid
from tests.report_records import hint_params, make_record, write_records


def single(method: str, attack: str, acc: float, trial: int, rho: float = 1.0, params: dict | None = None) -> dict:
    """An untargeted run of `attack` alone (config.poison.attacks = [attack])."""
    return mix_run(method, [attack], acc, trial, rho, params)


def mix_run(method: str, attacks: list[str], acc: float, trial: int, rho: float = 1.0,
            params: dict | None = None) -> dict:
    r = make_record(method=method, rho=rho, trial=trial, acc=acc, params=params)
    r["config"]["poison"]["attacks"] = list(attacks)
    r["run_id"] = short_hash(r["config"])
    return r


def targeted(method: str, attack: str, trial: int, success: bool, params: dict | None = None) -> dict:
    return make_record(method=method, trial=trial, params=params, acc=0.9,
                       targeted={"attack": attack, "target_index": trial, "target_class": 1, "intended_class": 2,
                                 "success": success})


def matrix_records() -> list[dict]:
    recs = []
    for t in range(3):  # none vs pgd: 3 trials; vs dap: 2 trials
        recs.append(single("none", "pgd", 0.30 + 0.01 * t, t))
    for t in range(2):
        recs.append(single("none", "dap", 0.50 + 0.02 * t, t))
        recs.append(make_record(method="none", rho=0.0, trial=t, acc=0.97 + 0.01 * t))  # clean
    for t in range(2):  # knn (k = 101) vs pgd only: dap missing
        recs.append(single("knn", "pgd", 0.60 + 0.02 * t, t, params={"k": 101}))
    recs.append(single("hint", "dap", 0.80, 0, params=hint_params()))
    # must never enter a cell: a mix with pgd in it, and pgd alone at another ρ
    for t in range(3):
        recs.append(mix_run("knn", ["pgd", "dap"], 0.10, t, params={"k": 101}))
        recs.append(single("knn", "pgd", 0.11, t, rho=0.4, params={"k": 101}))
        recs.append(mix_run("friends", ["pgd", "durp"], 0.12, t, params={"beta": 0.062}))
    # targeted: GM against none (2 of 3 succeed) and knn (0 of 2)
    recs += [targeted("none", "gm", t, t < 2) for t in range(3)]
    recs += [targeted("knn", "gm", t, False, params={"k": 101}) for t in range(2)]
    return recs


def build(records, **opts):
    return tables.build("matrix", records, tables.Options(trials=1, **opts), mix="any")


def cells(table) -> dict:
    return {(r["method"], r["column"]): r for r in table.data}


def test_cells_are_single_attack_runs_at_the_ratio_with_none_beside():
    t = build(matrix_records())
    c = cells(t)
    block = next(b for b in t.blocks if b.title.startswith("mnist-5k"))
    assert block.columns == ["defense", "clean", "pgd", "dap", "gm"]  # the ATTACKS registry order, clean first
    assert [row[0].text for row in block.rows] == ["W/o Defense", "HINT", "knn"]  # DEFENSES order, none first
    assert "friends" not in {m for m, _ in c}  # its only runs are a mix
    pgd = c[("none", "pgd")]
    assert pgd["n"] == 3 and pgd["mean"] == pytest.approx(31.0) and pgd["std"] == pytest.approx(1.0)
    knn = c[("knn", "pgd")]  # the mix (0.10) and the ρ = 0.4 runs (0.11) stay out
    assert knn["n"] == 2 and knn["mean"] == pytest.approx(61.0) and knn["delta_vs_none"] == pytest.approx(30.0)
    assert c[("none", "dap")]["n"] == 2 and c[("none", "dap")]["mean"] == pytest.approx(51.0)
    assert c[("none", "clean")]["n"] == 2 and c[("none", "clean")]["mean"] == pytest.approx(97.5)
    assert c[("knn", "dap")]["n"] == 0 and c[("knn", "dap")]["mean"] is None  # missing, never invented
    assert c[("knn", "clean")]["n"] == 0
    assert c[("hint", "dap")]["n"] == 1 and c[("hint", "dap")]["delta_vs_none"] == pytest.approx(29.0)
    gm = c[("none", "gm")], c[("knn", "gm")]
    assert (gm[0]["successes"], gm[0]["n"], gm[1]["successes"], gm[1]["n"]) == (2, 3, 0, 2)
    texts = {row[0].text: [cell.text for cell in row[1:]] for row in block.rows}
    assert texts["knn"] == ["–", "61.00 ± 1.41 (n=2)", "–", "0/2"]
    assert texts["W/o Defense"][1] == "31.00 ± 1.00 (n=3)" and texts["W/o Defense"][3] == "2/3"
    md = tables.render(t, "md")
    assert "not shown: 6 untargeted run(s) of attack mixes" in md and "single-attack run(s) at ρ = 0.4" in md


def test_the_poison_ratio_picks_the_cells_and_none_is_shown_without_runs():
    t = build(matrix_records(), poison_ratio=0.4)
    c = cells(t)
    assert c[("knn", "pgd")]["n"] == 3 and c[("knn", "pgd")]["mean"] == pytest.approx(11.0)
    assert c[("none", "pgd")]["n"] == 0  # `none` keeps its row, empty where it has no runs
    block = next(b for b in t.blocks if b.title.startswith("mnist-5k"))
    assert block.rows[0][0].text == "W/o Defense"
    assert "dap" not in block.columns  # no run of dap alone at ρ = 0.4


def test_attacks_choose_the_columns_and_scenarios_split_a_targeted_column():
    recs = matrix_records()
    extra = targeted("none", "gm", 5, True)
    extra["config"]["scenario"] = "transfer"
    extra["run_id"] = short_hash(extra["config"])
    t = build([*recs, extra], attacks=("gm", "pgd"))
    block = next(b for b in t.blocks if b.title.startswith("mnist-5k"))
    assert block.columns == ["defense", "clean", "gm (scratch)", "gm (transfer)", "pgd"]
    c = cells(t)
    assert (c[("none", "gm (transfer)")]["successes"], c[("none", "gm (transfer)")]["n"]) == (1, 1)


def test_cli_table_json_png_and_bad_values(cli, tmp_path):
    root = write_records(tmp_path / "results", matrix_records())
    code, out, err = cli("report", "--table", "matrix", "--results", str(root), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["table"] == "matrix"
    row = next(r for r in data["rows"] if r["method"] == "knn" and r["column"] == "pgd")
    assert row["n"] == 2 and row["mean"] == pytest.approx(61.0)
    png = root / "figures" / "matrix_mnist-5k_convnet_quick10.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"heatmap: {png}" in err
    code, out, err = cli("report", "table", "matrix", "--results", str(root), "--out", str(tmp_path / "figs"),
                         "--poison-ratio", "0.4")
    assert code == 0, err
    assert "W/o Defense" in out and (tmp_path / "figs" / png.name).exists()
    for args, needle in ((["--table", "matrix", "--poison-ratio", "2"], "--poison-ratio must be in (0, 1]"),
                         (["--table", "matrix", "--poison-ratio", "0"], "--poison-ratio must be in (0, 1]"),
                         (["--table", "2", "--poison-ratio", "0.5"], "--poison-ratio applies to --table matrix"),
                         (["--table", "matrix", "--rho", "0.5"], "takes --poison-ratio"),
                         (["--table", "matrix", "--missing"], "--missing does not list the matrix's runs"),
                         (["--table", "nine"], "valid choices: 2, 3, 4, 5, matrix")):
        code, out, err = cli("report", *args, "--results", str(root))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)


# ----------------------------------------------------------------------------------------------- the grid

def test_matrix_quick_covers_every_defense_against_every_untargeted_attack_alone_and_every_backdoor():
    """Read from the registries: a defense, an untargeted attack or a backdoor registered without a place in the
    grid fails. The untargeted attacks run alone at ρ = 1.0 (the oracle, which would keep no row, has no place);
    the backdoors at their default budget, against every defense, the oracle included."""
    grid = load_grid("matrix-quick")
    backdoors = set(backdoor_attacks())
    untargeted = {a for a in ATTACKS.names() if not ATTACKS.get(a).targeted and a not in backdoors}
    mixes = [r for r in grid.runs if r.get("attacks") is not None]
    assert all(len(r.get("attacks")) == 1 for r in mixes)  # each attack alone, never a mix
    assert all(r.get("poison_ratio") == 1.0 for r in mixes)
    pairs = {(r.get("method"), r.get("attacks")[0]) for r in mixes}
    backdoor_runs = [r for r in grid.runs if r.get("attacks") is None]
    assert all(r.get("attack") in backdoors and not r.get("poison_ratio") and r.get("budget") is None
               for r in backdoor_runs)  # the default budget: no ρ, no --budget
    assert all(r.get("dataset") == "mnist-5k" and r.get("recipe") == "quick" for r in grid.runs)
    assert {r.trial for r in grid.runs} == {0}
    wanted = {(m, a) for m in DEFENSES.names() if not DEFENSES.get(m).sees_poison_mask for a in untargeted}
    missing = wanted - pairs
    assert not missing, f"matrix-quick lacks {sorted(missing)}"
    backdoor_pairs = {(r.get("method"), r.get("attack")) for r in backdoor_runs}
    missing = {(m, a) for m in DEFENSES.names() for a in backdoors} - backdoor_pairs
    assert not missing, f"matrix-quick lacks {sorted(missing)}"
    assert len(backdoor_pairs) == len(backdoor_runs)  # one run a pair
    assert grid.report[:2] == ["--table", "matrix"]


def test_runs_on_rems_budget_schedule_get_a_labelled_column_of_their_own():
    """Issue 67: REM's budget schedule is labelled in the tables: its runs (the record's inputs name the PoisonSet's
    schedule) form the column "rem (budget)", never pooled with the official schedule's "rem"; the plain report's
    poison label says so too."""
    def rem(acc, trial, schedule):  # crafted with `--grad-clip 0` (no departure but the schedule: issue 83)
        r = single("none", "rem", acc, trial)
        r["inputs"] = {"poisons": [{"attack": "rem", "poison_id": short_hash(schedule), "schedule": schedule,
                                    "adapted": ""}]}
        r["config"]["poison"]["poison_ids"] = {"rem": short_hash(schedule)}
        r["run_id"] = short_hash(r["config"])
        return r

    cut = "official+train_steps=2590"
    t = build([rem(0.90, 0, "official"), rem(0.97, 0, "budget"), rem(0.96, 1, "budget"), rem(0.5, 0, cut)])
    block = next(b for b in t.blocks if b.title.startswith("mnist-5k"))
    assert block.columns == ["defense", "rem", "rem (budget)", f"rem ({cut})"]
    c = cells(t)
    assert c[("none", "rem")]["n"] == 1 and c[("none", "rem")]["mean"] == pytest.approx(90.0)
    assert c[("none", "rem (budget)")]["n"] == 2 and c[("none", "rem (budget)")]["mean"] == pytest.approx(96.5)
    assert c[("none", f"rem ({cut})")]["n"] == 1 and c[("none", f"rem ({cut})")]["mean"] == pytest.approx(50.0)
    from poisonbench.report.tables.records import record_row

    assert record_row(rem(0.97, 0, "budget"))["poison_label"].endswith("[adapted rem=budget]")
    assert "adapted" not in record_row(rem(0.90, 0, "official"))["poison_label"]
    assert record_row(rem(0.5, 0, cut))["poison_label"].endswith(f"[adapted rem={cut}]")


def test_rem_runs_recorded_before_rem_had_a_schedule_are_labelled_budget():
    """Records written before issue 67 name no schedule (some have no `inputs` at all); REM's default then was the
    budget schedule on every family, so their runs are labelled as such, never pooled with the official schedule's.
    Records written before issue 83 name no departure: every REM craft then clipped its model's gradient at 5."""
    from poisonbench.report.tables.records import other_schedules

    old = {"config": {"poison": {"attacks": ["rem"], "kind": "untargeted"}}, "inputs": None}
    with_inputs = {"config": {"poison": {"attacks": ["rem", "pgd"]}}, "inputs": {"poisons": [{"attack": "rem"}]}}
    official = {"config": {"poison": {"attacks": ["rem"]}},
                "inputs": {"poisons": [{"attack": "rem", "schedule": "official"}]}}
    budget = {"config": {"poison": {"attacks": ["rem"]}},
              "inputs": {"poisons": [{"attack": "rem", "schedule": "budget"}]}}
    # ... and, like every REM craft before issue 83, with the source model's gradient clipped at 5
    assert other_schedules(old) == other_schedules(with_inputs) == other_schedules(budget) == "rem=budget+grad_clip=5"
    assert other_schedules(official) == "rem=official+grad_clip=5"
    assert other_schedules({**official, "inputs": {"poisons": [{"attack": "rem", "schedule": "official",
                                                                "adapted": ""}]}}) == ""
    assert other_schedules({"config": {"poison": {"attacks": ["pgd"]}}}) == other_schedules({"config": {}}) == ""
