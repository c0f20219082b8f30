"""`poisonbench sweep` (poisonbench/sweeps, docs/sweeps.md): grids expand into prepare and run steps, the steps run
locally, one by one (`--task-id`, a job array's task) or through submitit, and a re-run does only what is missing.

One small sweep is run once for the module (`swept`: one durp PoisonSet and two 1-epoch runs on 200 tiny images,
through `sweep run --workers 1`); the tests that need a done or partly done workspace copy its results."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from poisonbench.cli.main import main
from poisonbench.cli.sweep import check_report_args
from poisonbench.experiment.records import RunStore
from poisonbench.sweeps import Execution, builtin_grids, load_grid, make_plan

from .conftest import one_line_error, write_npz

pytestmark = pytest.mark.usefixtures("one_thread")  # the steps some tests run in-process


def write_grid(path: Path, npz: Path, body: str, defaults: str = "") -> Path:
    """A grid on the tiny dataset: quick recipe, 1 epoch, untargeted durp (crafts in under a second)."""
    path.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n{defaults}\n{body}')
    return path


SMALL = 'attacks = [["durp"]]\nmethod = "none"\n\n[[runs]]\npoison_ratio = [0, 0.5]\n'


@dataclass
class Swept:
    grid: Path
    results: Path
    keys: list[str]  # step i's key: [poison id, run id (ρ 0), run id (ρ 0.5)]

    def copy(self, to: Path) -> Path:
        shutil.copytree(self.results, to)
        return to


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Swept:
    root = tmp_path_factory.mktemp("swept")
    grid = write_grid(root / "small.toml", write_npz(root), SMALL)
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        try:
            main(["sweep", "run", str(grid), "--workers", "1", "--results", str(results)])
        except SystemExit as exc:
            assert not exc.code, f"the module's sweep failed: exit {exc.code}"
    plan = make_plan(load_grid(str(grid)), Execution(results=str(results)))
    assert [s.kind for s in plan.steps] == ["prepare", "run", "run"]
    assert set(plan.states().values()) == {"done"}
    return Swept(grid, results, [s.key for s in plan.steps])


def plan_json(cli, grid, results) -> list[dict]:
    code, out, err = cli("sweep", "plan", grid, "--results", results, "--json")
    assert code == 0, err
    return json.loads(out)["steps"]


def record_ids(results: Path) -> set[str]:
    return {p.stem for p in (results / "runs").glob("*.json")}


# 1. grids


def test_every_builtin_grid_loads_with_runs_and_a_report_that_parses(cli):
    names = builtin_grids()
    assert {"demo", "table2", "table2-quick", "table3", "table4", "table5"} <= set(names)
    for name in names:
        grid = load_grid(name)
        assert grid.runs, name
        assert grid.report, name
        check_report_args(grid.report, name)  # raises on arguments `report` would refuse
    code, out, err = cli("sweep", "grids", "--json")
    assert code == 0, err
    assert {row["grid"]: row["runs"] for row in json.loads(out)} == {n: len(load_grid(n).runs) for n in names}
    assert len(load_grid("table2").runs) == 2 * 5 * 6 * 5  # datasets × methods × ρ × trials


@pytest.mark.parametrize(("name", "crafts", "runs"), [
    ("table2-quick", 4, 15),  # the mix's 4 PoisonSets; 5 methods × 3 ρ
    ("table4-quick", 4, 8),  # none + 4 r + 3 β
    ("table5-quick", 4, 8),
    ("demo", 1, 4),  # pgd only; ρ ∈ {0, 1} × {none, hint}
    # one PoisonSet per untargeted attack alone and per backdoor; 14 defenses (all but the oracle) × 8 untargeted
    # attacks, and 15 × 5 backdoors
    ("matrix-quick", 13, 187),
])
def test_quick_builtin_grids_plan_into_their_crafts_and_runs(name, crafts, runs, tmp_path):
    plan = make_plan(load_grid(name), Execution(results=str(tmp_path / "r")))
    kinds = [s.kind for s in plan.steps]
    assert kinds == ["prepare"] * crafts + ["run"] * runs
    assert len({s.key for s in plan.steps}) == len(plan.steps)
    assert not (tmp_path / "r").exists()  # planning writes nothing


def test_expansion_is_trial_major_keeps_a_duplicate_once_and_maps_values_to_flags(tiny_npz, tmp_path):
    body = ('[[runs]]\nmethod = ["none", "hint"]\nattacks = [["durp", "pgd"]]\n\n'
            '[[runs]]\nmethod = "hint"\nattacks = [["durp", "pgd"]]\nratio = [0.5, 0.25]\ntrials = 1\n\n'
            '[[runs]]\nattacks = [["durp", "pgd"]]\nmethod = "none"\n')  # block 1's first run, keys reordered
    grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_npz, body, "poison_ratio = 0.5\ntrials = 2")))
    described = [(r.get("method"), r.get("ratio"), r.trial) for r in grid.runs]
    assert described == [("none", None, 0), ("hint", None, 0), ("hint", 0.5, 0), ("hint", 0.25, 0),
                         ("none", None, 1), ("hint", None, 1)]
    plan = make_plan(grid, Execution(results=str(tmp_path / "r")))
    # `ratio = 0.5` is HINT's default: the same run as the block that leaves it out, kept once by its run id
    assert [s.kind for s in plan.steps] == ["prepare"] * 2 + ["run"] * 5
    argvs = [s.argv for s in plan.runs]
    for argv in argvs:
        assert argv[argv.index("--attacks") + 1] == "durp,pgd"  # a list of lists: comma-joined
    assert [a[a.index("--trial") + 1] for a in argvs] == ["0", "0", "0", "1", "1"]
    assert argvs[2][argvs[2].index("--ratio") + 1] == "0.25"  # a method's own option: its flag
    assert ["--attacks", "durp"] == plan.steps[0].argv[plan.steps[0].argv.index("--attacks"):][:2]
    assert all("--prepare-only" in s.command(plan.execution) for s in plan.steps[:2])


# Every value form a grid can take: lists, a list of lists, tables, on/off options both ways, a method's own option
# (a number, a list-valued one), recipe overrides, a TOML integer for a float option.
EVERY_FORM = """
[[runs]]
poison_ratio = [0.5, 1]
attacks = [["durp", "pgd"]]
method = "hint"
ratio = 0.25
nesterov = [true, false]
milestones = [[1], []]
momentum = 0.8

