"""Issue 68, item 3: `sweep run`'s exit code is the sweep's own (0: every step done, 1: a step failed or missing)
whatever its end-of-sweep report does. A probe found the report's exit 2 replacing it: every step failed → 2
(1 with `--no-report`); the grid complete but its `report` writing to a path that is a file → "all runs done",
exit 2. The report's failure is now a line of its own on stderr. And a grid's `report` may not choose where files
are written outside the results workspace: its `--out` is a path inside the workspace (resolved under it); an
absolute one, or one that leaves it with `..`, is refused at plan time.

Steps are not `defend` here (tests/test_probe_sweep_run.py's `fake_steps`): each costs a process start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonbench.experiment.records import RunStore
from tests.report_records import make_record

from .conftest import one_line_error
from .test_probe_sweep_run import fake_steps, planned, ran, write_grid

FAIL = ("os.makedirs(os.path.join(root, 'failures'), exist_ok=True)\n"
        "json.dump({'run_id': key, 'error': 'RuntimeError: simulated'}, "
        "open(os.path.join(root, 'failures', key + '.json'), 'w'))\n"
        "sys.exit(1)\n")


def grid_with_report(root: Path, report: list[str], trials: int = 1) -> Path:
    path = write_grid(root, trials=trials)
    path.write_text(f"report = {json.dumps(report)}\n" + path.read_text())
    return path


def report_failure_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("the grid's report failed")]


def test_every_step_failed_exits_1_with_the_report_and_without(cli, tmp_path, monkeypatch):
    grid, results = grid_with_report(tmp_path, ["table", "2"], trials=2), tmp_path / "r"
    fake_steps(monkeypatch, tmp_path / "marks", FAIL)
    code, out, err = cli("sweep", "run", grid, "--results", results)
    assert code == 1, err
    # nothing left to do but failed steps: the report reads no record, and says so on a line of its own
    for report in ("--report", "--no-report"):
        code, out, err = cli("sweep", "run", grid, "--results", results, report)
        assert code == 1, (report, err)
        assert "Traceback" not in err and not err.startswith("Error:"), err
        if report == "--report":
            (line,) = report_failure_lines(err)
            assert "no run records found" in line, err


def write_done_records(grid: Path, results: Path) -> None:
    """The grid's runs done: a record for each, under its run id, as `defend` would have written it."""
    for step in planned(grid, results).runs:
        record = make_record()
        record["config"], record["run_id"] = step.config, step.key
        runs = RunStore(str(results)).root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / f"{step.key}.json").write_text(json.dumps(record))


def test_a_complete_grid_whose_report_fails_exits_0_with_the_report_s_error_on_its_own_line(cli, tmp_path,
                                                                                            monkeypatch):
    grid, results = grid_with_report(tmp_path, ["figure", "rho", "--out", "figs"]), tmp_path / "r"
    write_done_records(grid, results)
    (results / "figs").write_text("a file where the report's directory should be")
    monkeypatch.chdir(tmp_path)  # a relative --out taken from the current directory would land here
    fake_steps(monkeypatch, tmp_path / "marks", "sys.exit(3)\n")  # nothing may run: every step is done
    code, out, err = cli("sweep", "run", grid, "--results", results)
    assert code == 0, err
    assert "all 1 runs" in out and "are done" in out, out
    (line,) = report_failure_lines(err)
    assert "is a file" in line and str(results / "figs") in line, err
    assert not ran(tmp_path / "marks")


def test_a_grid_s_report_out_is_written_inside_the_results_workspace(cli, tmp_path, monkeypatch):
    grid, results = grid_with_report(tmp_path, ["figure", "rho", "--out=figs/rho"]), tmp_path / "r"
    write_done_records(grid, results)
    monkeypatch.chdir(tmp_path)  # a relative --out would land here if it were taken from the current directory
    code, out, err = cli("sweep", "run", grid, "--results", results)
    assert code == 0, err
    assert not (tmp_path / "figs").exists()
    assert list((results / "figs" / "rho").glob("*.png")), (out, err)


@pytest.mark.parametrize("out", ["/etc", "../outside", "figs/../../outside", "", "--out=/tmp"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_grid_s_report_out_outside_the_workspace_is_refused_at_plan_time(cli, tmp_path, monkeypatch, out,
                                                                           command):
    args = ["figure", "rho", out] if out.startswith("--out=") else ["figure", "rho", "--out", out]
    grid, results = grid_with_report(tmp_path, args), tmp_path / "r"
    fake_steps(monkeypatch, tmp_path / "marks", "sys.exit(3)\n")
    code, _, err = cli("sweep", command, grid, "--results", results)
    one_line_error(code, err, f"grid {grid}", "--out", "inside the results workspace")
    assert not ran(tmp_path / "marks")
