"""What a report cell may average, and what `report` writes: one parameter set per sensitivity cell, one run per
trial, one dataset fingerprint per block, paper numbers only on the paper's grid, valid JSON, filters that apply."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from poisonbench.defenses import DEFENSES
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.experiment.records import run_id
from poisonbench.report import figures, paper, tables
from poisonbench.report.aggregate import load_summary
from poisonbench.report.figures import rho as rho_figure
from tests.report_records import make_record, write_records


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def summary_rows(cli, results, *args) -> list[dict]:
    """The plain report's rows (csv, so that these tests do not depend on how json writes NaN)."""
    code, out, err = cli("report", "--format", "csv", "--results", results, *args)
    assert code == 0, err
    return list(csv.DictReader(io.StringIO(out)))


def hint_defaults(ratio: float = 0.5, beta: float = 0.062) -> dict:
    return {**DEFENSES.get("hint").defaults("mnist", resolve_recipe("mnist", "quick")), "ratio": ratio, "beta": beta}


def hint_run(trial: int, acc: float, rho: float = 0.6, **params) -> dict:
    return make_record(method="hint", params={**hint_defaults(), **params}, rho=rho, trial=trial, acc=acc)


# ----------------------------------------------------------------------------------------------- Tables IV / V

@pytest.fixture
def sensitivity_runs():
    """Defaults at r = 0.5, β = 0.062 (three trials) and β = 0.031 (two); trial-0 variants of γ and sign at the
    same r and β, which must not be averaged into those cells."""
    return ([hint_run(t, 0.95) for t in range(3)] + [hint_run(t, 0.93, beta=0.031) for t in range(2)]
            + [hint_run(0, 0.50, gamma=10.0), hint_run(0, 0.60, sign=not hint_defaults()["sign"]),
               hint_run(0, 0.40, beta=0.031, gamma=10.0)])


def test_table4_cells_average_only_the_default_parameter_set(sensitivity_runs):
    table = tables.build("4", sensitivity_runs, tables.Options(trials=3))
    cell = {(d["parameter"], d["value"]): d for d in table.data}
    assert cell[("ratio", 0.5)]["n"] == 3 and cell[("ratio", 0.5)]["mean"] == pytest.approx(95.0)
    assert cell[("beta", 0.062)]["n"] == 3
    assert cell[("beta", 0.031)]["n"] == 2 and cell[("beta", 0.031)]["mean"] == pytest.approx(93.0)
    (note,) = [n for n in table.blocks[0].notes if "not shown" in n]
    assert "3 run(s) of hint" in note and "gamma=10.0" in note and "beta=0.031, gamma=10.0" in note


def test_table5_hint_rows_average_only_the_default_parameter_set(sensitivity_runs):
    runs = sensitivity_runs + [make_record(rho=0.6, trial=t) for t in range(3)]
    table = tables.build("5", runs, tables.Options(trials=3))
    (row,) = [d for d in table.data if d["method"] == "hint" and d["ratio"] == 0.5]
    assert row["n"] == 3
    assert any("2 run(s) of hint" in n and "gamma=10.0" in n for n in table.blocks[0].notes)


def test_missing_agrees_with_the_sensitivity_cells(sensitivity_runs, monkeypatch):
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["hint"])
    commands, _ = tables.missing_commands("4", sensitivity_runs, tables.Options(trials=3), dataset="mnist-5k",
                                          methods=["hint"], per_trial=True)
    beta_031 = [c for c in commands if "--ratio 0.5 --beta 0.031" in c]
    assert [c.split(" --trial ")[1].split()[0] for c in beta_031] == ["2"]  # trials 0, 1 of the defaults exist
    assert not [c for c in commands if "--ratio 0.5 --beta 0.062" in c]


