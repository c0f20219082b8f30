"""Re-run issue 51's probe of hostile and broken inputs against the real CLI, after the fixes.

Issue 51 found nine kinds of holes by feeding `poisonbench` hostile or broken inputs: values that ran a command in
an emitted sbatch script (1), a record field that became a figure path outside `--out` (2), sweep logs written
through a planted symbolic link (3), a killed sweep step taken for a failed one (4), a SIGTERM that crafting ignored
(5), grids that meant something else than they said (6), OS errors as tracebacks (7), `report` trusting a record's
run_id (8), and smaller ones (9). The unit tests (tests/test_probe_*.py) check each fix in-process, mostly with
faked steps and faked OS errors; this script checks the same behaviours end to end, as a user meets them: every
case is a subprocess `python -m poisonbench.cli.main ...` on a tiny dataset (tests/conftest.py's `write_npz`), with
real training, real signals and real read-only / full filesystems (tmpfs mounts: run it as root).

Everything happens in a fresh temporary directory, removed at the end; a last check looks for marker files and
escaped paths outside it. Output: a markdown table on stdout, one row per case, with the verdict against what the
fix promises; the exit status is 1 if any case FAILs.

    .venv/bin/python experiments/probe_issue51.py > experiments/probe_issue51.md
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import write_npz  # noqa: E402  (the tests' tiny learnable dataset)

TIMEOUT = 300  # seconds, per subprocess
SIX_GIB = 6 << 30
MARKERS = {"MARKER_k1a", "MARKER_k1b", "MARKER_k1c"}  # files the injected `touch` commands would make


def planted(name: str) -> bool:
    """A file an escape would leave: an injected command's marker, or a figure named after `x/../../../ESCAPED`."""
    return name in MARKERS or "ESCAPED" in name


# ------------------------------------------------------------------------------------------------------- plumbing

@dataclass
class Result:
    code: int | None
    out: str
    err: str
    seconds: float
    rss_kb: int | None = None

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("Error:")]


@dataclass
class Row:
    kind: int
    case: str
    result: Result | None
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    not_run: str = ""

    @property
    def verdict(self) -> str:
        return f"not run: {self.not_run}" if self.not_run else ("FAIL" if self.problems else "ok")


ROWS: list[Row] = []


def env() -> dict[str, str]:
    """The caller's environment without what would redirect or reformat the CLI."""
    drop = ("POISONBENCH_RESULTS", "POISONBENCH_DATASET", "COLUMNS", "LINES")
    return {k: v for k, v in os.environ.items() if k not in drop}


def cli(ws: Path, *args, time_v: bool = False, cap_memory: bool = False, timeout: int = TIMEOUT) -> Result:
    """`python -m poisonbench.cli.main ARGS` in `ws`; under `/usr/bin/time -v` (its report is parsed off stderr)
    when `time_v`; under a 6 GiB address-space cap when `cap_memory` (a runaway allocation is a MemoryError)."""
    argv = [sys.executable, "-m", "poisonbench.cli.main", *map(str, args)]
    if time_v:
        argv = ["/usr/bin/time", "-v", *argv]
    start = time.monotonic()
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_AS, (SIX_GIB, SIX_GIB))) if cap_memory else None
    try:
        done = subprocess.run(argv, cwd=ws, env=env(), capture_output=True, text=True, timeout=timeout,
                              preexec_fn=preexec)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, str(exc.stdout or ""), f"(timed out after {timeout} s) {exc.stderr or ''}"
    seconds = time.monotonic() - start
    rss = None
    if time_v:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
        rss = int(found.group(1)) if found else None
        err = "\n".join(line for line in err.splitlines() if not line.startswith("\t")
                        and not line.startswith("Command exited with non-zero status"))
    return Result(code, out, err, seconds, rss)


def popen(ws: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "poisonbench.cli.main", *map(str, args)], cwd=ws, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, start: float) -> Result:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Result(None, out, f"(timed out) {err}", time.monotonic() - start)
    return Result(proc.returncode, out, err, time.monotonic() - start)


def one_line_error(res: Result, *needles: str, code: int = 2) -> list[str]:
    """What is wrong with `res` for "exit `code`, stderr one `Error:` line holding every needle, no traceback"."""
    problems = need(res.code == code, f"exit {res.code}, expected {code}")
    problems += need(len(res.lines) == 1 and res.lines[0].startswith("Error: "),
                     f"stderr is {len(res.lines)} line(s), not one `Error:` line")
    problems += [f"stderr lacks {n!r}" for n in needles if n not in res.err]
    return problems + no_traceback(res)


def need(ok: bool, why: str) -> list[str]:
    """[] where `ok`, else [why]: the problems of a case are collected as lists."""
    return [] if ok else [why]


