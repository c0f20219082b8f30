"""SIGTERM (SLURM pre-emption, `scancel`): the epoch in progress finishes, its checkpoint is saved, the process
exits with 143, and running the same command again resumes with the numbers of an uninterrupted run. A SIGTERM
outside the epoch loop, or a second one, stops at once; a stopped run is never recorded as a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import poisonbench
from poisonbench.core.device import to_float
from poisonbench.data import load_dataset
from poisonbench.engine import termination
from poisonbench.engine.checkpoints import META_KEY, Checkpoint, read_state
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train
from poisonbench.experiment.defend import defend
from poisonbench.experiment.records import RunStore
from poisonbench.experiment.spec import DefendSpec

from .conftest import dies_with_the_test, write_npz

CPU = torch.device("cpu")
NEVER = 1e9  # --checkpoint-every: no periodic save, so a checkpoint on disk can only be SIGTERM's
# momentum (optimizer state), a milestone (schedule), crop-flip (the generator draws augmentation as well as order)
RECIPE = dict(epochs=4, lr=0.05, batch_size=64, momentum=0.9, milestones=(2,), augment="crop-flip")


@pytest.fixture
def sigterm_handled(one_thread):
    """This process handles SIGTERM as the CLI does, for the test only."""
    termination.reset()
    assert termination.install()
    yield
    termination.reset()


def sigterm_self(times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)


def run(data, checkpoint: Checkpoint | None = None, sigterm_at: int | None = None, times: int = 1):
    """Train the ConvNet with the recipe above; SIGTERM this process `times` times in epoch `sigterm_at`'s
    `on_epoch` (0-based, as the progress display receives it)."""
    recipe = resolve_recipe("mnist", "quick", **RECIPE)
    model = build_model("convnet", data, seed=3)

    def on_epoch(epoch, _row):
        if epoch == sigterm_at:
            sigterm_self(times)

    result = train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y, recipe,
                   seed=3, device=CPU, num_classes=10, compile="off",
                   eval_sets={"test": (to_float(data.test.x, CPU), data.test.y)}, on_epoch=on_epoch,
                   checkpoint=checkpoint)
    return model, result


def epochs_done(path: Path) -> int:
    return json.loads(read_state(path)[1][META_KEY])["epochs_done"]


def test_sigterm_saves_the_epoch_in_progress_and_the_resumed_run_equals_an_uninterrupted_one(tiny_npz, tmp_path,
                                                                                             sigterm_handled):
    data = load_dataset(str(tiny_npz))
    model_ref, ref = run(data)
    ckpt = Checkpoint(tmp_path / "partial" / "runs" / "r.safetensors", NEVER)
    with pytest.raises(termination.Terminated, match=r"after epoch 2 of 4; checkpoint saved: .*r\.safetensors"):
        run(data, ckpt, sigterm_at=1)
    assert epochs_done(ckpt.path) == 2  # saved although `every` had not passed
    termination.reset()
    model, resumed = run(data, ckpt)
    assert resumed.resumed_from == 2 and resumed.history == ref.history
    for (name, a), (_, b) in zip(model.state_dict().items(), model_ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_second_sigterm_or_one_outside_the_epoch_loop_stops_at_once(tiny_npz, tmp_path, sigterm_handled):
    with pytest.raises(termination.Terminated, match="stopped by SIGTERM"):
        sigterm_self()  # loading data, crafting, writing a record: nothing to finish first
    termination.reset()
    termination.install()
    data = load_dataset(str(tiny_npz))
    ckpt = Checkpoint(tmp_path / "partial" / "runs" / "r.safetensors", NEVER)
    with pytest.raises(termination.Terminated, match="a second one"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(termination, "REPEATS_WITHIN", 0.0)
            run(data, ckpt, sigterm_at=1, times=2)
    assert not ckpt.path.exists()  # stopped inside the epoch's end, before any save


def test_sigterms_in_quick_succession_are_one_request_and_the_epoch_is_saved(tiny_npz, tmp_path, sigterm_handled):
    """A dying sweep's PR_SET_PDEATHSIG can arrive once per exiting thread: the repeats must not skip the save."""
    data = load_dataset(str(tiny_npz))
    ckpt = Checkpoint(tmp_path / "partial" / "runs" / "r.safetensors", NEVER)
    with pytest.raises(termination.Terminated, match="checkpoint saved"):
        run(data, ckpt, sigterm_at=1, times=3)
    assert ckpt.path.exists()


