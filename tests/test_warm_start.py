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
       'method = "none"\npoison_ratio = {ratios}\n'
SAME = ("config", "history", "metrics", "inputs", "defense", "resumed_from_epoch", "poison_tensors")


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    path = root / "grid.toml"
    path.write_text(GRID.format(npz=write_npz(root), ratios="[0, 0.5]"))  # a PoisonSet and two runs: three steps
    return path


@pytest.fixture(scope="module")
def poisoned(grid) -> Path:
    """A PoisonSet and the run at ρ 0.5 that trains on it: two steps (a cold one costs seconds of imports)."""
    path = grid.with_name("poisoned.toml")
    path.write_text(GRID.format(npz=grid.with_name("tiny.npz"), ratios="[0.5]"))
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


def test_a_warm_step_writes_the_cold_step_s_record_threads_included(poisoned, tmp_path, monkeypatch):
    """The PoisonSet and the run on it, forked and then cold, at the cores' threads: the same record, the same
    PoisonSet (the run's `inputs`), the same threads. The sweep's own environment says one thread; the server,
    started afresh from it, still takes torch's cap (one thread here would cap every step at one)."""
    threads = str(os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    forkserver._forkserver._stop()  # a server another test of this process started: this one starts its own
    forked = spy_starts(monkeypatch)
    assert sweep(poisoned, tmp_path / "warm", "--threads", threads) == 0
    assert [argv[0] for argv in forked] == ["prepare", "run"]  # every step forked, none started cold
    forked.clear()
    monkeypatch.setenv(warm.ENV_SWITCH, "0")
    assert sweep(poisoned, tmp_path / "cold", "--threads", threads) == 0
    assert forked == []
    hot, cold = records(tmp_path / "warm"), records(tmp_path / "cold")
    assert set(hot) == set(cold) and len(hot) == 1
    for rid in hot:
        assert {k: hot[rid][k] for k in SAME} == {k: cold[rid][k] for k in SAME}
        assert hot[rid]["inputs"]["poisons"]  # the run trained on the PoisonSet its sweep crafted
        assert hot[rid]["env"]["threads"] == int(threads)  # OMP_NUM_THREADS, both ways
        assert hot[rid]["env"] == cold[rid]["env"]


def test_a_server_that_fails_leaves_one_warning_and_the_sweep_starts_cold(grid, tmp_path, monkeypatch, capsys):
    """The steps, cheap stand-ins (`tests/test_probe_sweep_run.py`'s `fake_steps`: `python -c`), start cold once the
    server failed: tried once, one warning, every step run."""
    from .test_probe_sweep_run import fake_steps, ran

    calls = []

    def broken(argv, environ, stderr):
        calls.append(argv)
        raise EOFError("unexpected EOF")

    fake_steps(monkeypatch, tmp_path / "marks")
    monkeypatch.delenv(warm.ENV_SWITCH)  # (fake_steps starts cold; here the pool tries the server first)
    monkeypatch.setattr(warm, "start", broken)
    sweep(grid, tmp_path / "results")  # (its stand-in steps write no record: the sweep exits 1, every run missing)
    assert len(calls) == 1  # tried once, then cold for the rest
    err = capsys.readouterr().err
    warning = ("Warning: the warm step server failed (EOFError: unexpected EOF); the sweep starts its steps in "
               "fresh processes from here")
    assert [line.strip() for line in err.splitlines() if "warm step server" in line] == [warning]
    # the PoisonSet's step and the run at ρ 0, the first included, started cold (the run at ρ 0.5 is blocked: the
    # stand-in crafted no PoisonSet)
    assert ran(tmp_path / "marks") == {0, 1}


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


CHILD_PROBE = r'''
import json, os, signal, sys, ctypes
from multiprocessing import forkserver
from poisonbench.sweeps import warm, worker

def fake_main(argv):
    got = ctypes.c_int()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(got))  # PR_GET_PDEATHSIG
    try:
        os.fstat(ALIVE_W)
        alive_fd_open = True
    except OSError:
        alive_fd_open = False
    import torch
    print(json.dumps({"argv": argv, "environ": dict(os.environ), "threads": torch.get_num_threads(),
                      "server_threads": SERVER_THREADS,
                      "sigint": signal.getsignal(signal.SIGINT) == signal.SIG_IGN, "pdeathsig": got.value,
                      "alive_fd_open": alive_fd_open, "ppid_is_server": os.getppid() == SERVER}))
    print("to the log", file=sys.stderr)
    return 7

worker.main = fake_main
# Python's own SIGINT handler, whatever this process inherited (a shell's background job starts with SIGINT
# ignored, which would hide a child that leaves SIGINT as it found it)
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
SERVER_THREADS = torch.get_num_threads()  # (the probe's OMP_NUM_THREADS: the cores, as the server's)
ALIVE_R, ALIVE_W = os.pipe()
SERVER = os.getpid()
forkserver._forkserver._forkserver_alive_fd = ALIVE_W
out_r, out_w = os.pipe()
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
server = SERVER if sys.argv[2] == "alive" else 1  # "dead": the child's parent is not the server it was told of
pid = os.fork()
if pid == 0:
    try:
        warm._child(["run", "{}"], {"OMP_NUM_THREADS": sys.argv[3], "ONLY": "this"}, warm._Fd(out_w),
                    warm._Fd(log), server)
    except SystemExit as exc:  # _child's own end: its code, as multiprocessing would report it
        os._exit(exc.code)
    os._exit(99)  # _child returned instead of exiting
os.close(out_w)
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "stdout": os.read(out_r, 65536).decode()}))
'''


@pytest.mark.parametrize(("server", "extra"), [("alive", 0), ("alive", 1), ("dead", 0)])
def test_the_forked_child_sets_up_the_step_as_a_fresh_process_would(server, extra, tmp_path):
    """`warm._child`, forked by hand with a stand-in `worker.main`: the step's stdout is the pipe and its stderr the
    log; the environment is exactly the pool's; OMP_NUM_THREADS becomes torch's threads; SIGINT is ignored;
    PR_SET_PDEATHSIG is SIGTERM; the server's liveness pipe is closed; the exit code is main's. A child whose parent
    is not the server it was told of (the server died before the prctl) stops itself with SIGTERM, running
    nothing. OMP_NUM_THREADS is 1 (the server's torch has more where there are cores) or one more than the
    cores, which torch caps at its own cap, as a fresh process does."""
    log = tmp_path / "step.log"
    cores = os.cpu_count() or 1
    threads = 1 if not extra else cores + 1
    environ = {**os.environ, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)}  # as `_ensure_server`
    probe = subprocess.run([sys.executable, "-c", "import sys\nexec(sys.stdin.read())", str(log), server,
                            str(threads)], input=CHILD_PROBE, capture_output=True, text=True, env=environ,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    (line,) = probe.stdout.splitlines()
    result = json.loads(line)
    if server == "dead":
        assert result == {"code": -signal.SIGTERM, "stdout": ""} and log.read_text() == ""
        return
    assert result["code"] == 7
    (said,) = [json.loads(line) for line in result["stdout"].splitlines()]
    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], text=True,
                           capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                                     "MKL_NUM_THREADS": str(threads)}, timeout=120) if extra else None
    expected = int(fresh.stdout) if fresh else 1  # what a fresh process makes of the variable
    assert said.pop("server_threads") >= expected  # the server's cap is at least what the step takes
    assert said == {"argv": ["run", "{}"], "environ": {"OMP_NUM_THREADS": str(threads), "ONLY": "this"},
                    "threads": expected, "sigint": True, "pdeathsig": signal.SIGTERM, "alive_fd_open": False,
                    "ppid_is_server": True}
    assert log.read_text() == "to the log\n"