def no_traceback(res: Result) -> list[str]:
    return need("Traceback" not in res.err and "MemoryError" not in res.err, "a traceback")


def add(kind: int, case: str, res: Result | None, problems: list[str], detail: str = "") -> None:
    ROWS.append(Row(kind, case, res, problems, detail))
    mark = "FAIL" if problems else "ok"
    print(f"[{kind}] {case}: {mark} {'; '.join(problems)}", file=sys.stderr, flush=True)


def files(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def write_grid(path: Path, npz: Path, body: str = "[[runs]]\npoison_ratio = 0\n", top: str = "") -> Path:
    """A grid of clean `none` runs on the tiny dataset, one epoch of the quick recipe; `body` holds its blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{top}[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\nmethod = "none"\n\n{body}')
    return path


def plan_keys(ws: Path, grid: Path) -> list[str]:
    res = cli(ws, "sweep", "plan", grid, "--results", ws / "plan-scratch", "--json")
    return [s["key"] for s in json.loads(res.out)["steps"]]


# ------------------------------------------------------------------------------------------ 1. sbatch injection

def kind1_sbatch(ws: Path, npz: Path) -> None:
    """Control characters in --partition / --sbatch are refused (no script); a results path holding `$(...)` is
    quoted, so the emitted script, run by bash, passes it to poisonbench as one argument and runs nothing else."""
    root = ws / "k1"
    grid = write_grid(root / "g.toml", npz)
    for case, option, value, needle in (
            ("--partition with a newline", "--partition", "gpu\ntouch MARKER_k1a", "--partition 'gpu\\ntouch"),
            ("--sbatch with a newline", "--sbatch", "--account=x\ntouch MARKER_k1b", "--sbatch '--account=x\\n")):
        script = root / f"job{option}.sbatch"
        before = files(root)
        res = cli(root, "sweep", "run", grid, "--results", root / "r", "--emit-sbatch", script, option, value)
        problems = one_line_error(res, needle, "control character '\\n'")
        problems += need(not script.exists(), "the script was written")
        problems += need(files(root) == before, f"new files: {sorted(map(str, files(root) - before))}")
        add(1, f"emit-sbatch, {case}", res, problems, "no script, nothing written")

    results = root / "r $(touch MARKER_k1c) x"
    script = root / "job.sbatch"
    res = cli(root, "sweep", "run", grid, "--results", results, "--emit-sbatch", script)
    problems = need(res.code == 0 and script.exists(), f"exit {res.code}, script exists: {script.exists()}")
    problems += no_traceback(res)
    detail = ""
    if script.exists():
        stub = root / "stub-bin"
        stub.mkdir()
        (stub / "poisonbench").write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGV_FILE"\n')
        (stub / "poisonbench").chmod(0o755)
        argv_file = root / "argv.bin"
        bash = subprocess.run(["bash", str(script)], cwd=root, capture_output=True, text=True, timeout=60,
                              env={"PATH": f"{stub}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0",
                                   "ARGV_FILE": str(argv_file)})
        argv = argv_file.read_text().split("\0")[:-1] if argv_file.exists() else None
        expected = ["sweep", "run", str(grid), "--task-id", "0", "--results", str(results)]
        problems += need(bash.returncode == 0, f"bash exit {bash.returncode}: {bash.stderr.strip()}")
        problems += need(argv == expected, f"stub got argv {argv}, expected {expected}")
        detail = f"bash ran the script: stub argv {'==' if argv == expected else '!='} expected ({len(expected)} args)"
    markers = [str(p) for p in root.rglob("*") if p.name in MARKERS]
    problems += need(not markers, f"marker created: {markers}")
    add(1, "emit-sbatch, results path `r $(touch MARKER) x`, script run by bash", res, problems,
        detail + ("; no marker" if not markers else ""))


# ------------------------------------------------------------------------------- 2. a record field becomes a path

def kind2_figure_paths(ws: Path, npz: Path) -> Path:
    """A genuine HINT record, copied with config.dataset = `x/../../../ESCAPED` (its run_id recomputed, the file
    renamed), drawn as Figure 1: every PNG inside --out, nothing named ESCAPED outside it. Returns the workspace."""
    from poisonbench.experiment.records import run_id

    root = ws / "k2"
    res = cli(ws, "defend", "--dataset", npz, "--method", "hint", "--recipe", "quick", "--epochs", "1",
              "--poison-ratio", "0.5", "--attacks", "durp", "--results", root, "--json")
    records = sorted((root / "runs").glob("*.json"))
    problems = need(res.code == 0 and len(records) == 1, f"exit {res.code}, {len(records)} record(s)")
    add(2, "set-up: a real tiny HINT record (defend, 1 epoch)", res, problems + no_traceback(res),
        f"{res.seconds:.1f} s")
    if problems:
        return root
    record = json.loads(records[0].read_text())
    record["config"]["dataset"] = "x/../../../ESCAPED"
    record["run_id"] = run_id(record["config"])
    (root / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))

    out = root / "a" / "b" / "out"
    before = files(ws.parent)
    # --attacks durp: the figures pick the runs of the tables' default attack mix (all four attacks) otherwise
    res = cli(ws, "report", "--figure", "1", "--results", root, "--out", out, "--attacks", "durp",
              "--run", record["run_id"])
    new = {p for p in files(ws.parent) - before if not p.is_dir()}
    outside = sorted(str(p) for p in new if out.resolve() not in p.resolve().parents)
    escaped = sorted(str(p) for p in ws.parent.rglob("*ESCAPED*") if p.parent != out)
    pngs = [Path(line) for line in res.out.splitlines() if line.endswith(".png")]
    problems = need(res.code in (0, 2), f"exit {res.code}, expected 0 or 2")
    problems += need(not outside, f"written outside --out: {outside}")
    problems += need(not escaped, f"*ESCAPED* outside --out: {escaped}")
    problems += [f"{p} not directly in --out" for p in pngs if p.parent != out]
    problems += need(res.code != 0 or bool(pngs), "exit 0 but no PNG drawn")
    add(2, "report --figure 1 --run <record with dataset x/../../../ESCAPED>", res, problems + no_traceback(res),
        f"drew {', '.join(p.name for p in pngs) or 'nothing'}; {len(new)} new file(s), all in out/")
    return root


# --------------------------------------------------------------------------------------- 3. logs follow symlinks

def kind3_log_links(ws: Path, grid: Path, key: str) -> None:
    """`<results>/logs` a symbolic link: refused in one line, nothing written where it points. A link planted at a
    log's old name (`logs/<run id>.log`) to a victim file: the sweep runs, the victim is not written through."""
    results = ws / "k3a" / "r"
    elsewhere = ws / "k3a" / "elsewhere"
    elsewhere.mkdir(parents=True)
    results.mkdir()
    (results / "logs").symlink_to(elsewhere)
    res = cli(ws, "sweep", "run", grid, "--results", results, "--no-report")
    problems = one_line_error(res, "is a symbolic link")
    problems += need(not list(elsewhere.iterdir()), f"written through the link: {list(elsewhere.iterdir())}")
    add(3, "sweep run, <results>/logs a symlink to another dir", res, problems, "the other dir stays empty")

    results = ws / "k3b" / "r"
    (results / "logs").mkdir(parents=True)
    victim = ws / "k3b" / "victim.txt"
    victim.write_text("precious\n")
    (results / "logs" / f"{key}.log").symlink_to(victim)
    res = cli(ws, "sweep", "run", grid, "--results", results, "--no-report")
    logs = [p for p in (results / "logs").glob(f"{key}.*.log") if not p.is_symlink()]
    problems = need(res.code == 0, f"exit {res.code}, expected 0 (the run trains)")
    problems += need(victim.read_text() == "precious\n", "the victim was written through the link")
    problems += need(bool(logs), "no log of its own (a regular file) was written")
    add(3, "sweep run, symlink planted at logs/<run id>.log -> victim", res, problems + no_traceback(res),
        f"victim unchanged; log written to {logs[0].name if logs else '?'}")


# ------------------------------------------------------------------------------------------------ 4. killed worker

def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kind4_killed_step(ws: Path, grid: Path, key: str) -> None:
    """The `defend` child of a 1-run sweep is SIGKILLed once it has claimed its run: the sweep exits 1, and a plain
    re-run (no --retry-failed) trains it and exits 0; a third run has nothing to do (exit 0). A run that genuinely
    fails (its record's path is a directory) exits 1, and so does a plain re-run."""
    results = ws / "k4" / "r"
    start = time.monotonic()
    sweep = popen(ws, "sweep", "run", grid, "--workers", "1", "--results", results, "--no-report")
    killed, lock = None, results / "locks" / f"run-{key}.lock"
    while killed is None and sweep.poll() is None and time.monotonic() - start < 120:
        step = [pid for pid, cmd in children(sweep.pid) if " defend " in cmd]
        if step and lock.exists():
            os.kill(step[0], signal.SIGKILL)
            killed = time.monotonic() - start
        time.sleep(0.01)
    res = finish(sweep, start)
    problems = need(killed is not None, "the defend child was not caught running")
    problems += need(res.code == 1, f"exit {res.code}, expected 1")
    problems += need(not list(results.glob("failures/*")), "a failure record for a killed step")
    said = "killed by SIGKILL" in res.out + res.err
    problems += need(said, "the sweep does not say the step was killed by SIGKILL")
    add(4, "sweep run, defend child SIGKILLed while training", res, problems + no_traceback(res),
        f"killed {killed or 0:.1f} s after start; 'killed by SIGKILL' reported, no failure record")

    res = cli(ws, "sweep", "run", grid, "--workers", "1", "--results", results, "--no-report")
    done = (results / "runs" / f"{key}.json").exists()
    problems = need(res.code == 0, f"exit {res.code}, expected 0") + need(done, "no record")
    add(4, "plain re-run after the kill", res, problems + no_traceback(res), "trained it, record written")
    res = cli(ws, "sweep", "run", grid, "--workers", "1", "--results", results, "--no-report")
    problems = need(res.code == 0 and "nothing to do" in res.out + res.err,
                    f"exit {res.code}, expected 0 with 'nothing to do'")
    add(4, "third plain run", res, problems + no_traceback(res), "nothing to do")

    results = ws / "k4f" / "r"
    (results / "runs" / f"{key}.json").mkdir(parents=True)  # the record cannot be written: defend fails (exit 2)
    res = cli(ws, "sweep", "run", grid, "--workers", "1", "--results", results, "--no-report")
    problems = need(res.code == 1, f"exit {res.code}, expected 1") + no_traceback(res)
    problems += need(bool(list(results.glob("failures/*.json"))), "no failure record")
    add(4, "sweep run, a genuinely failing run (its record path is a directory)", res, problems, "failure record")
    res = cli(ws, "sweep", "run", grid, "--workers", "1", "--results", results, "--no-report")
    problems = need(res.code == 1 and "nothing to do" in res.out + res.err,
                    f"exit {res.code}, expected 1 with 'nothing to do'")
    add(4, "plain re-run of the grid with the failed run", res, problems + no_traceback(res),
        "not retried (needs --retry-failed), exit 1")


# ------------------------------------------------------------------------------------ 5. SIGTERM while crafting

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def as_shown(text: str) -> str:
    """Live progress output as its final view: colour codes dropped, each line as its last carriage return left it,
    and of each progress bar (a line with bar characters, keyed by the text before them) only its last frame."""
    lines = []
    for line in ANSI.sub("", text).split("\n"):
        shown = [part for part in line.split("\r") if part.strip()]
        lines.append(shown[-1] if shown else "")
    bars = [re.split(r"[━╸╺]", line)[0].strip() if re.search(r"[━╸╺]", line) else None for line in lines]
    last = {bar: i for i, bar in enumerate(bars) if bar is not None}
    return "\n".join(line for i, (line, bar) in enumerate(zip(lines, bars, strict=True))
                     if bar is None or last[bar] == i)


def craft_with_sigterms(ws: Path, npz: Path, results: Path, signals: int) -> tuple[Result, float | None, str]:
    """`craft --attack gm` (surrogate 1 epoch, 30 iterations x 1 restart) with live progress bars (FORCE_COLOR: rich
    draws them on a pipe too), sent SIGTERM once the surrogate's bar shows 5 batches done (its epoch loop is
    running), and `signals - 1` more at 1.5 s intervals. Returns the result (stderr as shown), the seconds from the
    last SIGTERM to the exit (None: none was sent) and the bar's count when the first one was sent."""
    start = time.monotonic()
    argv = [sys.executable, "-m", "poisonbench.cli.main", "craft", "--attack", "gm", "--dataset", str(npz),
            "--surrogate-epochs", "1", "--iterations", "30", "--restarts", "1", "--compile", "off", "--results",
            str(results)]
    craft = subprocess.Popen(argv, cwd=ws, env={**env(), "FORCE_COLOR": "1", "COLUMNS": "160"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: craft.stderr.read(256), "")), daemon=True)
    reader.start()
    sent, at = None, ""
    while craft.poll() is None and time.monotonic() - start < 120 and sent is None:
        bars = re.findall(r"surrogate [^\r\n]*? (\d+)/(\d+)", ANSI.sub("", "".join(chunks)))
        if bars and 5 <= int(bars[-1][0]) < int(bars[-1][1]):
            at = f"{bars[-1][0]}/{bars[-1][1]}"
            for i in range(signals):
                time.sleep(1.5 if i else 0)
                craft.send_signal(signal.SIGTERM)
                sent = time.monotonic()
        time.sleep(0.02)
    try:
        out = craft.stdout.read() if craft.wait(timeout=TIMEOUT) is not None else ""
    except subprocess.TimeoutExpired:
        craft.kill()
        out = ""
    ended = time.monotonic()
    reader.join(timeout=10)
    res = Result(craft.returncode, out, as_shown("".join(chunks)), ended - start)
    return res, (ended - sent if sent else None), at