def test_missing_agrees_with_a_table2_column(monkeypatch):
    """A Table II column holds one parameter set over all ρ: runs of another γ at a ρ the defaults lack leave
    that cell empty, so `--missing` must list it."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["hint"])
    runs = [hint_run(t, 0.9, rho=0.2) for t in range(2)] + [hint_run(t, 0.5, rho=0.4, gamma=10.0) for t in range(2)]
    opts = tables.Options(trials=2)
    (row,) = [d for d in tables.build("2", runs, opts).data if d["rho"] == 0.4 and d["method"] == "hint"]
    assert row["n"] == 0
    commands, _ = tables.missing_commands("2", runs, opts, dataset="mnist-5k", methods=["hint"])
    assert any("--poison-ratio 0.4 " in c for c in commands)


# ----------------------------------------------------------------------------------------------- cells

def test_a_cell_keeps_one_run_per_trial_id(monkeypatch):
    """Runs repeating a trial id (another --seed) are not averaged in as extra trials: the newest is kept."""
    old = [make_record(rho=0.2, trial=t, acc=0.9) for t in range(2)]
    new = make_record(rho=0.2, trial=0, acc=0.5, base_seed=100)
    new["finished_at"] = "2025-03-01T00:00:00+00:00"
    table = tables.build("2", [*old, new], tables.Options(trials=2, rho=0.2))
    (row,) = [d for d in table.data if d["method"] == "none"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(70.0)
    assert any("1 mnist-5k run(s) repeating the trial id" in n for n in table.notes)
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    commands, _ = tables.missing_commands("2", [old[0], new], tables.Options(trials=2, rho=0.2),
                                          dataset="mnist-5k", methods=["none"], per_trial=True)
    assert [c.split(" --trial ")[1].split()[0] for c in commands] == ["1"]


def test_a_cell_never_counts_one_training_twice(cli, tmp_path):
    """`--seed 0 --trials 3` then `--seed 1 --trials 1`: trial 0 of the second is seed 1, the same training as
    trial 1 of the first. The newest run of a trial id supersedes (seed 0's trial 0 goes), and seed 1 is counted
    once: the cell averages seeds 1 and 2, in the tables and the plain report, never seed 1 twice."""
    first = [make_record(rho=0.2, trial=t, acc=0.90 + 0.01 * t) for t in range(3)]
    again = make_record(rho=0.2, trial=0, acc=0.91, base_seed=1)
    again["finished_at"] = "2025-03-01T00:00:00+00:00"
    table = tables.build("2", [*first, again], tables.Options(trials=3, rho=0.2))
    (row,) = [d for d in table.data if d["method"] == "none"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(91.5)  # seed 1 (the newest) and seed 2
    assert any("repeating the trial id or seed" in n for n in table.notes)
    results = write_records(tmp_path / "res", [*first, again])
    (summary,) = summary_rows(cli, results)
    assert summary["n"] == "2"


def test_missing_converges_when_base_seeds_were_mixed(monkeypatch):
    """After a re-run with another --seed, `--missing --per-trial` lists commands with the newest base seed; run
    them and ask again: within a few rounds nothing is missing (a scheduler looping on it terminates)."""
    monkeypatch.setattr(tables.missing, "available_methods", lambda: ["none"])
    runs = [make_record(rho=0.2, trial=t, acc=0.9) for t in range(3)]
    newer = make_record(rho=0.2, trial=0, acc=0.9, base_seed=1)
    newer["finished_at"] = "2025-03-01T00:00:00+00:00"
    runs.append(newer)
    opts = tables.Options(trials=3, rho=0.2)
    for round_ in range(4):
        commands, notes = tables.missing_commands("2", runs, opts, dataset="mnist-5k", methods=["none"],
                                                  per_trial=True)
        if not commands:
            break
        assert all("--seed 1" in c for c in commands)
        assert round_ > 0 or any("newest runs' --seed 1" in n for n in notes)
        for c in commands:
            trial = int(c.split(" --trial ")[1].split()[0])
            made = make_record(rho=0.2, trial=trial, acc=0.9, base_seed=1)
            made["finished_at"] = f"2025-04-0{round_ + 1}T00:00:00+00:00"
            runs.append(made)
    assert not commands and round_ <= 2
    (row,) = [d for d in tables.build("2", runs, opts).data if d["method"] == "none"]
    assert row["n"] == 3


@pytest.mark.parametrize("fmt", ["rich", "md", "latex", "json"])
def test_every_format_says_which_runs_were_left_out(fmt, capsys):
    """The notes on runs a table leaves out (a repeated trial id, another PoisonSet generation) reach the user
    in every format, not only in markdown."""
    old = [make_record(rho=0.2, trial=t, acc=0.9) for t in range(2)]
    new = make_record(rho=0.2, trial=0, acc=0.5, base_seed=100)
    new["finished_at"] = "2025-03-01T00:00:00+00:00"
    table = tables.build("2", [*old, new], tables.Options(trials=2, rho=0.2))
    if fmt == "rich":
        tables.render_rich(table)
        text = capsys.readouterr().out
    else:
        text = tables.render(table, fmt)
    if fmt == "json":
        text = " ".join(json.loads(text)["table_notes"])
    assert "repeating the trial id" in " ".join(text.split())


def test_datasets_of_one_name_but_other_data_are_separate_blocks():
    runs = [make_record(trial=t, acc=0.9) for t in range(2)] + [make_record(trial=t, acc=0.5) for t in range(2)]
    for r in runs[2:]:
        r["config"]["dataset_fingerprint"] = "other"
    table = tables.build("2", runs, tables.Options(trials=2, rho=0.0))
    assert sorted(b.title.rsplit(" ", 1)[-1] for b in table.blocks) == ["fp", "other"]
    assert sorted(d["mean"] for d in table.data if d["method"] == "none") == pytest.approx([50.0, 90.0])
    alone = tables.build("2", runs[:2], tables.Options(trials=2, rho=0.0))
    assert "data" not in alone.blocks[0].title  # the tag only when it disambiguates


# ----------------------------------------------------------------------------------------------- paper

def test_paper_numbers_only_on_the_papers_rho_grid():
    assert paper.table2("mnist", 0.2, "none") is not None
    assert paper.table2("mnist", 0.25, "none") is None and paper.table2("mnist", 0.15, "none") is None
    runs = [make_record(rho=0.25, trial=t) for t in range(2)]
    (row,) = [d for d in tables.build("2", runs, tables.Options(rho=0.25, paper=True)).data if d["method"] == "none"]
    assert row["paper_mean"] is None and row["diff"] is None


def test_table2_shows_what_was_run_and_the_papers_layout_with_paper():
    """Without --paper a table has the ρ rows and method columns that have records (the README demo's none / HINT at
    ρ 0 and 1); --paper adds the paper's six ρ and five methods, which its numbers fill."""
    runs = [make_record(method=m, params=hint_defaults() if m == "hint" else None, rho=rho, trial=t, acc=0.9)
            for m in ("none", "hint") for rho in (0.0, 1.0) for t in range(2)]
    plain = tables.build("2", runs, tables.Options(trials=2)).data
    assert {d["rho"] for d in plain} == {0.0, 1.0} and {d["method"] for d in plain} == {"none", "hint"}
    full = tables.build("2", runs, tables.Options(trials=2, paper=True)).data
    assert {d["rho"] for d in full} == set(tables.RHOS)
    assert {d["method"] for d in full} == {"none", "hint", "atda", "friends", "epic"}


@pytest.mark.parametrize("dataset,family,needle", [
    ("fashion-mnist", None, "Fashion-MNIST"),
    ("fashion-5k.npz", "mnist", "not a paper dataset"),  # an .npz run with an MNIST recipe
])
def test_data_other_than_the_papers_is_reduced_scale(dataset, family, needle):
    reasons = paper.reduced_scale(dataset, "paper", 30, family)
    assert reasons and needle in reasons[0]


# ----------------------------------------------------------------------------------------------- figures

def test_rho_figure_never_mixes_settings_that_differ_only_in_overrides(tmp_path, monkeypatch):
    runs = [make_record(rho=rho, trial=t, acc=0.9) for rho in (0.0, 0.2) for t in range(2)]
    other_lr = [make_record(rho=rho, trial=t, acc=0.5) for rho in (0.0, 0.2) for t in range(2)]
    for r in other_lr:
        r["config"]["recipe"]["lr"] = 0.5
        r["run_id"] += "-lr"
    plotted = []

    def capture(fig, path):
        plotted.append(sorted(y for c in fig.axes[0].containers for y in c.lines[0].get_ydata()))
        return path

    monkeypatch.setattr(rho_figure, "save", capture)
    figures.draw("rho", runs + other_lr, tmp_path)
    assert sorted(plotted) == [[50.0, 50.0], [90.0, 90.0]]


# ----------------------------------------------------------------------------------------------- CLI

def test_plain_report_json_has_null_not_nan(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record()])
    code, out, err = cli("report", "--format", "json", "--results", res)
    assert code == 0, err
    (row,) = strict_json(out)
    assert row["n"] == 1 and row["test_acc_std"] is None


