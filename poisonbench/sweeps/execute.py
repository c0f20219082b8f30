"""Executing a sweep's steps: local worker processes, one step from a job array (`--task-id`), or a SLURM job array
through submitit (docs/sweeps.md).

Every step runs the library's `defend` (or `prepare`) on the step's spec (poisonbench.sweeps.worker), locally in a
process of its own, so the guarantees are `defend`'s own (and the command `sweep plan --print-commands` prints for a
step runs the same run): a run is claimed (flock) before it trains, so two
processes never train it twice; a done run is skipped; a PoisonSet has one writer and the others wait; a run that
raises leaves a failure record; SIGTERM saves the epoch checkpoint and exits 143, and the re-run resumes from it.

The local pool starts the prepare steps first and a run only once the PoisonSets it needs are on disk. A step that
another process holds when the pool comes to it (another sweep on the same results directory crafting its PoisonSet
or training its run) is put off while other steps can start, and no process is started for it while it is held:
when it is let go it is done (skipped) or, if its holder died, started and resumed. A worker slot is thus never
spent waiting for another sweep's claim while other steps are free. Its workers
die with it (Linux: PR_SET_PDEATHSIG delivers SIGTERM, so even a SIGKILLed sweep leaves checkpoints, not orphans).
They ignore SIGINT: a Ctrl-C stops the sweep, which stops them with SIGTERM (exit 130 then, 143 for SIGTERM).

Each step process writes its stderr into a log of its own, `<results>/logs/<run id>.<pid>@<host>.log` (`<pid>@<host>`
the sweep's, as in `io.writer_tag`): two sweeps on one results directory never write into one file. A log is created
new (O_CREAT | O_EXCL | O_NOFOLLOW, through a descriptor of `logs/` opened without following a link), so a symbolic
link planted at its name or as `logs/` itself never redirects the write (`open_logs`, `StepLog`).

A step killed by a signal from outside (SIGKILL, the OOM killer, SIGINT, SIGHUP, ...) gets no failure record: it did
not fail, it was stopped, and a plain re-run runs it again. A step that crashed by its own fault (SIGSEGV, SIGABRT,
...) or exited with an error is failed, and only `--retry-failed` runs it again (`outcome_of`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.io import ensure_writable, writer_tag
from ..core.workspace import workspace_dir
from ..experiment.records import RunStore
from . import warm
from .plan import Plan, Step, held
from .worker import die_with_parent, run_step, spec_to_json

TERMINATED = 143  # 128 + SIGTERM: `defend` stopped by SIGTERM after saving its checkpoint
ABORTED = 130  # 128 + SIGINT: `defend` stopped by SIGINT (KeyboardInterrupt: "Aborted.")
# signals a process gets for its own fault: such a step failed (a bug, bad memory), it was not stopped from outside
CRASHES = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGSYS,
                     signal.SIGTRAP})
TAIL_BYTES = 16384  # how much of the end of a log is read for a failure's detail


@dataclass
class Outcome:
    step: Step
    status: str  # ran | skipped | crafted | on disk | failed | killed | terminated | blocked
    seconds: float = 0.0
    detail: str = ""
    outputs: list[dict] = field(default_factory=list)  # the step's `--json` lines


def to_run(plan: Plan, retry_failed: bool = False, states: dict[int, str] | None = None) -> list[Step]:
    """The steps a sweep still has to execute, in plan order; steps another process holds now go last (they are
    waited for, then skipped or resumed); failed ones only with `retry_failed`."""
    states = states if states is not None else plan.states()
    wanted = {"missing"} | ({"failed"} if retry_failed else set())
    free = [s for s in plan.steps if states[s.index] in wanted]
    held = [s for s in plan.steps if states[s.index] == "running"]
    return free + held


MAX_WORKERS = 256  # `sweep run --workers` at most: 16 runs on each of 16 GPUs
MAX_THREADS = 1024  # `--threads` at most


def split_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores split between them (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def step_argv(plan: Plan, step: Step) -> list[str]:
    """The worker process of `step`: the library runs its spec (poisonbench.sweeps.worker)."""
    return [sys.executable, "-m", "poisonbench.sweeps.worker", *step_args(step)]


def step_args(step: Step) -> list[str]:
    """`poisonbench.sweeps.worker`'s arguments for `step`: its kind and its spec as JSON."""
    return [step.kind, spec_to_json(step.spec)]


