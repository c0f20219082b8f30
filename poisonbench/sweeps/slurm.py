r"""A sweep on a SLURM cluster: a job array submitted through submitit, or an `sbatch --array` script that runs
`poisonbench sweep run GRID --task-id $SLURM_ARRAY_TASK_ID` (docs/sweeps.md).

Each array task runs one step: the library's `defend` (or `prepare`) of the step's spec (poisonbench.sweeps.worker).
On pre-emption or at the time limit SLURM sends SIGTERM: `defend` saves its epoch checkpoint and exits, and the
requeued task resumes from it (submitit requeues a `Checkpointable`; the emitted script asks for `--requeue`).
submitit keeps its own job files (pickles of the task and its result) in `<results>/slurm/`; poisonbench's own
artifacts stay safetensors and JSON.

Every value that reaches a job script (the grid's path and name, --results, --partition, --sbatch, the execution
options) is text that bash or sbatch will parse, so none may change what the script does:
- a control character (newline, CR, NUL, any other C0 or C1 code, DEL) is refused in every value, in one line naming
  the option: a newline would end a `#` line and make the rest a command that runs when the job starts;
- on the command line every value is shell-quoted (`shlex.quote`);
- in an `#SBATCH` line sbatch itself splits the value (not bash): it ends a word at whitespace, takes `"`/`'` as
  quotes, `\` as an escape and an unquoted `#` as the start of a comment. A value with any of these is written
  in double quotes with `\`, `"`, `'` and `#` backslash-escaped, which every sbatch reads back as the value itself
  (older ones know only `"` quotes and end a word at `#` even inside them; the escape works in both). Two things
  no quoting fixes are refused: "hetjob"/"packjob" (sbatch blanks those words anywhere in an `#SBATCH` line), and
  for --output a `\` in --results (SLURM then leaves `%A_%a` unexpanded: every task would write one log); a `%`
  in --results is doubled there (`%%`, SLURM's literal percent).
- submitit writes its own `#SBATCH` lines (shell-quoting the values): --sbatch names must be option names
  (letters, digits, `-`) and values without control characters.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PoisonbenchError
from ..core.optional import require
from ..core.printable import printable
from ..core.workspace import workspace_dir
from ..experiment.records import RunStore
from .plan import Plan, Step
from .worker import spec_to_json

EXECUTORS = ("workers", "slurm", "submitit-local")
SBATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # an sbatch long option's name
SBATCH_SPECIAL = re.compile(r"""[\\"'#]""")  # what sbatch's `#SBATCH` parser treats specially, besides whitespace


def check_text(option: str, value: object) -> None:
    """Refuse a value with a control character (newline, CR, NUL, C0, C1, DEL) that would go into a job script:
    a newline ends the `#` line it is on, and what follows runs as a command when the job starts; and a value
    that is not UTF-8 text (a file name's undecodable bytes), which the script, UTF-8 text, cannot hold."""
    text = str(value)
    if any(unicodedata.category(c) == "Cs" for c in text):  # a file name's bytes that are not UTF-8 (os.fsdecode)
        raise PoisonbenchError(f"{option} '{printable(text)}': is not UTF-8 text (a name with bytes that are not "
                               "UTF-8, shown escaped), which a job script cannot hold; rename it")
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise PoisonbenchError(f"{option} {text!r}: contains the control character {bad!r}, which a job script "
                               "cannot hold safely (it would end the line and run the rest as a command)")