def test_plain_report_applies_the_table_filters(cli, tmp_path):
    runs = [make_record(method="none"), make_record(method="hint", params=hint_defaults()),
            make_record(method="none", epochs=3), make_record(dataset="cifar10", family="cifar10", recipe="paper")]
    res = write_records(tmp_path / "res", runs)

    def rows(*args):
        return summary_rows(cli, res, *args)

    assert len(rows()) == 4
    assert {(r["method"], r["epochs"]) for r in rows("--method", "hint,none", "--dataset", "mnist-5k")} == \
        {("none", "10"), ("hint", "10"), ("none", "3")}
    assert [r["epochs"] for r in rows("--epochs", "3")] == ["3"]
    assert [r["dataset"] for r in rows("--recipe", "paper")] == ["cifar10"]
    assert [r["dataset"] for r in rows("--model", "resnet18")] == ["cifar10"]
    code, _, err = cli("report", "--results", res, "--model", "vgg")  # a name that cannot match is a typo
    assert code == 2 and "unknown model 'vgg'" in err


def test_plain_report_attacks_filter(cli, tmp_path):
    mixed = make_record(rho=0.2)
    mixed["config"]["poison"]["attacks"] = ["pgd"]
    mixed["run_id"] = run_id(mixed["config"])  # the record of that config (report skips an edited one)
    res = write_records(tmp_path / "res", [make_record(rho=0.2), mixed])
    assert len(summary_rows(cli, res)) == 2  # without --attacks every mix is its own row
    assert [r["poison"] for r in summary_rows(cli, res, "--attacks", "pgd")] == ["mix@0.2"]
    spaced = summary_rows(cli, res, "--attacks", "pgd, dap, durp, deepconfuse")  # as a shell user may type it
    assert len(spaced) == 1 and spaced == summary_rows(cli, res, "--attacks", "pgd,dap,durp,deepconfuse")


