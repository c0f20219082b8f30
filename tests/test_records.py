"""Records are atomic: a killed `defend` leaves no record and no partial file; re-running resumes it from its last
epoch checkpoint and ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from poisonbench.core.io import atomic_write_json
from poisonbench.data import load_dataset
from poisonbench.engine.checkpoints import checkpoint_path
from poisonbench.experiment import defend as runner
from poisonbench.experiment import one_run as run_execution
from poisonbench.experiment.records import SCHEMA_VERSION, RunStore, run_id
from poisonbench.experiment.scenarios import plan_untargeted
from tests.conftest import dies_with_the_test


def test_run_id_is_canonical():
    assert run_id({"a": 1, "b": [1, 2]}) == run_id({"b": [1, 2], "a": 1})
    assert run_id({"a": 1}) != run_id({"a": 2})


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"bad": Boom()})
    assert list(tmp_path.iterdir()) == []



def test_a_write_that_fails_midway_keeps_the_old_file_whole(tmp_path, monkeypatch):
    """The bytes go to a temporary file that replaces the target only once complete: a failure while writing
    (here fsync, as on a full disk) leaves the previous record as it was and no temporary file."""
    from poisonbench.core import io

    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(io.os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path, monkeypatch):
    """A SIGKILLed writer cannot delete its temporary file; the next write to the same path does, but never a live
    writer's or one from another host sharing the directory."""
    import socket

    from poisonbench.core import io

    monkeypatch.setattr(socket, "gethostname", lambda: "node1.cluster.example.org")  # dots in the host name
    dead, host = _dead_pid(), io.writer_tag().split("@", 1)[1]
    target = tmp_path / "abc.json"
    killed = tmp_path / f".abc.json.{dead}@{host}.x1y2.tmp"
    live = tmp_path / f".abc.json.{os.getpid()}@{host}.x1y2.tmp"
    remote = tmp_path / f".abc.json.{dead}@node2.cluster.example.org.x1y2.tmp"
    unrelated = tmp_path / f".abd.json.{dead}@{host}.x1y2.tmp"
    odd = tmp_path / f".abc.json.\u00b2@{host}.x1y2.tmp"  # a digit to str.isdigit, not to int()
    for p in (killed, live, remote, unrelated, odd):
        p.write_text("{half")
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (target, live, remote, unrelated,
                                                                                 odd))


def test_clearing_a_checkpoint_removes_a_killed_saves_temporary_file(tmp_path):
    """A resumed run that finishes before its next checkpoint still leaves `partial/` empty."""
    from poisonbench.core import io
    from poisonbench.engine.checkpoints import Checkpoint

    ckpt = Checkpoint(tmp_path / "run.safetensors")
    ckpt.save({"w": torch.zeros(2)}, {"epoch": 1})
    killed = tmp_path / f".run.safetensors.{_dead_pid()}@{io.writer_tag().split('@', 1)[1]}.abcd.tmp"
    killed.write_bytes(b"half")
    ckpt.clear()
    assert list(tmp_path.iterdir()) == []


def test_store_ignores_partial_or_foreign_files(tmp_path):
    store = RunStore(tmp_path)
    store.runs.mkdir(parents=True)
    (store.runs / "abc.json").write_text('{"schema_version": 1, "run_id": "abc", "conf')
    (store.runs / "lst.json").write_text('[1, 2]')  # valid JSON, not a record: the run is not done
    assert store.get("abc") is None and store.get("lst") is None and store.all() == []