def sbatch_value(option: str, value: object) -> str:
    """`value` written so that sbatch's `#SBATCH` parser reads back exactly `value` (see the module docstring)."""
    text = str(value)
    check_text(option, text)
    lowered = text.lower()
    for word in ("hetjob", "packjob"):
        if word in lowered:
            raise PoisonbenchError(f"{option} {text!r}: sbatch blanks the word {word!r} anywhere in an #SBATCH line "
                                   "(its heterogeneous-job separator); choose a value without it")
    if text and not any(c.isspace() for c in text) and not SBATCH_SPECIAL.search(text):
        return text
    return '"' + SBATCH_SPECIAL.sub(lambda m: "\\" + m.group(0), text) + '"'


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 64
    extra: tuple[str, ...] = field(default_factory=tuple)  # extra `#SBATCH` options, e.g. "--account=abc"

    def __post_init__(self):
        """The options that go into a job script verbatim, checked when they are given (before planning)."""
        if self.partition is not None:
            check_text("--partition", self.partition)
        self.additional()

    def additional(self) -> dict[str, str | bool]:
        """The extra `#SBATCH` lines as submitit's `slurm_additional_parameters`: `--name[=value]`, the name an
        option name and no control character anywhere (submitit writes them into its job script)."""
        out: dict[str, str | bool] = {}
        for line in self.extra:
            check_text("--sbatch", line)
            text = line.strip()
            if text.startswith("#SBATCH"):
                text = text[len("#SBATCH"):].strip()
            name, sep, value = text[2:].partition("=")
            if not text.startswith("--") or not SBATCH_NAME.fullmatch(name):
                raise PoisonbenchError(f"--sbatch {line!r}: give a long sbatch option, e.g. --sbatch "
                                       "'--account=abc' or --sbatch '--qos=high'")
            out[name.replace("-", "_")] = value if sep else True
        return out


def check_executor(name: str) -> None:
    """A one-line error for an unknown executor, or one this machine cannot use."""
    if name not in EXECUTORS:
        raise PoisonbenchError(f"unknown executor {name!r}; valid choices: {', '.join(EXECUTORS)}")
    if name == "workers":
        return
    try:
        require("submitit")
    except PoisonbenchError as exc:
        raise PoisonbenchError(f"{exc}; or use --executor workers") from None
    if name == "slurm" and shutil.which("sbatch") is None:
        raise PoisonbenchError("executor 'slurm' is not available here: no `sbatch` on PATH (submitit submits "
                               "through it); run this on the cluster's login node, or write a script with "
                               "--emit-sbatch FILE, or use --executor workers")


class StepTask:
    """One sweep step as a submitit job: runs the step's spec in a worker process (poisonbench.sweeps.worker) and
    returns its JSON lines. Checkpointable: on pre-emption or time-out submitit requeues it, and `defend` resumes its
    run."""

    def __init__(self, kind: str, spec_json: str, threads: int | None = None):
        self.kind, self.spec_json = kind, spec_json
        self.threads = threads

    def __call__(self) -> list[dict]:
        import os

        from .execute import json_lines

        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        done = subprocess.run([sys.executable, "-m", "poisonbench.sweeps.worker", self.kind, self.spec_json],
                              capture_output=True, text=True, env=env)
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"the {self.kind} step exited with {done.returncode}: "
                               f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
        return json_lines(done.stdout)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(StepTask(self.kind, self.spec_json, self.threads))


def submit(plan: Plan, steps: list[Step], executor: str, options: SlurmOptions, threads: int | None = None):
    """Submit `steps` as one job array (prepare steps first: the array's order). Returns the submitit jobs."""
    import submitit

    cluster = "slurm" if executor == "slurm" else "local"
    check_text("grid", plan.grid.name)
    check_text("--results", RunStore(plan.execution.results).root)
    folder = workspace_dir(RunStore(plan.execution.results).root, "slurm")
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
    tasks = [StepTask(step.kind, spec_to_json(step.spec), threads) for step in steps]
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


def task_threads(threads: int | None, options: SlurmOptions) -> int | None:
    """The intra-op threads of a SLURM task's step: `--threads` when given, else `--cpus-per-task` (the CPUs SLURM
    gives the task), else None (the task's process decides: $OMP_NUM_THREADS, or torch's default, which is every
    core the task may use). `--cpus-per-task` above `--threads`' limit gives the limit (a task must not refuse what
    the submission accepted). A run's numbers on the CPU depend on them (the record's env.threads). Before
    2026-11-30 (commit 9c52542 and earlier) neither the array script nor a submitit task passed them on."""
    from .execute import MAX_THREADS

    if threads is not None:
        return threads
    return None if options.cpus_per_task is None else min(options.cpus_per_task, MAX_THREADS)