def test_plain_report_rows_name_the_poisonsets_chosen_with_poisons(cli, tmp_path):
    """Two experiments that differ only in `defend --poisons` must not print as identical rows."""
    chosen = make_record(rho=0.2)
    chosen["config"]["poison"]["poison_sets"] = {"deepconfuse": "2ca87f493a26f8cb"}
    chosen["run_id"] = run_id(chosen["config"])
    res = write_records(tmp_path / "res", [make_record(rho=0.2), chosen])
    assert sorted(r["poison"] for r in summary_rows(cli, res)) == [
        "mix@0.2", "mix@0.2 [--poisons deepconfuse=2ca87f493a26f8cb]"]


def test_empty_table_in_json_is_still_json(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record()])
    code, out, err = cli("report", "--table", "3", "--format", "json", "--results", res)
    assert code == 0 and "no records match" in err
    assert strict_json(out)["rows"] == []


def test_skipped_record_files_are_counted_on_stderr(cli, tmp_path):
    res = write_records(tmp_path / "res", [make_record(trial=t) for t in range(2)])
    (res / "runs" / "broken.json").write_text('{"schema_version": 1, "run_')
    (res / "runs" / "future.json").write_text(json.dumps({**make_record(trial=2), "schema_version": 2}))
    (res / "runs" / "stub.json").write_text(json.dumps({"schema_version": 1, "run_id": "stub"}))  # no config
    no_acc = make_record(trial=3)
    del no_acc["metrics"]["test_acc"]
    (res / "runs" / "no_acc.json").write_text(json.dumps(no_acc))
    code, out, err = cli("report", "--format", "json", "--results", res)
    assert code == 0 and strict_json(out)[0]["n"] == 2
    assert "skipped 4 record file(s)" in err and "3 unreadable or incomplete" in err
    assert "1 not of schema_version 1" in err
    code, out, err = cli("report", "--table", "2", "--format", "json", "--results", res)
    assert code == 0 and strict_json(out)["rows"] and "skipped 4" in err