def test_sigkill_mid_training_leaves_no_record_and_rerun_resumes_to_the_same_numbers(tiny_npz, tmp_path, cli,
                                                                                     one_thread):
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "poisonbench.cli.main", "defend", "--dataset", str(tiny_npz), "--recipe", "quick",
           "--epochs", "60", "--batch-size", "400", "--compile", "off", "--results", str(results), "--json",
           "--checkpoint-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: one thread, robust to a loaded machine
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
                            preexec_fn=dies_with_the_test())
    partial = results / "partial" / "runs"
    deadline = time.time() + 60
    while not list(partial.glob("*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more epochs (60 take seconds even on a quiet machine: about 0.05 s each)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((results / "runs").iterdir()) == []  # no record, no temporary file
    # one checkpoint; if the kill landed inside a checkpoint write, also that write's temporary file (a hidden
    # name carrying the killed pid, never a `.safetensors`), which the re-run removes
    names = [p.name for p in partial.iterdir()]
    visible = [n for n in names if not n.startswith(".")]
    assert len(visible) == 1 and visible[0].endswith(".safetensors")
    assert all(n.endswith(".tmp") and f".{proc.pid}@" in n for n in names if n.startswith("."))

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "ran" and row["resumed_from_epoch"] > 0
    resumed = json.loads((results / "runs" / f"{row['run_id']}.json").read_text())
    assert 0 < resumed["resumed_from_epoch"] < 60 and len(resumed["history"]) == 60
    assert list(partial.iterdir()) == []  # the record exists: its checkpoint is gone

    # from scratch, in this process (one thread, as OMP_NUM_THREADS=1 gives the runs above): the numbers of a
    # training that no kill touched, without a third interpreter's start-up
    code, _, err = cli(*cmd[3:], "--force")
    assert code == 0, err
    fresh = json.loads((results / "runs" / f"{row['run_id']}.json").read_text())
    assert fresh["resumed_from_epoch"] == 0
    assert fresh["history"] == resumed["history"] and fresh["metrics"] == resumed["metrics"]


def test_cpu_seconds_leave_out_a_paused_stretch(tiny_npz, tmp_path):
    """`cost.seconds` is wall time (the paper's Table V); `cost.cpu_seconds` is the process's CPU time, which a
    SIGSTOP (a suspended cluster job, a paused benchmark) does not inflate."""
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "poisonbench.cli.main", "defend", "--dataset", str(tiny_npz), "--recipe", "quick",
           "--epochs", "60", "--batch-size", "400", "--compile", "off", "--results", str(results), "--json",
           "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=dies_with_the_test())
    deadline = time.time() + 60
    while not list((results / "partial" / "runs").glob("*.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGSTOP)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    cost = json.loads((results / "runs" / f"{json.loads(out)['run_id']}.json").read_text())["cost"]
    assert 0 < cost["cpu_seconds"] and cost["seconds"] - cost["cpu_seconds"] > 1.5


def test_int_and_float_spellings_of_one_config_share_a_run_id(tiny_npz):
    """Python callers may write ratio=1 or lr=1e-2 as 0.01, epochs=3.0: one config, one run id, one record."""
    from poisonbench.data import load_dataset
    from poisonbench.experiment.defend import run_config
    from poisonbench.experiment.spec import DefendSpec

    data = load_dataset(str(tiny_npz))
    as_ints = DefendSpec(dataset=str(tiny_npz), method="hint", method_params={"ratio": 1, "gamma": 1},
                         recipe_overrides={"lr": 1, "epochs": 3})
    as_floats = DefendSpec(dataset=str(tiny_npz), method="hint", method_params={"ratio": 1.0, "gamma": 1.0},
                           recipe_overrides={"lr": 1.0, "epochs": 3.0})
    assert run_id(run_config(as_ints, data, 0)) == run_id(run_config(as_floats, data, 0))
    assert run_id(run_config(as_ints, data, 0)) != run_id(run_config(DefendSpec(
        dataset=str(tiny_npz), method="hint", method_params={"ratio": 0.5}, recipe_overrides={"lr": 1}), data, 0))


def test_a_record_names_the_commit_its_run_started_from(cli, tiny_npz, tmp_path, monkeypatch):
    from pathlib import Path

    import poisonbench.core.provenance as provenance
    import poisonbench.experiment.defend as runner

    moved = []  # the checkout moves on (a `git pull`, a merge) once the run has started
    def fake_git(*args):
        return "" if "status" in args else ("b" if moved else "a") * 40

    monkeypatch.setattr(provenance, "_git", fake_git)
    load = runner.load_dataset
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: moved.append(1) or load(*a, **k))
    provenance.git_state.cache_clear()
    try:
        code, out, _ = cli("defend", "--dataset", tiny_npz, "--epochs", "1", "--results", tmp_path, "--json")
    finally:
        provenance.git_state.cache_clear()
    assert code == 0 and moved
    env = json.loads(out.strip().splitlines()[-1])
    record = json.loads(Path(env["path"]).read_text())
    assert record["env"]["git_commit"] == "a" * 40 and record["env"]["git_dirty"] is False


@pytest.mark.parametrize("status,dirty", [("", False), (" M poisonbench/engine/training.py", True), (None, None)])
def test_git_state_reads_the_commit_and_whether_the_package_differs(monkeypatch, status, dirty):
    import poisonbench.core.provenance as records

    monkeypatch.setattr(records, "_git", lambda *args: status if "status" in args else "c" * 40)
    records.git_state.cache_clear()
    try:
        assert records.git_state() == ("c" * 40, dirty)
    finally:
        records.git_state.cache_clear()


FAST_RUN = dict(recipe="quick", recipe_overrides={"epochs": 2, "batch_size": 64}, compile="off")


def test_record_evaluates_val_and_test_on_their_splits_and_reports_the_last_epoch(tiny_npz, tmp_path, monkeypatch):
    seen = {}
    real = run_execution.train

    def spy(*args, **kwargs):
        seen.update(kwargs["eval_sets"])
        result = real(*args, **kwargs)
        # distinct numbers in every field (on tiny data val and test accuracy are often both 1.0)
        result.history[-1].update(test_acc=0.25, val_acc=0.5, train_acc=0.75, train_loss=1.5)
        return result

    monkeypatch.setattr(run_execution, "train", spy)
    (out,) = runner.defend(runner.DefendSpec(dataset=str(tiny_npz), results=str(tmp_path / "r"), **FAST_RUN))
    data = load_dataset(str(tiny_npz))
    assert torch.equal(seen["val"][1].cpu(), data.val.y) and torch.equal(seen["test"][1].cpu(), data.test.y)
    rec = out.record
    last = rec["history"][-1]
    for key in ("test_acc", "val_acc", "train_acc", "train_loss"):
        assert rec["metrics"][key] == last[key]
    assert 1 / 10 < rec["metrics"]["test_mean_confidence"] <= 1  # mean max-probability: >= 1/K
    assert {"train", "seconds", "cpu_seconds", "data_load", "peak_rss_mib"} <= set(rec["cost"])
    assert rec["env"]["torch"] == torch.__version__ and rec["env"]["device"] == "cpu"
    assert rec["schema_version"] == SCHEMA_VERSION
    # the checkpoint of a finished run is gone once its record is written
    assert not checkpoint_path(RunStore(tmp_path / "r").root, rec["run_id"]).exists()


def test_failed_record_write_keeps_checkpoint_rerun_resumes_force_starts_over(tiny_npz, tmp_path, monkeypatch):
    spec = runner.DefendSpec(dataset=str(tiny_npz), results=str(tmp_path / "r"), checkpoint_every=0, **FAST_RUN)

    def disk_full(self, record, replace=False):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(RunStore, "put", disk_full)
        with pytest.raises(Exception, match="No space left"):
            runner.defend(spec)
    rid = runner.run_id(runner.run_config(spec, load_dataset(str(tiny_npz)), 0))
    ckpt = checkpoint_path(RunStore(spec.results).root, rid)
    assert ckpt.exists()  # epoch 1 of 2 saved, kept when the record could not be written
    resumed = []
    fit = run_execution.train

    def spy(*args, **kwargs):
        resumed.append(fit(*args, **kwargs))
        assert resumed[-1].prior_seconds > 0
        resumed[-1].prior_seconds = 1000.0  # stands for a long first session: the record must add it
        return resumed[-1]

    with monkeypatch.context() as m:  # a plain re-run resumes, and its cost counts the time before the failure
        m.setattr(run_execution, "train", spy)
        (again,) = runner.defend(spec)
    assert again.record["resumed_from_epoch"] == 1
    assert 1000.0 < again.record["cost"]["seconds"] < 1100.0
    assert not ckpt.exists()
    with monkeypatch.context() as m:
        m.setattr(RunStore, "put", disk_full)
        with pytest.raises(Exception, match="No space left"):
            runner.defend(runner.DefendSpec(**{**spec.__dict__, "force": True}))
    assert ckpt.exists()
    forced = runner.DefendSpec(**{**spec.__dict__, "force": True})
    (out,) = runner.defend(forced)
    assert out.status == "ran" and out.record["resumed_from_epoch"] == 0  # --force starts over
    assert not ckpt.exists()


def test_a_skipped_run_clears_a_leftover_checkpoint(tiny_npz, tmp_path):
    spec = runner.DefendSpec(dataset=str(tiny_npz), results=str(tmp_path / "r"), **FAST_RUN)
    (out,) = runner.defend(spec)
    ckpt = checkpoint_path(RunStore(spec.results).root, out.record["run_id"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"left by a kill between the record and the clear")
    (again,) = runner.defend(spec)
    assert again.status == "skipped" and not ckpt.exists()


def test_store_reads_only_complete_records_of_this_schema_and_ignores_temp_files(tmp_path):
    from tests.report_records import make_record, write_records

    rec = make_record(dataset="mnist-5k", trial=0)
    root = write_records(tmp_path / "r", [rec])
    store = RunStore(root)
    (store.runs / f".{rec['run_id']}.json.123@host.abc.tmp").write_text('{"run_id": ')  # a writer's temp file
    assert store.all() == [rec] and store.skipped_note() is None
    other = dict(rec, schema_version=SCHEMA_VERSION + 1)
    store.path(rec["run_id"]).write_text(json.dumps(other))
    assert store.get(rec["run_id"]) is None and store.foreign_schema(rec["run_id"]) == SCHEMA_VERSION + 1


def test_each_trial_poisons_a_clean_copy_of_the_train_split(tiny_npz, tmp_path, monkeypatch):
    """Poisons are written into the train tensor in place: trial 1 must not train on trial 0's poisons too."""
    from poisonbench.core.device import to_float

    seen = []
    real = run_execution.train

    def spy(model, train_x, train_y, *args, **kwargs):
        seen.append((train_x.clone(), kwargs["seed"]))
        return real(model, train_x, train_y, *args, **kwargs)

    monkeypatch.setattr(run_execution, "train", spy)
    spec = runner.DefendSpec(dataset=str(tiny_npz), results=str(tmp_path / "r"), poison_ratio=0.5, attacks=["durp"],
                             trials=2, recipe="quick", recipe_overrides={"epochs": 1, "batch_size": 64}, compile="off")
    runner.defend(spec)
    data = load_dataset(str(tiny_npz))
    clean = to_float(data.train.x, torch.device("cpu"))
    assert len(seen) == 2
    for x, seed in seen:
        poisoned = plan_untargeted(data, 0.5, ["durp"], seed=seed).mask(len(data.train))
        assert torch.equal(x[~poisoned], clean[~poisoned]) and not torch.equal(x[poisoned], clean[poisoned])
