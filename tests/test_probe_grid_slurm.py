"""Holes a probe found in sweeps (issue 51): values that reach an `sbatch` script unquoted (a newline in a grid's
path, --results, --partition or --sbatch ran a command when the job started), emitted scripts that could not be
written (a traceback), and grids that meant something else than they said (an empty axis dropped runs, `false` was
the default, a bool became a bare flag, `trials = 1000000000` filled the memory, `report = ["--table", "9"]` failed
after the sweep had trained everything).

Every test plans on a tiny .npz dataset and trains nothing: `sweep run`'s local executor is replaced by one that
fails the test, so a grid that is not refused shows up as a failure, not as minutes of training."""

from __future__ import annotations

import resource
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.sweeps import grid as grid_module
from poisonbench.sweeps.slurm import SlurmOptions

from .conftest import one_line_error

# a grid on the tiny dataset, no poison (so no prepare step): its plan is one run per trial
HEADER = '[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\nmethod = "none"\n'


def write_grid(path: Path, npz: Path, body: str = "[[runs]]\npoison_ratio = 0\n", top: str = "") -> Path:
    path.write_text(top + HEADER.format(npz=npz) + body)
    return path


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.fixture
def no_training(monkeypatch):
    """`sweep run` never trains here: a grid that gets past planning fails the test at once."""
    from poisonbench.cli import sweep

    def refuse(*args, **kwargs):
        raise AssertionError("the grid was not refused: `sweep run` went on to run its steps")

    monkeypatch.setattr(sweep, "_run_local", refuse)
    monkeypatch.setattr(sweep, "_report", refuse)


@pytest.fixture
def no_expansion(monkeypatch):
    """A grid's runs must be counted before they are expanded: expanding a billion-trial grid fills the memory."""
    def refuse(*args, **kwargs):
        raise AssertionError("the grid was expanded before its size was checked")

    monkeypatch.setattr(grid_module, "expand_block", refuse)
    monkeypatch.setattr(grid_module, "trial_major", refuse)


# 1. grids that mean something else: one line at plan time, naming the key and the value


SEEDS = ", ".join(str(s) for s in range(201))

BAD_GRIDS = {
    "empty-axis": ("[[runs]]\nmethod = []\n", "", ["block 1", "method = []", "empty list"]),
    "empty-axis-in-block-2": ("[[runs]]\nseed = [0, 1]\n\n[[runs]]\nseed = []\n", "",
                              ["block 2", "seed = []", "empty list"]),
    "false-for-a-value": ("[[runs]]\nrecipe = false\n", "", ["recipe = false", "--recipe takes a value"]),
    "true-for-a-value": ("[[runs]]\nrecipe = true\n", "", ["recipe = true", "--recipe takes a value"]),
    "bool-in-an-axis": ("[[runs]]\npoison_ratio = [0, true]\n", "", ["poison_ratio = true", "--poison-ratio"]),
    "not-a-bool-for-a-flag": ('[[runs]]\nnesterov = "yes"\n', "", ["nesterov = 'yes'", "--nesterov is an on/off",
                                                                   "--no-nesterov"]),
    "report-table-9": ("[[runs]]\npoison_ratio = 0\n", 'report = ["--table", "9"]\n',
                       ["report --table 9", "unknown table '9'", "2, 3, 4, 5"]),
    "report-figure-7": ("[[runs]]\npoison_ratio = 0\n", 'report = ["--figure", "7"]\n',
                        ["report --figure 7", "unknown figure '7'"]),
    "report-view-without-table": ("[[runs]]\npoison_ratio = 0\n", 'report = ["--wilson"]\n',
                                  ["report --wilson", "--wilson applies to --table or --figure only"]),
    "report-unknown-method": ("[[runs]]\npoison_ratio = 0\n", 'report = ["--table", "2", "--method", "nonesuch"]\n',
                              ["unknown method 'nonesuch'"]),
}


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_grid_that_means_something_else_is_refused_at_plan_time(case, command, cli, tiny_npz, tmp_path,
                                                                   no_training):
    body, top, needles = BAD_GRIDS[case]
    grid = write_grid(tmp_path / f"{case}.toml", tiny_npz, body, top)
    before = tree(tmp_path)
    code, out, err = cli("sweep", command, grid, "--results", tmp_path / "results")
    one_line_error(code, err, f"grid {grid}", *needles)
    assert tree(tmp_path) == before  # no results directory, nothing


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(("trials", "body", "needles"), [
    (1, "[[runs]]\ntrials = 1000000000\n", ["trials = 1000000000", "at most 1000 trials"]),
    (1, f"[[runs]]\ntrials = 100\nseed = [{SEEDS}]\n", ["20,100 runs", "block 1 has 20,100",
                                                       "at most 10,000 runs"]),
    # two blocks under the limit each, over it together ([defaults]' trials count in every block)
    (25, f"[[runs]]\nseed = [{SEEDS}]\n\n[[runs]]\npoison_ratio = 0.5\nseed = [{SEEDS}]\n",
     ["10,050 runs", "at most 10,000 runs"]),
])
def test_a_grid_too_big_is_refused_before_it_is_expanded(trials, body, needles, command, cli, tiny_npz, tmp_path,
                                                         no_training, no_expansion):
    grid = write_grid(tmp_path / "big.toml", tiny_npz, body.replace("[[runs]]", f"trials = {trials}\n\n[[runs]]", 1))
    before = tree(tmp_path)
    code, out, err = cli("sweep", command, grid, "--results", tmp_path / "results")
    one_line_error(code, err, *needles)
    assert tree(tmp_path) == before