def _spoiled(trial: int, path: tuple[str, ...], value) -> dict:
    record = make_record(trial=trial, acc=0.9)
    node = record
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    record["run_id"] = f"spoiled{trial}"
    return record


SPOILED = [  # (field path, value, the words of the warning)
    (("metrics", "test_acc"), float("nan"), "metrics.test_acc is nan"),
    (("metrics", "test_acc"), None, "metrics.test_acc is None"),
    (("metrics", "test_acc"), 5.0, "metrics.test_acc is 5.0, not a number in [0, 1]"),
    (("metrics", "test_acc"), "0.9", "metrics.test_acc is '0.9'"),
    (("config", "recipe", "epochs"), "10", "config.recipe.epochs is '10', not an integer >= 1"),
    (("config", "trial"), True, "config.trial is True"),
    (("cost", "seconds"), float("inf"), "cost.seconds is inf"),
    (("metrics", "val_acc"), -0.1, "metrics.val_acc is -0.1"),
]


def test_records_that_cannot_be_trusted_are_named_and_never_averaged(cli, tmp_path):
    good = [make_record(trial=t, acc=0.8 + 0.02 * t) for t in range(3)]
    spoiled = [_spoiled(10 + i, path, value) for i, (path, value, _) in enumerate(SPOILED)]
    res = write_records(tmp_path / "res", good + spoiled)  # json.dumps writes NaN and Infinity as Python reads them
    code, out, err = cli("report", "--format", "json", "--results", res)
    assert code == 0, err
    (row,) = strict_json(out)
    assert row["n"] == 3 and abs(row["test_acc_mean"] - 0.82) < 1e-9  # the three good runs only, one configuration
    lines = err.strip().splitlines()
    for i, (_, _, words) in enumerate(SPOILED):
        (line,) = [line for line in lines if f"spoiled{10 + i}.json" in line]
        assert words in line, line
    assert f"skipped {len(SPOILED)} record file(s)" in err and "Traceback" not in err
    code, out, err = cli("report", "--table", "2", "--format", "json", "--results", res)
    assert code == 0 and "Traceback" not in err and f"{len(SPOILED)} with a field that cannot be trusted" in err


def test_a_file_named_runs_is_a_one_line_error(cli, tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "runs").write_text("x")
    code, _, err = cli("defend", "--recipe", "quick", "--epochs", "1", "--results", tmp_path / "res")
    assert code == 2 and "runs' is a file, not a directory" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- paired column

def test_paired_column_differences_matched_trials_only():
    """HINT − none per trial (same seed and poisons), over the trials both have: trial 2 of `none` has no HINT
    partner and stays out. The trial effect (+0 / +4 / +8 points) cancels in the pairs but not in the means."""
    none = [make_record(method="none", rho=1.0, trial=t, acc=0.80 + 0.04 * t) for t in range(3)]
    hint = [hint_run(t, 0.81 + 0.04 * t, rho=1.0) for t in range(2)]
    table = tables.build("2", none + hint, tables.Options(trials=3, paired=True, rho=1.0))
    row = next(d for d in table.data if d["method"] == "hint")
    assert row["paired_n"] == 2
    assert row["paired_mean"] == pytest.approx(1.0) and row["paired_std"] == pytest.approx(0.0, abs=1e-9)
    assert row["mean"] - next(d for d in table.data if d["method"] == "none")["mean"] == pytest.approx(-1.0)
    columns = table.blocks[0].columns
    assert "HINT − W/o Defense (paired)" in columns
    assert table.blocks[0].rows[0][columns.index("HINT − W/o Defense (paired)")].text.startswith("+1.00 ± 0.00")
    plain = tables.build("2", none + hint, tables.Options(trials=3, rho=1.0))
    assert "HINT − W/o Defense (paired)" not in plain.blocks[0].columns


def test_paired_column_never_pairs_runs_of_another_seed():
    """Trial 0 of `none` made with --seed 0 and trial 0 of `hint` made with --seed 100 saw other poisoned rows and
    another initialisation: not a pair (the cell has no pair at all)."""
    none = [make_record(method="none", rho=1.0, trial=0, acc=0.80)]
    hint = [make_record(method="hint", params=hint_defaults(), rho=1.0, trial=0, acc=0.90, base_seed=100)]
    table = tables.build("2", none + hint, tables.Options(trials=1, paired=True, rho=1.0))
    row = next(d for d in table.data if d["method"] == "hint")
    assert row["n"] == 1 and row["paired_n"] == 0


