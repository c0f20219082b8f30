"""A sweep on a SLURM cluster: a job array submitted through submitit, or an `sbatch --array` script that runs
`poisonbench sweep run GRID --task-id $SLURM_ARRAY_TASK_ID` (design.md §7).

Each array task runs one step in a `poisonbench defend` process. On pre-emption or at the time limit SLURM sends
SIGTERM: `defend` saves its epoch checkpoint and exits, and the requeued task resumes from it (submitit requeues a
`Checkpointable`; the emitted script asks for `--requeue`). submitit keeps its own job files (pickles of the task
and its result) in `<results>/slurm/`; poisonbench's own artifacts stay safetensors and JSON.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PoisonbenchError
from ..records import RunStore
from .plan import Plan, Step

EXECUTORS = ("workers", "slurm", "submitit-local")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 64
    extra: tuple[str, ...] = field(default_factory=tuple)  # extra `#SBATCH` options, e.g. "--account=abc"

    def additional(self) -> dict[str, str | bool]:
        """The extra `#SBATCH` lines as submitit's `slurm_additional_parameters`."""
        out: dict[str, str | bool] = {}
        for line in self.extra:
            text = line.strip()
            if text.startswith("#SBATCH"):
                text = text[len("#SBATCH"):].strip()
            if not text.startswith("--"):
                raise PoisonbenchError(f"--sbatch {line!r}: give a long sbatch option, e.g. --sbatch "
                                       "'--account=abc' or --sbatch '--qos=high'")
            name, sep, value = text[2:].partition("=")
            out[name.replace("-", "_")] = value if sep else True
        return out


def check_executor(name: str) -> None:
    """A one-line error for an unknown executor, or one this machine cannot use."""
    if name not in EXECUTORS:
        raise PoisonbenchError(f"unknown executor {name!r}; valid choices: {', '.join(EXECUTORS)}")
    if name == "workers":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise PoisonbenchError(f"executor {name!r} needs submitit, which is not installed (pip install "
                               "submitit); or use --executor workers") from None
    if name == "slurm" and shutil.which("sbatch") is None:
        raise PoisonbenchError("executor 'slurm' is not available here: no `sbatch` on PATH (submitit submits "
                               "through it); run this on the cluster's login node, or write a script with "
                               "--emit-sbatch FILE, or use --executor workers")


class StepTask:
    """One sweep step as a submitit job: runs `poisonbench defend ...` in a child process and returns its JSON
    lines. Checkpointable: on pre-emption or time-out submitit requeues it, and `defend` resumes its run."""

    def __init__(self, command: list[str], threads: int | None = None):
        self.command = command
        self.threads = threads

    def __call__(self) -> list[dict]:
        import os

        from .execute import json_lines

        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        done = subprocess.run([sys.executable, "-m", "poisonbench.cli.main", *self.command, "--json"],
                              capture_output=True, text=True, env=env)
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"`poisonbench {' '.join(self.command)}` exited with {done.returncode}: "
                               f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
        return json_lines(done.stdout)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(StepTask(self.command, self.threads))


def submit(plan: Plan, steps: list[Step], executor: str, options: SlurmOptions, threads: int | None = None):
    """Submit `steps` as one job array (prepare steps first: the array's order). Returns the submitit jobs."""
    import submitit

    cluster = "slurm" if executor == "slurm" else "local"
    folder = RunStore(plan.execution.results).root / "slurm"
    if cluster == "slurm":
        folder = folder / "%j"  # one folder per job; submitit fills the id in on SLURM only
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": options.time_min, "name": f"poisonbench-{plan.grid.name}"}
    if cluster == "slurm":
        params.update(slurm_array_parallelism=options.array_parallelism, slurm_gpus_per_task=options.gpus_per_task,
                      slurm_additional_parameters=options.additional())
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.cpus_per_task:
            params["cpus_per_task"] = options.cpus_per_task
    ex.update_parameters(**params)
    tasks = [StepTask(step.command(plan.execution), threads) for step in steps]
    with ex.batch():
        jobs = [ex.submit(task) for task in tasks]
    return jobs


def array_ranges(indices: list[int]) -> str:
    """SLURM's `--array` list: `0-3,7,9-12`."""
    parts, run = [], []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(_span(run))
        run = [i]
    if run:
        parts.append(_span(run))
    return ",".join(parts)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def sbatch_script(plan: Plan, steps: list[Step], grid_source: str, options: SlurmOptions) -> str:
    """An `sbatch` job-array script whose task I runs step I of the plan (only the steps given: the missing ones)."""
    root = RunStore(plan.execution.results).root
    from dataclasses import replace

    command = ["exec", "poisonbench", "sweep", "run", grid_source, "--task-id", "$SLURM_ARRAY_TASK_ID",
               "--results", str(root), *replace(plan.execution, results=None).argv()]
    text = " ".join(shlex.quote(c) if c != "$SLURM_ARRAY_TASK_ID" else '"$SLURM_ARRAY_TASK_ID"' for c in command)
    hours, minutes = divmod(options.time_min, 60)
    lines = [
        "#!/bin/bash",
        f"# poisonbench sweep {plan.grid.name}: {len(steps)} of its {len(plan.steps)} steps (the ones missing when "
        "this was written);",
        "# task I runs step I of `poisonbench sweep plan` (prepare steps first). Submit with: sbatch THIS_FILE",
        f"#SBATCH --job-name=poisonbench-{plan.grid.name}",
        f"#SBATCH --array={array_ranges([s.index for s in steps])}%{options.array_parallelism}",
        f"#SBATCH --time={hours:d}:{minutes:02d}:00",
        f"#SBATCH --gpus-per-task={options.gpus_per_task}",
        f"#SBATCH --output={root}/slurm/%A_%a.out",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",  # SIGTERM 2 minutes before the time limit: the run saves its checkpoint
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_task}")
    for name, value in options.additional().items():
        flag = "--" + name.replace("_", "-")
        lines.append(f"#SBATCH {flag}" + ("" if value is True else f"={value}"))
    lines += ["", "# activate the environment that has poisonbench here, e.g.: source .venv/bin/activate",
              "set -euo pipefail", "# exec: poisonbench is the batch process, so SIGTERM (time limit, pre-emption, "
              "scancel) reaches it", text, ""]
    return "\n".join(lines)


def write_script(path: str, text: str, results_root: Path) -> Path:
    """Write the script, and the `<results>/slurm/` folder its tasks log into (SLURM does not create it)."""
    from ..io import atomic_write_bytes

    out = Path(path)
    if out.is_dir():
        raise PoisonbenchError(f"--emit-sbatch {path}: is a directory; give a file name")
    atomic_write_bytes(out, text.encode())
    (Path(results_root) / "slurm").mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    return out
