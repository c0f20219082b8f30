"""Warm starts (poisonbench/sweeps/warm.py): a local sweep forks its steps from a server that imported the library
once. A warm step is the same step as a cold one (the same record, threads included); the pool falls back to cold
starts where the server fails; a step killed, or whose server was killed, is stopped, not failed. The steps'
deaths with their sweep (SIGKILL, SIGTERM) are tests/test_sweep_resilience.py's, which run warm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from multiprocessing import forkserver
from pathlib import Path

import pytest

from poisonbench.cli.main import main
from poisonbench.experiment.records import RunStore
from poisonbench.sweeps import Execution, execute, load_grid, make_plan, warm

from .conftest import write_npz

GRID = '[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\nattacks = [["durp"]]\n' \
       'method = "none"\npoison_ratio = [0, 0.5]\n'
SAME = ("config", "history", "metrics", "inputs", "defense", "resumed_from_epoch", "poison_tensors")


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    path = root / "grid.toml"
    path.write_text(GRID.format(npz=write_npz(root)))
    return path


def spy_starts(monkeypatch) -> list[list[str]]:
    """The argv of every step forked from the server (`warm.start`, which still forks)."""
    calls: list[list[str]] = []
    real = warm.start

    def start(argv, environ, stderr):
        calls.append(argv)
        return real(argv, environ, stderr)

    monkeypatch.setattr(warm, "start", start)
    return calls


def sweep(grid: Path, results: Path, *extra: str) -> int:
    try:
        main(["sweep", "run", str(grid), "--workers", "1", "--results", str(results), "--no-report", *extra])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def test_a_warm_step_writes_the_cold_step_s_record_threads_included(grid, tmp_path, monkeypatch):
    forked = spy_starts(monkeypatch)
    assert sweep(grid, tmp_path / "warm", "--threads", "2") == 0
    assert [argv[0] for argv in forked] == ["prepare", "run", "run"]  # every step forked, none started cold
    forked.clear()
    monkeypatch.setenv(warm.ENV_SWITCH, "0")
    assert sweep(grid, tmp_path / "cold", "--threads", "2") == 0
    assert forked == []
    hot, cold = records(tmp_path / "warm"), records(tmp_path / "cold")
    assert set(hot) == set(cold) and len(hot) == 2
    for rid in hot:
        assert {k: hot[rid][k] for k in SAME} == {k: cold[rid][k] for k in SAME}
        assert hot[rid]["env"]["threads"] == cold[rid]["env"]["threads"] == 2  # OMP_NUM_THREADS, both ways
        assert {k: v for k, v in hot[rid]["env"].items()} == cold[rid]["env"]


def test_a_server_that_fails_leaves_one_warning_and_the_sweep_starts_cold(grid, tmp_path, monkeypatch, capsys):
    calls = []

    def broken(argv, environ, stderr):
        calls.append(argv)
        raise EOFError("unexpected EOF")

    monkeypatch.setattr(warm, "start", broken)
    assert sweep(grid, tmp_path / "results") == 0
    assert len(calls) == 1  # tried once, then cold for the rest
    err = capsys.readouterr().err
    warning = ("Warning: the warm step server failed (EOFError: unexpected EOF); the sweep starts its steps in "
               "fresh processes from here")
    assert [line.strip() for line in err.splitlines() if "warm step server" in line] == [warning]
    assert len(records(tmp_path / "results")) == 2


@pytest.mark.parametrize(("platform", "gpus", "environ", "expected"), [
    ("linux", 0, {}, True),
    ("linux", 0, {warm.ENV_SWITCH: "1"}, True),
    ("linux", 0, {warm.ENV_SWITCH: ""}, True),
    ("linux", 0, {warm.ENV_SWITCH: "0"}, False),
    ("linux", 0, {warm.ENV_SWITCH: " 0 "}, False),
    ("linux", 1, {}, False),
    ("linux", 8, {warm.ENV_SWITCH: "1"}, False),
    ("darwin", 0, {}, False),
    ("win32", 0, {}, False),
])
def test_warm_starts_are_wanted_on_linux_without_a_gpu_unless_switched_off(platform, gpus, environ, expected,
                                                                           monkeypatch):
    monkeypatch.setattr(sys, "platform", platform)
    assert warm.wanted(gpus, environ) is expected


def test_warm_starts_are_not_wanted_where_multiprocessing_names_its_liveness_pipe_otherwise(monkeypatch):
    assert warm.wanted(0, {}) is True
    monkeypatch.delattr(forkserver._forkserver, warm.ALIVE_FD)
    assert warm.wanted(0, {}) is False


def pool_with(grid: Path, results: Path, on_start) -> tuple[execute.LocalPool, list]:
    plan = make_plan(load_grid(str(grid)), Execution(results=str(results)))
    pool = execute.LocalPool(plan, 1, threads=1)
    assert pool.warm

    def started(step):
        on_start(pool, step)

    pool.on_start = started
    return pool, execute.to_run(plan)


def running(pool: execute.LocalPool, step) -> warm.WarmProcess:
    (proc,) = [p for p, (s, *_rest) in pool.running.items() if s is step]
    assert isinstance(proc, warm.WarmProcess)
    return proc


def test_a_warm_step_killed_from_outside_is_killed_not_failed_and_the_sweep_goes_on(grid, tmp_path):
    results = tmp_path / "results"

    def kill_first_run(pool, step):
        if step.kind == "run" and not kill_first_run.done:
            kill_first_run.done = True
            running(pool, step).send_signal(signal.SIGKILL)

    kill_first_run.done = False
    pool, steps = pool_with(grid, results, kill_first_run)
    outcomes = pool.run(steps)
    statuses = [(o.step.kind, o.status) for o in outcomes]
    assert statuses == [("prepare", "crafted"), ("run", "killed"), ("run", "ran")], statuses
    killed = outcomes[1]
    assert killed.detail.startswith("killed by SIGKILL") and "a plain re-run runs it again" in killed.detail
    assert RunStore(results).failure(killed.step.failure_key) is None  # stopped, not failed
    assert len(records(results)) == 1


def test_a_warm_step_whose_server_was_killed_is_stopped_by_sigterm_and_the_next_step_gets_a_new_server(grid,
                                                                                                     tmp_path):
    results = tmp_path / "results"
    servers = []

    def kill_the_server(pool, step):
        servers.append(forkserver._forkserver._forkserver_pid)
        if step.kind == "run" and len(servers) == 2:
            os.kill(servers[-1], signal.SIGKILL)

    pool, steps = pool_with(grid, results, kill_the_server)
    outcomes = pool.run(steps)
    statuses = [(o.step.kind, o.status) for o in outcomes]
    assert statuses == [("prepare", "crafted"), ("run", "terminated"), ("run", "ran")], statuses
    assert outcomes[1].detail == "stopped by SIGTERM; re-running resumes it"
    assert servers[0] == servers[1] != servers[2]  # the first two steps share one server, the third has a new one
    assert RunStore(results).failure(outcomes[1].step.failure_key) is None
    assert len(records(results)) == 1


def test_a_warm_step_s_exit_code_stdout_and_log_come_back(grid, tmp_path):
    """A step that fails (its dataset is gone) exits 2: failed, with its log's last line in the detail; a step that
    runs prints its JSON lines, read back as its outputs."""
    results = tmp_path / "results"
    pool, steps = pool_with(grid, results, lambda pool, step: None)
    outcomes = pool.run(steps[:2])
    assert [(o.step.kind, o.status) for o in outcomes] == [("prepare", "crafted"), ("run", "ran")]
    assert outcomes[1].outputs and outcomes[1].outputs[0]["run_id"] == outcomes[1].step.key
    assert outcomes[0].outputs[0]["poison_id"] == outcomes[0].step.key
    pool, steps = pool_with(grid, results, lambda pool, step: None)  # planned while the dataset is there
    data = Path(steps[-1].spec.dataset)
    moved = data.with_suffix(".gone")
    data.rename(moved)
    try:
        (failed,) = pool.run(steps)
    finally:
        moved.rename(data)
    assert failed.status == "failed" and failed.detail.startswith("exit code 2: Error: ")
    assert str(data.name) in failed.detail and "(log: " in failed.detail
    assert RunStore(results).failure(failed.step.failure_key) is not None


def test_the_server_s_exit_skips_its_finalisation():
    """`warm_server`, the server's last import, ends the process at its first exit handler: the handlers registered
    before it (torch's among them in the server) and the interpreter's teardown do not run, and it exits 0."""
    code = ("import atexit\natexit.register(print, 'an earlier exit handler ran')\n"
            "import poisonbench.sweeps.warm_server\nraise SystemExit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert warm.PRELOAD[-1] == "poisonbench.sweeps.warm_server"  # imported last: its handler runs first