def surrogate_seconds(err: str) -> int | None:
    """The surrogate's training time from its progress bar's elapsed column."""
    found = re.search(r"^surrogate .*? (\d+):(\d\d):(\d\d) ", err, re.M)
    return None if not found else int(found[1]) * 3600 + int(found[2]) * 60 + int(found[3])


def kind5_sigterm_craft(ws: Path) -> None:
    """SIGTERM while gm's surrogate trains its one (so last) epoch: the engine finishes the epoch in progress (by
    design: the model is saved), then the craft stops with 143 instead of crafting on: no crafting step, no PoisonSet
    manifest. A second SIGTERM (more than 1 s after the first) stops it at once. The dataset is 40,000 28x28 images
    (write_npz): one surrogate epoch takes ~8 s on an idle 2-core machine (mnist-5k's takes under 1 s, too short to
    aim a signal at), and 30 gm iterations would take ~13 s more."""
    npz = write_npz(ws, n=40_000, size=28, classes=10, name="k5.npz")
    for case, results, signals, said in (
            ("one SIGTERM in the surrogate's only epoch", ws / "k5a", 1, "after training the surrogate"),
            ("a second SIGTERM 1.5 s after the first", ws / "k5b", 2, "a second one")):
        res, latency, at = craft_with_sigterms(ws, npz, results, signals)
        trained = surrogate_seconds(res.err)
        manifests = [str(p) for p in results.glob("poisons/**/manifest.json")]
        problems = need(latency is not None, "the surrogate's training was not caught running")
        problems += need(res.code == 143, f"exit {res.code}, expected 143")
        problems += need(said in res.err, f"stderr lacks {said!r}")
        problems += need(not re.search(r"^gm · ", res.err, re.M), "a crafting step ran after the SIGTERM")
        problems += need(not manifests, f"PoisonSet written: {manifests}")
        # one SIGTERM: at most the rest of the epoch (its length from the bar, or 60 s without one); two: at once
        limit = (60 if trained is None else trained + 3) if signals == 1 else 3
        problems += need(latency is not None and latency <= limit, f"{latency} s from the last SIGTERM to exit")
        add(5, f"craft gm on a 40,000-image .npz, {case}", res, problems + no_traceback(res),
            f"first SIGTERM at the surrogate's batch {at or '?'}; **{latency or 0:.1f} s from the last SIGTERM to "
            f"exit** (limit {limit} s; the surrogate's bar: {trained if trained is not None else '?'} s); "
            f"{res.seconds:.1f} s in all; no crafting step, no manifest")


