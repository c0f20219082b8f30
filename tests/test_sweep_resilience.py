"""`poisonbench sweep run` survives what happens to long jobs, tested through real processes: a sweep SIGKILLed at
random moments (its workers get SIGTERM from PR_SET_PDEATHSIG and save their epoch), a sweep stopped by SIGTERM
(exit 143, the run resumes from its checkpoint), and three sweeps started at once on one results directory (each
run trained once, each PoisonSet crafted once). Whatever the interruptions, the end state is the one of an
uninterrupted sweep: one complete record per run, no checkpoint, temporary file or failure record left over, and no
finished run trained again."""

from __future__ import annotations

import compileall
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import poisonbench
from poisonbench.engine.checkpoints import checkpoint_path
from poisonbench.experiment.records import RunStore
from poisonbench.sweeps import Execution, load_grid, make_plan

from .conftest import dies_with_the_test, write_npz

CPUS = sorted(os.sched_getaffinity(0))
POLL = 0.05  # seconds between two looks at files and processes (never a synchronisation by itself)
PATIENCE = 240.0  # a loaded 2-core machine: a generous bound on any wait, reached only when something hangs


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of the package for every process of this module: a checkpoint is resumed only by the sources that
    wrote it, and a file of the working tree saved while a test runs would make a resume start over."""
    root = tmp_path_factory.mktemp("code")
    shutil.copytree(Path(poisonbench.__file__).parent, root / "poisonbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(root / "poisonbench", quiet=1)  # compiled once, not by each of the many processes
    return root


@pytest.fixture
def sweeps(package_copy, tmp_path):
    """Start `poisonbench sweep run` processes (output into files, never an unread pipe); any still running at
    the end of the test is killed, and its workers (SIGTERM from PR_SET_PDEATHSIG) are waited for."""
    started: list[Sweep] = []

    def start(grid: Path, results: Path, workers: int, cpu: int | None = None, **env: str) -> Sweep:
        sweep = Sweep(grid, results, workers, package_copy, tmp_path, env, cpu)
        started.append(sweep)
        return sweep

    yield start
    for sweep in started:
        if sweep.proc.poll() is None:
            sweep.proc.kill()
            sweep.proc.wait()
    for results in {s.results for s in started}:
        wait_for(lambda r=results: not workers_of(r), "the workers of killed sweeps to exit", fail=False)


class Sweep:
    """One `sweep run GRID --workers N --results R --json` process, on one CPU if `cpu` is given."""

    def __init__(self, grid: Path, results: Path, workers: int, package: Path, cwd: Path, env: dict[str, str],
                 cpu: int | None = None):
        self.results = results
        n = len(list(cwd.glob("sweep-*.out")))
        self.out, self.err = cwd / f"sweep-{n}.out", cwd / f"sweep-{n}.err"
        environment = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR", "COLUMNS")}
        path = os.pathsep.join(p for p in (str(package), environment.get("PYTHONPATH")) if p)
        environment.update(OMP_NUM_THREADS="1", PYTHONPATH=path, **env)
        command = [sys.executable, "-m", "poisonbench.cli.main", "sweep", "run", str(grid), "--workers", str(workers),
                   "--results", str(results), "--json"]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env=environment, cwd=cwd,
                                         start_new_session=True, preexec_fn=dies_with_the_test(
                                             None if cpu is None else lambda: os.sched_setaffinity(0, {cpu})))

    def finish(self, timeout: float = PATIENCE) -> tuple[int, dict]:
        """(exit code, its --json summary) once it ends."""
        code = self.proc.wait(timeout)
        lines = [line for line in self.out.read_text().splitlines() if line.startswith("{")]
        assert lines, f"sweep exited {code} without its JSON summary: {self.tail()}"
        return code, json.loads(lines[-1])

    def tail(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]


def wait_for(condition, what: str, timeout: float = PATIENCE, fail: bool = True):
    """Poll `condition` until it returns something true; that value (a failed test after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert value or not fail, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


def workers_of(results: Path) -> list[int]:
    """The live step processes working on `results`: those whose stderr is a log in `<results>/logs/` (forked from
    the warm server or started cold, a step writes its stderr there; a zombie has no descriptors)."""
    logs = str(results / "logs") + os.sep
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stderr = os.readlink(entry / "fd" / "2")
        except OSError:  # exited meanwhile
            continue
        if stderr.startswith(logs):
            pids.append(int(entry.name))
    return pids


def record_stamps(results: Path) -> dict[str, tuple[str, int]]:
    """{run id: (finished_at, st_mtime_ns)} of the records on disk: a run trained again changes both."""
    return {p.stem: (json.loads(p.read_text())["finished_at"], p.stat().st_mtime_ns)
            for p in (results / "runs").glob("*.json")}


def write_grid(path: Path, dataset: Path, epochs: int, trials: int, poison_ratio: list, methods: list[str],
               attacks: bool = True) -> Path:
    lines = ["[defaults]", f'dataset = "{dataset}"', 'recipe = "quick"', f"epochs = {epochs}", f"trials = {trials}",
             "", "[[runs]]", f"poison_ratio = {json.dumps(poison_ratio)}", f"method = {json.dumps(methods)}"]
    lines += ['attacks = [["durp"]]'] if attacks else []
    path.write_text("\n".join(lines) + "\n")
    return path


def epochs_shown(results: Path, epochs: int, since_ns: int = 0) -> dict[str, int]:
    """{run id: epochs done} of the runs whose log (`<run id>.<pid>@<host>.log`, written since `since_ns`: not a
    killed sweep's) shows a finished epoch: "epoch 2/5 · loss ..." in the progress display."""
    shown = {}
    for log in (results / "logs").glob("*.log"):
        try:
            if log.stat().st_mtime_ns < since_ns:
                continue
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.read_text(errors="replace"))  # the display's escapes
        except FileNotFoundError:
            continue
        done = [int(n) for n in re.findall(rf"epoch (\d+)/{epochs} · loss", text)]
        if done:
            rid = log.name.split(".", 1)[0]
            shown[rid] = max(shown.get(rid, 0), *done)
    return shown


