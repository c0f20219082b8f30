"""experiments/rem_official_gpu.sh's preflight (issue 67): a GPU call that would restart a saved REM state from zero
stops before crafting, and the crafts import `REM_CODE`'s sources, not the working directory's (the checkout's own
sources once shadowed them under `python -m`, and a 2,590-step state was discarded: availability.md, call 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poisonbench.core.hashing import code_fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "rem_official_gpu.sh"


def run_script(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "out"
    # DEADLINE: a craft that starts is cut at once (one that should not have started fails fast, not after minutes)
    full = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "INSTALL": "0", "RESUME": "0", "TAGS": "eps03",
            "DEFEND": "0", "RESULTS": str(tmp_path / "results"), "OUT": str(out), "OMP_NUM_THREADS": "1",
            "DEADLINE": "1", "DEADLINE_MARGIN": "0", **env}
    full.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=300)
    return done, (out / "summary.txt").read_text()


def saved_state(results: Path, code: str) -> None:
    """A saved craft state in the workspace, written under the sources of fingerprint `code` (on this CPU, by one
    thread: the script's processes run with OMP_NUM_THREADS=1)."""
    import torch

    from poisonbench.engine.checkpoints import execution_identity, write_state

    state = results / "partial" / "0123456789abcdef"
    state.mkdir(parents=True)
    identity = {**execution_identity(torch.device("cpu")), "code": code, "threads": 1, "accel": "auto",
                "forced": False}
    (state / "identity.json").write_text(json.dumps(identity))
    write_state(state / "rem.safetensors", {"w": torch.zeros(1)}, {"counters": json.dumps({"step": 70})})


@pytest.mark.skipif(shutil.which("bash") is None, reason="the script is bash")
def test_a_state_the_crafts_would_not_resume_stops_the_call_before_any_craft(tmp_path):
    """The crafts' sources are a copy (REM_CODE) whose fingerprint is not the checkout's: the preflight names that
    copy and its fingerprint, so the working directory did not shadow it; a state saved under the checkout's
    sources is then not resumable, and the script exits 3 without starting a craft."""
    copy = tmp_path / "code"
    shutil.copytree(ROOT / "poisonbench", copy / "poisonbench", ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "poisonbench" / "attacks" / "rem.py").open("a") as f:
        f.write("\n# another version of the sources\n")
    saved_state(tmp_path / "results", code_fingerprint())

    done, summary = run_script(tmp_path, REM_CODE=os.path.relpath(copy, ROOT))
    assert done.returncode == 3, summary
    assert f"crafts import {copy / 'poisonbench'}, code fingerprint " in summary
    copied = summary.split("code fingerprint ")[1].split()[0]
    assert copied != code_fingerprint()
    refused = f"NOT resumable: code={code_fingerprint()!r} (now {copied!r})"
    assert f"state 0123456789abcdef at {{'step': 70}}: {refused}" in summary
    assert "no craft started" in summary
    assert not (tmp_path / "out" / "logs" / "craft_eps03.log").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="the script is bash")
def test_a_state_saved_by_the_same_sources_passes_the_preflight(tmp_path):
    """The same state under the checkout's own sources is resumable: the preflight lets the craft start (it is cut
    at once here by the deadline, which leaves the state in the call's state.tgz)."""
    saved_state(tmp_path / "results", code_fingerprint())
    done, summary = run_script(tmp_path)
    assert "state 0123456789abcdef at {'step': 70}: resumable" in summary
    assert f"crafts import {ROOT / 'poisonbench'}" in summary
    assert "craft eps03 (--eps 0.3 --adv-radius 0.15): exit" in summary, done.stderr
    assert (tmp_path / "out" / "state.tgz").exists()