def test_the_size_limit_counts_axis_lengths_times_trials_per_block():
    ok = [{"trials": 10, "seed": list(range(500))}, {"trials": 5, "seed": list(range(1000))}]  # 5,000 + 5,000
    grid_module.check_size(ok, "grid g")
    with pytest.raises(PoisonbenchError, match="10,001 runs"):
        grid_module.check_size([*ok, {"method": "none"}], "grid g")


def test_bools_set_flags_and_a_grid_at_the_trials_limit_loads(tiny_npz, tmp_path):
    from poisonbench.sweeps import Execution, load_grid, make_plan

    body = "[[runs]]\npoison_ratio = 0\nmomentum = 0.9\nnesterov = [true, false]\n"
    grid = write_grid(tmp_path / "flags.toml", tiny_npz, body)
    plan = make_plan(load_grid(str(grid)), Execution(results=str(tmp_path / "r")))
    flags = [[a for a in s.argv if "nesterov" in a] for s in plan.runs]
    assert flags == [["--nesterov"], ["--no-nesterov"]]
    assert len({s.key for s in plan.runs}) == 2  # two different runs, not two spellings of the default
    many = write_grid(tmp_path / "many.toml", tiny_npz, "[[runs]]\npoison_ratio = 0\ntrials = 1000\n")
    assert len(load_grid(str(many)).runs) == 1000


def test_defend_refuses_more_trials_than_its_limit():
    from poisonbench.experiment.checks import validate
    from poisonbench.experiment.spec import DefendSpec

    validate(DefendSpec(trials=1000, device="cpu"))
    with pytest.raises(PoisonbenchError, match="--trials 1001: at most 1000 trials"):
        validate(DefendSpec(trials=1001, device="cpu"))


def test_defend_with_a_billion_trials_is_one_line_not_a_memory_error(tmp_path):
    """In a child process whose address space is capped (6 GiB): the list of a billion trial numbers that
    `defend` built takes 8 GiB, so without the limit this is a MemoryError, never a machine out of memory."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    done = subprocess.run([sys.executable, "-m", "poisonbench.cli.main", "defend", "--trials", "1000000000",
                           "--results", str(tmp_path / "r"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, preexec_fn=cap, cwd=tmp_path)
    one_line_error(done.returncode, done.stderr, "--trials 1000000000: at most 1000 trials")
    assert not (tmp_path / "r").exists()


# 2. --emit-sbatch: no value can run a command or change an #SBATCH option


def sbatch_words(text: str, modern: bool = True) -> list[str]:
    """The arguments sbatch reads from the text after `#SBATCH` (src/sbatch/opt.c, `_get_argument`): a word ends
    at whitespace outside quotes, `\\` escapes the next character, an unquoted `#` starts a comment. `modern`:
    `"` and `'` quote (Slurm 17.11+); else only `"` toggles quoting and `#` ends the line even inside quotes."""
    words, i, n = [], 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return words
        word, quote, escape = [], "", False
        while i < n and (quote or not text[i].isspace()):
            c = text[i]
            i += 1
            if escape:
                escape = False
            elif c == "\\":
                escape = True
                continue
            elif modern and quote:
                if c == quote:
                    quote = ""
                    continue
            elif c in ("\"'" if modern else '"'):
                quote = "" if quote else c
                continue
            elif c == "#":
                return [*words, "".join(word)] if word else words
            word.append(c)
        assert not quote, f"sbatch: unmatched quote in {text!r}"
        words.append("".join(word))


def directives(script: str, modern: bool = True) -> dict[str, str]:
    """{option: value} of the script's `#SBATCH` lines as sbatch parses them; each line must be one argument."""
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            words = sbatch_words(line[len("#SBATCH"):], modern)
            assert len(words) == 1, f"{line!r} is {len(words)} sbatch arguments: {words}"
            name, _, value = words[0].partition("=")
            out[name] = value
    return out


