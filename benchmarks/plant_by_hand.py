"""Plant realistic bugs by hand, one at a time, and see which the tests catch (docs/testing.md: the semantic bugs
mutmut cannot make, and a check where mutmut's CPU-time limit misfires on a loaded machine).

    python benchmarks/plant_by_hand.py benchmarks/plants/bounded.py [NAME ...]

A plants file defines `TESTS` (pytest node ids or files) and `PLANTS`, a list of (name, file, old, new): in a copy
of the working tree (under $PLANT_WORK, default a new directory in /tmp; tracked and untracked files, not .venv, .git
or caches), `old` (which must occur exactly once in `file`) is replaced by `new`, the tests run (`-x`, one process,
$PLANT_TIMEOUT seconds at most, default 300), and the file is restored. One line per plant: CAUGHT (the tests
failed, with the first failing ones), SURVIVED, TIMEOUT or SKIP (`old` not found once). NAMEs: only those plants.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "results", "mutants",
                                 ".hypothesis", ".whl")


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cfg = runpy.run_path(sys.argv[1])
    only = set(sys.argv[2:])
    work = Path(os.environ.get("PLANT_WORK") or tempfile.mkdtemp(prefix="poisonbench-plant."))
    if not (work / "poisonbench").is_dir():
        shutil.copytree(REPO, work, ignore=IGNORED, dirs_exist_ok=True)
    timeout = os.environ.get("PLANT_TIMEOUT", "300")
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    for name, file, old, new in cfg["PLANTS"]:
        if only and name not in only:
            continue
        path = work / file
        source = path.read_text()
        if source.count(old) != 1:
            print(f"{name}: SKIP ({source.count(old)} matches)", flush=True)
            continue
        path.write_text(source.replace(old, new))
        start = time.time()
        try:
            run = subprocess.run(["timeout", timeout, sys.executable, "-m", "pytest", "-q", "-x", "-n0", "-p",
                                  "no:cacheprovider", *cfg["TESTS"]], cwd=work, capture_output=True, text=True, env=env)
        finally:
            path.write_text(source)
        failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        verdict = "TIMEOUT" if run.returncode == 124 else "CAUGHT" if run.returncode else "SURVIVED"
        print(f"{name}: {verdict} ({time.time() - start:.0f} s) {failed[:2]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
