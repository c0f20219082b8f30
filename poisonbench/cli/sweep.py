"""`poisonbench sweep`: run a grid of `defend` runs (a builtin grid or a TOML file) on this machine or a SLURM
cluster, resumably (poisonbench.sweeps)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.errors import PoisonbenchError
from ..core.printable import printable, printable_json
from ..experiment.records import RunStore
from ..sweeps import Execution, builtin_grids, load_grid, make_plan
from ..sweeps.grid import locate
from ..sweeps.sizing import parse_workers
from . import options
from . import report as report_cmd
from .progress import stderr, stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["sweep"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module
app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=options.CONTEXT_SETTINGS)

Grid = typer.Argument(..., help="A builtin grid (see `poisonbench sweep grids`) or the path of a TOML grid file.")
Device = typer.Option("auto", "--device", help="Device of every run: auto | cpu | cuda | cuda:N.")
Compile = typer.Option("auto", "--compile", help="torch.compile the models: auto | on | off.")
RetryFailed = typer.Option(False, "--retry-failed", help="Run the steps that failed before again.")


def execution(results, data_dir, download, device, compile, accel, deterministic) -> Execution:
    return Execution(results=results, data_dir=data_dir, download=download, device=device, compile=compile,
                     accel=accel, deterministic=deterministic)


def checked_grid(name: str):
    """The grid `name`, loaded (poisonbench.sweeps.grid) and its `report` arguments checked as `report` checks them."""
    grid = load_grid(name)
    check_report_args(grid.report, f"grid {locate(name)[1]}")
    return grid


def check_report_args(args: list[str], where: str) -> None:
    """A grid's `report` arguments parse as `poisonbench report`'s (no results option: the sweep gives it), and
    their values pass report's own checks, which `report` makes only when it runs: `sweep run` renders the report
    after every run has trained, so a `--table 9` found then would waste the sweep's last step."""
    if not args:
        return
    if any(a == "--results" or a.startswith("--results=") for a in args):
        raise PoisonbenchError(f"{where}: report gives no --results (the sweep's own is used)")
    for _, out in report_outs(args):
        check_report_out(out, where)
    try:
        report_cmd.check_report_args(args)
    except PoisonbenchError as exc:
        raise PoisonbenchError(f"{where}: report {' '.join(args)}: {exc}") from None
    except Exception as exc:  # click's usage errors
        if hasattr(exc, "format_message"):
            raise PoisonbenchError(f"{where}: report {' '.join(args)}: {exc.format_message()}") from None
        raise


def report_outs(args: list[str]) -> list[tuple[int, str]]:
    """(position, value) of every value a grid's report arguments may give `--out` (`--out DIR`, `--out=DIR`):
    the token after each `--out` and each inline one, so that the value click takes is always among them."""
    found = [(i + 1, args[i + 1]) for i, a in enumerate(args) if a == "--out" and i + 1 < len(args)]
    return found + [(i, a[len("--out="):]) for i, a in enumerate(args) if a.startswith("--out=")]


def check_report_out(out: str, where: str) -> None:
    """A grid's report writes its PNGs inside the results workspace (its `--out` is resolved under it: _report): a
    grid is shared like a record, and must not choose where files are written on the machine that runs it (issue
    68). An empty, absolute or leaving (`..`) path is refused at plan time."""
    import posixpath

    normal = posixpath.normpath(out) if out else ""
    if not out or posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise PoisonbenchError(f"{where}: report --out {out!r}: a grid's report writes inside the results workspace; "
                               "give a path relative to it (not empty, not absolute, no `..` leaving it)")


def planned(grid: str, ex: Execution):
    with stderr.status(f"planning grid {grid} (loading its datasets, resolving run ids)"):
        return make_plan(checked_grid(grid), ex)


@app.command("grids", help="List the builtin grids.")
def grids(as_json: bool = options.Json) -> None:
    rows = []
    for name in builtin_grids():
        g = checked_grid(name)
        rows.append({"grid": name, "runs": len(g.runs), "description": " ".join(g.description.split())})
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="builtin grids")
    for col in ("grid", "runs", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["grid"], str(r["runs"]), r["description"])
    stdout_console().print(table)