@pytest.mark.parametrize("before", [None, "3"])
def test_starting_the_server_leaves_the_sweeps_thread_variables_as_they_were(before, monkeypatch):
    """The server starts with torch's thread variables at the core count; the sweep's own are restored after, unset
    where they were unset."""
    for name in warm.THREAD_VARIABLES:
        if before is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, before)
    forkserver._forkserver._stop()
    warm._ensure_server()
    assert warm._server_alive()
    assert {name: os.environ.get(name) for name in warm.THREAD_VARIABLES} == dict.fromkeys(warm.THREAD_VARIABLES,
                                                                                          before)


def test_the_server_is_alive_while_it_runs_and_not_once_stopped():
    warm._ensure_server()
    assert warm._server_alive() is True
    forkserver._forkserver._stop()
    assert warm._server_alive() is False  # (no server: its pid is forgotten)
    warm._ensure_server()
    pid = forkserver._forkserver._forkserver_pid
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    assert warm._server_alive() is False
    warm._ensure_server()  # multiprocessing reaps it and starts another
    assert forkserver._forkserver._forkserver_pid != pid and warm._server_alive() is True


def test_a_step_that_cannot_be_forked_raises_and_leaves_no_descriptor_open(monkeypatch):
    """The pool falls back to a cold start on the error; the pipe made for the step's stdout is closed."""

    class Unstartable:
        def Process(self, **kwargs):  # noqa: N802 (multiprocessing's name)
            raise OSError("no fork today")

    monkeypatch.setattr(warm, "_context", lambda: Unstartable())
    warm._ensure_server()  # (a server started now would hold descriptors of its own)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="no fork today"):
        warm.start(["run", "{}"], {}, 2)
    assert set(os.listdir("/proc/self/fd")) == before