def logs_dir(plan: Plan) -> Path:
    return workspace_dir(RunStore(plan.execution.results).root, "logs")


def log_name(step: Step) -> str:
    """`<run id>.<pid>@<host>.log` (a prepare step: `craft-<poison id>.…`): one log per step and sweep process."""
    return f"{step.failure_key}.{writer_tag()}.log"


def open_logs(plan: Plan) -> int:
    """A descriptor of `<results>/logs/` (created if missing), for `StepLog`: the results directory and `logs/` must
    be writable, and `logs/` a directory, not a symbolic link (a planted link would send the logs elsewhere).
    Fails in one line (PoisonbenchError) before anything starts."""
    root, logs = RunStore(plan.execution.results).root, logs_dir(plan)
    ensure_writable(root, "sweep results")
    try:
        os.mkdir(logs)
    except FileExistsError:
        pass
    except OSError as e:
        raise PoisonbenchError(f"cannot write sweep logs into {str(logs)!r}: {e.strerror or e}") from None
    try:
        fd = os.open(logs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if logs.is_symlink():
            raise PoisonbenchError(f"{str(logs)!r} is a symbolic link (to {os.readlink(logs)!r}), not a directory: "
                                   "a sweep writes its logs only into a directory of its own results; remove the "
                                   "link") from None
        reason = f"{str(logs)!r} is a file, not a directory" if isinstance(e, NotADirectoryError) else e.strerror
        raise PoisonbenchError(f"cannot write sweep logs into {str(logs)!r}: {reason or e}") from None
    probe = f".write-probe.{writer_tag()}.log"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd))
        os.unlink(probe, dir_fd=fd)
    except OSError as e:
        os.close(fd)
        raise PoisonbenchError(f"cannot write sweep logs into {str(logs)!r}: {e.strerror or e}") from None
    return fd


def check_writable(plan: Plan, logs: bool = True) -> None:
    """Fail in one line (PoisonbenchError, with the OS's reason) unless the results directory, and with `logs` its
    `logs/`, can be written: before a sweep starts anything."""
    if logs:
        os.close(open_logs(plan))
    else:
        ensure_writable(RunStore(plan.execution.results).root, "sweep results")


@dataclass
class StepLog:
    """The log a step process writes its stderr into: created new in `logs/` (the descriptor `dir_fd`), never
    through a symbolic link; read back through its own descriptor."""

    path: Path
    fd: int

    @classmethod
    def create(cls, dir_fd: int, directory: Path, step: Step) -> StepLog:
        """Raises OSError when the log cannot be made. A file already at its name (a dead sweep's of the same pid,
        or a planted symbolic link) is unlinked, never followed or written through, and the log made anew."""
        name = log_name(step)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            os.unlink(name, dir_fd=dir_fd)  # a link itself is removed, not its target
            fd = os.open(name, flags, 0o666, dir_fd=dir_fd)  # a second planting in between: the step is not started
        return cls(directory / name, fd)

    def tail(self) -> str:
        """The last non-empty line the process wrote (a progress display's carriage-return updates are lines too)."""
        try:
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, min(size, TAIL_BYTES), max(0, size - TAIL_BYTES))
        except OSError:
            return ""
        lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def append(self, line: str) -> str | None:
        """Write `line` after what the process wrote and flush it to the disk; why that failed (a full disk: "No
        space left on device"), else None. A log that cannot take this line could not take the process's last
        words either: its emptiness is then no evidence of silence."""
        try:
            os.write(self.fd, f"{line}\n".encode())
            os.fsync(self.fd)
        except OSError as e:
            return e.strerror or str(e)
        return None

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def stop_signal(code: int) -> signal.Signals | None:
    """The signal that stopped a step process from outside, by its exit code: killed by it (-N), or `defend`'s
    own exit on SIGINT (130); None for an exit, a crash (`CRASHES`) or SIGTERM (`terminated`)."""
    if code == ABORTED:
        return signal.SIGINT
    if code >= 0:
        return None
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return None
    return None if sig in CRASHES or sig == signal.SIGTERM else sig


def signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def outcome_of(plan: Plan, step: Step, code: int, stdout: str, seconds: float, log: StepLog | None = None) -> Outcome:
    """What a finished step process did.

    - A step stopped by a signal from outside (`stop_signal`: SIGKILL, the OOM killer, SIGINT, ...) is `killed`: no
      failure record, so a plain re-run runs it again (from its last checkpoint).
    - Any other failure is `failed`; one without a failure record (a crash, an error before the run was claimed)
      gets one here. Its detail has the last line of its log and, when the log could not be written to the end (a
      full disk), why.
    """
    outputs = json_lines(stdout)
    if code == 0:
        if step.kind == "run":
            status = next((o.get("status") for o in outputs if o.get("run_id") == step.key), "ran")
        else:
            status = next((o.get("status") for o in outputs if o.get("poison_id") == step.key), "on disk")
        return Outcome(step, status, seconds, outputs=outputs)
    if code in (TERMINATED, -signal.SIGTERM):
        return Outcome(step, "terminated", seconds, "stopped by SIGTERM; re-running resumes it")
    stopped = stop_signal(code)
    how = (f"killed by {stopped.name}" if stopped is not None and code < 0 else
           f"stopped by {stopped.name} (exit code {code})" if stopped is not None else
           f"crashed: {signal_name(code)}" if code < 0 else f"exit code {code}")
    tail, unwritten = "", None
    if log is not None:
        tail = log.tail()
        unwritten = log.append(f"poisonbench sweep: step {step.index} {how}")
    detail = how + (f": {tail}" if tail else "")
    if unwritten:
        detail += f"; its log could not be written{'' if tail else ' (it is empty)'}: {unwritten}"
    detail += f" (log: {log.path})" if log is not None else ""
    store = RunStore(plan.execution.results)
    done = plan.state(step, store) == "done"
    if done:
        return Outcome(step, "done", seconds, detail)
    if stopped is not None:  # an earlier failure record (this was a --retry-failed attempt) stands
        again = ("its earlier failure record stands: --retry-failed runs it again" if store.failure(step.failure_key)
                 else "a plain re-run runs it again")
        return Outcome(step, "killed", seconds, f"{detail}; {again}")
    if store.failure(step.failure_key) is None:
        try:
            store.put_failure(step.failure_key, step.config, RuntimeError(detail))
        except OSError:
            pass
    return Outcome(step, "failed", seconds, detail)