@app.command("plan", help="Expand a grid into its steps (crafting first, then runs) and count done / missing / "
                          "failed; --print-commands prints one `poisonbench defend` line per step to do; --estimate "
                          "prints what the grid will cost in device-hours.")
def plan_cmd(
    grid: str = Grid,
    print_commands: bool = typer.Option(False, "--print-commands",
                                        help="One `poisonbench defend ...` line per missing step (prepare steps "
                                             "first), for xargs, GNU parallel or your own scheduler."),
    retry_failed: bool = RetryFailed,
    estimate: bool = typer.Option(False, "--estimate",
                                  help="The grid's device-hours per device kind instead of its steps: runs' "
                                       "training, pre-trained models and crafting, in all and still to do (less "
                                       "what --results holds), from the throughput figures kept in the package "
                                       "(measured by benchmarks/gpu_check.py) and this CPU's, timed now (a few "
                                       "seconds); no data are loaded unless --results already holds records."),
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    device: str = Device,
    compile: str = Compile,
    accel: str = options.Accel,
    deterministic: str = options.Deterministic,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from ..sweeps.execute import to_run

    if estimate:
        if print_commands:
            raise PoisonbenchError("--estimate and --print-commands: give one of them")
        _print_estimate(grid, execution(results, data_dir, download, device, compile, accel, deterministic), as_json)
        return
    plan = planned(grid, execution(results, data_dir, download, device, compile, accel, deterministic))
    states = plan.states()
    if print_commands:
        for step in to_run(plan, retry_failed, states):
            # a grid's values (a dataset path, a label) may hold control characters: shown escaped, never raw
            print(printable(" ".join(shlex.quote(a) for a in ["poisonbench", *step.command(plan.execution)])))
        return
    if as_json:
        print(printable_json(json.dumps({"grid": plan.grid.name, "steps": [
            {"index": s.index, "kind": s.kind, "key": s.key, "label": s.label, "state": states[s.index],
             "command": ["poisonbench", *s.command(plan.execution)]} for s in plan.steps]})))
        return
    counts = summary_counts(plan, states)
    table = Table(title=f"sweep plan · {escape(printable(plan.grid.name))}")
    for col in ("steps", "wanted", "done", "missing", "failed", "running"):
        table.add_column(col)
    for kind, label in (("prepare", "PoisonSets to craft"), ("run", "runs")):
        c = counts[kind]
        table.add_row(label, str(c["wanted"]), str(c["done"]), str(c["missing"]), str(c["failed"]), str(c["running"]))
    console = stdout_console()
    console.print(table)
    todo = counts["prepare"]["missing"] + counts["run"]["missing"]
    console.print(f"{todo} steps to do" + (f"; {counts['run']['failed'] + counts['prepare']['failed']} failed "
                                            "(--retry-failed runs them again)" if any(c["failed"] for c in
                                                                                      counts.values()) else ""))


def _print_estimate(grid: str, ex: Execution, as_json: bool) -> None:
    """`sweep plan --estimate`: poisonbench.sweeps.estimate computes, this prints (docs/sweeps.md, "What a grid will
    cost")."""
    from ..sweeps.estimate import plan_estimate

    with stderr.status(f"estimating grid {grid} (timing this CPU: a few seconds)"):
        e = plan_estimate(checked_grid(grid), ex)
    if as_json:
        print(printable_json(json.dumps(e)))
        return
    table = Table(title=f"sweep plan · {escape(printable(e['grid']))} · device-hours")
    for col in ("device", "runs' training", "pre-trained models", "crafting", "total", "to do"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in e["devices"]:
        table.add_row(escape(d["device"]), *(f"{d[k]:,.2f}" for k in ("hours_runs", "hours_pretrained",
                                                                       "hours_crafting", "hours", "hours_remaining")))
    console = stdout_console()
    console.print(table)
    say = lambda text: console.print(printable(text), markup=False, highlight=False)  # noqa: E731
    say(f"{e['runs']} runs, {e['pretrained_models']} pre-trained models, {e['poison_sets']} PoisonSets to craft; "
        f"{e['workspace']}")
    say("excluded: " + "; ".join(e["excludes"]))
    say("assumed: " + "; ".join(e["assumes"]))
    for d in e["devices"]:
        src = d["source"]
        where = ", ".join(f"{k} {src[k]}" for k in ("by", "file", "git_commit", "torch", "date", "cpu") if src.get(k))
        rates = ", ".join(f"{w} {r:,.1f}" for w, r in d["images_per_s"].items())
        say(f"{d['device']}: images/s {rates}; {where}" + "".join(f"; assumed: {a}" for a in d["assumes"])
            + (f"; missing figures (not counted): {', '.join(d['missing'])}" if d["missing"] else ""))


def summary_counts(plan, states: dict[int, str]) -> dict:
    out = {}
    for kind in ("prepare", "run"):
        steps = [s for s in plan.steps if s.kind == kind]
        out[kind] = {"wanted": len(steps), **{st: sum(states[s.index] == st for s in steps)
                                              for st in ("done", "missing", "failed", "running")}}
    return out


@app.command("run", help="Run a grid's missing steps: --workers N local processes (default), --executor slurm "
                         "(a job array through submitit), --task-id I (one step, for an sbatch array), or "
                         "--emit-sbatch FILE (write that array script).")
def run_cmd(
    grid: str = Grid,
    workers: str = typer.Option("1", "--workers", metavar="N|auto",
                                help="Local worker processes, 1 to 256 (CPU threads split between them; GPUs assigned "
                                     "round-robin; on one GPU all share it), or auto: K per GPU from its free memory "
                                     "and the runs' measured peak, capped by the cores and at 16 (without a GPU: "
                                     "1). The line it prints says why."),
    threads: int = typer.Option(None, "--threads", help="Intra-op CPU threads of each worker, of the step that "
                                                         "--task-id runs, or of each SLURM task (--executor slurm, "
                                                         "--emit-sbatch), 1 to 1024 (default: the cores split between "
                                                         "the workers; with --task-id, the process's own; for SLURM, "
                                                         "--cpus-per-task when given). A run's numbers on the CPU "
                                                         "depend on it (it is in the record's env.threads), never on "
                                                         "--workers."),
    executor: str = typer.Option("workers", "--executor",
                                 help="workers (local processes) | slurm (a job array through submitit) | "
                                      "submitit-local (submitit's local executor: the SLURM path without a "
                                      "cluster)."),
    task_id: int = typer.Option(None, "--task-id", help="Run only step I of `sweep plan` (default: "
                                                         "$SLURM_ARRAY_TASK_ID when set), in this process."),
    emit_sbatch: str = typer.Option(None, "--emit-sbatch", metavar="FILE",
                                    help="Write an sbatch job-array script for the missing steps and exit."),
    force: bool = typer.Option(False, "--force", help="With --emit-sbatch: replace FILE if it exists (never the "
                                                      "grid file, nor a file of the workspace's runs/ or poisons/)."),
    retry_failed: bool = RetryFailed,
    partition: str = typer.Option(None, "--partition", help="SLURM partition."),
    time_min: int = typer.Option(240, "--time", help="SLURM time limit per task, minutes."),
    gpus_per_task: int = typer.Option(1, "--gpus-per-task", help="SLURM GPUs per task."),
    cpus_per_task: int = typer.Option(None, "--cpus-per-task", help="SLURM CPUs per task."),
    array_parallelism: int = typer.Option(64, "--array-parallelism", help="SLURM: tasks of the array running at "
                                                                          "once."),
    sbatch: list[str] = typer.Option(None, "--sbatch", metavar="OPTION",
                                     help="Extra #SBATCH option, e.g. --sbatch=--account=abc (repeatable)."),
    wait: bool = typer.Option(None, "--wait/--no-wait", help="Wait for submitted jobs with a progress bar (default: "
                                                              "wait for submitit-local, return for slurm)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Render the grid's table when it completes."),
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    device: str = Device,
    compile: str = Compile,
    accel: str = options.Accel,
    deterministic: str = options.Deterministic,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from ..sweeps import execute, slurm

    workers = parse_workers(workers, execute.MAX_WORKERS)  # None: auto, sized once the plan is made
    if threads is not None and not 1 <= threads <= execute.MAX_THREADS:
        raise PoisonbenchError(f"--threads must be in 1..{execute.MAX_THREADS}, got {threads}")
    slurm.check_executor(executor)
    slurm_options = slurm.SlurmOptions(partition, time_min, gpus_per_task, cpus_per_task, array_parallelism,
                                       tuple(sbatch or ()))
    slurm_options.additional()  # a malformed --sbatch fails before planning
    for flag, value in (("--time", time_min), ("--gpus-per-task", gpus_per_task),
                        ("--array-parallelism", array_parallelism), ("--cpus-per-task", cpus_per_task)):
        if value is not None and value < (0 if flag == "--gpus-per-task" else 1):
            raise PoisonbenchError(f"{flag} must be >= {0 if flag == '--gpus-per-task' else 1}, got {value}")
    script_inputs = ()
    if force and not emit_sbatch:
        raise PoisonbenchError("--force is read only with --emit-sbatch (it lets FILE be replaced); `sweep run` "
                               "never runs a done step again")
    if emit_sbatch:  # before the grid's datasets are loaded
        root = RunStore(results).root
        script_inputs = (*([Path(grid)] if Path(grid).is_file() else []), root / "runs", root / "poisons")
        slurm.check_script_path(emit_sbatch, force, script_inputs)
    ex = execution(results, data_dir, download, device, compile, accel, deterministic)
    plan = planned(grid, ex)
    if task_id is not None or (executor == "workers" and emit_sbatch is None and _in_array()):
        raise typer.Exit(execute.run_task(plan, task_id, threads))
    steps = execute.to_run(plan, retry_failed)
    if emit_sbatch:
        path = slurm.write_script(emit_sbatch, slurm.sbatch_script(plan, steps, plan.grid.source, slurm_options,
                                                                      slurm.task_threads(threads, slurm_options)),
                                  RunStore(plan.execution.results).root, force, script_inputs)
        stdout_console().print(f"wrote {path}: a job array of {len(steps)} steps (of {len(plan.steps)}); submit "
                               f"it with `sbatch {path}`")
        return
    if not steps:
        message = f"nothing to do: all {len(plan.runs)} runs of grid {plan.grid.name} are done"
        failed = sum(st == "failed" for st in plan.states().values())
        message += f" or failed ({failed} failed: --retry-failed runs them again)" if failed else ""
        _say(message, as_json, {"grid": plan.grid.name, "ran": 0, "failed": failed, "nothing_to_do": True})
        _report(plan, report and not as_json)
        if failed:  # the grid is not complete: a script's `sweep run && next-step` must not go on
            raise typer.Exit(INCOMPLETE)
        return
    execute.check_writable(plan, logs=executor == "workers")  # a read-only results directory: one line, exit 2
    if executor != "workers":
        task_threads = (slurm.task_threads(threads, slurm_options) if executor == "slurm"
                        else threads if threads is not None else execute.split_threads(1))
        jobs = slurm.submit(plan, steps, executor, slurm_options, task_threads)
        stdout_console().print(f"submitted {len(jobs)} jobs ({executor}): {jobs[0].job_id} …")
        if wait if wait is not None else executor == "submitit-local":
            _wait_jobs(jobs)
            _report(plan, report and not as_json)
            _exit_unless_complete(plan, as_json)
        return
    if workers is None:
        workers, threads = _auto_workers(plan, threads)
    outcomes, stopped_by = _run_local(plan, steps, workers, as_json, threads)
    failed = [o for o in outcomes if o.status in ("failed", "killed", "blocked")]
    left = _left(plan)
    if as_json:
        print(json.dumps({"grid": plan.grid.name, "steps": len(steps), "left": left, "outcomes": [
            {"index": o.step.index, "key": o.step.key, "label": o.step.label, "status": o.status,
             "seconds": round(o.seconds, 2), "detail": o.detail, "outputs": o.outputs} for o in outcomes]}))
    else:
        for o in failed:
            # the detail quotes a step's log and failure record: control characters shown escaped (core.printable)
            stderr.print(printable(f"{o.status}: step {o.step.index} ({o.step.label}): {o.detail}"), markup=False)
        _report(plan, report and not failed)
    if stopped_by is not None:  # SIGTERM: 143, SIGINT (Ctrl-C): 130; the running steps saved their checkpoints
        raise typer.Exit(128 + int(stopped_by))
    if any(o.status == "terminated" for o in outcomes):
        raise typer.Exit(143)
    if failed or left["failed"] or left["missing"]:
        if not as_json and not failed:
            _say_left(plan, left)
        raise typer.Exit(INCOMPLETE)


INCOMPLETE = 1  # `sweep run`'s exit code while a step of the grid is failed or missing at the end (2: bad input)


def _left(plan) -> dict[str, int]:
    """The grid's steps not done now: failed, missing (running: another process holds them)."""
    states = list(plan.states().values())
    return {st: states.count(st) for st in ("failed", "missing", "running")}


def _say_left(plan, left: dict[str, int]) -> None:
    stderr.print(printable(f"grid {plan.grid.name} is not complete: {left['failed']} steps failed, {left['missing']} "
                           f"missing (`poisonbench sweep status {shlex.quote(plan.grid.source)}` lists them; "
                           "--retry-failed runs the failed ones again)"), markup=False)


def _exit_unless_complete(plan, as_json: bool) -> None:
    left = _left(plan)
    if left["failed"] or left["missing"]:
        if not as_json:
            _say_left(plan, left)
        raise typer.Exit(INCOMPLETE)


def _in_array() -> bool:
    import os

    return os.environ.get("SLURM_ARRAY_TASK_ID") is not None


def _say(message: str, as_json: bool, payload: dict) -> None:
    if as_json:
        print(json.dumps({**payload, "message": message}))
    else:
        stdout_console().print(message)


def _auto_workers(plan, threads: int | None) -> tuple[int, int]:
    """`--workers auto` (poisonbench.sweeps.sizing): K per device from the free memory and the largest peak in the
    workspace's records (the grid's first), K × D workers; their threads unless `--threads` gave them. Says how on
    stderr."""
    from ..sweeps import execute, sizing

    devices = execute.gpu_count(plan.execution.device)
    store = RunStore(plan.execution.results)
    records = store.all() if devices else []
    chosen = sizing.auto_sizing(devices, records, {s.key for s in plan.runs}, max_workers=execute.MAX_WORKERS)
    line = chosen.line() + (f" (--threads {threads} instead)" if threads is not None else "")
    stderr.print(printable(f"sweep {plan.grid.name}: --workers auto: {line}"), markup=False, highlight=False,
                 soft_wrap=True)
    return chosen.workers, threads if threads is not None else chosen.threads


def _run_local(plan, steps, workers: int, quiet: bool, threads: int | None = None):
    from ..sweeps.execute import LocalPool, split_threads

    counts = {"ran": 0, "skipped": 0, "failed": 0}
    running: list[str] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=stderr, transient=False)
    task = progress.add_task(f"sweep {plan.grid.name}", total=len(steps))

    def describe() -> str:
        now = f" · running: {running[0]}" + (f" (+{len(running) - 1})" if len(running) > 1 else "") if running else ""
        return (f"sweep {plan.grid.name} · {counts['ran']} done · {counts['skipped']} skipped · "
                f"{counts['failed']} failed{now}")

    def started(step) -> None:
        running.append(step.label)
        progress.update(task, description=describe())

    def finished(outcome) -> None:
        if outcome.step.label in running:
            running.remove(outcome.step.label)
        key = {"ran": "ran", "crafted": "ran", "skipped": "skipped", "on disk": "skipped", "done": "ran"}.get(
            outcome.status, "failed" if outcome.status in ("failed", "killed", "blocked") else None)
        if key:
            counts[key] += 1
        progress.update(task, advance=1, description=describe())
        if log_lines:  # no bar is drawn where stderr is a file or a pipe: a line per finished step instead
            finished_count = sum(counts.values())
            test_acc = next((o.get("test_acc") for o in outcome.outputs if o.get("test_acc") is not None), None)
            acc = f", test accuracy {100 * test_acc:.1f} %" if isinstance(test_acc, int | float) else ""
            stderr.print(printable(f"[{finished_count}/{len(steps)}] {outcome.status}: {outcome.step.label} "
                                   f"({outcome.seconds:.0f} s{acc})"), markup=False, highlight=False, soft_wrap=True)

    log_lines = not stderr.is_terminal
    if log_lines:
        stderr.print(f"sweep {plan.grid.name}: {len(steps)} step(s) to run with {workers} worker(s) of "
                     f"{threads or split_threads(workers)} thread(s); a line per finished step", markup=False,
                     highlight=False, soft_wrap=True)
    pool = LocalPool(plan, workers, on_start=started, on_finish=finished, threads=threads)
    with progress:
        outcomes = pool.run(steps)
    return outcomes, pool.stopped_by


def _wait_jobs(jobs) -> None:
    import time

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr) as progress:
        task = progress.add_task("jobs", total=len(jobs))
        while True:
            done = sum(j.done() for j in jobs)
            progress.update(task, completed=done)
            if done == len(jobs):
                break
            time.sleep(1.0)
    errors = [j for j in jobs if j.exception() is not None]
    for j in errors:
        stderr.print(f"job {j.job_id} failed: {str(j.exception()).strip().splitlines()[-1]}", markup=False)
    if errors:
        raise typer.Exit(1)


def _report(plan, show: bool) -> None:
    """The grid's `report = [...]` once the sweep has run, its `--out` resolved under the results workspace
    (checked at plan time: check_report_out). The sweep's exit code is the sweep's whatever the report does
    (issue 68: a report's 2 replaced it): its failure is one line of its own on stderr, never the sweep's end."""
    if not show or not plan.grid.report:
        return
    args = list(plan.grid.report)
    root = RunStore(plan.execution.results).root
    for i, out in report_outs(plan.grid.report):
        args[i] = f"--out={root / out}" if args[i].startswith("--out=") else str(root / out)
    if plan.execution.results is not None:
        args += ["--results", str(plan.execution.results)]
    if plan.execution.data_dir and report_cmd.takes_data_dir(plan.grid.report):
        args += ["--data-dir", str(plan.execution.data_dir)]
    try:
        code = report_cmd.run_report(args)  # `report` alone: this module need not import the app (cli.main)
        failure = f"it exited {code}" if isinstance(code, int) and code else None
    except Exception as exc:  # whatever it is (a PoisonbenchError, click's usage error, an OSError, a bug)
        failure = exc.format_message() if hasattr(exc, "format_message") else str(exc) or type(exc).__name__
    if failure:
        stderr.print(printable(f"the grid's report failed: {failure} (the sweep's exit code stands; to see it again: "
                               f"poisonbench report {shlex.join(args)})"), markup=False, highlight=False,
                     soft_wrap=True)


@app.command("status", help="Done / wanted per cell of a grid, failures, and the device-hours spent and still "
                            "needed (estimated from the records' own timings).")
def status_cmd(
    grid: str = Grid,
    data_dir: str = options.DataDir,
    download: bool = options.Download,
    device: str = Device,
    results: str = options.Results,
    as_json: bool = options.Json,
) -> None:
    from ..sweeps.status import sweep_status

    plan = planned(grid, execution(results, data_dir, download, device, "auto", "auto", "on"))
    status = sweep_status(plan)
    if as_json:
        print(json.dumps(status))
        return
    console = stdout_console()
    table = Table(title=f"sweep status · {status['grid']} · {status['results']}")
    for col in ("cell", "done / wanted", "failed", "running", "device-hours"):
        table.add_column(col)
    for c in status["cells"]:
        table.add_row(escape(printable(c["cell"])), f"{c['done']} / {c['wanted']}", str(c["failed"] or ""),
                      str(c["running"] or ""), f"{c['hours']:.3f}")
    console.print(table)
    r, p = status["runs"], status["poison_sets"]
    console.print(f"runs {r['done']} / {r['wanted']} done, {r['failed']} failed, {r['running']} running; PoisonSets "
                  f"{p['done']} / {p['wanted']}")
    devices = ", ".join(status["devices"]) or "no runs yet"
    more = (f" (+{status['runs_without_estimate']} runs with no timing to go by)"
            if status["runs_without_estimate"] else "")
    console.print(f"device-hours ({devices}): {status['hours_spent']:.3f} spent, about "
                  f"{status['hours_remaining_estimate']:.3f} to go{more}")
    for f in status["failures"]:  # a failure record's error, shown: control characters escaped (core.printable)
        console.print(printable(f"failed: step {f['step']} ({f['label']}): {f['error']} — {f['record']}"
                                + (f"; log: {f['log']}" if f.get("log") else "")), markup=False)