def sbatch_script(plan: Plan, steps: list[Step], grid_source: str, options: SlurmOptions,
                  threads: int | None = None) -> str:
    """An `sbatch` job-array script whose task I runs step I of the plan (only the steps given: the missing ones),
    with `--threads` `threads` when given (`task_threads`). No value can change what the script does: control
    characters are refused, the command line is shell-quoted and the `#SBATCH` values are written the way sbatch
    reads them back (module docstring)."""
    from dataclasses import replace

    root = RunStore(plan.execution.results).root
    check_text("grid", grid_source)
    check_text("grid", plan.grid.name)
    check_text("--results", root)
    if "\\" in str(root):
        raise PoisonbenchError(f"--results {str(root)!r}: a backslash in the path makes SLURM leave the log names' "
                               "%A_%a unexpanded (every task would write one file); use a path without one")
    rest = replace(plan.execution, results=None).argv()
    for flag, value in zip(rest, rest[1:], strict=False):
        if flag.startswith("--"):
            check_text(flag, value)
    command = ["exec", "poisonbench", "sweep", "run", grid_source, "--task-id", "$SLURM_ARRAY_TASK_ID",
               "--results", str(root), *rest, *(["--threads", str(threads)] if threads is not None else [])]
    text = " ".join(shlex.quote(c) if c != "$SLURM_ARRAY_TASK_ID" else '"$SLURM_ARRAY_TASK_ID"' for c in command)
    hours, minutes = divmod(options.time_min, 60)
    log = str(root).replace("%", "%%") + "/slurm/%A_%a.out"  # %% is SLURM's literal % in a file name pattern
    lines = [
        "#!/bin/bash",
        f"# poisonbench sweep {plan.grid.name}: {len(steps)} of its {len(plan.steps)} steps (the ones missing when "
        "this was written);",
        "# task I runs step I of `poisonbench sweep plan` (prepare steps first). Submit with: sbatch THIS_FILE",
        f"#SBATCH --job-name={sbatch_value('grid', f'poisonbench-{plan.grid.name}')}",
        f"#SBATCH --array={array_ranges([s.index for s in steps])}%{options.array_parallelism}",
        f"#SBATCH --time={hours:d}:{minutes:02d}:00",
        f"#SBATCH --gpus-per-task={options.gpus_per_task}",
        f"#SBATCH --output={sbatch_value('--results', log)}",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",  # SIGTERM 2 minutes before the time limit: the run saves its checkpoint
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={sbatch_value('--partition', options.partition)}")
    if options.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_task}")
    for name, value in options.additional().items():
        flag = "--" + name.replace("_", "-")
        lines.append(f"#SBATCH {flag}" + ("" if value is True else f"={sbatch_value('--sbatch', value)}"))
    lines += ["", "# activate the environment that has poisonbench here, e.g.: source .venv/bin/activate",
              "set -euo pipefail", "# exec: poisonbench is the batch process, so SIGTERM (time limit, pre-emption, "
              "scancel) reaches it", text, ""]
    return "\n".join(lines)


def check_script_path(path: str, force: bool = False, inputs=()) -> Path:
    """`--emit-sbatch FILE`: a name a job script can hold, not a directory, an existing file only with `force` and
    never one the command reads (`inputs`: the grid, the workspace's runs/ and poisons/; core.io.check_output)."""
    from ..core.io import check_output, file_in_the_way

    out = Path(path)
    check_text("--emit-sbatch", path)
    if out.is_dir():
        raise PoisonbenchError(f"--emit-sbatch {path}: is a directory; give a file name")
    if file_in_the_way(out) is None:  # else: the write names it, with the system's reason
        check_output(out, force, inputs, label="--emit-sbatch ")
    return out


def write_script(path: str, text: str, results_root: Path, force: bool = False, inputs=()) -> Path:
    """Write the script (`check_script_path`), and the `<results>/slurm/` folder its tasks log into (SLURM does not
    create it). A folder or file that cannot be written is a one-line error with the system's reason; whatever this
    call created before it failed is removed (the script is written atomically, last), so nothing is left
    half-done."""
    from ..core.io import atomic_write_bytes, make_directories, remove_made, why_not_written

    out = check_script_path(path, force, inputs)
    logs = workspace_dir(results_root, "slurm")
    created: list[Path] = []
    try:
        make_directories(logs, created)
    except OSError as exc:
        remove_made(created)
        raise PoisonbenchError(f"cannot create {str(logs)!r} (the folder the tasks log into): "
                               f"{why_not_written(exc, logs)}") from None
    try:
        make_directories(out.parent, created)
        atomic_write_bytes(out, text.encode())
        out.chmod(0o755)
    except OSError as exc:
        remove_made(created)
        raise PoisonbenchError(f"cannot write --emit-sbatch {path}: {why_not_written(exc, out)}") from None
    return out