def test_without_a_checkpoint_training_stops_at_the_epochs_end_and_a_last_epoch_finishes(tiny_npz, sigterm_handled):
    data = load_dataset(str(tiny_npz))
    with pytest.raises(termination.Terminated, match=r"after epoch 1 of 4 \(this training keeps no checkpoint\)"):
        run(data, sigterm_at=0)
    termination.reset()
    termination.install()
    _, result = run(data, sigterm_at=3)  # the last epoch: the run is complete, nothing to resume
    assert len(result.history) == 4 and termination.requested()


def test_the_runner_records_a_run_whose_last_epoch_got_sigterm_and_starts_no_other(tiny_npz, tmp_path,
                                                                                   sigterm_handled):
    class SigtermInFirstRun:
        runs = 0

        def start(self, description, epochs):
            self.runs += 1

        def batch(self, epoch, step, steps):
            pass

        def epoch(self, epoch, row):
            if self.runs == 1:
                sigterm_self()

        def stop(self):
            pass

    spec = DefendSpec(dataset=str(tiny_npz), method="none", trials=2, results=str(tmp_path), recipe="quick",
                      recipe_overrides={"epochs": 1, "batch_size": 64}, compile="off")
    reporter = SigtermInFirstRun()
    with pytest.raises(termination.Terminated, match="before trial 1"):
        defend(spec, reporter)
    store = RunStore(tmp_path)
    (record,) = store.all()
    assert record["config"]["trial"] == 0 and reporter.runs == 1
    assert not list(tmp_path.glob("failures/*"))  # a stopped process is no failed run


def test_a_sigterm_while_the_record_is_written_leaves_the_record_and_no_checkpoint(tiny_npz, tmp_path,
                                                                                   sigterm_handled, monkeypatch):
    """Between writing a run's record and clearing its checkpoint a SIGTERM waits: a stop there used to leave a
    checkpoint of a done run, which nothing would remove (a sweep never starts a done run again)."""
    put = RunStore.put
    seen = {}

    def put_with_sigterm(self, record, replace=False):
        seen["checkpoints"] = list(tmp_path.glob("partial/runs/*.safetensors"))
        sigterm_self()
        put(self, record, replace)

    monkeypatch.setattr(RunStore, "put", put_with_sigterm)
    spec = DefendSpec(dataset=str(tiny_npz), method="none", trials=2, results=str(tmp_path), recipe="quick",
                      recipe_overrides={"epochs": 2, "batch_size": 64}, compile="off", checkpoint_every=0)
    with pytest.raises(termination.Terminated, match="before trial 1"):
        defend(spec, None)
    assert len(seen["checkpoints"]) == 1  # the test reached the window it is about
    (record,) = RunStore(tmp_path).all()
    assert record["config"]["trial"] == 0
    assert not list(tmp_path.glob("partial/runs/*"))


