"""What a `poisonbench` process imports before it works. Every sweep step is a fresh process (a cluster sweep starts
thousands), so what the start-up imports is paid once per run: torchvision's import (its model zoo, about 2 s on the
development machine, a third of a sweep step's start-up before 2026-11-30) is left to the one squeeze that needs it
(ISS's bit-depth reduction, tests/test_iss.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import write_npz

ROOT = Path(__file__).resolve().parent.parent


def test_a_cli_start_and_a_sweep_steps_run_import_no_torchvision(tmp_path):
    """A fresh interpreter imports the CLI, the sweep worker and `defend`, and trains a poisoned run and a HINT run
    (one epoch each): torchvision is in `sys.modules` at none of those points."""
    npz = write_npz(tmp_path, n=120)
    script = """import json, sys
seen = []
import poisonbench.cli.main, poisonbench.sweeps.worker
seen.append('torchvision' in sys.modules)
from poisonbench.experiment.defend import defend
from poisonbench.experiment.spec import DefendSpec
seen.append('torchvision' in sys.modules)
for method in ('none', 'hint'):
    (outcome,) = defend(DefendSpec(dataset=sys.argv[1], recipe='quick', recipe_overrides={'epochs': 1},
                                   poison_ratio=0.5, attacks=['durp'], method=method, results=sys.argv[2]))
    seen.append((outcome.status, 'torchvision' in sys.modules))
print(json.dumps(seen))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(npz), str(tmp_path / "results")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, False, ["ran", False], ["ran", False]]
