"""poisonbench.api (docs/api.md): the worked example runs as written, its DataFrame has `report --format json`'s
numbers, the functions take the CLI's option names and defaults, and bad input is the CLI's one-line error."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from poisonbench import api
from poisonbench.core.errors import PoisonbenchError
from poisonbench.experiment.options import DEFEND_OPTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_worked_example_runs_and_its_frame_is_report_json(cli, capsys, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POISONBENCH_RESULTS", raising=False)
    monkeypatch.delenv("POISONBENCH_DATASET", raising=False)
    blocks = doc_blocks()
    assert len(blocks) >= 4
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), ns)
    capsys.readouterr()  # what the example prints
    results, frame = ns["results"], ns["table"]
    assert isinstance(frame, pd.DataFrame) and sorted(frame.method) == ["hint", "none"]
    assert list(frame.n) == [2, 2]

    code, out, err = cli("report", "--results", results, "--format", "json")
    assert code == 0, err
    expected = pd.DataFrame(json.loads(out))  # the API: accuracy in percent, params as dicts (the JSON: text)
    expected = expected.rename(columns={"test_acc_mean": "test_acc_mean_pct", "test_acc_std": "test_acc_std_pct"})
    expected[["test_acc_mean_pct", "test_acc_std_pct"]] *= 100
    expected["params"] = [{} if p == "-" else json.loads(p) for p in expected.params]
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected, check_dtype=False)

    # the records are the CLI's: `defend` on the same options skips every trial as done
    none = ns["none"]
    assert [r["run_id"] for r in none.records] == list(none.frame().run_id)
    code, out, err = cli("defend", "--dataset", ns["dataset"], "--results", results, "--poison-set",
                         ns["poison"].poison_id, "--recipe", "quick", "--epochs", "1", "--batch-size", "64",
                         "--compile", "off", "--trials", "2", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["status"] for x in lines] == ["skipped", "skipped"]
    assert [x["run_id"] for x in lines] == [r["run_id"] for r in none.records]
    assert [x["test_acc"] for x in lines] == list(none.frame().test_acc)

    # crafting again is the cache hit `craft` reports
    code, out, err = cli("craft", "--attack", "pgd", "--dataset", ns["dataset"], "--results", results, "--steps",
                         "2", "--compile", "off", "--json")
    assert code == 0, err
    assert json.loads(out) == {**ns["poison"].summary, "status": "cached"}


@pytest.mark.parametrize("call, argv", [
    (lambda: api.defend("nope"), ["defend", "--method", "nope"]),
    (lambda: api.report(method="nope"), ["report", "--method", "nope"]),
    (lambda: api.craft("nope"), ["craft", "--attack", "nope"]),
    (lambda: api.defend(ratio=0.5), ["defend", "--ratio", "0.5"]),
    (lambda: api.craft("pgd", eps=2.0), ["craft", "--attack", "pgd", "--eps", "2"]),
])
def test_an_error_is_the_clis_one_line(cli, tmp_path, monkeypatch, call, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PoisonbenchError) as caught:
        call()
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert err == f"Error: {caught.value}\n"
    assert "\n" not in str(caught.value)


def test_an_unknown_option_is_refused_not_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PoisonbenchError, match="unknown defend option 'epoch'"):
        api.defend(epoch=3)
    with pytest.raises(PoisonbenchError, match="unknown craft option 'step'; attack 'pgd' takes --steps"):
        api.craft("pgd", step=3)


def test_defend_takes_the_cli_options_with_their_defaults():
    """One source of truth: every entry of defend's option table is an argument of `api.defend` with its default
    (the two read from an environment variable default to None: the variable, else the table's default)."""
    params = inspect.signature(api.defend).parameters
    own = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert own == [o.name for o in DEFEND_OPTIONS] + ["prepare_only", "progress"]
    for o in DEFEND_OPTIONS:
        assert params[o.name].default == (None if o.envvar else o.default), o.name


def test_craft_takes_the_cli_options():
    from poisonbench.cli.craft import craft as cli_craft

    api_names = set(inspect.signature(api.craft).parameters) - {"progress", "attack_params"}
    cli_names = set(inspect.signature(cli_craft).parameters) - {"as_json", "attack_options"}
    assert api_names == cli_names


def test_report_of_an_empty_workspace_is_the_clis_error(cli, tmp_path):
    with pytest.raises(PoisonbenchError) as caught:
        api.report(str(tmp_path / "empty"))
    code, _, err = cli("report", "--results", tmp_path / "empty")
    assert code == 2 and err == f"Error: {caught.value}\n"


def defense_params(record: dict) -> dict:
    return {k: v for k, v in record["config"]["defense"].items() if k != "method"}


def same(value, expected) -> bool:
    """A DataFrame's value and the JSON's: equal, or both missing (None in the JSON, NaN or None in a frame)."""
    if expected is None:
        return value is None or (isinstance(value, float) and value != value)
    return value == expected


def test_report_gives_percent_as_the_cli_and_params_as_the_records_dicts(cli, tmp_path):
    """Issue 84: `report()` gives accuracy in percent (the CLI's tables print percent; its plain JSON keeps the
    records' fractions, so the API names the unit: `test_acc_mean_pct`), `report(table=N)` the numbers of `report
    table N --format json` (percent), and in both `params` is a dict equal to the records' defense parameters."""
    from tests.report_records import synthetic_records, write_records

    records = synthetic_records()
    results = str(write_records(tmp_path / "res", records))
    params_of = {}
    for r in records:
        params_of.setdefault(r["config"]["defense"]["method"], []).append(defense_params(r))

    plain = api.report(results)
    code, out, err = cli("report", "--results", results, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(plain) == len(rows) > 3 and "test_acc_mean" not in plain and "test_acc_std" not in plain
    for got, row in zip(plain.to_dict(orient="records"), rows, strict=True):
        assert got["test_acc_mean_pct"] == pytest.approx(100 * row["test_acc_mean"], rel=1e-12)
        assert 50 < got["test_acc_mean_pct"] <= 100  # percent, not a fraction
        if row["test_acc_std"] is None:
            assert got["test_acc_std_pct"] != got["test_acc_std_pct"]  # one trial: NaN
        else:
            assert got["test_acc_std_pct"] == pytest.approx(100 * row["test_acc_std"], rel=1e-12)
        assert isinstance(got["params"], dict) and got["params"] in params_of[got["method"]]
        assert got["params"] == ({} if row["params"] == "-" else json.loads(row["params"]))
    assert plain.params[plain.method == "none"].tolist() == [{}] * int((plain.method == "none").sum())

    for number in ("2", "3", "matrix"):
        frame = api.report(results, table=number)
        code, out, err = cli("report", "table", number, "--results", results, "--format", "json")
        assert code == 0, err
        rows = json.loads(out)["rows"]
        assert len(frame) == len(rows) > 0
        for got, row in zip(frame.to_dict(orient="records"), rows, strict=True):
            assert set(row) <= set(got)  # the frame's columns: every row's keys (the matrix's rows differ)
            for key in got:
                value = row.get(key)
                if key == "params":
                    expected = json.loads(value) if value else None
                    assert same(got[key], expected), (number, row)
                    assert expected is None or expected in params_of[row["method"]]
                else:
                    assert same(got[key], value), (number, key, got[key], value)

    # the two views give one number in one unit: cifar10's clean `none` cell
    table2 = api.report(results, table=2)
    cell = table2[(table2.dataset == "cifar10") & (table2.method == "none") & (table2.rho == 0.0)]
    row = plain[(plain.dataset == "cifar10") & (plain.method == "none") & (plain.scenario == "clean")]
    assert cell["mean"].item() == pytest.approx(row.test_acc_mean_pct.item(), abs=1e-4) and cell["mean"].item() > 90


def test_plan_is_sweep_plan_json(cli, tmp_path, tiny_npz):
    grid = tmp_path / "small.toml"
    grid.write_text(f'[defaults]\ndataset = "{tiny_npz}"\nrecipe = "quick"\nepochs = 1\nattacks = [["durp"]]\n\n'
                    '[[runs]]\nmethod = ["none", "hint"]\npoison_ratio = [0, 0.5]\n')
    results = str(tmp_path / "r")
    frame = api.plan(str(grid), results=results)
    code, out, err = cli("sweep", "plan", grid, "--results", results, "--json")
    assert code == 0, err
    steps = json.loads(out)["steps"]
    assert frame.to_dict(orient="records") == steps and len(steps) > 4
    assert frame.attrs["grid"] == json.loads(out)["grid"]