def run_script(script: Path, cwd: Path) -> list[str]:
    """Run the emitted script with bash, `poisonbench` being a stub that records its argv; returns that argv."""
    stub = cwd / "stub-bin"
    stub.mkdir()
    (stub / "poisonbench").write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGV_FILE"\n')
    (stub / "poisonbench").chmod(0o755)
    argv_file = cwd / "argv.bin"
    env = {"PATH": f"{stub}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "ARGV_FILE": str(argv_file)}
    done = subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return argv_file.read_text().split("\0")[:-1]


HOSTILE = "x $(touch PWNED1) `touch PWNED2`; touch PWNED3 & 'q\" #h %p\\"
HOSTILE_PATH = HOSTILE.replace("\\", "")  # sbatch's --output cannot take a backslash (refused below)


def test_hostile_values_reach_sbatch_and_the_command_exactly_and_run_nothing(cli, tiny_npz, tmp_path):
    grid = write_grid(tmp_path / f"g {HOSTILE_PATH}.toml", tiny_npz)
    results = tmp_path / f"r {HOSTILE_PATH}"
    partition, comment = "gpu \"a\" 'b' #c", f"hi {HOSTILE}"
    script = tmp_path / "job.sbatch"
    code, out, err = cli("sweep", "run", grid, "--results", results, "--emit-sbatch", script,
                         "--partition", partition, f"--sbatch=--comment={comment}", "--sbatch=--exclusive")
    assert code == 0, err
    text = script.read_text()
    for modern in (True, False):  # what sbatch (new and old) reads from the #SBATCH lines: exactly the values
        options = directives(text, modern)
        assert options["--job-name"] == f"poisonbench-{grid.stem}"
        assert options["--output"] == str(results).replace("%", "%%") + "/slurm/%A_%a.out"
        assert options["--partition"] == partition
        assert options["--comment"] == comment
        assert options["--exclusive"] == "" and options["--array"] == "0%64"
    command = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
    argv = ["sweep", "run", str(grid), "--task-id", "0", "--results", str(results)]
    assert shlex.split(command.replace('"$SLURM_ARRAY_TASK_ID"', "0")) == ["exec", "poisonbench", *argv]
    assert run_script(script, tmp_path) == argv  # bash: the same argv, and nothing else ran
    assert not list(tmp_path.rglob("PWNED*"))


def test_a_lone_quote_without_whitespace_is_still_quoted_in_sbatch_lines_and_the_command(cli, tiny_npz, tmp_path):
    """A value with one `'` (or `"`, `#`) and no whitespace is quoted all the same: unquoted, sbatch would open a
    quote that never closes (or start a comment). Each `#SBATCH` line reads back as one argument holding exactly
    the value (new and old sbatch), bash parses the script (`bash -n`), and the command line gives the exact
    argv."""
    from poisonbench.sweeps.slurm import sbatch_value

    for value in ("it's", 'a"b', "x#y", "o'brien'"):
        written = sbatch_value("--partition", value)
        assert written != value and written.startswith('"') and written.endswith('"'), written
        assert all(sbatch_words(written, modern) == [value] for modern in (True, False)), written
    grid = write_grid(tmp_path / "g'1.toml", tiny_npz)
    results = tmp_path / "r'1"
    script = tmp_path / "job.sbatch"
    code, _, err = cli("sweep", "run", grid, "--results", results, "--emit-sbatch", script, "--partition", "gpu'a",
                       "--sbatch=--comment=it's", "--sbatch=--account=o'brien")
    assert code == 0, err
    text = script.read_text()
    assert "--partition=gpu'a" not in text and "--comment=it's" not in text and "r'1/slurm" not in text
    for modern in (True, False):
        options = directives(text, modern)
        assert (options["--partition"], options["--comment"], options["--account"]) == ("gpu'a", "it's", "o'brien")
        assert options["--job-name"] == "poisonbench-g'1" and options["--output"] == f"{results}/slurm/%A_%a.out"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = ["sweep", "run", str(grid), "--task-id", "0", "--results", str(results)]
    command = [line for line in text.splitlines() if line and not line.startswith("#")][-1]
    assert shlex.split(command.replace('"$SLURM_ARRAY_TASK_ID"', "0")) == ["exec", "poisonbench", *argv]
    assert run_script(script, tmp_path) == argv


@pytest.mark.parametrize(("args", "needles"), [
    (["--partition", "gpu\ntouch PWNED"], ["--partition 'gpu\\ntouch PWNED'", "control character '\\n'"]),
    (["--partition", "gpu\x7f"], ["--partition 'gpu\\x7f'", "control character '\\x7f'"]),
    (["--sbatch", "--account=x\rtouch PWNED"], ["--sbatch '--account=x\\rtouch PWNED'", "'\\r'"]),
    (["--sbatch", "--account=x\x00y"], ["--sbatch '--account=x\\x00y'", "'\\x00'"]),
    (["--sbatch", "--comment=\x1b[2Jx"], ["--sbatch '--comment=\\x1b[2Jx'", "'\\x1b'"]),
    (["--results", "{tmp}/r\ntouch PWNED"], ["--results '", "/r\\ntouch PWNED'", "control character"]),
    (["GRID", "g\ntouch PWNED.toml"], ["grid '", "/g\\ntouch PWNED.toml'", "control character"]),
    (["--results", "{tmp}/r\\x"], ["--results '", "r\\\\x'", "backslash"]),
    (["--sbatch", "--acc ount=x"], ["--sbatch '--acc ount=x'", "give a long sbatch option"]),
    (["--sbatch", "--comment=my hetjob"], ["--sbatch 'my hetjob'", "blanks the word 'hetjob'"]),
])
def test_emit_sbatch_refuses_values_a_script_cannot_hold_and_writes_nothing(args, needles, cli, tiny_npz,
                                                                           tmp_path):
    name, args = (args[1], []) if args[0] == "GRID" else ("g.toml", args)  # GRID: the grid file's name
    grid = write_grid(tmp_path / name, tiny_npz)
    args = [a.format(tmp=tmp_path) for a in args]
    before = tree(tmp_path)
    results = [] if "--results" in args else ["--results", tmp_path / "results"]
    code, out, err = cli("sweep", "run", grid, *results, *args, "--emit-sbatch", tmp_path / "job.sbatch")
    one_line_error(code, err, *needles)
    assert tree(tmp_path) == before


def test_submitit_options_refuse_control_characters_and_odd_names():
    for bad in ({"partition": "gpu\ntouch PWNED"}, {"extra": ("--account=x\ntouch PWNED",)},
                {"extra": ("--acc\tount=x",)}, {"extra": ("--qos=a\x00",)}):
        with pytest.raises(PoisonbenchError, match="--partition|--sbatch"):
            SlurmOptions(**bad)
    assert SlurmOptions(extra=("--account=a b", "#SBATCH --exclusive")).additional() == {"account": "a b",
                                                                                        "exclusive": True}


# 3. --emit-sbatch into a place that cannot be written: one line with the reason, nothing left behind


def test_emit_sbatch_under_a_file_is_one_line_and_leaves_nothing(cli, tiny_npz, tmp_path):
    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    (tmp_path / "afile").write_text("")
    before = tree(tmp_path)
    code, out, err = cli("sweep", "run", grid, "--results", tmp_path / "results", "--emit-sbatch",
                         tmp_path / "afile" / "job.sbatch")
    one_line_error(code, err, f"cannot write --emit-sbatch {tmp_path / 'afile' / 'job.sbatch'}",
                   f"{str(tmp_path / 'afile')!r} is a file, not a directory")
    assert tree(tmp_path) == before  # the results/slurm/ folder made for the logs is removed again


def test_emit_sbatch_permission_denied_is_one_line_and_leaves_nothing(cli, tiny_npz, tmp_path, monkeypatch):
    """A read-only directory, as the script's atomic write meets it (root may write anywhere, so the refusal is
    the system's: mkstemp raising EACCES)."""
    import tempfile

    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    before = tree(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    script = tmp_path / "ro" / "job.sbatch"
    code, out, err = cli("sweep", "run", grid, "--results", tmp_path / "results", "--emit-sbatch", script)
    one_line_error(code, err, f"cannot write --emit-sbatch {script}: Permission denied")
    assert tree(tmp_path) == before  # neither ro/ nor results/slurm/ is left


def test_emit_sbatch_into_a_read_only_directory(cli, tiny_npz, tmp_path, read_only):
    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    ro = read_only(tmp_path / "ro")
    code, out, err = cli("sweep", "run", grid, "--results", tmp_path / "results", "--emit-sbatch", ro / "job.sbatch")
    one_line_error(code, err, f"cannot write --emit-sbatch {ro / 'job.sbatch'}:")
    assert not list(ro.iterdir()) and not (tmp_path / "results").exists()


def test_results_slurm_folder_that_cannot_be_made_is_one_line_and_no_script(cli, tiny_npz, tmp_path):
    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    (tmp_path / "afile").write_text("")
    before = tree(tmp_path)
    results = tmp_path / "afile" / "results"
    code, out, err = cli("sweep", "run", grid, "--results", results, "--emit-sbatch", tmp_path / "job.sbatch")
    one_line_error(code, err, f"cannot create {str(results / 'slurm')!r}", "is a file, not a directory")
    assert tree(tmp_path) == before  # no script either