def test_plain_report_pools_trials_whose_poisoned_rows_differ():
    records = []
    for trial, acc in ((0, 0.80), (1, 0.84), (2, 0.82)):
        r = make_record(rho=0.6, trial=trial, acc=acc)
        r["config"]["poison"]["indices_fingerprint"] = f"rows-of-seed-{trial}"  # as real runs: one draw per seed
        records.append(r)
    summary = load_summary(records)
    assert len(summary) == 1 and int(summary.n.iloc[0]) == 3
    assert abs(summary.test_acc_mean.iloc[0] - 0.82) < 1e-12 and abs(summary.test_acc_std.iloc[0] - 0.02) < 1e-12


def test_noise_figure_panels(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from poisonbench.report.figures import noise_figure
    from tests.report_records import healthy_noise_examples

    shown, titles = [], []
    real_imshow, real_title = Axes.imshow, Axes.set_title
    def imshow(self, img, **kw):
        shown.append(np.asarray(img))
        return real_imshow(self, img, **kw)

    def set_title(self, title, **kw):
        titles.append(title)
        return real_title(self, title, **kw)

    monkeypatch.setattr(Axes, "imshow", imshow)
    monkeypatch.setattr(Axes, "set_title", set_title)
    examples = healthy_noise_examples()
    record = {"run_id": "r", "config": {"defense": {"method": "hint"}},
              "defense": {"examples": examples, "noise": {"beta": 0.062}}}
    noise_figure(record, tmp_path / "f.png")
    assert len(shown) == 3 * len(examples)
    for i, ex in enumerate(examples):
        x = np.asarray(ex["x"], np.float32).reshape(28, 28)
        d = np.asarray(ex["delta"], np.float32).reshape(28, 28)
        orig, noise, pert = shown[3 * i: 3 * i + 3]
        assert np.allclose(orig, x)
        assert noise.min() == pytest.approx(0) and noise.max() == pytest.approx(1)  # min-max scaled
        assert np.allclose(noise, (d - d.min()) / (d.max() - d.min()), atol=1e-6)
        assert np.allclose(pert, np.clip(x + d, 0, 1))
        assert titles[3 * i] == f"Pred {ex['pred_original']}  Prob {ex['prob_original']:.2f}"
        assert titles[3 * i + 2] == f"Pred {ex['pred_perturbed']}  Prob {ex['prob_perturbed']:.2f}"


def test_rho_figure_plots_mean_and_std_of_each_method(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from tests.report_records import make_record

    recs = [make_record(rho=rho, trial=t, acc=a) for rho, accs in ((0.0, (0.9, 0.8)), (0.2, (0.7, 0.5)))
            for t, a in enumerate(accs)]
    calls = []
    real = Axes.errorbar
    def errorbar(self, x, y, yerr=None, **kw):
        calls.append((list(x), list(y), list(yerr), kw.get("label")))
        return real(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    assert figures.draw("rho", recs, tmp_path, mix="any")
    ((x, y, yerr, _),) = calls
    assert x == [0.0, 0.2]
    assert y == pytest.approx([85.0, 60.0]) and yerr == pytest.approx([100 * np.std([0.9, 0.8], ddof=1),
                                                                         100 * np.std([0.7, 0.5], ddof=1)], abs=1e-3)


def test_plain_report_csv_and_json_columns(cli, tmp_path):
    from tests.report_records import make_record, write_records

    recs = [make_record(trial=t, acc=0.9 - 0.1 * t, seconds=10.0 + 10 * t) for t in range(3)]
    res = write_records(tmp_path / "r", recs)
    code, out, _ = cli("report", "--results", res, "--format", "json")
    (row,) = json.loads(out)
    seconds = [r["cost"]["seconds"] for r in recs]
    assert len(set(seconds)) == 3 and row["n"] == 3 and row["seconds_mean"] == pytest.approx(np.mean(seconds))
    code, out, _ = cli("report", "--results", res, "--format", "csv")
    header = out.splitlines()[0].split(",")
    assert header[0] == "dataset" and header == list(row)  # the same columns, no index column
