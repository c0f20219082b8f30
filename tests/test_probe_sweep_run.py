"""`sweep run` against what a probe found (issue 51): a symbolic link planted among the logs, two sweeps writing
one log, a run killed by a signal taken for a failed one (and a sweep that exits 0 with runs missing), a read-only
results directory, a full disk that leaves an empty log.

The step processes here are not `defend`: `execute.step_argv` is replaced by a few lines of Python run as the
step's process (`fake_steps`), so each test costs process starts, not training. What they do to the sweep (exit
codes, signals, stderr, failure records) is what `defend` does; the OS errors are made where the OS makes them
(`os.open`, `os.mkdir`, a log that is /dev/full), and for real with chmod where the tests do not run as root.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from poisonbench.core.io import try_exclusive
from poisonbench.experiment.records import RunStore
from poisonbench.sweeps import Execution, execute, load_grid, make_plan, warm

from .conftest import one_line_error, write_npz

TAG = "4242@feedfacecafe"  # a fixed `<pid>@<host>` for the sweep: its log names are known in advance


def write_grid(root: Path, trials: int = 2) -> Path:
    """Clean runs on a tiny dataset: `trials` run steps, no PoisonSet to craft."""
    path = root / "grid.toml"
    path.write_text(f'[defaults]\ndataset = "{write_npz(root)}"\nrecipe = "quick"\nepochs = 1\ntrials = {trials}\n\n'
                    '[[runs]]\nmethod = "none"\npoison_ratio = 0\n')
    return path


def planned(grid: Path, results: Path):
    return make_plan(load_grid(str(grid)), Execution(results=str(results)))


def fake_steps(monkeypatch, marks: Path, body: str = "") -> None:
    """Each step's process becomes `python -c`: it leaves `marks/<index>` (it ran), then runs `body` with `kind`,
    `key`, `root` (the results directory) and `index` (a str) defined; it exits 0 unless `body` does otherwise
    (and writes no record: a step exiting 0 leaves its run missing)."""
    marks.mkdir(exist_ok=True)
    script = ("import json, os, signal, sys, time\n"
              "kind, key, root, index, marks = sys.argv[1:]\n"
              "open(os.path.join(marks, index), 'w').close()\n" + body)

    def argv(plan, step):
        return [sys.executable, "-c", script, step.kind, step.key, str(RunStore(plan.execution.results).root),
                str(step.index), str(marks)]

    monkeypatch.setattr(execute, "step_argv", argv)
    # started cold, as `step_argv` says: a step forked from the warm server runs the real worker (its own tests are
    # tests/test_warm_start.py)
    monkeypatch.setenv(warm.ENV_SWITCH, "0")


def ran(marks: Path) -> set[int]:
    return {int(p.name) for p in marks.iterdir()} if marks.exists() else set()


def summary(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


def sweep(cli, grid: Path, results: Path, *extra: str):
    """`sweep run GRID --results R --json --no-report`: (exit code, the JSON summary, stderr)."""
    code, out, err = cli("sweep", "run", grid, "--results", results, "--json", "--no-report", *extra)
    assert "Traceback" not in err, err
    return code, summary(out), err


# item 4: a run killed by a signal is retried by a plain re-run; `sweep run` exits 1 until the grid is complete


def test_a_step_killed_by_sigkill_leaves_no_failure_record_and_a_plain_rerun_runs_it_again(cli, tmp_path,
                                                                                          monkeypatch):
    grid, results, marks = write_grid(tmp_path), tmp_path / "r", tmp_path / "marks"
    fake_steps(monkeypatch, marks, "if index == '1':\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    code, out, _ = sweep(cli, grid, results)
    assert code == 1
    outcomes = {o["index"]: o for o in out["outcomes"]}
    assert outcomes[1]["status"] == "killed", outcomes[1]
    assert "killed by SIGKILL" in outcomes[1]["detail"] and "a plain re-run runs it again" in outcomes[1]["detail"]
    plan = planned(grid, results)
    assert not list(results.glob("failures/*")), "a killed step is not a failed one"
    assert plan.states()[1] == "missing"
    assert [s.index for s in execute.to_run(plan)] == [0, 1]  # the fake steps write no record: both still missing

    (marks / "1").unlink()
    fake_steps(monkeypatch, marks)  # this time every step exits 0 (and writes no record)
    code, out, err = sweep(cli, grid, results)
    assert 1 in ran(marks), "the plain re-run did not run the killed step again"
    assert code == 1, "runs are still missing: the sweep must not exit 0"
    assert out["left"] == {"failed": 0, "missing": 2, "running": 0}


@pytest.mark.parametrize(("code", "status", "record"), [
    (-signal.SIGKILL, "killed", False),  # SIGKILL: the OOM killer, `kill -9`
    (-signal.SIGINT, "killed", False),
    (-signal.SIGHUP, "killed", False),
    (130, "killed", False),  # `defend` stopped by SIGINT exits 130 ("Aborted.")
    (-signal.SIGSEGV, "failed", True),  # a crash of its own: failed, like an exception
    (-signal.SIGABRT, "failed", True),
    (1, "failed", True),  # an error before the run was claimed
])
def test_outcome_of_tells_a_step_stopped_from_outside_from_a_failed_one(code, status, record, tmp_path):
    grid, results = write_grid(tmp_path, trials=1), tmp_path / "r"
    plan = planned(grid, results)
    (step,) = plan.steps
    outcome = execute.outcome_of(plan, step, code, "", 1.0)
    assert outcome.status == status, outcome
    assert (RunStore(results).failure(step.failure_key) is not None) == record
    assert [s.index for s in execute.to_run(plan)] == ([] if record else [0])
    assert [s.index for s in execute.to_run(plan, retry_failed=True)] == [0]


def test_a_failed_run_exits_1_even_when_there_is_nothing_to_do_and_status_names_its_log(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path, trials=1), tmp_path / "r", tmp_path / "marks"
    # what `defend` does when training raises: its failure record, then exit 1
    fake_steps(monkeypatch, marks, "os.makedirs(os.path.join(root, 'failures'), exist_ok=True)\n"
                                   "json.dump({'run_id': key, 'error': 'RuntimeError: simulated out of memory'}, "
                                   "open(os.path.join(root, 'failures', key + '.json'), 'w'))\n"
                                   "print('RuntimeError: simulated out of memory', file=sys.stderr)\n"
                                   "sys.exit(1)\n")
    code, out, _ = sweep(cli, grid, results)
    assert code == 1 and [o["status"] for o in out["outcomes"]] == ["failed"]
    (marks / "0").unlink()
    code, out, err = sweep(cli, grid, results)
    assert out.get("nothing_to_do") is True and out["failed"] == 1, out
    assert code == 1, "a grid with a failed run is not complete"
    assert not ran(marks), "a failed run is run again only with --retry-failed"

    code, status_out, err = cli("sweep", "status", grid, "--results", results, "--json")
    assert code == 0, err
    (failure,) = json.loads(status_out)["failures"]
    (log,) = results.glob("logs/*.log")
    assert failure["error"] == "RuntimeError: simulated out of memory" and failure["log"] == str(log)
    assert "simulated out of memory" in log.read_text()

    code, out, _ = sweep(cli, grid, results, "--retry-failed")
    assert ran(marks) == {0}


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_sweep_stopped_by_a_signal_exits_128_plus_it(sig, expected, cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path), tmp_path / "r", tmp_path / "marks"
    # the step signals the sweep (this process, which handles SIGINT and SIGTERM while it runs), then waits to be
    # stopped: the sweep sends it SIGTERM and starts nothing more. A Ctrl-C reaches the steps as well (one process
    # group): a step gets SIGINT first, and ignores it (else it would die at once, its epoch lost: `killed`).
    fake_steps(monkeypatch, marks, f"os.kill(os.getpid(), signal.SIGINT)\nos.kill(os.getppid(), {int(sig)})\n"
                                   "time.sleep(60)\n")
    code, out, _ = sweep(cli, grid, results)
    assert code == expected
    assert {o["status"] for o in out["outcomes"]} == {"terminated"} and ran(marks) == {0}


# a step another process holds is put off, with no process started for it, until it is let go


def hold_later(locks: list[Path], after: Path, until, order: Path, then=None) -> threading.Thread:
    """A thread that takes `locks` (as another sweep's `defend` claims runs) once the step process leaving `after`
    has started (after the sweep made its plan, as a second sweep's claim comes), says so in `<order>.holding`, and
    lets go once `until()` holds, noting "released" in `order` first (and calling `then`)."""
    def hold():
        deadline = time.monotonic() + 60
        while not after.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.ExitStack() as stack:
            assert all(stack.enter_context(try_exclusive(lock)) for lock in locks)
            order.with_suffix(".holding").touch()
            while not until() and time.monotonic() < deadline:
                time.sleep(0.02)
            with open(order, "a") as f:
                f.write("released\n")
            if then is not None:
                then()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


# a step process: notes its index in `o` as it ends; the first `workers` of them end only once the claims are held
STEP = ("here = os.path.join(root, '..')\n"
        "while int(index) < {workers} and not os.path.exists(os.path.join(here, 'o.holding')):\n"
        "    time.sleep(0.02)\n"
        "open(os.path.join(here, 'o'), 'a').write(index + '\\n')\n")


def shown(order: Path) -> list[str]:
    return order.read_text().split() if order.exists() else []


@pytest.mark.parametrize("workers", [1, 2])
def test_steps_held_elsewhere_start_after_the_others_once_let_go(workers, cli, tmp_path, monkeypatch):
    """Two steps in a row claimed by another process after the plan was made (the sweep comes to the second right
    after putting off the first) are put off; the free step after them runs; then, with nothing of its own left
    running, the sweep waits for the claims (held half a second longer than its polls) and runs both."""
    grid, results, marks = write_grid(tmp_path, trials=workers + 3), tmp_path / "r", tmp_path / "marks"
    order = tmp_path / "o"
    fake_steps(monkeypatch, marks, STEP.format(workers=workers))
    steps = planned(grid, results).steps
    held, free = steps[workers:workers + 2], str(workers + 2)

    def free_step_ended() -> bool:
        if free not in shown(order):
            return False
        time.sleep(0.5)  # the sweep polls every 0.2 s: it sees nothing of its own running while the claims hold
        return True

    thread = hold_later([RunStore(results).lock_path(s.key) for s in held], marks / "0", free_step_ended, order)
    code, out, _ = sweep(cli, grid, results, "--workers", str(workers))
    thread.join()
    # the held steps' processes started once let go (before 2026-11-30 they started while held, and waited)
    seen = shown(order)
    assert sorted(seen[:workers]) == [str(i) for i in range(workers)]
    assert seen[workers:workers + 2] == [free, "released"]
    assert sorted(seen[workers + 2:]) == [str(workers), str(workers + 1)]
    assert code == 1  # (the fake steps write no record)


def test_a_step_its_holder_finished_is_skipped_without_a_process(cli, tmp_path, monkeypatch):
    from poisonbench.sweeps import plan as plan_module

    grid, results, marks, order = write_grid(tmp_path, trials=3), tmp_path / "r", tmp_path / "marks", tmp_path / "o"
    fake_steps(monkeypatch, marks, STEP.format(workers=1))
    held, finished = planned(grid, results).steps[1], tmp_path / "finished"
    real_state = plan_module.Plan.state

    def state(self, step, *args, **kwargs):  # the holder's record, once written: the step is done
        return "done" if step.key == held.key and finished.exists() else real_state(self, step, *args, **kwargs)

    monkeypatch.setattr(plan_module.Plan, "state", state)
    thread = hold_later([RunStore(results).lock_path(held.key)], marks / "0", (marks / "2").exists, order,
                        then=finished.touch)
    code, out, _ = sweep(cli, grid, results)
    thread.join()
    assert ran(marks) == {0, 2} and order.read_text().split() == ["0", "2", "released"]
    outcomes = {o["index"]: o for o in out["outcomes"]}
    assert (outcomes[1]["status"], outcomes[1]["detail"]) == ("skipped", "done by another process")


# item 3: logs never follow a symbolic link; one log per sweep process


def test_a_symbolic_link_planted_at_a_log_s_name_is_replaced_not_written_through(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path, trials=1), tmp_path / "r", tmp_path / "marks"
    monkeypatch.setattr(execute, "writer_tag", lambda: TAG, raising=False)
    (step,) = planned(grid, results).steps
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (results / "logs").mkdir(parents=True)
    for name in (f"{step.failure_key}.log", f"{step.failure_key}.{TAG}.log"):  # any name a log could have
        (results / "logs" / name).symlink_to(victim)
    fake_steps(monkeypatch, marks, "print('the step speaks', file=sys.stderr)\n")
    code, out, err = sweep(cli, grid, results)
    assert ran(marks) == {0}
    assert victim.read_text() == "precious\n", "the log was written through a planted symbolic link"
    log = results / "logs" / f"{step.failure_key}.{TAG}.log"
    assert not log.is_symlink() and log.read_text() == "the step speaks\n"


def test_logs_that_are_a_symbolic_link_are_refused_in_one_line(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path, trials=1), tmp_path / "r", tmp_path / "marks"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results.mkdir()
    (results / "logs").symlink_to(elsewhere)
    fake_steps(monkeypatch, marks)
    code, out, err = cli("sweep", "run", grid, "--results", results, "--no-report")
    one_line_error(code, err, f"{results / 'logs'}' is a symbolic link", "remove the link")
    assert not ran(marks) and not list(elsewhere.iterdir())


def test_each_sweep_process_writes_logs_of_its_own(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path, trials=1), tmp_path / "r", tmp_path / "marks"
    (step,) = planned(grid, results).steps
    fake_steps(monkeypatch, marks, "print('sweep', os.environ['WHO'], file=sys.stderr)\n")
    for who in ("1111@aaaaaaaaaaaa", "2222@bbbbbbbbbbbb"):  # two sweeps (pid @ host) on one results directory
        monkeypatch.setattr(execute, "writer_tag", lambda who=who: who, raising=False)
        monkeypatch.setenv("WHO", who)
        sweep(cli, grid, results)
    logs = {p.name: p.read_text() for p in (results / "logs").iterdir()}
    assert logs == {f"{step.failure_key}.{who}.log": f"sweep {who}\n"
                    for who in ("1111@aaaaaaaaaaaa", "2222@bbbbbbbbbbbb")}
    monkeypatch.undo()
    assert execute.log_name(step).startswith(f"{step.failure_key}.{os.getpid()}@")


# item 7: OS errors in one line, with the OS's reason


def read_only(monkeypatch, directory: Path) -> None:
    """Writes into `directory` fail as on a read-only filesystem (EROFS), where the OS would fail them; for real
    too (chmod) where the tests do not run as root, whom permissions do not stop."""
    real_open, real_mkdir = os.open, os.mkdir
    inside = str(directory)

    def refused(path) -> bool:
        return str(path).startswith(inside)

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and (refused(path) or dir_fd is not None):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path, mode=0o777, *, dir_fd=None):
        if refused(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("made", [False, True], ids=["missing", "existing"])
def test_a_read_only_results_directory_is_one_line_exit_2_before_anything_starts(made, cli, tmp_path,
                                                                                    monkeypatch):
    grid, results, marks = write_grid(tmp_path), tmp_path / "r", tmp_path / "marks"
    parent = tmp_path / "ro"
    parent.mkdir()
    results = parent / "r"
    if made:
        results.mkdir()
    fake_steps(monkeypatch, marks)
    if os.geteuid() != 0:
        parent.chmod(0o555)
        results.chmod(0o555) if made else None
    else:
        read_only(monkeypatch, parent)
    try:
        code, out, err = cli("sweep", "run", grid, "--results", results, "--no-report")
    finally:
        parent.chmod(0o755)
        results.chmod(0o755) if results.exists() else None
    reason = os.strerror(errno.EROFS) if os.geteuid() == 0 else os.strerror(errno.EACCES)
    one_line_error(code, err, "cannot write sweep results into", str(results), reason)
    assert not ran(marks)
    assert not (results / "logs").exists()


def test_a_step_whose_log_fills_the_disk_says_no_space_left_on_device(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path, trials=1), tmp_path / "r", tmp_path / "marks"
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full: a file whose every write fails with ENOSPC")
    real_open, real_builtin_open = os.open, open

    def full_open(path, flags, mode=0o777, *, dir_fd=None):  # the log is made where the disk is full
        if str(path).endswith(".log") and not str(path).startswith(".write-probe"):
            return real_open("/dev/full", os.O_RDWR | os.O_CLOEXEC)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", full_open)
    monkeypatch.setattr(execute, "open", lambda path, mode="r", *a, **k: real_builtin_open(  # (the code before)
        "/dev/full" if str(path).endswith(".log") else path, mode, *a, **k), raising=False)
    # `defend` on a full disk: its error message (the real reason) cannot be written into its log either
    fake_steps(monkeypatch, marks, "sys.stderr.write('Error: could not write the record: No space left on "
                                   "device\\n')\nsys.stderr.flush()\n")
    code, out, err = sweep(cli, grid, results)
    assert ran(marks) == {0} and code == 1
    (outcome,) = out["outcomes"]
    assert outcome["status"] == "failed"
    assert "its log could not be written (it is empty): No space left on device" in outcome["detail"], outcome


def test_a_log_that_cannot_be_created_fails_its_step_in_one_line_and_the_others_run(cli, tmp_path, monkeypatch):
    grid, results, marks = write_grid(tmp_path), tmp_path / "r", tmp_path / "marks"
    plan = planned(grid, results)
    doomed = plan.steps[0].failure_key
    real_open, real_builtin_open = os.open, open

    def no_space(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if str(path).startswith(f"{doomed}."):
            raise no_space(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_builtin_open(path, mode="r", *a, **k):  # (the code before)
        if Path(path).name.startswith(f"{doomed}."):
            raise no_space(path)
        return real_builtin_open(path, mode, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(execute, "open", fake_builtin_open, raising=False)
    fake_steps(monkeypatch, marks)
    code, out, err = sweep(cli, grid, results)
    assert code == 1 and ran(marks) == {1}
    outcomes = {o["index"]: o for o in out["outcomes"]}
    assert outcomes[0]["status"] == "failed"
    assert "not started: cannot create its log" in outcomes[0]["detail"]
    assert "No space left on device" in outcomes[0]["detail"]