# --------------------------------------------------------------------------------- 6. grids that mean otherwise

SEEDS = ", ".join(str(s) for s in range(201))
GRIDS = [  # case, [[runs]] blocks, top-level lines, needles
    ("method = []", "[[runs]]\nmethod = []\n", "", ["block 1", "method = []", "empty list"]),
    ("seed = [] in a second block", "[[runs]]\nseed = [0, 1]\n\n[[runs]]\nseed = []\n", "",
     ["block 2", "seed = []", "empty list"]),
    ("recipe = false", "[[runs]]\nrecipe = false\n", "", ["recipe = false", "--recipe takes a value"]),
    ("recipe = true", "[[runs]]\nrecipe = true\n", "", ["recipe = true", "--recipe takes a value"]),
    ("trials = 1000000000", "[[runs]]\ntrials = 1000000000\n", "", ["trials = 1000000000", "at most 1000 trials"]),
    ('report = ["--table", "9"]', "[[runs]]\npoison_ratio = 0\n", 'report = ["--table", "9"]\n',
     ["report --table 9", "unknown table '9'"]),
    ("too big: 100 trials x 201 seeds", f"[[runs]]\ntrials = 100\nseed = [{SEEDS}]\n", "",
     ["20,100 runs", "at most 10,000 runs"]),
]