class LocalPool:
    """`sweep run --workers N`: N `defend` processes at a time, threads split between them, GPUs round-robin."""

    def __init__(self, plan: Plan, workers: int, on_start: Callable[[Step], None] | None = None,
                 on_finish: Callable[[Outcome], None] | None = None, threads: int | None = None):
        if not 1 <= workers <= MAX_WORKERS:
            raise PoisonbenchError(f"--workers must be in 1..{MAX_WORKERS}, got {workers}")
        if threads is not None and not 1 <= threads <= MAX_THREADS:
            raise PoisonbenchError(f"--threads must be in 1..{MAX_THREADS}, got {threads}")
        self.plan, self.workers = plan, workers
        self.on_start, self.on_finish = on_start, on_finish
        # each run's intra-op threads: the CPU's floats depend on them, never on how many runs share the device
        # (tests/test_concurrent_runs.py), so a fixed --threads gives the same records whatever --workers is
        self.threads = threads or split_threads(workers)
        self.gpus = gpu_count(plan.execution.device)
        self.warm = warm.wanted(self.gpus)  # fork each step from a server that imported the library once
        self.running: dict[subprocess.Popen | warm.WarmProcess, tuple[Step, float, int, StepLog]] = {}
        self.stopping = False
        self.stopped_by: int | None = None  # the signal (SIGTERM or SIGINT) that stopped the sweep
        self.logs_fd: int | None = None

    def env(self, slot: int) -> dict[str, str]:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        return env

    def start(self, step: Step, slot: int) -> Outcome | None:
        """Start `step`'s process; None, or the outcome of a step that could not be started (its log could not be
        made: a full disk, too many open files)."""
        directory = logs_dir(self.plan)
        try:
            log = StepLog.create(self.logs_fd, directory, step)
        except OSError as e:
            return Outcome(step, "failed", detail=f"not started: cannot create its log "
                                                  f"{directory / log_name(step)}: {e.strerror or e}")
        try:
            proc = self._warm_start(step, slot, log) if self.warm else None
            if proc is None:
                proc = subprocess.Popen(step_argv(self.plan, step), stdout=subprocess.PIPE, stderr=log.fd,
                                        text=True, env=self.env(slot),
                                        preexec_fn=partial(die_with_parent, os.getpid()))
        except OSError as e:
            log.close()
            return Outcome(step, "failed", detail=f"not started: {e.strerror or e} (log: {log.path})")
        self.running[proc] = (step, time.perf_counter(), slot, log)
        if self.on_start:
            self.on_start(step)
        return None

    def _warm_start(self, step: Step, slot: int, log: StepLog) -> warm.WarmProcess | None:
        """The step forked from the warm server (`sweeps.warm`); None where that failed (the warning says why
        once, and the pool starts its steps cold from then on)."""
        try:
            return warm.start(step_args(step), self.env(slot), log.fd)
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            self.warm = False
            warnings.warn(PoisonbenchWarning(f"the warm step server failed ({type(e).__name__}: {e}); the sweep "
                                             "starts its steps in fresh processes from here"), stacklevel=2)
            return None

    def run(self, steps: list[Step]) -> list[Outcome]:
        """Execute `steps`; returns their outcomes in completion order. SIGTERM or SIGINT to the sweep stops it:
        the running steps get SIGTERM (each saves its checkpoint), nothing new starts."""
        from ..poisons import exists

        store = RunStore(self.plan.execution.results)
        pending = list(steps)
        outcomes: list[Outcome] = []
        failed_crafts: set[str] = set()
        self.logs_fd = open_logs(self.plan)  # a read-only or full results directory fails here, in one line
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def stop(signum, _frame):
            self.stopping = True
            self.stopped_by = self.stopped_by or signum
            for proc in self.running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

        for sig in previous:
            signal.signal(sig, stop)
        try:
            while pending or self.running:
                if not self.stopping:
                    self._fill(pending, outcomes, failed_crafts, store, lambda pid: exists(store.root, pid))
                if not self.running and (self.stopping or not pending):
                    break  # (with nothing running, the steps still pending are held by other processes: waited for)
                self._reap(outcomes, failed_crafts)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self.logs_fd)
            self.logs_fd = None
        if self.stopping:
            outcomes += [Outcome(s, "terminated", detail="not started: the sweep was stopped") for s in pending]
        return outcomes

    def _fill(self, pending: list[Step], outcomes: list[Outcome], failed_crafts: set[str], store: RunStore,
              on_disk) -> None:
        busy = {slot for *_, slot, _ in self.running.values()}
        preparing = {s.key for s, *_ in self.running.values() if s.kind == "prepare"}
        i = 0
        while i < len(pending) and len(self.running) < self.workers:
            step = pending[i]
            blocked = [pid for pid in step.needs if pid in failed_crafts]
            if blocked:
                outcomes.append(self._finish(Outcome(step, "blocked", detail=f"crafting PoisonSet {blocked[0]} "
                                                     "failed")))
                pending.pop(i)
                continue
            waiting = [pid for pid in step.needs if not on_disk(pid)]
            if waiting:
                if any(pid in preparing or any(s.kind == "prepare" and s.key == pid for s in pending)
                       for pid in waiting):
                    i += 1  # its PoisonSet is being crafted, or will be by a step still pending
                    continue
                outcomes.append(self._finish(Outcome(step, "blocked", detail=f"PoisonSet {waiting[0]} is missing "
                                                     "and its prepare step failed (--retry-failed crafts it)")))
                pending.pop(i)
                continue
            if held(store, step):  # another process (another sweep's step) is on it: its other steps first, and
                i += 1  # once it lets go, done (no process started) or, if its holder died, started to resume it
                continue
            pending.pop(i)
            if self.plan.state(step) == "done":  # finished elsewhere since the plan was made: no process needed
                status = "skipped" if step.kind == "run" else "on disk"
                outcomes.append(self._finish(Outcome(step, status, detail="done by another process")))
                continue
            slot = min(set(range(self.workers)) - busy)
            not_started = self.start(step, slot)
            if not_started is not None:
                if step.kind == "prepare":
                    failed_crafts.add(step.key)
                outcomes.append(self._finish(not_started))
                continue
            busy.add(slot)
            if step.kind == "prepare":
                preparing.add(step.key)

    def _reap(self, outcomes: list[Outcome], failed_crafts: set[str]) -> None:
        for proc in [p for p in self.running if p.poll() is not None]:
            step, started, _slot, log = self.running.pop(proc)
            stdout = proc.stdout.read() if proc.stdout else ""
            try:
                outcome = outcome_of(self.plan, step, proc.returncode, stdout, time.perf_counter() - started, log)
            finally:
                log.close()
            if step.kind == "prepare" and outcome.status in ("failed", "killed"):
                failed_crafts.add(step.key)
            outcomes.append(self._finish(outcome))

    def _finish(self, outcome: Outcome) -> Outcome:
        if self.on_finish:
            self.on_finish(outcome)
        return outcome