def planned(grid: Path, results: Path):
    return make_plan(load_grid(str(grid)), Execution(results=str(results)))


def assert_finished_cleanly(grid: Path, results: Path) -> dict[str, dict]:
    """One complete record per run of the plan, and nothing else left behind: no checkpoint, no temporary file of
    an atomic write (`.<name>.<pid>@<host>.<random>.tmp`, or a PoisonSet's `.<id>.<pid>@<host>.<random>`
    directory), no failure record. Returns the records."""
    plan = planned(grid, results)
    store = RunStore(results)
    wanted = {step.key for step in plan.runs}
    assert {p.stem for p in (results / "runs").glob("*.json")} == wanted
    records = {rid: store.get(rid) for rid in wanted}
    assert all(r is not None and r["run_id"] == rid for rid, r in records.items()), "an incomplete record"
    assert not [p for p in (results / "partial").rglob("*") if p.is_file()], "a checkpoint was left behind"
    leftovers = [p for p in results.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert not list(results.glob("failures/*")), "a failure record"
    assert all(plan.state(step) == "done" for step in plan.steps)
    return records


def test_a_sweep_sigkilled_three_times_finishes_each_run_once_and_leaves_nothing_behind(tmp_path, sweeps):
    dataset = write_npz(tmp_path, n=1500, size=16)  # 1200 train rows: an epoch takes a moment
    epochs = 8  # a warm step starts training at once: the first kill leaves epochs for the second to land in
    # one trial (4 runs and the PoisonSet they share): every step is a process that spends seconds importing torch
    grid = write_grid(tmp_path / "grid.toml", dataset, epochs=epochs, trials=1, poison_ratio=[0, 0.5],
                      methods=["none", "hint"])
    results = tmp_path / "results"
    rng = random.Random(32)
    snapshots, stopped_in_training = [], {}
    for kill in range(3):
        since = time.time_ns()
        sweep = sweeps(grid, results, workers=2, TTY_COMPATIBLE="1", COLUMNS="400")  # progress drawn into logs

        def ended(s=sweep):
            return s.proc.poll() is not None

        if kill == 0:  # anywhere in the work: crafting, starting up, loading, an epoch, writing a record
            wait_for(lambda: workers_of(results) or ended(), "a worker to start")
            delay = rng.uniform(0, 1)  # a warm worker trains at once, an epoch in a fraction of a second
        elif kill == 1:  # inside a run's training, epochs before its last
            training = wait_for(lambda t=since: epochs_shown(results, epochs, t) or ended(), "a run to train")
            delay = rng.uniform(0, 0.1)
        else:  # after a run finished, so that the last snapshot has a record the re-run must leave alone
            before = len(record_stamps(results))
            wait_for(lambda n=before: len(record_stamps(results)) > n or ended(), "a run to finish")
            delay = rng.uniform(0, 1)  # a warm worker trains at once, an epoch in a fraction of a second
        wait_for(lambda t=time.monotonic() + delay: time.monotonic() > t or ended(), "the moment", fail=False)
        if not ended():
            sweep.proc.send_signal(signal.SIGKILL)
        code = sweep.proc.wait(PATIENCE)
        assert code in (-signal.SIGKILL, 0), sweep.tail()  # 0: it finished before its moment came
        # the kill inside training lands: the sweep cannot finish within 0.1 s of a run's early epoch (a test whose
        # kills all came too late would test an uninterrupted sweep)
        assert kill != 1 or code == -signal.SIGKILL, f"the sweep ended ({code}) before the kill in training"
        wait_for(lambda: not workers_of(results), "the killed sweep's workers to save their epoch and exit")
        snapshots.append(record_stamps(results))
        if kill == 1 and code != 0:  # the workers got SIGTERM (PR_SET_PDEATHSIG): the epoch under way was saved
            # (the display shows an epoch's end within 0.1 s: even at 0.1 s an epoch, a run shown with at most
            # epochs - 4 done was killed before its last epoch, which would finish the run instead)
            stopped_in_training = {rid: done for rid, done in training.items() if done <= epochs - 4}
            assert stopped_in_training, f"killed after epochs {training} of {epochs}: too late to test a resume"
            for rid in stopped_in_training:
                log = "".join(p.read_text(errors="replace") for p in (results / "logs").glob(f"{rid}.*.log"))
                log = log.replace("\r", "\n")
                assert checkpoint_path(results, rid).exists(), f"run {rid} saved no checkpoint: {log[-300:]}"
                assert rid not in snapshots[-1]
    assert snapshots[-1], "the last kill comes after a run finished"

    code, summary = sweeps(grid, results, workers=2).finish()
    assert code == 0 and not [o for o in summary.get("outcomes", []) if o["status"] not in ("ran", "skipped",
                                                                                            "crafted", "on disk")]
    records = assert_finished_cleanly(grid, results)
    for rid, done in stopped_in_training.items():
        assert records[rid]["resumed_from_epoch"] >= done
    final = record_stamps(results)
    for snapshot in snapshots:
        assert {rid: final[rid] for rid in snapshot} == snapshot, "a run that had finished was trained again"
    code, summary = sweeps(grid, results, workers=2).finish()
    assert code == 0 and summary.get("nothing_to_do") is True, summary


def test_sigterm_stops_the_sweep_with_143_and_the_rerun_resumes_the_stopped_run(tmp_path, sweeps):
    dataset = write_npz(tmp_path, n=1500, size=16)
    epochs = 6
    grid = write_grid(tmp_path / "grid.toml", dataset, epochs=epochs, trials=2, poison_ratio=[0], methods=["none"],
                      attacks=False)
    results = tmp_path / "results"
    # the workers' progress display drawn as on a (wide) terminal into their logs: its epoch text is the signal.
    # On one CPU, so that the single worker trains with one thread as in the other tests (the pool gives a worker
    # the cores it has: two threads fighting background load on two cores train many times slower).
    sweep = sweeps(grid, results, workers=1, cpu=CPUS[-1], TTY_COMPATIBLE="1", COLUMNS="400")

    def an_epoch_done():
        assert sweep.proc.poll() is None, f"the sweep ended before an epoch was shown: {sweep.tail()}"
        return epochs_shown(results, epochs)

    ((rid, seen_done),) = wait_for(an_epoch_done, "an epoch to finish").items()  # one worker: one run
    assert seen_done < epochs - 1, "the SIGTERM would come in the last epoch (which finishes the run)"
    sweep.proc.send_signal(signal.SIGTERM)
    code, summary = sweep.finish()
    assert code == 143, sweep.tail()
    assert {o["status"] for o in summary["outcomes"]} == {"terminated"}  # this run stopped, the other not started
    assert rid in {o["key"] for o in summary["outcomes"]}
    assert checkpoint_path(results, rid).exists()
    assert RunStore(results).get(rid) is None and not list(results.glob("runs/*.json"))
    assert not list(results.glob("failures/*")), "a stopped run is not a failed one"
    assert not workers_of(results)

    again = sweeps(grid, results, workers=1, cpu=CPUS[-1])  # the same thread count: the checkpoint is resumed
    code, summary = again.finish()
    assert code == 0, again.tail()
    records = assert_finished_cleanly(grid, results)
    assert records[rid]["resumed_from_epoch"] >= max(1, seen_done)
    assert len(records[rid]["history"]) == epochs


def test_three_sweeps_at_once_train_each_run_once_and_craft_each_poison_set_once(tmp_path, sweeps):
    dataset = write_npz(tmp_path, n=600, size=16)
    # two runs (one needs the PoisonSet) and its prepare step. Started at once, the sweeps all find every step free
    # and start a process for it (one trains, the others wait for its claim, then skip): each step costs a torch
    # import per sweep. Eight sweeps (before 2026-11-27, commit d4cfc0a) took 100 s of the suite, five 86 s (before
    # 2026-11-30); three still race more claimants than there are cores
    grid = write_grid(tmp_path / "grid.toml", dataset, epochs=2, trials=1, poison_ratio=[0, 0.5], methods=["none"])
    results = tmp_path / "results"
    plan = planned(grid, results)
    runs = {step.key for step in plan.runs}
    poison_sets = {step.key for step in plan.steps if step.kind == "prepare"}
    assert len(runs) == 2 and len(poison_sets) == 1

    started = [sweeps(grid, results, workers=1, cpu=CPUS[i % len(CPUS)]) for i in range(3)]  # 1 thread a worker
    assert all(s.proc.poll() is None for s in started), "every sweep starts before any finishes"
    finished = [s.finish() for s in started]
    assert [code for code, _ in finished] == [0] * 3, [s.tail() for s in started]

    outcomes = [o for _, summary in finished for o in summary.get("outcomes", [])]
    statuses = Counter((o["key"], o["status"]) for o in outcomes)
    assert {status for _, status in statuses} <= {"ran", "skipped", "crafted", "on disk"}, statuses
    assert {rid: statuses[rid, "ran"] for rid in runs} == dict.fromkeys(runs, 1), statuses
    assert {pid: statuses[pid, "crafted"] for pid in poison_sets} == dict.fromkeys(poison_sets, 1), statuses
    # what the workers themselves said (`defend --json`): trained once, crafted once
    said = [line for o in outcomes for line in o["outputs"]]
    assert Counter(line["run_id"] for line in said if line.get("status") == "ran") == Counter(runs)
    assert Counter(line["poison_id"] for line in said if line.get("status") == "crafted") == Counter(poison_sets)
    records = assert_finished_cleanly(grid, results)
    assert all(r["resumed_from_epoch"] == 0 for r in records.values())
