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
    expected = pd.DataFrame(json.loads(out))
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