def gpu_count(device: str) -> int:
    if device == "cpu":
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 (no usable CUDA: the CPU)
        return 0


def run_task(plan: Plan, task_id: int | None, threads: int | None = None) -> int:
    """`sweep run --task-id I` (default `$SLURM_ARRAY_TASK_ID`): step I of the plan, run by the library in this
    process, its JSON lines printed on stdout. Returns 0 (also when the step was already done: `defend` skips a done
    run). Bad input or an OS problem raises PoisonbenchError (the CLI: one line, exit 2), SIGTERM `Terminated` (exit
    143); an error while training propagates (exit 1 with its traceback), after `defend` wrote its failure
    record. `threads` (`--threads`): torch's intra-op threads while the step runs (None: as the process has them,
    from $OMP_NUM_THREADS or torch's default). A run's numbers on the CPU depend on them (the record's env.threads),
    so `--threads` reaches a step run here as it reaches a worker's (`LocalPool.env`); until 2026-11-30 `--task-id`
    ignored it."""
    if task_id is None:
        raw = os.environ.get("SLURM_ARRAY_TASK_ID")
        if raw is None:
            raise PoisonbenchError("--task-id is needed outside a SLURM job array ($SLURM_ARRAY_TASK_ID is not set)")
        try:
            task_id = int(raw)
        except ValueError:
            raise PoisonbenchError(f"$SLURM_ARRAY_TASK_ID must be an integer, got {raw!r}") from None
    if not 0 <= task_id < len(plan.steps):
        raise PoisonbenchError(f"--task-id {task_id} is out of range: grid {plan.grid.name} has {len(plan.steps)} "
                               f"steps, 0..{len(plan.steps) - 1}")
    from ..core.device import intra_op_threads

    step = plan.steps[task_id]
    with intra_op_threads(threads):
        for line in run_step(step.kind, step.spec):
            print(json.dumps(line), flush=True)
    return 0