[[runs]]
poison_ratio = 0
method = "none"

[[runs]]
attack = "gm"
scenario = "scratch"
eps = 0.0627
budget = 0.02
attack_params = {restarts = 1, iterations = 2}
method = "friends"
same_init = false
target = 3
intended = 1
"""


def specs_the_cli_parses(monkeypatch, plan) -> list:
    """The spec `poisonbench defend` builds from each step's printed command (nothing runs)."""
    from poisonbench.cli import defend as defend_cmd

    parsed = []
    monkeypatch.setattr(defend_cmd, "run_defend", lambda spec, reporter: parsed.append(spec) or [])
    monkeypatch.setattr(defend_cmd, "run_prepare", lambda spec, reporter: parsed.append(spec) or [])
    for step in plan.steps:
        try:
            main(step.command(plan.execution))
        except SystemExit as exc:
            assert not exc.code, f"`defend {shlex.join(step.command(plan.execution))}` exited {exc.code}"
    return parsed


@pytest.mark.parametrize("grid", ["demo", "table4-quick", "every-form"])
def test_the_printed_commands_are_the_steps_the_sweep_runs(grid, monkeypatch, tiny_npz, tmp_path, capsys):
    """A sweep runs specs built from the grid (no argv); `--print-commands` and sbatch show argv. Parsed by the CLI,
    each printed command is exactly the step's spec (and with it the same run id and PoisonSet)."""
    if grid == "every-form":
        grid = str(write_grid(tmp_path / "every.toml", tiny_npz, EVERY_FORM))
    execution = Execution(results=str(tmp_path / "r"), device="cpu", accel="off")
    plan = make_plan(load_grid(grid), execution)
    assert len(plan.steps) > 2 and {s.kind for s in plan.steps} == {"prepare", "run"}
    from poisonbench.sweeps.worker import spec_to_json

    parsed = specs_the_cli_parses(monkeypatch, plan)
    assert [spec_to_json(s) for s in parsed] == [spec_to_json(s.spec) for s in plan.steps]  # JSON: 0 ≠ 0.0
    capsys.readouterr()