def test_install_is_idempotent_a_no_op_off_the_main_thread_and_reset_restores_the_handler():
    termination.reset()
    before = signal.getsignal(signal.SIGTERM)
    try:
        results = []
        thread = threading.Thread(target=lambda: results.append(termination.install()))
        thread.start()
        thread.join()
        assert results == [False] and signal.getsignal(signal.SIGTERM) is before
        assert termination.install() and not termination.install()
        assert signal.getsignal(signal.SIGTERM) is not before
    finally:
        termination.reset()
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_sigterm_exits_143_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    """The real thing: `poisonbench defend` in a subprocess, SIGTERM once its first epoch is done."""
    dataset = write_npz(tmp_path, n=1500, size=16, classes=4)  # 1200 train rows: an epoch takes a moment
    # both processes run a copy of the package: a checkpoint is resumed only by the sources that wrote it (their
    # fingerprint), and a file of the working tree saved between the two runs would make the resume start over
    shutil.copytree(Path(poisonbench.__file__).parent, tmp_path / "code" / "poisonbench")
    results = tmp_path / "results"
    epochs = 8
    command = [sys.executable, "-m", "poisonbench.cli.main", "defend", "--dataset", str(dataset), "--recipe",
               "quick", "--epochs", str(epochs), "--batch-size", "64", "--compile", "off", "--results",
               str(results), "--checkpoint-every", str(NEVER), "--json"]
    # the progress display drawn as on a terminal (wide, no line wrapping): its epoch text is the signal
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "COLUMNS": "400",
           "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(tmp_path / "code")}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
                             preexec_fn=dies_with_the_test())
    stderr = bytearray()
    first_epoch_done = threading.Event()

    def read_stderr():
        while chunk := child.stderr.read1(65536):
            stderr.extend(chunk)
            if b"loss" in stderr:  # "epoch 1/8 · loss ...": epoch 2 is under way, inside the epoch loop
                first_epoch_done.set()
        first_epoch_done.set()  # ended early: the assertions below say how

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert first_epoch_done.wait(180), "no epoch finished within 3 minutes"
        assert child.poll() is None, f"defend ended before the SIGTERM: {stderr.decode(errors='replace')[-2000:]}"
        assert list((results / "locks").glob("run-*.lock")), "the run should be claimed while it trains"
        child.send_signal(signal.SIGTERM)
        stdout = child.stdout.read()
        code = child.wait(180)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(10)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr.decode(errors="replace"))  # the display's escapes
    lines = [line for line in re.split(r"[\r\n]", text) if "Terminated" in line]
    assert code == termination.EXIT_CODE == 143, text[-2000:]
    assert len(lines) == 1 and lines[0].startswith("Terminated: training stopped by SIGTERM after epoch"), lines
    assert "Traceback" not in text and stdout == b""
    stopped_after = int(re.search(rf"after epoch (\d+) of {epochs}", lines[0]).group(1))
    assert 1 <= stopped_after < epochs  # (1 only if the SIGTERM came while epoch 1's progress was being shown)
    (ckpt,) = (results / "partial" / "runs").glob("*.safetensors")
    assert epochs_done(ckpt) == stopped_after and str(ckpt) in lines[0]
    assert not list(results.glob("runs/*.json")) and not list(results.glob("failures/*"))  # stopped, not failed

    again = subprocess.run(command, capture_output=True, env={**env, "TTY_COMPATIBLE": "0"}, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-2000:]
    (line,) = again.stdout.decode().splitlines()
    shown = json.loads(line)
    assert shown["status"] == "ran" and shown["resumed_from_epoch"] == stopped_after, again.stderr.decode()[-2000:]
    record = json.loads(Path(shown["path"]).read_text())
    assert record["resumed_from_epoch"] == stopped_after and len(record["history"]) == epochs
    assert not ckpt.exists()


def test_a_test_killed_from_outside_takes_its_cli_processes_with_it(tmp_path):
    """`tests.conftest.dies_with_the_test`, the `preexec_fn` of the CLI processes tests start: a test process
    SIGKILLed (as mutmut's CPU-time limit kills one) takes them with it instead of leaving them orphaned. The
    stand-in test starts a sleeper that way, prints its pid and is killed; the sleeper is gone within seconds."""
    script = ("import subprocess, sys\n"
              "from tests.conftest import dies_with_the_test\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
              "preexec_fn=dies_with_the_test())\n"
              "print(child.pid, flush=True)\n"
              "child.wait()\n")
    root = Path(__file__).resolve().parents[1]
    stand_in = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root,
                                env={**os.environ, "PYTHONPATH": str(root)})
    sleeper = int(stand_in.stdout.readline())
    try:
        os.kill(stand_in.pid, signal.SIGKILL)
        stand_in.wait(30)
        deadline = time.time() + 20
        while time.time() < deadline and alive(sleeper):
            time.sleep(0.05)
        assert not alive(sleeper), "the CLI process outlived the killed test"
    finally:
        if alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
