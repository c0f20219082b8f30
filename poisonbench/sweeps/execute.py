"""Executing a sweep's steps: local worker processes, one step from a job array (`--task-id`), or a SLURM job array
through submitit (design.md §7).

Every step runs as `poisonbench defend ...` in its own process, so a step is exactly the command `sweep plan
--print-commands` prints, and the guarantees are `defend`'s own: a run is claimed (flock) before it trains, so two
processes never train it twice; a done run is skipped; a PoisonSet has one writer and the others wait; a run that
raises leaves a failure record; SIGTERM saves the epoch checkpoint and exits 143, and the re-run resumes from it.

The local pool starts the prepare steps first and a run only once the PoisonSets it needs are on disk; its workers
die with it (Linux: PR_SET_PDEATHSIG delivers SIGTERM, so even a SIGKILLed sweep leaves checkpoints, not orphans).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..errors import PoisonbenchError
from ..records import RunStore
from .plan import Plan, Step

TERMINATED = 143  # 128 + SIGTERM: `defend` stopped by SIGTERM after saving its checkpoint


@dataclass
class Outcome:
    step: Step
    status: str  # ran | skipped | crafted | on disk | failed | terminated | blocked
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


def split_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores split between them (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def step_argv(plan: Plan, step: Step) -> list[str]:
    return [sys.executable, "-m", "poisonbench.cli.main", *step.command(plan.execution), "--json"]


def log_path(plan: Plan, step: Step) -> Path:
    return RunStore(plan.execution.results).root / "logs" / f"{step.failure_key}.log"


def _die_with_parent(parent: int) -> None:  # pragma: no cover (runs in the child, between fork and exec)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the sweep died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


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


def outcome_of(plan: Plan, step: Step, code: int, stdout: str, seconds: float) -> Outcome:
    """What a finished step process did; a failure without a failure record (killed by a signal, an error before
    the run was claimed) gets one here, with the end of its log."""
    outputs = json_lines(stdout)
    if code == 0:
        if step.kind == "run":
            status = next((o.get("status") for o in outputs if o.get("run_id") == step.key), "ran")
        else:
            status = next((o.get("status") for o in outputs if o.get("poison_id") == step.key), "on disk")
        return Outcome(step, status, seconds, outputs=outputs)
    if code in (TERMINATED, -signal.SIGTERM):
        return Outcome(step, "terminated", seconds, "stopped by SIGTERM; re-running resumes it")
    log = log_path(plan, step)
    try:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
    except OSError:
        tail = []
    detail = f"exit code {code}" + (f": {tail[0].strip()}" if tail else "") + f" (log: {log})"
    store = RunStore(plan.execution.results)
    done = plan.state(step, store) == "done"
    if not done and store.failure(step.failure_key) is None:
        try:
            store.put_failure(step.failure_key, step.config, RuntimeError(detail))
        except OSError:
            pass
    return Outcome(step, "done" if done else "failed", seconds, detail)


class LocalPool:
    """`sweep run --workers N`: N `defend` processes at a time, threads split between them, GPUs round-robin."""

    def __init__(self, plan: Plan, workers: int, on_start: Callable[[Step], None] | None = None,
                 on_finish: Callable[[Outcome], None] | None = None):
        if workers < 1:
            raise PoisonbenchError(f"--workers must be >= 1, got {workers}")
        self.plan, self.workers = plan, workers
        self.on_start, self.on_finish = on_start, on_finish
        self.threads = split_threads(workers)
        self.gpus = gpu_count(plan.execution.device)
        self.running: dict[subprocess.Popen, tuple[Step, float, int, object]] = {}
        self.stopping = False

    def env(self, slot: int) -> dict[str, str]:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        return env

    def start(self, step: Step, slot: int) -> None:
        log = log_path(self.plan, step)
        log.parent.mkdir(parents=True, exist_ok=True)
        err = open(log, "w")  # noqa: SIM115 (closed when the process ends)
        proc = subprocess.Popen(step_argv(self.plan, step), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=self.env(slot),
                                preexec_fn=partial(_die_with_parent, os.getpid()) if sys.platform == "linux" else None)
        self.running[proc] = (step, time.perf_counter(), slot, err)
        if self.on_start:
            self.on_start(step)

    def run(self, steps: list[Step]) -> list[Outcome]:
        """Execute `steps`; returns their outcomes in completion order. SIGTERM or SIGINT to the sweep stops it:
        the running steps get SIGTERM (each saves its checkpoint), nothing new starts."""
        from ..poisons import exists

        root = RunStore(self.plan.execution.results).root
        pending = list(steps)
        outcomes: list[Outcome] = []
        failed_crafts: set[str] = set()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def stop(signum, _frame):
            self.stopping = True
            for proc in self.running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

        for sig in previous:
            signal.signal(sig, stop)
        try:
            while pending or self.running:
                if not self.stopping:
                    self._fill(pending, outcomes, failed_crafts, lambda pid: exists(root, pid))
                if not self.running:
                    break
                self._reap(outcomes, failed_crafts)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stopping:
            outcomes += [Outcome(s, "terminated", detail="not started: the sweep was stopped") for s in pending]
        return outcomes

    def _fill(self, pending: list[Step], outcomes: list[Outcome], failed_crafts: set[str], on_disk) -> None:
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
            pending.pop(i)
            if self.plan.state(step) == "done":  # finished elsewhere since the plan was made: no process needed
                status = "skipped" if step.kind == "run" else "on disk"
                outcomes.append(self._finish(Outcome(step, status, detail="done by another process")))
                continue
            slot = min(set(range(self.workers)) - busy)
            busy.add(slot)
            self.start(step, slot)
            if step.kind == "prepare":
                preparing.add(step.key)

    def _reap(self, outcomes: list[Outcome], failed_crafts: set[str]) -> None:
        for proc in [p for p in self.running if p.poll() is not None]:
            step, started, _slot, err = self.running.pop(proc)
            stdout = proc.stdout.read() if proc.stdout else ""
            err.close()
            outcome = outcome_of(self.plan, step, proc.returncode, stdout, time.perf_counter() - started)
            if step.kind == "prepare" and outcome.status == "failed":
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


def run_task(plan: Plan, task_id: int | None) -> int:
    """`sweep run --task-id I` (default `$SLURM_ARRAY_TASK_ID`): step I of the plan, in this process. Returns
    `defend`'s exit code (0 also when the step was already done: `defend` skips a done run; 2 for bad input; 143
    when SIGTERM stopped it); an error while training propagates, after `defend` wrote its failure record."""
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
    from ..cli.main import main

    step = plan.steps[task_id]
    try:
        main(step.command(plan.execution))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