def test_a_step_runs_its_spec_through_the_library_not_the_cli(swept, tmp_path, monkeypatch, capsys):
    """`sweep run --task-id` and a worker process run the library on the step's spec: the CLI's `defend` is never
    parsed or called (it fails here if it were), and the output is `defend --json`'s lines."""
    from poisonbench.cli import defend as defend_cmd
    from poisonbench.sweeps import worker

    def refuse(**values):
        raise AssertionError("a sweep step went through the CLI's defend")

    monkeypatch.setattr(defend_cmd, "defend", refuse)
    results = swept.copy(tmp_path / "r")
    plan = make_plan(load_grid(str(swept.grid)), Execution(results=str(results)))
    step = plan.runs[0]
    assert worker.spec_from_json(worker.spec_to_json(step.spec)) == step.spec
    try:
        main(["sweep", "run", str(swept.grid), "--task-id", str(step.index), "--results", str(results)])
    except SystemExit as exc:
        assert not exc.code
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(o["run_id"], o["status"]) for o in lines] == [(step.key, "skipped")]
    assert worker.main(["run", worker.spec_to_json(step.spec)]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == step.key
    assert worker.main(["nonesuch", worker.spec_to_json(step.spec)]) == 2
    assert "unknown step kind 'nonesuch'" in capsys.readouterr().err


# 2. print-commands, then done


def test_print_commands_lists_the_missing_steps_and_running_them_finishes_the_sweep(cli, swept, tmp_path):
    fresh = tmp_path / "fresh"
    steps = plan_json(cli, swept.grid, fresh)
    code, out, err = cli("sweep", "plan", swept.grid, "--results", fresh, "--print-commands")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines == [shlex.join(s["command"]) for s in steps]  # every step, prepare first
    assert ["--prepare-only" in line for line in lines] == [True, False, False]
    assert all(line.startswith("poisonbench defend ") for line in lines)
    assert not fresh.exists()

    results = swept.copy(tmp_path / "r")  # done but its PoisonSet and the ρ 0.5 run
    shutil.rmtree(results / "poisons" / swept.keys[0])
    (results / "runs" / f"{swept.keys[2]}.json").unlink()
    steps = plan_json(cli, swept.grid, results)
    assert [s["state"] for s in steps] == ["missing", "done", "missing"]
    code, out, err = cli("sweep", "plan", swept.grid, "--results", results, "--print-commands")
    lines = out.strip().splitlines()
    assert code == 0 and lines == [shlex.join(steps[i]["command"]) for i in (0, 2)], (out, err)
    for line in lines:  # what a user's own scheduler would run
        code, _, err = cli(*shlex.split(line)[1:])
        assert code == 0, err
    assert [s["state"] for s in plan_json(cli, swept.grid, results)] == ["done"] * 3
    code, out, err = cli("sweep", "plan", swept.grid, "--results", results)
    assert code == 0 and "0 steps to do" in out, out
    code, out, err = cli("sweep", "run", swept.grid, "--results", results)
    assert code == 0 and "nothing to do: all 2 runs of grid small are done" in out, (out, err)


# 3. failures; 4. --task-id


def test_a_failed_run_is_recorded_counted_not_retried_unless_asked(cli, capsys, swept, tmp_path, monkeypatch):
    results = swept.copy(tmp_path / "r")
    rid = swept.keys[2]
    (results / "runs" / f"{rid}.json").unlink()
    from poisonbench.experiment import one_run as run_execution

    def broken(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(run_execution, "train", broken)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")  # a job array's task: no --task-id needed
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        cli("sweep", "run", swept.grid, "--results", results)
    capsys.readouterr()  # what the raising call printed, so the next call's output is its own
    monkeypatch.undo()
    failure = json.loads((results / "failures" / f"{rid}.json").read_text())
    assert failure["error"] == "RuntimeError: simulated out of memory"
    assert [p.stem for p in (results / "failures").iterdir()] == [rid]  # step 2's, nothing else
    assert rid not in record_ids(results)

    assert [s["state"] for s in plan_json(cli, swept.grid, results)] == ["done", "done", "failed"]
    code, out, _ = cli("sweep", "plan", swept.grid, "--results", results)
    assert "0 steps to do; 1 failed" in out, out
    code, out, err = cli("sweep", "status", swept.grid, "--results", results, "--json")
    status = json.loads(out)
    assert status["runs"] == {"wanted": 2, "done": 1, "failed": 1, "running": 0}
    assert [(f["step"], f["error"], f["record"]) for f in status["failures"]] == [
        (2, "RuntimeError: simulated out of memory", str(RunStore(results).failure_path(rid)))]
    code, out, err = cli("sweep", "run", swept.grid, "--results", results)
    assert code == 1 and "nothing to do" in out and "1 failed" in out, (out, err)  # 1: the grid is not complete
    assert rid not in record_ids(results)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, out, err = cli("sweep", "run", swept.grid, "--results", results, "--retry-failed")
    assert code == 0, err
    assert rid in record_ids(results)
    assert not (results / "failures" / f"{rid}.json").exists()  # success clears the failure record


def test_task_id_runs_exactly_that_step(cli, swept, tmp_path):
    results = swept.copy(tmp_path / "r")
    for rid in swept.keys[1:]:
        (results / "runs" / f"{rid}.json").unlink()
    code, _, err = cli("sweep", "run", swept.grid, "--results", results, "--task-id", "1")
    assert code == 0, err
    assert record_ids(results) == {swept.keys[1]}
    assert not (results / "failures").exists() or not any((results / "failures").iterdir())



@pytest.mark.parametrize("threads", [None, 1, 3])
def test_task_id_runs_its_step_with_the_threads_asked_and_gives_the_process_its_own_back(cli, swept, tmp_path,
                                                                                           threads):
    """`--threads` reaches a step run in this process as it reaches a worker's (the record's env.threads, on which
    the CPU's numbers depend); without it the step runs with the process's threads. Until 2026-11-30 `--task-id`
    ignored `--threads`: a step asked for one thread trained with every core."""
    import torch

    results = swept.copy(tmp_path / "r")
    for rid in swept.keys[1:]:  # the step's run and the other (key 0 is the PoisonSet)
        (results / "runs" / f"{rid}.json").unlink()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, _, err = cli("sweep", "run", swept.grid, "--results", results, "--task-id", "1",
                           *(["--threads", str(threads)] if threads else []))
        assert code == 0, err
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    record = json.loads((results / "runs" / f"{swept.keys[1]}.json").read_text())
    assert record["env"]["threads"] == (threads or 2)


# 5. SLURM without a cluster


def test_submitit_local_gives_the_runs_and_accuracies_of_local_workers(cli, swept, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as for `swept`'s `--workers 1`
    results = tmp_path / "r"
    code, out, err = cli("sweep", "run", swept.grid, "--executor", "submitit-local", "--results", results)
    assert code == 0, (out, err)
    assert "submitted 3 jobs (submitit-local)" in out
    local, submitted = RunStore(swept.results), RunStore(results)
    assert record_ids(results) == record_ids(swept.results) == set(swept.keys[1:])
    for rid in swept.keys[1:]:
        a, b = local.get(rid), submitted.get(rid)
        assert b["metrics"]["test_acc"] == a["metrics"]["test_acc"], rid
        assert b["env"]["threads"] == a["env"]["threads"], rid  # both executors give a step the same threads
    assert (results / "poisons" / swept.keys[0] / "manifest.json").is_file()
    assert [s["state"] for s in plan_json(cli, swept.grid, results)] == ["done"] * 3


def sbatch_lines(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            name, _, value = line[len("#SBATCH "):].partition("=")
            out[name] = value
    return out


def test_emit_sbatch_writes_an_array_of_the_missing_steps(cli, swept, tmp_path):
    fresh, script = tmp_path / "fresh", tmp_path / "sweep.sbatch"
    code, out, err = cli("sweep", "run", swept.grid, "--results", fresh, "--emit-sbatch", script, "--time", "90",
                         "--gpus-per-task", "2", "--partition", "gpu", "--sbatch=--account=x",
                         "--sbatch=--exclusive")
    assert code == 0, err
    text = script.read_text()
    options = sbatch_lines(text)
    assert options["--array"] == "0-2%64"
    assert (options["--time"], options["--gpus-per-task"], options["--partition"]) == ("1:30:00", "2", "gpu")
    assert options["--account"] == "x" and options["--exclusive"] == ""
    command = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
    assert command == f'exec poisonbench sweep run {swept.grid} --task-id "$SLURM_ARRAY_TASK_ID" --results {fresh}'
    assert text.startswith("#!/bin/bash\n")

    results = swept.copy(tmp_path / "r")  # steps 0 and 2 missing
    shutil.rmtree(results / "poisons" / swept.keys[0])
    (results / "runs" / f"{swept.keys[2]}.json").unlink()
    code, out, err = cli("sweep", "run", swept.grid, "--results", results, "--emit-sbatch", script, "--force",
                         "--array-parallelism", "8")  # the first script is replaced only with --force
    assert code == 0, err
    options = sbatch_lines(script.read_text())
    assert options["--array"] == "0,2%8"
    assert (options["--time"], options["--gpus-per-task"]) == ("4:00:00", "1")
    assert "--partition" not in options and "--account" not in options


@pytest.mark.parametrize(("threads", "cpus", "passed"), [(None, None, None), (None, 4, 4), (1, 4, 1), (3, None, 3),
                                                        (None, 1, 1), (None, 1024, 1024), (None, 1025, 1024),
                                                        (1024, 2048, 1024)])
def test_emit_sbatch_gives_each_task_the_threads_asked_else_its_cpus(cli, swept, tmp_path, threads, cpus, passed):
    """The array script's command carries `--threads`: `--threads` when given, else `--cpus-per-task`, else none
    (the task's process decides). Before 2026-11-30 the script never passed it, so a task on a node without a CPU
    binding trained with every core of the node, and the record said so."""
    script = tmp_path / "sweep.sbatch"
    code, _, err = cli("sweep", "run", swept.grid, "--results", tmp_path / "fresh", "--emit-sbatch", script,
                       *(["--threads", str(threads)] if threads is not None else []),
                       *(["--cpus-per-task", str(cpus)] if cpus is not None else []))
    assert code == 0, err
    text = script.read_text()
    command = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
    assert command == (f'exec poisonbench sweep run {swept.grid} --task-id "$SLURM_ARRAY_TASK_ID" --results '
                       f'{tmp_path / "fresh"}' + (f" --threads {passed}" if passed is not None else ""))
    assert sbatch_lines(text).get("--cpus-per-task") == (str(cpus) if cpus is not None else None)


@pytest.mark.parametrize(("executor", "threads", "cpus", "passed"), [
    ("slurm", None, None, None), ("slurm", None, 4, 4), ("slurm", 2, 4, 2), ("slurm", 1, None, 1),
    ("submitit-local", None, None, "cores"), ("submitit-local", 1, None, 1), ("submitit-local", 3, 5, 3)])
def test_submitted_tasks_get_the_threads_asked(cli, swept, tmp_path, monkeypatch, executor, threads, cpus, passed):
    """A submitit task's step gets `--threads`; on SLURM without it `--cpus-per-task` (else the task decides), on
    submitit's local executor every core (as `--workers 1`). Before 2026-11-30 `--threads` was dropped here."""
    from poisonbench.sweeps import execute, slurm

    given = []

    class Job:
        job_id = "1"

    def submit(plan, steps, name, options, task_threads=None):
        given.append((name, task_threads, options.cpus_per_task))
        return [Job()]

    monkeypatch.setattr(slurm, "submit", submit)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: "/usr/bin/" + name)
    code, out, err = cli("sweep", "run", swept.grid, "--results", tmp_path / "fresh", "--executor", executor,
                         "--no-wait", *(["--threads", str(threads)] if threads is not None else []),
                         *(["--cpus-per-task", str(cpus)] if cpus is not None else []))
    assert code == 0, err
    expected = execute.split_threads(1) if passed == "cores" else passed
    assert given == [(executor, expected, cpus)]


# 6. status


def test_status_counts_cells_and_device_hours(cli, swept, tmp_path):
    results = swept.copy(tmp_path / "r")
    kept_path = results / "runs" / f"{swept.keys[1]}.json"
    kept = json.loads(kept_path.read_text())
    kept["cost"]["seconds"] = 0.05  # a quick CPU run: hours must not round to zero (CI once timed one at < 0.18 s)
    kept_path.write_text(json.dumps(kept))
    (results / "runs" / f"{swept.keys[2]}.json").unlink()
    code, out, err = cli("sweep", "status", swept.grid, "--results", results, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert [(c["wanted"], c["done"]) for c in status["cells"]] == [(1, 1), (1, 0)]
    assert "· ρ 0 ·" in status["cells"][0]["cell"] and "· ρ 0.5 ·" in status["cells"][1]["cell"]
    assert status["runs"] == {"wanted": 2, "done": 1, "failed": 0, "running": 0}
    assert status["poison_sets"] == {"wanted": 1, "done": 1, "failed": 0}
    seconds = kept["cost"]["seconds"]
    assert status["cells"][0]["hours"] == round(seconds / 3600, 6)
    assert status["hours_spent"] > 0 and status["hours_spent"] >= round(seconds / 3600, 6)
    # the missing run is estimated by the done run of the same method, dataset and recipe
    assert status["hours_remaining_estimate"] == round(seconds / 3600, 6) > 0
    assert status["runs_without_estimate"] == 0 and status["failures"] == []
    assert len(status["devices"]) == 1  # cpu here, cuda on a GPU machine


# 7. bad input


BAD_GRIDS = {
    "malformed.toml": "[[runs]\nmethod = 'none'\n",
    "typo.toml": '[[runs]]\nmethd = "none"\n',
    "execution.toml": '[defaults]\nresults = "x"\n\n[[runs]]\nmethod = "none"\n',
    "bad-value.toml": '[[runs]]\nmethod = "nonsense"\nrecipe = "quick"\n',
}


@pytest.mark.parametrize(("args", "needles"), [
    (["sweep", "plan", "no-such-grid"], ["unknown grid 'no-such-grid'", "table2-quick", "demo"]),
    (["sweep", "run", "malformed.toml"], ["malformed.toml: malformed TOML"]),
    (["sweep", "plan", "typo.toml"], ["unknown key 'methd'", "valid keys:", "method", "poison-ratio"]),
    (["sweep", "run", "execution.toml"], ["unknown key 'results'", "given to `sweep`"]),
    (["sweep", "run", "bad-value.toml"], ["grid bad-value, run `defend --method nonsense", "nonsense"]),
    (["sweep", "run", "{small}", "--workers", "0"], ["--workers must be in 1..256, got 0"]),
    (["sweep", "run", "{small}", "--workers", "257"], ["--workers must be in 1..256, got 257"]),
    (["sweep", "run", "{small}", "--threads", "0"], ["--threads must be in 1..1024, got 0"]),
    (["sweep", "run", "{small}", "--threads", "1025"], ["--threads must be in 1..1024, got 1025"]),
    (["sweep", "run", "{small}", "--task-id", "3"], ["--task-id 3 is out of range", "3 steps, 0..2"]),
    (["sweep", "run", "{small}", "--executor", "nonsense"], ["unknown executor 'nonsense'",
                                                            "workers, slurm, submitit-local"]),
    (["sweep", "run", "{small}", "--executor", "slurm"], ["executor 'slurm' is not available here"]),
    (["sweep", "run", "{small}", "--sbatch", "account=x"], ["--sbatch 'account=x'", "--account=abc"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, needles, cli, tiny_npz, tmp_path, monkeypatch):
    for name, text in BAD_GRIDS.items():
        (tmp_path / name).write_text(text)
    small = write_grid(tmp_path / "small.toml", tiny_npz, SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no sbatch, whatever this machine has
    before = sorted(tmp_path.rglob("*"))
    code, out, err = cli(*[a.format(small=small) for a in args], "--results", tmp_path / "results")
    one_line_error(code, err, *needles)
    assert sorted(tmp_path.rglob("*")) == before  # no results dir, no ./results, nothing