def kind6_grids(ws: Path, npz: Path) -> None:
    """Each grid through `sweep plan`: exit 2, one line naming the key and the value, no results directory;
    `defend --trials 1000000000`: one line, at once, no MemoryError (under a 6 GiB address-space cap)."""
    root = ws / "k6"
    for i, (case, body, top, needles) in enumerate(GRIDS):
        grid = write_grid(root / f"g{i}.toml", npz, body, top)
        res = cli(ws, "sweep", "plan", grid, "--results", root / "r")
        problems = one_line_error(res, *needles)
        problems += need(not (root / "r").exists(), "a results directory was made")
        add(6, f"sweep plan, {case}", res, problems)
    res = cli(ws, "defend", "--trials", "1000000000", "--dataset", npz, "--results", root / "rd", "--device", "cpu",
              cap_memory=True)
    problems = one_line_error(res, "--trials 1000000000: at most 1000 trials")
    problems += need(res.seconds <= 30, f"took {res.seconds:.1f} s")
    add(6, "defend --trials 1000000000 (6 GiB address-space cap)", res, problems, f"{res.seconds:.1f} s")


# ---------------------------------------------------------------------------------------------------- 7. OS errors

def mount_tmpfs(path: Path, options: str) -> str | None:
    """Mount a tmpfs at `path`; None, or why it could not be."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exit {done.returncode}")


def kind7_os_errors(ws: Path, npz: Path, grid: Path, mounts: list[Path]) -> None:
    """A read-only tmpfs as sweep results and as --emit-sbatch's directory; a 64 kB tmpfs as craft's results."""
    ro, full = ws / "k7" / "ro", ws / "k7" / "full"
    refused = mount_tmpfs(ro, "ro,size=1m")
    if refused:
        for case in ("sweep run --results <read-only tmpfs>", "sweep run --emit-sbatch <read-only tmpfs>/job"):
            ROWS.append(Row(7, case, None, not_run=f"mount refused ({refused})"))
    else:
        mounts.append(ro)
        res = cli(ws, "sweep", "run", grid, "--results", ro / "r", "--no-report")
        add(7, "sweep run --results <read-only tmpfs>/r", res,
            one_line_error(res, "cannot write sweep results into", "Read-only file system"))
        res = cli(ws, "sweep", "run", grid, "--results", ws / "k7" / "r", "--emit-sbatch", ro / "job.sbatch")
        problems = one_line_error(res, "cannot write --emit-sbatch", "Read-only file system")
        problems += need(not (ws / "k7" / "r").exists(), "results dir left behind")
        add(7, "sweep run --emit-sbatch <read-only tmpfs>/job.sbatch", res, problems, "no results dir left behind")

    refused = mount_tmpfs(full, "size=64k")
    if refused:
        ROWS.append(Row(7, "craft --attack durp --results <64 kB tmpfs>", None, not_run=f"mount refused ({refused})"))
        return
    mounts.append(full)
    res = cli(ws, "craft", "--attack", "durp", "--dataset", npz, "--results", full)
    poisons = sorted(str(p.relative_to(full)) for p in files(full / "poisons"))
    left = sorted(str(p.relative_to(full)) for p in files(full) if p.is_file())
    problems = need(res.code == 2, f"exit {res.code}, expected 2")
    progress = [line for line in res.lines if "━" in line]
    if len(res.errors) != 1 or res.lines[-1] != res.errors[0] or len(res.lines) != len(progress) + 1:
        problems.append("stderr is not progress bars then one `Error:` line")
    problems += need("No space left on device" in res.err, "stderr lacks 'No space left on device'")
    problems += need(not poisons, f"something under poisons/: {poisons}")
    add(7, "craft --attack durp --results <64 kB tmpfs>", res, problems + no_traceback(res),
        f"{len(progress)} progress-bar line(s) before the error; poisons/ empty; left: {', '.join(left)}")


# ------------------------------------------------------------------------------------ 8. report trusts run_id

def kind8_untrusted_records(ws: Path) -> None:
    """Nine genuine mnist-5k records (4 trials of ATDA ρ=0.2, 5 of no defense ρ=1.0); then (a) a fifth ATDA trial
    with an edited config (lr, accuracy) under its old run_id, (b) a copy of a genuine record as dup.json with a later
    time and another accuracy, (c) a torn JSON file. `report` must name each on its own line with why, and print the
    same table as for the genuine records alone."""
    source = REPO / "experiments" / "records" / "mnist-5k" / "runs"
    atda = ["0319c05ab5b27f88", "e7f8756570f3ea64", "edb8582dde4ad81f", "fed5b613dd827bac"]  # trials 0, 2, 3, 4
    none = ["0988c77f7d6dcafd", "852ff7d4e1100abf", "9ea0c9a5964c015f", "a0228ff829f192a6", "c6d86f87c0c82297"]
    runs = ws / "k8" / "runs"
    runs.mkdir(parents=True)
    for rid in atda + none:
        shutil.copy(source / f"{rid}.json", runs)
    baseline = cli(ws, "report", "--format", "csv", "--results", runs.parent)

    edited = json.loads((source / "b737ccf14b41a510.json").read_text())  # ATDA ρ=0.2 trial 1
    edited["config"]["recipe"]["lr"] = 0.5
    edited["metrics"]["test_acc"] = 0.1
    (runs / f"{edited['run_id']}.json").write_text(json.dumps(edited))
    dup = json.loads((runs / "9ea0c9a5964c015f.json").read_text())
    dup["finished_at"], dup["metrics"]["test_acc"] = "2099-01-01T00:00:00+00:00", 0.1
    (runs / "dup.json").write_text(json.dumps(dup))
    (runs / "torn.json").write_text('{"schema_version": 1, "run_')
    res = cli(ws, "report", "--format", "csv", "--results", runs.parent)

    problems = need(res.code == 0 and baseline.code == 0, f"exit {res.code} (genuine only: {baseline.code})")
    for name, why in ((f"{edited['run_id']}.json", "does not match its config's hash"),
                      ("dup.json", "file name is not its run_id"), ("torn.json", "not valid JSON")):
        named = [line for line in res.lines if f"{runs / name}:" in line]
        problems += need(len(named) == 1 and why in named[0], f"{name} not named once with {why!r}")
    problems += need(res.out == baseline.out, "the table differs from the genuine records' table")
    rows = len(res.out.strip().splitlines()) - 1
    add(8, "report over 9 genuine records + edited config, dup.json, torn JSON", res, problems + no_traceback(res),
        f"3 files named with why; table ({rows} rows) identical to the genuine-only one")


# ---------------------------------------------------------------------------------------------------- 9. smaller

def bomb(path: Path, others: bool) -> Path:
    """~2.5 MB of deflated zeros declaring a (1000000, 50, 52) uint8 `x` (2.6 GB); with `others`, small idx, target
    and intended arrays too (so that the refusal comes from the shape check, not from missing arrays)."""
    if not others:
        np.savez_compressed(path, x=np.zeros((1_000_000, 50, 52), np.uint8))
        return path
    shutil.copy(path.with_name("bomb.npz"), path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        for name, value in (("idx", np.arange(4)), ("target", np.asarray(0)), ("intended", np.asarray(1))):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    return path


def kind9_smaller(ws: Path, npz: Path) -> None:
    root = ws / "k9"
    root.mkdir()
    res = cli(ws, "defend", "--setup-index", "3", "--dataset", npz, "--results", root / "r")
    problems = one_line_error(res, "--setup-index 3 needs --setup")
    add(9, "defend --setup-index 3 without --setup", res, problems + (["results written"] if (root / "r").exists()
                                                                     else []))

    text = root / "x.npz"
    text.write_text("hello, I am a text file\n")
    res = cli(ws, "poisons", "import", text, "--dataset", npz, "--results", root / "r", time_v=True)
    problems = one_line_error(res, "it is not a zip archive") + (["says pickle"] if "pickle" in res.err else [])
    add(9, "poisons import, a text file named x.npz", res, problems, f"peak RSS {res.rss_kb} kB (the baseline)")
    baseline = res.rss_kb or 0

    for case, others, needle in (("x only", False, "lacks idx, target, intended"),
                                 ("x + idx/target/intended", True, "(1000000, 50, 52)")):
        path = bomb(root / ("bomb.npz" if not others else "bomb-full.npz"), others)
        res = cli(ws, "poisons", "import", path, "--dataset", npz, "--results", root / "r", time_v=True)
        problems = one_line_error(res, needle)
        problems += need(res.rss_kb is not None, "no peak RSS from /usr/bin/time")
        problems += need((res.rss_kb or 0) <= 1_500_000, f"peak RSS {res.rss_kb} kB")
        add(9, f"poisons import, .npz bomb ({path.stat().st_size / 1e6:.1f} MB, declares 2.6 GB; {case})", res,
            problems, f"**peak RSS {res.rss_kb} kB** ({(res.rss_kb or 0) - baseline:+d} kB vs the text file)")

    res = cli(ws, "report", "--table", "abc", "--results", root / "r")
    add(9, "report --table abc", res, one_line_error(res, "unknown table 'abc'"))


# ------------------------------------------------------------------------------------------------ the last check

def top_level(directory: Path) -> set[str]:
    try:
        return {p.name for p in directory.iterdir()}
    except OSError:
        return set()


def outside_check(sandbox: Path, ws: Path, tmp_before: set[str], cwd_before: set[str]) -> list[str]:
    """Nothing written outside the workspace: the sandbox (the workspace's parent) holds only the workspace; no
    marker or ESCAPED file in the workspace outside Figure 1's out/, nor at the top of the sandbox's parent, the
    repository, the current directory, $HOME or /; new top-level names in the sandbox's parent are listed."""
    problems, out = [], ws / "k2" / "a" / "b" / "out"
    if top_level(sandbox) != {"ws"}:
        problems.append(f"the workspace's parent holds {sorted(top_level(sandbox))}")
    hits = [p for p in ws.rglob("*") if planted(p.name) and p.parent != out]
    problems += [f"marker in the workspace: {p}" for p in hits]
    for place in {sandbox.parent, REPO, REPO / "experiments", Path.cwd(), Path.home(), Path("/")}:
        problems += [f"marker at {place / n}" for n in sorted(top_level(place)) if planted(n)]
    new_tmp = sorted(top_level(sandbox.parent) - tmp_before - {sandbox.name})
    problems += [f"new marker in {sandbox.parent}: {n}" for n in new_tmp if planted(n)]
    new_cwd = sorted(top_level(Path.cwd()) - cwd_before)
    problems += [f"new in the current directory: {n}" for n in new_cwd]
    return problems + [f"(info) new in {sandbox.parent} during the probe, made by other processes: {len(new_tmp)}"]


# ----------------------------------------------------------------------------------------------------- the table

def cell(text: str, width: int = 150) -> str:
    text = text.strip()
    text = text if len(text) <= width else text[:width - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def first_line(res: Result) -> str:
    """The first stderr line that is not a progress bar (rich prints its bars to stderr, once, at the end)."""
    lines = [line for line in res.lines if "━" not in line]
    return lines[0] if lines else ""


def table() -> str:
    head = ("| kind | case | exit | first stderr line (progress bars skipped) | stderr lines | traceback | verdict "
            "| detail |\n|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in ROWS:
        res = r.result
        exit_code = "—" if res is None else ("timeout" if res.code is None else str(res.code))
        first = "" if res is None else f"`{cell(first_line(res))}`" if first_line(res) else ""
        lines = "—" if res is None else str(len(res.lines))
        trace = "—" if res is None else ("yes" if "Traceback" in res.err else "no")
        detail = "; ".join([*r.problems, r.detail] if r.problems else [r.detail])
        rows.append(f"| {r.kind} | {cell(r.case, 200)} | {exit_code} | {first} | {lines} | {trace} | **{r.verdict}** "
                    f"| {cell(detail, 300)} |")
    return "\n".join(rows)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()}-core CPU ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> int:
    if os.geteuid() != 0:
        print("note: not root; the tmpfs mounts of kind 7 will be refused", file=sys.stderr)
    started, start = datetime.now(timezone.utc), time.monotonic()
    sandbox = Path(tempfile.mkdtemp(prefix="probe_issue51_"))
    ws = sandbox / "ws"
    ws.mkdir()
    tmp_before, cwd_before = top_level(sandbox.parent), top_level(Path.cwd())
    mounts: list[Path] = []
    try:
        npz = write_npz(ws)
        grid = write_grid(ws / "one-run.toml", npz)  # one clean run: kinds 3, 4 and 7
        (key,) = plan_keys(ws, grid)
        kind1_sbatch(ws, npz)
        kind2_figure_paths(ws, npz)
        kind3_log_links(ws, grid, key)
        kind4_killed_step(ws, grid, key)
        kind5_sigterm_craft(ws)
        kind6_grids(ws, npz)
        kind7_os_errors(ws, npz, grid, mounts)
        kind8_untrusted_records(ws)
        kind9_smaller(ws, npz)
    finally:
        for mount in reversed(mounts):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        problems = outside_check(sandbox, ws, tmp_before, cwd_before)
        still_mounted = [line for line in Path("/proc/mounts").read_text().splitlines() if str(sandbox) in line]
        shutil.rmtree(sandbox, ignore_errors=True)
    problems += [f"still mounted: {m}" for m in still_mounted]
    problems += need(not sandbox.exists(), f"{sandbox} not removed")
    failed = [p for p in problems if not p.startswith("(info)")]
    wall = time.monotonic() - start
    fails = [r for r in ROWS if r.verdict == "FAIL"]

    print("# Issue 51 probe, re-run against the real CLI\n")
    print(f"- date: {started:%Y-%m-%d %H:%M} UTC")
    print("- command: `.venv/bin/python experiments/probe_issue51.py`")
    print(f"- machine: {machine()}")
    print(f"- wall time: {wall:.0f} s")
    print(f"- cases: {len(ROWS)}, FAIL: {len(fails)}, not run: {sum(bool(r.not_run) for r in ROWS)}\n")
    print(table())
    print("\n## Nothing written outside the workspace\n")
    print(f"Workspace `{ws}` (removed at the end; its parent held only it), checked before removal: "
          + ("**ok**" if not failed else "**FAIL**"))
    for p in problems:
        print(f"- {p}")
    if not failed:
        print("- no MARKER/PWNED/ESCAPED file in the workspace (outside Figure 1's out/), nor at the top of "
              f"{sandbox.parent}, the repository, the current directory, $HOME or /; no mount left; temp dir removed")
    return 1 if fails or failed else 0


if __name__ == "__main__":
    sys.exit(main())
